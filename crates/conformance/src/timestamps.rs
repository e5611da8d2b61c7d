//! Timestamps: `created_timestamp` is the first creation in this store (a
//! past client value honoured for new ids), `updated_timestamp` the commit
//! time of the last real change.

use crate::support::*;
use offer_domain::{
    BulkCreateOptions, BulkUpdateOptions, BulkUpsertOptions, MarginOffer, OfferPatch,
    OverwriteFilter, OverwriteRequest, Timestamp,
};
use offer_store::SharedStore;
use std::time::Duration;

/// Lets the clock move so that a later write gets a later timestamp.
pub async fn tick() {
    tokio::time::sleep(Duration::from_millis(3)).await;
}

fn future() -> Timestamp {
    Timestamp::from_nanos(Timestamp::now().as_nanos() + NANOS_PER_DAY)
}

fn overwrite_one(o: MarginOffer, source: &str) -> OverwriteRequest {
    // Every offer of `source` in the store is listed by the callers, so the
    // scope keeps them all.
    OverwriteRequest {
        offers: vec![o],
        filter: Some(OverwriteFilter::source(source)),
        validate_all: false,
        dry_run: false,
    }
}

/// Created survives update, create-or-update, bulk update, bulk upsert and
/// overwrite, whatever created value the client sends.
pub async fn created_is_preserved_across_writes(store: SharedStore) {
    let first = store
        .create(sourced("a", "s"), &ctx())
        .await
        .expect("create");
    let created = first.offer.created_timestamp.expect("created set");
    let check = |o: &MarginOffer, what: &str| {
        assert_eq!(
            o.created_timestamp,
            Some(created),
            "{what}: created_timestamp must be preserved"
        );
    };
    let mut rate = 0.05;
    let mut next = |client_created: Option<Timestamp>| {
        rate += 0.01;
        sourced("a", "s").rate(rate).created(client_created)
    };
    for client_created in [Some(days_ago(5)), Some(future()), None] {
        tick().await;
        let w = store
            .update(next(client_created), &ctx())
            .await
            .expect("update");
        check(&w.offer, "update");
        tick().await;
        let w = store
            .create_or_update(next(client_created), &ctx())
            .await
            .expect("create_or_update");
        assert!(!w.was_created, "create_or_update of an existing id");
        check(&w.offer, "create_or_update");
        tick().await;
        let out = store
            .bulk_update(
                vec![OfferPatch::from(next(client_created))],
                BulkUpdateOptions::default(),
                &ctx(),
            )
            .await
            .expect("bulk_update");
        assert_bulk_ok(&out, &["a"], "bulk_update");
        check(&store.get("a").await.expect("get"), "bulk_update");
        tick().await;
        let partial = OfferPatch {
            id: "a".into(),
            interest_rate: Some(next(None).interest_rate),
            created_timestamp: client_created,
            ..Default::default()
        };
        let opts = BulkUpdateOptions {
            partial_update: true,
            ..Default::default()
        };
        let out = store
            .bulk_update(vec![partial], opts, &ctx())
            .await
            .expect("partial bulk_update");
        assert_bulk_ok(&out, &["a"], "partial bulk_update");
        check(&store.get("a").await.expect("get"), "partial bulk_update");
        tick().await;
        let out = store
            .bulk_create_or_update(
                vec![next(client_created)],
                BulkUpsertOptions::default(),
                &ctx(),
            )
            .await
            .expect("bulk_create_or_update");
        assert_bulk_ok(&out, &["a"], "bulk_create_or_update");
        check(&store.get("a").await.expect("get"), "bulk_create_or_update");
        tick().await;
        let out = store
            .overwrite(overwrite_one(next(client_created), "s"), &ctx())
            .await
            .expect("overwrite");
        assert!(out.errors.is_empty(), "overwrite errors {:?}", out.errors);
        assert_eq!(out.updated_ids, strings(&["a"]), "overwrite updated_ids");
        check(&store.get("a").await.expect("get"), "overwrite");
    }
}

/// A past client `created_timestamp` is kept for a new id; a future one is
/// replaced by the server's clock; `updated_timestamp` is the commit time.
pub async fn client_created_timestamp_for_new_ids(store: SharedStore) {
    let past = days_ago(3);
    let mut n = 0;
    for client in [Some(past), Some(future()), None] {
        // Each path creates one new id with `client` as created_timestamp.
        let paths = [
            "create",
            "create_or_update",
            "bulk_create",
            "bulk_upsert",
            "bulk_update_upsert",
            "overwrite",
        ];
        for path in paths {
            n += 1;
            let id = format!("{path}-{n}");
            let o = sourced(&id, &id).created(client);
            let before = Timestamp::now();
            match path {
                "create" => {
                    store.create(o, &ctx()).await.expect(path);
                }
                "create_or_update" => {
                    let w = store.create_or_update(o, &ctx()).await.expect(path);
                    assert!(w.was_created, "create_or_update of a new id");
                }
                "bulk_create" => {
                    let out = store
                        .bulk_create(vec![o], BulkCreateOptions::default(), &ctx())
                        .await
                        .expect(path);
                    assert_bulk_ok(&out, &[&id], path);
                }
                "bulk_upsert" => {
                    let out = store
                        .bulk_create_or_update(vec![o], BulkUpsertOptions::default(), &ctx())
                        .await
                        .expect(path);
                    assert_bulk_ok(&out, &[&id], path);
                }
                "bulk_update_upsert" => {
                    let opts = BulkUpdateOptions {
                        upsert: true,
                        ..Default::default()
                    };
                    let out = store
                        .bulk_update(vec![OfferPatch::from(o)], opts, &ctx())
                        .await
                        .expect(path);
                    assert_bulk_ok(&out, &[&id], path);
                }
                _ => {
                    let out = store
                        .overwrite(overwrite_one(o, &id), &ctx())
                        .await
                        .expect(path);
                    assert!(out.errors.is_empty(), "{path}: errors {:?}", out.errors);
                    assert_eq!(out.created_ids, vec![id.clone()], "{path}: created_ids");
                }
            }
            let after = Timestamp::now();
            let got = store.get(&id).await.expect("get");
            let created = got.created_timestamp.expect("created set");
            let updated = got.updated_timestamp.expect("updated set");
            let what = format!("{path} with client created {client:?}");
            if client == Some(past) {
                assert_eq!(
                    created, past,
                    "{what}: a past created_timestamp is honoured"
                );
            } else {
                assert!(
                    before <= created && created <= after,
                    "{what}: created {created} must be the server's clock in [{before}, {after}]"
                );
            }
            assert!(
                before <= updated && updated <= after,
                "{what}: updated {updated} must be the commit time in [{before}, {after}]"
            );
        }
    }
}

/// A write whose content equals the stored offer (timestamps aside) is
/// unchanged on every path: no new updated_timestamp, no revision, no change.
pub async fn identical_writes_are_unchanged(store: SharedStore) {
    let base = sourced("a", "s").created(Some(days_ago(2))).term(Some(30));
    let w = store.create(base.clone(), &ctx()).await.expect("create");
    let stored = w.offer.clone();
    let r = revision(&store).await;
    assert_eq!(w.revision, r, "create reports its revision");
    tick().await;

    let variants = [
        base.clone().created(None),
        base.clone().created(Some(days_ago(7))),
        base.clone()
            .with(|o| o.updated_timestamp = Some(Timestamp::now())),
        stored.clone(),
    ];
    for v in variants {
        let w = store.update(v.clone(), &ctx()).await.expect("update");
        assert_eq!(w.offer, stored, "identical update returns the stored offer");
        assert_eq!(w.revision, r, "identical update: current revision");
        assert!(!w.was_created);
        let w = store
            .create_or_update(v.clone(), &ctx())
            .await
            .expect("create_or_update");
        assert_eq!(w.offer, stored, "identical create_or_update");
        assert_eq!(
            w.revision, r,
            "identical create_or_update: current revision"
        );
        assert!(!w.was_created, "identical create_or_update: not created");
    }
    let out = store
        .bulk_update(
            vec![OfferPatch::from(base.clone())],
            BulkUpdateOptions::default(),
            &ctx(),
        )
        .await
        .expect("bulk_update");
    assert_bulk_ok(&out, &["a"], "identical bulk_update");
    assert_eq!(out.revision, r, "identical bulk_update: current revision");
    let partial = OfferPatch {
        id: "a".into(),
        interest_rate: Some(base.interest_rate),
        ..Default::default()
    };
    let opts = BulkUpdateOptions {
        partial_update: true,
        ..Default::default()
    };
    let out = store
        .bulk_update(vec![partial], opts, &ctx())
        .await
        .expect("partial bulk_update");
    assert_bulk_ok(&out, &["a"], "identical partial bulk_update");
    assert_eq!(out.revision, r, "identical partial bulk_update: revision");
    let out = store
        .bulk_create_or_update(vec![base.clone()], BulkUpsertOptions::default(), &ctx())
        .await
        .expect("bulk_create_or_update");
    assert_bulk_ok(&out, &["a"], "identical bulk_create_or_update");
    assert_eq!(out.revision, r, "identical bulk_create_or_update: revision");
    let out = store
        .overwrite(overwrite_one(base.clone(), "s"), &ctx())
        .await
        .expect("overwrite");
    assert!(out.errors.is_empty(), "overwrite errors {:?}", out.errors);
    assert_eq!(
        out.unchanged_count, 1,
        "identical overwrite: unchanged_count"
    );
    assert!(
        out.created_ids.is_empty() && out.updated_ids.is_empty() && out.deleted_ids.is_empty(),
        "identical overwrite touches nothing: {out:?}"
    );
    assert_eq!(out.revision, r, "identical overwrite: revision");

    assert_eq!(
        store.get("a").await.expect("get"),
        stored,
        "offer untouched"
    );
    assert_eq!(revision(&store).await, r, "no revision bump");
    assert!(
        changes_after(&store, r).await.is_empty(),
        "unchanged writes record no change"
    );
}

/// Every real change moves updated_timestamp forward (to the commit time)
/// and keeps created.
pub async fn real_changes_bump_updated(store: SharedStore) {
    let w = store
        .create(sourced("a", "s"), &ctx())
        .await
        .expect("create");
    let created = w.offer.created_timestamp;
    let mut last = w.offer.updated_timestamp.expect("updated set");
    let mut r = w.revision;
    for (step, path) in [
        "update",
        "create_or_update",
        "bulk_update",
        "bulk_upsert",
        "overwrite",
    ]
    .into_iter()
    .enumerate()
    {
        tick().await;
        let o = sourced("a", "s").amount(2_000.0 + step as f64);
        let before = Timestamp::now();
        let rev = match path {
            "update" => store.update(o, &ctx()).await.expect(path).revision,
            "create_or_update" => {
                store
                    .create_or_update(o, &ctx())
                    .await
                    .expect(path)
                    .revision
            }
            "bulk_update" => {
                store
                    .bulk_update(
                        vec![OfferPatch::from(o)],
                        BulkUpdateOptions::default(),
                        &ctx(),
                    )
                    .await
                    .expect(path)
                    .revision
            }
            "bulk_upsert" => {
                store
                    .bulk_create_or_update(vec![o], BulkUpsertOptions::default(), &ctx())
                    .await
                    .expect(path)
                    .revision
            }
            _ => {
                store
                    .overwrite(overwrite_one(o, "s"), &ctx())
                    .await
                    .expect(path)
                    .revision
            }
        };
        let after = Timestamp::now();
        let got = store.get("a").await.expect("get");
        let updated = got.updated_timestamp.expect("updated set");
        assert!(
            updated > last && before <= updated && updated <= after,
            "{path}: updated {updated} must move past {last} to the commit time in [{before}, {after}]"
        );
        assert_eq!(got.created_timestamp, created, "{path}: created kept");
        assert_eq!(rev, r + 1, "{path}: one new revision");
        assert_eq!(revision(&store).await, r + 1, "{path}: store revision");
        last = updated;
        r = rev;
    }
}
