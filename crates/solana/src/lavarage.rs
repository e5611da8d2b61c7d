//! Lavarage V1 and V2: Pool and NodeWallet decoders, the SPL mint and token
//! account fields the offers need, and the one-offer-per-pool rule
//! (`shared/spec/solana-sources.md`, Lavarage section).
//!
//! Accounts are Anchor/Borsh (packed, no padding) and were created with
//! varying spare bytes, so a Pool is decoded by program and length: optional
//! trailing fields exist only when the account is long enough for them.

use std::collections::HashMap;

use offer_domain::validate::validate_offer;
use offer_domain::{InterestModel, MarginOffer, OfferType};

use crate::decode::{
    DecodeError, check_discriminator, read_array, read_pubkey, read_u8, read_u16, read_u64,
    require_len,
};
use crate::pubkey::{
    Pubkey, TOKEN_2022_PROGRAM_ID, TOKEN_PROGRAM_ID, WRAPPED_SOL_MINT, associated_token_address,
};

pub const V1_PROGRAM_ID: Pubkey =
    Pubkey::from_str_const("CRSeeBqjDnm3UPefJ9gxrtngTsnQRhEJiTA345Q83X3v");
pub const V2_PROGRAM_ID: Pubkey =
    Pubkey::from_str_const("1avaAUcjccXCjSZzwUvB2gS3DzkkieV2Mw8CjdN65uu");
/// sha256("account:Pool")[..8].
pub const POOL_DISCRIMINATOR: [u8; 8] = [0xf1, 0x9a, 0x6d, 0x04, 0x11, 0xb1, 0x6d, 0xbc];
/// sha256("account:NodeWallet")[..8].
pub const NODE_WALLET_DISCRIMINATOR: [u8; 8] = [0x30, 0x75, 0xd6, 0x73, 0x7d, 0x17, 0x5e, 0xf6];
/// sha256("account:Position")[..8].
pub const POSITION_DISCRIMINATOR: [u8; 8] = [0xaa, 0xbc, 0x8f, 0xe4, 0x7a, 0x40, 0xf7, 0xd0];
/// The offers' `liquidity_source`.
pub const LIQUIDITY_SOURCE: &str = "lavarage";
/// `max_open_ltv` when a pool's layout has no `open_ltv` (or it is 0).
pub const DEFAULT_OPEN_LTV: f64 = 0.75;
/// V1's liquidation LTV, fixed by the program.
pub const V1_LIQUIDATION_LTV: f64 = 0.9;
/// V1 lends SOL only.
pub const V1_QUOTE_DECIMALS: u8 = 9;
/// SPL `Mint::LEN`; Token-2022 mints with extensions are longer.
pub const MINT_LEN: usize = 82;
/// SPL `Account::LEN`; Token-2022 accounts with extensions are longer.
pub const TOKEN_ACCOUNT_LEN: usize = 165;

/// Which Lavarage program an account belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Version {
    V1,
    V2,
}

impl Version {
    pub fn program_id(self) -> Pubkey {
        match self {
            Version::V1 => V1_PROGRAM_ID,
            Version::V2 => V2_PROGRAM_ID,
        }
    }

    /// The offers' `source` and backfill scope.
    pub fn source_tag(self) -> &'static str {
        match self {
            Version::V1 => "lavarage-v1",
            Version::V2 => "lavarage-v2",
        }
    }

    /// Shortest Pool the program ever wrote.
    pub fn min_pool_len(self) -> usize {
        match self {
            Version::V1 => 97,
            Version::V2 => 129,
        }
    }

    pub fn min_node_wallet_len(self) -> usize {
        match self {
            // node_operator at 26..58.
            Version::V1 => 58,
            // node_operator at 27..59, mint at 59..91.
            Version::V2 => 91,
        }
    }
}

/// A decoded Pool.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pool {
    pub version: Version,
    /// APR in whole percent.
    pub interest_rate: u8,
    pub collateral_type: Pubkey,
    /// Older layouts only; unused by the rule.
    pub max_borrow: u64,
    pub node_wallet: Pubkey,
    pub max_exposure: u64,
    pub current_exposure: u64,
    /// V1 from 131 bytes (97..129); V2 from 161 bytes (129..161).
    pub feed_id: Option<[u8; 32]>,
    /// V2 quote mint (97..129); V1 lends SOL only.
    pub qt_type: Option<Pubkey>,
    /// Basis points; V1 from 131 bytes (129), V2 from 163 bytes (161).
    pub open_ltv_bps: Option<u16>,
    /// Data length, kept for diagnostics.
    pub len: usize,
}

impl Pool {
    /// The borrow token: wrapped SOL in V1, `qt_type` in V2.
    pub fn quote_mint(&self) -> Pubkey {
        self.qt_type.unwrap_or(WRAPPED_SOL_MINT)
    }
}

/// Decodes a Pool of the given program.
pub fn decode_pool(version: Version, data: &[u8]) -> Result<Pool, DecodeError> {
    check_discriminator(data, &POOL_DISCRIMINATOR)?;
    require_len(data, version.min_pool_len())?;
    let len = data.len();
    let (feed_id, qt_type, open_ltv_bps) = match version {
        Version::V1 if len >= 131 => (
            Some(read_array::<32>(data, 97)?),
            None,
            Some(read_u16(data, 129)?),
        ),
        Version::V1 => (None, None, None),
        Version::V2 => (
            if len >= 161 {
                Some(read_array::<32>(data, 129)?)
            } else {
                None
            },
            Some(read_pubkey(data, 97)?),
            if len >= 163 {
                Some(read_u16(data, 161)?)
            } else {
                None
            },
        ),
    };
    Ok(Pool {
        version,
        interest_rate: read_u8(data, 8)?,
        collateral_type: read_pubkey(data, 9)?,
        max_borrow: read_u64(data, 41)?,
        node_wallet: read_pubkey(data, 49)?,
        max_exposure: read_u64(data, 81)?,
        current_exposure: read_u64(data, 89)?,
        feed_id,
        qt_type,
        open_ltv_bps,
        len,
    })
}

/// A decoded NodeWallet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeWallet {
    pub version: Version,
    pub total_funds: u64,
    pub total_borrowed: u64,
    pub maintenance_ltv: u8,
    /// V1: u8 (unused by the rule); V2: u16, percent when ≤ 100, else bps.
    pub liquidation_ltv: u16,
    pub node_operator: Pubkey,
    /// V2 only: the quote mint.
    pub mint: Option<Pubkey>,
}

/// Decodes a NodeWallet of the given program.
pub fn decode_node_wallet(version: Version, data: &[u8]) -> Result<NodeWallet, DecodeError> {
    check_discriminator(data, &NODE_WALLET_DISCRIMINATOR)?;
    require_len(data, version.min_node_wallet_len())?;
    let (liquidation_ltv, node_operator, mint) = match version {
        Version::V1 => (u16::from(read_u8(data, 25)?), read_pubkey(data, 26)?, None),
        Version::V2 => (
            read_u16(data, 25)?,
            read_pubkey(data, 27)?,
            Some(read_pubkey(data, 59)?),
        ),
    };
    Ok(NodeWallet {
        version,
        total_funds: read_u64(data, 8)?,
        total_borrowed: read_u64(data, 16)?,
        maintenance_ltv: read_u8(data, 24)?,
        liquidation_ltv,
        node_operator,
        mint,
    })
}

/// SPL mint `decimals` (u8 at 44).
pub fn decode_mint_decimals(data: &[u8]) -> Result<u8, DecodeError> {
    require_len(data, MINT_LEN)?;
    read_u8(data, 44)
}

/// The SPL token account fields the rule needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TokenAccount {
    pub mint: Pubkey,
    pub owner: Pubkey,
    pub amount: u64,
}

/// SPL token account: mint 0..32, owner 32..64, amount u64 at 64.
pub fn decode_token_account(data: &[u8]) -> Result<TokenAccount, DecodeError> {
    require_len(data, TOKEN_ACCOUNT_LEN)?;
    Ok(TokenAccount {
        mint: read_pubkey(data, 0)?,
        owner: read_pubkey(data, 32)?,
        amount: read_u64(data, 64)?,
    })
}

/// Rent-exempt minimum balance of an account of `len` data bytes.
pub fn rent_exempt_minimum(len: usize) -> u64 {
    (128u64.saturating_add(len as u64)).saturating_mul(6960)
}

/// The node wallet's associated token accounts for `mint` under both token
/// programs (Token first); either may hold the funds.
pub fn node_wallet_atas(node_wallet: &Pubkey, mint: &Pubkey) -> [Pubkey; 2] {
    [
        associated_token_address(node_wallet, mint, &TOKEN_PROGRAM_ID),
        associated_token_address(node_wallet, mint, &TOKEN_2022_PROGRAM_ID),
    ]
}

/// The `getProgramAccounts` / `programSubscribe` filters of a program's Pool
/// accounts: the discriminator only, since pool sizes vary.
pub fn pool_filters() -> Vec<crate::rpc::Filter> {
    vec![crate::rpc::Filter::Memcmp {
        offset: 0,
        bytes: POOL_DISCRIMINATOR.to_vec(),
    }]
}

/// The filters of a program's NodeWallet accounts.
pub fn node_wallet_filters() -> Vec<crate::rpc::Filter> {
    vec![crate::rpc::Filter::Memcmp {
        offset: 0,
        bytes: NODE_WALLET_DISCRIMINATOR.to_vec(),
    }]
}

/// A node wallet account as fetched: decoded, plus what V1 free funds need.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeWalletAccount {
    pub wallet: NodeWallet,
    pub lamports: u64,
    pub data_len: usize,
}

/// A quote mint as fetched.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MintInfo {
    pub decimals: u8,
    /// The token program owning the mint, which decides the canonical ATA.
    pub token_program: Pubkey,
}

/// Everything the rule looks up besides the pools themselves.
#[derive(Clone, Debug, Default)]
pub struct Lookups {
    pub node_wallets: HashMap<Pubkey, NodeWalletAccount>,
    pub mints: HashMap<Pubkey, MintInfo>,
    /// Token accounts by address (the node wallets' ATAs).
    pub token_accounts: HashMap<Pubkey, TokenAccount>,
}

/// Why a pool produced no offer.
#[derive(Clone, Debug, PartialEq)]
pub enum SkipReason {
    MissingNodeWallet(Pubkey),
    MissingQuoteMint(Pubkey),
    InvalidLtv { open: f64, liquidation: f64 },
    InvalidOffer(String),
}

impl SkipReason {
    /// Stable metric label.
    pub fn label(&self) -> &'static str {
        match self {
            SkipReason::MissingNodeWallet(_) => "missing_node_wallet",
            SkipReason::MissingQuoteMint(_) => "missing_quote_mint",
            SkipReason::InvalidLtv { .. } => "invalid_ltv",
            SkipReason::InvalidOffer(_) => "invalid_offer",
        }
    }
}

impl std::fmt::Display for SkipReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SkipReason::MissingNodeWallet(k) => write!(f, "node wallet {k} not found"),
            SkipReason::MissingQuoteMint(k) => write!(f, "quote mint {k} not found"),
            SkipReason::InvalidLtv { open, liquidation } => write!(
                f,
                "LTVs must satisfy 0 < open < liquidation <= 1, got open {open}, liquidation {liquidation}"
            ),
            SkipReason::InvalidOffer(e) => write!(f, "invalid offer: {e}"),
        }
    }
}

/// A pool that is not an offer, and why.
#[derive(Clone, Debug, PartialEq)]
pub struct Skip {
    pub id: String,
    pub reason: SkipReason,
}

/// Free funds of a pool's lender, in quote base units.
pub fn free_funds(pool: &Pool, nw: &NodeWalletAccount, lookups: &Lookups) -> u64 {
    match pool.version {
        Version::V1 => nw.lamports.saturating_sub(rent_exempt_minimum(nw.data_len)),
        Version::V2 => {
            let mint = pool.quote_mint();
            let atas = node_wallet_atas(&pool.node_wallet, &mint);
            let canonical = lookups.mints.get(&mint).map(|m| m.token_program);
            let balance = |ata: &Pubkey| {
                lookups
                    .token_accounts
                    .get(ata)
                    .filter(|t| t.mint == mint && t.owner == pool.node_wallet)
                    .map(|t| t.amount)
            };
            // The mint's own token program decides the ATA; if the mint's
            // owner is unknown, take whichever ATA exists (Token first).
            let preferred = match canonical {
                Some(p) if p == TOKEN_2022_PROGRAM_ID => balance(&atas[1]),
                Some(p) if p == TOKEN_PROGRAM_ID => balance(&atas[0]),
                _ => None,
            };
            // No ATA yet means nothing deposited: 0, not a skip.
            preferred
                .or_else(|| balance(&atas[0]))
                .or_else(|| balance(&atas[1]))
                .unwrap_or(0)
        }
    }
}

/// The offer of one pool (`solana-sources.md`, "one offer per Pool").
pub fn build_offer(
    address: &Pubkey,
    pool: &Pool,
    lookups: &Lookups,
    default_open_ltv: f64,
) -> Result<MarginOffer, Skip> {
    let skip = |reason| Skip {
        id: address.to_string(),
        reason,
    };
    let nw = lookups
        .node_wallets
        .get(&pool.node_wallet)
        .ok_or_else(|| skip(SkipReason::MissingNodeWallet(pool.node_wallet)))?;
    let quote = pool.quote_mint();
    let decimals = match pool.version {
        Version::V1 => V1_QUOTE_DECIMALS,
        Version::V2 => {
            lookups
                .mints
                .get(&quote)
                .ok_or_else(|| skip(SkipReason::MissingQuoteMint(quote)))?
                .decimals
        }
    };
    let room = pool.max_exposure.saturating_sub(pool.current_exposure);
    let available_base = room.min(free_funds(pool, nw, lookups));
    let available = available_base as f64 / 10f64.powi(i32::from(decimals));
    let open = match pool.open_ltv_bps {
        Some(bps) if bps > 0 => f64::from(bps) / 10_000.0,
        _ => default_open_ltv,
    };
    let liquidation = match pool.version {
        Version::V1 => V1_LIQUIDATION_LTV,
        Version::V2 => match nw.wallet.liquidation_ltv {
            0 => V1_LIQUIDATION_LTV,
            v if v <= 100 => f64::from(v) / 100.0,
            v => f64::from(v) / 10_000.0,
        },
    };
    if !(open > 0.0 && open < liquidation && liquidation <= 1.0) {
        return Err(skip(SkipReason::InvalidLtv { open, liquidation }));
    }
    let offer = MarginOffer {
        id: address.to_string(),
        offer_type: OfferType::LV,
        collateral_token: pool.collateral_type.to_string(),
        borrow_token: quote.to_string(),
        available_borrow_amount: available,
        max_open_ltv: open,
        liquidation_ltv: liquidation,
        interest_rate: f64::from(pool.interest_rate) / 100.0,
        interest_model: InterestModel::Fixed,
        term_days: None,
        liquidity_source: LIQUIDITY_SOURCE.to_owned(),
        lender_address: Some(nw.wallet.node_operator.to_string()),
        last_borrowed_timestamp: None,
        created_timestamp: None,
        updated_timestamp: None,
        source: Some(pool.version.source_tag().to_owned()),
    };
    validate_offer(offer).map_err(|e| skip(SkipReason::InvalidOffer(e.to_string())))
}

/// One offer per pool; pools that cannot become offers come back as skips.
pub fn build_offers(
    pools: &[(Pubkey, Pool)],
    lookups: &Lookups,
    default_open_ltv: f64,
) -> (Vec<MarginOffer>, Vec<Skip>) {
    let mut offers = Vec::with_capacity(pools.len());
    let mut skips = Vec::new();
    for (addr, pool) in pools {
        match build_offer(addr, pool, lookups, default_open_ltv) {
            Ok(o) => offers.push(o),
            Err(s) => skips.push(s),
        }
    }
    (offers, skips)
}

/// Byte-level builders of Lavarage and SPL accounts, for tests here and in
/// other crates (test RPC servers serve what these build).
pub mod build {
    use super::*;

    /// Pool bytes of `len` (≥ the version's minimum), fields at the spec's
    /// offsets; `open_ltv_bps` is written only where the layout has it.
    #[allow(clippy::too_many_arguments)]
    pub fn pool(
        version: Version,
        len: usize,
        interest_rate: u8,
        collateral: &Pubkey,
        node_wallet: &Pubkey,
        max_exposure: u64,
        current_exposure: u64,
        qt_type: Option<&Pubkey>,
        open_ltv_bps: u16,
    ) -> Vec<u8> {
        let mut d = vec![0u8; len.max(version.min_pool_len())];
        d[..8].copy_from_slice(&POOL_DISCRIMINATOR);
        d[8] = interest_rate;
        d[9..41].copy_from_slice(&collateral.0);
        d[41..49].copy_from_slice(&12_345u64.to_le_bytes());
        d[49..81].copy_from_slice(&node_wallet.0);
        d[81..89].copy_from_slice(&max_exposure.to_le_bytes());
        d[89..97].copy_from_slice(&current_exposure.to_le_bytes());
        match version {
            Version::V1 => {
                if d.len() >= 131 {
                    d[97..129].copy_from_slice(&[0xfe; 32]);
                    d[129..131].copy_from_slice(&open_ltv_bps.to_le_bytes());
                }
            }
            Version::V2 => {
                if let Some(q) = qt_type {
                    d[97..129].copy_from_slice(&q.0);
                }
                if d.len() >= 161 {
                    d[129..161].copy_from_slice(&[0xfe; 32]);
                }
                if d.len() >= 163 {
                    d[161..163].copy_from_slice(&open_ltv_bps.to_le_bytes());
                }
            }
        }
        d
    }

    /// NodeWallet bytes (V1 58 + spare, V2 91 + spare).
    pub fn node_wallet(
        version: Version,
        total_funds: u64,
        total_borrowed: u64,
        liquidation_ltv: u16,
        operator: &Pubkey,
        mint: Option<&Pubkey>,
    ) -> Vec<u8> {
        let len = match version {
            Version::V1 => 58 + 8,
            Version::V2 => 91 + 8,
        };
        let mut d = vec![0u8; len];
        d[..8].copy_from_slice(&NODE_WALLET_DISCRIMINATOR);
        d[8..16].copy_from_slice(&total_funds.to_le_bytes());
        d[16..24].copy_from_slice(&total_borrowed.to_le_bytes());
        d[24] = 80;
        match version {
            Version::V1 => {
                d[25] = u8::try_from(liquidation_ltv).unwrap_or(u8::MAX);
                d[26..58].copy_from_slice(&operator.0);
            }
            Version::V2 => {
                d[25..27].copy_from_slice(&liquidation_ltv.to_le_bytes());
                d[27..59].copy_from_slice(&operator.0);
                if let Some(m) = mint {
                    d[59..91].copy_from_slice(&m.0);
                }
            }
        }
        d
    }

    /// An 82-byte initialized SPL mint.
    pub fn mint(decimals: u8) -> Vec<u8> {
        let mut d = vec![0u8; MINT_LEN];
        d[36..44].copy_from_slice(&1_000_000_000u64.to_le_bytes());
        d[44] = decimals;
        d[45] = 1;
        d
    }

    /// A 165-byte initialized SPL token account.
    pub fn token_account(mint: &Pubkey, owner: &Pubkey, amount: u64) -> Vec<u8> {
        let mut d = vec![0u8; TOKEN_ACCOUNT_LEN];
        d[..32].copy_from_slice(&mint.0);
        d[32..64].copy_from_slice(&owner.0);
        d[64..72].copy_from_slice(&amount.to_le_bytes());
        d[108] = 1;
        d
    }
}

#[cfg(test)]
mod tests {
    use super::build;
    use super::*;

    fn key(b: u8) -> Pubkey {
        Pubkey([b; 32])
    }

    fn v1_lookups(nw: &Pubkey, lamports: u64) -> Lookups {
        let mut l = Lookups::default();
        let data = build::node_wallet(Version::V1, 0, 0, 90, &key(0x0e), None);
        l.node_wallets.insert(
            *nw,
            NodeWalletAccount {
                wallet: decode_node_wallet(Version::V1, &data).unwrap_or_else(|e| panic!("{e}")),
                lamports,
                data_len: data.len(),
            },
        );
        l
    }

    #[test]
    fn discriminators_are_anchor_hashes() {
        use sha2::{Digest, Sha256};
        for (name, d) in [
            ("Pool", POOL_DISCRIMINATOR),
            ("NodeWallet", NODE_WALLET_DISCRIMINATOR),
            ("Position", POSITION_DISCRIMINATOR),
        ] {
            let h = Sha256::digest(format!("account:{name}").as_bytes());
            assert_eq!(&h[..8], &d, "{name}");
        }
    }

    #[test]
    fn v1_115_byte_pool() -> Result<(), DecodeError> {
        let d = build::pool(
            Version::V1,
            115,
            69,
            &key(1),
            &key(2),
            50_000_000_000,
            20_000_000_000,
            None,
            0,
        );
        let p = decode_pool(Version::V1, &d)?;
        assert_eq!(p.interest_rate, 69);
        assert_eq!(p.collateral_type, key(1));
        assert_eq!(p.max_borrow, 12_345);
        assert_eq!(p.node_wallet, key(2));
        assert_eq!(p.max_exposure, 50_000_000_000);
        assert_eq!(p.current_exposure, 20_000_000_000);
        assert_eq!((p.feed_id, p.qt_type, p.open_ltv_bps), (None, None, None));
        assert_eq!(p.quote_mint(), WRAPPED_SOL_MINT);

        // Node wallet 66 bytes: rent = (128 + 66) × 6960 = 1_350_240 lamports.
        // Lamports 10_001_350_240 → free 10_000_000_000; room 30e9 → 10 SOL.
        let l = v1_lookups(&key(2), 10_001_350_240);
        let o = build_offer(&key(9), &p, &l, DEFAULT_OPEN_LTV)
            .map_err(|s| DecodeError::Invalid(s.reason.to_string()))?;
        assert_eq!(o.id, key(9).to_string());
        assert_eq!(o.offer_type, OfferType::LV);
        assert_eq!(o.collateral_token, key(1).to_string());
        assert_eq!(
            o.borrow_token,
            "So11111111111111111111111111111111111111112"
        );
        assert_eq!(o.available_borrow_amount, 10.0);
        assert_eq!(o.max_open_ltv, 0.75);
        assert_eq!(o.liquidation_ltv, 0.9);
        assert_eq!(o.interest_rate, 0.69);
        assert_eq!(o.interest_model, InterestModel::Fixed);
        assert_eq!(o.liquidity_source, "lavarage");
        assert_eq!(o.lender_address, Some(key(0x0e).to_string()));
        assert_eq!(o.source.as_deref(), Some("lavarage-v1"));
        Ok(())
    }

    #[test]
    fn v1_131_byte_pool_has_open_ltv() -> Result<(), DecodeError> {
        let d = build::pool(
            Version::V1,
            131,
            5,
            &key(1),
            &key(2),
            3_000_000_000,
            500_000_000,
            None,
            6_500,
        );
        let p = decode_pool(Version::V1, &d)?;
        assert_eq!(p.feed_id, Some([0xfe; 32]));
        assert_eq!(p.open_ltv_bps, Some(6_500));
        // Room 2.5e9 < free (100e9 − 1_350_240): 2.5 SOL.
        let l = v1_lookups(&key(2), 100_000_000_000);
        let o = build_offer(&key(9), &p, &l, DEFAULT_OPEN_LTV)
            .map_err(|s| DecodeError::Invalid(s.reason.to_string()))?;
        assert_eq!(o.available_borrow_amount, 2.5);
        assert_eq!(o.max_open_ltv, 0.65);
        assert_eq!(o.interest_rate, 0.05);
        // Lamports below rent: no free funds at all.
        let l = v1_lookups(&key(2), 1_000);
        let o = build_offer(&key(9), &p, &l, DEFAULT_OPEN_LTV)
            .map_err(|s| DecodeError::Invalid(s.reason.to_string()))?;
        assert_eq!(o.available_borrow_amount, 0.0);
        Ok(())
    }

    fn v2_lookups(pool_nw: &Pubkey, liq: u16, amount: Option<u64>, program: Pubkey) -> Lookups {
        let usdc = key(0x55);
        let mut l = Lookups::default();
        let data = build::node_wallet(Version::V2, 0, 0, liq, &key(0x0e), Some(&usdc));
        l.node_wallets.insert(
            *pool_nw,
            NodeWalletAccount {
                wallet: decode_node_wallet(Version::V2, &data).unwrap_or_else(|e| panic!("{e}")),
                lamports: 1,
                data_len: data.len(),
            },
        );
        l.mints.insert(
            usdc,
            MintInfo {
                decimals: decode_mint_decimals(&build::mint(6)).unwrap_or_else(|e| panic!("{e}")),
                token_program: program,
            },
        );
        if let Some(a) = amount {
            let ata = associated_token_address(pool_nw, &usdc, &program);
            let t = decode_token_account(&build::token_account(&usdc, pool_nw, a))
                .unwrap_or_else(|e| panic!("{e}"));
            l.token_accounts.insert(ata, t);
        }
        l
    }

    #[test]
    fn v2_147_byte_pool() -> Result<(), DecodeError> {
        let usdc = key(0x55);
        let d = build::pool(
            Version::V2,
            147,
            12,
            &key(1),
            &key(2),
            1_000_000_000,
            250_000_000,
            Some(&usdc),
            0,
        );
        let p = decode_pool(Version::V2, &d)?;
        assert_eq!(p.qt_type, Some(usdc));
        assert_eq!((p.feed_id, p.open_ltv_bps), (None, None));
        // Room 750 USDC, ATA balance 400.5 USDC (Token program) → 400.5.
        let l = v2_lookups(&key(2), 85, Some(400_500_000), TOKEN_PROGRAM_ID);
        let o = build_offer(&key(9), &p, &l, DEFAULT_OPEN_LTV)
            .map_err(|s| DecodeError::Invalid(s.reason.to_string()))?;
        assert_eq!(o.borrow_token, usdc.to_string());
        assert_eq!(o.available_borrow_amount, 400.5);
        assert_eq!(o.max_open_ltv, 0.75);
        assert_eq!(o.liquidation_ltv, 0.85);
        assert_eq!(o.interest_rate, 0.12);
        assert_eq!(o.source.as_deref(), Some("lavarage-v2"));
        // No ATA at all: nothing deposited, 0 available.
        let l = v2_lookups(&key(2), 85, None, TOKEN_PROGRAM_ID);
        let o = build_offer(&key(9), &p, &l, DEFAULT_OPEN_LTV)
            .map_err(|s| DecodeError::Invalid(s.reason.to_string()))?;
        assert_eq!(o.available_borrow_amount, 0.0);
        Ok(())
    }

    #[test]
    fn v2_163_byte_pool_token_2022_and_bps_liquidation() -> Result<(), DecodeError> {
        let usdc = key(0x55);
        let d = build::pool(
            Version::V2,
            163,
            30,
            &key(1),
            &key(2),
            2_000_000,
            1_000_000,
            Some(&usdc),
            7_000,
        );
        let p = decode_pool(Version::V2, &d)?;
        assert_eq!(p.feed_id, Some([0xfe; 32]));
        assert_eq!(p.open_ltv_bps, Some(7_000));
        // Room 1 USDC < ATA 5 USDC (Token-2022) → 1.0; liquidation 9_250 bps.
        let l = v2_lookups(&key(2), 9_250, Some(5_000_000), TOKEN_2022_PROGRAM_ID);
        let o = build_offer(&key(9), &p, &l, DEFAULT_OPEN_LTV)
            .map_err(|s| DecodeError::Invalid(s.reason.to_string()))?;
        assert_eq!(o.available_borrow_amount, 1.0);
        assert_eq!(o.max_open_ltv, 0.7);
        assert_eq!(o.liquidation_ltv, 0.925);
        // liquidation 0 → 0.9.
        let l = v2_lookups(&key(2), 0, Some(5_000_000), TOKEN_2022_PROGRAM_ID);
        let o = build_offer(&key(9), &p, &l, DEFAULT_OPEN_LTV)
            .map_err(|s| DecodeError::Invalid(s.reason.to_string()))?;
        assert_eq!(o.liquidation_ltv, 0.9);
        Ok(())
    }

    #[test]
    fn skips_with_reasons() -> Result<(), DecodeError> {
        let usdc = key(0x55);
        let d = build::pool(
            Version::V2,
            163,
            30,
            &key(1),
            &key(2),
            2_000_000,
            1_000_000,
            Some(&usdc),
            7_000,
        );
        let p = decode_pool(Version::V2, &d)?;
        let none = Lookups::default();
        let e = build_offer(&key(9), &p, &none, DEFAULT_OPEN_LTV);
        assert!(matches!(
            e,
            Err(Skip {
                reason: SkipReason::MissingNodeWallet(_),
                ..
            })
        ));
        let mut l = v2_lookups(&key(2), 85, None, TOKEN_PROGRAM_ID);
        l.mints.clear();
        let e = build_offer(&key(9), &p, &l, DEFAULT_OPEN_LTV);
        assert!(matches!(
            e,
            Err(Skip {
                reason: SkipReason::MissingQuoteMint(_),
                ..
            })
        ));
        // open 0.70 ≥ liquidation 0.60 → invalid.
        let l = v2_lookups(&key(2), 60, None, TOKEN_PROGRAM_ID);
        let e = build_offer(&key(9), &p, &l, DEFAULT_OPEN_LTV);
        assert!(matches!(
            e,
            Err(Skip {
                reason: SkipReason::InvalidLtv { .. },
                ..
            })
        ));
        // liquidation 150 % (> 100 → bps 0.015) < open → invalid too.
        let l = v2_lookups(&key(2), 150, None, TOKEN_PROGRAM_ID);
        let (offers, skips) = build_offers(&[(key(9), p)], &l, DEFAULT_OPEN_LTV);
        assert!(offers.is_empty());
        assert_eq!(skips[0].reason.label(), "invalid_ltv");
        Ok(())
    }

    #[test]
    fn malformed_accounts_are_errors() {
        let d = build::pool(
            Version::V2,
            147,
            1,
            &key(1),
            &key(2),
            1,
            0,
            Some(&key(3)),
            0,
        );
        assert!(matches!(
            decode_pool(Version::V2, &d[..128]),
            Err(DecodeError::TooShort {
                need: 129,
                got: 128
            })
        ));
        assert!(decode_pool(Version::V1, &d[..97]).is_ok());
        let mut bad = d.clone();
        bad[0] ^= 1;
        assert!(matches!(
            decode_pool(Version::V2, &bad),
            Err(DecodeError::WrongDiscriminator { .. })
        ));
        let nw = build::node_wallet(Version::V2, 1, 2, 85, &key(4), Some(&key(3)));
        assert!(decode_pool(Version::V2, &nw).is_err());
        assert!(decode_node_wallet(Version::V2, &nw[..90]).is_err());
        assert!(decode_mint_decimals(&[0; 81]).is_err());
        assert!(decode_token_account(&[0; 164]).is_err());
    }

    #[test]
    fn node_wallet_fields() -> Result<(), DecodeError> {
        let nw = build::node_wallet(Version::V2, 7, 3, 9_000, &key(4), Some(&key(3)));
        let w = decode_node_wallet(Version::V2, &nw)?;
        assert_eq!(
            (
                w.total_funds,
                w.total_borrowed,
                w.maintenance_ltv,
                w.liquidation_ltv
            ),
            (7, 3, 80, 9_000)
        );
        assert_eq!((w.node_operator, w.mint), (key(4), Some(key(3))));
        let nw = build::node_wallet(Version::V1, 7, 3, 90, &key(4), None);
        let w = decode_node_wallet(Version::V1, &nw)?;
        assert_eq!(
            (w.liquidation_ltv, w.node_operator, w.mint),
            (90, key(4), None)
        );
        assert_eq!(rent_exempt_minimum(0), 890_880);
        Ok(())
    }

    proptest::proptest! {
        #[test]
        fn decoders_never_panic(data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300), disc in 0usize..3) {
            let mut data = data;
            let d = [POOL_DISCRIMINATOR, NODE_WALLET_DISCRIMINATOR, POSITION_DISCRIMINATOR][disc];
            if data.len() >= 8 { data[..8].copy_from_slice(&d); }
            for v in [Version::V1, Version::V2] {
                let _ = decode_pool(v, &data);
                let _ = decode_node_wallet(v, &data);
            }
            let _ = decode_mint_decimals(&data);
            let _ = decode_token_account(&data);
        }
    }
}
