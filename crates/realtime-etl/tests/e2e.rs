//! End to end: a pubsub server of our own → realtime-etl (in-process) → the
//! real `store` binary; lookups and resyncs against `TestRpc`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Pubsub, Store, filters_json};
use offer_domain::ChangeType;
use offer_store::MarginOfferStore;
use realtime_etl::{Config, Program, Stats};
use solana_sources::Pubkey;
use solana_sources::lavarage::{self, Version, build};
use solana_sources::rpc::Account;
use solana_sources::testing::TestRpc;

fn key(i: u32) -> Pubkey {
    let mut b = [7u8; 32];
    b[..4].copy_from_slice(&i.to_le_bytes());
    Pubkey(b)
}

const NW: u32 = 900_000;

fn pool(current_exposure: u64) -> Account {
    Account {
        lamports: 5_000_000,
        owner: Version::V1.program_id(),
        data: build::pool(
            Version::V1,
            131,
            50,
            &key(NW + 1),
            &key(NW),
            1_000_000_000_000,
            current_exposure,
            None,
            5_000,
        ),
        executable: false,
    }
}

/// (id, change type, when seen) of every store change, polled every 5 ms.
type Seen = Arc<Mutex<Vec<(String, ChangeType, Instant)>>>;

fn watch(addr: String) -> Seen {
    let seen: Seen = Arc::default();
    let out = seen.clone();
    tokio::spawn(async move {
        let store = store_client::GrpcStore::connect(&addr).await.unwrap();
        let mut rev = store.revision().await.unwrap();
        loop {
            // The store goes away at the end of the test: stop quietly.
            let Ok(batch) = store.changes_since(rev, 10_000).await else {
                return;
            };
            let now = Instant::now();
            for c in &batch.changes {
                out.lock()
                    .unwrap()
                    .push((c.offer.id.clone(), c.change_type, now));
                rev = rev.max(c.revision);
            }
            if batch.changes.is_empty() {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    });
    seen
}

async fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn count(seen: &Seen, id: &str) -> usize {
    seen.lock()
        .unwrap()
        .iter()
        .filter(|(i, _, _)| i == id)
        .count()
}

fn has(seen: &Seen, id: &str, t: ChangeType) -> bool {
    seen.lock()
        .unwrap()
        .iter()
        .any(|(i, c, _)| i == id && *c == t)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn follows_the_chain_live() {
    let store = Store::start();
    let rpc = TestRpc::start().await.unwrap();
    let ps = Pubsub::start().await;
    let v1 = Version::V1.program_id();
    rpc.put(
        key(NW),
        v1,
        2_000_000_000_000,
        build::node_wallet(Version::V1, 0, 0, 90, &key(NW + 2), None),
    );

    let mut cfg = Config::new(&store.addr(), &ps.url(), &rpc.url());
    cfg.programs = vec![Program::LavarageV1];
    cfg.reconnect_initial = Duration::from_millis(100);
    let stats = Arc::new(Stats::default());
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let etl = tokio::spawn(realtime_etl::run(cfg, stats.clone(), async {
        let _ = stop_rx.await;
    }));
    let seen = watch(store.addr());
    wait_for("first resync", Duration::from_secs(20), || {
        stats.resyncs.load(Ordering::Relaxed) >= 1
    })
    .await;
    let pools_f = filters_json(&lavarage::pool_filters());
    let sub = ps.sub_id(&v1, &pools_f).expect("pool subscription");
    assert!(
        ps.sub_id(&v1, &filters_json(&lavarage::node_wallet_filters()))
            .is_some()
    );

    // 1. 1 000 account updates, paced over about a second.
    let n = 1_000u32;
    let mut sent: HashMap<String, Instant> = HashMap::new();
    for i in 0..n {
        let a = pool(u64::from(i));
        rpc.set_account(key(i), a.clone());
        sent.insert(key(i).to_string(), Instant::now());
        ps.notify(sub, 100 + u64::from(i), &key(i), &a);
        if i % 2 == 1 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    wait_for("1 000 creates", Duration::from_secs(15), || {
        let s = seen.lock().unwrap();
        s.iter()
            .filter(|(_, c, _)| *c == ChangeType::Created)
            .count()
            >= n as usize
    })
    .await;
    let mut lat: Vec<Duration> = {
        let s = seen.lock().unwrap();
        s.iter()
            .filter(|(_, c, _)| *c == ChangeType::Created)
            .map(|(id, _, at)| at.duration_since(sent[id]))
            .collect()
    };
    lat.sort();
    let p = |q: f64| lat[((lat.len() as f64 * q).ceil() as usize).clamp(1, lat.len()) - 1];
    println!(
        "latency over {} updates: p50 {:?} p99 {:?} max {:?} ({})",
        lat.len(),
        p(0.5),
        p(0.99),
        lat[lat.len() - 1],
        stats.snapshot()
    );
    assert!(p(0.99) < Duration::from_secs(2), "p99 {:?}", p(0.99));
    let store_c = store_client::GrpcStore::connect(&store.addr())
        .await
        .unwrap();
    let o = store_c.get(&key(3).to_string()).await.unwrap();
    assert_eq!(o.source.as_deref(), Some("lavarage-v1"));

    // 2. Malformed notifications are counted and skipped.
    ps.send_raw("{not json".into());
    let mut bad = common::notification(sub, 5_000, &key(0), &pool(7));
    bad = bad.replace("\"base64\"]", "\"base58\"]");
    ps.send_raw(bad);
    let a = pool(123_000_000_000);
    rpc.set_account(key(0), a.clone());
    ps.notify(sub, 5_001, &key(0), &a);
    let id0 = key(0).to_string();
    wait_for("update after malformed", Duration::from_secs(5), || {
        has(&seen, &id0, ChangeType::Updated)
    })
    .await;
    assert_eq!(stats.malformed.load(Ordering::Relaxed), 2);

    // 3. Coalescing: 100 updates of one account in 50 ms cost ≤ 2 writes.
    let id1 = key(1).to_string();
    let before = count(&seen, &id1);
    for j in 0..100u64 {
        let a = pool(1_000 + j);
        rpc.set_account(key(1), a.clone());
        ps.notify(sub, 6_000 + j, &key(1), &a);
        if j % 10 == 9 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    tokio::time::sleep(Duration::from_millis(800)).await;
    let writes = count(&seen, &id1) - before;
    println!("coalescing: 100 updates -> {writes} writes");
    assert!((1..=2).contains(&writes), "{writes} writes");
    let got = store_c.get(&id1).await.unwrap();
    let want = (1_000_000_000_000f64 - 1_099.0) / 1e9;
    assert!(
        (got.available_borrow_amount - want).abs() < 1e-9,
        "{}",
        got.available_borrow_amount
    );

    // 4. A closed account deletes its offer.
    let id2 = key(2).to_string();
    rpc.remove_account(&key(2));
    let closed = Account {
        lamports: 0,
        owner: Pubkey([0; 32]),
        data: vec![],
        executable: false,
    };
    ps.notify(sub, 7_000, &key(2), &closed);
    wait_for("delete of a closed pool", Duration::from_secs(5), || {
        has(&seen, &id2, ChangeType::Deleted)
    })
    .await;

    // 5. Drop the websocket; changes during the gap are repaired by the resync.
    let subs_before = ps.subscribe_requests();
    ps.drop_connection();
    let id5 = key(5).to_string();
    let id6 = key(6).to_string();
    rpc.set_account(key(5), pool(500_000_000_000));
    rpc.remove_account(&key(6));
    wait_for("resubscribe", Duration::from_secs(10), || {
        ps.subscribe_requests() >= subs_before + 2
    })
    .await;
    wait_for("resync repairs the gap", Duration::from_secs(10), || {
        has(&seen, &id6, ChangeType::Deleted) && has(&seen, &id5, ChangeType::Overwritten)
    })
    .await;
    let got = store_c.get(&id5).await.unwrap();
    assert!(
        (got.available_borrow_amount - 500.0).abs() < 1e-9,
        "{}",
        got.available_borrow_amount
    );
    // And the new subscription delivers.
    let sub2 = ps.sub_id(&v1, &pools_f).expect("resubscribed");
    assert_ne!(sub, sub2);
    let id7 = key(7).to_string();
    let a = pool(77);
    rpc.set_account(key(7), a.clone());
    ps.notify(sub2, 9_000, &key(7), &a);
    wait_for("update after reconnect", Duration::from_secs(5), || {
        has(&seen, &id7, ChangeType::Updated)
    })
    .await;
    println!(
        "final: {} connections={}",
        stats.snapshot(),
        ps.connections()
    );
    assert!(stats.connects.load(Ordering::Relaxed) >= 2);

    let _ = stop_tx.send(());
    etl.await.unwrap().unwrap();
}
