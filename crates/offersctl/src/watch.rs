//! `offersctl watch`: follows the change stream, one JSON line per change.
//!
//! Resuming after a disconnect is `GrpcStore::watch`'s job; only what cannot
//! be resumed (LAGGED, OUT_OF_RANGE, a refused request) ends the command,
//! with one line and a non-zero exit.

use anyhow::anyhow;
use clap::Args;
use offer_domain::json::{format_rfc3339, offer_to_json};
use offer_domain::{Change, ChangeType, StoreError};
use serde_json::json;
use std::io::Write;
use store_client::GrpcStore;
use store_client::{WatchEvent, WatchFilter, WatchRequest};

#[derive(Clone, Debug, Default, Args)]
pub struct WatchArgs {
    /// Only offers of this type (V1, BP, LV).
    #[arg(long)]
    pub offer_type: Option<String>,
    /// Only offers with this collateral token.
    #[arg(long)]
    pub collateral_token: Option<String>,
    /// Only offers with this borrow token.
    #[arg(long)]
    pub borrow_token: Option<String>,
    /// Only offers from this liquidity source.
    #[arg(long)]
    pub liquidity_source: Option<String>,
    /// Only offers of this lender address.
    #[arg(long)]
    pub lender: Option<String>,
    /// Only offers whose own `source` field is this.
    #[arg(long)]
    pub source: Option<String>,
    /// Deliver CREATED changes (with no type flag, every type is delivered).
    #[arg(long)]
    pub created: bool,
    /// Deliver UPDATED changes.
    #[arg(long)]
    pub updated: bool,
    /// Deliver DELETED changes.
    #[arg(long)]
    pub deleted: bool,
    /// Deliver OVERWRITTEN changes.
    #[arg(long)]
    pub overwritten: bool,
    /// First deliver every retained change after this revision.
    #[arg(long)]
    pub from_revision: Option<i64>,
}

impl WatchArgs {
    fn request(&self) -> WatchRequest {
        let types = [
            (self.created, ChangeType::Created),
            (self.updated, ChangeType::Updated),
            (self.deleted, ChangeType::Deleted),
            (self.overwritten, ChangeType::Overwritten),
        ]
        .into_iter()
        .filter_map(|(on, t)| on.then_some(t))
        .collect();
        WatchRequest {
            filters: WatchFilter {
                offer_type: self.offer_type.clone(),
                collateral_token: self.collateral_token.clone(),
                borrow_token: self.borrow_token.clone(),
                liquidity_source: self.liquidity_source.clone(),
                lender_address: self.lender.clone(),
                source: self.source.clone(),
            },
            types,
            start_revision: self.from_revision,
            client_id: "offersctl".to_owned(),
        }
    }
}

fn type_name(t: ChangeType) -> &'static str {
    match t {
        ChangeType::Created => "CREATED",
        ChangeType::Updated => "UPDATED",
        ChangeType::Deleted => "DELETED",
        ChangeType::Overwritten => "OVERWRITTEN",
    }
}

/// One change as a JSON object, the offer with wire field names.
pub fn change_to_json(c: &Change) -> serde_json::Value {
    json!({
        "change_type": type_name(c.change_type),
        "revision": c.revision,
        "operation_id": c.operation_id,
        "source": c.origin,
        "timestamp": format_rfc3339(c.timestamp),
        "offer": offer_to_json(&c.offer),
    })
}

/// Streams changes to `out` until the stream ends or fails for good.
pub async fn run(store: &GrpcStore, args: WatchArgs, out: &mut dyn Write) -> anyhow::Result<()> {
    let mut stream = store.watch(args.request()).into_inner();
    while let Some(item) = stream.recv().await {
        match item {
            Ok(WatchEvent::Change(c)) => {
                writeln!(out, "{}", change_to_json(&c))?;
                // A watcher is read live (often through a pipe): no buffering.
                out.flush()?;
            }
            Ok(WatchEvent::Heartbeat { .. }) => {}
            Err(e @ StoreError::OutOfRange { .. }) => {
                return Err(anyhow!("watch cannot resume: {e}"));
            }
            Err(e) => return Err(anyhow!("watch failed: {e}")),
        }
    }
    Err(anyhow!("watch: the change stream ended"))
}
