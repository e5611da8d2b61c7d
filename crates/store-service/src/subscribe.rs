//! `SubscribeMarginOffers` over one change hub per store.
//!
//! **Hub.** One tail task per store follows the change log
//! (`changes_since`), woken by the store's commit notification
//! (`subscribe_commits`) or, for backends without one, by polling. It
//! converts each batch once into gRPC frames in one shared buffer and
//! publishes it, `Arc`-shared, into a bounded broadcast ring: fan-out costs
//! no store reads, no re-encoding and no copy per subscriber (it sends
//! slices of that buffer, see `raw.rs`), and publishing never waits on
//! anyone.
//!
//! **Subscriber.** Each subscription joins the ring *before* reading its
//! start point, then replays from the store every change after it, then
//! follows the ring. Hand-over is by revision: ring items at or below the
//! last revision handled are skipped, and an item that does not start at
//! or below it (the ring overflowed for this subscriber, or the tail
//! skipped ahead) sends the subscriber back to replaying from the store.
//! So a slow subscriber only delays itself; once the store has pruned what
//! it still needs, it gets a fatal `LAGGED` error naming the revision to
//! resume from, never a silent gap.
//!
//! Stream shape: first a `change` of type UNKNOWN with metadata
//! `message=subscription_established` and `client_id` (its `revision` is
//! the start point); then every change after the start revision that passes
//! the filters, in revision order; a heartbeat right after the initial
//! replay (it marks "caught up"; `GrpcStore::changes_since` relies on it),
//! then every `heartbeat_interval`. A heartbeat's revision means "every
//! change up to here has been sent to you", so a client may resume from it.

use crate::ServiceConfig;
use crate::raw::{Frames, frame, put_frame};
use crate::service::{MarginOfferGrpc, store_err};
use bytes::BytesMut;
use futures::Stream;
use offer_domain::{Change, ChangeType, Revision, StoreError, Timestamp};
use offer_proto::convert as cv;
use offer_proto::pb;
use offer_proto::pb::subscribe_margin_offers_response::Event;
use offer_store::SharedStore;
use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::sync::broadcast::error::{RecvError, TryRecvError};
use tokio::sync::{broadcast, mpsc, watch};
use tonic::Status;

/// The stream of the generated trait method: decoded again from the shared
/// bytes (only for callers mounting `MarginOfferGrpc` on the generated
/// server themselves; `routes`/`serve` use [`EncodedStream`] directly).
pub type SubscriptionStream =
    Pin<Box<dyn Stream<Item = Result<pb::SubscribeMarginOffersResponse, Status>> + Send>>;

/// Changes read per `changes_since` call (batches end on revision boundaries).
const PAGE: usize = 1000;
/// Batches buffered per subscriber before its task waits for it.
const BUFFER: usize = 4;
/// A batch handed to the response stream holds at most this many slices...
const CHUNK: usize = 512;
/// ...or about this many bytes: one channel hand-off per batch instead of
/// per message, with bounded memory per subscriber.
const CHUNK_BYTES: usize = 256 * 1024;
/// Most ring items a subscriber takes per wake-up before flushing.
const DRAIN: usize = 64;
/// Even with commit notifications, the tail re-reads the log this often, so
/// a lost notification (e.g. a dropped LISTEN connection) costs latency, not
/// liveness.
const SAFETY_POLL: Duration = Duration::from_secs(1);

/// One published slice of the change log: every change with a revision in
/// `(after, revision]`, in log order, each encoded once as a gRPC frame;
/// the frames lie back to back in `frames`, in the same order.
struct Published {
    after: Revision,
    revision: Revision,
    changes: Vec<SharedChange>,
    frames: Frames,
}

/// A change and where its frame lies in [`Published::frames`].
struct SharedChange {
    change: Change,
    start: usize,
    end: usize,
}

/// `event` as one framed `SubscribeMarginOffersResponse`.
fn framed(event: Event) -> Frames {
    frame(&pb::SubscribeMarginOffersResponse { event: Some(event) })
}

/// Appends `change` to `buf` as one frame; returns its byte range.
fn put_change(buf: &mut BytesMut, change: Change) -> std::ops::Range<usize> {
    put_frame(
        buf,
        &pb::SubscribeMarginOffersResponse {
            event: Some(Event::Change(cv::change_to_pb(change))),
        },
    )
}

/// The fan-out point of one store's change log.
pub(crate) struct Hub {
    store: SharedStore,
    ring: broadcast::Sender<Arc<Published>>,
    subscribers: AtomicUsize,
    max_subscribers: usize,
    poll_every: Duration,
    tail_started: AtomicBool,
}

impl Hub {
    pub(crate) fn new(store: SharedStore, cfg: &ServiceConfig) -> Arc<Hub> {
        Arc::new(Hub {
            store,
            ring: broadcast::channel(cfg.change_ring_capacity.max(1)).0,
            subscribers: AtomicUsize::new(0),
            max_subscribers: cfg.max_subscribers,
            poll_every: cfg.subscription_poll_interval.max(Duration::from_millis(1)),
            tail_started: AtomicBool::new(false),
        })
    }

    /// Starts the tail on first use: construction may happen outside a runtime.
    fn ensure_tail(self: &Arc<Hub>) {
        if self.tail_started.swap(true, Ordering::AcqRel) {
            return;
        }
        let commits = self.store.subscribe_commits();
        tokio::spawn(tail(Arc::downgrade(self), commits, self.poll_every));
    }

    /// Takes a subscriber slot, or RESOURCE_EXHAUSTED at the limit.
    fn reserve(self: &Arc<Hub>) -> Result<Slot, Status> {
        let max = self.max_subscribers;
        self.subscribers
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .map_err(|_| {
                Status::resource_exhausted(format!("too many subscriptions: the limit is {max}"))
            })?;
        metrics::gauge!("grpc_server_subscriptions_active").increment(1.0);
        Ok(Slot(Arc::clone(self)))
    }
}

/// A subscriber slot, given back when the subscription ends.
struct Slot(Arc<Hub>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.subscribers.fetch_sub(1, Ordering::AcqRel);
        metrics::gauge!("grpc_server_subscriptions_active").decrement(1.0);
    }
}

/// The hub's one reader of the change log. Holds the hub weakly, so it ends
/// once the service is dropped.
async fn tail(
    hub: Weak<Hub>,
    mut commits: Option<watch::Receiver<Revision>>,
    poll_every: Duration,
) {
    let mut last: Option<Revision> = None;
    loop {
        if let Some(c) = commits.as_mut() {
            // Marked seen before reading, so a commit racing the read wakes us again.
            c.borrow_and_update();
        }
        {
            let Some(hub) = hub.upgrade() else { return };
            publish_new(&hub, &mut last).await;
        }
        match commits.as_mut() {
            Some(c) => {
                tokio::select! {
                    changed = c.changed() => {
                        if changed.is_err() {
                            commits = None;
                        }
                    }
                    _ = tokio::time::sleep(SAFETY_POLL) => {}
                }
            }
            None => tokio::time::sleep(poll_every).await,
        }
    }
}

/// Publishes everything committed after `last` into the ring.
async fn publish_new(hub: &Hub, last: &mut Option<Revision>) {
    if hub.ring.receiver_count() == 0 {
        // Nobody listens: skip ahead rather than read and convert the log.
        // A subscriber joining meanwhile sees the jump as a gap and replays
        // from the store, so nothing is lost.
        match hub.store.revision().await {
            Ok(r) => *last = Some(r),
            Err(e) => tracing::debug!("change tail: revision failed: {e}"),
        }
        return;
    }
    let mut after = match *last {
        Some(r) => r,
        None => match hub.store.revision().await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!("change tail: revision failed: {e}");
                return;
            }
        },
    };
    loop {
        let batch = match hub.store.changes_since(after, PAGE).await {
            Ok(b) => b,
            Err(StoreError::OutOfRange { oldest, .. }) => {
                // The tail itself fell behind pruning: jump; subscribers see
                // the gap and get LAGGED from their own replay.
                tracing::warn!("change tail fell behind the retained log; skipping to {oldest}");
                after = oldest.saturating_sub(1);
                continue;
            }
            Err(e) => {
                tracing::warn!("change tail: changes_since failed: {e}");
                break;
            }
        };
        let Some(revision) = batch.changes.last().map(|c| c.revision) else {
            break;
        };
        // Batches keep revisions whole, so a short one is not proof of the end.
        let more = revision < batch.head;
        let mut frames = BytesMut::new();
        let changes = batch
            .changes
            .into_iter()
            .map(|change| {
                let at = put_change(&mut frames, change.clone());
                SharedChange {
                    change,
                    start: at.start,
                    end: at.end,
                }
            })
            .collect();
        // No receivers is fine: the next subscriber replays from the store.
        let _ = hub.ring.send(Arc::new(Published {
            after,
            revision,
            changes,
            frames: frames.freeze(),
        }));
        after = revision;
        if !more {
            break;
        }
    }
    *last = Some(after);
}

struct Filter {
    offer_type: Option<String>,
    collateral_token: Option<String>,
    borrow_token: Option<String>,
    liquidity_source: Option<String>,
    lender_address: Option<String>,
    source: Option<String>,
    /// Created, updated, deleted, overwritten; all false selects every type.
    types: [bool; 4],
}

/// An empty string is treated as "no filter": proto3 clients commonly send
/// "" for unset strings, and no offer has an empty token or type.
fn given(s: Option<String>) -> Option<String> {
    s.filter(|s| !s.is_empty())
}

impl Filter {
    fn from_pb(r: &pb::SubscribeMarginOffersRequest) -> Self {
        Filter {
            offer_type: given(r.offer_type.clone()),
            collateral_token: given(r.collateral_token.clone()),
            borrow_token: given(r.borrow_token.clone()),
            liquidity_source: given(r.liquidity_source.clone()),
            lender_address: given(r.lender_address.clone()),
            source: given(r.source.clone()),
            types: {
                let t = [
                    r.subscribe_created,
                    r.subscribe_updated,
                    r.subscribe_deleted,
                    r.subscribe_overwritten,
                ];
                // Resolved once here, not per change: all false means all.
                if t == [false; 4] { [true; 4] } else { t }
            },
        }
    }

    fn matches(&self, c: &Change) -> bool {
        let o = &c.offer;
        let eq = |want: &Option<String>, have: &str| want.as_deref().is_none_or(|w| w == have);
        let eq_opt = |want: &Option<String>, have: &Option<String>| {
            want.as_deref().is_none_or(|w| have.as_deref() == Some(w))
        };
        let type_index = match c.change_type {
            ChangeType::Created => 0,
            ChangeType::Updated => 1,
            ChangeType::Deleted => 2,
            ChangeType::Overwritten => 3,
        };
        self.types[type_index]
            && eq(&self.offer_type, o.offer_type.as_str())
            && eq(&self.collateral_token, &o.collateral_token)
            && eq(&self.borrow_token, &o.borrow_token)
            && eq(&self.liquidity_source, &o.liquidity_source)
            && eq_opt(&self.lender_address, &o.lender_address)
            && eq_opt(&self.source, &o.source)
    }
}

/// [`start_encoded`], decoded for the generated trait method.
pub(crate) async fn start(
    svc: &MarginOfferGrpc,
    req: pb::SubscribeMarginOffersRequest,
) -> Result<SubscriptionStream, Status> {
    use futures::StreamExt as _;
    let s = start_encoded(svc, req).await?;
    Ok(Box::pin(s.flat_map(|frames| {
        futures::stream::iter(crate::raw::decode_frames(frames))
    })))
}

/// The response stream: batches of frames from the subscriber task, one
/// buffer (often many messages) at a time.
pub struct EncodedStream {
    rx: mpsc::Receiver<Vec<Frames>>,
    batch: std::vec::IntoIter<Frames>,
}

impl Stream for EncodedStream {
    type Item = Frames;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        loop {
            if let Some(b) = self.batch.next() {
                return Poll::Ready(Some(b));
            }
            match self.rx.poll_recv(cx) {
                Poll::Ready(Some(batch)) => self.batch = batch.into_iter(),
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

/// Checks the limit and the start point, then spawns the subscription.
pub(crate) async fn start_encoded(
    svc: &MarginOfferGrpc,
    req: pb::SubscribeMarginOffersRequest,
) -> Result<EncodedStream, Status> {
    if req.start_revision.is_some_and(|r| r < 0) {
        return Err(Status::invalid_argument(
            "start_revision: must not be negative",
        ));
    }
    let hub = &svc.hub;
    let slot = hub.reserve()?;
    hub.ensure_tail();
    // Joined before the start point is read: every item published later is
    // seen, everything earlier is covered by the replay.
    let ring = hub.ring.subscribe();
    let start = match req.start_revision {
        Some(r) => {
            // Refuse a start older than the retained log up front (OUT_OF_RANGE).
            svc.store.changes_since(r, 1).await.map_err(store_err)?;
            r
        }
        None => svc.store.revision().await.map_err(store_err)?,
    };
    let (tx, rx) = mpsc::channel(BUFFER);
    let sub = Subscriber {
        store: svc.store.clone(),
        filter: Filter::from_pb(&req),
        client_id: req.client_id,
        session_id: req.session_id,
        tx,
        out: Vec::new(),
        out_bytes: 0,
        last: start,
        heartbeat: svc.cfg.heartbeat_interval.max(Duration::from_millis(10)),
        retry_every: svc.cfg.subscription_poll_interval,
        _slot: slot,
    };
    tokio::spawn(sub.run(ring, svc.stop.subscribe()));
    Ok(EncodedStream {
        rx,
        batch: Vec::new().into_iter(),
    })
}

struct Subscriber {
    store: SharedStore,
    filter: Filter,
    client_id: String,
    session_id: String,
    tx: mpsc::Sender<Vec<Frames>>,
    /// Frames not yet handed to the response stream (see `flush`), and
    /// their size.
    out: Vec<Frames>,
    out_bytes: usize,
    /// Every change up to this revision has been handled (sent or filtered out).
    last: Revision,
    heartbeat: Duration,
    retry_every: Duration,
    _slot: Slot,
}

/// The subscriber went away, the server is stopping, or the subscription
/// ended with a fatal error: end the task.
struct Gone;

/// Resolves when the server stops; never, if the stop signal is gone.
async fn stopped(stop: &mut watch::Receiver<bool>) {
    // `is_ok` drops the borrow guard at once: it must not live across an await.
    if stop.wait_for(|s| *s).await.is_err() {
        std::future::pending::<()>().await;
    }
}

fn now_pb() -> Option<prost_types::Timestamp> {
    Some(cv::timestamp_to_pb(Timestamp::now()))
}

impl Subscriber {
    async fn run(
        mut self,
        mut ring: broadcast::Receiver<Arc<Published>>,
        mut stop: watch::Receiver<bool>,
    ) {
        let tx = self.tx.clone();
        // Stop and disconnect are honoured during the replay too.
        let setup = async {
            self.established().await?;
            self.replay().await?;
            let last = self.last;
            self.beat(last).await
        };
        let ok = tokio::select! {
            _ = stopped(&mut stop) => false,
            _ = tx.closed() => false,
            r = setup => r.is_ok(),
        };
        if !ok {
            return;
        }
        let mut beat =
            tokio::time::interval_at(tokio::time::Instant::now() + self.heartbeat, self.heartbeat);
        beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let step = tokio::select! {
                biased;
                _ = stopped(&mut stop) => return,
                _ = tx.closed() => return,
                item = ring.recv() => match item {
                    Ok(p) => self.drain(p, &mut ring).await,
                    Err(RecvError::Lagged(_)) => {
                        // The ring overtook us: rejoin at its head, then
                        // fetch what we missed from the store.
                        ring = ring.resubscribe();
                        self.replay().await
                    }
                    Err(RecvError::Closed) => return,
                },
                _ = beat.tick() => {
                    let last = self.last;
                    self.beat(last).await
                }
            };
            if step.is_err() {
                return;
            }
        }
    }

    /// Sends one message now (markers, heartbeats, errors).
    async fn send(&mut self, event: Event) -> Result<(), Gone> {
        self.push(framed(event)).await?;
        self.flush().await
    }

    /// Queues frames, handing a full batch over.
    async fn push(&mut self, frames: Frames) -> Result<(), Gone> {
        if frames.is_empty() {
            return Ok(());
        }
        self.out_bytes += frames.len();
        self.out.push(frames);
        if self.out.len() >= CHUNK || self.out_bytes >= CHUNK_BYTES {
            self.flush().await?;
        }
        Ok(())
    }

    async fn flush(&mut self) -> Result<(), Gone> {
        if self.out.is_empty() {
            return Ok(());
        }
        let batch = std::mem::take(&mut self.out);
        self.out_bytes = 0;
        self.tx.send(batch).await.map_err(|_| Gone)
    }

    /// Handles `first` and whatever else the ring already holds (up to
    /// `DRAIN` items), then flushes once: one wake-up, many items.
    async fn drain(
        &mut self,
        first: Arc<Published>,
        ring: &mut broadcast::Receiver<Arc<Published>>,
    ) -> Result<(), Gone> {
        self.deliver(&first).await?;
        for _ in 0..DRAIN {
            match ring.try_recv() {
                Ok(p) => self.deliver(&p).await?,
                Err(TryRecvError::Lagged(_)) => {
                    *ring = ring.resubscribe();
                    self.replay().await?;
                    break;
                }
                Err(TryRecvError::Empty | TryRecvError::Closed) => break,
            }
        }
        self.flush().await
    }

    async fn established(&mut self) -> Result<(), Gone> {
        let metadata = HashMap::from([
            ("message".to_owned(), "subscription_established".to_owned()),
            ("client_id".to_owned(), self.client_id.clone()),
            ("session_id".to_owned(), self.session_id.clone()),
        ]);
        self.send(Event::Change(pb::MarginOfferChange {
            change_type: pb::margin_offer_change::ChangeType::Unknown as i32,
            timestamp: now_pb(),
            metadata,
            revision: self.last,
            ..Default::default()
        }))
        .await
    }

    async fn beat(&mut self, revision: Revision) -> Result<(), Gone> {
        self.send(Event::Heartbeat(pb::SubscriptionHeartbeat {
            timestamp: now_pb(),
            client_id: self.client_id.clone(),
            session_id: self.session_id.clone(),
            revision,
        }))
        .await
    }

    async fn fail(&mut self, code: &str, message: String, fatal: bool) -> Result<(), Gone> {
        self.send(Event::Error(pb::SubscriptionError {
            error_code: code.to_owned(),
            error_message: message,
            timestamp: now_pb(),
            fatal,
        }))
        .await
    }

    /// A ring item: the part after `last`, or back to the store on a gap.
    async fn deliver(&mut self, p: &Published) -> Result<(), Gone> {
        if p.revision <= self.last {
            return Ok(());
        }
        if p.after > self.last {
            return self.replay().await;
        }
        // Adjacent matching frames go out as one slice of the shared
        // buffer: the whole batch, for a subscriber without filters.
        let mut run: Option<(usize, usize)> = None;
        for sc in &p.changes {
            if sc.change.revision > self.last && self.filter.matches(&sc.change) {
                run = match run {
                    Some((start, end)) if end == sc.start => Some((start, sc.end)),
                    other => {
                        if let Some((start, end)) = other {
                            self.push(p.frames.slice(start..end)).await?;
                        }
                        Some((sc.start, sc.end))
                    }
                };
            }
        }
        if let Some((start, end)) = run {
            self.push(p.frames.slice(start..end)).await?;
        }
        self.last = p.revision;
        Ok(())
    }

    /// Sends every change the store holds after `last`, whole revisions at
    /// a time, until caught up with the head it read.
    async fn replay(&mut self) -> Result<(), Gone> {
        loop {
            let batch = match self.store.changes_since(self.last, PAGE).await {
                Ok(b) => b,
                Err(StoreError::OutOfRange { oldest, .. }) => {
                    let last = self.last;
                    let msg = format!(
                        "subscriber fell behind the retained change log: every change up to \
                         revision {last} was delivered, but the oldest retained revision is \
                         {oldest}; list the book and subscribe from the listing's revision \
                         (resume_revision={last} oldest_revision={oldest})"
                    );
                    metrics::counter!("grpc_server_subscriptions_lagged_total").increment(1);
                    let _ = self.fail("LAGGED", msg, true).await;
                    return Err(Gone);
                }
                Err(e) => {
                    // Transient backend trouble: tell the client, then retry.
                    tracing::warn!("subscription replay failed: {e}");
                    let code = cv::code_name(store_err(e.clone()).code());
                    self.fail(code, e.to_string(), false).await?;
                    tokio::time::sleep(self.retry_every).await;
                    continue;
                }
            };
            // Batches hold whole revisions (the trait's contract), so
            // resuming after the last one seen never skips part of one; and a
            // batch may be short without being the last.
            let caught_up = batch
                .changes
                .last()
                .is_none_or(|c| c.revision >= batch.head);
            // Every change of the batch is after `last` (it was read after
            // it); `last` moves only once the whole batch is out.
            let end = batch.changes.last().map_or(self.last, |c| c.revision);
            let mut frames = BytesMut::new();
            for c in batch.changes {
                if self.filter.matches(&c) {
                    put_change(&mut frames, c);
                }
            }
            self.push(frames.freeze()).await?;
            self.last = self.last.max(end);
            if caught_up {
                // Everything up to the head it was read at has been handled.
                self.last = self.last.max(batch.head);
                return self.flush().await;
            }
        }
    }
}
