//! The `MarginOfferStore` trait.
//!
//! Every backend (memory, SQLite, PostgreSQL) implements it, the gRPC service
//! serves any `Arc<dyn MarginOfferStore>`, and the gRPC client implements it
//! again on the far side, so the backfiller and tests cannot tell a local
//! store from a remote one. Errors are [`StoreError`] everywhere.

use async_trait::async_trait;
use offer_domain::{
    BulkCreateOptions, BulkDeleteOptions, BulkOutcome, BulkUpdateOptions, BulkUpsertOptions,
    Change, ListPage, ListQuery, MarginOffer, OfferPatch, OfferType, OverwriteFilter,
    OverwriteOutcome, OverwriteRequest, Revision, Stats, StatsQuery, StoreResult, WriteContext,
};
use std::collections::BTreeMap;
use std::sync::Arc;

pub use offer_domain;

/// The result of a single-offer write.
#[derive(Clone, Debug, PartialEq)]
pub struct Written {
    /// The offer as stored after the write (timestamps filled in).
    pub offer: MarginOffer,
    /// True when the write created the id (create, or create-or-update of a new id).
    pub was_created: bool,
    /// The revision of the commit; the current revision when nothing changed.
    pub revision: Revision,
}

/// The ids an overwrite would touch: the offers currently in scope.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OverwriteStats {
    pub affected_count: usize,
    pub affected_ids: Vec<String>,
}

/// A slice of the change log, in revision order.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ChangeBatch {
    pub changes: Vec<Change>,
    /// The store's revision when the batch was read; every change up to it
    /// with revision > the requested one is in this batch or a later one.
    pub head: Revision,
}

/// The book of margin offers.
///
/// Writes take a [`WriteContext`] naming who writes (recorded on every
/// change). Every committed write call that changes something takes exactly
/// one new revision; a call that changes nothing takes none.
#[async_trait]
pub trait MarginOfferStore: Send + Sync + 'static {
    /// Creates a new offer; `AlreadyExists` if the id is taken.
    async fn create(&self, offer: MarginOffer, ctx: &WriteContext) -> StoreResult<Written>;

    /// `NotFound` if absent.
    async fn get(&self, id: &str) -> StoreResult<MarginOffer>;

    /// Replaces an existing offer; `NotFound` if absent.
    async fn update(&self, offer: MarginOffer, ctx: &WriteContext) -> StoreResult<Written>;

    /// Returns the revision of the delete; `NotFound` if absent.
    async fn delete(&self, id: &str, ctx: &WriteContext) -> StoreResult<Revision>;

    /// Creates or replaces, reporting `was_created` decided atomically.
    async fn create_or_update(
        &self,
        offer: MarginOffer,
        ctx: &WriteContext,
    ) -> StoreResult<Written>;

    async fn list(&self, query: &ListQuery) -> StoreResult<ListPage>;

    async fn bulk_create(
        &self,
        offers: Vec<MarginOffer>,
        opts: BulkCreateOptions,
        ctx: &WriteContext,
    ) -> StoreResult<BulkOutcome>;

    async fn bulk_update(
        &self,
        patches: Vec<OfferPatch>,
        opts: BulkUpdateOptions,
        ctx: &WriteContext,
    ) -> StoreResult<BulkOutcome>;

    async fn bulk_delete(
        &self,
        ids: Vec<String>,
        opts: BulkDeleteOptions,
        ctx: &WriteContext,
    ) -> StoreResult<BulkOutcome>;

    async fn bulk_create_or_update(
        &self,
        offers: Vec<MarginOffer>,
        opts: BulkUpsertOptions,
        ctx: &WriteContext,
    ) -> StoreResult<BulkOutcome>;

    /// Makes the offers in the request's scope equal to its offers, atomically.
    async fn overwrite(
        &self,
        req: OverwriteRequest,
        ctx: &WriteContext,
    ) -> StoreResult<OverwriteOutcome>;

    /// The ids currently in scope, sorted.
    async fn overwrite_preview(&self, filter: Option<&OverwriteFilter>)
    -> StoreResult<Vec<String>>;

    async fn stats(&self, query: &StatsQuery) -> StoreResult<Stats>;

    /// `Unavailable` (or another error) when the backend cannot serve.
    async fn health_check(&self) -> StoreResult<()>;

    /// Flushes and releases the backend; later calls fail with `Unavailable`.
    async fn close(&self) -> StoreResult<()>;

    /// The revision of the last committed write.
    async fn revision(&self) -> StoreResult<Revision>;

    /// Retained changes with revision > `after`, in order, in whole revisions:
    /// about `limit` changes, more only when one revision alone exceeds it.
    /// `OutOfRange` when `after` is older than the retained log.
    async fn changes_since(&self, after: Revision, limit: usize) -> StoreResult<ChangeBatch>;

    /// A cheap wake-up for change-log followers: the receiver's value is the
    /// revision of the latest commit (at least), and it changes after every
    /// commit. `None` (the default) means the backend cannot notify, and
    /// followers poll `changes_since` instead. The value is a hint only:
    /// followers still read the changes through `changes_since`.
    fn subscribe_commits(&self) -> Option<tokio::sync::watch::Receiver<Revision>> {
        None
    }

    // Conveniences of the Go store interface, in terms of the above.

    async fn list_by_lender(&self, lender: &str, limit: i32, offset: i32) -> StoreResult<ListPage> {
        let mut q = ListQuery {
            limit,
            offset,
            ..Default::default()
        };
        q.filter.lender_address = Some(lender.to_owned());
        self.list(&q).await
    }

    async fn list_by_token_pair(
        &self,
        collateral_token: &str,
        borrow_token: &str,
        limit: i32,
        offset: i32,
    ) -> StoreResult<ListPage> {
        let mut q = ListQuery {
            limit,
            offset,
            ..Default::default()
        };
        q.filter.collateral_token = Some(collateral_token.to_owned());
        q.filter.borrow_token = Some(borrow_token.to_owned());
        self.list(&q).await
    }

    async fn list_by_offer_type(
        &self,
        offer_type: OfferType,
        limit: i32,
        offset: i32,
    ) -> StoreResult<ListPage> {
        let mut q = ListQuery {
            limit,
            offset,
            ..Default::default()
        };
        q.filter.offer_type = Some(offer_type);
        self.list(&q).await
    }

    /// Offers not expired.
    async fn count(&self) -> StoreResult<i64> {
        Ok(self.stats(&StatsQuery::default()).await?.total)
    }

    async fn count_by_offer_type(&self) -> StoreResult<BTreeMap<String, i64>> {
        Ok(self.stats(&StatsQuery::default()).await?.by_offer_type)
    }

    async fn total_liquidity(&self) -> StoreResult<BTreeMap<String, f64>> {
        Ok(self
            .stats(&StatsQuery::default())
            .await?
            .liquidity_by_borrow_token)
    }

    async fn overwrite_stats(
        &self,
        filter: Option<&OverwriteFilter>,
    ) -> StoreResult<OverwriteStats> {
        let affected_ids = self.overwrite_preview(filter).await?;
        Ok(OverwriteStats {
            affected_count: affected_ids.len(),
            affected_ids,
        })
    }
}

/// Lets an `Arc<dyn MarginOfferStore>` be used wherever a store is expected.
pub type SharedStore = Arc<dyn MarginOfferStore>;
