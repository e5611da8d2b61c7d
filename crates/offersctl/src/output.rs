//! Rendering for people (aligned tables) and for programs (JSON lines).

use offer_domain::json::{format_rfc3339, offer_to_json};
use offer_domain::time::NANOS_PER_SEC;
use offer_domain::{MarginOffer, OverwriteOutcome, Stats, Timestamp};
use std::fmt::Write as _;

const HEADERS: [&str; 10] = [
    "ID",
    "TYPE",
    "COLLATERAL",
    "BORROW",
    "AVAILABLE",
    "OPEN/LIQ LTV",
    "RATE %",
    "MODEL",
    "SOURCE",
    "UPDATED",
];
/// Numbers read best right-aligned.
const RIGHT: [bool; 10] = [
    false, false, false, false, true, true, true, false, false, false,
];

/// One line of JSON per offer.
pub fn offer_line(o: &MarginOffer) -> String {
    offer_to_json(o).to_string()
}

/// An aligned table with a header row; empty input gives the header only.
pub fn offers_table(offers: &[MarginOffer]) -> String {
    let rows: Vec<[String; 10]> = offers.iter().map(row).collect();
    let mut widths = HEADERS.map(str::len);
    for r in &rows {
        for (w, cell) in widths.iter_mut().zip(r) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let headers = HEADERS.map(str::to_owned);
    for r in std::iter::once(&headers).chain(&rows) {
        let mut line = String::new();
        for (i, cell) in r.iter().enumerate() {
            let pad = widths[i].saturating_sub(cell.chars().count());
            if i > 0 {
                line.push_str("  ");
            }
            if RIGHT[i] {
                line.push_str(&" ".repeat(pad));
                line.push_str(cell);
            } else {
                line.push_str(cell);
                line.push_str(&" ".repeat(pad));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

fn row(o: &MarginOffer) -> [String; 10] {
    [
        o.id.clone(),
        o.offer_type.to_string(),
        o.collateral_token.clone(),
        o.borrow_token.clone(),
        amount(o.available_borrow_amount),
        format!("{:.2}/{:.2}", o.max_open_ltv, o.liquidation_ltv),
        format!("{:.2}", o.interest_rate * 100.0),
        o.interest_model.to_string(),
        o.source.clone().unwrap_or_else(|| "-".into()),
        o.updated_timestamp.map_or_else(|| "-".into(), short_time),
    ]
}

/// Two decimals with thousands separators: `1,234,567.89`.
fn amount(v: f64) -> String {
    let s = format!("{v:.2}");
    let (int, frac) = s.split_once('.').unwrap_or((&s, ""));
    let (sign, digits) = int.strip_prefix('-').map_or(("", int), |d| ("-", d));
    // Non-finite values ("inf", "NaN") are printed as they are.
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return s;
    }
    let mut grouped = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            grouped.push(',');
        }
        grouped.push(c);
    }
    format!("{sign}{grouped}.{frac}")
}

/// Every field of one offer, one per line.
pub fn offer_details(o: &MarginOffer) -> String {
    let mut out = String::new();
    if let serde_json::Value::Object(fields) = offer_to_json(o) {
        let width = fields.keys().map(String::len).max().unwrap_or(0);
        for (k, v) in fields {
            let v = match v {
                serde_json::Value::String(s) => s,
                other => other.to_string(),
            };
            let _ = writeln!(out, "{k:width$}  {v}");
        }
    }
    out
}

pub fn stats_json(s: &Stats) -> String {
    serde_json::json!({
        "total": s.total,
        "by_offer_type": s.by_offer_type,
        "liquidity_by_borrow_token": s.liquidity_by_borrow_token,
        "revision": s.revision,
    })
    .to_string()
}

pub fn stats_text(s: &Stats) -> String {
    let mut out = format!("offers: {}  (revision {})\n", s.total, s.revision);
    if !s.by_offer_type.is_empty() {
        out.push_str("\nby offer type:\n");
        let w = s.by_offer_type.keys().map(String::len).max().unwrap_or(0);
        for (t, n) in &s.by_offer_type {
            let _ = writeln!(out, "  {t:w$}  {n}");
        }
    }
    if !s.liquidity_by_borrow_token.is_empty() {
        out.push_str("\nliquidity by borrow token:\n");
        let w = s
            .liquidity_by_borrow_token
            .keys()
            .map(String::len)
            .max()
            .unwrap_or(0);
        let amounts: Vec<String> = s
            .liquidity_by_borrow_token
            .values()
            .map(|v| amount(*v))
            .collect();
        let aw = amounts.iter().map(String::len).max().unwrap_or(0);
        for (t, a) in s.liquidity_by_borrow_token.keys().zip(&amounts) {
            let _ = writeln!(out, "  {t:w$}  {a:>aw$}");
        }
    }
    out
}

pub fn overwrite_json(o: &OverwriteOutcome, source: &str, dry_run: bool) -> String {
    serde_json::json!({
        "source": source,
        "dry_run": dry_run,
        "created_ids": o.created_ids,
        "updated_ids": o.updated_ids,
        "deleted_ids": o.deleted_ids,
        "unchanged_count": o.unchanged_count,
        "revision": o.revision,
    })
    .to_string()
}

/// The diff of an overwrite: counts first, then the ids of each kind.
pub fn overwrite_text(o: &OverwriteOutcome, source: &str, dry_run: bool) -> String {
    let mut out = if dry_run {
        format!(
            "dry run for source {source:?}: would create {}, update {}, delete {}; {} unchanged (nothing written)\n",
            o.created_ids.len(),
            o.updated_ids.len(),
            o.deleted_ids.len(),
            o.unchanged_count
        )
    } else {
        format!(
            "overwrote source {source:?}: created {}, updated {}, deleted {}; {} unchanged (revision {})\n",
            o.created_ids.len(),
            o.updated_ids.len(),
            o.deleted_ids.len(),
            o.unchanged_count,
            o.revision
        )
    };
    for (label, ids) in [
        ("created", &o.created_ids),
        ("updated", &o.updated_ids),
        ("deleted", &o.deleted_ids),
    ] {
        if !ids.is_empty() {
            let _ = writeln!(out, "{label}: {}", ids.join(" "));
        }
    }
    out
}

/// RFC 3339 to the second: enough for a table column.
fn short_time(t: Timestamp) -> String {
    let n = t.as_nanos();
    format_rfc3339(Timestamp(n - n.rem_euclid(NANOS_PER_SEC)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amounts_group_thousands() {
        assert_eq!(amount(0.0), "0.00");
        assert_eq!(amount(999.5), "999.50");
        assert_eq!(amount(1234567.891), "1,234,567.89");
        assert_eq!(amount(-1000.0), "-1,000.00");
        assert_eq!(amount(f64::INFINITY), "inf");
    }

    #[test]
    fn table_columns_align() {
        let mut a = MarginOffer::example("a");
        a.updated_timestamp = Some(Timestamp(1_700_000_000_123_000_000));
        let mut b = MarginOffer::example("a-much-longer-id");
        b.available_borrow_amount = 1_000_000.0;
        b.source = Some("manual".into());
        let t = offers_table(&[a, b]);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(lines[0].starts_with("ID                TYPE"), "{t}");
        assert!(lines[1].contains("2023-11-14T22:13:20Z"), "{t}");
        assert!(
            lines[1].contains("    1,000.00     0.75/0.85    5.00  floating"),
            "{t}"
        );
        // Right-aligned amounts end in the same column.
        assert_eq!(lines[1].find(".00 "), lines[2].find(".00 "), "{t}");
        assert!(lines[2].contains("1,000,000.00"), "{t}");
    }
}
