//! Secondary indexes of the in-memory store.
//!
//! - Ordered indexes: `(sort key, id)` → offer, in B-trees, for keyset
//!   paging. One per sort field in [`GLOBAL_ORDERED`] over the whole book,
//!   and per value of an equality field for the pairs in [`BUCKET_ORDERED`]
//!   (e.g. borrow token + interest rate), so the common "filter + sort" page
//!   is a range walk from the token's position.
//! - Buckets: equality field value → its offers (an ordered index doubles
//!   as the member list), for candidate sets and exact counts.
//! - Offers that can expire (by expiry time) and inactive offers, so a
//!   `total` is an index size minus the few offers the listing excludes.

use crate::stored::{Stored, sort_key, time_bits};
use offer_domain::{OfferType, SortField, SortOrder, Timestamp};
use parking_lot::Mutex;
use std::borrow::Borrow;
use std::cmp::Ordering;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::ops::Bound;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering as AtomicOrdering};

/// Sort fields with an ordered index over the whole book.
pub(crate) const GLOBAL_ORDERED: &[SortField] = &[SortField::CreatedTimestamp];

/// (equality field, sort field) pairs with an ordered index per field value.
pub(crate) const BUCKET_ORDERED: &[(EqField, SortField)] = &[
    (EqField::BorrowToken, SortField::InterestRate),
    (EqField::CollateralToken, SortField::CreatedTimestamp),
    (EqField::OfferType, SortField::AvailableBorrowAmount),
];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum EqField {
    OfferType,
    CollateralToken,
    BorrowToken,
    LiquiditySource,
    LenderAddress,
    Source,
}

impl EqField {
    const ALL: [EqField; 6] = [
        EqField::OfferType,
        EqField::CollateralToken,
        EqField::BorrowToken,
        EqField::LiquiditySource,
        EqField::LenderAddress,
        EqField::Source,
    ];

    fn sorts(self) -> impl Iterator<Item = SortField> {
        BUCKET_ORDERED
            .iter()
            .filter(move |(f, _)| *f == self)
            .map(|(_, s)| *s)
    }
}

/// An offer in a hash set, keyed (and looked up) by its id.
pub(crate) struct ById(pub Arc<Stored>);

impl PartialEq for ById {
    fn eq(&self, other: &Self) -> bool {
        self.0.id == other.0.id
    }
}
impl Eq for ById {}
impl Hash for ById {
    fn hash<H: Hasher>(&self, state: &mut H) {
        // Same as `str`'s hash, as `Borrow<str>` requires.
        (*self.0.id).hash(state);
    }
}
impl Borrow<str> for ById {
    fn borrow(&self) -> &str {
        &self.0.id
    }
}

/// A position in an ordered index: `(key, id)`, ids ascending within a key.
pub(crate) trait Position {
    fn key(&self) -> u64;
    fn id(&self) -> &str;
}

impl PartialEq for dyn Position + '_ {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for dyn Position + '_ {}
impl PartialOrd for dyn Position + '_ {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for dyn Position + '_ {
    fn cmp(&self, other: &Self) -> Ordering {
        self.key()
            .cmp(&other.key())
            .then_with(|| self.id().as_bytes().cmp(other.id().as_bytes()))
    }
}

/// A probe for range bounds; `id: ""` sorts before every real id of its key.
pub(crate) struct Probe<'a> {
    pub key: u64,
    pub id: &'a str,
}

impl Position for Probe<'_> {
    fn key(&self) -> u64 {
        self.key
    }
    fn id(&self) -> &str {
        self.id
    }
}

pub(crate) struct Entry {
    key: u64,
    pub offer: Arc<Stored>,
}

impl Position for Entry {
    fn key(&self) -> u64 {
        self.key
    }
    fn id(&self) -> &str {
        &self.offer.id
    }
}

impl<'a> Borrow<dyn Position + 'a> for Entry {
    fn borrow(&self) -> &(dyn Position + 'a) {
        self
    }
}
impl PartialEq for Entry {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Entry {}
impl PartialOrd for Entry {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Entry {
    fn cmp(&self, other: &Self) -> Ordering {
        (self as &dyn Position).cmp(other as &dyn Position)
    }
}

pub(crate) type Ordered = BTreeSet<Entry>;

/// Puts `new` where `old` was (same key: one seek), or moves it.
fn reindex(
    index: &mut Ordered,
    old: Option<(u64, &Arc<Stored>)>,
    new: Option<(u64, &Arc<Stored>)>,
) {
    match (old, new) {
        (Some((ok, o)), Some((nk, n))) if ok == nk && o.id == n.id => {
            index.replace(Entry {
                key: nk,
                offer: n.clone(),
            });
        }
        (old, new) => {
            if let Some((key, o)) = old {
                index.remove(&Probe { key, id: &o.id } as &dyn Position);
            }
            if let Some((key, n)) = new {
                index.insert(Entry {
                    key,
                    offer: n.clone(),
                });
            }
        }
    }
}

/// The offers with one value of an equality field.
pub(crate) struct Bucket {
    /// Aligned with `field.sorts()`; the first doubles as the member list.
    pub ordered: Vec<(SortField, Ordered)>,
    /// The member list of a field without ordered indexes.
    set: HashSet<ById>,
    /// Members whose expiry lies before the sweep point (`Expiry`).
    expired: AtomicUsize,
}

impl Bucket {
    fn new(field: EqField) -> Bucket {
        Bucket {
            ordered: field.sorts().map(|s| (s, Ordered::new())).collect(),
            set: HashSet::new(),
            expired: AtomicUsize::new(0),
        }
    }

    pub fn len(&self) -> usize {
        match self.ordered.first() {
            Some((_, index)) => index.len(),
            None => self.set.len(),
        }
    }

    pub fn iter(&self) -> Box<dyn Iterator<Item = &Arc<Stored>> + '_> {
        match self.ordered.first() {
            Some((_, index)) => Box::new(index.iter().map(|e| &e.offer)),
            None => Box::new(self.set.iter().map(|b| &b.0)),
        }
    }

    pub fn ordered_by(&self, by: SortField) -> Option<&Ordered> {
        self.ordered.iter().find(|(s, _)| *s == by).map(|(_, i)| i)
    }

    fn update(&mut self, old: Option<&Arc<Stored>>, new: Option<&Arc<Stored>>) {
        for (by, index) in &mut self.ordered {
            let at = |o: &Arc<Stored>| sort_key(o, *by).unwrap_or_default();
            reindex(index, old.map(|o| (at(o), o)), new.map(|n| (at(n), n)));
        }
        if self.ordered.is_empty() {
            if let Some(o) = old {
                self.set.remove(&*o.id);
            }
            if let Some(n) = new {
                self.set.replace(ById(n.clone()));
            }
        }
    }
}

/// A field value as a bucket key: interned strings, or the offer type.
/// Equal and hashed as its text, so a bucket is found by `&str`.
#[derive(Clone)]
pub(crate) enum Value {
    Type(OfferType),
    Text(Arc<str>),
}

impl Borrow<str> for Value {
    fn borrow(&self) -> &str {
        match self {
            Value::Type(t) => t.as_str(),
            Value::Text(s) => s,
        }
    }
}

impl PartialEq for Value {
    fn eq(&self, other: &Self) -> bool {
        <Value as Borrow<str>>::borrow(self) == <Value as Borrow<str>>::borrow(other)
    }
}
impl Eq for Value {}
impl Hash for Value {
    fn hash<H: Hasher>(&self, state: &mut H) {
        <Value as Borrow<str>>::borrow(self).hash(state);
    }
}

fn value_of(o: &Stored, field: EqField) -> Option<Value> {
    let text = |s: &Arc<str>| Value::Text(s.clone());
    match field {
        EqField::OfferType => Some(Value::Type(o.offer_type)),
        EqField::CollateralToken => Some(text(&o.collateral_token)),
        EqField::BorrowToken => Some(text(&o.borrow_token)),
        EqField::LiquiditySource => Some(text(&o.liquidity_source)),
        EqField::LenderAddress => o.lender_address.as_ref().map(text),
        EqField::Source => o.source.as_ref().map(text),
    }
}

/// The bucket key of `o` for `field`, borrowed.
fn text_of(o: &Stored, field: EqField) -> Option<&str> {
    match field {
        EqField::OfferType => Some(o.offer_type.as_str()),
        EqField::CollateralToken => Some(&o.collateral_token),
        EqField::BorrowToken => Some(&o.borrow_token),
        EqField::LiquiditySource => Some(&o.liquidity_source),
        EqField::LenderAddress => o.lender_address.as_deref(),
        EqField::Source => o.source.as_deref(),
    }
}

/// How many offers, per bucket and in all, have expired as of the sweep
/// point: a `total` subtracts this instead of visiting every expired offer
/// (at a million offers that visit was 30 ms per list).
///
/// Offers expire by the clock, not by writes, so readers move the sweep
/// point to their `now` (under `point`; the counters are atomics because
/// readers share the state), counting the offers whose expiry they pass.
/// Writers, holding the state exclusively, count an offer they add or
/// remove if its expiry lies before the sweep point.
#[derive(Default)]
pub(crate) struct Expiry {
    /// Expiry key (`time_bits`) below which offers are counted as expired.
    point: Mutex<u64>,
    /// Expired offers in the whole book.
    total: AtomicUsize,
}

pub(crate) struct Indexes {
    pub global: Vec<(SortField, Ordered)>,
    /// Per `EqField::ALL` entry: value → bucket.
    buckets: [HashMap<Value, Bucket>; 6],
    /// Offers with a term, by expiry time.
    pub expiring: Ordered,
    /// Offers `active_only` leaves out.
    pub inactive: HashSet<ById>,
    expiry: Expiry,
}

impl Default for Indexes {
    fn default() -> Self {
        Indexes {
            global: GLOBAL_ORDERED
                .iter()
                .map(|s| (*s, Ordered::new()))
                .collect(),
            buckets: Default::default(),
            expiring: Ordered::new(),
            inactive: HashSet::new(),
            expiry: Expiry::default(),
        }
    }
}

fn expiry_key(o: &Stored) -> Option<u64> {
    o.expires_at().map(|t| time_bits(t.as_nanos()))
}

impl Indexes {
    /// Moves an offer from `old` to `new` (either absent: insert or remove).
    pub fn update(&mut self, old: Option<&Arc<Stored>>, new: Option<&Arc<Stored>>) {
        let point = *self.expiry.point.get_mut();
        let swept = |o: &Arc<Stored>| expiry_key(o).is_some_and(|k| k < point);
        let old_swept = old.is_some_and(&swept);
        let new_swept = new.is_some_and(&swept);
        let total = self.expiry.total.get_mut();
        *total = *total - usize::from(old_swept) + usize::from(new_swept);
        for (by, index) in &mut self.global {
            let at = |o: &Arc<Stored>| sort_key(o, *by).unwrap_or_default();
            reindex(index, old.map(|o| (at(o), o)), new.map(|n| (at(n), n)));
        }
        for (field, map) in EqField::ALL.into_iter().zip(&mut self.buckets) {
            let old_value = old.and_then(|o| value_of(o, field));
            let new_value = new.and_then(|n| value_of(n, field));
            if old_value == new_value {
                if let Some(bucket) = new_value.and_then(|v| map.get_mut(&v)) {
                    bucket.update(old, new);
                    let expired = bucket.expired.get_mut();
                    *expired = *expired - usize::from(old_swept) + usize::from(new_swept);
                }
                continue;
            }
            if let Some(v) = old_value
                && let Some(bucket) = map.get_mut(&v)
            {
                bucket.update(old, None);
                *bucket.expired.get_mut() -= usize::from(old_swept);
                if bucket.len() == 0 {
                    map.remove(&v);
                }
            }
            if let Some(v) = new_value {
                let bucket = map.entry(v).or_insert_with(|| Bucket::new(field));
                bucket.update(None, new);
                *bucket.expired.get_mut() += usize::from(new_swept);
            }
        }
        let old_expiry = old.and_then(|o| expiry_key(o).map(|k| (k, o)));
        let new_expiry = new.and_then(|n| expiry_key(n).map(|k| (k, n)));
        reindex(&mut self.expiring, old_expiry, new_expiry);
        if let Some(o) = old.filter(|o| !o.is_active()) {
            self.inactive.remove(&*o.id);
        }
        if let Some(n) = new.filter(|n| !n.is_active()) {
            self.inactive.replace(ById(n.clone()));
        }
    }

    /// The bucket of `field = value`; `None` when no offer has that value.
    pub fn bucket(&self, field: EqField, value: &str) -> Option<&Bucket> {
        let i = EqField::ALL.iter().position(|f| *f == field)?;
        self.buckets[i].get(value)
    }

    pub fn global_by(&self, by: SortField) -> Option<&Ordered> {
        self.global.iter().find(|(s, _)| *s == by).map(|(_, i)| i)
    }

    /// The offers of `bucket` (or of the book) expired at `now`.
    ///
    /// Moves the sweep point to `now` first, counting (or, if the clock went
    /// back, uncounting) the offers whose expiry lies between the two: each
    /// offer is visited about once in its life instead of once per list.
    pub fn expired_count(&self, bucket: Option<&Bucket>, now: Timestamp) -> usize {
        let mut point = self.expiry.point.lock();
        let target = time_bits(now.as_nanos());
        let (from, to, step): (u64, u64, fn(&AtomicUsize)) = match target.cmp(&point) {
            Ordering::Greater => (*point, target, |c| {
                c.fetch_add(1, AtomicOrdering::Relaxed);
            }),
            Ordering::Less => (target, *point, |c| {
                c.fetch_sub(1, AtomicOrdering::Relaxed);
            }),
            Ordering::Equal => (target, target, |_| {}),
        };
        if from < to {
            let start = Probe { key: from, id: "" };
            let end = Probe { key: to, id: "" };
            let passed = self.expiring.range::<dyn Position, _>((
                Bound::Included(&start as &dyn Position),
                Bound::Excluded(&end as &dyn Position),
            ));
            for e in passed {
                step(&self.expiry.total);
                for (field, map) in EqField::ALL.into_iter().zip(&self.buckets) {
                    if let Some(b) = text_of(&e.offer, field).and_then(|v| map.get(v)) {
                        step(&b.expired);
                    }
                }
            }
            *point = target;
        }
        // Read under the lock: another reader may move the point meanwhile.
        bucket
            .map_or(&self.expiry.total, |b| &b.expired)
            .load(AtomicOrdering::Relaxed)
    }
}

/// What a walk of an ordered index produced.
pub(crate) enum Walk {
    /// Up to `want` admitted offers in list order.
    Page(Vec<Arc<Stored>>),
    /// More than `budget` entries were read without filling the page.
    OverBudget,
}

/// Long runs of equal keys are walked forward rather than buffered.
const TIE_RUN: usize = 256;

struct Collector<F> {
    page: Vec<Arc<Stored>>,
    read: usize,
    want: usize,
    budget: usize,
    admit: F,
}

/// Why a walk stops early.
enum Stop {
    Full,
    OverBudget,
}

impl<F: Fn(&Stored) -> bool> Collector<F> {
    fn take(&mut self, e: &Entry) -> Result<(), Stop> {
        self.read += 1;
        if (self.admit)(&e.offer) {
            self.page.push(e.offer.clone());
            if self.page.len() >= self.want {
                return Err(Stop::Full);
            }
        }
        if self.read > self.budget {
            return Err(Stop::OverBudget);
        }
        Ok(())
    }
}

/// The rest of one key's run, ids ascending, from `from`.
fn run_from<'a>(
    index: &'a Ordered,
    key: u64,
    from: Bound<&dyn Position>,
) -> impl Iterator<Item = &'a Entry> {
    index
        .range::<dyn Position, _>((from, Bound::Unbounded))
        .take_while(move |e| e.key == key)
}

fn walk_desc<F: Fn(&Stored) -> bool>(
    index: &Ordered,
    after: Option<(u64, &str)>,
    c: &mut Collector<F>,
) -> Result<(), Stop> {
    // Keys descending, ids ascending within a key: walk backwards run by
    // run, emitting each run reversed.
    let mut below = None;
    if let Some((key, id)) = after {
        let p = Probe { key, id };
        for e in run_from(index, key, Bound::Excluded(&p as &dyn Position)) {
            c.take(e)?;
        }
        below = Some(key);
    }
    'runs: loop {
        let end = below.map(|key| Probe { key, id: "" });
        let upper = match &end {
            Some(p) => Bound::Excluded(p as &dyn Position),
            None => Bound::Unbounded,
        };
        let mut run: Vec<&Entry> = Vec::new();
        for e in index
            .range::<dyn Position, _>((Bound::Unbounded, upper))
            .rev()
        {
            if run.last().is_some_and(|last| last.key != e.key) {
                for r in run.drain(..).rev() {
                    c.take(r)?;
                }
            }
            run.push(e);
            if run.len() > TIE_RUN {
                let key = e.key;
                let p = Probe { key, id: "" };
                for r in run_from(index, key, Bound::Included(&p as &dyn Position)) {
                    c.take(r)?;
                }
                below = Some(key);
                continue 'runs;
            }
        }
        for r in run.drain(..).rev() {
            c.take(r)?;
        }
        return Ok(());
    }
}

/// Reads `index` in list order (key in `order`, ids ascending) strictly
/// after `after`, keeping the offers `admit` accepts, until `want` are kept.
pub(crate) fn walk(
    index: &Ordered,
    order: SortOrder,
    after: Option<(u64, &str)>,
    want: usize,
    budget: usize,
    admit: impl Fn(&Stored) -> bool,
) -> Walk {
    if want == 0 {
        return Walk::Page(Vec::new());
    }
    let mut c = Collector {
        page: Vec::new(),
        read: 0,
        want,
        budget,
        admit,
    };
    let outcome = match order {
        SortOrder::Asc => {
            let start = after.map(|(key, id)| Probe { key, id });
            let from = match &start {
                Some(p) => Bound::Excluded(p as &dyn Position),
                None => Bound::Unbounded,
            };
            index
                .range::<dyn Position, _>((from, Bound::Unbounded))
                .try_for_each(|e| c.take(e))
        }
        SortOrder::Desc => walk_desc(index, after, &mut c),
    };
    match outcome {
        Err(Stop::OverBudget) => Walk::OverBudget,
        Ok(()) | Err(Stop::Full) => Walk::Page(c.page),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use crate::stored::Interner;
    use offer_domain::MarginOffer;
    use proptest::prelude::*;
    use std::collections::HashMap;

    const DAY: i64 = 86_400 * 1_000_000_000;

    /// One write: offer `id` (of 12) set to a token, a type and an expiry
    /// of `days` days after creation at day `created` (no term: `None`),
    /// or removed.
    #[derive(Clone, Debug)]
    enum Op {
        Put {
            id: u8,
            token: u8,
            kind: u8,
            created: i64,
            days: Option<i32>,
        },
        Remove {
            id: u8,
        },
        /// A reader's `now`, in days (may go back: clocks do).
        Count {
            now: i64,
        },
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (
                0..12u8,
                0..3u8,
                0..3u8,
                0..20i64,
                proptest::option::of(1..10i32)
            )
                .prop_map(|(id, token, kind, created, days)| Op::Put {
                    id,
                    token,
                    kind,
                    created,
                    days
                }),
            (0..12u8).prop_map(|id| Op::Remove { id }),
            (0..40i64).prop_map(|now| Op::Count { now }),
        ]
    }

    fn offer(id: u8, token: u8, kind: u8, created: i64, days: Option<i32>) -> MarginOffer {
        let mut o = MarginOffer::example(format!("o{id}"));
        o.borrow_token = format!("T{token}");
        o.offer_type = OfferType::ALL[usize::from(kind)];
        o.term_days = days;
        o.created_timestamp = Some(Timestamp(created * DAY));
        o
    }

    proptest! {
        /// The swept counters equal a count of the offers expired at `now`,
        /// per bucket and in all, whatever order writes and reader clocks
        /// (forward or back) come in.
        #[test]
        fn expired_counts_match_a_scan(ops in proptest::collection::vec(op(), 1..80)) {
            let mut indexes = Indexes::default();
            let mut strings = Interner::default();
            let mut book: HashMap<u8, Arc<Stored>> = HashMap::new();
            for op in ops {
                match op {
                    Op::Put { id, token, kind, created, days } => {
                        let new = Arc::new(Stored::new(&offer(id, token, kind, created, days), &mut strings));
                        let old = book.insert(id, new.clone());
                        indexes.update(old.as_ref(), Some(&new));
                    }
                    Op::Remove { id } => {
                        if let Some(old) = book.remove(&id) {
                            indexes.update(Some(&old), None);
                        }
                    }
                    Op::Count { now } => {
                        let now = Timestamp(now * DAY + 1);
                        let expired = |o: &&Arc<Stored>| o.is_expired(now);
                        prop_assert_eq!(
                            indexes.expired_count(None, now),
                            book.values().filter(expired).count()
                        );
                        for token in ["T0", "T1", "T2"] {
                            let want = book
                                .values()
                                .filter(|o| &*o.borrow_token == token)
                                .filter(expired)
                                .count();
                            let bucket = indexes.bucket(EqField::BorrowToken, token);
                            let have = bucket.map_or(0, |b| indexes.expired_count(Some(b), now));
                            prop_assert_eq!(have, want, "borrow token {}", token);
                        }
                        for kind in OfferType::ALL {
                            let want = book
                                .values()
                                .filter(|o| o.offer_type == kind)
                                .filter(expired)
                                .count();
                            let bucket = indexes.bucket(EqField::OfferType, kind.as_str());
                            let have = bucket.map_or(0, |b| indexes.expired_count(Some(b), now));
                            prop_assert_eq!(have, want, "offer type {}", kind.as_str());
                        }
                    }
                }
            }
        }
    }
}
