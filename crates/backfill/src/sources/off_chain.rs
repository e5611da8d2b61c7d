//! The off-chain source: a partner's HTTP JSON API listing its offers.
//!
//! Request: `GET api_endpoint` with the job's headers, query params and
//! bearer `auth_token`, plus the run's window as `start_time` / `end_time`
//! (RFC 3339, UTC).
//!
//! Response: either a JSON array of offers, or `{"offers": [...], "next": ...}`.
//! Offer fields use the wire contract's snake_case names; timestamps are
//! RFC 3339; `term_days` 0 and an empty `lender_address` mean absent (what
//! a Go server emits for unset fields).
//!
//! Pagination, first match wins:
//! 1. a non-empty `next` field. If it parses as an absolute http(s) URL, or
//!    starts with `/`, `?`, `./` or `../` (a URL relative to the current
//!    page), it is fetched as is. Anything else is an opaque cursor: the
//!    first page's URL is requested again with `cursor=<next>`.
//! 2. an RFC 8288 `Link: <url>; rel="next"` header (relative URLs allowed).
//!
//! Next-page URLs must stay on the endpoint's origin (the bearer token is
//! never sent elsewhere); a URL seen twice (a cursor loop) or more than
//! `max_pages` pages fail the run, since a partial snapshot must never be
//! applied. Any invalid offer fails the whole run, naming page, item and
//! field: an off-chain snapshot is all or nothing.

use crate::job::{JobSpec, OffChainParams, SourceParams, TimeWindow};
use crate::source::{Snapshot, Source, SourceError};
use crate::status::Progress;
use async_trait::async_trait;
use chrono::SecondsFormat;
use offer_domain::json::offer_from_json;
use offer_domain::validate::validate_offer;
use offer_domain::{FieldError, MarginOffer};
use reqwest::{StatusCode, Url};
use std::collections::HashSet;
use std::time::Duration;

pub struct OffChainSource {
    client: reqwest::Client,
    max_pages: usize,
}

impl OffChainSource {
    pub const DEFAULT_MAX_PAGES: usize = 10_000;

    /// A client with gzip, a 10 s connect and a 60 s per-request timeout.
    pub fn new() -> Result<Self, SourceError> {
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(60))
            .user_agent(concat!(
                "margin-offer-backfiller/",
                env!("CARGO_PKG_VERSION")
            ))
            .build()
            .map_err(|e| SourceError::Permanent(format!("cannot build the HTTP client: {e}")))?;
        Ok(Self::with_client(client))
    }

    pub fn with_client(client: reqwest::Client) -> Self {
        OffChainSource {
            client,
            max_pages: Self::DEFAULT_MAX_PAGES,
        }
    }

    pub fn max_pages(mut self, n: usize) -> Self {
        self.max_pages = n.max(1);
        self
    }
}

#[async_trait]
impl Source for OffChainSource {
    async fn fetch(
        &self,
        job: &JobSpec,
        window: TimeWindow,
        progress: &Progress,
    ) -> Result<Snapshot, SourceError> {
        let SourceParams::OffChain(params) = &job.params else {
            return Err(SourceError::Permanent(format!(
                "job {:?} is not an off-chain job",
                job.name
            )));
        };
        let first = first_page_url(params, window);
        let mut url = first.clone();
        let mut visited = HashSet::new();
        let mut offers = Vec::new();
        let mut ids = HashSet::new();
        for page in 1.. {
            if page > self.max_pages {
                return Err(SourceError::Permanent(format!(
                    "more than {} pages from {}: refusing a possibly endless pagination",
                    self.max_pages,
                    redact(&first)
                )));
            }
            if !visited.insert(url.to_string()) {
                return Err(SourceError::Permanent(format!(
                    "pagination loop: page {page} points back to an already fetched page ({})",
                    redact(&url)
                )));
            }
            let (body, link_next) = self.get(params, &url, page).await?;
            let (items, next) = parse_page(&body, page)?;
            let n = items.len();
            for (i, item) in items.into_iter().enumerate() {
                let mut offer = decode_offer(item, page, i)?;
                offer.source = Some(job.name.clone());
                if !ids.insert(offer.id.clone()) {
                    return Err(SourceError::Permanent(format!(
                        "page {page} item {i}: id: duplicate id {:?} in the feed",
                        offer.id
                    )));
                }
                offers.push(offer);
            }
            progress.add_fetched(n);
            progress.add_batch();
            let next_url = match next {
                Some(next) => Some(resolve_next(&next, &url, &first)?),
                None => link_next,
            };
            match next_url {
                None => break,
                Some(u) => {
                    if u.origin() != first.origin() {
                        return Err(SourceError::Permanent(format!(
                            "page {page}: next page {} is on another origin than the endpoint; refused",
                            redact(&u)
                        )));
                    }
                    url = u;
                }
            }
        }
        Ok(Snapshot::single(job.name.clone(), offers))
    }
}

impl OffChainSource {
    /// One page: its body and the `Link` header's next URL.
    async fn get(
        &self,
        p: &OffChainParams,
        url: &Url,
        page: usize,
    ) -> Result<(Vec<u8>, Option<Url>), SourceError> {
        let mut req = self.client.get(url.clone());
        for (k, v) in &p.headers {
            req = req.header(k, v);
        }
        if let Some(token) = &p.auth_token {
            req = req.bearer_auth(token);
        }
        let resp = req.send().await.map_err(|e| http_error(e, page))?;
        let status = resp.status();
        if !status.is_success() {
            let snippet: String = resp
                .text()
                .await
                .unwrap_or_default()
                .chars()
                .take(200)
                .collect();
            let msg = format!("page {page}: HTTP {status} from {}: {snippet}", redact(url));
            return Err(if is_transient_status(status) {
                SourceError::Transient(msg)
            } else {
                SourceError::Permanent(msg)
            });
        }
        let link_next = resp
            .headers()
            .get_all(reqwest::header::LINK)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find_map(|v| link_next(v, url));
        let body = resp.bytes().await.map_err(|e| http_error(e, page))?;
        Ok((body.to_vec(), link_next))
    }
}

fn is_transient_status(s: StatusCode) -> bool {
    s == StatusCode::TOO_MANY_REQUESTS || s == StatusCode::REQUEST_TIMEOUT || s.is_server_error()
}

fn http_error(e: reqwest::Error, page: usize) -> SourceError {
    // The URL may carry secrets in its query: never print it.
    let builder = e.is_builder();
    let msg = format!("page {page}: HTTP request failed: {}", e.without_url());
    if builder {
        SourceError::Permanent(msg)
    } else {
        SourceError::Transient(msg)
    }
}

/// The endpoint without query or credentials, for messages.
fn redact(u: &Url) -> String {
    let mut u = u.clone();
    u.set_query(None);
    let _ = u.set_password(None);
    let _ = u.set_username("");
    u.to_string()
}

fn first_page_url(p: &OffChainParams, w: TimeWindow) -> Url {
    let mut u = p.api_endpoint.clone();
    {
        let mut q = u.query_pairs_mut();
        for (k, v) in &p.query_params {
            q.append_pair(k, v);
        }
        q.append_pair(
            "start_time",
            &w.start.to_rfc3339_opts(SecondsFormat::Secs, true),
        );
        q.append_pair(
            "end_time",
            &w.end.to_rfc3339_opts(SecondsFormat::Secs, true),
        );
    }
    u
}

fn resolve_next(next: &str, current: &Url, first: &Url) -> Result<Url, SourceError> {
    if let Ok(u) = Url::parse(next)
        && matches!(u.scheme(), "http" | "https")
    {
        return Ok(u);
    }
    if ["/", "?", "./", "../"].iter().any(|p| next.starts_with(p)) {
        return current.join(next).map_err(|e| {
            SourceError::Permanent(format!("next page {next:?} is not a valid URL: {e}"))
        });
    }
    let mut u = first.clone();
    let kept: Vec<(String, String)> = first
        .query_pairs()
        .filter(|(k, _)| k != "cursor")
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    u.query_pairs_mut()
        .clear()
        .extend_pairs(kept)
        .append_pair("cursor", next);
    Ok(u)
}

/// The `rel="next"` target of one `Link` header value, resolved against `base`.
fn link_next(header: &str, base: &Url) -> Option<Url> {
    header.split(',').find_map(|part| {
        let (target, params) = part.trim().split_once(';')?;
        let target = target.trim().strip_prefix('<')?.strip_suffix('>')?;
        let is_next = params.split(';').any(|p| {
            let Some((k, v)) = p.split_once('=') else {
                return false;
            };
            k.trim().eq_ignore_ascii_case("rel")
                && v.trim()
                    .trim_matches('"')
                    .split_whitespace()
                    .any(|r| r.eq_ignore_ascii_case("next"))
        });
        if is_next {
            base.join(target).ok()
        } else {
            None
        }
    })
}

/// The items and the `next` value of one page.
fn parse_page(
    body: &[u8],
    page: usize,
) -> Result<(Vec<serde_json::Value>, Option<String>), SourceError> {
    let doc: serde_json::Value = serde_json::from_slice(body)
        .map_err(|e| SourceError::Permanent(format!("page {page}: malformed JSON: {e}")))?;
    match doc {
        serde_json::Value::Array(items) => Ok((items, None)),
        serde_json::Value::Object(mut m) => {
            let items = match m.remove("offers") {
                Some(serde_json::Value::Array(items)) => items,
                Some(serde_json::Value::Null) | None => {
                    return Err(SourceError::Permanent(format!(
                        "page {page}: object without an \"offers\" array"
                    )));
                }
                Some(_) => {
                    return Err(SourceError::Permanent(format!(
                        "page {page}: \"offers\" is not an array"
                    )));
                }
            };
            let next = match m.remove("next") {
                None | Some(serde_json::Value::Null) => None,
                Some(serde_json::Value::String(s)) => Some(s).filter(|s| !s.trim().is_empty()),
                Some(serde_json::Value::Number(n)) => Some(n.to_string()),
                Some(_) => {
                    return Err(SourceError::Permanent(format!(
                        "page {page}: \"next\" must be a string, a number or null"
                    )));
                }
            };
            Ok((items, next))
        }
        _ => Err(SourceError::Permanent(format!(
            "page {page}: expected a JSON array of offers or an object with \"offers\""
        ))),
    }
}

/// One feed item as an offer, validated; errors name page, item and field.
/// The JSON mapping itself is shared with `offersctl` (`offer_domain::json`).
fn decode_offer(
    item: serde_json::Value,
    page: usize,
    i: usize,
) -> Result<MarginOffer, SourceError> {
    let id = item
        .get("id")
        .and_then(|v| v.as_str())
        .unwrap_or_default()
        .to_owned();
    let at = if id.is_empty() {
        format!("page {page} item {i}")
    } else {
        format!("page {page} item {i} (id {id:?})")
    };
    let bad = |e: FieldError| {
        // A missing field is reported at the item's root; serde names it.
        if e.field.is_empty() {
            SourceError::Permanent(format!("{at}: {}", e.message))
        } else {
            SourceError::Permanent(format!("{at}: {}: {}", e.field, e.message))
        }
    };
    let offer = offer_from_json(item).map_err(bad)?;
    validate_offer(offer).map_err(bad)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_header_and_next_resolution() {
        let base = Url::parse("http://h/api/offers?a=1").unwrap();
        let v = r#"<http://h/api/offers?page=1>; rel="prev", </api/offers?page=3>; rel="next""#;
        assert_eq!(
            link_next(v, &base).unwrap().as_str(),
            "http://h/api/offers?page=3"
        );
        assert!(link_next(r#"<x>; rel="prev""#, &base).is_none());
        let cur = Url::parse("http://h/api/offers?page=2").unwrap();
        assert_eq!(
            resolve_next("abc", &cur, &base).unwrap().as_str(),
            "http://h/api/offers?a=1&cursor=abc"
        );
        assert_eq!(
            resolve_next("?page=3", &cur, &base).unwrap().as_str(),
            "http://h/api/offers?page=3"
        );
        assert_eq!(
            resolve_next("https://h/x", &cur, &base).unwrap().as_str(),
            "https://h/x"
        );
    }
}
