//! Command-line flags and the parsing of addresses and database URLs.

use clap::{Parser, ValueEnum};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, ToSocketAddrs};
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
    /// `sqlite:rel.db` or `memory://` (`postgres://` is not available yet).
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "sqlite://./data/offers.db",
        value_parser = DatabaseUrl::parse
    )]
    pub database_url: DatabaseUrl,

    /// Most offers one unary bulk request may carry.
    #[arg(long, env = "STORE_MAX_BULK_ITEMS", default_value_t = 10_000,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub max_bulk_items: u32,

    /// Largest gRPC message accepted, in bytes (default: the service's own).
    #[arg(long, env = "STORE_MAX_MESSAGE_BYTES", value_parser = clap::value_parser!(u32).range(1024..))]
    pub max_message_bytes: Option<u32>,

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

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Parses `HOST:PORT`, `[V6]:PORT` or `:PORT` (all interfaces).
pub fn parse_listen_addr(s: &str) -> Result<SocketAddr, String> {
    let s = s.trim();
    let bad = || format!("invalid address {s:?}: expected HOST:PORT or :PORT");
    if let Some(port) = s.strip_prefix(':') {
        let port: u16 = port.parse().map_err(|_| bad())?;
        return Ok(SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port));
    }
    if let Ok(addr) = s.parse::<SocketAddr>() {
        return Ok(addr);
    }
    // A host name: must still have a numeric port.
    match s.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => {}
        _ => return Err(bad()),
    }
    s.to_socket_addrs()
        .map_err(|e| format!("invalid address {s:?}: {e}"))?
        .next()
        .ok_or_else(bad)
}

/// A parsed `--database-url`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DatabaseUrl {
    /// An SQLite file (created with its directory when missing).
    Sqlite(PathBuf),
    /// Nothing kept across restarts.
    Memory,
    /// Recognised, but the backend is not built yet.
    Postgres,
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
            "postgres" | "postgresql" => Ok(DatabaseUrl::Postgres),
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
            DatabaseUrl::Postgres => f.write_str("postgres://…"),
        }
    }
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
        assert_eq!(p("postgres://u:secret@h/db").unwrap(), Postgres);
        assert!(
            !p("postgres://u:secret@h/db")
                .unwrap()
                .to_string()
                .contains("secret")
        );
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
