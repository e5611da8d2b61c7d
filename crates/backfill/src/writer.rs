//! The "apply" step: how one scope's snapshot reaches the store.
//!
//! The engine only needs "apply this overwrite atomically". A store reached
//! over gRPC can do better than one unary message (the streaming overwrite
//! in chunks of `batch_size`); its client plugs that in through
//! [`SnapshotWriter`] without the engine knowing.

use crate::status::Progress;
use async_trait::async_trait;
use offer_domain::{OverwriteOutcome, OverwriteRequest, StoreResult, WriteContext};
use offer_store::MarginOfferStore;

/// Applies one scope's snapshot as ONE atomic overwrite.
///
/// Contract: all or nothing; dropping the returned future before it
/// resolves must commit nothing (a streaming writer achieves this by never
/// closing the stream); `req.dry_run` must commit nothing and return the
/// outcome that would have been.
#[async_trait]
pub trait SnapshotWriter: Send + Sync {
    async fn overwrite(
        &self,
        store: &dyn MarginOfferStore,
        req: OverwriteRequest,
        batch_size: usize,
        ctx: &WriteContext,
        progress: &Progress,
    ) -> StoreResult<OverwriteOutcome>;
}

/// The default writer: one `MarginOfferStore::overwrite` call, whatever the
/// size; fine for local stores and small snapshots.
#[derive(Clone, Copy, Debug, Default)]
pub struct UnaryOverwrite;

#[async_trait]
impl SnapshotWriter for UnaryOverwrite {
    async fn overwrite(
        &self,
        store: &dyn MarginOfferStore,
        req: OverwriteRequest,
        _batch_size: usize,
        ctx: &WriteContext,
        progress: &Progress,
    ) -> StoreResult<OverwriteOutcome> {
        let out = store.overwrite(req, ctx).await?;
        progress.add_batch();
        Ok(out)
    }
}
