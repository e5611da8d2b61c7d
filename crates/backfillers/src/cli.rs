//! The flags and environment variables of `backfiller.md`.

use backfill::SourceKind;
use clap::Parser;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

pub const DEFAULT_CHAIN_ENDPOINT: &str = "https://api.mainnet-beta.solana.com";
/// `--metrics-addr` in continuous mode when none is given.
pub const DEFAULT_METRICS_ADDR: &str = ":8082";

/// Keeps the store's offers equal to the liquidity sources, by scoped
/// snapshot overwrites over gRPC.
#[derive(Clone, Debug, Parser)]
#[command(name = "backfillers", version, about, long_about = None)]
pub struct Cli {
    /// Store gRPC address: `host:port` or `http(s)://host:port`.
    #[arg(long, env = "STORE_ADDR", default_value = "localhost:8080")]
    pub store_addr: String,

    /// Run the selected jobs once, then exit (0 all succeeded, 1 a job failed).
    #[arg(long)]
    pub run_once: bool,

    /// Only jobs of this source: chain, glacier (alias archive), off-chain, or all.
    #[arg(long, value_parser = parse_source, default_value = "all")]
    pub source: SourceFilter,

    /// Time window `[now - hours, now]` for time-based sources.
    #[arg(long, default_value_t = 24, value_parser = clap::value_parser!(u32).range(1..))]
    pub hours: u32,

    /// Job file (built-in defaults when unset); `BACKFILL_JOBS` adds jobs.
    #[arg(long, env = "BACKFILL_CONFIG")]
    pub config: Option<PathBuf>,

    /// Solana JSON-RPC URL for chain jobs.
    #[arg(long, env = "CHAIN_ENDPOINT", default_value = DEFAULT_CHAIN_ENDPOINT)]
    pub chain_endpoint: String,

    /// Fetch and diff, write nothing, print what would change.
    #[arg(long)]
    pub dry_run: bool,

    /// Lift the shrink guard: apply empty or more-than-half-shrinking snapshots.
    #[arg(long)]
    pub force: bool,

    /// Deadline of the start-up health check of the store (e.g. 10s, 1m).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub connect_timeout: Duration,

    /// HTTP address of /metrics and /status; `:PORT` means all interfaces.
    /// Default `:8082` in continuous mode; with --run-once only served when set.
    #[arg(long, env = "METRICS_ADDR", value_parser = parse_listen_addr)]
    pub metrics_addr: Option<SocketAddr>,

    /// Jobs running at once.
    #[arg(long, env = "BACKFILL_MAX_CONCURRENT_JOBS", default_value_t = 5,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub max_concurrent_jobs: u32,

    /// How long running jobs may finish after SIGINT/SIGTERM before they are
    /// cancelled (a cancelled run commits nothing).
    #[arg(long, env = "BACKFILL_GRACE_PERIOD", default_value = "30s", value_parser = parse_duration)]
    pub grace_period: Duration,

    /// Log line format.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// Log filter, e.g. `debug` or `info,backfill=debug`; when unset,
    /// `RUST_LOG` is used, and `info` when neither is set.
    #[arg(long, env = "LOG_LEVEL")]
    pub log_level: Option<String>,
}

pub use service_kit::logging::LogFormat;

/// `--source`: one kind, or every kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SourceFilter(pub Option<SourceKind>);

fn parse_source(s: &str) -> Result<SourceFilter, String> {
    match s.trim() {
        "" | "all" => Ok(SourceFilter(None)),
        other => other.parse().map(|k| SourceFilter(Some(k))),
    }
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s.trim())
        .map_err(|e| format!("bad duration {s:?}: {e} (use e.g. 10s, 1m)"))?;
    if d.is_zero() {
        return Err(format!("bad duration {s:?}: must be positive"));
    }
    Ok(d)
}

pub use service_kit::parse_listen_addr;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    #[test]
    fn sources_and_durations() {
        assert_eq!(parse_source("all").unwrap(), SourceFilter(None));
        assert_eq!(
            parse_source("archive").unwrap(),
            SourceFilter(Some(SourceKind::Glacier))
        );
        assert!(parse_source("moon").is_err());
        assert_eq!(parse_duration("10s").unwrap(), Duration::from_secs(10));
        assert!(parse_duration("0s").is_err());
        assert_eq!(
            parse_listen_addr(":8082").unwrap(),
            "0.0.0.0:8082".parse().unwrap()
        );
    }
}
