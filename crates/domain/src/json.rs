//! Offers as JSON objects with the wire contract's snake_case field names
//! and RFC 3339 timestamps: what off-chain feeds serve, what `offersctl`
//! reads and prints.
//!
//! Input ([`offer_from_json`]) follows what a Go server emits for unset
//! fields: `term_days` 0 and an empty `lender_address` mean absent. The
//! store-managed `updated_timestamp` and the caller-assigned `source` are
//! not read (every reader sets `source` itself), and unknown fields are
//! ignored, so the output of [`offer_to_json`] reads back unchanged.
//! Validation is left to the caller ([`crate::validate::validate_offer`]).

use crate::error::FieldError;
use crate::offer::{InterestModel, MarginOffer, OfferType};
use crate::time::Timestamp;
use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};

#[derive(Deserialize)]
struct JsonOfferIn {
    id: String,
    offer_type: String,
    collateral_token: String,
    borrow_token: String,
    available_borrow_amount: f64,
    max_open_ltv: f64,
    liquidation_ltv: f64,
    interest_rate: f64,
    interest_model: String,
    #[serde(default)]
    term_days: Option<i32>,
    liquidity_source: String,
    #[serde(default)]
    lender_address: Option<String>,
    #[serde(default)]
    last_borrowed_timestamp: Option<String>,
    #[serde(default)]
    created_timestamp: Option<String>,
}

/// Output shape: wire order, absent optionals left out (as protojson does).
#[derive(Serialize)]
struct JsonOfferOut<'a> {
    id: &'a str,
    offer_type: &'static str,
    collateral_token: &'a str,
    borrow_token: &'a str,
    available_borrow_amount: f64,
    max_open_ltv: f64,
    liquidation_ltv: f64,
    interest_rate: f64,
    interest_model: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    term_days: Option<i32>,
    liquidity_source: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    lender_address: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    last_borrowed_timestamp: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    created_timestamp: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    updated_timestamp: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    source: Option<&'a str>,
}

/// Decodes one offer. The error's `field` is the JSON path of the bad value
/// (e.g. `term_days`), or empty when the object as a whole is wrong (a
/// missing field, which serde's message names).
pub fn offer_from_json(value: serde_json::Value) -> Result<MarginOffer, FieldError> {
    let w: JsonOfferIn = serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let field = if path == "." { String::new() } else { path };
        FieldError::new(field, e.into_inner().to_string())
    })?;
    Ok(MarginOffer {
        offer_type: OfferType::parse_field(&w.offer_type, "offer_type")?,
        interest_model: InterestModel::parse_field(&w.interest_model, "interest_model")?,
        last_borrowed_timestamp: parse_opt(
            w.last_borrowed_timestamp.as_deref(),
            "last_borrowed_timestamp",
        )?,
        created_timestamp: parse_opt(w.created_timestamp.as_deref(), "created_timestamp")?,
        id: w.id,
        collateral_token: w.collateral_token,
        borrow_token: w.borrow_token,
        available_borrow_amount: w.available_borrow_amount,
        max_open_ltv: w.max_open_ltv,
        liquidation_ltv: w.liquidation_ltv,
        interest_rate: w.interest_rate,
        term_days: w.term_days.filter(|d| *d != 0),
        liquidity_source: w.liquidity_source,
        lender_address: w.lender_address.filter(|s| !s.is_empty()),
        updated_timestamp: None,
        source: None,
    })
}

/// Encodes one offer, every field present on it included.
pub fn offer_to_json(o: &MarginOffer) -> serde_json::Value {
    let out = JsonOfferOut {
        id: &o.id,
        offer_type: o.offer_type.as_str(),
        collateral_token: &o.collateral_token,
        borrow_token: &o.borrow_token,
        available_borrow_amount: o.available_borrow_amount,
        max_open_ltv: o.max_open_ltv,
        liquidation_ltv: o.liquidation_ltv,
        interest_rate: o.interest_rate,
        interest_model: o.interest_model.as_str(),
        term_days: o.term_days,
        liquidity_source: &o.liquidity_source,
        lender_address: o.lender_address.as_deref(),
        last_borrowed_timestamp: o.last_borrowed_timestamp.map(format_rfc3339),
        created_timestamp: o.created_timestamp.map(format_rfc3339),
        updated_timestamp: o.updated_timestamp.map(format_rfc3339),
        source: o.source.as_deref(),
    };
    // Serializing plain strings and numbers cannot fail; non-finite floats
    // become null, which is all JSON can say about them.
    serde_json::to_value(out).unwrap_or(serde_json::Value::Null)
}

/// RFC 3339 in UTC (`Z`), with as many fractional digits as needed.
pub fn format_rfc3339(t: Timestamp) -> String {
    DateTime::<Utc>::from_timestamp_nanos(t.as_nanos()).to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

/// Parses an RFC 3339 time with any offset; the message quotes the input.
pub fn parse_rfc3339(s: &str) -> Result<Timestamp, String> {
    let t =
        DateTime::parse_from_rfc3339(s).map_err(|e| format!("not an RFC 3339 time {s:?}: {e}"))?;
    t.timestamp_nanos_opt()
        .map(Timestamp)
        .ok_or_else(|| format!("{s:?} is out of range"))
}

/// An optional time: absent, `null` and blank all mean none.
fn parse_opt(s: Option<&str>, field: &str) -> Result<Option<Timestamp>, FieldError> {
    match s.map(str::trim) {
        None | Some("") => Ok(None),
        Some(s) => parse_rfc3339(s)
            .map(Some)
            .map_err(|m| FieldError::new(field, m)),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    #[test]
    fn round_trips_every_field() {
        let mut o = MarginOffer::example("a");
        o.term_days = Some(7);
        o.lender_address = Some("L1".into());
        o.last_borrowed_timestamp = Some(Timestamp(1_700_000_000_123_456_789));
        o.created_timestamp = Some(Timestamp(1_700_000_000_000_000_000));
        o.updated_timestamp = Some(Timestamp(1_700_000_001_500_000_000));
        o.source = Some("manual".into());
        let v = offer_to_json(&o);
        assert_eq!(v["created_timestamp"], "2023-11-14T22:13:20Z");
        assert_eq!(v["updated_timestamp"], "2023-11-14T22:13:21.500Z");
        assert_eq!(v["offer_type"], "V1");
        assert_eq!(v["interest_model"], "floating");
        let back = offer_from_json(v).unwrap();
        // Store-managed and caller-assigned fields are not read back.
        let expected = MarginOffer {
            updated_timestamp: None,
            source: None,
            ..o
        };
        assert_eq!(back, expected);
    }

    #[test]
    fn go_defaults_mean_absent_and_errors_name_the_field() {
        let mut v = offer_to_json(&MarginOffer::example("b"));
        v["term_days"] = json!(0);
        v["lender_address"] = json!("");
        v["created_timestamp"] = json!(null);
        let o = offer_from_json(v.clone()).unwrap();
        assert_eq!((o.term_days, o.lender_address), (None, None));

        v["term_days"] = json!("x");
        assert_eq!(offer_from_json(v.clone()).unwrap_err().field, "term_days");
        v["term_days"] = json!(3);
        v["created_timestamp"] = json!("yesterday");
        let e = offer_from_json(v.clone()).unwrap_err();
        assert_eq!(e.field, "created_timestamp");
        assert!(e.message.contains("yesterday"), "{e}");
        v["created_timestamp"] = json!("2024-01-01T00:00:00+02:00");
        assert_eq!(
            offer_from_json(v.clone()).unwrap().created_timestamp,
            Some(parse_rfc3339("2023-12-31T22:00:00Z").unwrap())
        );
        let mut m = v.clone();
        m.as_object_mut().unwrap().remove("borrow_token");
        let e = offer_from_json(m).unwrap_err();
        assert_eq!(e.field, "");
        assert!(e.message.contains("borrow_token"), "{e}");
    }
}
