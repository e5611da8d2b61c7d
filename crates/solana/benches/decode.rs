//! A 50 000-pool `getProgramAccounts` response (Lavarage V2, 163-byte pools,
//! the shape of a real response) decoded three ways, next to the floor:
//!
//! - `base64_only` (the floor): plain base64 decoding of the response's
//!   account data strings, each a slice of the body, into one reused buffer.
//!   No JSON, no keys, no allocation: what any decoder must at least do.
//! - `decode_pools`: the backfiller's path, `parse_program_accounts_response_with`
//!   visiting each account and decoding its Pool in place into a
//!   `Vec<(Pubkey, Pool)>`.
//! - `parse_owned`: `parse_program_accounts_response`, owned `KeyedAccount`s
//!   (one data copy per account), for callers that keep raw accounts.
//! - `scan_only`, `base58_keys` and `base64_simd`, to see where the time
//!   goes: the parse with a visitor that does nothing, base58 decoding of
//!   the accounts' addresses alone (one per account is part of any parse),
//!   and the floor again with the base64 crate's SIMD engine (AVX2 where
//!   the CPU has it), which the real path uses: it shows what the rest of
//!   the path costs over its own base64 work.
//!
//! Variants run interleaved, round after round, so load from other processes
//! hits them alike; each figure is the median of the rounds, with its ratio
//! to the floor's median. The headline `ratio` is the median over rounds of
//! `decode_pools / base64_only` within each round, which stays put when the
//! machine flips between a fast and a slow state mid-run (the medians of
//! two variants can then come from different states). Target (issue #7):
//! `decode_pools / base64_only <= 2.0`.
//!
//! Run: `cargo bench -p solana-sources --bench decode` (rounds: env
//! `BENCH_ROUNDS`, default 31).

use std::hint::black_box;
use std::ops::Range;
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use solana_sources::lavarage::{self, Version};
use solana_sources::pubkey::Pubkey;
use solana_sources::rpc::{parse_program_accounts_response, parse_program_accounts_response_with};

const ACCOUNTS: usize = 50_000;
const POOL_LEN: usize = 163; // the largest Lavarage V2 Pool

/// The response body, where each data string lies in it (for the floor),
/// and each account's address text.
fn response() -> (Vec<u8>, Vec<Range<usize>>, Vec<String>) {
    let mut body = String::from(r#"{"jsonrpc":"2.0","id":1,"result":["#);
    let mut texts = Vec::with_capacity(ACCOUNTS);
    let mut addresses = Vec::with_capacity(ACCOUNTS);
    let key = |tag: u8, i: usize| {
        let mut k = [tag; 32];
        k[..8].copy_from_slice(&(i as u64).to_le_bytes());
        Pubkey(k)
    };
    for i in 0..ACCOUNTS {
        let data = lavarage::build::pool(
            Version::V2,
            POOL_LEN,
            (i % 50) as u8,
            &key(0xc0, i % 300),
            &key(0x4e, i),
            1_000_000_000 + i as u64,
            i as u64,
            Some(&key(0x55, i % 7)),
            7_000,
        );
        if i > 0 {
            body.push(',');
        }
        addresses.push(key(0xaa, i).to_string());
        body.push_str(&format!(
            r#"{{"pubkey":"{}","account":{{"data":[""#,
            addresses[i]
        ));
        let start = body.len();
        body.push_str(&BASE64.encode(&data));
        texts.push(start..body.len());
        body.push_str(&format!(
            r#"","base64"],"executable":false,"lamports":{},"owner":"{}","rentEpoch":18446744073709551615,"space":{}}}}}"#,
            2_000_000 + i,
            lavarage::V2_PROGRAM_ID,
            POOL_LEN
        ));
    }
    body.push_str("]}");
    (body.into_bytes(), texts, addresses)
}

fn base64_only(body: &[u8], texts: &[Range<usize>], buf: &mut [u8]) -> usize {
    let mut total = 0;
    for t in texts {
        total += BASE64.decode_slice(&body[t.clone()], buf).unwrap_or(0);
    }
    total
}

fn base64_simd(
    body: &[u8],
    texts: &[Range<usize>],
    buf: &mut [u8],
    engine: &base64::engine::Simd,
) -> usize {
    let mut total = 0;
    for t in texts {
        total += engine.decode_slice(&body[t.clone()], buf).unwrap_or(0);
    }
    total
}

fn decode_pools(body: &[u8]) -> usize {
    let mut pools = Vec::new();
    let visited = parse_program_accounts_response_with(body, |key, account| {
        if let Ok(pool) = lavarage::decode_pool(Version::V2, account.data) {
            pools.push((*key, pool));
        }
    });
    assert_eq!(visited, Ok(ACCOUNTS));
    assert_eq!(pools.len(), ACCOUNTS);
    black_box(&pools);
    pools.len()
}

fn parse_owned(body: &[u8]) -> usize {
    let accounts = parse_program_accounts_response(body).map(|a| a.len());
    assert_eq!(accounts, Ok(ACCOUNTS));
    accounts.unwrap_or(0)
}

fn scan_only(body: &[u8]) -> usize {
    parse_program_accounts_response_with(body, |_, account| {
        black_box(account);
    })
    .unwrap_or(0)
}

fn base58_keys(addresses: &[String]) -> usize {
    addresses
        .iter()
        .filter(|a| Pubkey::from_base58(a.as_bytes()).is_ok())
        .count()
}

fn median(samples: &mut [Duration]) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

fn main() {
    let rounds: usize = std::env::var("BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(31)
        .max(1);
    let (body, texts, addresses) = response();
    let mut buf = vec![0u8; POOL_LEN + 3];
    let mut simd_buf = buf.clone();
    let simd = base64::engine::Simd::standard(base64::engine::general_purpose::PAD);
    assert_eq!(
        base64_only(&body, &texts, &mut buf),
        ACCOUNTS * POOL_LEN,
        "the floor decodes every account"
    );
    assert_eq!(
        base64_simd(&body, &texts, &mut simd_buf, &simd),
        ACCOUNTS * POOL_LEN,
        "the SIMD floor decodes every account"
    );

    type Variant<'a> = (&'static str, Box<dyn FnMut() -> usize + 'a>);
    let mut variants: Vec<Variant> = vec![
        (
            "base64_only",
            Box::new(|| base64_only(black_box(&body), &texts, &mut buf)),
        ),
        ("decode_pools", Box::new(|| decode_pools(black_box(&body)))),
        ("parse_owned", Box::new(|| parse_owned(black_box(&body)))),
        ("scan_only", Box::new(|| scan_only(black_box(&body)))),
        (
            "base58_keys",
            Box::new(|| base58_keys(black_box(&addresses))),
        ),
        (
            "base64_simd",
            Box::new(|| base64_simd(black_box(&body), &texts, &mut simd_buf, &simd)),
        ),
    ];
    let mut samples = vec![Vec::with_capacity(rounds); variants.len()];
    // Two untimed rounds warm caches and the allocator.
    for round in 0..rounds + 2 {
        for (i, (_, run)) in variants.iter_mut().enumerate() {
            let start = Instant::now();
            black_box(run());
            if round >= 2 {
                samples[i].push(start.elapsed());
            }
        }
    }
    // Per-round ratios, taken before `median` sorts the samples: this
    // machine switches between a fast and a slow state every second or so,
    // and a variant's median can land in either, while the two runs of one
    // round (a few ms apart) nearly always share a state.
    let per_round = |num: usize, den: usize| {
        let mut r: Vec<f64> = samples[num]
            .iter()
            .zip(&samples[den])
            .map(|(n, d)| n.as_secs_f64() / d.as_secs_f64())
            .collect();
        r.sort_by(f64::total_cmp);
        r[r.len() / 2]
    };
    let (round_ratio, round_ratio_simd) = (per_round(1, 0), per_round(1, 5));
    let medians: Vec<Duration> = samples.iter_mut().map(|s| median(s)).collect();
    let mib = body.len() as f64 / (1024.0 * 1024.0);
    println!(
        "getProgramAccounts response: {ACCOUNTS} accounts of {POOL_LEN} bytes, {mib:.1} MiB body, median of {rounds} interleaved rounds"
    );
    for ((name, _), m) in variants.iter().zip(&medians) {
        println!(
            "  {name:<14} {:>9.3} ms  {:>8.1} MiB/s of body  ratio to base64_only = {:.2}",
            m.as_secs_f64() * 1e3,
            mib / m.as_secs_f64(),
            m.as_secs_f64() / medians[0].as_secs_f64()
        );
    }
    println!(
        "ratio of medians = {:.2}; over the path's own SIMD base64: {:.2}",
        medians[1].as_secs_f64() / medians[0].as_secs_f64(),
        medians[1].as_secs_f64() / medians[5].as_secs_f64()
    );
    println!(
        "ratio = {round_ratio:.2} (decode_pools / base64_only, median of per-round ratios, target <= 2.0); over the path's own SIMD base64: {round_ratio_simd:.2}"
    );
}
