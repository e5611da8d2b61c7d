//! The Solana account decoders and the `getProgramAccounts` response parser
//! never panic: arbitrary bytes, real marginfi bank fixtures and built
//! Lavarage accounts mutated, and whatever decodes is fed on to the offer
//! builders (odd floats and counters must become skips, not panics).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use offer_fuzz::{config, edge_f64, mutated};
use proptest::prelude::*;
use solana_sources::lavarage::{self, Lookups, MintInfo, NodeWalletAccount, Version, build};
use solana_sources::marginfi;
use solana_sources::pubkey::Pubkey;
use solana_sources::rpc::parse_program_accounts_response;
use std::sync::OnceLock;

const FIXTURES: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../solana/tests/fixtures/marginfi"
);

/// The real marginfi fixtures: (response item as JSON, account bytes).
fn fixtures() -> &'static [(serde_json::Value, Vec<u8>)] {
    static F: OnceLock<Vec<(serde_json::Value, Vec<u8>)>> = OnceLock::new();
    F.get_or_init(|| {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(FIXTURES).expect("fixtures dir") {
            let path = entry.expect("dir entry").path();
            if path.extension().is_none_or(|e| e != "json") {
                continue;
            }
            let v: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(&path).expect("read")).expect("json");
            let data = STANDARD
                .decode(v["account"]["data"][0].as_str().expect("base64 data"))
                .expect("base64");
            out.push((v, data));
        }
        assert!(!out.is_empty(), "no marginfi fixtures under {FIXTURES}");
        out
    })
}

fn key() -> impl Strategy<Value = Pubkey> {
    prop_oneof![
        Just(Pubkey([0; 32])),
        Just(marginfi::MAIN_GROUP),
        any::<[u8; 32]>().prop_map(Pubkey),
    ]
}

fn version() -> impl Strategy<Value = Version> {
    prop_oneof![Just(Version::V1), Just(Version::V2)]
}

/// A built Lavarage pool and node wallet with arbitrary field values.
fn lavarage_accounts() -> impl Strategy<Value = (Version, Vec<u8>, Vec<u8>)> {
    (
        version(),
        0usize..400,
        any::<(u8, u64, u64, u16, u64, u64, u16)>(),
        (key(), key(), key(), prop::option::of(key())),
    )
        .prop_map(|(v, len, n, (coll, nw, op, mint))| {
            let pool = build::pool(v, len, n.0, &coll, &nw, n.1, n.2, mint.as_ref(), n.3);
            let wallet = build::node_wallet(v, n.4, n.5, n.6, &op, mint.as_ref());
            (v, pool, wallet)
        })
}

/// Decodes a pool and node wallet and builds the pool's offer from them.
fn lavarage_pipeline(v: Version, pool: &[u8], wallet: &[u8], decimals: u8, ltv: f64) {
    let pool = lavarage::decode_pool(v, pool);
    let wallet = lavarage::decode_node_wallet(v, wallet);
    let (Ok(pool), Ok(wallet)) = (pool, wallet) else {
        return;
    };
    let mut lookups = Lookups::default();
    lookups.node_wallets.insert(
        pool.node_wallet,
        NodeWalletAccount {
            wallet,
            lamports: 1_000_000_000,
            data_len: 99,
        },
    );
    let quote = pool.quote_mint();
    lookups.mints.insert(
        quote,
        MintInfo {
            decimals,
            token_program: Pubkey([6; 32]),
        },
    );
    let _ = lavarage::build_offers(&[(Pubkey([9; 32]), pool)], &lookups, ltv);
}

/// Decodes banks (and a group) and builds every pair's offer.
fn marginfi_pipeline(banks: &[Vec<u8>], group: Option<&[u8]>) {
    let decoded: Vec<_> = banks
        .iter()
        .enumerate()
        .filter_map(|(i, b)| {
            marginfi::decode_bank(b)
                .ok()
                .map(|d| (Pubkey([i as u8; 32]), d))
        })
        .collect();
    let group = group.and_then(|g| marginfi::decode_group(g).ok());
    for (_, b) in &decoded {
        let _ = (b.utilization(), b.base_rate(), b.borrow_apr(group.as_ref()));
        let _ = b.available_to_borrow();
        let _ = marginfi::build_offers_in_group(&b.group, group.as_ref(), &decoded);
    }
    let _ = marginfi::build_offers(group.as_ref(), &decoded);
}

fn fixture_index() -> impl Strategy<Value = usize> {
    0..fixtures().len()
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn lavarage_mutated_accounts_never_panic(
        (v, pool, wallet) in lavarage_accounts().prop_flat_map(|(v, p, w)| (Just(v), mutated(p), mutated(w))),
        decimals in any::<u8>(),
        ltv in edge_f64(),
    ) {
        lavarage_pipeline(v, &pool, &wallet, decimals, ltv);
        let _ = lavarage::decode_mint_decimals(&pool);
        let _ = lavarage::decode_token_account(&wallet);
    }

    #[test]
    fn lavarage_built_accounts_build_offers(
        (v, pool, wallet) in lavarage_accounts(),
        decimals in any::<u8>(),
        ltv in edge_f64(),
    ) {
        lavarage_pipeline(v, &pool, &wallet, decimals, ltv);
    }

    #[test]
    fn marginfi_mutated_fixtures_never_panic(
        banks in prop::collection::vec(fixture_index().prop_flat_map(|i| mutated(fixtures()[i].1.clone())), 1..4),
        group in prop::option::of(prop::collection::vec(any::<u8>(), 0..2100)),
    ) {
        marginfi_pipeline(&banks, group.as_deref());
    }

    /// Fixture banks with runs of bytes overwritten by arbitrary values:
    /// floats (I80F48) and counters take any value while the discriminator
    /// and layout stay intact, so decoding succeeds and the builders see them.
    #[test]
    fn marginfi_fixture_fields_overwritten(
        picks in prop::collection::vec((fixture_index(), prop::collection::vec((8usize..2000, any::<[u8; 16]>()), 0..12)), 2..4),
    ) {
        let banks: Vec<Vec<u8>> = picks.into_iter().map(|(i, edits)| {
            let mut b = fixtures()[i].1.clone();
            for (at, bytes) in edits {
                if at + 16 <= b.len() {
                    b[at..at + 16].copy_from_slice(&bytes);
                }
            }
            b
        }).collect();
        marginfi_pipeline(&banks, None);
    }

    #[test]
    fn rpc_response_arbitrary_bytes_never_panic(body in prop::collection::vec(any::<u8>(), 0..600)) {
        let _ = parse_program_accounts_response(&body);
    }

    /// A real response body (fixtures as `getProgramAccounts` results, or an
    /// error envelope), mutated byte-wise.
    #[test]
    fn rpc_response_mutated_never_panics(
        body in (fixture_index(), any::<bool>(), any::<i64>()).prop_flat_map(|(i, err, code)| {
            let body = if err {
                serde_json::json!({"jsonrpc": "2.0", "id": 1,
                    "error": {"code": code, "message": "boom", "data": null}})
            } else {
                serde_json::json!({"jsonrpc": "2.0", "id": 1, "result": [fixtures()[i].0.clone()]})
            };
            mutated(body.to_string().into_bytes())
        })
    ) {
        if let Ok(accounts) = parse_program_accounts_response(&body) {
            for a in accounts {
                let _ = marginfi::decode_bank(&a.account.data);
            }
        }
    }
}
