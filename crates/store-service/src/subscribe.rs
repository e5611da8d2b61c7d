//! A minimal `SubscribeMarginOffers`: each subscription polls the store's
//! change log, so writers never wait on subscribers and a slow subscriber
//! only delays itself.
//!
//! Stream shape: first a `change` of type UNKNOWN with metadata
//! `message=subscription_established` and `client_id`; then every change
//! after the start revision that passes the filters, in revision order; a
//! heartbeat (carrying the store revision) right after the backlog has been
//! sent, which marks "caught up", and then every `heartbeat_interval`.

use crate::service::{MarginOfferGrpc, store_err};
use offer_domain::{Change, ChangeType, Revision, StoreError, Timestamp};
use offer_proto::convert as cv;
use offer_proto::pb;
use offer_proto::pb::subscribe_margin_offers_response::Event;
use offer_store::SharedStore;
use std::collections::HashMap;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;

pub type SubscriptionStream = ReceiverStream<Result<pb::SubscribeMarginOffersResponse, Status>>;

/// Changes read per poll; a page ends on a revision boundary (see `poll`).
const PAGE: usize = 1000;
/// Messages buffered per subscriber before its poller waits for it.
const BUFFER: usize = 256;

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
            types: [
                r.subscribe_created,
                r.subscribe_updated,
                r.subscribe_deleted,
                r.subscribe_overwritten,
            ],
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
        (self.types == [false; 4] || self.types[type_index])
            && eq(&self.offer_type, o.offer_type.as_str())
            && eq(&self.collateral_token, &o.collateral_token)
            && eq(&self.borrow_token, &o.borrow_token)
            && eq(&self.liquidity_source, &o.liquidity_source)
            && eq_opt(&self.lender_address, &o.lender_address)
            && eq_opt(&self.source, &o.source)
    }
}

/// Checks the start point, then spawns the subscription's poller.
pub(crate) async fn start(
    svc: &MarginOfferGrpc,
    req: pb::SubscribeMarginOffersRequest,
) -> Result<SubscriptionStream, Status> {
    let start = match req.start_revision {
        Some(r) if r < 0 => {
            return Err(Status::invalid_argument(
                "start_revision: must not be negative",
            ));
        }
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
        last: start,
        heartbeat: svc.cfg.heartbeat_interval,
        poll_every: svc.cfg.subscription_poll_interval,
    };
    tokio::spawn(sub.run(svc.stop.subscribe()));
    Ok(ReceiverStream::new(rx))
}

struct Subscriber {
    store: SharedStore,
    filter: Filter,
    client_id: String,
    session_id: String,
    tx: mpsc::Sender<Result<pb::SubscribeMarginOffersResponse, Status>>,
    /// Every change up to this revision has been handled.
    last: Revision,
    heartbeat: Duration,
    poll_every: Duration,
}

/// The subscriber went away (or the server is stopping): end the task.
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
    async fn run(mut self, mut stop: watch::Receiver<bool>) {
        if self.established().await.is_err() {
            return;
        }
        let mut poll = tokio::time::interval(self.poll_every);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut beat = tokio::time::interval_at(
            tokio::time::Instant::now() + self.heartbeat,
            self.heartbeat.max(Duration::from_millis(10)),
        );
        let mut caught_up = false;
        let tx = self.tx.clone();
        loop {
            let step = tokio::select! {
                _ = stopped(&mut stop) => return,
                _ = tx.closed() => return,
                _ = beat.tick() => self.beat(None).await,
                _ = poll.tick() => self.poll(&mut caught_up).await,
            };
            if step.is_err() {
                return;
            }
        }
    }

    async fn send(&self, event: Event) -> Result<(), Gone> {
        self.tx
            .send(Ok(pb::SubscribeMarginOffersResponse { event: Some(event) }))
            .await
            .map_err(|_| Gone)
    }

    async fn established(&self) -> Result<(), Gone> {
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

    async fn beat(&self, revision: Option<Revision>) -> Result<(), Gone> {
        let revision = match revision {
            Some(r) => r,
            None => self.store.revision().await.unwrap_or(self.last),
        };
        self.send(Event::Heartbeat(pb::SubscriptionHeartbeat {
            timestamp: now_pb(),
            client_id: self.client_id.clone(),
            session_id: self.session_id.clone(),
            revision,
        }))
        .await
    }

    async fn fail(&self, code: &str, message: String, fatal: bool) -> Result<(), Gone> {
        self.send(Event::Error(pb::SubscriptionError {
            error_code: code.to_owned(),
            error_message: message,
            timestamp: now_pb(),
            fatal,
        }))
        .await
    }

    /// Sends every change the log holds after `last`, whole revisions at a time.
    async fn poll(&mut self, caught_up: &mut bool) -> Result<(), Gone> {
        let page = PAGE;
        loop {
            let batch = match self.store.changes_since(self.last, page).await {
                Ok(b) => b,
                Err(StoreError::OutOfRange { oldest, .. }) => {
                    let msg = format!(
                        "subscriber fell behind the retained change log at revision {}; \
                         oldest retained revision is {oldest}; resume from a fresh listing",
                        self.last
                    );
                    let _ = self.fail("LAGGED", msg, true).await;
                    return Err(Gone);
                }
                Err(e) => {
                    // Transient backend trouble: tell the client, retry next tick.
                    tracing::warn!("subscription poll failed: {e}");
                    return self
                        .fail(
                            cv::code_name(store_err(e.clone()).code()),
                            e.to_string(),
                            false,
                        )
                        .await;
                }
            };
            // Batches hold whole revisions (the trait's contract), so
            // resuming after the last one seen never skips part of one.
            let full = batch.changes.len() >= page;
            for c in batch.changes {
                self.last = self.last.max(c.revision);
                if self.filter.matches(&c) {
                    self.send(Event::Change(cv::change_to_pb(c))).await?;
                }
            }
            if !full {
                if !*caught_up {
                    *caught_up = true;
                    self.beat(Some(batch.head.max(self.last))).await?;
                }
                return Ok(());
            }
        }
    }
}
