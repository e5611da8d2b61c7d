//! Faults, run against the real `store` binary:
//! - `kill -9` under four concurrent writers, on SQLite and PostgreSQL:
//!   every acknowledged write survives the restart, and no bulk or overwrite
//!   is ever half applied;
//! - PostgreSQL stopped mid-run (on a server of the test's own): calls fail
//!   fast with UNAVAILABLE, health says NOT_SERVING, and the service
//!   recovers by itself once the database is back;
//! - `load_mixed` (ignored; see README "Testing"): mixed reads and writes
//!   for 60 s with zero errors and bounded RSS.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{Server, all_ids, offer, pg};
use offer_proto::pb;
use offer_proto::pb::margin_offer_service_client::MarginOfferServiceClient;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tonic::Code;
use tonic::transport::Channel;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

const WRITERS: usize = 4;
/// Offers per bulk upsert and per overwrite.
const BATCH: usize = 10;

fn random_below(n: u64) -> u64 {
    (uuid::Uuid::new_v4().as_u128() % u128::from(n.max(1))) as u64
}

fn ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

// ---------------------------------------------------------------- kill -9

/// What the writers were told (acked) and what they tried.
#[derive(Default)]
struct Ledger {
    acked_creates: Vec<String>,
    /// Every bulk tried: its ids, and whether it was acknowledged.
    bulks: Vec<(Vec<String>, bool)>,
    /// Per writer: the last acknowledged and last attempted overwrite generation.
    overwrites: BTreeMap<usize, (Option<u64>, u64)>,
    errors_before_kill: Vec<String>,
}

fn scope(w: usize) -> String {
    format!("scope-w{w}")
}

fn overwrite_offer(w: usize, round: usize, g: u64, i: usize) -> pb::MarginOffer {
    let mut o = offer(&format!("o-w{w}-r{round}-g{g}-{i}"));
    o.lender_address = Some(scope(w));
    o
}

/// One writer: creates, bulk upserts and scope overwrites in turn until the
/// first error (the kill) or `stop`.
async fn writer(
    mut c: MarginOfferServiceClient<Channel>,
    w: usize,
    round: usize,
    gen_base: u64,
    killed: Arc<AtomicBool>,
    ledger: Arc<Mutex<Ledger>>,
) {
    let mut n = 0u64;
    loop {
        n += 1;
        let result = match n % 3 {
            0 => {
                let id = format!("c-w{w}-r{round}-{n}");
                let r = c
                    .create_margin_offer(pb::CreateMarginOfferRequest {
                        offer: Some(offer(&id)),
                    })
                    .await;
                if r.is_ok() {
                    ledger.lock().unwrap().acked_creates.push(id);
                }
                r.map(|_| ())
            }
            1 => {
                let ids: Vec<String> = (0..BATCH)
                    .map(|i| format!("b-w{w}-r{round}-{n}-{i}"))
                    .collect();
                let slot = {
                    let mut l = ledger.lock().unwrap();
                    l.bulks.push((ids.clone(), false));
                    l.bulks.len() - 1
                };
                let r = c
                    .bulk_create_or_update_margin_offers(
                        pb::BulkCreateOrUpdateMarginOffersRequest {
                            offers: ids.iter().map(|id| offer(id)).collect(),
                            validate_all: true,
                        },
                    )
                    .await;
                match r {
                    Ok(resp) if resp.get_ref().failure_count == 0 => {
                        ledger.lock().unwrap().bulks[slot].1 = true;
                        Ok(())
                    }
                    Ok(resp) => Err(tonic::Status::internal(format!(
                        "bulk item failures: {:?}",
                        resp.get_ref().errors
                    ))),
                    Err(e) => Err(e),
                }
            }
            _ => {
                let g = gen_base + n;
                ledger.lock().unwrap().overwrites.entry(w).or_default().1 = g;
                let r = c
                    .bulk_overwrite_margin_offers(pb::BulkOverwriteMarginOffersRequest {
                        offers: (0..BATCH)
                            .map(|i| overwrite_offer(w, round, g, i))
                            .collect(),
                        filter: Some(pb::OverwriteFilter {
                            lender_address: Some(scope(w)),
                            ..Default::default()
                        }),
                        validate_all: true,
                        dry_run: false,
                    })
                    .await;
                if r.is_ok() {
                    ledger.lock().unwrap().overwrites.entry(w).or_default().0 = Some(g);
                }
                r.map(|_| ())
            }
        };
        if let Err(e) = result {
            if !killed.load(Ordering::SeqCst) {
                ledger
                    .lock()
                    .unwrap()
                    .errors_before_kill
                    .push(format!("writer {w}: {e}"));
            }
            return;
        }
    }
}

/// Checks the restarted store against everything the writers were told.
fn verify(ids: &[String], ledger: &Ledger, round: usize) {
    let present: BTreeSet<&str> = ids.iter().map(String::as_str).collect();
    assert!(
        ledger.errors_before_kill.is_empty(),
        "round {round}: writes failed before the kill: {:?}",
        ledger.errors_before_kill
    );
    for id in &ledger.acked_creates {
        assert!(
            present.contains(id.as_str()),
            "round {round}: acknowledged create {id} lost"
        );
    }
    for (bulk, acked) in &ledger.bulks {
        let n = bulk
            .iter()
            .filter(|id| present.contains(id.as_str()))
            .count();
        assert!(
            n == 0 || n == bulk.len(),
            "round {round}: bulk {} half applied ({n}/{})",
            bulk[0],
            bulk.len()
        );
        assert!(
            !acked || n == bulk.len(),
            "round {round}: acknowledged bulk {} lost",
            bulk[0]
        );
    }
    for w in 0..WRITERS {
        // A scope holds exactly one overwrite's offers: one generation, all
        // of its items, no older than the last acknowledged one.
        let prefix = format!("o-w{w}-");
        let mut gens: BTreeMap<String, usize> = BTreeMap::new();
        for id in ids.iter().filter(|id| id.starts_with(&prefix)) {
            let g = id.rsplit_once('-').map_or(id.as_str(), |(g, _)| g);
            *gens.entry(g.to_owned()).or_default() += 1;
        }
        let (acked, _) = ledger.overwrites.get(&w).copied().unwrap_or_default();
        assert!(
            gens.len() <= 1,
            "round {round}: scope {w} mixes overwrites: {gens:?}"
        );
        if let Some((g, count)) = gens.iter().next() {
            assert_eq!(*count, BATCH, "round {round}: overwrite {g} half applied");
            let g: u64 = g.rsplit_once("-g").unwrap().1.parse().unwrap();
            assert!(
                acked.is_none_or(|a| g >= a),
                "round {round}: scope {w} went back to {g} after ack of {acked:?}"
            );
        } else {
            assert!(
                acked.is_none(),
                "round {round}: acknowledged overwrite of scope {w} lost"
            );
        }
    }
}

/// Two rounds of: four writers, SIGKILL at a random moment, restart on the
/// same database, verify.
async fn kill9_under_load(url: &str) {
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    for round in 0..2 {
        let server = Server::start(url);
        let killed = Arc::new(AtomicBool::new(false));
        let mut tasks = Vec::new();
        for w in 0..WRITERS {
            let c = server.client().await;
            tasks.push(tokio::spawn(writer(
                c,
                w,
                round,
                (round as u64) << 32,
                killed.clone(),
                ledger.clone(),
            )));
        }
        tokio::time::sleep(Duration::from_millis(300 + random_below(1200))).await;
        killed.store(true, Ordering::SeqCst);
        server.kill9();
        for t in tasks {
            t.await.unwrap();
        }
        let server = Server::start(url);
        let mut c = server.client().await;
        let ids = all_ids(&mut c).await;
        let l = ledger.lock().unwrap();
        eprintln!(
            "round {round}: {} offers after restart; acked {} creates, {} of {} bulks, overwrites {:?}",
            ids.len(),
            l.acked_creates.len(),
            l.bulks.iter().filter(|b| b.1).count(),
            l.bulks.len(),
            l.overwrites
        );
        assert!(
            !l.acked_creates.is_empty(),
            "round {round}: no write was acknowledged"
        );
        verify(&ids, &l, round);
        drop(server);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill9_under_load_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/offers.db", dir.path().display());
    kill9_under_load(&url).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill9_under_load_postgres() {
    let Some(admin) = pg::server_url() else {
        return;
    };
    let db = pg::TestDatabase::create(&admin).await;
    kill9_under_load(&db.url()).await;
    db.drop_now().await;
}

// ------------------------------------------------------ database unavailable

/// A PostgreSQL server of this test's own, so stopping it leaves the shared
/// one alone. As root it runs as `postgres` (the server refuses root).
struct OwnPg {
    bin: PathBuf,
    dir: tempfile::TempDir,
    port: u16,
    as_postgres: bool,
}

impl OwnPg {
    fn find_bin() -> Option<PathBuf> {
        let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
            .ok()?
            .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
            .filter(|d| d.join("initdb").exists() && d.join("pg_ctl").exists())
            .collect();
        dirs.sort_by_key(|d| {
            d.parent()
                .and_then(|p| p.file_name())
                .and_then(|n| n.to_str())
                .and_then(|n| n.parse::<u32>().ok())
        });
        dirs.pop()
    }

    fn cmd(&self, tool: &str) -> Command {
        let exe = self.bin.join(tool);
        if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(exe);
            c
        } else {
            Command::new(exe)
        }
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// None (with a notice) when no server binaries are installed; in CI
    /// that fails instead.
    fn init() -> Option<OwnPg> {
        let Some(bin) = OwnPg::find_bin() else {
            assert!(
                !ci(),
                "no PostgreSQL server binaries under /usr/lib/postgresql"
            );
            eprintln!("no PostgreSQL server binaries: skipping this test");
            return None;
        };
        let dir = tempfile::tempdir().unwrap();
        let root = Command::new("id")
            .arg("-u")
            .output()
            .is_ok_and(|o| o.stdout.trim_ascii() == b"0");
        if root {
            let ok = Command::new("chown")
                .arg("postgres")
                .arg(dir.path())
                .status()
                .unwrap();
            assert!(ok.success(), "chown the data dir to postgres");
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let pg = OwnPg {
            bin,
            dir,
            port,
            as_postgres: root,
        };
        let out = pg
            .cmd("initdb")
            .arg("-D")
            .arg(pg.data())
            .args([
                "-U",
                "postgres",
                "-A",
                "trust",
                "--encoding=UTF8",
                "--locale=C",
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "initdb: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        pg.start();
        Some(pg)
    }

    fn start(&self) {
        let log = self.dir.path().join("server.log");
        let opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
            self.port,
            self.dir.path().display()
        );
        let ok = self
            .cmd("pg_ctl")
            .arg("-D")
            .arg(self.data())
            .arg("-l")
            .arg(&log)
            .args(["-w", "-t", "60", "-o", &opts, "start"])
            .status()
            .unwrap();
        assert!(ok.success(), "pg_ctl start: {}", read(&log));
    }

    /// `immediate`: like a crash, open connections just drop.
    fn stop(&self) {
        let ok = self
            .cmd("pg_ctl")
            .arg("-D")
            .arg(self.data())
            .args(["-m", "immediate", "-w", "stop"])
            .status()
            .unwrap();
        assert!(ok.success(), "pg_ctl stop");
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_default()
}

impl Drop for OwnPg {
    fn drop(&mut self) {
        let _ = self
            .cmd("pg_ctl")
            .arg("-D")
            .arg(self.data())
            .args(["-m", "immediate", "-w", "stop"])
            .output();
    }
}

async fn health(h: &mut HealthClient<Channel>) -> Option<ServingStatus> {
    let r = h
        .check(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await
        .ok()?;
    ServingStatus::try_from(r.into_inner().status).ok()
}

async fn wait_health(h: &mut HealthClient<Channel>, want: ServingStatus, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let got = health(h).await;
        if got == Some(want) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "health stayed {got:?}, wanted {want:?} within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_unavailable_fails_fast_and_recovers() {
    let Some(pg) = OwnPg::init() else { return };
    let server = Server::start(&pg.url());
    let mut c = server.client().await;
    let mut h = HealthClient::new(
        Channel::from_shared(format!("http://{}", server.grpc))
            .unwrap()
            .connect()
            .await
            .unwrap(),
    );
    c.create_margin_offer(pb::CreateMarginOfferRequest {
        offer: Some(offer("before")),
    })
    .await
    .expect("write with the database up");
    wait_health(&mut h, ServingStatus::Serving, Duration::from_secs(10)).await;

    pg.stop();
    // Every call fails, fast, with UNAVAILABLE (the first may meet a pooled
    // connection the server just dropped).
    for i in 0..5 {
        let t0 = Instant::now();
        let err = c
            .create_margin_offer(pb::CreateMarginOfferRequest {
                offer: Some(offer(&format!("down-{i}"))),
            })
            .await
            .expect_err("a write with the database down");
        let took = t0.elapsed();
        assert_eq!(err.code(), Code::Unavailable, "write {i}: {err:?}");
        assert!(took < Duration::from_secs(3), "write {i} took {took:?}");
        let t0 = Instant::now();
        let err = c
            .get_margin_offer(pb::GetMarginOfferRequest {
                id: "before".into(),
            })
            .await
            .expect_err("a read with the database down");
        assert_eq!(err.code(), Code::Unavailable, "read {i}: {err:?}");
        assert!(
            t0.elapsed() < Duration::from_secs(3),
            "read {i} took {:?}",
            t0.elapsed()
        );
    }
    // Health is polled every 5 s by default.
    wait_health(&mut h, ServingStatus::NotServing, Duration::from_secs(15)).await;

    pg.start();
    wait_health(&mut h, ServingStatus::Serving, Duration::from_secs(30)).await;
    // Recovered without a restart: writes and reads succeed again.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match c
            .create_margin_offer(pb::CreateMarginOfferRequest {
                offer: Some(offer("after")),
            })
            .await
        {
            Ok(_) => break,
            Err(e) => assert!(Instant::now() < deadline, "no recovery: {e:?}"),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let ids = all_ids(&mut c).await;
    assert_eq!(ids, ["after", "before"]);
    drop(server);
}

// ----------------------------------------------------------------- load test

fn rss_kib(pid: u32) -> u64 {
    read(Path::new(&format!("/proc/{pid}/status")))
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// Mixed reads and writes for `LOAD_SECONDS` (60) from `LOAD_CLIENTS` (16)
/// concurrent clients against a `store` on SQLite (or `LOAD_DATABASE_URL`).
/// Run: `cargo test --release -p store-server --test faults -- --ignored
/// --nocapture load_mixed`.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "60 s load run; see README Testing"]
async fn load_mixed() {
    let env = |k: &str, d: u64| {
        std::env::var(k)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(d)
    };
    let secs = env("LOAD_SECONDS", 60);
    let clients = env("LOAD_CLIENTS", 16) as usize;
    let dir = tempfile::tempdir().unwrap();
    let url = std::env::var("LOAD_DATABASE_URL")
        .unwrap_or_else(|_| format!("sqlite://{}/offers.db", dir.path().display()));
    let server = Server::start(&url);
    let pid = server.pid();
    // Seed so reads find something.
    let mut c = server.client().await;
    for chunk in 0..10 {
        c.bulk_create_or_update_margin_offers(pb::BulkCreateOrUpdateMarginOffersRequest {
            offers: (0..100)
                .map(|i| offer(&format!("seed-{}", chunk * 100 + i)))
                .collect(),
            validate_all: true,
        })
        .await
        .unwrap();
    }
    let reads = Arc::new(AtomicU64::new(0));
    let writes = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(Mutex::new(Vec::<String>::new()));
    let end = Instant::now() + Duration::from_secs(secs);
    let mut tasks = Vec::new();
    for k in 0..clients {
        let mut c = server.client().await;
        let (reads, writes, errors) = (reads.clone(), writes.clone(), errors.clone());
        tasks.push(tokio::spawn(async move {
            let mut n = 0u64;
            while Instant::now() < end {
                n += 1;
                let id = format!("seed-{}", (n * 7 + k as u64 * 13) % 1000);
                // 60% point reads, 15% list pages, 20% upserts, 5% bulk upserts.
                let r = match n % 20 {
                    0..12 => c
                        .get_margin_offer(pb::GetMarginOfferRequest { id })
                        .await
                        .map(|_| true),
                    12..15 => c
                        .list_margin_offers(pb::ListMarginOffersRequest {
                            limit: 50,
                            collateral_token: Some("SOL".into()),
                            sort_by: Some("interest_rate".into()),
                            ..Default::default()
                        })
                        .await
                        .map(|_| true),
                    15..19 => {
                        let mut o = offer(&id);
                        o.interest_rate = (n % 100) as f64 / 1000.0;
                        c.create_or_update_margin_offer(pb::CreateOrUpdateMarginOfferRequest {
                            offer: Some(o),
                        })
                        .await
                        .map(|_| false)
                    }
                    _ => c
                        .bulk_create_or_update_margin_offers(
                            pb::BulkCreateOrUpdateMarginOffersRequest {
                                offers: (0..10)
                                    .map(|i| offer(&format!("load-{k}-{}", (n + i) % 500)))
                                    .collect(),
                                validate_all: true,
                            },
                        )
                        .await
                        .map(|_| false),
                };
                match r {
                    Ok(true) => reads.fetch_add(1, Ordering::Relaxed),
                    Ok(false) => writes.fetch_add(1, Ordering::Relaxed),
                    Err(e) => {
                        errors.lock().unwrap().push(e.to_string());
                        0
                    }
                };
            }
        }));
    }
    let rss_start = rss_kib(pid);
    tokio::time::sleep(Duration::from_secs(secs / 2)).await;
    let rss_mid = rss_kib(pid);
    for t in tasks {
        t.await.unwrap();
    }
    let rss_end = rss_kib(pid);
    let (r, w) = (
        reads.load(Ordering::Relaxed),
        writes.load(Ordering::Relaxed),
    );
    let errors = errors.lock().unwrap();
    println!(
        "load: {secs} s, {clients} clients: {r} reads + {w} writes = {:.0} ops/s ({:.0} reads/s, {:.0} writes/s); {} errors; store RSS start {} KiB, middle {} KiB, end {} KiB",
        (r + w) as f64 / secs as f64,
        r as f64 / secs as f64,
        w as f64 / secs as f64,
        errors.len(),
        rss_start,
        rss_mid,
        rss_end,
    );
    assert!(
        errors.is_empty(),
        "errors: {:?}",
        &errors[..errors.len().min(5)]
    );
    // Bounded: the second half may not keep growing like the first.
    assert!(
        rss_end <= rss_mid + rss_mid / 2 + 32 * 1024,
        "RSS grew from {rss_mid} to {rss_end} KiB in the second half"
    );
}
