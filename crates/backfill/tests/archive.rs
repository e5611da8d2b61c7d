//! Archive export and restore: on the local filesystem, and on an
//! S3-compatible server (moto) started on loopback.
// Tests: a failed unwrap is the assertion.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use backfill::archive::{ArchiveLocation, export_snapshot, export_snapshot_to, snapshot_name};
use backfill::sources::ArchiveSource;
use backfill::{
    BackfillConfig, BackfillOptions, Backfiller, CancellationToken, JobSpec, Progress, RunOutcome,
    Source, SourceKind, SourceRegistry, TimeWindow,
};
use offer_domain::{
    BulkUpsertOptions, InterestModel, ListQuery, MarginOffer, OfferType, OverwriteFilter,
    SortField, SortOrder, Timestamp, WriteContext,
};
use offer_store::{MarginOfferStore, SharedStore};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;
use store_memory::MemoryStore;

fn ctx() -> WriteContext {
    WriteContext::default()
}

/// Offers with every optional field set, none set, and in between; several
/// sources, so restored offers must keep their own scope.
fn sample_offers() -> Vec<MarginOffer> {
    let mut out = Vec::new();
    for i in 0..2500 {
        let mut o = MarginOffer::example(format!("offer-{i:05}"));
        o.offer_type = [OfferType::V1, OfferType::BP, OfferType::LV][i % 3];
        o.interest_model = if i % 2 == 0 {
            InterestModel::Fixed
        } else {
            InterestModel::Floating
        };
        o.available_borrow_amount = 1234.5678 + i as f64 / 7.0;
        o.interest_rate = 0.05 + i as f64 * 1e-6;
        o.source = Some(["marginfi", "lavarage-v1", "partner"][i % 3].to_owned());
        if i % 4 == 0 {
            o.term_days = Some(30 + (i % 5) as i32);
            o.lender_address = Some(format!("lender-{i}"));
            o.last_borrowed_timestamp = Some(Timestamp(1_700_000_000_123_456_789 + i as i64));
            o.created_timestamp = Some(Timestamp(1_690_000_000_987_654_321));
        } else {
            o.term_days = None;
            o.lender_address = None;
            o.last_borrowed_timestamp = None;
        }
        out.push(o);
    }
    out
}

async fn seeded_store() -> Arc<MemoryStore> {
    let store = Arc::new(MemoryStore::new());
    for chunk in sample_offers().chunks(500) {
        let out = store
            .bulk_create_or_update(chunk.to_vec(), BulkUpsertOptions::default(), &ctx())
            .await
            .unwrap();
        assert!(out.errors.is_empty(), "{:?}", out.errors);
    }
    store
}

async fn all_offers(store: &dyn MarginOfferStore) -> Vec<MarginOffer> {
    let mut q = ListQuery {
        sort_by: SortField::Id,
        sort_order: SortOrder::Asc,
        limit: 1000,
        include_expired: true,
        ..Default::default()
    };
    let mut out = Vec::new();
    loop {
        let page = store.list(&q).await.unwrap();
        let n = page.offers.len();
        out.extend(page.offers);
        match page.next_page_token {
            Some(t) if n > 0 => q.page_token = Some(t),
            _ => return out,
        }
    }
}

/// Equal field for field; reports the first difference only (the lists are long).
#[track_caller]
fn same_offers(got: &[MarginOffer], want: &[MarginOffer]) {
    assert_eq!(got.len(), want.len());
    for (g, w) in got.iter().zip(want) {
        assert_eq!(g, w);
    }
}

fn glacier_job(url: &str, archive_id: &str) -> JobSpec {
    let file = serde_json::json!({ "jobs": [{
        "name": "restore",
        "request": { "source": "archive",
                     "glacier_params": { "vault_name": url, "archive_id": archive_id } },
        "max_retries": 0,
        "timeout": "60s"
    }]})
    .to_string();
    let no_env = |_: &str| None;
    BackfillConfig::from_json(&file, "test", &no_env)
        .unwrap()
        .jobs
        .remove(0)
}

fn window() -> TimeWindow {
    TimeWindow::last(Duration::from_secs(3600))
}

async fn fetch(url: &str, archive_id: &str) -> Result<Vec<MarginOffer>, backfill::SourceError> {
    let snap = ArchiveSource::new()
        .fetch(
            &glacier_job(url, archive_id),
            window(),
            &Progress::default(),
        )
        .await?;
    assert_eq!(snap.scopes.len(), 1);
    Ok(snap.scopes.into_iter().next().unwrap().offers)
}

async fn restore_into(store: SharedStore, url: &str) -> backfill::JobResult {
    let registry = SourceRegistry::new().with(SourceKind::Glacier, Arc::new(ArchiveSource::new()));
    let engine = Backfiller::new(store, registry, BackfillOptions::default());
    engine
        .run_job(&glacier_job(url, ""), &CancellationToken::new())
        .await
}

/// Export → fetch gives back every offer field for field; an engine restore
/// into an empty store creates them all, a second restore changes nothing,
/// and a restore into a store holding newer copies changes nothing either.
async fn round_trip(url: &str) {
    let source = seeded_store().await;
    let original = all_offers(source.as_ref()).await;
    assert_eq!(original.len(), 2500);
    assert!(original.iter().all(|o| o.updated_timestamp.is_some()));

    let summary = export_snapshot(source.as_ref(), url, None).await.unwrap();
    assert_eq!(summary.offers, 2500);
    assert!(summary.object.ends_with(&summary.name), "{summary:?}");

    // Every field, optional ones and all timestamps included, survives.
    let restored = fetch(url, "").await.unwrap();
    same_offers(&restored, &original);
    // Naming the object explicitly reads the same snapshot.
    same_offers(&fetch(url, &summary.name).await.unwrap(), &original);

    // Into an empty store: everything is created, with its own source.
    let empty: SharedStore = Arc::new(MemoryStore::new());
    let r = restore_into(empty.clone(), url).await;
    assert_eq!(r.outcome, RunOutcome::Succeeded, "{:?}", r.error);
    assert_eq!(r.counts.created, 2500);
    let back = all_offers(empty.as_ref()).await;
    assert_eq!(back.len(), 2500);
    for (b, o) in back.iter().zip(&original) {
        assert!(b.same_content(o), "{} differs", o.id);
        assert_eq!(b.created_timestamp, o.created_timestamp, "{}", o.id);
    }
    // Twice: nothing changes.
    let rev = empty.revision().await.unwrap();
    let r = restore_into(empty.clone(), url).await;
    assert_eq!(r.outcome, RunOutcome::Succeeded, "{:?}", r.error);
    assert_eq!((r.counts.created, r.counts.updated), (0, 0));
    assert_eq!(empty.revision().await.unwrap(), rev);

    // The source store now holds newer copies of some offers and one offer
    // the archive lacks: the restore touches none of them.
    let mut newer: Vec<MarginOffer> = original[..10].to_vec();
    for o in &mut newer {
        o.interest_rate = 0.42;
    }
    source
        .bulk_create_or_update(newer, BulkUpsertOptions::default(), &ctx())
        .await
        .unwrap();
    source
        .create(MarginOffer::example("not-archived"), &ctx())
        .await
        .unwrap();
    let before = all_offers(source.as_ref()).await;
    let rev = source.revision().await.unwrap();
    let r = restore_into(source.clone(), url).await;
    assert_eq!(r.outcome, RunOutcome::Succeeded, "{:?}", r.error);
    assert_eq!(
        (r.counts.created, r.counts.updated, r.counts.deleted),
        (0, 0, 0)
    );
    assert_eq!(source.revision().await.unwrap(), rev);
    assert_eq!(all_offers(source.as_ref()).await, before);
}

#[tokio::test]
async fn filesystem_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("file://{}/archive", dir.path().display());
    round_trip(&url).await;
}

#[tokio::test]
async fn newest_snapshot_in_the_window_and_filters() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("file://{}/a", dir.path().display());
    let loc = ArchiveLocation::open(&url).unwrap();
    let store = seeded_store().await;
    let now = chrono::Utc::now();
    // An old full snapshot outside the window, a recent filtered one inside.
    export_snapshot_to(store.as_ref(), &loc, None, now - chrono::Duration::hours(5))
        .await
        .unwrap();
    let recent = export_snapshot_to(
        store.as_ref(),
        &loc,
        Some(OverwriteFilter::source("marginfi")),
        now - chrono::Duration::minutes(5),
    )
    .await
    .unwrap();
    assert_eq!(recent.offers, 834);
    let got = fetch(&url, "").await.unwrap();
    assert_eq!(got.len(), 834);
    assert!(got.iter().all(|o| o.source.as_deref() == Some("marginfi")));
    // A window holding no snapshot is a clear, permanent error.
    let far = glacier_job(&format!("file://{}/empty", dir.path().display()), "");
    let e = ArchiveSource::new()
        .fetch(&far, window(), &Progress::default())
        .await
        .unwrap_err();
    assert!(!e.is_transient());
    assert!(e.to_string().contains("no snapshot"), "{e}");
    // A named object that does not exist is named in the error.
    let e = fetch(&url, &snapshot_name(now)).await.unwrap_err();
    assert!(e.to_string().contains("not found"), "{e}");
}

#[tokio::test]
async fn corrupt_snapshots_fail_naming_the_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(snapshot_name(chrono::Utc::now()));
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    use std::io::Write;
    let good = backfill::archive::encode_offer_line(&MarginOffer::example("a"));
    writeln!(gz, "{good}\n\n{{\"id\": \"b\"}}").unwrap();
    std::fs::write(&path, gz.finish().unwrap()).unwrap();
    let e = fetch(&format!("file://{}", dir.path().display()), "")
        .await
        .unwrap_err();
    assert!(e.to_string().contains("line 3"), "{e}");
    std::fs::write(&path, b"not gzip").unwrap();
    assert!(
        fetch(&format!("file://{}", dir.path().display()), "")
            .await
            .is_err()
    );
}

// ---------------------------------------------------------------------------
// S3 through moto's server mode.

/// Kills the server when the test ends, however it ends.
struct Moto {
    child: Child,
    port: u16,
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn moto_bin() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("MOTO_SERVER_BIN") {
        return Some(PathBuf::from(p));
    }
    let default = PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../.venv-ci/bin/moto_server"
    ));
    default.exists().then_some(default)
}

/// The running server, or `None` (with a notice) when moto is not installed
/// outside CI. In CI (`CI=true`) a missing moto fails the test.
async fn start_moto() -> Option<Moto> {
    let Some(bin) = moto_bin().filter(|b| b.exists()) else {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "moto_server not found (set MOTO_SERVER_BIN or run scripts/test.sh, which installs tests/python/requirements-s3.txt)"
        );
        eprintln!(
            "NOTICE: moto_server not found; S3 archive test skipped (run scripts/test.sh or set MOTO_SERVER_BIN)"
        );
        return None;
    };
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new(&bin)
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
    let moto = Moto { child, port };
    let client = reqwest::Client::new();
    for _ in 0..300 {
        if client
            .get(format!("http://127.0.0.1:{port}/"))
            .send()
            .await
            .is_ok()
        {
            return Some(moto);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("moto_server did not answer on port {port} within 30 s");
}

#[tokio::test]
async fn s3_round_trip_and_glacier_objects() {
    let Some(moto) = start_moto().await else {
        return;
    };
    let endpoint = format!("http://127.0.0.1:{}", moto.port);
    let http = reqwest::Client::new();
    // moto accepts unsigned requests: create the bucket directly.
    let r = http
        .put(format!("{endpoint}/archive-bucket"))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    let url = format!(
        "s3://archive-bucket/offers/daily?endpoint={endpoint}&region=us-east-1&access_key_id=test&secret_access_key=test"
    );
    round_trip(&url).await;

    // An object in the GLACIER storage class cannot be read until restored.
    let name = snapshot_name(chrono::Utc::now() - chrono::Duration::seconds(1));
    let r = http
        .put(format!("{endpoint}/archive-bucket/cold/{name}"))
        .header("x-amz-storage-class", "GLACIER")
        .body(Vec::from(&b"whatever"[..]))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    let cold = format!(
        "s3://archive-bucket/cold?endpoint={endpoint}&region=us-east-1&access_key_id=test&secret_access_key=test"
    );
    let e = fetch(&cold, &name).await.unwrap_err();
    assert!(!e.is_transient(), "{e}");
    assert!(e.to_string().contains("until it is restored"), "{e}");
}
