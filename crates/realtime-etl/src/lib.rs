//! `realtime-etl`: follows the Lavarage and marginfi programs over the Solana
//! websocket API and keeps their offers in the store live.
//!
//! Parts:
//! - `ws`: the pubsub protocol (subscribe requests, notification parsing).
//! - `state`: decoded accounts per program and the offers last written, so a
//!   change becomes the smallest write.
//! - here: the websocket session loop (reconnect with backoff, resubscribe),
//!   the processor (coalescing window, lookups, writes, resyncs), metrics.
//!
//! Resync: after every (re)subscribe the program's accounts are re-read with
//! `getProgramAccounts` (same filters) and applied as ONE scoped overwrite of
//! its backfill scope. Chosen over diffing against a store listing because
//! the store computes the diff atomically (unchanged offers emit no change),
//! deletes offers whose accounts closed during the gap, and it is exactly
//! what the backfiller would do, without depending on its engine.

pub mod cli;
pub mod state;
pub mod ws;

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures::{SinkExt as _, StreamExt as _};
use offer_domain::{
    BulkDeleteOptions, BulkUpsertOptions, OverwriteFilter, OverwriteRequest, WriteContext,
};
use offer_store::MarginOfferStore;
use solana_sources::lavarage::Version;
use solana_sources::marginfi;
use solana_sources::rpc::{Account, RpcClient, RpcOptions};
use solana_sources::{Pubkey, rpc::RpcError};
use store_client::GrpcStore;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message as WsMessage;

use crate::state::{Plan, State, subscriptions};

/// Write origin of every ETL write (`x-change-source`).
pub const ORIGIN: &str = "etl";

/// A program the ETL follows; its scope tag is the backfiller's.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Program {
    LavarageV1,
    LavarageV2,
    Marginfi,
}

impl Program {
    /// The backfiller's names (`backfiller.md`) and the program ids.
    pub fn parse(name: &str) -> Option<Self> {
        let v1 = Version::V1.program_id().to_string();
        let v2 = Version::V2.program_id().to_string();
        let mfi = marginfi::PROGRAM_ID.to_string();
        match name {
            "leverage" | "lavarage" | "lavarage-v1" => Some(Program::LavarageV1),
            "lavarage-v2" => Some(Program::LavarageV2),
            "marginfi" => Some(Program::Marginfi),
            n if n == v1 => Some(Program::LavarageV1),
            n if n == v2 => Some(Program::LavarageV2),
            n if n == mfi => Some(Program::Marginfi),
            _ => None,
        }
    }

    pub fn program_id(self) -> Pubkey {
        match self {
            Program::LavarageV1 => Version::V1.program_id(),
            Program::LavarageV2 => Version::V2.program_id(),
            Program::Marginfi => marginfi::PROGRAM_ID,
        }
    }

    /// The offers' `source`, and so the backfill scope.
    pub fn source_tag(self) -> &'static str {
        match self {
            Program::LavarageV1 => Version::V1.source_tag(),
            Program::LavarageV2 => Version::V2.source_tag(),
            Program::Marginfi => marginfi::SOURCE_TAG,
        }
    }
}

/// Which accounts a subscription follows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    Pool,
    NodeWallet,
    Bank,
}

#[derive(Clone, Debug)]
pub struct Config {
    pub store_addr: String,
    pub ws_endpoint: String,
    pub rpc_endpoint: String,
    pub programs: Vec<Program>,
    pub marginfi_group: Pubkey,
    /// Notifications of one account within a window cost one write.
    pub coalesce_window: Duration,
    pub reconnect_initial: Duration,
    pub reconnect_max: Duration,
}

impl Config {
    pub fn new(store_addr: &str, ws_endpoint: &str, rpc_endpoint: &str) -> Self {
        Config {
            store_addr: store_addr.to_owned(),
            ws_endpoint: ws_endpoint.to_owned(),
            rpc_endpoint: rpc_endpoint.to_owned(),
            programs: vec![Program::LavarageV1, Program::LavarageV2, Program::Marginfi],
            marginfi_group: marginfi::MAIN_GROUP,
            coalesce_window: Duration::from_millis(250),
            reconnect_initial: Duration::from_millis(250),
            reconnect_max: Duration::from_secs(30),
        }
    }
}

/// Counters mirrored from the metrics, readable in-process (tests, `/healthz`).
#[derive(Debug, Default)]
pub struct Stats {
    pub received: AtomicU64,
    pub decoded: AtomicU64,
    pub malformed: AtomicU64,
    pub upserted: AtomicU64,
    pub deleted: AtomicU64,
    pub write_calls: AtomicU64,
    pub connects: AtomicU64,
    pub subscribes: AtomicU64,
    pub resyncs: AtomicU64,
    pub connected: AtomicBool,
}

fn get(c: &AtomicU64) -> u64 {
    c.load(Ordering::Relaxed)
}

impl Stats {
    pub fn snapshot(&self) -> String {
        format!(
            "received={} decoded={} malformed={} upserted={} deleted={} write_calls={} connects={} subscribes={} resyncs={}",
            get(&self.received),
            get(&self.decoded),
            get(&self.malformed),
            get(&self.upserted),
            get(&self.deleted),
            get(&self.write_calls),
            get(&self.connects),
            get(&self.subscribes),
            get(&self.resyncs),
        )
    }
}

fn bump(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

/// Counts a notification (or account) that produced no write, by reason.
pub fn dropped(program: Program, reason: &'static str) {
    dropped_label(program.source_tag(), reason);
}

fn dropped_label(program: &'static str, reason: &'static str) {
    metrics::counter!("etl_notifications_dropped_total", "program" => program, "reason" => reason)
        .increment(1);
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("bad --rpc-endpoint: {0}")]
    Rpc(#[from] RpcError),
    #[error("cannot connect to the store at {addr}: {message}")]
    Store { addr: String, message: String },
}

enum Event {
    Update {
        program: Program,
        kind: Kind,
        key: Pubkey,
        account: Account,
        slot: u64,
        received: Instant,
    },
    /// The subscriptions of a program are (re)established.
    Resync(Program),
}

/// Runs until `shutdown` resolves; only start-up errors are returned, the
/// stream itself retries forever.
pub async fn run(
    cfg: Config,
    stats: Arc<Stats>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), Error> {
    // Both crypto backends may be compiled in; pick ring explicitly so
    // rustls never has to guess (an error means one is already installed).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let rpc = RpcClient::new(&cfg.rpc_endpoint, RpcOptions::default())?;
    let store = GrpcStore::connect_from_env(&cfg.store_addr)
        .await
        .map_err(|e| Error::Store {
            addr: cfg.store_addr.clone(),
            message: e.to_string(),
        })?
        .with_origin(ORIGIN);
    let (tx, rx) = mpsc::channel(16_384);
    let ws = tokio::spawn(ws_loop(cfg.clone(), tx, stats.clone()));
    let proc = Processor::new(&cfg, rpc, store, stats);
    tokio::select! {
        () = shutdown => {}
        () = proc.run(rx) => {}
    }
    ws.abort();
    Ok(())
}

// ---------------------------------------------------------------- websocket

async fn ws_loop(cfg: Config, tx: mpsc::Sender<Event>, stats: Arc<Stats>) {
    let mut backoff = cfg.reconnect_initial;
    loop {
        match tokio_tungstenite::connect_async(cfg.ws_endpoint.as_str()).await {
            Ok((socket, _)) => {
                bump(&stats.connects, 1);
                metrics::counter!("etl_ws_connects_total").increment(1);
                let why = session(socket, &cfg, &tx, &stats, &mut backoff).await;
                stats.connected.store(false, Ordering::Relaxed);
                metrics::gauge!("etl_ws_connected").set(0.0);
                if tx.is_closed() {
                    return;
                }
                tracing::warn!(endpoint = %cfg.ws_endpoint, "websocket dropped: {why}; reconnecting");
            }
            Err(e) => {
                tracing::warn!(endpoint = %cfg.ws_endpoint, "websocket connect failed: {e}");
            }
        }
        metrics::counter!("etl_ws_reconnects_total").increment(1);
        // Full jitter: many ETLs behind one node do not reconnect in step.
        let nanos = u64::try_from(backoff.as_nanos()).unwrap_or(u64::MAX);
        let wait = Duration::from_nanos(rand::random_range(nanos / 2..=nanos.max(1)));
        tokio::time::sleep(wait).await;
        backoff = (backoff * 2).min(cfg.reconnect_max);
    }
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// One connection: subscribe everything, then forward notifications until
/// the socket fails. Returns why it ended.
async fn session(
    socket: Socket,
    cfg: &Config,
    tx: &mpsc::Sender<Event>,
    stats: &Stats,
    backoff: &mut Duration,
) -> String {
    let (mut sink, mut stream) = socket.split();
    let mut requests: HashMap<u64, (Program, Kind)> = HashMap::new();
    let mut pending_per_program: HashMap<Program, usize> = HashMap::new();
    let mut id = 0u64;
    for &program in &cfg.programs {
        for (kind, filters) in subscriptions(program, &cfg.marginfi_group) {
            id += 1;
            let req = ws::subscribe_request(id, &program.program_id(), &filters);
            if let Err(e) = sink.send(WsMessage::text(req)).await {
                return format!("subscribe send failed: {e}");
            }
            requests.insert(id, (program, kind));
            *pending_per_program.entry(program).or_default() += 1;
        }
    }
    let mut subs: HashMap<u64, (Program, Kind)> = HashMap::new();
    let mut last_seen = Instant::now();
    let mut ping = tokio::time::interval(Duration::from_secs(15));
    ping.tick().await;
    loop {
        let msg = tokio::select! {
            m = stream.next() => m,
            _ = ping.tick() => {
                // A silent half-open connection would lose notifications
                // forever: ping, and give up when nothing came for a minute.
                if last_seen.elapsed() > Duration::from_secs(60) {
                    return "no traffic for 60 s".into();
                }
                if let Err(e) = sink.send(WsMessage::Ping(Vec::new().into())).await {
                    return format!("ping failed: {e}");
                }
                continue;
            }
        };
        last_seen = Instant::now();
        let text = match msg {
            None => return "closed by the server".into(),
            Some(Err(e)) => return format!("read failed: {e}"),
            Some(Ok(WsMessage::Text(t))) => t,
            Some(Ok(WsMessage::Close(f))) => return format!("close frame {f:?}"),
            Some(Ok(_)) => continue,
        };
        let received = Instant::now();
        match ws::parse(text.as_str()) {
            Ok(ws::Message::Subscribed {
                request,
                subscription,
            }) => {
                let Some(&(program, kind)) = requests.get(&request) else {
                    continue;
                };
                subs.insert(subscription, (program, kind));
                let left = pending_per_program.entry(program).or_default();
                *left = left.saturating_sub(1);
                if *left == 0 {
                    // Subscribed first, then resync: nothing falls between.
                    if tx.send(Event::Resync(program)).await.is_err() {
                        return "processor stopped".into();
                    }
                }
                if subs.len() == requests.len() {
                    *backoff = cfg.reconnect_initial;
                    bump(&stats.subscribes, 1);
                    stats.connected.store(true, Ordering::Relaxed);
                    metrics::gauge!("etl_ws_connected").set(1.0);
                    tracing::info!(endpoint = %cfg.ws_endpoint, subscriptions = subs.len(), "subscribed");
                }
            }
            Ok(ws::Message::Error { request, message }) => {
                // A refused subscription would silently miss a program.
                return format!("request {request:?} refused: {message}");
            }
            Ok(ws::Message::Other) => {}
            Ok(ws::Message::Notification(n)) => {
                bump(&stats.received, 1);
                let Some(&(program, kind)) = subs.get(&n.subscription) else {
                    metrics::counter!("etl_notifications_received_total", "program" => "unknown")
                        .increment(1);
                    dropped_label("unknown", "unknown_subscription");
                    continue;
                };
                metrics::counter!("etl_notifications_received_total", "program" => program.source_tag())
                    .increment(1);
                metrics::gauge!("etl_last_notification_slot", "program" => program.source_tag())
                    .set(n.slot as f64);
                let ev = Event::Update {
                    program,
                    kind,
                    key: n.pubkey,
                    account: n.account,
                    slot: n.slot,
                    received,
                };
                if tx.send(ev).await.is_err() {
                    return "processor stopped".into();
                }
            }
            Err(e) => {
                bump(&stats.received, 1);
                bump(&stats.malformed, 1);
                metrics::counter!("etl_notifications_received_total", "program" => "unknown")
                    .increment(1);
                dropped_label("unknown", "malformed");
                tracing::warn!("skipping malformed message: {e}");
            }
        }
    }
}

// ---------------------------------------------------------------- processor

struct Pending {
    kind: Kind,
    account: Account,
    slot: u64,
    /// The first notification of the window: the lag is measured from it.
    received: Instant,
}

struct Processor {
    window: Duration,
    group: Pubkey,
    rpc: RpcClient,
    store: GrpcStore,
    stats: Arc<Stats>,
    states: HashMap<Program, State>,
    pending: HashMap<(Program, Pubkey), Pending>,
    /// Programs whose last resync or write failed: retried every window.
    needs_resync: HashSet<Program>,
    max_slot: u64,
}

impl Processor {
    fn new(cfg: &Config, rpc: RpcClient, store: GrpcStore, stats: Arc<Stats>) -> Self {
        let states = cfg
            .programs
            .iter()
            .map(|&p| (p, State::new(p, cfg.marginfi_group)))
            .collect();
        Processor {
            window: cfg.coalesce_window,
            group: cfg.marginfi_group,
            rpc,
            store,
            stats,
            states,
            pending: HashMap::new(),
            needs_resync: HashSet::new(),
            max_slot: 0,
        }
    }

    async fn run(mut self, mut rx: mpsc::Receiver<Event>) {
        let mut tick = tokio::time::interval(self.window);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                ev = rx.recv() => match ev {
                    None => return,
                    Some(Event::Update { program, kind, key, account, slot, received }) => {
                        self.max_slot = self.max_slot.max(slot);
                        let first = self
                            .pending
                            .get(&(program, key))
                            .map_or(received, |p| p.received);
                        self.pending.insert(
                            (program, key),
                            Pending { kind, account, slot, received: first },
                        );
                    }
                    Some(Event::Resync(program)) => {
                        self.flush().await;
                        self.resync(program).await;
                    }
                },
                _ = tick.tick() => {
                    self.flush().await;
                    for program in std::mem::take(&mut self.needs_resync) {
                        self.resync(program).await;
                    }
                }
            }
        }
    }

    /// One write per program for everything that arrived in the window.
    async fn flush(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        let mut by_program: HashMap<Program, Vec<(Pubkey, Pending)>> = HashMap::new();
        for ((program, key), p) in self.pending.drain() {
            by_program.entry(program).or_default().push((key, p));
        }
        for (program, updates) in by_program {
            let Some(state) = self.states.get_mut(&program) else {
                continue;
            };
            for (key, p) in &updates {
                state.apply(program, p.kind, *key, &p.account);
            }
            bump(&self.stats.decoded, updates.len() as u64);
            metrics::counter!("etl_notifications_decoded_total", "program" => program.source_tag())
                .increment(updates.len() as u64);
            let plan = match state.plan(program, &self.rpc).await {
                Ok(plan) => plan,
                Err(e) => {
                    tracing::warn!(
                        program = program.source_tag(),
                        "lookups failed, will resync: {e}"
                    );
                    for _ in &updates {
                        dropped(program, "lookup_failed");
                    }
                    self.needs_resync.insert(program);
                    continue;
                }
            };
            if let Err(e) = self.write(program, plan).await {
                tracing::warn!(
                    program = program.source_tag(),
                    "store write failed, will resync: {e}"
                );
                for _ in &updates {
                    dropped(program, "write_failed");
                }
                self.needs_resync.insert(program);
                continue;
            }
            let done = Instant::now();
            for (_, p) in &updates {
                metrics::histogram!("etl_write_lag_seconds", "program" => program.source_tag())
                    .record(done.duration_since(p.received).as_secs_f64());
                metrics::histogram!("etl_write_slot_lag", "program" => program.source_tag())
                    .record(self.max_slot.saturating_sub(p.slot) as f64);
            }
            if let Some(slot) = updates.iter().map(|(_, p)| p.slot).max() {
                metrics::gauge!("etl_last_written_slot", "program" => program.source_tag())
                    .set(slot as f64);
            }
        }
    }

    async fn write(&self, program: Program, plan: Plan) -> Result<(), String> {
        if plan.is_empty() {
            return Ok(());
        }
        let ctx = WriteContext::new(ORIGIN);
        let tag = program.source_tag();
        if !plan.upserts.is_empty() {
            let n = plan.upserts.len() as u64;
            bump(&self.stats.write_calls, 1);
            let out = self
                .store
                .bulk_create_or_update(plan.upserts, BulkUpsertOptions::default(), &ctx)
                .await
                .map_err(|e| e.to_string())?;
            if out.failure_count > 0 {
                // Offers were validated when built: a refusal is unexpected.
                tracing::warn!(program = tag, failures = out.failure_count, errors = ?out.errors, "upserts refused");
                for _ in 0..out.failure_count {
                    dropped(program, "store_refused");
                }
            }
            bump(&self.stats.upserted, n);
            metrics::counter!("etl_offers_written_total", "program" => tag, "op" => "upsert")
                .increment(out.success_count as u64);
        }
        if !plan.deletes.is_empty() {
            let n = plan.deletes.len() as u64;
            bump(&self.stats.write_calls, 1);
            self.store
                .bulk_delete(
                    plan.deletes,
                    BulkDeleteOptions {
                        ignore_not_found: true,
                    },
                    &ctx,
                )
                .await
                .map_err(|e| e.to_string())?;
            bump(&self.stats.deleted, n);
            metrics::counter!("etl_offers_written_total", "program" => tag, "op" => "delete")
                .increment(n);
        }
        Ok(())
    }

    /// Re-reads the program's accounts and makes its scope equal to them.
    async fn resync(&mut self, program: Program) {
        let started = Instant::now();
        match self.fetch_state(program).await {
            Ok((mut fresh, offers_from)) => {
                let offers = match fresh.all_offers(program, &self.rpc).await {
                    Ok(o) => o,
                    Err(e) => {
                        tracing::warn!(
                            program = program.source_tag(),
                            "resync lookups failed: {e}"
                        );
                        self.needs_resync.insert(program);
                        return;
                    }
                };
                let n = offers.len();
                let req = OverwriteRequest {
                    offers,
                    filter: Some(OverwriteFilter::source(program.source_tag())),
                    validate_all: false,
                    dry_run: false,
                };
                bump(&self.stats.write_calls, 1);
                match self
                    .store
                    .overwrite_stream(req, 1_000, &WriteContext::new(ORIGIN))
                    .await
                {
                    Ok(out) => {
                        self.states.insert(program, fresh);
                        bump(&self.stats.resyncs, 1);
                        metrics::counter!("etl_resyncs_total", "program" => program.source_tag())
                            .increment(1);
                        tracing::info!(
                            program = program.source_tag(),
                            accounts = offers_from,
                            offers = n,
                            outcome = ?out,
                            elapsed_ms = started.elapsed().as_millis() as u64,
                            "resynced"
                        );
                    }
                    Err(e) => {
                        tracing::warn!(program = program.source_tag(), "resync write failed: {e}");
                        self.needs_resync.insert(program);
                    }
                }
            }
            Err(e) => {
                tracing::warn!(program = program.source_tag(), "resync read failed: {e}");
                metrics::counter!("etl_resync_failures_total", "program" => program.source_tag())
                    .increment(1);
                self.needs_resync.insert(program);
            }
        }
    }

    async fn fetch_state(&self, program: Program) -> Result<(State, usize), RpcError> {
        let mut fresh = State::new(program, self.group);
        let mut n = 0;
        for (kind, filters) in subscriptions(program, &self.group) {
            let accounts = self
                .rpc
                .get_program_accounts(&program.program_id(), &filters)
                .await?;
            n += accounts.len();
            for ka in &accounts {
                fresh.apply(program, kind, ka.pubkey, &ka.account);
            }
        }
        if let State::Marginfi(s) = &mut fresh {
            // The group's fees enter every borrow APR.
            let group = match self.rpc.get_account_info(&s.group_key()).await? {
                Some(a) => marginfi::check_marginfi_owner(&a.owner)
                    .and_then(|()| marginfi::decode_group(&a.data))
                    .ok(),
                None => None,
            };
            s.set_group(group);
        }
        Ok((fresh, n))
    }
}

// ---------------------------------------------------------------- binary

/// Installs the global tracing subscriber on stdout. Filter: `--log-level`
/// / `LOG_LEVEL`, else `RUST_LOG`, else `info`.
pub fn init_logging(format: cli::LogFormat, level: Option<&str>) -> anyhow::Result<()> {
    let filter = service_kit::logging::log_filter(level)?;
    service_kit::logging::init_logging(format, filter, std::io::stdout);
    Ok(())
}

/// Lag histogram buckets, in seconds.
const LAG_BUCKETS: &[f64] = &[
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 2.0, 5.0, 10.0, 30.0,
];

/// `/metrics` (Prometheus) and `/healthz` (200 while subscribed).
pub async fn serve_http(
    listener: tokio::net::TcpListener,
    stats: Arc<Stats>,
) -> anyhow::Result<()> {
    use axum::http::StatusCode;
    use axum::routing::get;
    use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("lag_seconds".to_owned()), LAG_BUCKETS)?
        .install_recorder()?;
    let app = axum::Router::new()
        .route("/metrics", get(move || async move { handle.render() }))
        .route(
            "/healthz",
            get(move || async move {
                if stats.connected.load(Ordering::Relaxed) {
                    (StatusCode::OK, "ok")
                } else {
                    (StatusCode::SERVICE_UNAVAILABLE, "websocket not subscribed")
                }
            }),
        );
    axum::serve(listener, app).await?;
    Ok(())
}

/// The binary: logging, `/metrics`, then [`run`] until SIGINT/SIGTERM.
pub async fn main_with(c: cli::Cli) -> anyhow::Result<()> {
    init_logging(c.log_format, c.log_level.as_deref())?;
    let stats = Arc::new(Stats::default());
    let listener = tokio::net::TcpListener::bind(c.metrics_addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", c.metrics_addr))?;
    tracing::info!("metrics listening on {}", listener.local_addr()?);
    let http = tokio::spawn(serve_http(listener, stats.clone()));
    let mut cfg = Config::new(&c.store_addr, &c.ws_endpoint, &c.rpc_endpoint);
    cfg.programs = c.programs;
    cfg.programs.sort();
    cfg.programs.dedup();
    cfg.marginfi_group = c.marginfi_group;
    let shutdown = async {
        use tokio::signal::unix::{SignalKind, signal};
        match (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) {
            (Ok(mut term), Ok(mut int)) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
            }
            _ => std::future::pending::<()>().await,
        }
        tracing::info!("shutdown requested");
    };
    let r = run(cfg, stats, shutdown).await;
    http.abort();
    Ok(r?)
}
