//! The store conformance suite against PostgreSQL, one fresh schema per test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::Arc;
use store_conformance::Fixture;

async fn fixture() -> Fixture {
    let Some(url) = support::database_url() else {
        // Skipped locally: the suite runs against memory instead of failing.
        return Fixture::new(store_memory::MemoryStore::new());
    };
    let schema = support::unique_schema();
    let store = support::store(&url, &schema).await;
    Fixture::with_guard(Arc::new(store), support::DropSchema { url, schema })
}

store_conformance::conformance_suite!(fixture);
