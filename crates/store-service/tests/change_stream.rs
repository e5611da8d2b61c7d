//! The change stream end to end: real gRPC over loopback, memory, SQLite
//! and PostgreSQL backends, concurrent writers, many subscribers, dropped
//! connections. The PostgreSQL variants use a fresh schema on the server
//! named by `TEST_DATABASE_URL` (skipped without it, except in CI).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use offer_domain::{
    Change, ChangeType, ListQuery, MarginOffer, OfferType, OverwriteFilter, OverwriteRequest,
    Revision, StoreError, WriteContext,
};
use offer_proto::convert as cv;
use offer_proto::pb;
use offer_proto::pb::margin_offer_service_client::MarginOfferServiceClient;
use offer_proto::pb::subscribe_margin_offers_response::Event;
use offer_store::{MarginOfferStore as _, SharedStore};
use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use store_client::{GrpcStore, WatchEvent, WatchFilter, WatchRequest};
use store_service::ServiceConfig;
use store_testkit::collect_watch;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio_stream::StreamExt as _;
use tonic::Code;
use tonic::transport::Channel;

// ---------------------------------------------------------------- harness

// The PostgreSQL backend's own test support: URL lookup (CI must not skip),
// unique schemas, and dropping them afterwards.
#[path = "../../store-postgres/tests/support/mod.rs"]
mod pg_support;

enum Kind {
    Memory,
    Sqlite,
    /// The server URL; each test server gets a schema of its own.
    Postgres(String),
}

impl Kind {
    /// PostgreSQL when `TEST_DATABASE_URL` is set; `None` skips the test
    /// (outside CI, with a notice).
    fn postgres() -> Option<Kind> {
        pg_support::database_url().map(Kind::Postgres)
    }
}

struct Server {
    addr: SocketAddr,
    store: SharedStore,
    stop: Option<oneshot::Sender<()>>,
    _dir: Option<tempfile::TempDir>,
    /// Declared last, so the schema goes after the store is dropped.
    _schema: Option<pg_support::DropSchema>,
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

/// `retention`: change-log retention by count, with no age floor (None: defaults).
async fn server(kind: Kind, cfg: ServiceConfig, retention: Option<usize>) -> Server {
    let mut schema_guard = None;
    let (store, dir): (SharedStore, _) = match kind {
        Kind::Memory => {
            let s = match retention {
                Some(n) => store_memory::MemoryStore::with_change_retention(n)
                    .with_change_min_age(Duration::ZERO),
                None => store_memory::MemoryStore::new(),
            };
            (Arc::new(s), None)
        }
        Kind::Sqlite => {
            let dir = tempfile::tempdir().unwrap();
            let opts = store_sqlite::SqliteOptions {
                change_log_retention: retention.unwrap_or(0),
                change_log_min_age: retention.map(|_| Duration::ZERO),
                ..Default::default()
            };
            let s = store_sqlite::SqliteStore::open_with(dir.path().join("o.db"), opts)
                .await
                .unwrap();
            (Arc::new(s), Some(dir))
        }
        Kind::Postgres(url) => {
            let schema = pg_support::unique_schema();
            schema_guard = Some(pg_support::DropSchema {
                url: url.clone(),
                schema: schema.clone(),
            });
            let mut opts = pg_support::options(&schema);
            // Four writers plus the change hub and replaying subscribers.
            opts.pool_size = 8;
            if let Some(n) = retention {
                opts.change_log_retention = n;
                opts.change_log_min_age = Duration::ZERO;
            }
            let s = store_postgres::PgStore::connect(&url, opts)
                .await
                .expect("connect to the test PostgreSQL");
            (Arc::new(s), None)
        }
    };
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(store_service::serve(store.clone(), cfg, listener, async {
        let _ = stopped.await;
    }));
    Server {
        addr,
        store,
        stop: Some(stop),
        _dir: dir,
        _schema: schema_guard,
    }
}

async fn channel(addr: SocketAddr) -> Channel {
    Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap()
}

fn short_heartbeat() -> ServiceConfig {
    ServiceConfig {
        heartbeat_interval: Duration::from_millis(100),
        ..Default::default()
    }
}

/// A TCP relay whose connections can all be cut at once.
struct Proxy {
    addr: SocketAddr,
    conns: Arc<std::sync::Mutex<Vec<tokio::task::AbortHandle>>>,
}

impl Proxy {
    async fn start(upstream: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let conns: Arc<std::sync::Mutex<Vec<tokio::task::AbortHandle>>> = Arc::default();
        let c2 = conns.clone();
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let Ok(mut out) = TcpStream::connect(upstream).await else {
                    continue;
                };
                let h = tokio::spawn(async move {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut out).await;
                });
                c2.lock().unwrap().push(h.abort_handle());
            }
        });
        Proxy { addr, conns }
    }

    /// Drops every open connection.
    fn kill(&self) -> usize {
        let v: Vec<_> = std::mem::take(&mut *self.conns.lock().unwrap());
        for h in &v {
            h.abort();
        }
        v.len()
    }
}

// ---------------------------------------------------------------- workload

const COLLATERAL: [&str; 4] = ["SOL", "BONK", "JUP", "WIF"];
const SOURCES: [&str; 3] = ["lavarage", "marginfi", "manual"];

fn offer(id: &str, k: usize, amount: f64) -> MarginOffer {
    let mut o = MarginOffer::example(id);
    o.collateral_token = COLLATERAL[k % 4].into();
    o.borrow_token = if k.is_multiple_of(2) { "USDC" } else { "USDT" }.into();
    o.offer_type = OfferType::ALL[k % 3];
    o.lender_address = Some(format!("lender-{}", k % 8));
    o.source = Some(SOURCES[k % 3].into());
    o.available_borrow_amount = amount;
    o
}

/// Tiny deterministic generator (no dev-dependency needed).
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// One writer: `calls` write calls on its own ids (so they never fail):
/// creates, updates, deletes, create-or-updates, and scoped overwrites.
async fn writer(store: Arc<dyn offer_store::MarginOfferStore>, w: usize, calls: usize) {
    let origin = ["api", "backfiller", "etl", "custom-writer"][w % 4];
    let ctx = WriteContext::new(origin);
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ ((w as u64 + 1) * 7919));
    let ids = 64usize;
    let mut exists = vec![false; ids];
    for n in 0..calls {
        let amount = 1.0 + n as f64;
        if n % 50 == 49 {
            // An overwrite of this writer's scope: creates, changes, deletes.
            let scope_lender = format!("scope-{w}");
            let mut offers = Vec::new();
            for i in 0..10 {
                if rng.below(3) == 0 {
                    continue;
                }
                let mut o = offer(&format!("w{w}-s{i}"), i, amount + rng.below(2) as f64);
                o.lender_address = Some(scope_lender.clone());
                offers.push(o);
            }
            if offers.is_empty() {
                continue;
            }
            let req = OverwriteRequest {
                offers,
                filter: Some(OverwriteFilter {
                    lender_address: Some(scope_lender),
                    ..Default::default()
                }),
                ..Default::default()
            };
            store.overwrite(req, &ctx).await.unwrap();
            continue;
        }
        let k = rng.below(ids);
        let id = format!("w{w}-{k}");
        if !exists[k] {
            if n % 2 == 0 {
                store.create(offer(&id, k, amount), &ctx).await.unwrap();
            } else {
                store
                    .create_or_update(offer(&id, k, amount), &ctx)
                    .await
                    .unwrap();
            }
            exists[k] = true;
        } else if rng.below(4) == 0 {
            store.delete(&id, &ctx).await.unwrap();
            exists[k] = false;
        } else {
            store.update(offer(&id, k, amount), &ctx).await.unwrap();
        }
    }
}

async fn run_writers(store: SharedStore, writers: usize, calls_each: usize) {
    let tasks: Vec<_> = (0..writers)
        .map(|w| tokio::spawn(writer(store.clone(), w, calls_each)))
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
}

async fn log_after(store: &SharedStore, after: Revision) -> Vec<Change> {
    let mut out = Vec::new();
    let mut at = after;
    loop {
        let b = store.changes_since(at, 10_000).await.unwrap();
        let Some(last) = b.changes.last().map(|c| c.revision) else {
            return out;
        };
        at = last;
        out.extend(b.changes);
    }
}

// ---------------------------------------------------------------- filters

fn filter_for(i: usize) -> pb::SubscribeMarginOffersRequest {
    let mut r = pb::SubscribeMarginOffersRequest {
        client_id: format!("sub-{i}"),
        ..Default::default()
    };
    match i % 8 {
        0 => {}
        1 => r.collateral_token = Some(COLLATERAL[i % 4].into()),
        2 => r.lender_address = Some(format!("lender-{}", i % 8)),
        3 => r.source = Some(SOURCES[i % 3].into()),
        4 => {
            r.subscribe_deleted = true;
            r.subscribe_overwritten = true;
        }
        5 => {
            r.collateral_token = Some(COLLATERAL[i % 4].into());
            r.borrow_token = Some("USDC".into());
            r.subscribe_created = true;
        }
        6 => r.offer_type = Some(OfferType::ALL[i % 3].as_str().into()),
        _ => {
            r.liquidity_source = Some("marginfi".into());
            r.subscribe_updated = true;
        }
    }
    r
}

fn matches(r: &pb::SubscribeMarginOffersRequest, c: &Change) -> bool {
    let o = &c.offer;
    let t = [
        r.subscribe_created,
        r.subscribe_updated,
        r.subscribe_deleted,
        r.subscribe_overwritten,
    ];
    let idx = (c.change_type.wire_value() - 1) as usize;
    let eq = |w: &Option<String>, h: Option<&str>| w.as_deref().is_none_or(|w| Some(w) == h);
    (t == [false; 4] || t[idx])
        && eq(&r.offer_type, Some(o.offer_type.as_str()))
        && eq(&r.collateral_token, Some(&o.collateral_token))
        && eq(&r.borrow_token, Some(&o.borrow_token))
        && eq(&r.liquidity_source, Some(&o.liquidity_source))
        && eq(&r.lender_address, o.lender_address.as_deref())
        && eq(&r.source, o.source.as_deref())
}

/// An order-sensitive digest of a change sequence: loss, duplication or
/// reordering changes it.
#[derive(Default, Debug, PartialEq, Eq, Clone, Copy)]
struct Digest {
    count: usize,
    hash: u64,
    last_revision: Revision,
    out_of_order: usize,
}

impl Digest {
    fn add(&mut self, c: &Change) {
        let mut h = DefaultHasher::new();
        (
            c.revision,
            c.change_type.wire_value(),
            &c.offer.id,
            &c.operation_id,
            &c.origin,
            c.offer.available_borrow_amount.to_bits(),
            c.timestamp.0,
        )
            .hash(&mut h);
        self.hash = (self.hash ^ h.finish()).wrapping_mul(0x100_0000_01b3);
        self.count += 1;
        if c.revision < self.last_revision {
            self.out_of_order += 1;
        }
        self.last_revision = c.revision;
    }
}

/// Reads a raw subscription until a heartbeat at `until` (set later).
async fn collect(
    mut stream: tonic::Streaming<pb::SubscribeMarginOffersResponse>,
    until: tokio::sync::watch::Receiver<Option<Revision>>,
) -> Digest {
    let mut d = Digest::default();
    loop {
        let m = tokio::time::timeout(Duration::from_secs(60), stream.message())
            .await
            .expect("a message within 60 s")
            .expect("stream ok")
            .expect("stream open");
        match m.event {
            Some(Event::Change(c)) if c.change_type == 0 => {}
            Some(Event::Change(c)) => d.add(&cv::change_from_pb(c).unwrap()),
            Some(Event::Heartbeat(h)) if until.borrow().is_some_and(|u| h.revision >= u) => {
                return d;
            }
            Some(Event::Heartbeat(_)) => {}
            Some(Event::Error(e)) => panic!("subscription error: {e:?}"),
            None => {}
        }
    }
}

async fn subscribe(
    ch: &Channel,
    req: pb::SubscribeMarginOffersRequest,
) -> tonic::Streaming<pb::SubscribeMarginOffersResponse> {
    let mut s = MarginOfferServiceClient::new(ch.clone())
        .max_decoding_message_size(64 << 20)
        .subscribe_margin_offers(req)
        .await
        .unwrap()
        .into_inner();
    // The marker first: the subscription is live once it arrives.
    let m = s.message().await.unwrap().unwrap();
    let Some(Event::Change(c)) = m.event else {
        panic!("first message is the marker: {m:?}")
    };
    assert_eq!(
        c.metadata.get("message").map(String::as_str),
        Some("subscription_established")
    );
    s
}

// ---------------------------------------------------------------- tests

/// 200 subscribers with mixed filters, 4 concurrent writers: each receives
/// exactly the matching part of the change log, in order.
async fn fan_out_exact(kind: Kind, calls_each: usize) {
    let srv = server(kind, short_heartbeat(), None).await;
    let r0 = srv.store.revision().await.unwrap();
    // Several connections: HTTP/2 limits concurrent streams per connection.
    let mut chans = Vec::new();
    for _ in 0..4 {
        chans.push(channel(srv.addr).await);
    }
    let (until_tx, until_rx) = tokio::sync::watch::channel(None);
    let mut subs = Vec::new();
    for i in 0..200 {
        let mut req = filter_for(i);
        if i % 2 == 0 {
            req.start_revision = Some(r0);
        }
        let s = subscribe(&chans[i % 4], req.clone()).await;
        subs.push((req, tokio::spawn(collect(s, until_rx.clone()))));
    }
    // Writers go through gRPC too, each naming itself via x-change-source.
    let client: SharedStore = Arc::new(GrpcStore::connect(&srv.addr.to_string()).await.unwrap());
    let started = Instant::now();
    run_writers(client, 4, calls_each).await;
    let wrote = started.elapsed();
    let head = srv.store.revision().await.unwrap();
    until_tx.send_replace(Some(head));
    let log = log_after(&srv.store, r0).await;
    assert!(
        log.len() >= 4 * calls_each * 9 / 10,
        "log has {}",
        log.len()
    );
    for (req, task) in subs {
        let got = task.await.unwrap();
        let mut want = Digest::default();
        for c in log.iter().filter(|c| matches(&req, c)) {
            want.add(c);
        }
        assert_eq!(got.out_of_order, 0, "{}", req.client_id);
        assert_eq!(got, want, "subscriber {} ({req:?})", req.client_id);
    }
    eprintln!(
        "fan-out: {} changes to 200 subscribers; writes took {wrote:?}, all delivered after {:?}",
        log.len(),
        started.elapsed()
    );
}

/// Scaled down from the 50 000 (about 2 minutes in a debug build on
/// 2 cores) to 20 000; `CHANGE_STREAM_WRITES=50000` runs the full figure.
fn writes_per_writer() -> usize {
    std::env::var("CHANGE_STREAM_WRITES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000)
        / 4
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_200_subscribers_receive_exactly_their_changes() {
    fan_out_exact(Kind::Memory, writes_per_writer()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_200_subscribers_receive_exactly_their_changes() {
    fan_out_exact(Kind::Sqlite, writes_per_writer() / 5).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_200_subscribers_receive_exactly_their_changes() {
    // Half the SQLite figure: each write is several round trips to the server.
    if let Some(kind) = Kind::postgres() {
        fan_out_exact(kind, writes_per_writer() / 10).await;
    }
}

/// Killing the connection 20 times mid-stream changes nothing for a
/// resuming client.
async fn resume_after_kills(kind: Kind) {
    let srv = server(kind, short_heartbeat(), None).await;
    let proxy = Proxy::start(srv.addr).await;
    let r0 = srv.store.revision().await.unwrap();
    let (until_tx, until_rx) = tokio::sync::watch::channel(None);
    let req = |f: WatchFilter| WatchRequest {
        filters: f,
        start_revision: Some(r0),
        client_id: "resumer".into(),
        ..Default::default()
    };
    let direct = GrpcStore::connect(&srv.addr.to_string()).await.unwrap();
    let flaky = GrpcStore::connect(&proxy.addr.to_string()).await.unwrap();
    let filtered = WatchFilter {
        collateral_token: Some("SOL".into()),
        ..Default::default()
    };
    let reference = tokio::spawn(collect_watch(
        direct,
        req(WatchFilter::default()),
        until_rx.clone(),
    ));
    let resumed = tokio::spawn(collect_watch(
        flaky.clone(),
        req(WatchFilter::default()),
        until_rx.clone(),
    ));
    let resumed_f = tokio::spawn(collect_watch(
        flaky,
        req(filtered.clone()),
        until_rx.clone(),
    ));
    let writes = tokio::spawn(run_writers(srv.store.clone(), 4, 1500));
    let mut rng = Rng(42);
    let mut kills = 0;
    while kills < 20 {
        tokio::time::sleep(Duration::from_millis(20 + rng.below(80) as u64)).await;
        if proxy.kill() > 0 {
            kills += 1;
        }
    }
    writes.await.unwrap();
    until_tx.send_replace(Some(srv.store.revision().await.unwrap()));
    let want = reference.await.unwrap();
    let got = resumed.await.unwrap();
    let log = log_after(&srv.store, r0).await;
    assert_eq!(want.len(), log.len());
    assert!(want == log, "the uninterrupted stream equals the log");
    assert_eq!(got.len(), want.len());
    assert!(
        got == want,
        "the resumed stream equals the uninterrupted one"
    );
    let got_f = resumed_f.await.unwrap();
    let want_f: Vec<_> = log
        .into_iter()
        .filter(|c| c.offer.collateral_token == "SOL")
        .collect();
    assert!(
        got_f == want_f,
        "filtered resumed stream ({} vs {})",
        got_f.len(),
        want_f.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_resumes_after_20_kills() {
    resume_after_kills(Kind::Memory).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_resumes_after_20_kills() {
    resume_after_kills(Kind::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_resumes_after_20_kills() {
    if let Some(kind) = Kind::postgres() {
        resume_after_kills(kind).await;
    }
}

/// List at revision R, watch from R while writes go on: the book rebuilt
/// from the listing and the changes equals the final book.
async fn list_then_watch(kind: Kind) {
    let srv = server(kind, short_heartbeat(), None).await;
    let client = GrpcStore::connect(&srv.addr.to_string()).await.unwrap();
    let shared: SharedStore = Arc::new(client.clone());
    let writes = tokio::spawn(run_writers(shared.clone(), 2, 800));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let q = ListQuery {
        limit: 1000,
        include_expired: true,
        ..Default::default()
    };
    let page = shared.list(&q).await.unwrap();
    assert!(!page.has_more);
    let mut book: BTreeMap<String, MarginOffer> =
        page.offers.into_iter().map(|o| (o.id.clone(), o)).collect();
    let (until_tx, until_rx) = tokio::sync::watch::channel(None);
    let watcher = tokio::spawn(collect_watch(
        client,
        WatchRequest {
            start_revision: Some(page.revision),
            ..Default::default()
        },
        until_rx,
    ));
    writes.await.unwrap();
    until_tx.send_replace(Some(srv.store.revision().await.unwrap()));
    for c in watcher.await.unwrap() {
        match c.change_type {
            ChangeType::Deleted => {
                book.remove(&c.offer.id);
            }
            _ => {
                book.insert(c.offer.id.clone(), c.offer);
            }
        }
    }
    let fin: BTreeMap<String, MarginOffer> = srv
        .store
        .list(&q)
        .await
        .unwrap()
        .offers
        .into_iter()
        .map(|o| (o.id.clone(), o))
        .collect();
    assert_eq!(book.len(), fin.len());
    assert!(book == fin, "reconstructed book equals the final book");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_list_then_watch() {
    list_then_watch(Kind::Memory).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_list_then_watch() {
    list_then_watch(Kind::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_list_then_watch() {
    if let Some(kind) = Kind::postgres() {
        list_then_watch(kind).await;
    }
}

/// A subscriber that stops reading gets LAGGED once the log has moved past
/// it; writers and an attentive subscriber carry on meanwhile.
async fn stalled_gets_lagged(kind: Kind) {
    const CALLS: usize = 100;
    const PER_CALL: usize = 100;
    // A small ring, so falling behind it sends the subscriber to the store,
    // whose retained window (2 000 changes) is then what it falls out of.
    let cfg = ServiceConfig {
        change_ring_capacity: 8,
        ..short_heartbeat()
    };
    let srv = server(kind, cfg, Some(2_000)).await;
    // Separate connections: a stalled stream may use up its connection's
    // HTTP/2 window, which is the client's business, not the server's.
    let ch = channel(srv.addr).await;
    let stalled_ch = channel(srv.addr).await;
    let r0 = srv.store.revision().await.unwrap();
    let stalled = subscribe(&stalled_ch, pb::SubscribeMarginOffersRequest::default()).await;
    let (until_tx, until_rx) = tokio::sync::watch::channel(None);
    let attentive = tokio::spawn(collect(
        subscribe(
            &ch,
            pb::SubscribeMarginOffersRequest {
                start_revision: Some(r0),
                ..Default::default()
            },
        )
        .await,
        until_rx,
    ));
    let started = Instant::now();
    let ctx = WriteContext::default();
    // ~1 KiB per change, 10 MB in all: more than the transport buffers.
    for call in 0..CALLS {
        let offers = (0..PER_CALL)
            .map(|i| {
                let mut o = offer(&format!("lag-{call}-{i}"), i, 1.0);
                o.liquidity_source = "x".repeat(250);
                o.lender_address = Some("y".repeat(250));
                o.source = Some("z".repeat(250));
                o
            })
            .collect();
        srv.store
            .bulk_create(offers, Default::default(), &ctx)
            .await
            .unwrap();
        // Paced so the attentive subscriber keeps inside the retained window.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let wrote = started.elapsed();
    until_tx.send_replace(Some(srv.store.revision().await.unwrap()));
    let d = attentive.await.unwrap();
    assert_eq!(
        d.count,
        CALLS * PER_CALL,
        "the attentive subscriber got everything"
    );
    // Now read the stalled one: what was buffered, then the fatal LAGGED.
    let mut s = stalled;
    let mut n = 0;
    let err = loop {
        let m = tokio::time::timeout(Duration::from_secs(30), s.message())
            .await
            .expect("in time")
            .expect("ok")
            .expect("the stream ends with an error, not silently");
        match m.event {
            Some(Event::Change(_)) => n += 1,
            Some(Event::Error(e)) => break e,
            _ => {}
        }
    };
    assert_eq!(err.error_code, "LAGGED");
    assert!(err.fatal);
    assert_eq!(n % PER_CALL, 0, "whole revisions only");
    let resume = r0 + (n / PER_CALL) as i64;
    assert!(
        err.error_message
            .contains(&format!("resume_revision={resume}")),
        "{} (after {n} changes)",
        err.error_message
    );
    assert!(n < CALLS * PER_CALL, "it did fall behind ({n})");
    assert!(s.message().await.unwrap().is_none(), "LAGGED is the end");
    eprintln!("stalled subscriber: LAGGED after {n} changes; writes took {wrote:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_stalled_subscriber_gets_lagged() {
    stalled_gets_lagged(Kind::Memory).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_stalled_subscriber_gets_lagged() {
    stalled_gets_lagged(Kind::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_stalled_subscriber_gets_lagged() {
    if let Some(kind) = Kind::postgres() {
        stalled_gets_lagged(kind).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_carry_the_current_revision() {
    let srv = server(Kind::Memory, short_heartbeat(), None).await;
    let ch = channel(srv.addr).await;
    let mut s = subscribe(&ch, pb::SubscribeMarginOffersRequest::default()).await;
    let mut beats = Vec::new();
    let started = Instant::now();
    while beats.len() < 4 {
        let m = s.message().await.unwrap().unwrap();
        if let Some(Event::Heartbeat(h)) = m.event {
            beats.push(h.revision);
        }
    }
    assert!(started.elapsed() < Duration::from_secs(2));
    let w = srv
        .store
        .create(offer("hb", 1, 1.0), &WriteContext::default())
        .await
        .unwrap();
    loop {
        let m = s.message().await.unwrap().unwrap();
        if let Some(Event::Heartbeat(h)) = m.event
            && h.revision == w.revision
        {
            break;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriber_limit_and_cleanup() {
    let cfg = ServiceConfig {
        max_subscribers: 3,
        ..Default::default()
    };
    let srv = server(Kind::Memory, cfg, None).await;
    let ch = channel(srv.addr).await;
    let mut open = Vec::new();
    for _ in 0..3 {
        open.push(subscribe(&ch, Default::default()).await);
    }
    let mut c = MarginOfferServiceClient::new(ch.clone());
    let e = c
        .subscribe_margin_offers(pb::SubscribeMarginOffersRequest::default())
        .await
        .expect_err("over the limit");
    assert_eq!(e.code(), Code::ResourceExhausted);
    drop(open.pop());
    // The slot comes back once the server notices the disconnect.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match c
            .subscribe_margin_offers(pb::SubscribeMarginOffersRequest::default())
            .await
        {
            Ok(_) => break,
            Err(e) if e.code() == Code::ResourceExhausted && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("slot not released: {e}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pruned_start_revision_is_out_of_range() {
    let kinds = [Some(Kind::Memory), Some(Kind::Sqlite), Kind::postgres()];
    for kind in kinds.into_iter().flatten() {
        let srv = server(kind, ServiceConfig::default(), Some(5)).await;
        for i in 0..50 {
            srv.store
                .create(offer(&format!("p{i}"), i, 1.0), &WriteContext::default())
                .await
                .unwrap();
        }
        let ch = channel(srv.addr).await;
        let e = MarginOfferServiceClient::new(ch)
            .subscribe_margin_offers(pb::SubscribeMarginOffersRequest {
                start_revision: Some(1),
                ..Default::default()
            })
            .await
            .expect_err("pruned");
        assert_eq!(e.code(), Code::OutOfRange);
        let oldest = match srv.store.changes_since(0, 1).await {
            Err(StoreError::OutOfRange { oldest, .. }) => oldest,
            other => panic!("{other:?}"),
        };
        assert!(e.message().contains(&oldest.to_string()), "{}", e.message());
        // The watching client surfaces it as an error, not a retry loop.
        let client = GrpcStore::connect(&srv.addr.to_string()).await.unwrap();
        let mut w = client.watch(WatchRequest {
            start_revision: Some(1),
            ..Default::default()
        });
        let first = tokio::time::timeout(Duration::from_secs(5), w.next())
            .await
            .unwrap()
            .unwrap();
        assert!(
            matches!(first, Err(StoreError::OutOfRange { .. })),
            "{first:?}"
        );
    }
}

/// `source` names the writer (x-change-source) and every change of one
/// write call shares its operation id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn source_and_operation_id_are_carried() {
    let srv = server(Kind::Memory, short_heartbeat(), None).await;
    let client = GrpcStore::connect(&srv.addr.to_string())
        .await
        .unwrap()
        .with_origin("my-tool");
    let mut w = client.watch(WatchRequest::default());
    // Wait for the subscription to be live (its caught-up heartbeat).
    loop {
        if let Some(Ok(WatchEvent::Heartbeat { .. })) = w.next().await {
            break;
        }
    }
    let ctx = WriteContext {
        origin: "ignored".into(),
        operation_id: "op-123".into(),
    };
    client
        .bulk_create(
            vec![offer("a", 0, 1.0), offer("b", 1, 1.0)],
            Default::default(),
            &ctx,
        )
        .await
        .unwrap();
    let mut got: HashMap<String, Change> = HashMap::new();
    while got.len() < 2 {
        if let Some(Ok(WatchEvent::Change(c))) = w.next().await {
            got.insert(c.offer.id.clone(), c);
        }
    }
    for c in got.values() {
        assert_eq!(c.origin, "my-tool");
        assert_eq!(c.operation_id, "op-123");
        assert_eq!(c.change_type, ChangeType::Created);
    }
}
