//! A local Solana JSON-RPC server for tests (feature `testing`).
//!
//! Implements `getProgramAccounts` (dataSize and memcmp filters evaluated
//! against the bytes it holds, base58 or base64 memcmp bytes, optional
//! `withContext`), the paginated `getProgramAccountsV2`,
//! `getMultipleAccounts` (at most 100 keys, like a real node) and
//! `getAccountInfo`, all base64. Faults can be queued per method: HTTP
//! status codes (429 with `Retry-After`, 500, ...), JSON-RPC errors, bad
//! base64, truncated JSON. Every request's method is logged.
//!
//! Reused by the chain source's tests, the backfillers' end-to-end test and
//! the realtime ETL.

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde_json::{Value, json};

use crate::pubkey::Pubkey;
use crate::rpc::Account;

/// What to do instead of answering one request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Answer with this HTTP status and a plain-text body.
    Http(u16),
    /// HTTP 429 with an optional `Retry-After` (seconds).
    TooManyRequests { retry_after: Option<u64> },
    /// A JSON-RPC error object.
    RpcError { code: i64, message: String },
    /// Answer normally but with account data that is not base64.
    BadBase64,
    /// Answer with a truncated JSON body.
    BadJson,
}

#[derive(Default)]
struct Inner {
    accounts: BTreeMap<Pubkey, Account>,
    /// (method or None for any, fault), consumed front to back.
    faults: VecDeque<(Option<String>, Fault)>,
    calls: Vec<String>,
    slot: u64,
}

/// Handle to a running test RPC server; the server stops with the runtime.
#[derive(Clone)]
pub struct TestRpc {
    inner: Arc<Mutex<Inner>>,
    addr: SocketAddr,
}

impl TestRpc {
    /// Binds 127.0.0.1 on a free port and serves in a tokio task.
    pub async fn start() -> std::io::Result<Self> {
        let inner: Arc<Mutex<Inner>> = Arc::default();
        let app = Router::new()
            .route("/", post(handle))
            .with_state(inner.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        tokio::spawn(async move { axum::serve(listener, app).await });
        Ok(TestRpc { inner, addr })
    }

    pub fn url(&self) -> String {
        format!("http://{}/", self.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panicking test thread must not hide the state from the others.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn set_account(&self, key: Pubkey, account: Account) {
        self.lock().accounts.insert(key, account);
    }

    /// Convenience: an account from owner, lamports and data.
    pub fn put(&self, key: Pubkey, owner: Pubkey, lamports: u64, data: Vec<u8>) {
        self.set_account(
            key,
            Account {
                lamports,
                owner,
                data,
                executable: false,
            },
        );
    }

    pub fn remove_account(&self, key: &Pubkey) -> Option<Account> {
        self.lock().accounts.remove(key)
    }

    pub fn clear_accounts(&self) {
        self.lock().accounts.clear();
    }

    pub fn account(&self, key: &Pubkey) -> Option<Account> {
        self.lock().accounts.get(key).cloned()
    }

    /// Queue a fault for the next request of `method` (`None`: any method).
    pub fn push_fault(&self, method: Option<&str>, fault: Fault) {
        self.lock()
            .faults
            .push_back((method.map(str::to_owned), fault));
    }

    /// Queue `n` copies of a fault.
    pub fn push_faults(&self, method: Option<&str>, fault: Fault, n: usize) {
        for _ in 0..n {
            self.push_fault(method, fault.clone());
        }
    }

    pub fn clear_faults(&self) {
        self.lock().faults.clear();
    }

    /// Methods of every request so far, in order.
    pub fn calls(&self) -> Vec<String> {
        self.lock().calls.clone()
    }

    pub fn reset_calls(&self) {
        self.lock().calls.clear();
    }
}

/// The shared fixtures directory: `$SHARED_FIXTURES_DIR`, else
/// `<repo>/../shared/fixtures` (CI lays `shared/` beside the clone), else
/// `/work/shared/fixtures`.
pub fn fixtures_dir() -> Option<PathBuf> {
    let candidates = [
        std::env::var_os("SHARED_FIXTURES_DIR").map(PathBuf::from),
        Some(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/fixtures")),
        Some(PathBuf::from("/work/shared/fixtures")),
    ];
    candidates.into_iter().flatten().find(|p| p.is_dir())
}

/// Reads a `solana account --output json` dump: `(address, account)`.
pub fn load_cli_account(path: &Path) -> Result<(Pubkey, Account), String> {
    let text = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let v: Value = serde_json::from_slice(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    let field = |p: &str| {
        v.pointer(p)
            .ok_or_else(|| format!("{}: missing {p}", path.display()))
    };
    let key: Pubkey = field("/pubkey")?
        .as_str()
        .unwrap_or_default()
        .parse()
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let owner: Pubkey = field("/account/owner")?
        .as_str()
        .unwrap_or_default()
        .parse()
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let lamports = field("/account/lamports")?.as_u64().unwrap_or(0);
    let data = BASE64
        .decode(field("/account/data/0")?.as_str().unwrap_or_default())
        .map_err(|e| format!("{}: {e}", path.display()))?;
    Ok((
        key,
        Account {
            lamports,
            owner,
            data,
            executable: false,
        },
    ))
}

fn rpc_result(id: &Value, result: Value) -> Response {
    json_response(json!({ "jsonrpc": "2.0", "id": id, "result": result }))
}

fn rpc_error(id: &Value, code: i64, message: &str) -> Response {
    json_response(
        json!({ "jsonrpc": "2.0", "id": id, "error": { "code": code, "message": message } }),
    )
}

fn json_response(v: Value) -> Response {
    ([(header::CONTENT_TYPE, "application/json")], v.to_string()).into_response()
}

fn encode_account(a: &Account, bad_base64: bool) -> Value {
    let data = if bad_base64 {
        "@@not base64@@".to_owned()
    } else {
        BASE64.encode(&a.data)
    };
    json!({
        "data": [data, "base64"],
        "owner": a.owner.to_string(),
        "lamports": a.lamports,
        "executable": a.executable,
        "rentEpoch": u64::MAX,
        "space": a.data.len(),
    })
}

/// Whether `a` passes every filter; an unknown filter is an error message.
fn matches(a: &Account, filters: &[Value]) -> Result<bool, String> {
    for f in filters {
        if let Some(n) = f.get("dataSize") {
            let n = n.as_u64().ok_or("dataSize must be a number")?;
            if a.data.len() as u64 != n {
                return Ok(false);
            }
        } else if let Some(m) = f.get("memcmp") {
            let offset = m
                .get("offset")
                .and_then(Value::as_u64)
                .ok_or("memcmp.offset must be a number")? as usize;
            let text = m
                .get("bytes")
                .and_then(Value::as_str)
                .ok_or("memcmp.bytes must be a string")?;
            let bytes = match m.get("encoding").and_then(Value::as_str) {
                None | Some("base58") => bs58::decode(text)
                    .into_vec()
                    .map_err(|e| format!("memcmp.bytes: {e}"))?,
                Some("base64") => BASE64
                    .decode(text)
                    .map_err(|e| format!("memcmp.bytes: {e}"))?,
                Some(other) => return Err(format!("unknown memcmp encoding {other}")),
            };
            let end = offset.saturating_add(bytes.len());
            if a.data.get(offset..end) != Some(bytes.as_slice()) {
                return Ok(false);
            }
        } else {
            return Err(format!("unsupported filter {f}"));
        }
    }
    Ok(true)
}

fn check_encoding(cfg: Option<&Value>) -> Result<(), String> {
    match cfg.and_then(|c| c.get("encoding")).and_then(Value::as_str) {
        Some("base64") => Ok(()),
        other => Err(format!(
            "this test server only speaks base64, got {other:?}"
        )),
    }
}

async fn handle(State(state): State<Arc<Mutex<Inner>>>, body: axum::body::Bytes) -> Response {
    let Ok(req) = serde_json::from_slice::<Value>(&body) else {
        return rpc_error(&Value::Null, -32700, "parse error");
    };
    let id = req.get("id").cloned().unwrap_or(Value::Null);
    let method = req
        .get("method")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let params = req.get("params").cloned().unwrap_or(Value::Null);
    let mut st = state.lock().unwrap_or_else(|p| p.into_inner());
    st.calls.push(method.clone());
    st.slot += 1;
    let fault_at = st
        .faults
        .iter()
        .position(|(m, _)| m.as_deref().is_none_or(|m| m == method));
    let fault = fault_at.and_then(|i| st.faults.remove(i)).map(|(_, f)| f);
    let mut bad_base64 = false;
    match fault {
        Some(Fault::Http(code)) => {
            let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            return (status, "injected failure").into_response();
        }
        Some(Fault::TooManyRequests { retry_after }) => {
            let mut r = (StatusCode::TOO_MANY_REQUESTS, "slow down").into_response();
            if let Some(s) = retry_after
                && let Ok(v) = s.to_string().parse()
            {
                r.headers_mut().insert(header::RETRY_AFTER, v);
            }
            return r;
        }
        Some(Fault::RpcError { code, message }) => return rpc_error(&id, code, &message),
        Some(Fault::BadJson) => {
            return (
                [(header::CONTENT_TYPE, "application/json")],
                "{\"jsonrpc\":\"2.0\",\"result\":[{\"pubkey\":",
            )
                .into_response();
        }
        Some(Fault::BadBase64) => bad_base64 = true,
        None => {}
    }
    let slot = st.slot;
    let parse_key = |v: Option<&Value>| -> Result<Pubkey, String> {
        v.and_then(Value::as_str)
            .ok_or_else(|| "expected a base58 pubkey".to_owned())?
            .parse::<Pubkey>()
            .map_err(|e| e.to_string())
    };
    let result: Result<Value, String> = (|| match method.as_str() {
        "getProgramAccounts" | "getProgramAccountsV2" => {
            let program = parse_key(params.get(0))?;
            let cfg = params.get(1);
            check_encoding(cfg)?;
            let filters = cfg
                .and_then(|c| c.get("filters"))
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            let mut hits = Vec::new();
            for (k, a) in &st.accounts {
                if a.owner == program && matches(a, &filters)? {
                    hits.push(json!({ "pubkey": k.to_string(), "account": encode_account(a, bad_base64) }));
                }
            }
            let with_context = cfg
                .and_then(|c| c.get("withContext"))
                .and_then(Value::as_bool)
                .unwrap_or(false);
            if method == "getProgramAccountsV2" {
                // The pagination key is the index of the page's first account.
                let limit = cfg
                    .and_then(|c| c.get("limit"))
                    .and_then(Value::as_u64)
                    .unwrap_or(1000)
                    .clamp(1, 10_000) as usize;
                let start = match cfg.and_then(|c| c.get("paginationKey")) {
                    None | Some(Value::Null) => 0,
                    Some(v) => v
                        .as_str()
                        .and_then(|s| s.parse::<usize>().ok())
                        .ok_or("bad paginationKey")?,
                };
                let page: Vec<Value> = hits.iter().skip(start).take(limit).cloned().collect();
                let next = (start + limit < hits.len()).then(|| (start + limit).to_string());
                let body = json!({ "accounts": page, "paginationKey": next });
                return Ok(if with_context {
                    json!({ "context": { "slot": slot }, "value": body })
                } else {
                    body
                });
            }
            Ok(if with_context {
                json!({ "context": { "slot": slot }, "value": hits })
            } else {
                Value::Array(hits)
            })
        }
        "getMultipleAccounts" => {
            let keys = params
                .get(0)
                .and_then(Value::as_array)
                .ok_or("expected an array of pubkeys")?;
            if keys.len() > 100 {
                return Err(format!(
                    "Too many inputs provided; max 100, got {}",
                    keys.len()
                ));
            }
            check_encoding(params.get(1))?;
            let mut value = Vec::with_capacity(keys.len());
            for k in keys {
                let k = parse_key(Some(k))?;
                value.push(
                    st.accounts
                        .get(&k)
                        .map_or(Value::Null, |a| encode_account(a, bad_base64)),
                );
            }
            Ok(json!({ "context": { "slot": slot }, "value": value }))
        }
        "getAccountInfo" => {
            let k = parse_key(params.get(0))?;
            check_encoding(params.get(1))?;
            let value = st
                .accounts
                .get(&k)
                .map_or(Value::Null, |a| encode_account(a, bad_base64));
            Ok(json!({ "context": { "slot": slot }, "value": value }))
        }
        _ => Err(format!("Method not found: {method}")),
    })();
    drop(st);
    match result {
        Ok(v) => rpc_result(&id, v),
        Err(m) if m.starts_with("Method not found") => rpc_error(&id, -32601, &m),
        Err(m) => rpc_error(&id, -32602, &m),
    }
}
