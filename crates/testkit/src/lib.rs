//! Dev-only helpers for end-to-end tests that run the real `store` binary:
//! finding (building) it, starting it on free loopback ports, collecting its
//! output, and stopping it; and collecting a watch over gRPC. Panics are the
//! failure reports here.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{Arc, Mutex, OnceLock, mpsc};
use std::time::{Duration, Instant};

use offer_domain::{Change, Revision};
use store_client::{GrpcStore, WatchEvent, WatchRequest};
use tokio_stream::StreamExt as _;

/// Variables of the `store` binary a developer's shell may set; removed so
/// a test runs the flags it passes and nothing else.
pub const STORE_ENV_VARS: &[&str] = &[
    "STORE_GRPC_ADDRESS",
    "STORE_HTTP_ADDRESS",
    "DATABASE_URL",
    "STORE_MAX_BULK_ITEMS",
    "STORE_MAX_MESSAGE_BYTES",
    "LOG_FORMAT",
    "LOG_LEVEL",
    "RUST_LOG",
    "STORE_SHUTDOWN_TIMEOUT",
    "STORE_PG_POOL_SIZE",
    "STORE_PG_STATEMENT_TIMEOUT",
    "STORE_ARCHIVE_URL",
    "STORE_ARCHIVE_EVERY",
];

/// How long a starting `store` may take to print its listening lines.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// The `store` binary: `$STORE_BIN`, else built with cargo into the target
/// directory the calling test runs from. Cargo builds only a package's own
/// binaries for its tests, so other packages' tests build the store here (a
/// link step at most when it is up to date).
pub fn store_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(p) = std::env::var_os("STORE_BIN") {
            return PathBuf::from(p);
        }
        // <target>/<profile>/deps/<test exe> -> <target>/<profile>
        let exe = std::env::current_exe().unwrap();
        let profile_dir = exe.parent().and_then(|d| d.parent()).unwrap().to_path_buf();
        let target_dir = profile_dir.parent().unwrap();
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.args(["build", "--quiet", "-p", "store-server", "--bin", "store"])
            .arg("--target-dir")
            .arg(target_dir)
            .current_dir(env!("CARGO_MANIFEST_DIR"));
        if profile_dir.file_name().is_some_and(|n| n == "release") {
            cmd.arg("--release");
        }
        let status = cmd.status().expect("run cargo build for the store binary");
        assert!(status.success(), "cargo build -p store-server failed");
        let bin = profile_dir.join("store");
        assert!(bin.exists(), "no store binary at {}", bin.display());
        bin
    })
    .clone()
}

/// `bin args...` with the store's variables removed and info logging.
pub fn store_command(bin: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(bin);
    for v in STORE_ENV_VARS {
        cmd.env_remove(v);
    }
    cmd.env("LOG_LEVEL", "info").args(args);
    cmd
}

/// A child's output lines, collected as they come, for a test to wait on.
#[derive(Clone, Default)]
pub struct Lines(Arc<Mutex<Vec<String>>>);

impl Lines {
    /// Reads `r` on a thread of its own, forwarding each line to `tx` too.
    pub fn follow(&self, r: impl Read + Send + 'static, tx: Option<mpsc::Sender<String>>) {
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
        self.0.lock().unwrap().iter().any(|l| l.contains(needle))
    }

    /// Waits until a line contains `needle`; panics with every line after
    /// `timeout`.
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

/// A running `store`, killed when dropped.
pub struct StoreProcess {
    child: Child,
    pub grpc: SocketAddr,
    pub http: SocketAddr,
    /// Standard output: the log lines.
    pub logs: Lines,
    pub stderr: Lines,
}

impl StoreProcess {
    /// Starts `bin args...` and waits until both its gRPC and HTTP
    /// listeners are up (the addresses come from its log lines, so
    /// `127.0.0.1:0` works).
    pub fn start(bin: &Path, args: &[&str]) -> StoreProcess {
        let mut child = store_command(bin, args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn store");
        let (logs, stderr) = (Lines::default(), Lines::default());
        let (tx, rx) = mpsc::channel();
        logs.follow(child.stdout.take().unwrap(), Some(tx));
        stderr.follow(child.stderr.take().unwrap(), None);
        let deadline = Instant::now() + START_TIMEOUT;
        let (mut grpc, mut http) = (None, None);
        while grpc.is_none() || http.is_none() {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    grpc = grpc.or_else(|| addr_after(&line, "grpc listening on "));
                    http = http.or_else(|| addr_after(&line, "http listening on "));
                }
                Err(_) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    // Let the reader threads drain the pipes.
                    std::thread::sleep(Duration::from_millis(100));
                    panic!(
                        "store did not start; stderr: {}; logs:\n{}",
                        stderr.text(),
                        logs.text()
                    );
                }
            }
        }
        StoreProcess {
            child,
            grpc: grpc.unwrap(),
            http: http.unwrap(),
            logs,
            stderr,
        }
    }

    /// [`store_bin`] over the SQLite file `db`, gRPC on `port` of loopback
    /// (0: any free port).
    pub fn start_sqlite(db: &Path, port: u16) -> StoreProcess {
        let grpc = format!("127.0.0.1:{port}");
        let url = format!("sqlite://{}", db.display());
        StoreProcess::start(
            &store_bin(),
            &[
                "--addr",
                &grpc,
                "--http-addr",
                "127.0.0.1:0",
                "--database-url",
                &url,
            ],
        )
    }

    /// The gRPC address as `host:port`.
    pub fn addr(&self) -> String {
        self.grpc.to_string()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL: no chance to flush or close anything.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends `signal` (e.g. "TERM") with kill(1) and waits for the exit:
    /// (status, log lines, stderr).
    pub fn signal_and_wait(mut self, signal: &str) -> (ExitStatus, Vec<String>, String) {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{signal} failed");
        let status = wait_timeout(&mut self.child, START_TIMEOUT)
            .expect("store did not exit after the signal");
        // Let the reader threads drain the pipes.
        std::thread::sleep(Duration::from_millis(200));
        (status, self.logs.all(), self.stderr.text())
    }
}

impl Drop for StoreProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.kill9();
        }
    }
}

/// The address printed after `marker` in a log line.
pub fn addr_after(line: &str, marker: &str) -> Option<SocketAddr> {
    let rest = &line[line.find(marker)? + marker.len()..];
    rest.split_whitespace().next()?.parse().ok()
}

/// Waits for `child` to exit; kills it and returns `None` after `timeout`.
pub fn wait_timeout(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs `cmd` to its exit with stdout and stderr captured (drained on
/// threads, so a big output cannot fill a pipe and stall the child); kills
/// it and panics after `timeout`.
pub fn output_within(cmd: &mut Command, timeout: Duration) -> Output {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    let out = child.stdout.take().unwrap();
    let err = child.stderr.take().unwrap();
    let out_t = std::thread::spawn(move || read_all(out));
    let err_t = std::thread::spawn(move || read_all(err));
    let status = wait_timeout(&mut child, timeout)
        .unwrap_or_else(|| panic!("{cmd:?} did not exit within {timeout:?}"));
    Output {
        status,
        stdout: out_t.join().unwrap(),
        stderr: err_t.join().unwrap(),
    }
}

fn read_all(mut r: impl Read) -> Vec<u8> {
    let mut v = Vec::new();
    let _ = r.read_to_end(&mut v);
    v
}

/// Collects a watch's changes until a heartbeat reaches the revision in
/// `until` (set once the writers are done); panics on a stream error or on
/// 60 s without an event.
pub async fn collect_watch(
    store: GrpcStore,
    req: WatchRequest,
    until: tokio::sync::watch::Receiver<Option<Revision>>,
) -> Vec<Change> {
    let mut s = store.watch(req);
    let mut out = Vec::new();
    loop {
        let ev = tokio::time::timeout(Duration::from_secs(60), s.next())
            .await
            .expect("an event within 60 s")
            .expect("stream open")
            .expect("no fatal error");
        match ev {
            WatchEvent::Change(c) => out.push(c),
            WatchEvent::Heartbeat { revision } => {
                if until.borrow().is_some_and(|u| revision >= u) {
                    return out;
                }
            }
        }
    }
}
