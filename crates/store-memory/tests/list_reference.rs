//! The indexed list path against a naive scan-and-sort on a book with long
//! runs of tied keys, expired and inactive offers: every filter shape the
//! planner treats differently, every sort field and direction, paged by
//! token to the end and by offset.

#![allow(clippy::expect_used)] // test setup

use offer_domain::query::{compare_keys, compare_offers};
use offer_domain::{
    BulkUpsertOptions, ListQuery, MarginOffer, OfferFilter, OfferType, SortField, SortOrder,
    Timestamp, WriteContext,
};
use offer_store::MarginOfferStore;
use store_memory::MemoryStore;

fn book() -> Vec<MarginOffer> {
    let mut book = store_bench::book(3000, 11);
    let day = 86_400 * 1_000_000_000i64;
    for (i, o) in book.iter_mut().enumerate() {
        // A run of 600 equal creation times (longer than a buffered run).
        if i % 5 == 0 {
            o.created_timestamp = Some(Timestamp(1_700_000_000 * 1_000_000_000));
        }
        // Long runs of equal rates and amounts.
        if i % 3 == 0 {
            o.interest_rate = 0.1;
        }
        if i % 4 == 0 {
            o.available_borrow_amount = 0.0;
        }
        // Expired: a one-day term created 40 days ago.
        if i % 11 == 0 {
            o.term_days = Some(1);
            o.created_timestamp = Some(Timestamp(Timestamp::now().0 - 40 * day));
        }
    }
    book
}

fn reference(stored: &[MarginOffer], q: &ListQuery) -> (i64, Vec<String>) {
    let r = q.resolve().expect("valid");
    let now = Timestamp::now();
    let mut rows: Vec<&MarginOffer> = stored.iter().filter(|o| q.admits(o, now)).collect();
    let total = rows.len() as i64;
    if let Some((key, id)) = &r.after {
        rows.retain(|o| compare_keys(&q.sort_by.key(o), &o.id, key, id, q.sort_order).is_gt());
    }
    rows.sort_by(|a, b| compare_offers(a, b, q.sort_by, q.sort_order));
    let page = rows
        .into_iter()
        .skip(r.offset)
        .take(r.limit)
        .map(|o| o.id.clone())
        .collect();
    (total, page)
}

fn filters(book: &[MarginOffer]) -> Vec<OfferFilter> {
    let popular = store_bench::popular_borrow_token();
    let lender = book
        .iter()
        .find_map(|o| o.lender_address.clone())
        .expect("a lender");
    vec![
        OfferFilter::default(),
        OfferFilter {
            borrow_token: Some(popular.clone()),
            ..Default::default()
        },
        OfferFilter {
            collateral_token: Some(store_bench::mint(1)),
            ..Default::default()
        },
        OfferFilter {
            offer_type: Some(OfferType::LV),
            ..Default::default()
        },
        OfferFilter {
            lender_address: Some(lender),
            ..Default::default()
        },
        OfferFilter {
            source: Some("source-2".into()),
            borrow_token: Some(popular),
            min_interest_rate: Some(0.05),
            ..Default::default()
        },
        OfferFilter {
            borrow_token: Some("no such mint".into()),
            ..Default::default()
        },
    ]
}

#[tokio::test]
async fn pages_and_totals_match_a_naive_scan_and_sort() {
    let store = MemoryStore::new();
    let ctx = WriteContext::default();
    let input = book();
    store
        .bulk_create_or_update(input.clone(), BulkUpsertOptions::default(), &ctx)
        .await
        .expect("load");
    // Move some offers between buckets and keys, delete others.
    let mut moved = input[..300].to_vec();
    for o in &mut moved {
        o.borrow_token = store_bench::mint(1);
        o.interest_rate += 0.01;
    }
    store
        .bulk_create_or_update(moved, BulkUpsertOptions::default(), &ctx)
        .await
        .expect("update");
    for o in &input[300..400] {
        store.delete(&o.id, &ctx).await.expect("delete");
    }
    let mut stored = Vec::new();
    for o in &input[..] {
        if let Ok(s) = store.get(&o.id).await {
            stored.push(s);
        }
    }
    let mut pages = 0;
    for filter in filters(&input) {
        for by in SortField::ALL {
            for order in [SortOrder::Asc, SortOrder::Desc] {
                for (include_expired, active_only) in [(false, false), (true, true)] {
                    let mut q = ListQuery {
                        filter: filter.clone(),
                        sort_by: by,
                        sort_order: order,
                        limit: 150,
                        include_expired,
                        active_only,
                        ..Default::default()
                    };
                    let mut seen = 0;
                    loop {
                        let page = store.list(&q).await.expect("list");
                        let (total, ids) = reference(&stored, &q);
                        let got: Vec<String> = page.offers.iter().map(|o| o.id.clone()).collect();
                        assert_eq!(got, ids, "{by} {order:?} {filter:?} after {seen}");
                        assert_eq!(page.total, total, "{by} {order:?} {filter:?}");
                        pages += 1;
                        seen += got.len();
                        match page.next_page_token {
                            Some(t) => q.page_token = Some(t),
                            None => break,
                        }
                    }
                    q.page_token = None;
                    q.offset = 420;
                    let page = store.list(&q).await.expect("list");
                    let got: Vec<String> = page.offers.iter().map(|o| o.id.clone()).collect();
                    assert_eq!(got, reference(&stored, &q).1, "{by} {order:?} offset");
                }
            }
        }
    }
    assert!(pages > 1000, "{pages} pages");
}
