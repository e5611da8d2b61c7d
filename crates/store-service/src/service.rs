//! The RPC handlers: convert, call the store, convert back.

use crate::{
    CHANGE_SOURCE_HEADER, OPERATION_ID_HEADER, REVISION_HEADER, ServiceConfig, VALIDATE_ALL_HEADER,
};
use offer_domain::validate::validate_id;
use offer_domain::{
    BulkCreateOptions, BulkDeleteOptions, BulkError, BulkOutcome, BulkUpdateOptions,
    BulkUpsertOptions, FieldError, MarginOffer, OverwriteOutcome, OverwriteRequest, StoreError,
    Timestamp, WriteContext,
};
use offer_proto::convert::{self as cv, code_name, status_from_error, status_from_field_error};
use offer_proto::pb;
use offer_proto::pb::margin_offer_service_server::MarginOfferService;
use offer_store::SharedStore;
use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::watch;
use tonic::metadata::MetadataMap;
use tonic::{Request, Response, Status, Streaming};

/// The `MarginOfferService` over one store.
#[derive(Clone)]
pub struct MarginOfferGrpc {
    pub(crate) store: SharedStore,
    pub(crate) cfg: Arc<ServiceConfig>,
    /// Flips to true on server shutdown; subscriptions end on it.
    pub(crate) stop: Arc<watch::Sender<bool>>,
    /// The change-log fan-out shared by every subscription of this store.
    pub(crate) hub: Arc<crate::subscribe::Hub>,
}

impl MarginOfferGrpc {
    pub fn new(store: SharedStore, cfg: ServiceConfig) -> Self {
        Self::with_stop(store, cfg, Arc::new(watch::channel(false).0))
    }

    pub(crate) fn with_stop(
        store: SharedStore,
        cfg: ServiceConfig,
        stop: Arc<watch::Sender<bool>>,
    ) -> Self {
        MarginOfferGrpc {
            hub: crate::subscribe::Hub::new(store.clone(), &cfg),
            store,
            cfg: Arc::new(cfg),
            stop,
        }
    }
}

type RpcResult<T> = Result<Response<T>, Status>;

/// Records the request counter and latency histogram of one call.
pub(crate) async fn observe<T>(
    method: &'static str,
    call: impl Future<Output = Result<T, Status>>,
) -> Result<T, Status> {
    let started = Instant::now();
    let result = call.await;
    let code = match &result {
        Ok(_) => "OK",
        Err(s) => code_name(s.code()),
    };
    if let Err(s) = &result
        && matches!(s.code(), tonic::Code::Internal | tonic::Code::Unknown)
    {
        tracing::error!(method, message = s.message(), "internal error");
    }
    metrics::counter!("grpc_server_requests_total", "method" => method, "code" => code)
        .increment(1);
    metrics::histogram!(
        "grpc_server_request_duration_seconds",
        "method" => method,
        "code" => code
    )
    .record(started.elapsed().as_secs_f64());
    result
}

/// Single-write responses have no revision field; it travels as metadata.
fn with_revision<T>(msg: T, revision: offer_domain::Revision) -> Response<T> {
    let mut resp = Response::new(msg);
    if let Ok(v) = revision.to_string().parse() {
        resp.metadata_mut().insert(REVISION_HEADER, v);
    }
    resp
}

pub(crate) fn store_err(e: StoreError) -> Status {
    status_from_error(&e)
}

fn field_err(e: FieldError) -> Status {
    status_from_field_error(&e)
}

fn header<'a>(md: &'a MetadataMap, key: &str) -> Option<&'a str> {
    md.get(key)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|s| !s.is_empty() && s.len() <= 256 && !s.chars().any(char::is_control))
}

/// Who writes: `x-change-source` (else `api`) and `x-operation-id` (else a fresh uuid).
fn write_ctx(md: &MetadataMap) -> WriteContext {
    WriteContext {
        origin: header(md, CHANGE_SOURCE_HEADER).unwrap_or("api").to_owned(),
        operation_id: header(md, OPERATION_ID_HEADER)
            .map(str::to_owned)
            .unwrap_or_else(|| uuid::Uuid::new_v4().to_string()),
    }
}

/// Converts bulk items; when any item does not even parse, returns the item
/// errors as the store would (with `validate_all` every failing item,
/// including plain validation failures of the parseable ones; else the
/// first) and nothing reaches the store.
fn convert_items<T>(
    items: Vec<pb::MarginOffer>,
    validate_all: bool,
    convert: impl Fn(pb::MarginOffer) -> Result<T, FieldError>,
    check: impl Fn(&T) -> Result<(), FieldError>,
) -> Result<Vec<T>, Vec<BulkError>> {
    let converted: Vec<(String, Result<T, FieldError>)> = items
        .into_iter()
        .map(|p| (p.id.clone(), convert(p)))
        .collect();
    if converted.iter().all(|(_, r)| r.is_ok()) {
        return Ok(converted.into_iter().filter_map(|(_, r)| r.ok()).collect());
    }
    let mut errors = Vec::new();
    for (index, (id, item)) in converted.iter().enumerate() {
        let failure = match item {
            Err(e) => Some(e.clone()),
            Ok(t) => check(t).err(),
        };
        if let Some(e) = failure {
            errors.push(BulkError::invalid(index, id, &e));
            if !validate_all {
                break;
            }
        }
    }
    Err(errors)
}

impl MarginOfferGrpc {
    fn check_bulk_size(&self, n: usize) -> Result<(), Status> {
        if n > self.cfg.max_bulk_items {
            return Err(Status::resource_exhausted(format!(
                "request too large: {n} items in one bulk request, at most {} allowed; \
                 split it, or use OverwriteMarginOffersStream for large snapshots",
                self.cfg.max_bulk_items
            )));
        }
        Ok(())
    }

    /// The failure outcome of a bulk request whose items did not parse.
    async fn failed_bulk(&self, items: usize, errors: Vec<BulkError>) -> pb::BulkOperationResponse {
        cv::bulk_outcome_to_pb(BulkOutcome {
            success_count: 0,
            failure_count: items,
            errors,
            processed_ids: Vec::new(),
            revision: self.store.revision().await.unwrap_or(0),
        })
    }

    /// An overwrite whose items are already converted (or failed to).
    pub(crate) async fn apply_overwrite(
        &self,
        offers: Result<Vec<MarginOffer>, Vec<BulkError>>,
        filter: Option<pb::OverwriteFilter>,
        validate_all: bool,
        dry_run: bool,
        ctx: WriteContext,
    ) -> Result<pb::BulkOverwriteResponse, Status> {
        let filter = cv::opt_overwrite_filter_from_pb(filter).map_err(field_err)?;
        let offers = match offers {
            Ok(o) => o,
            Err(errors) => {
                return Ok(cv::overwrite_outcome_to_pb(OverwriteOutcome {
                    errors,
                    revision: self.store.revision().await.unwrap_or(0),
                    ..Default::default()
                }));
            }
        };
        let req = OverwriteRequest {
            offers,
            filter,
            validate_all,
            dry_run,
        };
        let outcome = self.store.overwrite(req, &ctx).await.map_err(store_err)?;
        Ok(cv::overwrite_outcome_to_pb(outcome))
    }
}

#[tonic::async_trait]
impl MarginOfferService for MarginOfferGrpc {
    async fn create_margin_offer(
        &self,
        request: Request<pb::CreateMarginOfferRequest>,
    ) -> RpcResult<pb::CreateMarginOfferResponse> {
        observe("CreateMarginOffer", async {
            let ctx = write_ctx(request.metadata());
            let offer =
                cv::required_offer_from_pb(request.into_inner().offer).map_err(field_err)?;
            let w = self.store.create(offer, &ctx).await.map_err(store_err)?;
            Ok(with_revision(
                pb::CreateMarginOfferResponse {
                    offer: Some(cv::offer_to_pb(w.offer)),
                },
                w.revision,
            ))
        })
        .await
    }

    async fn get_margin_offer(
        &self,
        request: Request<pb::GetMarginOfferRequest>,
    ) -> RpcResult<pb::GetMarginOfferResponse> {
        observe("GetMarginOffer", async {
            // The store decides about odd ids, so every backend answers alike.
            let id = request.into_inner().id;
            let o = self.store.get(&id).await.map_err(store_err)?;
            Ok(Response::new(pb::GetMarginOfferResponse {
                offer: Some(cv::offer_to_pb(o)),
            }))
        })
        .await
    }

    async fn update_margin_offer(
        &self,
        request: Request<pb::UpdateMarginOfferRequest>,
    ) -> RpcResult<pb::UpdateMarginOfferResponse> {
        observe("UpdateMarginOffer", async {
            let ctx = write_ctx(request.metadata());
            let offer =
                cv::required_offer_from_pb(request.into_inner().offer).map_err(field_err)?;
            let w = self.store.update(offer, &ctx).await.map_err(store_err)?;
            Ok(with_revision(
                pb::UpdateMarginOfferResponse {
                    offer: Some(cv::offer_to_pb(w.offer)),
                },
                w.revision,
            ))
        })
        .await
    }

    async fn delete_margin_offer(
        &self,
        request: Request<pb::DeleteMarginOfferRequest>,
    ) -> RpcResult<()> {
        observe("DeleteMarginOffer", async {
            let ctx = write_ctx(request.metadata());
            let id = request.into_inner().id;
            let revision = self.store.delete(&id, &ctx).await.map_err(store_err)?;
            Ok(with_revision((), revision))
        })
        .await
    }

    async fn create_or_update_margin_offer(
        &self,
        request: Request<pb::CreateOrUpdateMarginOfferRequest>,
    ) -> RpcResult<pb::CreateOrUpdateMarginOfferResponse> {
        observe("CreateOrUpdateMarginOffer", async {
            let ctx = write_ctx(request.metadata());
            let offer =
                cv::required_offer_from_pb(request.into_inner().offer).map_err(field_err)?;
            let w = self
                .store
                .create_or_update(offer, &ctx)
                .await
                .map_err(store_err)?;
            Ok(with_revision(
                pb::CreateOrUpdateMarginOfferResponse {
                    offer: Some(cv::offer_to_pb(w.offer)),
                    was_created: w.was_created,
                },
                w.revision,
            ))
        })
        .await
    }

    async fn list_margin_offers(
        &self,
        request: Request<pb::ListMarginOffersRequest>,
    ) -> RpcResult<pb::ListMarginOffersResponse> {
        observe("ListMarginOffers", async {
            let query = cv::list_query_from_pb(request.into_inner()).map_err(field_err)?;
            let page = self.store.list(&query).await.map_err(store_err)?;
            Ok(Response::new(cv::list_page_to_pb(page)))
        })
        .await
    }

    async fn bulk_create_margin_offers(
        &self,
        request: Request<pb::BulkCreateMarginOffersRequest>,
    ) -> RpcResult<pb::BulkOperationResponse> {
        observe("BulkCreateMarginOffers", async {
            let ctx = write_ctx(request.metadata());
            let r = request.into_inner();
            self.check_bulk_size(r.offers.len())?;
            let n = r.offers.len();
            let offers = match cv::bulk_offers_from_pb(r.offers, r.validate_all) {
                Ok(o) => o,
                Err(errors) => return Ok(Response::new(self.failed_bulk(n, errors).await)),
            };
            let opts = BulkCreateOptions {
                ignore_conflicts: r.ignore_conflicts,
                validate_all: r.validate_all,
            };
            let out = self
                .store
                .bulk_create(offers, opts, &ctx)
                .await
                .map_err(store_err)?;
            Ok(Response::new(cv::bulk_outcome_to_pb(out)))
        })
        .await
    }

    async fn bulk_update_margin_offers(
        &self,
        request: Request<pb::BulkUpdateMarginOffersRequest>,
    ) -> RpcResult<pb::BulkOperationResponse> {
        observe("BulkUpdateMarginOffers", async {
            let ctx = write_ctx(request.metadata());
            let validate_all = header(request.metadata(), VALIDATE_ALL_HEADER)
                .is_some_and(|v| v.eq_ignore_ascii_case("true") || v == "1");
            let r = request.into_inner();
            self.check_bulk_size(r.offers.len())?;
            let n = r.offers.len();
            // Patches in both modes: without partial_update the store itself
            // names a missing required field, exactly as for a local caller.
            let patches = match convert_items(r.offers, validate_all, cv::patch_from_pb, |p| {
                validate_id(&p.id)
            }) {
                Ok(p) => p,
                Err(errors) => return Ok(Response::new(self.failed_bulk(n, errors).await)),
            };
            let opts = BulkUpdateOptions {
                upsert: r.upsert,
                partial_update: r.partial_update,
                validate_all,
            };
            let out = self
                .store
                .bulk_update(patches, opts, &ctx)
                .await
                .map_err(store_err)?;
            Ok(Response::new(cv::bulk_outcome_to_pb(out)))
        })
        .await
    }

    async fn bulk_delete_margin_offers(
        &self,
        request: Request<pb::BulkDeleteMarginOffersRequest>,
    ) -> RpcResult<pb::BulkOperationResponse> {
        observe("BulkDeleteMarginOffers", async {
            let ctx = write_ctx(request.metadata());
            let r = request.into_inner();
            self.check_bulk_size(r.ids.len())?;
            let opts = BulkDeleteOptions {
                ignore_not_found: r.ignore_not_found,
            };
            let out = self
                .store
                .bulk_delete(r.ids, opts, &ctx)
                .await
                .map_err(store_err)?;
            Ok(Response::new(cv::bulk_outcome_to_pb(out)))
        })
        .await
    }

    async fn bulk_create_or_update_margin_offers(
        &self,
        request: Request<pb::BulkCreateOrUpdateMarginOffersRequest>,
    ) -> RpcResult<pb::BulkOperationResponse> {
        observe("BulkCreateOrUpdateMarginOffers", async {
            let ctx = write_ctx(request.metadata());
            let r = request.into_inner();
            self.check_bulk_size(r.offers.len())?;
            let n = r.offers.len();
            let offers = match cv::bulk_offers_from_pb(r.offers, r.validate_all) {
                Ok(o) => o,
                Err(errors) => return Ok(Response::new(self.failed_bulk(n, errors).await)),
            };
            let opts = BulkUpsertOptions {
                validate_all: r.validate_all,
            };
            let out = self
                .store
                .bulk_create_or_update(offers, opts, &ctx)
                .await
                .map_err(store_err)?;
            Ok(Response::new(cv::bulk_outcome_to_pb(out)))
        })
        .await
    }

    async fn bulk_overwrite_margin_offers(
        &self,
        request: Request<pb::BulkOverwriteMarginOffersRequest>,
    ) -> RpcResult<pb::BulkOverwriteResponse> {
        observe("BulkOverwriteMarginOffers", async {
            let ctx = write_ctx(request.metadata());
            let r = request.into_inner();
            self.check_bulk_size(r.offers.len())?;
            let offers = cv::bulk_offers_from_pb(r.offers, r.validate_all);
            let out = self
                .apply_overwrite(offers, r.filter, r.validate_all, r.dry_run, ctx)
                .await?;
            Ok(Response::new(out))
        })
        .await
    }

    async fn overwrite_preview(
        &self,
        request: Request<pb::OverwritePreviewRequest>,
    ) -> RpcResult<pb::OverwritePreviewResponse> {
        observe("OverwritePreview", async {
            let filter =
                cv::opt_overwrite_filter_from_pb(request.into_inner().filter).map_err(field_err)?;
            let ids = self
                .store
                .overwrite_preview(filter.as_ref())
                .await
                .map_err(store_err)?;
            Ok(Response::new(pb::OverwritePreviewResponse {
                affected_count: cv::count_to_pb(ids.len()),
                affected_ids: ids,
            }))
        })
        .await
    }

    async fn health_check(&self, _request: Request<()>) -> RpcResult<pb::HealthCheckResponse> {
        observe("HealthCheck", async {
            let (status, check) = match self.store.health_check().await {
                Ok(()) => ("healthy", "healthy".to_owned()),
                Err(e) => ("unhealthy", e.to_string()),
            };
            Ok(Response::new(pb::HealthCheckResponse {
                status: status.to_owned(),
                timestamp: Some(cv::timestamp_to_pb(Timestamp::now())),
                version: self.cfg.version.clone(),
                checks: HashMap::from([("store".to_owned(), check)]),
            }))
        })
        .await
    }

    type SubscribeMarginOffersStream = crate::subscribe::SubscriptionStream;

    async fn subscribe_margin_offers(
        &self,
        request: Request<pb::SubscribeMarginOffersRequest>,
    ) -> RpcResult<Self::SubscribeMarginOffersStream> {
        observe(
            "SubscribeMarginOffers",
            crate::subscribe::start(self, request.into_inner()),
        )
        .await
        .map(Response::new)
    }

    async fn overwrite_margin_offers_stream(
        &self,
        request: Request<Streaming<pb::OverwriteChunk>>,
    ) -> RpcResult<pb::BulkOverwriteResponse> {
        observe("OverwriteMarginOffersStream", async {
            let ctx = write_ctx(request.metadata());
            let mut stream = request.into_inner();
            let mut head: Option<(Option<pb::OverwriteFilter>, bool, bool)> = None;
            // Each chunk is converted as it arrives and its wire form dropped,
            // so the request is never held as proto and domain values at once.
            let mut offers: Option<cv::BulkOffers> = None;
            // Nothing is applied until the client closes the stream; an error
            // or a cancellation (this future dropped) returns before the store
            // is ever called.
            while let Some(chunk) = stream.message().await? {
                let items = offers.get_or_insert_with(|| cv::BulkOffers::new(chunk.validate_all));
                if head.is_none() {
                    head = Some((chunk.filter, chunk.validate_all, chunk.dry_run));
                }
                items.push(chunk.offers);
            }
            // tonic reports a client's RST_STREAM(CANCEL) as a clean end of
            // the request stream, so a cancelled upload looks complete here.
            // Yield once before committing: while this handler is pending,
            // hyper checks the stream for a reset and, finding one, drops the
            // handler, so nothing is applied.
            tokio::task::yield_now().await;
            let (filter, validate_all, dry_run) = head.unwrap_or((None, false, false));
            let offers = offers.map_or_else(|| Ok(Vec::new()), cv::BulkOffers::finish);
            let out = self
                .apply_overwrite(offers, filter, validate_all, dry_run, ctx)
                .await?;
            Ok(Response::new(out))
        })
        .await
    }

    async fn get_margin_offer_stats(
        &self,
        request: Request<pb::GetMarginOfferStatsRequest>,
    ) -> RpcResult<pb::GetMarginOfferStatsResponse> {
        observe("GetMarginOfferStats", async {
            let query = cv::stats_query_from_pb(request.into_inner()).map_err(field_err)?;
            let stats = self.store.stats(&query).await.map_err(store_err)?;
            Ok(Response::new(cv::stats_to_pb(stats)))
        })
        .await
    }
}
