//! The JSON-RPC client against the local test server.
// Tests: a failed unwrap is the assertion.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use solana_sources::Pubkey;
use solana_sources::rpc::{Filter, RpcClient, RpcError, RpcOptions};
use solana_sources::testing::{Fault, TestRpc};

fn key(b: u8) -> Pubkey {
    Pubkey([b; 32])
}

fn fast() -> RpcOptions {
    RpcOptions {
        initial_backoff: Duration::from_millis(5),
        max_backoff: Duration::from_millis(50),
        max_retries: 3,
        ..RpcOptions::default()
    }
}

async fn server() -> (TestRpc, RpcClient) {
    let rpc = TestRpc::start().await.unwrap();
    let program = key(200);
    for i in 0..10u8 {
        let mut data = vec![i % 2; 8];
        data.extend_from_slice(&[i; 10]);
        rpc.put(key(i), program, u64::from(i), data);
    }
    rpc.put(key(100), key(201), 1, vec![0; 18]); // another program
    let client = RpcClient::new(&rpc.url(), fast()).unwrap();
    (rpc, client)
}

#[tokio::test]
async fn program_accounts_with_filters() {
    let (_rpc, c) = server().await;
    let all = c.get_program_accounts(&key(200), &[]).await.unwrap();
    assert_eq!(all.len(), 10);
    let odd = c
        .get_program_accounts(
            &key(200),
            &[
                Filter::Memcmp {
                    offset: 0,
                    bytes: vec![1; 8],
                },
                Filter::DataSize(18),
            ],
        )
        .await
        .unwrap();
    let keys: Vec<Pubkey> = odd.iter().map(|k| k.pubkey).collect();
    assert_eq!(keys, [key(1), key(3), key(5), key(7), key(9)]);
    assert_eq!(odd[1].account.data[8..], [3; 10]);
    assert_eq!(odd[1].account.lamports, 3);
    assert_eq!(odd[1].account.owner, key(200));
    let none = c
        .get_program_accounts(&key(200), &[Filter::DataSize(17)])
        .await
        .unwrap();
    assert!(none.is_empty());
}

#[tokio::test]
async fn v2_pagination_collects_every_page() {
    let (rpc, _) = server().await;
    let opts = RpcOptions {
        use_get_program_accounts_v2: true,
        v2_page_limit: 3,
        ..fast()
    };
    let c = RpcClient::new(&rpc.url(), opts).unwrap();
    let all = c.get_program_accounts(&key(200), &[]).await.unwrap();
    assert_eq!(all.len(), 10);
    let calls = rpc.calls();
    assert_eq!(calls.len(), 4, "{calls:?}");
    assert!(calls.iter().all(|m| m == "getProgramAccountsV2"));
}

#[tokio::test]
async fn multiple_accounts_are_chunked_and_ordered() {
    let (rpc, c) = server().await;
    let mut keys: Vec<Pubkey> = (0..=250u8).map(key).collect();
    keys.reverse();
    let got = c.get_multiple_accounts(&keys).await.unwrap();
    assert_eq!(got.len(), 251);
    assert_eq!(got[250 - 3].as_ref().unwrap().lamports, 3);
    assert!(got[0].is_none());
    assert_eq!(rpc.calls().len(), 3);
    assert_eq!(
        c.get_account_info(&key(4))
            .await
            .unwrap()
            .unwrap()
            .data
            .len(),
        18
    );
    assert!(c.get_account_info(&key(99)).await.unwrap().is_none());
}

#[tokio::test]
async fn transient_failures_are_retried() {
    let (rpc, c) = server().await;
    rpc.push_fault(None, Fault::Http(500));
    rpc.push_fault(None, Fault::Http(503));
    rpc.push_fault(
        None,
        Fault::RpcError {
            code: -32005,
            message: "behind".into(),
        },
    );
    assert_eq!(
        c.get_program_accounts(&key(200), &[]).await.unwrap().len(),
        10
    );
    assert_eq!(rpc.calls().len(), 4);

    // Retry-After (1 s) is honoured up to max_backoff × 6 = 300 ms here,
    // far above the 5–50 ms the backoff alone would wait.
    rpc.push_fault(
        None,
        Fault::TooManyRequests {
            retry_after: Some(1),
        },
    );
    let t = Instant::now();
    c.get_account_info(&key(1)).await.unwrap();
    assert!(
        t.elapsed() >= Duration::from_millis(290),
        "{:?}",
        t.elapsed()
    );

    // Out of retries: transient.
    rpc.push_faults(None, Fault::Http(502), 4);
    let e = c.get_account_info(&key(1)).await.unwrap_err();
    assert!(e.is_transient(), "{e}");
}

#[tokio::test]
async fn permanent_and_malformed_errors_are_not_retried() {
    let (rpc, c) = server().await;
    rpc.push_fault(
        None,
        Fault::RpcError {
            code: -32602,
            message: "bad params".into(),
        },
    );
    let e = c.get_program_accounts(&key(200), &[]).await.unwrap_err();
    assert!(matches!(e, RpcError::Permanent { .. }), "{e}");
    rpc.push_fault(None, Fault::BadBase64);
    let e = c.get_program_accounts(&key(200), &[]).await.unwrap_err();
    assert!(matches!(e, RpcError::Malformed { .. }), "{e}");
    rpc.push_fault(None, Fault::BadJson);
    let e = c.get_multiple_accounts(&[key(1)]).await.unwrap_err();
    assert!(matches!(e, RpcError::Malformed { .. }), "{e}");
    rpc.push_fault(None, Fault::Http(404));
    let e = c.get_account_info(&key(1)).await.unwrap_err();
    assert!(matches!(e, RpcError::Permanent { .. }), "{e}");
    assert_eq!(rpc.calls().len(), 4);
}

#[tokio::test]
async fn connection_refused_is_transient_and_deadlines_apply() {
    let c = RpcClient::new("http://127.0.0.1:9/", fast()).unwrap();
    assert!(
        c.get_account_info(&key(1))
            .await
            .unwrap_err()
            .is_transient()
    );
    assert!(RpcClient::new("ftp://x", fast()).is_err());
}
