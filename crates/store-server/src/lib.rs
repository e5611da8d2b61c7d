//! The `store` server: flags, database selection, the gRPC service, HTTP
//! health and metrics, and graceful shutdown.
//!
//! `main.rs` only parses flags, sets up logging and metrics, and calls
//! [`run`]; everything here is usable from tests in-process.
//!
//! Shutdown order on SIGINT/SIGTERM: both listeners stop accepting, in-flight
//! calls finish (bounded by `--shutdown-timeout`), then the store is closed so
//! the database is left clean.

pub mod allocator;
pub mod archive;
pub mod cli;
pub mod database;
pub mod http;

use crate::cli::{Cli, LogFormat};
use metrics_exporter_prometheus::PrometheusHandle;
use offer_store::SharedStore;
use std::future::{Future, IntoFuture};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;

pub use cli::DatabaseUrl;
pub use database::{BackendOptions, ChangeLogWindow, open_store, open_store_with};

/// Why the server could not start or stopped badly. Every message is one line.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Database(String),
    #[error("cannot listen on {what} address {addr}: {error}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        error: std::io::Error,
    },
    #[error(transparent)]
    LogFilter(#[from] service_kit::logging::LogFilterError),
    #[error("cannot set up metrics: {0}")]
    Metrics(String),
    #[error("gRPC server failed: {0}")]
    Grpc(String),
    #[error("HTTP server failed: {0}")]
    Http(String),
    #[error("closing the store failed: {0}")]
    Close(String),
    #[error("cannot install signal handler: {0}")]
    Signal(std::io::Error),
    #[error("{0}")]
    Archive(String),
    #[error("{0}")]
    Security(String),
}

/// Installs the global tracing subscriber, writing to stdout (stderr is kept
/// for the one-line fatal error). Filter: `--log-level`/`LOG_LEVEL`, else
/// `RUST_LOG`, else `info`.
pub fn init_logging(format: LogFormat, level: Option<&str>) -> Result<(), Error> {
    let filter = service_kit::logging::log_filter(level)?;
    service_kit::logging::init_logging(format, filter, std::io::stdout);
    Ok(())
}

/// Resolves on the first SIGINT (Ctrl-C) or SIGTERM.
pub fn shutdown_signal() -> Result<impl Future<Output = ()> + Send + 'static, Error> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).map_err(Error::Signal)?;
    let mut int = signal(SignalKind::interrupt()).map_err(Error::Signal)?;
    Ok(async move {
        let name = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        };
        tracing::info!(signal = name, "shutdown requested");
    })
}

/// Bound listeners, so callers (and tests) learn the real ports before serving.
pub struct Listeners {
    pub grpc: TcpListener,
    pub http: TcpListener,
}

impl Listeners {
    pub async fn bind(grpc: SocketAddr, http: SocketAddr) -> Result<Listeners, Error> {
        let bind = |what, addr| async move {
            TcpListener::bind(addr)
                .await
                .map_err(|error| Error::Bind { what, addr, error })
        };
        Ok(Listeners {
            grpc: bind("gRPC", grpc).await?,
            http: bind("HTTP", http).await?,
        })
    }
}

/// The service configuration the flags describe; reads the token and TLS
/// files, so a missing or empty one stops start-up.
pub fn service_config(cli: &Cli) -> Result<store_service::ServiceConfig, Error> {
    let mut cfg = store_service::ServiceConfig {
        version: env!("CARGO_PKG_VERSION").to_owned(),
        ..Default::default()
    };
    cfg.max_bulk_items = cli.max_bulk_items as usize;
    cfg.heartbeat_interval = cli.heartbeat;
    cfg.max_subscribers = cli.max_subscribers as usize;
    if let Some(bytes) = cli.max_message_bytes {
        cfg.max_message_bytes = bytes as usize;
    }
    cfg.write_token = token(
        cli.write_token.as_ref(),
        cli.write_token_file.as_deref(),
        "write",
    )?;
    cfg.read_token = token(
        cli.read_token.as_ref(),
        cli.read_token_file.as_deref(),
        "read",
    )?;
    cfg.max_concurrent_streams = cli.max_concurrent_streams;
    cfg.max_request_timeout = cli.max_request_timeout;
    if let (Some(cert), Some(key)) = (&cli.tls_cert, &cli.tls_key) {
        cfg.tls = Some(store_service::TlsConfig {
            cert_pem: read_pem(cert, "--tls-cert")?,
            key_pem: read_pem(key, "--tls-key")?,
            client_ca_pem: cli
                .tls_client_ca
                .as_deref()
                .map(|p| read_pem(p, "--tls-client-ca"))
                .transpose()?,
        });
    }
    Ok(cfg)
}

fn token(
    flag: Option<&store_service::Secret>,
    file: Option<&std::path::Path>,
    which: &str,
) -> Result<Option<store_service::Secret>, Error> {
    let Some(path) = file else {
        return Ok(flag.cloned());
    };
    let secret = store_service::Secret::from_file(path).map_err(|e| {
        Error::Security(format!(
            "cannot read the {which} token file {}: {e}",
            path.display()
        ))
    })?;
    if secret.is_empty() {
        return Err(Error::Security(format!(
            "the {which} token file {} is empty",
            path.display()
        )));
    }
    Ok(Some(secret))
}

fn read_pem(path: &std::path::Path, flag: &str) -> Result<Vec<u8>, Error> {
    std::fs::read(path)
        .map_err(|e| Error::Security(format!("cannot read {flag} {}: {e}", path.display())))
}

/// Opens the database, binds both ports and serves until `shutdown`
/// resolves; then drains, closes the store and returns.
pub async fn run(
    cli: &Cli,
    metrics: PrometheusHandle,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    if let Some(url) = &cli.archive_url {
        archive::check_url(url).map_err(Error::Archive)?;
    }
    // Before opening the database: a bad token or TLS file fails fast.
    let svc_cfg = service_config(cli)?;
    tracing::info!(database = %cli.database_url, "opening store");
    let backend = BackendOptions {
        postgres: store_postgres::PgOptions {
            pool_size: cli.pg_pool_size as usize,
            statement_timeout: cli.pg_statement_timeout,
            serialization_retries: cli.pg_serialization_retries,
            ..Default::default()
        },
        change_log: ChangeLogWindow {
            retention: usize::try_from(cli.change_log_retention).unwrap_or(usize::MAX),
            min_age: cli.change_log_min_age,
        },
    };
    let store = open_store_with(&cli.database_url, &backend).await?;
    let listeners = match Listeners::bind(cli.addr, cli.http_addr).await {
        Ok(l) => l,
        Err(e) => {
            close_store(&store).await?;
            return Err(e);
        }
    };
    let archiver = cli
        .archive_url
        .clone()
        .map(|url| archive::spawn(store.clone(), url, cli.archive_every));
    // Stop exporting as soon as shutdown starts, before the store is closed.
    let abort = archiver.as_ref().map(|h| h.abort_handle());
    let shutdown = async move {
        shutdown.await;
        if let Some(a) = abort {
            a.abort();
        }
    };
    let res = serve(
        store,
        svc_cfg,
        listeners,
        metrics,
        shutdown,
        Duration::from_secs(cli.shutdown_timeout),
    )
    .await;
    if let Some(h) = archiver {
        h.abort();
    }
    res
}

/// Serves gRPC and HTTP on `listeners` until `shutdown`, then closes `store`.
pub async fn serve(
    store: SharedStore,
    cfg: store_service::ServiceConfig,
    listeners: Listeners,
    metrics: PrometheusHandle,
    shutdown: impl Future<Output = ()> + Send + 'static,
    grace: Duration,
) -> Result<(), Error> {
    let grpc_addr = listeners
        .grpc
        .local_addr()
        .map_err(|e| Error::Grpc(e.to_string()))?;
    let http_addr = listeners
        .http
        .local_addr()
        .map_err(|e| Error::Http(e.to_string()))?;

    // Upkeep drains the histograms' internal buffers between scrapes.
    let upkeep = {
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(5));
            loop {
                tick.tick().await;
                metrics.run_upkeep();
            }
        })
    };

    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = move || {
        let mut rx = stop_rx.clone();
        async move {
            // An error means the sender is gone: stop as well.
            let _ = rx.wait_for(|stop| *stop).await;
        }
    };

    let grpc = store_service::serve(store.clone(), cfg, listeners.grpc, stopped());
    let http = axum::serve(listeners.http, http::router(store.clone(), metrics))
        .with_graceful_shutdown(stopped())
        .into_future();
    tracing::info!("grpc listening on {grpc_addr}");
    tracing::info!("http listening on {http_addr}");

    // If one server stops on its own (an error), the other drains as well.
    let stop_tx = &stop_tx;
    let grpc = async move {
        let res = grpc.await;
        stop_tx.send_replace(true);
        res
    };
    let http = async move {
        let res = http.await;
        stop_tx.send_replace(true);
        res
    };
    let servers = async { tokio::join!(grpc, http) };
    tokio::pin!(servers);
    let (grpc_res, http_res) = tokio::select! {
        res = &mut servers => {
            tracing::error!("a server stopped before shutdown was requested");
            res
        }
        () = shutdown => {
            stop_tx.send_replace(true);
            tracing::info!("no longer accepting connections; finishing in-flight calls");
            match tokio::time::timeout(grace, &mut servers).await {
                Ok(res) => {
                    tracing::info!("in-flight calls finished");
                    res
                }
                Err(_) => {
                    tracing::warn!(
                        grace_secs = grace.as_secs(),
                        "in-flight calls still running after the grace period; dropping them"
                    );
                    (Ok(()), Ok(()))
                }
            }
        }
    };
    upkeep.abort();

    close_store(&store).await?;
    grpc_res.map_err(|e| Error::Grpc(e.to_string()))?;
    http_res.map_err(|e| Error::Http(e.to_string()))?;
    tracing::info!("shutdown complete");
    Ok(())
}

async fn close_store(store: &SharedStore) -> Result<(), Error> {
    tracing::info!("closing store");
    store
        .close()
        .await
        .map_err(|e| Error::Close(e.to_string()))?;
    tracing::info!("store closed");
    Ok(())
}
