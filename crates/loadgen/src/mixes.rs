//! The operation mixes, each a closed loop of C clients for a duration.

use crate::book::{Book, SOURCES};
use crate::conn::Conns;
use crate::peer::{self, PeerClient};
use crate::report::{FanoutReport, OpStats, Recorder};
use anyhow::Context as _;
use offer_domain::{
    BulkUpsertOptions, ListQuery, MarginOffer, OfferFilter, OfferType, OverwriteFilter,
    OverwriteRequest, SortField, SortOrder, WriteContext,
};
use offer_proto::convert as cv;
use offer_proto::pb;
use offer_proto::pb::subscribe_margin_offers_response::Event;
use offer_store::MarginOfferStore;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use store_client::GrpcStore;
use tonic_health::pb::HealthCheckRequest;

/// Scopes the write mixes own, apart from the main book's sources.
pub const UPSERT_SCOPE: &str = "loadgen-upsert";
pub const BULK_SCOPE: &str = "loadgen-bulk";
pub const OVERWRITE_SCOPE: &str = "loadgen-overwrite";
pub const FANOUT_SCOPE: &str = "loadgen-fanout";
/// Ids the single upserts and bulk upserts pick from.
const UPSERT_IDS: usize = 10_000;
const BULK_IDS: usize = 100_000;
pub const BULK_SIZE: usize = 1_000;
/// Offers per message of a streamed overwrite.
pub const CHUNK: usize = 5_000;
/// Subscribers per HTTP/2 connection.
const SUBSCRIBERS_PER_CHANNEL: usize = 50;
/// Longest wait for the last subscriber; beyond it the rest counts as lost.
const FANOUT_WAIT: Duration = Duration::from_secs(60);

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Mix {
    Get,
    List,
    Upsert,
    BulkUpsert,
    Overwrite,
    Fanout,
    All,
}

impl Mix {
    /// `all` in order: reads first, on the book exactly as loaded.
    pub fn expand(self) -> Vec<Mix> {
        match self {
            Mix::All => vec![
                Mix::Get,
                Mix::List,
                Mix::Upsert,
                Mix::BulkUpsert,
                Mix::Overwrite,
                Mix::Fanout,
            ],
            m => vec![m],
        }
    }
}

/// The list shapes: one filter and one sort each.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shape {
    /// The borrower's question: cheapest rate first for one borrow token.
    BorrowRate = 0,
    /// Newest offers against one collateral token.
    CollateralCreated = 1,
    /// Deepest offers of one offer type (a third of the book each).
    TypeAmount = 2,
}

impl Shape {
    pub const ALL: [Shape; 3] = [
        Shape::BorrowRate,
        Shape::CollateralCreated,
        Shape::TypeAmount,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Shape::BorrowRate => "borrow_token+interest_rate_asc",
            Shape::CollateralCreated => "collateral_token+created_desc",
            Shape::TypeAmount => "offer_type+amount_desc",
        }
    }

    pub fn filter_column(self) -> &'static str {
        match self {
            Shape::BorrowRate => "borrow_token",
            Shape::CollateralCreated => "collateral_token",
            Shape::TypeAmount => "offer_type",
        }
    }

    pub fn sort(self) -> SortField {
        match self {
            Shape::BorrowRate => SortField::InterestRate,
            Shape::CollateralCreated => SortField::CreatedTimestamp,
            Shape::TypeAmount => SortField::AvailableBorrowAmount,
        }
    }

    pub fn order(self) -> SortOrder {
        match self {
            Shape::BorrowRate => SortOrder::Asc,
            Shape::CollateralCreated | Shape::TypeAmount => SortOrder::Desc,
        }
    }

    /// A filter value as users ask: popular tokens most often.
    pub fn pick_value(self, book: &Book, rng: &mut impl Rng) -> String {
        match self {
            Shape::BorrowRate | Shape::CollateralCreated => book.popular_mint(rng).to_owned(),
            Shape::TypeAmount => OfferType::ALL[rng.random_range(0..3)].as_str().to_owned(),
        }
    }

    pub fn query(self, value: &str) -> anyhow::Result<ListQuery> {
        let mut filter = OfferFilter::default();
        match self {
            Shape::BorrowRate => filter.borrow_token = Some(value.to_owned()),
            Shape::CollateralCreated => filter.collateral_token = Some(value.to_owned()),
            Shape::TypeAmount => {
                filter.offer_type = Some(
                    value
                        .parse()
                        .map_err(|()| anyhow::anyhow!("bad offer type {value:?}"))?,
                );
            }
        }
        Ok(ListQuery {
            filter,
            sort_by: self.sort(),
            sort_order: self.order(),
            limit: peer::PAGE as i32,
            ..Default::default()
        })
    }
}

/// What every mix needs.
pub struct Ctx {
    pub conns: Conns,
    pub book: Book,
    pub clients: usize,
    pub clients_per_channel: usize,
    pub duration: Duration,
    /// Pages followed per list query (the first included).
    pub pages: usize,
    pub overwrite_offers: usize,
    pub subscribers: usize,
    pub fanout_offers: usize,
    pub seed: u64,
}

impl Ctx {
    fn store_for(&self, client: usize) -> anyhow::Result<GrpcStore> {
        self.conns.store(client / self.clients_per_channel.max(1))
    }

    fn rng(&self, salt: u64, client: usize) -> SmallRng {
        SmallRng::seed_from_u64(
            self.seed ^ salt.wrapping_mul(0x2545_f491_4f6c_dd1d) ^ (client as u64) << 32,
        )
    }
}

/// Runs `client(i)` for `n` clients concurrently and merges what they recorded.
async fn clients<F, Fut>(n: usize, client: F) -> anyhow::Result<(Recorder, Duration)>
where
    F: Fn(usize) -> Fut,
    Fut: Future<Output = anyhow::Result<Recorder>> + Send + 'static,
{
    let t = Instant::now();
    let handles: Vec<_> = (0..n.max(1)).map(|i| tokio::spawn(client(i))).collect();
    let mut all = Recorder::default();
    for h in handles {
        all.merge(&h.await.context("a client task failed")??);
    }
    Ok((all, t.elapsed()))
}

/// The floor: `grpc.health.v1.Health/Check` from the same clients and
/// connections as the mixes.
pub async fn floor(ctx: &Arc<Ctx>, duration: Duration) -> anyhow::Result<(Recorder, Duration)> {
    clients(ctx.clients, |i| {
        let ctx = ctx.clone();
        async move {
            let mut health = ctx.conns.health(i / ctx.clients_per_channel.max(1));
            let mut rec = Recorder::default();
            let end = Instant::now() + duration;
            while Instant::now() < end {
                let t = Instant::now();
                let res = health
                    .check(HealthCheckRequest {
                        service: String::new(),
                    })
                    .await
                    .map(|_| 1);
                rec.record("floor Health/Check", t, res);
            }
            Ok(rec)
        }
    })
    .await
}

pub async fn get(ctx: &Arc<Ctx>) -> anyhow::Result<(Recorder, Duration)> {
    clients(ctx.clients, |i| {
        let ctx = ctx.clone();
        async move {
            let store = ctx.store_for(i)?;
            let mut rng = ctx.rng(1, i);
            let mut rec = Recorder::default();
            let end = Instant::now() + ctx.duration;
            while Instant::now() < end {
                let id = Book::id(rng.random_range(0..ctx.book.offers.max(1)));
                let t = Instant::now();
                let res = store.get(&id).await.map(|_| 1);
                rec.record("get", t, res);
            }
            Ok(rec)
        }
    })
    .await
}

/// List pages over gRPC: a random shape and value, then the following
/// pages by page token.
pub async fn list(ctx: &Arc<Ctx>) -> anyhow::Result<(Recorder, Duration)> {
    clients(ctx.clients, |i| {
        let ctx = ctx.clone();
        async move {
            let store = ctx.store_for(i)?;
            let mut rng = ctx.rng(2, i);
            let mut rec = Recorder::default();
            let end = Instant::now() + ctx.duration;
            while Instant::now() < end {
                let shape = Shape::ALL[rng.random_range(0..Shape::ALL.len())];
                let mut query = shape.query(&shape.pick_value(&ctx.book, &mut rng))?;
                for _ in 0..ctx.pages.max(1) {
                    let t = Instant::now();
                    let res = store.list(&query).await;
                    let micros = t.elapsed().as_micros() as u64;
                    let next = res
                        .as_ref()
                        .ok()
                        .and_then(|p| p.has_more.then(|| p.next_page_token.clone()).flatten());
                    let res = res.map(|_| 1);
                    rec.record_micros(
                        &format!("list/{}", shape.name()),
                        micros,
                        res.as_ref().map(|n| *n).map_err(ToString::to_string),
                    );
                    rec.record_micros("list", micros, res);
                    match next {
                        Some(token) if Instant::now() < end => query.page_token = Some(token),
                        _ => break,
                    }
                }
            }
            Ok(rec)
        }
    })
    .await
}

/// The same list sequence (same seeds) over direct SQL.
pub async fn peer_list(ctx: &Arc<Ctx>, url: &str) -> anyhow::Result<(Recorder, Duration)> {
    let url = Arc::new(url.to_owned());
    clients(ctx.clients, |i| {
        let ctx = ctx.clone();
        let url = url.clone();
        async move {
            let peer = PeerClient::connect(&url).await?;
            let mut rng = ctx.rng(2, i);
            let mut rec = Recorder::default();
            let end = Instant::now() + ctx.duration;
            while Instant::now() < end {
                let shape = Shape::ALL[rng.random_range(0..Shape::ALL.len())];
                let value = shape.pick_value(&ctx.book, &mut rng);
                let mut after: Option<MarginOffer> = None;
                for _ in 0..ctx.pages.max(1) {
                    let t = Instant::now();
                    let res = peer.page(shape, &value, after.as_ref()).await;
                    let micros = t.elapsed().as_micros() as u64;
                    let next = res
                        .as_ref()
                        .ok()
                        .and_then(|p| p.has_more.then(|| p.offers.last().cloned()).flatten());
                    let res = res.map(|_| 1);
                    rec.record_micros(
                        &format!("peer/{}", shape.name()),
                        micros,
                        res.as_ref().map(|n| *n).map_err(ToString::to_string),
                    );
                    rec.record_micros("peer", micros, res);
                    match next {
                        Some(last) if Instant::now() < end => after = Some(last),
                        _ => break,
                    }
                }
            }
            Ok(rec)
        }
    })
    .await
}

/// Every source the store holds offers of, as loadgen wrote them.
pub fn all_sources() -> Vec<String> {
    (0..SOURCES)
        .map(Book::source_name)
        .chain([UPSERT_SCOPE, BULK_SCOPE, OVERWRITE_SCOPE, FANOUT_SCOPE].map(str::to_owned))
        .collect()
}

/// Copies the store into the peer and checks that both answer the first
/// two pages of each shape alike (same ids in order, same total); returns
/// the rows copied and the disagreements.
pub async fn prepare_peer(ctx: &Arc<Ctx>, url: &str) -> anyhow::Result<(u64, Vec<String>)> {
    let store = ctx.store_for(0)?;
    let client = peer::connect(url).await?;
    let rows = peer::copy_from_store(&client, &store, &all_sources()).await?;
    let peer = PeerClient::connect(url).await?;
    let mut mismatches = Vec::new();
    for shape in Shape::ALL {
        let value = match shape {
            Shape::TypeAmount => OfferType::BP.as_str().to_owned(),
            _ => ctx.book.mint(0).to_owned(),
        };
        let mut query = shape.query(&value)?;
        let mut after = None;
        for page_no in 1..=2 {
            let ours = store.list(&query).await?;
            let theirs = peer.page(shape, &value, after.as_ref()).await?;
            let ids = |v: &[MarginOffer]| v.iter().map(|o| o.id.clone()).collect::<Vec<_>>();
            if ids(&ours.offers) != ids(&theirs.offers) || ours.total != theirs.total {
                mismatches.push(format!(
                    "{} {value} page {page_no}: store {} offers of total {}, peer {} of total {} (first ids {:?} vs {:?})",
                    shape.name(),
                    ours.offers.len(),
                    ours.total,
                    theirs.offers.len(),
                    theirs.total,
                    ours.offers.first().map(|o| &o.id),
                    theirs.offers.first().map(|o| &o.id),
                ));
                break;
            }
            match (ours.next_page_token, theirs.offers.last()) {
                (Some(t), Some(last)) if ours.has_more => {
                    query.page_token = Some(t);
                    after = Some(last.clone());
                }
                _ => break,
            }
        }
    }
    Ok((rows, mismatches))
}

pub async fn upsert(ctx: &Arc<Ctx>) -> anyhow::Result<(Recorder, Duration)> {
    clients(ctx.clients, |i| {
        let ctx = ctx.clone();
        async move {
            let store = ctx.store_for(i)?;
            let mut rng = ctx.rng(3, i);
            let write = WriteContext::new("loadgen");
            let mut rec = Recorder::default();
            let end = Instant::now() + ctx.duration;
            while Instant::now() < end {
                let offer = ctx.book.scope_offer(
                    UPSERT_SCOPE,
                    rng.random_range(0..UPSERT_IDS),
                    rng.random(),
                );
                let t = Instant::now();
                let res = store.create_or_update(offer, &write).await.map(|_| 1);
                rec.record("upsert", t, res);
            }
            Ok(rec)
        }
    })
    .await
}

pub async fn bulk_upsert(ctx: &Arc<Ctx>) -> anyhow::Result<(Recorder, Duration)> {
    clients(ctx.clients, |i| {
        let ctx = ctx.clone();
        async move {
            let store = ctx.store_for(i)?;
            let mut rng = ctx.rng(4, i);
            let write = WriteContext::new("loadgen");
            let mut rec = Recorder::default();
            let end = Instant::now() + ctx.duration;
            while Instant::now() < end {
                let start = rng.random_range(0..BULK_IDS);
                let version = rng.random();
                // Contiguous ids, wrapping: no duplicates within one call.
                let offers = (0..BULK_SIZE)
                    .map(|k| {
                        ctx.book
                            .scope_offer(BULK_SCOPE, (start + k) % BULK_IDS, version)
                    })
                    .collect();
                let t = Instant::now();
                let res = store
                    .bulk_create_or_update(offers, BulkUpsertOptions::default(), &write)
                    .await
                    .map_err(|e| e.to_string())
                    .and_then(|out| match out.errors.first() {
                        None => Ok(out.success_count as u64),
                        Some(e) => Err(format!("{} items failed, first: {e:?}", out.failure_count)),
                    });
                rec.record("bulk-upsert 1000", t, res);
            }
            Ok(rec)
        }
    })
    .await
}

/// One streamed overwrite of `scope` with version `version` of `n` offers.
async fn overwrite_scope(
    store: &GrpcStore,
    book: &Book,
    scope: &str,
    n: usize,
    version: u64,
) -> anyhow::Result<offer_domain::OverwriteOutcome> {
    let offers = (0..n)
        .map(|i| book.scope_offer(scope, i, version))
        .collect();
    overwrite_offers(store, scope, offers).await
}

async fn overwrite_offers(
    store: &GrpcStore,
    scope: &str,
    offers: Vec<MarginOffer>,
) -> anyhow::Result<offer_domain::OverwriteOutcome> {
    let req = OverwriteRequest {
        offers,
        filter: Some(OverwriteFilter::source(scope)),
        validate_all: false,
        dry_run: false,
    };
    let out = store
        .overwrite_stream(req, CHUNK, &WriteContext::new("loadgen"))
        .await?;
    if let Some(e) = out.errors.first() {
        anyhow::bail!("overwrite of {scope} rejected items, first: {e:?}");
    }
    Ok(out)
}

/// Streamed overwrites of one scope, each changing every offer. One
/// client: overwrites of one scope serialise in every backend anyway.
pub async fn overwrite(ctx: &Arc<Ctx>) -> anyhow::Result<(Recorder, Duration)> {
    let store = ctx.store_for(0)?;
    let n = ctx.overwrite_offers;
    // The scope's first version (creates) is set-up, not measured.
    overwrite_scope(&store, &ctx.book, OVERWRITE_SCOPE, n, 0).await?;
    let mut rec = Recorder::default();
    let op = format!("overwrite stream {n}");
    let start = Instant::now();
    let mut busy = Duration::ZERO;
    let mut version = 1;
    while version == 1 || start.elapsed() < ctx.duration {
        let offers = (0..n)
            .map(|i| ctx.book.scope_offer(OVERWRITE_SCOPE, i, version))
            .collect();
        let t = Instant::now();
        let res = overwrite_offers(&store, OVERWRITE_SCOPE, offers)
            .await
            .map(|out| (out.updated_ids.len() + out.created_ids.len()) as u64);
        busy += t.elapsed();
        rec.record(&op, t, res);
        version += 1;
    }
    // Throughput over the time spent in the calls, not in generating offers.
    Ok((rec, busy))
}

/// One subscriber's progress, written by its task and read by the driver.
#[derive(Default)]
struct Subscriber {
    received: AtomicU64,
    /// When the subscriber had every change of round k (index k).
    done_at: Mutex<Vec<Instant>>,
    error: Mutex<Option<String>>,
}

/// S subscribers on the fan-out scope; each round one overwrite changes
/// every offer of it. Measures when each subscriber has its last change.
pub async fn fanout(ctx: &Arc<Ctx>) -> anyhow::Result<FanoutReport> {
    let store = ctx.store_for(0)?;
    let n = ctx.fanout_offers;
    anyhow::ensure!(n > 0, "the fan-out needs at least one offer to change");
    overwrite_scope(&store, &ctx.book, FANOUT_SCOPE, n, 0).await?;
    let per_round = n as u64;
    let subs: Arc<Vec<Subscriber>> = Arc::new(
        (0..ctx.subscribers)
            .map(|_| Subscriber::default())
            .collect(),
    );
    let channels = ctx.subscribers.div_ceil(SUBSCRIBERS_PER_CHANNEL).max(1);
    let sub_conns = Arc::new(
        Conns::open(
            ctx.conns.addr(),
            ctx.conns.token().map(str::to_owned),
            channels,
            Duration::from_secs(30),
        )
        .await?,
    );
    let (ready_tx, mut ready_rx) =
        tokio::sync::mpsc::channel::<anyhow::Result<()>>(ctx.subscribers.max(1));
    let mut tasks = Vec::new();
    for k in 0..ctx.subscribers {
        let subs = subs.clone();
        let conns = sub_conns.clone();
        let ready = ready_tx.clone();
        tasks.push(tokio::spawn(async move {
            let res = subscribe(&conns, k, &subs[k], per_round, &ready).await;
            if let Err(e) = res {
                let msg = format!("{e:#}");
                if let Ok(mut slot) = subs[k].error.lock() {
                    slot.get_or_insert(msg.clone());
                }
                let _ = ready.try_send(Err(anyhow::anyhow!(msg)));
            }
        }));
    }
    drop(ready_tx);
    for _ in 0..ctx.subscribers {
        match tokio::time::timeout(FANOUT_WAIT, ready_rx.recv()).await {
            Ok(Some(Ok(()))) => {}
            Ok(Some(Err(e))) => anyhow::bail!("a subscriber failed to start: {e:#}"),
            Ok(None) | Err(_) => {
                anyhow::bail!("subscribers did not all start within {FANOUT_WAIT:?}")
            }
        }
    }
    let mut report = FanoutReport {
        subscribers: ctx.subscribers,
        changes_per_round: per_round,
        ..Default::default()
    };
    let start = Instant::now();
    let mut round = 0u64;
    while round == 0 || start.elapsed() < ctx.duration {
        round += 1;
        let t0 = Instant::now();
        let out = overwrite_scope(&store, &ctx.book, FANOUT_SCOPE, n, round).await;
        let acked = Instant::now();
        match out {
            Ok(out) if (out.updated_ids.len() + out.created_ids.len()) as u64 == per_round => {}
            Ok(out) => anyhow::bail!(
                "fan-out overwrite changed {} offers, expected {per_round}",
                out.updated_ids.len() + out.created_ids.len()
            ),
            Err(e) => return Err(e),
        }
        let target = per_round * round;
        let deadline = acked + FANOUT_WAIT;
        while Instant::now() < deadline
            && subs
                .iter()
                .any(|s| s.received.load(Ordering::Acquire) < target && no_error(s))
        {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let mut last: Option<Instant> = None;
        for s in subs.iter() {
            let done = s
                .done_at
                .lock()
                .ok()
                .and_then(|d| d.get(round as usize - 1).copied());
            match done {
                Some(at) => {
                    report
                        .from_ack
                        .hist
                        .saturating_record(micros_between(acked, at));
                    report
                        .from_start
                        .hist
                        .saturating_record(micros_between(t0, at));
                    last = Some(last.map_or(at, |l| l.max(at)));
                }
                None => {
                    report.from_ack.errors += 1;
                    if report.from_ack.first_error.is_none() {
                        report.from_ack.first_error =
                            Some(s.error.lock().ok().and_then(|e| e.clone()).unwrap_or_else(
                                || format!("round {round} not complete in {FANOUT_WAIT:?}"),
                            ));
                    }
                }
            }
        }
        if let Some(at) = last {
            report
                .last_from_ack
                .hist
                .saturating_record(micros_between(acked, at));
            report
                .last_from_start
                .hist
                .saturating_record(micros_between(t0, at));
        }
        report.rounds = round;
        if report.from_ack.errors > 0 {
            break;
        }
    }
    let expected = per_round * report.rounds;
    report.lost = subs
        .iter()
        .map(|s| expected.saturating_sub(s.received.load(Ordering::Acquire)))
        .sum();
    for t in tasks {
        t.abort();
    }
    Ok(report)
}

fn no_error(s: &Subscriber) -> bool {
    s.error.lock().map(|e| e.is_none()).unwrap_or(false)
}

/// Microseconds from `from` to `to`; 1 when `to` came first (a subscriber
/// can finish before the ack reaches the writer).
fn micros_between(from: Instant, to: Instant) -> u64 {
    to.saturating_duration_since(from).as_micros().max(1) as u64
}

/// One subscriber: subscribes to the fan-out scope, says when established,
/// then decodes every change and notes when it has each round's last one.
async fn subscribe(
    conns: &Conns,
    k: usize,
    me: &Subscriber,
    per_round: u64,
    ready: &tokio::sync::mpsc::Sender<anyhow::Result<()>>,
) -> anyhow::Result<()> {
    let mut client = conns.raw(k / SUBSCRIBERS_PER_CHANNEL);
    let mut req = tonic::Request::new(pb::SubscribeMarginOffersRequest {
        source: Some(FANOUT_SCOPE.to_owned()),
        client_id: format!("loadgen-{k}"),
        ..Default::default()
    });
    conns.authorize(&mut req)?;
    let mut stream = client.subscribe_margin_offers(req).await?.into_inner();
    let mut established = false;
    while let Some(msg) = stream.message().await? {
        match msg.event {
            Some(Event::Change(c)) if c.change_type == 0 => {
                if !established {
                    established = true;
                    ready.send(Ok(())).await?;
                }
            }
            Some(Event::Change(c)) => {
                // Decoded like a real consumer would, not just counted.
                let change = cv::change_from_pb(c)?;
                if change.offer.source.as_deref() != Some(FANOUT_SCOPE) {
                    anyhow::bail!("change of {} outside the subscribed scope", change.offer.id);
                }
                let got = me.received.fetch_add(1, Ordering::AcqRel) + 1;
                if got.is_multiple_of(per_round)
                    && let Ok(mut done) = me.done_at.lock()
                {
                    done.push(Instant::now());
                }
            }
            Some(Event::Error(e)) => anyhow::bail!("{}: {}", e.error_code, e.error_message),
            Some(Event::Heartbeat(_)) | None => {}
        }
    }
    anyhow::bail!("the subscription ended")
}

/// The floor's p50 from the phases on both sides of a mix.
pub fn floor_p50(before: &Recorder, after: &Recorder) -> Option<u64> {
    let mut both = Recorder::default();
    both.merge(before);
    both.merge(after);
    both.get("floor Health/Check").and_then(OpStats::p50)
}
