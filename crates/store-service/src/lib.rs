//! The `marginoffer.v1.MarginOfferService` gRPC service over any
//! [`SharedStore`], plus `grpc.health.v1.Health` and server reflection.
//!
//! - [`MarginOfferGrpc`]: the service; every RPC converts, calls the store,
//!   converts back (conversions live in `offer_proto::convert`).
//! - [`routes`]: the service, health and reflection as one set of routes.
//! - [`serve`]: serves the routes on a listener until a shutdown future
//!   resolves, then drains in-flight calls.
//!
//! Metadata understood on writes (all optional):
//! - `x-change-source`: the origin recorded on change records (default `api`);
//! - `x-operation-id`: the operation id of the write (default: a fresh uuid);
//! - `x-validate-all: true` on `BulkUpdateMarginOffers`, whose request has no
//!   `validate_all` field.
//!
//! Single-write responses carry `x-revision` (the commit's revision) as
//! response metadata, since their messages have no revision field.

mod raw;
mod security;
mod service;
mod subscribe;

pub use security::Secret;

pub use offer_store::SharedStore;
pub use service::MarginOfferGrpc;

use offer_proto::pb;
use std::future::Future;
use std::sync::{Arc, Weak};
use std::time::Duration;
use tokio::sync::watch;
use tokio_stream::StreamExt as _;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::service::Routes;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

/// Metadata key naming the writer (recorded as the change records' origin).
pub const CHANGE_SOURCE_HEADER: &str = "x-change-source";
/// Metadata key carrying the caller's operation id for a write.
pub const OPERATION_ID_HEADER: &str = "x-operation-id";
/// Metadata key carrying `validate_all` for `BulkUpdateMarginOffers`.
pub const VALIDATE_ALL_HEADER: &str = "x-validate-all";

/// Response metadata key carrying the revision of a single write.
pub const REVISION_HEADER: &str = "x-revision";

/// The fully qualified name of the service, as health and reflection know it.
pub const SERVICE_NAME: &str = pb::margin_offer_service_server::SERVICE_NAME;

#[derive(Clone, Debug)]
pub struct ServiceConfig {
    /// Most offers (or ids) one unary bulk request may hold; the streamed
    /// overwrite has no item limit.
    pub max_bulk_items: usize,
    /// Largest encoded message accepted or sent, in bytes.
    pub max_message_bytes: usize,
    /// Reported by the `HealthCheck` RPC.
    pub version: String,
    /// How often a subscription receives a heartbeat.
    pub heartbeat_interval: Duration,
    /// How often the change hub polls the store's change log when the store
    /// offers no commit notification (`subscribe_commits`), and how long a
    /// subscription waits before retrying a failed read.
    pub subscription_poll_interval: Duration,
    /// Most concurrent subscriptions; more get RESOURCE_EXHAUSTED.
    pub max_subscribers: usize,
    /// Slots of the change hub's broadcast ring (each one batch of the
    /// change log); a subscriber further behind than this replays from the
    /// store instead.
    pub change_ring_capacity: usize,
    /// How often `grpc.health.v1.Health` re-checks the store.
    pub health_poll_interval: Duration,
    /// When set, every mutating RPC needs `authorization: Bearer <token>`
    /// with this token (else UNAUTHENTICATED); it also grants reads.
    pub write_token: Option<Secret>,
    /// When set, every RPC of the service (Subscribe included) needs this
    /// or the write token; health and reflection stay open.
    pub read_token: Option<Secret>,
    /// Ceiling on how long one call may run before its response, whatever
    /// deadline the client asked for; over it: RESOURCE_EXHAUSTED.
    pub max_request_timeout: Option<Duration>,
    /// In-flight calls of the service (unary and streaming alike) one client
    /// connection may have; more get RESOURCE_EXHAUSTED "too many concurrent
    /// streams on this connection". Health and reflection do not count.
    /// Needs tonic's transport to tell connections apart ([`serve`], or a
    /// tonic `Server` of the caller's); elsewhere calls are not counted.
    /// [`serve`] advertises an HTTP/2 stream limit above it, so clients see
    /// the error rather than queue.
    pub max_concurrent_streams: Option<u32>,
    /// TLS on the gRPC port (used by [`serve`]); plaintext when `None`.
    pub tls: Option<TlsConfig>,
}

/// PEM material of the server's TLS; `client_ca_pem` turns on mTLS.
#[derive(Clone)]
pub struct TlsConfig {
    pub cert_pem: Vec<u8>,
    pub key_pem: Vec<u8>,
    /// Clients must present a certificate signed by this CA.
    pub client_ca_pem: Option<Vec<u8>>,
}

impl std::fmt::Debug for TlsConfig {
    // The private key never reaches a log.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsConfig")
            .field("cert_pem", &format_args!("<{} bytes>", self.cert_pem.len()))
            .field("key_pem", &format_args!("<redacted>"))
            .field("mtls", &self.client_ca_pem.is_some())
            .finish()
    }
}

impl TlsConfig {
    fn server_config(&self) -> tonic::transport::ServerTlsConfig {
        let identity = tonic::transport::Identity::from_pem(&self.cert_pem, &self.key_pem);
        let mut tls = tonic::transport::ServerTlsConfig::new().identity(identity);
        if let Some(ca) = &self.client_ca_pem {
            tls = tls.client_ca_root(tonic::transport::Certificate::from_pem(ca));
        }
        tls
    }
}

impl Default for ServiceConfig {
    fn default() -> Self {
        ServiceConfig {
            max_bulk_items: 10_000,
            // 10 000 offers encode to a few MiB; leave ample headroom.
            max_message_bytes: 64 * 1024 * 1024,
            version: env!("CARGO_PKG_VERSION").to_owned(),
            heartbeat_interval: Duration::from_secs(30),
            subscription_poll_interval: Duration::from_millis(100),
            max_subscribers: 10_000,
            change_ring_capacity: 1024,
            health_poll_interval: Duration::from_secs(5),
            write_token: None,
            read_token: None,
            max_request_timeout: None,
            max_concurrent_streams: None,
            tls: None,
        }
    }
}

/// The service, standard health and reflection (v1 and v1alpha), ready for
/// `tonic::transport::Server::add_routes` or `Routes::into_axum_router`.
///
/// Health starts SERVING and follows `store.health_check()` via a background
/// task on the current tokio runtime (none is spawned outside a runtime);
/// the task ends once the store is dropped.
pub fn routes(store: SharedStore, cfg: ServiceConfig) -> Routes {
    // Nobody can ever trigger this stop signal: subscriptions then end only
    // when their client goes away.
    let stop = Arc::new(watch::channel(false).0);
    let (reporter, health) = tonic_health::server::health_reporter();
    match tokio::runtime::Handle::try_current() {
        Ok(handle) => {
            handle.spawn(poll_health(
                Arc::downgrade(&store),
                reporter,
                cfg.health_poll_interval,
            ));
        }
        Err(_) => tracing::warn!("routes() called outside a tokio runtime; health is static"),
    }
    assemble(store, cfg, stop, health)
}

/// HTTP/2 streams a connection may open beyond the service's own limit:
/// room for health probes and reflection, and for excess calls to reach the
/// service and be refused with a clear status instead of queueing in the
/// client.
const TRANSPORT_STREAM_HEADROOM: u32 = 32;

/// Serves [`routes`] on `listener` until `shutdown` resolves, then stops
/// accepting, ends open subscriptions and waits for in-flight calls.
pub async fn serve(
    store: SharedStore,
    cfg: ServiceConfig,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), tonic::transport::Error> {
    let stop = Arc::new(watch::channel(false).0);
    let (reporter, health) = tonic_health::server::health_reporter();
    // Report the named service before the first connection, so probes never
    // see it missing.
    set_health(&reporter, store.health_check().await.is_ok()).await;
    tokio::spawn(poll_health(
        Arc::downgrade(&store),
        reporter,
        cfg.health_poll_interval,
    ));
    let transport_streams = cfg
        .max_concurrent_streams
        .map(|n| n.saturating_add(TRANSPORT_STREAM_HEADROOM));
    let tls = cfg.tls.clone();
    let routes = assemble(store, cfg, stop.clone(), health);
    let incoming = TcpListenerStream::new(listener).map(|conn| {
        // Small unary replies must not wait on Nagle's algorithm.
        conn.inspect(|s| {
            let _ = s.set_nodelay(true);
        })
    });
    let mut builder = tonic::transport::Server::builder().max_concurrent_streams(transport_streams);
    if let Some(tls) = &tls {
        builder = builder.tls_config(tls.server_config())?;
    }
    builder
        .add_routes(routes)
        .serve_with_incoming_shutdown(incoming, async move {
            shutdown.await;
            // Open subscriptions would otherwise hold the graceful drain forever.
            stop.send_replace(true);
        })
        .await
}

fn assemble(
    store: SharedStore,
    cfg: ServiceConfig,
    stop: Arc<watch::Sender<bool>>,
    health: tonic_health::pb::health_server::HealthServer<
        impl tonic_health::pb::health_server::Health,
    >,
) -> Routes {
    let max = cfg.max_message_bytes;
    let policy = security::Policy {
        write_token: cfg.write_token.clone().filter(|t| !t.is_empty()),
        read_token: cfg.read_token.clone().filter(|t| !t.is_empty()),
        max_request_timeout: cfg.max_request_timeout,
        max_streams_per_connection: cfg.max_concurrent_streams,
    };
    // Subscriptions are served with pre-encoded, shared messages (raw.rs).
    let svc = raw::SubscribeRoute::new(MarginOfferGrpc::with_stop(store, cfg, stop), max);
    // Auth and the deadline ceiling wrap this service only: health and
    // reflection stay open to probes.
    let svc = security::Guard::new(svc, policy);
    let mut routes = Routes::new(svc).add_service(health);
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    match reflection().build_v1() {
        Ok(v1) => routes = routes.add_service(v1),
        Err(e) => tracing::error!("reflection v1 unavailable: {e}"),
    }
    match reflection().build_v1alpha() {
        Ok(v1alpha) => routes = routes.add_service(v1alpha),
        Err(e) => tracing::error!("reflection v1alpha unavailable: {e}"),
    }
    routes
}

async fn set_health(reporter: &HealthReporter, ok: bool) {
    let status = if ok {
        ServingStatus::Serving
    } else {
        ServingStatus::NotServing
    };
    reporter.set_service_status("", status).await;
    reporter.set_service_status(SERVICE_NAME, status).await;
}

/// Follows the store's health; a `Weak` so the task ends with the store.
async fn poll_health(
    store: Weak<dyn offer_store::MarginOfferStore>,
    reporter: HealthReporter,
    every: Duration,
) {
    let mut last = None;
    loop {
        let Some(s) = store.upgrade() else { return };
        let ok = s.health_check().await.is_ok();
        drop(s);
        if last != Some(ok) {
            if !ok {
                tracing::warn!("store health check failed; reporting NOT_SERVING");
            }
            set_health(&reporter, ok).await;
            last = Some(ok);
        }
        tokio::time::sleep(every).await;
    }
}
