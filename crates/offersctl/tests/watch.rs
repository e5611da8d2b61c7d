//! `offersctl watch` against a real `store`: create, update and delete come
//! out as three JSON lines, in order.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{OFFERSCTL, Store};
use offer_domain::{MarginOffer, WriteContext};
use offer_store::MarginOfferStore as _;
use serde_json::Value;
use std::io::{BufRead as _, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread")]
async fn watch_prints_create_update_delete_in_order() {
    let store = Store::start();
    let client = store.client().await;
    let ctx = WriteContext::default();
    let first = client
        .create(MarginOffer::example("w1"), &ctx)
        .await
        .unwrap()
        .revision;
    let from = first.to_string();
    let mut child = Command::new(OFFERSCTL)
        .env_remove("STORE_ADDR")
        .args([
            "--store-addr",
            &store.addr(),
            "watch",
            "--from-revision",
            &from,
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn offersctl watch");
    let out = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines() {
            let Ok(line) = line else { return };
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    // Starting from `first` skips the offer's creation; these three follow.
    client
        .create(MarginOffer::example("w2"), &ctx)
        .await
        .unwrap();
    let mut o = MarginOffer::example("w2");
    o.interest_rate = 0.5;
    client.create_or_update(o, &ctx).await.unwrap();
    client.delete("w2", &ctx).await.unwrap();
    let mut lines = Vec::new();
    for _ in 0..3 {
        let line = rx.recv_timeout(Duration::from_secs(20)).expect("a line");
        lines.push(serde_json::from_str::<Value>(&line).unwrap());
    }
    let _ = child.kill();
    let _ = child.wait();
    let types: Vec<&str> = lines
        .iter()
        .map(|l| l["change_type"].as_str().unwrap())
        .collect();
    assert_eq!(types, ["CREATED", "UPDATED", "DELETED"]);
    let revs: Vec<i64> = lines
        .iter()
        .map(|l| l["revision"].as_i64().unwrap())
        .collect();
    assert!(revs.windows(2).all(|w| w[0] < w[1]), "{revs:?}");
    assert!(revs[0] > first);
    for l in &lines {
        assert_eq!(l["offer"]["id"], "w2");
        assert!(!l["operation_id"].as_str().unwrap().is_empty());
        assert!(!l["source"].as_str().unwrap().is_empty());
        assert!(l["timestamp"].as_str().unwrap().contains('T'));
    }
    assert_eq!(lines[1]["offer"]["interest_rate"], 0.5);
}
