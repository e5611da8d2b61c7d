//! Bounds-checked little-endian readers shared by every account decoder.
//!
//! Every reader returns `DecodeError::TooShort` instead of panicking, so a
//! truncated or hostile account can never take a source down.

use crate::pubkey::Pubkey;

/// Why an account's bytes could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("account data too short: need {need} bytes, got {got}")]
    TooShort { need: usize, got: usize },
    #[error("wrong discriminator: expected {expected}, got {got}")]
    WrongDiscriminator { expected: String, got: String },
    #[error("wrong owner: expected {expected}, got {got}")]
    WrongOwner { expected: String, got: String },
    #[error("invalid account data: {0}")]
    Invalid(String),
}

impl DecodeError {
    /// Short, stable label for metrics (`reason` label).
    pub fn reason(&self) -> &'static str {
        match self {
            DecodeError::TooShort { .. } => "too_short",
            DecodeError::WrongDiscriminator { .. } => "wrong_discriminator",
            DecodeError::WrongOwner { .. } => "wrong_owner",
            DecodeError::Invalid(_) => "invalid",
        }
    }
}

/// Lowercase hex, used to show discriminators in errors.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        // Writing to a String cannot fail.
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// `bytes[offset..offset + N]` as an array, or `TooShort`.
pub fn read_array<const N: usize>(bytes: &[u8], offset: usize) -> Result<[u8; N], DecodeError> {
    let end = offset.checked_add(N).ok_or(DecodeError::TooShort {
        need: usize::MAX,
        got: bytes.len(),
    })?;
    bytes
        .get(offset..end)
        .and_then(|s| <[u8; N]>::try_from(s).ok())
        .ok_or(DecodeError::TooShort {
            need: end,
            got: bytes.len(),
        })
}

/// Require at least `need` bytes.
pub fn require_len(bytes: &[u8], need: usize) -> Result<(), DecodeError> {
    if bytes.len() < need {
        return Err(DecodeError::TooShort {
            need,
            got: bytes.len(),
        });
    }
    Ok(())
}

/// Check the 8-byte Anchor discriminator at offset 0.
pub fn check_discriminator(bytes: &[u8], expected: &[u8; 8]) -> Result<(), DecodeError> {
    let got: [u8; 8] = read_array(bytes, 0)?;
    if &got != expected {
        return Err(DecodeError::WrongDiscriminator {
            expected: hex(expected),
            got: hex(&got),
        });
    }
    Ok(())
}

/// Check the owning program of an account.
pub fn check_owner(owner: &Pubkey, expected: &Pubkey) -> Result<(), DecodeError> {
    if owner != expected {
        return Err(DecodeError::WrongOwner {
            expected: expected.to_string(),
            got: owner.to_string(),
        });
    }
    Ok(())
}

pub fn read_u8(bytes: &[u8], offset: usize) -> Result<u8, DecodeError> {
    Ok(read_array::<1>(bytes, offset)?[0])
}

pub fn read_u16(bytes: &[u8], offset: usize) -> Result<u16, DecodeError> {
    read_array(bytes, offset).map(u16::from_le_bytes)
}

pub fn read_u32(bytes: &[u8], offset: usize) -> Result<u32, DecodeError> {
    read_array(bytes, offset).map(u32::from_le_bytes)
}

pub fn read_u64(bytes: &[u8], offset: usize) -> Result<u64, DecodeError> {
    read_array(bytes, offset).map(u64::from_le_bytes)
}

pub fn read_i64(bytes: &[u8], offset: usize) -> Result<i64, DecodeError> {
    read_array(bytes, offset).map(i64::from_le_bytes)
}

pub fn read_pubkey(bytes: &[u8], offset: usize) -> Result<Pubkey, DecodeError> {
    read_array(bytes, offset).map(Pubkey)
}

/// I80F48 fixed point (16 bytes LE two's complement, value = raw / 2^48) as f64.
pub fn read_i80f48(bytes: &[u8], offset: usize) -> Result<f64, DecodeError> {
    read_array(bytes, offset).map(|b| i80f48_to_f64(i128::from_le_bytes(b)))
}

/// Convert a raw I80F48 bit pattern to f64.
pub fn i80f48_to_f64(raw: i128) -> f64 {
    // 2^48 is exact in f64; the division only rounds once.
    raw as f64 / 281_474_976_710_656.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readers_are_little_endian_and_bounds_checked() {
        let b = [1u8, 2, 3, 4, 5, 6, 7, 8, 9];
        assert_eq!(read_u8(&b, 8), Ok(9));
        assert_eq!(read_u16(&b, 0), Ok(0x0201));
        assert_eq!(read_u64(&b, 1), Ok(0x0908_0706_0504_0302));
        assert_eq!(
            read_u64(&b, 2),
            Err(DecodeError::TooShort { need: 10, got: 9 })
        );
        assert!(read_u8(&b, usize::MAX).is_err());
        assert!(read_pubkey(&b, 0).is_err());
        assert_eq!(read_i64(&[0xff; 8], 0), Ok(-1));
    }

    #[test]
    fn i80f48_values() {
        let mut b = [0u8; 16];
        b[6] = 1; // 2^48 -> 1.0
        assert_eq!(read_i80f48(&b, 0), Ok(1.0));
        let minus_half = (-(1i128 << 47)).to_le_bytes();
        assert_eq!(read_i80f48(&minus_half, 0), Ok(-0.5));
    }

    #[test]
    fn discriminator_check() {
        let d = [1u8, 2, 3, 4, 5, 6, 7, 8];
        assert!(check_discriminator(&d, &d).is_ok());
        let e = check_discriminator(&[0u8; 8], &d);
        assert!(matches!(e, Err(DecodeError::WrongDiscriminator { .. })));
        assert!(matches!(
            check_discriminator(&[1u8; 3], &d),
            Err(DecodeError::TooShort { need: 8, got: 3 })
        ));
    }
}
