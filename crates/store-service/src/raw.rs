//! `SubscribeMarginOffers` served with pre-encoded messages.
//!
//! The generated route encodes every message per subscriber; with 1 000
//! subscribers one change was encoded 1 000 times. Here the stream items are
//! the encoded bytes of a `SubscribeMarginOffersResponse` (encoded once by
//! the change hub and shared), and the codec only copies them into the
//! frame. The bytes are those prost would produce, so every generated client
//! decodes them unchanged.
//!
//! [`SubscribeRoute`] wraps the generated server: the subscribe path goes to
//! the handler here, every other path to the generated code.

use crate::service::{MarginOfferGrpc, observe};
use bytes::{BufMut as _, Bytes};
use offer_proto::pb;
use offer_proto::pb::margin_offer_service_server::MarginOfferServiceServer;
use prost::Message as _;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use tonic::Status;
use tonic::body::Body;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::http;
use tonic::server::NamedService;

pub(crate) const SUBSCRIBE_PATH: &str = "/marginoffer.v1.MarginOfferService/SubscribeMarginOffers";

/// One encoded `SubscribeMarginOffersResponse` (without the gRPC frame header).
pub type Encoded = Bytes;

/// Decodes the request as prost does; encodes by copying pre-encoded bytes.
#[derive(Default)]
struct PreEncodedCodec;

struct PreEncodedEncoder;
struct RequestDecoder;

impl Encoder for PreEncodedEncoder {
    type Item = Encoded;
    type Error = Status;

    fn encode(&mut self, item: Encoded, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for RequestDecoder {
    type Item = pb::SubscribeMarginOffersRequest;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<Self::Item>, Status> {
        // INTERNAL, as tonic-prost maps parse errors.
        pb::SubscribeMarginOffersRequest::decode(buf)
            .map(Some)
            .map_err(|e| Status::internal(e.to_string()))
    }
}

impl Codec for PreEncodedCodec {
    type Encode = Encoded;
    type Decode = pb::SubscribeMarginOffersRequest;
    type Encoder = PreEncodedEncoder;
    type Decoder = RequestDecoder;

    fn encoder(&mut self) -> Self::Encoder {
        PreEncodedEncoder
    }

    fn decoder(&mut self) -> Self::Decoder {
        RequestDecoder
    }
}

struct SubscribeSvc(MarginOfferGrpc);

impl tonic::server::ServerStreamingService<pb::SubscribeMarginOffersRequest> for SubscribeSvc {
    type Response = Encoded;
    type ResponseStream = crate::subscribe::EncodedStream;
    type Future =
        Pin<Box<dyn Future<Output = Result<tonic::Response<Self::ResponseStream>, Status>> + Send>>;

    fn call(&mut self, request: tonic::Request<pb::SubscribeMarginOffersRequest>) -> Self::Future {
        let svc = self.0.clone();
        Box::pin(async move {
            observe(
                "SubscribeMarginOffers",
                crate::subscribe::start_encoded(&svc, request.into_inner()),
            )
            .await
            .map(tonic::Response::new)
        })
    }
}

/// The generated server with the subscribe route replaced.
#[derive(Clone)]
pub(crate) struct SubscribeRoute {
    inner: MarginOfferServiceServer<MarginOfferGrpc>,
    svc: MarginOfferGrpc,
    max_message_bytes: usize,
}

impl SubscribeRoute {
    pub(crate) fn new(svc: MarginOfferGrpc, max_message_bytes: usize) -> Self {
        SubscribeRoute {
            inner: MarginOfferServiceServer::new(svc.clone())
                .max_decoding_message_size(max_message_bytes)
                .max_encoding_message_size(max_message_bytes),
            svc,
            max_message_bytes,
        }
    }
}

impl NamedService for SubscribeRoute {
    const NAME: &'static str = crate::SERVICE_NAME;
}

impl tower::Service<http::Request<Body>> for SubscribeRoute {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        if req.uri().path() != SUBSCRIBE_PATH {
            return Box::pin(tower::Service::call(&mut self.inner, req));
        }
        let method = SubscribeSvc(self.svc.clone());
        let max = self.max_message_bytes;
        Box::pin(async move {
            let mut grpc = tonic::server::Grpc::new(PreEncodedCodec)
                .apply_max_message_size_config(Some(max), Some(max));
            Ok(grpc.server_streaming(method, req).await)
        })
    }
}
