//! Prometheus metrics: the recorder, the HTTP middleware that counts requests by route and
//! status, and the `/metrics` rendering.
//!
//! Metric names (all prefixed `rollcall_`):
//! `http_requests_total{method,route,status}`, `http_request_duration_seconds{method,route}`,
//! `heartbeats_total{result=registered|renewed}`, `claims_total{result=bootstrap|server|agent|not_ready}`,
//! `expiries_total`, `leaves_total`, `live_members{cluster}`, `storage_flush_seconds`,
//! `storage_flush_batch_size`.

use std::sync::OnceLock;
use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::middleware::Next;
use axum::response::Response;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Latency buckets from 100µs to 5s: heartbeats answer in well under a millisecond, flushes in
/// a few milliseconds, a slow disk in seconds.
const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Installs the process-wide Prometheus recorder once and returns its handle. `None` when
/// another recorder was installed first (then `/metrics` says so instead of lying).
pub fn prometheus() -> Option<&'static PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full("rollcall_storage_flush_batch_size".into()),
                        &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0],
                    )
                });
            match builder.and_then(|b| b.install_recorder()) {
                Ok(handle) => Some(handle),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot install the Prometheus recorder; /metrics will be empty");
                    None
                }
            }
        })
        .as_ref()
}

/// Counts and times every request by its route template (never the raw path, which would let
/// clients create unbounded label values).
pub async fn track_requests(request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".to_string());
    let method = request.method().as_str().to_string();
    let started = Instant::now();
    let response = next.run(request).await;
    let status = response.status().as_u16().to_string();
    metrics::counter!("rollcall_http_requests_total", "method" => method.clone(), "route" => route.clone(), "status" => status)
        .increment(1);
    metrics::histogram!("rollcall_http_request_duration_seconds", "method" => method, "route" => route)
        .record(started.elapsed().as_secs_f64());
    response
}
