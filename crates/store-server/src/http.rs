//! The HTTP side: `/healthz` for probes and `/metrics` for Prometheus.

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use offer_store::SharedStore;

/// The gRPC request-duration histogram's buckets, in seconds.
pub const DURATION_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// The Prometheus builder with this server's histogram buckets.
pub fn prometheus_builder() -> Result<PrometheusBuilder, crate::Error> {
    PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full("grpc_server_request_duration_seconds".to_owned()),
            DURATION_BUCKETS,
        )
        .map_err(|e| crate::Error::Metrics(e.to_string()))
}

/// Installs the process-wide Prometheus recorder (no HTTP listener of its
/// own: `/metrics` renders through the returned handle).
pub fn install_metrics() -> Result<PrometheusHandle, crate::Error> {
    let handle = prometheus_builder()?
        .install_recorder()
        .map_err(|e| crate::Error::Metrics(e.to_string()))?;
    metrics::describe_gauge!(
        "store_offers",
        "Offers in the store that have not expired (refreshed on every scrape)."
    );
    metrics::describe_gauge!(
        "store_revision",
        "Revision of the store's last committed write (refreshed on every scrape)."
    );
    Ok(handle)
}

#[derive(Clone)]
struct AppState {
    store: SharedStore,
    metrics: PrometheusHandle,
}

/// `/healthz` and `/metrics` over `store`.
pub fn router(store: SharedStore, metrics: PrometheusHandle) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(render_metrics))
        .with_state(AppState { store, metrics })
}

async fn healthz(State(state): State<AppState>) -> Response {
    match state.store.health_check().await {
        Ok(()) => (StatusCode::OK, "ok").into_response(),
        Err(e) => {
            tracing::warn!(error = %e, "health check failed");
            (StatusCode::SERVICE_UNAVAILABLE, e.to_string()).into_response()
        }
    }
}

async fn render_metrics(State(state): State<AppState>) -> Response {
    match state.store.count().await {
        Ok(n) => metrics::gauge!("store_offers").set(n as f64),
        Err(e) => tracing::debug!(error = %e, "store_offers gauge not refreshed"),
    }
    match state.store.revision().await {
        Ok(r) => metrics::gauge!("store_revision").set(r as f64),
        Err(e) => tracing::debug!(error = %e, "store_revision gauge not refreshed"),
    }
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.render(),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use std::sync::Arc;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn get(addr: std::net::SocketAddr, path: &str) -> String {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await.unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    }

    #[tokio::test]
    async fn healthz_follows_the_store() {
        let store: SharedStore = Arc::new(store_memory::MemoryStore::new());
        let handle = prometheus_builder().unwrap().build_recorder().handle();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = router(store.clone(), handle);
        tokio::spawn(async move { axum::serve(listener, app).await });

        let ok = get(addr, "/healthz").await;
        assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
        assert!(ok.ends_with("ok"), "{ok}");

        store.close().await.unwrap();
        let down = get(addr, "/healthz").await;
        assert!(down.starts_with("HTTP/1.1 503"), "{down}");
        // /metrics still renders when the store cannot answer.
        let metrics = get(addr, "/metrics").await;
        assert!(metrics.starts_with("HTTP/1.1 200"), "{metrics}");
    }
}
