//! Liquidity sources: the Solana chain (Lavarage, marginfi) and off-chain
//! partner APIs, and archive snapshots in object storage.

pub mod archive;
pub mod chain;
pub mod off_chain;

pub use archive::ArchiveSource;
pub use chain::{ChainOptions, ChainSource};
pub use off_chain::OffChainSource;
