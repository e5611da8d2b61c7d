//! A validated job and what one run of it reports.

use chrono::{DateTime, Utc};
use croner::Cron;
use reqwest::Url;
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// Where a job's offers come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum SourceKind {
    Chain,
    /// Spelled `glacier` or `archive` in job files and on the command line.
    Glacier,
    OffChain,
}

impl SourceKind {
    pub fn as_str(self) -> &'static str {
        match self {
            SourceKind::Chain => "chain",
            SourceKind::Glacier => "glacier",
            SourceKind::OffChain => "off-chain",
        }
    }
}

impl FromStr for SourceKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "chain" => Ok(SourceKind::Chain),
            "glacier" | "archive" => Ok(SourceKind::Glacier),
            // The Go service spelled it `off-chain`; the other two are forgiven typos.
            "off-chain" | "off_chain" | "offchain" => Ok(SourceKind::OffChain),
            other => Err(format!(
                "unknown source {other:?} (expected chain, glacier, archive or off-chain)"
            )),
        }
    }
}

impl fmt::Display for SourceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A lending program a chain job decodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub enum Program {
    LavarageV1,
    LavarageV2,
    Marginfi,
}

impl Program {
    pub const LAVARAGE_V1_ID: &'static str = "CRSeeBqjDnm3UPefJ9gxrtngTsnQRhEJiTA345Q83X3v";
    pub const LAVARAGE_V2_ID: &'static str = "1avaAUcjccXCjSZzwUvB2gS3DzkkieV2Mw8CjdN65uu";
    pub const MARGINFI_ID: &'static str = "MFv2hWf31Z9kbCa1snEPYctwafyhdvnV7FZnsebVacA";
    /// The marginfi main group, used when a job names none.
    pub const MARGINFI_MAIN_GROUP: &'static str = "4qp6Fx6tnZkY5Wropq9wUYgtFxXKwE6viZxFHg3rdAG8";

    /// Accepts the names and program ids of `backfiller.md`.
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "leverage" | "lavarage" | "lavarage-v1" | Self::LAVARAGE_V1_ID => {
                Some(Program::LavarageV1)
            }
            "lavarage-v2" | Self::LAVARAGE_V2_ID => Some(Program::LavarageV2),
            "marginfi" | Self::MARGINFI_ID => Some(Program::Marginfi),
            _ => None,
        }
    }

    pub fn program_id(self) -> &'static str {
        match self {
            Program::LavarageV1 => Self::LAVARAGE_V1_ID,
            Program::LavarageV2 => Self::LAVARAGE_V2_ID,
            Program::Marginfi => Self::MARGINFI_ID,
        }
    }

    /// The offers' `source` and so the backfill scope (`solana-sources.md`).
    pub fn source_tag(self) -> &'static str {
        match self {
            Program::LavarageV1 => "lavarage-v1",
            Program::LavarageV2 => "lavarage-v2",
            Program::Marginfi => "marginfi",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ChainParams {
    /// Deduplicated, in file order.
    pub programs: Vec<Program>,
    pub network: String,
    /// marginfi group; `None` means the main group. Validated as a pubkey.
    pub group: Option<String>,
    /// Use the paginated `getProgramAccountsV2`; `None` keeps the source's
    /// default (providers that refuse big scans need it).
    pub use_get_program_accounts_v2: Option<bool>,
    /// Deadline of one `getProgramAccounts` request (source default 120 s).
    #[serde(with = "opt_secs")]
    pub program_accounts_timeout: Option<Duration>,
    /// Deadline of other RPC requests (source default 30 s).
    #[serde(with = "opt_secs")]
    pub rpc_timeout: Option<Duration>,
}

/// Optional durations as seconds in `/status` JSON.
mod opt_secs {
    use serde::Serializer;
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_some(&d.as_secs_f64()),
            None => s.serialize_none(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct GlacierParams {
    pub vault_name: String,
    pub archive_id: String,
    pub job_id: String,
    pub retrieval: bool,
}

#[derive(Clone, PartialEq, Serialize)]
pub struct OffChainParams {
    #[serde(serialize_with = "url_str")]
    pub api_endpoint: Url,
    /// Values with `${VAR}` already substituted.
    #[serde(skip)]
    pub headers: BTreeMap<String, String>,
    #[serde(skip)]
    pub query_params: BTreeMap<String, String>,
    #[serde(skip)]
    pub auth_token: Option<String>,
}

// Header values and tokens usually hold secrets: never print them.
impl fmt::Debug for OffChainParams {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OffChainParams")
            .field("api_endpoint", &self.api_endpoint.as_str())
            .field("headers", &self.headers.keys().collect::<Vec<_>>())
            .field(
                "query_params",
                &self.query_params.keys().collect::<Vec<_>>(),
            )
            .field(
                "auth_token",
                &self.auth_token.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum SourceParams {
    Chain(ChainParams),
    Glacier(GlacierParams),
    OffChain(OffChainParams),
}

fn url_str<S: serde::Serializer>(u: &Url, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(u.as_str())
}

/// A cron schedule in UTC, kept with the text it was parsed from.
#[derive(Clone, Debug, PartialEq)]
pub struct Schedule {
    pub expr: String,
    pub cron: Cron,
}

impl Schedule {
    /// The first fire time strictly after `after`.
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.cron.find_next_occurrence(&after, false).ok()
    }
}

impl Serialize for Schedule {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.expr)
    }
}

/// One job of the job file, validated.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct JobSpec {
    pub name: String,
    pub description: String,
    pub enabled: bool,
    pub schedule: Option<Schedule>,
    pub source: SourceKind,
    pub batch_size: usize,
    pub dry_run: bool,
    pub params: SourceParams,
    pub max_retries: u32,
    #[serde(with = "humantime_serde_compat")]
    pub timeout: Duration,
    pub allow_shrink: bool,
}

impl JobSpec {
    /// The scope tags this job writes: one per program for a chain job, the
    /// job's name for an off-chain job. Archive jobs write offers under their
    /// own archived `source` and have no fixed scope.
    pub fn scope_tags(&self) -> Vec<String> {
        match &self.params {
            SourceParams::Chain(c) => c
                .programs
                .iter()
                .map(|p| p.source_tag().to_owned())
                .collect(),
            SourceParams::OffChain(_) => vec![self.name.clone()],
            SourceParams::Glacier(_) => Vec::new(),
        }
    }
}

mod humantime_serde_compat {
    use std::time::Duration;
    pub fn serialize<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }
}

/// The period a time-based source covers: `[start, end]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct TimeWindow {
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
}

impl TimeWindow {
    /// `[now - span, now]`.
    pub fn last(span: Duration) -> Self {
        let end = Utc::now();
        let span = chrono::Duration::from_std(span).unwrap_or(chrono::Duration::MAX);
        let start = end
            .checked_sub_signed(span)
            .unwrap_or(DateTime::<Utc>::MIN_UTC);
        TimeWindow { start, end }
    }
}

/// How a run ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RunOutcome {
    Succeeded,
    Failed,
    TimedOut,
    Cancelled,
    /// Not started: the previous run of the same job was still going.
    Skipped,
}

impl RunOutcome {
    /// The `outcome` label of `backfill_job_runs_total`.
    pub fn as_str(self) -> &'static str {
        match self {
            RunOutcome::Succeeded => "succeeded",
            RunOutcome::Failed => "failed",
            RunOutcome::TimedOut => "timed_out",
            RunOutcome::Cancelled => "cancelled",
            RunOutcome::Skipped => "skipped",
        }
    }
}

/// Offer counts of a run (or of what a dry run would do).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct RunCounts {
    pub fetched: usize,
    pub created: usize,
    pub updated: usize,
    pub deleted: usize,
    pub unchanged: usize,
}

impl RunCounts {
    pub fn add(&mut self, o: &RunCounts) {
        self.fetched += o.fetched;
        self.created += o.created;
        self.updated += o.updated;
        self.deleted += o.deleted;
        self.unchanged += o.unchanged;
    }
}

/// What one scope's write did, or would do in a dry run.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct ScopeResult {
    pub scope: String,
    pub counts: RunCounts,
    pub created_ids: Vec<String>,
    pub updated_ids: Vec<String>,
    pub deleted_ids: Vec<String>,
}

/// The report of one run of one job.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct JobResult {
    pub job: String,
    pub source: SourceKind,
    pub outcome: RunOutcome,
    pub dry_run: bool,
    pub started_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
    /// Attempts made, retries included (0 when skipped).
    pub attempts: u32,
    pub counts: RunCounts,
    pub scopes: Vec<ScopeResult>,
    pub error: Option<String>,
}

impl JobResult {
    pub fn succeeded(&self) -> bool {
        self.outcome == RunOutcome::Succeeded
    }
}
