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
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock, mpsc};
use std::time::{Duration, Instant};
use store_client::GrpcStore;

pub const BACKFILLERS: &str = env!("CARGO_BIN_EXE_backfillers");

/// Variables of both binaries a developer's shell may set.
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
    "STORE_GRPC_ADDRESS",
    "STORE_HTTP_ADDRESS",
    "DATABASE_URL",
];

/// The `store` binary. Cargo builds binaries only for their own package's
/// tests, so it is built here (`STORE_BIN` overrides), into the target
/// directory this test runs from; store-server being a dev-dependency, that
/// is normally just a link step.
pub fn store_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(p) = std::env::var_os("STORE_BIN") {
            return PathBuf::from(p);
        }
        // .../target/<profile>/deps/<test exe>
        let exe = std::env::current_exe().unwrap();
        let profile_dir = exe.parent().unwrap().parent().unwrap().to_path_buf();
        let target_dir = profile_dir.parent().unwrap();
        let bin = profile_dir.join("store");
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.args(["build", "--quiet", "-p", "store-server", "--bin", "store"])
            .arg("--target-dir")
            .arg(target_dir)
            .current_dir(env!("CARGO_MANIFEST_DIR"));
        if profile_dir.file_name().is_some_and(|n| n == "release") {
            cmd.arg("--release");
        }
        let status = cmd.status();
        assert!(
            bin.exists(),
            "store binary missing at {} (cargo build: {status:?})",
            bin.display()
        );
        bin
    })
    .clone()
}

fn clean(cmd: &mut Command) -> &mut Command {
    for v in ENV_VARS {
        cmd.env_remove(v);
    }
    cmd
}

/// Collects a child's output lines and lets a test wait for one.
#[derive(Clone, Default)]
pub struct Lines(Arc<Mutex<Vec<String>>>);

impl Lines {
    fn follow(&self, r: impl std::io::Read + Send + 'static, tx: Option<mpsc::Sender<String>>) {
        let lines = self.0.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(r).lines().map_while(Result::ok) {
                lines.lock().unwrap().push(line.clone());
                if let Some(tx) = &tx {
                    let _ = tx.send(line);
                }
            }
        });
    }

    pub fn all(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }

    pub fn text(&self) -> String {
        self.all().join("\n")
    }

    pub fn contains(&self, needle: &str) -> bool {
        self.all().iter().any(|l| l.contains(needle))
    }

    pub async fn wait_for(&self, needle: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while !self.contains(needle) {
            assert!(
                Instant::now() < deadline,
                "no line containing {needle:?} within {timeout:?}; lines:\n{}",
                self.text()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// A running `store` on SQLite.
pub struct Store {
    child: Child,
    pub grpc: SocketAddr,
    pub db: PathBuf,
    pub logs: Lines,
}

impl Store {
    /// Starts on `port` (0: any free port) over the database file `db`.
    pub fn start(db: &Path, port: u16) -> Store {
        let mut cmd = Command::new(store_bin());
        clean(&mut cmd)
            .env("LOG_LEVEL", "info")
            .args(["--addr", &format!("127.0.0.1:{port}")])
            .args(["--http-addr", "127.0.0.1:0"])
            .args(["--database-url", &format!("sqlite://{}", db.display())])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn store");
        let logs = Lines::default();
        let (tx, rx) = mpsc::channel();
        logs.follow(child.stdout.take().unwrap(), Some(tx));
        logs.follow(child.stderr.take().unwrap(), None);
        let deadline = Instant::now() + Duration::from_secs(60);
        let grpc = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    if let Some(a) = line
                        .split("grpc listening on ")
                        .nth(1)
                        .and_then(|s| s.trim().parse().ok())
                    {
                        break a;
                    }
                }
                Err(_) => {
                    let _ = child.kill();
                    panic!("store did not start: {}", logs.text());
                }
            }
        };
        Store {
            child,
            grpc,
            db: db.to_path_buf(),
            logs,
        }
    }

    pub fn addr(&self) -> String {
        self.grpc.to_string()
    }

    pub async fn client(&self) -> GrpcStore {
        GrpcStore::connect(&self.addr()).await.unwrap()
    }

    /// SIGKILL.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        self.kill9();
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
