//! Runs the real `store` binary: start, wait for its listening lines, stop.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

pub mod pg;

use offer_proto::pb;
use offer_proto::pb::margin_offer_service_client::MarginOfferServiceClient;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};
use tonic::transport::Channel;

pub const BIN: &str = env!("CARGO_BIN_EXE_store");

/// Environment variables of the binary that a developer's shell may set.
const ENV_VARS: &[&str] = &[
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

pub fn command(args: &[&str]) -> Command {
    let mut cmd = Command::new(BIN);
    for v in ENV_VARS {
        cmd.env_remove(v);
    }
    cmd.env("LOG_LEVEL", "info").args(args);
    cmd
}

/// A running `store` process with its log lines collected.
pub struct Server {
    child: Child,
    pub grpc: SocketAddr,
    pub http: SocketAddr,
    logs: Arc<Mutex<Vec<String>>>,
    stderr: Arc<Mutex<String>>,
}

impl Server {
    /// Starts on loopback with free ports and waits until both listen.
    pub fn start(database_url: &str) -> Server {
        Server::start_with(&[
            "--addr",
            "127.0.0.1:0",
            "--http-addr",
            "127.0.0.1:0",
            "--database-url",
            database_url,
        ])
    }

    pub fn start_with(args: &[&str]) -> Server {
        let mut child = command(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn store");
        let logs = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = mpsc::channel::<String>();
        {
            let out = child.stdout.take().unwrap();
            let logs = logs.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(out).lines().map_while(Result::ok) {
                    logs.lock().unwrap().push(line.clone());
                    let _ = tx.send(line);
                }
            });
        }
        {
            let mut err = child.stderr.take().unwrap();
            let stderr = stderr.clone();
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n) = err.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    stderr
                        .lock()
                        .unwrap()
                        .push_str(&String::from_utf8_lossy(&buf[..n]));
                }
            });
        }
        let deadline = Instant::now() + Duration::from_secs(60);
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
                    std::thread::sleep(Duration::from_millis(100));
                    panic!(
                        "store did not start; stderr: {}; logs: {:?}",
                        stderr.lock().unwrap(),
                        logs.lock().unwrap()
                    );
                }
            }
        }
        Server {
            child,
            grpc: grpc.unwrap(),
            http: http.unwrap(),
            logs,
            stderr,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub async fn client(&self) -> MarginOfferServiceClient<Channel> {
        MarginOfferServiceClient::connect(format!("http://{}", self.grpc))
            .await
            .expect("connect to store")
    }

    /// SIGKILL: no chance to flush or close anything.
    pub fn kill9(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// Sends `signal` (e.g. "TERM") with kill(1) and waits for the exit.
    pub fn signal_and_wait(mut self, signal: &str) -> (ExitStatus, Vec<String>, String) {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{signal} failed");
        let status = wait_timeout(&mut self.child, Duration::from_secs(60))
            .expect("store did not exit after the signal");
        // Let the reader threads drain the pipes.
        std::thread::sleep(Duration::from_millis(200));
        (status, self.logs(), self.stderr())
    }

    pub fn logs(&self) -> Vec<String> {
        self.logs.lock().unwrap().clone()
    }

    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn addr_after(line: &str, marker: &str) -> Option<SocketAddr> {
    let rest = &line[line.find(marker)? + marker.len()..];
    rest.split_whitespace().next()?.parse().ok()
}

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

/// Runs the binary to its exit (killing it after `timeout`), output captured.
pub fn run_to_exit(args: &[&str], timeout: Duration) -> Output {
    let mut child = command(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn store");
    let out = child.stdout.take().unwrap();
    let err = child.stderr.take().unwrap();
    let out_t = std::thread::spawn(move || read_all(out));
    let err_t = std::thread::spawn(move || read_all(err));
    let status = wait_timeout(&mut child, timeout)
        .unwrap_or_else(|| panic!("store {args:?} did not exit within {timeout:?}"));
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

/// A plain HTTP/1.1 GET: (status, body).
pub fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    let status = resp
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("bad HTTP response: {resp:?}"));
    let body = resp
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

pub fn offer(id: &str) -> pb::MarginOffer {
    pb::MarginOffer {
        id: id.to_owned(),
        offer_type: "V1".to_owned(),
        collateral_token: "SOL".to_owned(),
        borrow_token: "USDC".to_owned(),
        available_borrow_amount: 1000.0,
        max_open_ltv: 0.5,
        liquidation_ltv: 0.8,
        interest_rate: 0.05,
        interest_model: "fixed".to_owned(),
        liquidity_source: "lavarage".to_owned(),
        source: Some("server-test".to_owned()),
        ..Default::default()
    }
}

/// Every offer id in the store, via one page (max 1000) per call.
pub async fn all_ids(client: &mut MarginOfferServiceClient<Channel>) -> Vec<String> {
    let mut ids = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let page = client
            .list_margin_offers(pb::ListMarginOffersRequest {
                limit: 1000,
                sort_by: Some("id".to_owned()),
                sort_order: Some("asc".to_owned()),
                include_expired: true,
                page_token: token.clone(),
                ..Default::default()
            })
            .await
            .expect("list")
            .into_inner();
        ids.extend(page.offers.into_iter().map(|o| o.id));
        match page.next_page_token.filter(|t| !t.is_empty()) {
            Some(t) if page.has_more => token = Some(t),
            _ => break,
        }
    }
    ids
}
