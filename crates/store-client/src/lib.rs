//! `GrpcStore`: a [`MarginOfferStore`] talking to a remote store over
//! `marginoffer.v1`, so callers cannot tell a remote store from a local one.
//!
//! Every call goes through [`GrpcStore::call`], which sets the deadline and
//! write metadata and maps `Status` to `StoreError`: the one place where
//! retries and client metrics will hook in.

use async_trait::async_trait;
use offer_domain::{
    BulkCreateOptions, BulkDeleteOptions, BulkOutcome, BulkUpdateOptions, BulkUpsertOptions,
    Change, ListPage, ListQuery, MarginOffer, OfferPatch, OverwriteFilter, OverwriteOutcome,
    OverwriteRequest, Revision, Stats, StatsQuery, StoreError, StoreResult, WriteContext,
};
use offer_proto::convert as cv;
use offer_proto::pb;
use offer_proto::pb::margin_offer_service_client::MarginOfferServiceClient;
use offer_proto::pb::subscribe_margin_offers_response::Event;
use offer_store::{ChangeBatch, MarginOfferStore, Written};
use std::future::Future;
use std::time::Duration;
use tonic::metadata::MetadataValue;
use tonic::transport::{Channel, Endpoint};

/// Metadata keys the service understands (see the `store-service` crate).
const CHANGE_SOURCE_HEADER: &str = "x-change-source";
const OPERATION_ID_HEADER: &str = "x-operation-id";
const VALIDATE_ALL_HEADER: &str = "x-validate-all";
const REVISION_HEADER: &str = "x-revision";

pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// Matches the service's default limit, so 10 000-offer calls fit.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;
/// The service's default unary bulk limit; larger overwrites are streamed.
pub const UNARY_OVERWRITE_LIMIT: usize = 10_000;
/// Offers per chunk when [`MarginOfferStore::overwrite`] falls back to streaming.
pub const DEFAULT_CHUNK_SIZE: usize = 5_000;

#[derive(Clone, Debug)]
pub struct GrpcStore {
    client: MarginOfferServiceClient<Channel>,
    /// Overrides `WriteContext::origin` on every write when set.
    origin: Option<String>,
    timeout: Duration,
}

/// What one call needs besides its message.
#[derive(Clone, Copy, Default)]
struct CallOpts<'a> {
    write: Option<&'a WriteContext>,
    validate_all: bool,
}

impl GrpcStore {
    /// Accepts `host:port`, `http://host:port` or `https://host:port`. The
    /// connection is made lazily and re-made after failures, so a store
    /// restart is survived without reconnecting by hand.
    pub async fn connect(addr: &str) -> StoreResult<GrpcStore> {
        let uri = if addr.contains("://") {
            addr.to_owned()
        } else {
            format!("http://{addr}")
        };
        let endpoint = Endpoint::from_shared(uri)
            .map_err(|e| StoreError::invalid("addr", format!("bad store address {addr:?}: {e}")))?
            .tcp_nodelay(true)
            .connect_timeout(Duration::from_secs(10))
            .http2_keep_alive_interval(Duration::from_secs(30))
            .keep_alive_while_idle(true);
        Ok(GrpcStore::from_channel(endpoint.connect_lazy()))
    }

    /// Wraps an existing channel (custom TLS, interceptors in tests, ...).
    pub fn from_channel(channel: Channel) -> GrpcStore {
        GrpcStore {
            client: MarginOfferServiceClient::new(channel)
                .max_decoding_message_size(DEFAULT_MAX_MESSAGE_BYTES)
                .max_encoding_message_size(DEFAULT_MAX_MESSAGE_BYTES),
            origin: None,
            timeout: DEFAULT_TIMEOUT,
        }
    }

    /// Names this client on every write (`x-change-source`), overriding the
    /// origin of the `WriteContext` passed to each call.
    pub fn with_origin(mut self, origin: impl Into<String>) -> Self {
        self.origin = Some(origin.into());
        self
    }

    /// The deadline of each call (default 30 s).
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Raises or lowers the largest message sent or accepted.
    pub fn with_max_message_bytes(mut self, bytes: usize) -> Self {
        self.client = self
            .client
            .max_decoding_message_size(bytes)
            .max_encoding_message_size(bytes);
        self
    }

    fn request<T>(&self, msg: T, opts: CallOpts<'_>) -> tonic::Request<T> {
        let mut req = tonic::Request::new(msg);
        req.set_timeout(self.timeout);
        if let Some(ctx) = opts.write {
            let origin = self.origin.as_deref().unwrap_or(&ctx.origin);
            // A value that cannot be a header is left out: the server then
            // uses its defaults rather than the call failing.
            if let Ok(v) = MetadataValue::try_from(origin) {
                req.metadata_mut().insert(CHANGE_SOURCE_HEADER, v);
            }
            if !ctx.operation_id.is_empty()
                && let Ok(v) = MetadataValue::try_from(ctx.operation_id.as_str())
            {
                req.metadata_mut().insert(OPERATION_ID_HEADER, v);
            }
        }
        if opts.validate_all {
            req.metadata_mut()
                .insert(VALIDATE_ALL_HEADER, MetadataValue::from_static("true"));
        }
        req
    }

    /// One call: deadline, metadata, error mapping.
    async fn call<T, R, F, Fut>(&self, msg: T, opts: CallOpts<'_>, rpc: F) -> StoreResult<R>
    where
        F: FnOnce(MarginOfferServiceClient<Channel>, tonic::Request<T>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<R>, tonic::Status>>,
    {
        Ok(self.call_full(msg, opts, rpc).await?.into_inner())
    }

    /// [`GrpcStore::call`] keeping the response metadata.
    async fn call_full<T, R, F, Fut>(
        &self,
        msg: T,
        opts: CallOpts<'_>,
        rpc: F,
    ) -> StoreResult<tonic::Response<R>>
    where
        F: FnOnce(MarginOfferServiceClient<Channel>, tonic::Request<T>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<R>, tonic::Status>>,
    {
        let req = self.request(msg, opts);
        rpc(self.client.clone(), req)
            .await
            .map_err(|s| cv::error_from_status(&s))
    }

    /// The revision of a single write: from the response metadata when the
    /// server sends it, else (older servers) the store's current revision.
    async fn revision_of<R>(&self, resp: &tonic::Response<R>) -> StoreResult<Revision> {
        let sent = resp
            .metadata()
            .get(REVISION_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok());
        match sent {
            Some(r) => Ok(r),
            None => self.revision().await,
        }
    }

    /// A streamed overwrite: `req.offers` in chunks of `chunk_size`, applied
    /// by the server as one overwrite once the stream is complete.
    pub async fn overwrite_stream(
        &self,
        req: OverwriteRequest,
        chunk_size: usize,
        ctx: &WriteContext,
    ) -> StoreResult<OverwriteOutcome> {
        let chunk_size = chunk_size.max(1);
        let filter = req.filter.as_ref().map(cv::overwrite_filter_to_pb);
        let mut chunks: Vec<pb::OverwriteChunk> = Vec::new();
        let mut offers = req.offers.into_iter().map(cv::offer_to_pb).peekable();
        // Always at least one chunk: it carries the filter and flags.
        loop {
            let batch: Vec<pb::MarginOffer> = offers.by_ref().take(chunk_size).collect();
            let first = chunks.is_empty();
            chunks.push(pb::OverwriteChunk {
                filter: if first { filter.clone() } else { None },
                offers: batch,
                validate_all: req.validate_all,
                dry_run: req.dry_run,
            });
            if offers.peek().is_none() {
                break;
            }
        }
        let opts = CallOpts {
            write: Some(ctx),
            validate_all: false,
        };
        let out = self
            .call(tokio_stream::iter(chunks), opts, |mut c, r| async move {
                c.overwrite_margin_offers_stream(r).await
            })
            .await?;
        Ok(cv::overwrite_outcome_from_pb(out))
    }

    /// The service's own `HealthCheck` answer.
    pub async fn health(&self) -> StoreResult<pb::HealthCheckResponse> {
        self.call((), CallOpts::default(), |mut c, r| async move {
            c.health_check(r).await
        })
        .await
    }
}

/// A response the server should never send.
fn bad_response(e: offer_domain::FieldError) -> StoreError {
    StoreError::Internal(format!("malformed response from the store: {e}"))
}

fn offer_of(o: Option<pb::MarginOffer>) -> StoreResult<MarginOffer> {
    cv::required_offer_from_pb(o).map_err(bad_response)
}

fn write<'a>(ctx: &'a WriteContext) -> CallOpts<'a> {
    CallOpts {
        write: Some(ctx),
        validate_all: false,
    }
}

#[async_trait]
impl MarginOfferStore for GrpcStore {
    async fn create(&self, offer: MarginOffer, ctx: &WriteContext) -> StoreResult<Written> {
        let msg = pb::CreateMarginOfferRequest {
            offer: Some(cv::offer_to_pb(offer)),
        };
        let resp = self
            .call_full(msg, write(ctx), |mut c, r| async move {
                c.create_margin_offer(r).await
            })
            .await?;
        let revision = self.revision_of(&resp).await?;
        let r = resp.into_inner();
        Ok(Written {
            offer: offer_of(r.offer)?,
            was_created: true,
            revision,
        })
    }

    async fn get(&self, id: &str) -> StoreResult<MarginOffer> {
        let msg = pb::GetMarginOfferRequest { id: id.to_owned() };
        let r = self
            .call(msg, CallOpts::default(), |mut c, r| async move {
                c.get_margin_offer(r).await
            })
            .await?;
        offer_of(r.offer)
    }

    async fn update(&self, offer: MarginOffer, ctx: &WriteContext) -> StoreResult<Written> {
        let msg = pb::UpdateMarginOfferRequest {
            offer: Some(cv::offer_to_pb(offer)),
        };
        let resp = self
            .call_full(msg, write(ctx), |mut c, r| async move {
                c.update_margin_offer(r).await
            })
            .await?;
        let revision = self.revision_of(&resp).await?;
        let r = resp.into_inner();
        Ok(Written {
            offer: offer_of(r.offer)?,
            was_created: false,
            revision,
        })
    }

    async fn delete(&self, id: &str, ctx: &WriteContext) -> StoreResult<Revision> {
        let msg = pb::DeleteMarginOfferRequest { id: id.to_owned() };
        let resp = self
            .call_full(msg, write(ctx), |mut c, r| async move {
                c.delete_margin_offer(r).await
            })
            .await?;
        self.revision_of(&resp).await
    }

    async fn create_or_update(
        &self,
        offer: MarginOffer,
        ctx: &WriteContext,
    ) -> StoreResult<Written> {
        let msg = pb::CreateOrUpdateMarginOfferRequest {
            offer: Some(cv::offer_to_pb(offer)),
        };
        let resp = self
            .call_full(msg, write(ctx), |mut c, r| async move {
                c.create_or_update_margin_offer(r).await
            })
            .await?;
        let revision = self.revision_of(&resp).await?;
        let r = resp.into_inner();
        Ok(Written {
            offer: offer_of(r.offer)?,
            was_created: r.was_created,
            revision,
        })
    }

    async fn list(&self, query: &ListQuery) -> StoreResult<ListPage> {
        let msg = cv::list_query_to_pb(query);
        let r = self
            .call(msg, CallOpts::default(), |mut c, r| async move {
                c.list_margin_offers(r).await
            })
            .await?;
        cv::list_page_from_pb(r).map_err(bad_response)
    }

    async fn bulk_create(
        &self,
        offers: Vec<MarginOffer>,
        opts: BulkCreateOptions,
        ctx: &WriteContext,
    ) -> StoreResult<BulkOutcome> {
        let msg = pb::BulkCreateMarginOffersRequest {
            offers: offers.into_iter().map(cv::offer_to_pb).collect(),
            ignore_conflicts: opts.ignore_conflicts,
            validate_all: opts.validate_all,
        };
        let r = self
            .call(msg, write(ctx), |mut c, r| async move {
                c.bulk_create_margin_offers(r).await
            })
            .await?;
        Ok(cv::bulk_outcome_from_pb(r))
    }

    async fn bulk_update(
        &self,
        patches: Vec<OfferPatch>,
        opts: BulkUpdateOptions,
        ctx: &WriteContext,
    ) -> StoreResult<BulkOutcome> {
        let msg = pb::BulkUpdateMarginOffersRequest {
            offers: patches.into_iter().map(cv::patch_to_pb).collect(),
            upsert: opts.upsert,
            partial_update: opts.partial_update,
        };
        let call_opts = CallOpts {
            write: Some(ctx),
            // The wire request has no validate_all; it travels as metadata.
            validate_all: opts.validate_all,
        };
        let r = self
            .call(msg, call_opts, |mut c, r| async move {
                c.bulk_update_margin_offers(r).await
            })
            .await?;
        Ok(cv::bulk_outcome_from_pb(r))
    }

    async fn bulk_delete(
        &self,
        ids: Vec<String>,
        opts: BulkDeleteOptions,
        ctx: &WriteContext,
    ) -> StoreResult<BulkOutcome> {
        let msg = pb::BulkDeleteMarginOffersRequest {
            ids,
            ignore_not_found: opts.ignore_not_found,
        };
        let r = self
            .call(msg, write(ctx), |mut c, r| async move {
                c.bulk_delete_margin_offers(r).await
            })
            .await?;
        Ok(cv::bulk_outcome_from_pb(r))
    }

    async fn bulk_create_or_update(
        &self,
        offers: Vec<MarginOffer>,
        opts: BulkUpsertOptions,
        ctx: &WriteContext,
    ) -> StoreResult<BulkOutcome> {
        let msg = pb::BulkCreateOrUpdateMarginOffersRequest {
            offers: offers.into_iter().map(cv::offer_to_pb).collect(),
            validate_all: opts.validate_all,
        };
        let r = self
            .call(msg, write(ctx), |mut c, r| async move {
                c.bulk_create_or_update_margin_offers(r).await
            })
            .await?;
        Ok(cv::bulk_outcome_from_pb(r))
    }

    /// Unary up to the server's bulk limit; larger snapshots are streamed so
    /// the caller never meets the unary limit.
    async fn overwrite(
        &self,
        req: OverwriteRequest,
        ctx: &WriteContext,
    ) -> StoreResult<OverwriteOutcome> {
        if req.offers.len() > UNARY_OVERWRITE_LIMIT {
            return self.overwrite_stream(req, DEFAULT_CHUNK_SIZE, ctx).await;
        }
        let msg = cv::overwrite_request_to_pb(req);
        let r = self
            .call(msg, write(ctx), |mut c, r| async move {
                c.bulk_overwrite_margin_offers(r).await
            })
            .await?;
        Ok(cv::overwrite_outcome_from_pb(r))
    }

    async fn overwrite_preview(
        &self,
        filter: Option<&OverwriteFilter>,
    ) -> StoreResult<Vec<String>> {
        let msg = pb::OverwritePreviewRequest {
            filter: filter.map(cv::overwrite_filter_to_pb),
        };
        let r = self
            .call(msg, CallOpts::default(), |mut c, r| async move {
                c.overwrite_preview(r).await
            })
            .await?;
        Ok(r.affected_ids)
    }

    async fn stats(&self, query: &StatsQuery) -> StoreResult<Stats> {
        let msg = cv::stats_query_to_pb(query);
        let r = self
            .call(msg, CallOpts::default(), |mut c, r| async move {
                c.get_margin_offer_stats(r).await
            })
            .await?;
        Ok(cv::stats_from_pb(r))
    }

    async fn health_check(&self) -> StoreResult<()> {
        let r = self.health().await?;
        if r.status == "healthy" {
            return Ok(());
        }
        let detail = r
            .checks
            .get("store")
            .cloned()
            .unwrap_or_else(|| r.status.clone());
        Err(StoreError::Unavailable(format!(
            "store unhealthy: {detail}"
        )))
    }

    /// The remote store stays up; there is nothing of ours to release.
    async fn close(&self) -> StoreResult<()> {
        Ok(())
    }

    async fn revision(&self) -> StoreResult<Revision> {
        Ok(self.stats(&StatsQuery::default()).await?.revision)
    }

    /// Reads the retained log through `SubscribeMarginOffers` with
    /// `start_revision`: changes arrive until the server's "caught up"
    /// heartbeat, whose revision is the batch head.
    async fn changes_since(&self, after: Revision, limit: usize) -> StoreResult<ChangeBatch> {
        let msg = pb::SubscribeMarginOffersRequest {
            start_revision: Some(after),
            client_id: "store-client/changes_since".to_owned(),
            ..Default::default()
        };
        let mut stream = self
            .call(msg, CallOpts::default(), |mut c, r| async move {
                c.subscribe_margin_offers(r).await
            })
            .await?;
        let mut changes: Vec<Change> = Vec::new();
        let head = loop {
            let msg = stream
                .message()
                .await
                .map_err(|s| cv::error_from_status(&s))?;
            let Some(msg) = msg else {
                return Err(StoreError::Unavailable(
                    "change stream ended before catching up".into(),
                ));
            };
            match msg.event {
                Some(Event::Change(c)) if c.change_type == 0 => {} // subscription marker
                Some(Event::Change(c)) => {
                    let change = cv::change_from_pb(c).map_err(bad_response)?;
                    // Past `limit`, finish the current revision only: batches
                    // end on revision boundaries, like the local stores'.
                    let full = changes.len() >= limit;
                    if full
                        && changes
                            .last()
                            .is_some_and(|l| l.revision != change.revision)
                    {
                        let last = changes.last().map_or(after, |c| c.revision);
                        break self.revision().await?.max(last);
                    }
                    changes.push(change);
                }
                Some(Event::Heartbeat(h)) => break h.revision,
                Some(Event::Error(e)) if e.error_code == "LAGGED" => {
                    return Err(StoreError::OutOfRange {
                        requested: after,
                        oldest: 0,
                    });
                }
                Some(Event::Error(e)) if e.fatal => {
                    return Err(StoreError::Internal(format!(
                        "{}: {}",
                        e.error_code, e.error_message
                    )));
                }
                Some(Event::Error(_)) | None => {}
            }
        };
        Ok(ChangeBatch { changes, head })
    }
}
