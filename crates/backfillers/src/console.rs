//! What `--run-once` shows a person: a progress bar per job on a terminal,
//! with log lines printed above the bars instead of through them.

use backfill::{JobResult, JobSpec, StatusBoard};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::Write;
use std::time::Duration;
use tracing_subscriber::fmt::MakeWriter;

/// A `tracing` writer printing through the bars (suspending them), so log
/// lines and bars do not garble each other.
#[derive(Clone)]
pub struct BarsWriter {
    multi: MultiProgress,
}

impl BarsWriter {
    pub fn new(multi: MultiProgress) -> Self {
        BarsWriter { multi }
    }
}

pub struct LineBuffer {
    multi: MultiProgress,
    buf: Vec<u8>,
}

impl Write for LineBuffer {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for LineBuffer {
    fn drop(&mut self) {
        // One event is written whole, then the writer is dropped: print it
        // in one piece while the bars are hidden.
        let buf = std::mem::take(&mut self.buf);
        self.multi.suspend(|| {
            let _ = std::io::stdout().write_all(&buf);
        });
    }
}

impl<'a> MakeWriter<'a> for BarsWriter {
    type Writer = LineBuffer;
    fn make_writer(&'a self) -> LineBuffer {
        LineBuffer {
            multi: self.multi.clone(),
            buf: Vec::new(),
        }
    }
}

/// A bar per job, refreshed from the status board's live progress until
/// the returned handle is finished.
pub struct Bars {
    bars: Vec<(String, ProgressBar)>,
    task: tokio::task::JoinHandle<()>,
}

pub fn start_bars(multi: &MultiProgress, jobs: &[JobSpec], status: StatusBoard) -> Bars {
    multi.set_draw_target(ProgressDrawTarget::stdout());
    let style = ProgressStyle::with_template(
        "{spinner} {prefix:<24} {wide_bar} {pos:>7}/{len:7} {msg} [{elapsed_precise}]",
    )
    .unwrap_or_else(|_| ProgressStyle::default_bar());
    let bars: Vec<(String, ProgressBar)> = jobs
        .iter()
        .map(|j| {
            let bar = multi.add(ProgressBar::new(0));
            bar.set_style(style.clone());
            bar.set_prefix(j.name.clone());
            bar.set_message("waiting");
            bar.enable_steady_tick(Duration::from_millis(200));
            (j.name.clone(), bar)
        })
        .collect();
    let watched = bars.clone();
    let task = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        loop {
            tick.tick().await;
            for (name, bar) in &watched {
                let Some(js) = status.job(name) else { continue };
                let Some(run) = js.running else { continue };
                let p = run.progress;
                // Fetching counts towards the expected total when known;
                // writing towards what was fetched.
                let (pos, len) = if p.phase == "writing" {
                    (p.records_written, p.records_fetched)
                } else {
                    (
                        p.records_fetched,
                        p.expected_total.unwrap_or(p.records_fetched),
                    )
                };
                bar.set_length(len);
                bar.set_position(pos);
                let eta = p
                    .eta_seconds
                    .map(|s| format!(" eta {s:.0}s"))
                    .unwrap_or_default();
                bar.set_message(format!(
                    "{} attempt {} {:.0}/s{eta}",
                    p.phase, run.attempt, p.throughput_per_sec
                ));
            }
        }
    });
    Bars { bars, task }
}

impl Bars {
    pub fn finish(self, results: &[JobResult]) {
        self.task.abort();
        for (name, bar) in self.bars {
            match results.iter().find(|r| r.job == name) {
                Some(r) => bar.finish_with_message(r.outcome.as_str().to_owned()),
                None => bar.finish_and_clear(),
            }
        }
    }
}

/// One line per job, and for a dry run what would change.
pub fn summary(r: &JobResult) -> String {
    let c = &r.counts;
    let took = (r.finished_at - r.started_at)
        .to_std()
        .unwrap_or_default()
        .as_secs_f64();
    let mut line = format!(
        "job {}: {}{} in {took:.1}s, {} attempt(s): fetched {}, created {}, updated {}, deleted {}, unchanged {}",
        r.job,
        r.outcome.as_str(),
        if r.dry_run { " (dry run)" } else { "" },
        r.attempts,
        c.fetched,
        c.created,
        c.updated,
        c.deleted,
        c.unchanged
    );
    if let Some(e) = &r.error {
        line.push_str(&format!(": {e}"));
    }
    if r.dry_run {
        for s in &r.scopes {
            for (what, ids) in [
                ("create", &s.created_ids),
                ("update", &s.updated_ids),
                ("delete", &s.deleted_ids),
            ] {
                if ids.is_empty() {
                    continue;
                }
                let shown: Vec<&str> = ids.iter().take(50).map(String::as_str).collect();
                let more = ids.len().saturating_sub(shown.len());
                line.push_str(&format!(
                    "\n  would {what} in {}: {}{}",
                    s.scope,
                    shown.join(", "),
                    if more > 0 {
                        format!(" (+{more} more)")
                    } else {
                        String::new()
                    }
                ));
            }
        }
    }
    line
}
