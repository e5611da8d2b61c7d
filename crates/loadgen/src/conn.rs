//! Channels to the store: several HTTP/2 connections, so one connection's
//! stream limit and flow control do not become what is measured.

use anyhow::Context as _;
use offer_proto::pb::margin_offer_service_client::MarginOfferServiceClient;
use std::time::Duration;
use store_client::{GrpcStore, RetryPolicy};
use tonic::metadata::MetadataValue;
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::health_client::HealthClient;

/// Largest message either way: a 100 000-offer overwrite stream is chunked,
/// but a 1 000-offer list page or bulk write must always fit.
const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

pub struct Conns {
    addr: String,
    channels: Vec<Channel>,
    token: Option<String>,
    timeout: Duration,
}

impl Conns {
    /// Opens `n` connections to `addr` (`host:port` or `http://host:port`),
    /// eagerly, so an unreachable store fails here and not mid-run.
    pub async fn open(
        addr: &str,
        token: Option<String>,
        n: usize,
        timeout: Duration,
    ) -> anyhow::Result<Conns> {
        let uri = if addr.contains("://") {
            addr.to_owned()
        } else {
            format!("http://{addr}")
        };
        let endpoint = Endpoint::from_shared(uri)
            .with_context(|| format!("bad store address {addr:?}"))?
            .tcp_nodelay(true)
            .connect_timeout(Duration::from_secs(10));
        let mut channels = Vec::with_capacity(n.max(1));
        for _ in 0..n.max(1) {
            channels.push(
                endpoint
                    .connect()
                    .await
                    .with_context(|| format!("connecting to the store at {addr}"))?,
            );
        }
        Ok(Conns {
            addr: addr.to_owned(),
            channels,
            token: token.filter(|t| !t.trim().is_empty()),
            timeout,
        })
    }

    pub fn addr(&self) -> &str {
        &self.addr
    }

    pub fn token(&self) -> Option<&str> {
        self.token.as_deref()
    }

    pub fn len(&self) -> usize {
        self.channels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.channels.is_empty()
    }

    fn channel(&self, i: usize) -> Channel {
        self.channels[i % self.channels.len()].clone()
    }

    /// The store API over connection `i`, without retries, so every failure
    /// is counted.
    pub fn store(&self, i: usize) -> anyhow::Result<GrpcStore> {
        let store = GrpcStore::from_channel(self.channel(i))
            .with_retry(RetryPolicy::none())
            .with_timeout(self.timeout)
            .with_max_message_bytes(MAX_MESSAGE_BYTES)
            .with_origin("loadgen");
        Ok(match &self.token {
            Some(t) => store.with_token(t.trim())?,
            None => store,
        })
    }

    /// The generated client over connection `i`, for calls `GrpcStore`
    /// does not expose as such (raw subscriptions).
    pub fn raw(&self, i: usize) -> MarginOfferServiceClient<Channel> {
        MarginOfferServiceClient::new(self.channel(i)).max_decoding_message_size(MAX_MESSAGE_BYTES)
    }

    /// `grpc.health.v1.Health` over connection `i`: the floor.
    pub fn health(&self, i: usize) -> HealthClient<Channel> {
        HealthClient::new(self.channel(i))
    }

    /// Adds the bearer token to a raw request.
    pub fn authorize<T>(&self, req: &mut tonic::Request<T>) -> anyhow::Result<()> {
        if let Some(t) = &self.token {
            let v = MetadataValue::try_from(format!("Bearer {}", t.trim()))
                .context("the store token must be printable ASCII")?;
            req.metadata_mut().insert("authorization", v);
        }
        Ok(())
    }
}
