//! The validation rules of `semantics.md`, applied on every write path.

use crate::error::FieldError;
use crate::offer::MarginOffer;

pub const MAX_ID_BYTES: usize = 256;
pub const MAX_TOKEN_BYTES: usize = 256;

/// Checks an offer and canonicalises it (`-0.0` becomes `0.0`, so every
/// backend orders and compares amounts alike).
pub fn validate_offer(mut offer: MarginOffer) -> Result<MarginOffer, FieldError> {
    validate_offer_in_place(&mut offer)?;
    Ok(offer)
}

/// [`validate_offer`] on a borrowed offer, so a caller reporting the error
/// still has the offer (its id) without cloning it first.
pub fn validate_offer_in_place(offer: &mut MarginOffer) -> Result<(), FieldError> {
    validate_id(&offer.id)?;
    check_text("collateral_token", &offer.collateral_token)?;
    check_text("borrow_token", &offer.borrow_token)?;
    check_text("liquidity_source", &offer.liquidity_source)?;
    offer.available_borrow_amount =
        non_negative("available_borrow_amount", offer.available_borrow_amount)?;
    offer.interest_rate = non_negative("interest_rate", offer.interest_rate)?;
    offer.max_open_ltv = fraction("max_open_ltv", offer.max_open_ltv)?;
    offer.liquidation_ltv = fraction("liquidation_ltv", offer.liquidation_ltv)?;
    if offer.liquidation_ltv <= offer.max_open_ltv {
        return Err(FieldError::new(
            "liquidation_ltv",
            format!(
                "must be greater than max_open_ltv ({} <= {})",
                offer.liquidation_ltv, offer.max_open_ltv
            ),
        ));
    }
    if let Some(days) = offer.term_days
        && days <= 0
    {
        return Err(FieldError::new(
            "term_days",
            format!("must be positive when present, got {days}"),
        ));
    }
    if let Some(lender) = &offer.lender_address
        && lender.len() > MAX_TOKEN_BYTES
    {
        return Err(FieldError::new(
            "lender_address",
            format!("longer than {MAX_TOKEN_BYTES} bytes"),
        ));
    }
    if let Some(source) = &offer.source
        && source.len() > MAX_TOKEN_BYTES
    {
        return Err(FieldError::new(
            "source",
            format!("longer than {MAX_TOKEN_BYTES} bytes"),
        ));
    }
    Ok(())
}

pub fn validate_id(id: &str) -> Result<(), FieldError> {
    if id.is_empty() {
        return Err(FieldError::new("id", "must not be empty"));
    }
    if id.len() > MAX_ID_BYTES {
        return Err(FieldError::new(
            "id",
            format!("longer than {MAX_ID_BYTES} bytes ({} bytes)", id.len()),
        ));
    }
    if has_control_chars(id) {
        return Err(FieldError::new("id", "contains control characters"));
    }
    Ok(())
}

/// `id.chars().any(char::is_control)`, with a byte scan for ASCII ids (the
/// usual case): C0 and DEL are the only ASCII control characters.
fn has_control_chars(id: &str) -> bool {
    if id.is_ascii() {
        id.bytes().any(|b| b < 0x20 || b == 0x7f)
    } else {
        id.chars().any(char::is_control)
    }
}

fn check_text(field: &str, value: &str) -> Result<(), FieldError> {
    if value.is_empty() {
        return Err(FieldError::new(field, "must not be empty"));
    }
    if value.len() > MAX_TOKEN_BYTES {
        return Err(FieldError::new(
            field,
            format!("longer than {MAX_TOKEN_BYTES} bytes"),
        ));
    }
    Ok(())
}

fn non_negative(field: &str, v: f64) -> Result<f64, FieldError> {
    if !v.is_finite() {
        return Err(FieldError::new(field, format!("must be finite, got {v}")));
    }
    if v < 0.0 {
        return Err(FieldError::new(
            field,
            format!("must not be negative, got {v}"),
        ));
    }
    Ok(v + 0.0)
}

fn fraction(field: &str, v: f64) -> Result<f64, FieldError> {
    if !v.is_finite() || !(0.0..=1.0).contains(&v) {
        return Err(FieldError::new(
            field,
            format!("must be a fraction in [0, 1], got {v}"),
        ));
    }
    Ok(v + 0.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn field_of(o: MarginOffer) -> String {
        match validate_offer(o) {
            Err(e) => e.field,
            Ok(_) => "<valid>".into(),
        }
    }

    #[test]
    #[allow(clippy::type_complexity)]
    fn each_rule_names_its_field() {
        let base = MarginOffer::example("a");
        assert_eq!(field_of(base.clone()), "<valid>");
        let cases: Vec<(&str, Box<dyn Fn(&mut MarginOffer)>)> = vec![
            ("id", Box::new(|o| o.id.clear())),
            ("id", Box::new(|o| o.id = "x".repeat(257))),
            ("id", Box::new(|o| o.id = "a\nb".into())),
            ("collateral_token", Box::new(|o| o.collateral_token.clear())),
            (
                "borrow_token",
                Box::new(|o| o.borrow_token = "b".repeat(300)),
            ),
            ("liquidity_source", Box::new(|o| o.liquidity_source.clear())),
            (
                "available_borrow_amount",
                Box::new(|o| o.available_borrow_amount = -1.0),
            ),
            (
                "available_borrow_amount",
                Box::new(|o| o.available_borrow_amount = f64::NAN),
            ),
            (
                "interest_rate",
                Box::new(|o| o.interest_rate = f64::INFINITY),
            ),
            ("max_open_ltv", Box::new(|o| o.max_open_ltv = 1.5)),
            (
                "liquidation_ltv",
                Box::new(|o| o.liquidation_ltv = f64::NEG_INFINITY),
            ),
            (
                "liquidation_ltv",
                Box::new(|o| o.liquidation_ltv = o.max_open_ltv),
            ),
            ("term_days", Box::new(|o| o.term_days = Some(0))),
            ("term_days", Box::new(|o| o.term_days = Some(-3))),
        ];
        for (field, mutate) in cases {
            let mut o = base.clone();
            mutate(&mut o);
            assert_eq!(field_of(o), field);
        }
    }

    #[test]
    fn id_of_exactly_256_bytes_is_fine_and_negative_zero_is_canonicalised() {
        let mut o = MarginOffer::example("x".repeat(256));
        o.available_borrow_amount = -0.0;
        let v = validate_offer(o).expect("valid");
        assert!(v.available_borrow_amount.is_sign_positive());
    }

    proptest! {
        #[test]
        fn control_char_scan_matches_char_is_control(id in "(.|[\\x00-\\x1f\\x7f-\\u{9f}]){0,40}") {
            prop_assert_eq!(has_control_chars(&id), id.chars().any(char::is_control));
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]
        #[test]
        fn never_panics_and_accepted_offers_obey_the_rules(
            id in ".{0,300}", amount in any::<f64>(), rate in any::<f64>(),
            open in any::<f64>(), liq in any::<f64>(), term in proptest::option::of(any::<i32>()),
        ) {
            let mut o = MarginOffer::example(id);
            o.available_borrow_amount = amount;
            o.interest_rate = rate;
            o.max_open_ltv = open;
            o.liquidation_ltv = liq;
            o.term_days = term;
            if let Ok(v) = validate_offer(o) {
                prop_assert!(v.available_borrow_amount >= 0.0 && v.available_borrow_amount.is_finite());
                prop_assert!(v.liquidation_ltv > v.max_open_ltv);
                prop_assert!((0.0..=1.0).contains(&v.max_open_ltv));
                prop_assert!(v.term_days.is_none_or(|d| d > 0));
                prop_assert!(!v.id.is_empty() && v.id.len() <= 256);
            }
        }
    }
}
