//! A fresh schema per test on the server named by `TEST_DATABASE_URL`.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use store_postgres::{PgOptions, PgStore};

/// The server to test against. In CI (`CI=true`) a missing URL fails the
/// test; locally the test is skipped with a notice.
pub fn database_url() -> Option<String> {
    match std::env::var("TEST_DATABASE_URL") {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            let ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
            assert!(
                !ci,
                "TEST_DATABASE_URL is not set; CI must run the PostgreSQL tests (scripts/pg.sh starts a server)"
            );
            eprintln!("TEST_DATABASE_URL is not set: skipping this PostgreSQL test");
            None
        }
    }
}

/// A schema name no other test uses.
pub fn unique_schema() -> String {
    format!("t_{}", uuid::Uuid::new_v4().simple())
}

pub fn options(schema: &str) -> PgOptions {
    PgOptions {
        pool_size: 4,
        schema: Some(schema.to_owned()),
        ..Default::default()
    }
}

/// Drops the test's schema when the test ends.
pub struct DropSchema {
    pub url: String,
    pub schema: String,
}

impl Drop for DropSchema {
    fn drop(&mut self) {
        let url = self.url.clone();
        let schema = self.schema.clone();
        // Dropped inside the test's runtime: clean up on a thread of its own.
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                if let Ok((client, conn)) =
                    tokio_postgres::connect(&url, tokio_postgres::NoTls).await
                {
                    let task = tokio::spawn(conn);
                    let _ = client
                        .batch_execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
                        .await;
                    drop(client);
                    let _ = task.await;
                }
            });
        })
        .join();
    }
}

pub async fn store(url: &str, schema: &str) -> PgStore {
    PgStore::connect(url, options(schema))
        .await
        .expect("connect to the test PostgreSQL")
}
