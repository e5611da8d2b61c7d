//! Offers and changes to and from rows, and the statements that touch them.

use crate::codec;
use crate::error::map_err;
use crate::scope::Stored;
use offer_domain::write::{PlannedWrite, StoredOffer, WritePlan};
use offer_domain::{
    Change, ChangeType, MarginOffer, Revision, StoreError, StoreResult, Timestamp, WriteContext,
};
use rusqlite::types::{Type, Value};
use rusqlite::{CachedStatement, Connection, OptionalExtension, Row, Statement, params};
use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet};
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

/// Column `idx`, an enum stored as its text (`what` names it in the
/// error). Parsed from the borrowed text: no String per enum column.
pub(crate) fn enum_column<T: std::str::FromStr<Err = ()>>(
    row: &Row<'_>,
    idx: usize,
    what: &str,
) -> rusqlite::Result<T> {
    let text = row.get_ref(idx)?.as_str()?;
    text.parse().map_err(|()| conversion(idx, what, text))
}

/// Reads an offer from the [`OFFER_COLS`] starting at column `base`.
pub(crate) fn offer_from_row(row: &Row<'_>, base: usize) -> rusqlite::Result<MarginOffer> {
    Ok(MarginOffer {
        id: row.get(base)?,
        offer_type: enum_column(row, base + 1, "offer_type")?,
        collateral_token: row.get(base + 2)?,
        borrow_token: row.get(base + 3)?,
        available_borrow_amount: row.get(base + 4)?,
        max_open_ltv: row.get(base + 5)?,
        liquidation_ltv: row.get(base + 6)?,
        interest_rate: row.get(base + 7)?,
        interest_model: enum_column(row, base + 8, "interest_model")?,
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

/// Rows per multi-row statement in [`apply_plan`]: one statement step per
/// batch instead of per row cuts the per-statement overhead (reset, VDBE
/// start, call into SQLite), which dominated large writes; 64 rows keep the
/// bound parameters (64 × 22) far below SQLite's limit.
const BATCH_ROWS: usize = 64;

/// The offers-table columns an upsert writes: the offer plus `expires_at`.
const UPSERT_COLS: usize = OFFER_COL_COUNT + 1;

/// The change-log columns: revision, seq, type, the offer's encoding.
const LOG_COLS: usize = 4;

/// `(?, ?, ...), (?, ...)`: `rows` tuples of `cols` anonymous parameters.
fn value_tuples(rows: usize, cols: usize) -> String {
    let tuple = format!("({})", vec!["?"; cols].join(", "));
    vec![tuple; rows].join(", ")
}

fn upsert_sql(rows: usize) -> String {
    format!(
        concat!(
            "INSERT INTO offers (",
            offer_cols!(),
            ", expires_at) VALUES {} \
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
        ),
        value_tuples(rows, UPSERT_COLS)
    )
}

/// A plain insert, for ids known not to be stored. `OR FAIL` because a
/// failing row fails the whole write transaction anyway: SQLite then need
/// not journal every page a multi-row statement touches in order to undo
/// that statement alone (with `ABORT`, the default, and with the upsert's
/// `DO UPDATE`, it does).
fn insert_sql(rows: usize) -> String {
    format!(
        concat!(
            "INSERT OR FAIL INTO offers (",
            offer_cols!(),
            ", expires_at) VALUES {}"
        ),
        value_tuples(rows, UPSERT_COLS)
    )
}

/// `OR FAIL`: see [`insert_sql`].
fn log_sql(rows: usize) -> String {
    format!(
        "INSERT OR FAIL INTO changes (revision, seq, change_type, offer) VALUES {}",
        value_tuples(rows, LOG_COLS)
    )
}

fn delete_sql(rows: usize) -> String {
    format!(
        "DELETE FROM offers WHERE id IN ({})",
        vec!["?"; rows].join(", ")
    )
}

/// Binds the [`OFFER_COLS`] of `o` from parameter `next` (1-based) on;
/// returns the index after them.
fn bind_offer(stmt: &mut Statement<'_>, next: usize, o: &MarginOffer) -> rusqlite::Result<usize> {
    stmt.raw_bind_parameter(next, &o.id)?;
    stmt.raw_bind_parameter(next + 1, o.offer_type.as_str())?;
    stmt.raw_bind_parameter(next + 2, &o.collateral_token)?;
    stmt.raw_bind_parameter(next + 3, &o.borrow_token)?;
    stmt.raw_bind_parameter(next + 4, o.available_borrow_amount)?;
    stmt.raw_bind_parameter(next + 5, o.max_open_ltv)?;
    stmt.raw_bind_parameter(next + 6, o.liquidation_ltv)?;
    stmt.raw_bind_parameter(next + 7, o.interest_rate)?;
    stmt.raw_bind_parameter(next + 8, o.interest_model.as_str())?;
    stmt.raw_bind_parameter(next + 9, o.term_days)?;
    stmt.raw_bind_parameter(next + 10, &o.liquidity_source)?;
    stmt.raw_bind_parameter(next + 11, &o.lender_address)?;
    stmt.raw_bind_parameter(
        next + 12,
        o.last_borrowed_timestamp.map(Timestamp::as_nanos),
    )?;
    stmt.raw_bind_parameter(next + 13, o.created_timestamp.map(Timestamp::as_nanos))?;
    stmt.raw_bind_parameter(next + 14, o.updated_timestamp.map(Timestamp::as_nanos))?;
    stmt.raw_bind_parameter(next + 15, &o.source)?;
    Ok(next + OFFER_COL_COUNT)
}

/// Runs `stmt` once per batch of `BATCH_ROWS` items with the full-batch
/// statement and once per leftover item with the one-row statement;
/// `bind` binds one item from the given parameter index and returns the next.
fn execute_batched<T>(
    items: &[T],
    full: &mut Statement<'_>,
    one: &mut Statement<'_>,
    mut bind: impl FnMut(&mut Statement<'_>, usize, &T) -> rusqlite::Result<usize>,
) -> rusqlite::Result<()> {
    let mut chunks = items.chunks_exact(BATCH_ROWS);
    for chunk in &mut chunks {
        let mut next = 1;
        for item in chunk {
            next = bind(full, next, item)?;
        }
        full.raw_execute()?;
    }
    for item in chunks.remainder() {
        bind(one, 1, item)?;
        one.raw_execute()?;
    }
    Ok(())
}

/// The offer columns that some index covers, in the order of
/// [`changed_indexed`]'s bits.
const INDEXED: [&str; 8] = [
    "collateral_token",
    "borrow_token",
    "available_borrow_amount",
    "interest_rate",
    "created_timestamp",
    "source",
    "lender_address",
    "expires_at",
];

/// One bit per [`INDEXED`] column whose value `new` changes from `old`
/// (floats by bits, so even 0.0 to -0.0 is written).
pub(crate) fn changed_indexed(old: &Stored<'_>, new: &MarginOffer) -> u8 {
    let changes = [
        old.collateral_token() != new.collateral_token,
        old.borrow_token() != new.borrow_token,
        old.available_borrow_amount().to_bits() != new.available_borrow_amount.to_bits(),
        old.interest_rate().to_bits() != new.interest_rate.to_bits(),
        old.created_timestamp() != new.created_timestamp,
        old.source() != new.source.as_deref(),
        old.lender_address() != new.lender_address.as_deref(),
        old.expires_at() != new.expires_at(),
    ];
    changes
        .iter()
        .enumerate()
        .fold(0, |mask, (bit, changed)| mask | (u8::from(*changed) << bit))
}

/// `UPDATE` of the unindexed columns plus the indexed ones in `mask`:
/// SQLite maintains only the indexes over assigned columns.
fn narrow_update_sql(mask: u8) -> String {
    let mut set = vec![
        "offer_type = ?",
        "max_open_ltv = ?",
        "liquidation_ltv = ?",
        "interest_model = ?",
        "term_days = ?",
        "liquidity_source = ?",
        "last_borrowed_timestamp = ?",
        "updated_timestamp = ?",
    ]
    .into_iter()
    .map(str::to_owned)
    .collect::<Vec<_>>();
    for (bit, col) in INDEXED.iter().enumerate() {
        if mask & (1 << bit) != 0 {
            set.push(format!("{col} = ?"));
        }
    }
    format!("UPDATE offers SET {} WHERE id = ?", set.join(", "))
}

fn narrow_update(stmt: &mut Statement<'_>, o: &MarginOffer, mask: u8) -> rusqlite::Result<()> {
    stmt.raw_bind_parameter(1, o.offer_type.as_str())?;
    stmt.raw_bind_parameter(2, o.max_open_ltv)?;
    stmt.raw_bind_parameter(3, o.liquidation_ltv)?;
    stmt.raw_bind_parameter(4, o.interest_model.as_str())?;
    stmt.raw_bind_parameter(5, o.term_days)?;
    stmt.raw_bind_parameter(6, &o.liquidity_source)?;
    stmt.raw_bind_parameter(7, o.last_borrowed_timestamp.map(Timestamp::as_nanos))?;
    stmt.raw_bind_parameter(8, o.updated_timestamp.map(Timestamp::as_nanos))?;
    let mut next = 9;
    for bit in 0..INDEXED.len() {
        if mask & (1 << bit) == 0 {
            continue;
        }
        match bit {
            0 => stmt.raw_bind_parameter(next, &o.collateral_token)?,
            1 => stmt.raw_bind_parameter(next, &o.borrow_token)?,
            2 => stmt.raw_bind_parameter(next, o.available_borrow_amount)?,
            3 => stmt.raw_bind_parameter(next, o.interest_rate)?,
            4 => stmt.raw_bind_parameter(next, o.created_timestamp.map(Timestamp::as_nanos))?,
            5 => stmt.raw_bind_parameter(next, &o.source)?,
            6 => stmt.raw_bind_parameter(next, &o.lender_address)?,
            _ => stmt.raw_bind_parameter(next, o.expires_at().map(Timestamp::as_nanos))?,
        }
        next += 1;
    }
    stmt.raw_bind_parameter(next, &o.id)?;
    stmt.raw_execute()?;
    Ok(())
}

/// What the caller knows of the stored rows a plan replaces.
#[derive(Clone, Copy)]
pub(crate) enum Replaced<'a> {
    /// Nothing: every non-deleting write is an upsert.
    Unknown,
    /// Per planned write, the stored state it replaces (`None`: the id is
    /// not stored, or the write is a deletion).
    Known(&'a [Option<Stored<'a>>]),
}

/// Applies `plan` under the next revision and logs one change per write.
/// With `replaced` known, a write over a stored row updates it in place,
/// touching only the indexes whose columns change, and the others are plain
/// inserts; otherwise non-deleting writes are upserted. Rows go in batches.
/// Returns the revision the caller reports: the new one, or the current one
/// when the plan is empty (nothing written, no revision taken).
pub(crate) fn apply_plan(
    conn: &Connection,
    plan: &WritePlan,
    ctx: &WriteContext,
    now: Timestamp,
    replaced: Replaced<'_>,
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
    let prepare = |sql: String| conn.prepare_cached(&sql).map_err(map_err);
    let bind_upsert = |stmt: &mut Statement<'_>, next: usize, w: &&PlannedWrite| {
        let next = bind_offer(stmt, next, &w.offer)?;
        stmt.raw_bind_parameter(next, w.offer.expires_at().map(Timestamp::as_nanos))?;
        Ok(next + 1)
    };
    let bind_delete = |stmt: &mut Statement<'_>, next: usize, w: &&PlannedWrite| {
        stmt.raw_bind_parameter(next, &w.offer.id)?;
        Ok(next + 1)
    };
    // Runs of consecutive upserts or deletes, each batched, in plan order
    // (a plan never names an id twice, but order is kept regardless).
    // Within a run the order is free, so rows go in id order: the offers
    // B-tree (clustered by id) is then written left to right, each page
    // once, instead of at random.
    let is_delete = |w: &PlannedWrite| matches!(w.change_type, ChangeType::Deleted);
    // One prepared narrow UPDATE per set of changed indexed columns, looked
    // up by mask rather than by SQL text for each row.
    let mut narrow: HashMap<u8, CachedStatement<'_>> = HashMap::new();
    let writes = plan.writes.as_slice();
    let mut start = 0;
    while start < writes.len() {
        let deleting = is_delete(&writes[start]);
        let len = writes[start..]
            .iter()
            .take_while(|w| is_delete(w) == deleting)
            .count();
        let mut run: Vec<usize> = (start..start + len).collect();
        start += len;
        run.sort_unstable_by(|&a, &b| writes[a].offer.id.cmp(&writes[b].offer.id));
        let rows = |indexes: &[usize]| -> Vec<&PlannedWrite> {
            indexes.iter().map(|&i| &writes[i]).collect()
        };
        if deleting {
            let mut full = prepare(delete_sql(BATCH_ROWS))?;
            let mut one = prepare(delete_sql(1))?;
            execute_batched(&rows(&run), &mut full, &mut one, bind_delete)
        } else if let Replaced::Known(replaced) = replaced {
            let mut inserts: Vec<&PlannedWrite> = Vec::new();
            for i in run {
                let w = &writes[i];
                match replaced.get(i).and_then(Option::as_ref) {
                    Some(old) => {
                        let mask = changed_indexed(old, &w.offer);
                        let stmt = match narrow.entry(mask) {
                            Entry::Occupied(e) => e.into_mut(),
                            Entry::Vacant(e) => e.insert(prepare(narrow_update_sql(mask))?),
                        };
                        narrow_update(stmt, &w.offer, mask).map_err(map_err)?;
                    }
                    None => inserts.push(w),
                }
            }
            let mut full = prepare(insert_sql(BATCH_ROWS))?;
            let mut one = prepare(insert_sql(1))?;
            execute_batched(&inserts, &mut full, &mut one, bind_upsert)
        } else {
            let mut full = prepare(upsert_sql(BATCH_ROWS))?;
            let mut one = prepare(upsert_sql(1))?;
            execute_batched(&rows(&run), &mut full, &mut one, bind_upsert)
        }
        .map_err(map_err)?;
    }
    conn.prepare_cached(
        "INSERT INTO commits (revision, timestamp, origin, operation_id) VALUES (?1, ?2, ?3, ?4)",
    )
    .and_then(|mut s| s.execute(params![revision, now.as_nanos(), ctx.origin, operation_id]))
    .map_err(map_err)?;
    let mut log_full = prepare(log_sql(BATCH_ROWS))?;
    let mut log_one = prepare(log_sql(1))?;
    let logged: Vec<(i64, &PlannedWrite)> = (0_i64..).zip(plan.writes.iter()).collect();
    // SQLite copies each bound blob, so one buffer serves every row.
    let mut blob = Vec::new();
    execute_batched(
        &logged,
        &mut log_full,
        &mut log_one,
        |stmt, next, (seq, w)| {
            blob.clear();
            codec::encode_offer(&w.offer, &mut blob);
            stmt.raw_bind_parameter(next, revision)?;
            stmt.raw_bind_parameter(next + 1, *seq)?;
            stmt.raw_bind_parameter(next + 2, w.change_type.wire_value())?;
            stmt.raw_bind_parameter(next + 3, blob.as_slice())?;
            Ok(next + LOG_COLS)
        },
    )
    .map_err(map_err)?;
    set_meta(conn, "revision", revision)?;
    Ok(revision)
}

/// Ids per `IN (...)` list of [`existing_ids`].
const ID_BATCH: usize = 500;

/// Which of `ids` exist, by batched `IN` queries.
pub(crate) fn existing_ids(conn: &Connection, ids: Vec<&str>) -> StoreResult<HashSet<String>> {
    let mut found = HashSet::new();
    let sql = |n: usize| {
        format!(
            "SELECT id FROM offers WHERE id IN ({})",
            vec!["?"; n].join(", ")
        )
    };
    let mut full = conn.prepare_cached(&sql(ID_BATCH)).map_err(map_err)?;
    for chunk in ids.chunks(ID_BATCH) {
        // The last, shorter chunk gets a statement of its own size, not cached:
        // its length varies from call to call.
        let mut short;
        let stmt = if chunk.len() == ID_BATCH {
            &mut *full
        } else {
            short = conn.prepare(&sql(chunk.len())).map_err(map_err)?;
            &mut short
        };
        let rows = stmt
            .query_map(rusqlite::params_from_iter(chunk), |r| r.get::<_, String>(0))
            .map_err(map_err)?;
        for id in rows {
            found.insert(id.map_err(map_err)?);
        }
    }
    Ok(found)
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
            "SELECT revision FROM commits WHERE revision < ?1 AND timestamp > ?2 \
             ORDER BY revision LIMIT 1",
        )
        .and_then(|mut s| s.query_row([cutoff, keep_after.0], |r| r.get(0)).optional())
        .map_err(map_err)?;
    let cutoff = young.map_or(cutoff, |y| y.min(cutoff));
    let deleted = conn
        .prepare_cached("DELETE FROM changes WHERE revision < ?1")
        .and_then(|mut s| s.execute([cutoff]))
        .map_err(map_err)?;
    conn.prepare_cached("DELETE FROM commits WHERE revision < ?1")
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

/// The changes `sql_tail` selects (columns of `changes` are `c.`), each with
/// its commit's time, origin and operation id. `LEFT JOIN` keeps the change
/// log the outer loop, read in key order, and makes a change without its
/// commit row an error rather than a silent gap.
pub(crate) fn read_changes(
    conn: &Connection,
    sql_tail: &str,
    args: &[&dyn rusqlite::ToSql],
) -> StoreResult<Vec<(i64, Change)>> {
    let mut stmt = conn
        .prepare_cached(&format!(
            "SELECT c.revision, c.seq, c.change_type, m.timestamp, m.origin, m.operation_id, \
             c.offer FROM changes c LEFT JOIN commits m ON m.revision = c.revision {sql_tail}"
        ))
        .map_err(map_err)?;
    let rows = stmt
        .query_map(args, |r| {
            let blob = r.get_ref(6)?.as_blob()?;
            let offer = codec::decode_offer(blob).map_err(|e| {
                rusqlite::Error::FromSqlConversionFailure(
                    6,
                    Type::Blob,
                    format!("stored change offer: {e}").into(),
                )
            })?;
            Ok((
                r.get::<_, i64>(1)?,
                Change {
                    revision: r.get(0)?,
                    change_type: change_type_from_wire(r.get(2)?)?,
                    timestamp: Timestamp(r.get(3)?),
                    origin: r.get(4)?,
                    operation_id: r.get(5)?,
                    offer,
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
