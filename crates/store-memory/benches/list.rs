//! The in-memory list path next to a naive scan-and-sort, and a 100 000-offer
//! overwrite, on a synthetic book (`store_bench::book`).
//!
//! ```text
//! cargo bench -p store-memory --bench list            # 1 000 000 offers
//! LIST_BENCH_OFFERS=200000 cargo bench -p store-memory --bench list
//! ```

#![allow(clippy::expect_used)] // a benchmark that cannot set up should stop loudly

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use offer_domain::query::compare_offers;
use offer_domain::{
    BulkUpsertOptions, ListQuery, MarginOffer, OfferFilter, OfferType, OverwriteFilter,
    OverwriteRequest, SortField, SortOrder, Timestamp, WriteContext,
};
use offer_store::MarginOfferStore;
use std::hint::black_box;
use std::time::Duration;
use store_memory::MemoryStore;
use tokio::runtime::Runtime;

fn offers_in_book() -> usize {
    std::env::var("LIST_BENCH_OFFERS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1_000_000)
}

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime")
}

/// The store and the same offers as stored (timestamps stamped), for the naive path.
fn loaded(rt: &Runtime, n: usize) -> (MemoryStore, Vec<MarginOffer>) {
    // Bounded change log, so repeated overwrites do not grow without end.
    let store = MemoryStore::with_change_retention(n).with_change_min_age(Duration::ZERO);
    let ctx = WriteContext::new("bench");
    let book = store_bench::book(n, 7);
    rt.block_on(async {
        for chunk in book.chunks(10_000) {
            store
                .bulk_create_or_update(chunk.to_vec(), BulkUpsertOptions::default(), &ctx)
                .await
                .expect("load");
        }
    });
    // By id, as stored (timestamps stamped); listing it all would cost
    // more than the benchmark.
    let stored = rt.block_on(async {
        let mut stored = Vec::with_capacity(n);
        for o in &book {
            stored.push(store.get(&o.id).await.expect("get"));
        }
        stored
    });
    (store, stored)
}

fn shapes() -> Vec<(&'static str, ListQuery)> {
    let q = |filter: OfferFilter, sort_by, sort_order| ListQuery {
        filter,
        sort_by,
        sort_order,
        limit: 100,
        ..Default::default()
    };
    vec![
        (
            "popular_borrow_token+interest_rate_asc",
            q(
                OfferFilter {
                    borrow_token: Some(store_bench::popular_borrow_token()),
                    ..Default::default()
                },
                SortField::InterestRate,
                SortOrder::Asc,
            ),
        ),
        (
            "collateral_token+created_desc",
            q(
                OfferFilter {
                    collateral_token: Some(store_bench::mint(2)),
                    ..Default::default()
                },
                SortField::CreatedTimestamp,
                SortOrder::Desc,
            ),
        ),
        (
            "offer_type+available_desc",
            q(
                OfferFilter {
                    offer_type: Some(OfferType::BP),
                    ..Default::default()
                },
                SortField::AvailableBorrowAmount,
                SortOrder::Desc,
            ),
        ),
        (
            "no_filter+created_desc",
            q(
                OfferFilter::default(),
                SortField::CreatedTimestamp,
                SortOrder::Desc,
            ),
        ),
        (
            "rare_borrow_token+interest_rate_asc",
            q(
                OfferFilter {
                    borrow_token: Some(store_bench::mint(150)),
                    ..Default::default()
                },
                SortField::InterestRate,
                SortOrder::Asc,
            ),
        ),
    ]
}

/// Scan everything, filter, sort the matches fully, take the page.
fn naive(book: &[MarginOffer], q: &ListQuery, now: Timestamp) -> (usize, Vec<MarginOffer>) {
    let resolved = q.resolve().expect("valid query");
    let mut rows: Vec<&MarginOffer> = book.iter().filter(|o| q.admits(o, now)).collect();
    let total = rows.len();
    if let Some((key, id)) = &resolved.after {
        rows.retain(|o| {
            offer_domain::query::compare_keys(&q.sort_by.key(o), &o.id, key, id, q.sort_order)
                .is_gt()
        });
    }
    rows.sort_by(|a, b| compare_offers(a, b, q.sort_by, q.sort_order));
    (
        total,
        rows.into_iter().take(resolved.limit + 1).cloned().collect(),
    )
}

fn list(c: &mut Criterion) {
    let rt = runtime();
    let n = offers_in_book();
    let (store, book) = loaded(&rt, n);
    let mut group = c.benchmark_group(format!("list_{n}"));
    group.sample_size(20);
    group.measurement_time(Duration::from_secs(3));
    for (name, first) in shapes() {
        // The fifth page, reached by following tokens.
        let mut fifth = first.clone();
        rt.block_on(async {
            for _ in 0..4 {
                let page = store.list(&fifth).await.expect("list");
                fifth.page_token = page.next_page_token;
            }
        });
        for (page, q) in [("page1", &first), ("page5", &fifth)] {
            // Same rows both ways, or the comparison means nothing.
            let ours = rt.block_on(store.list(q)).expect("list");
            let (total, rows) = naive(&book, q, Timestamp::now());
            assert_eq!(ours.total as usize, total, "{name} {page} total");
            let ids = |v: &[MarginOffer]| v.iter().map(|o| o.id.clone()).collect::<Vec<_>>();
            assert_eq!(
                ids(&ours.offers),
                ids(&rows[..rows.len().min(100)]),
                "{name} {page}"
            );
            group.bench_function(format!("{name}/{page}/store"), |b| {
                b.iter(|| black_box(rt.block_on(store.list(q)).expect("list")))
            });
            group.bench_function(format!("{name}/{page}/naive"), |b| {
                b.iter(|| black_box(naive(&book, q, Timestamp::now())))
            });
        }
    }
    group.finish();
}

fn overwrite(c: &mut Criterion) {
    let rt = runtime();
    let n = offers_in_book();
    let (store, book) = loaded(&rt, n);
    let scope = "source-3";
    let offers: Vec<MarginOffer> = book
        .into_iter()
        .filter(|o| o.source.as_deref() == Some(scope))
        .collect();
    let mut group = c.benchmark_group(format!("overwrite_in_{n}"));
    group.sample_size(10);
    let mut round = 0u32;
    group.bench_function(format!("{}_offers_all_changed", offers.len()), |b| {
        b.iter_batched(
            || {
                round += 1;
                // Every offer changes each round, so every index entry moves.
                let offers = offers
                    .iter()
                    .map(|o| MarginOffer {
                        available_borrow_amount: o.available_borrow_amount + f64::from(round),
                        interest_rate: o.interest_rate + f64::from(round) * 1e-6,
                        ..o.clone()
                    })
                    .collect();
                OverwriteRequest {
                    offers,
                    filter: Some(OverwriteFilter::source(scope)),
                    ..Default::default()
                }
            },
            |req| {
                rt.block_on(store.overwrite(req, &WriteContext::new("bench")))
                    .expect("overwrite")
            },
            BatchSize::PerIteration,
        )
    });
    group.finish();
}

criterion_group!(benches, list, overwrite);
criterion_main!(benches);
