//! Bearer-token auth, TLS/mTLS and request limits over real loopback gRPC.
//! Certificates are generated per test with rcgen; no key is committed.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use offer_domain::{MarginOffer, StatsQuery};
use offer_proto::convert::offer_to_pb;
use offer_proto::pb;
use offer_proto::pb::margin_offer_service_client::MarginOfferServiceClient;
use offer_store::{MarginOfferStore, SharedStore};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use store_client::{ClientTls, GrpcStore, RetryPolicy};
use store_service::{Secret, ServiceConfig, TlsConfig};
use tokio::sync::oneshot;
use tonic::Code;
use tonic::transport::Channel;

struct Server {
    addr: SocketAddr,
    store: Arc<store_memory::MemoryStore>,
    _stop: oneshot::Sender<()>,
}

async fn start(cfg: ServiceConfig) -> Server {
    let store = Arc::new(store_memory::MemoryStore::new());
    let shared: SharedStore = store.clone();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(store_service::serve(shared, cfg, listener, async {
        let _ = stopped.await;
    }));
    Server {
        addr,
        store,
        _stop: stop,
    }
}

fn raw(addr: SocketAddr) -> (MarginOfferServiceClient<Channel>, Channel) {
    let ch = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_lazy();
    (MarginOfferServiceClient::new(ch.clone()), ch)
}

fn with_auth<T>(msg: T, auth: Option<&str>) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    if let Some(a) = auth {
        req.metadata_mut()
            .insert("authorization", a.parse().unwrap());
    }
    req
}

fn create(id: &str) -> pb::CreateMarginOfferRequest {
    pb::CreateMarginOfferRequest {
        offer: Some(offer_to_pb(MarginOffer::example(id))),
    }
}

async fn stored(s: &Server) -> i64 {
    s.store
        .stats(&StatsQuery {
            include_expired: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .total
}

fn write_cfg() -> ServiceConfig {
    ServiceConfig {
        write_token: Some(Secret::new("w-token-123")),
        ..Default::default()
    }
}

#[tokio::test]
async fn writes_need_the_write_token_and_reads_stay_open() {
    let s = start(write_cfg()).await;
    let (mut c, _) = raw(s.addr);

    let e = c
        .create_margin_offer(with_auth(create("a"), None))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
    let e = c
        .create_margin_offer(with_auth(create("a"), Some("Bearer wrong")))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
    let e = c
        .bulk_create_margin_offers(with_auth(
            pb::BulkCreateMarginOffersRequest {
                offers: vec![offer_to_pb(MarginOffer::example("b"))],
                ..Default::default()
            },
            None,
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
    let e = c
        .overwrite_margin_offers_stream(with_auth(
            tokio_stream::iter(vec![pb::OverwriteChunk::default()]),
            Some("Bearer w-token-12"),
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
    assert_eq!(stored(&s).await, 0, "nothing written");

    c.create_margin_offer(with_auth(create("a"), Some("Bearer w-token-123")))
        .await
        .unwrap();
    assert_eq!(stored(&s).await, 1);

    // Reads need nothing.
    let list = c
        .list_margin_offers(with_auth(pb::ListMarginOffersRequest::default(), None))
        .await
        .unwrap();
    assert_eq!(list.into_inner().offers.len(), 1);

    // The client sends its token on every call.
    let client = GrpcStore::connect(&s.addr.to_string())
        .await
        .unwrap()
        .with_retry(RetryPolicy::none());
    let ctx = offer_domain::WriteContext::default();
    assert!(
        client
            .create(MarginOffer::example("c"), &ctx)
            .await
            .is_err()
    );
    let client = client.with_token("w-token-123").unwrap();
    client
        .create(MarginOffer::example("c"), &ctx)
        .await
        .unwrap();
    assert!(!format!("{client:?}").contains("w-token-123"));
    assert_eq!(stored(&s).await, 2);
}

#[tokio::test]
async fn read_token_guards_every_rpc_but_health() {
    let s = start(ServiceConfig {
        read_token: Some(Secret::new("r-token")),
        ..write_cfg()
    })
    .await;
    let (mut c, ch) = raw(s.addr);
    let list = || pb::ListMarginOffersRequest::default();
    let e = c
        .list_margin_offers(with_auth(list(), None))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
    let e = c
        .list_margin_offers(with_auth(list(), Some("Bearer nope")))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
    c.list_margin_offers(with_auth(list(), Some("Bearer r-token")))
        .await
        .unwrap();
    c.list_margin_offers(with_auth(list(), Some("Bearer w-token-123")))
        .await
        .unwrap();
    let e = c
        .subscribe_margin_offers(with_auth(pb::SubscribeMarginOffersRequest::default(), None))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
    // The read token does not allow writes.
    let e = c
        .create_margin_offer(with_auth(create("a"), Some("Bearer r-token")))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
    assert_eq!(stored(&s).await, 0);
    // Probes stay open.
    let mut health = tonic_health::pb::health_client::HealthClient::new(ch);
    health
        .check(tonic_health::pb::HealthCheckRequest::default())
        .await
        .unwrap();
}

#[test]
fn tokens_never_show_in_debug() {
    let cfg = ServiceConfig {
        read_token: Some(Secret::new("r-secret-xyz")),
        ..write_cfg()
    };
    let shown = format!("{cfg:?}");
    assert!(
        !shown.contains("w-token-123") && !shown.contains("r-secret-xyz"),
        "{shown}"
    );
}

struct Pki {
    ca_pem: String,
    server: (String, String),
    client: (String, String),
}

fn pki() -> Pki {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let leaf = |name: &str| {
        let key = KeyPair::generate().unwrap();
        let params = CertificateParams::new(vec![name.to_owned()]).unwrap();
        let cert = params.signed_by(&key, &issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    };
    Pki {
        ca_pem: ca_cert.pem(),
        server: leaf("localhost"),
        client: leaf("client"),
    }
}

fn tls_cfg(p: &Pki, mtls: bool) -> ServiceConfig {
    ServiceConfig {
        tls: Some(TlsConfig {
            cert_pem: p.server.0.clone().into_bytes(),
            key_pem: p.server.1.clone().into_bytes(),
            client_ca_pem: mtls.then(|| p.ca_pem.clone().into_bytes()),
        }),
        ..Default::default()
    }
}

async fn tls_client(addr: SocketAddr, tls: ClientTls) -> GrpcStore {
    GrpcStore::connect_with_tls(&format!("https://localhost:{}", addr.port()), tls)
        .await
        .unwrap()
        .with_retry(RetryPolicy::none())
        .with_timeout(Duration::from_secs(5))
}

#[tokio::test]
async fn tls_round_trip_and_plaintext_refused() {
    let p = pki();
    let s = start(tls_cfg(&p, false)).await;
    let client = tls_client(s.addr, ClientTls::default().with_ca_pem(p.ca_pem.clone())).await;
    let ctx = offer_domain::WriteContext::default();
    client
        .create(MarginOffer::example("t"), &ctx)
        .await
        .unwrap();
    assert_eq!(client.get("t").await.unwrap().id, "t");

    // A plaintext client fails cleanly, without hanging.
    let plain = GrpcStore::connect(&s.addr.to_string())
        .await
        .unwrap()
        .with_retry(RetryPolicy::none())
        .with_timeout(Duration::from_secs(5));
    let r = tokio::time::timeout(Duration::from_secs(10), plain.get("t")).await;
    assert!(matches!(r, Ok(Err(_))), "{r:?}");
    // Without the CA, the server's certificate is not trusted.
    let untrusted = tls_client(s.addr, ClientTls::default()).await;
    assert!(untrusted.get("t").await.is_err());
}

#[tokio::test]
async fn stream_limit_tells_tls_connections_apart() {
    let p = pki();
    let s = start(ServiceConfig {
        max_concurrent_streams: Some(1),
        ..tls_cfg(&p, false)
    })
    .await;
    let client = tls_client(s.addr, ClientTls::default().with_ca_pem(p.ca_pem.clone())).await;
    // An open watch holds the connection's one slot once it is established.
    let _watch = client.watch(store_client::WatchRequest::default());
    eventually(
        "the watch takes the only slot",
        || client.get("t"),
        |r| {
            matches!(r, Err(offer_domain::StoreError::ResourceExhausted(m))
                if m.contains("too many concurrent streams on this connection (limit 1"))
        },
    )
    .await;
    // Another TLS connection has a slot of its own.
    let other = tls_client(s.addr, ClientTls::default().with_ca_pem(p.ca_pem.clone())).await;
    assert!(matches!(
        other.get("t").await,
        Err(offer_domain::StoreError::NotFound { .. })
    ));
}

#[tokio::test]
async fn mtls_requires_a_client_certificate() {
    let p = pki();
    let s = start(tls_cfg(&p, true)).await;
    let anon = tls_client(s.addr, ClientTls::default().with_ca_pem(p.ca_pem.clone())).await;
    let r = tokio::time::timeout(Duration::from_secs(10), anon.get("x")).await;
    assert!(matches!(r, Ok(Err(_))), "{r:?}");
    let ok = tls_client(
        s.addr,
        ClientTls::default()
            .with_ca_pem(p.ca_pem.clone())
            .with_identity(p.client.0.clone(), p.client.1.clone()),
    )
    .await;
    let e = ok.get("x").await.unwrap_err();
    assert!(
        matches!(e, offer_domain::StoreError::NotFound { .. }),
        "{e:?}"
    );
}

#[tokio::test]
async fn request_deadline_ceiling_is_resource_exhausted() {
    let s = start(ServiceConfig {
        max_request_timeout: Some(Duration::from_millis(300)),
        ..Default::default()
    })
    .await;
    let (mut c, _) = raw(s.addr);
    // A streamed overwrite whose stream never ends outlives the ceiling.
    let (tx, rx) = tokio::sync::mpsc::channel::<pb::OverwriteChunk>(1);
    tx.send(pb::OverwriteChunk::default()).await.unwrap();
    let mut req = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
    req.set_timeout(Duration::from_secs(30));
    let e = c.overwrite_margin_offers_stream(req).await.unwrap_err();
    drop(tx);
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    assert!(
        e.message().contains("max-request-timeout"),
        "{}",
        e.message()
    );
    // Quick calls are unaffected.
    c.list_margin_offers(pb::ListMarginOffersRequest::default())
        .await
        .unwrap();
}

#[tokio::test]
async fn oversized_message_is_resource_exhausted() {
    let s = start(ServiceConfig {
        max_message_bytes: 4096,
        ..Default::default()
    })
    .await;
    let (mut c, _) = raw(s.addr);
    let offers = (0..100)
        .map(|i| offer_to_pb(MarginOffer::example(format!("o{i}"))))
        .collect();
    let e = c
        .bulk_create_margin_offers(pb::BulkCreateMarginOffersRequest {
            offers,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    assert!(e.message().contains("too large"), "{}", e.message());
    assert_eq!(stored(&s).await, 0);
}

/// Retries `call` until it passes `ok` (the server notices a cancelled
/// stream asynchronously), for at most 5 s.
async fn eventually<F, Fut, T>(what: &str, mut call: F, ok: impl Fn(&T) -> bool)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = T>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let got = call().await;
        if ok(&got) {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn is_stream_limit(
    r: &Result<tonic::Response<pb::ListMarginOffersResponse>, tonic::Status>,
) -> bool {
    matches!(r, Err(e) if e.code() == Code::ResourceExhausted
        && e.message().contains("too many concurrent streams on this connection (limit 2"))
}

#[tokio::test]
async fn concurrent_streams_per_connection_are_capped() {
    let s = start(ServiceConfig {
        max_concurrent_streams: Some(2),
        ..Default::default()
    })
    .await;
    let (mut c, ch) = raw(s.addr);
    let list = |mut c: MarginOfferServiceClient<Channel>| async move {
        c.list_margin_offers(pb::ListMarginOffersRequest::default())
            .await
    };
    // Two open subscriptions hold the connection's two slots ...
    let sub1 = c
        .subscribe_margin_offers(pb::SubscribeMarginOffersRequest::default())
        .await
        .unwrap();
    let sub2 = c
        .subscribe_margin_offers(pb::SubscribeMarginOffersRequest::default())
        .await
        .unwrap();
    // ... so a third call on it, unary or streaming, is refused at once
    // (not queued by HTTP/2) with a message naming the limit.
    let r = tokio::time::timeout(Duration::from_secs(2), list(c.clone()))
        .await
        .expect("refused, not queued");
    assert!(is_stream_limit(&r), "{r:?}");
    let e = c
        .subscribe_margin_offers(pb::SubscribeMarginOffersRequest::default())
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    assert!(
        e.message().contains("--max-concurrent-streams"),
        "{}",
        e.message()
    );
    // Health is another service and not counted.
    tonic_health::pb::health_client::HealthClient::new(ch.clone())
        .check(tonic_health::pb::HealthCheckRequest::default())
        .await
        .unwrap();
    // A new connection has its own budget.
    let (other, _) = raw(s.addr);
    list(other).await.unwrap();

    // Cancelling a subscription gives its slot back.
    drop(sub1);
    eventually(
        "slot of a cancelled subscription freed",
        || list(c.clone()),
        Result::is_ok,
    )
    .await;

    // A streamed overwrite holds a slot while its request stream is open.
    let (tx, rx) = tokio::sync::mpsc::channel::<pb::OverwriteChunk>(1);
    let mut oc = c.clone();
    let overwrite = tokio::spawn(async move {
        oc.overwrite_margin_offers_stream(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
    });
    eventually(
        "the open overwrite takes a slot",
        || list(c.clone()),
        is_stream_limit,
    )
    .await;
    drop(tx);
    // An empty overwrite is refused by the service; either way it has ended.
    let _ = overwrite.await.unwrap();
    eventually(
        "slot of the finished overwrite freed",
        || list(c.clone()),
        Result::is_ok,
    )
    .await;
    drop(sub2);
}
