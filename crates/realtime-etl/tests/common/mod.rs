//! Test helpers: the real `store` binary, and a Solana pubsub server of our own.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock, mpsc};
use std::time::{Duration, Instant};

use base64::Engine as _;
use futures::{SinkExt as _, StreamExt as _};
use serde_json::{Value, json};
use solana_sources::Pubkey;
use solana_sources::rpc::Account;
use tokio::sync::mpsc as ampsc;
use tokio_tungstenite::tungstenite::Message;

/// The `store` binary: `$STORE_BIN`, else built with cargo into the target
/// directory these tests run from (as crates/offersctl/tests do).
pub fn store_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(p) = std::env::var_os("STORE_BIN") {
            return PathBuf::from(p);
        }
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
        assert!(
            cmd.status().unwrap().success(),
            "cargo build -p store-server failed"
        );
        profile_dir.join("store")
    })
    .clone()
}

/// A running `store` on a temporary SQLite database.
pub struct Store {
    child: Child,
    pub grpc: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Store {
    pub fn start() -> Store {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}/offers.db", dir.path().display());
        let mut cmd = Command::new(store_bin());
        for v in [
            "STORE_GRPC_ADDRESS",
            "STORE_HTTP_ADDRESS",
            "DATABASE_URL",
            "LOG_FORMAT",
            "RUST_LOG",
        ] {
            cmd.env_remove(v);
        }
        let mut child = cmd
            .args(["--addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0"])
            .args(["--database-url", &url])
            .env("LOG_LEVEL", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let (tx, rx) = mpsc::channel::<String>();
        let out = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let deadline = Instant::now() + Duration::from_secs(60);
        let grpc = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = rx.recv_timeout(left).expect("store did not start");
            let marker = "grpc listening on ";
            if let Some(i) = line.find(marker) {
                let rest = &line[i + marker.len()..];
                if let Some(a) = rest.split_whitespace().next().and_then(|a| a.parse().ok()) {
                    break a;
                }
            }
        };
        Store {
            child,
            grpc,
            _dir: dir,
        }
    }

    pub fn addr(&self) -> String {
        self.grpc.to_string()
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

enum Cmd {
    Text(String),
    Drop,
}

#[derive(Default)]
struct PsInner {
    conn: Option<ampsc::UnboundedSender<Cmd>>,
    /// Subscriptions of the current connection: (id, program, filters).
    subs: Vec<(u64, String, Value)>,
    next_sub: u64,
    subscribe_requests: u64,
    connections: u64,
}

/// A Solana pubsub server speaking `programSubscribe` /
/// `programNotification`; one live connection at a time.
#[derive(Clone)]
pub struct Pubsub {
    inner: Arc<Mutex<PsInner>>,
    pub addr: SocketAddr,
}

impl Pubsub {
    pub async fn start() -> Pubsub {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let inner: Arc<Mutex<PsInner>> = Arc::default();
        let shared = inner.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let Ok(ws) = tokio_tungstenite::accept_async(tcp).await else {
                    continue;
                };
                let (tx, rx) = ampsc::unbounded_channel();
                {
                    let mut g = shared.lock().unwrap();
                    g.conn = Some(tx);
                    g.subs.clear();
                    g.connections += 1;
                }
                tokio::spawn(serve_conn(ws, rx, shared.clone()));
            }
        });
        Pubsub { inner, addr }
    }

    pub fn url(&self) -> String {
        format!("ws://{}", self.addr)
    }

    pub fn subscribe_requests(&self) -> u64 {
        self.inner.lock().unwrap().subscribe_requests
    }

    pub fn connections(&self) -> u64 {
        self.inner.lock().unwrap().connections
    }

    /// The current subscription id of `program` with exactly `filters`.
    pub fn sub_id(&self, program: &Pubkey, filters: &Value) -> Option<u64> {
        let p = program.to_string();
        let g = self.inner.lock().unwrap();
        g.subs
            .iter()
            .find(|(_, prog, f)| *prog == p && f == filters)
            .map(|(id, _, _)| *id)
    }

    pub fn send_raw(&self, text: String) {
        if let Some(c) = &self.inner.lock().unwrap().conn {
            let _ = c.send(Cmd::Text(text));
        }
    }

    pub fn notify(&self, sub: u64, slot: u64, key: &Pubkey, a: &Account) {
        self.send_raw(notification(sub, slot, key, a));
    }

    /// Drops the connection without a close frame, like a network failure.
    pub fn drop_connection(&self) {
        let mut g = self.inner.lock().unwrap();
        if let Some(c) = g.conn.take() {
            let _ = c.send(Cmd::Drop);
        }
        g.subs.clear();
    }
}

pub fn notification(sub: u64, slot: u64, key: &Pubkey, a: &Account) -> String {
    json!({
        "jsonrpc": "2.0",
        "method": "programNotification",
        "params": {"subscription": sub, "result": {
            "context": {"slot": slot},
            "value": {"pubkey": key.to_string(), "account": {
                "data": [base64::engine::general_purpose::STANDARD.encode(&a.data), "base64"],
                "owner": a.owner.to_string(),
                "lamports": a.lamports,
                "executable": false,
                "rentEpoch": 0,
                "space": a.data.len(),
            }}
        }}
    })
    .to_string()
}

async fn serve_conn(
    ws: tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>,
    mut rx: ampsc::UnboundedReceiver<Cmd>,
    inner: Arc<Mutex<PsInner>>,
) {
    let (mut sink, mut stream) = ws.split();
    loop {
        tokio::select! {
            cmd = rx.recv() => match cmd {
                Some(Cmd::Text(t)) => {
                    if sink.send(Message::text(t)).await.is_err() { return; }
                }
                Some(Cmd::Drop) | None => return,
            },
            msg = stream.next() => {
                let Some(Ok(Message::Text(t))) = msg else {
                    if matches!(msg, Some(Ok(_))) { continue; }
                    return;
                };
                let Ok(v) = serde_json::from_str::<Value>(t.as_str()) else { continue };
                if v["method"] != "programSubscribe" { continue; }
                let reply = {
                    let mut g = inner.lock().unwrap();
                    g.next_sub += 1;
                    g.subscribe_requests += 1;
                    let id = g.next_sub;
                    let program = v["params"][0].as_str().unwrap_or_default().to_owned();
                    let filters = v["params"][1]["filters"].clone();
                    assert_eq!(v["params"][1]["encoding"], "base64");
                    g.subs.push((id, program, filters));
                    json!({"jsonrpc": "2.0", "result": id, "id": v["id"]}).to_string()
                };
                if sink.send(Message::text(reply)).await.is_err() { return; }
            }
        }
    }
}

pub fn filters_json(f: &[solana_sources::rpc::Filter]) -> Value {
    Value::Array(f.iter().map(|f| f.to_json()).collect())
}
