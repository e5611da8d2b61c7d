//! The store conformance suite against SQLite, one fresh database per test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use store_conformance::Fixture;
use store_sqlite::SqliteStore;

async fn fixture() -> Fixture {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = SqliteStore::open(dir.path().join("offers.db"))
        .await
        .expect("open the SQLite store");
    // The temp dir must outlive the store: it is dropped after the test.
    Fixture::with_guard(Arc::new(store), dir)
}

store_conformance::conformance_suite!(fixture);
