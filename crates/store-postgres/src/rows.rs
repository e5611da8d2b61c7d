//! Offers and changes to and from rows, and the statements that touch them.

use crate::error::DbError;
use futures::future::try_join_all;
use offer_domain::write::{PlannedWrite, WritePlan};
use offer_domain::{
    Change, ChangeType, InterestModel, MarginOffer, OfferType, Revision, StoreError, StoreResult,
    Timestamp, WriteContext,
};
use std::collections::HashMap;
use store_sql::{OFFER_COLS, SqlValue, Where, offer_cols};
use tokio_postgres::Row;
use tokio_postgres::types::ToSql;

/// Writes sent to the server at once: tokio-postgres pipelines the
/// statements of concurrently polled futures on one connection, so a large
/// plan costs few round trips without building giant statements.
const PIPELINE: usize = 256;

pub(crate) type Param = Box<dyn ToSql + Sync + Send>;

/// The driver's form of the shared builder's parameters.
pub(crate) fn params(values: &[SqlValue]) -> Vec<Param> {
    values
        .iter()
        .map(|v| -> Param {
            match v {
                SqlValue::Real(x) => Box::new(*x),
                SqlValue::Integer(x) => Box::new(*x),
                SqlValue::Text(x) => Box::new(x.clone()),
            }
        })
        .collect()
}

pub(crate) fn refs(params: &[Param]) -> Vec<&(dyn ToSql + Sync)> {
    params
        .iter()
        .map(|p| p.as_ref() as &(dyn ToSql + Sync))
        .collect()
}

fn bad(what: &str, got: &str) -> StoreError {
    StoreError::Internal(format!("stored {what} {got:?} is not valid"))
}

fn get<'a, T: tokio_postgres::types::FromSql<'a>>(row: &'a Row, idx: usize) -> StoreResult<T> {
    row.try_get(idx)
        .map_err(|e| StoreError::Internal(format!("postgres: reading column {idx}: {e}")))
}

/// Reads an offer from the [`OFFER_COLS`] starting at column `base`.
pub(crate) fn offer_from_row(row: &Row, base: usize) -> StoreResult<MarginOffer> {
    let offer_type: String = get(row, base + 1)?;
    let interest_model: String = get(row, base + 8)?;
    Ok(MarginOffer {
        id: get(row, base)?,
        offer_type: offer_type
            .parse::<OfferType>()
            .map_err(|()| bad("offer_type", &offer_type))?,
        collateral_token: get(row, base + 2)?,
        borrow_token: get(row, base + 3)?,
        available_borrow_amount: get(row, base + 4)?,
        max_open_ltv: get(row, base + 5)?,
        liquidation_ltv: get(row, base + 6)?,
        interest_rate: get(row, base + 7)?,
        interest_model: interest_model
            .parse::<InterestModel>()
            .map_err(|()| bad("interest_model", &interest_model))?,
        term_days: get(row, base + 9)?,
        liquidity_source: get(row, base + 10)?,
        lender_address: get(row, base + 11)?,
        last_borrowed_timestamp: get::<Option<i64>>(row, base + 12)?.map(Timestamp),
        created_timestamp: get::<Option<i64>>(row, base + 13)?.map(Timestamp),
        updated_timestamp: get::<Option<i64>>(row, base + 14)?.map(Timestamp),
        source: get(row, base + 15)?,
    })
}

pub(crate) fn offers_from_rows(rows: &[Row]) -> StoreResult<Vec<MarginOffer>> {
    rows.iter().map(|r| offer_from_row(r, 0)).collect()
}

/// The current state of the given ids (absent ones are simply missing).
pub(crate) async fn offers_by_id(
    tx: &deadpool_postgres::Transaction<'_>,
    ids: &[String],
) -> Result<HashMap<String, MarginOffer>, DbError> {
    // PostgreSQL text cannot hold NUL, so no stored id contains one; leave
    // such ids out so the planner reports them as invalid, naming the field.
    let ids: Vec<&str> = ids
        .iter()
        .map(String::as_str)
        .filter(|id| !id.contains('\0'))
        .collect();
    if ids.is_empty() {
        return Ok(HashMap::new());
    }
    let stmt = tx
        .prepare_cached(concat!(
            "SELECT ",
            offer_cols!(),
            " FROM offers WHERE id = ANY($1)"
        ))
        .await?;
    let rows = tx.query(&stmt, &[&ids]).await?;
    Ok(offers_from_rows(&rows)?
        .into_iter()
        .map(|o| (o.id.clone(), o))
        .collect())
}

/// The offers matching `w`.
pub(crate) async fn offers_where(
    tx: &deadpool_postgres::Transaction<'_>,
    w: &Where,
) -> Result<Vec<MarginOffer>, DbError> {
    let p = params(&w.params);
    let rows = tx
        .query(
            &format!("SELECT {OFFER_COLS} FROM offers{}", w.sql()),
            &refs(&p),
        )
        .await?;
    Ok(offers_from_rows(&rows)?)
}

/// Applies `plan` under `revision` and logs one change per write. The caller
/// holds the `meta` row lock and sets the counter.
pub(crate) async fn apply_plan(
    tx: &deadpool_postgres::Transaction<'_>,
    plan: &WritePlan,
    ctx: &WriteContext,
    now: Timestamp,
    revision: Revision,
) -> Result<(), DbError> {
    let operation_id = if ctx.operation_id.is_empty() {
        uuid::Uuid::new_v4().to_string()
    } else {
        ctx.operation_id.clone()
    };
    let upsert = tx
        .prepare_cached(concat!(
            "INSERT INTO offers (",
            offer_cols!(),
            ", expires_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17) \
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
        .await?;
    let delete = tx
        .prepare_cached("DELETE FROM offers WHERE id = $1")
        .await?;
    let log = tx
        .prepare_cached(concat!(
            "INSERT INTO changes (revision, seq, change_type, timestamp, origin, operation_id, ",
            offer_cols!(),
            ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, \
             $15, $16, $17, $18, $19, $20, $21, $22)"
        ))
        .await?;
    let ts = now.as_nanos();
    let writes: Vec<(i32, &PlannedWrite)> = plan
        .writes
        .iter()
        .enumerate()
        .map(|(i, w)| (i32::try_from(i).unwrap_or(i32::MAX), w))
        .collect();
    for chunk in writes.chunks(PIPELINE) {
        try_join_all(chunk.iter().map(|(seq, w)| {
            let (upsert, delete, log, operation_id) = (&upsert, &delete, &log, &operation_id);
            async move {
                let o = &w.offer;
                let offer_type = o.offer_type.as_str();
                let interest_model = o.interest_model.as_str();
                let last_borrowed = o.last_borrowed_timestamp.map(Timestamp::as_nanos);
                let created = o.created_timestamp.map(Timestamp::as_nanos);
                let updated = o.updated_timestamp.map(Timestamp::as_nanos);
                let cols: [&(dyn ToSql + Sync); 16] = [
                    &o.id,
                    &offer_type,
                    &o.collateral_token,
                    &o.borrow_token,
                    &o.available_borrow_amount,
                    &o.max_open_ltv,
                    &o.liquidation_ltv,
                    &o.interest_rate,
                    &interest_model,
                    &o.term_days,
                    &o.liquidity_source,
                    &o.lender_address,
                    &last_borrowed,
                    &created,
                    &updated,
                    &o.source,
                ];
                match w.change_type {
                    ChangeType::Deleted => {
                        tx.execute(delete, &[&o.id]).await?;
                    }
                    ChangeType::Created | ChangeType::Updated | ChangeType::Overwritten => {
                        let expires_at = o.expires_at().map(Timestamp::as_nanos);
                        let mut all: Vec<&(dyn ToSql + Sync)> = Vec::with_capacity(17);
                        all.extend_from_slice(&cols);
                        all.push(&expires_at);
                        tx.execute(upsert, &all).await?;
                    }
                }
                let wire = w.change_type.wire_value();
                let mut all: Vec<&(dyn ToSql + Sync)> = Vec::with_capacity(22);
                all.extend_from_slice(&[&revision, seq, &wire, &ts, &ctx.origin, operation_id]);
                all.extend_from_slice(&cols);
                tx.execute(log, &all).await?;
                Ok::<(), tokio_postgres::Error>(())
            }
        }))
        .await?;
    }
    Ok(())
}

/// Deletes whole revisions from the front of the change log while at least
/// `keep` changes remain and they are older than `keep_after`, recording the
/// highest pruned revision so `changes_since` can tell a pruned range from
/// an empty one. Runs inside a write transaction (holding the meta lock).
pub(crate) async fn prune_changes(
    tx: &deadpool_postgres::Transaction<'_>,
    keep: usize,
    keep_after: Timestamp,
) -> Result<u64, DbError> {
    let offset = i64::try_from(keep.saturating_sub(1)).unwrap_or(i64::MAX);
    // The revision of the keep-th newest change: everything before it goes.
    let cutoff: Option<i64> = tx
        .query_opt(
            "SELECT revision FROM changes ORDER BY revision DESC, seq DESC LIMIT 1 OFFSET $1",
            &[&offset],
        )
        .await?
        .map(|r| r.try_get(0))
        .transpose()?;
    let Some(cutoff) = cutoff else {
        return Ok(0);
    };
    // The first revision young enough to keep.
    let young: Option<i64> = tx
        .query_opt(
            "SELECT revision FROM changes WHERE revision < $1 AND timestamp > $2 \
             ORDER BY revision, seq LIMIT 1",
            &[&cutoff, &keep_after.as_nanos()],
        )
        .await?
        .map(|r| r.try_get(0))
        .transpose()?;
    let cutoff = young.map_or(cutoff, |y| y.min(cutoff));
    let deleted = tx
        .execute("DELETE FROM changes WHERE revision < $1", &[&cutoff])
        .await?;
    if deleted > 0 {
        tx.execute(
            "UPDATE meta SET pruned_through = GREATEST(pruned_through, $1)",
            &[&(cutoff - 1)],
        )
        .await?;
    }
    Ok(deleted)
}

/// `(revision, pruned_through)` as the transaction sees them.
pub(crate) async fn meta(
    tx: &deadpool_postgres::Transaction<'_>,
) -> Result<(Revision, Revision), DbError> {
    let row = tx
        .query_one("SELECT revision, pruned_through FROM meta", &[])
        .await?;
    Ok((row.try_get(0)?, row.try_get(1)?))
}

/// Changes matching `sql_tail`, as `(seq, change)` in log order.
pub(crate) async fn read_changes(
    tx: &deadpool_postgres::Transaction<'_>,
    sql_tail: &str,
    args: &[&(dyn ToSql + Sync)],
) -> Result<Vec<(i32, Change)>, DbError> {
    let stmt = tx
        .prepare_cached(&format!(
            "SELECT revision, seq, change_type, timestamp, origin, operation_id, {OFFER_COLS} \
             FROM changes {sql_tail}"
        ))
        .await?;
    let rows = tx.query(&stmt, args).await?;
    let mut out = Vec::with_capacity(rows.len());
    for r in &rows {
        let wire: i32 = get(r, 2)?;
        let change_type = ChangeType::from_wire_value(wire).ok_or_else(|| {
            StoreError::Internal(format!("stored change_type {wire} is not valid"))
        })?;
        out.push((
            get(r, 1)?,
            Change {
                revision: get(r, 0)?,
                change_type,
                timestamp: Timestamp(get(r, 3)?),
                origin: get(r, 4)?,
                operation_id: get(r, 5)?,
                offer: offer_from_row(r, 6)?,
            },
        ));
    }
    Ok(out)
}

/// Converts a limit or offset for binding.
pub(crate) fn sql_int(n: usize) -> StoreResult<i64> {
    i64::try_from(n).map_err(|_| StoreError::Internal(format!("{n} does not fit BIGINT")))
}
