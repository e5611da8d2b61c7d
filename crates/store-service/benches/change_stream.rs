//! Change-stream figures (a plain binary, printed to stdout):
//! - writers' throughput over gRPC with and without a stalled subscriber;
//! - fan-out: 1 000 subscribers, one 10 000-offer overwrite, time until the
//!   last subscriber has the last change.
//!
//! `cargo bench -p store-service --bench change_stream`

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use offer_domain::{MarginOffer, OverwriteRequest, WriteContext};
use offer_proto::pb;
use offer_proto::pb::margin_offer_service_client::MarginOfferServiceClient;
use offer_proto::pb::subscribe_margin_offers_response::Event;
use offer_store::{MarginOfferStore as _, SharedStore};
use std::sync::Arc;
use std::time::{Duration, Instant};
use store_client::GrpcStore;
use store_service::ServiceConfig;
use tonic::transport::Channel;

async fn serve(store: SharedStore) -> String {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap().to_string();
    tokio::spawn(store_service::serve(
        store,
        ServiceConfig::default(),
        l,
        std::future::pending(),
    ));
    addr
}

async fn channel(addr: &str) -> Channel {
    Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap()
}

/// Writes per second by 4 gRPC writers over `secs`.
async fn throughput(addr: &str, secs: u64) -> f64 {
    let client = GrpcStore::connect(addr).await.unwrap();
    let stop = Instant::now() + Duration::from_secs(secs);
    let tasks: Vec<_> = (0..4)
        .map(|w| {
            let c = client.clone();
            tokio::spawn(async move {
                let mut n = 0u64;
                let ctx = WriteContext::default();
                while Instant::now() < stop {
                    let mut o = MarginOffer::example(format!("t{w}-{}", n % 500));
                    o.available_borrow_amount = 1.0 + n as f64;
                    o.liquidity_source = "x".repeat(200);
                    c.create_or_update(o, &ctx).await.unwrap();
                    n += 1;
                }
                n
            })
        })
        .collect();
    let mut total = 0;
    for t in tasks {
        total += t.await.unwrap();
    }
    total as f64 / secs as f64
}

async fn stalled_vs_free() {
    let secs = 5;
    let store: SharedStore = Arc::new(store_memory::MemoryStore::new());
    let addr = serve(store).await;
    let free = throughput(&addr, secs).await;
    // A subscriber that never reads, on its own connection.
    let ch = channel(&addr).await;
    let _stalled = MarginOfferServiceClient::new(ch)
        .subscribe_margin_offers(pb::SubscribeMarginOffersRequest::default())
        .await
        .unwrap()
        .into_inner();
    let stalled = throughput(&addr, secs).await;
    println!(
        "writers (4 over gRPC, memory): {free:.0} writes/s free, {stalled:.0} writes/s with a stalled subscriber (ratio {:.3})",
        stalled / free
    );
}

async fn fan_out(subscribers: usize, offers: usize, runs: usize) {
    let store: SharedStore = Arc::new(store_memory::MemoryStore::new());
    let addr = serve(store.clone()).await;
    let mut chans = Vec::new();
    for _ in 0..(subscribers / 50).max(1) {
        chans.push(channel(&addr).await);
    }
    let mut lasts = Vec::new();
    for run in 0..runs {
        let mut streams = Vec::new();
        for i in 0..subscribers {
            let mut s = MarginOfferServiceClient::new(chans[i % chans.len()].clone())
                .max_decoding_message_size(64 << 20)
                .subscribe_margin_offers(pb::SubscribeMarginOffersRequest::default())
                .await
                .unwrap()
                .into_inner();
            s.message().await.unwrap().unwrap(); // the marker
            streams.push(s);
        }
        let book: Vec<MarginOffer> = (0..offers)
            .map(|i| {
                let mut o = MarginOffer::example(format!("f{i}"));
                o.available_borrow_amount = 1.0 + run as f64;
                o
            })
            .collect();
        let started = Instant::now();
        let tasks: Vec<_> = streams
            .into_iter()
            .map(|mut s| {
                tokio::spawn(async move {
                    let mut n = 0;
                    while n < offers {
                        match s.message().await.unwrap().unwrap().event {
                            Some(Event::Change(_)) => n += 1,
                            Some(Event::Error(e)) => panic!("{e:?}"),
                            _ => {}
                        }
                    }
                    started.elapsed()
                })
            })
            .collect();
        store
            .overwrite(
                OverwriteRequest {
                    offers: book,
                    ..Default::default()
                },
                &WriteContext::default(),
            )
            .await
            .unwrap();
        let mut last = Duration::ZERO;
        for t in tasks {
            last = last.max(t.await.unwrap());
        }
        println!(
            "fan-out run {run}: last of {subscribers} subscribers had all {offers} changes after {last:?}"
        );
        lasts.push(last);
    }
    lasts.sort();
    let p99 = lasts[((lasts.len() * 99).div_ceil(100)).saturating_sub(1)];
    println!(
        "fan-out ({subscribers} subscribers, {offers}-offer overwrite, {runs} runs): median {:?}, p99 {p99:?}",
        lasts[lasts.len() / 2]
    );
}

fn main() {
    // `cargo bench` passes `--bench`; a filter argument is ignored.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        stalled_vs_free().await;
        let subs = std::env::var("FANOUT_SUBSCRIBERS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(1000);
        fan_out(subs, 10_000, 5).await;
    });
}
