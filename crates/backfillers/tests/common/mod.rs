//! Real processes for the end-to-end tests: the `store` binary, the
//! `backfillers` binary, and an HTTP feed of the test's own.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use axum::Router;
use axum::extract::{Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use offer_domain::OverwriteFilter;
use offer_store::MarginOfferStore;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use store_client::GrpcStore;
pub use store_testkit::Lines;
use store_testkit::StoreProcess;

pub const BACKFILLERS: &str = env!("CARGO_BIN_EXE_backfillers");

/// Variables of the `backfillers` binary a developer's shell may set.
const ENV_VARS: &[&str] = &[
    "STORE_ADDR",
    "BACKFILL_CONFIG",
    "BACKFILL_JOBS",
    "BACKFILL_MAX_CONCURRENT_JOBS",
    "BACKFILL_GRACE_PERIOD",
    "CHAIN_ENDPOINT",
    "METRICS_ADDR",
    "LOG_FORMAT",
    "LOG_LEVEL",
    "RUST_LOG",
];

fn clean(cmd: &mut Command) -> &mut Command {
    for v in ENV_VARS {
        cmd.env_remove(v);
    }
    cmd
}

/// A running `store` on SQLite.
pub struct Store {
    process: StoreProcess,
    pub grpc: SocketAddr,
    pub db: PathBuf,
}

impl Store {
    /// Starts on `port` (0: any free port) over the database file `db`.
    pub fn start(db: &Path, port: u16) -> Store {
        let process = StoreProcess::start_sqlite(db, port);
        Store {
            grpc: process.grpc,
            process,
            db: db.to_path_buf(),
        }
    }

    pub fn addr(&self) -> String {
        self.process.addr()
    }

    pub async fn client(&self) -> GrpcStore {
        GrpcStore::connect(&self.addr()).await.unwrap()
    }

    /// SIGKILL.
    pub fn kill9(&mut self) {
        self.process.kill9();
    }
}

/// What a `--run-once` run returned.
#[derive(Debug)]
pub struct Ran {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    pub took: Duration,
}

pub fn backfillers() -> tokio::process::Command {
    let mut cmd = Command::new(BACKFILLERS);
    clean(&mut cmd).env("LOG_LEVEL", "info");
    tokio::process::Command::from(cmd)
}

pub async fn run_backfillers(args: &[&str]) -> Ran {
    let t = Instant::now();
    let out = backfillers()
        .args(args)
        .stdin(Stdio::null())
        .output()
        .await
        .expect("run backfillers");
    Ran {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        took: t.elapsed(),
    }
}

/// A running `backfillers` (continuous mode) with its output collected.
pub struct Daemon {
    pub child: Child,
    pub logs: Lines,
}

impl Daemon {
    pub fn start(args: &[&str]) -> Daemon {
        let mut cmd = Command::new(BACKFILLERS);
        clean(&mut cmd)
            .env("LOG_LEVEL", "info")
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn backfillers");
        let logs = Lines::default();
        logs.follow(child.stdout.take().unwrap(), None);
        logs.follow(child.stderr.take().unwrap(), None);
        Daemon { child, logs }
    }

    /// SIGTERM, then the exit status within `timeout`.
    pub async fn terminate(&mut self, timeout: Duration) -> Option<i32> {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s.code();
            }
            assert!(Instant::now() < deadline, "backfillers did not exit");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One offer as a partner feed serves it.
pub fn offer_json(id: &str, rate: f64) -> Value {
    json!({
        "id": id, "offer_type": "V1", "collateral_token": "SOL", "borrow_token": "USDC",
        "available_borrow_amount": 1000.0, "max_open_ltv": 0.5, "liquidation_ltv": 0.8,
        "interest_rate": rate, "interest_model": "fixed", "liquidity_source": "partner"
    })
}

/// The feed's state: the offers, how many per page, and an optional gate
/// the first request waits on (to hold a run in its fetch).
#[derive(Default)]
pub struct FeedState {
    pub offers: Mutex<Vec<Value>>,
    pub page_size: Mutex<usize>,
    pub requests: Mutex<usize>,
    pub gate: Mutex<Option<tokio::sync::oneshot::Receiver<()>>>,
}

#[derive(Clone)]
pub struct Feed {
    pub state: Arc<FeedState>,
    pub url: String,
}

impl Feed {
    pub async fn start(offers: Vec<Value>, page_size: usize) -> Feed {
        let state = Arc::new(FeedState::default());
        *state.offers.lock().unwrap() = offers;
        *state.page_size.lock().unwrap() = page_size.max(1);
        let app = Router::new()
            .route("/offers", get(page))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        Feed {
            state,
            url: format!("http://{addr}/offers"),
        }
    }

    pub fn set(&self, offers: Vec<Value>) {
        *self.state.offers.lock().unwrap() = offers;
    }

    /// The next request waits until the returned sender fires (or drops).
    pub fn hold_next(&self) -> tokio::sync::oneshot::Sender<()> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        *self.state.gate.lock().unwrap() = Some(rx);
        tx
    }

    pub fn requests(&self) -> usize {
        *self.state.requests.lock().unwrap()
    }
}

/// Pages of `page_size` offers chained by an opaque `next` cursor.
async fn page(State(s): State<Arc<FeedState>>, q: Query<HashMap<String, String>>) -> Response {
    *s.requests.lock().unwrap() += 1;
    let gate = s.gate.lock().unwrap().take();
    if let Some(g) = gate {
        let _ = g.await;
    }
    let from: usize = q.get("cursor").and_then(|c| c.parse().ok()).unwrap_or(0);
    let size = *s.page_size.lock().unwrap();
    let offers = s.offers.lock().unwrap().clone();
    let to = (from + size).min(offers.len());
    let next = (to < offers.len()).then(|| to.to_string());
    let body = json!({ "offers": offers[from.min(to)..to], "next": next });
    (
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

/// A job file with one off-chain job over `url`.
pub fn job_file(dir: &Path, name: &str, url: &str, batch_size: usize) -> PathBuf {
    let path = dir.join(format!("{name}.json"));
    let cfg = json!({
        "default_interval": "1h",
        "jobs": [{
            "name": name,
            "enabled": true,
            "request": {
                "source": "off-chain",
                "batch_size": batch_size,
                "off_chain_params": { "api_endpoint": url }
            },
            "max_retries": 5,
            "timeout": "5m"
        }]
    });
    std::fs::write(&path, cfg.to_string()).unwrap();
    path
}

/// The ids the store holds in scope `source`, sorted.
pub async fn scope_ids(store: &GrpcStore, source: &str) -> Vec<String> {
    let mut ids = store
        .overwrite_preview(Some(&OverwriteFilter::source(source.to_owned())))
        .await
        .unwrap();
    ids.sort();
    ids
}
