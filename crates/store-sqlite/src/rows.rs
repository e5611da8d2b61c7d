//! Offers and changes to and from rows, and the statements that touch them.

use crate::error::map_err;
use offer_domain::write::{PlannedWrite, WritePlan};
use offer_domain::{
    Change, ChangeType, InterestModel, MarginOffer, OfferFilter, OfferType, Revision, SortField,
    SortOrder, StoreError, StoreResult, Timestamp, WriteContext, query::SortValue,
};
use rusqlite::types::{Type, Value};
use rusqlite::{Connection, OptionalExtension, Row, params};

/// The offer columns, in the order [`offer_from_row`] reads them; a macro so
/// hot statements are `concat!`-ed at compile time rather than formatted per call.
macro_rules! offer_cols {
    () => {
        "id, offer_type, collateral_token, borrow_token, available_borrow_amount, \
         max_open_ltv, liquidation_ltv, interest_rate, interest_model, term_days, \
         liquidity_source, lender_address, last_borrowed_timestamp, created_timestamp, \
         updated_timestamp, source"
    };
}

pub(crate) const OFFER_COLS: &str = offer_cols!();

const OFFER_COL_COUNT: usize = 16;

fn conversion(idx: usize, what: &str, got: &str) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(
        idx,
        Type::Text,
        format!("stored {what} {got:?} is not valid").into(),
    )
}

/// Reads an offer from the [`OFFER_COLS`] starting at column `base`.
pub(crate) fn offer_from_row(row: &Row<'_>, base: usize) -> rusqlite::Result<MarginOffer> {
    let offer_type: String = row.get(base + 1)?;
    let interest_model: String = row.get(base + 8)?;
    Ok(MarginOffer {
        id: row.get(base)?,
        offer_type: offer_type
            .parse::<OfferType>()
            .map_err(|()| conversion(base + 1, "offer_type", &offer_type))?,
        collateral_token: row.get(base + 2)?,
        borrow_token: row.get(base + 3)?,
        available_borrow_amount: row.get(base + 4)?,
        max_open_ltv: row.get(base + 5)?,
        liquidation_ltv: row.get(base + 6)?,
        interest_rate: row.get(base + 7)?,
        interest_model: interest_model
            .parse::<InterestModel>()
            .map_err(|()| conversion(base + 8, "interest_model", &interest_model))?,
        term_days: row.get(base + 9)?,
        liquidity_source: row.get(base + 10)?,
        lender_address: row.get(base + 11)?,
        last_borrowed_timestamp: row.get::<_, Option<i64>>(base + 12)?.map(Timestamp),
        created_timestamp: row.get::<_, Option<i64>>(base + 13)?.map(Timestamp),
        updated_timestamp: row.get::<_, Option<i64>>(base + 14)?.map(Timestamp),
        source: row.get(base + 15)?,
    })
}

/// The current state of one offer, as seen by `conn`'s transaction.
pub(crate) fn get_offer(conn: &Connection, id: &str) -> StoreResult<Option<MarginOffer>> {
    let mut stmt = conn
        .prepare_cached(concat!(
            "SELECT ",
            offer_cols!(),
            " FROM offers WHERE id = ?1"
        ))
        .map_err(map_err)?;
    stmt.query_row([id], |r| offer_from_row(r, 0))
        .optional()
        .map_err(map_err)
}

fn meta(conn: &Connection, key: &str) -> StoreResult<i64> {
    conn.prepare_cached("SELECT value FROM meta WHERE key = ?1")
        .and_then(|mut s| s.query_row([key], |r| r.get(0)))
        .map_err(map_err)
}

fn set_meta(conn: &Connection, key: &str, value: i64) -> StoreResult<()> {
    conn.prepare_cached("UPDATE meta SET value = ?2 WHERE key = ?1")
        .and_then(|mut s| s.execute(params![key, value]))
        .map_err(map_err)?;
    Ok(())
}

/// The revision of the last commit.
pub(crate) fn current_revision(conn: &Connection) -> StoreResult<Revision> {
    meta(conn, "revision")
}

/// The highest revision whose changes may have been pruned (0: none).
pub(crate) fn pruned_through(conn: &Connection) -> StoreResult<Revision> {
    meta(conn, "pruned_through")
}

/// Applies `plan` under the next revision and logs one change per write.
/// Returns the revision the caller reports: the new one, or the current one
/// when the plan is empty (nothing written, no revision taken).
pub(crate) fn apply_plan(
    conn: &Connection,
    plan: &WritePlan,
    ctx: &WriteContext,
    now: Timestamp,
) -> StoreResult<Revision> {
    let current = current_revision(conn)?;
    if plan.is_empty() {
        return Ok(current);
    }
    let revision = current + 1;
    let operation_id = if ctx.operation_id.is_empty() {
        uuid::Uuid::new_v4().to_string()
    } else {
        ctx.operation_id.clone()
    };
    let mut upsert = conn
        .prepare_cached(concat!(
            "INSERT INTO offers (",
            offer_cols!(),
            ", expires_at) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17) \
             ON CONFLICT (id) DO UPDATE SET \
             offer_type = excluded.offer_type, collateral_token = excluded.collateral_token, \
             borrow_token = excluded.borrow_token, \
             available_borrow_amount = excluded.available_borrow_amount, \
             max_open_ltv = excluded.max_open_ltv, liquidation_ltv = excluded.liquidation_ltv, \
             interest_rate = excluded.interest_rate, interest_model = excluded.interest_model, \
             term_days = excluded.term_days, liquidity_source = excluded.liquidity_source, \
             lender_address = excluded.lender_address, \
             last_borrowed_timestamp = excluded.last_borrowed_timestamp, \
             created_timestamp = excluded.created_timestamp, \
             updated_timestamp = excluded.updated_timestamp, source = excluded.source, \
             expires_at = excluded.expires_at"
        ))
        .map_err(map_err)?;
    let mut delete = conn
        .prepare_cached("DELETE FROM offers WHERE id = ?1")
        .map_err(map_err)?;
    let mut log = conn
        .prepare_cached(concat!(
            "INSERT INTO changes (revision, seq, change_type, timestamp, origin, operation_id, ",
            offer_cols!(),
            ") VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, \
             ?15, ?16, ?17, ?18, ?19, ?20, ?21, ?22)"
        ))
        .map_err(map_err)?;
    for (seq, PlannedWrite { change_type, offer }) in plan.writes.iter().enumerate() {
        let o = offer;
        let p = params![
            o.id,
            o.offer_type.as_str(),
            o.collateral_token,
            o.borrow_token,
            o.available_borrow_amount,
            o.max_open_ltv,
            o.liquidation_ltv,
            o.interest_rate,
            o.interest_model.as_str(),
            o.term_days,
            o.liquidity_source,
            o.lender_address,
            o.last_borrowed_timestamp.map(Timestamp::as_nanos),
            o.created_timestamp.map(Timestamp::as_nanos),
            o.updated_timestamp.map(Timestamp::as_nanos),
            o.source,
        ];
        debug_assert_eq!(p.len(), OFFER_COL_COUNT);
        match change_type {
            ChangeType::Deleted => {
                delete.execute([&o.id]).map_err(map_err)?;
            }
            ChangeType::Created | ChangeType::Updated | ChangeType::Overwritten => {
                let expires_at = o.expires_at().map(Timestamp::as_nanos);
                let mut all: Vec<&dyn rusqlite::ToSql> = Vec::with_capacity(OFFER_COL_COUNT + 1);
                all.extend_from_slice(p);
                all.push(&expires_at);
                upsert.execute(all.as_slice()).map_err(map_err)?;
            }
        }
        let seq = seq as i64;
        let wire = change_type.wire_value();
        let ts = now.as_nanos();
        let mut all: Vec<&dyn rusqlite::ToSql> = Vec::with_capacity(OFFER_COL_COUNT + 6);
        all.extend_from_slice(&[&revision, &seq, &wire, &ts, &ctx.origin, &operation_id]);
        all.extend_from_slice(p);
        log.execute(all.as_slice()).map_err(map_err)?;
    }
    set_meta(conn, "revision", revision)?;
    Ok(revision)
}

/// Deletes whole revisions from the front of the change log while at least
/// `keep` changes remain, recording the highest pruned revision so
/// `changes_since` can tell a pruned range from an empty one.
pub(crate) fn prune_changes(conn: &Connection, keep: usize) -> StoreResult<usize> {
    let offset = i64::try_from(keep.saturating_sub(1)).unwrap_or(i64::MAX);
    // The revision of the keep-th newest change: everything before it goes.
    let cutoff: Option<i64> = conn
        .prepare_cached(
            "SELECT revision FROM changes ORDER BY revision DESC, seq DESC LIMIT 1 OFFSET ?1",
        )
        .and_then(|mut s| s.query_row([offset], |r| r.get(0)).optional())
        .map_err(map_err)?;
    let Some(cutoff) = cutoff else {
        return Ok(0);
    };
    let deleted = conn
        .prepare_cached("DELETE FROM changes WHERE revision < ?1")
        .and_then(|mut s| s.execute([cutoff]))
        .map_err(map_err)?;
    if deleted > 0 && pruned_through(conn)? < cutoff - 1 {
        set_meta(conn, "pruned_through", cutoff - 1)?;
    }
    Ok(deleted)
}

fn change_type_from_wire(v: i32) -> rusqlite::Result<ChangeType> {
    ChangeType::from_wire_value(v).ok_or_else(|| {
        rusqlite::Error::FromSqlConversionFailure(
            2,
            Type::Integer,
            format!("stored change_type {v} is not valid").into(),
        )
    })
}

/// Changes with revision > `after`, in order, up to `limit` rows (see the
/// caller for how batches are kept to whole revisions).
pub(crate) fn read_changes(
    conn: &Connection,
    sql_tail: &str,
    args: &[&dyn rusqlite::ToSql],
) -> StoreResult<Vec<(i64, Change)>> {
    let mut stmt = conn
        .prepare_cached(&format!(
            "SELECT revision, seq, change_type, timestamp, origin, operation_id, {OFFER_COLS} \
             FROM changes {sql_tail}"
        ))
        .map_err(map_err)?;
    let rows = stmt
        .query_map(args, |r| {
            Ok((
                r.get::<_, i64>(1)?,
                Change {
                    revision: r.get(0)?,
                    change_type: change_type_from_wire(r.get(2)?)?,
                    timestamp: Timestamp(r.get(3)?),
                    origin: r.get(4)?,
                    operation_id: r.get(5)?,
                    offer: offer_from_row(r, 6)?,
                },
            ))
        })
        .map_err(map_err)?;
    rows.collect::<rusqlite::Result<Vec<_>>>().map_err(map_err)
}

/// A WHERE clause under construction: SQL text with `?` placeholders and
/// the values they bind. Only fixed fragments and column names from the
/// domain's enums go into the text; every value is a parameter.
#[derive(Default)]
pub(crate) struct Where {
    clauses: Vec<&'static str>,
    pub(crate) params: Vec<Value>,
}

impl Where {
    fn push(&mut self, clause: &'static str, values: impl IntoIterator<Item = Value>) {
        self.clauses.push(clause);
        self.params.extend(values);
    }

    /// ` WHERE a AND b`, or nothing.
    pub(crate) fn sql(&self) -> String {
        if self.clauses.is_empty() {
            String::new()
        } else {
            format!(" WHERE {}", self.clauses.join(" AND "))
        }
    }

    /// The conditions of [`OfferFilter::matches`].
    pub(crate) fn filter(&mut self, f: &OfferFilter) {
        let text = |s: &String| Value::Text(s.clone());
        if let Some(t) = f.offer_type {
            self.push("offer_type = ?", [Value::Text(t.as_str().into())]);
        }
        if let Some(v) = &f.collateral_token {
            self.push("collateral_token = ?", [text(v)]);
        }
        if let Some(v) = &f.borrow_token {
            self.push("borrow_token = ?", [text(v)]);
        }
        if let Some(m) = f.interest_model {
            self.push("interest_model = ?", [Value::Text(m.as_str().into())]);
        }
        if let Some(v) = &f.liquidity_source {
            self.push("liquidity_source = ?", [text(v)]);
        }
        if let Some(v) = &f.lender_address {
            self.push("lender_address = ?", [text(v)]);
        }
        if let Some(v) = &f.source {
            self.push("source = ?", [text(v)]);
        }
        let real = |clause, v: Option<f64>, w: &mut Where| {
            if let Some(v) = v {
                w.push(clause, [Value::Real(v)]);
            }
        };
        real("available_borrow_amount >= ?", f.min_borrow_amount, self);
        real("available_borrow_amount <= ?", f.max_borrow_amount, self);
        real("interest_rate >= ?", f.min_interest_rate, self);
        real("interest_rate <= ?", f.max_interest_rate, self);
        real("max_open_ltv >= ?", f.min_max_open_ltv, self);
        real("max_open_ltv <= ?", f.max_max_open_ltv, self);
        let time = |clause, v: Option<Timestamp>, w: &mut Where| {
            if let Some(v) = v {
                w.push(clause, [Value::Integer(v.as_nanos())]);
            }
        };
        time("created_timestamp >= ?", f.created_after, self);
        time("created_timestamp <= ?", f.created_before, self);
        time("updated_timestamp >= ?", f.updated_after, self);
        time("updated_timestamp <= ?", f.updated_before, self);
    }

    /// Hides offers expired at `now` ([`MarginOffer::is_expired`]).
    pub(crate) fn not_expired(&mut self, now: Timestamp) {
        self.push(
            "(expires_at IS NULL OR expires_at >= ?)",
            [Value::Integer(now.as_nanos())],
        );
    }

    pub(crate) fn active_only(&mut self) {
        self.push("available_borrow_amount > 0", []);
    }

    /// Rows strictly after `(key, id)` in the listing order.
    pub(crate) fn after(&mut self, by: SortField, order: SortOrder, key: &SortValue, id: &str) {
        let value = match (field_kind(by), key) {
            (Kind::Number, SortValue::Number(v)) => Value::Real(*v),
            (Kind::Time, SortValue::Time(v)) => Value::Integer(*v),
            (Kind::Text, SortValue::Text(v)) => Value::Text(v.clone()),
            (kind, key) => {
                // A key of another kind (only a hand-made token can carry
                // one) compares by kind rank in the domain's order: either
                // every row is after it or none is.
                let row_after = match order {
                    SortOrder::Asc => kind.rank() > kind_of(key).rank(),
                    SortOrder::Desc => kind.rank() < kind_of(key).rank(),
                };
                if !row_after {
                    self.push("0", []);
                }
                return;
            }
        };
        let clause = match (by, order) {
            // The column names come from the domain's fixed set, never from input.
            (SortField::CreatedTimestamp, SortOrder::Asc) => {
                "(created_timestamp > ? OR (created_timestamp = ? AND id > ?))"
            }
            (SortField::CreatedTimestamp, SortOrder::Desc) => {
                "(created_timestamp < ? OR (created_timestamp = ? AND id > ?))"
            }
            (SortField::UpdatedTimestamp, SortOrder::Asc) => {
                "(updated_timestamp > ? OR (updated_timestamp = ? AND id > ?))"
            }
            (SortField::UpdatedTimestamp, SortOrder::Desc) => {
                "(updated_timestamp < ? OR (updated_timestamp = ? AND id > ?))"
            }
            (SortField::InterestRate, SortOrder::Asc) => {
                "(interest_rate > ? OR (interest_rate = ? AND id > ?))"
            }
            (SortField::InterestRate, SortOrder::Desc) => {
                "(interest_rate < ? OR (interest_rate = ? AND id > ?))"
            }
            (SortField::AvailableBorrowAmount, SortOrder::Asc) => {
                "(available_borrow_amount > ? OR (available_borrow_amount = ? AND id > ?))"
            }
            (SortField::AvailableBorrowAmount, SortOrder::Desc) => {
                "(available_borrow_amount < ? OR (available_borrow_amount = ? AND id > ?))"
            }
            (SortField::MaxOpenLtv, SortOrder::Asc) => {
                "(max_open_ltv > ? OR (max_open_ltv = ? AND id > ?))"
            }
            (SortField::MaxOpenLtv, SortOrder::Desc) => {
                "(max_open_ltv < ? OR (max_open_ltv = ? AND id > ?))"
            }
            (SortField::LiquidationLtv, SortOrder::Asc) => {
                "(liquidation_ltv > ? OR (liquidation_ltv = ? AND id > ?))"
            }
            (SortField::LiquidationLtv, SortOrder::Desc) => {
                "(liquidation_ltv < ? OR (liquidation_ltv = ? AND id > ?))"
            }
            (SortField::OfferType, SortOrder::Asc) => {
                "(offer_type > ? OR (offer_type = ? AND id > ?))"
            }
            (SortField::OfferType, SortOrder::Desc) => {
                "(offer_type < ? OR (offer_type = ? AND id > ?))"
            }
            (SortField::CollateralToken, SortOrder::Asc) => {
                "(collateral_token > ? OR (collateral_token = ? AND id > ?))"
            }
            (SortField::CollateralToken, SortOrder::Desc) => {
                "(collateral_token < ? OR (collateral_token = ? AND id > ?))"
            }
            (SortField::BorrowToken, SortOrder::Asc) => {
                "(borrow_token > ? OR (borrow_token = ? AND id > ?))"
            }
            (SortField::BorrowToken, SortOrder::Desc) => {
                "(borrow_token < ? OR (borrow_token = ? AND id > ?))"
            }
            (SortField::Id, SortOrder::Asc) => "(id > ? OR (id = ? AND id > ?))",
            (SortField::Id, SortOrder::Desc) => "(id < ? OR (id = ? AND id > ?))",
        };
        self.push(clause, [value.clone(), value, Value::Text(id.to_owned())]);
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Number,
    Time,
    Text,
}

impl Kind {
    /// The order of kinds in `SortValue`'s comparison.
    fn rank(self) -> u8 {
        match self {
            Kind::Number => 0,
            Kind::Time => 1,
            Kind::Text => 2,
        }
    }
}

fn kind_of(v: &SortValue) -> Kind {
    match v {
        SortValue::Number(_) => Kind::Number,
        SortValue::Time(_) => Kind::Time,
        SortValue::Text(_) => Kind::Text,
    }
}

fn field_kind(by: SortField) -> Kind {
    match by {
        SortField::CreatedTimestamp | SortField::UpdatedTimestamp => Kind::Time,
        SortField::InterestRate
        | SortField::AvailableBorrowAmount
        | SortField::MaxOpenLtv
        | SortField::LiquidationLtv => Kind::Number,
        SortField::OfferType
        | SortField::CollateralToken
        | SortField::BorrowToken
        | SortField::Id => Kind::Text,
    }
}

/// `ORDER BY` for a listing: the sort column, then id ascending.
pub(crate) fn order_by(by: SortField, order: SortOrder) -> String {
    let dir = match order {
        SortOrder::Asc => "ASC",
        SortOrder::Desc => "DESC",
    };
    // as_str() is the column name, from a closed set.
    format!(" ORDER BY {} {dir}, id ASC", by.as_str())
}

/// Converts a limit or offset for binding.
pub(crate) fn sql_int(n: usize) -> StoreResult<i64> {
    i64::try_from(n).map_err(|_| StoreError::Internal(format!("{n} does not fit SQL INTEGER")))
}
