//! The engine against the real in-memory store, with a scripted source.
// Tests: a failed unwrap is the assertion.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use async_trait::async_trait;
use backfill::{
    BackfillConfig, BackfillOptions, Backfiller, CancellationToken, JobSpec, Progress, RunOutcome,
    ScopeSnapshot, Snapshot, Source, SourceError, SourceKind, SourceRegistry, TimeWindow,
};
use offer_domain::{ListQuery, MarginOffer, OfferFilter, Timestamp, WriteContext};
use offer_store::SharedStore;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use store_memory::MemoryStore;
use tokio::sync::Notify;

/// Answers fetches from a script; the last answer repeats. Can hold each
/// fetch until released, and records how many fetches overlap.
#[derive(Default)]
struct Scripted {
    answers: Mutex<VecDeque<Result<Snapshot, SourceError>>>,
    calls: AtomicUsize,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
    delay: Mutex<Duration>,
    gate: Option<Arc<Notify>>,
    entered: Arc<Notify>,
}

impl Scripted {
    fn new(answers: Vec<Result<Snapshot, SourceError>>) -> Arc<Self> {
        Arc::new(Scripted {
            answers: Mutex::new(answers.into()),
            ..Default::default()
        })
    }

    fn gated(answers: Vec<Result<Snapshot, SourceError>>, gate: Arc<Notify>) -> Arc<Self> {
        Arc::new(Scripted {
            answers: Mutex::new(answers.into()),
            gate: Some(gate),
            ..Default::default()
        })
    }

    fn push(&self, a: Result<Snapshot, SourceError>) {
        let mut q = self.answers.lock().unwrap();
        q.clear();
        q.push_back(a);
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

#[async_trait]
impl Source for Scripted {
    async fn fetch(
        &self,
        _job: &JobSpec,
        _w: TimeWindow,
        progress: &Progress,
    ) -> Result<Snapshot, SourceError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.max_in_flight.fetch_max(now, Ordering::SeqCst);
        self.entered.notify_one();
        if let Some(g) = &self.gate {
            g.notified().await;
        }
        let delay = *self.delay.lock().unwrap();
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
        let answer = {
            let mut q = self.answers.lock().unwrap();
            if q.len() > 1 {
                q.pop_front().unwrap()
            } else {
                q.front().cloned().unwrap()
            }
        };
        if let Ok(s) = &answer {
            progress.add_fetched(s.offer_count());
        }
        answer
    }
}

fn offer(id: &str, amount: f64) -> MarginOffer {
    let mut o = MarginOffer::example(id);
    o.available_borrow_amount = amount;
    o
}

fn offers(ids: &[&str]) -> Vec<MarginOffer> {
    ids.iter().map(|id| offer(id, 100.0)).collect()
}

fn no_env(_: &str) -> Option<String> {
    None
}

/// A job parsed from the real job-file format.
fn job(name: &str, extra: serde_json::Value) -> JobSpec {
    let mut j = serde_json::json!({
        "name": name,
        "request": { "source": "off-chain",
                     "off_chain_params": { "api_endpoint": "http://127.0.0.1:9/x" } },
        "max_retries": 3,
        "timeout": "10s"
    });
    if let (Some(obj), Some(extra)) = (j.as_object_mut(), extra.as_object()) {
        for (k, v) in extra {
            obj.insert(k.clone(), v.clone());
        }
    }
    let file = serde_json::json!({ "jobs": [j] }).to_string();
    BackfillConfig::from_json(&file, "test", &no_env)
        .unwrap()
        .jobs
        .remove(0)
}

fn fast_opts() -> BackfillOptions {
    BackfillOptions {
        retry_base_delay: Duration::from_millis(1),
        retry_max_delay: Duration::from_millis(5),
        grace_period: Duration::from_millis(50),
        ..Default::default()
    }
}

fn engine(
    store: &SharedStore,
    kind: SourceKind,
    src: Arc<Scripted>,
    opts: BackfillOptions,
) -> Backfiller {
    Backfiller::new(store.clone(), SourceRegistry::new().with(kind, src), opts)
}

async fn ids_of(store: &SharedStore, source: &str) -> Vec<String> {
    let q = ListQuery {
        filter: OfferFilter {
            source: Some(source.into()),
            ..Default::default()
        },
        limit: 1000,
        include_expired: true,
        ..Default::default()
    };
    let mut ids: Vec<String> = store
        .list(&q)
        .await
        .unwrap()
        .offers
        .into_iter()
        .map(|o| o.id)
        .collect();
    ids.sort();
    ids
}

fn memory() -> SharedStore {
    Arc::new(MemoryStore::new())
}

#[tokio::test]
async fn scoped_overwrite_leaves_other_sources_untouched() {
    let store = memory();
    let mut other = offer("o1", 5.0);
    other.source = Some("other".into());
    store.create(other, &WriteContext::default()).await.unwrap();

    // A chain job listing two programs: two scopes, each its own overwrite.
    let src = Scripted::new(vec![Ok(Snapshot {
        scopes: vec![
            ScopeSnapshot {
                scope: "lavarage-v1".into(),
                offers: offers(&["l1", "l2"]),
            },
            ScopeSnapshot {
                scope: "marginfi".into(),
                offers: offers(&["m1"]),
            },
        ],
    })]);
    let j = job(
        "chain",
        serde_json::json!({"request": {"source": "chain",
            "chain_params": {"programs": ["lavarage", "marginfi"]}}}),
    );
    let bf = engine(&store, SourceKind::Chain, src, fast_opts());
    let r = bf.run_job(&j, &CancellationToken::new()).await;
    assert_eq!(r.outcome, RunOutcome::Succeeded, "{:?}", r.error);
    assert_eq!(r.counts.created, 3);
    assert_eq!(r.scopes.len(), 2);
    assert_eq!(ids_of(&store, "lavarage-v1").await, ["l1", "l2"]);
    assert_eq!(ids_of(&store, "marginfi").await, ["m1"]);
    assert_eq!(ids_of(&store, "other").await, ["o1"]);
    assert_eq!(store.get("o1").await.unwrap().available_borrow_amount, 5.0);
}

#[tokio::test]
async fn second_run_reports_exactly_one_create_update_delete() {
    let store = memory();
    let src = Scripted::new(vec![Ok(Snapshot::single("feed", offers(&["a", "b", "c"])))]);
    let j = job("feed", serde_json::json!({}));
    let bf = engine(&store, SourceKind::OffChain, src.clone(), fast_opts());
    let r = bf.run_job(&j, &CancellationToken::new()).await;
    assert_eq!(r.counts.created, 3);

    let mut next = vec![offer("a", 100.0), offer("c", 250.0), offer("d", 100.0)];
    next[0].source = Some("ignored: the engine stamps the scope".into());
    src.push(Ok(Snapshot::single("feed", next)));
    let r = bf.run_job(&j, &CancellationToken::new()).await;
    assert_eq!(r.outcome, RunOutcome::Succeeded, "{:?}", r.error);
    let s = &r.scopes[0];
    assert_eq!(
        (
            s.created_ids.clone(),
            s.updated_ids.clone(),
            s.deleted_ids.clone()
        ),
        (
            vec!["d".to_string()],
            vec!["c".to_string()],
            vec!["b".to_string()]
        )
    );
    assert_eq!(r.counts.unchanged, 1);
    assert_eq!(ids_of(&store, "feed").await, ["a", "c", "d"]);
    assert_eq!(store.get("c").await.unwrap().available_borrow_amount, 250.0);
}

#[tokio::test]
async fn shrink_guard_refuses_empty_and_big_losses_unless_allowed() {
    let store = memory();
    let src = Scripted::new(vec![Ok(Snapshot::single(
        "feed",
        offers(&["a", "b", "c", "d"]),
    ))]);
    let j = job("feed", serde_json::json!({}));
    let bf = engine(&store, SourceKind::OffChain, src.clone(), fast_opts());
    assert!(bf.run_job(&j, &CancellationToken::new()).await.succeeded());
    let rev = store.revision().await.unwrap();

    src.push(Ok(Snapshot::single("feed", vec![])));
    let r = bf.run_job(&j, &CancellationToken::new()).await;
    assert_eq!(r.outcome, RunOutcome::Failed);
    let e = r.error.unwrap();
    assert!(
        e.contains("empty") && e.contains("allow_shrink") && e.contains("--force"),
        "{e}"
    );
    assert_eq!(r.attempts, 1, "the guard is not retried");

    // 3 of 4 deleted: more than half.
    src.push(Ok(Snapshot::single("feed", offers(&["a"]))));
    let r = bf.run_job(&j, &CancellationToken::new()).await;
    assert_eq!(r.outcome, RunOutcome::Failed);
    assert!(r.error.unwrap().contains("would delete 3 of its 4"));
    assert_eq!(store.revision().await.unwrap(), rev, "nothing written");
    assert_eq!(ids_of(&store, "feed").await.len(), 4);

    // Exactly half is allowed.
    src.push(Ok(Snapshot::single("feed", offers(&["a", "b"]))));
    assert!(bf.run_job(&j, &CancellationToken::new()).await.succeeded());

    // allow_shrink on the job lifts the guard.
    let lenient = job("feed", serde_json::json!({"allow_shrink": true}));
    src.push(Ok(Snapshot::single("feed", offers(&["z"]))));
    let r = bf.run_job(&lenient, &CancellationToken::new()).await;
    assert!(r.succeeded(), "{:?}", r.error);
    assert_eq!(ids_of(&store, "feed").await, ["z"]);

    // So does --force, even for an empty snapshot.
    let forced = engine(
        &store,
        SourceKind::OffChain,
        Scripted::new(vec![Ok(Snapshot::single("feed", vec![]))]),
        BackfillOptions {
            force: true,
            ..fast_opts()
        },
    );
    let r = forced.run_job(&j, &CancellationToken::new()).await;
    assert!(r.succeeded(), "{:?}", r.error);
    assert_eq!(r.counts.deleted, 1);
    assert!(ids_of(&store, "feed").await.is_empty());
}

#[tokio::test]
async fn dry_run_writes_nothing_and_reports_the_diff() {
    let store = memory();
    let src = Scripted::new(vec![Ok(Snapshot::single("feed", offers(&["a", "b"])))]);
    let j = job("feed", serde_json::json!({}));
    let bf = engine(&store, SourceKind::OffChain, src.clone(), fast_opts());
    assert!(bf.run_job(&j, &CancellationToken::new()).await.succeeded());
    let rev = store.revision().await.unwrap();

    src.push(Ok(Snapshot::single(
        "feed",
        vec![offer("a", 1.0), offer("c", 1.0)],
    )));
    let dry = job(
        "feed",
        serde_json::json!({"request": {"source": "off-chain", "dry_run": true,
        "off_chain_params": {"api_endpoint": "http://127.0.0.1:9/x"}}}),
    );
    let r = bf.run_job(&dry, &CancellationToken::new()).await;
    assert!(r.succeeded() && r.dry_run, "{:?}", r.error);
    let s = &r.scopes[0];
    assert_eq!(s.created_ids, ["c"]);
    assert_eq!(s.updated_ids, ["a"]);
    assert_eq!(s.deleted_ids, ["b"]);
    assert_eq!(store.revision().await.unwrap(), rev);
    assert_eq!(ids_of(&store, "feed").await, ["a", "b"]);

    // The global flag does the same for a normal job.
    let flagged = engine(
        &store,
        SourceKind::OffChain,
        src,
        BackfillOptions {
            dry_run: true,
            ..fast_opts()
        },
    );
    let r = flagged.run_job(&j, &CancellationToken::new()).await;
    assert!(r.dry_run && r.succeeded());
    assert_eq!(r.counts.created, 1);
    assert_eq!(store.revision().await.unwrap(), rev);
}

#[tokio::test]
async fn transient_failures_are_retried_and_permanent_ones_are_not() {
    let store = memory();
    let src = Scripted::new(vec![
        Err(SourceError::Transient("429".into())),
        Err(SourceError::Transient("reset".into())),
        Ok(Snapshot::single("feed", offers(&["a"]))),
    ]);
    let j = job("feed", serde_json::json!({}));
    let bf = engine(&store, SourceKind::OffChain, src.clone(), fast_opts());
    let r = bf.run_job(&j, &CancellationToken::new()).await;
    assert!(r.succeeded(), "{:?}", r.error);
    assert_eq!(r.attempts, 3);
    assert_eq!(src.calls(), 3);

    let src = Scripted::new(vec![Err(SourceError::Permanent("bad offer".into()))]);
    let bf = engine(&store, SourceKind::OffChain, src.clone(), fast_opts());
    let r = bf.run_job(&j, &CancellationToken::new()).await;
    assert_eq!(r.outcome, RunOutcome::Failed);
    assert_eq!((r.attempts, src.calls()), (1, 1));

    // Retries stop at max_retries.
    let src = Scripted::new(vec![Err(SourceError::Transient("503".into()))]);
    let bf = engine(&store, SourceKind::OffChain, src.clone(), fast_opts());
    let j1 = job("feed", serde_json::json!({"max_retries": 1}));
    let r = bf.run_job(&j1, &CancellationToken::new()).await;
    assert_eq!(r.outcome, RunOutcome::Failed);
    assert_eq!((r.attempts, src.calls()), (2, 2));
    assert!(r.error.unwrap().contains("503"));
}

#[tokio::test]
async fn item_errors_from_the_store_fail_the_run_naming_them() {
    let store = memory();
    let mut bad = offer("bad", 1.0);
    bad.max_open_ltv = 0.9;
    bad.liquidation_ltv = 0.5;
    let src = Scripted::new(vec![Ok(Snapshot::single(
        "feed",
        vec![offer("a", 1.0), bad],
    ))]);
    let bf = engine(&store, SourceKind::OffChain, src.clone(), fast_opts());
    let r = bf
        .run_job(
            &job("feed", serde_json::json!({})),
            &CancellationToken::new(),
        )
        .await;
    assert_eq!(r.outcome, RunOutcome::Failed);
    let e = r.error.unwrap();
    assert!(
        e.contains("\"bad\"") && e.contains("liquidation_ltv"),
        "{e}"
    );
    assert_eq!(src.calls(), 1, "permanent: not retried");
    assert!(ids_of(&store, "feed").await.is_empty());
}

#[tokio::test]
async fn a_job_never_overlaps_itself() {
    let store = memory();
    let gate = Arc::new(Notify::new());
    let src = Scripted::gated(
        vec![Ok(Snapshot::single("feed", offers(&["a"])))],
        gate.clone(),
    );
    let bf = Arc::new(engine(
        &store,
        SourceKind::OffChain,
        src.clone(),
        fast_opts(),
    ));
    let j = job("feed", serde_json::json!({}));
    let first = {
        let (bf, j) = (bf.clone(), j.clone());
        tokio::spawn(async move { bf.run_job(&j, &CancellationToken::new()).await })
    };
    src.entered.notified().await;
    let second = bf.run_job(&j, &CancellationToken::new()).await;
    assert_eq!(second.outcome, RunOutcome::Skipped);
    assert_eq!(src.calls(), 1);
    assert_eq!(bf.status().job("feed").unwrap().skipped_total, 1);
    gate.notify_one();
    assert!(first.await.unwrap().succeeded());
}

#[tokio::test]
async fn concurrency_cap_is_honoured() {
    let store = memory();
    let src = Scripted::new(vec![Ok(Snapshot::single("x", offers(&["a"])))]);
    *src.delay.lock().unwrap() = Duration::from_millis(60);
    let bf = engine(
        &store,
        SourceKind::OffChain,
        src.clone(),
        BackfillOptions {
            max_concurrent: 2,
            ..fast_opts()
        },
    );
    // Five jobs sharing one source (and scope): only the overlap matters.
    let jobs: Vec<JobSpec> = (0..5)
        .map(|i| job(&format!("j{i}"), serde_json::json!({"allow_shrink": true})))
        .collect();
    let results = bf.run_once(&jobs, &CancellationToken::new()).await;
    assert_eq!(results.len(), 5);
    assert!(results.iter().all(|r| r.succeeded()), "{results:?}");
    assert_eq!(src.max_in_flight.load(Ordering::SeqCst), 2);
    assert_eq!(src.calls(), 5);
}

#[tokio::test]
async fn a_cancelled_run_commits_nothing() {
    let store = memory();
    let gate = Arc::new(Notify::new());
    let src = Scripted::gated(vec![Ok(Snapshot::single("feed", offers(&["a"])))], gate);
    let bf = engine(&store, SourceKind::OffChain, src.clone(), fast_opts());
    let shutdown = CancellationToken::new();
    let j = job("feed", serde_json::json!({}));
    let stop = {
        let (shutdown, entered) = (shutdown.clone(), src.entered.clone());
        async move {
            entered.notified().await;
            shutdown.cancel();
        }
    };
    let (results, ()) = tokio::join!(bf.run_once(std::slice::from_ref(&j), &shutdown), stop);
    assert_eq!(results[0].outcome, RunOutcome::Cancelled);
    assert_eq!(store.revision().await.unwrap(), 0);
    assert!(ids_of(&store, "feed").await.is_empty());
}

#[tokio::test]
async fn a_run_past_its_timeout_fails_and_commits_nothing() {
    let store = memory();
    let src = Scripted::new(vec![Ok(Snapshot::single("feed", offers(&["a"])))]);
    *src.delay.lock().unwrap() = Duration::from_millis(500);
    let bf = engine(&store, SourceKind::OffChain, src, fast_opts());
    let j = job("feed", serde_json::json!({"timeout": "50ms"}));
    let r = bf.run_job(&j, &CancellationToken::new()).await;
    assert_eq!(r.outcome, RunOutcome::TimedOut);
    assert_eq!(store.revision().await.unwrap(), 0);
}

#[tokio::test]
async fn archive_restore_writes_missing_and_newer_only_and_twice_is_a_no_op() {
    let store = memory();
    let ctx = WriteContext::default();
    let mut kept = offer("kept", 1.0);
    kept.source = Some("lavarage-v1".into());
    store.create(kept.clone(), &ctx).await.unwrap();
    let mut stale = offer("stale", 1.0);
    stale.source = Some("marginfi".into());
    store.create(stale.clone(), &ctx).await.unwrap();
    let mut untouched = offer("untouched", 7.0);
    untouched.source = Some("marginfi".into());
    store.create(untouched, &ctx).await.unwrap();

    let hour = 3_600_000_000_000;
    let now = Timestamp::now().0;
    // Archived copy of `kept` is older than the store's: not written.
    let mut old_kept = kept.clone();
    old_kept.available_borrow_amount = 999.0;
    old_kept.updated_timestamp = Some(Timestamp(now - hour));
    // Archived copy of `stale` is newer: written.
    let mut new_stale = stale.clone();
    new_stale.available_borrow_amount = 42.0;
    new_stale.updated_timestamp = Some(Timestamp(now + hour));
    // `lost` is missing: created, keeping its original creation time.
    let mut lost = offer("lost", 3.0);
    lost.source = Some("marginfi".into());
    lost.created_timestamp = Some(Timestamp(now - 10 * hour));
    lost.updated_timestamp = Some(Timestamp(now - 9 * hour));

    let src = Scripted::new(vec![Ok(Snapshot::single(
        "archive",
        vec![old_kept, new_stale, lost],
    ))]);
    let j = job(
        "restore",
        serde_json::json!({"request": {"source": "archive",
            "glacier_params": {"vault_name": "v", "archive_id": "a"}}}),
    );
    let bf = engine(&store, SourceKind::Glacier, src, fast_opts());
    let r = bf.run_job(&j, &CancellationToken::new()).await;
    assert!(r.succeeded(), "{:?}", r.error);
    assert_eq!(
        (r.counts.created, r.counts.updated, r.counts.unchanged),
        (1, 1, 1)
    );
    assert_eq!(
        store.get("kept").await.unwrap().available_borrow_amount,
        1.0
    );
    assert_eq!(
        store.get("stale").await.unwrap().available_borrow_amount,
        42.0
    );
    let lost = store.get("lost").await.unwrap();
    assert_eq!(lost.created_timestamp, Some(Timestamp(now - 10 * hour)));
    assert_eq!(
        lost.source.as_deref(),
        Some("marginfi"),
        "archive keeps sources"
    );
    assert!(
        store.get("untouched").await.is_ok(),
        "restore never deletes"
    );

    let rev = store.revision().await.unwrap();
    let r = bf.run_job(&j, &CancellationToken::new()).await;
    assert!(r.succeeded());
    assert_eq!(
        (r.counts.created, r.counts.updated, r.counts.unchanged),
        (0, 0, 3)
    );
    assert_eq!(
        store.revision().await.unwrap(),
        rev,
        "second restore changes nothing"
    );
}

#[tokio::test]
async fn continuous_mode_runs_interval_jobs_at_start_and_cron_jobs_on_schedule() {
    let store = memory();
    let src = Scripted::new(vec![Ok(Snapshot::single("x", offers(&["a"])))]);
    let bf = Arc::new(engine(
        &store,
        SourceKind::OffChain,
        src.clone(),
        fast_opts(),
    ));
    let interval_job = job("every-6h", serde_json::json!({}));
    let disabled = job("off", serde_json::json!({"enabled": false}));
    let shutdown = CancellationToken::new();
    let run = tokio::spawn(bf.clone().run_continuous(
        vec![interval_job, disabled],
        Duration::from_secs(6 * 3600),
        shutdown.clone(),
    ));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let status = bf.status().snapshot();
    let st = status.jobs.iter().find(|j| j.name == "every-6h").unwrap();
    assert_eq!(st.last_run.as_ref().unwrap().outcome, RunOutcome::Succeeded);
    assert_eq!(st.last_run.as_ref().unwrap().counts.created, 1);
    assert!(st.next_run.is_some());
    let off = status.jobs.iter().find(|j| j.name == "off").unwrap();
    assert!(!off.enabled && off.last_run.is_none());
    serde_json::to_string(&bf.status()).unwrap();

    // A cron job every second fires on its schedule, and shutdown returns.
    let cron_src = Scripted::new(vec![Ok(Snapshot::single("y", offers(&["b"])))]);
    let bf2 = Arc::new(engine(
        &store,
        SourceKind::OffChain,
        cron_src.clone(),
        fast_opts(),
    ));
    let cron_job = job("tick", serde_json::json!({"schedule": "* * * * * *"}));
    let stop2 = CancellationToken::new();
    let run2 =
        tokio::spawn(bf2.run_continuous(vec![cron_job], Duration::from_secs(3600), stop2.clone()));
    tokio::time::sleep(Duration::from_millis(2300)).await;
    stop2.cancel();
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(5), run2)
        .await
        .unwrap()
        .unwrap();
    tokio::time::timeout(Duration::from_secs(5), run)
        .await
        .unwrap()
        .unwrap();
    assert!(
        cron_src.calls() >= 2,
        "cron fired {} times",
        cron_src.calls()
    );
    assert_eq!(src.calls(), 1, "the interval job ran once at start");
}
