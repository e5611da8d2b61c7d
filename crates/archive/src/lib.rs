//! Offer archives in object storage (issue 4 §2): package `offer-archive`,
//! also reachable as `backfill::archive`.
//!
//! A snapshot is one gzip-compressed NDJSON object, one offer per line with
//! the wire contract's field names and RFC 3339 timestamps
//! (`offer_domain::json`), named `<prefix>/<UTC timestamp>.ndjson.gz` where
//! the timestamp is `YYYYMMDDTHHMMSS.fffffffffZ`: sortable as text and free
//! of `:` (awkward in file names and URLs).
//!
//! Archive URLs: `file:///dir`, `s3://bucket/prefix`, `gs://bucket/prefix`,
//! `az://container/prefix`. Credentials come from the usual environment
//! variables of each cloud (`AWS_*`, `GOOGLE_*`, `AZURE_*`); `AWS_ENDPOINT_URL`
//! or an `?endpoint=` query parameter points S3 at a compatible server. Other
//! query parameters are passed to the store's builder as configuration keys
//! (e.g. `?region=eu-west-1&allow_http=true`).

use chrono::{DateTime, NaiveDateTime, Utc};
use flate2::Compression;
use flate2::write::GzEncoder;
use object_store::aws::AmazonS3Builder;
use object_store::azure::MicrosoftAzureBuilder;
use object_store::buffered::BufWriter;
use object_store::gcp::GoogleCloudStorageBuilder;
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreScheme};
use offer_domain::json::{offer_from_json, offer_to_json, parse_rfc3339};
use offer_domain::query::MAX_LIMIT;
use offer_domain::{
    ListQuery, MarginOffer, OverwriteFilter, SortField, SortOrder, StoreError, Timestamp,
};
use offer_store::MarginOfferStore;
use std::io::{BufRead, Read, Write};
use std::sync::Arc;
use tokio::io::AsyncWriteExt;
use url::Url;

/// Suffix of every snapshot object.
pub const SNAPSHOT_SUFFIX: &str = ".ndjson.gz";
const NAME_FORMAT: &str = "%Y%m%dT%H%M%S%.9fZ";

#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("archive URL {url:?}: {message}")]
    Url { url: String, message: String },
    /// The object's storage class (S3 Glacier / Deep Archive, Azure Archive
    /// tier) keeps it offline until someone restores it.
    #[error(
        "snapshot {object} is in an archival storage class and cannot be read until it is restored (e.g. `aws s3api restore-object`); restore it and rerun: {message}"
    )]
    NeedsRestore { object: String, message: String },
    #[error("snapshot {object} not found")]
    NotFound { object: String },
    #[error("no snapshot under {url} taken between {start} and {end}")]
    NoSnapshot {
        url: String,
        start: DateTime<Utc>,
        end: DateTime<Utc>,
    },
    #[error("snapshot {object}, line {line}: {message}")]
    Format {
        object: String,
        line: usize,
        message: String,
    },
    #[error("object storage error on {object}: {message}")]
    Storage {
        object: String,
        message: String,
        /// Network trouble or a 5xx: worth a retry.
        transient: bool,
    },
    #[error("reading the offer book: {0}")]
    Store(#[from] StoreError),
}

impl ArchiveError {
    /// True when trying again may help (not for a missing restore).
    pub fn is_transient(&self) -> bool {
        match self {
            ArchiveError::Storage { transient, .. } => *transient,
            ArchiveError::Store(e) => matches!(
                e,
                StoreError::Unavailable(_) | StoreError::DeadlineExceeded(_)
            ),
            _ => false,
        }
    }
}

/// An opened archive: a store and the prefix snapshots live under.
#[derive(Clone, Debug)]
pub struct ArchiveLocation {
    store: Arc<dyn ObjectStore>,
    prefix: Path,
    /// The URL without query (which may carry configuration), for messages.
    display: String,
}

impl ArchiveLocation {
    /// Opens `url` (see the module doc for schemes and configuration).
    pub fn open(url: &str) -> Result<Self, ArchiveError> {
        let bad = |message: String| ArchiveError::Url {
            url: redact(url),
            message,
        };
        let mut parsed = Url::parse(url).map_err(|e| bad(e.to_string()))?;
        let options: Vec<(String, String)> = parsed
            .query_pairs()
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        parsed.set_query(None);
        let display = parsed.to_string();
        let (scheme, prefix) = ObjectStoreScheme::parse(&parsed).map_err(|e| bad(e.to_string()))?;
        let store: Arc<dyn ObjectStore> = match scheme {
            ObjectStoreScheme::Local => {
                if !options.is_empty() {
                    return Err(bad("file:// URLs take no options".into()));
                }
                let dir = parsed
                    .to_file_path()
                    .map_err(|()| bad("not an absolute file path".into()))?;
                // Snapshots live under `dir`, created on first use, so the
                // prefix is relative to it.
                std::fs::create_dir_all(&dir)
                    .map_err(|e| bad(format!("cannot create {}: {e}", dir.display())))?;
                let fs = LocalFileSystem::new_with_prefix(&dir).map_err(|e| bad(e.to_string()))?;
                return Ok(ArchiveLocation {
                    store: Arc::new(fs),
                    prefix: Path::default(),
                    display,
                });
            }
            ObjectStoreScheme::AmazonS3 => {
                let mut b = AmazonS3Builder::from_env().with_url(parsed.as_str());
                let env_endpoint = std::env::var("AWS_ENDPOINT_URL")
                    .or_else(|_| std::env::var("AWS_ENDPOINT"))
                    .ok();
                let mut endpoint = env_endpoint;
                for (k, v) in &options {
                    let key = k.parse().map_err(|e| bad(format!("option {k:?}: {e}")))?;
                    if matches!(key, object_store::aws::AmazonS3ConfigKey::Endpoint) {
                        endpoint = Some(v.clone());
                    }
                    b = b.with_config(key, v);
                }
                // A local S3-compatible server speaks plain HTTP.
                if endpoint
                    .as_deref()
                    .is_some_and(|e| e.starts_with("http://"))
                {
                    b = b.with_allow_http(true);
                }
                Arc::new(b.build().map_err(|e| bad(e.to_string()))?)
            }
            ObjectStoreScheme::GoogleCloudStorage => {
                let mut b = GoogleCloudStorageBuilder::from_env().with_url(parsed.as_str());
                for (k, v) in &options {
                    let key = k.parse().map_err(|e| bad(format!("option {k:?}: {e}")))?;
                    b = b.with_config(key, v);
                }
                Arc::new(b.build().map_err(|e| bad(e.to_string()))?)
            }
            ObjectStoreScheme::MicrosoftAzure => {
                let mut b = MicrosoftAzureBuilder::from_env().with_url(parsed.as_str());
                for (k, v) in &options {
                    let key = k.parse().map_err(|e| bad(format!("option {k:?}: {e}")))?;
                    b = b.with_config(key, v);
                }
                Arc::new(b.build().map_err(|e| bad(e.to_string()))?)
            }
            other => {
                return Err(bad(format!(
                    "unsupported scheme {other:?} (expected file://, s3://, gs:// or az://)"
                )));
            }
        };
        Ok(ArchiveLocation {
            store,
            prefix,
            display,
        })
    }

    /// The archive's URL (without query parameters).
    pub fn url(&self) -> &str {
        &self.display
    }

    fn child(&self, name: &str) -> Path {
        let mut p = self.prefix.clone();
        for part in name.split('/').filter(|s| !s.is_empty()) {
            p = p.child(part);
        }
        p
    }

    fn object_url(&self, p: &Path) -> String {
        let rel = p
            .as_ref()
            .strip_prefix(self.prefix.as_ref())
            .unwrap_or(p.as_ref())
            .trim_start_matches('/');
        format!("{}/{rel}", self.display.trim_end_matches('/'))
    }

    /// Every snapshot under the prefix (not recursing into sub-prefixes),
    /// oldest first.
    pub async fn list_snapshots(&self) -> Result<Vec<SnapshotInfo>, ArchiveError> {
        let prefix = (!self.prefix.as_ref().is_empty()).then_some(&self.prefix);
        let listed = self
            .store
            .list_with_delimiter(prefix)
            .await
            .map_err(|e| self.storage_error(&self.prefix, e))?;
        let mut out: Vec<SnapshotInfo> = listed
            .objects
            .into_iter()
            .filter_map(|m| {
                let name = m.location.filename()?.to_owned();
                let taken_at = parse_snapshot_name(&name)?;
                Some(SnapshotInfo {
                    name,
                    taken_at,
                    size: m.size,
                })
            })
            .collect();
        out.sort_by(|a, b| a.taken_at.cmp(&b.taken_at).then(a.name.cmp(&b.name)));
        Ok(out)
    }

    /// The newest snapshot taken inside `[start, end]`.
    pub async fn newest_in(
        &self,
        start: DateTime<Utc>,
        end: DateTime<Utc>,
    ) -> Result<SnapshotInfo, ArchiveError> {
        self.list_snapshots()
            .await?
            .into_iter()
            .rev()
            .find(|s| s.taken_at >= start && s.taken_at <= end)
            .ok_or_else(|| ArchiveError::NoSnapshot {
                url: self.display.clone(),
                start,
                end,
            })
    }

    /// Reads and decodes one snapshot, named relative to the prefix.
    pub async fn read_snapshot(&self, name: &str) -> Result<Vec<MarginOffer>, ArchiveError> {
        let path = self.child(name);
        let object = self.object_url(&path);
        let got = self.store.get(&path).await.map_err(|e| match e {
            object_store::Error::NotFound { .. } => ArchiveError::NotFound {
                object: object.clone(),
            },
            e => self.storage_error(&path, e),
        })?;
        let bytes = got
            .bytes()
            .await
            .map_err(|e| self.storage_error(&path, e))?;
        decode_snapshot(&bytes[..], &object)
    }

    fn storage_error(&self, path: &Path, e: object_store::Error) -> ArchiveError {
        let object = self.object_url(path);
        let message = error_chain(&e);
        if needs_restore(&message) {
            return ArchiveError::NeedsRestore { object, message };
        }
        // Permission, not-found and configuration errors will not fix
        // themselves; anything else (network, 5xx after the client's own
        // retries) may.
        let transient = !matches!(
            e,
            object_store::Error::NotFound { .. }
                | object_store::Error::PermissionDenied { .. }
                | object_store::Error::Unauthenticated { .. }
                | object_store::Error::NotSupported { .. }
                | object_store::Error::NotImplemented
                | object_store::Error::UnknownConfigurationKey { .. }
                | object_store::Error::InvalidPath { .. }
        );
        ArchiveError::Storage {
            object,
            message,
            transient,
        }
    }
}

/// One snapshot object of an archive.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotInfo {
    /// Object name relative to the archive prefix.
    pub name: String,
    pub taken_at: DateTime<Utc>,
    pub size: u64,
}

/// What an export wrote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExportSummary {
    /// Full URL of the snapshot object.
    pub object: String,
    /// Object name relative to the archive URL.
    pub name: String,
    pub taken_at: DateTime<Utc>,
    pub offers: usize,
    /// Compressed size.
    pub bytes: u64,
}

/// `<timestamp>.ndjson.gz` for a snapshot taken at `at`.
pub fn snapshot_name(at: DateTime<Utc>) -> String {
    format!("{}{SNAPSHOT_SUFFIX}", at.format(NAME_FORMAT))
}

/// The time of a snapshot name, `None` for any other object.
pub fn parse_snapshot_name(name: &str) -> Option<DateTime<Utc>> {
    let stamp = name.strip_suffix(SNAPSHOT_SUFFIX)?;
    NaiveDateTime::parse_from_str(stamp, NAME_FORMAT)
        .ok()
        .map(|t| t.and_utc())
}

/// One NDJSON line (without newline). Unlike feeds, archives keep
/// `updated_timestamp` and `source`: the restore rule compares the former and
/// restored offers keep their own scope.
pub fn encode_offer_line(o: &MarginOffer) -> String {
    offer_to_json(o).to_string()
}

/// Decodes one NDJSON line, including `updated_timestamp` and `source`.
pub fn decode_offer_line(line: &str) -> Result<MarginOffer, String> {
    let v: serde_json::Value = serde_json::from_str(line).map_err(|e| e.to_string())?;
    let updated = match v.get("updated_timestamp") {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::String(s)) if s.trim().is_empty() => None,
        Some(serde_json::Value::String(s)) => {
            Some(parse_rfc3339(s.trim()).map_err(|m| format!("updated_timestamp: {m}"))?)
        }
        Some(_) => return Err("updated_timestamp: must be an RFC 3339 string".into()),
    };
    let source = match v.get("source") {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::String(s)) if s.is_empty() => None,
        Some(serde_json::Value::String(s)) => Some(s.clone()),
        Some(_) => return Err("source: must be a string".into()),
    };
    let mut o = offer_from_json(v).map_err(|e| {
        if e.field.is_empty() {
            e.message
        } else {
            format!("{}: {}", e.field, e.message)
        }
    })?;
    o.updated_timestamp = updated;
    o.source = source;
    Ok(o)
}

/// Decodes a whole gzip NDJSON snapshot; blank lines are ignored.
pub fn decode_snapshot(gz: impl Read, object: &str) -> Result<Vec<MarginOffer>, ArchiveError> {
    let reader = std::io::BufReader::new(flate2::read::GzDecoder::new(gz));
    let mut offers = Vec::new();
    for (i, line) in reader.lines().enumerate() {
        let format = |message: String| ArchiveError::Format {
            object: object.to_owned(),
            line: i + 1,
            message,
        };
        let line = line.map_err(|e| format(format!("not gzip-compressed UTF-8 text: {e}")))?;
        if line.trim().is_empty() {
            continue;
        }
        offers.push(decode_offer_line(&line).map_err(format)?);
    }
    Ok(offers)
}

/// Streams the whole book (or what `filter` selects, expired offers
/// included) into a new snapshot under `url`, named after the current time.
pub async fn export_snapshot(
    store: &dyn MarginOfferStore,
    url: &str,
    filter: Option<OverwriteFilter>,
) -> Result<ExportSummary, ArchiveError> {
    let loc = ArchiveLocation::open(url)?;
    export_snapshot_to(store, &loc, filter, Utc::now()).await
}

/// [`export_snapshot`] into an opened archive, with the snapshot's time given.
pub async fn export_snapshot_to(
    store: &dyn MarginOfferStore,
    loc: &ArchiveLocation,
    filter: Option<OverwriteFilter>,
    taken_at: DateTime<Utc>,
) -> Result<ExportSummary, ArchiveError> {
    let name = snapshot_name(taken_at);
    let path = loc.child(&name);
    let object = loc.object_url(&path);
    // BufWriter switches to a multipart upload once its buffer fills, so
    // memory stays bounded by a page plus one part, whatever the book's size.
    let mut out = BufWriter::new(loc.store.clone(), path.clone());
    let result = write_pages(store, filter, &mut out, loc, &path).await;
    match result {
        Ok((offers, bytes)) => {
            out.shutdown()
                .await
                .map_err(|e| io_to_storage(loc, &path, e))?;
            Ok(ExportSummary {
                object,
                name,
                taken_at,
                offers,
                bytes,
            })
        }
        Err(e) => {
            // Never leave half a snapshot behind for a restore to pick up.
            let _ = out.abort().await;
            Err(e)
        }
    }
}

async fn write_pages(
    store: &dyn MarginOfferStore,
    filter: Option<OverwriteFilter>,
    out: &mut BufWriter,
    loc: &ArchiveLocation,
    path: &Path,
) -> Result<(usize, u64), ArchiveError> {
    let mut query = ListQuery {
        filter: filter.map(|f| f.as_offer_filter()).unwrap_or_default(),
        // Id order is total and stable, so keyset paging sees every offer once.
        sort_by: SortField::Id,
        sort_order: SortOrder::Asc,
        limit: MAX_LIMIT,
        include_expired: true,
        ..Default::default()
    };
    let mut gz = GzEncoder::new(Vec::new(), Compression::default());
    let (mut offers, mut bytes) = (0usize, 0u64);
    loop {
        let page = store.list(&query).await?;
        for o in &page.offers {
            let line = encode_offer_line(o);
            gz.write_all(line.as_bytes())
                .and_then(|()| gz.write_all(b"\n"))
                .map_err(|e| io_to_storage(loc, path, e))?;
        }
        offers += page.offers.len();
        let chunk = std::mem::take(gz.get_mut());
        bytes += chunk.len() as u64;
        out.write_all(&chunk)
            .await
            .map_err(|e| io_to_storage(loc, path, e))?;
        match page.next_page_token {
            Some(t) if !page.offers.is_empty() => query.page_token = Some(t),
            _ => break,
        }
    }
    let tail = gz.finish().map_err(|e| io_to_storage(loc, path, e))?;
    bytes += tail.len() as u64;
    out.write_all(&tail)
        .await
        .map_err(|e| io_to_storage(loc, path, e))?;
    Ok((offers, bytes))
}

fn io_to_storage(loc: &ArchiveLocation, path: &Path, e: std::io::Error) -> ArchiveError {
    let message = error_chain(&e);
    ArchiveError::Storage {
        object: loc.object_url(path),
        transient: !needs_restore(&message),
        message,
    }
}

/// S3's `InvalidObjectState` (Glacier, Deep Archive, archive tiers of
/// Intelligent-Tiering) and Azure's `BlobArchived`.
fn needs_restore(message: &str) -> bool {
    message.contains("InvalidObjectState") || message.contains("BlobArchived")
}

/// The error and its sources on one line: object_store puts the server's
/// answer (with the S3 error code) in a source.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let m = c.to_string();
        if !s.contains(&m) {
            s.push_str(": ");
            s.push_str(&m);
        }
        cur = c.source();
    }
    s
}

/// The URL without query or password, for messages.
fn redact(url: &str) -> String {
    match Url::parse(url) {
        Ok(mut u) => {
            u.set_query(None);
            let _ = u.set_password(None);
            u.to_string()
        }
        Err(_) => url.split('?').next().unwrap_or_default().to_owned(),
    }
}

/// The time a [`Timestamp`] denotes, for callers comparing with snapshot names.
pub fn timestamp_to_utc(t: Timestamp) -> DateTime<Utc> {
    DateTime::<Utc>::from_timestamp_nanos(t.as_nanos())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn names_sort_and_parse() {
        let t = DateTime::parse_from_rfc3339("2024-03-05T06:07:08.123456789Z")
            .unwrap()
            .to_utc();
        let n = snapshot_name(t);
        assert_eq!(n, "20240305T060708.123456789Z.ndjson.gz");
        assert_eq!(parse_snapshot_name(&n), Some(t));
        assert_eq!(parse_snapshot_name("notes.txt"), None);
        assert_eq!(parse_snapshot_name("x.ndjson.gz"), None);
        let later = snapshot_name(t + chrono::Duration::seconds(1));
        assert!(later > n);
    }

    #[test]
    fn restore_errors_are_recognised() {
        assert!(needs_restore(
            "Server returned non-2xx status code: 403 Forbidden: <Error><Code>InvalidObjectState</Code>"
        ));
        assert!(!needs_restore("403 Forbidden: AccessDenied"));
    }

    #[test]
    fn lines_keep_every_field() {
        let mut o = MarginOffer::example("a");
        o.term_days = Some(30);
        o.lender_address = Some("L".into());
        o.last_borrowed_timestamp = Some(Timestamp(1_700_000_000_000_000_001));
        o.created_timestamp = Some(Timestamp(1_700_000_000_000_000_000));
        o.updated_timestamp = Some(Timestamp(1_700_000_000_500_000_000));
        o.source = Some("marginfi".into());
        assert_eq!(decode_offer_line(&encode_offer_line(&o)).unwrap(), o);
        assert!(decode_offer_line("{").is_err());
        let e = decode_offer_line(r#"{"id":"x"}"#).unwrap_err();
        assert!(e.contains("missing field"), "{e}");
    }

    #[test]
    fn bad_urls_are_named() {
        for u in ["not a url", "ftp://x/y", "file://relative?x=1"] {
            let e = ArchiveLocation::open(u).unwrap_err();
            assert!(matches!(e, ArchiveError::Url { .. }), "{u}: {e}");
        }
    }
}
