//! `offersctl`: an operator CLI over the store's gRPC API.
//!
//! - [`cli`]: flags and subcommands (clap), parsed and checked up front.
//! - [`input`]: reading overwrite files (JSON array or NDJSON).
//! - [`output`]: tables for people, JSON lines for programs.
//!
//! Everything goes through `store_client::GrpcStore`, i.e. the same
//! `MarginOfferStore` trait as every other client, so the CLI holds no store
//! logic: dry runs and diffs are computed by the store itself.

pub mod cli;
pub mod input;
pub mod output;
pub mod watch;

use anyhow::{Context as _, anyhow, bail};
use cli::{Cli, Command, ExportArgs, ListArgs, OverwriteArgs, SnapshotCommand, StatsArgs};
use offer_domain::query::MAX_LIMIT;
use offer_domain::{
    ListQuery, OfferFilter, OverwriteFilter, OverwriteRequest, StatsQuery, StoreError, WriteContext,
};
use offer_store::MarginOfferStore as _;
use std::collections::HashSet;
use std::io::{Read as _, Write};
use store_client::GrpcStore;

/// Names this tool in the change log of every write it makes.
pub const ORIGIN: &str = "offersctl";

/// Runs one command, writing its output to `out`. Errors are one line each
/// (store errors carry their gRPC code); the caller prints them.
pub async fn run(cli: Cli, out: &mut dyn Write) -> anyhow::Result<()> {
    let store = GrpcStore::connect_from_env(&cli.store_addr)
        .await
        .map_err(|e| {
            anyhow!(
                "bad --store-addr {:?}: {}",
                cli.store_addr,
                store_message(&e)
            )
        })?
        .with_timeout(cli.timeout)
        .with_origin(ORIGIN);
    let ctx = Ctx {
        store,
        addr: cli.store_addr,
        json: cli.json,
    };
    match cli.command {
        Command::List(a) => list(&ctx, a, out).await,
        Command::Get { id } => get(&ctx, &id, out).await,
        Command::Stats(a) => stats(&ctx, a, out).await,
        Command::Overwrite(a) => overwrite(&ctx, a, out).await,
        Command::Delete { id } => delete(&ctx, &id, out).await,
        Command::Watch(a) => watch::run(&ctx.store, a, out).await,
        Command::Snapshot(SnapshotCommand::Export(a)) => export(&ctx, a, out).await,
    }
}

struct Ctx {
    store: GrpcStore,
    addr: String,
    json: bool,
}

impl Ctx {
    /// A store error as one line naming its code, and the address when the
    /// store could not be reached (the usual cause being a wrong address).
    fn err(&self, e: StoreError) -> anyhow::Error {
        let code = code_name(&e);
        match &e {
            StoreError::Unavailable(m) => {
                anyhow!(
                    "{code}: cannot reach the store at {}: {}",
                    self.addr,
                    one_line(m)
                )
            }
            StoreError::DeadlineExceeded(m) => anyhow!(
                "{code}: the store at {} did not answer in time (see --timeout): {}",
                self.addr,
                one_line(m)
            ),
            _ => anyhow!("{code}: {}", store_message(&e)),
        }
    }
}

/// The gRPC code a store error stands for.
pub fn code_name(e: &StoreError) -> &'static str {
    match e {
        StoreError::InvalidArgument(_) => "INVALID_ARGUMENT",
        StoreError::NotFound { .. } => "NOT_FOUND",
        StoreError::AlreadyExists { .. } => "ALREADY_EXISTS",
        StoreError::OutOfRange { .. } => "OUT_OF_RANGE",
        StoreError::ResourceExhausted(_) => "RESOURCE_EXHAUSTED",
        StoreError::Unauthenticated(_) => "UNAUTHENTICATED",
        StoreError::Unavailable(_) => "UNAVAILABLE",
        StoreError::DeadlineExceeded(_) => "DEADLINE_EXCEEDED",
        StoreError::Internal(_) => "INTERNAL",
    }
}

fn store_message(e: &StoreError) -> String {
    one_line(&e.to_string())
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

async fn list(ctx: &Ctx, a: ListArgs, out: &mut dyn Write) -> anyhow::Result<()> {
    let all = a.all;
    let mut q = ListQuery {
        filter: OfferFilter {
            offer_type: a.offer_type,
            collateral_token: a.collateral_token,
            borrow_token: a.borrow_token,
            interest_model: a.interest_model,
            liquidity_source: a.liquidity_source,
            lender_address: a.lender,
            source: a.source,
            min_borrow_amount: a.min_borrow_amount,
            max_borrow_amount: a.max_borrow_amount,
            min_interest_rate: a.min_interest_rate,
            max_interest_rate: a.max_interest_rate,
            min_max_open_ltv: a.min_open_ltv,
            max_max_open_ltv: a.max_open_ltv,
            created_after: a.created_after,
            created_before: a.created_before,
            updated_after: a.updated_after,
            updated_before: a.updated_before,
        },
        sort_by: a.sort_by.unwrap_or_default(),
        sort_order: a.sort_order.unwrap_or_default(),
        // Fewer round trips when fetching everything anyway.
        limit: a.limit.unwrap_or(if all { MAX_LIMIT } else { 0 }),
        offset: a.offset.unwrap_or(0),
        include_expired: a.include_expired,
        active_only: a.active_only,
        page_token: a.page_token,
    };
    let mut offers = Vec::new();
    let mut seen_tokens = HashSet::new();
    let page = loop {
        let page = ctx.store.list(&q).await.map_err(|e| ctx.err(e))?;
        if ctx.json {
            // Streamed page by page: `--all --json` over a big book needs no memory.
            for o in &page.offers {
                writeln!(out, "{}", output::offer_line(o))?;
            }
        } else {
            offers.extend(page.offers.iter().cloned());
        }
        if !all || !page.has_more {
            break page;
        }
        match (&page.next_page_token, page.next_offset) {
            (Some(token), _) => {
                if !seen_tokens.insert(token.clone()) {
                    bail!("the store returned the same page token twice; stopping");
                }
                q.page_token = Some(token.clone());
            }
            // A server without keyset tokens (the original Go service).
            (None, Some(next)) if next > q.offset => {
                q.page_token = None;
                q.offset = next;
            }
            _ => break page,
        }
    };
    if ctx.json {
        // stdout stays pure NDJSON; the way on goes to stderr.
        if page.has_more
            && !all
            && let Some(t) = &page.next_page_token
        {
            eprintln!("more offers: --page-token {t}");
        }
    } else {
        out.write_all(output::offers_table(&offers).as_bytes())?;
        let mut footer = format!(
            "{} of {} offers (revision {})",
            offers.len(),
            page.total,
            page.revision
        );
        if page.has_more && !all {
            match &page.next_page_token {
                Some(t) => footer.push_str(&format!("; next page: --page-token {t}")),
                None => {
                    if let Some(n) = page.next_offset {
                        footer.push_str(&format!("; next page: --offset {n}"));
                    }
                }
            }
        }
        writeln!(out, "{footer}")?;
    }
    Ok(())
}

async fn get(ctx: &Ctx, id: &str, out: &mut dyn Write) -> anyhow::Result<()> {
    let o = ctx.store.get(id).await.map_err(|e| ctx.err(e))?;
    let text = if ctx.json {
        format!("{}\n", output::offer_line(&o))
    } else {
        output::offer_details(&o)
    };
    out.write_all(text.as_bytes())?;
    Ok(())
}

async fn stats(ctx: &Ctx, a: StatsArgs, out: &mut dyn Write) -> anyhow::Result<()> {
    let q = StatsQuery {
        filter: a.filter.into_filter(),
        include_expired: a.include_expired,
    };
    let s = ctx.store.stats(&q).await.map_err(|e| ctx.err(e))?;
    let text = if ctx.json {
        format!("{}\n", output::stats_json(&s))
    } else {
        output::stats_text(&s)
    };
    out.write_all(text.as_bytes())?;
    Ok(())
}

/// `snapshot export`: pages through the store (following page tokens) into
/// one archive object; the archive crate does the streaming.
async fn export(ctx: &Ctx, a: ExportArgs, out: &mut dyn Write) -> anyhow::Result<()> {
    let s = offer_archive::export_snapshot(&ctx.store, &a.to, a.filter.into_filter())
        .await
        .map_err(|e| match e {
            offer_archive::ArchiveError::Store(e) => ctx.err(e),
            e => anyhow!("{}", one_line(&e.to_string())),
        })?;
    let text = if ctx.json {
        format!(
            "{}\n",
            serde_json::json!({
                "object": s.object, "name": s.name, "offers": s.offers, "bytes": s.bytes,
            })
        )
    } else {
        format!("exported {} offers to {}\n", s.offers, s.object)
    };
    out.write_all(text.as_bytes())?;
    Ok(())
}

async fn overwrite(ctx: &Ctx, a: OverwriteArgs, out: &mut dyn Write) -> anyhow::Result<()> {
    if a.source.trim().is_empty() {
        bail!("--source must not be empty: it is the scope of the overwrite");
    }
    let name = a.file.display().to_string();
    let text = if name == "-" {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .context("cannot read standard input")?;
        s
    } else {
        std::fs::read_to_string(&a.file).with_context(|| format!("cannot read {name}"))?
    };
    let offers = input::parse_offers(&text, &a.source).map_err(|e| anyhow!("{name}: {e}"))?;
    if offers.is_empty() && !a.allow_empty {
        bail!(
            "{name} holds no offers: applying it would delete every offer of source {:?}; pass --allow-empty to do that",
            a.source
        );
    }
    let req = OverwriteRequest {
        offers,
        filter: Some(OverwriteFilter::source(a.source.clone())),
        // Report every bad item at once rather than one per attempt.
        validate_all: true,
        dry_run: a.dry_run,
    };
    // Streamed: a file of any size lands as one atomic overwrite.
    let outcome = ctx
        .store
        .overwrite_stream(
            req,
            store_client::DEFAULT_CHUNK_SIZE,
            &WriteContext::new(ORIGIN),
        )
        .await
        .map_err(|e| ctx.err(e))?;
    if let Some(first) = outcome.errors.first() {
        let more = outcome.errors.len() - 1;
        bail!(
            "overwrite refused, nothing written: item {} (id {:?}): {}: {}{}",
            first.index,
            first.id,
            first.code,
            one_line(&first.message),
            if more > 0 {
                format!(" (and {more} more item errors)")
            } else {
                String::new()
            }
        );
    }
    let text = if ctx.json {
        format!(
            "{}\n",
            output::overwrite_json(&outcome, &a.source, a.dry_run)
        )
    } else {
        output::overwrite_text(&outcome, &a.source, a.dry_run)
    };
    out.write_all(text.as_bytes())?;
    Ok(())
}

async fn delete(ctx: &Ctx, id: &str, out: &mut dyn Write) -> anyhow::Result<()> {
    let revision = ctx
        .store
        .delete(id, &WriteContext::new(ORIGIN))
        .await
        .map_err(|e| ctx.err(e))?;
    let text = if ctx.json {
        format!(
            "{}\n",
            serde_json::json!({ "deleted": id, "revision": revision })
        )
    } else {
        format!("deleted {id} (revision {revision})\n")
    };
    out.write_all(text.as_bytes())?;
    Ok(())
}
