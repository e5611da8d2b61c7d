//! `/metrics` (Prometheus) and `/status` (the status board as JSON).

use axum::Router;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use backfill::StatusBoard;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Histogram buckets in seconds: store calls are milliseconds, job runs
/// and fetches minutes, so each gets its own range.
const CALL_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];
const JOB_BUCKETS: &[f64] = &[
    0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0,
];

/// Installs the process-wide Prometheus recorder, rendered by [`router`].
pub fn install_metrics() -> anyhow::Result<PrometheusHandle> {
    let builder = PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full("store_client_call_duration_seconds".into()),
            CALL_BUCKETS,
        )?
        .set_buckets_for_metric(Matcher::Suffix("_duration_seconds".into()), JOB_BUCKETS)?;
    let handle = builder.install_recorder()?;
    metrics::describe_counter!(
        "store_client_calls_total",
        "Store gRPC call attempts by method and status code."
    );
    metrics::describe_histogram!(
        "store_client_call_duration_seconds",
        "Latency of store gRPC call attempts by method."
    );
    metrics::describe_gauge!(
        "store_client_connected",
        "1 while the store answers, 0 after a call found it unavailable."
    );
    metrics::describe_counter!("backfill_job_runs_total", "Job runs by job and outcome.");
    metrics::describe_histogram!("backfill_job_duration_seconds", "Job run duration by job.");
    metrics::describe_counter!(
        "backfill_offers_written_total",
        "Offers created, updated or deleted by job and kind."
    );
    metrics::describe_histogram!(
        "backfill_source_fetch_duration_seconds",
        "Source fetch duration by job."
    );
    Ok(handle)
}

#[derive(Clone)]
struct AppState {
    metrics: PrometheusHandle,
    status: StatusBoard,
}

pub fn router(metrics: PrometheusHandle, status: StatusBoard) -> Router {
    Router::new()
        .route("/metrics", get(render_metrics))
        .route("/status", get(render_status))
        .with_state(AppState { metrics, status })
}

async fn render_metrics(State(s): State<AppState>) -> Response {
    // Upkeep drains the histograms' buffers; scraping is a good moment.
    s.metrics.run_upkeep();
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        s.metrics.render(),
    )
        .into_response()
}

async fn render_status(State(s): State<AppState>) -> Response {
    axum::Json(s.status.snapshot()).into_response()
}
