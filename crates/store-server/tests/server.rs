//! End-to-end tests of the `store` binary: durability across kill -9,
//! graceful shutdown, startup errors, and the HTTP endpoints.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{Server, all_ids, http_get, offer, run_to_exit};
use offer_proto::pb;
use std::time::Duration;

fn sqlite_url(dir: &tempfile::TempDir) -> String {
    format!("sqlite://{}/nested/dir/offers.db", dir.path().display())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let url = sqlite_url(&dir);

    let server = Server::start(&url);
    let mut client = server.client().await;
    let mut expected = Vec::new();
    for i in 0..1000 {
        let id = format!("offer-{i:04}");
        client
            .create_margin_offer(pb::CreateMarginOfferRequest {
                offer: Some(offer(&id)),
            })
            .await
            .unwrap_or_else(|e| panic!("create {id}: {e}"));
        expected.push(id);
    }
    // No flush, no close: the process dies right after the last ack.
    server.kill9();

    let server = Server::start(&url);
    let mut client = server.client().await;
    let page = client
        .list_margin_offers(pb::ListMarginOffersRequest {
            limit: 1,
            include_expired: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(page.total, 1000);
    assert_eq!(all_ids(&mut client).await, expected);
    let got = client
        .get_margin_offer(pb::GetMarginOfferRequest {
            id: "offer-0999".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .offer
        .unwrap();
    assert_eq!(got.collateral_token, "SOL");
    assert!(got.created_timestamp.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_closes_and_exits_zero() {
    let dir = tempfile::tempdir().unwrap();
    let url = sqlite_url(&dir);

    let server = Server::start(&url);
    let mut client = server.client().await;
    let resp = client
        .bulk_create_margin_offers(pb::BulkCreateMarginOffersRequest {
            offers: (0..50).map(|i| offer(&format!("bulk-{i:02}"))).collect(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(resp.success_count, 50, "{resp:?}");
    // An open subscription must not hold the drain forever.
    let mut stream = client
        .subscribe_margin_offers(pb::SubscribeMarginOffersRequest {
            client_id: "shutdown-test".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let first = stream.message().await.unwrap().expect("first message");
    assert!(first.event.is_some());
    let held = tokio::spawn(async move { while let Ok(Some(_)) = stream.message().await {} });

    let (status, logs, stderr) = server.signal_and_wait("TERM");
    assert_eq!(status.code(), Some(0), "stderr: {stderr}; logs: {logs:#?}");
    assert!(stderr.trim().is_empty(), "stderr: {stderr}");
    let pos = |needle: &str| {
        logs.iter()
            .position(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("no log line with {needle:?}: {logs:#?}"))
    };
    // Each step is logged, in order.
    assert!(pos("shutdown requested") < pos("closing store"));
    assert!(pos("closing store") < pos("store closed"));
    assert!(pos("in-flight calls finished") < pos("closing store"));
    held.await.unwrap();
    drop(client);

    let server = Server::start(&url);
    let mut client = server.client().await;
    let ids = all_ids(&mut client).await;
    assert_eq!(ids.len(), 50);
    let (status, _, _) = server.signal_and_wait("INT");
    assert_eq!(status.code(), Some(0));
}

/// Asserts a non-zero exit with exactly one line on stderr, and returns it.
fn fails_with_one_line(args: &[&str]) -> String {
    let out = run_to_exit(args, Duration::from_secs(60));
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !out.status.success(),
        "{args:?} succeeded; stderr: {stderr}"
    );
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(
        lines.len(),
        1,
        "{args:?}: stderr is not one line: {stderr:?}"
    );
    let line = lines[0].to_owned();
    for bad in ["panicked", "backtrace", "Backtrace", "{ ", "Os {"] {
        assert!(!line.contains(bad), "{args:?}: {line}");
    }
    line
}

#[test]
fn bad_flags_exit_non_zero_with_one_line() {
    fn with_mem<'a>(extra: &[&'a str]) -> Vec<&'a str> {
        let mut v = vec!["--database-url", "memory://"];
        v.extend_from_slice(extra);
        v
    }
    fails_with_one_line(&with_mem(&["--bogus"]));
    let line = fails_with_one_line(&with_mem(&["--addr", "nonsense"]));
    assert!(line.contains("nonsense"), "{line}");
    fails_with_one_line(&with_mem(&["--http-addr", ":99999"]));
    fails_with_one_line(&with_mem(&["--log-format", "xml"]));
    fails_with_one_line(&with_mem(&["--max-bulk-items", "zero"]));
    fails_with_one_line(&with_mem(&["--log-level", "info,=[bad"]));

    // A port already taken.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let line = fails_with_one_line(&with_mem(&["--addr", &addr, "--http-addr", "127.0.0.1:0"]));
    assert!(line.contains(&addr), "{line}");
}

#[test]
fn bad_database_urls_exit_non_zero_with_one_line() {
    let run = |url: &str| {
        fails_with_one_line(&[
            "--addr",
            "127.0.0.1:0",
            "--http-addr",
            "127.0.0.1:0",
            "--database-url",
            url,
        ])
    };
    let line = run("mysql://localhost/offers");
    assert!(line.contains("mysql"), "{line}");
    // Nothing listens on port 1: refused at once, reported without the password.
    let line = run("postgres://user:secret@127.0.0.1:1/offers");
    assert!(
        line.contains("cannot open postgres://127.0.0.1:1/offers"),
        "{line}"
    );
    assert!(!line.contains("secret"), "{line}");
    run("sqlite://");

    // A directory that cannot be created: its parent is a regular file.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("plain-file");
    std::fs::write(&file, b"not a directory").unwrap();
    let line = run(&format!("sqlite://{}/sub/offers.db", file.display()));
    assert!(line.contains("plain-file"), "{line}");
}

#[test]
fn help_and_version_exit_zero() {
    let out = run_to_exit(&["--help"], Duration::from_secs(30));
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--addr",
        "--http-addr",
        "--database-url",
        "--max-bulk-items",
        "--log-format",
    ] {
        assert!(help.contains(flag), "{help}");
    }
    let out = run_to_exit(&["--version"], Duration::from_secs(30));
    assert!(out.status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_and_metrics() {
    let server = Server::start("memory://");
    let (status, body) = http_get(server.http, "/healthz");
    assert_eq!((status, body.trim()), (200, "ok"));

    let mut client = server.client().await;
    for i in 0..3 {
        client
            .create_margin_offer(pb::CreateMarginOfferRequest {
                offer: Some(offer(&format!("m-{i}"))),
            })
            .await
            .unwrap();
    }
    let missing = client
        .get_margin_offer(pb::GetMarginOfferRequest { id: "nope".into() })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), tonic::Code::NotFound);

    let (status, body) = http_get(server.http, "/metrics");
    assert_eq!(status, 200, "{body}");
    let value = |name: &str| -> Option<f64> {
        body.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
    };
    assert_eq!(value("store_offers"), Some(3.0), "{body}");
    assert!(value("store_revision").is_some_and(|r| r >= 3.0), "{body}");

    let created: f64 = body
        .lines()
        .filter(|l| l.starts_with("grpc_server_requests_total{") && l.contains("CreateMarginOffer"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(created, 3.0, "{body}");
    assert!(
        body.lines()
            .any(|l| l.starts_with("grpc_server_requests_total{") && l.contains("GetMarginOffer")),
        "{body}"
    );
    // Our buckets, not the exporter's summary quantiles.
    assert!(
        body.lines().any(
            |l| l.starts_with("grpc_server_request_duration_seconds_bucket{")
                && l.contains("le=\"0.005\"")
        ),
        "{body}"
    );

    let (status, _) = http_get(server.http, "/nope");
    assert_eq!(status, 404);
}

/// `--change-log-retention` and `--change-log-min-age` reach the backend: with
/// a window of 8 changes and no age floor, resuming from revision 1 after 64
/// writes is OUT_OF_RANGE naming the oldest retained revision, while a
/// resume point inside the window replays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn change_log_window_flags_reach_the_backend() {
    let dir = tempfile::tempdir().unwrap();
    let sqlite = sqlite_url(&dir);
    for url in ["memory://", sqlite.as_str()] {
        let server = Server::start_with(&[
            "--addr",
            "127.0.0.1:0",
            "--http-addr",
            "127.0.0.1:0",
            "--database-url",
            url,
            "--change-log-retention",
            "8",
            "--change-log-min-age",
            "0",
        ]);
        let mut client = server.client().await;
        for i in 0..64 {
            client
                .create_margin_offer(pb::CreateMarginOfferRequest {
                    offer: Some(offer(&format!("w-{i:02}"))),
                })
                .await
                .unwrap();
        }
        let subscribe = |start: i64| pb::SubscribeMarginOffersRequest {
            start_revision: Some(start),
            ..Default::default()
        };
        let err = client.subscribe_margin_offers(subscribe(1)).await.err();
        let err = err.unwrap_or_else(|| panic!("{url}: resuming from revision 1 must fail"));
        assert_eq!(err.code(), tonic::Code::OutOfRange, "{url}: {err}");
        assert!(err.message().contains("oldest"), "{url}: {}", err.message());

        let mut stream = client
            .subscribe_margin_offers(subscribe(62))
            .await
            .unwrap()
            .into_inner();
        let mut replayed = Vec::new();
        while replayed.len() < 2 {
            let msg = tokio::time::timeout(Duration::from_secs(10), stream.message())
                .await
                .unwrap()
                .unwrap()
                .unwrap();
            // Skip the subscription_established marker (type UNKNOWN).
            if let Some(pb::subscribe_margin_offers_response::Event::Change(c)) = msg.event
                && c.change_type != 0
            {
                replayed.push(c.revision);
            }
        }
        assert_eq!(replayed, [63, 64], "{url}");
    }
}
