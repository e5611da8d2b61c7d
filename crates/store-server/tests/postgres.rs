//! Several `store` processes on one PostgreSQL database (the server named by
//! `TEST_DATABASE_URL`; each test gets a database of its own).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::pg::{TestDatabase, server_url};
use common::{Server, offer};
use offer_proto::pb;

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
