//! Live progress of runs and the `/status` board.

use crate::job::{JobResult, JobSpec, RunCounts, RunOutcome, SourceKind};
use chrono::{DateTime, Utc};
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

/// Counters of one running job, shared between the engine, its source and
/// the status board. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Progress {
    inner: Arc<ProgressInner>,
}

#[derive(Debug)]
struct ProgressInner {
    started: Instant,
    fetched: AtomicU64,
    written: AtomicU64,
    batches: AtomicU64,
    /// 0 while unknown.
    expected: AtomicU64,
    phase: Mutex<&'static str>,
}

impl Default for Progress {
    fn default() -> Self {
        Self::new()
    }
}

impl Progress {
    pub fn new() -> Self {
        Progress {
            inner: Arc::new(ProgressInner {
                started: Instant::now(),
                fetched: AtomicU64::new(0),
                written: AtomicU64::new(0),
                batches: AtomicU64::new(0),
                expected: AtomicU64::new(0),
                phase: Mutex::new("starting"),
            }),
        }
    }

    /// Clears the counters for a new attempt, so retries do not double count.
    pub fn reset_counts(&self) {
        let i = &self.inner;
        for c in [&i.fetched, &i.written, &i.batches, &i.expected] {
            c.store(0, Ordering::Relaxed);
        }
    }

    pub fn add_fetched(&self, n: usize) {
        self.inner.fetched.fetch_add(n as u64, Ordering::Relaxed);
    }

    pub fn add_written(&self, n: usize) {
        self.inner.written.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// One page, RPC call or write chunk done.
    pub fn add_batch(&self) {
        self.inner.batches.fetch_add(1, Ordering::Relaxed);
    }

    /// The number of records a source expects to fetch, when it knows; it
    /// makes the ETA possible.
    pub fn set_expected_total(&self, n: usize) {
        self.inner.expected.store(n as u64, Ordering::Relaxed);
    }

    pub fn set_phase(&self, phase: &'static str) {
        *lock(&self.inner.phase) = phase;
    }

    pub fn snapshot(&self) -> ProgressSnapshot {
        let i = &self.inner;
        let fetched = i.fetched.load(Ordering::Relaxed);
        let written = i.written.load(Ordering::Relaxed);
        let expected = i.expected.load(Ordering::Relaxed);
        let phase = *lock(&i.phase);
        let elapsed = i.started.elapsed().as_secs_f64();
        let done = fetched.max(written);
        let throughput = if elapsed > 0.0 {
            done as f64 / elapsed
        } else {
            0.0
        };
        // Remaining work of the current phase: the rest of the fetch, or the
        // fetched records not yet written.
        let remaining = if phase == "writing" {
            Some(fetched.saturating_sub(written))
        } else if expected > 0 {
            Some(expected.saturating_sub(fetched))
        } else {
            None
        };
        let eta_seconds = match remaining {
            Some(r) if throughput > 0.0 => Some(r as f64 / throughput),
            _ => None,
        };
        ProgressSnapshot {
            phase,
            records_fetched: fetched,
            records_written: written,
            batches: i.batches.load(Ordering::Relaxed),
            expected_total: (expected > 0).then_some(expected),
            elapsed_seconds: elapsed,
            throughput_per_sec: throughput,
            eta_seconds,
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic elsewhere must not take /status down with it.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ProgressSnapshot {
    pub phase: &'static str,
    pub records_fetched: u64,
    pub records_written: u64,
    pub batches: u64,
    pub expected_total: Option<u64>,
    pub elapsed_seconds: f64,
    pub throughput_per_sec: f64,
    pub eta_seconds: Option<f64>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct LastRun {
    pub started_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
    pub outcome: RunOutcome,
    pub dry_run: bool,
    pub attempts: u32,
    pub counts: RunCounts,
    pub error: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RunningStatus {
    pub started_at: DateTime<Utc>,
    pub attempt: u32,
    pub progress: ProgressSnapshot,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct JobStatus {
    pub name: String,
    pub source: SourceKind,
    pub enabled: bool,
    pub schedule: Option<String>,
    pub last_run: Option<LastRun>,
    pub next_run: Option<DateTime<Utc>>,
    pub running: Option<RunningStatus>,
    pub runs_total: u64,
    pub failures_total: u64,
    pub skipped_total: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct StatusReport {
    pub generated_at: DateTime<Utc>,
    pub jobs: Vec<JobStatus>,
}

#[derive(Debug)]
struct Entry {
    status: JobStatus,
    progress: Option<Progress>,
}

/// Every job's state, shared by the engine and the `/status` handler.
/// Serialises as a [`StatusReport`].
#[derive(Clone, Debug, Default)]
pub struct StatusBoard {
    jobs: Arc<Mutex<BTreeMap<String, Entry>>>,
}

impl StatusBoard {
    pub fn new() -> Self {
        Self::default()
    }

    /// Lists a job (idempotent), so idle jobs show up too.
    pub fn register(&self, job: &JobSpec) {
        lock(&self.jobs)
            .entry(job.name.clone())
            .or_insert_with(|| Entry {
                status: JobStatus {
                    name: job.name.clone(),
                    source: job.source,
                    enabled: job.enabled,
                    schedule: job.schedule.as_ref().map(|s| s.expr.clone()),
                    last_run: None,
                    next_run: None,
                    running: None,
                    runs_total: 0,
                    failures_total: 0,
                    skipped_total: 0,
                },
                progress: None,
            });
    }

    fn with<R>(&self, job: &str, f: impl FnOnce(&mut Entry) -> R) -> Option<R> {
        lock(&self.jobs).get_mut(job).map(f)
    }

    pub fn set_next_run(&self, job: &str, at: Option<DateTime<Utc>>) {
        self.with(job, |e| e.status.next_run = at);
    }

    pub(crate) fn run_started(&self, job: &str, progress: &Progress) {
        self.with(job, |e| {
            e.status.running = Some(RunningStatus {
                started_at: Utc::now(),
                attempt: 1,
                progress: progress.snapshot(),
            });
            e.progress = Some(progress.clone());
        });
    }

    pub(crate) fn set_attempt(&self, job: &str, attempt: u32) {
        self.with(job, |e| {
            if let Some(r) = &mut e.status.running {
                r.attempt = attempt;
            }
        });
    }

    pub(crate) fn run_skipped(&self, job: &str) {
        self.with(job, |e| e.status.skipped_total += 1);
    }

    pub(crate) fn run_finished(&self, r: &JobResult) {
        self.with(&r.job, |e| {
            e.status.running = None;
            e.progress = None;
            e.status.runs_total += 1;
            if r.outcome != RunOutcome::Succeeded {
                e.status.failures_total += 1;
            }
            e.status.last_run = Some(LastRun {
                started_at: r.started_at,
                finished_at: r.finished_at,
                outcome: r.outcome,
                dry_run: r.dry_run,
                attempts: r.attempts,
                counts: r.counts,
                error: r.error.clone(),
            });
        });
    }

    /// One job's status, live progress included.
    pub fn job(&self, job: &str) -> Option<JobStatus> {
        self.with(job, |e| Self::render(e))
    }

    fn render(e: &Entry) -> JobStatus {
        let mut s = e.status.clone();
        if let (Some(r), Some(p)) = (&mut s.running, &e.progress) {
            r.progress = p.snapshot();
        }
        s
    }

    /// The whole board, live progress included.
    pub fn snapshot(&self) -> StatusReport {
        StatusReport {
            generated_at: Utc::now(),
            jobs: lock(&self.jobs).values().map(Self::render).collect(),
        }
    }
}

impl Serialize for StatusBoard {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.snapshot().serialize(s)
    }
}
