//! Mapping SQLite errors onto `StoreError`.

use offer_domain::StoreError;
use rusqlite::ErrorCode;
use std::path::Path;

/// True for failures of the storage itself (I/O, locks, a missing or foreign
/// file), which callers may retry or report as the backend being down.
fn is_unavailable(e: &rusqlite::Error) -> bool {
    match e {
        rusqlite::Error::SqliteFailure(f, _) => matches!(
            f.code,
            ErrorCode::DatabaseBusy
                | ErrorCode::DatabaseLocked
                | ErrorCode::SystemIoFailure
                | ErrorCode::CannotOpen
                | ErrorCode::DiskFull
                | ErrorCode::NotADatabase
                | ErrorCode::PermissionDenied
                | ErrorCode::ReadOnly
                | ErrorCode::FileLockingProtocolFailed
                | ErrorCode::DatabaseCorrupt
                | ErrorCode::OutOfMemory
        ),
        _ => false,
    }
}

/// `Unavailable` for storage failures, `Internal` for everything else.
pub(crate) fn map_err(e: rusqlite::Error) -> StoreError {
    if is_unavailable(&e) {
        StoreError::Unavailable(format!("sqlite: {e}"))
    } else {
        StoreError::Internal(format!("sqlite: {e}"))
    }
}

/// Any failure while opening is the store being unavailable; the message
/// names the file so an operator can find it.
pub(crate) fn unavailable_at(path: &Path, e: &rusqlite::Error) -> StoreError {
    StoreError::Unavailable(format!(
        "cannot open SQLite database {}: {e}",
        path.display()
    ))
}
