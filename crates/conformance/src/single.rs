//! Single writes: create, get, update, delete, create-or-update.

use crate::support::*;
use offer_domain::{ChangeType, InterestModel, OfferType, Timestamp};
use offer_store::SharedStore;
use std::collections::BTreeSet;

/// Every field survives a create/get round trip exactly; the store fills in
/// both timestamps.
pub async fn create_and_get_round_trip(store: SharedStore) {
    let full = offer("full")
        .kind(OfferType::LV)
        .tokens("So11111111111111111111111111111111111111112", "EPjFWdd5")
        .amount(12_345.678_9)
        .ltv(0.333_333_333_333_333_3, 0.9)
        .rate(0.123_456_789)
        .model(InterestModel::Fixed)
        .term(Some(7))
        .liquidity("lavarage")
        .lender(Some("Lender1111"))
        .source(Some("lavarage"))
        .with(|o| {
            o.last_borrowed_timestamp = Some(Timestamp::from_nanos(1_700_000_000_123_456_789))
        });
    let minimal = offer("minimal");
    for o in [full, minimal] {
        let before = Timestamp::now();
        let w = store.create(o.clone(), &ctx()).await.expect("create");
        let after = Timestamp::now();
        assert!(w.was_created, "create reports was_created");
        assert!(
            w.offer.same_content(&o),
            "stored {:?} differs from {o:?}",
            w.offer
        );
        let created = w.offer.created_timestamp.expect("created set");
        let updated = w.offer.updated_timestamp.expect("updated set");
        assert!(
            before <= created && created <= after,
            "created is the server clock"
        );
        assert!(
            created <= updated && updated <= after,
            "updated is the commit time"
        );
        let got = store.get(&o.id).await.expect("get");
        assert_eq!(got, w.offer, "get returns what create reported");
    }
}

/// Create ALREADY_EXISTS; update, delete and get NOT_FOUND; nothing written.
pub async fn single_write_errors(store: SharedStore) {
    store.create(offer("a"), &ctx()).await.expect("create");
    let before = state(&store).await;
    expect_already_exists(
        store.create(offer("a").rate(0.5), &ctx()).await,
        "a",
        "create of an existing id",
    );
    expect_not_found(
        store.update(offer("b"), &ctx()).await,
        "b",
        "update of a missing id",
    );
    expect_not_found(
        store.delete("b", &ctx()).await,
        "b",
        "delete of a missing id",
    );
    expect_not_found(store.get("b").await, "b", "get of a missing id");
    assert_unchanged(&store, &before, "failed single writes").await;

    // A deleted id is gone for every call, and can be created again.
    store.delete("a", &ctx()).await.expect("delete");
    expect_not_found(store.get("a").await, "a", "get after delete");
    expect_not_found(store.delete("a", &ctx()).await, "a", "second delete");
    expect_not_found(
        store.update(offer("a"), &ctx()).await,
        "a",
        "update after delete",
    );
    let w = store.create(offer("a"), &ctx()).await.expect("re-create");
    assert!(w.was_created);
}

/// Update replaces the content; delete removes the offer and returns the
/// revision of the delete.
pub async fn update_and_delete(store: SharedStore) {
    let w0 = store.create(offer("a"), &ctx()).await.expect("create");
    store.create(offer("b"), &ctx()).await.expect("create");
    let changed = offer("a")
        .rate(0.2)
        .amount(5.0)
        .term(Some(3))
        .lender(Some("L"))
        .source(Some("manual"));
    let w = store.update(changed.clone(), &ctx()).await.expect("update");
    assert!(!w.was_created);
    assert!(
        w.offer.same_content(&changed),
        "update replaces every field"
    );
    assert_eq!(w.revision, w0.revision + 2);
    assert_eq!(store.get("a").await.expect("get"), w.offer);
    // A full update clears optional fields it leaves absent.
    let cleared = offer("a");
    let w = store.update(cleared.clone(), &ctx()).await.expect("update");
    assert!(
        w.offer.same_content(&cleared),
        "absent optionals are cleared"
    );

    let r = revision(&store).await;
    let del = store.delete("a", &ctx()).await.expect("delete");
    assert_eq!(del, r + 1, "delete returns its revision");
    assert_eq!(revision(&store).await, r + 1);
    assert_eq!(snapshot_ids(&store).await, strings(&["b"]));
}

/// 16 concurrent create-or-update calls on one new id: exactly one reports
/// `was_created`, each (distinct) write commits its own revision.
pub async fn concurrent_create_or_update_creates_once(store: SharedStore) {
    for round in 0..5 {
        let id = format!("race-{round}");
        let r0 = revision(&store).await;
        let tasks: Vec<_> = (0..16)
            .map(|i| {
                let store = store.clone();
                let o = offer(&id).amount(100.0 + f64::from(i));
                tokio::spawn(async move { store.create_or_update(o, &ctx()).await })
            })
            .collect();
        let mut created = 0;
        let mut revisions = BTreeSet::new();
        for t in futures::future::join_all(tasks).await {
            let w = t.expect("task").expect("create_or_update");
            if w.was_created {
                created += 1;
            }
            revisions.insert(w.revision);
        }
        assert_eq!(created, 1, "exactly one caller creates {id}");
        assert_eq!(
            revision(&store).await,
            r0 + 16,
            "16 distinct writes, 16 revisions"
        );
        assert_eq!(
            revisions,
            (r0 + 1..=r0 + 16).collect(),
            "each write reports its own revision"
        );
        let changes = changes_after(&store, r0).await;
        let kinds: Vec<ChangeType> = changes.iter().map(|c| c.change_type).collect();
        assert_eq!(kinds.len(), 16, "one change per write");
        assert_eq!(kinds[0], ChangeType::Created, "the first change creates");
        assert!(
            kinds[1..].iter().all(|k| *k == ChangeType::Updated),
            "the rest update: {kinds:?}"
        );
    }
}
