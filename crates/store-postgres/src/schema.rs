//! The versioned schema migrations.

use crate::error::map_pg;
use offer_domain::{StoreError, StoreResult};
use tokio_postgres::Client;

/// One entry per version, recorded in `schema_migrations`. Append only:
/// never edit an entry once released.
///
/// Text columns use the "C" collation so comparisons and ORDER BY are
/// bytewise, like the domain's `compare_keys` and SQLite's BINARY.
/// Timestamps are nanoseconds since the epoch in BIGINT.
const MIGRATIONS: &[&str] = &[
    // v1: offers, the change log and the revision counter.
    r#"
    CREATE TABLE offers (
        id TEXT COLLATE "C" PRIMARY KEY,
        offer_type TEXT COLLATE "C" NOT NULL,
        collateral_token TEXT COLLATE "C" NOT NULL,
        borrow_token TEXT COLLATE "C" NOT NULL,
        available_borrow_amount DOUBLE PRECISION NOT NULL,
        max_open_ltv DOUBLE PRECISION NOT NULL,
        liquidation_ltv DOUBLE PRECISION NOT NULL,
        interest_rate DOUBLE PRECISION NOT NULL,
        interest_model TEXT COLLATE "C" NOT NULL,
        term_days INTEGER,
        liquidity_source TEXT COLLATE "C" NOT NULL,
        lender_address TEXT COLLATE "C",
        last_borrowed_timestamp BIGINT,
        created_timestamp BIGINT NOT NULL,
        updated_timestamp BIGINT NOT NULL,
        source TEXT COLLATE "C",
        expires_at BIGINT
    );
    -- The default listing (created desc, id asc) reads this index in order
    -- and stops at the limit; the token filter plus rate sort (the borrow
    -- side's question) reads the second; the backfiller's scope and the
    -- pair and lender lookups use the rest. Each index costs every write,
    -- so other filters and sorts scan or sort a filtered set.
    CREATE INDEX offers_created ON offers (created_timestamp DESC, id);
    CREATE INDEX offers_borrow_rate ON offers (borrow_token, interest_rate DESC, id);
    CREATE INDEX offers_collateral ON offers (collateral_token, borrow_token);
    CREATE INDEX offers_source ON offers (source) WHERE source IS NOT NULL;
    CREATE INDEX offers_lender ON offers (lender_address) WHERE lender_address IS NOT NULL;

    CREATE TABLE changes (
        revision BIGINT NOT NULL,
        seq INTEGER NOT NULL,
        change_type INTEGER NOT NULL,
        timestamp BIGINT NOT NULL,
        origin TEXT NOT NULL,
        operation_id TEXT NOT NULL,
        id TEXT COLLATE "C" NOT NULL,
        offer_type TEXT NOT NULL,
        collateral_token TEXT NOT NULL,
        borrow_token TEXT NOT NULL,
        available_borrow_amount DOUBLE PRECISION NOT NULL,
        max_open_ltv DOUBLE PRECISION NOT NULL,
        liquidation_ltv DOUBLE PRECISION NOT NULL,
        interest_rate DOUBLE PRECISION NOT NULL,
        interest_model TEXT NOT NULL,
        term_days INTEGER,
        liquidity_source TEXT NOT NULL,
        lender_address TEXT,
        last_borrowed_timestamp BIGINT,
        created_timestamp BIGINT,
        updated_timestamp BIGINT,
        source TEXT,
        PRIMARY KEY (revision, seq)
    );

    -- One row: the revision counter, whose row lock serialises writers
    -- across every store instance (see the crate docs).
    CREATE TABLE meta (
        singleton BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (singleton),
        revision BIGINT NOT NULL,
        pruned_through BIGINT NOT NULL
    );
    INSERT INTO meta (revision, pruned_through) VALUES (0, 0);
    "#,
    // v2: the remaining common listings (issue #7) read an index in order
    // too: the collateral side's newest offers, and the deepest liquidity
    // unfiltered. The collateral index replaces (collateral_token,
    // borrow_token): token-pair filters use offers_borrow_rate's prefix.
    // Same shapes as the SQLite backend's v2, whose comment has the why.
    r#"
    DROP INDEX offers_collateral;
    CREATE INDEX offers_collateral_created
        ON offers (collateral_token, created_timestamp DESC, id);
    CREATE INDEX offers_amount ON offers (available_borrow_amount DESC, id);
    "#,
];

/// Any constant works: the lock only serialises migrations of this schema
/// family within one database.
const MIGRATION_LOCK: i64 = 0x6d6f_7300_0001;

/// Creates `schema` when given, then applies every migration newer than the
/// recorded version, in one transaction holding an advisory lock, so two
/// instances starting at once migrate once and a failure leaves the old
/// version intact.
pub(crate) async fn migrate(client: &mut Client, schema: Option<&str>) -> StoreResult<()> {
    let tx = client.transaction().await.map_err(|e| map_pg(&e))?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await
        .map_err(|e| map_pg(&e))?;
    if let Some(schema) = schema {
        // Checked to be a plain identifier by the caller.
        tx.batch_execute(&format!("CREATE SCHEMA IF NOT EXISTS {schema}"))
            .await
            .map_err(|e| map_pg(&e))?;
    }
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations (
            version INTEGER PRIMARY KEY,
            applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
        )",
    )
    .await
    .map_err(|e| map_pg(&e))?;
    let version: i32 = tx
        .query_one(
            "SELECT COALESCE(MAX(version), 0) FROM schema_migrations",
            &[],
        )
        .await
        .and_then(|r| r.try_get(0))
        .map_err(|e| map_pg(&e))?;
    let known = i32::try_from(MIGRATIONS.len()).unwrap_or(i32::MAX);
    if version > known {
        return Err(StoreError::Unavailable(format!(
            "schema version {version} is newer than this build understands ({known})"
        )));
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(version.max(0) as usize) {
        let v = i32::try_from(i + 1).unwrap_or(i32::MAX);
        tx.batch_execute(sql).await.map_err(|e| map_pg(&e))?;
        tx.execute("INSERT INTO schema_migrations (version) VALUES ($1)", &[&v])
            .await
            .map_err(|e| map_pg(&e))?;
        tracing::info!(version = v, "applied PostgreSQL schema migration");
    }
    tx.commit().await.map_err(|e| map_pg(&e))
}
