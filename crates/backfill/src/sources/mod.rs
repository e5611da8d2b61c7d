//! Liquidity sources. Chain and archive sources come later; the engine and
//! config already know their job kinds.

pub mod off_chain;

pub use off_chain::OffChainSource;
