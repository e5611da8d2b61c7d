//! Running jobs: fetch, shrink guard, one atomic scoped overwrite per scope,
//! retries, timeouts, concurrency cap, no self-overlap, schedules, shutdown.

use crate::job::{JobResult, JobSpec, RunCounts, RunOutcome, ScopeResult, SourceKind, TimeWindow};
use crate::source::{ScopeSnapshot, Snapshot, SourceError, SourceRegistry};
use crate::status::{Progress, StatusBoard};
use crate::writer::{SnapshotWriter, UnaryOverwrite};
use chrono::Utc;
use futures::{StreamExt, TryStreamExt};
use offer_domain::{
    BulkUpsertOptions, MarginOffer, OverwriteFilter, OverwriteRequest, StoreError, WriteContext,
};
use offer_store::SharedStore;
use rand::Rng;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Engine-wide settings; the binary fills them from flags and env.
#[derive(Clone, Debug)]
pub struct BackfillOptions {
    /// Jobs running at once (`BACKFILL_MAX_CONCURRENT_JOBS`).
    pub max_concurrent: usize,
    /// `--force`: lift the shrink guard for every job.
    pub force: bool,
    /// `--dry-run`: every job is a dry run.
    pub dry_run: bool,
    /// `--hours`: time-based sources cover `[now - window, now]`.
    pub window: Duration,
    /// How long running jobs may finish after shutdown before being cancelled.
    pub grace_period: Duration,
    pub retry_base_delay: Duration,
    pub retry_max_delay: Duration,
    /// The `origin` recorded on the store's change records.
    pub origin: String,
    /// Concurrent `get`s when an archive restore compares stored copies.
    pub lookup_concurrency: usize,
}

impl Default for BackfillOptions {
    fn default() -> Self {
        BackfillOptions {
            max_concurrent: 5,
            force: false,
            dry_run: false,
            window: Duration::from_secs(24 * 3600),
            grace_period: Duration::from_secs(30),
            retry_base_delay: Duration::from_secs(1),
            retry_max_delay: Duration::from_secs(60),
            origin: "backfiller".into(),
            lookup_concurrency: 16,
        }
    }
}

/// Why an attempt failed.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error("store: {0}")]
    Store(#[from] StoreError),
    /// Shrink guard, item errors, a missing source: retrying cannot help.
    #[error("{0}")]
    Permanent(String),
}

impl RunError {
    pub fn is_transient(&self) -> bool {
        match self {
            RunError::Source(e) => e.is_transient(),
            RunError::Store(e) => e.is_transient(),
            RunError::Permanent(_) => false,
        }
    }
}

enum RunEnd {
    Failed(RunError),
    TimedOut,
    Cancelled,
}

/// The backfiller. It sees the store only as a `SharedStore`, so it behaves
/// the same over the gRPC client and over an in-process backend.
pub struct Backfiller {
    store: SharedStore,
    sources: SourceRegistry,
    opts: BackfillOptions,
    writer: Arc<dyn SnapshotWriter>,
    status: StatusBoard,
    permits: Arc<Semaphore>,
    running: Mutex<HashSet<String>>,
}

/// Holds a job's "running" mark; dropping it (even by cancellation) clears it.
struct RunningMark<'a> {
    set: &'a Mutex<HashSet<String>>,
    job: String,
}

impl<'a> RunningMark<'a> {
    fn try_new(set: &'a Mutex<HashSet<String>>, job: &str) -> Option<Self> {
        let fresh = set
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(job.to_owned());
        fresh.then(|| RunningMark {
            set,
            job: job.to_owned(),
        })
    }
}

impl Drop for RunningMark<'_> {
    fn drop(&mut self) {
        self.set
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.job);
    }
}

impl Backfiller {
    pub fn new(store: SharedStore, sources: SourceRegistry, opts: BackfillOptions) -> Self {
        let permits = Arc::new(Semaphore::new(opts.max_concurrent.max(1)));
        Backfiller {
            store,
            sources,
            opts,
            writer: Arc::new(UnaryOverwrite),
            status: StatusBoard::new(),
            permits,
            running: Mutex::new(HashSet::new()),
        }
    }

    /// Replaces the apply step (e.g. the gRPC client's chunked streaming
    /// overwrite).
    pub fn with_writer(mut self, writer: Arc<dyn SnapshotWriter>) -> Self {
        self.writer = writer;
        self
    }

    /// The live board behind `/status`; clones share state.
    pub fn status(&self) -> StatusBoard {
        self.status.clone()
    }

    pub fn options(&self) -> &BackfillOptions {
        &self.opts
    }

    /// Lists jobs on the status board, so idle and disabled ones show too.
    pub fn register_jobs(&self, jobs: &[JobSpec]) {
        for j in jobs {
            self.status.register(j);
        }
    }

    /// Runs the given jobs once, concurrently up to the cap, and returns
    /// one result per job in the same order. After `shutdown` the running
    /// jobs get the grace period, then are cancelled.
    pub async fn run_once(&self, jobs: &[JobSpec], shutdown: &CancellationToken) -> Vec<JobResult> {
        self.register_jobs(jobs);
        let hard = CancellationToken::new();
        let watcher = tokio::spawn(cancel_after_grace(
            shutdown.clone(),
            hard.clone(),
            self.opts.grace_period,
        ));
        let results = futures::future::join_all(jobs.iter().map(|j| self.run_job(j, &hard))).await;
        watcher.abort();
        results
    }

    /// Runs enabled jobs on their schedules until `shutdown`: jobs without
    /// a schedule at start and then every `default_interval`, the others on
    /// their cron (UTC). Returns once every run has ended.
    pub async fn run_continuous(
        self: Arc<Self>,
        jobs: Vec<JobSpec>,
        default_interval: Duration,
        shutdown: CancellationToken,
    ) {
        self.register_jobs(&jobs);
        let tracker = TaskTracker::new();
        let hard = CancellationToken::new();
        for job in jobs.into_iter().filter(|j| j.enabled) {
            tracker.spawn(self.clone().schedule_loop(
                job,
                default_interval,
                shutdown.clone(),
                hard.clone(),
                tracker.clone(),
            ));
        }
        shutdown.cancelled().await;
        tracing::info!(grace = ?self.opts.grace_period, "shutting down: no new runs");
        tracker.close();
        if tokio::time::timeout(self.opts.grace_period, tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!("grace period over: cancelling running jobs");
            hard.cancel();
            tracker.wait().await;
        }
    }

    async fn schedule_loop(
        self: Arc<Self>,
        job: JobSpec,
        interval: Duration,
        shutdown: CancellationToken,
        hard: CancellationToken,
        tracker: TaskTracker,
    ) {
        let interval = interval.max(Duration::from_secs(1));
        let mut next_tick = tokio::time::Instant::now();
        let mut last_fire = Utc::now();
        loop {
            let now = Utc::now();
            let (wait, at) = match &job.schedule {
                None => {
                    let wait = next_tick.saturating_duration_since(tokio::time::Instant::now());
                    (
                        wait,
                        now.checked_add_signed(chrono_dur(wait)).unwrap_or(now),
                    )
                }
                Some(s) => {
                    // Strictly after the last fire, so one cron slot never
                    // fires twice even if the clock reads slightly early.
                    let Some(at) = s.next_after(now.max(last_fire)) else {
                        tracing::warn!(job = %job.name, schedule = %s.expr, "cron has no next occurrence");
                        break;
                    };
                    last_fire = at;
                    ((at - now).to_std().unwrap_or(Duration::ZERO), at)
                }
            };
            self.status.set_next_run(&job.name, Some(at));
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(wait) => {}
            }
            if shutdown.is_cancelled() {
                break;
            }
            if job.schedule.is_none() {
                next_tick += interval;
                let now = tokio::time::Instant::now();
                if next_tick <= now {
                    // Fell behind (suspend, clock trouble): realign, do not burst.
                    next_tick = now + interval;
                }
            }
            let me = self.clone();
            let run_job = job.clone();
            let hard = hard.clone();
            tracker.spawn(async move {
                me.run_job(&run_job, &hard).await;
            });
        }
        self.status.set_next_run(&job.name, None);
    }

    /// One run of one job: waits for a concurrency permit, then attempts
    /// with retries on transient failures. The job's `timeout` bounds the
    /// whole run, retries and backoff included (not the wait for a permit).
    /// If the job is already running the run is skipped. `cancel` aborts the
    /// run; since each scope is written by one atomic call, an aborted run
    /// commits nothing beyond the scopes it had already finished.
    pub async fn run_job(&self, job: &JobSpec, cancel: &CancellationToken) -> JobResult {
        self.status.register(job);
        let dry_run = self.opts.dry_run || job.dry_run;
        let started_at = Utc::now();
        let Some(_mark) = RunningMark::try_new(&self.running, &job.name) else {
            tracing::warn!(job = %job.name, "previous run still going: this run is skipped");
            self.status.run_skipped(&job.name);
            metrics::counter!("backfill_job_runs_total", "job" => job.name.clone(), "outcome" => RunOutcome::Skipped.as_str()).increment(1);
            return JobResult {
                job: job.name.clone(),
                source: job.source,
                outcome: RunOutcome::Skipped,
                dry_run,
                started_at,
                finished_at: Utc::now(),
                attempts: 0,
                counts: RunCounts::default(),
                scopes: Vec::new(),
                error: Some("previous run of this job still going".into()),
            };
        };
        let attempts = AtomicU32::new(0);
        let progress = Progress::new();
        let t0 = Instant::now();
        let end = tokio::select! {
            biased;
            _ = cancel.cancelled() => Err(RunEnd::Cancelled),
            r = async {
                // The permit is taken inside the timeout-free part: waiting
                // for a slot is not the job's fault.
                let _permit = self.permits.acquire().await.map_err(|_| RunEnd::Cancelled)?;
                self.status.run_started(&job.name, &progress);
                tracing::info!(job = %job.name, source = %job.source, dry_run, "run started");
                match tokio::time::timeout(job.timeout, self.attempts(job, dry_run, &progress, &attempts)).await {
                    Ok(Ok(scopes)) => Ok(scopes),
                    Ok(Err(e)) => Err(RunEnd::Failed(e)),
                    Err(_) => Err(RunEnd::TimedOut),
                }
            } => r,
        };
        let (outcome, scopes, error) = match end {
            Ok(scopes) => (RunOutcome::Succeeded, scopes, None),
            Err(RunEnd::Failed(e)) => (RunOutcome::Failed, Vec::new(), Some(e.to_string())),
            Err(RunEnd::TimedOut) => (
                RunOutcome::TimedOut,
                Vec::new(),
                Some(format!(
                    "timed out after {}",
                    humantime::format_duration(job.timeout)
                )),
            ),
            Err(RunEnd::Cancelled) => (
                RunOutcome::Cancelled,
                Vec::new(),
                Some("cancelled by shutdown".into()),
            ),
        };
        let mut counts = RunCounts::default();
        for s in &scopes {
            counts.add(&s.counts);
        }
        let result = JobResult {
            job: job.name.clone(),
            source: job.source,
            outcome,
            dry_run,
            started_at,
            finished_at: Utc::now(),
            attempts: attempts.load(Ordering::Relaxed),
            counts,
            scopes,
            error,
        };
        self.record(&result, t0.elapsed());
        result
    }

    fn record(&self, r: &JobResult, took: Duration) {
        let job = r.job.clone();
        metrics::counter!("backfill_job_runs_total", "job" => job.clone(), "outcome" => r.outcome.as_str()).increment(1);
        metrics::histogram!("backfill_job_duration_seconds", "job" => job.clone())
            .record(took.as_secs_f64());
        if !r.dry_run {
            for (kind, n) in [
                ("created", r.counts.created),
                ("updated", r.counts.updated),
                ("deleted", r.counts.deleted),
            ] {
                metrics::counter!("backfill_offers_written_total", "job" => job.clone(), "kind" => kind)
                    .increment(n as u64);
            }
        }
        self.status.run_finished(r);
        let c = &r.counts;
        match r.outcome {
            RunOutcome::Succeeded => tracing::info!(
                job = %r.job, dry_run = r.dry_run, attempts = r.attempts,
                fetched = c.fetched, created = c.created, updated = c.updated,
                deleted = c.deleted, unchanged = c.unchanged,
                seconds = took.as_secs_f64(), "run succeeded"
            ),
            _ => tracing::warn!(
                job = %r.job, outcome = r.outcome.as_str(), attempts = r.attempts,
                error = r.error.as_deref().unwrap_or(""), "run did not succeed"
            ),
        }
    }

    async fn attempts(
        &self,
        job: &JobSpec,
        dry_run: bool,
        progress: &Progress,
        attempts: &AtomicU32,
    ) -> Result<Vec<ScopeResult>, RunError> {
        loop {
            let n = attempts.fetch_add(1, Ordering::Relaxed) + 1;
            self.status.set_attempt(&job.name, n);
            progress.reset_counts();
            match self.attempt(job, dry_run, progress).await {
                Ok(s) => return Ok(s),
                Err(e) if e.is_transient() && n <= job.max_retries => {
                    let delay = self.backoff(n);
                    tracing::warn!(job = %job.name, attempt = n, retry_in = ?delay, error = %e, "transient failure, retrying");
                    progress.set_phase("retrying");
                    tokio::time::sleep(delay).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Exponential backoff with jitter: a random delay in [d/2, d], where d
    /// doubles per attempt up to the maximum, so many failing jobs do not
    /// retry in lockstep.
    fn backoff(&self, attempt: u32) -> Duration {
        let exp = 2u32.saturating_pow(attempt.saturating_sub(1).min(16));
        let d = self
            .opts
            .retry_base_delay
            .saturating_mul(exp)
            .min(self.opts.retry_max_delay);
        let half = d / 2;
        let jitter = rand::rng().random_range(0.0..=1.0);
        half + half.mul_f64(jitter)
    }

    async fn attempt(
        &self,
        job: &JobSpec,
        dry_run: bool,
        progress: &Progress,
    ) -> Result<Vec<ScopeResult>, RunError> {
        let source = self.sources.get(job.source).ok_or_else(|| {
            RunError::Permanent(format!(
                "no {} source is configured in this process",
                job.source
            ))
        })?;
        progress.set_phase("fetching");
        let t = Instant::now();
        let fetched = source
            .fetch(job, TimeWindow::last(self.opts.window), progress)
            .await;
        metrics::histogram!("backfill_source_fetch_duration_seconds", "job" => job.name.clone())
            .record(t.elapsed().as_secs_f64());
        let snapshot = fetched?;
        check_scopes(&snapshot)?;
        let ctx = WriteContext::new(self.opts.origin.clone());
        progress.set_phase("writing");
        let out = if job.source == SourceKind::Glacier {
            self.restore(job, snapshot, dry_run, &ctx, progress).await
        } else {
            self.sync(job, snapshot, dry_run, &ctx, progress).await
        };
        progress.set_phase("done");
        out
    }

    /// Chain and off-chain jobs: each scope's snapshot replaces the scope.
    async fn sync(
        &self,
        job: &JobSpec,
        snapshot: Snapshot,
        dry_run: bool,
        ctx: &WriteContext,
        progress: &Progress,
    ) -> Result<Vec<ScopeResult>, RunError> {
        let mut scopes = snapshot.scopes;
        for s in &mut scopes {
            for o in &mut s.offers {
                o.source = Some(s.scope.clone());
            }
        }
        // Every scope passes the guard before any is written, so a refused
        // scope never leaves the job half applied.
        if !(job.allow_shrink || self.opts.force) {
            for s in &scopes {
                self.shrink_guard(s).await?;
            }
        }
        let mut results = Vec::with_capacity(scopes.len());
        for s in scopes {
            let fetched = s.offers.len();
            let req = OverwriteRequest {
                offers: s.offers,
                filter: Some(OverwriteFilter::source(s.scope.clone())),
                validate_all: true,
                dry_run,
            };
            let out = self
                .writer
                .overwrite(self.store.as_ref(), req, job.batch_size, ctx, progress)
                .await?;
            if !out.errors.is_empty() {
                let first: Vec<String> = out
                    .errors
                    .iter()
                    .take(5)
                    .map(|e| format!("#{} {:?}: {} ({})", e.index, e.id, e.message, e.code))
                    .collect();
                return Err(RunError::Permanent(format!(
                    "store rejected {} offer(s) of scope {:?}, nothing of it written: {}",
                    out.errors.len(),
                    s.scope,
                    first.join("; ")
                )));
            }
            let counts = RunCounts {
                fetched,
                created: out.created_ids.len(),
                updated: out.updated_ids.len(),
                deleted: out.deleted_ids.len(),
                unchanged: out.unchanged_count,
            };
            if !dry_run {
                progress.add_written(counts.created + counts.updated + counts.deleted);
            }
            results.push(ScopeResult {
                scope: s.scope,
                counts,
                created_ids: out.created_ids,
                updated_ids: out.updated_ids,
                deleted_ids: out.deleted_ids,
            });
        }
        Ok(results)
    }

    /// Refuses a snapshot that is empty or would delete more than half of
    /// the scope: a flaky source must not wipe the store.
    async fn shrink_guard(&self, s: &ScopeSnapshot) -> Result<(), RunError> {
        let current = self
            .store
            .overwrite_stats(Some(&OverwriteFilter::source(s.scope.clone())))
            .await?;
        if s.offers.is_empty() {
            return Err(RunError::Permanent(format!(
                "shrink guard: the snapshot of scope {:?} is empty (the store holds {} offers in it); nothing written. Set \"allow_shrink\": true on the job or use --force to apply it",
                s.scope, current.affected_count
            )));
        }
        let incoming: HashSet<&str> = s.offers.iter().map(|o| o.id.as_str()).collect();
        let deleted = current
            .affected_ids
            .iter()
            .filter(|id| !incoming.contains(id.as_str()))
            .count();
        if deleted * 2 > current.affected_count {
            return Err(RunError::Permanent(format!(
                "shrink guard: the snapshot of scope {:?} would delete {deleted} of its {} offers (more than half); nothing written. Set \"allow_shrink\": true on the job or use --force to apply it",
                s.scope, current.affected_count
            )));
        }
        Ok(())
    }

    /// Archive jobs: write an archived offer only when its id is missing or
    /// the stored copy is older by `updated_timestamp`; never delete.
    async fn restore(
        &self,
        job: &JobSpec,
        snapshot: Snapshot,
        dry_run: bool,
        ctx: &WriteContext,
        progress: &Progress,
    ) -> Result<Vec<ScopeResult>, RunError> {
        let mut results = Vec::new();
        for s in snapshot.scopes {
            let fetched = s.offers.len();
            let offers = newest_per_id(s.offers);
            // Owned ids and store handles keep the futures free of borrowed
            // lifetimes, which spawned (Send) runs require.
            let ids: Vec<String> = offers.iter().map(|o| o.id.clone()).collect();
            let stored: Vec<Option<MarginOffer>> = futures::stream::iter(ids)
                .map(|id| {
                    let store = self.store.clone();
                    async move {
                        match store.get(&id).await {
                            Ok(found) => Ok(Some(found)),
                            Err(StoreError::NotFound { .. }) => Ok(None),
                            Err(e) => Err(e),
                        }
                    }
                })
                .buffered(self.opts.lookup_concurrency.max(1))
                .try_collect()
                .await?;
            let mut r = ScopeResult {
                scope: s.scope,
                ..Default::default()
            };
            r.counts.fetched = fetched;
            let mut writes = Vec::new();
            for (offer, current) in offers.into_iter().zip(stored) {
                match current {
                    None => {
                        r.created_ids.push(offer.id.clone());
                        writes.push(offer);
                    }
                    Some(cur) if is_older(&cur, &offer) && !cur.same_content(&offer) => {
                        r.updated_ids.push(offer.id.clone());
                        writes.push(offer);
                    }
                    Some(_) => r.counts.unchanged += 1,
                }
            }
            r.counts.created = r.created_ids.len();
            r.counts.updated = r.updated_ids.len();
            if !dry_run {
                for chunk in writes.chunks(job.batch_size.max(1)) {
                    let out = self
                        .store
                        .bulk_create_or_update(
                            chunk.to_vec(),
                            BulkUpsertOptions { validate_all: true },
                            ctx,
                        )
                        .await?;
                    if !out.errors.is_empty() {
                        let first: Vec<String> = out
                            .errors
                            .iter()
                            .take(5)
                            .map(|e| format!("{:?}: {} ({})", e.id, e.message, e.code))
                            .collect();
                        return Err(RunError::Permanent(format!(
                            "store rejected {} archived offer(s) of {:?}: {}",
                            out.errors.len(),
                            r.scope,
                            first.join("; ")
                        )));
                    }
                    progress.add_written(chunk.len());
                    progress.add_batch();
                }
            }
            results.push(r);
        }
        Ok(results)
    }
}

/// True when `stored` is older than `archived` by `updated_timestamp`; an
/// archived copy without one never replaces a stored offer.
fn is_older(stored: &MarginOffer, archived: &MarginOffer) -> bool {
    match (stored.updated_timestamp, archived.updated_timestamp) {
        (_, None) => false,
        (None, Some(_)) => true,
        (Some(s), Some(a)) => s < a,
    }
}

/// An archive may hold several versions of an id: keep the newest.
fn newest_per_id(offers: Vec<MarginOffer>) -> Vec<MarginOffer> {
    let mut at: HashMap<String, usize> = HashMap::new();
    let mut out: Vec<MarginOffer> = Vec::with_capacity(offers.len());
    for o in offers {
        match at.get(&o.id) {
            Some(&i) => {
                if o.updated_timestamp > out[i].updated_timestamp {
                    out[i] = o;
                }
            }
            None => {
                at.insert(o.id.clone(), out.len());
                out.push(o);
            }
        }
    }
    out
}

fn check_scopes(s: &Snapshot) -> Result<(), RunError> {
    if s.scopes.is_empty() {
        return Err(RunError::Permanent("the source returned no scope".into()));
    }
    let mut seen = HashSet::new();
    for sc in &s.scopes {
        if sc.scope.is_empty() {
            return Err(RunError::Permanent(
                "the source returned a scope with an empty tag".into(),
            ));
        }
        if !seen.insert(sc.scope.as_str()) {
            return Err(RunError::Permanent(format!(
                "the source returned scope {:?} twice",
                sc.scope
            )));
        }
    }
    Ok(())
}

fn chrono_dur(d: Duration) -> chrono::Duration {
    chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX)
}

/// Cancels `hard` once `grace` has passed after `shutdown`.
async fn cancel_after_grace(shutdown: CancellationToken, hard: CancellationToken, grace: Duration) {
    shutdown.cancelled().await;
    tokio::time::sleep(grace).await;
    hard.cancel();
}
