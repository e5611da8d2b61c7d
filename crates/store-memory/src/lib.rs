//! An in-memory `MarginOfferStore`: the reference backend for tests and
//! `--database-url memory://`.
//!
//! All state sits behind one `RwLock`, so every write call is trivially
//! atomic and readers see whole revisions. Offers are kept once, compactly
//! (`stored.rs`), shared by the book, the indexes and the change log.
//!
//! A list page is a range walk of an ordered index from the page token's
//! position when one fits the sort (and the filter's equality conditions);
//! otherwise the smallest equality candidate set is filtered and partially
//! sorted. `total` comes from index sizes when the filter is one equality
//! condition, else from counting the candidate set.

mod index;
mod stored;

use async_trait::async_trait;
use index::{Bucket, ById, EqField, Indexes, Ordered, Walk, walk};
use offer_domain::query::{ResolvedList, SortValue, compare_keys};
use offer_domain::write::{self, BulkPlan, Lookup, OverwritePlan, SinglePlan, WritePlan};
use offer_domain::{
    BulkCreateOptions, BulkDeleteOptions, BulkOutcome, BulkUpdateOptions, BulkUpsertOptions,
    Change, ChangeType, ListPage, ListQuery, MarginOffer, OfferFilter, OfferPatch, OverwriteFilter,
    OverwriteOutcome, OverwriteRequest, Revision, SortField, SortOrder, Stats, StatsQuery,
    StoreError, StoreResult, Timestamp, WriteContext,
};
use offer_store::{ChangeBatch, MarginOfferStore, Written};
use parking_lot::RwLock;
use std::cmp::Ordering;
use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering as AtomicOrdering};
use std::time::Duration;
use stored::{Interner, Stored, sort_key, token_key};
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
    offers: HashSet<ById>,
    indexes: Indexes,
    strings: Interner,
    revision: Revision,
    changes: VecDeque<Logged>,
    /// Every change with a revision at or below this has been pruned.
    pruned_through: Revision,
    retention: usize,
    /// Nanoseconds; a change younger than this is never pruned.
    min_age_nanos: i64,
}

/// A change as the log keeps it: the offer shared with the book, the
/// per-call fields shared by every change of the call.
struct Logged {
    revision: Revision,
    change_type: ChangeType,
    offer: Arc<Stored>,
    call: Arc<Call>,
}

struct Call {
    timestamp: Timestamp,
    origin: String,
    operation_id: String,
}

impl Logged {
    fn to_change(&self) -> Change {
        Change {
            revision: self.revision,
            change_type: self.change_type,
            offer: self.offer.to_offer(),
            timestamp: self.call.timestamp,
            origin: self.call.origin.clone(),
            operation_id: self.call.operation_id.clone(),
        }
    }
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
                offers: HashSet::new(),
                indexes: Indexes::default(),
                strings: Interner::default(),
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
            let mut lookup = |id: &str| Ok(offers.get(id).map(|o| o.0.to_offer()));
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
        let call = Arc::new(Call {
            timestamp: now,
            origin: ctx.origin.clone(),
            operation_id,
        });
        for w in plan.writes {
            let old = self.offers.take(w.offer.id.as_str()).map(|b| b.0);
            let logged = if w.change_type == ChangeType::Deleted {
                self.indexes.update(old.as_ref(), None);
                // The plan's offer is the stored one, as loaded.
                old.unwrap_or_else(|| Arc::new(Stored::new(&w.offer, &mut self.strings)))
            } else {
                let new = Arc::new(Stored::new(&w.offer, &mut self.strings));
                self.indexes.update(old.as_ref(), Some(&new));
                self.offers.insert(ById(new.clone()));
                new
            };
            self.changes.push_back(Logged {
                revision,
                change_type: w.change_type,
                offer: logged,
                call: call.clone(),
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
            let Some((oldest, at)) = self.changes.front().map(|c| (c.revision, c.call.timestamp))
            else {
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
        self.matching(&filter).map(|o| o.to_offer()).collect()
    }

    /// The offers a filter selects (no expiry rule), via its narrowest bucket.
    fn matching<'a>(&'a self, filter: &'a OfferFilter) -> impl Iterator<Item = &'a Arc<Stored>> {
        let buckets = self.buckets(filter);
        let narrowest = buckets.as_ref().map(|b| narrowest(b));
        let candidates: Box<dyn Iterator<Item = &Arc<Stored>>> = match narrowest {
            Some(n) => self.candidates(n),
            None => Box::new(std::iter::empty()),
        };
        candidates.filter(|o| o.matches(filter))
    }

    /// The buckets of the filter's equality conditions; `None` when one of
    /// them has no offer at all, so nothing matches.
    fn buckets(&self, f: &OfferFilter) -> Option<Vec<&Bucket>> {
        equality_conditions(f)
            .into_iter()
            .map(|(field, value)| self.indexes.bucket(field, value))
            .collect()
    }

    /// Every offer of `bucket`, or of the book.
    fn candidates<'a>(
        &'a self,
        bucket: Option<&'a Bucket>,
    ) -> Box<dyn Iterator<Item = &'a Arc<Stored>> + 'a> {
        match bucket {
            Some(b) => b.iter(),
            None => Box::new(self.offers.iter().map(|b| &b.0)),
        }
    }

    /// The page rows (`offset` included, up to `offset + limit + 1`) and the total.
    fn select(&self, q: &ListQuery, r: &ResolvedList, now: Timestamp) -> (Vec<Arc<Stored>>, usize) {
        let Some(buckets) = self.buckets(&q.filter) else {
            return (Vec::new(), 0);
        };
        let admit = |o: &Stored| o.admitted_by(q, now);
        let narrowest = narrowest(&buckets);
        let candidates = narrowest.map_or(self.offers.len(), Bucket::len);
        let want = r.offset.saturating_add(r.limit).saturating_add(1);
        let walked = self.walk_page(q, r, &buckets, candidates, want, &admit);
        let (rows, counted) = match walked {
            Some(rows) => (rows, None),
            None => {
                let (rows, total) = self.sort_page(q, r, narrowest, want, &admit);
                (rows, Some(total))
            }
        };
        let total = counted
            .or_else(|| self.total_from_indexes(q, buckets.len(), narrowest, now))
            .unwrap_or_else(|| self.candidates(narrowest).filter(|o| admit(o)).count());
        (rows, total)
    }

    /// The page by a walk of the smallest ordered index that fits the sort,
    /// or `None` when the candidate set is the cheaper way (by estimate, or
    /// because the walk read more than twice the candidates).
    fn walk_page(
        &self,
        q: &ListQuery,
        r: &ResolvedList,
        buckets: &[&Bucket],
        candidates: usize,
        want: usize,
        admit: &dyn Fn(&Stored) -> bool,
    ) -> Option<Vec<Arc<Stored>>> {
        let by = q.sort_by;
        let after = match &r.after {
            None => None,
            Some((key, id)) => Some((token_key(by, key)?, id.as_str())),
        };
        let mut best: Option<(&Ordered, usize)> = self
            .indexes
            .global_by(by)
            .map(|index| (index, self.offers.len()));
        for b in buckets {
            if let Some(index) = b.ordered_by(by)
                && best.is_none_or(|(_, size)| b.len() < size)
            {
                best = Some((index, b.len()));
            }
        }
        let (index, size) = best?;
        // Reads to fill the page if the matches spread evenly over the index.
        let expected = want.saturating_mul(size) / candidates.max(1);
        if expected > candidates {
            return None;
        }
        let budget = candidates.saturating_mul(2).max(1024);
        match walk(index, q.sort_order, after, want, budget, admit) {
            Walk::Page(rows) => Some(rows),
            Walk::OverBudget => None,
        }
    }

    /// The page by filtering the candidates and a partial sort; also
    /// returns the number of admitted candidates, which is the total.
    fn sort_page(
        &self,
        q: &ListQuery,
        r: &ResolvedList,
        bucket: Option<&Bucket>,
        want: usize,
        admit: &dyn Fn(&Stored) -> bool,
    ) -> (Vec<Arc<Stored>>, usize) {
        let (by, order) = (q.sort_by, q.sort_order);
        let after = r
            .after
            .as_ref()
            .map(|(key, id)| (key, id.as_str(), token_key(by, key)));
        let mut total = 0;
        let mut rows: Vec<&Arc<Stored>> = Vec::new();
        for o in self.candidates(bucket) {
            if !admit(o) {
                continue;
            }
            total += 1;
            if after.is_none_or(|(key, id, bits)| is_after(o, by, order, key, id, bits)) {
                rows.push(o);
            }
        }
        let cmp = |a: &&Arc<Stored>, b: &&Arc<Stored>| stored::compare(a, b, by, order);
        if rows.len() > want {
            rows.select_nth_unstable_by(want - 1, cmp);
            rows.truncate(want);
        }
        rows.sort_unstable_by(cmp);
        (rows.into_iter().cloned().collect(), total)
    }

    /// `total` as an index size minus the offers expiry and `active_only`
    /// leave out, when the filter is at most one equality condition; `None`
    /// when it is more, or when the inactive offers outnumber the candidates.
    fn total_from_indexes(
        &self,
        q: &ListQuery,
        conditions: usize,
        bucket: Option<&Bucket>,
        now: Timestamp,
    ) -> Option<usize> {
        let f = &q.filter;
        if conditions > 1 || *f != equality_only(f) {
            return None;
        }
        let base = bucket.map_or(self.offers.len(), Bucket::len);
        let mut excluded = if q.include_expired {
            0
        } else {
            self.indexes.expired_count(bucket, now)
        };
        let mut read = 0usize;
        let mut count = |o: &Stored, also_expired: bool| {
            read += 1;
            if o.matches(f) && !also_expired {
                excluded += 1;
            }
            read <= base
        };
        if q.active_only {
            for b in &self.indexes.inactive {
                // Counted above already when expired.
                let expired = !q.include_expired && b.0.is_expired(now);
                if !count(&b.0, expired) {
                    return None;
                }
            }
        }
        Some(base - excluded)
    }
}

/// The smallest bucket (`None`: no equality condition, the whole book).
fn narrowest<'a>(buckets: &[&'a Bucket]) -> Option<&'a Bucket> {
    buckets.iter().min_by_key(|b| b.len()).copied()
}

fn equality_conditions(f: &OfferFilter) -> Vec<(EqField, &str)> {
    [
        (EqField::OfferType, f.offer_type.map(|t| t.as_str())),
        (EqField::CollateralToken, f.collateral_token.as_deref()),
        (EqField::BorrowToken, f.borrow_token.as_deref()),
        (EqField::LiquiditySource, f.liquidity_source.as_deref()),
        (EqField::LenderAddress, f.lender_address.as_deref()),
        (EqField::Source, f.source.as_deref()),
    ]
    .into_iter()
    .filter_map(|(field, value)| value.map(|v| (field, v)))
    .collect()
}

/// The filter's equality conditions alone.
fn equality_only(f: &OfferFilter) -> OfferFilter {
    OfferFilter {
        offer_type: f.offer_type,
        collateral_token: f.collateral_token.clone(),
        borrow_token: f.borrow_token.clone(),
        liquidity_source: f.liquidity_source.clone(),
        lender_address: f.lender_address.clone(),
        source: f.source.clone(),
        ..Default::default()
    }
}

/// True when the offer lies strictly after the page token's position.
fn is_after(
    o: &Stored,
    by: SortField,
    order: SortOrder,
    key: &SortValue,
    id: &str,
    key_bits: Option<u64>,
) -> bool {
    match (key_bits, sort_key(o, by)) {
        (Some(token), Some(own)) => {
            let by_key = match order {
                SortOrder::Asc => own.cmp(&token),
                SortOrder::Desc => token.cmp(&own),
            };
            by_key.then_with(|| o.id.as_bytes().cmp(id.as_bytes())) == Ordering::Greater
        }
        _ => compare_keys(&o.sort_value(by), &o.id, key, id, order) == Ordering::Greater,
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
            .map(|o| o.0.to_offer())
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
        let (rows, total) = state.select(query, &resolved, now);
        let rows = rows
            .iter()
            .skip(resolved.offset)
            .map(|o| o.to_offer())
            .collect();
        Ok(ListPage::assemble(
            query,
            &resolved,
            rows,
            i64::try_from(total).unwrap_or(i64::MAX),
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
        for o in state.matching(&filter) {
            if query.include_expired || !o.is_expired(now) {
                o.add_to(&mut stats);
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
            changes: state
                .changes
                .range(start..end)
                .map(Logged::to_change)
                .collect(),
            head: state.revision,
        })
    }
}
