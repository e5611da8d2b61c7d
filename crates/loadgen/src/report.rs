//! Latency recording (HDR histograms in microseconds), the machine line and
//! the printed tables.

use hdrhistogram::Histogram;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::{Duration, Instant};

/// Latencies of one operation: successes in the histogram, failures counted.
#[derive(Clone, Debug)]
pub struct OpStats {
    /// Microseconds, 1 µs .. 10 min at 3 significant digits.
    pub hist: Histogram<u64>,
    pub errors: u64,
    /// The first failure, to say what went wrong.
    pub first_error: Option<String>,
    /// Items moved per successful operation (offers for writes, 1 otherwise).
    pub items: u64,
}

impl Default for OpStats {
    fn default() -> Self {
        OpStats {
            hist: new_histogram(),
            errors: 0,
            first_error: None,
            items: 0,
        }
    }
}

// Constant bounds well within hdrhistogram's documented limits (low >= 1,
// high >= 2 * low, sigfig <= 5): this cannot fail whatever the input.
#[allow(clippy::expect_used)]
fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("constant histogram bounds are valid")
}

impl OpStats {
    pub fn ok(&self) -> u64 {
        self.hist.len()
    }

    pub fn p50(&self) -> Option<u64> {
        (!self.hist.is_empty()).then(|| self.hist.value_at_quantile(0.5))
    }

    fn merge(&mut self, other: &OpStats) {
        // Same bounds on both sides; a saturated value is clamped instead.
        let _ = self.hist.add(&other.hist);
        self.errors += other.errors;
        self.items += other.items;
        if self.first_error.is_none() {
            self.first_error.clone_from(&other.first_error);
        }
    }
}

/// What one client (or a whole phase, once merged) measured, per operation.
#[derive(Clone, Debug, Default)]
pub struct Recorder {
    pub ops: BTreeMap<String, OpStats>,
}

impl Recorder {
    fn entry(&mut self, op: &str) -> &mut OpStats {
        if !self.ops.contains_key(op) {
            self.ops.insert(op.to_owned(), OpStats::default());
        }
        // Just inserted when missing.
        self.ops.entry(op.to_owned()).or_default()
    }

    /// Records one operation started at `started`; `items` for throughput
    /// in items/s (offers of a bulk write).
    pub fn record<E: std::fmt::Display>(
        &mut self,
        op: &str,
        started: Instant,
        result: Result<u64, E>,
    ) {
        let micros = started.elapsed().as_micros().max(1) as u64;
        self.record_micros(op, micros, result);
    }

    pub fn record_micros<E: std::fmt::Display>(
        &mut self,
        op: &str,
        micros: u64,
        result: Result<u64, E>,
    ) {
        let stats = self.entry(op);
        match result {
            Ok(items) => {
                stats.hist.saturating_record(micros.max(1));
                stats.items += items;
            }
            Err(e) => {
                stats.errors += 1;
                if stats.first_error.is_none() {
                    stats.first_error = Some(e.to_string());
                }
            }
        }
    }

    pub fn merge(&mut self, other: &Recorder) {
        for (op, stats) in &other.ops {
            self.entry(op).merge(stats);
        }
    }

    pub fn get(&self, op: &str) -> Option<&OpStats> {
        self.ops.get(op)
    }
}

/// One row of the result table.
#[derive(Clone, Debug)]
pub struct OpRow {
    pub op: String,
    pub stats: OpStats,
    /// Wall time of the phase the operation ran in.
    pub elapsed: Duration,
    /// The floor's p50 in the same run, in µs.
    pub floor_p50: Option<u64>,
    /// The direct-SQL peer's p50 of the same list shape, in µs.
    pub peer_p50: Option<u64>,
}

impl OpRow {
    pub fn ops_per_sec(&self) -> f64 {
        self.stats.ok() as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// Offers (or other items) per second over the phase.
    pub fn items_per_sec(&self) -> f64 {
        self.stats.items as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// Subscription fan-out, one or more rounds.
#[derive(Clone, Debug, Default)]
pub struct FanoutReport {
    pub subscribers: usize,
    pub changes_per_round: u64,
    pub rounds: u64,
    /// Sum over subscribers of expected − received; must be 0.
    pub lost: u64,
    /// Per subscriber and round: last change received, from the overwrite's ack.
    pub from_ack: OpStats,
    /// The same from the overwrite's start.
    pub from_start: OpStats,
    /// Per round: the last subscriber's last change, from the ack.
    pub last_from_ack: OpStats,
    pub last_from_start: OpStats,
}

/// Everything one `run` measured.
#[derive(Clone, Debug, Default)]
pub struct RunReport {
    pub machine: String,
    pub rows: Vec<OpRow>,
    pub floor: Vec<OpRow>,
    pub fanout: Option<FanoutReport>,
    /// Disagreements between the store's pages and the peer's.
    pub peer_mismatches: Vec<String>,
}

impl RunReport {
    pub fn row(&self, op: &str) -> Option<&OpRow> {
        self.rows.iter().find(|r| r.op == op)
    }

    /// Failed operations over every row, floor and fan-out included.
    pub fn errors(&self) -> u64 {
        self.rows
            .iter()
            .chain(&self.floor)
            .map(|r| r.stats.errors)
            .sum::<u64>()
            + self.fanout.as_ref().map_or(0, |f| f.from_ack.errors)
    }
}

/// `cores=… cpu="…" load=…`: printed first, so every figure carries its machine.
pub fn machine_line() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .and_then(|l| l.split_once(':'))
        .map_or("unknown", |(_, m)| m.trim())
        .to_owned();
    let cores = std::thread::available_parallelism().map_or(0, usize::from);
    let load = std::fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|| "unknown".into());
    format!("machine: cores={cores} cpu=\"{model}\" loadavg=\"{load}\"")
}

fn q(stats: &OpStats, quantile: f64) -> String {
    if stats.hist.is_empty() {
        "-".into()
    } else {
        fmt_micros(stats.hist.value_at_quantile(quantile))
    }
}

/// Microseconds as a short human figure.
pub fn fmt_micros(us: u64) -> String {
    if us >= 10_000_000 {
        format!("{:.1}s", us as f64 / 1e6)
    } else if us >= 10_000 {
        format!("{:.1}ms", us as f64 / 1e3)
    } else if us >= 1_000 {
        format!("{:.2}ms", us as f64 / 1e3)
    } else {
        format!("{us}us")
    }
}

fn ratio(a: Option<u64>, b: Option<u64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if b > 0 => format!("{:.2}", a as f64 / b as f64),
        _ => "-".into(),
    }
}

const HEADER: &str = "op                                         count    errors      ops/s    items/s      p50      p90      p99    p99.9      max  p50/floor  p50/peer";

fn row_line(out: &mut String, r: &OpRow) {
    let s = &r.stats;
    let _ = writeln!(
        out,
        "{:<40} {:>7} {:>9} {:>10.1} {:>10.0} {:>8} {:>8} {:>8} {:>8} {:>8} {:>10} {:>9}",
        r.op,
        s.ok(),
        s.errors,
        r.ops_per_sec(),
        r.items_per_sec(),
        q(s, 0.5),
        q(s, 0.9),
        q(s, 0.99),
        q(s, 0.999),
        if s.hist.is_empty() {
            "-".into()
        } else {
            fmt_micros(s.hist.max())
        },
        ratio(s.p50(), r.floor_p50),
        ratio(s.p50(), r.peer_p50),
    );
}

impl RunReport {
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "{HEADER}");
        for r in &self.floor {
            row_line(&mut out, r);
        }
        for r in &self.rows {
            row_line(&mut out, r);
        }
        if let Some(f) = &self.fanout {
            let _ = writeln!(
                out,
                "fan-out: {} subscribers, {} changes per overwrite, {} round(s), lost {}",
                f.subscribers, f.changes_per_round, f.rounds, f.lost
            );
            for (name, s) in [
                ("  each subscriber done, from ack", &f.from_ack),
                ("  each subscriber done, from start", &f.from_start),
                ("  last subscriber done, from ack", &f.last_from_ack),
                ("  last subscriber done, from start", &f.last_from_start),
            ] {
                let _ = writeln!(
                    out,
                    "{name:<36} p50 {:>8}  p90 {:>8}  p99 {:>8}  max {:>8}",
                    q(s, 0.5),
                    q(s, 0.9),
                    q(s, 0.99),
                    if s.hist.is_empty() {
                        "-".into()
                    } else {
                        fmt_micros(s.hist.max())
                    }
                );
            }
        }
        for m in &self.peer_mismatches {
            let _ = writeln!(out, "PEER MISMATCH: {m}");
        }
        for r in self.rows.iter().chain(&self.floor) {
            if let Some(e) = &r.stats.first_error {
                let _ = writeln!(out, "first error of {}: {e}", r.op);
            }
        }
        if let Some(e) = self
            .fanout
            .as_ref()
            .and_then(|f| f.from_ack.first_error.as_ref())
        {
            let _ = writeln!(out, "first error of fan-out: {e}");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recorder_merges_and_ratios_print() {
        let mut a = Recorder::default();
        a.record_micros::<String>("get", 100, Ok(1));
        a.record_micros("get", 0, Err("boom"));
        let mut b = Recorder::default();
        b.record_micros::<String>("get", 300, Ok(1));
        a.merge(&b);
        let s = a.get("get").unwrap();
        assert_eq!((s.ok(), s.errors, s.items), (2, 1, 2));
        assert_eq!(s.first_error.as_deref(), Some("boom"));
        let row = OpRow {
            op: "get".into(),
            stats: s.clone(),
            elapsed: Duration::from_secs(1),
            floor_p50: Some(50),
            peer_p50: None,
        };
        let report = RunReport {
            rows: vec![row],
            ..Default::default()
        };
        let text = report.render();
        assert!(text.contains("2.00"), "{text}");
        assert!(text.contains("first error of get: boom"), "{text}");
        assert_eq!(report.errors(), 1);
        assert!(machine_line().starts_with("machine: cores="));
    }
}
