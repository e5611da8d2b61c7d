//! Listing: expiry, `active_only`, filters, limits, the total sort order,
//! totals, offset paging and keyset page tokens.

use crate::support::*;
use offer_domain::{
    BulkCreateOptions, InterestModel, ListQuery, MarginOffer, OfferFilter, OfferType, SortField,
    SortOrder, StatsQuery, Timestamp,
};
use offer_store::SharedStore;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use tokio::sync::Semaphore;

async fn create_all(store: &SharedStore, offers: Vec<MarginOffer>) {
    let n = offers.len();
    let out = store
        .bulk_create(offers, BulkCreateOptions::default(), &ctx())
        .await
        .expect("bulk_create");
    assert!(out.errors.is_empty(), "seed errors: {:?}", out.errors);
    assert_eq!(out.success_count, n, "seed success_count");
}

fn id_set(offers: &[MarginOffer]) -> BTreeSet<String> {
    offers.iter().map(|o| o.id.clone()).collect()
}

fn set(ids: &[&str]) -> BTreeSet<String> {
    ids.iter().map(|s| (*s).to_owned()).collect()
}

/// Offers whose `created_timestamp + term_days` is past are hidden from list
/// and stats unless `include_expired`.
pub async fn expired_offers_are_hidden(store: SharedStore) {
    let offers = vec![
        offer("expired").created(Some(days_ago(10))).term(Some(1)),
        offer("just-expired")
            .created(Some(hours_ago(25)))
            .term(Some(1)),
        offer("live-term")
            .created(Some(days_ago(10)))
            .term(Some(30)),
        offer("almost-expired")
            .created(Some(hours_ago(23)))
            .term(Some(1)),
        offer("no-term").created(Some(days_ago(10))).term(None),
        offer("fresh-term").term(Some(1)),
    ];
    for o in offers {
        store.create(o, &ctx()).await.expect("create");
    }
    let live = set(&["live-term", "almost-expired", "no-term", "fresh-term"]);
    let all = set(&[
        "expired",
        "just-expired",
        "live-term",
        "almost-expired",
        "no-term",
        "fresh-term",
    ]);

    let page = store.list(&ListQuery::default()).await.expect("list");
    assert_eq!(id_set(&page.offers), live, "list hides expired offers");
    assert_eq!(page.total, 4, "total counts only unexpired offers");
    let q = ListQuery {
        include_expired: true,
        ..Default::default()
    };
    let page = store.list(&q).await.expect("list");
    assert_eq!(id_set(&page.offers), all, "include_expired lists them");
    assert_eq!(page.total, 6, "include_expired total");

    // Expiry also applies with filters and with page tokens.
    let q = ListQuery {
        limit: 1,
        sort_by: SortField::Id,
        ..Default::default()
    };
    assert_eq!(
        id_set(&collect_pages(&store, q).await),
        live,
        "paged listing hides expired offers"
    );

    let stats = store.stats(&StatsQuery::default()).await.expect("stats");
    assert_eq!(stats.total, 4, "stats hide expired offers");
    assert_eq!(stats.by_offer_type.get("V1"), Some(&4));
    assert_eq!(
        stats.liquidity_by_borrow_token.get("USDC"),
        Some(&4_000.0),
        "liquidity excludes expired offers"
    );
    let stats = store
        .stats(&StatsQuery {
            include_expired: true,
            ..Default::default()
        })
        .await
        .expect("stats");
    assert_eq!(stats.total, 6, "stats include_expired");
    assert_eq!(stats.liquidity_by_borrow_token.get("USDC"), Some(&6_000.0));
    assert_eq!(
        store.count().await.expect("count"),
        4,
        "count hides expired"
    );
}

/// `active_only` additionally hides offers with no available amount.
pub async fn active_only_hides_empty_offers(store: SharedStore) {
    create_all(
        &store,
        vec![
            offer("empty").amount(0.0),
            offer("tiny").amount(0.000_001),
            offer("full").amount(1_000.0),
            offer("expired-full")
                .created(Some(days_ago(10)))
                .term(Some(1)),
            offer("expired-empty")
                .amount(0.0)
                .created(Some(days_ago(10)))
                .term(Some(1)),
        ],
    )
    .await;
    let q = ListQuery {
        active_only: true,
        ..Default::default()
    };
    let page = store.list(&q).await.expect("list");
    assert_eq!(id_set(&page.offers), set(&["tiny", "full"]), "active_only");
    assert_eq!(page.total, 2, "active_only total");
    let q = ListQuery {
        active_only: true,
        include_expired: true,
        ..Default::default()
    };
    let page = store.list(&q).await.expect("list");
    assert_eq!(
        id_set(&page.offers),
        set(&["tiny", "full", "expired-full"]),
        "active_only with include_expired"
    );
    let page = store.list(&ListQuery::default()).await.expect("list");
    assert_eq!(
        id_set(&page.offers),
        set(&["empty", "tiny", "full"]),
        "without active_only empty offers are listed"
    );
}

fn filter_dataset() -> Vec<MarginOffer> {
    let collateral = ["SOL", "sol", "SOLX", "JUP"];
    let borrow = ["USDC", "USDT", "usdc"];
    let liquidity = ["marginfi", "kamino", "marginfi-v2"];
    let lenders = [None, Some("L1"), Some("L2"), Some("L1x")];
    let sources = [None, Some("feed"), Some("Feed"), Some("manual")];
    let amounts = [0.0, 100.0, 250.0, 250.0, 1_000.0, 5_000.5];
    let rates = [0.0, 0.01, 0.05, 0.05, 0.1];
    let opens = [0.5, 0.6, 0.75];
    let base = Timestamp::now().as_nanos();
    (0..24usize)
        .map(|i| {
            let open = opens[(i / 3) % 3];
            offer(&format!("f{i:02}"))
                .kind(OfferType::ALL[i % 3])
                .tokens(collateral[i % 4], borrow[(i / 2) % 3])
                .model(if i % 2 == 0 {
                    InterestModel::Fixed
                } else {
                    InterestModel::Floating
                })
                .liquidity(liquidity[(i / 3) % 3])
                .lender(lenders[(i * 5) % 4])
                .source(sources[(i * 3) % 4])
                .amount(amounts[i % 6])
                .rate(rates[i % 5])
                .ltv(open, open + 0.1)
                .created(Some(Timestamp::from_nanos(
                    base - (i as i64 + 1) * NANOS_PER_HOUR,
                )))
        })
        .collect()
}

/// Every `OfferFilter` field: strings match exactly (case and prefix
/// sensitive), ranges are inclusive; compared against a reference predicate.
pub async fn every_filter_matches_exactly(store: SharedStore) {
    for o in filter_dataset() {
        // One call per offer, so updated timestamps differ.
        store.create(o, &ctx()).await.expect("create");
    }
    let stored = snapshot(&store).await;
    assert_eq!(stored.len(), 24);
    let mut created: Vec<Timestamp> = stored.iter().filter_map(|o| o.created_timestamp).collect();
    created.sort();
    let mut updated: Vec<Timestamp> = stored.iter().filter_map(|o| o.updated_timestamp).collect();
    updated.sort();

    let f = OfferFilter::default;
    let s = |v: &str| Some(v.to_owned());
    // (filter, may the reference result be empty)
    let cases: Vec<(OfferFilter, bool)> = vec![
        (f(), false),
        (
            OfferFilter {
                offer_type: Some(OfferType::V1),
                ..f()
            },
            false,
        ),
        (
            OfferFilter {
                offer_type: Some(OfferType::BP),
                ..f()
            },
            false,
        ),
        (
            OfferFilter {
                offer_type: Some(OfferType::LV),
                ..f()
            },
            false,
        ),
        (
            OfferFilter {
                collateral_token: s("SOL"),
                ..f()
            },
            false,
        ),
        (
            OfferFilter {
                collateral_token: s("sol"),
                ..f()
            },
            false,
        ),
        (
            OfferFilter {
                collateral_token: s("SO"),
                ..f()
            },
            true,
        ),
        (
            OfferFilter {
                collateral_token: s("Sol"),
                ..f()
            },
            true,
        ),
        (
            OfferFilter {
                collateral_token: s("SOL%"),
                ..f()
            },
            true,
        ),
        (
            OfferFilter {
                borrow_token: s("USDC"),
                ..f()
            },
            false,
        ),
        (
            OfferFilter {
                borrow_token: s("usdc"),
                ..f()
            },
            false,
        ),
        (
            OfferFilter {
                borrow_token: s("USD"),
                ..f()
            },
            true,
        ),
        (
            OfferFilter {
                interest_model: Some(InterestModel::Fixed),
                ..f()
            },
            false,
        ),
        (
            OfferFilter {
                interest_model: Some(InterestModel::Floating),
                ..f()
            },
            false,
        ),
        (
            OfferFilter {
                liquidity_source: s("marginfi"),
                ..f()
            },
            false,
        ),
        (
            OfferFilter {
                liquidity_source: s("marginfi-v2"),
                ..f()
            },
            false,
        ),
        (
            OfferFilter {
                liquidity_source: s("margin"),
                ..f()
            },
            true,
        ),
        (
            OfferFilter {
                lender_address: s("L1"),
                ..f()
            },
            false,
        ),
        (
            OfferFilter {
                lender_address: s("L1x"),
                ..f()
            },
            false,
        ),
        (
            OfferFilter {
                lender_address: s("l1"),
                ..f()
            },
            true,
        ),
        (
            OfferFilter {
                source: s("feed"),
                ..f()
            },
            false,
        ),
        (
            OfferFilter {
                source: s("Feed"),
                ..f()
            },
            false,
        ),
        (
            OfferFilter {
                source: s("manual"),
                ..f()
            },
            false,
        ),
        (
            OfferFilter {
                source: s("fee"),
                ..f()
            },
            true,
        ),
        (
            OfferFilter {
                min_borrow_amount: Some(250.0),
                ..f()
            },
            false,
        ),
        (
            OfferFilter {
                max_borrow_amount: Some(250.0),
                ..f()
            },
            false,
        ),
        (
            OfferFilter {
                min_borrow_amount: Some(250.0),
                max_borrow_amount: Some(250.0),
                ..f()
            },
            false,
        ),
        (
            OfferFilter {
                min_borrow_amount: Some(0.0),
                max_borrow_amount: Some(0.0),
                ..f()
            },
            false,
        ),
        (
            OfferFilter {
                min_borrow_amount: Some(5_000.5),
                ..f()
            },
            false,
        ),
        (
            OfferFilter {
                min_borrow_amount: Some(5_000.6),
                ..f()
            },
            true,
        ),
        (
            OfferFilter {
                min_interest_rate: Some(0.05),
                ..f()
            },
            false,
        ),
        (
            OfferFilter {
                max_interest_rate: Some(0.05),
                ..f()
            },
            false,
        ),
        (
            OfferFilter {
                min_interest_rate: Some(0.01),
                max_interest_rate: Some(0.05),
                ..f()
            },
            false,
        ),
        (
            OfferFilter {
                min_interest_rate: Some(0.0),
                max_interest_rate: Some(0.0),
                ..f()
            },
            false,
        ),
        (
            OfferFilter {
                min_max_open_ltv: Some(0.6),
                ..f()
            },
            false,
        ),
        (
            OfferFilter {
                max_max_open_ltv: Some(0.6),
                ..f()
            },
            false,
        ),
        (
            OfferFilter {
                min_max_open_ltv: Some(0.6),
                max_max_open_ltv: Some(0.6),
                ..f()
            },
            false,
        ),
        (
            OfferFilter {
                created_after: Some(created[10]),
                ..f()
            },
            false,
        ),
        (
            OfferFilter {
                created_before: Some(created[10]),
                ..f()
            },
            false,
        ),
        (
            OfferFilter {
                created_after: Some(created[5]),
                created_before: Some(created[5]),
                ..f()
            },
            false,
        ),
        (
            OfferFilter {
                created_after: Some(created[3]),
                created_before: Some(created[17]),
                ..f()
            },
            false,
        ),
        (
            OfferFilter {
                updated_after: Some(updated[10]),
                ..f()
            },
            false,
        ),
        (
            OfferFilter {
                updated_before: Some(updated[10]),
                ..f()
            },
            false,
        ),
        (
            OfferFilter {
                updated_after: Some(updated[7]),
                updated_before: Some(updated[7]),
                ..f()
            },
            false,
        ),
        (
            OfferFilter {
                updated_after: Some(updated[2]),
                updated_before: Some(updated[20]),
                ..f()
            },
            false,
        ),
        (
            OfferFilter {
                collateral_token: s("SOL"),
                borrow_token: s("USDC"),
                min_interest_rate: Some(0.0),
                ..f()
            },
            false,
        ),
        (
            OfferFilter {
                offer_type: Some(OfferType::V1),
                interest_model: Some(InterestModel::Fixed),
                max_borrow_amount: Some(1_000.0),
                ..f()
            },
            false,
        ),
    ];
    for (filter, may_be_empty) in cases {
        let expected: BTreeSet<String> = stored
            .iter()
            .filter(|o| reference_matches(&filter, o))
            .map(|o| o.id.clone())
            .collect();
        assert!(
            may_be_empty || !expected.is_empty(),
            "test data should match {filter:?}"
        );
        if may_be_empty {
            assert!(expected.is_empty(), "expected no match for {filter:?}");
        }
        let page = list_all(
            &store,
            ListQuery {
                filter: filter.clone(),
                ..Default::default()
            },
        )
        .await;
        assert_eq!(id_set(&page.offers), expected, "filter {filter:?}");
        assert_eq!(page.total, expected.len() as i64, "total for {filter:?}");
    }
}

/// limit 0 means 100, 1000 is the maximum; bad limits, offsets and bounds
/// are INVALID_ARGUMENT naming the field.
pub async fn limits_and_bad_arguments(store: SharedStore) {
    let offers: Vec<MarginOffer> = (0..1001).map(|i| offer(&format!("l{i:04}"))).collect();
    create_all(&store, offers).await;

    let page = store.list(&ListQuery::default()).await.expect("limit 0");
    assert_eq!(page.offers.len(), 100, "limit 0 means 100");
    assert_eq!(page.limit, 100, "reported limit");
    assert_eq!(page.total, 1001);
    assert!(page.has_more);
    assert_eq!(page.next_offset, Some(100));

    let q = ListQuery {
        limit: 1000,
        ..Default::default()
    };
    let page = store.list(&q).await.expect("limit 1000");
    assert_eq!(page.offers.len(), 1000, "limit 1000 is allowed");
    assert_eq!(page.limit, 1000);
    assert!(page.has_more);
    assert_eq!(page.next_offset, Some(1000));
    let q = ListQuery {
        limit: 1000,
        offset: 1000,
        ..Default::default()
    };
    let page = store.list(&q).await.expect("last page");
    assert_eq!(page.offers.len(), 1);
    assert!(!page.has_more);
    assert_eq!(page.next_offset, None);
    let q = ListQuery {
        offset: 5000,
        ..Default::default()
    };
    let page = store.list(&q).await.expect("offset past the end");
    assert!(page.offers.is_empty() && !page.has_more);
    assert_eq!(page.total, 1001, "total does not depend on offset");

    for (q, field) in [
        (
            ListQuery {
                limit: 1001,
                ..Default::default()
            },
            "limit",
        ),
        (
            ListQuery {
                limit: i32::MAX,
                ..Default::default()
            },
            "limit",
        ),
        (
            ListQuery {
                limit: -1,
                ..Default::default()
            },
            "limit",
        ),
        (
            ListQuery {
                offset: -1,
                ..Default::default()
            },
            "offset",
        ),
        (
            ListQuery {
                offset: i32::MIN,
                ..Default::default()
            },
            "offset",
        ),
        (
            ListQuery {
                filter: OfferFilter {
                    min_borrow_amount: Some(f64::NAN),
                    ..Default::default()
                },
                ..Default::default()
            },
            "min_borrow_amount",
        ),
        (
            ListQuery {
                filter: OfferFilter {
                    max_interest_rate: Some(f64::NAN),
                    ..Default::default()
                },
                ..Default::default()
            },
            "max_interest_rate",
        ),
    ] {
        let what = format!("list {q:?}");
        expect_invalid(store.list(&q).await, field, &what);
    }
}

fn sort_dataset() -> Vec<MarginOffer> {
    let base = Timestamp::now().as_nanos();
    let collateral = ["SOL", "sol", "Sol", "JUP", "éth", "Zeta"];
    let borrow = ["USDC", "USDT", "usdc", "B"];
    let amounts = [0.0, 100.0, 100.0, 2.5, 1e6];
    let rates = [0.05, 0.01, 0.05, 0.2];
    let opens = [0.5, 0.7, 0.7, 0.8];
    let created_hours = [1, 2, 2, 3, 5];
    (0..45usize)
        .map(|i| {
            let n = (i * 17) % 45;
            let id = if i % 5 == 0 {
                format!("S{n:02}")
            } else {
                format!("s{n:02}")
            };
            let open = opens[(i * 2 + 1) % 4];
            offer(&id)
                .kind(OfferType::ALL[(i * 5) % 3])
                .tokens(collateral[i % 6], borrow[i % 4])
                .amount(amounts[(i * 3) % 5])
                .rate(rates[(i * 7) % 4])
                .ltv(open, open + [0.1, 0.2][i % 2])
                .created(Some(Timestamp::from_nanos(
                    base - created_hours[i % 5] * NANOS_PER_HOUR,
                )))
        })
        .collect()
}

/// Every sort field in both directions gives the reference total order
/// (ties by id ascending), in one page, via page tokens and via offsets.
pub async fn every_sort_field_is_a_total_order(store: SharedStore) {
    // Three batches, so updated_timestamp has ties within and order across.
    let data = sort_dataset();
    for chunk in data.chunks(15) {
        create_all(&store, chunk.to_vec()).await;
        crate::timestamps::tick().await;
    }
    let stored = snapshot(&store).await;
    assert_eq!(stored.len(), 45);
    for by in SortField::ALL {
        for order in [SortOrder::Asc, SortOrder::Desc] {
            let mut reference = stored.clone();
            reference.sort_by(|a, b| reference_cmp(a, b, by, order));
            let expected = ids(&reference);
            let q = ListQuery {
                sort_by: by,
                sort_order: order,
                ..Default::default()
            };
            let page = list_all(&store, q.clone()).await;
            assert_eq!(
                ids(&page.offers),
                expected,
                "one page sorted by {by} {order:?}"
            );
            let paged = collect_pages(
                &store,
                ListQuery {
                    limit: 7,
                    include_expired: true,
                    ..q.clone()
                },
            )
            .await;
            assert_eq!(
                ids(&paged),
                expected,
                "page tokens sorted by {by} {order:?}"
            );
            let mut by_offset = Vec::new();
            let mut offset = 0;
            loop {
                let page = store
                    .list(&ListQuery {
                        limit: 7,
                        offset,
                        ..q.clone()
                    })
                    .await
                    .expect("list");
                by_offset.extend(page.offers);
                match page.next_offset {
                    Some(n) => offset = n,
                    None => break,
                }
            }
            assert_eq!(
                ids(&by_offset),
                expected,
                "offsets sorted by {by} {order:?}"
            );
        }
    }
    // The defaults are created_timestamp descending.
    let mut reference = stored.clone();
    reference.sort_by(|a, b| reference_cmp(a, b, SortField::CreatedTimestamp, SortOrder::Desc));
    let page = list_all(&store, ListQuery::default()).await;
    assert_eq!(ids(&page.offers), ids(&reference), "default sort");
}

/// `total` counts the offers matching the filters, not the page nor the store.
pub async fn total_counts_only_matches(store: SharedStore) {
    let offers: Vec<MarginOffer> = (0..30)
        .map(|i| {
            let o = offer(&format!("t{i:02}"));
            if i % 3 == 0 {
                o.tokens("SOL", "USDT")
            } else {
                o
            }
        })
        .collect();
    create_all(&store, offers).await;
    let mut q = ListQuery {
        limit: 3,
        ..Default::default()
    };
    q.filter.borrow_token = Some("USDT".into());
    let page = store.list(&q).await.expect("list");
    assert_eq!(page.offers.len(), 3);
    assert_eq!(page.total, 10, "total counts every match, not the page");
    assert!(page.has_more);
    q.offset = 9;
    let page = store.list(&q).await.expect("list");
    assert_eq!(page.offers.len(), 1);
    assert_eq!(page.total, 10);
    assert!(!page.has_more);
    let page = store
        .list(&ListQuery {
            limit: 5,
            ..Default::default()
        })
        .await
        .expect("list");
    assert_eq!(page.total, 30, "without filters total is every live offer");
}

/// Offset paging: `has_more` and `next_offset` walk every offer once.
pub async fn offset_paging(store: SharedStore) {
    let base = Timestamp::now().as_nanos();
    let offers: Vec<MarginOffer> = (0..25i64)
        .map(|i| {
            offer(&format!("p{i:02}"))
                .created(Some(Timestamp::from_nanos(base - i * NANOS_PER_HOUR)))
        })
        .collect();
    create_all(&store, offers).await;
    let all = ids(&list_all(&store, ListQuery::default()).await.offers);
    let mut seen = Vec::new();
    let mut offset = 0;
    let expected_pages = [
        (0, 10, true, Some(10)),
        (10, 10, true, Some(20)),
        (20, 5, false, None),
    ];
    for (want_offset, len, more, next) in expected_pages {
        assert_eq!(offset, want_offset);
        let page = store
            .list(&ListQuery {
                limit: 10,
                offset,
                ..Default::default()
            })
            .await
            .expect("list");
        assert_eq!(page.offset, want_offset, "reported offset");
        assert_eq!(page.limit, 10, "reported limit");
        assert_eq!(page.offers.len(), len, "page length at offset {offset}");
        assert_eq!(page.has_more, more, "has_more at offset {offset}");
        assert_eq!(page.next_offset, next, "next_offset at offset {offset}");
        assert_eq!(page.total, 25);
        seen.extend(ids(&page.offers));
        if let Some(n) = page.next_offset {
            offset = n;
        }
    }
    assert_eq!(seen, all, "offset pages concatenate to the full listing");
    // Newest first by default: p00 was created last.
    assert_eq!(seen.first().map(String::as_str), Some("p00"));
}

/// Following `next_page_token` visits every matching offer exactly once,
/// in the query's order, for several sorts, limits and filters.
pub async fn keyset_paging_visits_every_offer_once(store: SharedStore) {
    let offers: Vec<MarginOffer> = (0..57usize)
        .map(|i| {
            offer(&format!("k{:02}", (i * 23) % 57))
                .kind(OfferType::ALL[i % 3])
                .rate([0.01, 0.02, 0.03][i % 3])
                .tokens("SOL", if i % 2 == 0 { "USDC" } else { "USDT" })
        })
        .collect();
    create_all(&store, offers).await;
    let queries = [
        (SortField::CreatedTimestamp, SortOrder::Desc, None),
        (SortField::InterestRate, SortOrder::Asc, None),
        (SortField::OfferType, SortOrder::Desc, None),
        (SortField::Id, SortOrder::Asc, Some("USDT")),
        (SortField::UpdatedTimestamp, SortOrder::Asc, Some("USDC")),
    ];
    for (by, order, borrow) in queries {
        for limit in [1, 5, 56, 57, 100] {
            let mut q = ListQuery {
                sort_by: by,
                sort_order: order,
                limit,
                ..Default::default()
            };
            q.filter.borrow_token = borrow.map(str::to_owned);
            let expected = ids(&list_all(
                &store,
                ListQuery {
                    limit: 0,
                    ..q.clone()
                },
            )
            .await
            .offers);
            let first = store.list(&q).await.expect("first page");
            assert_eq!(first.total, expected.len() as i64);
            let got = ids(&collect_pages(&store, q).await);
            assert_eq!(
                got, expected,
                "keyset pages by {by} {order:?} limit {limit} borrow {borrow:?}"
            );
        }
    }
}

/// Keyset paging while a concurrent task creates and deletes other offers:
/// every offer present throughout is seen exactly once, nothing twice.
pub async fn keyset_paging_under_concurrent_writes(store: SharedStore) {
    let stable: Vec<MarginOffer> = (0..200usize)
        .map(|i| offer(&format!("k{:04}s", (i * 7) % 400)).rate((i % 10) as f64 / 100.0))
        .collect();
    let doomed: Vec<MarginOffer> = (0..40usize)
        .map(|i| offer(&format!("k{:04}d", i * 10)).rate((i % 10) as f64 / 100.0))
        .collect();
    let stable_ids: BTreeSet<String> = id_set(&stable);
    create_all(&store, stable).await;
    create_all(&store, doomed.clone()).await;

    let queries = [
        (SortField::InterestRate, SortOrder::Asc),
        (SortField::CreatedTimestamp, SortOrder::Desc),
        (SortField::Id, SortOrder::Asc),
        (SortField::UpdatedTimestamp, SortOrder::Asc),
    ];
    for (round, (by, order)) in queries.into_iter().enumerate() {
        // Restore the doomed offers deleted by the previous round.
        if round > 0 {
            let opts = BulkCreateOptions {
                ignore_conflicts: true,
                ..Default::default()
            };
            store
                .bulk_create(doomed.clone(), opts, &ctx())
                .await
                .expect("restore doomed");
        }
        let steps = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        // The pager hands out two churn steps per page: enough to interleave
        // writes with every page, few enough that paging reaches the end.
        let permits = Arc::new(Semaphore::new(0));
        let churn = {
            let store = store.clone();
            let steps = steps.clone();
            let stop = stop.clone();
            let permits = permits.clone();
            let doomed = ids(&doomed);
            tokio::spawn(async move {
                let mut i = 0usize;
                loop {
                    permits.acquire().await.expect("semaphore open").forget();
                    if stop.load(Ordering::SeqCst) {
                        return i;
                    }
                    let id = format!("k{:04}c{round}-{i}", (i * 37) % 400);
                    let o = offer(&id).rate(((i * 3) % 10) as f64 / 100.0);
                    store.create(o, &ctx()).await.expect("churn create");
                    if i % 2 == 1 {
                        // Keep every other churn offer; delete the previous one.
                        let prev = format!("k{:04}c{round}-{}", ((i - 1) * 37) % 400, i - 1);
                        store.delete(&prev, &ctx()).await.expect("churn delete");
                    }
                    if let Some(d) = doomed.get(i) {
                        store.delete(d, &ctx()).await.expect("doomed delete");
                    }
                    i += 1;
                    steps.fetch_add(1, Ordering::SeqCst);
                }
            })
        };

        let mut q = ListQuery {
            sort_by: by,
            sort_order: order,
            limit: 7,
            ..Default::default()
        };
        let mut seen: HashMap<String, usize> = HashMap::new();
        let mut pages = 0;
        loop {
            let mark = steps.load(Ordering::SeqCst);
            let page = store.list(&q).await.expect("list page");
            pages += 1;
            for o in &page.offers {
                *seen.entry(o.id.clone()).or_default() += 1;
            }
            let Some(token) = page.next_page_token else {
                break;
            };
            q.page_token = Some(token);
            permits.add_permits(2);
            // At least one write lands between two pages; the second one
            // runs concurrently with the next page's read.
            while steps.load(Ordering::SeqCst) <= mark {
                assert!(!churn.is_finished(), "churn task ended early");
                tokio::task::yield_now().await;
            }
            assert!(pages < 10_000, "paging does not end");
        }
        stop.store(true, Ordering::SeqCst);
        permits.add_permits(1_000_000);
        let churned = churn.await.expect("churn task");
        assert!(churned >= pages - 1, "churn interleaved with paging");

        let dupes: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
        assert!(
            dupes.is_empty(),
            "{by} {order:?}: offers seen twice: {dupes:?}"
        );
        let missing: Vec<_> = stable_ids
            .iter()
            .filter(|id| !seen.contains_key(*id))
            .collect();
        assert!(
            missing.is_empty(),
            "{by} {order:?}: offers present throughout but never seen: {missing:?}"
        );
    }
}

/// Garbled tokens and tokens of another query are refused; a token stays
/// valid with another limit and after the offer it points at is deleted.
pub async fn page_token_errors(store: SharedStore) {
    let offers: Vec<MarginOffer> = (0..20).map(|i| offer(&format!("g{i:02}"))).collect();
    create_all(&store, offers).await;
    let q = ListQuery {
        sort_by: SortField::Id,
        sort_order: SortOrder::Asc,
        limit: 5,
        ..Default::default()
    };
    let first = store.list(&q).await.expect("first page");
    assert_eq!(
        ids(&first.offers),
        strings(&["g00", "g01", "g02", "g03", "g04"])
    );
    let token = first.next_page_token.clone().expect("a next page token");

    let mut garbled_tail = token.clone();
    garbled_tail.pop();
    for bad in [
        "garbage!!".to_owned(),
        "AAAA".to_owned(),
        "eyJ4IjoxfQ".to_owned(),
        format!("{token}x"),
        garbled_tail,
        token.chars().rev().collect(),
    ] {
        let what = format!("garbled token {bad:?}");
        expect_invalid(
            store
                .list(&ListQuery {
                    page_token: Some(bad.clone()),
                    ..q.clone()
                })
                .await,
            "page_token",
            &what,
        );
    }
    let mut other_filter = q.clone();
    other_filter.filter.borrow_token = Some("USDC".into());
    let others = [
        ListQuery {
            sort_order: SortOrder::Desc,
            ..q.clone()
        },
        ListQuery {
            sort_by: SortField::InterestRate,
            ..q.clone()
        },
        ListQuery {
            include_expired: true,
            ..q.clone()
        },
        ListQuery {
            active_only: true,
            ..q.clone()
        },
        other_filter,
    ];
    for other in others {
        let what = format!("token of another query used with {other:?}");
        expect_invalid(
            store
                .list(&ListQuery {
                    page_token: Some(token.clone()),
                    ..other
                })
                .await,
            "page_token",
            &what,
        );
    }

    // The limit is not part of the query, and a keyset cursor survives the
    // deletion of the row it points at.
    store.delete("g04", &ctx()).await.expect("delete");
    store.delete("g05", &ctx()).await.expect("delete");
    let next = store
        .list(&ListQuery {
            limit: 3,
            page_token: Some(token),
            ..q.clone()
        })
        .await
        .expect("token with another limit");
    assert_eq!(ids(&next.offers), strings(&["g06", "g07", "g08"]));
    assert!(next.has_more);
}

/// `list_by_lender`, `list_by_token_pair`, `list_by_offer_type`.
pub async fn list_conveniences(store: SharedStore) {
    create_all(
        &store,
        vec![
            offer("a").lender(Some("L1")).kind(OfferType::BP),
            offer("b").lender(Some("L2")).tokens("JUP", "USDC"),
            offer("c")
                .lender(Some("L1"))
                .tokens("JUP", "USDT")
                .kind(OfferType::BP),
            offer("d").tokens("JUP", "USDC").kind(OfferType::LV),
        ],
    )
    .await;
    let page = store.list_by_lender("L1", 0, 0).await.expect("by lender");
    assert_eq!(id_set(&page.offers), set(&["a", "c"]));
    assert_eq!(page.total, 2);
    let page = store
        .list_by_token_pair("JUP", "USDC", 0, 0)
        .await
        .expect("by pair");
    assert_eq!(id_set(&page.offers), set(&["b", "d"]));
    let page = store
        .list_by_offer_type(OfferType::BP, 1, 1)
        .await
        .expect("by type");
    assert_eq!(page.total, 2);
    assert_eq!(page.offers.len(), 1);
    assert!(!page.has_more);
    let all: HashSet<String> = ids(&store
        .list_by_offer_type(OfferType::LV, 0, 0)
        .await
        .expect("LV")
        .offers)
    .into_iter()
    .collect();
    assert_eq!(all, ["d".to_owned()].into_iter().collect());
}
