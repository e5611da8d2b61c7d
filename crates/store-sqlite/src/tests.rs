//! SQLite-specific tests; the behaviour shared by all backends is checked by
//! the conformance suite (`tests/conformance.rs`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::*;
use crate::scope::{SCAN_MIN_REQUEST, ScopeRead, ScopeRows};
use offer_domain::query::compare_offers;
use offer_domain::write::{OverwriteScope, StoredOffer};
use offer_domain::{ChangeType, OfferType, SortField, SortOrder};
use std::time::Instant;

fn ctx() -> WriteContext {
    WriteContext::new("test")
}

fn offer(i: usize) -> MarginOffer {
    let mut o = MarginOffer::example(format!("offer-{i:05}"));
    o.offer_type = OfferType::ALL[i % 3];
    o.collateral_token = ["SOL", "ETH", "BTC", "sol"][i % 4].into();
    o.borrow_token = ["USDC", "USDT"][i % 2].into();
    o.available_borrow_amount = (i % 7) as f64 * 10.5;
    o.interest_rate = (i % 11) as f64 / 100.0;
    o.max_open_ltv = 0.5 + (i % 5) as f64 / 20.0;
    o.liquidation_ltv = 0.9;
    o.source = (!i.is_multiple_of(3)).then(|| format!("src-{}", i % 2));
    o.lender_address = i.is_multiple_of(4).then(|| "lender".to_owned());
    o
}

async fn open_temp() -> (tempfile::TempDir, SqliteStore) {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path().join("offers.db"))
        .await
        .unwrap();
    (dir, store)
}

fn with_writer<T>(store: &SqliteStore, f: impl FnOnce(&Connection) -> T) -> T {
    let guard = store.inner.writer.lock();
    f(&guard.as_ref().unwrap().conn)
}

/// The schema version recorded in the file.
fn user_version(conn: &Connection) -> i64 {
    conn.query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap()
}

#[tokio::test]
async fn data_and_revision_survive_close_and_reopen() {
    let dir = tempfile::tempdir().unwrap();
    // A missing parent directory is created.
    let path = dir.path().join("nested/deeper/offers.db");
    let store = SqliteStore::open(&path).await.unwrap();
    let mut o = offer(1);
    o.term_days = Some(30);
    o.last_borrowed_timestamp = Some(Timestamp(123));
    let written = store.create(o, &ctx()).await.unwrap();
    store.delete(&written.offer.id, &ctx()).await.unwrap();
    let again = store.create(offer(1), &ctx()).await.unwrap();
    let written = store.create_or_update(offer(2), &ctx()).await.unwrap();
    assert_eq!(written.revision, 4);
    store.close().await.unwrap();

    let store = SqliteStore::open(&path).await.unwrap();
    assert_eq!(store.revision().await.unwrap(), 4);
    assert_eq!(store.get("offer-00001").await.unwrap(), again.offer);
    assert_eq!(store.get("offer-00002").await.unwrap(), written.offer);
    let log = store.changes_since(0, 100).await.unwrap();
    assert_eq!(log.head, 4);
    let types: Vec<_> = log.changes.iter().map(|c| c.change_type).collect();
    assert_eq!(
        types,
        [
            ChangeType::Created,
            ChangeType::Deleted,
            ChangeType::Created,
            ChangeType::Created
        ]
    );
    assert_eq!(log.changes[1].offer.term_days, Some(30));
    assert_eq!(
        log.changes[1].offer.last_borrowed_timestamp,
        Some(Timestamp(123))
    );
    assert!(log.changes.iter().all(|c| c.origin == "test"));
    store.close().await.unwrap();
}

#[tokio::test]
async fn migrations_are_idempotent() {
    let (dir, store) = open_temp().await;
    store.create(offer(1), &ctx()).await.unwrap();
    // Running the migrations again on an up-to-date file changes nothing.
    {
        let mut guard = store.inner.writer.lock();
        let conn = &mut guard.as_mut().unwrap().conn;
        schema::migrate(conn).unwrap();
        schema::migrate(conn).unwrap();
        assert_eq!(user_version(conn), schema::SCHEMA_VERSION);
    }
    store.close().await.unwrap();
    let store = SqliteStore::open(dir.path().join("offers.db"))
        .await
        .unwrap();
    assert_eq!(store.revision().await.unwrap(), 1);
    assert!(store.get("offer-00001").await.is_ok());
    // A file from a newer build is refused rather than misread.
    with_writer(&store, |c| {
        c.execute_batch("PRAGMA user_version = 99").unwrap();
    });
    store.close().await.unwrap();
    let err = SqliteStore::open(dir.path().join("offers.db"))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, StoreError::Unavailable(m) if m.contains("newer")),
        "{err:?}"
    );
}

#[tokio::test]
async fn durability_pragmas_are_applied() {
    let (_dir, store) = open_temp().await;
    with_writer(&store, |c| {
        let mode: String = c
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
        // 2 = FULL
        let sync: i64 = c.query_row("PRAGMA synchronous", [], |r| r.get(0)).unwrap();
        assert_eq!(sync, 2);
        let page: i64 = c.query_row("PRAGMA page_size", [], |r| r.get(0)).unwrap();
        assert_eq!(page, 8192, "a new file takes the larger pages");
    });
    // Readers see the WAL mode too (it is persistent in the file).
    let mode = store
        .read(|tx| {
            tx.query_row("PRAGMA journal_mode", [], |r| r.get::<_, String>(0))
                .map_err(map_err)
        })
        .await
        .unwrap();
    assert_eq!(mode, "wal");
}

/// The window is the larger of the count and the age: young changes stay.
#[tokio::test]
async fn change_log_keeps_changes_younger_than_the_min_age() {
    let dir = tempfile::tempdir().unwrap();
    let opts = SqliteOptions {
        readers: 1,
        change_log_retention: 3,
        change_log_min_age: Some(std::time::Duration::from_secs(3600)),
    };
    let store = SqliteStore::open_with(dir.path().join("offers.db"), opts)
        .await
        .unwrap();
    for i in 0..10 {
        store.create(offer(i), &ctx()).await.unwrap();
    }
    assert_eq!(store.changes_since(0, 100).await.unwrap().changes.len(), 10);
}

#[tokio::test]
async fn change_log_is_pruned_and_old_revisions_are_out_of_range() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("offers.db");
    let opts = SqliteOptions {
        readers: 1,
        change_log_retention: 3,
        change_log_min_age: Some(std::time::Duration::ZERO),
    };
    let store = SqliteStore::open_with(&path, opts.clone()).await.unwrap();
    // Nothing pruned yet: from zero is fine even on an empty log.
    assert!(store.changes_since(0, 10).await.unwrap().changes.is_empty());
    for i in 0..10 {
        store.create(offer(i), &ctx()).await.unwrap();
    }
    let batch = store.changes_since(7, 100).await.unwrap();
    assert_eq!(
        batch.changes.iter().map(|c| c.revision).collect::<Vec<_>>(),
        [8, 9, 10]
    );
    assert_eq!(batch.head, 10);
    assert_eq!(
        store.changes_since(6, 100).await.unwrap_err(),
        StoreError::OutOfRange {
            requested: 6,
            oldest: 8
        }
    );
    assert!(matches!(
        store.changes_since(0, 100).await,
        Err(StoreError::OutOfRange { .. })
    ));
    // Pruning is exact after a reopen and when the retained log is empty.
    store.close().await.unwrap();
    let store = SqliteStore::open_with(&path, opts).await.unwrap();
    assert!(matches!(
        store.changes_since(6, 100).await,
        Err(StoreError::OutOfRange { oldest: 8, .. })
    ));
    with_writer(&store, |c| {
        c.execute_batch("DELETE FROM changes").unwrap();
    });
    assert!(
        store
            .changes_since(10, 100)
            .await
            .unwrap()
            .changes
            .is_empty()
    );
    assert!(matches!(
        store.changes_since(6, 100).await,
        Err(StoreError::OutOfRange { oldest: 8, .. })
    ));
}

#[tokio::test]
async fn change_batches_hold_whole_revisions() {
    let (_dir, store) = open_temp().await;
    store.create(offer(0), &ctx()).await.unwrap();
    let out = store
        .bulk_create(
            (1..6).map(offer).collect(),
            BulkCreateOptions::default(),
            &ctx(),
        )
        .await
        .unwrap();
    assert_eq!(out.revision, 2);
    store.create(offer(6), &ctx()).await.unwrap();
    // The limit cuts revision 2: the batch stops before it.
    let b = store.changes_since(0, 3).await.unwrap();
    assert_eq!(b.changes.len(), 1);
    // A single revision larger than the limit comes whole.
    let b = store.changes_since(1, 2).await.unwrap();
    assert_eq!(b.changes.len(), 5);
    assert!(b.changes.iter().all(|c| c.revision == 2));
    let op = &b.changes[0].operation_id;
    assert!(!op.is_empty() && b.changes.iter().all(|c| &c.operation_id == op));
    let b = store.changes_since(2, 2).await.unwrap();
    assert_eq!(b.changes.len(), 1);
    assert_eq!(b.head, 3);
}

#[tokio::test]
async fn bad_paths_are_unavailable_and_name_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("junk.db");
    std::fs::write(&junk, vec![b'x'; 8192]).unwrap();
    let err = SqliteStore::open(&junk).await.unwrap_err();
    assert!(
        matches!(&err, StoreError::Unavailable(m) if m.contains("junk.db")),
        "{err:?}"
    );
    // A parent that is a file cannot be created as a directory.
    let under_file = junk.join("offers.db");
    let err = SqliteStore::open(&under_file).await.unwrap_err();
    assert!(
        matches!(&err, StoreError::Unavailable(m) if m.contains("junk.db")),
        "{err:?}"
    );
    // A directory is not a database file.
    let err = SqliteStore::open(dir.path()).await.unwrap_err();
    assert!(matches!(&err, StoreError::Unavailable(_)), "{err:?}");
}

#[tokio::test]
async fn closed_store_is_unavailable() {
    let (_dir, store) = open_temp().await;
    store.health_check().await.unwrap();
    store.close().await.unwrap();
    let closed = StoreError::Unavailable("store is closed".into());
    assert_eq!(store.health_check().await.unwrap_err(), closed);
    assert_eq!(store.get("x").await.unwrap_err(), closed);
    assert_eq!(store.create(offer(1), &ctx()).await.unwrap_err(), closed);
    assert_eq!(store.revision().await.unwrap_err(), closed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_create_or_update_creates_once() {
    let (_dir, store) = open_temp().await;
    let tasks: Vec<_> = (0..16)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                let mut o = offer(1);
                o.interest_rate = i as f64 / 100.0;
                store.create_or_update(o, &ctx()).await.unwrap()
            })
        })
        .collect();
    let mut created = 0;
    for t in tasks {
        created += usize::from(t.await.unwrap().was_created);
    }
    assert_eq!(created, 1);
}

/// The SQL translation of filters, expiry, sorting and keyset paging agrees
/// with the domain's reference semantics (`admits` + `compare_offers`).
#[tokio::test]
async fn listing_matches_the_reference_semantics() {
    let (_dir, store) = open_temp().await;
    let now = Timestamp::now();
    let day = offer_domain::time::NANOS_PER_DAY;
    let offers: Vec<MarginOffer> = (0..120)
        .map(|i| {
            let mut o = offer(i);
            // Several share a creation time, so ties exercise the id order.
            o.created_timestamp = Some(Timestamp(now.0 - (i as i64 % 9) * day));
            o.term_days = i.is_multiple_of(5).then_some(3);
            o
        })
        .collect();
    store
        .bulk_create(offers, BulkCreateOptions::default(), &ctx())
        .await
        .unwrap();
    let all: Vec<MarginOffer> = store
        .list(&ListQuery {
            include_expired: true,
            limit: 1000,
            ..Default::default()
        })
        .await
        .unwrap()
        .offers;
    assert_eq!(all.len(), 120);

    let mut queries = Vec::new();
    for by in SortField::ALL {
        for order in [SortOrder::Asc, SortOrder::Desc] {
            let mut q = ListQuery {
                sort_by: by,
                sort_order: order,
                limit: 7,
                ..Default::default()
            };
            queries.push(q.clone());
            q.filter.borrow_token = Some("USDC".into());
            q.active_only = true;
            queries.push(q.clone());
            q.filter.min_interest_rate = Some(0.02);
            q.filter.max_max_open_ltv = Some(0.6);
            q.include_expired = true;
            q.filter.source = Some("src-1".into());
            queries.push(q);
        }
    }
    for q in queries {
        let check_now = Timestamp::now();
        let mut want: Vec<&MarginOffer> = all.iter().filter(|o| q.admits(o, check_now)).collect();
        want.sort_by(|a, b| compare_offers(a, b, q.sort_by, q.sort_order));
        let want: Vec<&str> = want.iter().map(|o| o.id.as_str()).collect();

        let mut got = Vec::new();
        let mut q2 = q.clone();
        loop {
            let page = store.list(&q2).await.unwrap();
            assert_eq!(page.total as usize, want.len(), "{q:?}");
            got.extend(page.offers.iter().map(|o| o.id.clone()));
            match page.next_page_token {
                Some(t) => q2.page_token = Some(t),
                None => break,
            }
        }
        assert_eq!(got, want, "{q:?}");
        // Offset paging agrees too.
        let mut q3 = q.clone();
        q3.offset = 5;
        let page = store.list(&q3).await.unwrap();
        let ids: Vec<&str> = page.offers.iter().map(|o| o.id.as_str()).collect();
        let end = (5 + 7).min(want.len());
        assert_eq!(ids, want.get(5..end).unwrap_or_default(), "{q:?}");
    }

    let stats = store.stats(&StatsQuery::default()).await.unwrap();
    let mut reference = Stats {
        revision: 1,
        ..Default::default()
    };
    for o in all.iter().filter(|o| !o.is_expired(Timestamp::now())) {
        reference.add(o);
    }
    assert_eq!(stats, reference);
}

/// Run with `cargo test --release -p store-sqlite -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "timing; run in release mode"]
async fn overwrite_100k_throughput() {
    let (_dir, store) = open_temp().await;
    let make = |generation: usize| -> Vec<MarginOffer> {
        (0..100_000)
            .map(|i| {
                let mut o = offer(i);
                o.source = Some("bench".into());
                o.available_borrow_amount = (i + generation) as f64;
                o
            })
            .collect()
    };
    let req = |offers| OverwriteRequest {
        offers,
        filter: Some(OverwriteFilter::source("bench")),
        ..Default::default()
    };
    for (label, generation) in [("create", 0), ("update", 1), ("unchanged", 1)] {
        let r = req(make(generation));
        let t = Instant::now();
        let out = store.overwrite(r, &ctx()).await.unwrap();
        println!(
            "overwrite 100k ({label}): {:?} created={} updated={} unchanged={}",
            t.elapsed(),
            out.created_ids.len(),
            out.updated_ids.len(),
            out.unchanged_count
        );
    }
    let t = Instant::now();
    let out = store
        .overwrite(req(make(2).into_iter().take(50_000).collect()), &ctx())
        .await
        .unwrap();
    println!(
        "overwrite 100k (50k updated, 50k deleted): {:?} deleted={}",
        t.elapsed(),
        out.deleted_ids.len()
    );
}

fn query_plan(store: &SqliteStore, sql: &str, params: &[store_sql::SqlValue]) -> String {
    with_writer(store, |c| {
        let mut stmt = c.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
        let rows = stmt
            .query_map(params_from_iter(rows::values(params)), |r| {
                r.get::<_, String>(3)
            })
            .unwrap();
        rows.collect::<rusqlite::Result<Vec<_>>>()
            .unwrap()
            .join("\n")
    })
}

/// The common listings read their index in order (no sort of the matches)
/// on the first and on a token page, and count from the index alone.
#[tokio::test]
async fn common_listings_read_an_index_in_order() {
    let (_dir, store) = open_temp().await;
    store
        .bulk_create((0..50).map(offer).collect(), Default::default(), &ctx())
        .await
        .unwrap();
    let shape = |borrow: Option<&str>, collateral: Option<&str>, by, order| ListQuery {
        filter: offer_domain::OfferFilter {
            borrow_token: borrow.map(Into::into),
            collateral_token: collateral.map(Into::into),
            ..Default::default()
        },
        sort_by: by,
        sort_order: order,
        limit: 2,
        ..Default::default()
    };
    let cases = [
        (
            shape(Some("USDC"), None, SortField::InterestRate, SortOrder::Asc),
            "offers_borrow_rate",
        ),
        (
            shape(
                None,
                Some("SOL"),
                SortField::CreatedTimestamp,
                SortOrder::Desc,
            ),
            "offers_collateral_created",
        ),
        (
            shape(
                None,
                None,
                SortField::AvailableBorrowAmount,
                SortOrder::Desc,
            ),
            "offers_amount",
        ),
        (
            shape(None, None, SortField::CreatedTimestamp, SortOrder::Desc),
            "offers_created",
        ),
    ];
    for (query, index) in cases {
        let first = store.list(&query).await.unwrap();
        let next = ListQuery {
            page_token: first.next_page_token.clone(),
            ..query.clone()
        };
        assert!(next.page_token.is_some());
        for q in [&query, &next] {
            let statements = list_statements(q, &q.resolve().unwrap(), Timestamp::now()).unwrap();
            let page = query_plan(&store, &statements.page.0, &statements.page.1);
            assert!(page.contains(index), "{q:?} does not use {index}:\n{page}");
            assert!(!page.contains("TEMP B-TREE"), "{q:?} sorts:\n{page}");
            let count = query_plan(&store, &statements.count.0, &statements.count.1);
            assert!(
                count.contains("COVERING INDEX"),
                "{q:?} counts from the table:\n{count}"
            );
        }
    }
}

/// A file written by the first schema version is upgraded in place.
#[tokio::test]
async fn a_version_1_file_is_migrated() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v1.db");
    {
        let mut conn = Connection::open(&path).unwrap();
        schema::migrate_to(&mut conn, 1).unwrap();
        conn.execute_batch(
            "PRAGMA user_version = 1;
             INSERT INTO offers (id, offer_type, collateral_token, borrow_token,
               available_borrow_amount, max_open_ltv, liquidation_ltv, interest_rate,
               interest_model, liquidity_source, created_timestamp, updated_timestamp)
             VALUES ('old', 'V1', 'SOL', 'USDC', 5.0, 0.5, 0.9, 0.1, 'floating',
               'marginfi', 1, 1);",
        )
        .unwrap();
    }
    let store = SqliteStore::open(&path).await.unwrap();
    assert_eq!(with_writer(&store, user_version), schema::SCHEMA_VERSION);
    let mut q = ListQuery {
        sort_by: SortField::InterestRate,
        sort_order: SortOrder::Asc,
        ..Default::default()
    };
    q.filter.borrow_token = Some("USDC".into());
    let page = store.list(&q).await.unwrap();
    assert_eq!(page.total, 1);
    assert_eq!(page.offers[0].id, "old");
}

/// A version 2 file (changes as one column per offer field) is upgraded to
/// the compact change log with every change readable as before, and the
/// log carries on from there.
#[tokio::test]
async fn a_version_2_change_log_is_converted() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v2.db");
    {
        let mut conn = Connection::open(&path).unwrap();
        schema::migrate_to(&mut conn, 2).unwrap();
        assert_eq!(user_version(&conn), 2);
        // Revision 7 (two changes, the second with every optional field
        // NULL) and revision 8, as v2 wrote them.
        conn.execute_batch(
            "UPDATE meta SET value = 8 WHERE key = 'revision';
             UPDATE meta SET value = 6 WHERE key = 'pruned_through';
             INSERT INTO offers (id, offer_type, collateral_token, borrow_token,
               available_borrow_amount, max_open_ltv, liquidation_ltv, interest_rate,
               interest_model, liquidity_source, created_timestamp, updated_timestamp,
               source)
             VALUES ('a', 'V1', 'SOL', 'USDC', 5.5, 0.5, 0.9, 0.125, 'floating',
               'marginfi', 11, 12, 'src');
             INSERT INTO changes VALUES
               (7, 0, 1, 100, 'api', 'op-7', 'a', 'V1', 'SOL', 'USDC', 5.5, 0.5, 0.9,
                0.125, 'floating', 30, 'marginfi', 'lender', 10, 11, 12, 'src'),
               (7, 1, 3, 100, 'api', 'op-7', 'b', 'LV', 'ETH', 'USDT', 1.0, 0.25, 0.75,
                0.0, 'fixed', NULL, 'lavarage', NULL, NULL, NULL, NULL, NULL),
               (8, 0, 4, 200, 'backfiller', 'op-8', 'a', 'V1', 'SOL', 'USDC', 5.5, 0.5,
                0.9, 0.125, 'floating', NULL, 'marginfi', NULL, NULL, 11, 12, 'src');",
        )
        .unwrap();
    }
    let store = SqliteStore::open(&path).await.unwrap();
    assert_eq!(with_writer(&store, user_version), schema::SCHEMA_VERSION);
    // Resume points before the log's start are still refused.
    assert!(matches!(
        store.changes_since(5, 100).await,
        Err(StoreError::OutOfRange { oldest: 7, .. })
    ));
    let log = store.changes_since(6, 100).await.unwrap();
    assert_eq!(log.head, 8);
    let summary: Vec<_> = log
        .changes
        .iter()
        .map(|c| {
            (
                c.revision,
                c.change_type,
                c.timestamp,
                c.origin.as_str(),
                c.operation_id.as_str(),
                c.offer.id.as_str(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            (7, ChangeType::Created, Timestamp(100), "api", "op-7", "a"),
            (7, ChangeType::Deleted, Timestamp(100), "api", "op-7", "b"),
            (
                8,
                ChangeType::Overwritten,
                Timestamp(200),
                "backfiller",
                "op-8",
                "a"
            ),
        ]
    );
    let first = &log.changes[0].offer;
    assert_eq!(first.offer_type, OfferType::V1);
    assert_eq!(
        (first.available_borrow_amount, first.interest_rate),
        (5.5, 0.125)
    );
    assert_eq!(first.term_days, Some(30));
    assert_eq!(first.lender_address.as_deref(), Some("lender"));
    assert_eq!(first.last_borrowed_timestamp, Some(Timestamp(10)));
    assert_eq!(
        (first.created_timestamp, first.updated_timestamp),
        (Some(Timestamp(11)), Some(Timestamp(12)))
    );
    assert_eq!(first.source.as_deref(), Some("src"));
    let second = &log.changes[1].offer;
    assert_eq!(
        (second.offer_type, second.interest_model),
        (OfferType::LV, offer_domain::InterestModel::Fixed)
    );
    assert_eq!(second.liquidity_source, "lavarage");
    assert!(second.term_days.is_none() && second.lender_address.is_none());
    assert!(second.created_timestamp.is_none() && second.source.is_none());
    // New writes log after the converted ones.
    store.create(offer(1), &ctx()).await.unwrap();
    let next = store.changes_since(8, 100).await.unwrap();
    assert_eq!(next.changes.len(), 1);
    assert_eq!(next.changes[0].revision, 9);
    assert_eq!(next.changes[0].offer.id, "offer-00001");
    store.close().await.unwrap();
}

/// Overwrites update rows in place touching only the indexes whose columns
/// change; the indexes must still agree with the rows.
#[tokio::test]
async fn in_place_overwrite_updates_keep_indexes_consistent() {
    let (_dir, store) = open_temp().await;
    let scoped = |f: &dyn Fn(&mut MarginOffer)| -> Vec<MarginOffer> {
        (0..40)
            .map(|i| {
                let mut o = offer(i);
                o.source = Some("scope".into());
                f(&mut o);
                o
            })
            .collect()
    };
    let req = |offers| OverwriteRequest {
        offers,
        filter: Some(OverwriteFilter::source("scope")),
        ..Default::default()
    };
    store.overwrite(req(scoped(&|_| {})), &ctx()).await.unwrap();
    // Half change an indexed column (borrow token), all change an unindexed one.
    let out = store
        .overwrite(
            req(scoped(&|o| {
                o.max_open_ltv = 0.51;
                if o.id.ends_with(['0', '2', '4', '6', '8']) {
                    o.borrow_token = "NEW".into();
                }
            })),
            &ctx(),
        )
        .await
        .unwrap();
    assert_eq!(out.updated_ids.len(), 40);
    let mut q = ListQuery {
        sort_by: SortField::InterestRate,
        sort_order: SortOrder::Asc,
        limit: 100,
        ..Default::default()
    };
    q.filter.borrow_token = Some("NEW".into());
    let moved = store.list(&q).await.unwrap();
    assert_eq!(moved.offers.len(), 20);
    assert!(moved.offers.iter().all(|o| o.max_open_ltv == 0.51));
    q.filter.borrow_token = Some("USDC".into());
    let usdc = store.list(&q).await.unwrap();
    assert_eq!(usdc.offers.len(), 0, "even ids were USDC and all moved");
    q.filter.borrow_token = Some("USDT".into());
    let kept = store.list(&q).await.unwrap();
    assert_eq!(kept.offers.len(), 20);
    assert!(kept.offers.iter().all(|o| o.max_open_ltv == 0.51));
    let check: String = with_writer(&store, |c| {
        c.query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .unwrap()
    });
    assert_eq!(check, "ok");
}

/// `get` runs on the caller's thread only when a reader is idle; with every
/// reader busy it must queue on the pool instead of failing or blocking the
/// runtime thread, and finish once a reader frees up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_waits_for_a_reader_when_all_are_busy() {
    let (_dir, store) = open_temp().await;
    store.create(offer(1), &ctx()).await.unwrap();
    assert_eq!(store.get("offer-00001").await.unwrap().id, "offer-00001");

    let busy: Vec<_> = store.inner.readers.iter().map(|r| r.lock()).collect();
    let pending = tokio::spawn({
        let store = store.clone();
        async move { store.get("offer-00001").await }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        !pending.is_finished(),
        "get must wait while every reader is busy"
    );
    drop(busy);
    let found = tokio::time::timeout(Duration::from_secs(10), pending)
        .await
        .expect("get finishes once a reader is free")
        .unwrap()
        .unwrap();
    assert_eq!(found.id, "offer-00001");
    assert!(matches!(
        store.get("missing").await,
        Err(StoreError::NotFound { id }) if id == "missing"
    ));
}

/// Offers of every shape the compact scope must carry: options absent and
/// present, negative zero, non-ASCII text.
fn scope_offers() -> Vec<MarginOffer> {
    (0..12)
        .map(|i| {
            let mut o = offer(i);
            o.source = Some(if i < 8 { "big" } else { "small" }.into());
            if i % 2 == 0 {
                o.term_days = Some(30);
                o.last_borrowed_timestamp = Some(Timestamp(1_700_000_000_000_000_000));
            }
            if i == 5 {
                o.liquidity_source = "ünïcode-λ".into();
                o.interest_rate = -0.0;
            }
            o
        })
        .collect()
}

/// A new store holding [`scope_offers`], and those offers.
async fn store_with_scope_offers() -> (tempfile::TempDir, SqliteStore, Vec<MarginOffer>) {
    let (dir, store) = open_temp().await;
    let offers = scope_offers();
    store
        .bulk_create(offers.clone(), Default::default(), &ctx())
        .await
        .unwrap();
    (dir, store, offers)
}

/// Reads the scope of `filter` as compact rows, both ways, in a write
/// transaction as `overwrite` does.
fn with_scope<T>(
    store: &SqliteStore,
    filter: Option<&OverwriteFilter>,
    f: impl Fn(ScopeRead, &ScopeRows) -> T,
) -> Vec<T> {
    with_writer(store, |c| {
        let w = scope_where(filter);
        [ScopeRead::Index, ScopeRead::Scan]
            .into_iter()
            .map(|read| f(read, &ScopeRows::load(c, &w, read, 0).unwrap()))
            .collect()
    })
}

#[tokio::test]
async fn compact_scope_holds_the_stored_offers() {
    let (_dir, store, offers) = store_with_scope_offers().await;
    let mut stored = Vec::new();
    for o in &offers {
        stored.push(store.get(&o.id).await.unwrap());
    }
    for filter in [None, Some(OverwriteFilter::source("big"))] {
        let expected: Vec<MarginOffer> = stored
            .iter()
            .filter(|o| filter.as_ref().is_none_or(|f| f.matches(o)))
            .cloned()
            .collect();
        for (read, mut got) in with_scope(&store, filter.as_ref(), |read, rows| {
            (read, rows.scope().into_untaken())
        }) {
            got.sort_by(|a, b| a.id.cmp(&b.id));
            assert_eq!(got, expected, "{read:?} {filter:?}");
        }
    }
    // Taking removes an offer from what is left to delete, once.
    let left = with_scope(&store, None, |_, rows| {
        let mut scope = rows.scope();
        assert!(scope.take("offer-00003").is_some());
        assert!(scope.take("offer-00003").is_none());
        assert!(scope.take("absent").is_none());
        scope.into_untaken().len()
    });
    assert_eq!(left, [11, 11]);
    // Found in and out of the scope's order alike.
    let ids: Vec<String> = offers.iter().map(|o| o.id.clone()).collect();
    for (missing, left) in with_scope(&store, None, |_, rows| {
        let mut scope = rows.scope();
        let asked = [
            "offer-00002",
            "x",
            "offer-00001",
            "offer-00011",
            "offer-00003",
            "y",
        ];
        let missing: Vec<String> = scope
            .ids_not_in(asked.into_iter())
            .into_iter()
            .map(str::to_owned)
            .collect();
        // Every id in reverse order, then again in order: taken once each.
        assert!(ids.iter().rev().all(|id| scope.take(id).is_some()));
        assert!(ids.iter().all(|id| scope.take(id).is_none()));
        (missing, scope.into_untaken().len())
    }) {
        assert_eq!(missing, ["x", "y"]);
        assert_eq!(left, 0);
    }
}

/// The compact rows' `same_content` and the indexed-column mask agree with
/// the domain's rules for a change of each field.
#[tokio::test]
async fn compact_rows_compare_like_the_domain() {
    let (_dir, store, offers) = store_with_scope_offers().await;
    type Change = fn(&mut MarginOffer);
    let changes: [(&str, Change); 19] = [
        ("nothing", |_| {}),
        ("offer_type", |o| {
            o.offer_type = OfferType::ALL[(o.offer_type as usize + 1) % 3]
        }),
        ("collateral_token", |o| o.collateral_token.push('x')),
        ("borrow_token", |o| o.borrow_token.push('x')),
        ("available_borrow_amount", |o| {
            o.available_borrow_amount += 1.0
        }),
        ("max_open_ltv", |o| o.max_open_ltv /= 2.0),
        ("liquidation_ltv", |o| o.liquidation_ltv = 0.95),
        ("interest_rate", |o| o.interest_rate = -o.interest_rate),
        ("interest_model", |o| {
            o.interest_model = match o.interest_model {
                offer_domain::InterestModel::Fixed => offer_domain::InterestModel::Floating,
                _ => offer_domain::InterestModel::Fixed,
            }
        }),
        ("term_days", |o| {
            o.term_days = o.term_days.map_or(Some(7), |_| None)
        }),
        ("liquidity_source", |o| o.liquidity_source.push('x')),
        ("lender_address", |o| {
            o.lender_address = o.lender_address.take().map_or(Some("l".into()), |_| None)
        }),
        ("last_borrowed_timestamp", |o| {
            o.last_borrowed_timestamp = Some(Timestamp(1))
        }),
        ("source", |o| {
            o.source = o.source.take().map_or(Some("s".into()), |_| None)
        }),
        ("source text", |o| o.source = Some("other".into())),
        ("id", |o| o.id.push('x')),
        ("created_timestamp", |o| {
            o.created_timestamp = Some(Timestamp(3))
        }),
        ("updated_timestamp", |o| {
            o.updated_timestamp = Some(Timestamp(4))
        }),
        ("both timestamps", |o| {
            o.created_timestamp = None;
            o.updated_timestamp = None;
        }),
    ];
    for o in &offers {
        let stored = store.get(&o.id).await.unwrap();
        with_scope(&store, None, |_, rows| {
            let mut scope = rows.scope();
            let compact = scope.take(&o.id).unwrap();
            assert_eq!(compact.to_offer(), stored);
            assert_eq!(compact.created_timestamp(), stored.created_timestamp);
            assert_eq!(compact.expires_at(), stored.expires_at());
            for (field, change) in &changes {
                let mut incoming = stored.clone();
                change(&mut incoming);
                assert_eq!(
                    compact.same_content(&incoming),
                    stored.same_content(&incoming),
                    "{field} of {}",
                    o.id
                );
                let mask = rows::changed_indexed(&compact, &incoming);
                let expected = [
                    stored.collateral_token != incoming.collateral_token,
                    stored.borrow_token != incoming.borrow_token,
                    stored.available_borrow_amount.to_bits()
                        != incoming.available_borrow_amount.to_bits(),
                    stored.interest_rate.to_bits() != incoming.interest_rate.to_bits(),
                    stored.created_timestamp != incoming.created_timestamp,
                    stored.source != incoming.source,
                    stored.lender_address != incoming.lender_address,
                    stored.expires_at() != incoming.expires_at(),
                ];
                for (bit, changed) in expected.into_iter().enumerate() {
                    assert_eq!(mask & (1 << bit) != 0, changed, "{field} bit {bit}");
                }
            }
        });
    }
}

/// `n` offers of source "big" then 100 of source "small", ids in that order.
fn two_sources(n: usize) -> Vec<MarginOffer> {
    (0..n + 100)
        .map(|i| {
            let mut o = offer(i);
            o.source = Some(if i < n { "big" } else { "small" }.into());
            o
        })
        .collect()
}

/// A large request for half the table or more reads its scope by a scan of
/// the table, others through the filter's index; both plans are what they
/// claim.
#[tokio::test]
async fn scope_read_scans_for_large_scopes_only() {
    let (_dir, store) = open_temp().await;
    store
        .bulk_create(two_sources(1100), Default::default(), &ctx())
        .await
        .unwrap();
    let w = scope_where(Some(&OverwriteFilter::source("big")));
    with_writer(&store, |c| {
        let choose = |w: &Where, expected| ScopeRead::choose(c, w, expected).unwrap();
        assert_eq!(choose(&w, SCAN_MIN_REQUEST), ScopeRead::Scan);
        assert_eq!(choose(&w, SCAN_MIN_REQUEST - 1), ScopeRead::Index);
        assert_eq!(choose(&scope_where(None), 5000), ScopeRead::Index);
    });
    let scan = query_plan(&store, &ScopeRead::Scan.select_sql(&w), &w.params);
    assert!(scan.starts_with("SCAN offers"), "{scan}");
    let index = query_plan(&store, &ScopeRead::Index.select_sql(&w), &w.params);
    assert!(index.contains("offers_source"), "{index}");
}

/// Overwrites whose scope is read either way replace exactly their scope:
/// the other source's offers stay, and their ids cannot be taken over.
#[tokio::test]
async fn overwrites_read_either_way_keep_to_their_scope() {
    let (_dir, store) = open_temp().await;
    let offers = two_sources(1100);
    store
        .bulk_create(offers.clone(), Default::default(), &ctx())
        .await
        .unwrap();
    let (big, small) = offers.split_at(1100);
    let req = |offers, source: &str| OverwriteRequest {
        offers,
        filter: Some(OverwriteFilter::source(source)),
        validate_all: true,
        ..Default::default()
    };
    // 1 050 offers for 1 200 rows: a scan. One changed, one new, the rest
    // kept but the last 50, deleted; first with an id of the other scope,
    // refused.
    let mut changed = big[1].clone();
    changed.max_open_ltv = 0.7;
    let mut new = offer(5000);
    new.source = Some("big".into());
    let mut intruder = small[9].clone();
    intruder.source = Some("big".into());
    let request = |extra: &MarginOffer| {
        let mut offers = vec![big[0].clone(), changed.clone(), extra.clone()];
        offers.extend(big[2..1050].iter().cloned());
        offers
    };
    assert!(request(&new).len() >= SCAN_MIN_REQUEST);
    let refused = store
        .overwrite(req(request(&intruder), "big"), &ctx())
        .await
        .unwrap();
    assert_eq!(refused.errors.len(), 1);
    assert_eq!(refused.errors[0].index, 2);
    assert_eq!(
        refused.errors[0].code,
        offer_domain::ErrorCode::AlreadyExists
    );
    let out = store
        .overwrite(req(request(&new), "big"), &ctx())
        .await
        .unwrap();
    assert_eq!(out.unchanged_count, 1049);
    assert_eq!(out.updated_ids, [big[1].id.clone()]);
    assert_eq!(out.created_ids, [new.id.clone()]);
    let deleted: Vec<String> = big[1050..].iter().map(|o| o.id.clone()).collect();
    assert_eq!(out.deleted_ids, deleted);
    // A request of 1: through the index.
    let mut kept = small[0].clone();
    kept.interest_rate = 0.5;
    let out = store
        .overwrite(req(vec![kept.clone()], "small"), &ctx())
        .await
        .unwrap();
    assert_eq!(out.updated_ids, [kept.id.clone()]);
    let deleted: Vec<String> = small[1..].iter().map(|o| o.id.clone()).collect();
    assert_eq!(out.deleted_ids, deleted);
    let preview = store
        .overwrite_preview(Some(&OverwriteFilter::source("big")))
        .await
        .unwrap();
    assert_eq!(preview.len(), 1051);
    assert_eq!(store.get(&kept.id).await.unwrap().interest_rate, 0.5);
    assert_eq!(store.get(&changed.id).await.unwrap().max_open_ltv, 0.7);
}
