//! The security flags become the service configuration; secrets come from
//! flags, env or files and never show in `Debug`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use clap::Parser;
use store_server::cli::Cli;
use store_server::service_config;

fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
    Cli::try_parse_from(std::iter::once("store").chain(args.iter().copied()))
}

#[test]
fn token_files_and_limits_are_read() {
    let dir = tempfile::tempdir().unwrap();
    let w = dir.path().join("write");
    std::fs::write(&w, "file-token-abc\n").unwrap();
    let cli = parse(&[
        "--write-token-file",
        w.to_str().unwrap(),
        "--read-token",
        "read-token-xyz",
        "--max-concurrent-streams",
        "8",
        "--max-request-timeout",
        "45s",
    ])
    .unwrap();
    let cfg = service_config(&cli).unwrap();
    assert_eq!(cfg.write_token.as_ref().unwrap().expose(), "file-token-abc");
    assert_eq!(cfg.read_token.as_ref().unwrap().expose(), "read-token-xyz");
    assert_eq!(cfg.max_concurrent_streams, Some(8));
    assert_eq!(
        cfg.max_request_timeout,
        Some(std::time::Duration::from_secs(45))
    );
    for shown in [format!("{cli:?}"), format!("{cfg:?}")] {
        assert!(!shown.contains("file-token-abc"), "{shown}");
        assert!(!shown.contains("read-token-xyz"), "{shown}");
    }
}

#[test]
fn bad_security_flags_are_refused() {
    // Both the token and its file, an empty token, a key without a cert.
    assert!(parse(&["--write-token", "a", "--write-token-file", "/x"]).is_err());
    assert!(parse(&["--write-token", " "]).is_err());
    assert!(parse(&["--tls-key", "/k.pem"]).is_err());
    let cli = parse(&["--write-token-file", "/nonexistent/token"]).unwrap();
    let e = service_config(&cli).unwrap_err().to_string();
    assert!(e.contains("write token file"), "{e}");
    let cli = parse(&[
        "--tls-cert",
        "/nonexistent/c.pem",
        "--tls-key",
        "/nonexistent/k.pem",
    ])
    .unwrap();
    assert!(service_config(&cli).is_err());
}
