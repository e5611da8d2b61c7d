//! Flags and subcommands. Values are parsed here, so a bad flag is a usage
//! error (exit 2) before anything talks to the store.

use clap::{Args, Parser, Subcommand};
use offer_domain::json::parse_rfc3339;
use offer_domain::{InterestModel, OfferType, OverwriteFilter, SortField, SortOrder, Timestamp};
use std::path::PathBuf;
use std::time::Duration;

/// Operator CLI of the margin-offer store: list, inspect, count, overwrite
/// and delete offers over the store's gRPC API.
#[derive(Clone, Debug, Parser)]
#[command(name = "offersctl", version, about, long_about = None)]
pub struct Cli {
    /// The store's gRPC address: `host:port`, `http://host:port` or `https://host:port`.
    #[arg(
        long,
        env = "STORE_ADDR",
        default_value = "localhost:8080",
        global = true
    )]
    pub store_addr: String,

    /// Deadline of each call to the store, e.g. `30s`, `2m` or plain seconds.
    #[arg(long, env = "OFFERSCTL_TIMEOUT", default_value = "30s", value_parser = parse_duration, global = true)]
    pub timeout: Duration,

    /// Machine-readable output: one JSON object per line.
    #[arg(long, global = true)]
    pub json: bool,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Clone, Debug, Subcommand)]
pub enum Command {
    /// List offers: every filter and sort of ListMarginOffers, one page or `--all`.
    List(ListArgs),
    /// Show one offer.
    Get {
        /// The offer's id.
        id: String,
    },
    /// Count offers and sum their liquidity, optionally within a scope.
    Stats(StatsArgs),
    /// Replace every offer of one source by the offers of a file (a scoped snapshot overwrite).
    Overwrite(OverwriteArgs),
    /// Delete one offer.
    Delete {
        /// The offer's id.
        id: String,
    },
    /// Follow the change stream: one JSON line per change, resuming after disconnects.
    Watch(crate::watch::WatchArgs),
    /// Offer snapshots in object storage (the glacier/archive source restores them).
    #[command(subcommand)]
    Snapshot(SnapshotCommand),
}

#[derive(Clone, Debug, Subcommand)]
pub enum SnapshotCommand {
    /// Stream the whole book (or what the filters select, expired offers
    /// included) into one new gzip NDJSON snapshot under an archive URL.
    Export(ExportArgs),
}

#[derive(Clone, Debug, Args)]
pub struct ExportArgs {
    /// The archive: file:///dir, s3://bucket/prefix, gs://bucket/prefix or az://container/prefix.
    #[arg(long)]
    pub to: String,
    #[command(flatten)]
    pub filter: ScopeFilterArgs,
}

/// The scope filters of `stats` and `snapshot export` (an `OverwriteFilter`).
#[derive(Clone, Debug, Default, Args)]
pub struct ScopeFilterArgs {
    #[arg(long, value_parser = parse_offer_type)]
    pub offer_type: Option<OfferType>,
    #[arg(long)]
    pub collateral_token: Option<String>,
    #[arg(long)]
    pub borrow_token: Option<String>,
    #[arg(long)]
    pub liquidity_source: Option<String>,
    #[arg(long)]
    pub lender: Option<String>,
    #[arg(long)]
    pub source: Option<String>,
    #[arg(long, value_parser = parse_time)]
    pub created_after: Option<Timestamp>,
    #[arg(long, value_parser = parse_time)]
    pub created_before: Option<Timestamp>,
    #[arg(long, value_parser = parse_time)]
    pub updated_after: Option<Timestamp>,
    #[arg(long, value_parser = parse_time)]
    pub updated_before: Option<Timestamp>,
}

impl ScopeFilterArgs {
    /// `None` when no flag was given.
    pub fn into_filter(self) -> Option<OverwriteFilter> {
        let filter = OverwriteFilter {
            offer_type: self.offer_type,
            collateral_token: self.collateral_token,
            borrow_token: self.borrow_token,
            lender_address: self.lender,
            liquidity_source: self.liquidity_source,
            source: self.source,
            created_after: self.created_after,
            created_before: self.created_before,
            updated_after: self.updated_after,
            updated_before: self.updated_before,
        };
        (!filter.is_empty()).then_some(filter)
    }
}

#[derive(Clone, Debug, Default, Args)]
pub struct ListArgs {
    /// V1, BP or LV.
    #[arg(long, value_parser = parse_offer_type)]
    pub offer_type: Option<OfferType>,
    #[arg(long)]
    pub collateral_token: Option<String>,
    #[arg(long)]
    pub borrow_token: Option<String>,
    /// fixed or floating.
    #[arg(long, value_parser = parse_interest_model)]
    pub interest_model: Option<InterestModel>,
    /// Protocol the liquidity lives in, e.g. lavarage, marginfi.
    #[arg(long)]
    pub liquidity_source: Option<String>,
    /// Lender address (exact match).
    #[arg(long)]
    pub lender: Option<String>,
    /// The process that produced the offers (a backfill job's name, `manual`, ...).
    #[arg(long)]
    pub source: Option<String>,
    #[arg(long)]
    pub min_borrow_amount: Option<f64>,
    #[arg(long)]
    pub max_borrow_amount: Option<f64>,
    /// Annual rate as a fraction (0.05 = 5 %).
    #[arg(long)]
    pub min_interest_rate: Option<f64>,
    #[arg(long)]
    pub max_interest_rate: Option<f64>,
    /// Lowest max_open_ltv (fraction 0..1).
    #[arg(long)]
    pub min_open_ltv: Option<f64>,
    /// Highest max_open_ltv (fraction 0..1).
    #[arg(long)]
    pub max_open_ltv: Option<f64>,
    /// RFC 3339, e.g. 2024-01-31T00:00:00Z.
    #[arg(long, value_parser = parse_time)]
    pub created_after: Option<Timestamp>,
    #[arg(long, value_parser = parse_time)]
    pub created_before: Option<Timestamp>,
    #[arg(long, value_parser = parse_time)]
    pub updated_after: Option<Timestamp>,
    #[arg(long, value_parser = parse_time)]
    pub updated_before: Option<Timestamp>,
    /// Also list offers whose term has run out.
    #[arg(long)]
    pub include_expired: bool,
    /// Only offers with available liquidity (available_borrow_amount > 0).
    #[arg(long)]
    pub active_only: bool,
    /// created_timestamp (default), updated_timestamp, interest_rate,
    /// available_borrow_amount, max_open_ltv, liquidation_ltv, offer_type,
    /// collateral_token, borrow_token or id.
    #[arg(long, value_parser = parse_sort_field)]
    pub sort_by: Option<SortField>,
    /// asc or desc (default desc); ties are broken by id ascending.
    #[arg(long, value_parser = parse_sort_order)]
    pub sort_order: Option<SortOrder>,
    /// Offers per page (1..=1000; default 100, or 1000 with --all).
    #[arg(long, value_parser = clap::value_parser!(i32).range(1..=1000))]
    pub limit: Option<i32>,
    /// Offers to skip (offset paging; ignored with --page-token).
    #[arg(long, value_parser = clap::value_parser!(i32).range(0..))]
    pub offset: Option<i32>,
    /// Continue a listing from a previous page's token.
    #[arg(long)]
    pub page_token: Option<String>,
    /// Follow next_page_token until every matching offer is listed.
    #[arg(long)]
    pub all: bool,
}

#[derive(Clone, Debug, Default, Args)]
pub struct StatsArgs {
    #[command(flatten)]
    pub filter: ScopeFilterArgs,
    /// Also count offers whose term has run out.
    #[arg(long)]
    pub include_expired: bool,
}

#[derive(Clone, Debug, Args)]
pub struct OverwriteArgs {
    /// The scope: every offer of this source is replaced, and every offer of
    /// the file gets this source.
    #[arg(long)]
    pub source: String,
    /// A JSON array of offers or one offer per line (NDJSON), with the wire
    /// contract's snake_case field names; `-` reads standard input.
    pub file: PathBuf,
    /// Print what would be created, updated and deleted; write nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Accept an empty file, which deletes every offer of the source.
    #[arg(long)]
    pub allow_empty: bool,
}

fn parse_time(s: &str) -> Result<Timestamp, String> {
    parse_rfc3339(s.trim())
}

fn parse_offer_type(s: &str) -> Result<OfferType, String> {
    OfferType::parse_field(s, "offer type").map_err(|e| e.message)
}

fn parse_interest_model(s: &str) -> Result<InterestModel, String> {
    InterestModel::parse_field(s, "interest model").map_err(|e| e.message)
}

fn parse_sort_field(s: &str) -> Result<SortField, String> {
    SortField::parse(s).map_err(|e| e.message)
}

fn parse_sort_order(s: &str) -> Result<SortOrder, String> {
    SortOrder::parse(s).map_err(|e| e.message)
}

/// `30s`, `1m 30s`, or a bare number of seconds.
fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let d = match s.parse::<u64>() {
        Ok(secs) => Duration::from_secs(secs),
        Err(_) => humantime::parse_duration(s).map_err(|e| format!("bad duration {s:?}: {e}"))?,
    };
    if d.is_zero() {
        return Err("must be more than zero".into());
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_parse() {
        let cli = Cli::try_parse_from([
            "offersctl",
            "--store-addr",
            "http://h:1",
            "list",
            "--sort-by",
            "interest_rate",
            "--created-after",
            "2024-01-01T00:00:00Z",
            "--all",
            "--json",
            "--timeout",
            "5",
        ])
        .unwrap();
        assert_eq!(cli.store_addr, "http://h:1");
        assert!(cli.json);
        assert_eq!(cli.timeout, Duration::from_secs(5));
        let Command::List(l) = cli.command else {
            panic!("not list")
        };
        assert_eq!(l.sort_by, Some(SortField::InterestRate));
        assert!(l.all && l.created_after.is_some());
        for bad in [
            &["offersctl", "list", "--sort-by", "nope"][..],
            &["offersctl", "list", "--created-after", "yesterday"],
            &["offersctl", "list", "--limit", "0"],
            &["offersctl", "--timeout", "0s", "stats"],
            &["offersctl", "overwrite", "f.json"],
            &["offersctl", "snapshot", "export"],
        ] {
            assert!(Cli::try_parse_from(bad).is_err(), "{bad:?}");
        }
    }
}
