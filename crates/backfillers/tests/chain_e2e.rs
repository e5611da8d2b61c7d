//! End to end with real processes on the chain source: a local Solana
//! JSON-RPC server (`solana_sources::testing::TestRpc`) holding the real
//! marginfi fixture accounts and Lavarage accounts built from the layouts,
//! the real `store` on SQLite, and `backfillers --run-once --source chain`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use offer_domain::{ChangeType, InterestModel, ListQuery, MarginOffer, OfferFilter, OfferType};
use offer_store::MarginOfferStore;
use solana_sources::lavarage::{self, Version, build};
use solana_sources::marginfi;
use solana_sources::pubkey::{
    Pubkey, TOKEN_2022_PROGRAM_ID, TOKEN_PROGRAM_ID, WRAPPED_SOL_MINT, associated_token_address,
};
use solana_sources::testing::{Fault, TestRpc, load_cli_account};
use std::path::{Path, PathBuf};
use store_client::GrpcStore;

fn key(b: u8) -> Pubkey {
    Pubkey([b; 32])
}

#[track_caller]
fn close(got: f64, want: f64, what: &str) {
    let ok = if want == 0.0 {
        got == 0.0
    } else {
        ((got - want) / want).abs() <= 1e-9
    };
    assert!(ok, "{what}: got {got:e}, want {want:e}");
}

// ---------------------------------------------------------------- Lavarage

const POOL_A: u8 = 0xa1; // V1, 115 bytes (no open_ltv field)
const POOL_B: u8 = 0xa2; // V1, 131 bytes, open_ltv 6500 bps
const POOL_F: u8 = 0xa6; // V1, 131 bytes, open_ltv 0 → the default
const POOL_D: u8 = 0xb4; // V2, 147 bytes, USDC under the Token program
const POOL_E: u8 = 0xb5; // V2, 163 bytes, Token-2022 mint, open_ltv 7000
const NW1: u8 = 0xc1; // V1 node wallet: free funds in lamports
const NW2: u8 = 0xc2; // V2 node wallets: free funds in their ATA
const NW3: u8 = 0xc3;
const OP1: u8 = 0xd1;
const OP2: u8 = 0xd2;
const OP3: u8 = 0xd3;
const USDC: u8 = 0xe1;
const T22: u8 = 0xe2;

/// The same accounts as backfill's chain test (crates/backfill/tests/chain.rs).
fn lavarage_accounts(rpc: &TestRpc) {
    let (v1, v2) = (lavarage::V1_PROGRAM_ID, lavarage::V2_PROGRAM_ID);
    // 66-byte V1 node wallet: rent-exempt minimum (128 + 66) × 6960 =
    // 1_350_240 lamports, so free funds are exactly 10 SOL.
    rpc.put(
        key(NW1),
        v1,
        10_001_350_240,
        build::node_wallet(Version::V1, 0, 0, 90, &key(OP1), None),
    );
    #[allow(clippy::too_many_arguments)]
    fn pool(
        v: Version,
        len: usize,
        rate: u8,
        coll: u8,
        nw: u8,
        max: u64,
        cur: u64,
        qt: Option<&Pubkey>,
        bps: u16,
    ) -> Vec<u8> {
        build::pool(v, len, rate, &key(coll), &key(nw), max, cur, qt, bps)
    }
    let put = |k: u8, owner: Pubkey, data: Vec<u8>| rpc.put(key(k), owner, 1, data);
    put(
        POOL_A,
        v1,
        pool(
            Version::V1,
            115,
            69,
            0x11,
            NW1,
            50_000_000_000,
            20_000_000_000,
            None,
            0,
        ),
    );
    put(
        POOL_B,
        v1,
        pool(
            Version::V1,
            131,
            5,
            0x12,
            NW1,
            3_000_000_000,
            500_000_000,
            None,
            6_500,
        ),
    );
    put(
        POOL_F,
        v1,
        pool(
            Version::V1,
            131,
            10,
            0x16,
            NW1,
            1_000_000_000,
            2_000_000_000,
            None,
            0,
        ),
    );

    rpc.put(key(USDC), TOKEN_PROGRAM_ID, 1, build::mint(6));
    rpc.put(key(T22), TOKEN_2022_PROGRAM_ID, 1, build::mint(9));
    put(
        NW2,
        v2,
        build::node_wallet(Version::V2, 0, 0, 85, &key(OP2), Some(&key(USDC))),
    );
    put(
        NW3,
        v2,
        build::node_wallet(Version::V2, 0, 0, 9_250, &key(OP3), Some(&key(T22))),
    );
    let ata2 = associated_token_address(&key(NW2), &key(USDC), &TOKEN_PROGRAM_ID);
    rpc.put(
        ata2,
        TOKEN_PROGRAM_ID,
        1,
        build::token_account(&key(USDC), &key(NW2), 400_500_000),
    );
    let ata3 = associated_token_address(&key(NW3), &key(T22), &TOKEN_2022_PROGRAM_ID);
    rpc.put(
        ata3,
        TOKEN_2022_PROGRAM_ID,
        1,
        build::token_account(&key(T22), &key(NW3), 5_000_000_000),
    );
    put(
        POOL_D,
        v2,
        pool(
            Version::V2,
            147,
            12,
            0x13,
            NW2,
            1_000_000_000,
            250_000_000,
            Some(&key(USDC)),
            0,
        ),
    );
    put(
        POOL_E,
        v2,
        pool(
            Version::V2,
            163,
            30,
            0x14,
            NW3,
            2_000_000_000,
            1_000_000_000,
            Some(&key(T22)),
            7_000,
        ),
    );
}

/// (pool, source, collateral, borrow, available, open LTV, liquidation
/// LTV, rate, operator), computed by hand from solana-sources.md:
/// available = min(max − current borrowed, free funds) / 10^decimals,
/// rate = interest_rate % / 100, liquidation = node wallet ltv (V1 whole
/// percent, V2 percent or bps), open = open_ltv bps / 10^4 or 0.75.
type LavarageRow = (u8, &'static str, u8, Pubkey, f64, f64, f64, f64, u8);

fn lavarage_expected() -> Vec<LavarageRow> {
    let sol = WRAPPED_SOL_MINT;
    vec![
        // A: room 50 − 20 = 30 SOL, free 10 SOL → 10; 69 % → 0.69; no
        // open_ltv in 115 bytes → 0.75; node wallet 90 % → 0.9.
        (POOL_A, "lavarage-v1", 0x11, sol, 10.0, 0.75, 0.9, 0.69, OP1),
        // B: room 3 − 0.5 = 2.5 SOL < 10 → 2.5; 6500 bps → 0.65; 5 % → 0.05.
        (POOL_B, "lavarage-v1", 0x12, sol, 2.5, 0.65, 0.9, 0.05, OP1),
        // F: current 2 SOL above max 1 SOL → 0; open_ltv 0 → 0.75; 0.1.
        (POOL_F, "lavarage-v1", 0x16, sol, 0.0, 0.75, 0.9, 0.1, OP1),
        // D: room (1e9 − 2.5e8)/1e6 = 750 USDC, ATA 400.5 USDC → 400.5;
        // node wallet 85 % → 0.85; 12 % → 0.12.
        (
            POOL_D,
            "lavarage-v2",
            0x13,
            key(USDC),
            400.5,
            0.75,
            0.85,
            0.12,
            OP2,
        ),
        // E: room 1e9 raw, ATA 5e9 raw → 1e9 / 10^9 = 1.0; 7000 bps → 0.7;
        // 9250 bps → 0.925; 30 % → 0.3.
        (
            POOL_E,
            "lavarage-v2",
            0x14,
            key(T22),
            1.0,
            0.7,
            0.925,
            0.3,
            OP3,
        ),
    ]
}

// ----------------------------------------------------------------- marginfi

fn marginfi_fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../solana/tests/fixtures/marginfi")
}

/// All nine fixture accounts (eight banks, the main group), served as owned
/// by the marginfi program (the dumps carry their real owners).
fn marginfi_accounts(rpc: &TestRpc) {
    let mut n = 0;
    for entry in std::fs::read_dir(marginfi_fixtures()).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("json") {
            continue;
        }
        let (k, mut a) = load_cli_account(&path).unwrap();
        a.owner = marginfi::PROGRAM_ID;
        rpc.set_account(k, a);
        n += 1;
    }
    assert_eq!(n, 9, "eight banks and the group");
}

/// Bank address → mint, from `expected_banks()` of
/// crates/solana/tests/marginfi.rs (derived by derive_marginfi.py).
const BANK_MINTS: &[(&str, &str)] = &[
    (
        "8UEiPmgZHXXEDrqLS3oiTxQxTbeYTtPbeMBxAd2XGbpu",
        "2b1kV6DkPAnxd5ixfnxCpjxmKwqjjaYmCZfHsFu24GXo",
    ), // PYUSD (main group)
    (
        "Bohoc1ikHLD7xKJuzTyiTyCwzaL5N7ggJQu75A8mKYM8",
        "J1toso1uCk3RLmjorhTtrVwY9HJ7X8V9yYac6Y7kGCPn",
    ), // JitoSOL
    (
        "H6bfRmfZPoxDDs8eoVBgouTPowwyv7opfBbHd5KUmuUz",
        "METADDFL6wWMWEoKTFJwcThTbUmtarRJZjRpzUvkxhr",
    ), // MET, isolated
    (
        "HmpMfL8942u22htC4EMiWgLX931g3sacXFR6KjuLgKLV",
        "Es9vMFrzaCERmJfrF4H2FYD4KCoNkY11McCe8BenwNYB",
    ), // USDT
    (
        "DeyH7QxWvnbbaVB4zFrf4hoq7Q8z1ZT14co42BGwGtfM",
        "DezXAZ8z7PnrnRJjz3wXBoRgixCa6xjnB7YaB1pPB263",
    ), // BONK
    (
        "4kNXetv8hSv9PzvzPZzEs1CTH6ARRRi2b8h6jk1ad1nP",
        "CLoUDKc4Ane7HeQcPpE3YHnznRxhMimJ4MyaUqyHFzAu",
    ), // CLOUD, isolated
];
/// Fixture banks of other groups: never in an offer.
const OUTSIDE_GROUP: [&str; 2] = [
    "A5qx1NMxfb3zywMuuo276KntUQk2zA3r3q6ZNwVBbMZC",
    "Fe5QkKPVAh629UPP5aJ8sDZu8HTfe6M26jDQkKyXVhoA",
];
/// Isolated-tier banks of the main group: only ever the borrow side.
const ISOLATED: [&str; 2] = [
    "H6bfRmfZPoxDDs8eoVBgouTPowwyv7opfBbHd5KUmuUz",
    "4kNXetv8hSv9PzvzPZzEs1CTH6ARRRi2b8h6jk1ad1nP",
];
/// The PYUSD bank, over its borrow limit: 0 available as borrow side.
const PYUSD_BANK: &str = "8UEiPmgZHXXEDrqLS3oiTxQxTbeYTtPbeMBxAd2XGbpu";

// Every offer of the main group, as derive_marginfi.py printed them from the
// raw bytes and the spec's formulas; shared with crates/solana/tests/marginfi.rs.
include!("../../solana/tests/fixtures/marginfi_offers.rs");

// -------------------------------------------------------------------- test

/// One chain job over all three programs. One engine retry, so a
/// persistent failure ends quickly; the RPC client retries inside each
/// attempt on its own.
fn chain_job(dir: &Path) -> PathBuf {
    let path = dir.join("chain.json");
    let cfg = serde_json::json!({
        "default_interval": "1h",
        "jobs": [{
            "name": "chain",
            "request": {
                "source": "chain",
                "chain_params": { "programs": ["lavarage", "lavarage-v2", "marginfi"] }
            },
            "max_retries": 1,
            "timeout": "5m"
        }]
    });
    std::fs::write(&path, cfg.to_string()).unwrap();
    path
}

async fn offers_of(client: &GrpcStore, source: &str) -> Vec<MarginOffer> {
    let q = ListQuery {
        filter: OfferFilter {
            source: Some(source.into()),
            ..Default::default()
        },
        limit: 1000,
        include_expired: true,
        ..Default::default()
    };
    let mut v = client.list(&q).await.unwrap().offers;
    v.sort_by(|a, b| a.id.cmp(&b.id));
    v
}

async fn check_lavarage(client: &GrpcStore) {
    let mut v1 = offers_of(client, "lavarage-v1").await;
    v1.extend(offers_of(client, "lavarage-v2").await);
    let want = lavarage_expected();
    let mut got_ids: Vec<String> = v1.iter().map(|o| o.id.clone()).collect();
    got_ids.sort();
    let mut want_ids: Vec<String> = want.iter().map(|w| key(w.0).to_string()).collect();
    want_ids.sort();
    assert_eq!(got_ids, want_ids, "one offer per pool, every layout");
    for (pool, source, coll, borrow, avail, open, liq, rate, op) in want {
        let id = key(pool).to_string();
        let o = v1.iter().find(|o| o.id == id).unwrap();
        assert_eq!(o.offer_type, OfferType::LV, "{id}");
        assert_eq!(o.collateral_token, key(coll).to_string(), "{id}");
        assert_eq!(o.borrow_token, borrow.to_string(), "{id}");
        close(o.available_borrow_amount, avail, &format!("{id} available"));
        close(o.max_open_ltv, open, &format!("{id} open"));
        close(o.liquidation_ltv, liq, &format!("{id} liquidation"));
        close(o.interest_rate, rate, &format!("{id} rate"));
        assert_eq!(o.interest_model, InterestModel::Fixed, "{id}");
        assert_eq!(o.term_days, None, "{id}");
        assert_eq!(o.liquidity_source, "lavarage", "{id}");
        assert_eq!(o.lender_address, Some(key(op).to_string()), "{id}");
        assert_eq!(o.source.as_deref(), Some(source), "{id}");
    }
}

async fn check_marginfi(client: &GrpcStore) {
    let got = offers_of(client, "marginfi").await;
    let ids: Vec<&str> = got.iter().map(|o| o.id.as_str()).collect();
    let want_ids: Vec<&str> = FIXTURE_OFFERS.iter().map(|e| e.1).collect();
    assert_eq!(ids, want_ids, "exactly the pairs of the main group");
    let mint = |bank: &str| {
        BANK_MINTS
            .iter()
            .find(|(b, _)| *b == bank)
            .map(|(_, m)| *m)
            .unwrap_or_else(|| panic!("bank {bank} not in the main group"))
    };
    for ((kind, id, avail, open, liq, rate), o) in FIXTURE_OFFERS.iter().zip(&got) {
        assert_eq!(*kind, "offer");
        let mut parts = id.split(':').skip(1);
        let (c, b) = (parts.next().unwrap(), parts.next().unwrap());
        assert!(
            !OUTSIDE_GROUP.contains(&c) && !OUTSIDE_GROUP.contains(&b),
            "{id}"
        );
        assert!(!ISOLATED.contains(&c), "isolated bank as collateral: {id}");
        if b == PYUSD_BANK {
            assert_eq!(o.available_borrow_amount, 0.0, "{id}: PYUSD over its limit");
        }
        assert_eq!(o.offer_type, OfferType::V1, "{id}");
        assert_eq!(o.collateral_token, mint(c), "{id}");
        assert_eq!(o.borrow_token, mint(b), "{id}");
        close(
            o.available_borrow_amount,
            *avail,
            &format!("{id} available"),
        );
        close(o.max_open_ltv, *open, &format!("{id} open"));
        close(o.liquidation_ltv, *liq, &format!("{id} liquidation"));
        close(o.interest_rate, *rate, &format!("{id} rate"));
        assert_eq!(o.interest_model, InterestModel::Floating, "{id}");
        assert_eq!(o.term_days, None, "{id}");
        assert_eq!(o.liquidity_source, "marginfi", "{id}");
        assert_eq!(o.source.as_deref(), Some("marginfi"), "{id}");
    }
    for iso in ISOLATED {
        assert!(
            got.iter().any(|o| o.id.ends_with(&format!(":{iso}"))),
            "isolated bank {iso} is offered as borrow side"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chain_run_once_against_a_local_rpc() {
    let dir = tempfile::tempdir().unwrap();
    let rpc = TestRpc::start().await.unwrap();
    lavarage_accounts(&rpc);
    marginfi_accounts(&rpc);
    let store = Store::start(&dir.path().join("offers.db"), 0);
    let client = store.client().await;
    let cfg = chain_job(dir.path());
    let endpoint = rpc.url();
    let addr = store.addr();
    let args = [
        "--store-addr",
        &addr,
        "--run-once",
        "--source",
        "chain",
        "--chain-endpoint",
        &endpoint,
        "--config",
        cfg.to_str().unwrap(),
    ];
    let n = 5 + FIXTURE_OFFERS.len();

    // First run: exactly the offers the two rules define.
    let r = run_backfillers(&args).await;
    eprintln!("backfillers exited {:?} after {:?}", r.code, r.took);
    assert_eq!(r.code, Some(0), "{r:?}");
    check_lavarage(&client).await;
    check_marginfi(&client).await;

    // Second run: all unchanged, the store's revision does not move.
    let rev = client.revision().await.unwrap();
    let r = run_backfillers(&args).await;
    eprintln!("backfillers exited {:?} after {:?}", r.code, r.took);
    assert_eq!(r.code, Some(0), "{r:?}");
    assert!(
        r.stdout
            .contains(&format!("created 0, updated 0, deleted 0, unchanged {n}")),
        "{}",
        r.stdout
    );
    assert_eq!(client.revision().await.unwrap(), rev);

    // A pool disappears: exactly its offer is deleted.
    let pool_b = rpc.remove_account(&key(POOL_B)).unwrap();
    let r = run_backfillers(&args).await;
    eprintln!("backfillers exited {:?} after {:?}", r.code, r.took);
    assert_eq!(r.code, Some(0), "{r:?}");
    let changes = client.changes_since(rev, 100).await.unwrap().changes;
    let seen: Vec<(String, ChangeType)> = changes
        .iter()
        .map(|c| (c.offer.id.clone(), c.change_type))
        .collect();
    assert_eq!(seen, [(key(POOL_B).to_string(), ChangeType::Deleted)]);
    assert_eq!(offers_of(&client, "lavarage-v1").await.len(), 2);
    let rev = client.revision().await.unwrap();

    // 500s for a while: the client retries and the run succeeds (the pool
    // is back, so the run has something to write).
    rpc.put(
        key(POOL_B),
        lavarage::V1_PROGRAM_ID,
        pool_b.lamports,
        pool_b.data.clone(),
    );
    rpc.push_faults(None, Fault::Http(500), 3);
    rpc.reset_calls();
    let r = run_backfillers(&args).await;
    eprintln!("backfillers exited {:?} after {:?}", r.code, r.took);
    assert_eq!(r.code, Some(0), "{r:?}");
    assert!(rpc.calls().len() > 3, "{:?}", rpc.calls());
    assert_eq!(offers_of(&client, "lavarage-v1").await.len(), 3);
    check_lavarage(&client).await;
    let rev2 = client.revision().await.unwrap();
    assert!(rev2 > rev);

    // Persistent 500s on the marginfi group read, after both Lavarage scans
    // succeeded: the run fails as a whole, nothing is written, exit 1.
    rpc.remove_account(&key(POOL_B));
    rpc.push_faults(Some("getAccountInfo"), Fault::Http(500), 10_000);
    let r = run_backfillers(&args).await;
    eprintln!("backfillers exited {:?} after {:?}", r.code, r.took);
    assert_eq!(r.code, Some(1), "{r:?}");
    assert_eq!(client.revision().await.unwrap(), rev2, "nothing written");
    assert_eq!(offers_of(&client, "lavarage-v1").await.len(), 3);
    rpc.clear_faults();

    // Every scan answers 0 accounts: the shrink guard refuses, exit 1.
    rpc.clear_accounts();
    let r = run_backfillers(&args).await;
    eprintln!("backfillers exited {:?} after {:?}", r.code, r.took);
    assert_eq!(r.code, Some(1), "{r:?}");
    assert!(r.stdout.contains("shrink guard"), "{}", r.stdout);
    assert_eq!(client.revision().await.unwrap(), rev2, "store unchanged");
    check_lavarage(&client).await;
    check_marginfi(&client).await;
}
