//! Offers and changes to and from rows, and the statements that touch them.

use crate::error::map_err;
use offer_domain::write::{PlannedWrite, WritePlan};
use offer_domain::{
    Change, ChangeType, InterestModel, MarginOffer, OfferType, Revision, StoreError, StoreResult,
    Timestamp, WriteContext,
};
use rusqlite::types::{Type, Value};
use rusqlite::{Connection, OptionalExtension, Row, params};
use store_sql::SqlValue;

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
/// `keep` changes remain and they are older than `keep_after`, recording the
/// highest pruned revision so `changes_since` can tell a pruned range from
/// an empty one.
pub(crate) fn prune_changes(
    conn: &Connection,
    keep: usize,
    keep_after: Timestamp,
) -> StoreResult<usize> {
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
    // The first revision young enough to keep: scanning from the oldest in
    // revision order touches only the rows about to be deleted.
    let young: Option<i64> = conn
        .prepare_cached(
            "SELECT revision FROM changes WHERE revision < ?1 AND timestamp > ?2 \
             ORDER BY revision, seq LIMIT 1",
        )
        .and_then(|mut s| s.query_row([cutoff, keep_after.0], |r| r.get(0)).optional())
        .map_err(map_err)?;
    let cutoff = young.map_or(cutoff, |y| y.min(cutoff));
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

// The filter, keyset and ordering SQL is shared with the PostgreSQL backend.
pub(crate) use store_sql::{Where, order_by};

/// The driver's form of the shared builder's parameters.
pub(crate) fn values(params: &[SqlValue]) -> Vec<Value> {
    params
        .iter()
        .map(|v| match v {
            SqlValue::Real(x) => Value::Real(*x),
            SqlValue::Integer(x) => Value::Integer(*x),
            SqlValue::Text(x) => Value::Text(x.clone()),
        })
        .collect()
}

/// Converts a limit or offset for binding.
pub(crate) fn sql_int(n: usize) -> StoreResult<i64> {
    i64::try_from(n).map_err(|_| StoreError::Internal(format!("{n} does not fit SQL INTEGER")))
}
