//! One conformance suite for every `MarginOfferStore`: the in-memory store,
//! SQLite, PostgreSQL, and the gRPC client talking to a real server.
//!
//! Each rule group of `shared/spec/semantics.md` is one `pub async fn` taking
//! a fresh, empty [`SharedStore`]. A backend runs them all with one macro:
//!
//! ```ignore
//! store_conformance::conformance_suite!(|| async {
//!     store_conformance::Fixture::new(store_memory::MemoryStore::new())
//! });
//! ```
//!
//! The factory is any expression evaluating to something callable with no
//! arguments that returns a future of a [`Fixture`]; it is called once per
//! test, so every test starts from an empty store. The fixture's `guard`
//! keeps whatever the store needs alive (a temp dir, a server task) until the
//! test ends.
//!
//! Layout:
//! - [`support`]: offer builders, snapshots, error assertions, the reference
//!   sort and filter the listing tests compare against.
//! - [`validation`]: every validation rule on every write path.
//! - [`timestamps`]: created/updated timestamp management.
//! - [`listing`]: expiry, `active_only`, filters, limits, sorting, totals,
//!   offset and keyset paging (also under concurrent writes).
//! - [`single`]: create/get/update/delete/create-or-update and their errors.
//! - [`bulk`]: bulk create/update/delete/upsert, their flags and atomicity.
//! - [`overwrite`]: scoped snapshot sync, dry runs, previews.
//! - [`stats`]: stats and the counting conveniences.
//! - [`revisions`]: the revision counter, `changes_since`, health.
//!
//! The subscription stream is not covered here: it is a gRPC-level surface
//! with its own tests in the service crate.

#![allow(clippy::unwrap_used, clippy::expect_used)]

pub mod bulk;
pub mod listing;
pub mod overwrite;
pub mod revisions;
pub mod single;
pub mod stats;
pub mod support;
pub mod timestamps;
pub mod validation;

use offer_store::{MarginOfferStore, SharedStore};
use std::any::Any;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

pub use offer_domain;
pub use offer_store;

/// A store under test plus whatever must outlive it.
pub struct Fixture {
    pub store: SharedStore,
    /// Dropped after the test: keeps temp dirs, servers, runtimes alive.
    pub guard: Box<dyn Any + Send>,
}

impl Fixture {
    /// A store that needs nothing kept alive beside it.
    pub fn new(store: impl MarginOfferStore) -> Self {
        Fixture::shared(Arc::new(store))
    }

    /// A store already behind an `Arc`.
    pub fn shared(store: SharedStore) -> Self {
        Fixture {
            store,
            guard: Box::new(()),
        }
    }

    /// A store with a guard (temp dir, server handle, ...) dropped after it.
    pub fn with_guard(store: SharedStore, guard: impl Any + Send) -> Self {
        Fixture {
            store,
            guard: Box::new(guard),
        }
    }
}

/// How long one conformance test may take before it is failed as hung.
pub const TEST_TIMEOUT: Duration = Duration::from_secs(180);

/// Runs one conformance test on a fresh fixture, on a multi-threaded runtime
/// with 4 workers (what `#[tokio::test(flavor = "multi_thread",
/// worker_threads = 4)]` expands to). Used by [`conformance_suite!`], which
/// goes through this function so that backend crates need no direct tokio
/// dependency for the suite.
pub fn run<F, FFut, T, TFut>(factory: F, test: T)
where
    F: FnOnce() -> FFut,
    FFut: Future<Output = Fixture>,
    T: FnOnce(SharedStore) -> TFut,
    TFut: Future<Output = ()>,
{
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .expect("build the test runtime");
    runtime.block_on(async move {
        let fixture = factory().await;
        let store = fixture.store.clone();
        if tokio::time::timeout(TEST_TIMEOUT, test(store))
            .await
            .is_err()
        {
            panic!("conformance test did not finish within {TEST_TIMEOUT:?}");
        }
        drop(fixture);
    });
}

/// Expands to one `#[test]` per conformance test, each running on a fresh
/// fixture from `factory` on a 4-worker multi-threaded tokio runtime.
///
/// `factory`: an expression evaluating to a `FnOnce() -> impl Future<Output =
/// Fixture>`, e.g. `|| async { Fixture::new(MemoryStore::new()) }` or the
/// path of an `async fn make() -> Fixture`. It is evaluated once per test.
#[macro_export]
macro_rules! conformance_suite {
    ($factory:expr) => {
        $crate::conformance_suite!(@tests $factory;
            validation::single_writes_reject_invalid_offers,
            validation::bulk_writes_reject_invalid_offers,
            validation::overwrite_rejects_invalid_offers,
            validation::boundary_values_are_accepted,
            timestamps::created_is_preserved_across_writes,
            timestamps::client_created_timestamp_for_new_ids,
            timestamps::identical_writes_are_unchanged,
            timestamps::real_changes_bump_updated,
            listing::expired_offers_are_hidden,
            listing::active_only_hides_empty_offers,
            listing::every_filter_matches_exactly,
            listing::limits_and_bad_arguments,
            listing::every_sort_field_is_a_total_order,
            listing::total_counts_only_matches,
            listing::offset_paging,
            listing::keyset_paging_visits_every_offer_once,
            listing::keyset_paging_under_concurrent_writes,
            listing::page_token_errors,
            listing::list_conveniences,
            single::create_and_get_round_trip,
            single::single_write_errors,
            single::update_and_delete,
            single::concurrent_create_or_update_creates_once,
            bulk::bulk_create_success_and_order,
            bulk::bulk_create_conflicts,
            bulk::bulk_validate_all,
            bulk::bulk_duplicate_ids,
            bulk::bulk_atomicity,
            bulk::bulk_update_flags,
            bulk::bulk_delete_flags,
            bulk::bulk_upsert,
            overwrite::overwrite_is_scoped_by_source,
            overwrite::overwrite_without_filter_replaces_the_store,
            overwrite::dry_run_matches_the_real_run,
            overwrite::preview_lists_ids_in_scope,
            overwrite::empty_overwrites,
            overwrite::offers_outside_the_scope_are_refused,
            stats::stats_totals_and_breakdowns,
            stats::stats_filter_and_expiry,
            stats::stats_conveniences,
            revisions::every_write_bumps_revision_once,
            revisions::changes_since_records,
            revisions::change_batches_hold_whole_revisions,
            revisions::change_records_carry_origin_and_operation,
            revisions::health_check_ok,
        );
    };
    (@tests $factory:expr; $($module:ident :: $name:ident),+ $(,)?) => {
        $(
            #[test]
            fn $name() {
                $crate::run($factory, $crate::$module::$name);
            }
        )+
    };
}
