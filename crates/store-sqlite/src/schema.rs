//! Opening connections, pragmas and the versioned schema migrations.

use crate::codec;
use crate::error::{map_err, unavailable_at};
use crate::rows::{OFFER_COLS, offer_from_row};
use offer_domain::StoreResult;
use rusqlite::{Connection, OpenFlags, Transaction, TransactionBehavior};
use std::path::Path;
use std::time::Duration;

/// How long a connection waits on a lock held by another connection before
/// reporting `Unavailable`; long enough to ride out a checkpoint.
pub(crate) const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// The writer's page cache in KiB (SQLite's default is 2 MiB).
const WRITER_CACHE_KIB: u32 = 64 * 1024;

/// Bytes the WAL file is cut back to when it starts over, so one huge write
/// does not keep its disk space (see `checkpoint::RESTART_FRAMES`).
const WAL_SIZE_LIMIT: i64 = 256 * 1024 * 1024;

/// Prepared statements kept per connection: the list queries vary with the
/// filters used, so the default of 16 would thrash.
const STATEMENT_CACHE: usize = 128;

/// One schema step: SQL, or code for what SQL alone cannot do.
pub(crate) enum Migration {
    Sql(&'static str),
    Code(fn(&Transaction<'_>) -> StoreResult<()>),
}

/// The schema, one entry per version; `PRAGMA user_version` records how many
/// have been applied. Append only: never edit an entry once released.
pub(crate) const MIGRATIONS: &[Migration] = &[
    Migration::Sql(
        // v1: offers, the change log and the revision counter.
        //
        // WITHOUT ROWID clusters offers by id, which saves the separate primary
        // key index and makes every secondary index end in id, so
        // `(created_timestamp)` serves `ORDER BY created_timestamp, id`.
        "
    CREATE TABLE offers (
        id TEXT PRIMARY KEY NOT NULL,
        offer_type TEXT NOT NULL,
        collateral_token TEXT NOT NULL,
        borrow_token TEXT NOT NULL,
        available_borrow_amount REAL NOT NULL,
        max_open_ltv REAL NOT NULL,
        liquidation_ltv REAL NOT NULL,
        interest_rate REAL NOT NULL,
        interest_model TEXT NOT NULL,
        term_days INTEGER,
        liquidity_source TEXT NOT NULL,
        lender_address TEXT,
        last_borrowed_timestamp INTEGER,
        created_timestamp INTEGER NOT NULL,
        updated_timestamp INTEGER NOT NULL,
        source TEXT,
        expires_at INTEGER
    ) WITHOUT ROWID;
    -- Few indexes on purpose: each one costs every write, and a 100k-offer
    -- overwrite must stay well under a second. These serve the default sort
    -- (created, then id), the backfiller's scope (source), the token-pair and
    -- lender lookups; other filters and sorts scan, which is fine at the
    -- book's size. Partial indexes skip the many NULLs.
    CREATE INDEX offers_created ON offers (created_timestamp);
    CREATE INDEX offers_source ON offers (source) WHERE source IS NOT NULL;
    CREATE INDEX offers_pair ON offers (borrow_token, collateral_token);
    CREATE INDEX offers_lender ON offers (lender_address) WHERE lender_address IS NOT NULL;

    CREATE TABLE changes (
        revision INTEGER NOT NULL,
        seq INTEGER NOT NULL,
        change_type INTEGER NOT NULL,
        timestamp INTEGER NOT NULL,
        origin TEXT NOT NULL,
        operation_id TEXT NOT NULL,
        id TEXT NOT NULL,
        offer_type TEXT NOT NULL,
        collateral_token TEXT NOT NULL,
        borrow_token TEXT NOT NULL,
        available_borrow_amount REAL NOT NULL,
        max_open_ltv REAL NOT NULL,
        liquidation_ltv REAL NOT NULL,
        interest_rate REAL NOT NULL,
        interest_model TEXT NOT NULL,
        term_days INTEGER,
        liquidity_source TEXT NOT NULL,
        lender_address TEXT,
        last_borrowed_timestamp INTEGER,
        created_timestamp INTEGER,
        updated_timestamp INTEGER,
        source TEXT,
        PRIMARY KEY (revision, seq)
    ) WITHOUT ROWID;

    CREATE TABLE meta (
        key TEXT PRIMARY KEY NOT NULL,
        value INTEGER NOT NULL
    ) WITHOUT ROWID;
    INSERT INTO meta (key, value) VALUES ('revision', 0), ('pruned_through', 0);
    ",
    ),
    // v2: indexes shaped like the common listings (issue #7).
    //
    // Each index serves a filter prefix plus a sort key, so a page is an
    // index range read in order that stops at the limit, and the keyset
    // condition (`key >= ? AND (key > ? OR id > ?)`) seeks to the page
    // start. Ties sort by id ascending in both directions, so a DESC key is
    // declared DESC: then one forward scan yields (key DESC, id ASC)
    // exactly. The opposite direction still uses the index for the key and
    // sorts only the ties. `expires_at` trails every list index so the
    // `total` count (which hides expired offers) reads the index alone.
    //
    // The set, one index per shape rather than per combination (each costs
    // every write):
    // - created DESC: the default listing, unfiltered;
    // - borrow token + interest rate: the borrower's question (cheapest
    //   first); also serves the borrow-token and token-pair filters;
    // - collateral token + created DESC: the collateral side's listing;
    // - available amount DESC: the deepest-liquidity listing.
    // Other filters and sorts read the nearest of these and sort the rest.
    // v1's (borrow_token, collateral_token) and (created_timestamp) are
    // replaced; source and lender keep theirs (overwrite scopes, lookups).
    Migration::Sql(
        "
    DROP INDEX offers_created;
    DROP INDEX offers_pair;
    CREATE INDEX offers_created ON offers (created_timestamp DESC, id, expires_at);
    CREATE INDEX offers_borrow_rate ON offers (borrow_token, interest_rate, id, expires_at);
    CREATE INDEX offers_collateral_created
        ON offers (collateral_token, created_timestamp DESC, id, expires_at);
    CREATE INDEX offers_amount ON offers (available_borrow_amount DESC, id, expires_at);
    ",
    ),
    // v3: the compact change log (issue #7): see `compact_change_log`.
    Migration::Code(compact_change_log),
];

/// v3: each change row holds the offer as one BLOB (`codec.rs`) and the
/// commit's time, origin and operation id move to one `commits` row per
/// revision, so logging a change binds and writes four values instead of
/// twenty-two. Existing changes are converted, so resume points stay valid.
fn compact_change_log(tx: &Transaction<'_>) -> StoreResult<()> {
    tx.execute_batch(
        "
        CREATE TABLE commits (
            revision INTEGER PRIMARY KEY NOT NULL,
            timestamp INTEGER NOT NULL,
            origin TEXT NOT NULL,
            operation_id TEXT NOT NULL
        );
        -- Every row of a revision carries the same commit values.
        INSERT INTO commits (revision, timestamp, origin, operation_id)
            SELECT revision, MIN(timestamp), MIN(origin), MIN(operation_id)
            FROM changes GROUP BY revision;
        CREATE TABLE changes_v3 (
            revision INTEGER NOT NULL,
            seq INTEGER NOT NULL,
            change_type INTEGER NOT NULL,
            offer BLOB NOT NULL,
            PRIMARY KEY (revision, seq)
        ) WITHOUT ROWID;
        ",
    )
    .map_err(map_err)?;
    {
        let mut read = tx
            .prepare(&format!(
                "SELECT revision, seq, change_type, {OFFER_COLS} FROM changes ORDER BY revision, seq"
            ))
            .map_err(map_err)?;
        let mut write = tx
            .prepare(
                "INSERT INTO changes_v3 (revision, seq, change_type, offer) VALUES (?1, ?2, ?3, ?4)",
            )
            .map_err(map_err)?;
        let mut rows = read.query([]).map_err(map_err)?;
        let mut blob = Vec::new();
        while let Some(row) = rows.next().map_err(map_err)? {
            // v1 allowed NULL timestamps in the log; the offer type keeps them optional.
            let offer = offer_from_row(row, 3).map_err(map_err)?;
            blob.clear();
            codec::encode_offer(&offer, &mut blob);
            let key: (i64, i64, i64) = (
                row.get(0).map_err(map_err)?,
                row.get(1).map_err(map_err)?,
                row.get(2).map_err(map_err)?,
            );
            write
                .execute(rusqlite::params![key.0, key.1, key.2, blob])
                .map_err(map_err)?;
        }
    }
    tx.execute_batch("DROP TABLE changes; ALTER TABLE changes_v3 RENAME TO changes;")
        .map_err(map_err)
}

/// The schema version this build writes.
pub(crate) const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

fn common_pragmas(conn: &Connection, path: &Path) -> StoreResult<()> {
    conn.busy_timeout(BUSY_TIMEOUT)
        .map_err(|e| unavailable_at(path, &e))?;
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
    Ok(())
}

/// Opens the writer: creates the file, enables WAL and `synchronous=FULL`
/// (a write acknowledged is a write on disk) and migrates the schema.
pub(crate) fn open_writer(path: &Path) -> StoreResult<Connection> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|e| {
            offer_domain::StoreError::Unavailable(format!(
                "cannot create directory {} for the SQLite database: {e}",
                parent.display()
            ))
        })?;
    }
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
        | OpenFlags::SQLITE_OPEN_CREATE
        | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let mut conn =
        Connection::open_with_flags(path, flags).map_err(|e| unavailable_at(path, &e))?;
    common_pragmas(&conn, path)?;
    // The first statement reads the header, so a file that is not a database
    // fails here, and the error should name the path.
    // 8 KiB pages, not the default 4: bigger pages split less when a large
    // overwrite writes seven B-trees at random positions (100 000 offers
    // into an empty file: 8 KiB 439 ms, 16 KiB 401 ms; 4 KiB was 25 %
    // slower), while a commit writes every page it dirties whole to the
    // WAL, so a bulk upsert of 1 000 random ids into a 1 M-offer file costs
    // 1.6 s with 16 KiB pages and 0.96 s with 8 KiB. Only a new file takes
    // it: a WAL database keeps the page size it was created with.
    conn.execute_batch("PRAGMA page_size = 8192")
        .map_err(|e| unavailable_at(path, &e))?;
    let mode: String = conn
        .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
        .map_err(|e| unavailable_at(path, &e))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(offer_domain::StoreError::Unavailable(format!(
            "SQLite database {}: cannot enable WAL mode (journal_mode is {mode})",
            path.display()
        )));
    }
    // A large page cache keeps big overwrites from spilling to the WAL and
    // re-reading index pages mid-transaction.
    // The WAL is checkpointed by a thread of its own (`checkpoint.rs`), so
    // a commit returns once it is durable in the WAL instead of also
    // copying the WAL into the database on the caller's time.
    conn.execute_batch(&format!(
        "PRAGMA synchronous = FULL; PRAGMA cache_size = -{WRITER_CACHE_KIB}; \
         PRAGMA temp_store = MEMORY; PRAGMA wal_autocheckpoint = 0; \
         PRAGMA journal_size_limit = {WAL_SIZE_LIMIT}"
    ))
    .map_err(|e| unavailable_at(path, &e))?;
    migrate(&mut conn).map_err(|e| match e {
        offer_domain::StoreError::Unavailable(m) | offer_domain::StoreError::Internal(m) => {
            offer_domain::StoreError::Unavailable(format!(
                "SQLite database {}: migration failed: {m}",
                path.display()
            ))
        }
        other => other,
    })?;
    Ok(conn)
}

/// Opens the background checkpointer's connection (see `checkpoint.rs`).
pub(crate) fn open_checkpointer(path: &Path) -> StoreResult<Connection> {
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags).map_err(|e| unavailable_at(path, &e))?;
    common_pragmas(&conn, path)?;
    // Checkpoint writes are as durable as the commits they copy.
    conn.execute_batch("PRAGMA synchronous = FULL")
        .map_err(|e| unavailable_at(path, &e))?;
    Ok(conn)
}

/// Opens one read-only connection; the writer must have created the schema.
pub(crate) fn open_reader(path: &Path) -> StoreResult<Connection> {
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags).map_err(|e| unavailable_at(path, &e))?;
    common_pragmas(&conn, path)?;
    Ok(conn)
}

/// Applies every migration newer than the file's `user_version`, all in one
/// immediate transaction so two processes opening a new file cannot both
/// migrate it and a crash leaves the old version intact.
pub(crate) fn migrate(conn: &mut Connection) -> StoreResult<()> {
    migrate_to(conn, MIGRATIONS.len())
}

/// [`migrate`] up to schema version `target` only (tests build old files
/// with it).
pub(crate) fn migrate_to(conn: &mut Connection, target: usize) -> StoreResult<()> {
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(map_err)?;
    let version: i64 = tx
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(map_err)?;
    if version > SCHEMA_VERSION {
        return Err(offer_domain::StoreError::Unavailable(format!(
            "schema version {version} is newer than this build understands ({SCHEMA_VERSION})"
        )));
    }
    let target = target.min(MIGRATIONS.len());
    for (i, step) in MIGRATIONS
        .iter()
        .enumerate()
        .take(target)
        .skip(version.max(0) as usize)
    {
        match step {
            Migration::Sql(sql) => tx.execute_batch(sql).map_err(map_err)?,
            Migration::Code(run) => run(&tx)?,
        }
        tracing::info!(version = i + 1, "applied SQLite schema migration");
    }
    // PRAGMA takes no bound parameters; the value is our own constant.
    tx.execute_batch(&format!(
        "PRAGMA user_version = {}",
        target.max(version.max(0) as usize)
    ))
    .map_err(map_err)?;
    tx.commit().map_err(map_err)
}
