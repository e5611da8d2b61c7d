//! Resident memory of the real `store` binary (SQLite backend) holding a
//! large book (issue #7: < 200 MB at 1 000 000 offers).
//!
//! `cargo build --release -p store-server --bin store --example sqlite_rss &&
//!  target/release/examples/sqlite_rss [OFFERS]`
//!
//! Starts `store` (found next to this example's directory) on a fresh
//! database, loads OFFERS synthetic offers (default 1 000 000) over gRPC in
//! bulk upserts of 10 000, lists a few pages, and prints the store's VmRSS
//! and VmHWM (peak) after loading and after reading.

#![allow(clippy::expect_used, clippy::unwrap_used)]

use offer_domain::{BulkUpsertOptions, ListQuery, SortField, WriteContext};
use offer_store::MarginOfferStore;
use std::process::{Child, Command};
use std::time::{Duration, Instant};
use store_client::GrpcStore;

/// `VmRSS` and `VmHWM` of `pid`, in MiB.
fn memory(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse::<u64>().ok())
            .map_or(0, |kib| kib / 1024)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::main]
async fn main() {
    let offers: usize = std::env::args()
        .nth(1)
        .map(|n| n.parse().expect("OFFERS is a number"))
        .unwrap_or(1_000_000);
    let exe = std::env::current_exe().expect("own path");
    let store_bin = exe
        .parent()
        .and_then(|examples| examples.parent())
        .expect("target dir")
        .join("store");
    let dir = tempfile::tempdir().expect("temp dir");
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("free port");
        l.local_addr().expect("addr").port()
    };
    let http_port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("free port");
        l.local_addr().expect("addr").port()
    };
    let server = Server(
        Command::new(&store_bin)
            .arg("--addr")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--http-addr")
            .arg(format!("127.0.0.1:{http_port}"))
            .arg("--database-url")
            .arg(format!(
                "sqlite://{}",
                dir.path().join("offers.db").display()
            ))
            .arg("--log-level")
            .arg("warn")
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", store_bin.display())),
    );
    let pid = server.0.id();
    let addr = format!("http://127.0.0.1:{port}");
    let client = loop {
        match GrpcStore::connect(&addr).await {
            Ok(c) if c.health_check().await.is_ok() => break c,
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    };
    let (rss, _) = memory(pid);
    println!("started: VmRSS {rss} MiB");
    let started = Instant::now();
    for (i, chunk) in store_bench::book(offers, 7).chunks(10_000).enumerate() {
        if i > 0 && i % 10 == 0 {
            let (rss, hwm) = memory(pid);
            println!(
                "{} loaded at {:?}: VmRSS {rss} MiB, VmHWM {hwm} MiB",
                i * 10_000,
                started.elapsed()
            );
        }
        client
            .bulk_create_or_update(
                chunk.to_vec(),
                BulkUpsertOptions::default(),
                &WriteContext::default(),
            )
            .await
            .expect("load");
    }
    let (rss, hwm) = memory(pid);
    println!(
        "loaded {offers} offers in {:?}: VmRSS {rss} MiB, VmHWM {hwm} MiB",
        started.elapsed()
    );
    let mut q = ListQuery {
        sort_by: SortField::InterestRate,
        limit: 100,
        ..Default::default()
    };
    q.filter.borrow_token = Some(store_bench::popular_borrow_token());
    for _ in 0..20 {
        let page = client.list(&q).await.expect("list");
        q.page_token = page.next_page_token;
    }
    let unfiltered = ListQuery {
        sort_by: SortField::AvailableBorrowAmount,
        limit: 100,
        ..Default::default()
    };
    client.list(&unfiltered).await.expect("list");
    let (rss, hwm) = memory(pid);
    println!("after listing: VmRSS {rss} MiB, VmHWM {hwm} MiB");
}
