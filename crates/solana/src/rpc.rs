//! A small Solana JSON-RPC client over reqwest: the three read methods the
//! sources need (`getProgramAccounts` and its paginated V2 variant,
//! `getMultipleAccounts`, `getAccountInfo`), always with base64 encoding.
//!
//! - Deadlines: `getProgramAccounts` scans are slow on real providers, so they
//!   get their own deadline (120 s default), apart from the 30 s of other calls.
//! - Retries: HTTP 429 (honouring `Retry-After`), 5xx, JSON-RPC -32005 /
//!   -32603, timeouts and connection errors are transient and retried with
//!   exponential backoff and jitter; any other JSON-RPC error is permanent.
//! - Parsing: a response can be tens of MB. The body is deserialized once,
//!   straight from the bytes, into typed structs that borrow the base64 text;
//!   each account's data is base64-decoded as it is visited. No
//!   `serde_json::Value` tree is built. A body that is not valid JSON-RPC or
//!   holds bad base64 is [`RpcError::Malformed`]: the whole call fails,
//!   since a partial account list must never become a snapshot.

use std::borrow::Cow;
use std::fmt;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use reqwest::StatusCode;
use serde::de::{self, DeserializeOwned, Deserializer, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::pubkey::Pubkey;

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
        if self.opts.use_get_program_accounts_v2 {
            return self.get_program_accounts_v2(program, filters).await;
        }
        let filters: Vec<_> = filters.iter().map(Filter::to_json).collect();
        let params = json!([program.to_string(), {
            "encoding": "base64",
            "commitment": "confirmed",
            "filters": filters,
        }]);
        let list: AccountList = self
            .call(
                "getProgramAccounts",
                &params,
                self.opts.program_accounts_timeout,
            )
            .await?;
        Ok(list.0)
    }

    /// `getProgramAccountsV2`, following `paginationKey` until it is null.
    pub async fn get_program_accounts_v2(
        &self,
        program: &Pubkey,
        filters: &[Filter],
    ) -> Result<Vec<KeyedAccount>, RpcError> {
        const METHOD: &str = "getProgramAccountsV2";
        let filters: Vec<_> = filters.iter().map(Filter::to_json).collect();
        let mut out = Vec::new();
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
            let page: V2Page = self
                .call(METHOD, &params, self.opts.program_accounts_timeout)
                .await?;
            out.extend(page.accounts.0);
            match page.pagination_key {
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
                _ => return Ok(out),
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
            match self.attempt::<T>(method, &body, timeout).await {
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

    async fn attempt<T: DeserializeOwned>(
        &self,
        method: &str,
        body: &[u8],
        timeout: Duration,
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
        let env: Envelope<T> = serde_json::from_slice(&bytes).map_err(|e| {
            Failure::Final(RpcError::Malformed {
                method: method.into(),
                message: e.to_string(),
            })
        })?;
        if let Some(err) = env.error {
            return Err(classify_rpc_error(method, err));
        }
        env.result.ok_or_else(|| {
            Failure::Final(RpcError::Malformed {
                method: method.into(),
                message: "neither result nor error".into(),
            })
        })
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

#[derive(Deserialize)]
struct V2Page {
    accounts: AccountList,
    #[serde(default, rename = "paginationKey")]
    pagination_key: Option<String>,
}

/// `getProgramAccounts` result: a plain array, or `{context, value}` when a
/// provider adds the context anyway.
struct AccountList(Vec<KeyedAccount>);

impl<'de> Deserialize<'de> for AccountList {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = AccountList;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an array of keyed accounts or {context, value}")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<AccountList, A::Error> {
                let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1 << 16));
                while let Some(k) = seq.next_element::<WireKeyed>()? {
                    out.push(KeyedAccount {
                        pubkey: k.pubkey,
                        account: k.account.into(),
                    });
                }
                Ok(AccountList(out))
            }
            fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<AccountList, A::Error> {
                let mut value = None;
                while let Some(key) = map.next_key::<Cow<'de, str>>()? {
                    if key == "value" {
                        value = Some(map.next_value::<AccountList>()?);
                    } else {
                        map.next_value::<de::IgnoredAny>()?;
                    }
                }
                value.ok_or_else(|| de::Error::missing_field("value"))
            }
        }
        d.deserialize_any(V)
    }
}

#[derive(Deserialize)]
struct WireKeyed {
    pubkey: Pubkey,
    account: WireAccount,
}

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

/// `["<base64>", "base64"]`, decoded while deserializing: the base64 text is
/// borrowed from the response buffer, never copied.
struct Base64Data(Vec<u8>);

impl<'de> Deserialize<'de> for Base64Data {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        struct Pair<'a>(#[serde(borrow)] Cow<'a, str>, #[serde(borrow)] Cow<'a, str>);
        let Pair(text, encoding) = Pair::deserialize(d)?;
        if encoding != "base64" {
            return Err(de::Error::custom(format!(
                "account data encoding {encoding:?}, expected base64"
            )));
        }
        decode_base64(&text)
            .map(Base64Data)
            .map_err(de::Error::custom)
    }
}

/// Standard base64 (with padding) to bytes.
pub fn decode_base64(text: &str) -> Result<Vec<u8>, String> {
    BASE64
        .decode(text.as_bytes())
        .map_err(|e| format!("bad base64 account data: {e}"))
}

/// Parse a whole `getProgramAccounts` JSON-RPC response body (public for the
/// benchmark and the realtime ETL's tests).
pub fn parse_program_accounts_response(body: &[u8]) -> Result<Vec<KeyedAccount>, RpcError> {
    let method = "getProgramAccounts";
    let env: Envelope<AccountList> =
        serde_json::from_slice(body).map_err(|e| RpcError::Malformed {
            method: method.into(),
            message: e.to_string(),
        })?;
    if let Some(err) = env.error {
        return Err(match classify_rpc_error(method, err) {
            Failure::Final(e) => e,
            Failure::Retry { message, .. } => RpcError::Transient {
                method: method.into(),
                message,
            },
        });
    }
    env.result.map(|l| l.0).ok_or_else(|| RpcError::Malformed {
        method: method.into(),
        message: "neither result nor error".into(),
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
