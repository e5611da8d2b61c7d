//! The scheduled export (`--archive-url`, `--archive-every`): a background
//! task writing the whole book into one archive snapshot per interval, in
//! the format the backfillers' glacier/archive source restores.
//!
//! A failed export is logged and counted, never fatal: the store keeps
//! serving and the next interval tries again.

use offer_store::SharedStore;
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior};

/// Checks the URL now, so a bad `--archive-url` stops the start-up instead
/// of failing silently hours later.
pub fn check_url(url: &str) -> Result<(), String> {
    offer_archive::ArchiveLocation::open(url)
        .map(drop)
        .map_err(|e| format!("--archive-url: {e}"))
}

/// Runs [`export_once`] every `every`, the first one after one interval
/// (an export at start-up would add load exactly when a restart is busy).
pub fn spawn(store: SharedStore, url: String, every: Duration) -> JoinHandle<()> {
    tokio::spawn(async move {
        tracing::info!(url = %url, every = %humantime::format_duration(every), "scheduled archive export enabled");
        let mut tick = tokio::time::interval_at(Instant::now() + every, every);
        // A slow export must not be followed by a burst of catch-up ones.
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            export_once(&store, &url).await;
        }
    })
}

/// One export; the outcome goes to the log and to
/// `store_archive_exports_total{outcome}`.
pub async fn export_once(store: &SharedStore, url: &str) {
    let started = std::time::Instant::now();
    // The URL is opened afresh each time so rotated credentials in the
    // environment are picked up.
    match offer_archive::export_snapshot(store.as_ref(), url, None).await {
        Ok(s) => {
            metrics::counter!("store_archive_exports_total", "outcome" => "success").increment(1);
            tracing::info!(
                object = %s.object,
                offers = s.offers,
                bytes = s.bytes,
                took_ms = started.elapsed().as_millis() as u64,
                "archive snapshot written"
            );
        }
        Err(e) => {
            metrics::counter!("store_archive_exports_total", "outcome" => "failure").increment(1);
            tracing::error!(url = %url, "archive export failed: {e}");
        }
    }
}
