// conversions: written next
