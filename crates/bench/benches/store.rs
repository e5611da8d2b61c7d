//! Criterion benchmarks of the store (issue: store service).
//!
//! - `rpc/get_offer` next to `rpc/health_check_floor`: GetMarginOffer over
//!   loopback against the cheapest RPC on the same server and channel, so the
//!   ratio is our cost above tonic's.
//! - `list_100k/*`: ListMarginOffers-equivalent (borrow-token filter, sort by
//!   interest rate, limit 100) on a 100 000-offer book, memory and SQLite,
//!   through the trait and through gRPC.

#![allow(clippy::expect_used)] // a benchmark that cannot set up should stop loudly

use criterion::{Criterion, criterion_group, criterion_main};
use offer_domain::{BulkUpsertOptions, ListQuery, SortField, SortOrder, WriteContext};
use offer_proto::pb;
use offer_proto::pb::margin_offer_service_client::MarginOfferServiceClient;
use offer_store::SharedStore;
use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;
use store_bench::{book, popular_borrow_token};
use store_service::ServiceConfig;
use tokio::runtime::Runtime;
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

const BOOK: usize = 100_000;

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

async fn load(store: &SharedStore, n: usize) {
    for chunk in book(n, 7).chunks(10_000) {
        store
            .bulk_create_or_update(
                chunk.to_vec(),
                BulkUpsertOptions::default(),
                &WriteContext::default(),
            )
            .await
            .expect("load book");
    }
}

async fn start_server(store: SharedStore) -> Channel {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(store_service::serve(
        store,
        ServiceConfig::default(),
        listener,
        std::future::pending(),
    ));
    Channel::from_shared(format!("http://{addr}"))
        .expect("uri")
        .connect()
        .await
        .expect("connect")
}

fn list_query() -> ListQuery {
    let mut q = ListQuery {
        sort_by: SortField::InterestRate,
        sort_order: SortOrder::Desc,
        limit: 100,
        ..Default::default()
    };
    q.filter.borrow_token = Some(popular_borrow_token());
    q
}

fn list_request() -> pb::ListMarginOffersRequest {
    pb::ListMarginOffersRequest {
        limit: 100,
        sort_by: Some("interest_rate".into()),
        sort_order: Some("desc".into()),
        borrow_token: Some(popular_borrow_token()),
        ..Default::default()
    }
}

fn rpc(c: &mut Criterion) {
    let rt = runtime();
    let store: SharedStore = Arc::new(store_memory::MemoryStore::new());
    let channel = rt.block_on(async {
        load(&store, 1_000).await;
        start_server(store.clone()).await
    });
    let mut group = c.benchmark_group("rpc");
    let health = HealthClient::new(channel.clone());
    group.bench_function("health_check_floor", |b| {
        b.to_async(&rt).iter(|| {
            let mut h = health.clone();
            async move {
                black_box(
                    h.check(HealthCheckRequest {
                        service: String::new(),
                    })
                    .await
                    .expect("health"),
                )
            }
        })
    });
    let client = MarginOfferServiceClient::new(channel);
    group.bench_function("get_offer", |b| {
        b.to_async(&rt).iter(|| {
            let mut cl = client.clone();
            async move {
                black_box(
                    cl.get_margin_offer(pb::GetMarginOfferRequest {
                        id: "offer-0000500".into(),
                    })
                    .await
                    .expect("get"),
                )
            }
        })
    });
    group.finish();
}

fn list(c: &mut Criterion) {
    let rt = runtime();
    let dir = tempfile::tempdir().expect("tempdir");
    let memory: SharedStore = Arc::new(store_memory::MemoryStore::new());
    let sqlite: SharedStore = Arc::new(
        rt.block_on(store_sqlite::SqliteStore::open(dir.path().join("bench.db")))
            .expect("sqlite"),
    );
    let (mem_channel, sql_channel) = rt.block_on(async {
        load(&memory, BOOK).await;
        load(&sqlite, BOOK).await;
        (
            start_server(memory.clone()).await,
            start_server(sqlite.clone()).await,
        )
    });
    let query = list_query();
    let mut group = c.benchmark_group("list_100k");
    group.measurement_time(Duration::from_secs(5));
    for (name, store) in [("memory", &memory), ("sqlite", &sqlite)] {
        group.bench_function(format!("{name}/trait"), |b| {
            b.to_async(&rt)
                .iter(|| async { black_box(store.list(&query).await.expect("list")) })
        });
    }
    for (name, channel) in [("memory", mem_channel), ("sqlite", sql_channel)] {
        let client =
            MarginOfferServiceClient::new(channel).max_decoding_message_size(64 * 1024 * 1024);
        group.bench_function(format!("{name}/grpc"), |b| {
            b.to_async(&rt).iter(|| {
                let mut cl = client.clone();
                async move { black_box(cl.list_margin_offers(list_request()).await.expect("list")) }
            })
        });
    }
    group.finish();
}

criterion_group!(benches, rpc, list);
criterion_main!(benches);
