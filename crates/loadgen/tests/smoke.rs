//! The real path end to end at a tiny scale: an in-process store on
//! loopback, `load`, then every mix for about a second, with the peer when
//! `TEST_DATABASE_URL` is set. A smoke test: it checks that every operation
//! succeeds and nothing is lost, never how fast anything is.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use loadgen::mixes::Mix;
use loadgen::{Common, RunArgs};
use offer_store::SharedStore;
use std::sync::Arc;
use std::time::Duration;
use store_memory::MemoryStore;

async fn start_store() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let store: SharedStore = Arc::new(MemoryStore::new());
    tokio::spawn(store_service::serve(
        store,
        Default::default(),
        listener,
        std::future::pending(),
    ));
    addr.to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_then_every_mix_succeeds_and_fanout_loses_nothing() {
    let common = Common {
        addr: start_store().await,
        token: None,
        offers: 2_000,
        seed: 7,
        timeout: Duration::from_secs(60),
    };
    let loaded = loadgen::load(&common).await.unwrap();
    assert_eq!(loaded.offers, 2_000);

    let peer = std::env::var("TEST_DATABASE_URL").ok();
    if peer.is_none() {
        eprintln!("TEST_DATABASE_URL not set: the list mix runs without the peer");
    }
    let args = RunArgs {
        mix: Mix::All,
        duration: Duration::from_secs(1),
        clients: 4,
        clients_per_channel: 2,
        pages: 3,
        overwrite_offers: 2_000,
        subscribers: 20,
        fanout_offers: 300,
        peer_database_url: peer.clone(),
    };
    let report = loadgen::run(&common, &args).await.unwrap();
    println!("{}\n{}", report.machine, report.render());

    assert_eq!(report.errors(), 0, "{}", report.render());
    assert!(
        report.peer_mismatches.is_empty(),
        "{:?}",
        report.peer_mismatches
    );
    for op in [
        "get",
        "list",
        "upsert",
        "bulk-upsert 1000",
        "overwrite stream 2000",
    ] {
        let row = report.row(op).unwrap_or_else(|| panic!("no row for {op}"));
        assert!(row.stats.ok() > 0, "{op} never ran");
        assert!(row.floor_p50.is_some(), "{op} has no floor");
    }
    // Every overwrite changes every offer of its scope.
    let ow = report.row("overwrite stream 2000").unwrap();
    assert_eq!(ow.stats.items, ow.stats.ok() * 2_000);
    assert_eq!(
        report.row("bulk-upsert 1000").unwrap().stats.items % 1_000,
        0
    );
    let fanout = report.fanout.as_ref().unwrap();
    assert!(fanout.rounds >= 1);
    assert_eq!(fanout.lost, 0);
    assert_eq!(fanout.from_ack.ok(), fanout.rounds * 20);
    if peer.is_some() {
        let list = report.row("list").unwrap();
        assert!(list.peer_p50.is_some());
        assert!(report.row("peer").unwrap().stats.ok() > 0);
    }
}
