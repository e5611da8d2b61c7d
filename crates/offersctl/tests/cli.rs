//! The real `offersctl` binary against a real `store` on SQLite.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{Store, offersctl, ok, stderr, stdout};
use offer_domain::query::compare_offers;
use offer_domain::{
    BulkCreateOptions, ListQuery, MarginOffer, OfferType, OverwriteFilter, SortField, SortOrder,
    WriteContext,
};
use offer_store::MarginOfferStore as _;
use serde_json::Value;

fn offer(id: &str, borrow: &str, rate: f64, source: &str) -> MarginOffer {
    MarginOffer {
        borrow_token: borrow.into(),
        interest_rate: rate,
        source: Some(source.into()),
        ..MarginOffer::example(id)
    }
}

/// 260 USDC offers (rates with many ties, some BP) and 40 USDT offers.
fn book() -> Vec<MarginOffer> {
    let mut v = Vec::new();
    for i in 0..260 {
        let mut o = offer(
            &format!("usdc-{i:03}"),
            "USDC",
            f64::from(i % 37) / 1000.0,
            "seed",
        );
        if i % 5 == 0 {
            o.offer_type = OfferType::BP;
        }
        v.push(o);
    }
    for i in 0..40 {
        v.push(offer(&format!("usdt-{i:03}"), "USDT", 0.02, "seed"));
    }
    v
}

async fn seeded() -> (Store, Vec<MarginOffer>) {
    let store = Store::start();
    let client = store.client().await;
    let book = book();
    let out = client
        .bulk_create(
            book.clone(),
            BulkCreateOptions::default(),
            &WriteContext::new("test"),
        )
        .await
        .unwrap();
    assert_eq!(out.success_count, book.len(), "{out:?}");
    (store, book)
}

fn ndjson(s: &str) -> Vec<Value> {
    s.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad JSON line {l:?}: {e}")))
        .collect()
}

fn ids_of(lines: &[Value]) -> Vec<String> {
    lines
        .iter()
        .map(|v| v["id"].as_str().unwrap().to_owned())
        .collect()
}

fn assert_one_line_error(o: &std::process::Output, code: i32, needles: &[&str]) {
    let err = stderr(o);
    assert_eq!(o.status.code(), Some(code), "stderr: {err}");
    assert_eq!(err.lines().count(), 1, "stderr: {err:?}");
    for n in needles {
        assert!(err.contains(n), "{n:?} not in {err:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_all_follows_every_page_in_order() {
    let (store, book) = seeded().await;
    let mut expected: Vec<MarginOffer> = book
        .into_iter()
        .filter(|o| o.borrow_token == "USDC")
        .collect();
    expected.sort_by(|a, b| compare_offers(a, b, SortField::InterestRate, SortOrder::Desc));
    let expected: Vec<String> = expected.into_iter().map(|o| o.id).collect();

    // The table, over pages of 50 offers: every offer once, in order.
    let args = [
        "list",
        "--borrow-token",
        "USDC",
        "--sort-by",
        "interest_rate",
        "--all",
    ];
    let table = ok(&store.ctl(&[&args[..], &["--limit", "50"]].concat()));
    let lines: Vec<&str> = table.lines().collect();
    assert!(lines[0].starts_with("ID "), "{table}");
    for h in [
        "TYPE",
        "COLLATERAL",
        "BORROW",
        "AVAILABLE",
        "OPEN/LIQ LTV",
        "RATE %",
        "MODEL",
        "SOURCE",
        "UPDATED",
    ] {
        assert!(lines[0].contains(h), "{h} missing: {}", lines[0]);
    }
    let rows: Vec<String> = lines[1..lines.len() - 1]
        .iter()
        .map(|l| l.split_whitespace().next().unwrap().to_owned())
        .collect();
    assert_eq!(rows, expected);
    let footer = lines[lines.len() - 1];
    assert!(
        footer.starts_with("260 of 260 offers (revision "),
        "{footer}"
    );
    // Aligned: the type column starts at the same place on every row.
    let col = lines[0].find("TYPE").unwrap();
    assert!(lines[1..lines.len() - 1].iter().all(|l| {
        let t = &l[col..col + 2];
        t == "V1" || t == "BP"
    }));

    // JSON lines, default page size (one page) and pages of 7: the same.
    let json = ndjson(&ok(&store.ctl(&[&args[..], &["--json"]].concat())));
    assert_eq!(ids_of(&json), expected);
    let json7 = ndjson(&ok(
        &store.ctl(&[&args[..], &["--json", "--limit", "7"]].concat())
    ));
    assert_eq!(ids_of(&json7), expected);
    let first = &json[0];
    for f in [
        "offer_type",
        "collateral_token",
        "borrow_token",
        "available_borrow_amount",
        "max_open_ltv",
        "liquidation_ltv",
        "interest_rate",
        "interest_model",
        "liquidity_source",
        "created_timestamp",
        "updated_timestamp",
        "source",
    ] {
        assert!(first.get(f).is_some(), "{f} missing in {first}");
    }
    let created = first["created_timestamp"].as_str().unwrap();
    assert!(
        offer_domain::json::parse_rfc3339(created).is_ok(),
        "{created}"
    );
    assert_eq!(first["source"], "seed");

    // Without --all: one page and a token to continue with.
    let page1 = ok(&store.ctl(&[
        "list",
        "--borrow-token",
        "USDC",
        "--sort-by",
        "interest_rate",
    ]));
    let footer = page1.lines().last().unwrap();
    assert!(footer.starts_with("100 of 260 offers"), "{footer}");
    let token = footer.split("--page-token ").nth(1).unwrap().trim();
    let o = store.ctl(&[
        "list",
        "--borrow-token",
        "USDC",
        "--sort-by",
        "interest_rate",
        "--page-token",
        token,
        "--json",
    ]);
    let page2 = ndjson(&ok(&o));
    assert_eq!(ids_of(&page2), expected[100..200]);
    // stdout stays NDJSON; the next token goes to stderr.
    assert!(
        stderr(&o).starts_with("more offers: --page-token "),
        "{}",
        stderr(&o)
    );

    // More filters pass through: BP offers with rate <= 1 %, ascending.
    let bp = ndjson(&ok(&store.ctl(&[
        "list",
        "--offer-type",
        "BP",
        "--max-interest-rate",
        "0.01",
        "--sort-by",
        "id",
        "--sort-order",
        "asc",
        "--all",
        "--json",
    ])));
    assert!(!bp.is_empty());
    assert!(
        bp.iter()
            .all(|v| v["offer_type"] == "BP" && v["interest_rate"].as_f64().unwrap() <= 0.01)
    );
    let ids = ids_of(&bp);
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
    let none = ok(&store.ctl(&["list", "--created-after", "2200-01-01T00:00:00Z"]));
    assert!(none.lines().last().unwrap().starts_with("0 of 0 offers"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_stats_and_delete() {
    let (store, _) = seeded().await;

    let text = ok(&store.ctl(&["get", "usdc-001"]));
    assert!(
        text.lines()
            .any(|l| l.starts_with("id ") && l.ends_with("usdc-001")),
        "{text}"
    );
    assert!(text.contains("interest_rate"), "{text}");
    let json = ndjson(&ok(&store.ctl(&["--json", "get", "usdc-001"])));
    assert_eq!(json.len(), 1);
    assert_eq!(json[0]["interest_rate"].as_f64(), Some(0.001));
    assert_eq!(json[0]["borrow_token"], "USDC");
    assert_one_line_error(&store.ctl(&["get", "nope"]), 1, &["NOT_FOUND", "nope"]);

    let s = ndjson(&ok(&store.ctl(&["stats", "--json"])));
    assert_eq!(s[0]["total"], 300);
    assert_eq!(s[0]["by_offer_type"]["BP"], 52);
    assert_eq!(s[0]["by_offer_type"]["V1"], 248);
    assert_eq!(
        s[0]["liquidity_by_borrow_token"]["USDT"].as_f64(),
        Some(40_000.0)
    );
    let s = ndjson(&ok(&store.ctl(&[
        "stats",
        "--json",
        "--borrow-token",
        "USDC",
    ])));
    assert_eq!(s[0]["total"], 260);
    let s = ndjson(&ok(&store.ctl(&["stats", "--json", "--source", "other"])));
    assert_eq!(s[0]["total"], 0);
    let text = ok(&store.ctl(&["stats"]));
    assert!(text.starts_with("offers: 300"), "{text}");
    assert!(text.contains("USDT   40,000.00"), "{text}");

    let out = ok(&store.ctl(&["delete", "usdt-000"]));
    assert!(out.starts_with("deleted usdt-000 (revision "), "{out}");
    assert_one_line_error(&store.ctl(&["delete", "usdt-000"]), 1, &["NOT_FOUND"]);
    let s = ndjson(&ok(&store.ctl(&["--json", "stats"])));
    assert_eq!(s[0]["total"], 299);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overwrite_dry_run_then_apply() {
    let (store, _) = seeded().await;
    let client = store.client().await;
    let feed: Vec<MarginOffer> = ["f1", "f2", "f3"]
        .iter()
        .map(|id| offer(id, "USDC", 0.03, "feed"))
        .collect();
    client
        .bulk_create(feed, BulkCreateOptions::default(), &WriteContext::new("t"))
        .await
        .unwrap();
    let before_rev = client.revision().await.unwrap();

    // f1 unchanged, f2 changed, f3 gone, f4 new; `source` in the file is
    // ignored (every offer gets --source).
    let mut f2 = offer_domain::json::offer_to_json(&offer("f2", "USDC", 0.04, "elsewhere"));
    f2["term_days"] = 0.into();
    let file = serde_json::json!([
        offer_domain::json::offer_to_json(&offer("f1", "USDC", 0.03, "feed")),
        f2,
        offer_domain::json::offer_to_json(&offer("f4", "USDT", 0.01, "feed")),
    ]);
    let path = store.dir.path().join("feed.json");
    std::fs::write(&path, serde_json::to_string_pretty(&file).unwrap()).unwrap();
    let path = path.to_str().unwrap();

    let dry = ok(&store.ctl(&["overwrite", "--source", "feed", path, "--dry-run"]));
    let lines: Vec<&str> = dry.lines().collect();
    assert!(
        lines[0].contains("would create 1, update 1, delete 1; 1 unchanged"),
        "{dry}"
    );
    assert!(lines.contains(&"created: f4"), "{dry}");
    assert!(lines.contains(&"updated: f2"), "{dry}");
    assert!(lines.contains(&"deleted: f3"), "{dry}");
    // Nothing written.
    assert_eq!(client.revision().await.unwrap(), before_rev);
    assert_eq!(
        client
            .overwrite_preview(Some(&OverwriteFilter::source("feed")))
            .await
            .unwrap(),
        ["f1", "f2", "f3"]
    );
    assert_eq!(client.get("f2").await.unwrap().interest_rate, 0.03);

    let applied = ndjson(&ok(&store.ctl(&[
        "--json",
        "overwrite",
        "--source",
        "feed",
        path,
    ])));
    let a = &applied[0];
    assert_eq!(a["created_ids"], serde_json::json!(["f4"]));
    assert_eq!(a["updated_ids"], serde_json::json!(["f2"]));
    assert_eq!(a["deleted_ids"], serde_json::json!(["f3"]));
    assert_eq!(a["unchanged_count"], 1);
    assert_eq!(a["dry_run"], false);
    assert_eq!(a["revision"].as_i64(), Some(before_rev + 1));
    let f2 = client.get("f2").await.unwrap();
    assert_eq!(
        (f2.interest_rate, f2.source.as_deref()),
        (0.04, Some("feed"))
    );
    assert_eq!(
        client
            .overwrite_preview(Some(&OverwriteFilter::source("feed")))
            .await
            .unwrap(),
        ["f1", "f2", "f4"]
    );
    // Other sources untouched.
    let mut q = ListQuery::default();
    q.filter.source = Some("seed".into());
    assert_eq!(client.list(&q).await.unwrap().total, 300);

    // What `list --json` prints reads back as the same snapshot (NDJSON).
    let listed = ok(&store.ctl(&["list", "--source", "feed", "--all", "--json"]));
    let nd = store.dir.path().join("feed.ndjson");
    std::fs::write(&nd, &listed).unwrap();
    let nd = nd.to_str().unwrap();
    let same = ok(&store.ctl(&["overwrite", "--source", "feed", nd]));
    assert!(
        same.starts_with(
            r#"overwrote source "feed": created 0, updated 0, deleted 0; 3 unchanged"#
        ),
        "{same}"
    );

    // An empty file is refused unless asked for.
    let empty = store.dir.path().join("empty.json");
    std::fs::write(&empty, "[]").unwrap();
    let empty = empty.to_str().unwrap();
    assert_one_line_error(
        &store.ctl(&["overwrite", "--source", "feed", empty]),
        1,
        &["--allow-empty"],
    );
    let dry = ok(&store.ctl(&[
        "overwrite",
        "--source",
        "feed",
        empty,
        "--allow-empty",
        "--dry-run",
    ]));
    assert!(dry.contains("deleted: f1 f2 f4"), "{dry}");

    // A bad offer names its item and field; nothing is sent.
    let bad = store.dir.path().join("bad.ndjson");
    let mut b = offer_domain::json::offer_to_json(&offer("b1", "USDC", 0.03, "x"));
    b["liquidation_ltv"] = 0.1.into();
    std::fs::write(&bad, format!("{listed}{b}\n")).unwrap();
    assert_one_line_error(
        &store.ctl(&["overwrite", "--source", "feed", bad.to_str().unwrap()]),
        1,
        &["line 4", "b1", "liquidation_ltv"],
    );
    // An id that lives in another source is the store's refusal, with its code.
    let clash = store.dir.path().join("clash.ndjson");
    let c = offer_domain::json::offer_to_json(&offer("usdc-000", "USDC", 0.03, "x"));
    std::fs::write(&clash, format!("{c}\n")).unwrap();
    assert_one_line_error(
        &store.ctl(&["overwrite", "--source", "feed", clash.to_str().unwrap()]),
        1,
        &["nothing written", "usdc-000", "ALREADY_EXISTS"],
    );
    assert_eq!(client.revision().await.unwrap(), before_rev + 1);
}

#[test]
fn unreachable_or_bad_address_and_bad_flags() {
    let o = offersctl(&["--store-addr", "127.0.0.1:1", "list"]);
    assert_one_line_error(&o, 1, &["UNAVAILABLE", "127.0.0.1:1"]);
    assert!(stdout(&o).is_empty());

    let o = offersctl(&["--store-addr", "http://bad host:1", "stats"]);
    assert_one_line_error(&o, 1, &["bad host"]);

    let o = offersctl(&["list", "--sort-by", "rate"]);
    assert_one_line_error(&o, 2, &["--sort-by", "interest_rate"]);
    let o = offersctl(&["list", "--created-after", "yesterday"]);
    assert_one_line_error(&o, 2, &["RFC 3339"]);
    let o = offersctl(&["overwrite", "file.json"]);
    assert_one_line_error(&o, 2, &["--source"]);
    let o = offersctl(&["--help"]);
    assert!(o.status.success());
    for sub in ["list", "get", "stats", "overwrite", "delete"] {
        assert!(stdout(&o).contains(sub), "{sub}");
    }
}
