//! The compact form an offer is kept in: repeated strings interned as shared
//! `Arc<str>`, timestamps as plain nanoseconds. One `Arc<Stored>` is shared
//! by the book, every index and the change log; a `MarginOffer` is built
//! only when one is returned.
//!
//! The filter, sort-key and stats helpers here mirror `offer_domain::query`
//! on this form (materialising each candidate would cost more than the
//! listing itself); the tests check them against the domain's versions.

use offer_domain::query::SortValue;
use offer_domain::{
    InterestModel, ListQuery, MarginOffer, OfferFilter, OfferType, SortField, SortOrder, Stats,
    Timestamp,
};
use std::cmp::Ordering;
use std::collections::HashSet;
use std::sync::Arc;

const HAS_TERM: u8 = 1;
const HAS_LAST_BORROWED: u8 = 2;
const HAS_CREATED: u8 = 4;
const HAS_UPDATED: u8 = 8;

pub(crate) struct Stored {
    pub id: Box<str>,
    pub collateral_token: Arc<str>,
    pub borrow_token: Arc<str>,
    pub liquidity_source: Arc<str>,
    pub lender_address: Option<Arc<str>>,
    pub source: Option<Arc<str>>,
    pub available_borrow_amount: f64,
    pub max_open_ltv: f64,
    pub liquidation_ltv: f64,
    pub interest_rate: f64,
    last_borrowed_nanos: i64,
    created_nanos: i64,
    updated_nanos: i64,
    term_days: i32,
    present: u8,
    pub offer_type: OfferType,
    pub interest_model: InterestModel,
}

/// Hands out one shared `Arc<str>` per distinct string (mints, sources,
/// lenders repeat across many offers).
#[derive(Default)]
pub(crate) struct Interner {
    strings: HashSet<Arc<str>>,
    prune_at: usize,
}

impl Interner {
    pub fn intern(&mut self, s: &str) -> Arc<str> {
        if let Some(shared) = self.strings.get(s) {
            return shared.clone();
        }
        let shared: Arc<str> = Arc::from(s);
        self.strings.insert(shared.clone());
        if self.strings.len() > self.prune_at {
            // Forget strings no offer uses any more; amortised by doubling.
            self.strings.retain(|s| Arc::strong_count(s) > 1);
            self.prune_at = (self.strings.len() * 2).max(1024);
        }
        shared
    }
}

fn opt_nanos(t: Option<Timestamp>, flag: u8, present: &mut u8) -> i64 {
    match t {
        Some(t) => {
            *present |= flag;
            t.as_nanos()
        }
        None => 0,
    }
}

impl Stored {
    pub fn new(o: &MarginOffer, strings: &mut Interner) -> Stored {
        let mut present = 0;
        let term_days = match o.term_days {
            Some(d) => {
                present |= HAS_TERM;
                d
            }
            None => 0,
        };
        Stored {
            id: o.id.as_str().into(),
            collateral_token: strings.intern(&o.collateral_token),
            borrow_token: strings.intern(&o.borrow_token),
            liquidity_source: strings.intern(&o.liquidity_source),
            lender_address: o.lender_address.as_deref().map(|s| strings.intern(s)),
            source: o.source.as_deref().map(|s| strings.intern(s)),
            available_borrow_amount: o.available_borrow_amount,
            max_open_ltv: o.max_open_ltv,
            liquidation_ltv: o.liquidation_ltv,
            interest_rate: o.interest_rate,
            last_borrowed_nanos: opt_nanos(
                o.last_borrowed_timestamp,
                HAS_LAST_BORROWED,
                &mut present,
            ),
            created_nanos: opt_nanos(o.created_timestamp, HAS_CREATED, &mut present),
            updated_nanos: opt_nanos(o.updated_timestamp, HAS_UPDATED, &mut present),
            term_days,
            present,
            offer_type: o.offer_type,
            interest_model: o.interest_model,
        }
    }

    fn get<T>(&self, flag: u8, v: T) -> Option<T> {
        (self.present & flag != 0).then_some(v)
    }

    pub fn created(&self) -> Option<Timestamp> {
        self.get(HAS_CREATED, Timestamp(self.created_nanos))
    }

    pub fn updated(&self) -> Option<Timestamp> {
        self.get(HAS_UPDATED, Timestamp(self.updated_nanos))
    }

    pub fn term_days(&self) -> Option<i32> {
        self.get(HAS_TERM, self.term_days)
    }

    pub fn to_offer(&self) -> MarginOffer {
        MarginOffer {
            id: self.id.to_string(),
            offer_type: self.offer_type,
            collateral_token: self.collateral_token.to_string(),
            borrow_token: self.borrow_token.to_string(),
            available_borrow_amount: self.available_borrow_amount,
            max_open_ltv: self.max_open_ltv,
            liquidation_ltv: self.liquidation_ltv,
            interest_rate: self.interest_rate,
            interest_model: self.interest_model,
            term_days: self.term_days(),
            liquidity_source: self.liquidity_source.to_string(),
            lender_address: self.lender_address.as_deref().map(str::to_owned),
            last_borrowed_timestamp: self
                .get(HAS_LAST_BORROWED, Timestamp(self.last_borrowed_nanos)),
            created_timestamp: self.created(),
            updated_timestamp: self.updated(),
            source: self.source.as_deref().map(str::to_owned),
        }
    }

    /// `MarginOffer::expires_at`.
    pub fn expires_at(&self) -> Option<Timestamp> {
        match (self.term_days(), self.created()) {
            (Some(days), Some(created)) => Some(created.saturating_add_days(days)),
            _ => None,
        }
    }

    pub fn is_expired(&self, now: Timestamp) -> bool {
        self.expires_at().is_some_and(|at| at < now)
    }

    /// `ListQuery::admits`.
    pub fn admitted_by(&self, q: &ListQuery, now: Timestamp) -> bool {
        (q.include_expired || !self.is_expired(now))
            && (!q.active_only || self.is_active())
            && self.matches(&q.filter)
    }

    /// The `active_only` condition of `ListQuery::admits`.
    pub fn is_active(&self) -> bool {
        self.available_borrow_amount > 0.0
    }

    /// `OfferFilter::matches`.
    pub fn matches(&self, f: &OfferFilter) -> bool {
        fn eq(want: &Option<String>, have: &str) -> bool {
            want.as_deref().is_none_or(|w| w == have)
        }
        fn eq_opt(want: &Option<String>, have: Option<&str>) -> bool {
            want.as_deref().is_none_or(|w| have == Some(w))
        }
        fn in_range<T: PartialOrd>(v: T, min: Option<T>, max: Option<T>) -> bool {
            min.is_none_or(|m| v >= m) && max.is_none_or(|m| v <= m)
        }
        let created = self.created().unwrap_or(Timestamp(0));
        let updated = self.updated().unwrap_or(Timestamp(0));
        f.offer_type.is_none_or(|t| t == self.offer_type)
            && eq(&f.collateral_token, &self.collateral_token)
            && eq(&f.borrow_token, &self.borrow_token)
            && f.interest_model.is_none_or(|m| m == self.interest_model)
            && eq(&f.liquidity_source, &self.liquidity_source)
            && eq_opt(&f.lender_address, self.lender_address.as_deref())
            && eq_opt(&f.source, self.source.as_deref())
            && in_range(
                self.available_borrow_amount,
                f.min_borrow_amount,
                f.max_borrow_amount,
            )
            && in_range(self.interest_rate, f.min_interest_rate, f.max_interest_rate)
            && in_range(self.max_open_ltv, f.min_max_open_ltv, f.max_max_open_ltv)
            && in_range(created, f.created_after, f.created_before)
            && in_range(updated, f.updated_after, f.updated_before)
    }

    /// `SortField::key`.
    pub fn sort_value(&self, by: SortField) -> SortValue {
        match sort_key(self, by) {
            Some(_) => match by {
                SortField::CreatedTimestamp => {
                    SortValue::Time(self.created().map_or(0, Timestamp::as_nanos))
                }
                SortField::UpdatedTimestamp => {
                    SortValue::Time(self.updated().map_or(0, Timestamp::as_nanos))
                }
                _ => SortValue::Number(number(self, by).unwrap_or_default()),
            },
            None => SortValue::Text(text(self, by).to_owned()),
        }
    }

    /// `Stats::add`.
    pub fn add_to(&self, stats: &mut Stats) {
        stats.total += 1;
        *stats
            .by_offer_type
            .entry(self.offer_type.as_str().to_owned())
            .or_default() += 1;
        match stats.liquidity_by_borrow_token.get_mut(&*self.borrow_token) {
            Some(sum) => *sum += self.available_borrow_amount,
            None => {
                stats
                    .liquidity_by_borrow_token
                    .insert(self.borrow_token.to_string(), self.available_borrow_amount);
            }
        }
    }
}

fn number(o: &Stored, by: SortField) -> Option<f64> {
    match by {
        SortField::InterestRate => Some(o.interest_rate),
        SortField::AvailableBorrowAmount => Some(o.available_borrow_amount),
        SortField::MaxOpenLtv => Some(o.max_open_ltv),
        SortField::LiquidationLtv => Some(o.liquidation_ltv),
        _ => None,
    }
}

fn text(o: &Stored, by: SortField) -> &str {
    match by {
        SortField::OfferType => o.offer_type.as_str(),
        SortField::CollateralToken => &o.collateral_token,
        SortField::BorrowToken => &o.borrow_token,
        _ => &o.id,
    }
}

/// `i64` order as `u64` order.
pub(crate) fn time_bits(t: i64) -> u64 {
    (t as u64) ^ (1 << 63)
}

/// `f64::total_cmp` order as `u64` order.
pub(crate) fn number_bits(f: f64) -> u64 {
    let bits = f.to_bits();
    if bits >> 63 == 1 {
        !bits
    } else {
        bits | (1 << 63)
    }
}

/// The sort key of a numeric or time field as a `u64` in the domain's key
/// order; `None` for text fields.
pub(crate) fn sort_key(o: &Stored, by: SortField) -> Option<u64> {
    match by {
        SortField::CreatedTimestamp => Some(time_bits(o.created().map_or(0, Timestamp::as_nanos))),
        SortField::UpdatedTimestamp => Some(time_bits(o.updated().map_or(0, Timestamp::as_nanos))),
        _ => number(o, by).map(number_bits),
    }
}

/// A page token's key as a `u64` key of `by`, when its kind is `by`'s.
pub(crate) fn token_key(by: SortField, v: &SortValue) -> Option<u64> {
    match (by, v) {
        (SortField::CreatedTimestamp | SortField::UpdatedTimestamp, SortValue::Time(t)) => {
            Some(time_bits(*t))
        }
        (
            SortField::InterestRate
            | SortField::AvailableBorrowAmount
            | SortField::MaxOpenLtv
            | SortField::LiquidationLtv,
            SortValue::Number(f),
        ) => Some(number_bits(*f)),
        _ => None,
    }
}

/// `compare_offers` on stored offers.
pub(crate) fn compare(a: &Stored, b: &Stored, by: SortField, order: SortOrder) -> Ordering {
    let by_key = match (sort_key(a, by), sort_key(b, by)) {
        (Some(x), Some(y)) => x.cmp(&y),
        _ => text(a, by).as_bytes().cmp(text(b, by).as_bytes()),
    };
    let by_key = match order {
        SortOrder::Asc => by_key,
        SortOrder::Desc => by_key.reverse(),
    };
    by_key.then_with(|| a.id.as_bytes().cmp(b.id.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use offer_domain::StatsQuery;
    use offer_domain::query::compare_offers;

    /// A book with every optional field both set and unset, ties, zero and
    /// negative-zero amounts.
    fn offers() -> Vec<MarginOffer> {
        let mut book = store_bench::book(400, 3);
        for (i, o) in book.iter_mut().enumerate() {
            match i % 7 {
                0 => o.available_borrow_amount = 0.0,
                1 => o.available_borrow_amount = -0.0,
                2 => o.interest_rate = 0.1,
                3 => {
                    o.created_timestamp = None;
                    o.source = None;
                }
                4 => o.updated_timestamp = Some(Timestamp(i as i64)),
                5 => o.last_borrowed_timestamp = Some(Timestamp(-(i as i64))),
                _ => o.term_days = Some(0),
            }
        }
        book
    }

    fn filters(book: &[MarginOffer]) -> Vec<OfferFilter> {
        let o = &book[5];
        vec![
            OfferFilter::default(),
            OfferFilter {
                borrow_token: Some(o.borrow_token.clone()),
                min_interest_rate: Some(0.1),
                ..Default::default()
            },
            OfferFilter {
                collateral_token: Some(o.collateral_token.clone()),
                offer_type: Some(o.offer_type),
                max_borrow_amount: Some(500_000.0),
                ..Default::default()
            },
            OfferFilter {
                lender_address: o.lender_address.clone().or(Some("x".into())),
                source: Some("source-1".into()),
                ..Default::default()
            },
            OfferFilter {
                liquidity_source: Some("marginfi".into()),
                interest_model: Some(InterestModel::Fixed),
                min_max_open_ltv: Some(0.5),
                max_max_open_ltv: Some(0.7),
                created_after: Some(Timestamp(1)),
                updated_before: Some(Timestamp(200)),
                ..Default::default()
            },
        ]
    }

    #[test]
    fn mirrors_agree_with_the_domain() {
        let book = offers();
        let mut strings = Interner::default();
        let stored: Vec<Stored> = book.iter().map(|o| Stored::new(o, &mut strings)).collect();
        let now = Timestamp::now();
        for (o, s) in book.iter().zip(&stored) {
            assert_eq!(&s.to_offer(), o);
            assert_eq!(s.expires_at(), o.expires_at());
            for by in SortField::ALL {
                assert_eq!(s.sort_value(by), by.key(o), "{by}");
            }
        }
        for f in filters(&book) {
            for active_only in [false, true] {
                let q = ListQuery {
                    filter: f.clone(),
                    active_only,
                    ..Default::default()
                };
                for (o, s) in book.iter().zip(&stored) {
                    assert_eq!(s.matches(&f), f.matches(o), "{f:?}");
                    assert_eq!(s.admitted_by(&q, now), q.admits(o, now));
                }
            }
        }
        let mut ours = Stats::default();
        let mut theirs = Stats::default();
        for (o, s) in book.iter().zip(&stored) {
            if StatsQuery::default().admits(o, now) {
                s.add_to(&mut ours);
                theirs.add(o);
            }
        }
        assert_eq!(ours, theirs);
    }

    #[test]
    fn order_agrees_with_compare_offers() {
        let book = offers();
        let mut strings = Interner::default();
        let stored: Vec<Stored> = book.iter().map(|o| Stored::new(o, &mut strings)).collect();
        for by in SortField::ALL {
            for order in [SortOrder::Asc, SortOrder::Desc] {
                for (i, (a, sa)) in book.iter().zip(&stored).enumerate().step_by(3) {
                    for (b, sb) in book.iter().zip(&stored).skip(i % 5).step_by(7) {
                        assert_eq!(
                            compare(sa, sb, by, order),
                            compare_offers(a, b, by, order),
                            "{by} {order:?} {} {}",
                            a.id,
                            b.id
                        );
                    }
                }
            }
        }
        for f in [
            0.0,
            -0.0,
            1.5,
            -1.5,
            f64::INFINITY,
            f64::NEG_INFINITY,
            f64::NAN,
        ] {
            for g in [0.0, -0.0, 1.5, -1.5, f64::INFINITY, f64::NEG_INFINITY] {
                assert_eq!(number_bits(f).cmp(&number_bits(g)), f.total_cmp(&g));
            }
        }
        for (a, b) in [(i64::MIN, 0), (-1, 0), (0, 1), (i64::MAX - 1, i64::MAX)] {
            assert!(time_bits(a) < time_bits(b));
        }
    }

    #[test]
    fn interner_shares_and_forgets() {
        let mut strings = Interner::default();
        let a = strings.intern("mint");
        let b = strings.intern("mint");
        assert!(Arc::ptr_eq(&a, &b));
        drop((a, b));
        for i in 0..3000 {
            strings.intern(&format!("s{i}"));
        }
        assert!(strings.strings.len() < 2048, "{}", strings.strings.len());
    }
}
