//! Raw generated-client calls with every kind of invalid input: each gets
//! its documented status code, nothing is written, and the server keeps
//! serving. Plus the streamed overwrite's all-or-nothing rule, health and
//! reflection.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use offer_domain::{MarginOffer, StatsQuery};
use offer_proto::convert::offer_to_pb;
use offer_proto::pb;
use offer_proto::pb::margin_offer_service_client::MarginOfferServiceClient;
use offer_store::{MarginOfferStore, SharedStore};
use std::sync::Arc;
use std::time::Duration;
use store_service::{SERVICE_NAME, ServiceConfig};
use tokio::sync::{mpsc, oneshot};
use tonic::Code;
use tonic::transport::Channel;

struct Harness {
    client: MarginOfferServiceClient<Channel>,
    channel: Channel,
    store: Arc<store_memory::MemoryStore>,
    _stop: oneshot::Sender<()>,
}

async fn start(cfg: ServiceConfig) -> Harness {
    let store = Arc::new(store_memory::MemoryStore::new());
    let shared: SharedStore = store.clone();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(store_service::serve(shared, cfg, listener, async {
        let _ = stopped.await;
    }));
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .expect("uri")
        .connect_lazy();
    let client = MarginOfferServiceClient::new(channel.clone())
        .max_encoding_message_size(64 << 20)
        .max_decoding_message_size(64 << 20);
    Harness {
        client,
        channel,
        store,
        _stop: stop,
    }
}

fn good(id: &str) -> pb::MarginOffer {
    offer_to_pb(MarginOffer::example(id))
}

async fn stored(h: &Harness) -> i64 {
    h.store
        .stats(&StatsQuery {
            include_expired: true,
            ..Default::default()
        })
        .await
        .expect("stats")
        .total
}

/// Every invalid offer, with the field its error must name.
fn invalid_offers() -> Vec<(&'static str, pb::MarginOffer)> {
    let with = |f: &dyn Fn(&mut pb::MarginOffer)| {
        let mut o = good("x");
        f(&mut o);
        o
    };
    vec![
        ("offer_type", with(&|o| o.offer_type = "XX".into())),
        ("offer_type", with(&|o| o.offer_type = String::new())),
        (
            "interest_model",
            with(&|o| o.interest_model = "weird".into()),
        ),
        (
            "available_borrow_amount",
            with(&|o| o.available_borrow_amount = f64::NAN),
        ),
        (
            "available_borrow_amount",
            with(&|o| o.available_borrow_amount = f64::INFINITY),
        ),
        (
            "available_borrow_amount",
            with(&|o| o.available_borrow_amount = -1.0),
        ),
        (
            "interest_rate",
            with(&|o| o.interest_rate = f64::NEG_INFINITY),
        ),
        ("interest_rate", with(&|o| o.interest_rate = -0.01)),
        ("max_open_ltv", with(&|o| o.max_open_ltv = 1.5)),
        ("max_open_ltv", with(&|o| o.max_open_ltv = f64::NAN)),
        ("liquidation_ltv", with(&|o| o.liquidation_ltv = -0.1)),
        (
            "liquidation_ltv",
            with(&|o| o.liquidation_ltv = o.max_open_ltv),
        ),
        (
            "liquidation_ltv",
            with(&|o| {
                o.max_open_ltv = 0.9;
                o.liquidation_ltv = 0.8;
            }),
        ),
        ("id", with(&|o| o.id = String::new())),
        ("id", with(&|o| o.id = "x".repeat(257))),
        ("id", with(&|o| o.id = "a\u{1}b".into())),
        (
            "collateral_token",
            with(&|o| o.collateral_token = String::new()),
        ),
        ("term_days", with(&|o| o.term_days = Some(0))),
        ("term_days", with(&|o| o.term_days = Some(-3))),
        (
            "created_timestamp",
            with(&|o| {
                o.created_timestamp = Some(prost_types::Timestamp {
                    seconds: i64::MAX,
                    nanos: 0,
                })
            }),
        ),
    ]
}

fn assert_invalid(status: &tonic::Status, field: &str, what: &str) {
    assert_eq!(status.code(), Code::InvalidArgument, "{what}: {status:?}");
    assert!(
        status.message().starts_with(&format!("{field}:")),
        "{what}: message names {field}: {:?}",
        status.message()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_single_writes_are_refused_and_nothing_is_written() {
    let mut h = start(ServiceConfig::default()).await;
    for (field, offer) in invalid_offers() {
        let what = format!("{field} {offer:?}");
        let e = h
            .client
            .create_margin_offer(pb::CreateMarginOfferRequest {
                offer: Some(offer.clone()),
            })
            .await
            .expect_err(&what);
        assert_invalid(&e, field, &what);
        let e = h
            .client
            .create_or_update_margin_offer(pb::CreateOrUpdateMarginOfferRequest {
                offer: Some(offer.clone()),
            })
            .await
            .expect_err(&what);
        assert_invalid(&e, field, &what);
    }
    let e = h
        .client
        .create_margin_offer(pb::CreateMarginOfferRequest { offer: None })
        .await
        .expect_err("missing offer");
    assert_invalid(&e, "offer", "missing offer");
    let e = h
        .client
        .update_margin_offer(pb::UpdateMarginOfferRequest {
            offer: Some(good("nope")),
        })
        .await
        .expect_err("update of a missing id");
    assert_eq!(e.code(), Code::NotFound);
    assert_eq!(stored(&h).await, 0, "nothing written");

    // Still serving, and duplicates are ALREADY_EXISTS.
    h.client
        .create_margin_offer(pb::CreateMarginOfferRequest {
            offer: Some(good("ok")),
        })
        .await
        .expect("valid create");
    let e = h
        .client
        .create_margin_offer(pb::CreateMarginOfferRequest {
            offer: Some(good("ok")),
        })
        .await
        .expect_err("duplicate");
    assert_eq!(e.code(), Code::AlreadyExists);
    assert_eq!(stored(&h).await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_bulk_items_become_item_errors_and_nothing_is_committed() {
    let mut h = start(ServiceConfig::default()).await;
    let invalid = invalid_offers();
    for validate_all in [false, true] {
        let mut offers = vec![good("a")];
        offers.extend(invalid.iter().enumerate().map(|(i, (_, o))| {
            let mut o = o.clone();
            // Keep the id-case ids; give the others distinct ids.
            if o.id == "x" {
                o.id = format!("bad-{i}");
            }
            o
        }));
        let n = offers.len();
        let r = h
            .client
            .bulk_create_margin_offers(pb::BulkCreateMarginOffersRequest {
                offers: offers.clone(),
                ignore_conflicts: false,
                validate_all,
            })
            .await
            .expect("bulk create answers")
            .into_inner();
        assert_eq!(r.success_count, 0);
        assert_eq!(r.failure_count as usize, n);
        assert!(r.processed_ids.is_empty());
        if validate_all {
            assert_eq!(
                r.errors.len(),
                invalid.len(),
                "every bad item: {:?}",
                r.errors
            );
            for (e, (field, _)) in r.errors.iter().zip(&invalid) {
                assert_eq!(e.code, "INVALID_ARGUMENT");
                assert!(e.error.starts_with(field), "{e:?} names {field}");
            }
        } else {
            assert_eq!(r.errors.len(), 1);
            assert_eq!(r.errors[0].index, 1);
            assert!(
                r.errors[0].error.starts_with("offer_type"),
                "{:?}",
                r.errors
            );
        }
        for (rpc, r) in [
            (
                "upsert",
                h.client
                    .bulk_create_or_update_margin_offers(
                        pb::BulkCreateOrUpdateMarginOffersRequest {
                            offers: offers.clone(),
                            validate_all,
                        },
                    )
                    .await,
            ),
            (
                "update",
                h.client
                    .bulk_update_margin_offers(pb::BulkUpdateMarginOffersRequest {
                        offers: offers.clone(),
                        upsert: true,
                        partial_update: false,
                    })
                    .await,
            ),
        ] {
            let r = r.expect(rpc).into_inner();
            assert_eq!(r.success_count, 0, "{rpc}");
            assert!(!r.errors.is_empty(), "{rpc}");
        }
        let r = h
            .client
            .bulk_overwrite_margin_offers(pb::BulkOverwriteMarginOffersRequest {
                offers: offers.clone(),
                filter: None,
                validate_all,
                dry_run: false,
            })
            .await
            .expect("overwrite answers")
            .into_inner();
        assert!(!r.errors.is_empty());
        assert!(r.created_ids.is_empty());
    }
    let e = h
        .client
        .bulk_overwrite_margin_offers(pb::BulkOverwriteMarginOffersRequest {
            offers: vec![good("a")],
            filter: Some(pb::OverwriteFilter {
                offer_type: Some("nope".into()),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .expect_err("bad filter");
    assert_invalid(&e, "filter.offer_type", "bad filter");
    let e = h
        .client
        .bulk_overwrite_margin_offers(pb::BulkOverwriteMarginOffersRequest::default())
        .await
        .expect_err("empty overwrite without filter");
    assert_eq!(e.code(), Code::InvalidArgument);
    assert_eq!(stored(&h).await, 0, "nothing written");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_bulk_requests_are_resource_exhausted() {
    let mut h = start(ServiceConfig::default()).await;
    let offers: Vec<_> = (0..10_001).map(|i| good(&format!("o{i}"))).collect();
    let e = h
        .client
        .bulk_create_margin_offers(pb::BulkCreateMarginOffersRequest {
            offers: offers.clone(),
            ..Default::default()
        })
        .await
        .expect_err("too many");
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    assert!(e.message().contains("10000"), "{}", e.message());
    let e = h
        .client
        .bulk_delete_margin_offers(pb::BulkDeleteMarginOffersRequest {
            ids: offers.iter().map(|o| o.id.clone()).collect(),
            ignore_not_found: true,
        })
        .await
        .expect_err("too many ids");
    assert_eq!(e.code(), Code::ResourceExhausted);
    // Exactly at the limit is fine, in one unary message.
    let r = h
        .client
        .bulk_create_margin_offers(pb::BulkCreateMarginOffersRequest {
            offers: offers[..10_000].to_vec(),
            ..Default::default()
        })
        .await
        .expect("10 000 offers")
        .into_inner();
    assert_eq!(r.success_count, 10_000);
    assert_eq!(stored(&h).await, 10_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_list_arguments_name_their_field() {
    let mut h = start(ServiceConfig::default()).await;
    let cases = [
        (
            "page_token",
            pb::ListMarginOffersRequest {
                page_token: Some("!!!garbage".into()),
                ..Default::default()
            },
        ),
        (
            "sort_by",
            pb::ListMarginOffersRequest {
                sort_by: Some("price".into()),
                ..Default::default()
            },
        ),
        (
            "sort_order",
            pb::ListMarginOffersRequest {
                sort_order: Some("sideways".into()),
                ..Default::default()
            },
        ),
        (
            "limit",
            pb::ListMarginOffersRequest {
                limit: 1001,
                ..Default::default()
            },
        ),
        (
            "limit",
            pb::ListMarginOffersRequest {
                limit: -1,
                ..Default::default()
            },
        ),
        (
            "offset",
            pb::ListMarginOffersRequest {
                offset: -5,
                ..Default::default()
            },
        ),
        (
            "offer_type",
            pb::ListMarginOffersRequest {
                offer_type: Some("ZZ".into()),
                ..Default::default()
            },
        ),
        (
            "min_borrow_amount",
            pb::ListMarginOffersRequest {
                min_borrow_amount: Some(f64::NAN),
                ..Default::default()
            },
        ),
    ];
    for (field, req) in cases {
        let what = format!("{req:?}");
        let e = h.client.list_margin_offers(req).await.expect_err(&what);
        assert_invalid(&e, field, &what);
    }
    let e = h
        .client
        .get_margin_offer_stats(pb::GetMarginOfferStatsRequest {
            filter: Some(pb::OverwriteFilter {
                created_after: Some(prost_types::Timestamp {
                    seconds: 0,
                    nanos: -1,
                }),
                ..Default::default()
            }),
            include_expired: false,
        })
        .await
        .expect_err("bad timestamp");
    assert_invalid(&e, "filter.created_after", "bad timestamp");
    // Defaults work and the server is still serving.
    let r = h
        .client
        .list_margin_offers(pb::ListMarginOffersRequest::default())
        .await
        .expect("default list")
        .into_inner();
    assert_eq!(r.limit, 100);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_streamed_overwrite_commits_nothing() {
    let h = start(ServiceConfig::default()).await;
    let (tx, rx) = mpsc::channel::<pb::OverwriteChunk>(4);
    let mut client = h.client.clone();
    let call = tokio::spawn(async move {
        client
            .overwrite_margin_offers_stream(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
    });
    tx.send(pb::OverwriteChunk {
        offers: vec![good("a"), good("b")],
        ..Default::default()
    })
    .await
    .expect("first chunk");
    tx.send(pb::OverwriteChunk {
        offers: vec![good("c")],
        ..Default::default()
    })
    .await
    .expect("second chunk");
    tokio::time::sleep(Duration::from_millis(200)).await;
    // Cancel midway: the HTTP/2 stream is reset, the server must drop it all.
    call.abort();
    let _ = call.await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(stored(&h).await, 0, "a cancelled stream commits nothing");
    // The producer ending later must not turn the cancelled call into a commit.
    let _ = tx
        .send(pb::OverwriteChunk {
            offers: vec![good("d")],
            ..Default::default()
        })
        .await;
    drop(tx);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        stored(&h).await,
        0,
        "a cancelled stream commits nothing, even if its producer ends later"
    );

    // A completed stream commits everything, as one revision.
    let before = h.store.revision().await.expect("revision");
    let chunks = vec![
        pb::OverwriteChunk {
            filter: Some(pb::OverwriteFilter {
                source: Some("s".into()),
                ..Default::default()
            }),
            offers: vec![],
            ..Default::default()
        },
        pb::OverwriteChunk {
            offers: (0..3)
                .map(|i| {
                    let mut o = good(&format!("s{i}"));
                    o.source = Some("s".into());
                    o
                })
                .collect(),
            ..Default::default()
        },
    ];
    let r = h
        .client
        .clone()
        .overwrite_margin_offers_stream(tokio_stream::iter(chunks))
        .await
        .expect("stream")
        .into_inner();
    assert_eq!(r.created_count, 3, "{r:?}");
    assert_eq!(r.revision, before + 1);
    assert_eq!(stored(&h).await, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_reflection_answer() {
    let cfg = ServiceConfig {
        health_poll_interval: Duration::from_millis(50),
        version: "9.9.9-test".into(),
        ..Default::default()
    };
    let mut h = start(cfg).await;
    let mut health = tonic_health::pb::health_client::HealthClient::new(h.channel.clone());
    for service in ["", SERVICE_NAME] {
        let r = health
            .check(tonic_health::pb::HealthCheckRequest {
                service: service.into(),
            })
            .await
            .expect("health check")
            .into_inner();
        assert_eq!(
            r.status,
            tonic_health::pb::health_check_response::ServingStatus::Serving as i32,
            "{service:?}"
        );
    }
    let r = h
        .client
        .health_check(())
        .await
        .expect("HealthCheck")
        .into_inner();
    assert_eq!(r.status, "healthy");
    assert_eq!(r.version, "9.9.9-test");
    assert_eq!(r.checks.get("store").map(String::as_str), Some("healthy"));

    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    let mut refl = ServerReflectionClient::new(h.channel.clone());
    let req = tonic_reflection::pb::v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut answers = refl
        .server_reflection_info(tokio_stream::iter(vec![req]))
        .await
        .expect("reflection")
        .into_inner();
    let answer = answers
        .message()
        .await
        .expect("answer")
        .expect("one answer");
    let Some(MessageResponse::ListServicesResponse(list)) = answer.message_response else {
        panic!("unexpected reflection answer {answer:?}");
    };
    let names: Vec<_> = list.service.iter().map(|s| s.name.as_str()).collect();
    assert!(names.contains(&SERVICE_NAME), "{names:?}");
    assert!(names.contains(&"grpc.health.v1.Health"), "{names:?}");

    // A failing store turns both health surfaces unhealthy.
    h.store.close().await.expect("close");
    let r = h
        .client
        .health_check(())
        .await
        .expect("HealthCheck")
        .into_inner();
    assert_eq!(r.status, "unhealthy");
    assert_ne!(r.checks.get("store").map(String::as_str), Some("healthy"));
    let mut status = 0;
    for _ in 0..100 {
        status = health
            .check(tonic_health::pb::HealthCheckRequest {
                service: SERVICE_NAME.into(),
            })
            .await
            .expect("health check")
            .into_inner()
            .status;
        if status == tonic_health::pb::health_check_response::ServingStatus::NotServing as i32 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        status,
        tonic_health::pb::health_check_response::ServingStatus::NotServing as i32
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscription_starts_with_marker_and_delivers_changes() {
    let mut h = start(ServiceConfig::default()).await;
    let mut stream = h
        .client
        .subscribe_margin_offers(pb::SubscribeMarginOffersRequest {
            client_id: "t1".into(),
            source: Some("keep".into()),
            ..Default::default()
        })
        .await
        .expect("subscribe")
        .into_inner();
    use pb::subscribe_margin_offers_response::Event;
    let first = stream.message().await.expect("first").expect("some");
    let Some(Event::Change(c)) = first.event else {
        panic!("first message is a change: {first:?}");
    };
    assert_eq!(c.change_type, 0);
    assert_eq!(
        c.metadata.get("message").map(String::as_str),
        Some("subscription_established")
    );
    assert_eq!(c.metadata.get("client_id").map(String::as_str), Some("t1"));
    let mut keep = good("k");
    keep.source = Some("keep".into());
    let mut md = tonic::Request::new(pb::BulkCreateMarginOffersRequest {
        offers: vec![good("other"), keep],
        ..Default::default()
    });
    md.metadata_mut()
        .insert("x-change-source", "etl".parse().expect("ascii"));
    h.client.bulk_create_margin_offers(md).await.expect("write");
    let change = loop {
        let m = tokio::time::timeout(Duration::from_secs(5), stream.message())
            .await
            .expect("in time")
            .expect("message")
            .expect("some");
        if let Some(Event::Change(c)) = m.event {
            break c;
        }
    };
    assert_eq!(change.change_type, 1, "CREATED");
    assert_eq!(change.offer.as_ref().map(|o| o.id.as_str()), Some("k"));
    assert_eq!(change.source, "etl");
    assert!(!change.operation_id.is_empty());

    let e = h
        .client
        .subscribe_margin_offers(pb::SubscribeMarginOffersRequest {
            start_revision: Some(-1),
            ..Default::default()
        })
        .await
        .expect_err("negative start");
    assert_eq!(e.code(), Code::InvalidArgument);
}
