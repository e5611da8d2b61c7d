//! `loadgen`: loads a synthetic book into a running store and measures its
//! gRPC operations (see BENCHMARKS.md).
//!
//! - [`book`]: the synthetic book (mints, Zipf pairs, sources), offer `i`
//!   rebuilt from `(seed, i)` alone.
//! - [`conn`]: several channels to the store, the API client, the raw client
//!   and the health client over each.
//! - [`mixes`]: the closed-loop mixes and the fan-out.
//! - [`peer`]: the direct-SQL PostgreSQL peer of the list mix.
//! - [`report`]: HDR histograms, the machine line, the table.

pub mod book;
pub mod conn;
pub mod mixes;
pub mod peer;
pub mod report;

use anyhow::Context as _;
use book::{Book, SOURCES};
use clap::{Args, Parser, Subcommand};
use conn::Conns;
use mixes::{Ctx, Mix};
use offer_domain::{OverwriteFilter, OverwriteRequest, WriteContext};
use report::{OpRow, Recorder, RunReport};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Load generator of the margin-offer store.
#[derive(Clone, Debug, Parser)]
#[command(name = "loadgen", version, about, long_about = None)]
pub struct Cli {
    #[command(flatten)]
    pub common: Common,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Clone, Debug, Args)]
pub struct Common {
    /// The store's gRPC address: `host:port` or `http://host:port`.
    #[arg(
        long,
        env = "STORE_ADDR",
        default_value = "localhost:8080",
        global = true
    )]
    pub addr: String,
    /// Bearer token for stores started with a write/read token.
    #[arg(long, env = "STORE_TOKEN", hide_env_values = true, global = true)]
    pub token: Option<String>,
    /// Offers in the main book (`load` writes them, `run` gets and lists them).
    #[arg(long, default_value_t = 100_000, global = true)]
    pub offers: usize,
    /// Seed of the book and of every client's choices.
    #[arg(long, default_value_t = 42, global = true)]
    pub seed: u64,
    /// Deadline of each call.
    #[arg(long, default_value = "300s", value_parser = humantime::parse_duration, global = true)]
    pub timeout: Duration,
}

#[derive(Clone, Debug, Subcommand)]
pub enum Command {
    /// Write the synthetic book: one streamed overwrite per source.
    Load,
    /// Run a mix against the loaded book and print the figures.
    Run(RunArgs),
}

#[derive(Clone, Debug, Args)]
pub struct RunArgs {
    #[arg(long, value_enum, default_value = "all")]
    pub mix: Mix,
    /// How long each mix runs, e.g. `30s`.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// Concurrent clients (closed loop: each waits for its answer).
    #[arg(long, default_value_t = 8)]
    pub clients: usize,
    /// Clients sharing one HTTP/2 connection.
    #[arg(long, default_value_t = 4)]
    pub clients_per_channel: usize,
    /// Pages followed per list query, the first included.
    #[arg(long, default_value_t = 3)]
    pub pages: usize,
    /// Offers in the scope of the overwrite mix.
    #[arg(long, default_value_t = 100_000)]
    pub overwrite_offers: usize,
    /// Subscribers of the fan-out mix.
    #[arg(long, default_value_t = 1_000)]
    pub subscribers: usize,
    /// Offers changed by each overwrite of the fan-out mix.
    #[arg(long, default_value_t = 10_000)]
    pub fanout_offers: usize,
    /// A PostgreSQL database for the direct-SQL peer of the list mix
    /// (schema `loadgen_peer` is dropped and recreated).
    #[arg(long, env = "PEER_DATABASE_URL", hide_env_values = true)]
    pub peer_database_url: Option<String>,
}

/// What `load` did.
#[derive(Clone, Debug)]
pub struct LoadReport {
    pub offers: u64,
    pub elapsed: Duration,
}

/// Writes the main book, source by source, each as one streamed overwrite
/// scoped to the source (what a backfiller does).
pub async fn load(common: &Common) -> anyhow::Result<LoadReport> {
    let book = Book::new(common.seed, common.offers)?;
    let conns = Conns::open(&common.addr, common.token.clone(), 1, common.timeout).await?;
    let store = conns.store(0)?;
    let ctx = WriteContext::new("loadgen");
    let mut total = 0u64;
    let mut busy = Duration::ZERO;
    for source in 0..SOURCES {
        let name = Book::source_name(source);
        let offers: Vec<_> = book.source_offers(source).collect();
        let n = offers.len();
        let t = Instant::now();
        let out = store
            .overwrite_stream(
                OverwriteRequest {
                    offers,
                    filter: Some(OverwriteFilter::source(name.clone())),
                    validate_all: false,
                    dry_run: false,
                },
                mixes::CHUNK,
                &ctx,
            )
            .await
            .with_context(|| format!("loading source {name}"))?;
        let took = t.elapsed();
        busy += took;
        if let Some(e) = out.errors.first() {
            anyhow::bail!("the store rejected offers of {name}, first: {e:?}");
        }
        total += n as u64;
        println!(
            "loaded {name}: {n} offers ({} created, {} updated, {} unchanged) in {:.2}s = {:.0} offers/s",
            out.created_ids.len(),
            out.updated_ids.len(),
            out.unchanged_count,
            took.as_secs_f64(),
            n as f64 / took.as_secs_f64().max(1e-9)
        );
    }
    Ok(LoadReport {
        offers: total,
        elapsed: busy,
    })
}

/// Runs the mix(es) of `args` and returns every figure. Each mix is framed
/// by floor phases; its ratios use the floor measured on both sides of it.
pub async fn run(common: &Common, args: &RunArgs) -> anyhow::Result<RunReport> {
    let channels = args
        .clients
        .div_ceil(args.clients_per_channel.max(1))
        .max(1);
    let conns = Conns::open(&common.addr, common.token.clone(), channels, common.timeout).await?;
    let ctx = Arc::new(Ctx {
        conns,
        book: Book::new(common.seed, common.offers)?,
        clients: args.clients.max(1),
        clients_per_channel: args.clients_per_channel.max(1),
        duration: args.duration,
        pages: args.pages,
        overwrite_offers: args.overwrite_offers,
        subscribers: args.subscribers,
        fanout_offers: args.fanout_offers,
        seed: common.seed,
    });
    let floor_time = (args.duration / 5).clamp(Duration::from_millis(500), Duration::from_secs(3));
    let mut report = RunReport {
        machine: report::machine_line(),
        ..Default::default()
    };
    let mut floor_all = Recorder::default();
    let mut floor_elapsed = Duration::ZERO;
    let (mut before, took) = mixes::floor(&ctx, floor_time).await?;
    floor_all.merge(&before);
    floor_elapsed += took;
    for mix in args.mix.expand() {
        // Progress on stderr: the table comes at the end.
        eprintln!("loadgen: running {mix:?}");
        let mut peer_rec = None;
        let (rec, elapsed) = match mix {
            Mix::Get => mixes::get(&ctx).await?,
            Mix::List => {
                if let Some(url) = &args.peer_database_url {
                    let t = Instant::now();
                    let (rows, mismatches) = mixes::prepare_peer(&ctx, url).await?;
                    eprintln!(
                        "peer: copied {rows} offers into {}.offers and indexed them in {:.1}s",
                        peer::SCHEMA,
                        t.elapsed().as_secs_f64()
                    );
                    report.peer_mismatches.extend(mismatches);
                }
                let grpc = mixes::list(&ctx).await?;
                if let Some(url) = &args.peer_database_url {
                    peer_rec = Some(mixes::peer_list(&ctx, url).await?);
                }
                grpc
            }
            Mix::Upsert => mixes::upsert(&ctx).await?,
            Mix::BulkUpsert => mixes::bulk_upsert(&ctx).await?,
            Mix::Overwrite => mixes::overwrite(&ctx).await?,
            Mix::Fanout => {
                report.fanout = Some(mixes::fanout(&ctx).await?);
                (Recorder::default(), Duration::ZERO)
            }
            Mix::All => continue,
        };
        let (after, took) = mixes::floor(&ctx, floor_time).await?;
        floor_all.merge(&after);
        floor_elapsed += took;
        let floor_p50 = mixes::floor_p50(&before, &after);
        for (op, stats) in rec.ops {
            // `list/<shape>` compares with `peer/<shape>`, `list` with `peer`.
            let peer_p50 = peer_rec.as_ref().and_then(|(p, _)| {
                let name = op.replacen("list", "peer", 1);
                p.get(&name).and_then(report::OpStats::p50)
            });
            report.rows.push(OpRow {
                op,
                stats,
                elapsed,
                floor_p50,
                peer_p50,
            });
        }
        if let Some((p, elapsed)) = peer_rec {
            for (op, stats) in p.ops {
                report.rows.push(OpRow {
                    op,
                    stats,
                    elapsed,
                    floor_p50: None,
                    peer_p50: None,
                });
            }
        }
        before = after;
    }
    for (op, stats) in floor_all.ops {
        report.floor.push(OpRow {
            op,
            stats,
            elapsed: floor_elapsed,
            floor_p50: None,
            peer_p50: None,
        });
    }
    Ok(report)
}

/// The binary's body: parses nothing, prints everything.
pub async fn main_with(cli: Cli) -> anyhow::Result<()> {
    println!("{}", report::machine_line());
    match &cli.command {
        Command::Load => {
            let r = load(&cli.common).await?;
            println!(
                "load: {} offers in {:.2}s of overwrite calls = {:.0} offers/s",
                r.offers,
                r.elapsed.as_secs_f64(),
                r.offers as f64 / r.elapsed.as_secs_f64().max(1e-9)
            );
        }
        Command::Run(args) => {
            println!(
                "run: addr={} offers={} mix={:?} duration={:?} clients={} channels={} subscribers={} peer={}",
                cli.common.addr,
                cli.common.offers,
                args.mix,
                args.duration,
                args.clients,
                args.clients.div_ceil(args.clients_per_channel.max(1)),
                args.subscribers,
                args.peer_database_url.is_some()
            );
            let report = run(&cli.common, args).await?;
            print!("{}", report.render());
            println!(
                "{}",
                report::machine_line().replacen("machine", "machine after", 1)
            );
            if report.errors() > 0 || !report.peer_mismatches.is_empty() {
                anyhow::bail!(
                    "{} operations failed, {} peer mismatches",
                    report.errors(),
                    report.peer_mismatches.len()
                );
            }
            if let Some(f) = &report.fanout
                && f.lost > 0
            {
                anyhow::bail!("fan-out lost {} changes", f.lost);
            }
        }
    }
    Ok(())
}
