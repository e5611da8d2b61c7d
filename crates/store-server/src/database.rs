//! Opening the backend a `--database-url` names.

use crate::Error;
use crate::cli::DatabaseUrl;
use offer_store::SharedStore;
use std::sync::Arc;

/// Opens the store; SQLite files get their directory created first.
pub async fn open_store(url: &DatabaseUrl) -> Result<SharedStore, Error> {
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
        DatabaseUrl::Postgres => Err(Error::Database(
            "PostgreSQL backend not available yet; use sqlite://PATH or memory://".to_owned(),
        )),
    }
}
