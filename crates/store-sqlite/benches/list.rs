//! List latency of the SQLite store on a 1 000 000-offer book (issue #7),
//! next to the same page read by plain SQL on the same file: the ratio is
//! what the store's own work (count, decode, page token) adds.
//!
//! `cargo bench -p store-sqlite --bench list`. The book is built once and
//! cached under `target/tmp` (rebuilt when missing); `LIST_BENCH_OFFERS`
//! overrides its size for a quick run.

#![allow(clippy::expect_used, clippy::unwrap_used)]

use criterion::{Criterion, criterion_group, criterion_main};
use offer_domain::query::SortValue;
use offer_domain::{
    BulkUpsertOptions, ListQuery, OfferFilter, SortField, SortOrder, Timestamp, WriteContext,
};
use offer_store::MarginOfferStore;
use rusqlite::types::Value;
use std::path::PathBuf;
use std::time::Instant;
use store_sql::{OFFER_COLS, Placeholders, SqlValue, Where, order_by};
use store_sqlite::SqliteStore;

fn book_size() -> usize {
    std::env::var("LIST_BENCH_OFFERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000)
}

/// Opens the cached book, building it first when missing.
fn open_book(rt: &tokio::runtime::Runtime) -> (SqliteStore, PathBuf) {
    let n = book_size();
    let path = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("sqlite-list-{n}.db"));
    let fresh = !path.exists();
    let store = rt.block_on(SqliteStore::open(&path)).expect("open book");
    if fresh {
        let started = Instant::now();
        for chunk in store_bench::book(n, 7).chunks(10_000) {
            rt.block_on(store.bulk_create_or_update(
                chunk.to_vec(),
                BulkUpsertOptions::default(),
                &WriteContext::default(),
            ))
            .expect("load book");
        }
        println!("built {} in {:?}", path.display(), started.elapsed());
    }
    (store, path)
}

/// The plain SQL read of one page: the rows and nothing else, as a client
/// querying the file directly would.
fn raw_page(
    conn: &rusqlite::Connection,
    q: &ListQuery,
    after: Option<&(SortValue, String)>,
) -> usize {
    let mut w = Where::new(Placeholders::Question);
    w.filter(&q.filter);
    w.not_expired(Timestamp::now());
    if let Some((key, id)) = after {
        w.after(q.sort_by, q.sort_order, key, id);
    }
    let sql = format!(
        "SELECT {OFFER_COLS} FROM offers{}{} LIMIT 101",
        w.sql(),
        order_by(q.sort_by, q.sort_order)
    );
    let params: Vec<Value> = w
        .params
        .iter()
        .map(|v| match v {
            SqlValue::Real(x) => Value::Real(*x),
            SqlValue::Integer(x) => Value::Integer(*x),
            SqlValue::Text(x) => Value::Text(x.clone()),
        })
        .collect();
    let mut stmt = conn.prepare_cached(&sql).expect("prepare");
    let mut rows = stmt
        .query(rusqlite::params_from_iter(params))
        .expect("query");
    let mut n = 0;
    while let Some(row) = rows.next().expect("row") {
        for i in 0..16 {
            std::hint::black_box(row.get_ref(i).expect("column"));
        }
        n += 1;
    }
    n
}

fn list(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let (store, path) = open_book(&rt);
    let raw =
        rusqlite::Connection::open_with_flags(&path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .expect("raw connection");
    let shapes = [
        (
            "borrow_token+interest_rate_asc",
            OfferFilter {
                borrow_token: Some(store_bench::popular_borrow_token()),
                ..Default::default()
            },
            SortField::InterestRate,
            SortOrder::Asc,
        ),
        (
            "collateral_token+created_desc",
            OfferFilter {
                collateral_token: Some(store_bench::mint(1)),
                ..Default::default()
            },
            SortField::CreatedTimestamp,
            SortOrder::Desc,
        ),
        (
            "unfiltered+available_borrow_amount_desc",
            OfferFilter::default(),
            SortField::AvailableBorrowAmount,
            SortOrder::Desc,
        ),
    ];
    let mut group = c.benchmark_group("sqlite_list_1m");
    for (name, filter, sort_by, sort_order) in shapes {
        let first = ListQuery {
            filter,
            sort_by,
            sort_order,
            limit: 100,
            ..Default::default()
        };
        let page = rt.block_on(store.list(&first)).expect("first page");
        let second = ListQuery {
            page_token: page.next_page_token.clone(),
            ..first.clone()
        };
        let after = page
            .offers
            .last()
            .map(|o| (sort_by.key(o), o.id.clone()))
            .expect("a full first page");
        println!("{name}: total {}", page.total);
        group.bench_function(format!("{name}/store/first_page"), |b| {
            b.to_async(&rt)
                .iter(|| async { store.list(&first).await.expect("list") });
        });
        group.bench_function(format!("{name}/plain_sql/first_page"), |b| {
            b.iter(|| raw_page(&raw, &first, None));
        });
        group.bench_function(format!("{name}/store/token_page"), |b| {
            b.to_async(&rt)
                .iter(|| async { store.list(&second).await.expect("list") });
        });
        group.bench_function(format!("{name}/plain_sql/token_page"), |b| {
            b.iter(|| raw_page(&raw, &first, Some(&after)));
        });
    }
    group.finish();
    rt.block_on(store.close()).expect("close");
}

criterion_group!(benches, list);
criterion_main!(benches);
