//! Parsing a 50 000-account `getProgramAccounts` response (typed serde from
//! the bytes, base64 decoded per account) next to plain base64 decoding of
//! the same account data: the gap is the JSON overhead.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use solana_sources::rpc::parse_program_accounts_response;
use std::hint::black_box;

const ACCOUNTS: usize = 50_000;
const DATA_LEN: usize = 163; // the largest Lavarage V2 Pool

fn response() -> (Vec<u8>, Vec<String>) {
    let mut body = String::from(r#"{"jsonrpc":"2.0","id":1,"result":["#);
    let mut texts = Vec::with_capacity(ACCOUNTS);
    for i in 0..ACCOUNTS {
        let mut key = [0u8; 32];
        key[..8].copy_from_slice(&(i as u64).to_le_bytes());
        let data: Vec<u8> = (0..DATA_LEN).map(|j| (i * 31 + j) as u8).collect();
        let text = BASE64.encode(&data);
        if i > 0 {
            body.push(',');
        }
        body.push_str(&format!(
            r#"{{"pubkey":"{}","account":{{"data":["{}","base64"],"executable":false,"lamports":{},"owner":"1avaAUcjccXCjSZzwUvB2gS3DzkkieV2Mw8CjdN65uu","rentEpoch":18446744073709551615,"space":{}}}}}"#,
            bs58::encode(key).into_string(),
            text,
            2_000_000 + i,
            DATA_LEN
        ));
        texts.push(text);
    }
    body.push_str("]}");
    (body.into_bytes(), texts)
}

fn bench(c: &mut Criterion) {
    let (body, texts) = response();
    let mut g = c.benchmark_group("get_program_accounts_50k");
    g.throughput(Throughput::Bytes(body.len() as u64));
    g.sample_size(10);
    g.bench_function("parse_response", |b| {
        b.iter(|| {
            let v = parse_program_accounts_response(black_box(&body));
            black_box(v.map(|v| v.len()).unwrap_or(0))
        })
    });
    g.bench_function("base64_only", |b| {
        b.iter(|| {
            let mut n = 0;
            for t in &texts {
                n += BASE64
                    .decode(black_box(t.as_bytes()))
                    .map(|d| d.len())
                    .unwrap_or(0);
            }
            black_box(n)
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
