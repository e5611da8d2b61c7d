//! Resident memory of the real `store` binary holding a large book.
//!
//! Starts the built binary once per backend, loads N realistic offers
//! through gRPC (one streamed overwrite per source, as the backfillers do),
//! then prints VmRSS and VmHWM from /proc/<pid>/status.
//!
//! ```text
//! cargo build --release -p store-server --bin store
//! cargo run --release -p store-server --example rss -- [OFFERS] [memory|sqlite]...
//! ```
//! `STORE_BIN` overrides the binary (default `target/release/store`).

use offer_domain::{OverwriteFilter, OverwriteRequest, WriteContext};
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use store_client::GrpcStore;

/// A base58-looking 44-character key, as Solana mints and accounts are.
fn key(kind: &str, i: usize) -> String {
    const ALPHABET: &[u8] = b"123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz";
    let mut x = (i as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ kind.len() as u64;
    let mut s = String::with_capacity(44);
    s.push_str(kind);
    while s.len() < 44 {
        x ^= x >> 33;
        x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
        s.push(ALPHABET[(x % ALPHABET.len() as u64) as usize] as char);
    }
    s
}

/// `store_bench::book`'s shape with real-length ids, mints and lenders.
fn realistic_book(n: usize) -> Vec<offer_domain::MarginOffer> {
    let mints: Vec<String> = (0..store_bench::MINTS).map(|i| key("M", i)).collect();
    let mint_of = |name: &str| -> String {
        let i: usize = name.trim_start_matches("Mint").parse().unwrap_or_default();
        mints[i % mints.len()].clone()
    };
    store_bench::book(n, 7)
        .into_iter()
        .enumerate()
        .map(|(i, mut o)| {
            o.id = key("O", i);
            o.collateral_token = mint_of(&o.collateral_token);
            o.borrow_token = mint_of(&o.borrow_token);
            o.lender_address = o.lender_address.map(|l| {
                let i: usize = l.trim_start_matches("Lender").parse().unwrap_or_default();
                key("L", i)
            });
            o
        })
        .collect()
}

fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
}

struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn measure(bin: &str, backend: &str, n: usize) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let url = match backend {
        "memory" => "memory://".to_owned(),
        "sqlite" => format!("sqlite://{}", dir.path().join("rss.db").display()),
        other => anyhow::bail!("unknown backend {other:?}: memory or sqlite"),
    };
    let port = free_port()?;
    let addr = format!("127.0.0.1:{port}");
    let http = format!("127.0.0.1:{}", free_port()?);
    let child = Command::new(bin)
        .args([
            "--addr",
            &addr,
            "--http-addr",
            &http,
            "--database-url",
            &url,
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()?;
    let server = Running(child);
    let pid = server.0.id();
    let deadline = Instant::now() + Duration::from_secs(60);
    let client = loop {
        match GrpcStore::connect(&format!("http://{addr}")).await {
            // A 100 000-offer overwrite on a loaded machine can take a while.
            Ok(c) if c.health().await.is_ok() => break c.with_timeout(Duration::from_secs(600)),
            _ if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(100)).await,
            _ => anyhow::bail!("store did not come up on {addr}"),
        }
    };
    let idle = status_kib(pid, "VmRSS:").unwrap_or_default();
    let book = realistic_book(n);
    let started = Instant::now();
    let mut by_source: std::collections::BTreeMap<String, Vec<_>> = Default::default();
    for o in book {
        by_source
            .entry(o.source.clone().unwrap_or_default())
            .or_default()
            .push(o);
    }
    let ctx = WriteContext::new("backfiller");
    for (source, offers) in by_source {
        let req = OverwriteRequest {
            offers,
            filter: Some(OverwriteFilter::source(source)),
            ..Default::default()
        };
        client.overwrite_stream(req, 2_000, &ctx).await?;
    }
    let load = started.elapsed();
    // Let the allocator settle; RSS is read after the load calls returned.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss = status_kib(pid, "VmRSS:").unwrap_or_default();
    let hwm = status_kib(pid, "VmHWM:").unwrap_or_default();
    println!(
        "{backend:7} offers={n} load={:.1}s idle_rss={} MB VmRSS={} MB VmHWM={} MB",
        load.as_secs_f64(),
        idle / 1024,
        rss / 1024,
        hwm / 1024
    );
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let n: usize = args.next().map_or(Ok(1_000_000), |s| s.parse())?;
    let mut backends: Vec<String> = args.collect();
    if backends.is_empty() {
        backends = vec!["memory".into(), "sqlite".into()];
    }
    let bin = std::env::var("STORE_BIN").unwrap_or_else(|_| {
        concat!(env!("CARGO_MANIFEST_DIR"), "/../../target/release/store").to_owned()
    });
    for backend in &backends {
        measure(&bin, backend, n).await?;
    }
    Ok(())
}
