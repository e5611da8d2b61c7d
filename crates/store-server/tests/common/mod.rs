//! Runs the real `store` binary: start, wait for its listening lines, stop.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

pub mod pg;

use offer_proto::pb;
use offer_proto::pb::margin_offer_service_client::MarginOfferServiceClient;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Command, ExitStatus, Output};
use std::time::Duration;
use store_testkit::StoreProcess;
use tonic::transport::Channel;

pub const BIN: &str = env!("CARGO_BIN_EXE_store");

pub fn command(args: &[&str]) -> Command {
    store_testkit::store_command(Path::new(BIN), args)
}

/// This package's `store` binary, running, with its output collected.
pub struct Server(StoreProcess);

impl std::ops::Deref for Server {
    type Target = StoreProcess;
    fn deref(&self) -> &StoreProcess {
        &self.0
    }
}

impl Server {
    /// Starts on loopback with free ports and waits until both listen.
    pub fn start(database_url: &str) -> Server {
        Server::start_with(&[
            "--addr",
            "127.0.0.1:0",
            "--http-addr",
            "127.0.0.1:0",
            "--database-url",
            database_url,
        ])
    }

    pub fn start_with(args: &[&str]) -> Server {
        Server(StoreProcess::start(Path::new(BIN), args))
    }

    pub async fn client(&self) -> MarginOfferServiceClient<Channel> {
        MarginOfferServiceClient::connect(format!("http://{}", self.grpc))
            .await
            .expect("connect to store")
    }

    /// SIGKILL: no chance to flush or close anything.
    pub fn kill9(mut self) {
        self.0.kill9();
    }

    /// Sends `signal` (e.g. "TERM") and waits for the exit.
    pub fn signal_and_wait(self, signal: &str) -> (ExitStatus, Vec<String>, String) {
        self.0.signal_and_wait(signal)
    }

    pub fn logs(&self) -> Vec<String> {
        self.0.logs.all()
    }

    pub fn stderr(&self) -> String {
        self.0.stderr.text()
    }
}

/// Runs the binary to its exit (killing it after `timeout`), output captured.
pub fn run_to_exit(args: &[&str], timeout: Duration) -> Output {
    store_testkit::output_within(&mut command(args), timeout)
}

/// A plain HTTP/1.1 GET: (status, body).
pub fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    let status = resp
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("bad HTTP response: {resp:?}"));
    let body = resp
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

pub fn offer(id: &str) -> pb::MarginOffer {
    pb::MarginOffer {
        id: id.to_owned(),
        offer_type: "V1".to_owned(),
        collateral_token: "SOL".to_owned(),
        borrow_token: "USDC".to_owned(),
        available_borrow_amount: 1000.0,
        max_open_ltv: 0.5,
        liquidation_ltv: 0.8,
        interest_rate: 0.05,
        interest_model: "fixed".to_owned(),
        liquidity_source: "lavarage".to_owned(),
        source: Some("server-test".to_owned()),
        ..Default::default()
    }
}

/// Every offer id in the store, via one page (max 1000) per call.
pub async fn all_ids(client: &mut MarginOfferServiceClient<Channel>) -> Vec<String> {
    let mut ids = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let page = client
            .list_margin_offers(pb::ListMarginOffersRequest {
                limit: 1000,
                sort_by: Some("id".to_owned()),
                sort_order: Some("asc".to_owned()),
                include_expired: true,
                page_token: token.clone(),
                ..Default::default()
            })
            .await
            .expect("list")
            .into_inner();
        ids.extend(page.offers.into_iter().map(|o| o.id));
        match page.next_page_token.filter(|t| !t.is_empty()) {
            Some(t) if page.has_more => token = Some(t),
            _ => break,
        }
    }
    ids
}
