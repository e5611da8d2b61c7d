//! Solana account sources for the backfiller and the realtime ETL, without
//! the agave dependency tree.
//!
//! Layout:
//! - `lavarage`: Lavarage V1/V2 Pool and NodeWallet decoders and the
//!   one-offer-per-pool rule.
//! - `marginfi`: marginfi v2 Bank and MarginfiGroup decoders and the
//!   one-offer-per-bank-pair rule.
//!
//! Architecture invariant: decoders never panic; every malformed input is a
//! `DecodeError` naming what was wrong.

pub mod decode;
pub mod lavarage;
pub mod marginfi;
pub mod pubkey;
pub mod rpc;
#[cfg(feature = "testing")]
pub mod testing;

pub use decode::DecodeError;
pub use pubkey::Pubkey;
