//! The job file: the shipped defaults, Go compatibility, and every refusal
//! naming its job.
// Tests: a failed unwrap is the assertion.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use backfill::config::DEFAULT_JOB_FILE;
use backfill::{BackfillConfig, ConfigError, Program, SourceKind, SourceParams};
use std::path::Path;
use std::time::Duration;

fn no_env(_: &str) -> Option<String> {
    None
}

fn parse_job(job: serde_json::Value) -> Result<BackfillConfig, ConfigError> {
    let file = serde_json::json!({ "default_interval": "1h", "jobs": [job] }).to_string();
    BackfillConfig::from_json(&file, "test.json", &no_env)
}

fn off_chain(extra: serde_json::Value) -> serde_json::Value {
    let mut params = serde_json::json!({ "api_endpoint": "https://api.example.com/offers" });
    if let (Some(p), Some(e)) = (params.as_object_mut(), extra.as_object()) {
        p.extend(e.clone());
    }
    serde_json::json!({ "name": "bad", "enabled": true,
        "request": { "source": "off-chain", "off_chain_params": params } })
}

#[test]
fn the_shipped_file_parses_from_disk_and_as_the_built_in_default() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config/backfiller-jobs.json");
    let from_disk = BackfillConfig::load(Some(&path), &no_env).unwrap();
    let built_in = BackfillConfig::load(None, &no_env).unwrap();
    assert_eq!(from_disk, built_in);
    assert_eq!(std::fs::read_to_string(&path).unwrap(), DEFAULT_JOB_FILE);

    let cfg = built_in;
    assert_eq!(cfg.default_interval, Duration::from_secs(6 * 3600));
    let names: Vec<&str> = cfg.jobs.iter().map(|j| j.name.as_str()).collect();
    assert_eq!(names, ["lavarage-chain", "marginfi-chain", "partner-api"]);
    assert_eq!(cfg.jobs[0].scope_tags(), ["lavarage-v1", "lavarage-v2"]);
    assert_eq!(cfg.jobs[1].scope_tags(), ["marginfi"]);
    assert_eq!(cfg.jobs[0].timeout, Duration::from_secs(1800));
    let example = &cfg.jobs[2];
    assert!(!example.enabled, "the example off-chain job ships disabled");
    assert_eq!(example.source, SourceKind::OffChain);
    assert_eq!(example.schedule.as_ref().unwrap().expr, "15 * * * *");
    assert_eq!(cfg.selected(None).len(), 2);
    assert_eq!(cfg.selected(Some(SourceKind::OffChain)).len(), 0);
    assert_eq!(cfg.selected(Some(SourceKind::Chain)).len(), 2);
}

#[test]
fn go_service_file_with_nanosecond_durations_and_archive_alias() {
    let text = r#"{ "default_interval": 21600000000000,
      "jobs": [ { "name": "glacier-restore", "description": "d", "enabled": true,
                  "schedule": "0 0 3 * * *",
                  "request": { "source": "archive", "batch_size": 500, "dry_run": true,
                               "glacier_params": { "vault_name": "v", "archive_id": "a",
                                                   "job_id": "j", "retrieval": true } },
                  "max_retries": 5, "timeout": 3600000000000 } ] }"#;
    let cfg = BackfillConfig::from_json(text, "go.json", &no_env).unwrap();
    assert_eq!(cfg.default_interval, Duration::from_secs(6 * 3600));
    let j = &cfg.jobs[0];
    assert_eq!(j.source, SourceKind::Glacier);
    assert_eq!((j.batch_size, j.dry_run, j.max_retries), (500, true, 5));
    assert_eq!(j.timeout, Duration::from_secs(3600));
    assert!(matches!(&j.params, SourceParams::Glacier(g) if g.vault_name == "v" && g.retrieval));
}

#[test]
fn program_names_and_ids_select_decoders() {
    let cases = [
        ("leverage", Program::LavarageV1),
        ("lavarage", Program::LavarageV1),
        (
            "CRSeeBqjDnm3UPefJ9gxrtngTsnQRhEJiTA345Q83X3v",
            Program::LavarageV1,
        ),
        ("lavarage-v2", Program::LavarageV2),
        (
            "1avaAUcjccXCjSZzwUvB2gS3DzkkieV2Mw8CjdN65uu",
            Program::LavarageV2,
        ),
        ("marginfi", Program::Marginfi),
        (
            "MFv2hWf31Z9kbCa1snEPYctwafyhdvnV7FZnsebVacA",
            Program::Marginfi,
        ),
    ];
    for (name, want) in cases {
        let cfg = parse_job(serde_json::json!({ "name": "c",
            "request": { "source": "chain", "chain_params": { "programs": [name] } } }))
        .unwrap();
        match &cfg.jobs[0].params {
            SourceParams::Chain(c) => {
                assert_eq!(c.programs, [want], "{name}");
                assert_eq!(c.network, "mainnet");
            }
            other => panic!("{other:?}"),
        }
    }
}

#[test]
fn env_substitution_in_headers_query_and_token() {
    let env = |n: &str| match n {
        "TOKEN" => Some("t0k".to_owned()),
        "KEY" => Some("k3y".to_owned()),
        _ => None,
    };
    let job = off_chain(serde_json::json!({
        "headers": { "X-Api-Key": "${KEY}" },
        "query_params": { "key": "pre-${KEY}-post" },
        "auth_token": "${TOKEN}" }));
    let text = serde_json::json!({ "jobs": [job] }).to_string();
    let cfg = BackfillConfig::from_json(&text, "t", &env).unwrap();
    let SourceParams::OffChain(p) = &cfg.jobs[0].params else {
        panic!("not off-chain")
    };
    assert_eq!(p.headers["X-Api-Key"], "k3y");
    assert_eq!(p.query_params["key"], "pre-k3y-post");
    assert_eq!(p.auth_token.as_deref(), Some("t0k"));
    assert!(!format!("{p:?}").contains("t0k"), "secrets never printed");
}

#[track_caller]
fn assert_job_error(r: Result<BackfillConfig, ConfigError>, needle: &str) {
    match r {
        Err(ConfigError::Job { job, problem }) => {
            assert_eq!(job, "bad");
            assert!(problem.contains(needle), "{problem:?} lacks {needle:?}");
            let shown = ConfigError::Job { job, problem }.to_string();
            assert!(shown.contains("\"bad\""), "{shown}");
        }
        other => panic!("expected an error naming job bad, got {other:?}"),
    }
}

#[test]
fn every_invalid_job_is_refused_naming_the_job() {
    let chain = |extra: serde_json::Value| {
        let mut j = serde_json::json!({ "name": "bad",
            "request": { "source": "chain", "chain_params": { "programs": ["marginfi"] } } });
        if let (Some(o), Some(e)) = (j.as_object_mut(), extra.as_object()) {
            o.extend(e.clone());
        }
        j
    };
    assert_job_error(
        parse_job(serde_json::json!({ "name": "bad", "request": { "source": "blockchain" } })),
        "unknown source \"blockchain\"",
    );
    assert_job_error(
        parse_job(chain(serde_json::json!({ "schedule": "61 * * * *" }))),
        "bad cron",
    );
    assert_job_error(
        parse_job(chain(serde_json::json!({ "schedule": "* * *" }))),
        "bad cron",
    );
    assert_job_error(
        parse_job(chain(serde_json::json!({ "timeout": "forever" }))),
        "bad duration",
    );
    assert_job_error(
        parse_job(chain(serde_json::json!({ "timeout": "0s" }))),
        "timeout",
    );
    assert_job_error(
        parse_job(off_chain(
            serde_json::json!({ "auth_token": "${MISSING_TOKEN}" }),
        )),
        "MISSING_TOKEN",
    );
    assert_job_error(
        parse_job(off_chain(
            serde_json::json!({ "headers": { "X": "${NO_HEADER_VAR}" } }),
        )),
        "NO_HEADER_VAR",
    );
    assert_job_error(
        parse_job(serde_json::json!({ "name": "bad",
            "request": { "source": "chain", "chain_params": { "programs": ["kamino"] } } })),
        "unknown program \"kamino\"",
    );
    assert_job_error(
        parse_job(serde_json::json!({ "name": "bad", "request": { "source": "chain" } })),
        "chain_params",
    );
    assert_job_error(
        parse_job(serde_json::json!({ "name": "bad", "request": { "source": "glacier" } })),
        "glacier_params",
    );
    assert_job_error(
        parse_job(serde_json::json!({ "name": "bad", "request": { "source": "off-chain" } })),
        "off_chain_params",
    );
    assert_job_error(
        parse_job(off_chain(
            serde_json::json!({ "api_endpoint": "ftp://x/y" }),
        )),
        "http or https",
    );
    // Structural errors name the job and the path too.
    assert_job_error(parse_job(serde_json::json!({ "name": "bad" })), "request");
    assert_job_error(
        parse_job(chain(serde_json::json!({ "max_retries": "three" }))),
        "max_retries",
    );
}

#[test]
fn a_disabled_job_may_name_unset_variables_but_enabling_it_needs_them() {
    let mut job = off_chain(serde_json::json!({ "auth_token": "${LATER}" }));
    job["enabled"] = serde_json::json!(false);
    assert!(parse_job(job.clone()).is_ok());
    job["enabled"] = serde_json::json!(true);
    assert_job_error(parse_job(job), "LATER");
}

#[test]
fn backfill_jobs_env_merges_and_overrides_by_name() {
    let extra = serde_json::json!([
        { "name": "marginfi-chain", "enabled": false,
          "request": { "source": "chain", "chain_params": { "programs": ["marginfi"] } } },
        { "name": "feed", "request": { "source": "off-chain",
          "off_chain_params": { "api_endpoint": "http://127.0.0.1:1/o", "auth_token": "${T}" } } }
    ])
    .to_string();
    let env = move |n: &str| match n {
        "BACKFILL_JOBS" => Some(extra.clone()),
        "T" => Some("x".to_owned()),
        _ => None,
    };
    let cfg = BackfillConfig::load_with_env(None, &env).unwrap();
    assert_eq!(cfg.jobs.len(), 4);
    let mf = cfg
        .jobs
        .iter()
        .find(|j| j.name == "marginfi-chain")
        .unwrap();
    assert!(
        !mf.enabled,
        "BACKFILL_JOBS overrides a file job of the same name"
    );
    assert!(cfg.jobs.iter().any(|j| j.name == "feed" && j.enabled));

    let broken = |n: &str| (n == "BACKFILL_JOBS").then(|| "{not json".to_owned());
    assert!(matches!(
        BackfillConfig::load_with_env(None, &broken),
        Err(ConfigError::File { origin, .. }) if origin == "BACKFILL_JOBS"
    ));
}

#[test]
fn file_level_problems_are_reported() {
    assert!(matches!(
        BackfillConfig::from_json(r#"{"default_interval": "soon", "jobs": []}"#, "f", &no_env),
        Err(ConfigError::File { problem, .. }) if problem.contains("default_interval")
    ));
    let dup = r#"{"jobs": [
        {"name": "a", "request": {"source": "chain", "chain_params": {"programs": ["marginfi"]}}},
        {"name": "a", "request": {"source": "chain", "chain_params": {"programs": ["marginfi"]}}}]}"#;
    assert!(matches!(
        BackfillConfig::from_json(dup, "f", &no_env),
        Err(ConfigError::File { problem, .. }) if problem.contains("twice")
    ));
    assert!(BackfillConfig::load(Some(Path::new("/nonexistent/jobs.json")), &no_env).is_err());
}

#[test]
fn chain_params_group_and_rpc_options() {
    let job = |params: serde_json::Value| {
        let text = serde_json::json!({ "jobs": [{ "name": "c",
            "request": { "source": "chain", "chain_params": params } }] })
        .to_string();
        BackfillConfig::from_json(&text, "test", &|_: &str| None)
    };
    let cfg = job(serde_json::json!({ "programs": ["marginfi"],
        "group": "4qp6Fx6tnZkY5Wropq9wUYgtFxXKwE6viZxFHg3rdAG8",
        "use_get_program_accounts_v2": true, "program_accounts_timeout": "5m",
        "rpc_timeout": "10s" }))
    .unwrap();
    let backfill::SourceParams::Chain(p) = &cfg.jobs[0].params else {
        panic!("not a chain job")
    };
    assert_eq!(p.use_get_program_accounts_v2, Some(true));
    assert_eq!(
        p.program_accounts_timeout,
        Some(std::time::Duration::from_secs(300))
    );
    assert_eq!(p.rpc_timeout, Some(std::time::Duration::from_secs(10)));
    let defaults = job(serde_json::json!({ "programs": ["lavarage"] })).unwrap();
    let backfill::SourceParams::Chain(p) = &defaults.jobs[0].params else {
        panic!("not a chain job")
    };
    assert_eq!(
        (p.group.as_deref(), p.use_get_program_accounts_v2),
        (None, None)
    );
    let e = job(serde_json::json!({ "programs": ["marginfi"], "group": "not-a-key" }))
        .unwrap_err()
        .to_string();
    assert!(e.contains("chain_params.group"), "{e}");
    let e = job(serde_json::json!({ "programs": ["marginfi"], "rpc_timeout": "0s" }))
        .unwrap_err()
        .to_string();
    assert!(e.contains("rpc_timeout"), "{e}");
}
