//! Bearer-token auth, the per-connection stream limit and the request
//! deadline ceiling, as one tower wrapper around `MarginOfferServiceServer`
//! keyed on the method path. Living on the service (not on the server
//! builder) means `routes()` and `serve()` both get it, while health and
//! reflection, separate services, stay open (and uncounted).

use crate::SERVICE_NAME;
use std::collections::HashMap;
use std::convert::Infallible;
use std::fmt;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use subtle::ConstantTimeEq;
use tonic::Status;
use tonic::body::Body;
use tonic::codegen::{Bytes, http};
use tonic::server::NamedService;
use tonic::transport::server::TcpConnectInfo;
use tower::Service;

/// A credential. Its `Debug` and `Display` never show the value, so it can
/// sit in configs that are logged.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Arc<str>);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(Arc::from(value.into()))
    }

    /// Reads a secret file; surrounding whitespace (the trailing newline of
    /// `echo token > file`) is not part of the secret.
    pub fn from_file(path: &Path) -> std::io::Result<Self> {
        let raw = std::fs::read_to_string(path)?;
        Ok(Secret::new(raw.trim()))
    }

    /// The value, for the one place that must send or compare it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Constant-time in the value's content, so response timing does not
    /// reveal how much of a guessed token was right.
    pub fn matches(&self, candidate: &[u8]) -> bool {
        self.0.as_bytes().ct_eq(candidate).into()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// RPCs that change nothing. Everything else of the service needs the write
/// token, so a method added later is protected until listed here.
const READ_METHODS: &[&str] = &[
    "GetMarginOffer",
    "ListMarginOffers",
    "OverwritePreview",
    "HealthCheck",
    "SubscribeMarginOffers",
    "GetMarginOfferStats",
];

pub(crate) fn is_read_method(method: &str) -> bool {
    READ_METHODS.contains(&method)
}

/// What the guard enforces.
#[derive(Clone, Debug, Default)]
pub(crate) struct Policy {
    pub write_token: Option<Secret>,
    pub read_token: Option<Secret>,
    pub max_request_timeout: Option<Duration>,
    /// In-flight calls of the service one client connection may have.
    pub max_streams_per_connection: Option<u32>,
}

impl Policy {
    fn is_noop(&self) -> bool {
        self.write_token.is_none()
            && self.read_token.is_none()
            && self.max_request_timeout.is_none()
            && self.max_streams_per_connection.is_none()
    }

    /// `None` when the call may proceed.
    fn check(&self, method: &str, headers: &http::HeaderMap) -> Option<Status> {
        let read = is_read_method(method);
        let needs_token = if read {
            self.read_token.is_some()
        } else {
            self.write_token.is_some()
        };
        if !needs_token {
            return None;
        }
        let Some(presented) = bearer(headers) else {
            return Some(Status::unauthenticated(
                "missing bearer token: send `authorization: Bearer <token>`",
            ));
        };
        // The write token also grants reads; both are compared whatever the
        // outcome of the first, so timing does not tell which one matched.
        let write_ok = self
            .write_token
            .as_ref()
            .is_some_and(|t| t.matches(presented));
        let read_ok = read
            && self
                .read_token
                .as_ref()
                .is_some_and(|t| t.matches(presented));
        if write_ok | read_ok {
            None
        } else {
            Some(Status::unauthenticated("invalid bearer token"))
        }
    }
}

/// The token of an `authorization: Bearer <token>` header (scheme
/// case-insensitive, as RFC 6750 allows).
fn bearer(headers: &http::HeaderMap) -> Option<&[u8]> {
    let v = headers.get(http::header::AUTHORIZATION)?.as_bytes();
    let (scheme, rest) = v.split_at_checked(7)?;
    if !scheme.eq_ignore_ascii_case(b"bearer ") {
        return None;
    }
    let token = rest.trim_ascii();
    (!token.is_empty()).then_some(token)
}

/// The peer of the TCP connection a request came on; tonic's transport
/// records it for TLS connections too. `None` when the server was not built
/// by tonic's transport (e.g. `routes()` mounted elsewhere), where
/// connections cannot be told apart.
fn peer_addr(req: &http::Request<Body>) -> Option<SocketAddr> {
    req.extensions()
        .get::<TcpConnectInfo>()
        .and_then(TcpConnectInfo::remote_addr)
}

/// In-flight calls per client connection. A connection is its peer address:
/// unique among the listener's open connections, and an entry goes away
/// with its last call, so a reused port starts from zero.
#[derive(Default)]
pub(crate) struct StreamCounts {
    by_peer: Mutex<HashMap<SocketAddr, u32>>,
}

impl StreamCounts {
    /// A slot for one more call from `peer`, or `None` at the limit.
    fn try_acquire(self: &Arc<Self>, peer: SocketAddr, limit: u32) -> Option<StreamSlot> {
        let mut map = self.by_peer.lock().unwrap_or_else(|p| p.into_inner());
        let n = map.entry(peer).or_insert(0);
        if *n >= limit {
            return None;
        }
        *n += 1;
        Some(StreamSlot {
            counts: self.clone(),
            peer,
        })
    }

    #[cfg(test)]
    fn open(&self, peer: SocketAddr) -> u32 {
        let map = self.by_peer.lock().unwrap_or_else(|p| p.into_inner());
        map.get(&peer).copied().unwrap_or(0)
    }
}

/// One counted call; dropping it (the call's response ended, failed, or the
/// client went away) frees the slot.
pub(crate) struct StreamSlot {
    counts: Arc<StreamCounts>,
    peer: SocketAddr,
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        let mut map = self
            .counts
            .by_peer
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(n) = map.get_mut(&self.peer) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                map.remove(&self.peer);
            }
        }
    }
}

/// A response body that holds its call's slot until hyper drops it: after
/// the last frame, or when the client cancels the stream.
struct SlotBody {
    inner: Body,
    _slot: StreamSlot,
}

impl http_body::Body for SlotBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Status>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

fn hold_slot(resp: http::Response<Body>, slot: Option<StreamSlot>) -> http::Response<Body> {
    match slot {
        None => resp,
        Some(slot) => resp.map(|inner| Body::new(SlotBody { inner, _slot: slot })),
    }
}

/// Wraps the service: checks the token, takes a stream slot of the
/// connection, then caps how long the call may run.
#[derive(Clone)]
pub(crate) struct Guard<S> {
    inner: S,
    policy: Arc<Policy>,
    streams: Arc<StreamCounts>,
}

impl<S> Guard<S> {
    pub(crate) fn new(inner: S, policy: Policy) -> Self {
        Guard {
            inner,
            policy: Arc::new(policy),
            streams: Arc::default(),
        }
    }
}

impl<S> NamedService for Guard<S> {
    const NAME: &'static str = SERVICE_NAME;
}

type BoxFuture<T> = Pin<Box<dyn std::future::Future<Output = T> + Send + 'static>>;

impl<S> Service<http::Request<Body>> for Guard<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        if self.policy.is_noop() {
            let fut = self.inner.call(req);
            return Box::pin(async move { fut.await.map(oversize_is_exhausted) });
        }
        let method = req.uri().path().rsplit('/').next().unwrap_or_default();
        if let Some(status) = self.policy.check(method, req.headers()) {
            // Logged without the header: the presented value may be a real
            // token of another system.
            tracing::debug!(method, code = ?status.code(), "rejected unauthenticated call");
            metrics::counter!("grpc_server_auth_rejected_total", "method" => method_label(method))
                .increment(1);
            return Box::pin(std::future::ready(Ok(status.into_http())));
        }
        // Every call of the service counts, unary ones too: each holds an
        // HTTP/2 stream and server work until its response ends.
        let slot = match (self.policy.max_streams_per_connection, peer_addr(&req)) {
            (Some(limit), Some(peer)) => match self.streams.try_acquire(peer, limit) {
                Some(slot) => Some(slot),
                None => {
                    tracing::debug!(method, %peer, limit, "refused a call over the stream limit");
                    metrics::counter!(
                        "grpc_server_stream_limit_rejected_total",
                        "method" => method_label(method)
                    )
                    .increment(1);
                    return Box::pin(std::future::ready(Ok(Status::resource_exhausted(
                        format!(
                            "too many concurrent streams on this connection (limit {limit}, \
                             --max-concurrent-streams); wait for a call to end or open another connection"
                        ),
                    )
                    .into_http())));
                }
            },
            _ => None,
        };
        let inner = self.inner.call(req);
        // The slot lives in the future until the response exists (a
        // cancelled call drops both), then in the response body.
        let fut = async move {
            inner
                .await
                .map(|resp| hold_slot(oversize_is_exhausted(resp), slot))
        };
        match self.policy.max_request_timeout {
            None => Box::pin(fut),
            Some(max) => Box::pin(async move {
                // Bounds the time to the response headers: a unary call or a
                // streamed overwrite as a whole, but not a subscription's
                // body, which is meant to stay open.
                match tokio::time::timeout(max, fut).await {
                    Ok(res) => res,
                    Err(_) => Ok(Status::resource_exhausted(format!(
                        "request exceeded the server's time limit of {} (--max-request-timeout)",
                        humanize(max)
                    ))
                    .into_http()),
                }
            }),
        }
    }
}

/// tonic answers a request over the message size limit with OUT_OF_RANGE;
/// the documented code of every exceeded limit is RESOURCE_EXHAUSTED.
fn oversize_is_exhausted(mut resp: http::Response<Body>) -> http::Response<Body> {
    let h = resp.headers();
    let oversize = h.get("grpc-status").is_some_and(|v| v == "11")
        && h.get("grpc-message")
            .is_some_and(|m| m.as_bytes().windows(17).any(|w| w == b"length%20too%20la"));
    if oversize {
        resp.headers_mut()
            .insert("grpc-status", http::HeaderValue::from_static("8"));
    }
    resp
}

/// Metric labels come from a fixed set, never from the request, so a
/// caller cannot blow up label cardinality.
fn method_label(method: &str) -> &'static str {
    const ALL: &[&str] = &[
        "CreateMarginOffer",
        "GetMarginOffer",
        "UpdateMarginOffer",
        "DeleteMarginOffer",
        "CreateOrUpdateMarginOffer",
        "ListMarginOffers",
        "BulkCreateMarginOffers",
        "BulkUpdateMarginOffers",
        "BulkDeleteMarginOffers",
        "BulkCreateOrUpdateMarginOffers",
        "BulkOverwriteMarginOffers",
        "OverwritePreview",
        "HealthCheck",
        "SubscribeMarginOffers",
        "OverwriteMarginOffersStream",
        "GetMarginOfferStats",
    ];
    ALL.iter()
        .copied()
        .find(|m| *m == method)
        .unwrap_or("other")
}

fn humanize(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(auth: &str) -> http::HeaderMap {
        let mut h = http::HeaderMap::new();
        if let Ok(v) = http::HeaderValue::from_str(auth) {
            h.insert(http::header::AUTHORIZATION, v);
        }
        h
    }

    #[test]
    fn secret_debug_and_display_are_redacted() {
        let s = Secret::new("hunter2-very-secret");
        let cfg = crate::ServiceConfig {
            write_token: Some(s.clone()),
            read_token: Some(s.clone()),
            ..Default::default()
        };
        for shown in [format!("{s:?}"), format!("{s}"), format!("{cfg:?}")] {
            assert!(!shown.contains("hunter2"), "{shown}");
        }
    }

    #[test]
    fn stream_slots_are_counted_per_peer_and_freed_on_drop() {
        let counts = Arc::new(StreamCounts::default());
        let a: SocketAddr = ([127, 0, 0, 1], 1000).into();
        let b: SocketAddr = ([127, 0, 0, 1], 1001).into();
        let first = counts.try_acquire(a, 2).expect("first");
        let second = counts.try_acquire(a, 2).expect("second");
        assert!(counts.try_acquire(a, 2).is_none(), "third over the limit");
        let other = counts.try_acquire(b, 2).expect("another connection");
        drop(first);
        assert_eq!(counts.open(a), 1);
        let again = counts.try_acquire(a, 2).expect("freed slot");
        drop((second, again, other));
        assert!(counts.by_peer.lock().unwrap().is_empty(), "no entry left");
    }

    #[test]
    fn policy_checks_scheme_and_value() {
        let p = Policy {
            write_token: Some(Secret::new("w")),
            ..Default::default()
        };
        assert!(
            p.check("ListMarginOffers", &http::HeaderMap::new())
                .is_none()
        );
        assert!(p.check("CreateMarginOffer", &headers("Bearer w")).is_none());
        assert!(p.check("CreateMarginOffer", &headers("bearer w")).is_none());
        assert!(p.check("CreateMarginOffer", &headers("Basic w")).is_some());
        assert!(p.check("CreateMarginOffer", &headers("Bearer x")).is_some());
        assert!(p.check("CreateMarginOffer", &headers("Bearer ")).is_some());
        assert!(p.check("SomethingNew", &headers("")).is_some());
        let r = Policy {
            write_token: Some(Secret::new("w")),
            read_token: Some(Secret::new("r")),
            ..Default::default()
        };
        assert!(r.check("ListMarginOffers", &headers("Bearer r")).is_none());
        assert!(r.check("ListMarginOffers", &headers("Bearer w")).is_none());
        assert!(r.check("CreateMarginOffer", &headers("Bearer r")).is_some());
        assert!(
            r.check("ListMarginOffers", &http::HeaderMap::new())
                .is_some()
        );
    }
}
