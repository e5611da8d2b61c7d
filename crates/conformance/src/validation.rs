//! Validation: every rule of `semantics.md` on every write path. A rejected
//! offer yields INVALID_ARGUMENT naming the field, and nothing is written.

use crate::support::*;
use offer_domain::{
    BulkCreateOptions, BulkUpdateOptions, BulkUpsertOptions, ErrorCode, MarginOffer, OfferPatch,
    OverwriteFilter, OverwriteRequest,
};
use offer_store::SharedStore;

/// One invalid mutation of a valid offer.
pub struct Case {
    pub field: &'static str,
    pub what: &'static str,
    pub mutate: fn(&mut MarginOffer),
    /// The bad value is a proto3 default (empty string, `term_days` 0), which
    /// a partial update over the wire reads as "absent".
    pub wire_default: bool,
}

fn case(field: &'static str, what: &'static str, mutate: fn(&mut MarginOffer)) -> Case {
    Case {
        field,
        what,
        mutate,
        wire_default: false,
    }
}

fn default_case(field: &'static str, what: &'static str, mutate: fn(&mut MarginOffer)) -> Case {
    Case {
        wire_default: true,
        ..case(field, what, mutate)
    }
}

/// Every invalid-offer case of the spec.
pub fn invalid_cases() -> Vec<Case> {
    vec![
        default_case("id", "empty id", |o| o.id.clear()),
        case("id", "257-byte id", |o| o.id = "x".repeat(257)),
        case("id", "newline in id", |o| o.id = "a\nb".into()),
        case("id", "NUL in id", |o| o.id = "a\0b".into()),
        case("id", "tab in id", |o| o.id = "a\tb".into()),
        case("id", "DEL in id", |o| o.id = "a\u{7f}b".into()),
        default_case("collateral_token", "empty collateral_token", |o| {
            o.collateral_token.clear()
        }),
        case("collateral_token", "257-byte collateral_token", |o| {
            o.collateral_token = "c".repeat(257)
        }),
        default_case("borrow_token", "empty borrow_token", |o| {
            o.borrow_token.clear()
        }),
        case("borrow_token", "257-byte borrow_token", |o| {
            o.borrow_token = "b".repeat(257)
        }),
        default_case("liquidity_source", "empty liquidity_source", |o| {
            o.liquidity_source.clear()
        }),
        case("liquidity_source", "257-byte liquidity_source", |o| {
            o.liquidity_source = "l".repeat(257)
        }),
        case("available_borrow_amount", "negative amount", |o| {
            o.available_borrow_amount = -1.0
        }),
        case("available_borrow_amount", "NaN amount", |o| {
            o.available_borrow_amount = f64::NAN
        }),
        case("available_borrow_amount", "+inf amount", |o| {
            o.available_borrow_amount = f64::INFINITY
        }),
        case("available_borrow_amount", "-inf amount", |o| {
            o.available_borrow_amount = f64::NEG_INFINITY
        }),
        case("interest_rate", "negative rate", |o| {
            o.interest_rate = -0.01
        }),
        case("interest_rate", "NaN rate", |o| o.interest_rate = f64::NAN),
        case("interest_rate", "+inf rate", |o| {
            o.interest_rate = f64::INFINITY
        }),
        case("interest_rate", "-inf rate", |o| {
            o.interest_rate = f64::NEG_INFINITY
        }),
        case("max_open_ltv", "max_open_ltv below 0", |o| {
            o.max_open_ltv = -0.1
        }),
        case("max_open_ltv", "max_open_ltv above 1", |o| {
            o.max_open_ltv = 1.5
        }),
        case("max_open_ltv", "NaN max_open_ltv", |o| {
            o.max_open_ltv = f64::NAN
        }),
        case("max_open_ltv", "+inf max_open_ltv", |o| {
            o.max_open_ltv = f64::INFINITY
        }),
        case("max_open_ltv", "-inf max_open_ltv", |o| {
            o.max_open_ltv = f64::NEG_INFINITY
        }),
        case("liquidation_ltv", "liquidation_ltv below 0", |o| {
            o.liquidation_ltv = -0.1
        }),
        case("liquidation_ltv", "liquidation_ltv above 1", |o| {
            o.liquidation_ltv = 1.01
        }),
        case("liquidation_ltv", "NaN liquidation_ltv", |o| {
            o.liquidation_ltv = f64::NAN
        }),
        case("liquidation_ltv", "+inf liquidation_ltv", |o| {
            o.liquidation_ltv = f64::INFINITY
        }),
        case("liquidation_ltv", "-inf liquidation_ltv", |o| {
            o.liquidation_ltv = f64::NEG_INFINITY
        }),
        case(
            "liquidation_ltv",
            "liquidation_ltv equal to max_open_ltv",
            |o| o.liquidation_ltv = o.max_open_ltv,
        ),
        case(
            "liquidation_ltv",
            "liquidation_ltv below max_open_ltv",
            |o| o.liquidation_ltv = 0.5,
        ),
        default_case("term_days", "term_days 0", |o| o.term_days = Some(0)),
        case("term_days", "term_days -1", |o| o.term_days = Some(-1)),
        case("term_days", "term_days i32::MIN", |o| {
            o.term_days = Some(i32::MIN)
        }),
    ]
}

fn bad(base: &MarginOffer, c: &Case) -> MarginOffer {
    let mut o = base.clone();
    (c.mutate)(&mut o);
    o
}

/// Create, update and create-or-update (of a new and of an existing id).
pub async fn single_writes_reject_invalid_offers(store: SharedStore) {
    store.create(offer("existing"), &ctx()).await.expect("seed");
    for c in invalid_cases() {
        let before = state(&store).await;
        let what = format!("create with {}", c.what);
        expect_invalid(
            store.create(bad(&offer("fresh"), &c), &ctx()).await,
            c.field,
            &what,
        );
        assert_unchanged(&store, &before, &what).await;

        let what = format!("update with {}", c.what);
        let changed = bad(&offer("existing").rate(0.07), &c);
        expect_invalid(store.update(changed.clone(), &ctx()).await, c.field, &what);
        assert_unchanged(&store, &before, &what).await;

        let what = format!("create_or_update of an existing id with {}", c.what);
        expect_invalid(
            store.create_or_update(changed, &ctx()).await,
            c.field,
            &what,
        );
        assert_unchanged(&store, &before, &what).await;

        let what = format!("create_or_update of a new id with {}", c.what);
        expect_invalid(
            store
                .create_or_update(bad(&offer("fresh"), &c), &ctx())
                .await,
            c.field,
            &what,
        );
        assert_unchanged(&store, &before, &what).await;
    }
}

/// Checks a bulk outcome rejecting item 1 (of 2) for `c`.
fn check_rejected(
    out: &offer_domain::BulkOutcome,
    bad_id: &str,
    c: &Case,
    current: i64,
    what: &str,
) {
    assert_bulk_failed(out, 2, current, what);
    assert_eq!(out.errors.len(), 1, "{what}: errors {:?}", out.errors);
    assert_item_error(&out.errors[0], 1, bad_id, ErrorCode::InvalidArgument, what);
    assert_names_field(&out.errors[0], c.field, what);
}

/// Bulk create, bulk update (full and partial) and bulk create-or-update:
/// one invalid item rejects the whole call.
pub async fn bulk_writes_reject_invalid_offers(store: SharedStore) {
    for id in ["existing-1", "existing-2"] {
        store.create(offer(id), &ctx()).await.expect("seed");
    }
    for c in invalid_cases() {
        let before = state(&store).await;
        let r = before.revision;

        let what = format!("bulk_create with {}", c.what);
        let b = bad(&offer("fresh-2"), &c);
        let out = store
            .bulk_create(
                vec![offer("fresh-1"), b.clone()],
                BulkCreateOptions::default(),
                &ctx(),
            )
            .await
            .expect(&what);
        check_rejected(&out, &b.id, &c, r, &what);
        assert_unchanged(&store, &before, &what).await;

        let what = format!("bulk_create_or_update with {}", c.what);
        let out = store
            .bulk_create_or_update(
                vec![offer("existing-1").rate(0.09), b.clone()],
                BulkUpsertOptions::default(),
                &ctx(),
            )
            .await
            .expect(&what);
        check_rejected(&out, &b.id, &c, r, &what);
        assert_unchanged(&store, &before, &what).await;

        let what = format!("bulk_create_or_update of an existing id with {}", c.what);
        let b_existing = bad(&offer("existing-2").rate(0.09), &c);
        let out = store
            .bulk_create_or_update(
                vec![offer("fresh-1"), b_existing.clone()],
                BulkUpsertOptions::default(),
                &ctx(),
            )
            .await
            .expect(&what);
        check_rejected(&out, &b_existing.id, &c, r, &what);
        assert_unchanged(&store, &before, &what).await;

        let what = format!("bulk_update with {}", c.what);
        let patches = vec![
            OfferPatch::from(offer("existing-1").rate(0.09)),
            OfferPatch::from(b_existing.clone()),
        ];
        let out = store
            .bulk_update(patches, BulkUpdateOptions::default(), &ctx())
            .await
            .expect(&what);
        check_rejected(&out, &b_existing.id, &c, r, &what);
        assert_unchanged(&store, &before, &what).await;

        if !c.wire_default {
            let what = format!("partial bulk_update with {}", c.what);
            let patches = vec![
                OfferPatch {
                    id: "existing-1".into(),
                    interest_rate: Some(0.09),
                    ..Default::default()
                },
                OfferPatch::from(b_existing.clone()),
            ];
            let opts = BulkUpdateOptions {
                partial_update: true,
                ..Default::default()
            };
            let out = store.bulk_update(patches, opts, &ctx()).await.expect(&what);
            check_rejected(&out, &b_existing.id, &c, r, &what);
            assert_unchanged(&store, &before, &what).await;
        }
    }
}

/// Overwrite with and without a filter: one invalid item rejects the call,
/// and in particular deletes nothing.
pub async fn overwrite_rejects_invalid_offers(store: SharedStore) {
    for id in ["existing-1", "existing-2"] {
        store
            .create(sourced(id, "feed"), &ctx())
            .await
            .expect("seed");
    }
    for c in invalid_cases() {
        for filter in [None, Some(OverwriteFilter::source("feed"))] {
            let before = state(&store).await;
            let what = format!("overwrite (filter {:?}) with {}", filter.is_some(), c.what);
            let b = bad(&sourced("fresh-2", "feed"), &c);
            let req = OverwriteRequest {
                offers: vec![sourced("fresh-1", "feed"), b.clone()],
                filter,
                validate_all: false,
                dry_run: false,
            };
            let out = store.overwrite(req, &ctx()).await.expect(&what);
            assert_eq!(out.errors.len(), 1, "{what}: errors {:?}", out.errors);
            assert_item_error(&out.errors[0], 1, &b.id, ErrorCode::InvalidArgument, &what);
            assert_names_field(&out.errors[0], c.field, &what);
            assert!(
                out.created_ids.is_empty()
                    && out.updated_ids.is_empty()
                    && out.deleted_ids.is_empty(),
                "{what}: a failed overwrite reports no effects: {out:?}"
            );
            assert_eq!(out.revision, before.revision, "{what}: revision");
            assert_unchanged(&store, &before, &what).await;
        }
    }
}

/// Values on the edge of every rule are valid and round-trip exactly.
pub async fn boundary_values_are_accepted(store: SharedStore) {
    let cases = vec![
        offer(&"x".repeat(256)),
        offer("ñandú/été id with spaces"),
        offer("zero-ltv").ltv(0.0, 1.0),
        offer("tiny-gap").ltv(0.5, 0.500_000_1),
        offer("zero-amount").amount(0.0).rate(0.0),
        offer("one-day").term(Some(1)),
        offer("long-tokens").with(|o| {
            o.collateral_token = "c".repeat(256);
            o.borrow_token = "b".repeat(256);
            o.liquidity_source = "l".repeat(256);
        }),
    ];
    for o in cases {
        let written = store
            .create(o.clone(), &ctx())
            .await
            .unwrap_or_else(|e| panic!("valid offer {:?} refused: {e}", o.id));
        assert!(
            written.offer.same_content(&o),
            "stored content differs: {:?} vs {o:?}",
            written.offer
        );
        let got = store.get(&o.id).await.expect("get");
        assert_eq!(got, written.offer, "get returns what create reported");
    }
}
