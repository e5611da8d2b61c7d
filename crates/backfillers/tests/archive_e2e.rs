//! Archive round trip with real processes: `offersctl snapshot export` from
//! one `store` into a file:// archive, then `backfillers --run-once --source
//! glacier` restoring it into an empty `store`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use offer_domain::{
    BulkUpsertOptions, InterestModel, MarginOffer, OfferType, Timestamp, WriteContext,
};
use offer_store::MarginOfferStore;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use store_client::GrpcStore;

/// The `offersctl` binary, built beside this test like `store_bin()`.
fn offersctl_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let exe = std::env::current_exe().unwrap();
        let profile_dir = exe.parent().unwrap().parent().unwrap().to_path_buf();
        let target_dir = profile_dir.parent().unwrap();
        let bin = profile_dir.join("offersctl");
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.args(["build", "--quiet", "-p", "offersctl", "--bin", "offersctl"])
            .arg("--target-dir")
            .arg(target_dir)
            .current_dir(env!("CARGO_MANIFEST_DIR"));
        if profile_dir.file_name().is_some_and(|n| n == "release") {
            cmd.arg("--release");
        }
        let status = cmd.status();
        assert!(bin.exists(), "offersctl missing ({status:?})");
        bin
    })
    .clone()
}

/// Offers with every optional field set on some and unset on others.
fn sample(n: usize) -> Vec<MarginOffer> {
    (0..n)
        .map(|i| {
            let mut o = MarginOffer::example(format!("arch-{i:04}"));
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
            } else {
                o.term_days = None;
                o.lender_address = None;
                o.last_borrowed_timestamp = None;
            }
            o
        })
        .collect()
}

async fn all(store: &GrpcStore) -> Vec<MarginOffer> {
    let q = offer_domain::ListQuery {
        limit: 1000,
        include_expired: true,
        sort_by: offer_domain::SortField::Id,
        sort_order: offer_domain::SortOrder::Asc,
        ..Default::default()
    };
    store.list(&q).await.unwrap().offers
}

fn glacier_job(dir: &Path, url: &str) -> PathBuf {
    let path = dir.join("glacier.json");
    let cfg = serde_json::json!({
        "jobs": [{
            "name": "restore",
            "request": { "source": "glacier", "glacier_params": { "vault_name": url } },
            "max_retries": 1,
            "timeout": "5m"
        }]
    });
    std::fs::write(&path, cfg.to_string()).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_with_offersctl_then_restore_with_backfillers() {
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("archive");
    std::fs::create_dir_all(&archive).unwrap();
    let url = format!("file://{}", archive.display());

    let source = Store::start(&dir.path().join("source.db"), 0);
    let src = source.client().await;
    let out = src
        .bulk_create_or_update(
            sample(600),
            BulkUpsertOptions::default(),
            &WriteContext::new("test"),
        )
        .await
        .unwrap();
    assert!(out.errors.is_empty(), "{:?}", out.errors);
    let original = all(&src).await;
    assert_eq!(original.len(), 600);

    let out = Command::new(offersctl_bin())
        .env_remove("STORE_ADDR")
        .args([
            "--store-addr",
            &source.addr(),
            "snapshot",
            "export",
            "--to",
            &url,
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("exported 600 offers to file://"),
        "{stdout}"
    );
    assert!(stdout.trim_end().ends_with(".ndjson.gz"), "{stdout}");

    // A filtered export names the object and counts only its scope.
    let out = Command::new(offersctl_bin())
        .env_remove("STORE_ADDR")
        .args([
            "--store-addr",
            &source.addr(),
            "--json",
            "snapshot",
            "export",
        ])
        .args(["--to", &format!("{url}/partner"), "--source", "partner"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["offers"], 200);
    assert!(v["object"].as_str().unwrap().contains("/partner/"), "{v}");

    // Restore into an empty store. The archive's newest snapshot directly
    // under the URL is the full one (the partner one lives under a prefix).
    let target = Store::start(&dir.path().join("target.db"), 0);
    let dst = target.client().await;
    let cfg = glacier_job(dir.path(), &url);
    let args = [
        "--store-addr",
        &target.addr(),
        "--run-once",
        "--source",
        "glacier",
        "--config",
        cfg.to_str().unwrap(),
    ];
    let r = run_backfillers(&args).await;
    assert_eq!(r.code, Some(0), "{r:?}");
    let back = all(&dst).await;
    assert_eq!(back.len(), original.len());
    for (b, o) in back.iter().zip(&original) {
        // Every field survives; updated_timestamp is the target store's own
        // (it stamps each write).
        assert!(b.same_content(o), "{} differs: {b:?} vs {o:?}", o.id);
        assert_eq!(b.created_timestamp, o.created_timestamp, "{}", o.id);
    }

    // A second restore changes nothing.
    let rev = dst.revision().await.unwrap();
    let r = run_backfillers(&args).await;
    assert_eq!(r.code, Some(0), "{r:?}");
    assert_eq!(dst.revision().await.unwrap(), rev);
    assert_eq!(all(&dst).await, back);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_to_a_bad_url_is_one_line_and_exit_1() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::start(&dir.path().join("s.db"), 0);
    let out = Command::new(offersctl_bin())
        .env_remove("STORE_ADDR")
        .args([
            "--store-addr",
            &store.addr(),
            "snapshot",
            "export",
            "--to",
            "ftp://x/y",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
}
