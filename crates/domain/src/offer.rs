//! The margin offer and its parts.

use crate::error::FieldError;
use crate::time::Timestamp;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum OfferType {
    V1,
    BP,
    LV,
}

impl OfferType {
    pub const ALL: [OfferType; 3] = [OfferType::V1, OfferType::BP, OfferType::LV];

    pub fn as_str(self) -> &'static str {
        match self {
            OfferType::V1 => "V1",
            OfferType::BP => "BP",
            OfferType::LV => "LV",
        }
    }

    /// Parses the wire spelling; the error names `field`.
    pub fn parse_field(s: &str, field: &str) -> Result<Self, FieldError> {
        s.parse()
            .map_err(|()| FieldError::new(field, format!("must be V1, BP or LV, got {s:?}")))
    }
}

impl FromStr for OfferType {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        match s {
            "V1" => Ok(OfferType::V1),
            "BP" => Ok(OfferType::BP),
            "LV" => Ok(OfferType::LV),
            _ => Err(()),
        }
    }
}

impl fmt::Display for OfferType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum InterestModel {
    Fixed,
    Floating,
}

impl InterestModel {
    pub fn as_str(self) -> &'static str {
        match self {
            InterestModel::Fixed => "fixed",
            InterestModel::Floating => "floating",
        }
    }

    pub fn parse_field(s: &str, field: &str) -> Result<Self, FieldError> {
        s.parse()
            .map_err(|()| FieldError::new(field, format!("must be fixed or floating, got {s:?}")))
    }
}

impl FromStr for InterestModel {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        match s {
            "fixed" => Ok(InterestModel::Fixed),
            "floating" => Ok(InterestModel::Floating),
            _ => Err(()),
        }
    }
}

impl fmt::Display for InterestModel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One offer of margin liquidity.
///
/// `created_timestamp` and `updated_timestamp` are managed by the store: on
/// input they are hints (a past `created_timestamp` is honoured for new ids),
/// on output they are always set.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MarginOffer {
    pub id: String,
    pub offer_type: OfferType,
    pub collateral_token: String,
    pub borrow_token: String,
    /// Whole units of the borrow token (decimals applied).
    pub available_borrow_amount: f64,
    pub max_open_ltv: f64,
    pub liquidation_ltv: f64,
    /// Annual rate as a fraction (0.05 = 5 % APR).
    pub interest_rate: f64,
    pub interest_model: InterestModel,
    pub term_days: Option<i32>,
    pub liquidity_source: String,
    pub lender_address: Option<String>,
    pub last_borrowed_timestamp: Option<Timestamp>,
    pub created_timestamp: Option<Timestamp>,
    pub updated_timestamp: Option<Timestamp>,
    /// Which process produced the offer; backfill scopes are keyed on it.
    pub source: Option<String>,
}

impl MarginOffer {
    /// True when everything but the two store-managed timestamps is equal.
    /// Such a write is *unchanged*: it bumps nothing and emits no change.
    pub fn same_content(&self, other: &MarginOffer) -> bool {
        self.id == other.id
            && self.offer_type == other.offer_type
            && self.collateral_token == other.collateral_token
            && self.borrow_token == other.borrow_token
            && self.available_borrow_amount.to_bits() == other.available_borrow_amount.to_bits()
            && self.max_open_ltv.to_bits() == other.max_open_ltv.to_bits()
            && self.liquidation_ltv.to_bits() == other.liquidation_ltv.to_bits()
            && self.interest_rate.to_bits() == other.interest_rate.to_bits()
            && self.interest_model == other.interest_model
            && self.term_days == other.term_days
            && self.liquidity_source == other.liquidity_source
            && self.lender_address == other.lender_address
            && self.last_borrowed_timestamp == other.last_borrowed_timestamp
            && self.source == other.source
    }

    /// When the offer stops being listed, if it has a term.
    pub fn expires_at(&self) -> Option<Timestamp> {
        match (self.term_days, self.created_timestamp) {
            (Some(days), Some(created)) => Some(created.saturating_add_days(days)),
            _ => None,
        }
    }

    pub fn is_expired(&self, now: Timestamp) -> bool {
        self.expires_at().is_some_and(|at| at < now)
    }

    /// A small, valid offer; handy for tests, examples and benchmarks.
    pub fn example(id: impl Into<String>) -> Self {
        MarginOffer {
            id: id.into(),
            offer_type: OfferType::V1,
            collateral_token: "SOL".into(),
            borrow_token: "USDC".into(),
            available_borrow_amount: 1_000.0,
            max_open_ltv: 0.75,
            liquidation_ltv: 0.85,
            interest_rate: 0.05,
            interest_model: InterestModel::Floating,
            term_days: None,
            liquidity_source: "marginfi".into(),
            lender_address: None,
            last_borrowed_timestamp: None,
            created_timestamp: None,
            updated_timestamp: None,
            source: None,
        }
    }
}

/// An update where absent fields keep their stored values
/// (`BulkUpdate` with `partial_update`).
///
/// On the wire a field is "absent" when it holds its proto3 default (empty
/// string, 0, unset optional). Without `partial_update` a patch must carry
/// every required field, and [`OfferPatch::into_offer`] names the first one
/// missing.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct OfferPatch {
    pub id: String,
    pub offer_type: Option<OfferType>,
    pub collateral_token: Option<String>,
    pub borrow_token: Option<String>,
    pub available_borrow_amount: Option<f64>,
    pub max_open_ltv: Option<f64>,
    pub liquidation_ltv: Option<f64>,
    pub interest_rate: Option<f64>,
    pub interest_model: Option<InterestModel>,
    pub term_days: Option<i32>,
    pub liquidity_source: Option<String>,
    pub lender_address: Option<String>,
    pub last_borrowed_timestamp: Option<Timestamp>,
    pub created_timestamp: Option<Timestamp>,
    pub source: Option<String>,
}

impl From<MarginOffer> for OfferPatch {
    fn from(o: MarginOffer) -> Self {
        OfferPatch {
            id: o.id,
            offer_type: Some(o.offer_type),
            collateral_token: Some(o.collateral_token),
            borrow_token: Some(o.borrow_token),
            available_borrow_amount: Some(o.available_borrow_amount),
            max_open_ltv: Some(o.max_open_ltv),
            liquidation_ltv: Some(o.liquidation_ltv),
            interest_rate: Some(o.interest_rate),
            interest_model: Some(o.interest_model),
            term_days: o.term_days,
            liquidity_source: Some(o.liquidity_source),
            lender_address: o.lender_address,
            last_borrowed_timestamp: o.last_borrowed_timestamp,
            created_timestamp: o.created_timestamp,
            source: o.source,
        }
    }
}

fn required<T>(v: Option<T>, field: &str) -> Result<T, FieldError> {
    v.ok_or_else(|| FieldError::new(field, "is required"))
}

impl OfferPatch {
    /// The patch as a complete offer (full update, or an upsert creating the id).
    pub fn into_offer(self) -> Result<MarginOffer, FieldError> {
        Ok(MarginOffer {
            offer_type: required(self.offer_type, "offer_type")?,
            collateral_token: self.collateral_token.unwrap_or_default(),
            borrow_token: self.borrow_token.unwrap_or_default(),
            available_borrow_amount: self.available_borrow_amount.unwrap_or(0.0),
            max_open_ltv: self.max_open_ltv.unwrap_or(0.0),
            liquidation_ltv: self.liquidation_ltv.unwrap_or(0.0),
            interest_rate: self.interest_rate.unwrap_or(0.0),
            interest_model: required(self.interest_model, "interest_model")?,
            term_days: self.term_days,
            liquidity_source: self.liquidity_source.unwrap_or_default(),
            lender_address: self.lender_address,
            last_borrowed_timestamp: self.last_borrowed_timestamp,
            created_timestamp: self.created_timestamp,
            updated_timestamp: None,
            source: self.source,
            id: self.id,
        })
    }

    /// The stored offer with every present field of the patch laid over it.
    pub fn apply_to(self, stored: &MarginOffer) -> MarginOffer {
        let mut o = stored.clone();
        if let Some(v) = self.offer_type {
            o.offer_type = v;
        }
        if let Some(v) = self.collateral_token {
            o.collateral_token = v;
        }
        if let Some(v) = self.borrow_token {
            o.borrow_token = v;
        }
        if let Some(v) = self.available_borrow_amount {
            o.available_borrow_amount = v;
        }
        if let Some(v) = self.max_open_ltv {
            o.max_open_ltv = v;
        }
        if let Some(v) = self.liquidation_ltv {
            o.liquidation_ltv = v;
        }
        if let Some(v) = self.interest_rate {
            o.interest_rate = v;
        }
        if let Some(v) = self.interest_model {
            o.interest_model = v;
        }
        if self.term_days.is_some() {
            o.term_days = self.term_days;
        }
        if let Some(v) = self.liquidity_source {
            o.liquidity_source = v;
        }
        if self.lender_address.is_some() {
            o.lender_address = self.lender_address;
        }
        if self.last_borrowed_timestamp.is_some() {
            o.last_borrowed_timestamp = self.last_borrowed_timestamp;
        }
        if self.source.is_some() {
            o.source = self.source;
        }
        o
    }
}
