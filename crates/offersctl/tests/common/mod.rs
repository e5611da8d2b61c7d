//! Runs the real `store` binary on a temporary SQLite database and the real
//! `offersctl` binary against it.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex, OnceLock, mpsc};
use std::time::{Duration, Instant};

pub const OFFERSCTL: &str = env!("CARGO_BIN_EXE_offersctl");

/// The `store` binary: `$STORE_BIN`, else built with cargo into the target
/// directory these tests run from. Cargo builds only this package's binaries
/// for its tests, so the store's is built here (a no-op when up to date).
pub fn store_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(p) = std::env::var_os("STORE_BIN") {
            return PathBuf::from(p);
        }
        // <target>/<profile>/deps/offersctl-<hash> -> <target>/<profile>
        let exe = std::env::current_exe().unwrap();
        let profile_dir = exe.parent().and_then(|d| d.parent()).unwrap().to_path_buf();
        let target_dir = profile_dir.parent().unwrap();
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.args(["build", "--quiet", "-p", "store-server", "--bin", "store"])
            .arg("--target-dir")
            .arg(target_dir)
            .current_dir(env!("CARGO_MANIFEST_DIR"));
        if profile_dir.file_name().is_some_and(|n| n == "release") {
            cmd.arg("--release");
        }
        let status = cmd.status().expect("run cargo build for the store binary");
        assert!(status.success(), "cargo build -p store-server failed");
        let bin = profile_dir.join("store");
        assert!(bin.exists(), "no store binary at {}", bin.display());
        bin
    })
    .clone()
}

/// A running `store` on a temporary SQLite database.
pub struct Store {
    child: Child,
    pub grpc: SocketAddr,
    pub dir: tempfile::TempDir,
    logs: Arc<Mutex<Vec<String>>>,
}

impl Store {
    pub fn start() -> Store {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}/offers.db", dir.path().display());
        let mut cmd = Command::new(store_bin());
        for v in [
            "STORE_GRPC_ADDRESS",
            "STORE_HTTP_ADDRESS",
            "DATABASE_URL",
            "LOG_FORMAT",
            "RUST_LOG",
        ] {
            cmd.env_remove(v);
        }
        let mut child = cmd
            .args(["--addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0"])
            .args(["--database-url", &url])
            .env("LOG_LEVEL", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn store");
        let logs = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel::<String>();
        {
            let out = child.stdout.take().unwrap();
            let logs = logs.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(out).lines().map_while(Result::ok) {
                    logs.lock().unwrap().push(line.clone());
                    let _ = tx.send(line);
                }
            });
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        let grpc = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    if let Some(a) = addr_after(&line, "grpc listening on ") {
                        break a;
                    }
                }
                Err(_) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!("store did not start; logs: {:?}", logs.lock().unwrap());
                }
            }
        };
        Store {
            child,
            grpc,
            dir,
            logs,
        }
    }

    pub fn addr(&self) -> String {
        self.grpc.to_string()
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

impl Drop for Store {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn addr_after(line: &str, marker: &str) -> Option<SocketAddr> {
    let rest = &line[line.find(marker)? + marker.len()..];
    rest.split_whitespace().next()?.parse().ok()
}

/// Runs the real `offersctl` with a clean environment, killed after 60 s.
pub fn offersctl(args: &[&str]) -> Output {
    let mut child = Command::new(OFFERSCTL)
        .env_remove("STORE_ADDR")
        .env_remove("OFFERSCTL_TIMEOUT")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn offersctl");
    // Drained on threads: a big listing must not fill the pipe and stall.
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let out_t = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = out.read_to_end(&mut v);
        v
    });
    let err_t = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = err.read_to_end(&mut v);
        v
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("offersctl {args:?} did not exit within 60 s");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    Output {
        status,
        stdout: out_t.join().unwrap(),
        stderr: err_t.join().unwrap(),
    }
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
