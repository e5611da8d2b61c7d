//! The store conformance suite against the in-memory store.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use store_conformance::Fixture;
use store_memory::MemoryStore;

store_conformance::conformance_suite!(|| async { Fixture::new(MemoryStore::new()) });
