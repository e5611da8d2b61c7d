//! End to end with real processes: `store` on SQLite, `backfillers`, and an
//! off-chain feed served by the test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use offer_domain::{ChangeType, MarginOffer, OverwriteFilter, WriteContext};
use offer_store::MarginOfferStore;
use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

fn ids(prefix: &str, n: usize) -> Vec<serde_json::Value> {
    (0..n)
        .map(|i| offer_json(&format!("{prefix}-{i:05}"), 0.05))
        .collect()
}

/// Seeds an offer of another source, which no job may touch.
async fn seed_other(store: &impl MarginOfferStore) -> MarginOffer {
    let mut o = offer_domain::json::offer_from_json(offer_json("manual-1", 0.07)).unwrap();
    o.source = Some("manual".into());
    store
        .create(o, &WriteContext::new("test"))
        .await
        .unwrap()
        .offer
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn off_chain_run_once_then_diff() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::start(&dir.path().join("offers.db"), 0);
    let client = store.client().await;
    let other = seed_other(&client).await;
    // Two pages of two offers.
    let feed = Feed::start(
        vec![
            offer_json("p-a", 0.01),
            offer_json("p-b", 0.02),
            offer_json("p-c", 0.03),
            offer_json("p-d", 0.04),
        ],
        2,
    )
    .await;
    let cfg = job_file(dir.path(), "partner", &feed.url, 1000);
    let args = [
        "--store-addr",
        &store.addr(),
        "--run-once",
        "--source",
        "off-chain",
        "--config",
        cfg.to_str().unwrap(),
    ];
    let r = run_backfillers(&args).await;
    assert_eq!(r.code, Some(0), "{r:?}");
    assert_eq!(feed.requests(), 2, "two pages fetched");
    assert_eq!(
        scope_ids(&client, "partner").await,
        ["p-a", "p-b", "p-c", "p-d"]
    );
    for id in ["p-a", "p-b", "p-c", "p-d"] {
        assert_eq!(
            client.get(id).await.unwrap().source.as_deref(),
            Some("partner")
        );
    }
    let before = client.revision().await.unwrap();
    let c_before = client.get("p-c").await.unwrap();

    // One removed, one changed, one added.
    feed.set(vec![
        offer_json("p-b", 0.09),
        offer_json("p-c", 0.03),
        offer_json("p-d", 0.04),
        offer_json("p-e", 0.05),
    ]);
    let r = run_backfillers(&args).await;
    assert_eq!(r.code, Some(0), "{r:?}");
    assert!(
        r.stdout
            .contains("created 1, updated 1, deleted 1, unchanged 2"),
        "{}",
        r.stdout
    );
    let changes = client.changes_since(before, 100).await.unwrap().changes;
    let mut seen: Vec<(String, ChangeType)> = changes
        .iter()
        .map(|c| (c.offer.id.clone(), c.change_type))
        .collect();
    seen.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        seen,
        [
            ("p-a".to_owned(), ChangeType::Deleted),
            ("p-b".to_owned(), ChangeType::Overwritten),
            ("p-e".to_owned(), ChangeType::Overwritten),
        ],
        "exactly one delete, one update, one create"
    );
    // One atomic write: all three changes share one revision.
    assert!(changes.iter().all(|c| c.revision == changes[0].revision));
    assert_eq!(
        scope_ids(&client, "partner").await,
        ["p-b", "p-c", "p-d", "p-e"]
    );
    assert_eq!(client.get("p-b").await.unwrap().interest_rate, 0.09);
    assert_eq!(
        client.get("p-c").await.unwrap(),
        c_before,
        "unchanged offer untouched"
    );
    assert_eq!(
        client.get("manual-1").await.unwrap(),
        other,
        "other source untouched"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn big_snapshot_is_one_atomic_overwrite() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::start(&dir.path().join("offers.db"), 0);
    let client = store.client().await;
    let feed = Feed::start(ids("old", 10_000), 5_000).await;
    let cfg = job_file(dir.path(), "bulk", &feed.url, 1000);
    let args = [
        "--store-addr",
        &store.addr(),
        "--run-once",
        "--config",
        cfg.to_str().unwrap(),
        "--source",
        "off-chain",
    ];
    let r = run_backfillers(&args).await;
    assert_eq!(r.code, Some(0), "{r:?}");
    assert_eq!(scope_ids(&client, "bulk").await.len(), 10_000);
    let before = client.revision().await.unwrap();

    // 25 000 offers (5 000 kept, 20 000 new, 5 000 dropped), batch_size 1 000.
    let mut next = ids("old", 5_000);
    next.extend(ids("new", 20_000));
    feed.set(next);
    let stop = Arc::new(AtomicBool::new(false));
    let poller = {
        let stop = stop.clone();
        let client = client.clone();
        tokio::spawn(async move {
            let mut seen = BTreeSet::new();
            let filter = OverwriteFilter::source("bulk".to_owned());
            while !stop.load(Ordering::Relaxed) {
                let n = client
                    .overwrite_stats(Some(&filter))
                    .await
                    .unwrap()
                    .affected_count;
                seen.insert(n);
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            seen
        })
    };
    let t = Instant::now();
    let r = run_backfillers(&args).await;
    let took = t.elapsed();
    stop.store(true, Ordering::Relaxed);
    let seen = poller.await.unwrap();
    assert_eq!(r.code, Some(0), "{r:?}");
    assert!(
        r.stdout
            .contains("fetched 25000, created 20000, updated 0, deleted 5000, unchanged 5000"),
        "{}",
        r.stdout
    );
    eprintln!("25 000-offer snapshot applied in {took:?}; counts seen: {seen:?}");
    assert!(
        seen.iter().all(|n| *n == 10_000 || *n == 25_000),
        "a reader saw a half snapshot: {seen:?}"
    );
    assert_eq!(scope_ids(&client, "bulk").await.len(), 25_000);
    // ONE write: every change of the run carries the same single revision.
    let changes = client.changes_since(before, 100_000).await.unwrap().changes;
    assert_eq!(changes.len(), 25_000, "20 000 created + 5 000 deleted");
    assert!(changes.iter().all(|c| c.revision == before + 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shrink_guard_refuses_then_force_applies() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::start(&dir.path().join("offers.db"), 0);
    let client = store.client().await;
    let feed = Feed::start(ids("s", 4), 10).await;
    let cfg = job_file(dir.path(), "shrinky", &feed.url, 1000);
    let addr = store.addr();
    let args = [
        "--store-addr",
        &addr,
        "--run-once",
        "--config",
        cfg.to_str().unwrap(),
    ];
    assert_eq!(run_backfillers(&args).await.code, Some(0));
    let full = scope_ids(&client, "shrinky").await;
    assert_eq!(full.len(), 4);

    // Empty, then losing 3 of 4: refused, store unchanged.
    for offers in [vec![], ids("s", 1)] {
        feed.set(offers);
        let r = run_backfillers(&args).await;
        assert_eq!(r.code, Some(1), "{r:?}");
        assert!(r.stdout.contains("shrink guard"), "{}", r.stdout);
        assert_eq!(scope_ids(&client, "shrinky").await, full);
    }
    // --force applies it.
    let mut forced = args.to_vec();
    forced.push("--force");
    let r = run_backfillers(&forced).await;
    assert_eq!(r.code, Some(0), "{r:?}");
    assert_eq!(scope_ids(&client, "shrinky").await, ["s-00000"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_store_exits_3_with_one_line() {
    let r = run_backfillers(&["--store-addr", "127.0.0.1:1", "--run-once"]).await;
    assert_eq!(r.code, Some(3), "{r:?}");
    assert!(r.took < Duration::from_secs(12), "took {:?}", r.took);
    let lines: Vec<&str> = r.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{:?}", r.stderr);
    assert!(lines[0].contains("127.0.0.1:1"), "{}", lines[0]);
    eprintln!("unreachable: {:?}: {}", r.took, lines[0]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_configuration_exits_2_naming_job_and_problem() {
    let dir = tempfile::tempdir().unwrap();
    let off_chain = |extra: serde_json::Value| {
        let mut req = serde_json::json!({
            "source": "off-chain",
            "off_chain_params": { "api_endpoint": "http://127.0.0.1:9/x" }
        });
        if let Some(o) = extra.as_object() {
            for (k, v) in o {
                req[k] = v.clone();
            }
        }
        req
    };
    let cases: Vec<(&str, serde_json::Value, &str)> = vec![
        (
            "unknown source",
            serde_json::json!({ "name": "j1", "request": { "source": "moon" } }),
            "unknown source",
        ),
        (
            "bad cron",
            serde_json::json!({ "name": "j2", "schedule": "61 * * * *", "request": off_chain(serde_json::json!({})) }),
            "schedule",
        ),
        (
            "bad duration",
            serde_json::json!({ "name": "j3", "timeout": "soon", "request": off_chain(serde_json::json!({})) }),
            "timeout",
        ),
        (
            "missing variable",
            serde_json::json!({ "name": "j4", "request": off_chain(serde_json::json!({
                "off_chain_params": { "api_endpoint": "http://127.0.0.1:9/x", "auth_token": "${NO_SUCH_VAR_XYZ}" }
            })) }),
            "NO_SUCH_VAR_XYZ",
        ),
        (
            "unknown program",
            serde_json::json!({ "name": "j5", "request": { "source": "chain",
                "chain_params": { "programs": ["nope"] } } }),
            "unknown program",
        ),
    ];
    for (what, job, needle) in cases {
        let path = dir.path().join("bad.json");
        std::fs::write(&path, serde_json::json!({ "jobs": [job] }).to_string()).unwrap();
        let name = job["name"].as_str().unwrap().to_owned();
        let r = run_backfillers(&[
            "--store-addr",
            "127.0.0.1:1",
            "--run-once",
            "--config",
            path.to_str().unwrap(),
        ])
        .await;
        assert_eq!(r.code, Some(2), "{what}: {r:?}");
        let lines: Vec<&str> = r.stderr.lines().collect();
        assert_eq!(lines.len(), 1, "{what}: {:?}", r.stderr);
        assert!(lines[0].contains(&name), "{what}: {}", lines[0]);
        assert!(lines[0].contains(needle), "{what}: {}", lines[0]);
    }
    // A bad flag is exit 2 as well.
    let r = run_backfillers(&["--connect-timeout", "soon"]).await;
    assert_eq!(r.code, Some(2), "{r:?}");
}

/// Store killed in the middle of a continuous-mode run and restarted on the
/// same database: the backfiller logs the loss and the reconnection,
/// retries, completes, and readers never see half a snapshot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_restart_mid_run_is_survived() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("offers.db");
    let mut store = Store::start(&db, 0);
    let port = store.grpc.port();
    let addr = store.addr();
    let feed = Feed::start(ids("r", 3_000), 1_000).await;
    let gate = feed.hold_next();
    let cfg = job_file(dir.path(), "restarty", &feed.url, 500);
    let mut daemon = Daemon::start(&[
        "--store-addr",
        &addr,
        "--config",
        cfg.to_str().unwrap(),
        "--metrics-addr",
        "127.0.0.1:0",
        "--grace-period",
        "5s",
    ]);
    daemon
        .logs
        .wait_for("metrics listening on", Duration::from_secs(30))
        .await;
    // The run is held in its fetch; kill the store under it.
    let deadline = Instant::now() + Duration::from_secs(30);
    while feed.requests() == 0 {
        assert!(Instant::now() < deadline, "{}", daemon.logs.text());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    store.kill9();
    drop(gate);
    daemon
        .logs
        .wait_for("store connection lost", Duration::from_secs(30))
        .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let store = Store::start(&db, port);
    let client = store.client().await;
    // Readers see nothing or everything, never part of the snapshot.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut seen = BTreeSet::new();
    loop {
        let n = scope_ids(&client, "restarty").await.len();
        seen.insert(n);
        if n == 3_000 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "run did not complete; logs:\n{}",
            daemon.logs.text()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(seen.iter().all(|n| *n == 0 || *n == 3_000), "{seen:?}");
    daemon
        .logs
        .wait_for("run succeeded", Duration::from_secs(10))
        .await;
    daemon
        .logs
        .wait_for("store connection re-established", Duration::from_secs(10))
        .await;
    assert!(
        daemon.logs.contains("transient failure, retrying"),
        "{}",
        daemon.logs.text()
    );

    // /status and /metrics answer in continuous mode.
    let http = daemon
        .logs
        .all()
        .iter()
        .find_map(|l| {
            l.split("metrics listening on ")
                .nth(1)
                .map(|s| s.trim().to_owned())
        })
        .unwrap();
    let status: serde_json::Value = reqwest_get(&format!("http://{http}/status"))
        .await
        .parse()
        .map(|s: String| serde_json::from_str(&s).unwrap())
        .unwrap();
    let job = &status["jobs"][0];
    assert_eq!(job["name"], "restarty", "{status}");
    assert_eq!(job["last_run"]["outcome"], "succeeded", "{status}");
    assert_eq!(job["last_run"]["counts"]["created"], 3000, "{status}");
    let metrics = reqwest_get(&format!("http://{http}/metrics")).await;
    for needle in [
        "store_client_connected 1",
        // The shrink guard's read is the first call to meet the dead store.
        "store_client_calls_total{method=\"OverwritePreview\",code=\"UNAVAILABLE\"}",
        "store_client_calls_total{method=\"OverwriteMarginOffersStream\",code=\"OK\"} 1",
        "backfill_job_runs_total{job=\"restarty\",outcome=\"succeeded\"} 1",
        "store_client_call_duration_seconds_bucket",
    ] {
        assert!(metrics.contains(needle), "{needle} missing:\n{metrics}");
    }
    assert_eq!(daemon.terminate(Duration::from_secs(20)).await, Some(0));
}

/// A plain HTTP/1.1 GET returning the body.
async fn reqwest_get(url: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rest = url.strip_prefix("http://").unwrap();
    let (host, path) = rest.split_once('/').unwrap();
    let mut s = tokio::net::TcpStream::connect(host).await.unwrap();
    let req = format!("GET /{path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    out.split_once("\r\n\r\n").unwrap().1.to_owned()
}
