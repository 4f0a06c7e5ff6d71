//! The HTTP API. [`router`] builds the whole service, so tests can drive it with `oneshot` and
//! the binary serves the very same thing. Handlers validate, authorize, call [`Membership`],
//! and for writes that must be durable await the store's flush before answering.
//!
//! - `error.rs`: [`ApiError`] (status + `{code, message}`) and each route's set of statuses.
//! - `extract.rs`: extractors whose rejections are `ApiError`s, and the path parameters.
//! - `members.rs`, `claims.rs`, `clusters.rs`, `operations.rs`: the handlers, by resource.
//! - `openapi.rs`: the OpenAPI document.

mod claims;
mod clusters;
pub mod error;
pub mod extract;
mod members;
pub mod openapi;
mod operations;
mod storage_lost;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::DefaultBodyLimit;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use rollcall_protocol::INDEX_HEADER;
use tokio_util::sync::CancellationToken;

use crate::auth::{Denied, Tokens};
use crate::lists::{ListCache, Listed};
use crate::membership::{Durability, Membership};
use crate::telemetry::TrackRequestsLayer;
use crate::watchers::Watchers;

pub use error::ApiError;
pub use openapi::{openapi_document, ApiDoc};

/// What the handlers share: one `Arc`, because axum clones the state for every extractor of
/// every request, and cloning each field's own `Arc` (and the cancellation token's, which
/// takes a lock) cost 4% of the CPU of a renewal in a profile at 58k renewals/s.
#[derive(Debug, Clone)]
pub struct AppState(Arc<Shared>);

impl AppState {
    pub fn new(shared: Shared) -> AppState {
        AppState(Arc::new(shared))
    }
}

impl std::ops::Deref for AppState {
    type Target = Shared;
    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// The fields of [`AppState`].
#[derive(Debug)]
pub struct Shared {
    pub membership: Arc<Membership>,
    pub tokens: Arc<Tokens>,
    /// Cancelled when shutdown begins, so that long polls and event streams end at once
    /// instead of holding the drain open.
    pub shutdown: CancellationToken,
    /// Blocking reads wait at most this long, whatever they ask for.
    pub max_watch_wait: Duration,
    /// Pre-serialised list answers.
    pub lists: Arc<ListCache>,
    /// The dashboard's last renders, shared by every reader.
    pub dashboard: Arc<crate::dashboard::RenderCache>,
    /// The slots of `--max-watchers`: every blocking read that waits and every event stream
    /// holds one, whatever connection or protocol carries it.
    pub watchers: Watchers,
    /// With `--store etcd`: this replica, for `/health` and the dashboard.
    pub replica: Option<Arc<crate::replica::Replica>>,
}

/// The wait of a blocking read that names none (Consul's default).
pub const DEFAULT_WATCH_WAIT: Duration = Duration::from_secs(300);

/// HTTP-level settings of the router.
#[derive(Debug, Clone, Copy)]
pub struct HttpLimits {
    pub max_body_bytes: usize,
    pub request_timeout: Duration,
}

/// Builds the registry's HTTP service. What needs a route (the request timeout, the request
/// metrics by route) is layered on the routes; what does not (tracing, the storage-lost
/// refusal, the body limit) wraps the router once: each layer axum applies per route is one
/// more boxed clone of the route's service and one more boxed future on every request.
pub fn router(state: AppState, limits: HttpLimits) -> Router {
    let store = state.membership.store().clone();
    // Long polls and event streams outlive any request timeout by design; they are bounded
    // by their own `wait` and end at shutdown.
    let streaming = Router::new()
        .route("/v1/clusters/{cluster}/members", get(members::list_members))
        .route("/v1/events", get(operations::events))
        .route_layer(TrackRequestsLayer);
    let routes = Router::new()
        .route("/", get(operations::dashboard_page))
        .route("/dashboard/live", get(operations::dashboard_live))
        .route("/dashboard.js", get(operations::dashboard_script))
        .route("/metrics", get(operations::metrics_text))
        .route("/openapi.json", get(openapi::openapi_json))
        .route("/health", get(operations::health))
        .route("/members", get(members::join_targets))
        .route("/v1/clusters", get(clusters::clusters))
        .route("/v1/clusters/{cluster}", get(clusters::cluster_detail))
        .route(
            "/v1/clusters/{cluster}/members/{node}",
            get(members::get_member)
                .put(members::heartbeat)
                .delete(members::leave),
        )
        .route("/v1/clusters/{cluster}/claims", post(claims::claim))
        .route("/v1/clusters/{cluster}/reset", post(clusters::reset))
        .route("/v1/clusters/{cluster}/resize", post(clusters::resize))
        .route_layer(
            tower::ServiceBuilder::new()
                .layer(TrackRequestsLayer)
                .layer(axum::error_handling::HandleErrorLayer::new(
                    |_: tower::BoxError| async {
                        crate::telemetry::limit_refused(crate::telemetry::Limit::RequestTimeout);
                        ApiError::Timeout
                    },
                ))
                .timeout(limits.request_timeout),
        )
        .merge(streaming)
        .fallback(operations::not_found)
        .method_not_allowed_fallback(operations::method_not_allowed)
        .with_state(state);
    // A span and two debug events per request, for whoever reads the log at debug level. When
    // the log filter lets no debug line through at startup, the layer is left out: it costs a
    // renewal 3% of its throughput (bench/analysis.md) for lines nobody would see. A 503
    // `not_ready` is an expected answer, and real failures are logged where they happen with
    // their cause, so the layer reports failures at debug level only.
    let debug_requests = tracing::level_filters::LevelFilter::current()
        >= tracing::level_filters::LevelFilter::DEBUG;
    let trace = debug_requests.then(|| {
        tower::ServiceBuilder::new()
            .map_response(IntoResponse::into_response)
            .layer(tower_http::trace::TraceLayer::new_for_http().on_failure(
                tower_http::trace::DefaultOnFailure::new().level(tracing::Level::DEBUG),
            ))
    });
    let service = tower::ServiceBuilder::new()
        .option_layer(trace)
        .layer(storage_lost::RefuseWritesLayer { store })
        .layer(DefaultBodyLimit::max(limits.max_body_bytes))
        .service(routes);
    Router::new().fallback_service(service)
}

fn authorize(state: &AppState, cluster: &str, headers: &HeaderMap) -> Result<(), ApiError> {
    let header = headers.get(header::AUTHORIZATION).map(|v| v.as_bytes());
    state
        .tokens
        .authorize(cluster, header)
        .map_err(|denied| match denied {
            Denied::Unauthorized => ApiError::Unauthorized,
            Denied::Forbidden => {
                ApiError::Forbidden(format!("this token may not write to cluster {cluster:?}"))
            }
        })
}

/// Operator actions need the registry-wide token (a cluster's token is in every one of its
/// sidecars); with no token configured, writes are open and so are they.
fn authorize_operator(state: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    let header = headers.get(header::AUTHORIZATION).map(|v| v.as_bytes());
    state
        .tokens
        .authorize_registry(header)
        .map_err(|denied| match denied {
            Denied::Unauthorized => ApiError::Unauthorized,
            Denied::Forbidden => ApiError::Forbidden(
                "operator actions need the registry-wide token, not a cluster's".into(),
            ),
        })
}

async fn wait_durable(state: &AppState, durability: Durability) -> Result<(), ApiError> {
    if durability == Durability::FlushBeforeAnswer {
        state.membership.store().flush().await?;
    }
    Ok(())
}

fn index_header(index: u64) -> [(&'static str, HeaderValue); 1] {
    [(INDEX_HEADER, HeaderValue::from(index))]
}

/// A list answer: the body with its index and ETag, or `304 Not Modified` (no body, the same
/// headers) when the request's `If-None-Match` names the same membership.
fn list_response(listed: Listed, content_type: &'static str, request: &HeaderMap) -> Response {
    let etag = HeaderValue::from_str(&listed.etag).ok();
    let unchanged = request
        .get(header::IF_NONE_MATCH)
        .is_some_and(|v| listed.matches(v.as_bytes()));
    let mut response = if unchanged {
        (StatusCode::NOT_MODIFIED, index_header(listed.index)).into_response()
    } else {
        (
            index_header(listed.index),
            [(header::CONTENT_TYPE, HeaderValue::from_static(content_type))],
            listed.body,
        )
            .into_response()
    };
    if let Some(etag) = etag {
        response.headers_mut().insert(header::ETAG, etag);
    }
    response
}
