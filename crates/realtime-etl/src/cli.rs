//! Flags and environment of the `realtime-etl` binary.

use std::net::SocketAddr;

use clap::Parser;
use solana_sources::Pubkey;
use solana_sources::marginfi;

use crate::Program;

#[derive(Debug, Parser)]
#[command(
    name = "realtime-etl",
    version,
    about = "Follows Lavarage and marginfi accounts over the Solana websocket API and keeps their offers in the store live"
)]
pub struct Cli {
    /// The store's gRPC address.
    #[arg(long, env = "STORE_ADDR", default_value = "localhost:8080")]
    pub store_addr: String,

    /// Solana websocket (pubsub) endpoint.
    #[arg(
        long,
        env = "CHAIN_WS_ENDPOINT",
        default_value = "wss://api.mainnet-beta.solana.com"
    )]
    pub ws_endpoint: String,

    /// Solana JSON-RPC endpoint, for the lookups an offer needs and resyncs.
    #[arg(
        long,
        env = "CHAIN_ENDPOINT",
        default_value = "https://api.mainnet-beta.solana.com"
    )]
    pub rpc_endpoint: String,

    /// Programs to follow, comma-separated: lavarage (or leverage,
    /// lavarage-v1), lavarage-v2, marginfi, or program ids.
    #[arg(long, env = "ETL_PROGRAMS", value_delimiter = ',',
          default_value = "lavarage,lavarage-v2,marginfi", value_parser = parse_program)]
    pub programs: Vec<Program>,

    /// The marginfi group whose banks are followed.
    #[arg(long, env = "MARGINFI_GROUP", default_value_t = marginfi::MAIN_GROUP)]
    pub marginfi_group: Pubkey,

    /// Listen address of `/metrics` and `/healthz` (`HOST:PORT` or `:PORT`).
    #[arg(long, env = "METRICS_ADDR", default_value = ":8083", value_parser = parse_listen_addr)]
    pub metrics_addr: SocketAddr,

    /// Log line format.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// Log filter, e.g. `debug`; when unset, `RUST_LOG`, else `info`.
    #[arg(long, env = "LOG_LEVEL")]
    pub log_level: Option<String>,
}

pub use service_kit::logging::LogFormat;

pub fn parse_program(s: &str) -> Result<Program, String> {
    Program::parse(s.trim()).ok_or_else(|| {
        format!("unknown program {s:?} (expected lavarage, lavarage-v2 or marginfi)")
    })
}

pub use service_kit::parse_listen_addr;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_names() {
        let Ok(cli) = Cli::try_parse_from(["realtime-etl", "--programs", "leverage,marginfi"])
        else {
            panic!("parse")
        };
        assert_eq!(cli.programs, vec![Program::LavarageV1, Program::Marginfi]);
        assert_eq!(cli.metrics_addr.port(), 8083);
        assert!(Cli::try_parse_from(["realtime-etl", "--programs", "nope"]).is_err());
    }
}
