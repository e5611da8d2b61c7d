//! Opening the backend a `--database-url` names.

use crate::Error;
use crate::cli::DatabaseUrl;
use offer_store::SharedStore;
use std::sync::Arc;

/// Tuning of the PostgreSQL backend (ignored by the others).
#[derive(Clone, Debug, Default)]
pub struct BackendOptions {
    pub postgres: store_postgres::PgOptions,
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
        DatabaseUrl::Memory => Ok(Arc::new(store_memory::MemoryStore::new())),
        DatabaseUrl::Sqlite(path) => {
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir).map_err(|e| {
                    Error::Database(format!(
                        "cannot create directory {} for {url}: {e}",
                        dir.display()
                    ))
                })?;
            }
            let store = store_sqlite::SqliteStore::open(path)
                .await
                .map_err(|e| Error::Database(format!("cannot open {url}: {e}")))?;
            Ok(Arc::new(store))
        }
        DatabaseUrl::Postgres(pg) => {
            let store = store_postgres::PgStore::connect(pg.expose(), options.postgres.clone())
                .await
                .map_err(|e| Error::Database(format!("cannot open {url}: {e}")))?;
            Ok(Arc::new(store))
        }
    }
}
