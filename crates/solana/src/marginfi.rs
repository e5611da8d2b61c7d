//! marginfi v2: Bank and MarginfiGroup decoders and the one-offer-per-bank-pair
//! rule (`shared/spec/solana-sources.md`, marginfi section).
//!
//! Both accounts are zero-copy (fixed layout), so every field is read at its
//! absolute offset; offsets include the 8-byte discriminator. I80F48 values
//! are converted to f64 (raw / 2^48) at decode time, since every derived
//! figure is computed in f64 anyway.

use crate::decode::{
    DecodeError, check_discriminator, check_owner, read_i64, read_i80f48, read_pubkey, read_u8,
    read_u16, read_u32, read_u64,
};
use crate::pubkey::Pubkey;
use offer_domain::{InterestModel, MarginOffer, OfferType};

/// The marginfi v2 program (the `MFv2hKfKT5…` id of older notes is wrong).
pub const PROGRAM_ID: Pubkey =
    Pubkey::from_str_const("MFv2hWf31Z9kbCa1snEPYctwafyhdvnV7FZnsebVacA");
/// The main group, used when a job names none.
pub const MAIN_GROUP: Pubkey =
    Pubkey::from_str_const("4qp6Fx6tnZkY5Wropq9wUYgtFxXKwE6viZxFHg3rdAG8");
pub const BANK_LEN: usize = 1864;
pub const GROUP_LEN: usize = 1064;
pub const BANK_DISCRIMINATOR: [u8; 8] = [0x8e, 0x31, 0xa6, 0xf2, 0x32, 0x42, 0x61, 0xbc];
pub const GROUP_DISCRIMINATOR: [u8; 8] = [0xb6, 0x17, 0xad, 0xf0, 0x97, 0xce, 0xb6, 0x43];
/// The offers' `source` (backfill scope) and `liquidity_source`.
pub const SOURCE_TAG: &str = "marginfi";
/// `borrow_limit` value meaning "no limit".
pub const NO_BORROW_LIMIT: u64 = u64::MAX;
/// Asset tags whose banks never take part in pairs (Kamino, Drift, Solend:
/// positions in other protocols, not plain lendable tokens).
pub const EXCLUDED_ASSET_TAGS: [u8; 3] = [3, 4, 5];
pub const EMODE_ENTRIES: usize = 10;
pub const CURVE_POINTS: usize = 5;

/// A bank's `operational_state`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum OperationalState {
    Paused,
    Operational,
    ReduceOnly,
    KilledByBankruptcy,
    /// A value the spec does not know; never eligible.
    Unknown(u8),
}

impl From<u8> for OperationalState {
    fn from(v: u8) -> Self {
        match v {
            0 => OperationalState::Paused,
            1 => OperationalState::Operational,
            2 => OperationalState::ReduceOnly,
            3 => OperationalState::KilledByBankruptcy,
            other => OperationalState::Unknown(other),
        }
    }
}

/// A bank's `risk_tier`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RiskTier {
    Collateral,
    /// Borrow-only: never counts as collateral.
    Isolated,
    Unknown(u8),
}

impl From<u8> for RiskTier {
    fn from(v: u8) -> Self {
        match v {
            0 => RiskTier::Collateral,
            1 => RiskTier::Isolated,
            other => RiskTier::Unknown(other),
        }
    }
}

/// Which interest-rate curve a bank uses (`curve_type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CurveType {
    /// optimal_utilization_rate / plateau / max.
    Legacy,
    /// zero_util_rate, up to five points, hundred_util_rate.
    SevenPoint,
    /// Unknown values fall back to the legacy fields: they are the ones every
    /// bank has always carried.
    Unknown(u8),
}

impl From<u8> for CurveType {
    fn from(v: u8) -> Self {
        match v {
            0 => CurveType::Legacy,
            1 => CurveType::SevenPoint,
            other => CurveType::Unknown(other),
        }
    }
}

/// One point of the seven-point curve, raw u32 fractions of `u32::MAX`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CurvePoint {
    /// Utilisation = util / u32::MAX; 0 marks an unused slot.
    pub util: u32,
    /// APR = rate / u32::MAX × 10.
    pub rate: u32,
}

impl CurvePoint {
    pub fn util_f64(self) -> f64 {
        f64::from(self.util) / f64::from(u32::MAX)
    }
    pub fn rate_apr(self) -> f64 {
        rate_u32_to_apr(self.rate)
    }
}

/// The seven-point curve's rate encoding: v / u32::MAX × 10 (up to 1000 % APR).
pub fn rate_u32_to_apr(v: u32) -> f64 {
    f64::from(v) / f64::from(u32::MAX) * 10.0
}

/// One emode entry of a bank: the weights it grants collateral banks whose
/// `emode_tag` equals `tag`.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct EmodeEntry {
    pub tag: u16,
    pub asset_weight_init: f64,
    pub asset_weight_maint: f64,
}

/// A decoded marginfi Bank (I80F48 fields as f64).
#[derive(Clone, Debug, PartialEq)]
pub struct Bank {
    pub mint: Pubkey,
    pub mint_decimals: u8,
    pub group: Pubkey,
    pub asset_share_value: f64,
    pub liability_share_value: f64,
    pub total_liability_shares: f64,
    pub total_asset_shares: f64,
    /// Unix seconds of the last accrual; figures are as of this time.
    pub last_update: i64,
    pub asset_weight_init: f64,
    pub asset_weight_maint: f64,
    pub liability_weight_init: f64,
    pub liability_weight_maint: f64,
    pub deposit_limit: u64,
    pub optimal_utilization_rate: f64,
    pub plateau_interest_rate: f64,
    pub max_interest_rate: f64,
    pub insurance_fee_fixed_apr: f64,
    pub insurance_ir_fee: f64,
    pub protocol_fixed_fee_apr: f64,
    pub protocol_ir_fee: f64,
    pub zero_util_rate: u32,
    pub hundred_util_rate: u32,
    pub curve_points: [CurvePoint; CURVE_POINTS],
    pub curve_type: CurveType,
    pub operational_state: OperationalState,
    /// `u64::MAX` = no limit.
    pub borrow_limit: u64,
    pub risk_tier: RiskTier,
    pub asset_tag: u8,
    pub emode_tag: u16,
    pub emode_entries: [EmodeEntry; EMODE_ENTRIES],
}

/// A decoded MarginfiGroup: the program fees it adds to every bank's APR.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Group {
    /// Group flag bit 0.
    pub program_fees_enabled: bool,
    pub program_fee_fixed: f64,
    pub program_fee_rate: f64,
}

/// An account that is not an offer, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Skip {
    pub id: String,
    pub reason: String,
}

/// Checks that an account is owned by the marginfi program. Decoding itself
/// ignores the owner (fixtures and test programs rewrite it).
pub fn check_marginfi_owner(owner: &Pubkey) -> Result<(), DecodeError> {
    check_owner(owner, &PROGRAM_ID)
}

/// Decodes a Bank: exactly [`BANK_LEN`] bytes with the Bank discriminator.
pub fn decode_bank(data: &[u8]) -> Result<Bank, DecodeError> {
    check_discriminator(data, &BANK_DISCRIMINATOR)?;
    check_exact_len(data, BANK_LEN, "Bank")?;
    let mut curve_points = [CurvePoint::default(); CURVE_POINTS];
    for (i, p) in curve_points.iter_mut().enumerate() {
        let off = 504 + 8 * i;
        *p = CurvePoint {
            util: read_u32(data, off)?,
            rate: read_u32(data, off + 4)?,
        };
    }
    let mut emode_entries = [EmodeEntry::default(); EMODE_ENTRIES];
    for (i, e) in emode_entries.iter_mut().enumerate() {
        let off = 944 + 40 * i;
        *e = EmodeEntry {
            tag: read_u16(data, off)?,
            asset_weight_init: read_i80f48(data, off + 8)?,
            asset_weight_maint: read_i80f48(data, off + 24)?,
        };
    }
    Ok(Bank {
        mint: read_pubkey(data, 8)?,
        mint_decimals: read_u8(data, 40)?,
        group: read_pubkey(data, 41)?,
        asset_share_value: read_i80f48(data, 80)?,
        liability_share_value: read_i80f48(data, 96)?,
        total_liability_shares: read_i80f48(data, 256)?,
        total_asset_shares: read_i80f48(data, 272)?,
        last_update: read_i64(data, 288)?,
        asset_weight_init: read_i80f48(data, 296)?,
        asset_weight_maint: read_i80f48(data, 312)?,
        liability_weight_init: read_i80f48(data, 328)?,
        liability_weight_maint: read_i80f48(data, 344)?,
        deposit_limit: read_u64(data, 360)?,
        optimal_utilization_rate: read_i80f48(data, 368)?,
        plateau_interest_rate: read_i80f48(data, 384)?,
        max_interest_rate: read_i80f48(data, 400)?,
        insurance_fee_fixed_apr: read_i80f48(data, 416)?,
        insurance_ir_fee: read_i80f48(data, 432)?,
        protocol_fixed_fee_apr: read_i80f48(data, 448)?,
        protocol_ir_fee: read_i80f48(data, 464)?,
        zero_util_rate: read_u32(data, 496)?,
        hundred_util_rate: read_u32(data, 500)?,
        curve_points,
        curve_type: read_u8(data, 544)?.into(),
        operational_state: read_u8(data, 608)?.into(),
        borrow_limit: read_u64(data, 776)?,
        risk_tier: read_u8(data, 784)?.into(),
        asset_tag: read_u8(data, 785)?,
        emode_tag: read_u16(data, 920)?,
        emode_entries,
    })
}

/// Decodes a MarginfiGroup: exactly [`GROUP_LEN`] bytes with its discriminator.
pub fn decode_group(data: &[u8]) -> Result<Group, DecodeError> {
    check_discriminator(data, &GROUP_DISCRIMINATOR)?;
    check_exact_len(data, GROUP_LEN, "MarginfiGroup")?;
    Ok(Group {
        program_fees_enabled: read_u64(data, 40)? & 1 == 1,
        program_fee_fixed: read_i80f48(data, 80)?,
        program_fee_rate: read_i80f48(data, 96)?,
    })
}

/// Zero-copy accounts never grow: any other length is not this account.
fn check_exact_len(data: &[u8], len: usize, what: &str) -> Result<(), DecodeError> {
    if data.len() < len {
        return Err(DecodeError::TooShort {
            need: len,
            got: data.len(),
        });
    }
    if data.len() > len {
        return Err(DecodeError::Invalid(format!(
            "{what} must be {len} bytes, got {}",
            data.len()
        )));
    }
    Ok(())
}

impl Bank {
    /// Native units, as of `last_update` (not projected forward).
    pub fn deposits(&self) -> f64 {
        self.total_asset_shares * self.asset_share_value
    }

    /// Native units, as of `last_update`.
    pub fn borrows(&self) -> f64 {
        self.total_liability_shares * self.liability_share_value
    }

    /// borrows / deposits; 0 for an empty bank.
    pub fn utilization(&self) -> f64 {
        let d = self.deposits();
        if d == 0.0 { 0.0 } else { self.borrows() / d }
    }

    /// The curve's rate at the current utilisation, before fees.
    pub fn base_rate(&self) -> f64 {
        let u = self.utilization();
        match self.curve_type {
            CurveType::SevenPoint => self.seven_point_rate(u),
            CurveType::Legacy | CurveType::Unknown(_) => self.legacy_rate(u),
        }
    }

    fn legacy_rate(&self, u: f64) -> f64 {
        let (o, p, m) = (
            self.optimal_utilization_rate,
            self.plateau_interest_rate,
            self.max_interest_rate,
        );
        if o == 0.0 {
            0.0
        } else if u <= o {
            u / o * p
        } else {
            p + (u - o) / (1.0 - o) * (m - p)
        }
    }

    /// Linear interpolation through (0, zero), the used points in order, and
    /// (1, hundred); at or past full utilisation the hundred rate.
    fn seven_point_rate(&self, u: f64) -> f64 {
        let hundred = rate_u32_to_apr(self.hundred_util_rate);
        if u >= 1.0 {
            return hundred;
        }
        let mut prev = (0.0, rate_u32_to_apr(self.zero_util_rate));
        let used = self
            .curve_points
            .iter()
            .filter(|p| p.util != 0)
            .map(|p| (p.util_f64(), p.rate_apr()));
        for next in used.chain(std::iter::once((1.0, hundred))) {
            if u <= next.0 {
                return if next.0 == prev.0 {
                    prev.1
                } else {
                    prev.1 + (u - prev.0) / (next.0 - prev.0) * (next.1 - prev.1)
                };
            }
            prev = next;
        }
        hundred
    }

    /// Borrow APR with the bank's fees and, when the group enables them, the
    /// program fees.
    pub fn borrow_apr(&self, group: Option<&Group>) -> f64 {
        let (f_rate, f_fixed) = match group {
            Some(g) if g.program_fees_enabled => (g.program_fee_rate, g.program_fee_fixed),
            _ => (0.0, 0.0),
        };
        self.base_rate() * (1.0 + self.insurance_ir_fee + self.protocol_ir_fee + f_rate)
            + self.insurance_fee_fixed_apr
            + self.protocol_fixed_fee_apr
            + f_fixed
    }

    /// Whole tokens that can still be borrowed: free liquidity, capped by
    /// what the borrow limit leaves.
    pub fn available_to_borrow(&self) -> f64 {
        let borrows = self.borrows();
        let mut native = (self.deposits() - borrows).max(0.0);
        if self.borrow_limit != NO_BORROW_LIMIT {
            native = native.min((self.borrow_limit as f64 - borrows).max(0.0));
        }
        native / 10f64.powi(i32::from(self.mint_decimals))
    }

    /// The emode entry for a collateral bank's tag; tag 0 means no emode.
    pub fn emode_entry(&self, collateral_tag: u16) -> Option<&EmodeEntry> {
        if collateral_tag == 0 {
            return None;
        }
        self.emode_entries.iter().find(|e| e.tag == collateral_tag)
    }

    fn excluded_tag(&self) -> bool {
        EXCLUDED_ASSET_TAGS.contains(&self.asset_tag)
    }

    /// Eligible as the collateral side C of a pair.
    pub fn can_be_collateral(&self) -> bool {
        self.risk_tier == RiskTier::Collateral
            && self.operational_state == OperationalState::Operational
            && !self.excluded_tag()
    }

    /// Eligible as the borrow side B of a pair.
    pub fn can_be_borrowed(&self) -> bool {
        self.operational_state == OperationalState::Operational
            && self.borrow_limit != 0
            && !self.excluded_tag()
    }
}

/// The `getProgramAccounts` / `programSubscribe` filters of the banks of
/// one group: Bank discriminator and the group at offset 41.
pub fn bank_filters(group: &Pubkey) -> Vec<crate::rpc::Filter> {
    vec![
        crate::rpc::Filter::Memcmp {
            offset: 0,
            bytes: BANK_DISCRIMINATOR.to_vec(),
        },
        crate::rpc::Filter::Memcmp {
            offset: 41,
            bytes: group.0.to_vec(),
        },
    ]
}

/// [`build_offers_in_group`] for the main group ([`MAIN_GROUP`]).
pub fn build_offers(
    group: Option<&Group>,
    banks: &[(Pubkey, Bank)],
) -> (Vec<MarginOffer>, Vec<Skip>) {
    build_offers_in_group(&MAIN_GROUP, group, banks)
}

/// One offer per eligible ordered pair (C, B), C ≠ B, of the banks whose
/// `group` is `group_address`; banks of other groups are ignored, since
/// marginfi never lets a position mix groups. `group` supplies the program
/// fees (none when `None`). Pairs whose LTVs are not
/// 0 < open < liquidation ≤ 1 come back as skips.
pub fn build_offers_in_group(
    group_address: &Pubkey,
    group: Option<&Group>,
    banks: &[(Pubkey, Bank)],
) -> (Vec<MarginOffer>, Vec<Skip>) {
    let mut offers = Vec::new();
    let mut skips = Vec::new();
    let in_group = || banks.iter().filter(|(_, b)| b.group == *group_address);
    for (c_addr, c) in in_group().filter(|(_, b)| b.can_be_collateral()) {
        for (b_addr, b) in in_group().filter(|(_, b)| b.can_be_borrowed()) {
            if c_addr == b_addr {
                continue;
            }
            let id = format!("marginfi:{c_addr}:{b_addr}");
            let (mut w_init, mut w_maint) = (c.asset_weight_init, c.asset_weight_maint);
            if let Some(e) = b.emode_entry(c.emode_tag) {
                // Emode only ever raises the collateral weight.
                w_init = w_init.max(e.asset_weight_init);
                w_maint = w_maint.max(e.asset_weight_maint);
            }
            let open = w_init / b.liability_weight_init;
            let liq = w_maint / b.liability_weight_maint;
            // Written so NaN (a zero weight over zero) fails too.
            if !(open > 0.0 && open < liq && liq <= 1.0) {
                skips.push(Skip {
                    id,
                    reason: format!(
                        "LTVs out of range: open {open} and liquidation {liq} must satisfy 0 < open < liquidation <= 1"
                    ),
                });
                continue;
            }
            offers.push(MarginOffer {
                id,
                offer_type: OfferType::V1,
                collateral_token: c.mint.to_string(),
                borrow_token: b.mint.to_string(),
                available_borrow_amount: b.available_to_borrow(),
                max_open_ltv: open,
                liquidation_ltv: liq,
                interest_rate: b.borrow_apr(group),
                interest_model: InterestModel::Floating,
                term_days: None,
                liquidity_source: SOURCE_TAG.to_owned(),
                lender_address: None,
                last_borrowed_timestamp: None,
                created_timestamp: None,
                updated_timestamp: None,
                source: Some(SOURCE_TAG.to_owned()),
            });
        }
    }
    (offers, skips)
}
