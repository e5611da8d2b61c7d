//! Shared helpers: offer builders, store snapshots, error assertions, and the
//! reference sort and filter that listing results are compared against.
//!
//! The reference implementations are written here independently of the
//! domain crate's, so a bug there cannot make a backend and its check agree.

use offer_domain::{
    BulkError, BulkOutcome, Change, ErrorCode, InterestModel, ListPage, ListQuery, MarginOffer,
    OfferFilter, OfferType, Revision, SortField, SortOrder, StoreError, StoreResult, Timestamp,
    WriteContext,
};
use offer_store::SharedStore;
use std::cmp::Ordering;
use std::fmt::Debug;

pub const NANOS_PER_HOUR: i64 = 3_600 * 1_000_000_000;
pub const NANOS_PER_DAY: i64 = 24 * NANOS_PER_HOUR;

/// The write context most tests use.
pub fn ctx() -> WriteContext {
    WriteContext::default()
}

/// `now - hours`.
pub fn hours_ago(hours: i64) -> Timestamp {
    Timestamp::from_nanos(Timestamp::now().as_nanos() - hours * NANOS_PER_HOUR)
}

/// `now - days`.
pub fn days_ago(days: i64) -> Timestamp {
    Timestamp::from_nanos(Timestamp::now().as_nanos() - days * NANOS_PER_DAY)
}

/// Builder-style setters over [`MarginOffer::example`].
pub trait OfferExt: Sized {
    fn with(self, f: impl FnOnce(&mut MarginOffer)) -> Self;

    fn kind(self, t: OfferType) -> Self {
        self.with(|o| o.offer_type = t)
    }
    fn tokens(self, collateral: &str, borrow: &str) -> Self {
        self.with(|o| {
            o.collateral_token = collateral.into();
            o.borrow_token = borrow.into();
        })
    }
    fn amount(self, v: f64) -> Self {
        self.with(|o| o.available_borrow_amount = v)
    }
    fn rate(self, v: f64) -> Self {
        self.with(|o| o.interest_rate = v)
    }
    fn ltv(self, open: f64, liquidation: f64) -> Self {
        self.with(|o| {
            o.max_open_ltv = open;
            o.liquidation_ltv = liquidation;
        })
    }
    fn model(self, m: InterestModel) -> Self {
        self.with(|o| o.interest_model = m)
    }
    fn term(self, days: Option<i32>) -> Self {
        self.with(|o| o.term_days = days)
    }
    fn liquidity(self, s: &str) -> Self {
        self.with(|o| o.liquidity_source = s.into())
    }
    fn lender(self, l: Option<&str>) -> Self {
        self.with(|o| o.lender_address = l.map(str::to_owned))
    }
    fn source(self, s: Option<&str>) -> Self {
        self.with(|o| o.source = s.map(str::to_owned))
    }
    fn created(self, t: Option<Timestamp>) -> Self {
        self.with(|o| o.created_timestamp = t)
    }
}

impl OfferExt for MarginOffer {
    fn with(mut self, f: impl FnOnce(&mut MarginOffer)) -> Self {
        f(&mut self);
        self
    }
}

/// `MarginOffer::example(id)`.
pub fn offer(id: &str) -> MarginOffer {
    MarginOffer::example(id)
}

/// `MarginOffer::example(id)` with a `source`.
pub fn sourced(id: &str, source: &str) -> MarginOffer {
    offer(id).source(Some(source))
}

pub async fn revision(store: &SharedStore) -> Revision {
    store.revision().await.expect("revision")
}

/// Every offer in the store (expired ones too), sorted by id, read by
/// following page tokens.
pub async fn snapshot(store: &SharedStore) -> Vec<MarginOffer> {
    let q = ListQuery {
        sort_by: SortField::Id,
        sort_order: SortOrder::Asc,
        include_expired: true,
        limit: 1000,
        ..Default::default()
    };
    collect_pages(store, q).await
}

/// The ids of [`snapshot`].
pub async fn snapshot_ids(store: &SharedStore) -> Vec<String> {
    ids(&snapshot(store).await)
}

pub fn ids(offers: &[MarginOffer]) -> Vec<String> {
    offers.iter().map(|o| o.id.clone()).collect()
}

pub fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| (*s).to_owned()).collect()
}

pub fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

/// Follows `next_page_token` from `q` to the end, returning every offer.
pub async fn collect_pages(store: &SharedStore, mut q: ListQuery) -> Vec<MarginOffer> {
    let mut out = Vec::new();
    for _ in 0..100_000 {
        let page = store.list(&q).await.expect("list page");
        out.extend(page.offers);
        match page.next_page_token {
            Some(t) if page.has_more => q.page_token = Some(t),
            Some(t) => panic!("next_page_token {t:?} on a page with has_more = false"),
            None => {
                assert!(!page.has_more, "has_more without a next_page_token");
                return out;
            }
        }
    }
    panic!("paging did not end");
}

/// One page listing with `include_expired` and the maximum limit.
pub async fn list_all(store: &SharedStore, mut q: ListQuery) -> ListPage {
    q.include_expired = true;
    q.limit = 1000;
    store.list(&q).await.expect("list")
}

/// The state that "nothing was written" compares: revision and every offer.
#[derive(Debug, PartialEq)]
pub struct State {
    pub revision: Revision,
    pub offers: Vec<MarginOffer>,
}

pub async fn state(store: &SharedStore) -> State {
    State {
        revision: revision(store).await,
        offers: snapshot(store).await,
    }
}

pub async fn assert_unchanged(store: &SharedStore, before: &State, what: &str) {
    let after = state(store).await;
    assert_eq!(
        after.revision, before.revision,
        "{what}: revision moved although nothing may be written"
    );
    assert_eq!(
        after.offers, before.offers,
        "{what}: stored offers changed although nothing may be written"
    );
}

/// Asserts `INVALID_ARGUMENT` naming `field`.
pub fn expect_invalid<T: Debug>(r: StoreResult<T>, field: &str, what: &str) {
    match r {
        Err(StoreError::InvalidArgument(e)) => {
            assert_eq!(e.field, field, "{what}: wrong field named in {e}")
        }
        other => panic!("{what}: expected InvalidArgument({field}), got {other:?}"),
    }
}

pub fn expect_not_found<T: Debug>(r: StoreResult<T>, id: &str, what: &str) {
    match r {
        Err(StoreError::NotFound { id: got }) => assert_eq!(got, id, "{what}: NotFound id"),
        other => panic!("{what}: expected NotFound({id}), got {other:?}"),
    }
}

pub fn expect_already_exists<T: Debug>(r: StoreResult<T>, id: &str, what: &str) {
    match r {
        Err(StoreError::AlreadyExists { id: got }) => {
            assert_eq!(got, id, "{what}: AlreadyExists id")
        }
        other => panic!("{what}: expected AlreadyExists({id}), got {other:?}"),
    }
}

/// Asserts one bulk item error.
pub fn assert_item_error(e: &BulkError, index: usize, id: &str, code: ErrorCode, what: &str) {
    assert_eq!(e.index, index, "{what}: error index in {e:?}");
    assert_eq!(e.id, id, "{what}: error id in {e:?}");
    assert_eq!(e.code, code, "{what}: error code in {e:?}");
}

/// Asserts an item error message names `field` (`"field: ..."`).
pub fn assert_names_field(e: &BulkError, field: &str, what: &str) {
    assert!(
        e.message.starts_with(&format!("{field}:")),
        "{what}: item error message should start with {field:?}: {:?}",
        e.message
    );
}

/// Asserts a bulk outcome that failed as a whole: nothing committed.
pub fn assert_bulk_failed(out: &BulkOutcome, items: usize, current: Revision, what: &str) {
    assert_eq!(out.success_count, 0, "{what}: success_count of {out:?}");
    assert_eq!(out.failure_count, items, "{what}: failure_count of {out:?}");
    assert!(
        out.processed_ids.is_empty(),
        "{what}: processed_ids {out:?}"
    );
    assert!(!out.errors.is_empty(), "{what}: no errors in {out:?}");
    assert_eq!(
        out.revision, current,
        "{what}: a failed bulk call reports the current revision"
    );
}

/// Asserts a fully successful bulk outcome.
pub fn assert_bulk_ok(out: &BulkOutcome, processed: &[&str], what: &str) {
    assert!(out.errors.is_empty(), "{what}: errors {:?}", out.errors);
    assert_eq!(out.failure_count, 0, "{what}: failure_count");
    assert_eq!(
        out.processed_ids,
        strings(processed),
        "{what}: processed_ids"
    );
    assert_eq!(out.success_count, processed.len(), "{what}: success_count");
}

/// All retained changes after `after` (the suite's tests write far fewer
/// than the limit asked for, so one batch holds them all).
pub async fn changes_after(store: &SharedStore, after: Revision) -> Vec<Change> {
    const LIMIT: usize = 10_000;
    let batch = store
        .changes_since(after, LIMIT)
        .await
        .expect("changes_since");
    assert!(batch.changes.len() < LIMIT, "more changes than expected");
    batch.changes
}

/// The reference sort key comparison for `by`, ascending.
pub fn reference_key_cmp(a: &MarginOffer, b: &MarginOffer, by: SortField) -> Ordering {
    fn num(x: f64, y: f64) -> Ordering {
        x.partial_cmp(&y).unwrap_or(Ordering::Equal)
    }
    fn time(x: Option<Timestamp>, y: Option<Timestamp>) -> Ordering {
        x.expect("stored offers have timestamps")
            .cmp(&y.expect("stored offers have timestamps"))
    }
    match by {
        SortField::CreatedTimestamp => time(a.created_timestamp, b.created_timestamp),
        SortField::UpdatedTimestamp => time(a.updated_timestamp, b.updated_timestamp),
        SortField::InterestRate => num(a.interest_rate, b.interest_rate),
        SortField::AvailableBorrowAmount => {
            num(a.available_borrow_amount, b.available_borrow_amount)
        }
        SortField::MaxOpenLtv => num(a.max_open_ltv, b.max_open_ltv),
        SortField::LiquidationLtv => num(a.liquidation_ltv, b.liquidation_ltv),
        // Sorted by the wire spelling, bytewise, like every text column.
        SortField::OfferType => a
            .offer_type
            .as_str()
            .as_bytes()
            .cmp(b.offer_type.as_str().as_bytes()),
        SortField::CollateralToken => a
            .collateral_token
            .as_bytes()
            .cmp(b.collateral_token.as_bytes()),
        SortField::BorrowToken => a.borrow_token.as_bytes().cmp(b.borrow_token.as_bytes()),
        SortField::Id => a.id.as_bytes().cmp(b.id.as_bytes()),
    }
}

/// The reference total order: key in `order`, ties by id ascending.
pub fn reference_cmp(
    a: &MarginOffer,
    b: &MarginOffer,
    by: SortField,
    order: SortOrder,
) -> Ordering {
    let key = reference_key_cmp(a, b, by);
    let key = match order {
        SortOrder::Asc => key,
        SortOrder::Desc => key.reverse(),
    };
    key.then_with(|| a.id.as_bytes().cmp(b.id.as_bytes()))
}

/// The reference filter predicate (exact strings, inclusive ranges).
pub fn reference_matches(f: &OfferFilter, o: &MarginOffer) -> bool {
    fn range<T: PartialOrd + Copy>(v: T, lo: Option<T>, hi: Option<T>) -> bool {
        lo.is_none_or(|lo| v >= lo) && hi.is_none_or(|hi| v <= hi)
    }
    let created = o.created_timestamp.expect("stored created_timestamp");
    let updated = o.updated_timestamp.expect("stored updated_timestamp");
    f.offer_type.is_none_or(|t| t == o.offer_type)
        && f.collateral_token
            .as_ref()
            .is_none_or(|v| *v == o.collateral_token)
        && f.borrow_token.as_ref().is_none_or(|v| *v == o.borrow_token)
        && f.interest_model.is_none_or(|m| m == o.interest_model)
        && f.liquidity_source
            .as_ref()
            .is_none_or(|v| *v == o.liquidity_source)
        && f.lender_address
            .as_ref()
            .is_none_or(|v| o.lender_address.as_ref() == Some(v))
        && f.source
            .as_ref()
            .is_none_or(|v| o.source.as_ref() == Some(v))
        && range(
            o.available_borrow_amount,
            f.min_borrow_amount,
            f.max_borrow_amount,
        )
        && range(o.interest_rate, f.min_interest_rate, f.max_interest_rate)
        && range(o.max_open_ltv, f.min_max_open_ltv, f.max_max_open_ltv)
        && range(created, f.created_after, f.created_before)
        && range(updated, f.updated_after, f.updated_before)
}
