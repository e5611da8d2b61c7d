//! Stats and the counting conveniences built on them.

use crate::support::*;
use offer_domain::{BulkCreateOptions, OfferType, OverwriteFilter, Stats, StatsQuery};
use offer_store::SharedStore;
use std::collections::BTreeMap;

async fn seed(store: &SharedStore) {
    let offers = vec![
        sourced("v1-a", "A").amount(100.0),
        sourced("v1-b", "A").amount(250.5),
        sourced("bp-a", "B")
            .kind(OfferType::BP)
            .tokens("SOL", "USDT")
            .amount(1_000.0),
        offer("lv-a").kind(OfferType::LV).amount(0.25),
        sourced("expired", "A")
            .kind(OfferType::BP)
            .tokens("SOL", "EURC")
            .amount(64.0)
            .created(Some(days_ago(10)))
            .term(Some(1)),
    ];
    let out = store
        .bulk_create(offers, BulkCreateOptions::default(), &ctx())
        .await
        .expect("seed");
    assert!(out.errors.is_empty(), "seed: {:?}", out.errors);
}

fn counts(pairs: &[(&str, i64)]) -> BTreeMap<String, i64> {
    pairs.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect()
}

fn liquidity(pairs: &[(&str, f64)]) -> BTreeMap<String, f64> {
    pairs.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect()
}

/// Offer types with no offer may be reported as 0 or left out.
fn nonzero(m: &BTreeMap<String, i64>) -> BTreeMap<String, i64> {
    m.iter()
        .filter(|(_, v)| **v != 0)
        .map(|(k, v)| (k.clone(), *v))
        .collect()
}

async fn stats(store: &SharedStore, q: StatsQuery) -> Stats {
    store.stats(&q).await.expect("stats")
}

/// Total, counts by offer type and liquidity by borrow token.
pub async fn stats_totals_and_breakdowns(store: SharedStore) {
    let empty = stats(&store, StatsQuery::default()).await;
    assert_eq!(empty.total, 0, "empty store");
    assert!(nonzero(&empty.by_offer_type).is_empty());
    assert!(empty.liquidity_by_borrow_token.is_empty());

    seed(&store).await;
    let s = stats(&store, StatsQuery::default()).await;
    assert_eq!(s.total, 4);
    assert_eq!(
        nonzero(&s.by_offer_type),
        counts(&[("V1", 2), ("BP", 1), ("LV", 1)])
    );
    assert_eq!(
        s.liquidity_by_borrow_token,
        liquidity(&[("USDC", 350.75), ("USDT", 1_000.0)])
    );
    assert_eq!(
        s.revision,
        revision(&store).await,
        "stats report the current revision"
    );
}

/// The filter selects what is counted; expired offers only with include_expired.
pub async fn stats_filter_and_expiry(store: SharedStore) {
    seed(&store).await;
    let a = Some(OverwriteFilter::source("A"));
    let s = stats(
        &store,
        StatsQuery {
            filter: a.clone(),
            include_expired: false,
        },
    )
    .await;
    assert_eq!(s.total, 2);
    assert_eq!(nonzero(&s.by_offer_type), counts(&[("V1", 2)]));
    assert_eq!(s.liquidity_by_borrow_token, liquidity(&[("USDC", 350.5)]));

    let s = stats(
        &store,
        StatsQuery {
            filter: a,
            include_expired: true,
        },
    )
    .await;
    assert_eq!(s.total, 3);
    assert_eq!(nonzero(&s.by_offer_type), counts(&[("V1", 2), ("BP", 1)]));
    assert_eq!(
        s.liquidity_by_borrow_token,
        liquidity(&[("USDC", 350.5), ("EURC", 64.0)])
    );

    let s = stats(
        &store,
        StatsQuery {
            filter: None,
            include_expired: true,
        },
    )
    .await;
    assert_eq!(s.total, 5);
    assert_eq!(
        nonzero(&s.by_offer_type),
        counts(&[("V1", 2), ("BP", 2), ("LV", 1)])
    );

    let bp = OverwriteFilter {
        offer_type: Some(OfferType::BP),
        ..Default::default()
    };
    let s = stats(
        &store,
        StatsQuery {
            filter: Some(bp),
            include_expired: false,
        },
    )
    .await;
    assert_eq!(s.total, 1);
    assert_eq!(s.liquidity_by_borrow_token, liquidity(&[("USDT", 1_000.0)]));

    let s = stats(
        &store,
        StatsQuery {
            filter: Some(OverwriteFilter::source("none")),
            include_expired: true,
        },
    )
    .await;
    assert_eq!(s.total, 0);
    assert!(s.liquidity_by_borrow_token.is_empty());
}

/// count, count_by_offer_type, total_liquidity and overwrite_stats defaults.
pub async fn stats_conveniences(store: SharedStore) {
    seed(&store).await;
    assert_eq!(
        store.count().await.expect("count"),
        4,
        "count hides expired offers"
    );
    assert_eq!(
        nonzero(
            &store
                .count_by_offer_type()
                .await
                .expect("count_by_offer_type")
        ),
        counts(&[("V1", 2), ("BP", 1), ("LV", 1)])
    );
    assert_eq!(
        store.total_liquidity().await.expect("total_liquidity"),
        liquidity(&[("USDC", 350.75), ("USDT", 1_000.0)])
    );
    let all = store.overwrite_stats(None).await.expect("overwrite_stats");
    assert_eq!(
        all.affected_count, 5,
        "the overwrite scope includes expired offers"
    );
    assert_eq!(
        all.affected_ids,
        strings(&["bp-a", "expired", "lv-a", "v1-a", "v1-b"])
    );
}
