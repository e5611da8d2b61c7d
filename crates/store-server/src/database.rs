//! Opening the backend a `--database-url` names.

use crate::Error;
use crate::cli::DatabaseUrl;
use offer_store::SharedStore;
use std::sync::Arc;

/// Tuning of the backends.
#[derive(Clone, Debug, Default)]
pub struct BackendOptions {
    /// PostgreSQL only (its change-log window is taken from `change_log`).
    pub postgres: store_postgres::PgOptions,
    /// Every backend: how much of the change log stays readable.
    pub change_log: ChangeLogWindow,
}

/// The change log keeps at least `retention` changes and every change
/// younger than `min_age` (the larger window wins).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChangeLogWindow {
    pub retention: usize,
    pub min_age: std::time::Duration,
}

impl Default for ChangeLogWindow {
    fn default() -> Self {
        ChangeLogWindow {
            retention: store_memory::DEFAULT_CHANGE_RETENTION,
            min_age: store_memory::DEFAULT_CHANGE_MIN_AGE,
        }
    }
}

/// Opens the store with default tuning.
pub async fn open_store(url: &DatabaseUrl) -> Result<SharedStore, Error> {
    open_store_with(url, &BackendOptions::default()).await
}

/// Opens the store; SQLite files get their directory created first.
pub async fn open_store_with(
    url: &DatabaseUrl,
    options: &BackendOptions,
) -> Result<SharedStore, Error> {
    match url {
        DatabaseUrl::Memory => Ok(Arc::new(
            store_memory::MemoryStore::with_change_retention(options.change_log.retention)
                .with_change_min_age(options.change_log.min_age),
        )),
        DatabaseUrl::Sqlite(path) => {
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir).map_err(|e| {
                    Error::Database(format!(
                        "cannot create directory {} for {url}: {e}",
                        dir.display()
                    ))
                })?;
            }
            let sqlite = store_sqlite::SqliteOptions {
                change_log_retention: options.change_log.retention,
                change_log_min_age: Some(options.change_log.min_age),
                ..Default::default()
            };
            let store = store_sqlite::SqliteStore::open_with(path, sqlite)
                .await
                .map_err(|e| Error::Database(format!("cannot open {url}: {e}")))?;
            Ok(Arc::new(store))
        }
        DatabaseUrl::Postgres(pg) => {
            let postgres = store_postgres::PgOptions {
                change_log_retention: options.change_log.retention,
                change_log_min_age: options.change_log.min_age,
                ..options.postgres.clone()
            };
            let store = store_postgres::PgStore::connect(pg.expose(), postgres)
                .await
                .map_err(|e| Error::Database(format!("cannot open {url}: {e}")))?;
            Ok(Arc::new(store))
        }
    }
}
