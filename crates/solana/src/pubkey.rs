//! 32-byte Solana public keys: base58 text form, program-derived addresses
//! and associated token accounts, without the agave crates.

use std::fmt;
use std::str::FromStr;

use curve25519_dalek::edwards::CompressedEdwardsY;
use sha2::{Digest, Sha256};

/// A Solana public key (account address).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Pubkey(pub [u8; 32]);

/// Why a base58 string or byte slice is not a pubkey.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PubkeyError {
    #[error("invalid base58 pubkey {0:?}")]
    InvalidBase58(String),
    #[error("pubkey must be 32 bytes, got {0}")]
    WrongLength(usize),
    #[error("no viable program-derived address bump")]
    NoViableBump,
    #[error("too many or too long seeds")]
    BadSeeds,
}

/// SPL Token program.
pub const TOKEN_PROGRAM_ID: Pubkey =
    Pubkey::from_str_const("TokenkegQfeZyiNwAJbNbGKPFXCWuBvf9Ss623VQ5DA");
/// SPL Token-2022 program.
pub const TOKEN_2022_PROGRAM_ID: Pubkey =
    Pubkey::from_str_const("TokenzQdBNbLqP5VEhdkAS6EPFLC1PHnBqCXEpPxuEb");
/// Associated Token Account program.
pub const ASSOCIATED_TOKEN_PROGRAM_ID: Pubkey =
    Pubkey::from_str_const("ATokenGPvbdGVxr1b2hvZbsiqW5xWH25efTNsLJA8knL");
/// Wrapped SOL mint (9 decimals).
pub const WRAPPED_SOL_MINT: Pubkey =
    Pubkey::from_str_const("So11111111111111111111111111111111111111112");

const MAX_SEEDS: usize = 16;
const MAX_SEED_LEN: usize = 32;
const PDA_MARKER: &[u8] = b"ProgramDerivedAddress";

impl Pubkey {
    /// Decode base58 at compile time; a bad literal fails the build, never
    /// a running process.
    pub const fn from_str_const(s: &str) -> Self {
        Pubkey(bs58::decode(s.as_bytes()).into_array_const_unwrap::<32>())
    }

    /// A pubkey from exactly 32 bytes.
    pub fn from_slice(bytes: &[u8]) -> Result<Self, PubkeyError> {
        <[u8; 32]>::try_from(bytes)
            .map(Pubkey)
            .map_err(|_| PubkeyError::WrongLength(bytes.len()))
    }

    pub fn to_bytes(self) -> [u8; 32] {
        self.0
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Whether the bytes are a valid ed25519 point (PDAs must not be).
    pub fn is_on_curve(&self) -> bool {
        CompressedEdwardsY(self.0).decompress().is_some()
    }

    /// `create_program_address`: sha256(seeds ‖ program ‖ marker), rejected
    /// when the result lies on the curve.
    pub fn create_program_address(
        seeds: &[&[u8]],
        program_id: &Pubkey,
    ) -> Result<Pubkey, PubkeyError> {
        if seeds.len() > MAX_SEEDS || seeds.iter().any(|s| s.len() > MAX_SEED_LEN) {
            return Err(PubkeyError::BadSeeds);
        }
        let mut h = Sha256::new();
        for s in seeds {
            h.update(s);
        }
        h.update(program_id.0);
        h.update(PDA_MARKER);
        let key = Pubkey(h.finalize().into());
        if key.is_on_curve() {
            return Err(PubkeyError::NoViableBump);
        }
        Ok(key)
    }

    /// `find_program_address`: the first bump from 255 down whose address is
    /// off the curve.
    pub fn find_program_address(
        seeds: &[&[u8]],
        program_id: &Pubkey,
    ) -> Result<(Pubkey, u8), PubkeyError> {
        if seeds.len() >= MAX_SEEDS {
            return Err(PubkeyError::BadSeeds);
        }
        for bump in (0..=u8::MAX).rev() {
            let bump_seed = [bump];
            let mut all: Vec<&[u8]> = seeds.to_vec();
            all.push(&bump_seed);
            match Self::create_program_address(&all, program_id) {
                Ok(k) => return Ok((k, bump)),
                Err(PubkeyError::NoViableBump) => continue,
                Err(e) => return Err(e),
            }
        }
        Err(PubkeyError::NoViableBump)
    }
}

/// The associated token account of `owner` for `mint` under `token_program`
/// (seeds `[owner, token_program, mint]`).
pub fn associated_token_address(owner: &Pubkey, mint: &Pubkey, token_program: &Pubkey) -> Pubkey {
    Pubkey::find_program_address(
        &[&owner.0, &token_program.0, &mint.0],
        &ASSOCIATED_TOKEN_PROGRAM_ID,
    )
    .map(|(k, _)| k)
    // Three 32-byte seeds are always valid and a bump exists with
    // overwhelming probability (2^-256 otherwise); fall back to default.
    .unwrap_or_default()
}

impl fmt::Display for Pubkey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&bs58::encode(self.0).into_string())
    }
}

impl fmt::Debug for Pubkey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Pubkey({self})")
    }
}

impl FromStr for Pubkey {
    type Err = PubkeyError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Pubkey::from_base58(s.as_bytes())
    }
}

impl Pubkey {
    /// Base58 text (as bytes) to a pubkey, with exactly the results of
    /// `bs58::decode(..).onto([0; 32])` and a length check. Account keys
    /// are the costliest part of reading a `getProgramAccounts` response,
    /// so valid keys take [`decode_32`]; only a failure goes through bs58,
    /// to report the same error as before.
    pub fn from_base58(text: &[u8]) -> Result<Self, PubkeyError> {
        if let Some(key) = decode_32(text) {
            return Ok(Pubkey(key));
        }
        let invalid = || PubkeyError::InvalidBase58(String::from_utf8_lossy(text).into_owned());
        // 32 bytes are at most 44 base58 chars; refuse longer input early.
        if text.len() > 44 {
            return Err(invalid());
        }
        let mut out = [0u8; 32];
        match bs58::decode(text).onto(&mut out) {
            Ok(32) => Ok(Pubkey(out)),
            Ok(n) => Err(PubkeyError::WrongLength(n)),
            Err(_) => Err(invalid()),
        }
    }
}

/// The bitcoin base58 alphabet (Solana's).
const BASE58_ALPHABET: &[u8; 58] = b"123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz";

/// Each byte's base58 digit value; 0xff for bytes outside the alphabet.
const BASE58_DIGITS: [u8; 256] = {
    let mut table = [0xff; 256];
    let mut i = 0;
    while i < 58 {
        table[BASE58_ALPHABET[i] as usize] = i as u8;
        i += 1;
    }
    table
};

/// Base58 digits per limb of the intermediate form: 58^10 < 2^59.
const DIGITS_PER_LIMB: usize = 10;
/// Limbs of 58^10 that hold the 44 digits of the longest key text (50 with
/// leading zero digits).
const LIMBS: usize = 5;

/// Row `i`: 58^(10·(4−i)), the weight of limb `i`, as four 64-bit words,
/// most significant first.
const LIMB_WEIGHTS: [[u64; 4]; LIMBS] = {
    let mut table = [[0u64; 4]; LIMBS];
    let mut i = 0;
    while i < LIMBS {
        let mut words = [0u64; 4];
        words[3] = 1;
        let mut e = 0;
        // 58^40 < 2^235: the power fits the four words.
        while e < DIGITS_PER_LIMB * (LIMBS - 1 - i) {
            let mut carry = 0u128;
            let mut k = 4;
            while k > 0 {
                k -= 1;
                let v = words[k] as u128 * 58 + carry;
                words[k] = v as u64;
                carry = v >> 64;
            }
            e += 1;
        }
        table[i] = words;
        i += 1;
    }
    table
};

/// The 32 bytes that base58 `text` canonically encodes, or `None` for
/// anything else (the caller then asks bs58 why). Firedancer's method (as
/// in five8), widened: digits are looked up once, without branches, into
/// five limbs of 58^10, and the limbs times their weights in 2^64 words
/// give the bytes; no carry chain runs across digits.
pub(crate) fn decode_32(text: &[u8]) -> Option<[u8; 32]> {
    // 32 zero bytes are 32 '1's; 2^256 - 1 is 44 digits.
    if !(32..=44).contains(&text.len()) {
        return None;
    }
    let mut digits = [0u8; DIGITS_PER_LIMB * LIMBS];
    let mut invalid = 0u8;
    for (digit, &c) in digits[DIGITS_PER_LIMB * LIMBS - text.len()..]
        .iter_mut()
        .zip(text)
    {
        let value = BASE58_DIGITS[usize::from(c)];
        invalid |= value;
        *digit = value;
    }
    // Digit values are below 58, so only a non-digit sets the top bit.
    if invalid & 0x80 != 0 {
        return None;
    }
    let horner = |ds: &[u8]| ds.iter().fold(0u64, |acc, &d| acc * 58 + u64::from(d));
    let mut words = [0u128; 4];
    for (limb_digits, weight) in digits.chunks_exact(DIGITS_PER_LIMB).zip(&LIMB_WEIGHTS) {
        // Two halves of five digits shorten the dependency chain.
        let (high, low) = limb_digits.split_at(DIGITS_PER_LIMB / 2);
        let limb = horner(high) * 58u64.pow(5) + horner(low);
        // limb < 2^59 and each weight word < 2^64; summed over the five
        // limbs each word stays below 2^128 (checked in the tests).
        for (word, &w) in words.iter_mut().zip(weight) {
            *word += u128::from(limb) * u128::from(w);
        }
    }
    for i in (1..4).rev() {
        words[i - 1] += words[i] >> 64;
        words[i] &= u128::from(u64::MAX);
    }
    // Above 2^256 - 1: not a 32-byte value.
    if words[0] > u128::from(u64::MAX) {
        return None;
    }
    let mut out = [0u8; 32];
    for (bytes, &word) in out.chunks_exact_mut(8).zip(&words) {
        bytes.copy_from_slice(&(word as u64).to_be_bytes());
    }
    // Canonical text has one leading '1' per leading zero byte, no more
    // (bs58 would decode extra '1's into a longer key) and no fewer.
    let zero_bytes = out.iter().take_while(|&&b| b == 0).count();
    let ones = text.iter().take_while(|&&c| c == b'1').count();
    (zero_bytes == ones).then_some(out)
}

impl From<[u8; 32]> for Pubkey {
    fn from(b: [u8; 32]) -> Self {
        Pubkey(b)
    }
}

impl serde::Serialize for Pubkey {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Pubkey {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Base58Visitor;
        impl serde::de::Visitor<'_> for Base58Visitor {
            type Value = Pubkey;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a base58 pubkey string")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Pubkey, E> {
                Pubkey::from_base58(v).map_err(E::custom)
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Pubkey, E> {
                self.visit_bytes(v.as_bytes())
            }
        }
        // Asking for bytes lets serde_json hand over the string raw, without
        // a UTF-8 pass: the base58 alphabet check covers it.
        d.deserialize_bytes(Base58Visitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base58_round_trip() -> Result<(), PubkeyError> {
        let s = "MFv2hWf31Z9kbCa1snEPYctwafyhdvnV7FZnsebVacA";
        let k: Pubkey = s.parse()?;
        assert_eq!(k.to_string(), s);
        assert_eq!(
            Pubkey::default().to_string(),
            "11111111111111111111111111111111"
        );
        assert!("0OIl".parse::<Pubkey>().is_err());
        assert!("abc".parse::<Pubkey>().is_err());
        assert_eq!(
            Pubkey::from_slice(&[0; 31]),
            Err(PubkeyError::WrongLength(31))
        );
        Ok(())
    }

    #[test]
    fn base58_edge_cases_match_bs58() {
        let max = [0xffu8; 32];
        let mut one_leading_zero = [0xffu8; 32];
        one_leading_zero[0] = 0;
        for text in [
            String::new(),
            "1".into(),
            "1".repeat(32),
            "1".repeat(33),
            "1".repeat(44),
            "z".repeat(44),
            bs58::encode(max).into_string(),
            bs58::encode(one_leading_zero).into_string(),
            bs58::encode([0u8; 31]).into_string(),
            bs58::encode([7u8; 33]).into_string(),
            "11111111111111111111111111111112".into(),
            "So11111111111111111111111111111111111111112".into(),
            "So1111111111111111111111111111111111111111O".into(),
            "Sö111111111111111111111111111111111111111".into(),
        ] {
            assert_eq!(
                Pubkey::from_base58(text.as_bytes()),
                bs58_reference(text.as_bytes()),
                "{text:?}"
            );
        }
    }

    /// The column sums of `decode_32` cannot overflow: the largest limb
    /// times each column of weights, summed, stays below 2^128.
    #[test]
    fn limb_products_fit_u128() {
        let max_limb = 58u128.pow(DIGITS_PER_LIMB as u32) - 1;
        assert!(max_limb < 1 << 64);
        for column in 0..4 {
            let sum = LIMB_WEIGHTS.iter().try_fold(0u128, |sum, row| {
                max_limb
                    .checked_mul(u128::from(row[column]))
                    .and_then(|p| sum.checked_add(p))
            });
            assert!(sum.is_some(), "column {column}");
        }
        // The last limb weighs 1; the one before 58^10.
        assert_eq!(LIMB_WEIGHTS[LIMBS - 1], [0, 0, 0, 1]);
        assert_eq!(LIMB_WEIGHTS[LIMBS - 2], [0, 0, 0, 58u64.pow(10)]);
    }

    /// The decoder this module replaced, kept as the reference.
    fn bs58_reference(text: &[u8]) -> Result<Pubkey, PubkeyError> {
        let invalid = || PubkeyError::InvalidBase58(String::from_utf8_lossy(text).into_owned());
        if text.len() > 44 {
            return Err(invalid());
        }
        let mut out = [0u8; 32];
        let n = bs58::decode(text).onto(&mut out).map_err(|_| invalid())?;
        if n != 32 {
            return Err(PubkeyError::WrongLength(n));
        }
        Ok(Pubkey(out))
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(4000))]
        #[test]
        fn base58_matches_bs58_on_any_text(text in "[1-9A-HJ-NP-Za-km-z0OIl]{0,46}") {
            proptest::prop_assert_eq!(
                Pubkey::from_base58(text.as_bytes()),
                bs58_reference(text.as_bytes())
            );
        }

        #[test]
        fn base58_round_trips_keys_with_leading_zeros(
            key in proptest::prelude::any::<[u8; 32]>(),
            zeros in 0usize..33,
        ) {
            let mut key = key;
            key[..zeros].fill(0);
            let text = bs58::encode(key).into_string();
            proptest::prop_assert_eq!(Pubkey::from_base58(text.as_bytes()), Ok(Pubkey(key)));
            let shorter = bs58::encode(&key[1..]).into_string();
            proptest::prop_assert_eq!(
                Pubkey::from_base58(shorter.as_bytes()),
                bs58_reference(shorter.as_bytes())
            );
        }
    }

    #[test]
    fn ata_matches_an_independent_derivation() -> Result<(), PubkeyError> {
        // Pinned from an independent Python derivation (hashlib sha256 and a
        // Legendre-symbol curve check), both with bump 255.
        let owner: Pubkey = "4qp6Fx6tnZkY5Wropq9wUYgtFxXKwE6viZxFHg3rdAG8".parse()?;
        let ata = associated_token_address(&owner, &WRAPPED_SOL_MINT, &TOKEN_PROGRAM_ID);
        assert_eq!(
            ata.to_string(),
            "9br3YgPUzyXPCFCKYpD5PxpFsSLcyqrh3yNzF7bc4wSM"
        );
        let usdc: Pubkey = "EPjFWdd5AufqSSqeM2qN1xzybapC8G4wEGGkZwyTDt1v".parse()?;
        let ata = associated_token_address(&owner, &usdc, &TOKEN_2022_PROGRAM_ID);
        assert_eq!(
            ata.to_string(),
            "DUrFqF1GtJr8MAaekzYUzjEBquXopaQGRhCeAj8XAGCb"
        );
        let (again, bump) = Pubkey::find_program_address(
            &[&owner.0, &TOKEN_2022_PROGRAM_ID.0, &usdc.0],
            &ASSOCIATED_TOKEN_PROGRAM_ID,
        )?;
        assert_eq!((again, bump), (ata, 255));
        assert!(!ata.is_on_curve());
        Ok(())
    }
}
