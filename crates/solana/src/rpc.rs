//! A small Solana JSON-RPC client over reqwest: the three read methods the
//! sources need (`getProgramAccounts` and its paginated V2 variant,
//! `getMultipleAccounts`, `getAccountInfo`), always with base64 encoding.
//!
//! - Deadlines: `getProgramAccounts` scans are slow on real providers, so they
//!   get their own deadline (120 s default), apart from the 30 s of other calls.
//! - Retries: HTTP 429 (honouring `Retry-After`), 5xx, JSON-RPC -32005 /
//!   -32603, timeouts and connection errors are transient and retried with
//!   exponential backoff and jitter; any other JSON-RPC error is permanent.
//! - Parsing: a `getProgramAccounts` response can be tens of MB. It is read
//!   once, straight from the bytes, by a strict hand-written scanner
//!   (`scan`): strings are borrowed from the body, the repeated owner is
//!   decoded once, the layout nodes emit takes a fixed-text fast path, and
//!   each account's data is base64-decoded (SIMD) into one buffer
//!   reused for every account ([`RpcClient::for_each_program_account`],
//!   [`AccountRef`]), so a caller that decodes accounts in place allocates
//!   nothing per account. Smaller responses go through serde into typed
//!   structs; no `serde_json::Value` tree is built. A body that is not valid
//!   JSON-RPC or holds bad base64 is [`RpcError::Malformed`]: the whole call
//!   fails, since a partial account list must never become a snapshot.

use std::borrow::Cow;
use std::fmt;
use std::time::Duration;

use base64::Engine as _;
use reqwest::StatusCode;
use serde::de::{self, DeserializeOwned, Deserializer};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::pubkey::Pubkey;

mod scan;

/// Standard base64 with padding, decoded exactly as
/// `general_purpose::STANDARD` decodes it, but with the CPU's SIMD
/// instructions where it has them (AVX2, NEON; detected once): account
/// data is most of a `getProgramAccounts` response.
static BASE64: std::sync::LazyLock<base64::engine::Simd> = std::sync::LazyLock::new(|| {
    base64::engine::Simd::standard(base64::engine::general_purpose::PAD)
});

/// `getMultipleAccounts` accepts at most this many keys per call.
pub const MULTIPLE_ACCOUNTS_CHUNK: usize = 100;

/// Client settings; `Default` gives the documented defaults.
#[derive(Clone, Debug, PartialEq)]
pub struct RpcOptions {
    /// Deadline of one `getProgramAccounts` (or V2 page) request.
    pub program_accounts_timeout: Duration,
    /// Deadline of every other request.
    pub request_timeout: Duration,
    pub connect_timeout: Duration,
    /// Retries after the first attempt for transient failures.
    pub max_retries: u32,
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
    /// Use the paginated `getProgramAccountsV2` for program scans.
    pub use_get_program_accounts_v2: bool,
    /// Page size of `getProgramAccountsV2` (1..=10 000).
    pub v2_page_limit: usize,
    /// Safety stop for a provider whose pagination key never ends.
    pub v2_max_pages: usize,
}

impl Default for RpcOptions {
    fn default() -> Self {
        RpcOptions {
            program_accounts_timeout: Duration::from_secs(120),
            request_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(10),
            max_retries: 4,
            initial_backoff: Duration::from_millis(250),
            max_backoff: Duration::from_secs(10),
            use_get_program_accounts_v2: false,
            v2_page_limit: 5_000,
            v2_max_pages: 100_000,
        }
    }
}

/// A `getProgramAccounts` filter.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Filter {
    DataSize(u64),
    /// `bytes` are sent base58-encoded.
    Memcmp {
        offset: usize,
        bytes: Vec<u8>,
    },
}

impl Filter {
    /// The JSON-RPC form, shared by `getProgramAccounts` and `programSubscribe`.
    pub fn to_json(&self) -> serde_json::Value {
        match self {
            Filter::DataSize(n) => json!({ "dataSize": n }),
            Filter::Memcmp { offset, bytes } => json!({
                "memcmp": { "offset": offset, "bytes": bs58::encode(bytes).into_string() }
            }),
        }
    }
}

/// One account as returned with base64 encoding, data decoded.
#[derive(Clone, PartialEq, Eq)]
pub struct Account {
    pub lamports: u64,
    pub owner: Pubkey,
    pub data: Vec<u8>,
    pub executable: bool,
}

impl Account {
    /// A borrowed view, as [`RpcClient::for_each_program_account`] gives.
    pub fn view(&self) -> AccountRef<'_> {
        AccountRef {
            lamports: self.lamports,
            owner: self.owner,
            data: &self.data,
            executable: self.executable,
        }
    }
}

impl fmt::Debug for Account {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Account")
            .field("lamports", &self.lamports)
            .field("owner", &self.owner)
            .field("data_len", &self.data.len())
            .field("executable", &self.executable)
            .finish()
    }
}

/// An account as a response is parsed: `data` borrows a buffer that the
/// next account reuses, so visiting accounts allocates nothing per account.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AccountRef<'a> {
    pub lamports: u64,
    pub owner: Pubkey,
    pub data: &'a [u8],
    pub executable: bool,
}

impl AccountRef<'_> {
    /// An owned copy, for callers that keep raw accounts.
    pub fn to_account(&self) -> Account {
        Account {
            lamports: self.lamports,
            owner: self.owner,
            data: self.data.to_vec(),
            executable: self.executable,
        }
    }
}

/// An account with its address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyedAccount {
    pub pubkey: Pubkey,
    pub account: Account,
}

/// Why an RPC call failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RpcError {
    /// Worth retrying later: rate limits, 5xx, timeouts, connection errors,
    /// node-side -32005 / -32603. Returned once the client's own retries ran out.
    #[error("transient RPC error in {method}: {message}")]
    Transient { method: String, message: String },
    /// The node refused the request (bad params, method not found, ...).
    #[error("RPC error in {method}: {message}")]
    Permanent { method: String, message: String },
    /// The response was not what the protocol promises (bad JSON or base64).
    #[error("malformed RPC response to {method}: {message}")]
    Malformed { method: String, message: String },
}

impl RpcError {
    pub fn is_transient(&self) -> bool {
        matches!(self, RpcError::Transient { .. })
    }
}

/// The JSON-RPC client. Cheap to clone.
#[derive(Clone)]
pub struct RpcClient {
    http: reqwest::Client,
    url: reqwest::Url,
    opts: RpcOptions,
}

impl fmt::Debug for RpcClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The URL may carry an API key in its query: print the origin only.
        f.debug_struct("RpcClient")
            .field("origin", &self.url.origin().ascii_serialization())
            .finish()
    }
}

impl RpcClient {
    pub fn new(endpoint: &str, opts: RpcOptions) -> Result<Self, RpcError> {
        let url = reqwest::Url::parse(endpoint).map_err(|e| RpcError::Permanent {
            method: "connect".into(),
            message: format!("bad RPC endpoint: {e}"),
        })?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(RpcError::Permanent {
                method: "connect".into(),
                message: "RPC endpoint must be http or https".into(),
            });
        }
        let http = reqwest::Client::builder()
            .connect_timeout(opts.connect_timeout)
            .gzip(true)
            .user_agent(concat!("margin-offer-solana/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| RpcError::Permanent {
                method: "connect".into(),
                message: format!("cannot build the HTTP client: {e}"),
            })?;
        Ok(RpcClient { http, url, opts })
    }

    pub fn options(&self) -> &RpcOptions {
        &self.opts
    }

    /// All accounts of `program` matching every filter. Uses the paginated
    /// V2 method when the options say so.
    pub async fn get_program_accounts(
        &self,
        program: &Pubkey,
        filters: &[Filter],
    ) -> Result<Vec<KeyedAccount>, RpcError> {
        let mut out = Vec::new();
        self.for_each_program_account(program, filters, |pubkey, account| {
            out.push(KeyedAccount {
                pubkey: *pubkey,
                account: account.to_account(),
            });
        })
        .await?;
        Ok(out)
    }

    /// Visits every account of `program` matching every filter while the
    /// response is parsed, and returns how many there were. Cheaper than
    /// [`Self::get_program_accounts`] for callers that decode each account
    /// on the spot: no per-account copy of the data is made. Uses the
    /// paginated V2 method when the options say so.
    ///
    /// On an error, some accounts may already have been visited: drop what
    /// the visitor gathered. A response is never visited twice, since only
    /// a JSON-RPC error without a result is retried.
    pub async fn for_each_program_account<F: FnMut(&Pubkey, AccountRef<'_>)>(
        &self,
        program: &Pubkey,
        filters: &[Filter],
        mut visit: F,
    ) -> Result<usize, RpcError> {
        if self.opts.use_get_program_accounts_v2 {
            return self
                .for_each_program_account_v2(program, filters, visit)
                .await;
        }
        const METHOD: &str = "getProgramAccounts";
        let filters: Vec<_> = filters.iter().map(Filter::to_json).collect();
        let params = json!([program.to_string(), {
            "encoding": "base64",
            "commitment": "confirmed",
            "filters": filters,
        }]);
        let (mut data, mut owner) = (Vec::new(), None);
        self.call_with(
            METHOD,
            &params,
            self.opts.program_accounts_timeout,
            |body| {
                let mut reader = scan::AccountReader::new(&mut visit, &mut data, &mut owner);
                parse_scanned(METHOD, body, |s| reader.accounts(s))
            },
        )
        .await
    }

    /// `getProgramAccountsV2`, following `paginationKey` until it is null.
    pub async fn get_program_accounts_v2(
        &self,
        program: &Pubkey,
        filters: &[Filter],
    ) -> Result<Vec<KeyedAccount>, RpcError> {
        let mut out = Vec::new();
        self.for_each_program_account_v2(program, filters, |pubkey, account| {
            out.push(KeyedAccount {
                pubkey: *pubkey,
                account: account.to_account(),
            });
        })
        .await?;
        Ok(out)
    }

    /// [`Self::for_each_program_account`] over `getProgramAccountsV2` pages.
    async fn for_each_program_account_v2<F: FnMut(&Pubkey, AccountRef<'_>)>(
        &self,
        program: &Pubkey,
        filters: &[Filter],
        mut visit: F,
    ) -> Result<usize, RpcError> {
        const METHOD: &str = "getProgramAccountsV2";
        let filters: Vec<_> = filters.iter().map(Filter::to_json).collect();
        let mut total = 0;
        let (mut data, mut owner) = (Vec::new(), None);
        let mut key: Option<String> = None;
        let mut seen = std::collections::HashSet::new();
        for _ in 0..self.opts.v2_max_pages.max(1) {
            let mut cfg = json!({
                "encoding": "base64",
                "commitment": "confirmed",
                "filters": filters,
                "limit": self.opts.v2_page_limit.clamp(1, 10_000),
            });
            if let (Some(k), Some(obj)) = (&key, cfg.as_object_mut()) {
                obj.insert("paginationKey".into(), json!(k));
            }
            let params = json!([program.to_string(), cfg]);
            let (count, next) = self
                .call_with(
                    METHOD,
                    &params,
                    self.opts.program_accounts_timeout,
                    |body| {
                        let mut reader =
                            scan::AccountReader::new(&mut visit, &mut data, &mut owner);
                        parse_scanned(METHOD, body, |s| reader.v2_page(s))
                    },
                )
                .await?;
            total += count;
            match next {
                Some(next) if !next.is_empty() => {
                    // A repeated key would loop forever over the same pages.
                    if !seen.insert(next.clone()) {
                        return Err(RpcError::Malformed {
                            method: METHOD.into(),
                            message: format!("pagination key {next:?} repeated"),
                        });
                    }
                    key = Some(next);
                }
                _ => return Ok(total),
            }
        }
        Err(RpcError::Malformed {
            method: METHOD.into(),
            message: format!("more than {} pages", self.opts.v2_max_pages),
        })
    }

    /// Accounts in the order of `keys` (`None` where an account does not
    /// exist), fetched in chunks of [`MULTIPLE_ACCOUNTS_CHUNK`].
    pub async fn get_multiple_accounts(
        &self,
        keys: &[Pubkey],
    ) -> Result<Vec<Option<Account>>, RpcError> {
        let mut out = Vec::with_capacity(keys.len());
        for chunk in keys.chunks(MULTIPLE_ACCOUNTS_CHUNK) {
            let keys: Vec<String> = chunk.iter().map(Pubkey::to_string).collect();
            let params = json!([keys, { "encoding": "base64", "commitment": "confirmed" }]);
            let res: WithContext<Vec<Option<WireAccount>>> = self
                .call("getMultipleAccounts", &params, self.opts.request_timeout)
                .await?;
            if res.value.len() != chunk.len() {
                return Err(RpcError::Malformed {
                    method: "getMultipleAccounts".into(),
                    message: format!(
                        "asked for {} accounts, got {}",
                        chunk.len(),
                        res.value.len()
                    ),
                });
            }
            out.extend(res.value.into_iter().map(|a| a.map(Account::from)));
        }
        Ok(out)
    }

    /// One account, `None` when it does not exist.
    pub async fn get_account_info(&self, key: &Pubkey) -> Result<Option<Account>, RpcError> {
        let params = json!([key.to_string(), { "encoding": "base64", "commitment": "confirmed" }]);
        let res: WithContext<Option<WireAccount>> = self
            .call("getAccountInfo", &params, self.opts.request_timeout)
            .await?;
        Ok(res.value.map(Account::from))
    }

    /// One JSON-RPC call with retries of transient failures.
    async fn call<T: DeserializeOwned>(
        &self,
        method: &str,
        params: &serde_json::Value,
        timeout: Duration,
    ) -> Result<T, RpcError> {
        self.call_with(method, params, timeout, |body| parse_envelope(method, body))
            .await
    }

    /// [`Self::call`] with the response body parsed by `parse`, which runs
    /// again on each attempt that gets a body.
    async fn call_with<T>(
        &self,
        method: &str,
        params: &serde_json::Value,
        timeout: Duration,
        mut parse: impl FnMut(&[u8]) -> Result<T, Failure>,
    ) -> Result<T, RpcError> {
        let body = serde_json::to_vec(&Request {
            jsonrpc: "2.0",
            id: 1,
            method,
            params,
        })
        .map_err(|e| RpcError::Permanent {
            method: method.into(),
            message: format!("cannot encode the request: {e}"),
        })?;
        let mut attempt = 0u32;
        loop {
            match self.attempt(method, &body, timeout, &mut parse).await {
                Ok(v) => return Ok(v),
                Err(Failure::Final(e)) => return Err(e),
                Err(Failure::Retry { message, after }) => {
                    if attempt >= self.opts.max_retries {
                        return Err(RpcError::Transient {
                            method: method.into(),
                            message: format!("{message} (after {} attempts)", attempt + 1),
                        });
                    }
                    let wait = after.unwrap_or_else(|| self.backoff(attempt));
                    tracing::debug!(method, attempt, ?wait, %message, "retrying RPC call");
                    metrics::counter!("solana_rpc_retries_total", "method" => method.to_owned())
                        .increment(1);
                    tokio::time::sleep(wait).await;
                    attempt += 1;
                }
            }
        }
    }

    async fn attempt<T>(
        &self,
        method: &str,
        body: &[u8],
        timeout: Duration,
        parse: &mut impl FnMut(&[u8]) -> Result<T, Failure>,
    ) -> Result<T, Failure> {
        let retry = |message: String| Failure::Retry {
            message,
            after: None,
        };
        let resp = self
            .http
            .post(self.url.clone())
            .timeout(timeout)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body.to_vec())
            .send()
            .await
            .map_err(|e| retry(transport_message(&e)))?;
        let status = resp.status();
        if status == StatusCode::TOO_MANY_REQUESTS {
            let after = resp
                .headers()
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
                // Honour the server, but never sleep past our own cap × 6.
                .map(|s| Duration::from_secs(s).min(self.opts.max_backoff * 6));
            return Err(Failure::Retry {
                message: "HTTP 429 Too Many Requests".into(),
                after,
            });
        }
        if status.is_server_error() || status == StatusCode::REQUEST_TIMEOUT {
            return Err(retry(format!("HTTP {status}")));
        }
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| retry(transport_message(&e)))?;
        if !status.is_success() {
            // Providers answer JSON-RPC errors with 4xx too; use the body when it is one.
            if let Ok(env) = serde_json::from_slice::<ErrorOnly>(&bytes)
                && let Some(err) = env.error
            {
                return Err(classify_rpc_error(method, err));
            }
            return Err(Failure::Final(RpcError::Permanent {
                method: method.into(),
                message: format!("HTTP {status}"),
            }));
        }
        parse(&bytes)
    }

    fn backoff(&self, attempt: u32) -> Duration {
        let base = self
            .opts
            .initial_backoff
            .saturating_mul(1u32 << attempt.min(16))
            .min(self.opts.max_backoff);
        // Jitter in [50 %, 100 %] so many clients do not retry in lockstep.
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let frac = 0.5 + f64::from(nanos % 1000) / 2000.0;
        base.mul_f64(frac)
    }
}

enum Failure {
    Retry {
        message: String,
        after: Option<Duration>,
    },
    Final(RpcError),
}

fn classify_rpc_error(method: &str, err: WireError) -> Failure {
    let message = format!("{} (code {})", err.message, err.code);
    match err.code {
        // Node behind / internal error: the same request can succeed later.
        -32005 | -32603 => Failure::Retry {
            message,
            after: None,
        },
        _ => Failure::Final(RpcError::Permanent {
            method: method.into(),
            message,
        }),
    }
}

fn transport_message(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        "deadline exceeded".into()
    } else if e.is_connect() {
        format!("connection failed: {e}")
    } else {
        e.to_string()
    }
}

#[derive(Serialize)]
struct Request<'a> {
    jsonrpc: &'static str,
    id: u64,
    method: &'a str,
    params: &'a serde_json::Value,
}

#[derive(Deserialize)]
#[serde(bound(deserialize = "T: Deserialize<'de>"))]
struct Envelope<T> {
    #[serde(default = "none")]
    result: Option<T>,
    #[serde(default)]
    error: Option<WireError>,
}

fn none<T>() -> Option<T> {
    None
}

#[derive(Deserialize)]
struct ErrorOnly {
    #[serde(default)]
    error: Option<WireError>,
}

#[derive(Deserialize)]
struct WireError {
    code: i64,
    #[serde(default)]
    message: String,
}

#[derive(Deserialize)]
struct WithContext<T> {
    value: T,
}

/// A whole response body as a typed envelope.
fn parse_envelope<T: DeserializeOwned>(method: &str, body: &[u8]) -> Result<T, Failure> {
    let env: Envelope<T> = serde_json::from_slice(body).map_err(|e| malformed(method, e))?;
    if let Some(err) = env.error {
        return Err(classify_rpc_error(method, err));
    }
    env.result
        .ok_or_else(|| malformed(method, "neither result nor error"))
}

/// A whole `getProgramAccounts`-shaped body, read by the [`scan`]ner;
/// `result` reads the result (`None` for null).
fn parse_scanned<'a, T>(
    method: &str,
    body: &'a [u8],
    result: impl FnMut(&mut scan::Scanner<'a>) -> scan::ScanResult<Option<T>>,
) -> Result<T, Failure> {
    let env = scan::envelope(body, result).map_err(|e| malformed(method, e))?;
    let error = match env.error {
        Some(raw) => serde_json::from_slice::<Option<WireError>>(raw)
            .map_err(|e| malformed(method, format!("error: {e}")))?,
        None => None,
    };
    match (env.result, error) {
        // The result has been visited: retrying the call would visit it
        // again, so a body with both is not trusted at all.
        (Some(_), Some(_)) => Err(malformed(method, "both result and error")),
        (None, Some(err)) => Err(classify_rpc_error(method, err)),
        (Some(result), None) => Ok(result),
        (None, None) => Err(malformed(method, "neither result nor error")),
    }
}

fn malformed(method: &str, message: impl fmt::Display) -> Failure {
    Failure::Final(RpcError::Malformed {
        method: method.into(),
        message: message.to_string(),
    })
}

/// An owned account (`getMultipleAccounts`, `getAccountInfo`).
#[derive(Deserialize)]
struct WireAccount {
    lamports: u64,
    owner: Pubkey,
    data: Base64Data,
    #[serde(default)]
    executable: bool,
}

impl From<WireAccount> for Account {
    fn from(w: WireAccount) -> Self {
        Account {
            lamports: w.lamports,
            owner: w.owner,
            data: w.data.0,
            executable: w.executable,
        }
    }
}

/// `["<base64>", "<encoding>"]` as raw bytes borrowed from the response
/// (owned only where the JSON string has escapes): no UTF-8 pass, since
/// the base64 decoder checks every byte anyway.
#[derive(Deserialize)]
struct Base64Text<'a>(
    #[serde(borrow)] Cow<'a, [u8]>,
    #[serde(borrow)] Cow<'a, [u8]>,
);

impl Base64Text<'_> {
    /// Decodes into `out`, replacing its contents and keeping its capacity.
    fn decode_into(&self, out: &mut Vec<u8>) -> Result<(), String> {
        if *self.1 != *b"base64" {
            return Err(format!(
                "account data encoding {:?}, expected base64",
                String::from_utf8_lossy(&self.1)
            ));
        }
        out.clear();
        BASE64
            .decode_vec(&*self.0, out)
            .map_err(|e| format!("bad base64 account data: {e}"))
    }
}

/// Account data decoded while deserializing.
struct Base64Data(Vec<u8>);

impl<'de> Deserialize<'de> for Base64Data {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = Base64Text::deserialize(d)?;
        let mut data = Vec::new();
        text.decode_into(&mut data).map_err(de::Error::custom)?;
        Ok(Base64Data(data))
    }
}

/// Standard base64 (with padding) to bytes.
pub fn decode_base64(text: &str) -> Result<Vec<u8>, String> {
    BASE64
        .decode(text.as_bytes())
        .map_err(|e| format!("bad base64 account data: {e}"))
}

/// Parse a whole `getProgramAccounts` JSON-RPC response body into owned
/// accounts (public for the benchmark and the realtime ETL's tests).
pub fn parse_program_accounts_response(body: &[u8]) -> Result<Vec<KeyedAccount>, RpcError> {
    let mut out = Vec::new();
    parse_program_accounts_response_with(body, |pubkey, account| {
        out.push(KeyedAccount {
            pubkey: *pubkey,
            account: account.to_account(),
        });
    })?;
    Ok(out)
}

/// Parse a whole `getProgramAccounts` JSON-RPC response body, visiting each
/// account as in [`RpcClient::for_each_program_account`]; returns the count.
pub fn parse_program_accounts_response_with(
    body: &[u8],
    mut visit: impl FnMut(&Pubkey, AccountRef<'_>),
) -> Result<usize, RpcError> {
    const METHOD: &str = "getProgramAccounts";
    let (mut data, mut owner) = (Vec::new(), None);
    let mut reader = scan::AccountReader::new(&mut visit, &mut data, &mut owner);
    parse_scanned(METHOD, body, |s| reader.accounts(s)).map_err(|failure| match failure {
        Failure::Final(e) => e,
        Failure::Retry { message, .. } => RpcError::Transient {
            method: METHOD.into(),
            message,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_plain_and_context_results() -> Result<(), RpcError> {
        let body = br#"{"jsonrpc":"2.0","id":1,"result":[{"pubkey":"11111111111111111111111111111111","account":{"data":["AQID","base64"],"owner":"11111111111111111111111111111111","lamports":5,"executable":false,"rentEpoch":18446744073709551615,"space":3}}]}"#;
        let v = parse_program_accounts_response(body)?;
        assert_eq!(v.len(), 1);
        assert_eq!(v[0].account.data, vec![1, 2, 3]);
        assert_eq!(v[0].account.lamports, 5);
        let body = br#"{"jsonrpc":"2.0","id":1,"result":{"context":{"slot":9},"value":[]}}"#;
        assert!(parse_program_accounts_response(body)?.is_empty());
        // An escaped slash still decodes (Cow falls back to an owned string).
        let body = br#"{"jsonrpc":"2.0","id":1,"result":[{"pubkey":"11111111111111111111111111111111","account":{"data":["\/w==","base64"],"owner":"11111111111111111111111111111111","lamports":0}}]}"#;
        assert_eq!(
            parse_program_accounts_response(body)?[0].account.data,
            vec![255]
        );
        Ok(())
    }

    #[test]
    fn visiting_reuses_one_buffer_and_sees_every_account() -> Result<(), RpcError> {
        let body = br#"{"jsonrpc":"2.0","result":{"context":{"slot":1},"value":[
            {"pubkey":"11111111111111111111111111111112","account":{"data":["AQIDBA==","base64"],"owner":"11111111111111111111111111111111","lamports":7,"executable":true}},
            {"pubkey":"11111111111111111111111111111113","account":{"lamports":8,"data":["\/w==","base64"],"owner":"11111111111111111111111111111111"}}
        ]},"id":1}"#;
        let mut seen = Vec::new();
        let n = parse_program_accounts_response_with(body, |key, account| {
            seen.push((*key, account.to_account()));
        })?;
        assert_eq!(n, 2);
        assert_eq!(seen[0].0.0[31], 1);
        assert_eq!(
            seen[0].1,
            Account {
                lamports: 7,
                owner: Pubkey::default(),
                data: vec![1, 2, 3, 4],
                executable: true,
            }
        );
        assert_eq!(
            (seen[1].0.0[31], seen[1].1.data.as_slice()),
            (2, &[255][..])
        );
        assert!(!seen[1].1.executable);
        Ok(())
    }

    /// The scanner reads any JSON layout of the same response alike.
    #[test]
    fn layout_whitespace_escapes_and_unknown_members_do_not_matter() -> Result<(), RpcError> {
        let keys: Vec<Pubkey> = (1u8..5).map(|i| Pubkey([i; 32])).collect();
        let owner = Pubkey::default();
        let datas: Vec<Vec<u8>> = (0..4).map(|i| vec![i as u8; 3 * i + 1]).collect();
        let result: Vec<serde_json::Value> = keys
            .iter()
            .zip(&datas)
            .enumerate()
            .map(|(i, (k, d))| {
                json!({
                    "extra": {"deep": [[{"x": [1.5e-3, -0, true, null, "\u{e9}\u{1f600}\\"]}]]},
                    "account": {
                        "space": d.len(), "rentEpoch": u64::MAX,
                        "data": [BASE64.encode(d), "base64"],
                        "owner": owner.to_string(), "lamports": i, "executable": i % 2 == 1,
                    },
                    "pubkey": k.to_string(),
                })
            })
            .collect();
        let expected: Vec<KeyedAccount> = keys
            .iter()
            .zip(&datas)
            .enumerate()
            .map(|(i, (k, d))| KeyedAccount {
                pubkey: *k,
                account: Account {
                    lamports: i as u64,
                    owner,
                    data: d.clone(),
                    executable: i % 2 == 1,
                },
            })
            .collect();
        let envelope = json!({"id": 1, "result": result, "jsonrpc": "2.0"});
        let compact = serde_json::to_string(&envelope).map_err(|e| malformed_err(&e))?;
        let pretty = serde_json::to_string_pretty(&envelope).map_err(|e| malformed_err(&e))?;
        // Escaped slashes and letters are still base64 and base58 text.
        let escaped = compact
            .replace('/', "\\/")
            .replacen("\"extra\"", "\"\\ud83d\\ude00extra\"", 1)
            .replacen(
                &owner.to_string(),
                &owner.to_string().replacen('1', "\\u0031", 1),
                1,
            );
        for body in [compact, pretty, escaped] {
            assert_eq!(
                parse_program_accounts_response(body.as_bytes())?,
                expected,
                "{body}"
            );
        }
        Ok(())
    }

    fn malformed_err(e: &serde_json::Error) -> RpcError {
        RpcError::Malformed {
            method: "test".into(),
            message: e.to_string(),
        }
    }

    #[test]
    fn results_that_cannot_be_trusted_are_malformed() {
        for body in [
            // Both a result and an error: a retry would visit the accounts twice.
            &br#"{"jsonrpc":"2.0","id":1,"result":[],"error":{"code":-32005,"message":"behind"}}"#[..],
            br#"{"jsonrpc":"2.0","id":1,"result":null}"#,
            br#"{"jsonrpc":"2.0","id":1,"result":{"context":{}}}"#,
            br#"{"jsonrpc":"2.0","id":1,"result":{"value":null}}"#,
            br#"{"jsonrpc":"2.0","id":1,"result":[],"result":[]}"#,
            br#"{"jsonrpc":"2.0","id":1,"result":[]} trailing"#,
            br#"{"jsonrpc":"2.0","id":1,"result":[{"pubkey":[1,2],"account":{"data":["","base64"],"owner":"11111111111111111111111111111111","lamports":0}}]}"#,
            br#"{"jsonrpc":"2.0","id":1,"result":[{"pubkey":"11111111111111111111111111111111","account":{"data":["","base64"],"owner":"11111111111111111111111111111111","lamports":1.0}}]}"#,
            br#"{"jsonrpc":"2.0","id":1,"result":[{"pubkey":"11111111111111111111111111111111","account":{"data":["","base64"],"owner":"11111111111111111111111111111111","lamports":01}}]}"#,
            br#"{"jsonrpc":"2.0","id":1,"result":[{"pubkey":"11111111111111111111111111111111","account":{"data":["","base64"],"owner":"11111111111111111111111111111111","lamports":1,"lamports":2}}]}"#,
            br#"{"jsonrpc":"2.0","id":1,"result":[{"pubkey":"11111111111111111111111111111111","account":{"data":["","base64"],"owner":"11111111111111111111111111111111"}}]}"#,
            br#"{"jsonrpc":"2.0","id":1,"result":[{"pubkey":"11111111111111111111111111111111","account":{"data":["","base64"],"owner":"11111111111111111111111111111111","lamports":1,"x":[1,]}}]}"#,
            br#"{"jsonrpc":"2.0","id":1,"result":[{"pubkey":"11111111111111111111111111111111","account":{"data":["","base64"],"owner":"11111111111111111111111111111111","lamports":1,"x":"a\q"}}]}"#,
            b"{\"jsonrpc\":\"2.0\",\"id\":1,\"result\":[],\"x\":\"tab\there\"}",
            br#"{"jsonrpc":"2.0","id":1,"result":[],"x":"\ud800"}"#,
            br#"{"jsonrpc":"2.0","id":1,"result":[],"x":[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]}"#,
        ] {
            assert!(
                matches!(
                    parse_program_accounts_response(body),
                    Err(RpcError::Malformed { .. })
                ),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
        // A null result next to an error is the error.
        let body =
            br#"{"jsonrpc":"2.0","id":1,"result":null,"error":{"code":-32005,"message":"behind"}}"#;
        assert!(matches!(
            parse_program_accounts_response(body),
            Err(RpcError::Transient { .. })
        ));
    }

    #[test]
    fn malformed_bodies_are_errors() {
        for body in [
            &br#"{"jsonrpc":"2.0","id":1,"result":[{"pubkey":"11111111111111111111111111111111","account":{"data":["!!!","base64"],"owner":"11111111111111111111111111111111","lamports":0}}]}"#[..],
            br#"{"jsonrpc":"2.0","id":1,"result":[{"pubkey":"nope","account":{"data":["","base64"],"owner":"11111111111111111111111111111111","lamports":0}}]}"#,
            br#"{"jsonrpc":"2.0","id":1,"result":[{"pubkey":"11111111111111111111111111111111","account":{"data":["","base58"],"owner":"11111111111111111111111111111111","lamports":0}}]}"#,
            br#"not json"#,
            br#"{"jsonrpc":"2.0","id":1}"#,
        ] {
            assert!(
                matches!(
                    parse_program_accounts_response(body),
                    Err(RpcError::Malformed { .. })
                ),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
        let err = br#"{"jsonrpc":"2.0","id":1,"error":{"code":-32005,"message":"behind"}}"#;
        assert!(matches!(
            parse_program_accounts_response(err),
            Err(RpcError::Transient { .. })
        ));
        let err = br#"{"jsonrpc":"2.0","id":1,"error":{"code":-32602,"message":"bad"}}"#;
        assert!(matches!(
            parse_program_accounts_response(err),
            Err(RpcError::Permanent { .. })
        ));
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(3000))]
        /// The SIMD engine decodes (and refuses) exactly what the scalar
        /// `STANDARD` engine does, on text around SIMD block lengths.
        #[test]
        fn simd_base64_decodes_as_standard(
            data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200),
            edit in proptest::option::of((0.0..1.0f64, proptest::prelude::any::<u8>())),
        ) {
            use base64::engine::general_purpose::STANDARD;
            let mut text = STANDARD.encode(&data).into_bytes();
            if let Some((at, byte)) = edit && !text.is_empty() {
                let i = ((at * text.len() as f64) as usize).min(text.len() - 1);
                text[i] = byte;
            }
            proptest::prop_assert_eq!(BASE64.decode(&text), STANDARD.decode(&text));
        }
    }

    #[test]
    fn memcmp_filter_is_base58() {
        let f = Filter::Memcmp {
            offset: 0,
            bytes: vec![0xf1, 0x9a, 0x6d, 0x04, 0x11, 0xb1, 0x6d, 0xbc],
        };
        let j = f.to_json();
        assert_eq!(j["memcmp"]["offset"], 0);
        assert_eq!(
            j["memcmp"]["bytes"],
            bs58::encode([0xf1, 0x9a, 0x6d, 0x04, 0x11, 0xb1, 0x6d, 0xbc]).into_string()
        );
    }
}
