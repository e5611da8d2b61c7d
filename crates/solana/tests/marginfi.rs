//! marginfi decoders and the bank-pair rule against the real account dumps of
//! `fixtures/marginfi/` (see its PROVENANCE.md).
//!
//! Every expected figure below was derived independently of the Rust code:
//! `fixtures/derive_marginfi.py` base64-decodes each fixture, reads the
//! spec's offsets with `struct`/`int.from_bytes`, applies the formulas of
//! shared/spec/solana-sources.md (marginfi section) in Python floats, and
//! `python3 fixtures/derive_marginfi.py --rust` printed the tables pasted
//! here. Rerun it to check them. Figures compare to 1e-9 relative.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use base64::Engine as _;
use offer_domain::{InterestModel, OfferType};
use proptest::prelude::*;
use solana_sources::DecodeError;
use solana_sources::marginfi::{
    self, Bank, CurveType, Group, OperationalState, RiskTier, build_offers, build_offers_in_group,
    check_marginfi_owner, decode_bank, decode_group,
};
use solana_sources::pubkey::Pubkey;
use std::str::FromStr;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/marginfi");

/// (address, owner, data) of one `solana account --output json` dump.
fn load(file: &str) -> (Pubkey, Pubkey, Vec<u8>) {
    let text = std::fs::read_to_string(format!("{FIXTURES}/{file}")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let data = base64::engine::general_purpose::STANDARD
        .decode(v["account"]["data"][0].as_str().unwrap())
        .unwrap();
    (
        pk(v["pubkey"].as_str().unwrap()),
        pk(v["account"]["owner"].as_str().unwrap()),
        data,
    )
}

fn pk(s: &str) -> Pubkey {
    Pubkey::from_str(s).unwrap()
}

#[track_caller]
fn close(got: f64, want: f64, what: &str) {
    let ok = if want == 0.0 {
        got.abs() <= 1e-12
    } else {
        ((got - want) / want).abs() <= 1e-9
    };
    assert!(ok, "{what}: got {got:e}, want {want:e}");
}

struct ExpBank {
    file: &'static str,
    address: &'static str,
    mint: &'static str,
    decimals: u8,
    group: &'static str,
    asset_share_value: f64,
    liability_share_value: f64,
    total_liability_shares: f64,
    total_asset_shares: f64,
    last_update: i64,
    /// asset init, asset maint, liability init, liability maint
    weights: [f64; 4],
    deposit_limit: u64,
    /// optimal utilisation, plateau, max
    legacy: [f64; 3],
    /// insurance fixed, insurance ir, protocol fixed, protocol ir
    fees: [f64; 4],
    zero_util_rate: u32,
    hundred_util_rate: u32,
    curve_type: u8,
    operational_state: u8,
    borrow_limit: u64,
    risk_tier: u8,
    asset_tag: u8,
    emode_tag: u16,
    deposits: f64,
    borrows: f64,
    utilisation: f64,
    base_rate: f64,
    /// With the main group's fees (its fee flag is off in the dump).
    apr: f64,
}

#[allow(clippy::too_many_arguments)]
fn eb(
    file: &'static str,
    address: &'static str,
    mint: &'static str,
    decimals: u8,
    group: &'static str,
    asset_share_value: f64,
    liability_share_value: f64,
    total_liability_shares: f64,
    total_asset_shares: f64,
    last_update: i64,
    weights: [f64; 4],
    deposit_limit: u64,
    legacy: [f64; 3],
    fees: [f64; 4],
    zero_util_rate: u32,
    hundred_util_rate: u32,
    curve_type: u8,
    operational_state: u8,
    borrow_limit: u64,
    risk_tier: u8,
    asset_tag: u8,
    emode_tag: u16,
    deposits: f64,
    borrows: f64,
    utilisation: f64,
    base_rate: f64,
    apr: f64,
) -> ExpBank {
    ExpBank {
        file,
        address,
        mint,
        decimals,
        group,
        asset_share_value,
        liability_share_value,
        total_liability_shares,
        total_asset_shares,
        last_update,
        weights,
        deposit_limit,
        legacy,
        fees,
        zero_util_rate,
        hundred_util_rate,
        curve_type,
        operational_state,
        borrow_limit,
        risk_tier,
        asset_tag,
        emode_tag,
        deposits,
        borrows,
        utilisation,
        base_rate,
        apr,
    }
}

/// Derived by derive_marginfi.py from the raw bytes (see the module doc).
fn expected_banks() -> Vec<ExpBank> {
    vec![
        eb(
            "bank_pyusd_230822.json",
            "8UEiPmgZHXXEDrqLS3oiTxQxTbeYTtPbeMBxAd2XGbpu",
            "2b1kV6DkPAnxd5ixfnxCpjxmKwqjjaYmCZfHsFu24GXo",
            6,
            "4qp6Fx6tnZkY5Wropq9wUYgtFxXKwE6viZxFHg3rdAG8",
            1.0000877067037734,
            1.00157842522853,
            1997270567603.7026,
            39996492038102.21,
            1724302256,
            [
                0.8999999761581421,
                0.949999988079071,
                1.25,
                1.1000000000000014,
            ],
            40000000000000,
            [0.8000000000000007, 0.10000000000000142, 3.0],
            [0.0, 0.0, 0.010000000000001563, 0.05000000000000071],
            0,
            0,
            0,
            1,
            2000000000000,
            0,
            0,
            0,
            39999999998581.375,
            2000423109855.8088,
            0.050010577748168875,
            0.006251322218521193,
            0.01656388832944882,
        ),
        eb(
            "bank_sample_1.json",
            "Bohoc1ikHLD7xKJuzTyiTyCwzaL5N7ggJQu75A8mKYM8",
            "J1toso1uCk3RLmjorhTtrVwY9HJ7X8V9yYac6Y7kGCPn",
            9,
            "4qp6Fx6tnZkY5Wropq9wUYgtFxXKwE6viZxFHg3rdAG8",
            1.000561264812955,
            1.007376747267159,
            79763493059362.86,
            998366336320727.5,
            1711697727,
            [
                0.6499999761581421,
                0.800000011920929,
                1.3000000000000007,
                1.1999999999999993,
            ],
            2000000000000000,
            [0.8000000000000007, 0.10000000000000142, 3.0],
            [0.0, 0.0, 0.010000000000001563, 0.05000000000000071],
            0,
            0,
            0,
            1,
            500000000000000,
            0,
            0,
            0,
            998926684215743.0,
            80351888188807.58,
            0.08043822380407409,
            0.010054777975509395,
            0.020557516874286433,
        ),
        eb(
            "bank_sample_2.json",
            "H6bfRmfZPoxDDs8eoVBgouTPowwyv7opfBbHd5KUmuUz",
            "METADDFL6wWMWEoKTFJwcThTbUmtarRJZjRpzUvkxhr",
            9,
            "4qp6Fx6tnZkY5Wropq9wUYgtFxXKwE6viZxFHg3rdAG8",
            1.0,
            1.0,
            0.0,
            698503862367.0,
            1711683481,
            [0.0, 0.0, 2.5, 1.5],
            100000000000000000,
            [0.8000000000000007, 0.10000000000000142, 3.0],
            [0.0, 0.0, 0.010000000000001563, 0.05000000000000071],
            0,
            0,
            0,
            1,
            63000000000,
            1,
            0,
            0,
            698503862367.0,
            0.0,
            0.0,
            0.0,
            0.010000000000001563,
        ),
        eb(
            "bank_sample_3.json",
            "HmpMfL8942u22htC4EMiWgLX931g3sacXFR6KjuLgKLV",
            "Es9vMFrzaCERmJfrF4H2FYD4KCoNkY11McCe8BenwNYB",
            6,
            "4qp6Fx6tnZkY5Wropq9wUYgtFxXKwE6viZxFHg3rdAG8",
            1.0630037651883377,
            1.1208961173606298,
            32109684419718.203,
            43231381120800.336,
            1711697940,
            [1.0, 1.0, 1.25, 1.1000000000000014],
            100000000000000,
            [0.8000000000000007, 0.1999999999999993, 4.0],
            [0.0, 0.0, 0.010000000000001563, 0.05000000000000071],
            0,
            0,
            0,
            1,
            50000000000000,
            0,
            0,
            0,
            45955120905702.77,
            35991620595737.24,
            0.783190640920953,
            0.1957976602302374,
            0.21558754324175097,
        ),
        eb(
            "bonk_bank.json",
            "DeyH7QxWvnbbaVB4zFrf4hoq7Q8z1ZT14co42BGwGtfM",
            "DezXAZ8z7PnrnRJjz3wXBoRgixCa6xjnB7YaB1pPB263",
            5,
            "4qp6Fx6tnZkY5Wropq9wUYgtFxXKwE6viZxFHg3rdAG8",
            1.0001406941855997,
            1.012013113783098,
            1009681599638901.2,
            8.687161806359371e+16,
            1724181535,
            [
                0.5,
                0.6499999761581421,
                1.2999999523162842,
                1.2000000476837158,
            ],
            100000000000000000,
            [0.8000000000000007, 0.3000000000000007, 3.0],
            [0.0, 0.0, 0.010000000000001563, 0.13500000000000156],
            0,
            0,
            0,
            1,
            2640570785700000,
            0,
            0,
            0,
            8.68838403951489e+16,
            1021811019580063.9,
            0.011760656699023125,
            0.004410246262133678,
            0.015005629507523294,
        ),
        eb(
            "cloud_bank.json",
            "4kNXetv8hSv9PzvzPZzEs1CTH6ARRRi2b8h6jk1ad1nP",
            "CLoUDKc4Ane7HeQcPpE3YHnznRxhMimJ4MyaUqyHFzAu",
            9,
            "4qp6Fx6tnZkY5Wropq9wUYgtFxXKwE6viZxFHg3rdAG8",
            1.000940151712868,
            1.0033826843955396,
            49831483284621.9,
            678338741663796.5,
            1724177680,
            [0.0, 0.0, 2.5, 1.5],
            1000000000000000,
            [0.8000000000000007, 0.10000000000000142, 3.0],
            [0.0, 0.0, 0.010000000000001563, 0.05000000000000071],
            0,
            0,
            0,
            1,
            50000000000000,
            1,
            0,
            0,
            678976482993676.4,
            50000047465535.38,
            0.07364032292411674,
            0.009205040365514715,
            0.01966529238379202,
        ),
        eb(
            "pre_migration_bank1.json",
            "A5qx1NMxfb3zywMuuo276KntUQk2zA3r3q6ZNwVBbMZC",
            "6NZcrReTT3pMQj7cf9DHsucJa7Nn5UAuKgV9MR3zhSoE",
            9,
            "72rsL9hS6nxfBxXBwR7HUHTGnkf6doswoH8xvT4PF42T",
            1.0,
            1.0,
            0.0,
            0.0,
            1750291665,
            [0.5, 0.6000000000000014, 1.0, 1.0],
            100000000000000,
            [0.8000000000000007, 0.1999999999999993, 3.0],
            [
                0.010000000000001563,
                0.019999999999999574,
                0.030000000000001137,
                0.03999999999999915,
            ],
            0,
            0,
            0,
            1,
            100000000000000,
            0,
            0,
            0,
            0.0,
            0.0,
            0.0,
            0.0,
            0.0400000000000027,
        ),
        eb(
            "pyusd_bank.json",
            "Fe5QkKPVAh629UPP5aJ8sDZu8HTfe6M26jDQkKyXVhoA",
            "2b1kV6DkPAnxd5ixfnxCpjxmKwqjjaYmCZfHsFu24GXo",
            6,
            "FCPfpHA69EbS8f9KKSreTRkXbzFpunsKuYf5qNmnJjpo",
            1.0012974905870706,
            1.0022953035590731,
            349978.3824631625,
            2468099.1228208956,
            1725379514,
            [0.4000000059604645, 0.5, 1.25, 1.1000000000000014],
            200000000000000,
            [0.8500000000000014, 0.10000000000000142, 3.0],
            [0.0, 0.0, 0.010000000000001563, 0.05000000000000071],
            0,
            0,
            0,
            1,
            200000000000000,
            0,
            0,
            0,
            2471301.458200713,
            350781.6890900288,
            0.1419420880143952,
            0.016699069178164352,
            0.027534022637074145,
        ),
    ]
}

/// (kind, id, available, open LTV, liquidation LTV, APR) of every candidate
/// pair of the main group, derived by derive_marginfi.py.
type ExpOffer = (&'static str, &'static str, f64, f64, f64, f64);

include!("fixtures/marginfi_offers.rs");

/// The synthetic scenario (byte patches below, mirrored in SYNTHETIC of
/// derive_marginfi.py): group fees on, a seven-point curve on USDT, emode 7
/// on JitoSOL with a raising entry on USDT and a lowering one on BONK, a
/// PYUSD liability maint weight making USDT→PYUSD's liquidation LTV > 1,
/// CLOUD ReduceOnly, MET tagged Drift.
const SYNTHETIC_OFFERS: &[ExpOffer] = &[
    (
        "offer",
        "marginfi:8UEiPmgZHXXEDrqLS3oiTxQxTbeYTtPbeMBxAd2XGbpu:Bohoc1ikHLD7xKJuzTyiTyCwzaL5N7ggJQu75A8mKYM8",
        419648.1118111924,
        0.6923076739678012,
        0.7916666567325596,
        0.021311625222449632,
    ),
    (
        "offer",
        "marginfi:8UEiPmgZHXXEDrqLS3oiTxQxTbeYTtPbeMBxAd2XGbpu:DeyH7QxWvnbbaVB4zFrf4hoq7Q8z1ZT14co42BGwGtfM",
        16187597661.19936,
        0.6923076993614967,
        0.7916666252745539,
        0.015336397977183319,
    ),
    (
        "offer",
        "marginfi:8UEiPmgZHXXEDrqLS3oiTxQxTbeYTtPbeMBxAd2XGbpu:HmpMfL8942u22htC4EMiWgLX931g3sacXFR6KjuLgKLV",
        9963500.30996553,
        0.7199999809265136,
        0.8636363527991544,
        2.4782149033444356,
    ),
    (
        "offer",
        "marginfi:Bohoc1ikHLD7xKJuzTyiTyCwzaL5N7ggJQu75A8mKYM8:8UEiPmgZHXXEDrqLS3oiTxQxTbeYTtPbeMBxAd2XGbpu",
        0.0,
        0.5199999809265137,
        0.8533333460489909,
        0.017032737495837905,
    ),
    (
        "offer",
        "marginfi:Bohoc1ikHLD7xKJuzTyiTyCwzaL5N7ggJQu75A8mKYM8:DeyH7QxWvnbbaVB4zFrf4hoq7Q8z1ZT14co42BGwGtfM",
        16187597661.19936,
        0.5,
        0.6666666501098215,
        0.015336397977183319,
    ),
    (
        "offer",
        "marginfi:Bohoc1ikHLD7xKJuzTyiTyCwzaL5N7ggJQu75A8mKYM8:HmpMfL8942u22htC4EMiWgLX931g3sacXFR6KjuLgKLV",
        9963500.30996553,
        0.7,
        0.8522727272727262,
        2.4782149033444356,
    ),
    (
        "offer",
        "marginfi:DeyH7QxWvnbbaVB4zFrf4hoq7Q8z1ZT14co42BGwGtfM:8UEiPmgZHXXEDrqLS3oiTxQxTbeYTtPbeMBxAd2XGbpu",
        0.0,
        0.4,
        0.6933333079020182,
        0.017032737495837905,
    ),
    (
        "offer",
        "marginfi:DeyH7QxWvnbbaVB4zFrf4hoq7Q8z1ZT14co42BGwGtfM:Bohoc1ikHLD7xKJuzTyiTyCwzaL5N7ggJQu75A8mKYM8",
        419648.1118111924,
        0.3846153846153844,
        0.5416666467984521,
        0.021311625222449632,
    ),
    (
        "offer",
        "marginfi:DeyH7QxWvnbbaVB4zFrf4hoq7Q8z1ZT14co42BGwGtfM:HmpMfL8942u22htC4EMiWgLX931g3sacXFR6KjuLgKLV",
        9963500.30996553,
        0.4,
        0.5909090692346739,
        2.4782149033444356,
    ),
    (
        "skip",
        "marginfi:HmpMfL8942u22htC4EMiWgLX931g3sacXFR6KjuLgKLV:8UEiPmgZHXXEDrqLS3oiTxQxTbeYTtPbeMBxAd2XGbpu",
        0.0,
        0.8,
        1.0666666666666667,
        0.017032737495837905,
    ),
    (
        "offer",
        "marginfi:HmpMfL8942u22htC4EMiWgLX931g3sacXFR6KjuLgKLV:Bohoc1ikHLD7xKJuzTyiTyCwzaL5N7ggJQu75A8mKYM8",
        419648.1118111924,
        0.7692307692307688,
        0.8333333333333338,
        0.021311625222449632,
    ),
    (
        "offer",
        "marginfi:HmpMfL8942u22htC4EMiWgLX931g3sacXFR6KjuLgKLV:DeyH7QxWvnbbaVB4zFrf4hoq7Q8z1ZT14co42BGwGtfM",
        16187597661.19936,
        0.7692307974459868,
        0.8333333002196431,
        0.015336397977183319,
    ),
];

const BANK_FILES: [&str; 8] = [
    "bank_pyusd_230822.json",
    "bank_sample_1.json",
    "bank_sample_2.json",
    "bank_sample_3.json",
    "bonk_bank.json",
    "cloud_bank.json",
    "pre_migration_bank1.json",
    "pyusd_bank.json",
];

fn i80(x: f64) -> [u8; 16] {
    // Only dyadic values are used, so the product is exact.
    ((x * 281_474_976_710_656.0) as i128).to_le_bytes()
}

fn synthetic_patches(file: &str) -> Vec<(usize, Vec<u8>)> {
    let cat = |a: &[u8], b: &[u8]| [a, b].concat();
    match file {
        "mainnet_group.json" => vec![(40, 1u64.to_le_bytes().to_vec())],
        "bank_sample_3.json" => vec![
            (544, vec![1]),
            (496, 0x1000_0000u32.to_le_bytes().to_vec()),
            (500, 0x8000_0000u32.to_le_bytes().to_vec()),
            (
                504,
                cat(&0x8000_0000u32.to_le_bytes(), &0x2000_0000u32.to_le_bytes()),
            ),
            (
                512,
                cat(&0xE000_0000u32.to_le_bytes(), &0x4000_0000u32.to_le_bytes()),
            ),
            (944, 7u16.to_le_bytes().to_vec()),
            (952, cat(&i80(0.875), &i80(0.9375))),
        ],
        "bank_sample_1.json" => vec![(920, 7u16.to_le_bytes().to_vec())],
        "bonk_bank.json" => vec![
            (944, 7u16.to_le_bytes().to_vec()),
            (952, cat(&i80(0.125), &i80(0.25))),
        ],
        "bank_pyusd_230822.json" => vec![(344, i80(0.9375).to_vec())],
        "cloud_bank.json" => vec![(608, vec![2])],
        "bank_sample_2.json" => vec![(785, vec![4])],
        _ => vec![],
    }
}

fn patched(file: &str, synthetic: bool) -> (Pubkey, Vec<u8>) {
    let (addr, _, mut data) = load(file);
    if synthetic {
        for (off, bytes) in synthetic_patches(file) {
            data[off..off + bytes.len()].copy_from_slice(&bytes);
        }
    }
    (addr, data)
}

fn all_banks(synthetic: bool) -> Vec<(Pubkey, Bank)> {
    BANK_FILES
        .iter()
        .map(|f| {
            let (addr, data) = patched(f, synthetic);
            (addr, decode_bank(&data).unwrap())
        })
        .collect()
}

fn main_group(synthetic: bool) -> Group {
    decode_group(&patched("mainnet_group.json", synthetic).1).unwrap()
}

#[test]
fn every_fixture_bank_decodes_to_the_hand_derived_values() {
    let group = main_group(false);
    let expected = expected_banks();
    assert_eq!(expected.len(), BANK_FILES.len());
    for e in expected {
        let (addr, _, data) = load(e.file);
        assert_eq!(addr, pk(e.address), "{}", e.file);
        let b = decode_bank(&data).unwrap();
        let f = e.file;
        assert_eq!(b.mint, pk(e.mint), "{f} mint");
        assert_eq!(b.mint_decimals, e.decimals, "{f} decimals");
        assert_eq!(b.group, pk(e.group), "{f} group");
        close(b.asset_share_value, e.asset_share_value, f);
        close(b.liability_share_value, e.liability_share_value, f);
        close(b.total_liability_shares, e.total_liability_shares, f);
        close(b.total_asset_shares, e.total_asset_shares, f);
        assert_eq!(b.last_update, e.last_update, "{f} last_update");
        close(b.asset_weight_init, e.weights[0], f);
        close(b.asset_weight_maint, e.weights[1], f);
        close(b.liability_weight_init, e.weights[2], f);
        close(b.liability_weight_maint, e.weights[3], f);
        assert_eq!(b.deposit_limit, e.deposit_limit, "{f} deposit_limit");
        close(b.optimal_utilization_rate, e.legacy[0], f);
        close(b.plateau_interest_rate, e.legacy[1], f);
        close(b.max_interest_rate, e.legacy[2], f);
        close(b.insurance_fee_fixed_apr, e.fees[0], f);
        close(b.insurance_ir_fee, e.fees[1], f);
        close(b.protocol_fixed_fee_apr, e.fees[2], f);
        close(b.protocol_ir_fee, e.fees[3], f);
        assert_eq!(b.zero_util_rate, e.zero_util_rate, "{f}");
        assert_eq!(b.hundred_util_rate, e.hundred_util_rate, "{f}");
        // No 2024 dump uses the seven-point curve: every slot is unused.
        assert!(
            b.curve_points.iter().all(|p| p.util == 0 && p.rate == 0),
            "{f}"
        );
        assert_eq!(b.curve_type, CurveType::from(e.curve_type), "{f}");
        assert_eq!(b.curve_type, CurveType::Legacy, "{f}");
        assert_eq!(
            b.operational_state,
            OperationalState::from(e.operational_state),
            "{f}"
        );
        assert_eq!(b.operational_state, OperationalState::Operational, "{f}");
        assert_eq!(b.borrow_limit, e.borrow_limit, "{f} borrow_limit");
        assert_eq!(b.risk_tier, RiskTier::from(e.risk_tier), "{f}");
        assert_eq!(b.asset_tag, e.asset_tag, "{f} asset_tag");
        assert_eq!(b.emode_tag, e.emode_tag, "{f} emode_tag");
        // No dump has emode entries (emode came later): all ten are empty.
        assert!(
            b.emode_entries
                .iter()
                .all(|x| x.tag == 0 && x.asset_weight_init == 0.0 && x.asset_weight_maint == 0.0),
            "{f}"
        );
        close(b.deposits(), e.deposits, f);
        close(b.borrows(), e.borrows, f);
        close(b.utilization(), e.utilisation, f);
        close(b.base_rate(), e.base_rate, f);
        close(b.borrow_apr(Some(&group)), e.apr, f);
    }
}

#[test]
fn risk_tiers_of_the_fixtures() {
    let tier = |f: &str| decode_bank(&load(f).2).unwrap().risk_tier;
    assert_eq!(tier("bank_sample_1.json"), RiskTier::Collateral);
    assert_eq!(tier("bank_sample_2.json"), RiskTier::Isolated);
    assert_eq!(tier("cloud_bank.json"), RiskTier::Isolated);
}

#[test]
fn main_group_decodes() {
    let (addr, _, data) = load("mainnet_group.json");
    assert_eq!(addr, marginfi::MAIN_GROUP);
    let g = decode_group(&data).unwrap();
    // Derived by derive_marginfi.py: flags 0, fixed 0, rate raw/2^48.
    assert!(!g.program_fees_enabled);
    close(g.program_fee_fixed, 0.0, "fee_fixed");
    close(g.program_fee_rate, 0.07499999999999929, "fee_rate");
}

#[track_caller]
fn check_offers(synthetic: bool, expected: &[ExpOffer]) {
    let group = main_group(synthetic);
    let banks = all_banks(synthetic);
    let (offers, skips) = build_offers(Some(&group), &banks);
    let want_offers: Vec<&ExpOffer> = expected.iter().filter(|e| e.0 == "offer").collect();
    let want_skips: Vec<&ExpOffer> = expected.iter().filter(|e| e.0 == "skip").collect();
    let mut got_ids: Vec<&str> = offers.iter().map(|o| o.id.as_str()).collect();
    got_ids.sort_unstable();
    let want_ids: Vec<&str> = want_offers.iter().map(|e| e.1).collect();
    assert_eq!(got_ids, want_ids);
    let skip_ids: Vec<&str> = skips.iter().map(|s| s.id.as_str()).collect();
    assert_eq!(skip_ids, want_skips.iter().map(|e| e.1).collect::<Vec<_>>());
    let mint = |addr: &str| {
        banks
            .iter()
            .find(|(a, _)| a.to_string() == addr)
            .map(|(_, b)| b.mint.to_string())
            .unwrap()
    };
    for (_, id, avail, open, liq, rate) in want_offers {
        let o = offers.iter().find(|o| o.id == *id).unwrap();
        let mut parts = id.split(':').skip(1);
        let (c, b) = (parts.next().unwrap(), parts.next().unwrap());
        assert_eq!(o.offer_type, OfferType::V1);
        assert_eq!(o.collateral_token, mint(c), "{id}");
        assert_eq!(o.borrow_token, mint(b), "{id}");
        close(o.available_borrow_amount, *avail, id);
        close(o.max_open_ltv, *open, id);
        close(o.liquidation_ltv, *liq, id);
        close(o.interest_rate, *rate, id);
        assert_eq!(o.interest_model, InterestModel::Floating);
        assert_eq!(o.liquidity_source, "marginfi");
        assert_eq!(o.source.as_deref(), Some("marginfi"));
        assert_eq!(o.term_days, None);
        assert!(
            offer_domain::validate::validate_offer(o.clone()).is_ok(),
            "{id}"
        );
    }
}

#[test]
fn offers_of_the_main_group_fixtures() {
    check_offers(false, FIXTURE_OFFERS);
}

#[test]
fn synthetic_curve_fees_emode_and_skips() {
    check_offers(true, SYNTHETIC_OFFERS);
    // The seven-point curve itself, derived by derive_marginfi.py.
    let (_, data) = patched("bank_sample_3.json", true);
    let b = decode_bank(&data).unwrap();
    assert_eq!(b.curve_type, CurveType::SevenPoint);
    close(b.base_rate(), 2.1939688029728304, "seven-point base rate");
}

#[test]
fn pairs_stay_inside_the_group_and_isolated_banks_only_borrow() {
    let banks = all_banks(false);
    let (offers, _) = build_offers(Some(&main_group(false)), &banks);
    let outside = [
        "A5qx1NMxfb3zywMuuo276KntUQk2zA3r3q6ZNwVBbMZC",
        "Fe5QkKPVAh629UPP5aJ8sDZu8HTfe6M26jDQkKyXVhoA",
    ];
    let isolated = [
        "H6bfRmfZPoxDDs8eoVBgouTPowwyv7opfBbHd5KUmuUz",
        "4kNXetv8hSv9PzvzPZzEs1CTH6ARRRi2b8h6jk1ad1nP",
    ];
    // 4 collateral-tier main banks × the 5 other main banks.
    assert_eq!(offers.len(), 20);
    for o in &offers {
        assert!(outside.iter().all(|a| !o.id.contains(a)), "{}", o.id);
        let c = o.id.split(':').nth(1).unwrap();
        assert!(!isolated.contains(&c), "{}", o.id);
    }
    for iso in isolated {
        assert_eq!(
            offers.iter().filter(|o| o.id.ends_with(iso)).count(),
            4,
            "{iso} is a borrow side of every collateral bank"
        );
    }
    // Another group's banks pair only among themselves: the one
    // pre-migration bank alone makes no pair.
    let other = pk("72rsL9hS6nxfBxXBwR7HUHTGnkf6doswoH8xvT4PF42T");
    let (o2, s2) = build_offers_in_group(&other, None, &banks);
    assert!(o2.is_empty() && s2.is_empty());
}

#[test]
fn pyusd_bank_over_its_borrow_limit_offers_zero() {
    // Hand check: borrow_limit 2e12 < borrows 2.0004e12 (see expected_banks),
    // so max(0, limit − borrows) = 0 caps the free 3.8e13.
    let banks = all_banks(false);
    let (offers, _) = build_offers(Some(&main_group(false)), &banks);
    let to_pyusd: Vec<_> = offers
        .iter()
        .filter(|o| {
            o.id.ends_with(":8UEiPmgZHXXEDrqLS3oiTxQxTbeYTtPbeMBxAd2XGbpu")
        })
        .collect();
    assert_eq!(to_pyusd.len(), 3);
    assert!(to_pyusd.iter().all(|o| o.available_borrow_amount == 0.0));
    let pyusd = &banks[0].1;
    assert!(pyusd.borrows() > pyusd.borrow_limit as f64);
    assert!(pyusd.deposits() > pyusd.borrows());
}

#[test]
fn owner_is_checked_only_when_asked() {
    for f in ["bonk_bank.json", "cloud_bank.json", "pyusd_bank.json"] {
        let (_, owner, data) = load(f);
        assert_ne!(owner, marginfi::PROGRAM_ID, "{f} has a rewritten owner");
        assert!(decode_bank(&data).is_ok(), "{f}");
        assert!(matches!(
            check_marginfi_owner(&owner),
            Err(DecodeError::WrongOwner { .. })
        ));
    }
    let (_, owner, _) = load("bank_sample_1.json");
    assert_eq!(check_marginfi_owner(&owner), Ok(()));
}

#[test]
fn malformed_accounts_are_clear_errors() {
    let (_, _, bank) = load("bank_sample_1.json");
    let (_, _, group) = load("mainnet_group.json");
    assert_eq!(
        decode_bank(&bank[..100]),
        Err(DecodeError::TooShort {
            need: marginfi::BANK_LEN,
            got: 100
        })
    );
    assert!(matches!(
        decode_bank(&bank[..4]),
        Err(DecodeError::TooShort { .. })
    ));
    assert!(matches!(
        decode_bank(&group),
        Err(DecodeError::WrongDiscriminator { .. })
    ));
    assert!(matches!(
        decode_group(&bank),
        Err(DecodeError::WrongDiscriminator { .. })
    ));
    let mut long = bank.clone();
    long.push(0);
    assert!(matches!(decode_bank(&long), Err(DecodeError::Invalid(_))));
    assert!(matches!(
        decode_group(&group[..1000]),
        Err(DecodeError::TooShort { .. })
    ));
}

proptest! {
    #[test]
    fn decoders_never_panic(data in proptest::collection::vec(any::<u8>(), 0..2100)) {
        let _ = decode_bank(&data);
        let _ = decode_group(&data);
    }

    #[test]
    fn decoders_never_panic_with_a_valid_discriminator(
        rest in proptest::collection::vec(any::<u8>(), 0..2100),
        bank in any::<bool>(),
    ) {
        let disc = if bank { marginfi::BANK_DISCRIMINATOR } else { marginfi::GROUP_DISCRIMINATOR };
        let data = [&disc[..], &rest].concat();
        if let Ok(b) = decode_bank(&data) {
            // Derived figures never panic either, whatever the bytes.
            let _ = (b.base_rate(), b.borrow_apr(None), b.available_to_borrow());
            let group = b.group;
            let _ = build_offers_in_group(&group, None, &[(Pubkey::default(), b.clone()), (Pubkey([1; 32]), b)]);
        }
        let _ = decode_group(&data);
    }
}
