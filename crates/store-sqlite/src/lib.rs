//! The SQLite `MarginOfferStore`: the embedded, durable default backend.
//!
//! One writer connection behind a mutex serialises every write transaction
//! (SQLite allows one writer anyway, and holding our own lock keeps
//! read-decide-write sequences such as `create_or_update` atomic); a small
//! pool of read-only connections serves reads concurrently thanks to WAL.
//! Every SQLite call runs on tokio's blocking pool, never on a runtime thread.
//!
//! Writes follow the domain's design: look up what the planner needs inside
//! the write transaction, call the planner from `offer_domain::write`, and
//! apply the resulting plan under one new revision, logging one change row
//! per planned write. `PRAGMA synchronous=FULL` in WAL mode makes every
//! acknowledged commit durable.

mod checkpoint;
mod codec;
mod error;
mod rows;
mod schema;
mod scope;
mod totals;

use crate::checkpoint::Checkpointer;
use crate::error::map_err;
use crate::rows::{OFFER_COLS, Replaced, Where, offer_from_row};
use crate::scope::{ScopeRead, ScopeRows};
use crate::totals::TotalCache;
use async_trait::async_trait;
use offer_domain::query::ResolvedList;
use offer_domain::write::{
    self, WritePlan, plan_bulk_create, plan_bulk_create_or_update, plan_bulk_delete,
    plan_bulk_update, plan_create, plan_create_or_update, plan_delete, plan_overwrite_in,
    plan_update,
};
use offer_domain::{
    BulkCreateOptions, BulkDeleteOptions, BulkOutcome, BulkUpdateOptions, BulkUpsertOptions,
    ListPage, ListQuery, MarginOffer, OfferPatch, OverwriteFilter, OverwriteOutcome,
    OverwriteRequest, Revision, Stats, StatsQuery, StoreError, StoreResult, Timestamp,
    WriteContext,
};
use offer_store::{ChangeBatch, MarginOfferStore, Written};
use parking_lot::Mutex;
use rusqlite::{Connection, Transaction, TransactionBehavior, params_from_iter};
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;
use tokio::sync::watch;

const DEFAULT_READERS: usize = 4;
const DEFAULT_RETENTION: usize = 1_000_000;
const DEFAULT_MIN_AGE: Duration = Duration::from_secs(24 * 60 * 60);

/// Tuning of [`SqliteStore::open_with`]; zero fields take their defaults.
#[derive(Clone, Debug, Default)]
pub struct SqliteOptions {
    /// Read-only connections in the pool (0: 4).
    pub readers: usize,
    /// The fewest changes the change log keeps for `changes_since` (0: 1 000 000).
    pub change_log_retention: usize,
    /// Changes younger than this are kept whatever their number (None: 24 h;
    /// `Some(Duration::ZERO)`: the count alone decides).
    pub change_log_min_age: Option<Duration>,
}

/// The writer connection and its pruning bookkeeping.
struct Writer {
    conn: Connection,
    /// Changes logged since the last prune; pruning runs once it reaches
    /// an eighth of the retention, so its cost is amortised over many writes.
    logged_since_prune: usize,
}

struct Inner {
    path: PathBuf,
    /// `None` once closed.
    writer: Mutex<Option<Writer>>,
    readers: Vec<Mutex<Option<Connection>>>,
    next_reader: AtomicUsize,
    closed: AtomicBool,
    retention: usize,
    min_age: Duration,
    /// The revision of the latest commit, for `subscribe_commits`.
    commits: watch::Sender<Revision>,
    totals: TotalCache,
    /// `None` once closed.
    checkpointer: Mutex<Option<Checkpointer>>,
}

/// A `MarginOfferStore` in one SQLite file (plus its `-wal` and `-shm`).
#[derive(Clone)]
pub struct SqliteStore {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.inner.path)
            .finish_non_exhaustive()
    }
}

fn closed() -> StoreError {
    StoreError::Unavailable("store is closed".into())
}

/// Runs blocking SQLite work off the runtime threads.
async fn blocking<T, F>(f: F) -> StoreResult<T>
where
    F: FnOnce() -> StoreResult<T> + Send + 'static,
    T: Send + 'static,
{
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| StoreError::Internal(format!("sqlite worker failed: {e}")))?
}

impl SqliteStore {
    /// Opens (creating and migrating if needed) the database at `path` with
    /// default options. Parent directories are created. An unusable path or
    /// a file that is not a database is `Unavailable`, naming the path.
    pub async fn open(path: impl AsRef<Path>) -> StoreResult<SqliteStore> {
        SqliteStore::open_with(path, SqliteOptions::default()).await
    }

    /// [`SqliteStore::open`] with explicit options.
    pub async fn open_with(
        path: impl AsRef<Path>,
        options: SqliteOptions,
    ) -> StoreResult<SqliteStore> {
        let path = path.as_ref().to_path_buf();
        blocking(move || {
            let writer = schema::open_writer(&path)?;
            let readers = if options.readers == 0 {
                DEFAULT_READERS
            } else {
                options.readers
            };
            let readers = (0..readers)
                .map(|_| schema::open_reader(&path).map(|c| Mutex::new(Some(c))))
                .collect::<StoreResult<Vec<_>>>()?;
            let retention = if options.change_log_retention == 0 {
                DEFAULT_RETENTION
            } else {
                options.change_log_retention
            };
            let head = rows::current_revision(&writer)?;
            let checkpointer = Checkpointer::start(&path)?;
            tracing::debug!(path = %path.display(), "opened SQLite store");
            Ok(SqliteStore {
                inner: Arc::new(Inner {
                    path,
                    writer: Mutex::new(Some(Writer {
                        conn: writer,
                        logged_since_prune: 0,
                    })),
                    readers,
                    next_reader: AtomicUsize::new(0),
                    closed: AtomicBool::new(false),
                    retention,
                    min_age: options.change_log_min_age.unwrap_or(DEFAULT_MIN_AGE),
                    commits: watch::channel(head).0,
                    totals: TotalCache::default(),
                    checkpointer: Mutex::new(Some(checkpointer)),
                }),
            })
        })
        .await
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Runs `f` in a read transaction on a pooled reader: every query in it
    /// sees one snapshot, so results and the revision agree.
    async fn read<T, F>(&self, f: F) -> StoreResult<T>
    where
        F: FnOnce(&Transaction<'_>) -> StoreResult<T> + Send + 'static,
        T: Send + 'static,
    {
        let inner = Arc::clone(&self.inner);
        if inner.closed.load(Ordering::Acquire) {
            return Err(closed());
        }
        blocking(move || {
            let n = inner.readers.len();
            let start = inner.next_reader.fetch_add(1, Ordering::Relaxed);
            // Prefer an idle reader; otherwise queue on our turn's one.
            let mut guard = (0..n)
                .find_map(|i| inner.readers[(start + i) % n].try_lock())
                .unwrap_or_else(|| inner.readers[start % n].lock());
            let conn = guard.as_mut().ok_or_else(closed)?;
            let tx = conn.transaction().map_err(map_err)?;
            f(&tx)
        })
        .await
    }

    /// Runs a point read on the caller's thread if a reader is idle, else
    /// `None`. A primary-key lookup on a cached page costs microseconds, less
    /// than the two thread wake-ups of a hop to the blocking pool (which
    /// tripled a `get`'s latency under load), so it may run on a runtime
    /// worker; anything that scans stays on [`SqliteStore::read`].
    ///
    /// `f` gets the connection in autocommit mode: it must run one statement,
    /// which then reads one snapshot by itself. An explicit `BEGIN` and
    /// `ROLLBACK` around it were a fifth of a get's SQLite time.
    fn read_point_now<T>(
        &self,
        f: impl FnOnce(&Connection) -> StoreResult<T>,
    ) -> Option<StoreResult<T>> {
        let inner = &self.inner;
        if inner.closed.load(Ordering::Acquire) {
            return Some(Err(closed()));
        }
        let n = inner.readers.len();
        let start = inner.next_reader.fetch_add(1, Ordering::Relaxed);
        let mut guard = (0..n).find_map(|i| inner.readers[(start + i) % n].try_lock())?;
        let conn = match guard.as_mut() {
            Some(conn) => conn,
            None => return Some(Err(closed())),
        };
        Some(f(conn))
    }

    /// Runs `f` in an immediate write transaction holding the writer lock.
    /// `f` returns the value and whether to commit; pruning of the change log
    /// rides along in the same transaction when it is due.
    async fn write<T, F>(&self, f: F) -> StoreResult<T>
    where
        F: FnOnce(&Transaction<'_>, Timestamp) -> StoreResult<(T, WriteEffect)> + Send + 'static,
        T: Send + 'static,
    {
        let inner = Arc::clone(&self.inner);
        if inner.closed.load(Ordering::Acquire) {
            return Err(closed());
        }
        blocking(move || {
            let mut guard = inner.writer.lock();
            let writer = guard.as_mut().ok_or_else(closed)?;
            let tx = writer
                .conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(map_err)?;
            // Taken under the lock so commit order and timestamps agree.
            let now = Timestamp::now();
            let (value, effect) = f(&tx, now)?;
            match effect {
                WriteEffect::Rollback => return Ok(value),
                WriteEffect::Commit { logged, revision } => {
                    let mut pruned = false;
                    if logged > 0 {
                        writer.logged_since_prune += logged;
                        if writer.logged_since_prune >= (inner.retention / 8).max(1) {
                            let min_age =
                                i64::try_from(inner.min_age.as_nanos()).unwrap_or(i64::MAX);
                            let keep_after = Timestamp(now.0.saturating_sub(min_age));
                            rows::prune_changes(&tx, inner.retention, keep_after)?;
                            pruned = true;
                        }
                    }
                    tx.commit().map_err(map_err)?;
                    if pruned {
                        writer.logged_since_prune = 0;
                    }
                    if logged > 0 {
                        // Still under the writer lock: the value never goes backwards.
                        inner.commits.send_replace(revision);
                        let restart_due = inner.checkpointer.lock().as_ref().is_some_and(|c| {
                            c.wake();
                            c.take_restart_due()
                        });
                        // Between two transactions, still holding the writer.
                        if restart_due {
                            checkpoint::restart(&writer.conn);
                        }
                    }
                }
            }
            Ok(value)
        })
        .await
    }

    /// Plans with `planner` inside a write transaction and commits the plan.
    async fn write_plan<T, F>(&self, ctx: &WriteContext, planner: F) -> StoreResult<T>
    where
        F: FnOnce(&Transaction<'_>, Timestamp) -> StoreResult<(T, WritePlan)> + Send + 'static,
        T: WithRevision + Send + 'static,
    {
        let ctx = ctx.clone();
        self.write(move |tx, now| {
            let (mut value, plan) = planner(tx, now)?;
            let revision = rows::apply_plan(tx, &plan, &ctx, now, Replaced::Unknown)?;
            value.set_revision(revision);
            Ok((
                value,
                WriteEffect::Commit {
                    logged: plan.writes.len(),
                    revision,
                },
            ))
        })
        .await
    }
}

/// What to do with a write transaction after its closure ran.
enum WriteEffect {
    Rollback,
    Commit { logged: usize, revision: Revision },
}

/// Outcomes whose revision is known only after the plan is applied.
trait WithRevision {
    fn set_revision(&mut self, revision: Revision);
}

impl WithRevision for Written {
    fn set_revision(&mut self, revision: Revision) {
        self.revision = revision;
    }
}

impl WithRevision for BulkOutcome {
    fn set_revision(&mut self, revision: Revision) {
        self.revision = revision;
    }
}

impl WithRevision for OverwriteOutcome {
    fn set_revision(&mut self, revision: Revision) {
        self.revision = revision;
    }
}

impl WithRevision for Revision {
    fn set_revision(&mut self, revision: Revision) {
        *self = revision;
    }
}

fn single(p: write::SinglePlan) -> (Written, WritePlan) {
    (
        Written {
            offer: p.offer,
            was_created: p.was_created,
            revision: 0,
        },
        p.plan,
    )
}

/// The `WHERE` selecting an overwrite scope (no filter: every offer).
fn scope_where(filter: Option<&OverwriteFilter>) -> Where {
    let mut w = Where::default();
    if let Some(f) = filter {
        w.filter(&f.as_offer_filter());
    }
    w
}

/// The two statements of a listing, text and parameters.
struct ListStatements {
    /// The count and earliest expiry of every row the listing selects.
    count: (String, Vec<store_sql::SqlValue>),
    /// The page's rows, one more than the limit to tell whether more follow.
    page: (String, Vec<store_sql::SqlValue>),
}

fn list_statements(
    query: &ListQuery,
    resolved: &ResolvedList,
    now: Timestamp,
) -> StoreResult<ListStatements> {
    let mut w = Where::default();
    w.filter(&query.filter);
    if !query.include_expired {
        w.not_expired(now);
    }
    if query.active_only {
        w.active_only();
    }
    let count = (
        format!("SELECT COUNT(*), MIN(expires_at) FROM offers{}", w.sql()),
        w.params.clone(),
    );
    if let Some((key, id)) = &resolved.after {
        w.after(query.sort_by, query.sort_order, key, id);
    }
    let limit = rows::sql_int(resolved.limit.saturating_add(1))?;
    let offset = rows::sql_int(resolved.offset)?;
    let sql = format!(
        "SELECT {OFFER_COLS} FROM offers{}{} LIMIT ? OFFSET ?",
        w.sql(),
        rows::order_by(query.sort_by, query.sort_order)
    );
    w.params.push(store_sql::SqlValue::Integer(limit));
    w.params.push(store_sql::SqlValue::Integer(offset));
    Ok(ListStatements {
        count,
        page: (sql, w.params),
    })
}

fn list_in(tx: &Transaction<'_>, query: &ListQuery, totals: &TotalCache) -> StoreResult<ListPage> {
    let resolved = query.resolve()?;
    let now = Timestamp::now();
    let statements = list_statements(query, &resolved, now)?;
    let revision = rows::current_revision(tx)?;
    let total = totals.get_or_count(query, revision, now, || {
        let (sql, params) = &statements.count;
        tx.prepare_cached(sql)
            .and_then(|mut s| {
                s.query_row(params_from_iter(rows::values(params)), |r| {
                    Ok((r.get(0)?, r.get(1)?))
                })
            })
            .map_err(map_err)
    })?;
    let (sql, params) = &statements.page;
    let mut stmt = tx.prepare_cached(sql).map_err(map_err)?;
    let offers = stmt
        .query_map(params_from_iter(rows::values(params)), |r| {
            offer_from_row(r, 0)
        })
        .map_err(map_err)?
        .collect::<rusqlite::Result<Vec<_>>>()
        .map_err(map_err)?;
    Ok(ListPage::assemble(
        query, &resolved, offers, total, revision,
    ))
}

fn stats_in(tx: &Transaction<'_>, query: &StatsQuery) -> StoreResult<Stats> {
    let mut w = scope_where(query.filter.as_ref());
    if !query.include_expired {
        w.not_expired(Timestamp::now());
    }
    let mut stats = Stats::default();
    let mut stmt = tx
        .prepare_cached(&format!(
            "SELECT offer_type, COUNT(*) FROM offers{} GROUP BY offer_type",
            w.sql()
        ))
        .map_err(map_err)?;
    let counts = stmt
        .query_map(params_from_iter(rows::values(&w.params)), |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?))
        })
        .map_err(map_err)?;
    for row in counts {
        let (offer_type, n) = row.map_err(map_err)?;
        stats.total += n;
        stats.by_offer_type.insert(offer_type, n);
    }
    // TOTAL() is always a float (SUM() would be NULL or integer-typed on edge cases).
    let mut stmt = tx
        .prepare_cached(&format!(
            "SELECT borrow_token, TOTAL(available_borrow_amount) FROM offers{} GROUP BY borrow_token",
            w.sql()
        ))
        .map_err(map_err)?;
    let sums = stmt
        .query_map(params_from_iter(rows::values(&w.params)), |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, f64>(1)?))
        })
        .map_err(map_err)?;
    for row in sums {
        let (token, sum) = row.map_err(map_err)?;
        stats.liquidity_by_borrow_token.insert(token, sum);
    }
    stats.revision = rows::current_revision(tx)?;
    Ok(stats)
}

fn changes_in(tx: &Transaction<'_>, after: Revision, limit: usize) -> StoreResult<ChangeBatch> {
    let head = rows::current_revision(tx)?;
    let pruned = rows::pruned_through(tx)?;
    if after < pruned {
        return Err(StoreError::OutOfRange {
            requested: after,
            oldest: pruned + 1,
        });
    }
    if limit == 0 || after >= head {
        return Ok(ChangeBatch {
            changes: Vec::new(),
            head,
        });
    }
    let fetch = rows::sql_int(limit)?;
    let mut got = rows::read_changes(
        tx,
        "WHERE c.revision > ?1 ORDER BY c.revision, c.seq LIMIT ?2",
        &[&after, &fetch],
    )?;
    // Callers resume from the last revision they saw, so a batch must hold
    // whole revisions: drop a cut-off last revision, or, when it is the only
    // one (a single write larger than `limit`), complete it instead.
    if got.len() == limit
        && let Some((last_seq, last)) = got.last().map(|(s, c)| (*s, c.revision))
    {
        let first = got.first().map_or(last, |(_, c)| c.revision);
        if first == last {
            let rest = rows::read_changes(
                tx,
                "WHERE c.revision = ?1 AND c.seq > ?2 ORDER BY c.seq",
                &[&last, &last_seq],
            )?;
            got.extend(rest);
        } else {
            let complete: bool = tx
                .prepare_cached(
                    "SELECT NOT EXISTS (SELECT 1 FROM changes WHERE revision = ?1 AND seq > ?2)",
                )
                .and_then(|mut s| s.query_row(rusqlite::params![last, last_seq], |r| r.get(0)))
                .map_err(map_err)?;
            if !complete {
                got.retain(|(_, c)| c.revision != last);
            }
        }
    }
    Ok(ChangeBatch {
        changes: got.into_iter().map(|(_, c)| c).collect(),
        head,
    })
}

#[async_trait]
impl MarginOfferStore for SqliteStore {
    async fn create(&self, offer: MarginOffer, ctx: &WriteContext) -> StoreResult<Written> {
        self.write_plan(ctx, move |tx, now| {
            plan_create(offer, &mut |id| rows::get_offer(tx, id), now).map(single)
        })
        .await
    }

    async fn get(&self, id: &str) -> StoreResult<MarginOffer> {
        let lookup = |conn: &Connection, id: &str| {
            rows::get_offer(conn, id)?.ok_or_else(|| StoreError::NotFound { id: id.to_owned() })
        };
        if let Some(found) = self.read_point_now(|conn| lookup(conn, id)) {
            return found;
        }
        let id = id.to_owned();
        self.read(move |tx| lookup(tx, &id)).await
    }

    async fn update(&self, offer: MarginOffer, ctx: &WriteContext) -> StoreResult<Written> {
        self.write_plan(ctx, move |tx, now| {
            plan_update(offer, &mut |id| rows::get_offer(tx, id), now).map(single)
        })
        .await
    }

    async fn delete(&self, id: &str, ctx: &WriteContext) -> StoreResult<Revision> {
        let id = id.to_owned();
        self.write_plan(ctx, move |tx, _now| {
            plan_delete(&id, &mut |id| rows::get_offer(tx, id)).map(|plan| (0, plan))
        })
        .await
    }

    async fn create_or_update(
        &self,
        offer: MarginOffer,
        ctx: &WriteContext,
    ) -> StoreResult<Written> {
        self.write_plan(ctx, move |tx, now| {
            plan_create_or_update(offer, &mut |id| rows::get_offer(tx, id), now).map(single)
        })
        .await
    }

    async fn list(&self, query: &ListQuery) -> StoreResult<ListPage> {
        // Fail fast on a bad query without touching the pool.
        query.resolve()?;
        let query = query.clone();
        let inner = Arc::clone(&self.inner);
        self.read(move |tx| list_in(tx, &query, &inner.totals))
            .await
    }

    async fn bulk_create(
        &self,
        offers: Vec<MarginOffer>,
        opts: BulkCreateOptions,
        ctx: &WriteContext,
    ) -> StoreResult<BulkOutcome> {
        self.write_plan(ctx, move |tx, now| {
            plan_bulk_create(offers, opts, &mut |id| rows::get_offer(tx, id), now)
                .map(|p| (p.outcome, p.plan))
        })
        .await
    }

    async fn bulk_update(
        &self,
        patches: Vec<OfferPatch>,
        opts: BulkUpdateOptions,
        ctx: &WriteContext,
    ) -> StoreResult<BulkOutcome> {
        self.write_plan(ctx, move |tx, now| {
            plan_bulk_update(patches, opts, &mut |id| rows::get_offer(tx, id), now)
                .map(|p| (p.outcome, p.plan))
        })
        .await
    }

    async fn bulk_delete(
        &self,
        ids: Vec<String>,
        opts: BulkDeleteOptions,
        ctx: &WriteContext,
    ) -> StoreResult<BulkOutcome> {
        self.write_plan(ctx, move |tx, _now| {
            plan_bulk_delete(ids, opts, &mut |id| rows::get_offer(tx, id))
                .map(|p| (p.outcome, p.plan))
        })
        .await
    }

    async fn bulk_create_or_update(
        &self,
        offers: Vec<MarginOffer>,
        opts: BulkUpsertOptions,
        ctx: &WriteContext,
    ) -> StoreResult<BulkOutcome> {
        self.write_plan(ctx, move |tx, now| {
            plan_bulk_create_or_update(offers, opts, &mut |id| rows::get_offer(tx, id), now)
                .map(|p| (p.outcome, p.plan))
        })
        .await
    }

    async fn overwrite(
        &self,
        req: OverwriteRequest,
        ctx: &WriteContext,
    ) -> StoreResult<OverwriteOutcome> {
        // Refuse the store-wiping request before taking the writer.
        write::check_overwrite_request(req.offers.is_empty(), req.filter.as_ref())?;
        let ctx = ctx.clone();
        self.write(move |tx, now| {
            let dry_run = req.dry_run;
            let w = scope_where(req.filter.as_ref());
            let read = ScopeRead::choose(tx, &w, req.offers.len())?;
            let scope_rows = ScopeRows::load(tx, &w, read, req.offers.len())?;
            let mut scope = scope_rows.scope();
            // The planner asks about every new id whether it exists outside
            // the scope; answering from one batched query instead of a
            // lookup per offer saves a statement per created offer.
            let outside = if req.filter.as_ref().is_some_and(|f| !f.is_empty()) {
                let new_ids = scope.ids_not_in(req.offers.iter().map(|o| o.id.as_str()));
                rows::existing_ids(tx, new_ids)?
            } else {
                HashSet::new()
            };
            let mut lookup = |id: &str| {
                if outside.contains(id) {
                    rows::get_offer(tx, id)
                } else {
                    Ok(None)
                }
            };
            let (planned, replaced) = plan_overwrite_in(req, scope, &mut lookup, now)?;
            let mut outcome = planned.outcome;
            if dry_run {
                outcome.revision = rows::current_revision(tx)?;
                return Ok((outcome, WriteEffect::Rollback));
            }
            let revision =
                rows::apply_plan(tx, &planned.plan, &ctx, now, Replaced::Known(&replaced))?;
            outcome.revision = revision;
            Ok((
                outcome,
                WriteEffect::Commit {
                    logged: planned.plan.writes.len(),
                    revision,
                },
            ))
        })
        .await
    }

    async fn overwrite_preview(
        &self,
        filter: Option<&OverwriteFilter>,
    ) -> StoreResult<Vec<String>> {
        let w = scope_where(filter);
        self.read(move |tx| {
            let mut stmt = tx
                .prepare_cached(&format!("SELECT id FROM offers{} ORDER BY id", w.sql()))
                .map_err(map_err)?;
            let ids = stmt
                .query_map(params_from_iter(rows::values(&w.params)), |r| {
                    r.get::<_, String>(0)
                })
                .map_err(map_err)?;
            ids.collect::<rusqlite::Result<Vec<_>>>().map_err(map_err)
        })
        .await
    }

    async fn stats(&self, query: &StatsQuery) -> StoreResult<Stats> {
        let query = query.clone();
        self.read(move |tx| stats_in(tx, &query)).await
    }

    async fn health_check(&self) -> StoreResult<()> {
        self.read(|tx| {
            tx.query_row("SELECT 1", [], |r| r.get::<_, i64>(0))
                .map_err(|e| StoreError::Unavailable(format!("sqlite health check: {e}")))?;
            Ok(())
        })
        .await
    }

    async fn close(&self) -> StoreResult<()> {
        let inner = Arc::clone(&self.inner);
        inner.closed.store(true, Ordering::Release);
        blocking(move || {
            let mut first_error = None;
            if let Some(c) = inner.checkpointer.lock().take() {
                c.stop();
            }
            // Readers first: the writer closing last checkpoints the WAL.
            for reader in &inner.readers {
                if let Some(conn) = reader.lock().take()
                    && let Err((_, e)) = conn.close()
                {
                    first_error.get_or_insert(e);
                }
            }
            if let Some(w) = inner.writer.lock().take()
                && let Err((_, e)) = w.conn.close()
            {
                first_error.get_or_insert(e);
            }
            match first_error {
                Some(e) => Err(map_err(e)),
                None => Ok(()),
            }
        })
        .await
    }

    async fn revision(&self) -> StoreResult<Revision> {
        self.read(|tx| rows::current_revision(tx)).await
    }

    fn subscribe_commits(&self) -> Option<watch::Receiver<Revision>> {
        Some(self.inner.commits.subscribe())
    }

    async fn changes_since(&self, after: Revision, limit: usize) -> StoreResult<ChangeBatch> {
        self.read(move |tx| changes_in(tx, after, limit)).await
    }
}

#[cfg(test)]
mod tests;
