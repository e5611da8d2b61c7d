//! An in-memory `MarginOfferStore`: the reference backend for tests and
//! `--database-url memory://`.
//!
//! All state sits behind one `RwLock`, so every write call is trivially
//! atomic and readers see whole revisions. Equality filters are served by
//! secondary indexes (value → ids), so a filtered list touches only the
//! offers that can match, then selects the page with a partial sort.

mod index;

use async_trait::async_trait;
use index::Indexes;
use offer_domain::query::{ResolvedList, compare_keys, compare_offers};
use offer_domain::write::{self, BulkPlan, Lookup, OverwritePlan, SinglePlan, WritePlan};
use offer_domain::{
    BulkCreateOptions, BulkDeleteOptions, BulkOutcome, BulkUpdateOptions, BulkUpsertOptions,
    Change, ChangeType, ListPage, ListQuery, MarginOffer, OfferPatch, OverwriteFilter,
    OverwriteOutcome, OverwriteRequest, Revision, Stats, StatsQuery, StoreError, StoreResult,
    Timestamp, WriteContext,
};
use offer_store::{ChangeBatch, MarginOfferStore, Written};
use parking_lot::RwLock;
use std::cmp::Ordering;
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering as AtomicOrdering};
use std::time::Duration;
use tokio::sync::watch;

/// Changes kept for `changes_since` unless configured otherwise.
pub const DEFAULT_CHANGE_RETENTION: usize = 1_000_000;
/// Changes younger than this are kept whatever their number (the window is
/// the larger of the count and the age).
pub const DEFAULT_CHANGE_MIN_AGE: Duration = Duration::from_secs(24 * 60 * 60);

pub struct MemoryStore {
    state: RwLock<State>,
    closed: AtomicBool,
    /// The revision of the latest commit, for `subscribe_commits`.
    commits: watch::Sender<Revision>,
}

struct State {
    offers: HashMap<Arc<str>, Arc<MarginOffer>>,
    indexes: Indexes,
    revision: Revision,
    changes: VecDeque<Change>,
    /// Every change with a revision at or below this has been pruned.
    pruned_through: Revision,
    retention: usize,
    /// Nanoseconds; a change younger than this is never pruned.
    min_age_nanos: i64,
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryStore {
    pub fn new() -> Self {
        Self::with_change_retention(DEFAULT_CHANGE_RETENTION)
    }

    /// `retention`: at least this many changes stay readable by `changes_since`
    /// (and, unless [`MemoryStore::with_change_min_age`] says otherwise, every
    /// change of the last 24 h).
    pub fn with_change_retention(retention: usize) -> Self {
        MemoryStore {
            state: RwLock::new(State {
                offers: HashMap::new(),
                indexes: Indexes::default(),
                revision: 0,
                changes: VecDeque::new(),
                pruned_through: 0,
                retention,
                min_age_nanos: nanos(DEFAULT_CHANGE_MIN_AGE),
            }),
            closed: AtomicBool::new(false),
            commits: watch::channel(0).0,
        }
    }

    /// Changes younger than `min_age` stay readable whatever their number
    /// (`Duration::ZERO`: the count alone decides).
    pub fn with_change_min_age(self, min_age: Duration) -> Self {
        self.state.write().min_age_nanos = nanos(min_age);
        self
    }

    fn check_open(&self) -> StoreResult<()> {
        if self.closed.load(AtomicOrdering::Acquire) {
            return Err(StoreError::Unavailable("store is closed".into()));
        }
        Ok(())
    }

    /// Runs a planner against the current state under the write lock and
    /// commits its plan (unless `dry_run`), returning the plan's result and
    /// the revision it committed at (or the current one).
    fn write<T>(
        &self,
        ctx: &WriteContext,
        dry_run: bool,
        planner: impl FnOnce(&State, &mut Lookup, Timestamp) -> StoreResult<(T, WritePlan)>,
    ) -> StoreResult<(T, Revision)> {
        self.check_open()?;
        let mut state = self.state.write();
        let now = Timestamp::now();
        let (result, plan) = {
            let offers = &state.offers;
            let mut lookup = |id: &str| Ok(offers.get(id).map(|o| (**o).clone()));
            planner(&state, &mut lookup, now)?
        };
        if dry_run || plan.is_empty() {
            return Ok((result, state.revision));
        }
        let revision = state.commit(plan, ctx, now);
        // Under the write lock, so the notified revision never goes backwards.
        self.commits.send_replace(revision);
        Ok((result, revision))
    }
}

impl State {
    fn commit(&mut self, plan: WritePlan, ctx: &WriteContext, now: Timestamp) -> Revision {
        self.revision += 1;
        let revision = self.revision;
        let operation_id = if ctx.operation_id.is_empty() {
            uuid::Uuid::new_v4().to_string()
        } else {
            ctx.operation_id.clone()
        };
        for w in plan.writes {
            let id: Arc<str> = Arc::from(w.offer.id.as_str());
            if let Some(old) = self.offers.remove(&id) {
                self.indexes.remove(&old, &id);
            }
            if w.change_type != ChangeType::Deleted {
                let offer = Arc::new(w.offer.clone());
                self.indexes.insert(&offer, &id);
                self.offers.insert(id, offer);
            }
            self.changes.push_back(Change {
                revision,
                change_type: w.change_type,
                offer: w.offer,
                timestamp: now,
                origin: ctx.origin.clone(),
                operation_id: operation_id.clone(),
            });
        }
        self.prune(now);
        revision
    }

    /// Drops whole revisions from the front while more than `retention`
    /// remain and the oldest is older than the minimum age.
    fn prune(&mut self, now: Timestamp) {
        let cutoff = now.0.saturating_sub(self.min_age_nanos);
        while self.changes.len() > self.retention {
            let Some((oldest, at)) = self.changes.front().map(|c| (c.revision, c.timestamp)) else {
                break;
            };
            if at.0 > cutoff {
                break;
            }
            let in_oldest = self.changes.partition_point(|c| c.revision <= oldest);
            if self.changes.len() - in_oldest < self.retention {
                break;
            }
            self.changes.drain(..in_oldest);
            self.pruned_through = oldest;
        }
    }

    /// The offers an overwrite filter selects, via an index when it has one.
    fn in_scope(&self, filter: Option<&OverwriteFilter>) -> Vec<MarginOffer> {
        let filter = filter
            .map(OverwriteFilter::as_offer_filter)
            .unwrap_or_default();
        self.candidates(&filter)
            .filter(|o| filter.matches(o))
            .map(|o| MarginOffer::clone(o))
            .collect()
    }

    fn candidates<'a>(
        &'a self,
        filter: &offer_domain::OfferFilter,
    ) -> Box<dyn Iterator<Item = &'a Arc<MarginOffer>> + 'a> {
        match self.indexes.narrowest(filter) {
            Some(ids) => Box::new(ids.iter().filter_map(|id| self.offers.get(id))),
            None => Box::new(self.offers.values()),
        }
    }
}

fn nanos(d: Duration) -> i64 {
    i64::try_from(d.as_nanos()).unwrap_or(i64::MAX)
}

fn single(p: SinglePlan) -> (SinglePlan, WritePlan) {
    let plan = p.plan.clone();
    (p, plan)
}

fn bulk(p: BulkPlan) -> (BulkOutcome, WritePlan) {
    (p.outcome, p.plan)
}

fn written(p: SinglePlan, revision: Revision) -> Written {
    Written {
        offer: p.offer,
        was_created: p.was_created,
        revision,
    }
}

#[async_trait]
impl MarginOfferStore for MemoryStore {
    async fn create(&self, offer: MarginOffer, ctx: &WriteContext) -> StoreResult<Written> {
        let (p, rev) = self.write(ctx, false, |_, lookup, now| {
            write::plan_create(offer, lookup, now).map(single)
        })?;
        Ok(written(p, rev))
    }

    async fn get(&self, id: &str) -> StoreResult<MarginOffer> {
        self.check_open()?;
        let state = self.state.read();
        state
            .offers
            .get(id)
            .map(|o| (**o).clone())
            .ok_or_else(|| StoreError::NotFound { id: id.to_owned() })
    }

    async fn update(&self, offer: MarginOffer, ctx: &WriteContext) -> StoreResult<Written> {
        let (p, rev) = self.write(ctx, false, |_, lookup, now| {
            write::plan_update(offer, lookup, now).map(single)
        })?;
        Ok(written(p, rev))
    }

    async fn delete(&self, id: &str, ctx: &WriteContext) -> StoreResult<Revision> {
        let ((), rev) = self.write(ctx, false, |_, lookup, _| {
            write::plan_delete(id, lookup).map(|plan| ((), plan))
        })?;
        Ok(rev)
    }

    async fn create_or_update(
        &self,
        offer: MarginOffer,
        ctx: &WriteContext,
    ) -> StoreResult<Written> {
        let (p, rev) = self.write(ctx, false, |_, lookup, now| {
            write::plan_create_or_update(offer, lookup, now).map(single)
        })?;
        Ok(written(p, rev))
    }

    async fn list(&self, query: &ListQuery) -> StoreResult<ListPage> {
        self.check_open()?;
        let resolved = query.resolve()?;
        let now = Timestamp::now();
        let state = self.state.read();
        let mut total = 0i64;
        let mut page: Vec<&Arc<MarginOffer>> = Vec::new();
        for o in state.candidates(&query.filter) {
            if !query.admits(o, now) {
                continue;
            }
            total += 1;
            if is_after(o, &resolved, query) {
                page.push(o);
            }
        }
        let rows = select_page(page, &resolved, query);
        Ok(ListPage::assemble(
            query,
            &resolved,
            rows,
            total,
            state.revision,
        ))
    }

    async fn bulk_create(
        &self,
        offers: Vec<MarginOffer>,
        opts: BulkCreateOptions,
        ctx: &WriteContext,
    ) -> StoreResult<BulkOutcome> {
        let (mut out, rev) = self.write(ctx, false, |_, lookup, now| {
            write::plan_bulk_create(offers, opts, lookup, now).map(bulk)
        })?;
        out.revision = rev;
        Ok(out)
    }

    async fn bulk_update(
        &self,
        patches: Vec<OfferPatch>,
        opts: BulkUpdateOptions,
        ctx: &WriteContext,
    ) -> StoreResult<BulkOutcome> {
        let (mut out, rev) = self.write(ctx, false, |_, lookup, now| {
            write::plan_bulk_update(patches, opts, lookup, now).map(bulk)
        })?;
        out.revision = rev;
        Ok(out)
    }

    async fn bulk_delete(
        &self,
        ids: Vec<String>,
        opts: BulkDeleteOptions,
        ctx: &WriteContext,
    ) -> StoreResult<BulkOutcome> {
        let (mut out, rev) = self.write(ctx, false, |_, lookup, _| {
            write::plan_bulk_delete(ids, opts, lookup).map(bulk)
        })?;
        out.revision = rev;
        Ok(out)
    }

    async fn bulk_create_or_update(
        &self,
        offers: Vec<MarginOffer>,
        opts: BulkUpsertOptions,
        ctx: &WriteContext,
    ) -> StoreResult<BulkOutcome> {
        let (mut out, rev) = self.write(ctx, false, |_, lookup, now| {
            write::plan_bulk_create_or_update(offers, opts, lookup, now).map(bulk)
        })?;
        out.revision = rev;
        Ok(out)
    }

    async fn overwrite(
        &self,
        req: OverwriteRequest,
        ctx: &WriteContext,
    ) -> StoreResult<OverwriteOutcome> {
        let dry_run = req.dry_run;
        let (mut out, rev) = self.write(ctx, dry_run, |state, lookup, now| {
            write::check_overwrite_request(req.offers.is_empty(), req.filter.as_ref())?;
            let scope = state.in_scope(req.filter.as_ref());
            write::plan_overwrite(req, scope, lookup, now)
                .map(|OverwritePlan { outcome, plan }| (outcome, plan))
        })?;
        out.revision = rev;
        Ok(out)
    }

    async fn overwrite_preview(
        &self,
        filter: Option<&OverwriteFilter>,
    ) -> StoreResult<Vec<String>> {
        self.check_open()?;
        let state = self.state.read();
        let mut ids: Vec<String> = state.in_scope(filter).into_iter().map(|o| o.id).collect();
        ids.sort_unstable();
        Ok(ids)
    }

    async fn stats(&self, query: &StatsQuery) -> StoreResult<Stats> {
        self.check_open()?;
        let now = Timestamp::now();
        let state = self.state.read();
        let filter = query
            .filter
            .as_ref()
            .map(OverwriteFilter::as_offer_filter)
            .unwrap_or_default();
        let mut stats = Stats {
            revision: state.revision,
            ..Default::default()
        };
        for o in state.candidates(&filter) {
            if query.admits(o, now) {
                stats.add(o);
            }
        }
        Ok(stats)
    }

    async fn health_check(&self) -> StoreResult<()> {
        self.check_open()
    }

    async fn close(&self) -> StoreResult<()> {
        self.closed.store(true, AtomicOrdering::Release);
        Ok(())
    }

    async fn revision(&self) -> StoreResult<Revision> {
        self.check_open()?;
        Ok(self.state.read().revision)
    }

    fn subscribe_commits(&self) -> Option<watch::Receiver<Revision>> {
        Some(self.commits.subscribe())
    }

    async fn changes_since(&self, after: Revision, limit: usize) -> StoreResult<ChangeBatch> {
        self.check_open()?;
        let state = self.state.read();
        if after < state.pruned_through {
            return Err(StoreError::OutOfRange {
                requested: after,
                oldest: state.pruned_through + 1,
            });
        }
        let start = state.changes.partition_point(|c| c.revision <= after);
        // Batches end on a revision boundary: a reader resumes from the last
        // revision it saw, so a cut revision would lose its remaining changes.
        let mut end = start;
        while end < state.changes.len() {
            let rev = state.changes[end].revision;
            let rev_end = end
                + state
                    .changes
                    .range(end..)
                    .take_while(|c| c.revision == rev)
                    .count();
            if end > start && rev_end - start > limit {
                break;
            }
            end = rev_end;
        }
        Ok(ChangeBatch {
            changes: state.changes.range(start..end).cloned().collect(),
            head: state.revision,
        })
    }
}

/// True when the offer lies strictly after the page token's position.
fn is_after(o: &MarginOffer, resolved: &ResolvedList, q: &ListQuery) -> bool {
    match &resolved.after {
        None => true,
        Some((key, id)) => {
            compare_keys(&q.sort_by.key(o), &o.id, key, id, q.sort_order) == Ordering::Greater
        }
    }
}

/// The `offset..offset + limit + 1` slice of `rows` in list order, found by
/// partial selection rather than a full sort.
fn select_page(
    mut rows: Vec<&Arc<MarginOffer>>,
    resolved: &ResolvedList,
    q: &ListQuery,
) -> Vec<MarginOffer> {
    let cmp = |a: &&Arc<MarginOffer>, b: &&Arc<MarginOffer>| {
        compare_offers(a, b, q.sort_by, q.sort_order)
    };
    let wanted = resolved
        .offset
        .saturating_add(resolved.limit)
        .saturating_add(1);
    if rows.len() > wanted {
        rows.select_nth_unstable_by(wanted - 1, cmp);
        rows.truncate(wanted);
    }
    rows.sort_unstable_by(cmp);
    rows.into_iter()
        .skip(resolved.offset)
        .map(|o| (**o).clone())
        .collect()
}
