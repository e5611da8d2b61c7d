//! Pure planning of every write.
//!
//! A backend looks up what the plan needs, calls a planner here, and applies
//! the resulting [`WritePlan`] in one transaction under one new revision.
//! Keeping the rules here means every backend decides alike: validation,
//! per-item errors, timestamps, unchanged detection and overwrite diffs.

use crate::change::{ChangeType, Revision};
use crate::error::{BulkError, FieldError, StoreError, StoreResult};
use crate::offer::{MarginOffer, OfferPatch};
use crate::query::OverwriteFilter;
use crate::time::Timestamp;
use crate::validate::{validate_id, validate_offer, validate_offer_in_place};
use std::collections::{HashMap, HashSet};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BulkCreateOptions {
    /// Skip ids that already exist instead of failing the request.
    pub ignore_conflicts: bool,
    /// Report every failing item, not only the first.
    pub validate_all: bool,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BulkUpdateOptions {
    /// Create ids that do not exist.
    pub upsert: bool,
    /// Absent patch fields keep their stored values.
    pub partial_update: bool,
    pub validate_all: bool,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BulkDeleteOptions {
    pub ignore_not_found: bool,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BulkUpsertOptions {
    pub validate_all: bool,
}

/// Replace the offers in `filter`'s scope (the whole store without one) by `offers`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct OverwriteRequest {
    pub offers: Vec<MarginOffer>,
    pub filter: Option<OverwriteFilter>,
    pub validate_all: bool,
    /// Compute the exact outcome without committing.
    pub dry_run: bool,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct BulkOutcome {
    pub success_count: usize,
    pub failure_count: usize,
    pub errors: Vec<BulkError>,
    /// Committed items in request order.
    pub processed_ids: Vec<String>,
    /// The revision of the commit, or the current one when nothing changed.
    pub revision: Revision,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct OverwriteOutcome {
    pub created_ids: Vec<String>,
    pub updated_ids: Vec<String>,
    pub deleted_ids: Vec<String>,
    pub unchanged_count: usize,
    pub errors: Vec<BulkError>,
    pub revision: Revision,
}

/// One row-level effect of a write.
#[derive(Clone, Debug, PartialEq)]
pub struct PlannedWrite {
    pub change_type: ChangeType,
    /// The state to store; for `Deleted`, the last stored state.
    pub offer: MarginOffer,
}

/// The effects of one write call, applied atomically under one revision.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct WritePlan {
    pub writes: Vec<PlannedWrite>,
}

impl WritePlan {
    pub fn is_empty(&self) -> bool {
        self.writes.is_empty()
    }

    fn push(&mut self, change_type: ChangeType, offer: MarginOffer) {
        self.writes.push(PlannedWrite { change_type, offer });
    }
}

/// The stored form of `incoming`: `created_timestamp` kept from `stored`, or
/// the client's value for a new id when not in the future, else `now`.
/// Returns `None` when the content equals what is stored (unchanged).
pub fn stamp(
    incoming: MarginOffer,
    stored: Option<&MarginOffer>,
    now: Timestamp,
) -> Option<MarginOffer> {
    stamp_over(incoming, stored, now)
}

/// [`stamp`] over any form of the stored state.
fn stamp_over<S: StoredOffer + ?Sized>(
    incoming: MarginOffer,
    stored: Option<&S>,
    now: Timestamp,
) -> Option<MarginOffer> {
    let mut o = incoming;
    match stored {
        Some(s) if s.same_content(&o) => None,
        Some(s) => {
            o.created_timestamp = s.created_timestamp();
            o.updated_timestamp = Some(now);
            Some(o)
        }
        None => {
            o.created_timestamp = Some(match o.created_timestamp {
                Some(c) if c <= now => c,
                _ => now,
            });
            o.updated_timestamp = Some(now);
            Some(o)
        }
    }
}

/// Looks an id up in the store as of the current transaction.
pub type Lookup<'a> = dyn FnMut(&str) -> StoreResult<Option<MarginOffer>> + 'a;

/// The outcome of a single-offer write.
#[derive(Clone, Debug, PartialEq)]
pub struct SinglePlan {
    /// The offer as stored after the write.
    pub offer: MarginOffer,
    pub was_created: bool,
    pub plan: WritePlan,
}

pub fn plan_create(
    offer: MarginOffer,
    lookup: &mut Lookup,
    now: Timestamp,
) -> StoreResult<SinglePlan> {
    let offer = validate_offer(offer)?;
    if lookup(&offer.id)?.is_some() {
        return Err(StoreError::AlreadyExists { id: offer.id });
    }
    let stored = stamp(offer, None, now).ok_or_else(|| StoreError::Internal("stamp".into()))?;
    let mut plan = WritePlan::default();
    plan.push(ChangeType::Created, stored.clone());
    Ok(SinglePlan {
        offer: stored,
        was_created: true,
        plan,
    })
}

pub fn plan_update(
    offer: MarginOffer,
    lookup: &mut Lookup,
    now: Timestamp,
) -> StoreResult<SinglePlan> {
    let offer = validate_offer(offer)?;
    let Some(existing) = lookup(&offer.id)? else {
        return Err(StoreError::NotFound { id: offer.id });
    };
    Ok(single_change(offer, existing, now))
}

pub fn plan_create_or_update(
    offer: MarginOffer,
    lookup: &mut Lookup,
    now: Timestamp,
) -> StoreResult<SinglePlan> {
    let offer = validate_offer(offer)?;
    match lookup(&offer.id)? {
        Some(existing) => Ok(single_change(offer, existing, now)),
        None => plan_create(offer, &mut |_| Ok(None), now),
    }
}

fn single_change(offer: MarginOffer, existing: MarginOffer, now: Timestamp) -> SinglePlan {
    let mut plan = WritePlan::default();
    let stored = match stamp(offer, Some(&existing), now) {
        Some(changed) => {
            plan.push(ChangeType::Updated, changed.clone());
            changed
        }
        None => existing,
    };
    SinglePlan {
        offer: stored,
        was_created: false,
        plan,
    }
}

pub fn plan_delete(id: &str, lookup: &mut Lookup) -> StoreResult<WritePlan> {
    validate_id(id)?;
    let Some(existing) = lookup(id)? else {
        return Err(StoreError::NotFound { id: id.to_owned() });
    };
    let mut plan = WritePlan::default();
    plan.push(ChangeType::Deleted, existing);
    Ok(plan)
}

/// A planned bulk call: `outcome` is final except for its revision, which
/// the backend fills in after committing `plan`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct BulkPlan {
    pub outcome: BulkOutcome,
    pub plan: WritePlan,
}

/// Collects per-item errors, stopping at the first unless `validate_all`.
struct ItemErrors {
    errors: Vec<BulkError>,
    validate_all: bool,
}

impl ItemErrors {
    fn new(validate_all: bool) -> Self {
        ItemErrors {
            errors: Vec::new(),
            validate_all,
        }
    }

    /// Records an error; true when planning should stop.
    fn push(&mut self, e: BulkError) -> bool {
        self.errors.push(e);
        !self.validate_all
    }

    fn any(&self) -> bool {
        !self.errors.is_empty()
    }

    fn into_failure(self, items: usize) -> BulkPlan {
        BulkPlan {
            outcome: BulkOutcome {
                success_count: 0,
                failure_count: items,
                errors: self.errors,
                processed_ids: Vec::new(),
                revision: 0,
            },
            plan: WritePlan::default(),
        }
    }
}

fn success(processed_ids: Vec<String>, plan: WritePlan) -> BulkPlan {
    BulkPlan {
        outcome: BulkOutcome {
            success_count: processed_ids.len(),
            failure_count: 0,
            errors: Vec::new(),
            processed_ids,
            revision: 0,
        },
        plan,
    }
}

/// Validates every offer of a request up front, in place, and checks each
/// valid one is the first valid offer of its id: per offer its error, if
/// any. Validation stops at the first error unless `validate_all` (the
/// verdicts then end there, and so must the planner's loop). Checking
/// duplicates on the borrowed ids spares copying every id into a set.
fn admit_all(offers: &mut [MarginOffer], validate_all: bool) -> Vec<Option<BulkError>> {
    let mut verdicts = Vec::with_capacity(offers.len());
    for (index, offer) in offers.iter_mut().enumerate() {
        let verdict = validate_offer_in_place(offer)
            .err()
            .map(|e| BulkError::invalid(index, &offer.id, &e));
        let stop = verdict.is_some() && !validate_all;
        verdicts.push(verdict);
        if stop {
            break;
        }
    }
    // Valid ids in strictly increasing order (a backfill's usual request)
    // cannot repeat: no set to build.
    let mut valid_ids = offers
        .iter()
        .zip(&verdicts)
        .filter(|(_, verdict)| verdict.is_none())
        .map(|(o, _)| o.id.as_str());
    let mut previous = valid_ids.next();
    if valid_ids.all(|id| previous.replace(id) < Some(id)) {
        return verdicts;
    }
    let mut seen = HashSet::with_capacity(verdicts.len());
    for ((index, offer), verdict) in offers.iter().enumerate().zip(verdicts.iter_mut()) {
        if verdict.is_none() && !seen.insert(offer.id.as_str()) {
            *verdict = Some(BulkError::duplicate(index, &offer.id));
        }
    }
    verdicts
}

pub fn plan_bulk_create(
    offers: Vec<MarginOffer>,
    opts: BulkCreateOptions,
    lookup: &mut Lookup,
    now: Timestamp,
) -> StoreResult<BulkPlan> {
    let items = offers.len();
    let mut errors = ItemErrors::new(opts.validate_all);
    let mut offers = offers;
    let mut verdicts = admit_all(&mut offers, opts.validate_all);
    let mut plan = WritePlan::default();
    let mut processed = Vec::with_capacity(items);
    for (index, offer) in offers.into_iter().enumerate() {
        // No verdict: validation stopped at an earlier error, which stops here too.
        let Some(verdict) = verdicts.get_mut(index) else {
            break;
        };
        if let Some(e) = verdict.take() {
            if errors.push(e) {
                break;
            }
            continue;
        }
        if lookup(&offer.id)?.is_some() {
            if opts.ignore_conflicts {
                continue;
            }
            if errors.push(BulkError::already_exists(index, &offer.id)) {
                break;
            }
            continue;
        }
        processed.push(offer.id.clone());
        if let Some(stored) = stamp(offer, None, now) {
            plan.push(ChangeType::Created, stored);
        }
    }
    if errors.any() {
        return Ok(errors.into_failure(items));
    }
    Ok(success(processed, plan))
}

pub fn plan_bulk_update(
    patches: Vec<OfferPatch>,
    opts: BulkUpdateOptions,
    lookup: &mut Lookup,
    now: Timestamp,
) -> StoreResult<BulkPlan> {
    let items = patches.len();
    let mut errors = ItemErrors::new(opts.validate_all);
    let mut seen = HashSet::with_capacity(items);
    let mut plan = WritePlan::default();
    let mut processed = Vec::with_capacity(items);
    for (index, patch) in patches.into_iter().enumerate() {
        let id = patch.id.clone();
        if let Err(e) = validate_id(&id) {
            if errors.push(BulkError::invalid(index, &id, &e)) {
                break;
            }
            continue;
        }
        if !seen.insert(id.clone()) {
            if errors.push(BulkError::duplicate(index, &id)) {
                break;
            }
            continue;
        }
        let existing = lookup(&id)?;
        let candidate: Result<MarginOffer, FieldError> = match (&existing, opts.partial_update) {
            (None, _) if !opts.upsert => {
                if errors.push(BulkError::not_found(index, &id)) {
                    break;
                }
                continue;
            }
            (Some(stored), true) => Ok(patch.apply_to(stored)),
            _ => patch.into_offer(),
        };
        let offer = match candidate.and_then(validate_offer) {
            Ok(o) => o,
            Err(e) => {
                if errors.push(BulkError::invalid(index, &id, &e)) {
                    break;
                }
                continue;
            }
        };
        processed.push(id);
        let change_type = if existing.is_some() {
            ChangeType::Updated
        } else {
            ChangeType::Created
        };
        if let Some(stored) = stamp(offer, existing.as_ref(), now) {
            plan.push(change_type, stored);
        }
    }
    if errors.any() {
        return Ok(errors.into_failure(items));
    }
    Ok(success(processed, plan))
}

pub fn plan_bulk_create_or_update(
    offers: Vec<MarginOffer>,
    opts: BulkUpsertOptions,
    lookup: &mut Lookup,
    now: Timestamp,
) -> StoreResult<BulkPlan> {
    let items = offers.len();
    let mut errors = ItemErrors::new(opts.validate_all);
    let mut offers = offers;
    let mut verdicts = admit_all(&mut offers, opts.validate_all);
    let mut plan = WritePlan::default();
    let mut processed = Vec::with_capacity(items);
    for (index, offer) in offers.into_iter().enumerate() {
        // No verdict: validation stopped at an earlier error, which stops here too.
        let Some(verdict) = verdicts.get_mut(index) else {
            break;
        };
        if let Some(e) = verdict.take() {
            if errors.push(e) {
                break;
            }
            continue;
        }
        let existing = lookup(&offer.id)?;
        processed.push(offer.id.clone());
        let change_type = if existing.is_some() {
            ChangeType::Updated
        } else {
            ChangeType::Created
        };
        if let Some(stored) = stamp(offer, existing.as_ref(), now) {
            plan.push(change_type, stored);
        }
    }
    if errors.any() {
        return Ok(errors.into_failure(items));
    }
    Ok(success(processed, plan))
}

pub fn plan_bulk_delete(
    ids: Vec<String>,
    opts: BulkDeleteOptions,
    lookup: &mut Lookup,
) -> StoreResult<BulkPlan> {
    let items = ids.len();
    // Deletes have no validate_all flag on the wire: report every failing id.
    let mut errors = ItemErrors::new(true);
    let mut seen = HashSet::with_capacity(items);
    let mut plan = WritePlan::default();
    let mut processed = Vec::with_capacity(items);
    for (index, id) in ids.into_iter().enumerate() {
        if let Err(e) = validate_id(&id) {
            errors.push(BulkError::invalid(index, &id, &e));
            continue;
        }
        if !seen.insert(id.clone()) {
            errors.push(BulkError::duplicate(index, &id));
            continue;
        }
        match lookup(&id)? {
            Some(existing) => {
                processed.push(id);
                plan.push(ChangeType::Deleted, existing);
            }
            None if opts.ignore_not_found => {}
            None => {
                errors.push(BulkError::not_found(index, &id));
            }
        }
    }
    if errors.any() {
        return Ok(errors.into_failure(items));
    }
    Ok(success(processed, plan))
}

/// A planned overwrite: `outcome` is final except for its revision.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct OverwritePlan {
    pub outcome: OverwriteOutcome,
    pub plan: WritePlan,
}

/// Refuses the one overwrite that would silently wipe the store.
pub fn check_overwrite_request(
    offers_empty: bool,
    filter: Option<&OverwriteFilter>,
) -> StoreResult<()> {
    if offers_empty && filter.is_none_or(OverwriteFilter::is_empty) {
        return Err(StoreError::invalid(
            "offers",
            "an overwrite with no offers and no filter would delete every offer; refused",
        ));
    }
    Ok(())
}

/// A stored offer as the overwrite planner compares it: a backend may keep
/// its scope in a compact form instead of as owned offers.
pub trait StoredOffer {
    /// [`MarginOffer::same_content`] of the stored state and `incoming`.
    fn same_content(&self, incoming: &MarginOffer) -> bool;
    fn created_timestamp(&self) -> Option<Timestamp>;
}

impl StoredOffer for MarginOffer {
    fn same_content(&self, incoming: &MarginOffer) -> bool {
        MarginOffer::same_content(self, incoming)
    }

    fn created_timestamp(&self) -> Option<Timestamp> {
        self.created_timestamp
    }
}

/// The stored offers in an overwrite's scope (every offer matching the
/// filter; the whole store without one).
pub trait OverwriteScope {
    type Stored: StoredOffer;
    /// Removes the stored state of `id` from the scope; `None` when `id` is
    /// not in scope or was taken already.
    fn take(&mut self, id: &str) -> Option<Self::Stored>;
    /// The states never taken, in any order: the offers the overwrite deletes.
    fn into_untaken(self) -> Vec<MarginOffer>;
}

/// The scope as owned offers, found by id through a map of positions.
struct OwnedScope {
    position: HashMap<String, usize>,
    offers: Vec<Option<MarginOffer>>,
}

impl OwnedScope {
    fn new(in_scope: Vec<MarginOffer>) -> Self {
        // The offers stay where they are and the map holds their positions:
        // a small map, and each offer moves once (when taken), not into and
        // out of the map.
        let position = in_scope
            .iter()
            .enumerate()
            .map(|(i, o)| (o.id.clone(), i))
            .collect();
        OwnedScope {
            position,
            offers: in_scope.into_iter().map(Some).collect(),
        }
    }
}

impl OverwriteScope for OwnedScope {
    type Stored = MarginOffer;

    fn take(&mut self, id: &str) -> Option<MarginOffer> {
        let &i = self.position.get(id)?;
        self.offers.get_mut(i).and_then(Option::take)
    }

    fn into_untaken(self) -> Vec<MarginOffer> {
        self.offers.into_iter().flatten().collect()
    }
}

/// Plans an overwrite. `in_scope` holds every stored offer matching the
/// filter (the whole store without one); `lookup` answers for ids outside it.
pub fn plan_overwrite(
    req: OverwriteRequest,
    in_scope: Vec<MarginOffer>,
    lookup: &mut Lookup,
    now: Timestamp,
) -> StoreResult<OverwritePlan> {
    plan_overwrite_keeping_replaced(req, in_scope, lookup, now).map(|(plan, _)| plan)
}

/// [`plan_overwrite`], also returning, per planned write, the stored state
/// it replaces (`None`: a new id, or a deletion, whose `offer` already is
/// the stored state). A backend can then write only what changed without
/// keeping a copy of the scope: the states are moved, not cloned.
pub fn plan_overwrite_keeping_replaced(
    req: OverwriteRequest,
    in_scope: Vec<MarginOffer>,
    lookup: &mut Lookup,
    now: Timestamp,
) -> StoreResult<(OverwritePlan, Vec<Option<MarginOffer>>)> {
    plan_overwrite_in(req, OwnedScope::new(in_scope), lookup, now)
}

/// [`plan_overwrite_keeping_replaced`] over a scope in any form; the
/// replaced states are the scope's own.
pub fn plan_overwrite_in<S: OverwriteScope>(
    req: OverwriteRequest,
    mut scope: S,
    lookup: &mut Lookup,
    now: Timestamp,
) -> StoreResult<(OverwritePlan, Vec<Option<S::Stored>>)> {
    check_overwrite_request(req.offers.is_empty(), req.filter.as_ref())?;
    let filter = req.filter.filter(|f| !f.is_empty());
    // Converted once: `OverwriteFilter::matches` would convert per offer.
    let offer_filter = filter.as_ref().map(OverwriteFilter::as_offer_filter);
    let mut errors = ItemErrors::new(req.validate_all);
    let mut offers = req.offers;
    let mut verdicts = admit_all(&mut offers, req.validate_all);
    // Sized up front: growing vectors of 100 000 offers copies them again and again.
    let mut plan = WritePlan {
        writes: Vec::with_capacity(offers.len()),
    };
    let mut replaced = Vec::with_capacity(offers.len());
    let mut outcome = OverwriteOutcome::default();
    for (index, offer) in offers.into_iter().enumerate() {
        // No verdict: validation stopped at an earlier error, which stops here too.
        let Some(verdict) = verdicts.get_mut(index) else {
            break;
        };
        if let Some(e) = verdict.take() {
            if errors.push(e) {
                break;
            }
            continue;
        }
        let existing = scope.take(&offer.id);
        match stamp_over(offer, existing.as_ref(), now) {
            None => outcome.unchanged_count += 1,
            Some(stored) => {
                // Copied only here: an unchanged offer needs no copy of its id.
                let id = stored.id.clone();
                // The filter check comes first: an offer outside the filter
                // is INVALID_ARGUMENT whether or not its id exists elsewhere.
                if let Some(f) = &offer_filter
                    && !f.matches(&stored)
                {
                    let e = BulkError::invalid(
                        index,
                        &id,
                        &FieldError::new("filter", "offer does not match the overwrite filter"),
                    );
                    if errors.push(e) {
                        break;
                    }
                    continue;
                }
                if existing.is_none() && filter.is_some() && lookup(&id)?.is_some() {
                    let e = BulkError {
                        index,
                        id: id.clone(),
                        message: format!(
                            "id: {id:?} exists outside the overwrite scope; an overwrite never touches offers outside its scope"
                        ),
                        code: crate::error::ErrorCode::AlreadyExists,
                    };
                    if errors.push(e) {
                        break;
                    }
                    continue;
                }
                if existing.is_some() {
                    outcome.updated_ids.push(id);
                } else {
                    outcome.created_ids.push(id);
                }
                plan.push(ChangeType::Overwritten, stored);
                replaced.push(existing);
            }
        }
    }
    if errors.any() {
        let failed = OverwritePlan {
            outcome: OverwriteOutcome {
                errors: errors.errors,
                ..Default::default()
            },
            plan: WritePlan::default(),
        };
        return Ok((failed, Vec::new()));
    }
    let mut removed = scope.into_untaken();
    removed.sort_by(|a, b| a.id.cmp(&b.id));
    for gone in removed {
        outcome.deleted_ids.push(gone.id.clone());
        plan.push(ChangeType::Deleted, gone);
        replaced.push(None);
    }
    Ok((OverwritePlan { outcome, plan }, replaced))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorCode;

    fn none(_: &str) -> StoreResult<Option<MarginOffer>> {
        Ok(None)
    }

    #[test]
    fn future_creation_time_is_replaced_and_past_is_kept() {
        let now = Timestamp(1_000);
        let mut o = MarginOffer::example("a");
        o.created_timestamp = Some(Timestamp(2_000));
        assert_eq!(
            stamp(o.clone(), None, now).and_then(|s| s.created_timestamp),
            Some(now)
        );
        o.created_timestamp = Some(Timestamp(10));
        assert_eq!(
            stamp(o, None, now).and_then(|s| s.created_timestamp),
            Some(Timestamp(10))
        );
    }

    #[test]
    fn bulk_create_stops_at_first_error_without_validate_all() {
        let mut bad = MarginOffer::example("b");
        bad.interest_rate = -1.0;
        let offers = vec![MarginOffer::example("a"), bad.clone(), bad.clone()];
        let p = plan_bulk_create(
            offers.clone(),
            BulkCreateOptions::default(),
            &mut none,
            Timestamp(1),
        )
        .expect("plan");
        assert_eq!(p.outcome.errors.len(), 1);
        assert_eq!(p.outcome.failure_count, 3);
        assert!(p.plan.is_empty());
        let all = BulkCreateOptions {
            validate_all: true,
            ..Default::default()
        };
        let p = plan_bulk_create(offers, all, &mut none, Timestamp(1)).expect("plan");
        assert_eq!(p.outcome.errors.len(), 2);
        assert_eq!(p.outcome.errors[1].code, ErrorCode::InvalidArgument);
        assert!(p.outcome.errors[1].message.starts_with("interest_rate"));
    }

    #[test]
    fn empty_overwrite_without_filter_is_refused() {
        let req = OverwriteRequest::default();
        assert!(matches!(
            plan_overwrite(req, vec![], &mut none, Timestamp(1)),
            Err(StoreError::InvalidArgument(e)) if e.field == "offers"
        ));
    }

    /// An invalid offer does not claim its id: a later valid offer of that
    /// id is admitted, and only a second valid one is a duplicate.
    #[test]
    fn overwrite_admits_in_request_order() {
        let mut bad = MarginOffer::example("b");
        bad.interest_rate = -1.0;
        let a = MarginOffer::example("a");
        let b = MarginOffer::example("b");
        let offers = vec![a.clone(), bad, a, b.clone(), b];
        let codes = |validate_all| {
            let req = OverwriteRequest {
                offers: offers.clone(),
                validate_all,
                ..Default::default()
            };
            let (planned, replaced) =
                plan_overwrite_keeping_replaced(req, vec![], &mut none, Timestamp(1))
                    .expect("plan");
            assert!(planned.plan.is_empty() && replaced.is_empty());
            planned
                .outcome
                .errors
                .iter()
                .map(|e| (e.index, e.message.split(':').next().map(str::to_owned)))
                .collect::<Vec<_>>()
        };
        let field = |s: &str| Some(s.to_owned());
        assert_eq!(codes(false), [(1, field("interest_rate"))]);
        // Sorted ids skip the duplicate search; an equal neighbour is still one.
        let sorted = |ids: &[&str]| {
            let offers = ids.iter().map(|&id| MarginOffer::example(id)).collect();
            let req = OverwriteRequest {
                offers,
                validate_all: true,
                ..Default::default()
            };
            plan_overwrite(req, vec![], &mut none, Timestamp(1))
                .expect("plan")
                .outcome
                .errors
                .iter()
                .map(|e| e.index)
                .collect::<Vec<_>>()
        };
        assert_eq!(sorted(&["a", "b", "c"]), Vec::<usize>::new());
        assert_eq!(sorted(&["a", "b", "b", "c"]), [2]);
        assert_eq!(sorted(&["b", "a", "b"]), [2]);
        assert_eq!(
            codes(true),
            [
                (1, field("interest_rate")),
                (2, field("id")),
                (4, field("id"))
            ]
        );
    }

    #[test]
    fn overwrite_reports_the_state_each_write_replaces() {
        let stored = |id: &str, amount: f64| {
            let mut o = MarginOffer::example(id);
            o.available_borrow_amount = amount;
            o.created_timestamp = Some(Timestamp(5));
            o.updated_timestamp = Some(Timestamp(5));
            o
        };
        let scope = vec![
            stored("kept", 1.0),
            stored("changed", 1.0),
            stored("gone", 1.0),
        ];
        let mut changed = MarginOffer::example("changed");
        changed.available_borrow_amount = 2.0;
        let mut kept = MarginOffer::example("kept");
        kept.available_borrow_amount = 1.0;
        let req = OverwriteRequest {
            offers: vec![MarginOffer::example("new"), changed, kept],
            ..Default::default()
        };
        let (planned, replaced) =
            plan_overwrite_keeping_replaced(req, scope, &mut none, Timestamp(9)).expect("plan");
        let ids: Vec<_> = planned
            .plan
            .writes
            .iter()
            .map(|w| w.offer.id.as_str())
            .collect();
        assert_eq!(ids, ["new", "changed", "gone"]);
        assert_eq!(planned.outcome.unchanged_count, 1);
        assert_eq!(
            replaced,
            [None, Some(stored("changed", 1.0)), None],
            "created and deleted replace nothing; the update replaces the stored state"
        );
    }
}
