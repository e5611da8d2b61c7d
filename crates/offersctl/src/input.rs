//! Reading an overwrite file: a JSON array of offers, or NDJSON.

use offer_domain::json::offer_from_json;
use offer_domain::validate::validate_offer;
use offer_domain::{FieldError, MarginOffer};
use std::collections::HashSet;

/// Decodes and validates every offer of `text`, stamping `source` on each.
/// Errors name the item (array index or NDJSON line), its id and the field,
/// so a bad file is fixed in one go rather than by trial against the store.
pub fn parse_offers(text: &str, source: &str) -> Result<Vec<MarginOffer>, String> {
    let items = split_items(text)?;
    let mut ids = HashSet::new();
    let mut offers = Vec::with_capacity(items.len());
    for (at, item) in items {
        let id = item
            .get("id")
            .and_then(|v| v.as_str())
            .unwrap_or_default()
            .to_owned();
        let at = if id.is_empty() {
            at
        } else {
            format!("{at} (id {id:?})")
        };
        let bad = |e: FieldError| {
            if e.field.is_empty() {
                format!("{at}: {}", e.message)
            } else {
                format!("{at}: {}: {}", e.field, e.message)
            }
        };
        let mut offer = offer_from_json(item).map_err(bad)?;
        offer.source = Some(source.to_owned());
        let offer = validate_offer(offer).map_err(bad)?;
        if !ids.insert(offer.id.clone()) {
            return Err(format!("{at}: id: duplicate id in the file"));
        }
        offers.push(offer);
    }
    Ok(offers)
}

/// The items with where they are (`item N` of an array, `line N` of NDJSON).
fn split_items(text: &str) -> Result<Vec<(String, serde_json::Value)>, String> {
    let trimmed = text.trim_start_matches('\u{feff}').trim();
    if trimmed.is_empty() {
        return Ok(Vec::new());
    }
    if trimmed.starts_with('[') {
        let doc: serde_json::Value =
            serde_json::from_str(trimmed).map_err(|e| format!("malformed JSON: {e}"))?;
        let serde_json::Value::Array(items) = doc else {
            return Err("expected a JSON array of offers".into());
        };
        return Ok(items
            .into_iter()
            .enumerate()
            .map(|(i, v)| (format!("item {i}"), v))
            .collect());
    }
    let mut items = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim_start_matches('\u{feff}').trim();
        if line.is_empty() {
            continue;
        }
        let v: serde_json::Value = serde_json::from_str(line)
            .map_err(|e| format!("line {}: malformed JSON: {e}", n + 1))?;
        if !v.is_object() {
            return Err(format!("line {}: expected a JSON object (an offer)", n + 1));
        }
        items.push((format!("line {}", n + 1), v));
    }
    Ok(items)
}

#[cfg(test)]
mod tests {
    use super::*;
    use offer_domain::json::offer_to_json;

    #[test]
    fn array_and_ndjson_read_alike() {
        let a = offer_to_json(&MarginOffer::example("a"));
        let b = offer_to_json(&MarginOffer::example("b"));
        let array = serde_json::to_string(&vec![a.clone(), b.clone()]).unwrap();
        let ndjson = format!("{a}\n\n{b}\n");
        let x = parse_offers(&array, "s").unwrap();
        let y = parse_offers(&ndjson, "s").unwrap();
        assert_eq!(x, y);
        assert_eq!(x.len(), 2);
        assert!(x.iter().all(|o| o.source.as_deref() == Some("s")));
        assert!(parse_offers("  \n", "s").unwrap().is_empty());
        assert!(parse_offers("[]", "s").unwrap().is_empty());
    }

    #[test]
    fn errors_name_item_id_and_field() {
        let mut bad = offer_to_json(&MarginOffer::example("x"));
        bad["liquidation_ltv"] = serde_json::json!(0.1);
        let good = offer_to_json(&MarginOffer::example("a"));
        let e = parse_offers(&format!("{good}\n{bad}\n"), "s").unwrap_err();
        assert!(e.starts_with("line 2 (id \"x\"): liquidation_ltv:"), "{e}");
        let e = parse_offers(&format!("[{good},{good}]"), "s").unwrap_err();
        assert!(e.contains("item 1") && e.contains("duplicate"), "{e}");
        let e = parse_offers("{\"id\": 1}", "s").unwrap_err();
        assert!(e.starts_with("line 1: id:"), "{e}");
        assert!(
            parse_offers("[1,", "s")
                .unwrap_err()
                .contains("malformed JSON")
        );
    }
}
