//! The glacier / archive source: restores offers from a snapshot written by
//! [`crate::archive::export_snapshot`].
//!
//! `glacier_params.vault_name` is the archive URL; `archive_id`, when set,
//! names one snapshot object (relative to the URL); otherwise the newest
//! snapshot taken inside the run's time window is used. The engine applies
//! the restore rule (write when missing or older, never delete), so this
//! source only reads.

use crate::archive::{ArchiveError, ArchiveLocation};
use crate::job::{JobSpec, SourceParams, TimeWindow};
use crate::source::{Snapshot, Source, SourceError};
use crate::status::Progress;
use async_trait::async_trait;

/// Stateless: each run opens the job's archive URL afresh, so credentials
/// and endpoints from the environment are picked up per run.
#[derive(Clone, Debug, Default)]
pub struct ArchiveSource;

impl ArchiveSource {
    pub fn new() -> Self {
        ArchiveSource
    }
}

/// The scope tag archive snapshots are reported under; restored offers keep
/// their own `source`.
pub const ARCHIVE_SCOPE: &str = "archive";

#[async_trait]
impl Source for ArchiveSource {
    async fn fetch(
        &self,
        job: &JobSpec,
        window: TimeWindow,
        progress: &Progress,
    ) -> Result<Snapshot, SourceError> {
        let SourceParams::Glacier(params) = &job.params else {
            return Err(SourceError::Permanent(format!(
                "job {:?} is not a glacier/archive job",
                job.name
            )));
        };
        let loc = ArchiveLocation::open(&params.vault_name).map_err(to_source)?;
        let name = match params.archive_id.trim() {
            "" => {
                loc.newest_in(window.start, window.end)
                    .await
                    .map_err(to_source)?
                    .name
            }
            id => id.to_owned(),
        };
        tracing::info!(job = %job.name, archive = loc.url(), snapshot = %name, "restoring archive snapshot");
        let offers = loc.read_snapshot(&name).await.map_err(to_source)?;
        progress.add_fetched(offers.len());
        progress.add_batch();
        Ok(Snapshot::single(ARCHIVE_SCOPE, offers))
    }
}

fn to_source(e: ArchiveError) -> SourceError {
    if e.is_transient() {
        SourceError::Transient(e.to_string())
    } else {
        SourceError::Permanent(e.to_string())
    }
}
