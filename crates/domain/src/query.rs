//! Listing: filters, the total sort order, expiry, keyset page tokens, stats.

use crate::change::Revision;
use crate::error::{FieldError, StoreError};
use crate::offer::{InterestModel, MarginOffer, OfferType};
use crate::time::Timestamp;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};
use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::fmt;

pub const DEFAULT_LIMIT: i32 = 100;
pub const MAX_LIMIT: i32 = 1000;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum SortField {
    #[default]
    CreatedTimestamp,
    UpdatedTimestamp,
    InterestRate,
    AvailableBorrowAmount,
    MaxOpenLtv,
    LiquidationLtv,
    OfferType,
    CollateralToken,
    BorrowToken,
    Id,
}

impl SortField {
    pub const ALL: [SortField; 10] = [
        SortField::CreatedTimestamp,
        SortField::UpdatedTimestamp,
        SortField::InterestRate,
        SortField::AvailableBorrowAmount,
        SortField::MaxOpenLtv,
        SortField::LiquidationLtv,
        SortField::OfferType,
        SortField::CollateralToken,
        SortField::BorrowToken,
        SortField::Id,
    ];

    /// The wire name, which is also the column name in the SQL backends.
    pub fn as_str(self) -> &'static str {
        match self {
            SortField::CreatedTimestamp => "created_timestamp",
            SortField::UpdatedTimestamp => "updated_timestamp",
            SortField::InterestRate => "interest_rate",
            SortField::AvailableBorrowAmount => "available_borrow_amount",
            SortField::MaxOpenLtv => "max_open_ltv",
            SortField::LiquidationLtv => "liquidation_ltv",
            SortField::OfferType => "offer_type",
            SortField::CollateralToken => "collateral_token",
            SortField::BorrowToken => "borrow_token",
            SortField::Id => "id",
        }
    }

    pub fn parse(s: &str) -> Result<Self, FieldError> {
        SortField::ALL
            .into_iter()
            .find(|f| f.as_str() == s)
            .ok_or_else(|| {
                FieldError::new(
                    "sort_by",
                    format!(
                        "unknown sort field {s:?}; one of: {}",
                        SortField::ALL.map(SortField::as_str).join(", ")
                    ),
                )
            })
    }

    /// The value an offer is sorted by for this field.
    pub fn key(self, o: &MarginOffer) -> SortValue {
        match self {
            SortField::CreatedTimestamp => {
                SortValue::Time(o.created_timestamp.map_or(0, Timestamp::as_nanos))
            }
            SortField::UpdatedTimestamp => {
                SortValue::Time(o.updated_timestamp.map_or(0, Timestamp::as_nanos))
            }
            SortField::InterestRate => SortValue::Number(o.interest_rate),
            SortField::AvailableBorrowAmount => SortValue::Number(o.available_borrow_amount),
            SortField::MaxOpenLtv => SortValue::Number(o.max_open_ltv),
            SortField::LiquidationLtv => SortValue::Number(o.liquidation_ltv),
            SortField::OfferType => SortValue::Text(o.offer_type.as_str().to_owned()),
            SortField::CollateralToken => SortValue::Text(o.collateral_token.clone()),
            SortField::BorrowToken => SortValue::Text(o.borrow_token.clone()),
            SortField::Id => SortValue::Text(o.id.clone()),
        }
    }
}

impl fmt::Display for SortField {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum SortOrder {
    Asc,
    #[default]
    Desc,
}

impl SortOrder {
    pub fn as_str(self) -> &'static str {
        match self {
            SortOrder::Asc => "asc",
            SortOrder::Desc => "desc",
        }
    }

    pub fn parse(s: &str) -> Result<Self, FieldError> {
        match s {
            "asc" => Ok(SortOrder::Asc),
            "desc" => Ok(SortOrder::Desc),
            _ => Err(FieldError::new(
                "sort_order",
                format!("must be asc or desc, got {s:?}"),
            )),
        }
    }
}

/// A sort key value. Strings compare bytewise, like SQLite's BINARY and
/// PostgreSQL's "C" collation, so every backend agrees on the order.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum SortValue {
    Number(f64),
    Time(i64),
    Text(String),
}

impl SortValue {
    fn cmp_same_kind(&self, other: &SortValue) -> Ordering {
        match (self, other) {
            (SortValue::Number(a), SortValue::Number(b)) => a.total_cmp(b),
            (SortValue::Time(a), SortValue::Time(b)) => a.cmp(b),
            (SortValue::Text(a), SortValue::Text(b)) => a.as_bytes().cmp(b.as_bytes()),
            // Kinds never mix within one query (the token fingerprint binds
            // the sort field); order them arbitrarily but totally.
            (a, b) => a.rank().cmp(&b.rank()),
        }
    }

    fn rank(&self) -> u8 {
        match self {
            SortValue::Number(_) => 0,
            SortValue::Time(_) => 1,
            SortValue::Text(_) => 2,
        }
    }
}

/// The total order of a listing: the sort key in the requested direction,
/// ties broken by id ascending.
pub fn compare_offers(
    a: &MarginOffer,
    b: &MarginOffer,
    by: SortField,
    order: SortOrder,
) -> Ordering {
    compare_keys(&by.key(a), &a.id, &by.key(b), &b.id, order)
}

pub fn compare_keys(
    a_key: &SortValue,
    a_id: &str,
    b_key: &SortValue,
    b_id: &str,
    order: SortOrder,
) -> Ordering {
    let by_key = a_key.cmp_same_kind(b_key);
    let by_key = match order {
        SortOrder::Asc => by_key,
        SortOrder::Desc => by_key.reverse(),
    };
    by_key.then_with(|| a_id.as_bytes().cmp(b_id.as_bytes()))
}

/// The equality and range filters of a listing. Strings are exact matches,
/// ranges inclusive.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct OfferFilter {
    pub offer_type: Option<OfferType>,
    pub collateral_token: Option<String>,
    pub borrow_token: Option<String>,
    pub interest_model: Option<InterestModel>,
    pub liquidity_source: Option<String>,
    pub lender_address: Option<String>,
    pub source: Option<String>,
    pub min_borrow_amount: Option<f64>,
    pub max_borrow_amount: Option<f64>,
    pub min_interest_rate: Option<f64>,
    pub max_interest_rate: Option<f64>,
    pub min_max_open_ltv: Option<f64>,
    pub max_max_open_ltv: Option<f64>,
    pub created_after: Option<Timestamp>,
    pub created_before: Option<Timestamp>,
    pub updated_after: Option<Timestamp>,
    pub updated_before: Option<Timestamp>,
}

fn in_range<T: PartialOrd>(v: T, min: Option<T>, max: Option<T>) -> bool {
    min.is_none_or(|m| v >= m) && max.is_none_or(|m| v <= m)
}

fn eq_opt(want: &Option<String>, have: &str) -> bool {
    want.as_deref().is_none_or(|w| w == have)
}

fn eq_opt_opt(want: &Option<String>, have: &Option<String>) -> bool {
    match want {
        None => true,
        Some(w) => have.as_deref() == Some(w.as_str()),
    }
}

impl OfferFilter {
    pub fn matches(&self, o: &MarginOffer) -> bool {
        let created = o.created_timestamp.unwrap_or(Timestamp(0));
        let updated = o.updated_timestamp.unwrap_or(Timestamp(0));
        self.offer_type.is_none_or(|t| t == o.offer_type)
            && eq_opt(&self.collateral_token, &o.collateral_token)
            && eq_opt(&self.borrow_token, &o.borrow_token)
            && self.interest_model.is_none_or(|m| m == o.interest_model)
            && eq_opt(&self.liquidity_source, &o.liquidity_source)
            && eq_opt_opt(&self.lender_address, &o.lender_address)
            && eq_opt_opt(&self.source, &o.source)
            && in_range(
                o.available_borrow_amount,
                self.min_borrow_amount,
                self.max_borrow_amount,
            )
            && in_range(
                o.interest_rate,
                self.min_interest_rate,
                self.max_interest_rate,
            )
            && in_range(o.max_open_ltv, self.min_max_open_ltv, self.max_max_open_ltv)
            && in_range(created, self.created_after, self.created_before)
            && in_range(updated, self.updated_after, self.updated_before)
    }

    /// Range bounds must be real numbers; a NaN bound would silently match nothing.
    pub fn check(&self) -> Result<(), FieldError> {
        for (name, v) in [
            ("min_borrow_amount", self.min_borrow_amount),
            ("max_borrow_amount", self.max_borrow_amount),
            ("min_interest_rate", self.min_interest_rate),
            ("max_interest_rate", self.max_interest_rate),
            ("min_max_open_ltv", self.min_max_open_ltv),
            ("max_max_open_ltv", self.max_max_open_ltv),
        ] {
            if v.is_some_and(f64::is_nan) {
                return Err(FieldError::new(name, "must not be NaN"));
            }
        }
        Ok(())
    }
}

/// The scope of an overwrite (and the selection of stats and previews).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct OverwriteFilter {
    pub offer_type: Option<OfferType>,
    pub collateral_token: Option<String>,
    pub borrow_token: Option<String>,
    pub lender_address: Option<String>,
    pub liquidity_source: Option<String>,
    pub source: Option<String>,
    pub created_after: Option<Timestamp>,
    pub created_before: Option<Timestamp>,
    pub updated_after: Option<Timestamp>,
    pub updated_before: Option<Timestamp>,
}

impl OverwriteFilter {
    /// The scope of one source's snapshot.
    pub fn source(source: impl Into<String>) -> Self {
        OverwriteFilter {
            source: Some(source.into()),
            ..Default::default()
        }
    }

    /// A filter with no condition selects the whole store.
    pub fn is_empty(&self) -> bool {
        *self == OverwriteFilter::default()
    }

    pub fn matches(&self, o: &MarginOffer) -> bool {
        self.as_offer_filter().matches(o)
    }

    pub fn as_offer_filter(&self) -> OfferFilter {
        OfferFilter {
            offer_type: self.offer_type,
            collateral_token: self.collateral_token.clone(),
            borrow_token: self.borrow_token.clone(),
            lender_address: self.lender_address.clone(),
            liquidity_source: self.liquidity_source.clone(),
            source: self.source.clone(),
            created_after: self.created_after,
            created_before: self.created_before,
            updated_after: self.updated_after,
            updated_before: self.updated_before,
            ..Default::default()
        }
    }
}

/// `ListMarginOffers` as the domain sees it. `limit` and `offset` keep the
/// wire's signed type so that every backend rejects bad values the same way
/// (see [`ListQuery::resolve`]).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ListQuery {
    pub filter: OfferFilter,
    pub sort_by: SortField,
    pub sort_order: SortOrder,
    /// 0 means [`DEFAULT_LIMIT`]; at most [`MAX_LIMIT`].
    pub limit: i32,
    /// Ignored when `page_token` is present.
    pub offset: i32,
    pub include_expired: bool,
    pub active_only: bool,
    /// An opaque keyset cursor from a previous page of the same query.
    pub page_token: Option<String>,
}

/// A checked list query, ready for a backend to execute.
#[derive(Clone, Debug, PartialEq)]
pub struct ResolvedList {
    pub limit: usize,
    pub offset: usize,
    /// Start strictly after this `(key, id)` position.
    pub after: Option<(SortValue, String)>,
    pub fingerprint: u64,
}

impl ListQuery {
    pub fn resolve(&self) -> Result<ResolvedList, StoreError> {
        if self.limit < 0 {
            return Err(StoreError::invalid("limit", "must not be negative"));
        }
        if self.limit > MAX_LIMIT {
            return Err(StoreError::invalid(
                "limit",
                format!("at most {MAX_LIMIT}, got {}", self.limit),
            ));
        }
        if self.offset < 0 {
            return Err(StoreError::invalid("offset", "must not be negative"));
        }
        self.filter.check()?;
        let fingerprint = self.fingerprint();
        let after = match &self.page_token {
            None => None,
            Some(t) if t.is_empty() => None,
            Some(t) => {
                let token = PageToken::decode(t)?;
                if token.query != fingerprint {
                    return Err(StoreError::invalid(
                        "page_token",
                        "belongs to a different query (filters or sort changed)",
                    ));
                }
                Some((token.key, token.id))
            }
        };
        let limit = if self.limit == 0 {
            DEFAULT_LIMIT
        } else {
            self.limit
        } as usize;
        let offset = if after.is_some() {
            0
        } else {
            self.offset as usize
        };
        Ok(ResolvedList {
            limit,
            offset,
            after,
            fingerprint,
        })
    }

    /// Whether an offer belongs in this listing at `now` (filters, expiry, activity).
    pub fn admits(&self, o: &MarginOffer, now: Timestamp) -> bool {
        (self.include_expired || !o.is_expired(now))
            && (!self.active_only || o.available_borrow_amount > 0.0)
            && self.filter.matches(o)
    }

    /// Binds page tokens to the query that produced them: everything that
    /// selects or orders rows, nothing that pages.
    fn fingerprint(&self) -> u64 {
        let canonical = serde_json::to_vec(&(
            &self.filter,
            self.sort_by,
            self.sort_order,
            self.include_expired,
            self.active_only,
        ))
        .unwrap_or_default();
        fnv1a(&canonical)
    }
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// The keyset cursor inside a `page_token`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PageToken {
    #[serde(rename = "q")]
    pub query: u64,
    #[serde(rename = "k")]
    pub key: SortValue,
    #[serde(rename = "i")]
    pub id: String,
}

const TOKEN_VERSION: u8 = 1;

impl PageToken {
    pub fn after(query: &ResolvedList, by: SortField, last: &MarginOffer) -> Self {
        PageToken {
            query: query.fingerprint,
            key: by.key(last),
            id: last.id.clone(),
        }
    }

    pub fn encode(&self) -> String {
        let mut bytes = vec![TOKEN_VERSION];
        bytes.extend(serde_json::to_vec(self).unwrap_or_default());
        URL_SAFE_NO_PAD.encode(bytes)
    }

    pub fn decode(token: &str) -> Result<Self, FieldError> {
        let bad = || FieldError::new("page_token", "malformed page token");
        let bytes = URL_SAFE_NO_PAD.decode(token).map_err(|_| bad())?;
        match bytes.split_first() {
            Some((&TOKEN_VERSION, json)) => serde_json::from_slice(json).map_err(|_| bad()),
            _ => Err(bad()),
        }
    }
}

/// One page of a listing.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ListPage {
    pub offers: Vec<MarginOffer>,
    /// Offers matching the filters, over all pages.
    pub total: i64,
    pub limit: i32,
    pub offset: i32,
    pub has_more: bool,
    pub next_offset: Option<i32>,
    /// The store revision the page was read at.
    pub revision: Revision,
    pub next_page_token: Option<String>,
}

impl ListPage {
    /// Assembles a page from the rows a backend read: `rows` holds up to
    /// `limit + 1` offers in list order, the extra one only signalling more.
    pub fn assemble(
        query: &ListQuery,
        resolved: &ResolvedList,
        mut rows: Vec<MarginOffer>,
        total: i64,
        revision: Revision,
    ) -> ListPage {
        let has_more = rows.len() > resolved.limit;
        rows.truncate(resolved.limit);
        let next_page_token = if has_more {
            rows.last()
                .map(|last| PageToken::after(resolved, query.sort_by, last).encode())
        } else {
            None
        };
        let offset = resolved.offset as i32;
        ListPage {
            next_offset: has_more.then(|| offset.saturating_add(rows.len() as i32)),
            offers: rows,
            total,
            limit: resolved.limit as i32,
            offset,
            has_more,
            revision,
            next_page_token,
        }
    }
}

/// The selection of `GetMarginOfferStats`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StatsQuery {
    pub filter: Option<OverwriteFilter>,
    pub include_expired: bool,
}

impl StatsQuery {
    pub fn admits(&self, o: &MarginOffer, now: Timestamp) -> bool {
        (self.include_expired || !o.is_expired(now))
            && self.filter.as_ref().is_none_or(|f| f.matches(o))
    }
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Stats {
    pub total: i64,
    pub by_offer_type: BTreeMap<String, i64>,
    pub liquidity_by_borrow_token: BTreeMap<String, f64>,
    pub revision: Revision,
}

impl Stats {
    pub fn add(&mut self, o: &MarginOffer) {
        self.total += 1;
        *self
            .by_offer_type
            .entry(o.offer_type.as_str().to_owned())
            .or_default() += 1;
        *self
            .liquidity_by_borrow_token
            .entry(o.borrow_token.clone())
            .or_default() += o.available_borrow_amount;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn tokens_round_trip_and_garbage_is_refused() {
        let t = PageToken {
            query: 42,
            key: SortValue::Number(0.5),
            id: "a/b".into(),
        };
        assert_eq!(PageToken::decode(&t.encode()), Ok(t));
        for bad in ["", "!!!", "AAAA", "eyJ4IjoxfQ"] {
            assert_eq!(
                PageToken::decode(bad).map_err(|e| e.field),
                Err("page_token".to_owned())
            );
        }
    }

    #[test]
    fn token_from_another_query_is_refused() {
        let q = ListQuery::default();
        let r = q.resolve().expect("valid");
        let token = PageToken::after(&r, q.sort_by, &MarginOffer::example("x")).encode();
        let other = ListQuery {
            sort_by: SortField::Id,
            page_token: Some(token),
            ..Default::default()
        };
        assert!(
            matches!(other.resolve(), Err(StoreError::InvalidArgument(e)) if e.field == "page_token")
        );
    }

    #[test]
    fn ties_break_on_id_ascending_in_both_directions() {
        let a = MarginOffer::example("a");
        let b = MarginOffer::example("b");
        for order in [SortOrder::Asc, SortOrder::Desc] {
            assert_eq!(
                compare_offers(&a, &b, SortField::InterestRate, order),
                Ordering::Less
            );
        }
    }

    proptest! {
        #[test]
        fn token_decoder_never_panics(s in ".*") {
            let _ = PageToken::decode(&s);
        }

        #[test]
        fn token_decoder_never_panics_on_valid_base64(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = PageToken::decode(&URL_SAFE_NO_PAD.encode(bytes));
        }
    }
}
