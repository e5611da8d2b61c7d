//! The PostgreSQL `MarginOfferStore`: N stateless `store` instances on one
//! database.
//!
//! Writes follow the domain's design, as in SQLite: inside one transaction,
//! load what the planner needs (the ids the request names, plus the scope of
//! an overwrite, in one query each), call the planner from
//! `offer_domain::write`, apply the plan under one new revision and log one
//! change row per planned write.
//!
//! # Revision order
//!
//! The counter lives in the single `meta` row. Every write transaction first
//! takes that row's lock (`SELECT ... FOR UPDATE`) and holds it to commit,
//! so writers from all instances are serialised: transaction N+1 reads
//! revision N only after N has committed. PostgreSQL releases row locks
//! after the commit is visible to new snapshots, so *commit order equals
//! revision order*, and any snapshot that sees revision N+1 sees N and all
//! of its change rows. Reads (`list`, `changes_since`, ...) run in one
//! REPEATABLE READ snapshot, so the revision they report and the rows they
//! return agree, and the change log they see is a gap-free prefix: a reader
//! never observes N+1 while N is still in flight. Holding the lock across
//! planning also makes read-decide-write sequences (`create_or_update`,
//! overwrite diffs) atomic under READ COMMITTED; serialisation failures and
//! deadlocks (40001, 40P01), which only a stricter server default could
//! cause, are retried up to `serialization_retries` times.
//!
//! Each write also calls `pg_notify` in its transaction; PostgreSQL delivers
//! it at commit, in commit order. A dedicated LISTEN connection per store
//! turns those into [`MarginOfferStore::subscribe_commits`] updates, so
//! followers on every instance wake for commits made through any instance.

mod error;
mod notify;
mod rows;
mod schema;

use crate::error::{DbError, is_retryable, map_pg, map_pool};
use async_trait::async_trait;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use offer_domain::write::{
    self, WritePlan, plan_bulk_create, plan_bulk_create_or_update, plan_bulk_delete,
    plan_bulk_update, plan_create, plan_create_or_update, plan_delete, plan_overwrite, plan_update,
};
use offer_domain::{
    BulkCreateOptions, BulkDeleteOptions, BulkOutcome, BulkUpdateOptions, BulkUpsertOptions,
    ListPage, ListQuery, MarginOffer, OfferPatch, OverwriteFilter, OverwriteOutcome,
    OverwriteRequest, Revision, Stats, StatsQuery, StoreError, StoreResult, Timestamp,
    WriteContext,
};
use offer_store::{ChangeBatch, MarginOfferStore, Written};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;
use store_sql::{OFFER_COLS, Placeholders, SqlValue, Where};
use tokio::sync::watch;
use tokio_postgres::IsolationLevel;

const DEFAULT_POOL_SIZE: usize = 16;
const DEFAULT_STATEMENT_TIMEOUT: Duration = Duration::from_secs(30);
const DEFAULT_RETRIES: u32 = 5;
const DEFAULT_RETENTION: usize = 1_000_000;
const DEFAULT_MIN_AGE: Duration = Duration::from_secs(24 * 60 * 60);
/// Connecting must fail fast when the server is down, so callers get
/// `Unavailable` rather than a hang.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// The NOTIFY channel; a per-schema suffix keeps stores in other schemas of
/// the same database (tests) from waking each other.
const CHANNEL: &str = "offers_changes";

/// Tuning of [`PgStore::connect`].
#[derive(Clone, Debug)]
pub struct PgOptions {
    /// Connections in the pool (default 16).
    pub pool_size: usize,
    /// Server-side limit on one statement (default 30 s); exceeding it is
    /// `DeadlineExceeded`. Also bounds the wait for a pooled connection.
    pub statement_timeout: Duration,
    /// Retries of a write that hit a serialisation failure or deadlock (default 5).
    pub serialization_retries: u32,
    /// The fewest changes the change log keeps for `changes_since` (default 1 000 000).
    pub change_log_retention: usize,
    /// Changes younger than this are kept whatever their number (default 24 h).
    pub change_log_min_age: Duration,
    /// A schema to create and use instead of the connection's default
    /// (a plain lowercase identifier); tests get one each.
    pub schema: Option<String>,
}

impl Default for PgOptions {
    fn default() -> Self {
        PgOptions {
            pool_size: DEFAULT_POOL_SIZE,
            statement_timeout: DEFAULT_STATEMENT_TIMEOUT,
            serialization_retries: DEFAULT_RETRIES,
            change_log_retention: DEFAULT_RETENTION,
            change_log_min_age: DEFAULT_MIN_AGE,
            schema: None,
        }
    }
}

struct Inner {
    pool: Pool,
    closed: AtomicBool,
    options: PgOptions,
    channel: String,
    /// Changes this instance logged since it last pruned; pruning runs once
    /// it reaches an eighth of the retention, amortising its cost.
    logged_since_prune: AtomicUsize,
    commits: watch::Sender<Revision>,
    /// Stops the LISTEN task.
    stop: watch::Sender<bool>,
}

/// A `MarginOfferStore` on a PostgreSQL database, shared by any number of
/// instances.
#[derive(Clone)]
pub struct PgStore {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore")
            .field("schema", &self.inner.options.schema)
            .finish_non_exhaustive()
    }
}

fn closed() -> StoreError {
    StoreError::Unavailable("store is closed".into())
}

fn valid_schema(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 40
        && s.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

/// What a write attempt loaded for its planner.
struct Loaded {
    /// The stored state of every id the request names.
    known: HashMap<String, MarginOffer>,
    /// The offers in an overwrite's scope (empty for other writes).
    scope: Vec<MarginOffer>,
}

/// A planner's result: the value to return, the plan, and whether to commit
/// (false for dry runs).
struct Planned<T> {
    value: T,
    plan: WritePlan,
    commit: bool,
}

impl PgStore {
    /// Connects to `url` (`postgres://user:pass@host:port/db?...`), creates
    /// or migrates the schema, and starts the LISTEN task. An unreachable
    /// server is `Unavailable`.
    pub async fn connect(url: &str, options: PgOptions) -> StoreResult<PgStore> {
        let mut config: tokio_postgres::Config = url
            .parse()
            .map_err(|e| StoreError::Unavailable(format!("invalid PostgreSQL URL: {e}")))?;
        let mut server_opts = config.get_options().unwrap_or_default().to_owned();
        let timeout_ms = options.statement_timeout.as_millis().max(1);
        server_opts.push_str(&format!(" -c statement_timeout={timeout_ms}"));
        let mut channel = CHANNEL.to_owned();
        if let Some(schema) = &options.schema {
            if !valid_schema(schema) {
                return Err(StoreError::invalid(
                    "schema",
                    format!("{schema:?} is not a plain lowercase identifier"),
                ));
            }
            server_opts.push_str(&format!(" -c search_path={schema}"));
            channel = format!("{CHANNEL}_{schema}");
        }
        config.options(server_opts.trim());
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        if config.get_application_name().is_none() {
            config.application_name("margin-offer-store");
        }
        // Migrate on a connection of its own before the pool exists.
        let (mut client, conn) = config
            .connect(tokio_postgres::NoTls)
            .await
            .map_err(|e| StoreError::Unavailable(format!("cannot connect to PostgreSQL: {e}")))?;
        let conn_task = tokio::spawn(conn);
        let migrated = schema::migrate(&mut client, options.schema.as_deref()).await;
        let head = match &migrated {
            Ok(()) => client
                .query_one("SELECT revision FROM meta", &[])
                .await
                .and_then(|r| r.try_get::<_, i64>(0))
                .map_err(|e| map_pg(&e)),
            Err(e) => Err(e.clone()),
        };
        drop(client);
        conn_task.abort();
        let head = head.map_err(|e| match e {
            StoreError::Unavailable(m) | StoreError::Internal(m) => {
                StoreError::Unavailable(format!("PostgreSQL migration failed: {m}"))
            }
            other => other,
        })?;

        let pool_size = options.pool_size.max(1);
        let manager = Manager::from_config(
            config.clone(),
            tokio_postgres::NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(pool_size)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(options.statement_timeout))
            .create_timeout(Some(CONNECT_TIMEOUT))
            .recycle_timeout(Some(CONNECT_TIMEOUT))
            .build()
            .map_err(|e| StoreError::Internal(format!("postgres pool: {e}")))?;
        let (commits, _) = watch::channel(head);
        let (stop, stop_rx) = watch::channel(false);
        tokio::spawn(notify::listen(
            config,
            channel.clone(),
            commits.clone(),
            stop_rx,
        ));
        tracing::debug!(schema = ?options.schema, pool_size, "opened PostgreSQL store");
        Ok(PgStore {
            inner: Arc::new(Inner {
                pool,
                closed: AtomicBool::new(false),
                options,
                channel,
                logged_since_prune: AtomicUsize::new(0),
                commits,
                stop,
            }),
        })
    }

    async fn client(&self) -> StoreResult<deadpool_postgres::Object> {
        if self.inner.closed.load(Ordering::Acquire) {
            return Err(closed());
        }
        self.inner.pool.get().await.map_err(map_pool)
    }

    /// The EXPLAIN output of the statement [`MarginOfferStore::list`] runs
    /// to select the page's rows, for tests that check index use.
    #[doc(hidden)]
    pub async fn explain_list(&self, query: &ListQuery) -> StoreResult<String> {
        let resolved = query.resolve()?;
        let (sql, w) = list_sql(query, &resolved, Timestamp::now())?;
        let client = self.client().await?;
        let p = rows::params(&w.params);
        let rows = client
            .query(&format!("EXPLAIN {sql}"), &rows::refs(&p))
            .await
            .map_err(|e| map_pg(&e))?;
        let lines = rows
            .iter()
            .map(|r| r.try_get::<_, String>(0))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| map_pg(&e))?;
        Ok(lines.join("\n"))
    }

    /// Runs plain SQL on a pooled connection; for tests (ANALYZE, ...).
    #[doc(hidden)]
    pub async fn execute_batch(&self, sql: &str) -> StoreResult<()> {
        let client = self.client().await?;
        client.batch_execute(sql).await.map_err(|e| map_pg(&e))
    }

    /// One write: retried whole on serialisation failures and deadlocks.
    async fn write<T, F>(
        &self,
        ctx: &WriteContext,
        ids: Vec<String>,
        scope: Option<Where>,
        planner: F,
    ) -> StoreResult<T>
    where
        T: WithRevision + Send,
        F: Fn(Loaded, Timestamp) -> StoreResult<Planned<T>> + Send + Sync,
    {
        let mut attempt = 0;
        loop {
            let mut client = self.client().await?;
            match self
                .write_once(&mut client, ctx, &ids, scope.as_ref(), &planner)
                .await
            {
                Ok(v) => return Ok(v),
                Err(e)
                    if is_retryable(&e) && attempt < self.inner.options.serialization_retries =>
                {
                    attempt += 1;
                    tracing::debug!(attempt, "retrying a write after a serialisation failure");
                    // A little jitter keeps colliding writers from colliding again.
                    let ms = 5 * u64::from(attempt)
                        + u64::from(uuid::Uuid::new_v4().as_u128() as u8 % 10);
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    async fn write_once<T, F>(
        &self,
        client: &mut deadpool_postgres::Object,
        ctx: &WriteContext,
        ids: &[String],
        scope: Option<&Where>,
        planner: &F,
    ) -> Result<T, DbError>
    where
        T: WithRevision,
        F: Fn(Loaded, Timestamp) -> StoreResult<Planned<T>>,
    {
        let tx = client.transaction().await?;
        // The global writer lock; see the crate docs for why this orders
        // commits by revision.
        let current: Revision = tx
            .query_one("SELECT revision FROM meta FOR UPDATE", &[])
            .await?
            .try_get(0)?;
        // Taken under the lock so commit order and timestamps agree.
        let now = Timestamp::now();
        let known = rows::offers_by_id(&tx, ids).await?;
        let scope = match scope {
            Some(w) => rows::offers_where(&tx, w).await?,
            None => Vec::new(),
        };
        let Planned {
            mut value,
            plan,
            commit,
        } = planner(Loaded { known, scope }, now)?;
        if !commit || plan.is_empty() {
            tx.rollback().await?;
            value.set_revision(current);
            return Ok(value);
        }
        let revision = current + 1;
        rows::apply_plan(&tx, &plan, ctx, now, revision).await?;
        tx.execute("UPDATE meta SET revision = $1", &[&revision])
            .await?;
        let logged = plan.writes.len();
        let due = self
            .inner
            .logged_since_prune
            .fetch_add(logged, Ordering::Relaxed)
            + logged
            >= (self.inner.options.change_log_retention / 8).max(1);
        if due {
            let min_age =
                i64::try_from(self.inner.options.change_log_min_age.as_nanos()).unwrap_or(i64::MAX);
            let keep_after = Timestamp(now.as_nanos().saturating_sub(min_age));
            rows::prune_changes(&tx, self.inner.options.change_log_retention, keep_after).await?;
        }
        // Delivered by the server at commit, in commit order, to every
        // instance's LISTEN connection.
        tx.execute(
            "SELECT pg_notify($1, $2)",
            &[&self.inner.channel, &revision.to_string()],
        )
        .await?;
        tx.commit().await?;
        if due {
            self.inner.logged_since_prune.store(0, Ordering::Relaxed);
        }
        notify::publish(&self.inner.commits, revision);
        value.set_revision(revision);
        Ok(value)
    }

    /// A write whose planner takes the stored state of `ids` by lookup.
    async fn write_plan<T, F>(
        &self,
        ctx: &WriteContext,
        ids: Vec<String>,
        planner: F,
    ) -> StoreResult<T>
    where
        T: WithRevision + Send,
        F: Fn(&mut write::Lookup, Timestamp) -> StoreResult<(T, WritePlan)> + Send + Sync,
    {
        self.write(ctx, ids, None, |loaded, now| {
            let known = loaded.known;
            let (value, plan) = planner(&mut |id| Ok(known.get(id).cloned()), now)?;
            Ok(Planned {
                value,
                plan,
                commit: true,
            })
        })
        .await
    }
}

/// Starts a REPEATABLE READ, read-only transaction: every query in it sees
/// one snapshot, so results and the revision agree.
macro_rules! read_tx {
    ($client:expr) => {
        $client
            .build_transaction()
            .isolation_level(IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await
            .map_err(|e| map_pg(&e))?
    };
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
    let mut w = Where::new(Placeholders::Numbered);
    if let Some(f) = filter {
        w.filter(&f.as_offer_filter());
    }
    w
}

/// The filter of a listing, without the keyset condition (what `total` counts).
fn list_where(query: &ListQuery, now: Timestamp) -> Where {
    let mut w = Where::new(Placeholders::Numbered);
    w.filter(&query.filter);
    if !query.include_expired {
        w.not_expired(now);
    }
    if query.active_only {
        w.active_only();
    }
    w
}

/// The statement selecting a page's rows (one more than the limit).
fn list_sql(
    query: &ListQuery,
    resolved: &offer_domain::query::ResolvedList,
    now: Timestamp,
) -> StoreResult<(String, Where)> {
    let mut w = list_where(query, now);
    if let Some((key, id)) = &resolved.after {
        w.after(query.sort_by, query.sort_order, key, id);
    }
    let where_sql = w.sql();
    let limit = w.bind(SqlValue::Integer(rows::sql_int(
        resolved.limit.saturating_add(1),
    )?));
    let offset = w.bind(SqlValue::Integer(rows::sql_int(resolved.offset)?));
    let sql = format!(
        "SELECT {OFFER_COLS} FROM offers{where_sql}{} LIMIT {limit} OFFSET {offset}",
        store_sql::order_by(query.sort_by, query.sort_order)
    );
    Ok((sql, w))
}

async fn list_in(
    tx: &deadpool_postgres::Transaction<'_>,
    query: &ListQuery,
) -> Result<ListPage, DbError> {
    let resolved = query.resolve()?;
    let now = Timestamp::now();
    let w = list_where(query, now);
    let p = rows::params(&w.params);
    let total: i64 = tx
        .query_one(
            &format!("SELECT COUNT(*) FROM offers{}", w.sql()),
            &rows::refs(&p),
        )
        .await?
        .try_get(0)?;
    let (sql, w) = list_sql(query, &resolved, now)?;
    let p = rows::params(&w.params);
    let stmt = tx.prepare_cached(&sql).await?;
    let offers = rows::offers_from_rows(&tx.query(&stmt, &rows::refs(&p)).await?)?;
    let (revision, _) = rows::meta(tx).await?;
    Ok(ListPage::assemble(
        query, &resolved, offers, total, revision,
    ))
}

async fn stats_in(
    tx: &deadpool_postgres::Transaction<'_>,
    query: &StatsQuery,
) -> Result<Stats, DbError> {
    let mut w = scope_where(query.filter.as_ref());
    if !query.include_expired {
        w.not_expired(Timestamp::now());
    }
    let p = rows::params(&w.params);
    let mut stats = Stats::default();
    let counts = tx
        .query(
            &format!(
                "SELECT offer_type, COUNT(*) FROM offers{} GROUP BY offer_type",
                w.sql()
            ),
            &rows::refs(&p),
        )
        .await?;
    for r in &counts {
        let (offer_type, n): (String, i64) = (r.try_get(0)?, r.try_get(1)?);
        stats.total += n;
        stats.by_offer_type.insert(offer_type, n);
    }
    let sums = tx
        .query(
            &format!(
                "SELECT borrow_token, SUM(available_borrow_amount) FROM offers{} GROUP BY borrow_token",
                w.sql()
            ),
            &rows::refs(&p),
        )
        .await?;
    for r in &sums {
        let (token, sum): (String, f64) = (r.try_get(0)?, r.try_get(1)?);
        stats.liquidity_by_borrow_token.insert(token, sum);
    }
    stats.revision = rows::meta(tx).await?.0;
    Ok(stats)
}

async fn changes_in(
    tx: &deadpool_postgres::Transaction<'_>,
    after: Revision,
    limit: usize,
) -> Result<ChangeBatch, DbError> {
    let (head, pruned) = rows::meta(tx).await?;
    if after < pruned {
        return Err(StoreError::OutOfRange {
            requested: after,
            oldest: pruned + 1,
        }
        .into());
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
        "WHERE revision > $1 ORDER BY revision, seq LIMIT $2",
        &[&after, &fetch],
    )
    .await?;
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
                "WHERE revision = $1 AND seq > $2 ORDER BY seq",
                &[&last, &last_seq],
            )
            .await?;
            got.extend(rest);
        } else {
            let complete: bool = tx
                .query_one(
                    "SELECT NOT EXISTS (SELECT 1 FROM changes WHERE revision = $1 AND seq > $2)",
                    &[&last, &last_seq],
                )
                .await?
                .try_get(0)?;
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

/// Runs an async read body in a snapshot transaction on a pooled connection.
macro_rules! read {
    ($self:expr, |$tx:ident| $body:expr) => {{
        let mut client = $self.client().await?;
        let $tx = read_tx!(client);
        let value = $body.map_err(StoreError::from)?;
        $tx.commit().await.map_err(|e| map_pg(&e))?;
        Ok(value)
    }};
}

fn ids_of(offers: &[MarginOffer]) -> Vec<String> {
    offers.iter().map(|o| o.id.clone()).collect()
}

#[async_trait]
impl MarginOfferStore for PgStore {
    async fn create(&self, offer: MarginOffer, ctx: &WriteContext) -> StoreResult<Written> {
        let ids = vec![offer.id.clone()];
        self.write_plan(ctx, ids, |lookup, now| {
            plan_create(offer.clone(), lookup, now).map(single)
        })
        .await
    }

    async fn get(&self, id: &str) -> StoreResult<MarginOffer> {
        let ids = [id.to_owned()];
        read!(self, |tx| async {
            rows::offers_by_id(&tx, &ids)
                .await?
                .remove(id)
                .ok_or_else(|| DbError::Store(StoreError::NotFound { id: id.to_owned() }))
        }
        .await)
    }

    async fn update(&self, offer: MarginOffer, ctx: &WriteContext) -> StoreResult<Written> {
        let ids = vec![offer.id.clone()];
        self.write_plan(ctx, ids, |lookup, now| {
            plan_update(offer.clone(), lookup, now).map(single)
        })
        .await
    }

    async fn delete(&self, id: &str, ctx: &WriteContext) -> StoreResult<Revision> {
        self.write_plan(ctx, vec![id.to_owned()], |lookup, _now| {
            plan_delete(id, lookup).map(|plan| (0, plan))
        })
        .await
    }

    async fn create_or_update(
        &self,
        offer: MarginOffer,
        ctx: &WriteContext,
    ) -> StoreResult<Written> {
        let ids = vec![offer.id.clone()];
        self.write_plan(ctx, ids, |lookup, now| {
            plan_create_or_update(offer.clone(), lookup, now).map(single)
        })
        .await
    }

    async fn list(&self, query: &ListQuery) -> StoreResult<ListPage> {
        // Fail fast on a bad query without touching the pool.
        query.resolve()?;
        read!(self, |tx| list_in(&tx, query).await)
    }

    async fn bulk_create(
        &self,
        offers: Vec<MarginOffer>,
        opts: BulkCreateOptions,
        ctx: &WriteContext,
    ) -> StoreResult<BulkOutcome> {
        let ids = ids_of(&offers);
        self.write_plan(ctx, ids, |lookup, now| {
            plan_bulk_create(offers.clone(), opts, lookup, now).map(|p| (p.outcome, p.plan))
        })
        .await
    }

    async fn bulk_update(
        &self,
        patches: Vec<OfferPatch>,
        opts: BulkUpdateOptions,
        ctx: &WriteContext,
    ) -> StoreResult<BulkOutcome> {
        let ids = patches.iter().map(|p| p.id.clone()).collect();
        self.write_plan(ctx, ids, |lookup, now| {
            plan_bulk_update(patches.clone(), opts, lookup, now).map(|p| (p.outcome, p.plan))
        })
        .await
    }

    async fn bulk_delete(
        &self,
        ids: Vec<String>,
        opts: BulkDeleteOptions,
        ctx: &WriteContext,
    ) -> StoreResult<BulkOutcome> {
        self.write_plan(ctx, ids.clone(), |lookup, _now| {
            plan_bulk_delete(ids.clone(), opts, lookup).map(|p| (p.outcome, p.plan))
        })
        .await
    }

    async fn bulk_create_or_update(
        &self,
        offers: Vec<MarginOffer>,
        opts: BulkUpsertOptions,
        ctx: &WriteContext,
    ) -> StoreResult<BulkOutcome> {
        let ids = ids_of(&offers);
        self.write_plan(ctx, ids, |lookup, now| {
            plan_bulk_create_or_update(offers.clone(), opts, lookup, now)
                .map(|p| (p.outcome, p.plan))
        })
        .await
    }

    async fn overwrite(
        &self,
        req: OverwriteRequest,
        ctx: &WriteContext,
    ) -> StoreResult<OverwriteOutcome> {
        // Refuse the store-wiping request before taking the writer lock.
        write::check_overwrite_request(req.offers.is_empty(), req.filter.as_ref())?;
        let ids = ids_of(&req.offers);
        let scope = scope_where(req.filter.as_ref());
        self.write(ctx, ids, Some(scope), |loaded, now| {
            let Loaded { known, scope } = loaded;
            let planned = plan_overwrite(
                req.clone(),
                scope,
                &mut |id| Ok(known.get(id).cloned()),
                now,
            )?;
            Ok(Planned {
                value: planned.outcome,
                plan: planned.plan,
                commit: !req.dry_run,
            })
        })
        .await
    }

    async fn overwrite_preview(
        &self,
        filter: Option<&OverwriteFilter>,
    ) -> StoreResult<Vec<String>> {
        let w = scope_where(filter);
        let p = rows::params(&w.params);
        read!(self, |tx| async {
            let rows = tx
                .query(
                    &format!("SELECT id FROM offers{} ORDER BY id", w.sql()),
                    &rows::refs(&p),
                )
                .await?;
            rows.iter()
                .map(|r| r.try_get::<_, String>(0))
                .collect::<Result<Vec<_>, _>>()
                .map_err(DbError::Pg)
        }
        .await)
    }

    async fn stats(&self, query: &StatsQuery) -> StoreResult<Stats> {
        read!(self, |tx| stats_in(&tx, query).await)
    }

    async fn health_check(&self) -> StoreResult<()> {
        let client = self.client().await?;
        client
            .query_one("SELECT 1", &[])
            .await
            .map_err(|e| StoreError::Unavailable(format!("postgres health check: {e}")))?;
        Ok(())
    }

    async fn close(&self) -> StoreResult<()> {
        self.inner.closed.store(true, Ordering::Release);
        self.inner.stop.send_replace(true);
        self.inner.pool.close();
        Ok(())
    }

    async fn revision(&self) -> StoreResult<Revision> {
        read!(self, |tx| rows::meta(&tx).await.map(|(r, _)| r))
    }

    fn subscribe_commits(&self) -> Option<watch::Receiver<Revision>> {
        Some(self.inner.commits.subscribe())
    }

    async fn changes_since(&self, after: Revision, limit: usize) -> StoreResult<ChangeBatch> {
        read!(self, |tx| changes_in(&tx, after, limit).await)
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        // The LISTEN task would otherwise outlive every handle to the store.
        self.stop.send_replace(true);
    }
}
