//! Mapping PostgreSQL and pool errors onto `StoreError`.

use deadpool_postgres::PoolError;
use offer_domain::StoreError;
use tokio_postgres::error::SqlState;

/// A failure inside one write attempt: a database error (perhaps worth
/// retrying) or a decision of the store (never retried).
#[derive(Debug)]
pub(crate) enum DbError {
    Pg(tokio_postgres::Error),
    Store(StoreError),
}

impl From<tokio_postgres::Error> for DbError {
    fn from(e: tokio_postgres::Error) -> Self {
        DbError::Pg(e)
    }
}

impl From<StoreError> for DbError {
    fn from(e: StoreError) -> Self {
        DbError::Store(e)
    }
}

impl From<DbError> for StoreError {
    fn from(e: DbError) -> Self {
        match e {
            DbError::Pg(e) => map_pg(&e),
            DbError::Store(e) => e,
        }
    }
}

/// Serialisation failures and deadlocks: the transaction did nothing and
/// running it again may succeed.
pub(crate) fn is_retryable(e: &DbError) -> bool {
    match e {
        DbError::Pg(e) => e.code().is_some_and(|c| {
            *c == SqlState::T_R_SERIALIZATION_FAILURE || *c == SqlState::T_R_DEADLOCK_DETECTED
        }),
        DbError::Store(_) => false,
    }
}

/// `Unavailable` for connection and server-side resource failures,
/// `DeadlineExceeded` for the statement timeout, `Internal` otherwise.
pub(crate) fn map_pg(e: &tokio_postgres::Error) -> StoreError {
    let Some(db) = e.as_db_error() else {
        // No server error: the connection broke, timed out or was refused.
        return StoreError::Unavailable(format!("postgres: {e}"));
    };
    let code = db.code().code();
    let msg = format!("postgres: {} ({code})", db.message());
    if *db.code() == SqlState::QUERY_CANCELED {
        StoreError::DeadlineExceeded(msg)
    } else if code.starts_with("08")
        || code.starts_with("53")
        || code.starts_with("57P")
        || code.starts_with("40")
    {
        // Connection exceptions, insufficient resources, shutdowns, and
        // serialisation failures left after the retries.
        StoreError::Unavailable(msg)
    } else if code == "22021" || code == "22P05" {
        // A NUL byte or invalid text: PostgreSQL text cannot hold it.
        StoreError::invalid("offer", format!("text PostgreSQL cannot store: {msg}"))
    } else {
        StoreError::Internal(msg)
    }
}

pub(crate) fn map_pool(e: PoolError) -> StoreError {
    match e {
        PoolError::Backend(e) => map_pg(&e),
        PoolError::Closed => StoreError::Unavailable("store is closed".into()),
        PoolError::Timeout(t) => {
            StoreError::Unavailable(format!("no database connection available ({t:?} timeout)"))
        }
        other => StoreError::Unavailable(format!("postgres pool: {other}")),
    }
}
