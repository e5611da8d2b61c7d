//! Test helpers: the real `store` binary, and a Solana pubsub server of our own.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use store_testkit::StoreProcess;

use base64::Engine as _;
use futures::{SinkExt as _, StreamExt as _};
use serde_json::{Value, json};
use solana_sources::Pubkey;
use solana_sources::rpc::Account;
use tokio::sync::mpsc as ampsc;
use tokio_tungstenite::tungstenite::Message;

/// A running `store` on a temporary SQLite database.
pub struct Store {
    process: StoreProcess,
    _dir: tempfile::TempDir,
}

impl Store {
    pub fn start() -> Store {
        let dir = tempfile::tempdir().unwrap();
        let process = StoreProcess::start_sqlite(&dir.path().join("offers.db"), 0);
        Store { process, _dir: dir }
    }

    pub fn addr(&self) -> String {
        self.process.addr()
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
