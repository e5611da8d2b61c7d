//! The off-chain HTTP source against a small local axum server.
// Tests: a failed unwrap is the assertion.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use axum::Router;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use backfill::sources::OffChainSource;
use backfill::{
    BackfillConfig, BackfillOptions, Backfiller, CancellationToken, JobSpec, Progress, RunOutcome,
    Source, SourceError, SourceKind, SourceRegistry, TimeWindow,
};
use offer_domain::{ListQuery, OfferFilter, OfferType};
use offer_store::SharedStore;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use store_memory::MemoryStore;

#[derive(Default)]
struct Seen {
    flaky_calls: AtomicUsize,
    queries: Mutex<Vec<HashMap<String, String>>>,
    headers: Mutex<Vec<HeaderMap>>,
}

type Shared = Arc<Seen>;
type Q = Query<HashMap<String, String>>;

fn wire(id: &str) -> Value {
    json!({
        "id": id, "offer_type": "LV", "collateral_token": "SOL", "borrow_token": "USDC",
        "available_borrow_amount": 1500.5, "max_open_ltv": 0.5, "liquidation_ltv": 0.8,
        "interest_rate": 0.12, "interest_model": "fixed", "term_days": 30,
        "liquidity_source": "partner", "lender_address": "Lender1",
        "last_borrowed_timestamp": "2024-05-01T12:00:00Z",
        "created_timestamp": "2024-04-01T00:00:00+02:00",
        "some_future_field": true
    })
}

fn json_body(v: Value) -> Response {
    ([(header::CONTENT_TYPE, "application/json")], v.to_string()).into_response()
}

async fn cursor(State(s): State<Shared>, q: Q, h: HeaderMap) -> Response {
    s.queries.lock().unwrap().push(q.0.clone());
    s.headers.lock().unwrap().push(h);
    match q.get("cursor").map(String::as_str) {
        None => json_body(json!({ "offers": [wire("a"), wire("b")], "next": "p2" })),
        Some("p2") => json_body(json!({ "offers": [wire("c")], "next": null })),
        Some(_) => StatusCode::BAD_REQUEST.into_response(),
    }
}

async fn link(q: Q) -> Response {
    match q.get("page").map(String::as_str) {
        None => {
            let mut r = json_body(json!([wire("l1"), wire("l2")]));
            r.headers_mut().insert(
                header::LINK,
                "</link?page=2>; rel=\"next\", </link>; rel=\"first\""
                    .parse()
                    .unwrap(),
            );
            r
        }
        Some("2") => json_body(json!([wire("l3")])),
        Some(_) => StatusCode::NOT_FOUND.into_response(),
    }
}

async fn flaky(State(s): State<Shared>) -> Response {
    if s.flaky_calls.fetch_add(1, Ordering::SeqCst) == 0 {
        (StatusCode::TOO_MANY_REQUESTS, "slow down").into_response()
    } else {
        json_body(json!([wire("f1")]))
    }
}

async fn malformed() -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        "{\"offers\": [",
    )
        .into_response()
}

async fn invalid(q: Q) -> Response {
    match q.get("page").map(String::as_str) {
        None => json_body(json!({ "offers": [wire("ok1")], "next": "/invalid?page=2" })),
        _ => {
            let mut bad = wire("bad");
            bad["liquidation_ltv"] = json!(0.4);
            json_body(json!({ "offers": [wire("ok2"), bad] }))
        }
    }
}

async fn wrong_type() -> Response {
    let mut bad = wire("w");
    bad["interest_rate"] = json!("high");
    json_body(json!([bad]))
}

async fn looping() -> Response {
    json_body(json!({ "offers": [], "next": "again" }))
}

async fn unavailable() -> Response {
    (StatusCode::SERVICE_UNAVAILABLE, "down").into_response()
}

async fn missing() -> Response {
    (StatusCode::NOT_FOUND, "no such feed").into_response()
}

async fn serve() -> (SocketAddr, Shared) {
    let seen: Shared = Arc::default();
    let app = Router::new()
        .route("/cursor", get(cursor))
        .route("/link", get(link))
        .route("/flaky", get(flaky))
        .route("/malformed", get(malformed))
        .route("/invalid", get(invalid))
        .route("/wrong-type", get(wrong_type))
        .route("/loop", get(looping))
        .route("/unavailable", get(unavailable))
        .route("/missing", get(missing))
        .with_state(seen.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (addr, seen)
}

fn job(name: &str, addr: SocketAddr, path: &str) -> JobSpec {
    let env = |n: &str| (n == "FEED_TOKEN").then(|| "secret-token".to_owned());
    let text = json!({ "jobs": [{
        "name": name,
        "request": { "source": "off-chain", "off_chain_params": {
            "api_endpoint": format!("http://{addr}{path}"),
            "headers": { "X-Client": "backfiller" },
            "query_params": { "network": "mainnet" },
            "auth_token": "${FEED_TOKEN}" } },
        "max_retries": 2, "timeout": "10s" }] })
    .to_string();
    BackfillConfig::from_json(&text, "test", &env)
        .unwrap()
        .jobs
        .remove(0)
}

async fn fetch(
    addr: SocketAddr,
    path: &str,
) -> Result<Vec<offer_domain::MarginOffer>, SourceError> {
    let src = OffChainSource::new().unwrap();
    let snap = src
        .fetch(
            &job("feed", addr, path),
            TimeWindow::last(Duration::from_secs(3600)),
            &Progress::new(),
        )
        .await?;
    assert_eq!(snap.scopes.len(), 1);
    assert_eq!(snap.scopes[0].scope, "feed");
    Ok(snap.scopes.into_iter().next().unwrap().offers)
}

fn permanent(r: Result<Vec<offer_domain::MarginOffer>, SourceError>) -> String {
    match r {
        Err(SourceError::Permanent(m)) => m,
        other => panic!("expected a permanent error, got {other:?}"),
    }
}

#[tokio::test]
async fn cursor_pagination_sends_window_params_headers_and_token() {
    let (addr, seen) = serve().await;
    let offers = fetch(addr, "/cursor").await.unwrap();
    let ids: Vec<&str> = offers.iter().map(|o| o.id.as_str()).collect();
    assert_eq!(ids, ["a", "b", "c"]);
    let o = &offers[0];
    assert_eq!(o.offer_type, OfferType::LV);
    assert_eq!(o.source.as_deref(), Some("feed"));
    assert_eq!(o.term_days, Some(30));
    assert_eq!(o.lender_address.as_deref(), Some("Lender1"));
    assert_eq!(o.created_timestamp.unwrap().0, 1_711_922_400_000_000_000);
    assert!(o.last_borrowed_timestamp.is_some());

    let queries = seen.queries.lock().unwrap().clone();
    assert_eq!(queries.len(), 2);
    for q in &queries {
        assert_eq!(q["network"], "mainnet");
        let start = chrono::DateTime::parse_from_rfc3339(&q["start_time"]).unwrap();
        let end = chrono::DateTime::parse_from_rfc3339(&q["end_time"]).unwrap();
        assert_eq!((end - start).num_seconds(), 3600);
    }
    assert_eq!(queries[1]["cursor"], "p2");
    let headers = seen.headers.lock().unwrap().clone();
    assert_eq!(headers[0]["authorization"], "Bearer secret-token");
    assert_eq!(headers[1]["x-client"], "backfiller");
}

#[tokio::test]
async fn link_header_pagination() {
    let (addr, _) = serve().await;
    let ids: Vec<String> = fetch(addr, "/link")
        .await
        .unwrap()
        .into_iter()
        .map(|o| o.id)
        .collect();
    assert_eq!(ids, ["l1", "l2", "l3"]);
}

#[tokio::test]
async fn http_429_and_5xx_are_transient_4xx_is_permanent() {
    let (addr, _) = serve().await;
    assert!(
        matches!(fetch(addr, "/flaky").await, Err(SourceError::Transient(m)) if m.contains("429"))
    );
    assert_eq!(fetch(addr, "/flaky").await.unwrap()[0].id, "f1");
    assert!(
        matches!(fetch(addr, "/unavailable").await, Err(SourceError::Transient(m)) if m.contains("503"))
    );
    assert!(permanent(fetch(addr, "/missing").await).contains("404"));
    // Nothing listens on port 9 of loopback: a connection error.
    let closed: SocketAddr = "127.0.0.1:9".parse().unwrap();
    assert!(matches!(
        fetch(closed, "/x").await,
        Err(SourceError::Transient(_))
    ));
}

#[tokio::test]
async fn malformed_json_invalid_offers_and_loops_are_permanent() {
    let (addr, _) = serve().await;
    let m = permanent(fetch(addr, "/malformed").await);
    assert!(m.contains("page 1") && m.contains("malformed JSON"), "{m}");

    let m = permanent(fetch(addr, "/invalid").await);
    assert!(
        m.contains("page 2 item 1") && m.contains("\"bad\"") && m.contains("liquidation_ltv"),
        "{m}"
    );

    let m = permanent(fetch(addr, "/wrong-type").await);
    assert!(
        m.contains("page 1 item 0") && m.contains("interest_rate"),
        "{m}"
    );

    let m = permanent(fetch(addr, "/loop").await);
    assert!(m.contains("pagination loop"), "{m}");
}

#[tokio::test]
async fn through_the_engine_429_is_retried_and_an_invalid_feed_writes_nothing() {
    let (addr, seen) = serve().await;
    let store: SharedStore = Arc::new(MemoryStore::new());
    let sources = SourceRegistry::new().with(
        SourceKind::OffChain,
        Arc::new(OffChainSource::new().unwrap()),
    );
    let bf = Backfiller::new(
        store.clone(),
        sources,
        BackfillOptions {
            retry_base_delay: Duration::from_millis(1),
            retry_max_delay: Duration::from_millis(5),
            ..Default::default()
        },
    );
    let r = bf
        .run_job(
            &job("flaky-feed", addr, "/flaky"),
            &CancellationToken::new(),
        )
        .await;
    assert!(r.succeeded(), "{:?}", r.error);
    assert_eq!(r.attempts, 2);
    assert_eq!(seen.flaky_calls.load(Ordering::SeqCst), 2);
    let o = store.get("f1").await.unwrap();
    assert_eq!(o.source.as_deref(), Some("flaky-feed"));

    let r = bf
        .run_job(
            &job("bad-feed", addr, "/invalid"),
            &CancellationToken::new(),
        )
        .await;
    assert_eq!(r.outcome, RunOutcome::Failed);
    assert_eq!(r.attempts, 1);
    let q = ListQuery {
        filter: OfferFilter {
            source: Some("bad-feed".into()),
            ..Default::default()
        },
        include_expired: true,
        ..Default::default()
    };
    assert_eq!(store.list(&q).await.unwrap().total, 0, "nothing written");
}
