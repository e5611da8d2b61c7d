//! `SubscribeMarginOffers` served with pre-framed messages.
//!
//! The generated route encodes every message per subscriber and then copies
//! it into the response frame; with 1 000 subscribers one change was
//! encoded 1 000 times. Here the change hub encodes each change once,
//! already as a gRPC frame (1-byte flag, 4-byte length, the prost bytes of a
//! `SubscribeMarginOffersResponse`), into one buffer per published batch.
//! A subscriber hands slices of that shared buffer (a whole batch when it
//! has no filter) straight to h2 as DATA: no per-subscriber encoding, no
//! per-message copy, large writes. The bytes are those prost and tonic
//! would produce, so every generated client decodes them unchanged.
//!
//! tonic still decodes the request and answers errors (trailers-only
//! responses); only a started subscription's body is replaced by
//! [`FramedBody`]. [`SubscribeRoute`] wraps the generated server: the
//! subscribe path goes to the handler here, every other path to the
//! generated code.

use crate::service::{MarginOfferGrpc, observe};
use crate::subscribe::EncodedStream;
use bytes::{BufMut as _, Bytes, BytesMut};
use futures::Stream as _;
use http_body::Frame;
use offer_proto::pb;
use offer_proto::pb::margin_offer_service_server::MarginOfferServiceServer;
use prost::Message as _;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::sync::oneshot;
use tonic::Status;
use tonic::body::Body;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::http;
use tonic::server::NamedService;

pub(crate) const SUBSCRIBE_PATH: &str = "/marginoffer.v1.MarginOfferService/SubscribeMarginOffers";

/// One or more complete gRPC frames, each a length-prefixed
/// `SubscribeMarginOffersResponse`.
pub type Frames = Bytes;

/// gRPC message header: compressed flag and big-endian length.
const HEADER: usize = 5;

/// Appends `msg` to `buf` as one uncompressed gRPC frame and returns where
/// it lies in `buf`.
pub(crate) fn put_frame(
    buf: &mut BytesMut,
    msg: &pb::SubscribeMarginOffersResponse,
) -> std::ops::Range<usize> {
    let start = buf.len();
    let len = msg.encoded_len();
    let Ok(len32) = u32::try_from(len) else {
        // Unreachable for one change (offers are size-checked on write);
        // leaving it out beats sending a corrupt frame.
        tracing::error!("subscription message of {len} bytes does not fit a gRPC frame");
        return start..start;
    };
    buf.reserve(HEADER + len);
    buf.put_u8(0);
    buf.put_u32(len32);
    // A growable BytesMut always has room, so this cannot fail; if it
    // did, the partial frame is taken back out.
    if msg.encode(buf).is_err() {
        buf.truncate(start);
        tracing::error!("encoding a subscription message failed");
    }
    start..buf.len()
}

/// `msg` as one frame of its own.
pub(crate) fn frame(msg: &pb::SubscribeMarginOffersResponse) -> Frames {
    let mut buf = BytesMut::new();
    put_frame(&mut buf, msg);
    buf.freeze()
}

/// The messages of `frames`, decoded (for the generated trait method).
pub(crate) fn decode_frames(
    mut frames: Frames,
) -> Vec<Result<pb::SubscribeMarginOffersResponse, Status>> {
    let mut out = Vec::new();
    while frames.len() >= HEADER {
        let len = u32::from_be_bytes([frames[1], frames[2], frames[3], frames[4]]) as usize;
        if frames.len() < HEADER + len {
            break;
        }
        let msg = frames.split_to(HEADER + len).slice(HEADER..);
        out.push(
            pb::SubscribeMarginOffersResponse::decode(msg)
                .map_err(|e| Status::internal(format!("re-decoding a change: {e}"))),
        );
    }
    if !frames.is_empty() {
        out.push(Err(Status::internal("a truncated subscription frame")));
    }
    out
}

/// The response body of a started subscription: the frames as DATA, then
/// the `grpc-status: 0` trailers once the subscription ends (errors reach
/// the client in-band, as `SubscriptionError` messages).
pub(crate) struct FramedBody {
    frames: EncodedStream,
    done: bool,
}

impl http_body::Body for FramedBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        if self.done {
            return Poll::Ready(None);
        }
        match Pin::new(&mut self.frames).poll_next(cx) {
            Poll::Ready(Some(frames)) => Poll::Ready(Some(Ok(Frame::data(frames)))),
            Poll::Ready(None) => {
                self.done = true;
                let mut trailers = http::HeaderMap::new();
                trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
                Poll::Ready(Some(Ok(Frame::trailers(trailers))))
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }
}

/// Decodes the request as prost does. Encoding is never used: a started
/// subscription's body is [`FramedBody`], and error responses carry no
/// message.
#[derive(Default)]
struct RequestCodec;

struct UnusedEncoder;
struct RequestDecoder;

impl Encoder for UnusedEncoder {
    type Item = Frames;
    type Error = Status;

    fn encode(&mut self, item: Frames, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
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

impl Codec for RequestCodec {
    type Encode = Frames;
    type Decode = pb::SubscribeMarginOffersRequest;
    type Encoder = UnusedEncoder;
    type Decoder = RequestDecoder;

    fn encoder(&mut self) -> Self::Encoder {
        UnusedEncoder
    }

    fn decoder(&mut self) -> Self::Decoder {
        RequestDecoder
    }
}

/// Starts the subscription and hands its stream over `started`; tonic gets
/// an empty stream, whose response body is then replaced.
struct SubscribeSvc {
    svc: MarginOfferGrpc,
    started: Option<oneshot::Sender<EncodedStream>>,
}

type NoFrames = futures::stream::Empty<Result<Frames, Status>>;

impl tonic::server::ServerStreamingService<pb::SubscribeMarginOffersRequest> for SubscribeSvc {
    type Response = Frames;
    type ResponseStream = NoFrames;
    type Future = Pin<Box<dyn Future<Output = Result<tonic::Response<NoFrames>, Status>> + Send>>;

    fn call(&mut self, request: tonic::Request<pb::SubscribeMarginOffersRequest>) -> Self::Future {
        let svc = self.svc.clone();
        let started = self.started.take();
        Box::pin(async move {
            let stream = observe(
                "SubscribeMarginOffers",
                crate::subscribe::start_encoded(&svc, request.into_inner()),
            )
            .await?;
            if let Some(tx) = started {
                // The receiver lives until this future has completed.
                let _ = tx.send(stream);
            }
            Ok(tonic::Response::new(futures::stream::empty()))
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
        let (tx, mut rx) = oneshot::channel();
        let method = SubscribeSvc {
            svc: self.svc.clone(),
            started: Some(tx),
        };
        let max = self.max_message_bytes;
        Box::pin(async move {
            let mut grpc = tonic::server::Grpc::new(RequestCodec)
                .apply_max_message_size_config(Some(max), Some(max));
            let response = grpc.server_streaming(method, req).await;
            // Started: tonic's headers, our body. Refused: tonic's
            // trailers-only error response as it is.
            Ok(match rx.try_recv() {
                Ok(frames) => {
                    let (parts, _) = response.into_parts();
                    http::Response::from_parts(
                        parts,
                        Body::new(FramedBody {
                            frames,
                            done: false,
                        }),
                    )
                }
                Err(_) => response,
            })
        })
    }
}
