//! Several `store` processes on one PostgreSQL database (the server named by
//! `TEST_DATABASE_URL`; each test gets a database of its own).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{Server, offer};
use offer_proto::pb;

/// The server to test against. In CI (`CI=true`) a missing URL fails the
/// test; locally the test is skipped with a notice.
fn server_url() -> Option<String> {
    match std::env::var("TEST_DATABASE_URL") {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            let ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
            assert!(
                !ci,
                "TEST_DATABASE_URL is not set; CI must run the PostgreSQL tests"
            );
            eprintln!("TEST_DATABASE_URL is not set: skipping this PostgreSQL test");
            None
        }
    }
}

/// `url` with its database name replaced.
fn with_database(url: &str, db: &str) -> String {
    let (base, query) = url
        .split_once('?')
        .map_or((url, None), |(b, q)| (b, Some(q)));
    let (scheme, rest) = base.split_once("://").unwrap();
    let host = rest.split_once('/').map_or(rest, |(h, _)| h);
    match query {
        Some(q) => format!("{scheme}://{host}/{db}?{q}"),
        None => format!("{scheme}://{host}/{db}"),
    }
}

/// A fresh database, dropped (with its connections) when the guard drops.
struct TestDatabase {
    admin_url: String,
    name: String,
}

async fn admin(url: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .expect("connect to the test server");
    tokio::spawn(conn);
    client
}

impl TestDatabase {
    async fn create(admin_url: &str) -> TestDatabase {
        let name = format!("t_{}", uuid::Uuid::new_v4().simple());
        admin(admin_url)
            .await
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .unwrap();
        TestDatabase {
            admin_url: admin_url.to_owned(),
            name,
        }
    }

    fn url(&self) -> String {
        with_database(&self.admin_url, &self.name)
    }

    async fn drop_now(self) {
        let _ = admin(&self.admin_url)
            .await
            .batch_execute(&format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            ))
            .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_through_one_instance_is_readable_through_the_other() {
    let Some(admin_url) = server_url() else {
        return;
    };
    let db = TestDatabase::create(&admin_url).await;
    let url = db.url();
    // Both start (and migrate) at once.
    let (one, two) = std::thread::scope(|s| {
        let a = s.spawn(|| Server::start(&url));
        let b = s.spawn(|| Server::start(&url));
        (a.join().unwrap(), b.join().unwrap())
    });
    let mut c1 = one.client().await;
    let mut c2 = two.client().await;

    c2.create_margin_offer(pb::CreateMarginOfferRequest {
        offer: Some(offer("via-two")),
    })
    .await
    .unwrap();
    let got = c1
        .get_margin_offer(pb::GetMarginOfferRequest {
            id: "via-two".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .offer
        .unwrap();
    assert_eq!(got.id, "via-two");
    assert_eq!(got.collateral_token, "SOL");

    // Revisions are global: a write through instance 1 follows instance 2's.
    c1.create_margin_offer(pb::CreateMarginOfferRequest {
        offer: Some(offer("via-one")),
    })
    .await
    .unwrap();
    let page = c2
        .list_margin_offers(pb::ListMarginOffersRequest {
            include_expired: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(page.total, 2);

    one.kill9();
    two.kill9();
    db.drop_now().await;
}
