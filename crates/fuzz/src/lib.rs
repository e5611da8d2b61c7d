//! Shared pieces of the fuzz targets in `tests/`.
//!
//! cargo-fuzz needs a nightly toolchain, and CI has only stable, so the
//! targets are proptest properties: `cargo test -p offer-fuzz` runs a short
//! bounded pass (`DEFAULT_CASES` per target); `FUZZ_CASES=1000000` turns the
//! same targets into a long local fuzzing run.

use proptest::prelude::*;
use proptest::test_runner::Config;

/// Cases per target in CI: a few seconds each on a slow machine.
pub const DEFAULT_CASES: u32 = 3000;

/// Cases per target: `FUZZ_CASES`, else [`DEFAULT_CASES`].
pub fn cases() -> u32 {
    std::env::var("FUZZ_CASES")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or(DEFAULT_CASES)
}

/// The proptest configuration of every target. Shrinking is capped so a
/// failure still reports quickly, and no regression files are written into
/// the source tree (a failing input is printed instead).
pub fn config() -> Config {
    Config {
        cases: cases(),
        max_shrink_iters: 2000,
        failure_persistence: None,
        ..Config::default()
    }
}

/// Strings that hit the edges of the parsers: empty, the accepted enum
/// spellings in odd cases, whitespace, control and multi-byte characters,
/// and long runs, besides arbitrary text.
pub fn edge_string() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => Just(String::new()),
        2 => prop::sample::select(vec![
            "V1", "BP", "LV", "v1", "bp", "lv", "fixed", "floating", "FIXED", "asc", "desc",
            "ASC", "created_timestamp", "updated_timestamp", "interest_rate",
            "available_borrow_amount", "max_open_ltv", "liquidation_ltv", "id", " ", "\0",
            "\u{202e}", "é", "💥", "a\nb", "../../etc", "%00", "null",
        ])
        .prop_map(str::to_owned),
        1 => "[a-z0-9:_-]{1,40}",
        1 => prop::collection::vec(any::<char>(), 0..64).prop_map(|c| c.into_iter().collect()),
        1 => (1usize..5000).prop_map(|n| "x".repeat(n)),
    ]
}

/// Doubles with every IEEE special as well as ordinary values.
pub fn edge_f64() -> impl Strategy<Value = f64> {
    prop_oneof![
        2 => prop::sample::select(vec![
            0.0, -0.0, 1.0, -1.0, 0.5, 0.999_999, 1.000_001, f64::NAN, -f64::NAN,
            f64::INFINITY, f64::NEG_INFINITY, f64::MIN_POSITIVE, f64::MAX, f64::MIN,
            f64::EPSILON, 5e-324, 1e300,
        ]),
        2 => -2.0f64..2.0,
        1 => any::<f64>(),
    ]
}

/// Integers at the edges of `i32` and ordinary ones.
pub fn edge_i32() -> impl Strategy<Value = i32> {
    prop_oneof![
        prop::sample::select(vec![0, 1, -1, 1000, 1001, i32::MAX, i32::MIN]),
        any::<i32>(),
    ]
}

/// Byte strings: arbitrary, or `base` mutated (bytes flipped, truncated,
/// extended), which reaches deeper into a decoder than random bytes do.
pub fn mutated(base: Vec<u8>) -> impl Strategy<Value = Vec<u8>> {
    let len = base.len().max(1);
    let edits = prop::collection::vec((0..len, any::<u8>(), 0u8..4), 0..16);
    (edits, 0..=len + 64).prop_map(move |(edits, cut)| {
        let mut b = base.clone();
        for (at, byte, kind) in edits {
            match kind {
                0 | 1 if at < b.len() => b[at] = byte,
                2 if at <= b.len() => b.insert(at, byte),
                3 if at < b.len() => {
                    b.remove(at);
                }
                _ => {}
            }
        }
        b.truncate(cut);
        b
    })
}
