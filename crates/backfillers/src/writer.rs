//! The gRPC apply step: a snapshot of any size as ONE streamed overwrite.

use async_trait::async_trait;
use backfill::{Progress, SnapshotWriter};
use offer_domain::{OverwriteOutcome, OverwriteRequest, StoreResult, WriteContext};
use offer_store::MarginOfferStore;
use store_client::GrpcStore;

/// Sends each scope's snapshot through `OverwriteMarginOffersStream` in
/// chunks of the job's `batch_size`. The server applies nothing until the
/// stream is complete, so readers see the old or the new snapshot, and a
/// cancelled or broken stream commits nothing.
///
/// It holds its own client because the engine hands writers a
/// `&dyn MarginOfferStore`, which cannot stream; the engine stays ignorant
/// of gRPC.
#[derive(Clone, Debug)]
pub struct GrpcStreamWriter {
    client: GrpcStore,
}

impl GrpcStreamWriter {
    pub fn new(client: GrpcStore) -> Self {
        GrpcStreamWriter { client }
    }
}

#[async_trait]
impl SnapshotWriter for GrpcStreamWriter {
    async fn overwrite(
        &self,
        _store: &dyn MarginOfferStore,
        req: OverwriteRequest,
        batch_size: usize,
        ctx: &WriteContext,
        progress: &Progress,
    ) -> StoreResult<OverwriteOutcome> {
        let chunks = req.offers.len().div_ceil(batch_size.max(1)).max(1);
        let out = self.client.overwrite_stream(req, batch_size, ctx).await?;
        for _ in 0..chunks {
            progress.add_batch();
        }
        Ok(out)
    }
}
