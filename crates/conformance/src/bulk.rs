//! Bulk writes: flags, per-item errors, atomicity, request-order results.

use crate::support::*;
use offer_domain::{
    BulkCreateOptions, BulkDeleteOptions, BulkUpdateOptions, BulkUpsertOptions, Change, ChangeType,
    ErrorCode, MarginOffer, OfferPatch, OverwriteRequest, Revision,
};
use offer_store::SharedStore;

fn kinds(changes: &[Change]) -> Vec<(String, ChangeType)> {
    changes
        .iter()
        .map(|c| (c.offer.id.clone(), c.change_type))
        .collect()
}

fn expect_kinds(changes: &[Change], want: &[(&str, ChangeType)], rev: Revision, what: &str) {
    let mut got = kinds(changes);
    got.sort_by(|a, b| a.0.cmp(&b.0));
    let mut want: Vec<(String, ChangeType)> =
        want.iter().map(|(id, k)| ((*id).to_owned(), *k)).collect();
    want.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(got, want, "{what}: change records");
    assert!(
        changes.iter().all(|c| c.revision == rev),
        "{what}: every change of one call carries its revision {rev}: {changes:?}"
    );
}

/// Bulk create commits in one revision; `processed_ids` in request order.
pub async fn bulk_create_success_and_order(store: SharedStore) {
    let r0 = revision(&store).await;
    let out = store
        .bulk_create(
            vec![offer("c"), offer("a"), offer("b")],
            BulkCreateOptions::default(),
            &ctx(),
        )
        .await
        .expect("bulk_create");
    assert_bulk_ok(&out, &["c", "a", "b"], "bulk_create");
    assert_eq!(out.revision, r0 + 1, "one revision for the whole call");
    assert_eq!(revision(&store).await, r0 + 1);
    let changes = changes_after(&store, r0).await;
    expect_kinds(
        &changes,
        &[
            ("a", ChangeType::Created),
            ("b", ChangeType::Created),
            ("c", ChangeType::Created),
        ],
        r0 + 1,
        "bulk_create",
    );
    assert_eq!(snapshot_ids(&store).await, strings(&["a", "b", "c"]));

    let out = store
        .bulk_create(vec![], BulkCreateOptions::default(), &ctx())
        .await
        .expect("empty bulk_create");
    assert_bulk_ok(&out, &[], "empty bulk_create");
    assert_eq!(out.revision, r0 + 1, "an empty call commits nothing");
    assert_eq!(revision(&store).await, r0 + 1);
}

/// An existing id fails the call with ALREADY_EXISTS unless
/// `ignore_conflicts`, which skips it and commits the rest.
pub async fn bulk_create_conflicts(store: SharedStore) {
    let stored = store.create(offer("a"), &ctx()).await.expect("seed").offer;
    let before = state(&store).await;
    let out = store
        .bulk_create(
            vec![offer("b"), offer("a").rate(0.3), offer("c")],
            BulkCreateOptions::default(),
            &ctx(),
        )
        .await
        .expect("bulk_create");
    assert_bulk_failed(&out, 3, before.revision, "conflict");
    assert_eq!(out.errors.len(), 1);
    assert_item_error(&out.errors[0], 1, "a", ErrorCode::AlreadyExists, "conflict");
    assert_unchanged(&store, &before, "conflicting bulk_create").await;

    let opts = BulkCreateOptions {
        ignore_conflicts: true,
        ..Default::default()
    };
    let out = store
        .bulk_create(
            vec![offer("b"), offer("a").rate(0.3), offer("c")],
            opts,
            &ctx(),
        )
        .await
        .expect("bulk_create");
    assert_bulk_ok(&out, &["b", "c"], "ignore_conflicts");
    assert_eq!(out.revision, before.revision + 1);
    assert_eq!(
        store.get("a").await.expect("get"),
        stored,
        "the conflicting id is untouched"
    );
    assert_eq!(snapshot_ids(&store).await, strings(&["a", "b", "c"]));
    expect_kinds(
        &changes_after(&store, before.revision).await,
        &[("b", ChangeType::Created), ("c", ChangeType::Created)],
        before.revision + 1,
        "ignore_conflicts",
    );

    let r = revision(&store).await;
    let out = store
        .bulk_create(vec![offer("a"), offer("b")], opts, &ctx())
        .await
        .expect("bulk_create");
    assert_bulk_ok(&out, &[], "only conflicts, ignored");
    assert_eq!(out.revision, r, "nothing committed, current revision");
    assert_eq!(revision(&store).await, r);
}

/// `validate_all` reports every failing item (by index, id and code);
/// without it only the first.
pub async fn bulk_validate_all(store: SharedStore) {
    store.create(offer("taken"), &ctx()).await.expect("seed");
    let before = state(&store).await;
    let r = before.revision;
    let create_items = vec![
        offer("ok-0"),
        offer("bad-1").rate(-1.0),
        offer("ok-2"),
        offer(""),
        offer("taken"),
        offer("ok-0"),
        offer("bad-6").ltv(0.9, 0.8),
    ];
    let expected = [
        (1, "bad-1", ErrorCode::InvalidArgument),
        (3, "", ErrorCode::InvalidArgument),
        (4, "taken", ErrorCode::AlreadyExists),
        (5, "ok-0", ErrorCode::InvalidArgument),
        (6, "bad-6", ErrorCode::InvalidArgument),
    ];
    for validate_all in [false, true] {
        let what = format!("bulk_create validate_all={validate_all}");
        let opts = BulkCreateOptions {
            validate_all,
            ..Default::default()
        };
        let out = store
            .bulk_create(create_items.clone(), opts, &ctx())
            .await
            .expect(&what);
        assert_bulk_failed(&out, 7, r, &what);
        let want = if validate_all {
            &expected[..]
        } else {
            &expected[..1]
        };
        assert_eq!(out.errors.len(), want.len(), "{what}: {:?}", out.errors);
        for (e, (index, id, code)) in out.errors.iter().zip(want) {
            assert_item_error(e, *index, id, *code, &what);
        }
        assert_names_field(&out.errors[0], "interest_rate", &what);
        if validate_all {
            assert_names_field(&out.errors[1], "id", &what);
            assert_names_field(&out.errors[4], "liquidation_ltv", &what);
        }
        assert_unchanged(&store, &before, &what).await;
    }

    let upsert_items = vec![
        offer("taken").rate(0.2),
        offer("bad-1").amount(f64::NAN),
        offer("ok-2"),
        offer("bad-3").term(Some(0)),
    ];
    for validate_all in [false, true] {
        let what = format!("bulk_create_or_update validate_all={validate_all}");
        let out = store
            .bulk_create_or_update(
                upsert_items.clone(),
                BulkUpsertOptions { validate_all },
                &ctx(),
            )
            .await
            .expect(&what);
        assert_bulk_failed(&out, 4, r, &what);
        let want: &[(usize, &str)] = if validate_all {
            &[(1, "bad-1"), (3, "bad-3")]
        } else {
            &[(1, "bad-1")]
        };
        assert_eq!(out.errors.len(), want.len(), "{what}: {:?}", out.errors);
        for (e, (index, id)) in out.errors.iter().zip(want) {
            assert_item_error(e, *index, id, ErrorCode::InvalidArgument, &what);
        }
        assert_unchanged(&store, &before, &what).await;
    }

    let overwrite_items = vec![
        offer("taken").rate(0.2),
        offer("bad-1").amount(-3.0),
        offer("ok-2"),
        offer("bad-3").ltv(f64::NAN, 0.9),
    ];
    for validate_all in [false, true] {
        let what = format!("overwrite validate_all={validate_all}");
        let req = OverwriteRequest {
            offers: overwrite_items.clone(),
            filter: None,
            validate_all,
            dry_run: false,
        };
        let out = store.overwrite(req, &ctx()).await.expect(&what);
        let want: &[(usize, &str, &str)] = if validate_all {
            &[
                (1, "bad-1", "available_borrow_amount"),
                (3, "bad-3", "max_open_ltv"),
            ]
        } else {
            &[(1, "bad-1", "available_borrow_amount")]
        };
        assert_eq!(out.errors.len(), want.len(), "{what}: {:?}", out.errors);
        for (e, (index, id, field)) in out.errors.iter().zip(want) {
            assert_item_error(e, *index, id, ErrorCode::InvalidArgument, &what);
            assert_names_field(e, field, &what);
        }
        assert_unchanged(&store, &before, &what).await;
    }

    // Bulk update has no validate_all on the wire: the first error only.
    let what = "bulk_update";
    let out = store
        .bulk_update(
            vec![
                OfferPatch::from(offer("taken").rate(-1.0)),
                OfferPatch::from(offer("missing")),
            ],
            BulkUpdateOptions::default(),
            &ctx(),
        )
        .await
        .expect(what);
    assert_bulk_failed(&out, 2, r, what);
    assert_eq!(out.errors.len(), 1, "{what}: {:?}", out.errors);
    assert_item_error(&out.errors[0], 0, "taken", ErrorCode::InvalidArgument, what);
    assert_names_field(&out.errors[0], "interest_rate", what);
    assert_unchanged(&store, &before, what).await;
}

/// The same id twice in one request is an INVALID_ARGUMENT item error at the
/// second occurrence, on every bulk path.
pub async fn bulk_duplicate_ids(store: SharedStore) {
    for id in ["a", "b"] {
        store.create(offer(id), &ctx()).await.expect("seed");
    }
    let before = state(&store).await;
    let r = before.revision;
    let check = |out: &offer_domain::BulkOutcome, what: &str| {
        assert_bulk_failed(out, 3, r, what);
        assert_eq!(out.errors.len(), 1, "{what}: {:?}", out.errors);
        assert_item_error(&out.errors[0], 2, "x", ErrorCode::InvalidArgument, what);
    };
    let trio = || vec![offer("x"), offer("c"), offer("x").rate(0.2)];
    let out = store
        .bulk_create(trio(), BulkCreateOptions::default(), &ctx())
        .await
        .expect("bulk_create");
    check(&out, "bulk_create");
    let out = store
        .bulk_create(
            trio(),
            BulkCreateOptions {
                ignore_conflicts: true,
                validate_all: true,
            },
            &ctx(),
        )
        .await
        .expect("bulk_create");
    check(&out, "bulk_create ignore_conflicts");
    let out = store
        .bulk_create_or_update(trio(), BulkUpsertOptions::default(), &ctx())
        .await
        .expect("bulk_create_or_update");
    check(&out, "bulk_create_or_update");
    let out = store
        .bulk_update(
            trio().into_iter().map(OfferPatch::from).collect(),
            BulkUpdateOptions {
                upsert: true,
                ..Default::default()
            },
            &ctx(),
        )
        .await
        .expect("bulk_update");
    check(&out, "bulk_update upsert");
    let out = store
        .bulk_delete(
            strings(&["a", "b", "a"]),
            BulkDeleteOptions::default(),
            &ctx(),
        )
        .await
        .expect("bulk_delete");
    assert_bulk_failed(&out, 3, r, "bulk_delete");
    assert_eq!(out.errors.len(), 1, "bulk_delete: {:?}", out.errors);
    assert_item_error(
        &out.errors[0],
        2,
        "a",
        ErrorCode::InvalidArgument,
        "bulk_delete",
    );
    let out = store
        .overwrite(
            OverwriteRequest {
                offers: vec![offer("a"), offer("b"), offer("a").rate(0.2)],
                ..Default::default()
            },
            &ctx(),
        )
        .await
        .expect("overwrite");
    assert_eq!(out.errors.len(), 1, "overwrite: {:?}", out.errors);
    assert_item_error(
        &out.errors[0],
        2,
        "a",
        ErrorCode::InvalidArgument,
        "overwrite",
    );
    assert_unchanged(&store, &before, "duplicate ids").await;
}

/// One failing item commits nothing: success_count 0, failure_count = items.
pub async fn bulk_atomicity(store: SharedStore) {
    for id in ["e1", "e2"] {
        store.create(offer(id), &ctx()).await.expect("seed");
    }
    let before = state(&store).await;
    let r = before.revision;

    let out = store
        .bulk_update(
            vec![
                OfferPatch::from(offer("e1").rate(0.3)),
                OfferPatch::from(offer("e2").rate(0.3)),
                OfferPatch::from(offer("missing")),
            ],
            BulkUpdateOptions::default(),
            &ctx(),
        )
        .await
        .expect("bulk_update");
    assert_bulk_failed(&out, 3, r, "bulk_update with a missing id");
    assert_item_error(
        &out.errors[0],
        2,
        "missing",
        ErrorCode::NotFound,
        "bulk_update",
    );
    assert_unchanged(&store, &before, "bulk_update with a missing id").await;

    let out = store
        .bulk_delete(
            strings(&["e1", "missing", "e2"]),
            BulkDeleteOptions::default(),
            &ctx(),
        )
        .await
        .expect("bulk_delete");
    assert_bulk_failed(&out, 3, r, "bulk_delete with a missing id");
    assert_item_error(
        &out.errors[0],
        1,
        "missing",
        ErrorCode::NotFound,
        "bulk_delete",
    );
    assert_unchanged(&store, &before, "bulk_delete with a missing id").await;

    let out = store
        .bulk_create_or_update(
            vec![
                offer("e1").rate(0.3),
                offer("n1"),
                offer("n2").ltv(0.8, 0.8),
            ],
            BulkUpsertOptions::default(),
            &ctx(),
        )
        .await
        .expect("bulk_create_or_update");
    assert_bulk_failed(&out, 3, r, "bulk_create_or_update with a bad item");
    assert_item_error(
        &out.errors[0],
        2,
        "n2",
        ErrorCode::InvalidArgument,
        "upsert",
    );
    assert_unchanged(&store, &before, "bulk_create_or_update with a bad item").await;

    let out = store
        .bulk_create(
            vec![offer("n1"), offer("n2"), offer("n3").term(Some(-5))],
            BulkCreateOptions::default(),
            &ctx(),
        )
        .await
        .expect("bulk_create");
    assert_bulk_failed(&out, 3, r, "bulk_create with a bad item");
    assert_unchanged(&store, &before, "bulk_create with a bad item").await;
}

/// Bulk update: NOT_FOUND without `upsert`, creation with it, and
/// `partial_update` keeping stored values for absent fields.
pub async fn bulk_update_flags(store: SharedStore) {
    let e1 = offer("e1")
        .lender(Some("L"))
        .term(Some(5))
        .source(Some("s"))
        .tokens("JUP", "USDT")
        .amount(77.0);
    store.create(e1.clone(), &ctx()).await.expect("seed");
    store.create(offer("e2"), &ctx()).await.expect("seed");

    let r0 = revision(&store).await;
    let out = store
        .bulk_update(
            vec![
                OfferPatch::from(offer("e2").rate(0.11)),
                OfferPatch::from(offer("e1").rate(0.11)),
            ],
            BulkUpdateOptions::default(),
            &ctx(),
        )
        .await
        .expect("bulk_update");
    assert_bulk_ok(&out, &["e2", "e1"], "bulk_update");
    assert_eq!(out.revision, r0 + 1);
    let got = store.get("e1").await.expect("get");
    assert!(
        got.same_content(&offer("e1").rate(0.11)),
        "a full update replaces every field: {got:?}"
    );
    expect_kinds(
        &changes_after(&store, r0).await,
        &[("e1", ChangeType::Updated), ("e2", ChangeType::Updated)],
        r0 + 1,
        "bulk_update",
    );

    // Upsert creates missing ids.
    store.update(e1.clone(), &ctx()).await.expect("reset e1");
    let r1 = revision(&store).await;
    let opts = BulkUpdateOptions {
        upsert: true,
        ..Default::default()
    };
    let out = store
        .bulk_update(
            vec![
                OfferPatch::from(offer("new").rate(0.12)),
                OfferPatch::from(offer("e2").rate(0.12)),
            ],
            opts,
            &ctx(),
        )
        .await
        .expect("bulk_update upsert");
    assert_bulk_ok(&out, &["new", "e2"], "upsert");
    assert!(
        store
            .get("new")
            .await
            .expect("get")
            .same_content(&offer("new").rate(0.12))
    );
    expect_kinds(
        &changes_after(&store, r1).await,
        &[("new", ChangeType::Created), ("e2", ChangeType::Updated)],
        r1 + 1,
        "bulk_update upsert",
    );

    // Partial updates keep every field the patch leaves absent.
    let opts = BulkUpdateOptions {
        partial_update: true,
        ..Default::default()
    };
    let patch = OfferPatch {
        id: "e1".into(),
        interest_rate: Some(0.33),
        ..Default::default()
    };
    let out = store
        .bulk_update(vec![patch], opts, &ctx())
        .await
        .expect("partial");
    assert_bulk_ok(&out, &["e1"], "partial");
    let got = store.get("e1").await.expect("get");
    assert!(
        got.same_content(&e1.clone().rate(0.33)),
        "partial update keeps absent fields: {got:?}"
    );
    let patch = OfferPatch {
        id: "e1".into(),
        available_borrow_amount: Some(5.5),
        lender_address: Some("L2".into()),
        borrow_token: Some("USDC".into()),
        term_days: Some(9),
        ..Default::default()
    };
    store
        .bulk_update(vec![patch], opts, &ctx())
        .await
        .expect("partial");
    let got = store.get("e1").await.expect("get");
    let want = e1
        .clone()
        .rate(0.33)
        .amount(5.5)
        .lender(Some("L2"))
        .tokens("JUP", "USDC")
        .term(Some(9));
    assert!(
        got.same_content(&want),
        "partial update sets present fields: {got:?}"
    );

    // A partial update of a missing id is still NOT_FOUND without upsert.
    let before = state(&store).await;
    let out = store
        .bulk_update(
            vec![OfferPatch {
                id: "nope".into(),
                interest_rate: Some(0.1),
                ..Default::default()
            }],
            opts,
            &ctx(),
        )
        .await
        .expect("partial missing");
    assert_bulk_failed(&out, 1, before.revision, "partial update of a missing id");
    assert_item_error(
        &out.errors[0],
        0,
        "nope",
        ErrorCode::NotFound,
        "partial missing",
    );
    assert_unchanged(&store, &before, "partial update of a missing id").await;

    // Partial and upsert together: complete patches create missing ids.
    let opts = BulkUpdateOptions {
        partial_update: true,
        upsert: true,
        validate_all: false,
    };
    let out = store
        .bulk_update(
            vec![OfferPatch::from(offer("new2").amount(1.0))],
            opts,
            &ctx(),
        )
        .await
        .expect("partial upsert");
    assert_bulk_ok(&out, &["new2"], "partial upsert");
    assert!(
        store
            .get("new2")
            .await
            .expect("get")
            .same_content(&offer("new2").amount(1.0))
    );
}

/// Bulk delete: NOT_FOUND unless `ignore_not_found`; DELETED changes carry
/// the last stored state.
pub async fn bulk_delete_flags(store: SharedStore) {
    let mut stored: Vec<MarginOffer> = Vec::new();
    for id in ["a", "b", "c", "d"] {
        stored.push(
            store
                .create(offer(id).rate(0.07), &ctx())
                .await
                .expect("seed")
                .offer,
        );
    }
    let r0 = revision(&store).await;
    let out = store
        .bulk_delete(strings(&["c", "a"]), BulkDeleteOptions::default(), &ctx())
        .await
        .expect("bulk_delete");
    assert_bulk_ok(&out, &["c", "a"], "bulk_delete");
    assert_eq!(out.revision, r0 + 1);
    assert_eq!(snapshot_ids(&store).await, strings(&["b", "d"]));
    let changes = changes_after(&store, r0).await;
    expect_kinds(
        &changes,
        &[("a", ChangeType::Deleted), ("c", ChangeType::Deleted)],
        r0 + 1,
        "bulk_delete",
    );
    for c in &changes {
        let last = stored
            .iter()
            .find(|o| o.id == c.offer.id)
            .expect("known id");
        assert_eq!(&c.offer, last, "DELETED carries the last stored state");
    }

    let before = state(&store).await;
    let out = store
        .bulk_delete(
            strings(&["b", "a", ""]),
            BulkDeleteOptions::default(),
            &ctx(),
        )
        .await
        .expect("bulk_delete");
    assert_bulk_failed(&out, 3, before.revision, "bulk_delete of a missing id");
    assert_eq!(
        out.errors.len(),
        2,
        "bulk_delete reports every failing id: {:?}",
        out.errors
    );
    assert_item_error(&out.errors[0], 1, "a", ErrorCode::NotFound, "bulk_delete");
    assert_item_error(
        &out.errors[1],
        2,
        "",
        ErrorCode::InvalidArgument,
        "bulk_delete",
    );
    assert_unchanged(&store, &before, "bulk_delete of a missing id").await;

    let opts = BulkDeleteOptions {
        ignore_not_found: true,
    };
    let out = store
        .bulk_delete(strings(&["a", "d", "zzz"]), opts, &ctx())
        .await
        .expect("bulk_delete");
    assert_bulk_ok(&out, &["d"], "ignore_not_found");
    assert_eq!(out.revision, before.revision + 1);
    assert_eq!(snapshot_ids(&store).await, strings(&["b"]));

    let r = revision(&store).await;
    let out = store
        .bulk_delete(strings(&["a", "zzz"]), opts, &ctx())
        .await
        .expect("bulk_delete");
    assert_bulk_ok(&out, &[], "only missing ids, ignored");
    assert_eq!(out.revision, r, "nothing deleted, nothing committed");
    assert_eq!(revision(&store).await, r);
}

/// Bulk create-or-update: new ids created, changed ones updated, identical
/// ones untouched; one revision; request order.
pub async fn bulk_upsert(store: SharedStore) {
    let same = store
        .create(offer("same"), &ctx())
        .await
        .expect("seed")
        .offer;
    store.create(offer("changed"), &ctx()).await.expect("seed");
    let r0 = revision(&store).await;
    let out = store
        .bulk_create_or_update(
            vec![offer("new"), offer("same"), offer("changed").rate(0.4)],
            BulkUpsertOptions::default(),
            &ctx(),
        )
        .await
        .expect("bulk_create_or_update");
    assert_bulk_ok(&out, &["new", "same", "changed"], "bulk_create_or_update");
    assert_eq!(out.revision, r0 + 1);
    assert_eq!(
        store.get("same").await.expect("get"),
        same,
        "identical item untouched"
    );
    assert!(
        store
            .get("changed")
            .await
            .expect("get")
            .same_content(&offer("changed").rate(0.4))
    );
    expect_kinds(
        &changes_after(&store, r0).await,
        &[
            ("new", ChangeType::Created),
            ("changed", ChangeType::Updated),
        ],
        r0 + 1,
        "bulk_create_or_update",
    );
}
