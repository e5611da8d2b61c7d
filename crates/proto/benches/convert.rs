//! A realistic 10 000-offer `BulkCreateOrUpdateMarginOffersRequest` (base58
//! ids and mints, a few hundred mints, 3 offer types, 10 sources, optional
//! fields mostly set), decoded two ways:
//!
//! - `prost_decode` (the floor): plain `prost::Message::decode` of the bytes.
//! - `decode_convert_validate`: what the store runs on a bulk request:
//!   decode, [`bulk_offers_from_pb`] to domain offers, `validate_offer` on
//!   each (the store's planner validates every item).
//!
//! Each variant's output is dropped inside its timing, as a server drops the
//! request. Variants run interleaved, round after round; each figure is the
//! median of the rounds, and ratios to the floor are printed. Target (issue
//! #7): `decode_convert_validate / prost_decode <= 1.5`.
//!
//! Run: `cargo bench -p offer-proto --bench convert` (rounds: env
//! `BENCH_ROUNDS`, default 51).

use std::hint::black_box;
use std::time::{Duration, Instant};

use offer_domain::validate::validate_offer;
use offer_domain::{FieldError, MarginOffer};
use offer_proto::convert::bulk_offers_from_pb;
use offer_proto::pb;
use prost::Message;

const OFFERS: usize = 10_000;

/// A base58-looking 44-character key derived from `n`.
fn key(tag: u8, n: usize) -> String {
    const ALPHABET: &[u8] = b"123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz";
    let mut x = (n as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ u64::from(tag);
    (0..44)
        .map(|_| {
            x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            char::from(ALPHABET[(x >> 33) as usize % ALPHABET.len()])
        })
        .collect()
}

fn request() -> Vec<u8> {
    let types = ["V1", "BP", "LV"];
    let models = ["fixed", "floating"];
    let offers = (0..OFFERS)
        .map(|i| {
            // A skewed pick of a few hundred mints: low numbers most often.
            let mint = |salt: usize| key(1, (i * 7 + salt) % 300 * ((i + salt) % 3) / 2);
            pb::MarginOffer {
                id: key(0, i),
                offer_type: types[i % 3].into(),
                collateral_token: mint(0),
                borrow_token: mint(11),
                available_borrow_amount: 1_000.0 + i as f64 * 0.37,
                max_open_ltv: 0.5 + (i % 20) as f64 / 100.0,
                liquidation_ltv: 0.8 + (i % 10) as f64 / 100.0,
                interest_rate: (i % 40) as f64 / 400.0,
                interest_model: models[i % 2].into(),
                term_days: (i % 4 == 0).then_some(30),
                liquidity_source: format!("source-{}", i % 10),
                lender_address: Some(key(2, i / 3)),
                last_borrowed_timestamp: (i % 5 == 0).then_some(prost_types::Timestamp {
                    seconds: 1_750_000_000 + i as i64,
                    nanos: 0,
                }),
                created_timestamp: None,
                updated_timestamp: None,
                source: Some(format!("lavarage-v{}", 1 + i % 2)),
            }
        })
        .collect();
    pb::BulkCreateOrUpdateMarginOffersRequest {
        offers,
        validate_all: false,
    }
    .encode_to_vec()
}

fn prost_decode(bytes: &[u8]) -> usize {
    pb::BulkCreateOrUpdateMarginOffersRequest::decode(bytes)
        .map(|r| r.offers.len())
        .unwrap_or(0)
}

fn validate_all(offers: Vec<MarginOffer>) -> Result<Vec<MarginOffer>, FieldError> {
    offers.into_iter().map(validate_offer).collect()
}

fn decode_convert_validate(bytes: &[u8]) -> usize {
    let Ok(r) = pb::BulkCreateOrUpdateMarginOffersRequest::decode(bytes) else {
        return 0;
    };
    let Ok(offers) = bulk_offers_from_pb(r.offers, r.validate_all) else {
        return 0;
    };
    validate_all(offers).map(|o| o.len()).unwrap_or(0)
}

fn median(samples: &mut [Duration]) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

fn main() {
    let rounds: usize = std::env::var("BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(51)
        .max(1);
    let bytes = request();
    type Variant = (&'static str, fn(&[u8]) -> usize);
    let variants: [Variant; 2] = [
        ("prost_decode", prost_decode),
        ("decode_convert_validate", decode_convert_validate),
    ];
    for (name, run) in &variants {
        assert_eq!(run(&bytes), OFFERS, "{name} must accept every offer");
    }
    let mut samples = vec![Vec::with_capacity(rounds); variants.len()];
    // Two untimed rounds warm caches and the allocator.
    for round in 0..rounds + 2 {
        for (i, (_, run)) in variants.iter().enumerate() {
            let start = Instant::now();
            black_box(run(black_box(&bytes)));
            if round >= 2 {
                samples[i].push(start.elapsed());
            }
        }
    }
    let medians: Vec<Duration> = samples.iter_mut().map(|s| median(s)).collect();
    println!(
        "BulkCreateOrUpdateMarginOffersRequest: {OFFERS} offers, {} KiB, median of {rounds} interleaved rounds",
        bytes.len() / 1024
    );
    for ((name, _), m) in variants.iter().zip(&medians) {
        println!(
            "  {name:<24} {:>8.3} ms  {:>6.0} ns/offer  ratio to prost_decode = {:.2}",
            m.as_secs_f64() * 1e3,
            m.as_secs_f64() * 1e9 / OFFERS as f64,
            m.as_secs_f64() / medians[0].as_secs_f64()
        );
    }
    println!(
        "ratio = {:.2} (decode_convert_validate / prost_decode, target <= 1.5)",
        medians[1].as_secs_f64() / medians[0].as_secs_f64()
    );
}
