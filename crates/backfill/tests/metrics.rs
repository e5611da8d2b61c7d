//! The documented metrics are emitted through the `metrics` facade.
// Tests: a failed unwrap is the assertion.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use async_trait::async_trait;
use backfill::{
    BackfillConfig, BackfillOptions, Backfiller, CancellationToken, JobSpec, Progress, Snapshot,
    Source, SourceError, SourceKind, SourceRegistry, TimeWindow,
};
use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use offer_domain::MarginOffer;
use std::sync::Arc;
use store_memory::MemoryStore;

struct Fixed;

#[async_trait]
impl Source for Fixed {
    async fn fetch(
        &self,
        _: &JobSpec,
        _: TimeWindow,
        _: &Progress,
    ) -> Result<Snapshot, SourceError> {
        Ok(Snapshot::single(
            "feed",
            vec![MarginOffer::example("a"), MarginOffer::example("b")],
        ))
    }
}

#[test]
fn a_run_records_runs_duration_written_and_fetch_time() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    metrics::with_local_recorder(&recorder, || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let text = r#"{"jobs": [{"name": "feed", "request": {"source": "off-chain",
                "off_chain_params": {"api_endpoint": "http://127.0.0.1:9/"}}}]}"#;
            let job = BackfillConfig::from_json(text, "t", &|_| None)
                .unwrap()
                .jobs
                .remove(0);
            let bf = Backfiller::new(
                Arc::new(MemoryStore::new()),
                SourceRegistry::new().with(SourceKind::OffChain, Arc::new(Fixed)),
                BackfillOptions::default(),
            );
            assert!(
                bf.run_job(&job, &CancellationToken::new())
                    .await
                    .succeeded()
            );
        });
    });
    let mut seen = Vec::new();
    for (key, _, _, value) in snapshotter.snapshot().into_vec() {
        let key = key.key();
        let labels: Vec<String> = key
            .labels()
            .map(|l| format!("{}={}", l.key(), l.value()))
            .collect();
        seen.push((key.name().to_owned(), labels.join(","), value));
    }
    let find = |name: &str, labels: &str| {
        seen.iter()
            .find(|(n, l, _)| n == name && l == labels)
            .map(|(_, _, v)| v)
            .unwrap_or_else(|| panic!("no {name}{{{labels}}} in {seen:?}"))
    };
    assert_eq!(
        find("backfill_job_runs_total", "job=feed,outcome=succeeded"),
        &DebugValue::Counter(1)
    );
    assert_eq!(
        find("backfill_offers_written_total", "job=feed,kind=created"),
        &DebugValue::Counter(2)
    );
    assert_eq!(
        find("backfill_offers_written_total", "job=feed,kind=deleted"),
        &DebugValue::Counter(0)
    );
    assert!(
        matches!(find("backfill_job_duration_seconds", "job=feed"), DebugValue::Histogram(v) if v.len() == 1)
    );
    assert!(
        matches!(find("backfill_source_fetch_duration_seconds", "job=feed"), DebugValue::Histogram(v) if v.len() == 1)
    );
}
