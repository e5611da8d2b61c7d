//! The backfiller engine: keeps the store's offers equal to what the
//! liquidity sources hold (`backfiller.md`).
//!
//! The engine talks to the store only through `SharedStore`
//! (`Arc<dyn MarginOfferStore>`): in production the gRPC client, in tests the
//! in-memory store. Nothing here knows which.
//!
//! # Layout
//! - [`config`]: the job file (Go-compatible JSON), `${VAR}` substitution,
//!   `BACKFILL_JOBS` merging, validation naming the failing job.
//! - [`job`]: validated jobs ([`JobSpec`]), source kinds, programs, run
//!   results and counts.
//! - [`source`]: the [`Source`] trait, snapshots (one or more scopes), and
//!   transient/permanent source errors.
//! - [`writer`]: the pluggable apply step ([`SnapshotWriter`]); the default
//!   is one unary overwrite, the gRPC client can plug in its chunked stream.
//! - [`engine`]: [`Backfiller`]: shrink guard, scoped overwrite, archive
//!   restore, retries with backoff, timeouts, concurrency cap, no overlap,
//!   schedules, graceful shutdown, metrics.
//! - [`status`]: live [`Progress`] and the [`StatusBoard`] behind `/status`.
//! - [`sources`]: concrete sources; so far the off-chain HTTP source.
//! - [`archive`]: offer snapshots in object storage (gzip NDJSON): export,
//!   listing, reading; the archive source restores from them.
//!
//! # Metrics
//! `backfill_job_runs_total{job,outcome}`, `backfill_job_duration_seconds{job}`,
//! `backfill_offers_written_total{job,kind}`, `backfill_source_fetch_duration_seconds{job}`,
//! through the `metrics` facade (the binary installs the exporter).

/// The archive lives in its own crate so the store and offersctl can export
/// snapshots without linking the engine; re-exported under its old path.
pub use offer_archive as archive;
pub mod config;
pub mod engine;
pub mod job;
pub mod source;
pub mod sources;
pub mod status;
pub mod writer;

pub use config::{BackfillConfig, ConfigError, EnvLookup};
pub use engine::{BackfillOptions, Backfiller, RunError};
pub use job::{
    JobResult, JobSpec, Program, RunCounts, RunOutcome, ScopeResult, SourceKind, SourceParams,
    TimeWindow,
};
pub use source::{ScopeSnapshot, Snapshot, Source, SourceError, SourceRegistry};
pub use status::{Progress, StatusBoard, StatusReport};
pub use tokio_util::sync::CancellationToken;
pub use writer::{SnapshotWriter, UnaryOverwrite};
