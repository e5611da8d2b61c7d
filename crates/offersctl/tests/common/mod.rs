//! Runs the real `store` binary on a temporary SQLite database and the real
//! `offersctl` binary against it.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::process::{Command, Output};
use std::time::Duration;
use store_testkit::StoreProcess;

pub const OFFERSCTL: &str = env!("CARGO_BIN_EXE_offersctl");

/// A running `store` on a temporary SQLite database.
pub struct Store {
    process: StoreProcess,
    pub dir: tempfile::TempDir,
}

impl Store {
    pub fn start() -> Store {
        let dir = tempfile::tempdir().unwrap();
        let process = StoreProcess::start_sqlite(&dir.path().join("offers.db"), 0);
        Store { process, dir }
    }

    pub fn addr(&self) -> String {
        self.process.addr()
    }

    pub async fn client(&self) -> store_client::GrpcStore {
        store_client::GrpcStore::connect(&self.addr())
            .await
            .unwrap()
    }

    /// Runs `offersctl --store-addr <this store> args...`.
    pub fn ctl(&self, args: &[&str]) -> Output {
        let addr = self.addr();
        let mut all = vec!["--store-addr", addr.as_str()];
        all.extend_from_slice(args);
        offersctl(&all)
    }
}

/// Runs the real `offersctl` with a clean environment, killed after 60 s.
pub fn offersctl(args: &[&str]) -> Output {
    let mut cmd = Command::new(OFFERSCTL);
    cmd.env_remove("STORE_ADDR")
        .env_remove("OFFERSCTL_TIMEOUT")
        .args(args);
    store_testkit::output_within(&mut cmd, Duration::from_secs(60))
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Asserts success and returns stdout.
pub fn ok(o: &Output) -> String {
    assert!(
        o.status.success(),
        "exit {:?}; stderr: {}; stdout: {}",
        o.status.code(),
        stderr(o),
        stdout(o)
    );
    stdout(o)
}
