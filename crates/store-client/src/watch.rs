//! [`GrpcStore::watch`]: a change stream that survives disconnects.
//!
//! The stream follows `SubscribeMarginOffers`; when the connection or the
//! server goes away it reconnects with backoff and subscribes again from
//! the last revision it has fully delivered, so the caller sees every
//! matching change exactly once, in revision order. A revision cut by a
//! disconnect is finished without repeats: the server re-sends that
//! revision's changes in the same order, and the ones already delivered are
//! skipped. Only what cannot be resumed ends the stream with an error:
//! `LAGGED` (the subscriber fell behind the retained log) and
//! `OUT_OF_RANGE` (the start revision was already pruned), both as
//! [`StoreError::OutOfRange`], and requests the server refuses.

use crate::GrpcStore;
use offer_domain::{Change, ChangeType, Revision, StoreError, StoreResult};
use offer_proto::convert as cv;
use offer_proto::pb;
use offer_proto::pb::subscribe_margin_offers_response::Event;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;

/// Exact-match filters on the offer; `None` matches everything.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WatchFilter {
    pub offer_type: Option<String>,
    pub collateral_token: Option<String>,
    pub borrow_token: Option<String>,
    pub liquidity_source: Option<String>,
    pub lender_address: Option<String>,
    /// The offer's own `source` field (not the writer of the change).
    pub source: Option<String>,
}

/// What to watch and from where.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WatchRequest {
    pub filters: WatchFilter,
    /// Change types to deliver; empty delivers every type.
    pub types: Vec<ChangeType>,
    /// Deliver every retained change after this revision first; `None`
    /// starts at the store's current revision.
    pub start_revision: Option<Revision>,
    /// Names the subscriber in the server's logs and heartbeats.
    pub client_id: String,
}

/// One item of [`GrpcStore::watch`]. Changes dominate the stream, so they
/// are not boxed.
#[derive(Clone, Debug, PartialEq)]
#[allow(clippy::large_enum_variant)]
pub enum WatchEvent {
    Change(Change),
    /// Every matching change up to `revision` has been delivered.
    Heartbeat {
        revision: Revision,
    },
}

/// First and largest pause between reconnection attempts.
const BACKOFF_MIN: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
const BUFFER: usize = 256;

impl GrpcStore {
    /// Follows the change stream, reconnecting by itself (see the module
    /// docs). Dropping the stream ends the subscription.
    pub fn watch(&self, request: WatchRequest) -> ReceiverStream<StoreResult<WatchEvent>> {
        let (tx, rx) = mpsc::channel(BUFFER);
        let follower = Follower {
            store: self.clone(),
            request,
            tx,
            resume: None,
            partial: None,
        };
        tokio::spawn(follower.run());
        ReceiverStream::new(rx)
    }
}

struct Follower {
    store: GrpcStore,
    request: WatchRequest,
    tx: mpsc::Sender<StoreResult<WatchEvent>>,
    /// Every matching change up to this revision has been delivered.
    resume: Option<Revision>,
    /// A revision delivered in part: (revision, changes of it delivered).
    partial: Option<(Revision, usize)>,
}

/// How one subscription attempt ended.
enum End {
    /// The caller dropped the stream.
    Gone,
    /// Connection trouble or a server going away: subscribe again.
    Retry { progressed: bool },
    /// Cannot be resumed; the error has been sent.
    Fatal,
}

/// Codes worth reconnecting after: the server or the path to it failed.
fn retryable(code: Code) -> bool {
    matches!(
        code,
        Code::Unavailable
            | Code::Unknown
            | Code::Internal
            | Code::Cancelled
            | Code::DeadlineExceeded
            | Code::Aborted
            | Code::ResourceExhausted
    )
}

/// The `resume_revision=N` a LAGGED message carries.
fn resume_of(message: &str) -> Option<Revision> {
    let rest = message.split("resume_revision=").nth(1)?;
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

fn oldest_of(message: &str) -> Option<Revision> {
    let rest = message.split("oldest_revision=").nth(1)?;
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

impl Follower {
    async fn run(mut self) {
        let mut backoff = BACKOFF_MIN;
        loop {
            match self.attempt().await {
                End::Gone | End::Fatal => return,
                End::Retry { progressed } => {
                    if progressed {
                        backoff = BACKOFF_MIN;
                    }
                    tokio::select! {
                        _ = self.tx.closed() => return,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                }
            }
        }
    }

    fn subscribe_request(&self) -> pb::SubscribeMarginOffersRequest {
        let f = &self.request.filters;
        let wants = |t: ChangeType| self.request.types.contains(&t);
        pb::SubscribeMarginOffersRequest {
            offer_type: f.offer_type.clone(),
            collateral_token: f.collateral_token.clone(),
            borrow_token: f.borrow_token.clone(),
            liquidity_source: f.liquidity_source.clone(),
            lender_address: f.lender_address.clone(),
            source: f.source.clone(),
            subscribe_created: wants(ChangeType::Created),
            subscribe_updated: wants(ChangeType::Updated),
            subscribe_deleted: wants(ChangeType::Deleted),
            subscribe_overwritten: wants(ChangeType::Overwritten),
            client_id: self.request.client_id.clone(),
            session_id: String::new(),
            // Resume from the last complete revision; a partial one is re-sent.
            start_revision: self.resume.or(self.request.start_revision),
        }
    }

    async fn emit(&self, item: StoreResult<WatchEvent>) -> Result<(), ()> {
        self.tx.send(item).await.map_err(|_| ())
    }

    /// Sends `err` and ends: nothing the caller can resume from here.
    async fn fatal(&self, err: StoreError) -> End {
        let _ = self.emit(Err(err)).await;
        End::Fatal
    }

    async fn attempt(&mut self) -> End {
        // No deadline: the stream is meant to stay open indefinitely.
        let mut req = tonic::Request::new(self.subscribe_request());
        self.store.authorize(&mut req);
        let mut client = self.store.client.clone();
        let call = tokio::select! {
            _ = self.tx.closed() => return End::Gone,
            r = client.subscribe_margin_offers(req) => r,
        };
        let mut stream = match call {
            Ok(r) => r.into_inner(),
            Err(s) if retryable(s.code()) => {
                tracing::debug!("watch: subscribe failed ({}); retrying", s.message());
                return End::Retry { progressed: false };
            }
            Err(s) => return self.fatal(cv::error_from_status(&s)).await,
        };
        // A partly delivered revision comes again from its first change.
        let mut skip = self.partial;
        let mut progressed = false;
        loop {
            let msg = tokio::select! {
                _ = self.tx.closed() => return End::Gone,
                m = stream.message() => m,
            };
            let event = match msg {
                Ok(Some(m)) => m.event,
                Ok(None) => return End::Retry { progressed },
                Err(s) if retryable(s.code()) => return End::Retry { progressed },
                Err(s) => return self.fatal(cv::error_from_status(&s)).await,
            };
            match event {
                Some(Event::Change(c)) if c.change_type == 0 => {
                    // The marker: its revision is where this subscription starts.
                    progressed = true;
                    if self.resume.is_none() {
                        self.resume = Some(c.revision);
                    }
                }
                Some(Event::Change(c)) => {
                    let change = match cv::change_from_pb(c) {
                        Ok(c) => c,
                        Err(e) => {
                            return self
                                .fatal(StoreError::Internal(format!(
                                    "malformed change from the store: {e}"
                                )))
                                .await;
                        }
                    };
                    progressed = true;
                    let rev = change.revision;
                    if self.resume.is_some_and(|r| rev <= r) {
                        continue;
                    }
                    if let Some((r, n)) = skip.as_mut()
                        && *r == rev
                        && *n > 0
                    {
                        *n -= 1;
                        continue;
                    }
                    match self.partial {
                        Some((r, ref mut n)) if r == rev => *n += 1,
                        Some((r, _)) => {
                            // A later revision: the earlier one is complete.
                            self.resume = Some(r);
                            self.partial = Some((rev, 1));
                        }
                        None => self.partial = Some((rev, 1)),
                    }
                    if self.emit(Ok(WatchEvent::Change(change))).await.is_err() {
                        return End::Gone;
                    }
                }
                Some(Event::Heartbeat(h)) => {
                    progressed = true;
                    let revision = h.revision;
                    if self.resume.is_none_or(|r| revision > r) {
                        self.resume = Some(revision);
                    }
                    if self.partial.is_some_and(|(r, _)| r <= revision) {
                        self.partial = None;
                    }
                    if self
                        .emit(Ok(WatchEvent::Heartbeat { revision }))
                        .await
                        .is_err()
                    {
                        return End::Gone;
                    }
                }
                Some(Event::Error(e)) if e.error_code == "LAGGED" => {
                    let requested = resume_of(&e.error_message)
                        .or(self.resume)
                        .unwrap_or_default();
                    return self
                        .fatal(StoreError::OutOfRange {
                            requested,
                            oldest: oldest_of(&e.error_message).unwrap_or_default(),
                        })
                        .await;
                }
                Some(Event::Error(e)) if e.fatal => {
                    return self
                        .fatal(StoreError::Internal(format!(
                            "{}: {}",
                            e.error_code, e.error_message
                        )))
                        .await;
                }
                Some(Event::Error(e)) => {
                    tracing::debug!(
                        "watch: server reported {}: {}",
                        e.error_code,
                        e.error_message
                    );
                }
                None => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lagged_message_is_parsed() {
        let m = "fell behind (resume_revision=42 oldest_revision=100)";
        assert_eq!(resume_of(m), Some(42));
        assert_eq!(oldest_of(m), Some(100));
        assert_eq!(resume_of("nothing"), None);
    }
}
