//! The chain source end to end: a local JSON-RPC server holding the real
//! marginfi fixture accounts and Lavarage accounts built from the layouts,
//! the backfill engine, and the in-memory store.
// Tests: a failed unwrap is the assertion.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use backfill::sources::{ChainOptions, ChainSource};
use backfill::{
    BackfillConfig, BackfillOptions, Backfiller, CancellationToken, JobResult, JobSpec, RunOutcome,
    SourceKind, SourceRegistry,
};
use offer_domain::{InterestModel, ListQuery, MarginOffer, OfferFilter, OfferType};
use offer_store::SharedStore;
use solana_sources::lavarage::{self, Version, build};
use solana_sources::marginfi;
use solana_sources::pubkey::{
    Pubkey, TOKEN_2022_PROGRAM_ID, TOKEN_PROGRAM_ID, WRAPPED_SOL_MINT, associated_token_address,
};
use solana_sources::rpc::RpcOptions;
use solana_sources::testing::{Fault, TestRpc, fixtures_dir, load_cli_account};
use store_memory::MemoryStore;

fn key(b: u8) -> Pubkey {
    Pubkey([b; 32])
}

// Lavarage test accounts.
const POOL_A: u8 = 0xa1; // V1, 115 bytes
const POOL_B: u8 = 0xa2; // V1, 131 bytes, open_ltv 6500
const POOL_F: u8 = 0xa6; // V1, 131 bytes, open_ltv 0 → default
const POOL_X: u8 = 0xa9; // V1, node wallet missing → skipped
const POOL_SHORT: u8 = 0xaf; // 60 bytes with the Pool discriminator → skipped
const POOL_D: u8 = 0xb4; // V2, 147 bytes, USDC via Token
const POOL_E: u8 = 0xb5; // V2, 163 bytes, Token-2022 mint
const NW1: u8 = 0xc1;
const NW2: u8 = 0xc2;
const NW3: u8 = 0xc3;
const OP1: u8 = 0xd1;
const OP2: u8 = 0xd2;
const OP3: u8 = 0xd3;
const USDC: u8 = 0xe1;
const T22: u8 = 0xe2;

fn lavarage_accounts(rpc: &TestRpc) {
    let v1 = lavarage::V1_PROGRAM_ID;
    let v2 = lavarage::V2_PROGRAM_ID;
    // V1 node wallet: 66 bytes, rent (128 + 66) × 6960 = 1_350_240 lamports.
    rpc.put(
        key(NW1),
        v1,
        10_001_350_240,
        build::node_wallet(Version::V1, 0, 0, 90, &key(OP1), None),
    );
    let pool = |len, rate, coll, nw, max, cur, qt: Option<&Pubkey>, bps, v| {
        build::pool(v, len, rate, &key(coll), &key(nw), max, cur, qt, bps)
    };
    rpc.put(
        key(POOL_A),
        v1,
        1,
        pool(
            115,
            69,
            0x11,
            NW1,
            50_000_000_000,
            20_000_000_000,
            None,
            0,
            Version::V1,
        ),
    );
    rpc.put(
        key(POOL_B),
        v1,
        1,
        pool(
            131,
            5,
            0x12,
            NW1,
            3_000_000_000,
            500_000_000,
            None,
            6_500,
            Version::V1,
        ),
    );
    rpc.put(
        key(POOL_F),
        v1,
        1,
        pool(
            131,
            10,
            0x16,
            NW1,
            1_000_000_000,
            2_000_000_000,
            None,
            0,
            Version::V1,
        ),
    );
    rpc.put(
        key(POOL_X),
        v1,
        1,
        pool(115, 10, 0x19, 0xcc, 1, 0, None, 0, Version::V1),
    );
    let mut short = pool(115, 1, 0x1f, NW1, 1, 0, None, 0, Version::V1);
    short.truncate(60);
    rpc.put(key(POOL_SHORT), v1, 1, short);

    // V2: USDC (Token program, 6 decimals) and a Token-2022 mint (9).
    rpc.put(key(USDC), TOKEN_PROGRAM_ID, 1, build::mint(6));
    rpc.put(key(T22), TOKEN_2022_PROGRAM_ID, 1, build::mint(9));
    rpc.put(
        key(NW2),
        v2,
        1,
        build::node_wallet(Version::V2, 0, 0, 85, &key(OP2), Some(&key(USDC))),
    );
    rpc.put(
        key(NW3),
        v2,
        1,
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
    rpc.put(
        key(POOL_D),
        v2,
        1,
        pool(
            147,
            12,
            0x13,
            NW2,
            1_000_000_000,
            250_000_000,
            Some(&key(USDC)),
            0,
            Version::V2,
        ),
    );
    rpc.put(
        key(POOL_E),
        v2,
        1,
        pool(
            163,
            30,
            0x14,
            NW3,
            2_000_000_000,
            1_000_000_000,
            Some(&key(T22)),
            7_000,
            Version::V2,
        ),
    );
}

/// Every marginfi fixture, served as owned by the marginfi program.
fn marginfi_accounts(rpc: &TestRpc) -> Vec<(Pubkey, marginfi::Bank)> {
    let dir = fixtures_dir()
        .expect("shared/fixtures not found")
        .join("marginfi");
    let mut banks = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("json") {
            continue;
        }
        let (k, mut a) = load_cli_account(&path).unwrap();
        a.owner = marginfi::PROGRAM_ID;
        if let Ok(b) = marginfi::decode_bank(&a.data) {
            banks.push((k, b));
        }
        rpc.set_account(k, a);
    }
    banks.sort_by_key(|(k, _)| *k);
    assert_eq!(banks.len(), 8, "eight fixture banks");
    banks
}

async fn setup() -> (TestRpc, Vec<(Pubkey, marginfi::Bank)>) {
    let rpc = TestRpc::start().await.unwrap();
    lavarage_accounts(&rpc);
    let banks = marginfi_accounts(&rpc);
    (rpc, banks)
}

fn job(programs: &[&str]) -> JobSpec {
    let text = serde_json::json!({ "jobs": [{
        "name": "chain",
        "request": { "source": "chain", "chain_params": { "programs": programs } },
        "max_retries": 1, "timeout": "30s" }] })
    .to_string();
    BackfillConfig::from_json(&text, "test", &|_: &str| None)
        .unwrap()
        .jobs
        .remove(0)
}

fn engine(store: &SharedStore, rpc: &TestRpc) -> Backfiller {
    let opts = ChainOptions {
        rpc: RpcOptions {
            initial_backoff: Duration::from_millis(5),
            max_backoff: Duration::from_millis(20),
            max_retries: 3,
            ..RpcOptions::default()
        },
        ..ChainOptions::default()
    };
    let src = ChainSource::new(rpc.url(), opts).unwrap();
    Backfiller::new(
        store.clone(),
        SourceRegistry::new().with(SourceKind::Chain, Arc::new(src)),
        BackfillOptions {
            retry_base_delay: Duration::from_millis(5),
            retry_max_delay: Duration::from_millis(20),
            ..BackfillOptions::default()
        },
    )
}

async fn run(store: &SharedStore, rpc: &TestRpc, programs: &[&str]) -> JobResult {
    engine(store, rpc)
        .run_job(&job(programs), &CancellationToken::new())
        .await
}

async fn offers_of(store: &SharedStore, source: &str) -> Vec<MarginOffer> {
    let q = ListQuery {
        filter: OfferFilter {
            source: Some(source.into()),
            ..Default::default()
        },
        limit: 1000,
        include_expired: true,
        ..Default::default()
    };
    let mut v = store.list(&q).await.unwrap().offers;
    v.sort_by(|a, b| a.id.cmp(&b.id));
    v
}

fn find(offers: &[MarginOffer], id: u8) -> &MarginOffer {
    let id = key(id).to_string();
    offers
        .iter()
        .find(|o| o.id == id)
        .unwrap_or_else(|| panic!("offer {id} missing"))
}

#[allow(clippy::too_many_arguments)]
fn check(
    o: &MarginOffer,
    coll: u8,
    borrow: &Pubkey,
    avail: f64,
    open: f64,
    liq: f64,
    rate: f64,
    operator: u8,
    source: &str,
) {
    assert_eq!(o.offer_type, OfferType::LV, "{}", o.id);
    assert_eq!(o.collateral_token, key(coll).to_string());
    assert_eq!(o.borrow_token, borrow.to_string());
    assert_eq!(o.available_borrow_amount, avail, "{}", o.id);
    assert_eq!(o.max_open_ltv, open, "{}", o.id);
    assert_eq!(o.liquidation_ltv, liq, "{}", o.id);
    assert_eq!(o.interest_rate, rate, "{}", o.id);
    assert_eq!(o.interest_model, InterestModel::Fixed);
    assert_eq!(o.term_days, None);
    assert_eq!(o.liquidity_source, "lavarage");
    assert_eq!(o.lender_address, Some(key(operator).to_string()));
    assert_eq!(o.source.as_deref(), Some(source));
}

#[tokio::test]
async fn every_program_every_layout_then_unchanged_then_one_deleted() {
    let (rpc, banks) = setup().await;
    let store: SharedStore = Arc::new(MemoryStore::new());
    let all = ["lavarage", "lavarage-v2", "marginfi"];
    let r = run(&store, &rpc, &all).await;
    assert!(r.succeeded(), "{r:?}");
    let scopes: Vec<&str> = r.scopes.iter().map(|s| s.scope.as_str()).collect();
    assert_eq!(scopes, ["lavarage-v1", "lavarage-v2", "marginfi"]);

    // V1: free funds 10_001_350_240 − 1_350_240 = 10 SOL.
    let v1 = offers_of(&store, "lavarage-v1").await;
    assert_eq!(
        v1.len(),
        3,
        "pool X (no node wallet) and the short pool are skipped"
    );
    // A: room 30 SOL, free 10 SOL → 10.
    check(
        find(&v1, POOL_A),
        0x11,
        &WRAPPED_SOL_MINT,
        10.0,
        0.75,
        0.9,
        0.69,
        OP1,
        "lavarage-v1",
    );
    // B: room 2.5 SOL < 10 → 2.5; open 6500 bps.
    check(
        find(&v1, POOL_B),
        0x12,
        &WRAPPED_SOL_MINT,
        2.5,
        0.65,
        0.9,
        0.05,
        OP1,
        "lavarage-v1",
    );
    // F: current above max → 0; open_ltv 0 → default 0.75.
    check(
        find(&v1, POOL_F),
        0x16,
        &WRAPPED_SOL_MINT,
        0.0,
        0.75,
        0.9,
        0.1,
        OP1,
        "lavarage-v1",
    );

    let v2 = offers_of(&store, "lavarage-v2").await;
    assert_eq!(v2.len(), 2);
    // D: room 750 USDC, ATA 400.5 USDC → 400.5; liquidation 85 % → 0.85.
    check(
        find(&v2, POOL_D),
        0x13,
        &key(USDC),
        400.5,
        0.75,
        0.85,
        0.12,
        OP2,
        "lavarage-v2",
    );
    // E: room 1e9, Token-2022 ATA 5e9, 9 decimals → 1.0; 9250 bps → 0.925.
    check(
        find(&v2, POOL_E),
        0x14,
        &key(T22),
        1.0,
        0.7,
        0.925,
        0.3,
        OP3,
        "lavarage-v2",
    );

    // marginfi: exactly what the pair rule gives for the main group.
    let group_acc = rpc.account(&marginfi::MAIN_GROUP).unwrap();
    let group = marginfi::decode_group(&group_acc.data).unwrap();
    let (mut want, _) = marginfi::build_offers(Some(&group), &banks);
    want.sort_by(|a, b| a.id.cmp(&b.id));
    let got = offers_of(&store, "marginfi").await;
    assert!(!got.is_empty());
    assert_eq!(got.len(), want.len());
    for (g, w) in got.iter().zip(&want) {
        assert_eq!(g.id, w.id);
        assert!(
            g.same_content(&MarginOffer {
                source: Some("marginfi".into()),
                ..w.clone()
            }),
            "{g:?} vs {w:?}"
        );
    }

    // Second run: everything unchanged.
    let r = run(&store, &rpc, &all).await;
    assert!(r.succeeded(), "{r:?}");
    assert_eq!(
        (r.counts.created, r.counts.updated, r.counts.deleted),
        (0, 0, 0),
        "{:?}",
        r.counts
    );
    assert_eq!(r.counts.unchanged, 5 + got.len());

    // A pool disappears: exactly its offer goes.
    rpc.remove_account(&key(POOL_B));
    let r = run(&store, &rpc, &all).await;
    assert!(r.succeeded(), "{r:?}");
    assert_eq!(r.counts.deleted, 1);
    let v1_scope = r.scopes.iter().find(|s| s.scope == "lavarage-v1").unwrap();
    assert_eq!(v1_scope.deleted_ids, [key(POOL_B).to_string()]);
    assert_eq!(offers_of(&store, "lavarage-v1").await.len(), 2);
    assert_eq!(offers_of(&store, "lavarage-v2").await.len(), 2);
}

#[tokio::test]
async fn server_errors_for_a_while_are_retried() {
    let (rpc, _) = setup().await;
    let store: SharedStore = Arc::new(MemoryStore::new());
    rpc.push_faults(None, Fault::Http(500), 2);
    rpc.push_fault(None, Fault::TooManyRequests { retry_after: None });
    rpc.push_fault(
        None,
        Fault::RpcError {
            code: -32005,
            message: "node is behind".into(),
        },
    );
    let r = run(&store, &rpc, &["lavarage-v2"]).await;
    assert!(r.succeeded(), "{r:?}");
    assert_eq!(offers_of(&store, "lavarage-v2").await.len(), 2);
    assert!(rpc.calls().len() >= 4 + 4, "{:?}", rpc.calls());
}

#[tokio::test]
async fn bad_base64_fails_the_run_and_writes_nothing() {
    let (rpc, _) = setup().await;
    let store: SharedStore = Arc::new(MemoryStore::new());
    rpc.push_fault(None, Fault::BadBase64);
    let r = run(&store, &rpc, &["marginfi"]).await;
    assert_eq!(r.outcome, RunOutcome::Failed, "{r:?}");
    assert!(
        r.error.as_deref().unwrap_or_default().contains("base64"),
        "{r:?}"
    );
    assert_eq!(r.attempts, 1, "malformed responses are permanent");
    assert!(offers_of(&store, "marginfi").await.is_empty());

    // Lavarage V1 is fetched whole, then marginfi's group read gets a
    // truncated body: the run fails as a whole, so not even V1 is written.
    rpc.push_fault(Some("getAccountInfo"), Fault::BadJson);
    let r = run(&store, &rpc, &["lavarage", "marginfi"]).await;
    assert_eq!(r.outcome, RunOutcome::Failed, "{r:?}");
    assert!(offers_of(&store, "lavarage-v1").await.is_empty());
    assert!(offers_of(&store, "marginfi").await.is_empty());
}

#[tokio::test]
async fn zero_accounts_trips_the_shrink_guard() {
    let (rpc, _) = setup().await;
    let store: SharedStore = Arc::new(MemoryStore::new());
    assert!(run(&store, &rpc, &["lavarage"]).await.succeeded());
    rpc.clear_accounts();
    let r = run(&store, &rpc, &["lavarage"]).await;
    assert_eq!(r.outcome, RunOutcome::Failed, "{r:?}");
    assert_eq!(offers_of(&store, "lavarage-v1").await.len(), 3);
}

#[tokio::test]
async fn paginated_scans_give_the_same_offers() {
    let (rpc, _) = setup().await;
    let store: SharedStore = Arc::new(MemoryStore::new());
    let text = serde_json::json!({ "jobs": [{
        "name": "chain-v2",
        "request": { "source": "chain", "chain_params": {
            "programs": ["lavarage", "marginfi"],
            "use_get_program_accounts_v2": true,
            "program_accounts_timeout": "5m", "rpc_timeout": "10s" } } }] })
    .to_string();
    let job = BackfillConfig::from_json(&text, "test", &|_: &str| None)
        .unwrap()
        .jobs
        .remove(0);
    let r = engine(&store, &rpc)
        .run_job(&job, &CancellationToken::new())
        .await;
    assert!(r.succeeded(), "{r:?}");
    assert!(rpc.calls().iter().any(|m| m == "getProgramAccountsV2"));
    assert!(!rpc.calls().iter().any(|m| m == "getProgramAccounts"));
    assert_eq!(offers_of(&store, "lavarage-v1").await.len(), 3);
    assert!(!offers_of(&store, "marginfi").await.is_empty());
}
