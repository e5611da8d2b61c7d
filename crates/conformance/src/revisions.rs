//! The revision counter, `changes_since` change records, and health.

use crate::support::*;
use offer_domain::{
    BulkCreateOptions, BulkDeleteOptions, BulkUpdateOptions, BulkUpsertOptions, ChangeType,
    ListQuery, MarginOffer, OfferPatch, OverwriteFilter, OverwriteRequest, Revision, StatsQuery,
    Timestamp, WriteContext,
};
use offer_store::SharedStore;
use std::collections::BTreeSet;

async fn reads_report(store: &SharedStore, want: Revision, what: &str) {
    assert_eq!(revision(store).await, want, "{what}: store revision");
    let page = store.list(&ListQuery::default()).await.expect("list");
    assert_eq!(
        page.revision, want,
        "{what}: list reports the current revision"
    );
    let stats = store.stats(&StatsQuery::default()).await.expect("stats");
    assert_eq!(
        stats.revision, want,
        "{what}: stats report the current revision"
    );
}

/// Every committed write call bumps the revision by exactly one and reports
/// it; failed and unchanged calls bump nothing; reads report the revision.
pub async fn every_write_bumps_revision_once(store: SharedStore) {
    let r0 = revision(&store).await;
    reads_report(&store, r0, "empty store").await;
    let mut r = r0;
    let mut step = |got: Revision, what: &str| {
        r += 1;
        assert_eq!(got, r, "{what}: reported revision");
        r
    };

    let want = step(
        store
            .create(offer("a"), &ctx())
            .await
            .expect("create")
            .revision,
        "create",
    );
    reads_report(&store, want, "create").await;
    let want = step(
        store
            .update(offer("a").rate(0.2), &ctx())
            .await
            .expect("update")
            .revision,
        "update",
    );
    reads_report(&store, want, "update").await;
    let want = step(
        store
            .create_or_update(offer("b"), &ctx())
            .await
            .expect("upsert")
            .revision,
        "create_or_update",
    );
    reads_report(&store, want, "create_or_update").await;
    let want = step(store.delete("b", &ctx()).await.expect("delete"), "delete");
    reads_report(&store, want, "delete").await;
    let out = store
        .bulk_create(
            vec![offer("c"), offer("d"), offer("e")],
            BulkCreateOptions::default(),
            &ctx(),
        )
        .await
        .expect("bulk_create");
    let want = step(out.revision, "bulk_create");
    reads_report(&store, want, "bulk_create").await;
    let out = store
        .bulk_update(
            vec![
                OfferPatch::from(offer("c").rate(0.3)),
                OfferPatch::from(offer("d").rate(0.3)),
            ],
            BulkUpdateOptions::default(),
            &ctx(),
        )
        .await
        .expect("bulk_update");
    let want = step(out.revision, "bulk_update");
    reads_report(&store, want, "bulk_update").await;
    let out = store
        .bulk_create_or_update(
            vec![offer("c"), offer("f")],
            BulkUpsertOptions::default(),
            &ctx(),
        )
        .await
        .expect("bulk_create_or_update");
    let want = step(out.revision, "bulk_create_or_update");
    reads_report(&store, want, "bulk_create_or_update").await;
    let out = store
        .bulk_delete(strings(&["d", "e"]), BulkDeleteOptions::default(), &ctx())
        .await
        .expect("bulk_delete");
    let want = step(out.revision, "bulk_delete");
    reads_report(&store, want, "bulk_delete").await;
    let out = store
        .overwrite(
            OverwriteRequest {
                offers: vec![offer("a"), offer("g")],
                ..Default::default()
            },
            &ctx(),
        )
        .await
        .expect("overwrite");
    let want = step(out.revision, "overwrite");
    reads_report(&store, want, "overwrite").await;

    // Failed and unchanged writes take no revision.
    assert!(store.create(offer("a"), &ctx()).await.is_err());
    assert!(store.update(offer("zz"), &ctx()).await.is_err());
    assert!(store.delete("zz", &ctx()).await.is_err());
    assert!(store.create(offer("").rate(0.1), &ctx()).await.is_err());
    let w = store
        .update(offer("a"), &ctx())
        .await
        .expect("identical update");
    assert_eq!(
        w.revision, want,
        "unchanged update reports the current revision"
    );
    reads_report(&store, want, "failed and unchanged writes").await;

    let changes = changes_after(&store, r0).await;
    let revs: Vec<Revision> = changes.iter().map(|c| c.revision).collect();
    assert!(
        revs.windows(2).all(|w| w[0] <= w[1]),
        "changes in revision order: {revs:?}"
    );
    let distinct: BTreeSet<Revision> = revs.iter().copied().collect();
    assert_eq!(
        distinct,
        (r0 + 1..=want).collect(),
        "every revision has changes"
    );
}

/// `changes_since` returns exactly the right records: types, revisions,
/// states (DELETED carries the last state), limits and head.
pub async fn changes_since_records(store: SharedStore) {
    let t0 = Timestamp::now();
    let r = revision(&store).await;
    let s = |id: &str| offer(id).source(Some("S"));
    let a1 = store.create(s("a"), &ctx()).await.expect("create").offer;
    let a2 = store
        .update(s("a").rate(0.2), &ctx())
        .await
        .expect("update")
        .offer;
    let b1 = store
        .create_or_update(s("b"), &ctx())
        .await
        .expect("upsert")
        .offer;
    store
        .create_or_update(s("a").rate(0.2), &ctx())
        .await
        .expect("identical");
    store.delete("b", &ctx()).await.expect("delete");
    store
        .bulk_create(vec![s("c"), s("d")], BulkCreateOptions::default(), &ctx())
        .await
        .expect("bulk_create");
    let d = store.get("d").await.expect("get d");
    let c = store.get("c").await.expect("get c");
    let out = store
        .overwrite(
            OverwriteRequest {
                offers: vec![s("a").rate(0.3), s("c"), s("e")],
                filter: Some(OverwriteFilter::source("S")),
                validate_all: false,
                dry_run: false,
            },
            &ctx(),
        )
        .await
        .expect("overwrite");
    assert_eq!(out.revision, r + 6);
    let a3 = store.get("a").await.expect("get a");
    let e = store.get("e").await.expect("get e");
    let t1 = Timestamp::now();

    let mut changes = changes_after(&store, r).await;
    for ch in &changes {
        assert!(
            t0 <= ch.timestamp && ch.timestamp <= t1,
            "change timestamp {} within the test",
            ch.timestamp
        );
    }
    // Order within one revision is not specified.
    changes.sort_by(|x, y| (x.revision, &x.offer.id).cmp(&(y.revision, &y.offer.id)));
    let got: Vec<(Revision, ChangeType, MarginOffer)> = changes
        .into_iter()
        .map(|c| (c.revision, c.change_type, c.offer))
        .collect();
    let want = vec![
        (r + 1, ChangeType::Created, a1),
        (r + 2, ChangeType::Updated, a2),
        (r + 3, ChangeType::Created, b1.clone()),
        (r + 4, ChangeType::Deleted, b1),
        (r + 5, ChangeType::Created, c),
        (r + 5, ChangeType::Created, d.clone()),
        (r + 6, ChangeType::Overwritten, a3),
        (r + 6, ChangeType::Deleted, d),
        (r + 6, ChangeType::Overwritten, e),
    ];
    assert_eq!(got.len(), want.len(), "number of change records: {got:#?}");
    for (g, w) in got.iter().zip(&want) {
        assert_eq!(g, w, "change record");
    }

    let head = r + 6;
    let batch = store
        .changes_since(r + 3, 1000)
        .await
        .expect("changes_since");
    assert_eq!(batch.head, head, "head is the current revision");
    assert!(batch.changes.iter().all(|c| c.revision > r + 3));
    assert_eq!(batch.changes.len(), 6);
    let batch = store.changes_since(r, 2).await.expect("changes_since");
    assert_eq!(
        batch.changes.iter().map(|c| c.revision).collect::<Vec<_>>(),
        vec![r + 1, r + 2],
        "limit returns the oldest changes first"
    );
    assert_eq!(batch.head, head);
    let batch = store
        .changes_since(head, 1000)
        .await
        .expect("changes_since");
    assert!(batch.changes.is_empty(), "nothing after head");
    assert_eq!(batch.head, head);
}

/// Every change names who wrote it; all changes of one call share one
/// operation id, a caller-supplied one is kept.
pub async fn change_records_carry_origin_and_operation(store: SharedStore) {
    let r = revision(&store).await;
    let etl = WriteContext::new("etl");
    store
        .bulk_create(
            vec![offer("a"), offer("b"), offer("c")],
            BulkCreateOptions::default(),
            &etl,
        )
        .await
        .expect("bulk_create");
    let named = WriteContext {
        origin: "backfiller".into(),
        operation_id: "op-42".into(),
    };
    store
        .bulk_create_or_update(
            vec![offer("a").rate(0.2), offer("d")],
            BulkUpsertOptions::default(),
            &named,
        )
        .await
        .expect("bulk upsert");
    store.delete("b", &etl).await.expect("delete");

    let changes = changes_after(&store, r).await;
    assert_eq!(changes.len(), 6);
    let first: Vec<_> = changes.iter().filter(|c| c.revision == r + 1).collect();
    assert!(
        first.iter().all(|c| c.origin == "etl"),
        "origin recorded: {first:?}"
    );
    let op = &first[0].operation_id;
    assert!(!op.is_empty(), "the store assigns an operation id");
    assert!(
        first.iter().all(|c| &c.operation_id == op),
        "one operation id per call"
    );
    let second: Vec<_> = changes.iter().filter(|c| c.revision == r + 2).collect();
    assert_eq!(second.len(), 2);
    assert!(
        second
            .iter()
            .all(|c| c.origin == "backfiller" && c.operation_id == "op-42"),
        "a caller-supplied operation id is kept: {second:?}"
    );
    let third: Vec<_> = changes.iter().filter(|c| c.revision == r + 3).collect();
    assert_eq!(third.len(), 1);
    assert_eq!(third[0].origin, "etl");
    assert!(
        !third[0].operation_id.is_empty() && &third[0].operation_id != op,
        "each call gets its own operation id"
    );
}

/// A fresh store is healthy.
pub async fn health_check_ok(store: SharedStore) {
    store.health_check().await.expect("health_check");
    revision(&store).await;
    store.create(offer("a"), &ctx()).await.expect("create");
    store
        .health_check()
        .await
        .expect("health_check after a write");
}

/// `changes_since` never cuts a revision: a reader resumes from the last
/// revision it saw, so a half-delivered revision would lose the rest.
pub async fn change_batches_hold_whole_revisions(store: SharedStore) {
    let r0 = revision(&store).await;
    let five: Vec<MarginOffer> = (0..5).map(|i| offer(&format!("w{i}"))).collect();
    store
        .bulk_create(five, BulkCreateOptions::default(), &ctx())
        .await
        .expect("bulk_create");
    store.create(offer("x"), &ctx()).await.expect("create");
    let batch = store.changes_since(r0, 2).await.expect("changes_since");
    assert_eq!(
        batch.changes.len(),
        5,
        "one 5-change revision is returned whole"
    );
    assert!(batch.changes.iter().all(|c| c.revision == r0 + 1));
    let rest = store.changes_since(r0 + 1, 2).await.expect("changes_since");
    assert_eq!(rest.changes.len(), 1);
    assert_eq!(rest.changes[0].revision, r0 + 2);
    let all = store.changes_since(r0, 100).await.expect("changes_since");
    assert_eq!(all.changes.len(), 6);
}
