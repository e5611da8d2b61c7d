//! Retries, metrics and reconnection against a real gRPC server that goes
//! away and comes back on the same port.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use offer_domain::{InterestModel, MarginOffer, OfferType, StoreError, WriteContext};
use offer_store::{MarginOfferStore, SharedStore};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use store_client::{GrpcStore, RetryPolicy};
use tokio::sync::oneshot;

fn offer(id: &str) -> MarginOffer {
    MarginOffer {
        id: id.into(),
        offer_type: OfferType::V1,
        collateral_token: "SOL".into(),
        borrow_token: "USDC".into(),
        available_borrow_amount: 100.0,
        max_open_ltv: 0.5,
        liquidation_ltv: 0.8,
        interest_rate: 0.05,
        interest_model: InterestModel::Fixed,
        term_days: None,
        liquidity_source: "test".into(),
        lender_address: None,
        last_borrowed_timestamp: None,
        created_timestamp: None,
        updated_timestamp: None,
        source: None,
    }
}

/// Serves a fresh in-memory store on `addr` until the sender fires.
async fn serve(addr: SocketAddr) -> (SocketAddr, oneshot::Sender<()>, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    let local = listener.local_addr().unwrap();
    let store: SharedStore = Arc::new(store_memory::MemoryStore::new());
    let (tx, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        store_service::serve(store, Default::default(), listener, async {
            let _ = rx.await;
        })
        .await
        .unwrap();
    });
    (local, tx, task)
}

fn fast_retries(n: u32) -> RetryPolicy {
    RetryPolicy {
        max_attempts: n,
        base: Duration::from_millis(20),
        max: Duration::from_millis(100),
    }
}

#[test]
fn transient_failures_are_retried_only_for_calls_safe_to_repeat() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    metrics::with_local_recorder(&recorder, || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            // A port nobody listens on: every call is UNAVAILABLE.
            let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let addr = free.local_addr().unwrap();
            drop(free);
            let client = GrpcStore::connect(&addr.to_string())
                .await
                .unwrap()
                .with_retry(fast_retries(3));
            let e = client.get("x").await.unwrap_err();
            assert!(matches!(e, StoreError::Unavailable(_)), "{e:?}");
            let ctx = WriteContext::new("test");
            let e = client.create(offer("x"), &ctx).await.unwrap_err();
            assert!(matches!(e, StoreError::Unavailable(_)), "{e:?}");
            let e = client
                .bulk_create(vec![offer("y")], Default::default(), &ctx)
                .await
                .unwrap_err();
            assert!(matches!(e, StoreError::Unavailable(_)), "{e:?}");
        });
    });
    let mut calls = std::collections::BTreeMap::new();
    let mut connected = None;
    for (key, _, _, value) in snapshotter.snapshot().into_vec() {
        let labels: Vec<String> = key
            .key()
            .labels()
            .map(|l| format!("{}={}", l.key(), l.value()))
            .collect();
        match (key.key().name(), value) {
            ("store_client_calls_total", DebugValue::Counter(n)) => {
                calls.insert(labels.join(","), n);
            }
            ("store_client_connected", DebugValue::Gauge(g)) => connected = Some(g.into_inner()),
            _ => {}
        }
    }
    assert_eq!(
        calls.get("method=GetMarginOffer,code=UNAVAILABLE"),
        Some(&3)
    );
    assert_eq!(
        calls.get("method=CreateMarginOffer,code=UNAVAILABLE"),
        Some(&1)
    );
    assert_eq!(
        calls.get("method=BulkCreateMarginOffers,code=UNAVAILABLE"),
        Some(&1)
    );
    assert_eq!(connected, Some(0.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_client_reconnects_after_a_server_restart() {
    let (addr, stop, task) = serve("127.0.0.1:0".parse().unwrap()).await;
    let client = GrpcStore::connect(&addr.to_string())
        .await
        .unwrap()
        .with_retry(fast_retries(2));
    let ctx = WriteContext::new("test");
    client.create(offer("a"), &ctx).await.unwrap();

    stop.send(()).unwrap();
    task.await.unwrap();
    let e = client.get("a").await.unwrap_err();
    assert!(e.is_transient(), "{e:?}");

    // A read issued while the server is down succeeds once it is back on
    // the same port, through retries alone.
    let patient = client.clone().with_retry(RetryPolicy {
        max_attempts: 50,
        base: Duration::from_millis(20),
        max: Duration::from_millis(100),
    });
    let restart = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        serve(addr).await
    });
    // The new server is a fresh memory store: "a" is gone, which proves
    // the answer came from the restarted process.
    let e = patient.get("a").await.unwrap_err();
    assert!(matches!(e, StoreError::NotFound { .. }), "{e:?}");
    let (_, stop2, task2) = restart.await.unwrap();
    client.create(offer("b"), &ctx).await.unwrap();
    assert_eq!(client.get("b").await.unwrap().id, "b");
    stop2.send(()).unwrap();
    task2.await.unwrap();
}

#[test]
fn full_jitter_stays_under_the_cap() {
    let p = RetryPolicy {
        max_attempts: 10,
        base: Duration::from_millis(100),
        max: Duration::from_secs(1),
    };
    for failed in 1..20 {
        let cap = Duration::from_millis(100 * 2u64.pow((failed - 1).min(10))).min(p.max);
        assert!(p.delay(failed) <= cap);
    }
    assert_eq!(RetryPolicy::none().max_attempts, 1);
}
