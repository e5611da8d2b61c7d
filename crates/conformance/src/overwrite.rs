//! Overwrite: the backfiller's scoped snapshot sync.

use crate::support::*;
use offer_domain::{
    BulkCreateOptions, ChangeType, ErrorCode, MarginOffer, OfferType, OverwriteFilter,
    OverwriteOutcome, OverwriteRequest, StoreError,
};
use offer_store::SharedStore;

async fn seed(store: &SharedStore) {
    let offers = vec![
        sourced("a1", "A"),
        sourced("a2", "A"),
        sourced("a3", "A").tokens("JUP", "USDT"),
        sourced("b1", "B"),
        sourced("b2", "B").kind(OfferType::BP),
        offer("n1"),
    ];
    let out = store
        .bulk_create(offers, BulkCreateOptions::default(), &ctx())
        .await
        .expect("seed");
    assert!(out.errors.is_empty(), "seed: {:?}", out.errors);
}

fn request(offers: Vec<MarginOffer>, filter: Option<OverwriteFilter>) -> OverwriteRequest {
    OverwriteRequest {
        offers,
        filter,
        validate_all: false,
        dry_run: false,
    }
}

fn a_snapshot() -> Vec<MarginOffer> {
    vec![
        sourced("a1", "A"),
        sourced("a2", "A").rate(0.2),
        sourced("a4", "A"),
    ]
}

fn assert_outcome(
    out: &OverwriteOutcome,
    created: &[&str],
    updated: &[&str],
    deleted: &[&str],
    unchanged: usize,
    what: &str,
) {
    assert!(out.errors.is_empty(), "{what}: errors {:?}", out.errors);
    assert_eq!(
        sorted(out.created_ids.clone()),
        strings(created),
        "{what}: created_ids"
    );
    assert_eq!(
        sorted(out.updated_ids.clone()),
        strings(updated),
        "{what}: updated_ids"
    );
    assert_eq!(
        sorted(out.deleted_ids.clone()),
        strings(deleted),
        "{what}: deleted_ids"
    );
    assert_eq!(out.unchanged_count, unchanged, "{what}: unchanged_count");
}

/// A source's snapshot creates, updates, deletes and leaves alone exactly
/// the right ids in its scope, and never touches other sources.
pub async fn overwrite_is_scoped_by_source(store: SharedStore) {
    seed(&store).await;
    let before = snapshot(&store).await;
    let outside: Vec<MarginOffer> = before
        .iter()
        .filter(|o| o.source.as_deref() != Some("A"))
        .cloned()
        .collect();
    let a3 = before.iter().find(|o| o.id == "a3").cloned().expect("a3");
    let r0 = revision(&store).await;

    let out = store
        .overwrite(
            request(a_snapshot(), Some(OverwriteFilter::source("A"))),
            &ctx(),
        )
        .await
        .expect("overwrite");
    assert_outcome(&out, &["a4"], &["a2"], &["a3"], 1, "overwrite of A");
    assert_eq!(out.revision, r0 + 1, "one revision");
    assert_eq!(revision(&store).await, r0 + 1);

    let after = snapshot(&store).await;
    assert_eq!(ids(&after), strings(&["a1", "a2", "a4", "b1", "b2", "n1"]));
    let outside_after: Vec<MarginOffer> = after
        .iter()
        .filter(|o| o.source.as_deref() != Some("A"))
        .cloned()
        .collect();
    assert_eq!(
        outside_after, outside,
        "offers outside the scope are untouched"
    );
    assert!(
        after
            .iter()
            .find(|o| o.id == "a2")
            .expect("a2")
            .same_content(&sourced("a2", "A").rate(0.2))
    );

    let changes = changes_after(&store, r0).await;
    let mut got: Vec<(String, ChangeType)> = changes
        .iter()
        .map(|c| (c.offer.id.clone(), c.change_type))
        .collect();
    got.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        got,
        vec![
            ("a2".to_owned(), ChangeType::Overwritten),
            ("a3".to_owned(), ChangeType::Deleted),
            ("a4".to_owned(), ChangeType::Overwritten),
        ],
        "overwrite change records"
    );
    assert!(changes.iter().all(|c| c.revision == r0 + 1));
    let deleted = changes
        .iter()
        .find(|c| c.offer.id == "a3")
        .expect("a3 change");
    assert_eq!(deleted.offer, a3, "DELETED carries the last stored state");

    // Running the same snapshot again changes nothing.
    let out = store
        .overwrite(
            request(a_snapshot(), Some(OverwriteFilter::source("A"))),
            &ctx(),
        )
        .await
        .expect("overwrite again");
    assert_outcome(&out, &[], &[], &[], 3, "repeated overwrite");
    assert_eq!(out.revision, r0 + 1, "nothing committed");
    assert_eq!(snapshot(&store).await, after);
}

/// Without a filter the scope is the whole store.
pub async fn overwrite_without_filter_replaces_the_store(store: SharedStore) {
    seed(&store).await;
    let out = store
        .overwrite(
            request(
                vec![sourced("b1", "B").rate(0.3), offer("n1"), offer("w")],
                None,
            ),
            &ctx(),
        )
        .await
        .expect("overwrite");
    assert_outcome(
        &out,
        &["w"],
        &["b1"],
        &["a1", "a2", "a3", "b2"],
        1,
        "unfiltered",
    );
    assert_eq!(snapshot_ids(&store).await, strings(&["b1", "n1", "w"]));
}

/// A dry run returns exactly what the real run then returns (revision
/// aside) and commits nothing.
pub async fn dry_run_matches_the_real_run(store: SharedStore) {
    seed(&store).await;
    let cases = vec![
        request(a_snapshot(), Some(OverwriteFilter::source("A"))),
        request(vec![sourced("b1", "B").rate(0.5), sourced("b9", "B")], None),
        request(vec![], Some(OverwriteFilter::source("B"))),
        // A failing request: the second offer is outside the scope.
        request(
            vec![sourced("c1", "C"), sourced("c2", "D")],
            Some(OverwriteFilter::source("C")),
        ),
    ];
    for (i, req) in cases.into_iter().enumerate() {
        let what = format!("case {i}");
        let before = state(&store).await;
        let dry = store
            .overwrite(
                OverwriteRequest {
                    dry_run: true,
                    ..req.clone()
                },
                &ctx(),
            )
            .await
            .expect("dry run");
        assert_eq!(
            dry.revision, before.revision,
            "{what}: a dry run reports the current revision"
        );
        assert_unchanged(&store, &before, &format!("{what}: dry run")).await;
        let real = store.overwrite(req, &ctx()).await.expect("real run");
        let expect_commit = real.errors.is_empty()
            && !(real.created_ids.is_empty()
                && real.updated_ids.is_empty()
                && real.deleted_ids.is_empty());
        assert_eq!(
            real.revision,
            before.revision + i64::from(expect_commit),
            "{what}: real run revision"
        );
        assert_eq!(
            OverwriteOutcome { revision: 0, ..dry },
            OverwriteOutcome {
                revision: 0,
                ..real
            },
            "{what}: dry run and real run responses"
        );
    }
}

/// The preview lists the ids currently in scope, sorted, expired ones
/// included (they are stored offers).
pub async fn preview_lists_ids_in_scope(store: SharedStore) {
    seed(&store).await;
    store
        .create(
            sourced("a0-expired", "A")
                .created(Some(days_ago(10)))
                .term(Some(1)),
            &ctx(),
        )
        .await
        .expect("create");
    let preview = |f: Option<OverwriteFilter>| {
        let store = store.clone();
        async move { store.overwrite_preview(f.as_ref()).await.expect("preview") }
    };
    assert_eq!(
        preview(Some(OverwriteFilter::source("A"))).await,
        strings(&["a0-expired", "a1", "a2", "a3"])
    );
    assert_eq!(
        preview(Some(OverwriteFilter::source("Z"))).await,
        Vec::<String>::new()
    );
    assert_eq!(
        preview(None).await,
        strings(&["a0-expired", "a1", "a2", "a3", "b1", "b2", "n1"])
    );
    assert_eq!(
        preview(Some(OverwriteFilter::default())).await,
        preview(None).await,
        "an empty filter selects everything"
    );
    let f = OverwriteFilter {
        source: Some("A".into()),
        borrow_token: Some("USDT".into()),
        ..Default::default()
    };
    assert_eq!(preview(Some(f)).await, strings(&["a3"]));
    let f = OverwriteFilter {
        offer_type: Some(OfferType::BP),
        ..Default::default()
    };
    assert_eq!(preview(Some(f)).await, strings(&["b2"]));

    let stats = store
        .overwrite_stats(Some(&OverwriteFilter::source("B")))
        .await
        .expect("overwrite_stats");
    assert_eq!(stats.affected_count, 2);
    assert_eq!(stats.affected_ids, strings(&["b1", "b2"]));
}

/// No offers and no filter is refused; no offers with a filter deletes the
/// scope.
pub async fn empty_overwrites(store: SharedStore) {
    seed(&store).await;
    let before = state(&store).await;
    for filter in [None, Some(OverwriteFilter::default())] {
        for dry_run in [false, true] {
            let req = OverwriteRequest {
                offers: vec![],
                filter: filter.clone(),
                validate_all: false,
                dry_run,
            };
            let what = format!("empty overwrite, filter {filter:?}, dry_run {dry_run}");
            match store.overwrite(req, &ctx()).await {
                Err(StoreError::InvalidArgument(_)) => {}
                other => panic!("{what}: expected InvalidArgument, got {other:?}"),
            }
            assert_unchanged(&store, &before, &what).await;
        }
    }
    let out = store
        .overwrite(request(vec![], Some(OverwriteFilter::source("A"))), &ctx())
        .await
        .expect("empty scoped overwrite");
    assert_outcome(
        &out,
        &[],
        &[],
        &["a1", "a2", "a3"],
        0,
        "empty scoped overwrite",
    );
    assert_eq!(out.revision, before.revision + 1);
    assert_eq!(snapshot_ids(&store).await, strings(&["b1", "b2", "n1"]));
}

/// Every offer of the request must match the filter, and an id stored
/// outside the scope cannot be pulled into it: item errors, nothing written.
pub async fn offers_outside_the_scope_are_refused(store: SharedStore) {
    seed(&store).await;
    let before = state(&store).await;
    // (offers, scope, failing index, failing id, expected code if specified)
    type Case = (
        Vec<MarginOffer>,
        OverwriteFilter,
        usize,
        &'static str,
        Option<ErrorCode>,
    );
    let cases: Vec<Case> = vec![
        (
            vec![sourced("a1", "A"), sourced("x", "B")],
            OverwriteFilter::source("A"),
            1,
            "x",
            Some(ErrorCode::InvalidArgument),
        ),
        (
            vec![offer("x"), sourced("a1", "A")],
            OverwriteFilter::source("A"),
            0,
            "x",
            Some(ErrorCode::InvalidArgument),
        ),
        (
            vec![sourced("a1", "A").tokens("JUP", "USDC")],
            OverwriteFilter {
                source: Some("A".into()),
                borrow_token: Some("USDT".into()),
                ..Default::default()
            },
            0,
            "a1",
            Some(ErrorCode::InvalidArgument),
        ),
        // b1 is stored with source B: outside A's scope.
        (
            vec![sourced("a1", "A"), sourced("b1", "A")],
            OverwriteFilter::source("A"),
            1,
            "b1",
            None,
        ),
    ];
    for (offers, filter, index, id, code) in cases {
        for dry_run in [true, false] {
            let what = format!(
                "overwrite {:?} in {filter:?} (dry_run {dry_run})",
                ids(&offers)
            );
            let out = store
                .overwrite(
                    OverwriteRequest {
                        offers: offers.clone(),
                        filter: Some(filter.clone()),
                        validate_all: true,
                        dry_run,
                    },
                    &ctx(),
                )
                .await
                .expect(&what);
            assert_eq!(out.errors.len(), 1, "{what}: errors {:?}", out.errors);
            let e = &out.errors[0];
            assert_eq!((e.index, e.id.as_str()), (index, id), "{what}: error {e:?}");
            if let Some(code) = code {
                assert_eq!(e.code, code, "{what}: error code");
            }
            assert!(
                out.created_ids.is_empty()
                    && out.updated_ids.is_empty()
                    && out.deleted_ids.is_empty(),
                "{what}: a failed overwrite reports no effects: {out:?}"
            );
            assert_unchanged(&store, &before, &what).await;
        }
    }
}
