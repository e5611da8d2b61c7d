//! `backfillers`: runs the backfill jobs of `backfiller.md` against a store
//! reached over gRPC.
//!
//! `main.rs` only parses flags and turns [`Failure`]s into one stderr line
//! and an exit code; everything else is here:
//! - [`cli`]: flags and environment variables;
//! - [`register_sources`]: which liquidity source serves each job kind;
//! - [`writer`]: the streamed, atomic gRPC overwrite plugged into the engine;
//! - [`http`]: `/metrics` and `/status`;
//! - [`console`]: progress bars and the per-job summary of `--run-once`.
//!
//! Exit codes: 0 success, 1 a job failed (or a runtime failure), 2 bad flags
//! or configuration, 3 store unreachable at start-up.

pub mod cli;
pub mod console;
pub mod http;
pub mod writer;

use crate::cli::{Cli, LogFormat};
use backfill::config::process_env;
use backfill::sources::OffChainSource;
use backfill::{
    BackfillConfig, BackfillOptions, Backfiller, CancellationToken, JobSpec, SourceKind,
    SourceRegistry,
};
use offer_store::{MarginOfferStore, SharedStore};
use std::io::IsTerminal;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use store_client::GrpcStore;

pub const EXIT_JOB_FAILED: u8 = 1;
pub const EXIT_CONFIG: u8 = 2;
pub const EXIT_UNREACHABLE: u8 = 3;

/// How often continuous mode probes the store, so a lost connection and
/// its return are logged (and the gauge follows) even between runs.
const HEALTH_PROBE_INTERVAL: Duration = Duration::from_secs(5);

/// A fatal error: one line for stderr and the exit code.
#[derive(Debug)]
pub struct Failure {
    pub code: u8,
    pub message: String,
}

impl Failure {
    fn new(code: u8, message: impl Into<String>) -> Self {
        Failure {
            code,
            // One line, whatever the cause chain looked like.
            message: message.into().replace('\n', " "),
        }
    }
}

/// The whole program after flag parsing; returns the exit code.
pub fn run(cli: Cli) -> Result<u8, Failure> {
    // Bars only for a person watching a run-once; logs otherwise.
    let bars =
        (cli.run_once && cli.log_format == LogFormat::Text && std::io::stdout().is_terminal())
            .then(indicatif::MultiProgress::new);
    init_logging(cli.log_format, cli.log_level.as_deref(), bars.clone())?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::new(1, format!("cannot start the async runtime: {e}")))?;
    runtime.block_on(run_async(cli, bars))
}

/// Installs the global tracing subscriber on stdout (stderr is kept for the
/// one-line fatal error). Filter: `--log-level`/`LOG_LEVEL`, else
/// `RUST_LOG`, else `info`.
pub fn init_logging(
    format: LogFormat,
    level: Option<&str>,
    bars: Option<indicatif::MultiProgress>,
) -> Result<(), Failure> {
    use service_kit::logging;
    let filter =
        logging::log_filter(level).map_err(|e| Failure::new(EXIT_CONFIG, e.to_string()))?;
    match (format, bars) {
        (LogFormat::Text, Some(bars)) => {
            logging::init_logging(format, filter, console::BarsWriter::new(bars));
        }
        _ => logging::init_logging(format, filter, std::io::stdout),
    }
    Ok(())
}

/// The registration point of the liquidity sources: one per job kind.
/// The chain source reads Solana JSON-RPC at `cli.chain_endpoint`; a job
/// whose kind has no source fails its runs with a message saying so.
pub fn register_sources(registry: &mut SourceRegistry, cli: &Cli) -> Result<(), String> {
    let off_chain = OffChainSource::new().map_err(|e| e.to_string())?;
    registry.register(SourceKind::OffChain, Arc::new(off_chain));
    registry.register(
        SourceKind::Glacier,
        Arc::new(backfill::sources::ArchiveSource::new()),
    );
    let chain = backfill::sources::ChainSource::new(
        cli.chain_endpoint.as_str(),
        backfill::sources::ChainOptions::default(),
    )
    .map_err(|e| format!("--chain-endpoint: {e}"))?;
    registry.register(SourceKind::Chain, Arc::new(chain));
    Ok(())
}

/// The engine settings the flags describe.
pub fn options(cli: &Cli) -> BackfillOptions {
    BackfillOptions {
        max_concurrent: cli.max_concurrent_jobs as usize,
        force: cli.force,
        dry_run: cli.dry_run,
        window: Duration::from_secs(u64::from(cli.hours) * 3600),
        grace_period: cli.grace_period,
        origin: "backfillers".into(),
        ..BackfillOptions::default()
    }
}

async fn run_async(cli: Cli, bars: Option<indicatif::MultiProgress>) -> Result<u8, Failure> {
    let config = BackfillConfig::load_with_env(cli.config.as_deref(), &process_env)
        .map_err(|e| Failure::new(EXIT_CONFIG, format!("configuration: {e}")))?;
    let kind = cli.source.0;
    let jobs: Vec<JobSpec> = if cli.run_once {
        config.selected(kind)
    } else {
        // Disabled jobs are kept so /status lists them.
        config
            .jobs
            .iter()
            .filter(|j| kind.is_none_or(|k| j.source == k))
            .cloned()
            .collect()
    };
    let mut registry = SourceRegistry::new();
    register_sources(&mut registry, &cli).map_err(|e| Failure::new(1, e))?;
    for j in jobs.iter().filter(|j| j.enabled) {
        if registry.get(j.source).is_none() {
            tracing::warn!(job = %j.name, source = %j.source, "no source of this kind in this build: the job's runs will fail");
        }
    }

    let store = GrpcStore::connect_from_env(&cli.store_addr)
        .await
        .map_err(|e| Failure::new(EXIT_CONFIG, format!("--store-addr: {e}")))?;
    check_store(&store, &cli.store_addr, cli.connect_timeout).await?;

    let metrics = http::install_metrics()
        .map_err(|e| Failure::new(1, format!("cannot set up metrics: {e}")))?;
    let backfiller = Backfiller::new(
        Arc::new(store.clone()) as SharedStore,
        registry,
        options(&cli),
    )
    .with_writer(Arc::new(writer::GrpcStreamWriter::new(store.clone())));
    backfiller.register_jobs(&jobs);

    let metrics_addr = match (cli.metrics_addr, cli.run_once) {
        (Some(a), _) => Some(a),
        (None, false) => Some(
            cli::parse_listen_addr(cli::DEFAULT_METRICS_ADDR).map_err(|e| Failure::new(1, e))?,
        ),
        (None, true) => None,
    };
    if let Some(addr) = metrics_addr {
        serve_http(addr, http::router(metrics, backfiller.status())).await?;
    }

    let shutdown = CancellationToken::new();
    spawn_signal_handler(shutdown.clone())?;

    if cli.run_once {
        if jobs.is_empty() {
            tracing::warn!("no enabled job matches the selection: nothing to run");
            return Ok(0);
        }
        let shown = bars.map(|m| {
            let b = console::start_bars(&m, &jobs, backfiller.status());
            (m, b)
        });
        let results = backfiller.run_once(&jobs, &shutdown).await;
        let lines: Vec<String> = results.iter().map(console::summary).collect();
        match shown {
            Some((m, b)) => {
                b.finish(&results);
                for l in &lines {
                    let _ = m.println(l);
                }
            }
            None => lines.iter().for_each(|l| println!("{l}")),
        }
        let ok = results.iter().all(|r| r.succeeded());
        return Ok(if ok { 0 } else { EXIT_JOB_FAILED });
    }

    let probe = {
        let store = store.clone();
        let stop = shutdown.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(HEALTH_PROBE_INTERVAL);
            loop {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tick.tick() => {}
                }
                // The client logs loss and return itself; nothing to add.
                let _ = store.health_check().await;
            }
        })
    };
    tracing::info!(
        jobs = jobs.iter().filter(|j| j.enabled).count(),
        store = %cli.store_addr,
        "continuous mode: running jobs on their schedules until SIGINT/SIGTERM"
    );
    Arc::new(backfiller)
        .run_continuous(jobs, config.default_interval, shutdown)
        .await;
    probe.abort();
    tracing::info!("shutdown complete");
    Ok(0)
}

/// The start-up health check: retried until `timeout`, since the store may
/// be starting alongside us; then one line naming the address and cause.
async fn check_store(store: &GrpcStore, addr: &str, timeout: Duration) -> Result<(), Failure> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut last = None;
    loop {
        match tokio::time::timeout_at(deadline, store.health_check()).await {
            Ok(Ok(())) => return Ok(()),
            Ok(Err(e)) => last = Some(e.to_string()),
            Err(_) => break,
        }
        let pause = tokio::time::Instant::now() + Duration::from_millis(250);
        if pause >= deadline {
            break;
        }
        tokio::time::sleep_until(pause).await;
    }
    let cause = last.unwrap_or_else(|| "no answer".to_owned());
    Err(Failure::new(
        EXIT_UNREACHABLE,
        format!(
            "store at {addr} unreachable (health check failed within {}): {cause}",
            humantime::format_duration(timeout)
        ),
    ))
}

async fn serve_http(addr: SocketAddr, app: axum::Router) -> Result<(), Failure> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| Failure::new(1, format!("cannot listen on metrics address {addr}: {e}")))?;
    let local = listener.local_addr().unwrap_or(addr);
    tracing::info!("metrics listening on {local}");
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "metrics server stopped");
        }
    });
    Ok(())
}

/// Cancels `token` on the first SIGINT or SIGTERM.
fn spawn_signal_handler(token: CancellationToken) -> Result<(), Failure> {
    use tokio::signal::unix::{SignalKind, signal};
    let sig =
        |k| signal(k).map_err(|e| Failure::new(1, format!("cannot install signal handler: {e}")));
    let mut term = sig(SignalKind::terminate())?;
    let mut int = sig(SignalKind::interrupt())?;
    tokio::spawn(async move {
        let name = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        };
        tracing::info!(signal = name, "shutdown requested: no new runs");
        token.cancel();
    });
    Ok(())
}
