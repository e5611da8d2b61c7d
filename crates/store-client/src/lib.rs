//! `GrpcStore`: a [`MarginOfferStore`] talking to a remote store over
//! `marginoffer.v1`, so callers cannot tell a remote store from a local one.
//!
//! Every call goes through [`GrpcStore::call`], which sets the deadline and
//! write metadata, retries transient failures of calls safe to repeat
//! ([`RetryPolicy`]), records the client metrics, tracks whether the store
//! is reachable, and maps `Status` to `StoreError`.
//!
//! # Metrics (through the `metrics` facade)
//! - `store_client_calls_total{method,code}`: one per attempt.
//! - `store_client_call_duration_seconds{method}`: latency of each attempt.
//! - `store_client_connected`: 1 while the store answers, 0 after a call
//!   failed with UNAVAILABLE (logged once per transition).

use async_trait::async_trait;
use offer_domain::{
    BulkCreateOptions, BulkDeleteOptions, BulkOutcome, BulkUpdateOptions, BulkUpsertOptions,
    Change, ListPage, ListQuery, MarginOffer, OfferPatch, OverwriteFilter, OverwriteOutcome,
    OverwriteRequest, Revision, Stats, StatsQuery, StoreError, StoreResult, WriteContext,
};
use offer_proto::convert as cv;
use offer_proto::pb;
use offer_proto::pb::margin_offer_service_client::MarginOfferServiceClient;
use offer_proto::pb::subscribe_margin_offers_response::Event;
use offer_store::{ChangeBatch, MarginOfferStore, Written};
use rand::Rng;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{Duration, Instant};
use tonic::Code;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

mod watch;
pub use watch::{WatchEvent, WatchFilter, WatchRequest};

/// Metadata keys the service understands (see the `store-service` crate).
const CHANGE_SOURCE_HEADER: &str = "x-change-source";
const OPERATION_ID_HEADER: &str = "x-operation-id";
const VALIDATE_ALL_HEADER: &str = "x-validate-all";
const REVISION_HEADER: &str = "x-revision";

/// Env var holding the bearer token [`GrpcStore::connect_from_env`] sends.
pub const TOKEN_ENV: &str = "STORE_TOKEN";
/// Env var naming a PEM file of a CA trusted besides the system roots.
pub const CA_CERT_ENV: &str = "STORE_CA_CERT";
/// Env vars naming the PEM client certificate and key for mTLS.
pub const CLIENT_CERT_ENV: &str = "STORE_CLIENT_CERT";
pub const CLIENT_KEY_ENV: &str = "STORE_CLIENT_KEY";

pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// Matches the service's default limit, so 10 000-offer calls fit.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;
/// The service's default unary bulk limit; larger overwrites are streamed.
pub const UNARY_OVERWRITE_LIMIT: usize = 10_000;
/// Offers per chunk when [`MarginOfferStore::overwrite`] falls back to streaming.
pub const DEFAULT_CHUNK_SIZE: usize = 5_000;

/// How calls that are safe to repeat are retried on UNAVAILABLE or
/// DEADLINE_EXCEEDED: exponential backoff with full jitter (a random delay
/// in `[0, min(max, base * 2^(n-1))]`), so many clients coming back after a
/// store restart do not hammer it in lockstep. Create and BulkCreate are
/// never retried: a lost reply to a committed create would turn into a
/// spurious ALREADY_EXISTS; Delete and BulkDelete neither, for the same
/// reason with NOT_FOUND (`backfiller.md` lists reads, upserts, overwrites
/// and update as the calls safe to repeat).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in all, the first included; 1 disables retries.
    pub max_attempts: u32,
    pub base: Duration,
    pub max: Duration,
}

impl Default for RetryPolicy {
    /// 5 attempts over at most ~3 s of backoff: bridges a store restart
    /// without hiding a store that is really gone.
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 5,
            base: Duration::from_millis(100),
            max: Duration::from_secs(2),
        }
    }
}

impl RetryPolicy {
    /// No retries at all.
    pub fn none() -> Self {
        RetryPolicy {
            max_attempts: 1,
            ..Self::default()
        }
    }

    /// The pause before attempt `failed + 1`, after `failed` failures.
    pub fn delay(&self, failed: u32) -> Duration {
        let exp = 2u32.saturating_pow(failed.saturating_sub(1).min(20));
        let cap = self.base.saturating_mul(exp).min(self.max);
        cap.mul_f64(rand::rng().random_range(0.0..=1.0))
    }
}

/// Whether the store answers, shared by the clones of one client so each
/// transition is logged once.
#[derive(Debug)]
struct Connection {
    addr: String,
    state: AtomicU8,
}

const CONN_UNKNOWN: u8 = 0;
const CONN_UP: u8 = 1;
const CONN_DOWN: u8 = 2;

impl Connection {
    fn observe(&self, up: bool, cause: &str) {
        let new = if up { CONN_UP } else { CONN_DOWN };
        metrics::gauge!("store_client_connected").set(if up { 1.0 } else { 0.0 });
        let old = self.state.swap(new, Ordering::AcqRel);
        match (old, new) {
            (o, n) if o == n => {}
            (CONN_UNKNOWN, CONN_UP) => {
                tracing::info!(store = %self.addr, "connected to the store");
            }
            (CONN_DOWN, CONN_UP) => {
                tracing::info!(store = %self.addr, "store connection re-established");
            }
            (CONN_UNKNOWN, _) => {
                tracing::warn!(store = %self.addr, error = %cause, "store unreachable");
            }
            _ => tracing::warn!(store = %self.addr, error = %cause, "store connection lost"),
        }
    }
}

/// The `authorization` value sent on every call; `Debug` never shows it.
#[derive(Clone)]
struct Auth(MetadataValue<Ascii>);

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Bearer <redacted>")
    }
}

/// TLS options of an `https://` store address: the system roots are always
/// trusted; a custom CA and a client identity (mTLS) are optional.
#[derive(Clone, Default)]
pub struct ClientTls {
    ca_pem: Option<Vec<u8>>,
    identity: Option<(Vec<u8>, Vec<u8>)>,
}

impl std::fmt::Debug for ClientTls {
    // The client key never reaches a log.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientTls")
            .field("custom_ca", &self.ca_pem.is_some())
            .field("client_identity", &self.identity.is_some())
            .finish()
    }
}

impl ClientTls {
    /// Also trusts this PEM CA certificate (e.g. a private CA).
    pub fn with_ca_pem(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.ca_pem = Some(pem.into());
        self
    }

    /// Presents this PEM certificate and key to a server that requires mTLS.
    pub fn with_identity(
        mut self,
        cert_pem: impl Into<Vec<u8>>,
        key_pem: impl Into<Vec<u8>>,
    ) -> Self {
        self.identity = Some((cert_pem.into(), key_pem.into()));
        self
    }

    /// From [`CA_CERT_ENV`], [`CLIENT_CERT_ENV`] and [`CLIENT_KEY_ENV`] (file paths).
    pub fn from_env() -> StoreResult<ClientTls> {
        let read = |var: &str| -> StoreResult<Option<Vec<u8>>> {
            match std::env::var_os(var) {
                None => Ok(None),
                Some(p) if p.is_empty() => Ok(None),
                Some(p) => std::fs::read(&p).map(Some).map_err(|e| {
                    StoreError::invalid(var, format!("cannot read {var} file {p:?}: {e}"))
                }),
            }
        };
        let mut tls = ClientTls::default();
        if let Some(ca) = read(CA_CERT_ENV)? {
            tls = tls.with_ca_pem(ca);
        }
        match (read(CLIENT_CERT_ENV)?, read(CLIENT_KEY_ENV)?) {
            (Some(c), Some(k)) => tls = tls.with_identity(c, k),
            (None, None) => {}
            _ => {
                return Err(StoreError::invalid(
                    CLIENT_CERT_ENV,
                    format!("{CLIENT_CERT_ENV} and {CLIENT_KEY_ENV} must be set together"),
                ));
            }
        }
        Ok(tls)
    }

    fn apply(&self, endpoint: Endpoint) -> StoreResult<Endpoint> {
        let mut cfg = ClientTlsConfig::new();
        if let Some(ca) = &self.ca_pem {
            cfg = cfg.ca_certificate(Certificate::from_pem(ca));
        }
        if let Some((c, k)) = &self.identity {
            cfg = cfg.identity(Identity::from_pem(c, k));
        }
        let bad = |e: tonic::transport::Error| {
            StoreError::invalid("tls", format!("bad TLS configuration: {e}"))
        };
        match endpoint.clone().tls_config(cfg.clone().with_native_roots()) {
            Ok(e) => Ok(e),
            // A host without system roots (slim containers) still works
            // with a custom CA.
            Err(_) if self.ca_pem.is_some() => endpoint.tls_config(cfg).map_err(bad),
            Err(e) => Err(bad(e)),
        }
    }
}

#[derive(Clone, Debug)]
pub struct GrpcStore {
    client: MarginOfferServiceClient<Channel>,
    /// Overrides `WriteContext::origin` on every write when set.
    origin: Option<String>,
    timeout: Duration,
    retry: RetryPolicy,
    conn: Arc<Connection>,
    /// Sent as `authorization` on every call when set.
    auth: Option<Auth>,
}

/// What one call needs besides its message.
#[derive(Clone, Copy)]
struct CallOpts<'a> {
    /// The RPC's name: the `method` label of the client metrics.
    method: &'static str,
    write: Option<&'a WriteContext>,
    validate_all: bool,
    /// Safe to repeat, so transient failures are retried.
    retry: bool,
}

impl CallOpts<'static> {
    /// A read: no metadata, retried.
    fn read(method: &'static str) -> Self {
        CallOpts {
            method,
            write: None,
            validate_all: false,
            retry: true,
        }
    }
}

impl GrpcStore {
    /// Accepts `host:port`, `http://host:port` or `https://host:port`. The
    /// connection is made lazily and re-made after failures, so a store
    /// restart is survived without reconnecting by hand.
    pub async fn connect(addr: &str) -> StoreResult<GrpcStore> {
        Self::connect_with_tls(addr, ClientTls::default()).await
    }

    /// [`GrpcStore::connect`] with the token of [`TOKEN_ENV`] and the TLS
    /// options of [`ClientTls::from_env`]: the one constructor the binaries
    /// use, so they all take credentials the same way.
    pub async fn connect_from_env(addr: &str) -> StoreResult<GrpcStore> {
        let store = Self::connect_with_tls(addr, ClientTls::from_env()?).await?;
        match std::env::var(TOKEN_ENV) {
            Ok(t) if !t.trim().is_empty() => store.with_token(t.trim()),
            _ => Ok(store),
        }
    }

    /// [`GrpcStore::connect`] with TLS options for `https://` addresses
    /// (ignored for plaintext ones).
    pub async fn connect_with_tls(addr: &str, tls: ClientTls) -> StoreResult<GrpcStore> {
        let uri = if addr.contains("://") {
            addr.to_owned()
        } else {
            format!("http://{addr}")
        };
        let endpoint = Endpoint::from_shared(uri)
            .map_err(|e| StoreError::invalid("addr", format!("bad store address {addr:?}: {e}")))?
            .tcp_nodelay(true)
            .connect_timeout(Duration::from_secs(10))
            .http2_keep_alive_interval(Duration::from_secs(30))
            .keep_alive_while_idle(true);
        let endpoint = if endpoint.uri().scheme_str() == Some("https") {
            tls.apply(endpoint)?
        } else {
            endpoint
        };
        let mut store = GrpcStore::from_channel(endpoint.connect_lazy());
        store.conn = Arc::new(Connection {
            addr: addr.to_owned(),
            state: AtomicU8::new(CONN_UNKNOWN),
        });
        Ok(store)
    }

    /// Wraps an existing channel (custom TLS, interceptors in tests, ...).
    pub fn from_channel(channel: Channel) -> GrpcStore {
        GrpcStore {
            client: MarginOfferServiceClient::new(channel)
                .max_decoding_message_size(DEFAULT_MAX_MESSAGE_BYTES)
                .max_encoding_message_size(DEFAULT_MAX_MESSAGE_BYTES),
            origin: None,
            timeout: DEFAULT_TIMEOUT,
            retry: RetryPolicy::default(),
            conn: Arc::new(Connection {
                addr: "<channel>".to_owned(),
                state: AtomicU8::new(CONN_UNKNOWN),
            }),
            auth: None,
        }
    }

    /// Sends `authorization: Bearer <token>` on every call (stores started
    /// with `--write-token` or `--read-token`).
    pub fn with_token(mut self, token: &str) -> StoreResult<Self> {
        let mut v = MetadataValue::try_from(format!("Bearer {token}"))
            .map_err(|_| StoreError::invalid("token", "the store token must be printable ASCII"))?;
        // Keeps the value out of HTTP/2 header compression tables.
        v.set_sensitive(true);
        self.auth = Some(Auth(v));
        Ok(self)
    }

    fn authorize<T>(&self, req: &mut tonic::Request<T>) {
        if let Some(Auth(v)) = &self.auth {
            req.metadata_mut().insert("authorization", v.clone());
        }
    }

    /// The address given to [`GrpcStore::connect`].
    pub fn addr(&self) -> &str {
        &self.conn.addr
    }

    /// How calls safe to repeat are retried (default [`RetryPolicy::default`]).
    pub fn with_retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// Names this client on every write (`x-change-source`), overriding the
    /// origin of the `WriteContext` passed to each call.
    pub fn with_origin(mut self, origin: impl Into<String>) -> Self {
        self.origin = Some(origin.into());
        self
    }

    /// The deadline of each call (default 30 s).
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Raises or lowers the largest message sent or accepted.
    pub fn with_max_message_bytes(mut self, bytes: usize) -> Self {
        self.client = self
            .client
            .max_decoding_message_size(bytes)
            .max_encoding_message_size(bytes);
        self
    }

    fn request<T>(&self, msg: T, opts: CallOpts<'_>) -> tonic::Request<T> {
        let mut req = tonic::Request::new(msg);
        req.set_timeout(self.timeout);
        self.authorize(&mut req);
        if let Some(ctx) = opts.write {
            let origin = self.origin.as_deref().unwrap_or(&ctx.origin);
            // A value that cannot be a header is left out: the server then
            // uses its defaults rather than the call failing.
            if let Ok(v) = MetadataValue::try_from(origin) {
                req.metadata_mut().insert(CHANGE_SOURCE_HEADER, v);
            }
            if !ctx.operation_id.is_empty()
                && let Ok(v) = MetadataValue::try_from(ctx.operation_id.as_str())
            {
                req.metadata_mut().insert(OPERATION_ID_HEADER, v);
            }
        }
        if opts.validate_all {
            req.metadata_mut()
                .insert(VALIDATE_ALL_HEADER, MetadataValue::from_static("true"));
        }
        req
    }

    /// One call: deadline, metadata, retries, metrics, error mapping.
    async fn call<T, R, F, Fut>(&self, msg: T, opts: CallOpts<'_>, rpc: F) -> StoreResult<R>
    where
        T: Clone,
        F: Fn(MarginOfferServiceClient<Channel>, tonic::Request<T>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<R>, tonic::Status>>,
    {
        Ok(self.call_full(msg, opts, rpc).await?.into_inner())
    }

    /// [`GrpcStore::call`] keeping the response metadata.
    ///
    /// Each attempt has the full deadline. Only UNAVAILABLE and
    /// DEADLINE_EXCEEDED of calls marked `retry` are retried; the lazy
    /// channel reconnects underneath, so a retry after a store restart
    /// reaches the new process.
    async fn call_full<T, R, F, Fut>(
        &self,
        msg: T,
        opts: CallOpts<'_>,
        rpc: F,
    ) -> StoreResult<tonic::Response<R>>
    where
        T: Clone,
        F: Fn(MarginOfferServiceClient<Channel>, tonic::Request<T>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<R>, tonic::Status>>,
    {
        let attempts = if opts.retry {
            self.retry.max_attempts.max(1)
        } else {
            1
        };
        let mut msg = Some(msg);
        let mut attempt = 1;
        loop {
            // The last attempt gives the message away instead of cloning it,
            // so a call that is never retried never copies its payload.
            let body = if attempt >= attempts {
                msg.take()
            } else {
                msg.clone()
            };
            let Some(body) = body else {
                return Err(StoreError::Internal("retry without a message".into()));
            };
            let req = self.request(body, opts);
            let t = Instant::now();
            let res = rpc(self.client.clone(), req).await;
            let code = res.as_ref().map_or_else(|s| s.code(), |_| Code::Ok);
            metrics::counter!("store_client_calls_total", "method" => opts.method, "code" => cv::code_name(code))
                .increment(1);
            metrics::histogram!("store_client_call_duration_seconds", "method" => opts.method)
                .record(t.elapsed().as_secs_f64());
            let status = match res {
                Ok(r) => {
                    self.conn.observe(true, "");
                    return Ok(r);
                }
                Err(s) => s,
            };
            match code {
                Code::Unavailable => self.conn.observe(false, status.message()),
                // Any answer from the server proves the connection works.
                Code::DeadlineExceeded | Code::Cancelled => {}
                _ => self.conn.observe(true, ""),
            }
            let transient = matches!(code, Code::Unavailable | Code::DeadlineExceeded);
            if !transient || attempt >= attempts {
                return Err(cv::error_from_status(&status));
            }
            let delay = self.retry.delay(attempt);
            tracing::debug!(
                method = opts.method, attempt, retry_in = ?delay,
                error = %status.message(), "transient store error, retrying"
            );
            tokio::time::sleep(delay).await;
            attempt += 1;
        }
    }

    /// The revision of a single write: from the response metadata when the
    /// server sends it, else (older servers) the store's current revision.
    async fn revision_of<R>(&self, resp: &tonic::Response<R>) -> StoreResult<Revision> {
        let sent = resp
            .metadata()
            .get(REVISION_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok());
        match sent {
            Some(r) => Ok(r),
            None => self.revision().await,
        }
    }

    /// A streamed overwrite: `req.offers` in chunks of `chunk_size`, applied
    /// by the server as one overwrite once the stream is complete.
    pub async fn overwrite_stream(
        &self,
        req: OverwriteRequest,
        chunk_size: usize,
        ctx: &WriteContext,
    ) -> StoreResult<OverwriteOutcome> {
        let upload = ChunkedOverwrite::new(req, chunk_size);
        // The server applies nothing until the stream is complete, so a
        // retry resends the whole stream from the shared offers.
        let opts = write(ctx, "OverwriteMarginOffersStream", true);
        let out = self
            .call(upload, opts, |mut c, r| async move {
                c.overwrite_margin_offers_stream(r.map(ChunkedOverwrite::into_chunks))
                    .await
            })
            .await?;
        Ok(cv::overwrite_outcome_from_pb(out))
    }

    /// The service's own `HealthCheck` answer.
    pub async fn health(&self) -> StoreResult<pb::HealthCheckResponse> {
        self.call((), CallOpts::read("HealthCheck"), |mut c, r| async move {
            c.health_check(r).await
        })
        .await
    }
}

/// The offers of a streamed overwrite, shared by every attempt of the call
/// (cloning it is cheap). Each attempt encodes its chunks only as the
/// transport takes them, so the wire form of the whole request is never
/// built, and encoding overlaps sending.
#[derive(Clone)]
struct ChunkedOverwrite {
    offers: Arc<[MarginOffer]>,
    filter: Option<pb::OverwriteFilter>,
    validate_all: bool,
    dry_run: bool,
    chunk_size: usize,
}

impl ChunkedOverwrite {
    fn new(req: OverwriteRequest, chunk_size: usize) -> Self {
        ChunkedOverwrite {
            filter: req.filter.as_ref().map(cv::overwrite_filter_to_pb),
            offers: req.offers.into(),
            validate_all: req.validate_all,
            dry_run: req.dry_run,
            chunk_size: chunk_size.max(1),
        }
    }

    /// The request stream: always at least one chunk, the first carrying the
    /// filter and flags.
    fn into_chunks(self) -> impl tokio_stream::Stream<Item = pb::OverwriteChunk> + Send + 'static {
        let count = self.offers.len().div_ceil(self.chunk_size).max(1);
        tokio_stream::iter((0..count).map(move |k| {
            let start = k * self.chunk_size;
            let end = (start + self.chunk_size).min(self.offers.len());
            pb::OverwriteChunk {
                filter: if k == 0 { self.filter.clone() } else { None },
                offers: self
                    .offers
                    .get(start..end)
                    .unwrap_or_default()
                    .iter()
                    .cloned()
                    .map(cv::offer_to_pb)
                    .collect(),
                validate_all: self.validate_all,
                dry_run: self.dry_run,
            }
        }))
    }
}

/// A response the server should never send.
fn bad_response(e: offer_domain::FieldError) -> StoreError {
    StoreError::Internal(format!("malformed response from the store: {e}"))
}

fn offer_of(o: Option<pb::MarginOffer>) -> StoreResult<MarginOffer> {
    cv::required_offer_from_pb(o).map_err(bad_response)
}

/// A write carrying `ctx`; `retry` only for writes safe to repeat.
fn write<'a>(ctx: &'a WriteContext, method: &'static str, retry: bool) -> CallOpts<'a> {
    CallOpts {
        method,
        write: Some(ctx),
        validate_all: false,
        retry,
    }
}

#[async_trait]
impl MarginOfferStore for GrpcStore {
    async fn create(&self, offer: MarginOffer, ctx: &WriteContext) -> StoreResult<Written> {
        let msg = pb::CreateMarginOfferRequest {
            offer: Some(cv::offer_to_pb(offer)),
        };
        let resp = self
            .call_full(
                msg,
                write(ctx, "CreateMarginOffer", false),
                |mut c, r| async move { c.create_margin_offer(r).await },
            )
            .await?;
        let revision = self.revision_of(&resp).await?;
        let r = resp.into_inner();
        Ok(Written {
            offer: offer_of(r.offer)?,
            was_created: true,
            revision,
        })
    }

    async fn get(&self, id: &str) -> StoreResult<MarginOffer> {
        let msg = pb::GetMarginOfferRequest { id: id.to_owned() };
        let r = self
            .call(
                msg,
                CallOpts::read("GetMarginOffer"),
                |mut c, r| async move { c.get_margin_offer(r).await },
            )
            .await?;
        offer_of(r.offer)
    }

    async fn update(&self, offer: MarginOffer, ctx: &WriteContext) -> StoreResult<Written> {
        let msg = pb::UpdateMarginOfferRequest {
            offer: Some(cv::offer_to_pb(offer)),
        };
        let resp = self
            .call_full(
                msg,
                write(ctx, "UpdateMarginOffer", true),
                |mut c, r| async move { c.update_margin_offer(r).await },
            )
            .await?;
        let revision = self.revision_of(&resp).await?;
        let r = resp.into_inner();
        Ok(Written {
            offer: offer_of(r.offer)?,
            was_created: false,
            revision,
        })
    }

    async fn delete(&self, id: &str, ctx: &WriteContext) -> StoreResult<Revision> {
        let msg = pb::DeleteMarginOfferRequest { id: id.to_owned() };
        let resp = self
            .call_full(
                msg,
                write(ctx, "DeleteMarginOffer", false),
                |mut c, r| async move { c.delete_margin_offer(r).await },
            )
            .await?;
        self.revision_of(&resp).await
    }

    async fn create_or_update(
        &self,
        offer: MarginOffer,
        ctx: &WriteContext,
    ) -> StoreResult<Written> {
        let msg = pb::CreateOrUpdateMarginOfferRequest {
            offer: Some(cv::offer_to_pb(offer)),
        };
        let resp = self
            .call_full(
                msg,
                write(ctx, "CreateOrUpdateMarginOffer", true),
                |mut c, r| async move { c.create_or_update_margin_offer(r).await },
            )
            .await?;
        let revision = self.revision_of(&resp).await?;
        let r = resp.into_inner();
        Ok(Written {
            offer: offer_of(r.offer)?,
            was_created: r.was_created,
            revision,
        })
    }

    async fn list(&self, query: &ListQuery) -> StoreResult<ListPage> {
        let msg = cv::list_query_to_pb(query);
        let r = self
            .call(
                msg,
                CallOpts::read("ListMarginOffers"),
                |mut c, r| async move { c.list_margin_offers(r).await },
            )
            .await?;
        cv::list_page_from_pb(r).map_err(bad_response)
    }

    async fn bulk_create(
        &self,
        offers: Vec<MarginOffer>,
        opts: BulkCreateOptions,
        ctx: &WriteContext,
    ) -> StoreResult<BulkOutcome> {
        let msg = pb::BulkCreateMarginOffersRequest {
            offers: offers.into_iter().map(cv::offer_to_pb).collect(),
            ignore_conflicts: opts.ignore_conflicts,
            validate_all: opts.validate_all,
        };
        let r = self
            .call(
                msg,
                write(ctx, "BulkCreateMarginOffers", false),
                |mut c, r| async move { c.bulk_create_margin_offers(r).await },
            )
            .await?;
        Ok(cv::bulk_outcome_from_pb(r))
    }

    async fn bulk_update(
        &self,
        patches: Vec<OfferPatch>,
        opts: BulkUpdateOptions,
        ctx: &WriteContext,
    ) -> StoreResult<BulkOutcome> {
        let msg = pb::BulkUpdateMarginOffersRequest {
            offers: patches.into_iter().map(cv::patch_to_pb).collect(),
            upsert: opts.upsert,
            partial_update: opts.partial_update,
        };
        let call_opts = CallOpts {
            // The wire request has no validate_all; it travels as metadata.
            validate_all: opts.validate_all,
            ..write(ctx, "BulkUpdateMarginOffers", true)
        };
        let r = self
            .call(msg, call_opts, |mut c, r| async move {
                c.bulk_update_margin_offers(r).await
            })
            .await?;
        Ok(cv::bulk_outcome_from_pb(r))
    }

    async fn bulk_delete(
        &self,
        ids: Vec<String>,
        opts: BulkDeleteOptions,
        ctx: &WriteContext,
    ) -> StoreResult<BulkOutcome> {
        let msg = pb::BulkDeleteMarginOffersRequest {
            ids,
            ignore_not_found: opts.ignore_not_found,
        };
        let r = self
            .call(
                msg,
                write(ctx, "BulkDeleteMarginOffers", false),
                |mut c, r| async move { c.bulk_delete_margin_offers(r).await },
            )
            .await?;
        Ok(cv::bulk_outcome_from_pb(r))
    }

    async fn bulk_create_or_update(
        &self,
        offers: Vec<MarginOffer>,
        opts: BulkUpsertOptions,
        ctx: &WriteContext,
    ) -> StoreResult<BulkOutcome> {
        let msg = pb::BulkCreateOrUpdateMarginOffersRequest {
            offers: offers.into_iter().map(cv::offer_to_pb).collect(),
            validate_all: opts.validate_all,
        };
        let r = self
            .call(
                msg,
                write(ctx, "BulkCreateOrUpdateMarginOffers", true),
                |mut c, r| async move { c.bulk_create_or_update_margin_offers(r).await },
            )
            .await?;
        Ok(cv::bulk_outcome_from_pb(r))
    }

    /// Unary up to the server's bulk limit; larger snapshots are streamed so
    /// the caller never meets the unary limit.
    async fn overwrite(
        &self,
        req: OverwriteRequest,
        ctx: &WriteContext,
    ) -> StoreResult<OverwriteOutcome> {
        if req.offers.len() > UNARY_OVERWRITE_LIMIT {
            return self.overwrite_stream(req, DEFAULT_CHUNK_SIZE, ctx).await;
        }
        let msg = cv::overwrite_request_to_pb(req);
        let r = self
            .call(
                msg,
                write(ctx, "BulkOverwriteMarginOffers", true),
                |mut c, r| async move { c.bulk_overwrite_margin_offers(r).await },
            )
            .await?;
        Ok(cv::overwrite_outcome_from_pb(r))
    }

    async fn overwrite_preview(
        &self,
        filter: Option<&OverwriteFilter>,
    ) -> StoreResult<Vec<String>> {
        let msg = pb::OverwritePreviewRequest {
            filter: filter.map(cv::overwrite_filter_to_pb),
        };
        let r = self
            .call(
                msg,
                CallOpts::read("OverwritePreview"),
                |mut c, r| async move { c.overwrite_preview(r).await },
            )
            .await?;
        Ok(r.affected_ids)
    }

    async fn stats(&self, query: &StatsQuery) -> StoreResult<Stats> {
        let msg = cv::stats_query_to_pb(query);
        let r = self
            .call(
                msg,
                CallOpts::read("GetMarginOfferStats"),
                |mut c, r| async move { c.get_margin_offer_stats(r).await },
            )
            .await?;
        Ok(cv::stats_from_pb(r))
    }

    async fn health_check(&self) -> StoreResult<()> {
        let r = self.health().await?;
        if r.status == "healthy" {
            return Ok(());
        }
        let detail = r
            .checks
            .get("store")
            .cloned()
            .unwrap_or_else(|| r.status.clone());
        Err(StoreError::Unavailable(format!(
            "store unhealthy: {detail}"
        )))
    }

    /// The remote store stays up; there is nothing of ours to release.
    async fn close(&self) -> StoreResult<()> {
        Ok(())
    }

    async fn revision(&self) -> StoreResult<Revision> {
        Ok(self.stats(&StatsQuery::default()).await?.revision)
    }

    /// Reads the retained log through `SubscribeMarginOffers` with
    /// `start_revision`: changes arrive until the server's "caught up"
    /// heartbeat, whose revision is the batch head.
    async fn changes_since(&self, after: Revision, limit: usize) -> StoreResult<ChangeBatch> {
        let msg = pb::SubscribeMarginOffersRequest {
            start_revision: Some(after),
            client_id: "store-client/changes_since".to_owned(),
            ..Default::default()
        };
        let mut stream = self
            .call(
                msg,
                CallOpts::read("SubscribeMarginOffers"),
                |mut c, r| async move { c.subscribe_margin_offers(r).await },
            )
            .await?;
        let mut changes: Vec<Change> = Vec::new();
        let head = loop {
            let msg = stream
                .message()
                .await
                .map_err(|s| cv::error_from_status(&s))?;
            let Some(msg) = msg else {
                return Err(StoreError::Unavailable(
                    "change stream ended before catching up".into(),
                ));
            };
            match msg.event {
                Some(Event::Change(c)) if c.change_type == 0 => {} // subscription marker
                Some(Event::Change(c)) => {
                    let change = cv::change_from_pb(c).map_err(bad_response)?;
                    // Past `limit`, finish the current revision only: batches
                    // end on revision boundaries, like the local stores'.
                    let full = changes.len() >= limit;
                    if full
                        && changes
                            .last()
                            .is_some_and(|l| l.revision != change.revision)
                    {
                        let last = changes.last().map_or(after, |c| c.revision);
                        break self.revision().await?.max(last);
                    }
                    changes.push(change);
                }
                Some(Event::Heartbeat(h)) => break h.revision,
                Some(Event::Error(e)) if e.error_code == "LAGGED" => {
                    return Err(StoreError::OutOfRange {
                        requested: after,
                        oldest: 0,
                    });
                }
                Some(Event::Error(e)) if e.fatal => {
                    return Err(StoreError::Internal(format!(
                        "{}: {}",
                        e.error_code, e.error_message
                    )));
                }
                Some(Event::Error(_)) | None => {}
            }
        };
        Ok(ChangeBatch { changes, head })
    }
}
