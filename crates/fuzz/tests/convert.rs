//! Wire input to domain values: conversion and validation never panic, on
//! structured messages with edge values and on arbitrary or mutated bytes.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use offer_domain::validate::validate_offer;
use offer_fuzz::{config, edge_f64, edge_i32, edge_string, mutated};
use offer_proto::convert::*;
use offer_proto::pb;
use proptest::prelude::*;
use prost::Message;

fn timestamp() -> impl Strategy<Value = prost_types::Timestamp> {
    let seconds = prop_oneof![
        prop::sample::select(vec![
            0,
            -1,
            i64::MAX,
            i64::MIN,
            9_223_372_036,
            -9_223_372_037,
            1_700_000_000
        ]),
        any::<i64>(),
    ];
    let nanos = prop_oneof![
        prop::sample::select(vec![0, -1, 999_999_999, 1_000_000_000, i32::MAX, i32::MIN]),
        any::<i32>(),
    ];
    (seconds, nanos).prop_map(|(seconds, nanos)| prost_types::Timestamp { seconds, nanos })
}

fn opt<T: std::fmt::Debug>(s: impl Strategy<Value = T>) -> impl Strategy<Value = Option<T>> {
    prop::option::of(s)
}

prop_compose! {
    fn offer()(
        strs in prop::collection::vec(edge_string(), 6),
        nums in prop::collection::vec(edge_f64(), 4),
        term_days in opt(edge_i32()),
        lender in opt(edge_string()),
        source in opt(edge_string()),
        tss in prop::collection::vec(opt(timestamp()), 3),
    ) -> pb::MarginOffer {
        pb::MarginOffer {
            id: strs[0].clone(), offer_type: strs[1].clone(),
            collateral_token: strs[2].clone(), borrow_token: strs[3].clone(),
            available_borrow_amount: nums[0], max_open_ltv: nums[1],
            liquidation_ltv: nums[2], interest_rate: nums[3],
            interest_model: strs[4].clone(), term_days,
            liquidity_source: strs[5].clone(), lender_address: lender,
            last_borrowed_timestamp: tss[0], created_timestamp: tss[1],
            updated_timestamp: tss[2], source,
        }
    }
}

prop_compose! {
    fn overwrite_filter()(
        strs in prop::collection::vec(opt(edge_string()), 6),
        tss in prop::collection::vec(opt(timestamp()), 4),
    ) -> pb::OverwriteFilter {
        pb::OverwriteFilter {
            offer_type: strs[0].clone(), collateral_token: strs[1].clone(),
            borrow_token: strs[2].clone(), lender_address: strs[3].clone(),
            liquidity_source: strs[4].clone(), source: strs[5].clone(),
            created_after: tss[0], created_before: tss[1],
            updated_after: tss[2], updated_before: tss[3],
        }
    }
}

prop_compose! {
    fn list_request()(
        limit in edge_i32(), offset in edge_i32(),
        strs in prop::collection::vec(opt(edge_string()), 9),
        nums in prop::collection::vec(opt(edge_f64()), 6),
        tss in prop::collection::vec(opt(timestamp()), 4),
        flags in any::<(bool, bool)>(),
        token in opt(page_token_text()),
    ) -> pb::ListMarginOffersRequest {
        pb::ListMarginOffersRequest {
            limit, offset,
            sort_by: strs[0].clone(), sort_order: strs[1].clone(),
            offer_type: strs[2].clone(), collateral_token: strs[3].clone(),
            borrow_token: strs[4].clone(), interest_model: strs[5].clone(),
            liquidity_source: strs[6].clone(), lender_address: strs[7].clone(),
            source: strs[8].clone(),
            min_borrow_amount: nums[0], max_borrow_amount: nums[1],
            min_interest_rate: nums[2], max_interest_rate: nums[3],
            min_max_open_ltv: nums[4], max_max_open_ltv: nums[5],
            created_after: tss[0], created_before: tss[1],
            include_expired: flags.0, active_only: flags.1,
            updated_after: tss[2], updated_before: tss[3],
            page_token: token,
        }
    }
}

/// Page tokens: arbitrary text, or base64 of arbitrary bytes behind the
/// real version byte, so the JSON decoder is reached too.
fn page_token_text() -> impl Strategy<Value = String> {
    use base64::Engine;
    prop_oneof![
        edge_string(),
        prop::collection::vec(any::<u8>(), 0..80).prop_map(|mut b| {
            b.insert(0, 1);
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
        }),
    ]
}

/// Everything the service does with one offer from the wire.
fn exercise_offer(p: pb::MarginOffer) {
    if let Ok(o) = offer_from_pb(p.clone()) {
        // A converted offer validates (or not) without panicking, and a
        // valid one goes back to the wire.
        if let Ok(v) = validate_offer(o) {
            let _ = offer_to_pb(v);
        }
    }
    let _ = required_offer_from_pb(Some(p.clone()));
    if let Ok(patch) = patch_from_pb(p) {
        let _ = patch_to_pb(patch);
    }
}

fn exercise_list(r: pb::ListMarginOffersRequest) {
    if let Ok(q) = list_query_from_pb(r) {
        let _ = list_query_to_pb(&q);
        let _ = q.resolve();
    }
}

fn exercise_filter(f: pb::OverwriteFilter) {
    if let Ok(f) = overwrite_filter_from_pb(f.clone()) {
        let _ = overwrite_filter_to_pb(&f);
    }
    let _ = opt_overwrite_filter_from_pb(Some(f));
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn offer_conversion_never_panics(p in offer()) {
        exercise_offer(p);
    }

    #[test]
    fn list_request_conversion_never_panics(r in list_request()) {
        exercise_list(r);
    }

    #[test]
    fn overwrite_filter_conversion_never_panics(f in overwrite_filter()) {
        exercise_filter(f);
    }

    #[test]
    fn arbitrary_bytes_decode_and_convert(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        if let Ok(p) = pb::MarginOffer::decode(bytes.as_slice()) { exercise_offer(p); }
        if let Ok(r) = pb::ListMarginOffersRequest::decode(bytes.as_slice()) { exercise_list(r); }
        if let Ok(f) = pb::OverwriteFilter::decode(bytes.as_slice()) { exercise_filter(f); }
        if let Ok(r) = pb::BulkOverwriteMarginOffersRequest::decode(bytes.as_slice()) {
            for o in r.offers { exercise_offer(o); }
            if let Some(f) = r.filter { exercise_filter(f); }
        }
    }

    /// Real encoded messages, then mutated: decodes that succeed carry
    /// values close to valid ones, which random bytes seldom reach.
    #[test]
    fn mutated_encodings_decode_and_convert(
        bytes in (offer(), list_request(), overwrite_filter())
            .prop_flat_map(|(o, l, f)| {
                let r = pb::BulkOverwriteMarginOffersRequest {
                    offers: vec![o],
                    filter: Some(f),
                    validate_all: true,
                    dry_run: false,
                };
                let mut all = r.encode_to_vec();
                all.extend(l.encode_to_vec());
                mutated(all)
            })
    ) {
        if let Ok(r) = pb::BulkOverwriteMarginOffersRequest::decode(bytes.as_slice()) {
            for o in r.offers { exercise_offer(o); }
            if let Some(f) = r.filter { exercise_filter(f); }
        }
        if let Ok(r) = pb::ListMarginOffersRequest::decode(bytes.as_slice()) { exercise_list(r); }
    }
}
