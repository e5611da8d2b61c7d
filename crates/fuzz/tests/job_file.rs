//! The backfiller's job-file parser never panics: arbitrary text, the
//! shipped file mutated byte-wise, and the shipped file mutated structurally
//! (any value replaced by an odd one, keys dropped, `${VAR}` substitutions
//! resolving to arbitrary text).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use backfill::BackfillConfig;
use backfill::config::DEFAULT_JOB_FILE;
use offer_fuzz::{config, edge_f64, edge_string, mutated};
use proptest::prelude::*;
use serde_json::{Value, json};

fn parse(text: &str, env_value: &Option<String>) {
    let env = |_: &str| env_value.clone();
    let _ = BackfillConfig::from_json(text, "fuzz.json", &env);
}

/// Leaf values a job file might wrongly hold.
fn odd_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        edge_f64().prop_map(Value::from),
        edge_string().prop_map(Value::from),
        prop::sample::select(vec![
            "0s",
            "-1s",
            "1ns",
            "6h",
            "99999999999999h",
            "1y",
            "",
            "*/0 * * * *",
            "61 * * * *",
            "* * * * * * *",
            "${A}",
            "${",
            "${A",
            "$${A}",
            "https://",
            "http://[::1",
            "lavarage",
            "marginfi",
            "chain",
            "off-chain",
            "mainnet",
        ])
        .prop_map(Value::from),
    ];
    leaf.prop_recursive(2, 8, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
            prop::collection::btree_map("[a-z_]{1,12}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Every path to a value in `v`, as indexes into objects and arrays.
fn paths(v: &Value, here: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
    out.push(here.clone());
    match v {
        Value::Object(m) => {
            for (k, c) in m {
                here.push(k.clone());
                paths(c, here, out);
                here.pop();
            }
        }
        Value::Array(a) => {
            for (i, c) in a.iter().enumerate() {
                here.push(i.to_string());
                paths(c, here, out);
                here.pop();
            }
        }
        _ => {}
    }
}

fn at<'a>(v: &'a mut Value, path: &[String]) -> Option<&'a mut Value> {
    path.iter().try_fold(v, |v, k| match v {
        Value::Object(m) => m.get_mut(k),
        Value::Array(a) => k.parse::<usize>().ok().and_then(|i| a.get_mut(i)),
        _ => None,
    })
}

fn shipped() -> Value {
    serde_json::from_str(DEFAULT_JOB_FILE).expect("the shipped job file is JSON")
}

/// The shipped file with up to four edits: a value replaced, or a key or
/// element removed.
fn structural() -> impl Strategy<Value = String> {
    let base = shipped();
    let mut all = Vec::new();
    paths(&base, &mut Vec::new(), &mut all);
    let edit = (prop::sample::select(all), odd_value(), any::<bool>());
    prop::collection::vec(edit, 1..5).prop_map(move |edits| {
        let mut v = base.clone();
        for (path, new, remove) in edits {
            if remove && let Some((last, parent)) = path.split_last() {
                match at(&mut v, parent) {
                    Some(Value::Object(m)) => {
                        m.remove(last);
                    }
                    Some(Value::Array(a)) => {
                        if let Ok(i) = last.parse::<usize>()
                            && i < a.len()
                        {
                            a.remove(i);
                        }
                    }
                    _ => {}
                }
            } else if let Some(slot) = at(&mut v, &path) {
                *slot = new;
            }
        }
        v.to_string()
    })
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn arbitrary_text_never_panics(text in ".{0,300}", env in prop::option::of(edge_string())) {
        parse(&text, &env);
    }

    #[test]
    fn mutated_shipped_bytes_never_panic(bytes in mutated(DEFAULT_JOB_FILE.as_bytes().to_vec())) {
        parse(&String::from_utf8_lossy(&bytes), &None);
    }

    #[test]
    fn structurally_mutated_shipped_file_never_panics(
        text in structural(),
        env in prop::option::of(edge_string()),
    ) {
        parse(&text, &env);
    }

    /// Substitution with arbitrary environment values in every string slot
    /// of an enabled off-chain job.
    #[test]
    fn substituted_values_never_panic(env in edge_string(), slot in 0usize..4) {
        let mut job = json!({
            "name": "j", "enabled": true, "timeout": "1m",
            "request": { "source": "off-chain", "batch_size": 10,
                "off_chain_params": { "api_endpoint": "https://e.example/x",
                    "headers": { "Authorization": "Bearer t" } } }
        });
        let target = match slot {
            0 => "/timeout",
            1 => "/request/off_chain_params/api_endpoint",
            2 => "/request/off_chain_params/headers/Authorization",
            _ => "/name",
        };
        if let Some(v) = job.pointer_mut(target) {
            *v = Value::from("${FUZZ_VAR}");
        }
        let file = json!({ "default_interval": "1h", "jobs": [job] }).to_string();
        parse(&file, &Some(env));
    }
}
