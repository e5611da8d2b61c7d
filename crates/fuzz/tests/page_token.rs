//! The page-token decoder and `ListQuery::resolve` with arbitrary tokens
//! never panic; tokens a client forges with the right fingerprint resolve.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use offer_domain::query::{ListQuery, PageToken, SortField, SortOrder, SortValue};
use offer_fuzz::{config, edge_f64, edge_i32, edge_string, mutated};
use proptest::prelude::*;

fn sort_value() -> impl Strategy<Value = SortValue> {
    prop_oneof![
        edge_f64().prop_map(SortValue::Number),
        any::<i64>().prop_map(SortValue::Time),
        edge_string().prop_map(SortValue::Text),
    ]
}

fn token() -> impl Strategy<Value = PageToken> {
    (any::<u64>(), sort_value(), edge_string()).prop_map(|(query, key, id)| PageToken {
        query,
        key,
        id,
    })
}

/// Token text: arbitrary, base64 of arbitrary bytes, or a real token's
/// bytes mutated (so the version byte and JSON shape are mostly right).
fn token_text() -> impl Strategy<Value = String> {
    prop_oneof![
        edge_string(),
        prop::collection::vec(any::<u8>(), 0..96).prop_map(|b| URL_SAFE_NO_PAD.encode(b)),
        token().prop_flat_map(|t| {
            let raw = URL_SAFE_NO_PAD.decode(t.encode()).unwrap_or_default();
            mutated(raw).prop_map(|b| URL_SAFE_NO_PAD.encode(b))
        }),
        token()
            .prop_flat_map(|t| mutated(t.encode().into_bytes()))
            .prop_map(|b| String::from_utf8_lossy(&b).into_owned()),
    ]
}

fn query() -> impl Strategy<Value = ListQuery> {
    (
        prop::sample::select(SortField::ALL.to_vec()),
        any::<bool>(),
        edge_i32(),
        edge_i32(),
        any::<(bool, bool)>(),
    )
        .prop_map(|(sort_by, desc, limit, offset, flags)| ListQuery {
            sort_by,
            sort_order: if desc {
                SortOrder::Desc
            } else {
                SortOrder::Asc
            },
            limit,
            offset,
            include_expired: flags.0,
            active_only: flags.1,
            ..ListQuery::default()
        })
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn decode_never_panics(t in token_text()) {
        let _ = PageToken::decode(&t);
    }

    #[test]
    fn resolve_never_panics_on_arbitrary_tokens(mut q in query(), t in token_text()) {
        q.page_token = Some(t);
        let _ = q.resolve();
    }

    /// A forged token bound to the right query (any key kind, any id)
    /// resolves without panicking, and a finite one to exactly its cursor.
    #[test]
    fn forged_tokens_with_the_right_fingerprint(mut q in query(), key in sort_value(), id in edge_string()) {
        let Ok(resolved) = q.resolve() else { return Ok(()) };
        let t = PageToken { query: resolved.fingerprint, key: key.clone(), id: id.clone() };
        q.page_token = Some(t.encode());
        let r = q.resolve();
        let finite = !matches!(key, SortValue::Number(n) if !n.is_finite());
        if finite {
            let r = r.expect("a token of this query resolves");
            prop_assert_eq!(r.after, Some((key, id)));
            prop_assert_eq!(r.offset, 0);
        }
    }

    #[test]
    fn finite_tokens_round_trip(t in token()) {
        let finite = !matches!(t.key, SortValue::Number(n) if !n.is_finite());
        prop_assume!(finite);
        prop_assert_eq!(PageToken::decode(&t.encode()), Ok(t));
    }
}
