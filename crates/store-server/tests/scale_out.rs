//! Issue #6's scale-out acceptance: two `store` processes on one PostgreSQL
//! database (a fresh one on the server named by `TEST_DATABASE_URL`),
//! 4 writers spread over both, 2 subscribers on each. Mid-run instance B is
//! killed with SIGKILL and restarted on the same port.
//!
//! - Writers on B see their calls fail (unacknowledged: the write may or
//!   may not have committed) and carry on through A for the rest of the run.
//! - B's subscribers are `GrpcStore::watch` streams: they reconnect by
//!   themselves to the restarted B and resume from the last revision seen.
//!
//! At the end every acknowledged write is in the final book (per id: the
//! last acknowledged state, or the state of a later unacknowledged write),
//! each subscriber's sequence equals the change log filtered by its filter,
//! and the two unfiltered subscribers (one per instance) are identical.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::Server;
use common::pg::{TestDatabase, server_url};
use offer_domain::{
    Change, ChangeType, ListQuery, MarginOffer, OverwriteFilter, OverwriteRequest, Revision,
    StoreResult, WriteContext,
};
use offer_store::MarginOfferStore as _;
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use store_client::{GrpcStore, RetryPolicy, WatchFilter, WatchRequest};
use store_postgres::{PgOptions, PgStore};
use store_testkit::collect_watch;

const WRITERS: usize = 4;
/// Write calls per writer (creates, updates, deletes, upserts, overwrites).
const CALLS_PER_WRITER: usize = 400;
/// Ids per writer for single writes; its overwrite scope has its own.
const IDS: usize = 24;
const SCOPE_IDS: usize = 6;
const COLLATERAL: [&str; 3] = ["SOL", "BONK", "JUP"];

/// Tiny deterministic generator (no dev-dependency needed).
struct Rng(u64);
impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }
}

/// `amount` is unique per write of a writer, so it names the write.
fn offer(id: &str, k: usize, amount: f64) -> MarginOffer {
    let mut o = MarginOffer::example(id);
    o.collateral_token = COLLATERAL[k % 3].into();
    o.lender_address = Some(format!("lender-{}", k % 4));
    o.available_borrow_amount = amount;
    o
}

/// The state a write leaves an id in: `Some(amount)` present, `None` absent.
type State = Option<u64>;

fn state_of(o: &MarginOffer) -> State {
    Some(o.available_borrow_amount.to_bits())
}

/// What a writer knows of one id.
#[derive(Default, Debug, Clone)]
struct IdLedger {
    /// The state of the last acknowledged write (absent before any).
    acked: State,
    /// States of unacknowledged writes since then: any may have committed.
    unsure: Vec<State>,
}

impl IdLedger {
    fn ack(&mut self, s: State) {
        self.acked = s;
        self.unsure.clear();
    }
    fn allowed(&self) -> impl Iterator<Item = &State> {
        std::iter::once(&self.acked).chain(&self.unsure)
    }
}

/// An acknowledged single write: the change it must have logged.
struct Acked {
    revision: Revision,
    id: String,
    state: State,
}

#[derive(Default)]
struct Ledger {
    ids: BTreeMap<String, IdLedger>,
    acked: Vec<Acked>,
    unacknowledged: usize,
    acked_overwrites: usize,
}

/// One writer: its own ids, so every call succeeds unless the instance dies.
/// `targets[0]` is its instance; on a failure it moves to the next one.
async fn writer(w: usize, targets: Vec<GrpcStore>, progress: Arc<AtomicUsize>) -> (Ledger, usize) {
    let ctx = WriteContext::new(["api", "backfiller", "etl", "scale-test"][w]);
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ ((w as u64 + 1) * 7919));
    let mut ledger = Ledger::default();
    let mut target = 0;
    for n in 0..CALLS_PER_WRITER {
        let amount = 1.0 + n as f64;
        let store = &targets[target];
        let failed = if n % 25 == 24 {
            // Scoped overwrite: creates, changes and deletes in one revision.
            let scope = format!("scope-{w}");
            let mut offers = Vec::new();
            let mut next: Vec<(String, State)> = Vec::new();
            for i in 0..SCOPE_IDS {
                let id = format!("w{w}-s{i}");
                if rng.below(3) == 0 {
                    next.push((id, None));
                    continue;
                }
                let mut o = offer(&id, i, amount);
                o.lender_address = Some(scope.clone());
                next.push((id, state_of(&o)));
                offers.push(o);
            }
            if offers.is_empty() {
                continue;
            }
            let req = OverwriteRequest {
                offers,
                filter: Some(OverwriteFilter {
                    lender_address: Some(scope),
                    ..Default::default()
                }),
                ..Default::default()
            };
            let res = store.overwrite(req, &ctx).await;
            for (id, s) in next {
                let l = ledger.ids.entry(id).or_default();
                if res.is_ok() {
                    l.ack(s);
                } else {
                    l.unsure.push(s);
                }
            }
            if res.is_ok() {
                ledger.acked_overwrites += 1;
            }
            res.err()
        } else {
            let k = rng.below(IDS);
            let id = format!("w{w}-{k}");
            let l = ledger.ids.entry(id.clone()).or_default().clone();
            let o = offer(&id, k, amount);
            let (res, s): (StoreResult<Revision>, State) = if !l.unsure.is_empty() {
                // Unknown whether the failed write committed: an upsert
                // succeeds either way.
                let r = store.create_or_update(o.clone(), &ctx).await;
                (r.map(|w| w.revision), state_of(&o))
            } else if l.acked.is_none() {
                let r = if n % 2 == 0 {
                    store.create(o.clone(), &ctx).await
                } else {
                    store.create_or_update(o.clone(), &ctx).await
                };
                (r.map(|w| w.revision), state_of(&o))
            } else if rng.below(4) == 0 {
                (store.delete(&id, &ctx).await, None)
            } else {
                let r = store.update(o.clone(), &ctx).await;
                (r.map(|w| w.revision), state_of(&o))
            };
            let l = ledger.ids.entry(id.clone()).or_default();
            match res {
                Ok(revision) => {
                    l.ack(s);
                    ledger.acked.push(Acked {
                        revision,
                        id,
                        state: s,
                    });
                    None
                }
                Err(e) => {
                    l.unsure.push(s);
                    Some(e)
                }
            }
        };
        if let Some(e) = failed {
            ledger.unacknowledged += 1;
            assert!(
                target + 1 < targets.len(),
                "writer {w}: a write failed on its last instance: {e}"
            );
            eprintln!("writer {w}: call {n} failed ({e}); moving to the other instance");
            target += 1;
        }
        progress.fetch_add(1, Ordering::Relaxed);
    }
    (ledger, target)
}

struct Subscriber {
    name: &'static str,
    request: WatchRequest,
}

fn matches(r: &WatchRequest, c: &Change) -> bool {
    let f = &r.filters;
    let eq =
        |want: &Option<String>, have: Option<&str>| want.as_deref().is_none_or(|w| Some(w) == have);
    (r.types.is_empty() || r.types.contains(&c.change_type))
        && eq(&f.collateral_token, Some(&c.offer.collateral_token))
        && eq(&f.lender_address, c.offer.lender_address.as_deref())
}

fn start(url: &str, grpc: &str) -> Server {
    Server::start_with(&[
        "--addr",
        grpc,
        "--http-addr",
        "127.0.0.1:0",
        "--database-url",
        url,
        "--heartbeat",
        "200ms",
    ])
}

async fn client(addr: SocketAddr) -> GrpcStore {
    GrpcStore::connect(&addr.to_string())
        .await
        .unwrap()
        .with_retry(RetryPolicy::none())
        .with_timeout(Duration::from_secs(20))
}

async fn log_after(store: &PgStore, after: Revision) -> Vec<Change> {
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_four_writers_four_subscribers_survive_a_kill() {
    let Some(admin_url) = server_url() else {
        return;
    };
    let started = Instant::now();
    let db = TestDatabase::create(&admin_url).await;
    let url = db.url();
    let a = start(&url, "127.0.0.1:0");
    let b = start(&url, "127.0.0.1:0");
    let b_addr = b.grpc;
    // The test's own view of the database: the change log and final book.
    let direct = PgStore::connect(
        &url,
        PgOptions {
            pool_size: 2,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let r0 = direct.revision().await.unwrap();

    let subscribers = [
        (
            a.grpc,
            Subscriber {
                name: "A/all",
                request: WatchRequest::default(),
            },
        ),
        (
            a.grpc,
            Subscriber {
                name: "A/SOL",
                request: WatchRequest {
                    filters: WatchFilter {
                        collateral_token: Some("SOL".into()),
                        ..Default::default()
                    },
                    ..Default::default()
                },
            },
        ),
        (
            b_addr,
            Subscriber {
                name: "B/all",
                request: WatchRequest::default(),
            },
        ),
        (
            b_addr,
            Subscriber {
                name: "B/deleted+overwritten",
                request: WatchRequest {
                    types: vec![ChangeType::Deleted, ChangeType::Overwritten],
                    ..Default::default()
                },
            },
        ),
    ];
    let (until_tx, until_rx) = tokio::sync::watch::channel(None);
    let mut collectors = Vec::new();
    for (addr, sub) in subscribers {
        let req = WatchRequest {
            start_revision: Some(r0),
            client_id: sub.name.into(),
            ..sub.request
        };
        let c = GrpcStore::connect(&addr.to_string()).await.unwrap();
        let task = tokio::spawn(collect_watch(c, req.clone(), until_rx.clone()));
        collectors.push((sub.name, req, task));
    }

    // Writers 0 and 1 on A; 2 and 3 on B, falling back to A.
    let progress = Arc::new(AtomicUsize::new(0));
    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let targets = if w < 2 {
            vec![client(a.grpc).await]
        } else {
            vec![client(b_addr).await, client(a.grpc).await]
        };
        writers.push(tokio::spawn(writer(w, targets, progress.clone())));
    }

    // Kill B a third of the way through, restart it on its port a little later.
    let total = WRITERS * CALLS_PER_WRITER;
    while progress.load(Ordering::Relaxed) < total / 3 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let killed_at = progress.load(Ordering::Relaxed);
    b.kill9();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let b = start(&url, &b_addr.to_string());
    assert_eq!(b.grpc, b_addr, "restarted on the same port");

    let mut ledgers = Vec::new();
    for (w, t) in writers.into_iter().enumerate() {
        let (ledger, moved) = t.await.unwrap();
        if w >= 2 {
            assert_eq!(moved, 1, "writer {w} on B saw the kill and moved to A");
        }
        ledgers.push(ledger);
    }
    let wrote = started.elapsed();
    let head = direct.revision().await.unwrap();
    until_tx.send_replace(Some(head));

    let log = log_after(&direct, r0).await;
    assert_eq!(log.last().map(|c| c.revision), Some(head));
    assert!(
        log.windows(2).all(|p| p[0].revision <= p[1].revision),
        "the log is in revision order"
    );

    // No acknowledged write is lost: its change is in the log ...
    let mut logged: HashMap<(Revision, &str), &Change> = HashMap::new();
    for c in &log {
        logged.insert((c.revision, c.offer.id.as_str()), c);
    }
    let mut acked = 0;
    for l in &ledgers {
        for a in &l.acked {
            let c = logged.get(&(a.revision, a.id.as_str())).unwrap_or_else(|| {
                panic!(
                    "acknowledged write of {} at {} not logged",
                    a.id, a.revision
                )
            });
            match a.state {
                None => assert_eq!(c.change_type, ChangeType::Deleted, "{}", a.id),
                Some(s) => assert_eq!(state_of(&c.offer), Some(s), "{}", a.id),
            }
            acked += 1;
        }
    }
    // ... and the final book holds, per id, the last acknowledged state or
    // that of a later write whose fate the writer never learnt.
    let book: HashMap<String, MarginOffer> = direct
        .list(&ListQuery {
            limit: 1000,
            include_expired: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .offers
        .into_iter()
        .map(|o| (o.id.clone(), o))
        .collect();
    let mut known = 0;
    for l in &ledgers {
        for (id, idl) in &l.ids {
            let now = book.get(id).and_then(state_of);
            assert!(
                idl.allowed().any(|s| *s == now),
                "{id}: final state {now:?}, acknowledged {:?}, unacknowledged since {:?}",
                idl.acked,
                idl.unsure
            );
            known += usize::from(book.contains_key(id));
        }
    }
    assert_eq!(known, book.len(), "no offer the writers did not write");

    // Every subscriber: exactly its part of the log, in order; the two
    // unfiltered ones, on different instances, agree.
    let mut unfiltered = Vec::new();
    for (name, req, task) in collectors {
        let got = task.await.unwrap();
        let want: Vec<&Change> = log.iter().filter(|c| matches(&req, c)).collect();
        assert!(!want.is_empty(), "{name}: its filter matches something");
        assert_eq!(got.len(), want.len(), "{name}: count");
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert!(g == *w, "{name}: change {i} differs: {g:?} vs {w:?}");
        }
        if req.filters == WatchFilter::default() && req.types.is_empty() {
            unfiltered.push(got);
        }
    }
    assert_eq!(unfiltered.len(), 2);
    assert!(unfiltered[0] == unfiltered[1], "both instances, one order");

    let unacked: usize = ledgers.iter().map(|l| l.unacknowledged).sum();
    let overwrites: usize = ledgers.iter().map(|l| l.acked_overwrites).sum();
    eprintln!(
        "scale-out: {acked} acknowledged single writes and {overwrites} overwrites, \
         {unacked} unacknowledged; B killed after {killed_at} of {total} calls; \
         {} changes up to revision {head}; writes took {wrote:?}, all checked after {:?}",
        log.len(),
        started.elapsed()
    );
    a.kill9();
    b.kill9();
    direct.close().await.unwrap();
    db.drop_now().await;
}
