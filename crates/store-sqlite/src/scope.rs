//! An overwrite's scope in compact form.
//!
//! An overwrite compares every offer of its scope with the request and
//! writes back only what changed, so most stored offers are read, compared
//! and dropped. Building an owned [`MarginOffer`] per row (six strings each)
//! and a map of owned ids cost more than the comparison itself; here every
//! string of the scope goes into one buffer, and only the offers the
//! overwrite deletes become owned offers.

use crate::error::map_err;
use crate::rows::{OFFER_COLS, Where, enum_column, values};
use offer_domain::write::{OverwriteScope, StoredOffer};
use offer_domain::{InterestModel, MarginOffer, OfferType, StoreResult, Timestamp};
use rusqlite::types::ValueRef;
use rusqlite::{Connection, Row, params_from_iter};
use std::collections::HashMap;
use std::ops::Range;

/// One stored offer; its strings are ranges of [`ScopeRows::text`].
pub(crate) struct StoredRow {
    id: Range<usize>,
    offer_type: OfferType,
    collateral_token: Range<usize>,
    borrow_token: Range<usize>,
    available_borrow_amount: f64,
    max_open_ltv: f64,
    liquidation_ltv: f64,
    interest_rate: f64,
    interest_model: InterestModel,
    term_days: Option<i32>,
    liquidity_source: Range<usize>,
    lender_address: Option<Range<usize>>,
    last_borrowed_timestamp: Option<Timestamp>,
    created_timestamp: Option<Timestamp>,
    updated_timestamp: Option<Timestamp>,
    source: Option<Range<usize>>,
}

/// The stored offers of a scope, as read.
pub(crate) struct ScopeRows {
    text: String,
    rows: Vec<StoredRow>,
}

/// How the scope is read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ScopeRead {
    /// Through the filter's index, each match then looked up by id.
    Index,
    /// A scan of the whole table in id order, testing the filter on each row.
    Scan,
}

/// Requests smaller than this read their scope through the index without
/// counting the table: the most a scan could save them (a fraction of a
/// microsecond per offer) is less than counting a large table costs.
pub(crate) const SCAN_MIN_REQUEST: usize = 1024;

impl ScopeRead {
    /// Chooses for a scope of about `expected` offers (the request's size:
    /// an overwrite usually replaces about as many as it brings). Reading
    /// through an index costs a primary-key search per match, about twice
    /// what a scan spends per row, so a scope holding half the table or
    /// more reads faster by a scan. Counting the table only sums the cells
    /// of its leaf pages.
    pub(crate) fn choose(conn: &Connection, w: &Where, expected: usize) -> StoreResult<Self> {
        if w.sql().is_empty() || expected < SCAN_MIN_REQUEST {
            return Ok(ScopeRead::Index);
        }
        let table_rows: i64 = conn
            .prepare_cached("SELECT COUNT(*) FROM offers")
            .and_then(|mut s| s.query_row([], |r| r.get(0)))
            .map_err(map_err)?;
        let expected = i64::try_from(expected).unwrap_or(i64::MAX);
        Ok(if expected.saturating_mul(2) >= table_rows {
            ScopeRead::Scan
        } else {
            ScopeRead::Index
        })
    }

    /// The statement reading the offers `w` selects this way.
    pub(crate) fn select_sql(self, w: &Where) -> String {
        let table = match self {
            ScopeRead::Index => "offers",
            // The table's own B-tree (a WITHOUT ROWID table's primary key
            // is this index); `NOT INDEXED` would still use the filter's.
            ScopeRead::Scan => "offers INDEXED BY sqlite_autoindex_offers_1",
        };
        format!("SELECT {OFFER_COLS} FROM {table}{}", w.sql())
    }
}

impl ScopeRows {
    /// Reads every offer `w` selects; `expected` sizes the buffers.
    pub(crate) fn load(
        conn: &Connection,
        w: &Where,
        read: ScopeRead,
        expected: usize,
    ) -> StoreResult<ScopeRows> {
        let mut stmt = conn.prepare_cached(&read.select_sql(w)).map_err(map_err)?;
        let mut rows = stmt
            .query(params_from_iter(values(&w.params)))
            .map_err(map_err)?;
        let mut scope = ScopeRows {
            // Ids and tokens are short: 64 bytes of text per offer is ample.
            text: String::with_capacity(expected.saturating_mul(64)),
            rows: Vec::with_capacity(expected),
        };
        while let Some(row) = rows.next().map_err(map_err)? {
            let row = scope.push_row(row).map_err(map_err)?;
            scope.rows.push(row);
        }
        Ok(scope)
    }

    /// Reads the [`OFFER_COLS`] of `row`, appending its strings to `text`.
    fn push_row(&mut self, row: &Row<'_>) -> rusqlite::Result<StoredRow> {
        let text = &mut self.text;
        let mut put = |idx: usize| -> rusqlite::Result<Range<usize>> {
            let s = row.get_ref(idx)?.as_str()?;
            let start = text.len();
            text.push_str(s);
            Ok(start..text.len())
        };
        let id = put(0)?;
        let collateral_token = put(2)?;
        let borrow_token = put(3)?;
        let liquidity_source = put(10)?;
        let mut put_opt = |idx: usize| -> rusqlite::Result<Option<Range<usize>>> {
            match row.get_ref(idx)? {
                ValueRef::Null => Ok(None),
                _ => put(idx).map(Some),
            }
        };
        let lender_address = put_opt(11)?;
        let source = put_opt(15)?;
        let timestamp =
            |idx| -> rusqlite::Result<_> { Ok(row.get::<_, Option<i64>>(idx)?.map(Timestamp)) };
        Ok(StoredRow {
            id,
            offer_type: enum_column(row, 1, "offer_type")?,
            collateral_token,
            borrow_token,
            available_borrow_amount: row.get(4)?,
            max_open_ltv: row.get(5)?,
            liquidation_ltv: row.get(6)?,
            interest_rate: row.get(7)?,
            interest_model: enum_column(row, 8, "interest_model")?,
            term_days: row.get(9)?,
            liquidity_source,
            lender_address,
            last_borrowed_timestamp: timestamp(12)?,
            created_timestamp: timestamp(13)?,
            updated_timestamp: timestamp(14)?,
            source,
        })
    }

    /// The scope, ready to be taken from by the overwrite planner.
    pub(crate) fn scope(&self) -> CompactScope<'_> {
        CompactScope {
            rows: self,
            position: None,
            next: 0,
            taken: vec![false; self.rows.len()],
        }
    }

    fn id(&self, i: usize) -> Option<&str> {
        self.rows.get(i).and_then(|r| self.text.get(r.id.clone()))
    }

    fn get(&self, i: usize) -> Option<Stored<'_>> {
        self.rows.get(i).map(|row| Stored {
            row,
            text: &self.text,
        })
    }
}

/// One stored offer of a [`ScopeRows`].
#[derive(Clone, Copy)]
pub(crate) struct Stored<'a> {
    row: &'a StoredRow,
    text: &'a str,
}

impl<'a> Stored<'a> {
    fn str(&self, r: &Range<usize>) -> &'a str {
        // Ranges are made by `push_row` over this text; "" cannot happen.
        self.text.get(r.clone()).unwrap_or_default()
    }

    fn opt_str(&self, r: &Option<Range<usize>>) -> Option<&'a str> {
        r.as_ref().map(|r| self.str(r))
    }

    pub(crate) fn collateral_token(&self) -> &'a str {
        self.str(&self.row.collateral_token)
    }

    pub(crate) fn borrow_token(&self) -> &'a str {
        self.str(&self.row.borrow_token)
    }

    pub(crate) fn available_borrow_amount(&self) -> f64 {
        self.row.available_borrow_amount
    }

    pub(crate) fn interest_rate(&self) -> f64 {
        self.row.interest_rate
    }

    pub(crate) fn source(&self) -> Option<&'a str> {
        self.opt_str(&self.row.source)
    }

    pub(crate) fn lender_address(&self) -> Option<&'a str> {
        self.opt_str(&self.row.lender_address)
    }

    /// [`MarginOffer::expires_at`] of the stored state.
    pub(crate) fn expires_at(&self) -> Option<Timestamp> {
        match (self.row.term_days, self.row.created_timestamp) {
            (Some(days), Some(created)) => Some(created.saturating_add_days(days)),
            _ => None,
        }
    }

    pub(crate) fn to_offer(self) -> MarginOffer {
        let r = self.row;
        MarginOffer {
            id: self.str(&r.id).to_owned(),
            offer_type: r.offer_type,
            collateral_token: self.str(&r.collateral_token).to_owned(),
            borrow_token: self.str(&r.borrow_token).to_owned(),
            available_borrow_amount: r.available_borrow_amount,
            max_open_ltv: r.max_open_ltv,
            liquidation_ltv: r.liquidation_ltv,
            interest_rate: r.interest_rate,
            interest_model: r.interest_model,
            term_days: r.term_days,
            liquidity_source: self.str(&r.liquidity_source).to_owned(),
            lender_address: self.opt_str(&r.lender_address).map(str::to_owned),
            last_borrowed_timestamp: r.last_borrowed_timestamp,
            created_timestamp: r.created_timestamp,
            updated_timestamp: r.updated_timestamp,
            source: self.opt_str(&r.source).map(str::to_owned),
        }
    }
}

impl StoredOffer for Stored<'_> {
    /// Field for field [`MarginOffer::same_content`] (a unit test holds the
    /// two equal).
    fn same_content(&self, o: &MarginOffer) -> bool {
        let r = self.row;
        self.str(&r.id) == o.id
            && r.offer_type == o.offer_type
            && self.str(&r.collateral_token) == o.collateral_token
            && self.str(&r.borrow_token) == o.borrow_token
            && r.available_borrow_amount.to_bits() == o.available_borrow_amount.to_bits()
            && r.max_open_ltv.to_bits() == o.max_open_ltv.to_bits()
            && r.liquidation_ltv.to_bits() == o.liquidation_ltv.to_bits()
            && r.interest_rate.to_bits() == o.interest_rate.to_bits()
            && r.interest_model == o.interest_model
            && r.term_days == o.term_days
            && self.str(&r.liquidity_source) == o.liquidity_source
            && self.opt_str(&r.lender_address) == o.lender_address.as_deref()
            && r.last_borrowed_timestamp == o.last_borrowed_timestamp
            && self.opt_str(&r.source) == o.source.as_deref()
    }

    fn created_timestamp(&self) -> Option<Timestamp> {
        self.row.created_timestamp
    }
}

/// A [`ScopeRows`] being planned over: ids found by position, taken rows
/// marked.
pub(crate) struct CompactScope<'a> {
    rows: &'a ScopeRows,
    /// Row by id; built on the first id that is not where [`Self::next`]
    /// guesses.
    position: Option<HashMap<&'a str, usize>>,
    /// The row after the last one taken.
    next: usize,
    taken: Vec<bool>,
}

impl<'a> CompactScope<'a> {
    /// The row of `id`. Requests often list offers in the order the scope
    /// is read (by id, within one source), so the row after `*cursor` is
    /// tried first, and only a miss hashes (and builds the map once).
    fn find(&mut self, cursor: &mut usize, id: &str) -> Option<usize> {
        let rows = self.rows;
        let i = if rows.id(*cursor) == Some(id) {
            *cursor
        } else {
            let position = self.position.get_or_insert_with(|| {
                (0..rows.rows.len())
                    .filter_map(|i| rows.id(i).map(|id| (id, i)))
                    .collect()
            });
            *position.get(id)?
        };
        *cursor = i + 1;
        Some(i)
    }

    /// The ids of `ids` that are not in the scope.
    pub(crate) fn ids_not_in<'r>(&mut self, ids: impl Iterator<Item = &'r str>) -> Vec<&'r str> {
        let mut cursor = 0;
        ids.filter(|id| self.find(&mut cursor, id).is_none())
            .collect()
    }
}

impl<'a> OverwriteScope for CompactScope<'a> {
    type Stored = Stored<'a>;

    fn take(&mut self, id: &str) -> Option<Stored<'a>> {
        let mut next = self.next;
        let i = self.find(&mut next, id)?;
        self.next = next;
        let taken = self.taken.get_mut(i)?;
        if *taken {
            return None;
        }
        *taken = true;
        self.rows.get(i)
    }

    fn into_untaken(self) -> Vec<MarginOffer> {
        let rows = self.rows;
        self.taken
            .iter()
            .enumerate()
            .filter(|(_, taken)| !**taken)
            .filter_map(|(i, _)| rows.get(i).map(Stored::to_offer))
            .collect()
    }
}
