//! Command-line flags and the parsing of addresses and database URLs.

use clap::Parser;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;

/// The margin-offer store: the `marginoffer.v1` gRPC service over a durable
/// database, with `/healthz` and `/metrics` on a separate HTTP port.
#[derive(Clone, Debug, Parser)]
#[command(name = "store", version, about, long_about = None)]
pub struct Cli {
    /// gRPC listen address; `:PORT` means all interfaces.
    #[arg(
        long,
        env = "STORE_GRPC_ADDRESS",
        default_value = ":8080",
        value_parser = parse_listen_addr
    )]
    pub addr: SocketAddr,

    /// HTTP listen address for /healthz and /metrics; `:PORT` means all interfaces.
    #[arg(
        long,
        env = "STORE_HTTP_ADDRESS",
        default_value = ":8081",
        value_parser = parse_listen_addr
    )]
    pub http_addr: SocketAddr,

    /// Where offers are kept: `sqlite://./rel.db`, `sqlite:///abs.db`,
    /// `sqlite:rel.db`, `memory://` or `postgres://USER:PASS@HOST:PORT/DB`
    /// (several `store` instances may share one PostgreSQL database).
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "sqlite://./data/offers.db",
        value_parser = DatabaseUrl::parse
    )]
    pub database_url: DatabaseUrl,

    /// PostgreSQL only: connections in each instance's pool.
    #[arg(long, env = "STORE_PG_POOL_SIZE", default_value_t = 16,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub pg_pool_size: u32,

    /// PostgreSQL only: the server-side limit on one statement, e.g. `30s`
    /// or `500ms`; exceeding it is DEADLINE_EXCEEDED.
    #[arg(long, env = "STORE_PG_STATEMENT_TIMEOUT", default_value = "30s",
          value_parser = parse_duration)]
    pub pg_statement_timeout: std::time::Duration,

    /// PostgreSQL only: how often a write that hit a serialisation failure
    /// or deadlock is retried before the call fails.
    #[arg(long, env = "STORE_PG_SERIALIZATION_RETRIES", default_value_t = 5)]
    pub pg_serialization_retries: u32,

    /// Most offers one unary bulk request may carry.
    #[arg(long, env = "STORE_MAX_BULK_ITEMS", default_value_t = 10_000,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub max_bulk_items: u32,

    /// Largest gRPC message accepted, in bytes (default: the service's own).
    #[arg(long, env = "STORE_MAX_MESSAGE_BYTES", value_parser = clap::value_parser!(u32).range(1024..))]
    pub max_message_bytes: Option<u32>,

    /// How often subscriptions get a heartbeat, e.g. `30s` or `500ms`.
    #[arg(long, env = "STORE_HEARTBEAT", default_value = "30s", value_parser = parse_heartbeat)]
    pub heartbeat: std::time::Duration,

    /// The fewest changes the change log keeps for resuming subscribers
    /// (`start_revision`); older ones are pruned unless younger than
    /// `--change-log-min-age`. An older resume point gets OUT_OF_RANGE.
    #[arg(long, env = "STORE_CHANGE_LOG_RETENTION", default_value_t = 1_000_000,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub change_log_retention: u64,

    /// Changes younger than this stay in the change log whatever their
    /// number, e.g. `24h`; `0` lets `--change-log-retention` alone decide.
    #[arg(long, env = "STORE_CHANGE_LOG_MIN_AGE", default_value = "24h",
          value_parser = parse_age)]
    pub change_log_min_age: std::time::Duration,

    /// Most concurrent subscriptions; more are refused with RESOURCE_EXHAUSTED.
    #[arg(long, env = "STORE_MAX_SUBSCRIBERS", default_value_t = 10_000,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub max_subscribers: u32,

    /// Bearer token every mutating RPC must carry (`authorization: Bearer
    /// <token>`); writes are open when neither this nor the file is set.
    #[arg(long, env = "STORE_WRITE_TOKEN", hide_env_values = true,
          conflicts_with = "write_token_file", value_parser = parse_secret)]
    pub write_token: Option<store_service::Secret>,

    /// File holding the write token (surrounding whitespace ignored).
    #[arg(long, env = "STORE_WRITE_TOKEN_FILE")]
    pub write_token_file: Option<PathBuf>,

    /// Bearer token every RPC of the service needs (the write token also
    /// works); reads are open when neither this nor the file is set.
    #[arg(long, env = "STORE_READ_TOKEN", hide_env_values = true,
          conflicts_with = "read_token_file", value_parser = parse_secret)]
    pub read_token: Option<store_service::Secret>,

    /// File holding the read token.
    #[arg(long, env = "STORE_READ_TOKEN_FILE")]
    pub read_token_file: Option<PathBuf>,

    /// PEM certificate chain of the gRPC port; with `--tls-key`, the port
    /// speaks TLS only.
    #[arg(long, env = "STORE_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key matching `--tls-cert`.
    #[arg(long, env = "STORE_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// PEM CA certificate(s): clients must present a certificate it signed (mTLS).
    #[arg(long, env = "STORE_TLS_CLIENT_CA", requires = "tls_cert")]
    pub tls_client_ca: Option<PathBuf>,

    /// Most in-flight calls of the service (unary and streaming) per client
    /// connection; more get RESOURCE_EXHAUSTED. Default: unlimited.
    #[arg(long, env = "STORE_MAX_CONCURRENT_STREAMS",
          value_parser = clap::value_parser!(u32).range(1..))]
    pub max_concurrent_streams: Option<u32>,

    /// Longest a call may run before its response, whatever deadline the
    /// client asked for, e.g. `60s`; longer calls get RESOURCE_EXHAUSTED.
    /// Subscriptions, once open, are not cut. Default: no ceiling.
    #[arg(long, env = "STORE_MAX_REQUEST_TIMEOUT", value_parser = parse_duration)]
    pub max_request_timeout: Option<std::time::Duration>,

    /// Write a snapshot of the whole book to this archive every
    /// `--archive-every` (file:///dir, s3://bucket/prefix, gs://..., az://...),
    /// in the format the backfillers' glacier source restores.
    #[arg(long, env = "STORE_ARCHIVE_URL")]
    pub archive_url: Option<String>,

    /// Interval of the scheduled archive export, e.g. `6h`; the first
    /// snapshot is written one interval after start-up.
    #[arg(long, env = "STORE_ARCHIVE_EVERY", default_value = "6h", value_parser = parse_duration)]
    pub archive_every: std::time::Duration,

    /// Log line format.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// Log filter, e.g. `debug` or `info,store_sqlite=debug`; when unset,
    /// `RUST_LOG` is used, and `info` when neither is set.
    #[arg(long, env = "LOG_LEVEL")]
    pub log_level: Option<String>,

    /// Seconds to wait for in-flight calls after SIGINT/SIGTERM before the
    /// remaining connections are dropped and the database is closed.
    #[arg(long, env = "STORE_SHUTDOWN_TIMEOUT", default_value_t = 30)]
    pub shutdown_timeout: u64,
}

pub use service_kit::logging::LogFormat;

/// A positive duration such as `30s`, `500ms` or `1m`.
pub fn parse_heartbeat(s: &str) -> Result<std::time::Duration, String> {
    let d = humantime::parse_duration(s.trim())
        .map_err(|e| format!("invalid heartbeat {s:?}: {e} (e.g. 30s, 500ms)"))?;
    if d.is_zero() {
        return Err(format!("invalid heartbeat {s:?}: must be positive"));
    }
    Ok(d)
}

pub use service_kit::parse_listen_addr;

/// Parses `30s`, `500ms`, `2m`, or plain seconds.
pub fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    let s = s.trim();
    let d = if let Ok(secs) = s.parse::<u64>() {
        std::time::Duration::from_secs(secs)
    } else {
        humantime::parse_duration(s).map_err(|e| format!("invalid duration {s:?}: {e}"))?
    };
    if d.is_zero() {
        return Err(format!("invalid duration {s:?}: must be positive"));
    }
    Ok(d)
}

/// Like [`parse_duration`], but zero is allowed (`0`: no age floor).
pub fn parse_age(s: &str) -> Result<std::time::Duration, String> {
    match s.trim() {
        "0" => Ok(std::time::Duration::ZERO),
        other => parse_duration(other),
    }
}

/// A PostgreSQL URL; its `Debug` and `Display` hide credentials.
#[derive(Clone, PartialEq, Eq)]
pub struct PgUrl(String);

impl PgUrl {
    /// The full URL, credentials included: for connecting only.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for PgUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Keep host and database; drop user info and the query string,
        // either of which may hold a password.
        let rest = self.0.split_once("://").map_or("", |(_, r)| r);
        let rest = rest.rsplit_once('@').map_or(rest, |(_, r)| r);
        let rest = rest.split_once('?').map_or(rest, |(r, _)| r);
        write!(f, "postgres://{rest}")
    }
}

impl fmt::Debug for PgUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PgUrl({self})")
    }
}

/// A parsed `--database-url`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DatabaseUrl {
    /// An SQLite file (created with its directory when missing).
    Sqlite(PathBuf),
    /// Nothing kept across restarts.
    Memory,
    /// A PostgreSQL database, shared by any number of instances.
    Postgres(PgUrl),
}

impl DatabaseUrl {
    pub fn parse(s: &str) -> Result<DatabaseUrl, String> {
        let s = s.trim();
        let Some((scheme, rest)) = s.split_once(':') else {
            return Err(format!(
                "invalid database URL {s:?}: expected sqlite://PATH, memory:// or postgres://..."
            ));
        };
        match scheme.to_ascii_lowercase().as_str() {
            "sqlite" | "sqlite3" => {
                // sqlite://./rel.db, sqlite:///abs.db, sqlite:rel.db; a query
                // string (?mode=rwc) is accepted and ignored.
                let path = rest.strip_prefix("//").unwrap_or(rest);
                let path = path.split_once('?').map_or(path, |(p, _)| p);
                if path.is_empty() || path == ":memory:" {
                    return Err(format!(
                        "invalid database URL {s:?}: no file path (use memory:// for an in-memory store)"
                    ));
                }
                Ok(DatabaseUrl::Sqlite(PathBuf::from(path)))
            }
            "memory" | "mem" => Ok(DatabaseUrl::Memory),
            "postgres" | "postgresql" => Ok(DatabaseUrl::Postgres(PgUrl(s.to_owned()))),
            other => Err(format!(
                "unsupported database URL scheme {other:?}: expected sqlite://PATH, memory:// or postgres://..."
            )),
        }
    }
}

/// Shown in logs; never contains credentials.
impl fmt::Display for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DatabaseUrl::Sqlite(p) => write!(f, "sqlite:{}", p.display()),
            DatabaseUrl::Memory => f.write_str("memory://"),
            DatabaseUrl::Postgres(url) => url.fmt(f),
        }
    }
}

/// A token from a flag or env var; an empty one is refused rather than
/// silently meaning "no auth".
fn parse_secret(s: &str) -> Result<store_service::Secret, String> {
    let t = s.trim();
    if t.is_empty() {
        return Err("the token is empty".into());
    }
    Ok(store_service::Secret::new(t))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_addresses() {
        assert_eq!(
            parse_listen_addr(":8080").unwrap(),
            "0.0.0.0:8080".parse().unwrap()
        );
        assert_eq!(
            parse_listen_addr("127.0.0.1:0").unwrap(),
            "127.0.0.1:0".parse().unwrap()
        );
        assert_eq!(
            parse_listen_addr("[::1]:9000").unwrap(),
            "[::1]:9000".parse().unwrap()
        );
        assert!(
            parse_listen_addr("localhost:8080")
                .unwrap()
                .ip()
                .is_loopback()
        );
        for bad in [
            "", ":", "8080", ":x", ":70000", "nonsense", "host:", "1.2.3.4",
        ] {
            let err = parse_listen_addr(bad).unwrap_err();
            assert!(!err.contains('\n'), "{err}");
        }
    }

    #[test]
    fn database_urls() {
        use DatabaseUrl::*;
        let p = |s: &str| DatabaseUrl::parse(s);
        assert_eq!(
            p("sqlite://./data/offers.db").unwrap(),
            Sqlite("./data/offers.db".into())
        );
        assert_eq!(p("sqlite:///abs/x.db").unwrap(), Sqlite("/abs/x.db".into()));
        assert_eq!(p("sqlite:rel.db").unwrap(), Sqlite("rel.db".into()));
        assert_eq!(
            p("sqlite://rel.db?mode=rwc").unwrap(),
            Sqlite("rel.db".into())
        );
        assert_eq!(p("memory://").unwrap(), Memory);
        assert_eq!(
            p("postgres://u:secret@h/db").unwrap(),
            Postgres(PgUrl("postgres://u:secret@h/db".into()))
        );
        for url in [
            "postgres://u:secret@h/db",
            "postgresql://h/db?password=secret",
        ] {
            let parsed = p(url).unwrap();
            assert!(!parsed.to_string().contains("secret"), "{parsed}");
            assert!(!format!("{parsed:?}").contains("secret"), "{parsed:?}");
        }
        for bad in ["mysql://x", "sqlite://", "sqlite:", "offers.db", ""] {
            assert!(p(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn cli_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
