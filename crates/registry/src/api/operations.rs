//! Operations routes: health, metrics, the event stream, the dashboard's pages, and the
//! answers for unknown paths and methods.

use std::convert::Infallible;

use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Response};
use axum::Json;
use futures_util::{Stream, StreamExt};
use rollcall_protocol::{ErrorBody, HealthResponse};
use tokio_stream::wrappers::WatchStream;

use super::error::{ApiError, MetricsError};
use super::AppState;

#[utoipa::path(
    get,
    path = "/health",
    tag = "operations",
    summary = "Liveness, including that storage answers",
    responses(
        (status = 200, description = "healthy", body = HealthResponse),
        (status = 503, description = "storage is failing (or too many connections)", content(
            (HealthResponse = "application/json")
        )),
        (status = 408, description = "the request took too long", body = ErrorBody)
    )
)]
pub(super) async fn health(State(state): State<AppState>) -> Response {
    let check = state.membership.store().check();
    let body = HealthResponse {
        status: if check.is_ok() { "ok" } else { "failing" }.into(),
        storage: match &check {
            Ok(()) => "ok".into(),
            Err(e) => e.message.clone(),
        },
        uptime_ms: state.membership.uptime().as_millis() as u64,
        version: env!("CARGO_PKG_VERSION").into(),
        replica: state.replica.as_ref().map(|r| r.health()),
    };
    let status = if check.is_ok() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body)).into_response()
}

#[utoipa::path(
    get,
    path = "/metrics",
    tag = "operations",
    summary = "Prometheus metrics in text format",
    responses(
        (status = 200, description = "the metrics", body = String, content_type = "text/plain"),
        MetricsError
    )
)]
pub(super) async fn metrics_text(State(state): State<AppState>) -> Result<Response, MetricsError> {
    match crate::telemetry::render(&state.membership) {
        Some(text) => Ok((
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            )],
            text,
        )
            .into_response()),
        None => Err(ApiError::NotFound("metrics are not recorded by this process".into()).into()),
    }
}

/// Server-Sent Events: one `change` event after every membership change or decision, in any
/// cluster. Each stream holds a slot of `--max-watchers` for as long as it is open (`429`
/// when none is free); a client that went away without closing is noticed at the next
/// keep-alive, and its slot freed.
pub(super) async fn events(
    State(state): State<AppState>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let slot = state.watchers.admit()?;
    let stream = WatchStream::from_changes(state.membership.subscribe())
        .map(move |version| {
            // The slot lives in this closure, so it is freed when the stream is dropped.
            let _held = &slot;
            Ok(Event::default().event("change").data(version.to_string()))
        })
        .take_until(state.shutdown.clone().cancelled_owned());
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}

/// What the dashboard's pages may do: run only its own script (`/dashboard.js`), read only
/// from the registry, be framed by no one, send no referrer.
const DASHBOARD_CSP: &str = "default-src 'none'; script-src 'self'; style-src 'unsafe-inline'; img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'";

fn dashboard_headers() -> [(header::HeaderName, HeaderValue); 4] {
    [
        (
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(DASHBOARD_CSP),
        ),
        (
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ),
        (
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        ),
        (header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY")),
    ]
}

pub(super) async fn dashboard_page(State(state): State<AppState>) -> Response {
    (
        dashboard_headers(),
        Html(state.dashboard.page(&state.membership).await),
    )
        .into_response()
}

pub(super) async fn dashboard_live(State(state): State<AppState>) -> Response {
    (
        dashboard_headers(),
        [(header::CACHE_CONTROL, HeaderValue::from_static("no-store"))],
        Html(state.dashboard.live(&state.membership).await),
    )
        .into_response()
}

pub(super) async fn dashboard_script() -> Response {
    (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/javascript; charset=utf-8"),
            ),
            (
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            ),
        ],
        crate::dashboard::SCRIPT,
    )
        .into_response()
}

pub(super) async fn not_found(uri: axum::http::Uri) -> ApiError {
    ApiError::NotFound(format!("no route for {}", uri.path()))
}

pub(super) async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}
