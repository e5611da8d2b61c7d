//! The job file of `backfiller.md`, compatible with the Go service's files.
//!
//! Parsing is two-step: each job is first read as raw JSON so that every
//! error, structural or semantic, can name the job it belongs to.

use crate::job::{
    ChainParams, GlacierParams, JobSpec, OffChainParams, Program, Schedule, SourceKind,
    SourceParams,
};
use croner::parser::{CronParser, Seconds, Year};
use reqwest::Url;
use serde::Deserialize;
use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::time::Duration;

/// The job file shipped at `config/backfiller-jobs.json`, used when no
/// `--config` is given.
pub const DEFAULT_JOB_FILE: &str = include_str!("../../../config/backfiller-jobs.json");

pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(6 * 3600);
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(3600);
pub const DEFAULT_BATCH_SIZE: usize = 1000;
pub const DEFAULT_MAX_RETRIES: u32 = 3;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("job {job:?}: {problem}")]
    Job { job: String, problem: String },
    #[error("job file {origin}: {problem}")]
    File { origin: String, problem: String },
}

impl ConfigError {
    fn job(job: &str, problem: impl Into<String>) -> Self {
        ConfigError::Job {
            job: job.to_owned(),
            problem: problem.into(),
        }
    }

    fn file(origin: &str, problem: impl Into<String>) -> Self {
        ConfigError::File {
            origin: origin.to_owned(),
            problem: problem.into(),
        }
    }
}

/// Looks up an environment variable; injectable so tests need no process env.
pub type EnvLookup<'a> = &'a dyn Fn(&str) -> Option<String>;

/// The process environment as an [`EnvLookup`].
pub fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

/// The validated configuration: every job, enabled or not.
#[derive(Clone, Debug, PartialEq)]
pub struct BackfillConfig {
    pub default_interval: Duration,
    pub jobs: Vec<JobSpec>,
}

impl BackfillConfig {
    /// Parses a job file's text; `origin` names it in errors.
    pub fn from_json(text: &str, origin: &str, env: EnvLookup<'_>) -> Result<Self, ConfigError> {
        let raw: RawFile = serde_json::from_str(text)
            .map_err(|e| ConfigError::file(origin, format!("not a valid job file: {e}")))?;
        let default_interval = match raw.default_interval {
            None => DEFAULT_INTERVAL,
            Some(d) => d
                .to_duration()
                .map_err(|p| ConfigError::file(origin, format!("default_interval: {p}")))?,
        };
        if default_interval.is_zero() {
            return Err(ConfigError::file(
                origin,
                "default_interval: must be positive",
            ));
        }
        let jobs = parse_jobs(raw.jobs, env)?;
        check_unique(&jobs, origin)?;
        Ok(BackfillConfig {
            default_interval,
            jobs,
        })
    }

    /// The file at `path`, or the built-in defaults when `None`.
    pub fn load(path: Option<&Path>, env: EnvLookup<'_>) -> Result<Self, ConfigError> {
        match path {
            None => Self::from_json(DEFAULT_JOB_FILE, "<built-in defaults>", env),
            Some(p) => {
                let origin = p.display().to_string();
                let text = std::fs::read_to_string(p)
                    .map_err(|e| ConfigError::file(&origin, format!("cannot read: {e}")))?;
                Self::from_json(&text, &origin, env)
            }
        }
    }

    /// Merges a JSON array of extra jobs (the `BACKFILL_JOBS` format). A job
    /// with the name of an existing one replaces it, so an operator can
    /// override a file job from the environment.
    pub fn merge_jobs_json(&mut self, text: &str, env: EnvLookup<'_>) -> Result<(), ConfigError> {
        let raw: Vec<serde_json::Value> = serde_json::from_str(text).map_err(|e| {
            ConfigError::file("BACKFILL_JOBS", format!("not a JSON array of jobs: {e}"))
        })?;
        let extra = parse_jobs(raw, env)?;
        check_unique(&extra, "BACKFILL_JOBS")?;
        for job in extra {
            match self.jobs.iter_mut().find(|j| j.name == job.name) {
                Some(slot) => *slot = job,
                None => self.jobs.push(job),
            }
        }
        Ok(())
    }

    /// What the binary does at start-up: the file (or defaults) plus
    /// `BACKFILL_JOBS` from `env`.
    pub fn load_with_env(path: Option<&Path>, env: EnvLookup<'_>) -> Result<Self, ConfigError> {
        let mut cfg = Self::load(path, env)?;
        if let Some(extra) = env("BACKFILL_JOBS").filter(|s| !s.trim().is_empty()) {
            cfg.merge_jobs_json(&extra, env)?;
        }
        Ok(cfg)
    }

    /// Enabled jobs, optionally only those of one source kind.
    pub fn selected(&self, kind: Option<SourceKind>) -> Vec<JobSpec> {
        self.jobs
            .iter()
            .filter(|j| j.enabled && kind.is_none_or(|k| j.source == k))
            .cloned()
            .collect()
    }
}

fn check_unique(jobs: &[JobSpec], origin: &str) -> Result<(), ConfigError> {
    let mut seen = HashSet::new();
    for j in jobs {
        if !seen.insert(j.name.as_str()) {
            return Err(ConfigError::file(
                origin,
                format!("job name {:?} appears twice", j.name),
            ));
        }
    }
    Ok(())
}

fn parse_jobs(
    raw: Vec<serde_json::Value>,
    env: EnvLookup<'_>,
) -> Result<Vec<JobSpec>, ConfigError> {
    raw.into_iter()
        .enumerate()
        .map(|(i, v)| {
            let label = v
                .get("name")
                .and_then(|n| n.as_str())
                .filter(|n| !n.is_empty())
                .map_or_else(|| format!("#{i}"), str::to_owned);
            let job: RawJob = serde_path_to_error::deserialize(v).map_err(|e| {
                let path = e.path().to_string();
                ConfigError::job(&label, format!("{path}: {}", e.into_inner()))
            })?;
            job.validate(env)
                .map_err(|problem| ConfigError::job(&label, problem))
        })
        .collect()
}

#[derive(Deserialize)]
struct RawFile {
    #[serde(default)]
    default_interval: Option<RawDuration>,
    #[serde(default)]
    jobs: Vec<serde_json::Value>,
}

/// A human string (`30m`) or, as Go's `time.Duration` marshals, nanoseconds.
#[derive(Deserialize)]
#[serde(untagged)]
enum RawDuration {
    Text(String),
    Nanos(u64),
}

impl RawDuration {
    fn to_duration(&self) -> Result<Duration, String> {
        match self {
            RawDuration::Nanos(n) => Ok(Duration::from_nanos(*n)),
            RawDuration::Text(s) => humantime::parse_duration(s.trim())
                .map_err(|e| format!("bad duration {s:?}: {e} (use e.g. 30m, 1h, 6h)")),
        }
    }
}

fn default_true() -> bool {
    true
}

#[derive(Deserialize)]
struct RawJob {
    name: String,
    #[serde(default)]
    description: String,
    // A job in a hand-written file is meant to run unless it says otherwise.
    #[serde(default = "default_true")]
    enabled: bool,
    #[serde(default)]
    schedule: Option<String>,
    request: RawRequest,
    #[serde(default)]
    max_retries: Option<u32>,
    #[serde(default)]
    timeout: Option<RawDuration>,
    #[serde(default)]
    allow_shrink: bool,
}

#[derive(Deserialize)]
struct RawRequest {
    source: String,
    #[serde(default)]
    batch_size: Option<usize>,
    #[serde(default)]
    dry_run: bool,
    #[serde(default)]
    chain_params: Option<RawChain>,
    #[serde(default)]
    glacier_params: Option<RawGlacier>,
    #[serde(default)]
    off_chain_params: Option<RawOffChain>,
}

#[derive(Deserialize)]
struct RawChain {
    #[serde(default)]
    programs: Vec<String>,
    #[serde(default)]
    network: Option<String>,
    #[serde(default)]
    group: Option<String>,
    #[serde(default)]
    use_get_program_accounts_v2: Option<bool>,
    #[serde(default)]
    program_accounts_timeout: Option<RawDuration>,
    #[serde(default)]
    rpc_timeout: Option<RawDuration>,
}

#[derive(Deserialize)]
struct RawGlacier {
    #[serde(default)]
    vault_name: String,
    #[serde(default)]
    archive_id: String,
    #[serde(default)]
    job_id: String,
    #[serde(default)]
    retrieval: bool,
}

#[derive(Deserialize)]
struct RawOffChain {
    #[serde(default)]
    api_endpoint: String,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    #[serde(default)]
    query_params: BTreeMap<String, String>,
    #[serde(default)]
    auth_token: Option<String>,
}

impl RawJob {
    fn validate(self, env: EnvLookup<'_>) -> Result<JobSpec, String> {
        if self.name.trim().is_empty() {
            return Err("name: must not be empty".into());
        }
        let schedule = match self.schedule.as_deref().map(str::trim) {
            None | Some("") => None,
            Some(expr) => Some(parse_schedule(expr)?),
        };
        let timeout = match &self.timeout {
            None => DEFAULT_TIMEOUT,
            Some(d) => d.to_duration().map_err(|e| format!("timeout: {e}"))?,
        };
        if timeout.is_zero() {
            return Err("timeout: must be positive".into());
        }
        let req = self.request;
        let source: SourceKind = req
            .source
            .parse()
            .map_err(|e| format!("request.source: {e}"))?;
        let batch_size = match req.batch_size {
            None | Some(0) => DEFAULT_BATCH_SIZE,
            Some(n) => n,
        };
        let params = match source {
            SourceKind::Chain => {
                let c = req
                    .chain_params
                    .ok_or("request.chain_params: required for a chain job")?;
                SourceParams::Chain(chain_params(c)?)
            }
            SourceKind::Glacier => {
                let g = req
                    .glacier_params
                    .ok_or("request.glacier_params: required for a glacier job")?;
                if g.vault_name.trim().is_empty() {
                    return Err("request.glacier_params.vault_name: must not be empty".into());
                }
                SourceParams::Glacier(GlacierParams {
                    vault_name: g.vault_name,
                    archive_id: g.archive_id,
                    job_id: g.job_id,
                    retrieval: g.retrieval,
                })
            }
            SourceKind::OffChain => {
                let o = req
                    .off_chain_params
                    .ok_or("request.off_chain_params: required for an off-chain job")?;
                // A disabled job may name variables that are only set where it
                // runs; its placeholders are kept verbatim instead of failing.
                let keep = |name: &str| Some(format!("${{{name}}}"));
                let env: EnvLookup<'_> = if self.enabled { env } else { &keep };
                SourceParams::OffChain(off_chain_params(o, env)?)
            }
        };
        Ok(JobSpec {
            name: self.name,
            description: self.description,
            enabled: self.enabled,
            schedule,
            source,
            batch_size,
            dry_run: req.dry_run,
            params,
            max_retries: self.max_retries.unwrap_or(DEFAULT_MAX_RETRIES),
            timeout,
            allow_shrink: self.allow_shrink,
        })
    }
}

/// Standard 5-field cron, or 6 fields with leading seconds; UTC.
pub fn parse_schedule(expr: &str) -> Result<Schedule, String> {
    let fields = expr.split_whitespace().count();
    // croner also takes a 7th (year) field and `@` aliases; the spec promises
    // 5 or 6 fields, so anything else is refused to keep files portable.
    if !(5..=6).contains(&fields) {
        return Err(format!(
            "schedule: bad cron {expr:?}: expected 5 fields (or 6 with seconds), got {fields}"
        ));
    }
    let cron = CronParser::builder()
        .seconds(Seconds::Optional)
        .year(Year::Disallowed)
        .build()
        .parse(expr)
        .map_err(|e| format!("schedule: bad cron {expr:?}: {e}"))?;
    Ok(Schedule {
        expr: expr.to_owned(),
        cron,
    })
}

fn chain_params(c: RawChain) -> Result<ChainParams, String> {
    if c.programs.is_empty() {
        return Err("request.chain_params.programs: must list at least one program".into());
    }
    let mut programs = Vec::new();
    for name in &c.programs {
        let p = Program::parse(name.trim()).ok_or_else(|| {
            format!(
                "request.chain_params.programs: unknown program {name:?} (expected leverage, lavarage, lavarage-v2, marginfi or a program id)"
            )
        })?;
        if !programs.contains(&p) {
            programs.push(p);
        }
    }
    let group = c
        .group
        .map(|g| g.trim().to_owned())
        .filter(|g| !g.is_empty());
    if let Some(g) = &group {
        g.parse::<solana_sources::Pubkey>()
            .map_err(|e| format!("request.chain_params.group: {e}"))?;
    }
    let timeout = |field: &str, d: Option<RawDuration>| -> Result<Option<Duration>, String> {
        d.map(|d| d.to_duration())
            .transpose()
            .map_err(|e| format!("request.chain_params.{field}: {e}"))?
            .map(|d| {
                if d.is_zero() {
                    Err(format!("request.chain_params.{field}: must be positive"))
                } else {
                    Ok(d)
                }
            })
            .transpose()
    };
    Ok(ChainParams {
        programs,
        network: c
            .network
            .filter(|n| !n.trim().is_empty())
            .unwrap_or_else(|| "mainnet".into()),
        group,
        use_get_program_accounts_v2: c.use_get_program_accounts_v2,
        program_accounts_timeout: timeout("program_accounts_timeout", c.program_accounts_timeout)?,
        rpc_timeout: timeout("rpc_timeout", c.rpc_timeout)?,
    })
}

fn off_chain_params(o: RawOffChain, env: EnvLookup<'_>) -> Result<OffChainParams, String> {
    let endpoint = o.api_endpoint.trim();
    if endpoint.is_empty() {
        return Err("request.off_chain_params.api_endpoint: must not be empty".into());
    }
    let api_endpoint = Url::parse(endpoint)
        .map_err(|e| format!("request.off_chain_params.api_endpoint: {endpoint:?}: {e}"))?;
    if !matches!(api_endpoint.scheme(), "http" | "https") {
        return Err(format!(
            "request.off_chain_params.api_endpoint: {endpoint:?}: scheme must be http or https"
        ));
    }
    let subst_map = |field: &str, m: BTreeMap<String, String>| {
        m.into_iter()
            .map(|(k, v)| {
                let v = substitute(&v, env).map_err(|e| format!("{field}.{k}: {e}"))?;
                Ok((k, v))
            })
            .collect::<Result<BTreeMap<_, _>, String>>()
    };
    let headers = subst_map("request.off_chain_params.headers", o.headers)?;
    let query_params = subst_map("request.off_chain_params.query_params", o.query_params)?;
    let auth_token = match o.auth_token {
        None => None,
        Some(t) => Some(
            substitute(&t, env).map_err(|e| format!("request.off_chain_params.auth_token: {e}"))?,
        ),
    }
    .filter(|t| !t.is_empty());
    Ok(OffChainParams {
        api_endpoint,
        headers,
        query_params,
        auth_token,
    })
}

/// Replaces every `${NAME}` by `env(NAME)`; a missing variable is an error
/// naming it. A `$` not followed by `{` is kept as is.
pub fn substitute(s: &str, env: EnvLookup<'_>) -> Result<String, String> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(at) = rest.find("${") {
        out.push_str(&rest[..at]);
        let after = &rest[at + 2..];
        let end = after
            .find('}')
            .ok_or_else(|| format!("unterminated ${{ in {s:?}"))?;
        let name = &after[..end];
        if name.is_empty() {
            return Err("empty variable name in ${}".into());
        }
        let value = env(name).ok_or_else(|| format!("environment variable {name} is not set"))?;
        out.push_str(&value);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn substitution_replaces_and_names_missing() {
        let env = |n: &str| (n == "TOKEN").then(|| "s3cret".to_owned());
        assert_eq!(
            substitute("Bearer ${TOKEN}!", &env).unwrap(),
            "Bearer s3cret!"
        );
        assert_eq!(substitute("$5 and $x", &env).unwrap(), "$5 and $x");
        let e = substitute("${NOPE}", &env).unwrap_err();
        assert!(e.contains("NOPE"), "{e}");
        assert!(substitute("${OPEN", &no_env).is_err());
    }

    #[test]
    fn go_style_duration_strings_parse() {
        let d = |s: &str| RawDuration::Text(s.into()).to_duration();
        assert_eq!(d("1h0m0s"), Ok(Duration::from_secs(3600)));
        assert_eq!(d("30m"), Ok(Duration::from_secs(1800)));
        assert_eq!(d("1h30m"), Ok(Duration::from_secs(5400)));
        assert!(d("soon").is_err());
    }

    #[test]
    fn six_field_cron_and_five_field_cron_parse() {
        assert!(parse_schedule("0 2 * * *").is_ok());
        assert!(parse_schedule("30 0 2 * * *").is_ok());
        assert!(parse_schedule("0 2 * *").is_err());
        assert!(parse_schedule("0 0 2 * * * 2030").is_err());
        let s = parse_schedule("0 2 * * *").unwrap();
        let t = chrono::DateTime::parse_from_rfc3339("2024-01-01T03:00:00Z")
            .unwrap()
            .to_utc();
        assert_eq!(
            s.next_after(t).unwrap().to_rfc3339(),
            "2024-01-02T02:00:00+00:00"
        );
    }
}
