//! Several `PgStore` instances on one database: global revision order,
//! cross-instance commit notifications, concurrent migration, and index use.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use offer_store::MarginOfferStore;
use offer_store::offer_domain::{
    ListQuery, MarginOffer, OfferType, SortField, StoreError, WriteContext,
};
use std::collections::BTreeMap;
use std::time::Duration;
use store_postgres::{PgOptions, PgStore};

fn offer(id: String, i: usize) -> MarginOffer {
    let mut o = MarginOffer::example(id);
    o.borrow_token = format!("TOK{}", i % 50);
    o.collateral_token = format!("COL{}", i % 7);
    o.interest_rate = (i % 1000) as f64 / 1000.0;
    o.source = Some(format!("src{}", i % 20));
    o.offer_type = OfferType::ALL[i % 3];
    o
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_instances_share_one_gap_free_revision_order() {
    let Some(url) = support::database_url() else {
        return;
    };
    let schema = support::unique_schema();
    let _drop = support::DropSchema {
        url: url.clone(),
        schema: schema.clone(),
    };
    // Both start at once: the migration must run exactly once.
    let (a, b) = tokio::join!(support::store(&url, &schema), support::store(&url, &schema));
    let stores = [a, b];
    let mut wake = stores[0].subscribe_commits().expect("commit notifications");

    const PER_WRITER: usize = 40;
    let mut tasks = Vec::new();
    for w in 0..4 {
        let store = stores[w % 2].clone();
        tasks.push(tokio::spawn(async move {
            let ctx = WriteContext::new(format!("writer{w}"));
            let mut mine = Vec::new();
            for i in 0..PER_WRITER {
                let id = format!("w{w}-{i}");
                let rev = if i % 4 == 3 {
                    // A bulk write: two changes under one revision.
                    let o = store
                        .bulk_create_or_update(
                            vec![offer(format!("{id}a"), i), offer(format!("{id}b"), i)],
                            Default::default(),
                            &ctx,
                        )
                        .await
                        .unwrap();
                    assert!(o.errors.is_empty());
                    mine.push((o.revision, 2));
                    continue;
                } else {
                    store.create(offer(id, i), &ctx).await.unwrap().revision
                };
                mine.push((rev, 1));
            }
            mine
        }));
    }
    let mut acked: BTreeMap<i64, usize> = BTreeMap::new();
    for t in tasks {
        for (rev, n) in t.await.unwrap() {
            assert!(acked.insert(rev, n).is_none(), "revision {rev} given twice");
        }
    }
    let n = acked.len() as i64;
    assert_eq!(n, 4 * PER_WRITER as i64);
    // Acknowledged revisions are exactly 1..=N.
    assert_eq!(
        acked.keys().copied().collect::<Vec<_>>(),
        (1..=n).collect::<Vec<_>>()
    );

    // Either instance replays the same contiguous log, each write's changes
    // under its own revision.
    for store in &stores {
        let mut after = 0;
        let mut seen: BTreeMap<i64, usize> = BTreeMap::new();
        loop {
            let batch = store.changes_since(after, 7).await.unwrap();
            assert_eq!(batch.head, n);
            if batch.changes.is_empty() {
                break;
            }
            for c in &batch.changes {
                assert!(c.revision > after, "out of order");
                *seen.entry(c.revision).or_default() += 1;
            }
            after = batch.changes.last().unwrap().revision;
        }
        assert_eq!(seen, acked);
    }

    // Instance 0 was told of the commits made through instance 1.
    tokio::time::timeout(Duration::from_secs(5), wake.wait_for(|r| *r >= n))
        .await
        .expect("commit notification within 5 s")
        .unwrap();
    for s in &stores {
        s.close().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_on_one_instance_wakes_the_other() {
    let Some(url) = support::database_url() else {
        return;
    };
    let schema = support::unique_schema();
    let _drop = support::DropSchema {
        url: url.clone(),
        schema: schema.clone(),
    };
    let a = support::store(&url, &schema).await;
    let b = support::store(&url, &schema).await;
    let mut wake = a.subscribe_commits().unwrap();
    // Give the LISTEN connection a moment; a late LISTEN still catches up
    // by reading the revision after subscribing.
    let rev = b
        .create(MarginOffer::example("x"), &WriteContext::default())
        .await
        .unwrap()
        .revision;
    tokio::time::timeout(Duration::from_secs(1), wake.wait_for(|r| *r >= rev))
        .await
        .expect("woken within one second")
        .unwrap();
    assert_eq!(a.get("x").await.unwrap().id, "x");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn common_list_queries_use_indexes() {
    let Some(url) = support::database_url() else {
        return;
    };
    let schema = support::unique_schema();
    let _drop = support::DropSchema {
        url: url.clone(),
        schema: schema.clone(),
    };
    let store = support::store(&url, &schema).await;
    let offers: Vec<_> = (0..20_000).map(|i| offer(format!("o{i:06}"), i)).collect();
    for chunk in offers.chunks(5_000) {
        let out = store
            .bulk_create(chunk.to_vec(), Default::default(), &WriteContext::default())
            .await
            .unwrap();
        assert!(out.errors.is_empty());
    }
    store.execute_batch("ANALYZE offers").await.unwrap();

    let mut by_token = ListQuery {
        sort_by: SortField::InterestRate,
        limit: 50,
        ..Default::default()
    };
    by_token.filter.borrow_token = Some("TOK7".into());
    let mut by_source = ListQuery::default();
    by_source.filter.source = Some("src3".into());
    let default_sorted = ListQuery {
        limit: 100,
        ..Default::default()
    };
    let mut by_collateral = ListQuery {
        limit: 100,
        ..Default::default()
    };
    by_collateral.filter.collateral_token = Some("COL3".into());
    let by_amount = ListQuery {
        sort_by: SortField::AvailableBorrowAmount,
        limit: 100,
        ..Default::default()
    };
    for (name, q) in [
        ("borrow_token + interest_rate", &by_token),
        ("source", &by_source),
        ("default sort with limit", &default_sorted),
        ("collateral_token + created", &by_collateral),
        ("available_borrow_amount", &by_amount),
    ] {
        let plan = store.explain_list(q).await.unwrap();
        assert!(
            !plan.contains("Seq Scan on offers"),
            "{name} scans the table:\n{plan}"
        );
        assert!(plan.contains("Index"), "{name} uses no index:\n{plan}");
        // The next page (keyset) too.
        let page = store.list(q).await.unwrap();
        let next = ListQuery {
            page_token: page.next_page_token.clone(),
            ..q.clone()
        };
        let plan = store.explain_list(&next).await.unwrap();
        assert!(
            !plan.contains("Seq Scan on offers"),
            "{name} (next page) scans the table:\n{plan}"
        );
    }
}

#[tokio::test]
async fn an_unreachable_server_is_unavailable() {
    // Port 1 on localhost refuses at once: fail fast, not hang.
    let started = std::time::Instant::now();
    let r = PgStore::connect("postgres://nobody@127.0.0.1:1/none", PgOptions::default()).await;
    assert!(matches!(r, Err(StoreError::Unavailable(_))), "{r:?}");
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_store_is_unavailable_and_health_check_works() {
    let Some(url) = support::database_url() else {
        return;
    };
    let schema = support::unique_schema();
    let _drop = support::DropSchema {
        url: url.clone(),
        schema: schema.clone(),
    };
    let store = support::store(&url, &schema).await;
    store.health_check().await.unwrap();
    store.close().await.unwrap();
    assert!(matches!(
        store.get("x").await,
        Err(StoreError::Unavailable(_))
    ));
    assert!(matches!(
        store.health_check().await,
        Err(StoreError::Unavailable(_))
    ));
}
