//! Timestamps as signed nanoseconds since the Unix epoch.
//!
//! One integer keeps comparisons, sorting and database columns trivial; the
//! price is a range of years 1677..2262, and conversions from wider types
//! report an out-of-range value instead of wrapping.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Timestamp(pub i64);

pub const NANOS_PER_SEC: i64 = 1_000_000_000;
pub const NANOS_PER_DAY: i64 = 86_400 * NANOS_PER_SEC;

impl Timestamp {
    pub const fn from_nanos(nanos: i64) -> Self {
        Timestamp(nanos)
    }

    pub const fn as_nanos(self) -> i64 {
        self.0
    }

    /// Builds from protobuf-style parts; `None` when the value does not fit.
    pub fn from_parts(seconds: i64, nanos: i32) -> Option<Self> {
        if !(0..NANOS_PER_SEC as i32).contains(&nanos) {
            return None;
        }
        // i128: near i64::MIN, `seconds * 1e9` alone underflows although
        // adding the (positive) nanos brings the sum back into range.
        let total = i128::from(seconds) * i128::from(NANOS_PER_SEC) + i128::from(nanos);
        i64::try_from(total).ok().map(Timestamp)
    }

    /// Splits into protobuf-style `(seconds, nanos)` with `0 <= nanos < 1e9`.
    pub fn to_parts(self) -> (i64, i32) {
        let seconds = self.0.div_euclid(NANOS_PER_SEC);
        let nanos = self.0.rem_euclid(NANOS_PER_SEC) as i32;
        (seconds, nanos)
    }

    pub fn now() -> Self {
        match SystemTime::now().duration_since(UNIX_EPOCH) {
            Ok(d) => Timestamp(i64::try_from(d.as_nanos()).unwrap_or(i64::MAX)),
            Err(e) => Timestamp(-i64::try_from(e.duration().as_nanos()).unwrap_or(i64::MAX)),
        }
    }

    pub fn saturating_add_days(self, days: i32) -> Self {
        Timestamp(
            self.0
                .saturating_add(i64::from(days).saturating_mul(NANOS_PER_DAY)),
        )
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (s, n) = self.to_parts();
        write!(f, "{s}.{n:09}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_round_trip_including_negative() {
        for t in [
            0,
            1,
            -1,
            1_700_000_000_123_456_789,
            -5 * NANOS_PER_SEC - 7,
            i64::MIN,
            i64::MAX,
        ] {
            let (s, n) = Timestamp(t).to_parts();
            assert!((0..1_000_000_000).contains(&n));
            assert_eq!(Timestamp::from_parts(s, n), Some(Timestamp(t)));
        }
    }

    #[test]
    fn out_of_range_parts_are_refused() {
        assert_eq!(Timestamp::from_parts(i64::MAX, 0), None);
        assert_eq!(Timestamp::from_parts(0, -1), None);
        assert_eq!(Timestamp::from_parts(0, 1_000_000_000), None);
    }
}
