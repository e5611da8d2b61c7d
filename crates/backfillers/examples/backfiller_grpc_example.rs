//! Connects to a store over gRPC, checks its health (10 s deadline), builds
//! a backfiller over the client and runs one off-chain job once.
//!
//! ```sh
//! cargo run -p backfillers --example backfiller_grpc_example -- \
//!     localhost:8080 https://partner.example.com/v1/margin-offers
//! ```

use backfill::config::process_env;
use backfill::sources::OffChainSource;
use backfill::{
    BackfillConfig, BackfillOptions, Backfiller, CancellationToken, SourceKind, SourceRegistry,
};
use backfillers::writer::GrpcStreamWriter;
use offer_store::{MarginOfferStore, SharedStore};
use std::sync::Arc;
use std::time::Duration;
use store_client::GrpcStore;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let addr = args.next().unwrap_or_else(|| "localhost:8080".into());
    let endpoint = args
        .next()
        .unwrap_or_else(|| "http://localhost:9000/offers".into());

    let client = GrpcStore::connect(&addr).await?;
    tokio::time::timeout(Duration::from_secs(10), client.health_check())
        .await
        .map_err(|_| anyhow::anyhow!("store at {addr}: no answer within 10s"))??;
    println!("store at {addr} is healthy");

    // One job, in the job-file format of `backfiller.md`.
    let job_file = serde_json::json!({ "jobs": [{
        "name": "example-feed",
        "request": { "source": "off-chain", "batch_size": 1000,
                     "off_chain_params": { "api_endpoint": endpoint } }
    }]});
    let config = BackfillConfig::from_json(&job_file.to_string(), "example", &process_env)?;

    let sources =
        SourceRegistry::new().with(SourceKind::OffChain, Arc::new(OffChainSource::new()?));
    let store: SharedStore = Arc::new(client.clone());
    let backfiller = Backfiller::new(store, sources, BackfillOptions::default())
        .with_writer(Arc::new(GrpcStreamWriter::new(client)));

    let results = backfiller
        .run_once(&config.jobs, &CancellationToken::new())
        .await;
    for r in &results {
        println!("{}", serde_json::to_string_pretty(r)?);
    }
    Ok(())
}
