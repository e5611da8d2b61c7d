//! Change-stream figures (a plain binary, printed to stdout):
//! - stall (#5): 4 gRPC writers with one attentive subscriber (baseline)
//!   against the same writers with the attentive subscriber plus one that
//!   never reads; alternating rounds, medians and their ratio;
//! - fan-out (#7): S subscribers, one 10 000-offer overwrite, time until the
//!   last subscriber has received and decoded the last change, every
//!   subscriber checked for losses and duplicates;
//! - bound: what this machine can do at best for that fan-out (loopback
//!   bytes plus plain prost decoding of every message, on all cores).
//!
//! `cargo bench -p store-service --bench change_stream`
//! Env: `CHANGE_STREAM_BENCH=stall|fanout|bound` (default: all),
//! `STALL_ROUNDS` (9), `STALL_SECS` (4), `FANOUT_SUBSCRIBERS` (1000),
//! `FANOUT_RUNS` (5), `FANOUT_H2=tuned` (64 MiB connection and 8 MiB
//! stream windows, 1 MiB frames, instead of the client's defaults; it
//! measured no gain), `FANOUT_CLIENT=slice` (the
//! fan-out subscribers decode each message from its contiguous bytes, as
//! the bound does, instead of through tonic's `DecodeBuf`).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use bytes::Buf as _;
use offer_domain::{MarginOffer, OverwriteRequest, Revision, WriteContext};
use offer_proto::convert as cv;
use offer_proto::pb;
use offer_proto::pb::margin_offer_service_client::MarginOfferServiceClient;
use offer_proto::pb::subscribe_margin_offers_response::Event;
use offer_store::{MarginOfferStore as _, SharedStore};
use prost::Message as _;
use std::io::{Read as _, Write as _};
use std::sync::Arc;
use std::time::{Duration, Instant};
use store_client::GrpcStore;
use store_service::ServiceConfig;
use tonic::Streaming;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::http::uri::PathAndQuery;
use tonic::transport::{Channel, Endpoint};

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// CPU time of this process so far (user + system, every thread), from
/// /proc/self/stat in clock ticks of 1/100 s: on a shared machine this is
/// steadier than wall time.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after_name = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // Fields 14 and 15 of the file: the 12th and 13th after the name.
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (ticks(11) + ticks(12)) / 100.0
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

async fn serve(store: SharedStore) -> String {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap().to_string();
    tokio::spawn(store_service::serve(
        store,
        ServiceConfig::default(),
        l,
        std::future::pending(),
    ));
    addr
}

/// A fan-out subscriber's connection. Tuned: large receive windows, so one
/// subscriber's burst is not paced by WINDOW_UPDATE round trips, and 1 MiB
/// frames, so the server writes fewer, larger DATA frames.
async fn fan_out_channel(addr: &str) -> Channel {
    let mut e = Endpoint::from_shared(format!("http://{addr}")).unwrap();
    if std::env::var("FANOUT_H2").as_deref() == Ok("tuned") {
        e = e
            .initial_connection_window_size(64 << 20)
            .initial_stream_window_size(8 << 20)
            .max_frame_size(1 << 20);
    }
    e.connect().await.unwrap()
}

/// A connection with the client's default HTTP/2 settings (2 MiB stream
/// window): what a stalled subscriber can have buffered in transit.
async fn plain_channel(addr: &str) -> Channel {
    Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap()
}

/// prost encoding for the request; decoding straight from the message's
/// contiguous bytes (tonic hands a decoder one whole message in one
/// buffer) rather than field by field through `DecodeBuf`.
struct SliceCodec;
struct RequestEncoder;
struct SliceDecoder;

impl Encoder for RequestEncoder {
    type Item = pb::SubscribeMarginOffersRequest;
    type Error = tonic::Status;
    fn encode(&mut self, item: Self::Item, dst: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        item.encode(dst)
            .map_err(|e| tonic::Status::internal(e.to_string()))
    }
}

impl Decoder for SliceDecoder {
    type Item = pb::SubscribeMarginOffersResponse;
    type Error = tonic::Status;
    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<Self::Item>, tonic::Status> {
        let len = buf.remaining();
        let msg = if buf.chunk().len() >= len {
            let m = pb::SubscribeMarginOffersResponse::decode(&buf.chunk()[..len]);
            buf.advance(len);
            m
        } else {
            pb::SubscribeMarginOffersResponse::decode(buf.copy_to_bytes(len))
        };
        msg.map(Some)
            .map_err(|e| tonic::Status::internal(e.to_string()))
    }
}

impl Codec for SliceCodec {
    type Encode = pb::SubscribeMarginOffersRequest;
    type Decode = pb::SubscribeMarginOffersResponse;
    type Encoder = RequestEncoder;
    type Decoder = SliceDecoder;
    fn encoder(&mut self) -> RequestEncoder {
        RequestEncoder
    }
    fn decoder(&mut self) -> SliceDecoder {
        SliceDecoder
    }
}

/// Subscribes to everything and reads the `subscription_established` marker.
async fn subscribe(ch: &Channel) -> Streaming<pb::SubscribeMarginOffersResponse> {
    let req = pb::SubscribeMarginOffersRequest::default();
    let mut s = if std::env::var("FANOUT_CLIENT").as_deref() == Ok("slice") {
        let mut grpc = tonic::client::Grpc::new(ch.clone()).max_decoding_message_size(64 << 20);
        grpc.ready().await.unwrap();
        grpc.server_streaming(
            tonic::Request::new(req),
            PathAndQuery::from_static("/marginoffer.v1.MarginOfferService/SubscribeMarginOffers"),
            SliceCodec,
        )
        .await
        .unwrap()
        .into_inner()
    } else {
        MarginOfferServiceClient::new(ch.clone())
            .max_decoding_message_size(64 << 20)
            .subscribe_margin_offers(req)
            .await
            .unwrap()
            .into_inner()
    };
    let m = s.message().await.unwrap().unwrap();
    assert!(matches!(m.event, Some(Event::Change(c)) if c.change_type == 0));
    s
}

// ------------------------------------------------------------------ stall

/// Writes by 4 gRPC writers over `secs`; each write is one revision.
async fn write_for(addr: &str, secs: u64, round: usize) -> u64 {
    let client = GrpcStore::connect(addr).await.unwrap();
    let stop = Instant::now() + Duration::from_secs(secs);
    let tasks: Vec<_> = (0..4)
        .map(|w| {
            let c = client.clone();
            tokio::spawn(async move {
                let mut n = 0u64;
                let ctx = WriteContext::default();
                while Instant::now() < stop {
                    let mut o = MarginOffer::example(format!("t{w}-{}", n % 500));
                    // Distinct in every round, so no write is a no-op.
                    o.available_borrow_amount = 1.0 + n as f64 + round as f64 * 1e9;
                    // ~1 KiB per change, so a stalled subscriber's transport
                    // buffers fill within a round.
                    o.liquidity_source = "x".repeat(250);
                    o.lender_address = Some("y".repeat(250));
                    o.source = Some("z".repeat(250));
                    c.create_or_update(o, &ctx).await.unwrap();
                    n += 1;
                }
                n
            })
        })
        .collect();
    let mut total = 0;
    for t in tasks {
        total += t.await.unwrap();
    }
    total
}

/// Reads every change up to `until` (sent once writing ends); returns how
/// many, checking revisions only ever increase.
async fn read_all(
    mut s: Streaming<pb::SubscribeMarginOffersResponse>,
    mut until: tokio::sync::watch::Receiver<Option<Revision>>,
) -> u64 {
    let mut n = 0;
    let mut last = 0;
    loop {
        if until.borrow_and_update().is_some_and(|u| last >= u) {
            return n;
        }
        let m = tokio::select! {
            m = s.message() => m.unwrap().unwrap(),
            _ = until.changed() => continue,
        };
        match m.event {
            Some(Event::Change(c)) => {
                assert!(c.revision > last, "revisions out of order");
                last = c.revision;
                n += 1;
            }
            Some(Event::Error(e)) => panic!("attentive subscriber: {e:?}"),
            _ => {}
        }
    }
}

/// Reads a stalled stream at last: (changes it had buffered, LAGGED seen).
async fn drain_stalled(mut s: Streaming<pb::SubscribeMarginOffersResponse>) -> (u64, bool) {
    let mut n = 0;
    loop {
        match tokio::time::timeout(Duration::from_secs(5), s.message()).await {
            Ok(Ok(Some(m))) => match m.event {
                Some(Event::Change(_)) => n += 1,
                Some(Event::Error(e)) => return (n, e.error_code == "LAGGED" && e.fatal),
                _ => {}
            },
            _ => return (n, false),
        }
    }
}

/// One round: writes/s with an attentive subscriber, plus a stalled one if
/// `stall`, and the process's CPU milliseconds per write (server, writers
/// and subscriber together); the attentive one must have received every
/// change.
async fn stall_round(
    addr: &str,
    store: &SharedStore,
    secs: u64,
    round: usize,
    stall: bool,
) -> (f64, f64) {
    let attentive_ch = plain_channel(addr).await;
    let r0 = store.revision().await.unwrap();
    let (until_tx, until_rx) = tokio::sync::watch::channel(None);
    let attentive = tokio::spawn(read_all(subscribe(&attentive_ch).await, until_rx));
    // Its own connection: a stalled stream may fill its connection's
    // window, which is the client's business, not the writers'.
    let stalled = if stall {
        let ch = plain_channel(addr).await;
        Some((subscribe(&ch).await, ch))
    } else {
        None
    };
    let cpu0 = cpu_seconds();
    let writes = write_for(addr, secs, round).await;
    let head = store.revision().await.unwrap();
    until_tx.send_replace(Some(head));
    let got = attentive.await.unwrap();
    let cpu_ms_per_write = (cpu_seconds() - cpu0) * 1e3 / writes as f64;
    assert_eq!(
        got,
        (head - r0) as u64,
        "the attentive subscriber got everything"
    );
    assert_eq!(got, writes, "one change per write");
    if let Some((s, _ch)) = stalled {
        let (buffered, lagged) = drain_stalled(s).await;
        println!(
            "  stalled subscriber: {buffered} of {writes} changes were buffered for it, then {}",
            if lagged { "fatal LAGGED" } else { "NO LAGGED" }
        );
    }
    (writes as f64 / secs as f64, cpu_ms_per_write)
}

async fn stall() {
    let rounds = env_or("STALL_ROUNDS", 9);
    let secs = env_or("STALL_SECS", 4);
    // A small retained log, so the stalled subscriber falls out of it
    // within a round and must get LAGGED.
    let store: SharedStore = Arc::new(
        store_memory::MemoryStore::with_change_retention(4_000).with_change_min_age(Duration::ZERO),
    );
    let addr = serve(store.clone()).await;
    let (mut base, mut stalled) = (Vec::new(), Vec::new());
    let (mut base_cpu, mut stalled_cpu) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        // Alternating order, so drift in the machine's load hits both alike.
        let first_stalled = round % 2 == 1;
        for stall in [first_stalled, !first_stalled] {
            let (w, cpu) = stall_round(&addr, &store, secs, round, stall).await;
            println!(
                "stall round {round}: {w:.0} writes/s, {cpu:.3} CPU ms per write {}",
                if stall {
                    "with a stalled subscriber"
                } else {
                    "(baseline)"
                }
            );
            if stall {
                stalled.push(w);
                stalled_cpu.push(cpu);
            } else {
                base.push(w);
                base_cpu.push(cpu);
            }
        }
    }
    let (b, s) = (median(&mut base), median(&mut stalled));
    println!(
        "stall: 4 gRPC writers, memory store, {rounds} alternating rounds of {secs} s: \
         median {b:.0} writes/s with one attentive subscriber, {s:.0} with it and a \
         stalled one (ratio {:.3}; target >= 0.90); CPU per write {:.3} ms against {:.3} ms",
        s / b,
        median(&mut stalled_cpu),
        median(&mut base_cpu),
    );
}

// ---------------------------------------------------------------- fan-out

fn book(offers: usize, run: usize) -> Vec<MarginOffer> {
    (0..offers)
        .map(|i| {
            let mut o = MarginOffer::example(format!("f{i}"));
            o.available_borrow_amount = 1.0 + run as f64;
            o
        })
        .collect()
}

/// When this subscriber had its first and its last change, after decoding
/// every one and checking each offer arrives exactly once.
async fn receive_all(
    mut s: Streaming<pb::SubscribeMarginOffersResponse>,
    offers: usize,
    started: Arc<std::sync::OnceLock<Instant>>,
) -> (Duration, Duration) {
    let mut seen = vec![false; offers];
    let mut first = None;
    let mut n = 0;
    let mut revision = None;
    while n < offers {
        let m = s.message().await.unwrap().expect("stream open");
        match m.event {
            Some(Event::Change(c)) => {
                let id = c.offer.as_ref().map(|o| o.id.as_str()).unwrap_or("");
                let i: usize = id.strip_prefix('f').and_then(|i| i.parse().ok()).unwrap();
                assert!(!seen[i], "duplicate {id}");
                seen[i] = true;
                assert_eq!(
                    *revision.get_or_insert(c.revision),
                    c.revision,
                    "one revision"
                );
                n += 1;
                if first.is_none() {
                    first = Some(started.get().unwrap().elapsed());
                }
            }
            Some(Event::Error(e)) => panic!("{e:?}"),
            _ => {}
        }
    }
    (first.unwrap(), started.get().unwrap().elapsed())
}

async fn fan_out(subscribers: usize, offers: usize, runs: usize) {
    let store: SharedStore = Arc::new(store_memory::MemoryStore::new());
    let addr = serve(store.clone()).await;
    let mut chans = Vec::new();
    for _ in 0..subscribers.div_ceil(50) {
        chans.push(fan_out_channel(&addr).await);
    }
    let (mut lasts, mut cpus) = (Vec::new(), Vec::new());
    for run in 0..runs {
        let mut streams = Vec::new();
        for i in 0..subscribers {
            streams.push(subscribe(&chans[i % chans.len()]).await);
        }
        let book = book(offers, run);
        let started = Arc::new(std::sync::OnceLock::new());
        let tasks: Vec<_> = streams
            .into_iter()
            .map(|s| tokio::spawn(receive_all(s, offers, started.clone())))
            .collect();
        let cpu0 = cpu_seconds();
        let t0 = Instant::now();
        started.set(t0).unwrap();
        store
            .overwrite(
                OverwriteRequest {
                    offers: book,
                    ..Default::default()
                },
                &WriteContext::default(),
            )
            .await
            .unwrap();
        let committed = t0.elapsed();
        let (mut first_first, mut last_first, mut last) =
            (Duration::MAX, Duration::ZERO, Duration::ZERO);
        for t in tasks {
            let (first, done) = t.await.unwrap();
            first_first = first_first.min(first);
            last_first = last_first.max(first);
            last = last.max(done);
        }
        let cpu = cpu_seconds() - cpu0;
        println!(
            "fan-out run {run}: committed {committed:?}; first change at a subscriber {first_first:?}, \
             at every subscriber {last_first:?}; last of {subscribers} subscribers had all {offers} \
             changes after {last:?}; CPU (server and clients) {cpu:.2} s"
        );
        lasts.push(last);
        cpus.push(cpu);
    }
    lasts.sort();
    let p99 = lasts[((lasts.len() * 99).div_ceil(100)).saturating_sub(1)];
    println!(
        "fan-out ({subscribers} subscribers, {offers}-offer overwrite, {runs} runs, h2 {}): \
         client {}: median {:?}, p99 {p99:?}, 0 lost, 0 duplicated; median CPU {:.2} s",
        if std::env::var("FANOUT_H2").as_deref() == Ok("tuned") {
            "tuned"
        } else {
            "default"
        },
        if std::env::var("FANOUT_CLIENT").as_deref() == Ok("slice") {
            "slice decoder"
        } else {
            "generated"
        },
        lasts[lasts.len() / 2],
        median(&mut cpus)
    );
}

// ------------------------------------------------------------------ bound

/// The messages one subscriber receives for the overwrite, as framed bytes.
async fn fan_out_messages(offers: usize) -> Vec<Vec<u8>> {
    let store = store_memory::MemoryStore::new();
    let r0 = store.revision().await.unwrap();
    store
        .overwrite(
            OverwriteRequest {
                offers: book(offers, 0),
                ..Default::default()
            },
            &WriteContext::default(),
        )
        .await
        .unwrap();
    let changes = store.changes_since(r0, offers + 1).await.unwrap().changes;
    assert_eq!(changes.len(), offers);
    changes
        .into_iter()
        .map(|c| {
            pb::SubscribeMarginOffersResponse {
                event: Some(Event::Change(cv::change_to_pb(c))),
            }
            .encode_to_vec()
        })
        .collect()
}

/// Plain prost decodes per CPU second (one thread per core; CPU time, not
/// wall time, so other load on the machine does not count).
fn decode_rate(msgs: &[Vec<u8>], cores: usize) -> f64 {
    let reps = 20;
    let cpu0 = cpu_seconds();
    std::thread::scope(|s| {
        for _ in 0..cores {
            s.spawn(|| {
                for _ in 0..reps {
                    for m in msgs {
                        let d = pb::SubscribeMarginOffersResponse::decode(m.as_slice()).unwrap();
                        std::hint::black_box(d);
                    }
                }
            });
        }
    });
    (cores * reps * msgs.len()) as f64 / (cpu_seconds() - cpu0)
}

/// Loopback TCP bytes per CPU second, sender and receiver together (one
/// pair of threads per core).
fn loopback_rate(cores: usize) -> f64 {
    let per_pair: usize = 512 << 20;
    let chunk = vec![7u8; 256 << 10];
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let cpu0 = cpu_seconds();
    std::thread::scope(|s| {
        for _ in 0..cores {
            let mut tx = std::net::TcpStream::connect(addr).unwrap();
            let (mut rx, _) = l.accept().unwrap();
            let chunk = &chunk;
            s.spawn(move || {
                let mut left = per_pair;
                while left > 0 {
                    let n = chunk.len().min(left);
                    tx.write_all(&chunk[..n]).unwrap();
                    left -= n;
                }
            });
            s.spawn(move || {
                let mut buf = vec![0u8; 256 << 10];
                let mut got = 0;
                while got < per_pair {
                    got += rx.read(&mut buf).unwrap();
                }
            });
        }
    });
    (cores * per_pair) as f64 / (cpu_seconds() - cpu0)
}

async fn bound(subscribers: usize, offers: usize) {
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let msgs = fan_out_messages(offers).await;
    let bytes_each: usize = msgs.iter().map(|m| m.len() + 5).sum();
    let total_bytes = (bytes_each * subscribers) as f64;
    let total_msgs = (offers * subscribers) as f64;
    let decode = decode_rate(&msgs, cores);
    let lb = loopback_rate(cores);
    let (cpu_lb, cpu_dec) = (total_bytes / lb, total_msgs / decode);
    println!(
        "bound: {subscribers} x {offers} messages of {:.0} B framed = {:.2} GB; \
         loopback {:.2} GB per CPU s -> {cpu_lb:.2} CPU s; plain prost decode {:.2} M msg \
         per CPU s -> {cpu_dec:.2} CPU s; at best {:.2} CPU s, i.e. last delivery after \
         {:.2} s on {cores} idle cores",
        bytes_each as f64 / offers as f64,
        total_bytes / 1e9,
        lb / 1e9,
        decode / 1e6,
        cpu_lb + cpu_dec,
        (cpu_lb + cpu_dec) / cores as f64
    );
}

fn main() {
    // `cargo bench` passes `--bench`; a filter argument is ignored.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let which = std::env::var("CHANGE_STREAM_BENCH").unwrap_or_default();
    let subs = env_or("FANOUT_SUBSCRIBERS", 1000);
    rt.block_on(async {
        if which.is_empty() || which == "stall" {
            stall().await;
        }
        if which.is_empty() || which == "fanout" {
            fan_out(subs, 10_000, env_or("FANOUT_RUNS", 5)).await;
        }
        if which.is_empty() || which == "bound" {
            bound(subs, 10_000).await;
        }
    });
}
