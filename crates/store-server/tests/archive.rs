//! The scheduled archive export of the `store` binary (`--archive-url`,
//! `--archive-every`), run as a real process.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{Server, offer, run_to_exit};
use offer_archive::ArchiveLocation;
use offer_proto::pb;
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduled_export_writes_snapshots() {
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("archive");
    std::fs::create_dir_all(&archive).unwrap();
    let url = format!("file://{}", archive.display());
    let db = format!("sqlite://{}/offers.db", dir.path().display());
    let server = Server::start_with(&[
        "--addr",
        "127.0.0.1:0",
        "--http-addr",
        "127.0.0.1:0",
        "--database-url",
        &db,
        "--archive-url",
        &url,
        "--archive-every",
        "1s",
    ]);
    let mut client = server.client().await;
    for i in 0..3 {
        client
            .create_margin_offer(pb::CreateMarginOfferRequest {
                offer: Some(offer(&format!("arch-{i}"))),
            })
            .await
            .unwrap();
    }

    // Wait for a snapshot holding all three offers (an earlier tick may
    // have caught the book before the creates).
    let loc = ArchiveLocation::open(&url).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let offers = loop {
        let snaps = loc.list_snapshots().await.unwrap();
        if let Some(last) = snaps.last() {
            let offers = loc.read_snapshot(&last.name).await.unwrap();
            if offers.len() == 3 {
                break offers;
            }
        }
        assert!(
            Instant::now() < deadline,
            "no full snapshot in {}; logs: {:?}",
            archive.display(),
            server.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let mut ids: Vec<&str> = offers.iter().map(|o| o.id.as_str()).collect();
    ids.sort_unstable();
    assert_eq!(ids, ["arch-0", "arch-1", "arch-2"]);
    assert!(
        offers
            .iter()
            .all(|o| o.source.as_deref() == Some("server-test"))
    );
    assert!(
        server
            .logs()
            .iter()
            .any(|l| l.contains("archive snapshot written")),
        "{:?}",
        server.logs()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_export_is_logged_and_the_store_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    // The archive directory exists at start-up (the URL is checked then),
    // and is replaced by a plain file afterwards: every export fails.
    let blocker = dir.path().join("archive");
    std::fs::create_dir_all(&blocker).unwrap();
    let url = format!("file://{}", blocker.display());
    let db = format!("sqlite://{}/offers.db", dir.path().display());
    let server = Server::start_with(&[
        "--addr",
        "127.0.0.1:0",
        "--http-addr",
        "127.0.0.1:0",
        "--database-url",
        &db,
        "--archive-url",
        &url,
        "--archive-every",
        "1s",
    ]);
    std::fs::remove_dir(&blocker).unwrap();
    std::fs::write(&blocker, b"x").unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !server
        .logs()
        .iter()
        .any(|l| l.contains("archive export failed"))
    {
        assert!(Instant::now() < deadline, "{:?}", server.logs());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Still serving.
    let mut client = server.client().await;
    client
        .create_margin_offer(pb::CreateMarginOfferRequest {
            offer: Some(offer("after-failure")),
        })
        .await
        .unwrap();
}

#[test]
fn bad_archive_url_fails_at_start_up() {
    let out = run_to_exit(
        &[
            "--addr",
            "127.0.0.1:0",
            "--http-addr",
            "127.0.0.1:0",
            "--database-url",
            "memory://",
            "--archive-url",
            "ftp://nowhere/x",
        ],
        Duration::from_secs(30),
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--archive-url"), "{err}");
}
