//! The HTTP API: routes, handlers, the error type and the extractors that turn every
//! malformed request into a 4xx with a stable code.
//!
//! [`router`] builds the whole service, so tests can drive it with `oneshot` and the binary
//! serves the very same thing. Handlers validate, call [`Registry`], and for writes that must
//! be durable await the store's flush before answering.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::Html;
use futures_util::{Stream, StreamExt};
use tokio_stream::wrappers::WatchStream;
use tokio_util::sync::CancellationToken;

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, FromRequest, FromRequestParts, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use rollcall_protocol::validate::NameKind;
use rollcall_protocol::{
    validate_name, ClaimRequest, ClustersResponse, ErrorBody, ErrorCode, HealthResponse,
    HeartbeatRequest, JoinTargetsResponse, MemberRole, ValidationError, DEFAULT_CLUSTER,
    INDEX_HEADER,
};
use serde::de::DeserializeOwned;
use serde::Deserialize;

use crate::auth::{Denied, Tokens};
use crate::membership::{Durability, RefusedError, Registry};
use crate::store::StoreError;

/// What the handlers share.
#[derive(Debug, Clone)]
pub struct AppState {
    pub registry: Arc<Registry>,
    pub tokens: Arc<Tokens>,
    /// Cancelled when shutdown begins, so that long polls and event streams end at once
    /// instead of holding the drain open.
    pub shutdown: CancellationToken,
}

/// Longest wait a blocking read may ask for, and the wait when it names none (Consul's).
pub const MAX_WATCH_WAIT: Duration = Duration::from_secs(600);
pub const DEFAULT_WATCH_WAIT: Duration = Duration::from_secs(300);

/// HTTP-level settings of the router.
#[derive(Debug, Clone, Copy)]
pub struct HttpLimits {
    pub max_body_bytes: usize,
    pub request_timeout: Duration,
}

/// Builds the registry's HTTP service.
pub fn router(state: AppState, limits: HttpLimits) -> Router {
    // Long polls and event streams outlive any request timeout by design; they are bounded
    // by their own `wait` and end at shutdown.
    let streaming = Router::new()
        .route("/v1/clusters/{cluster}/members", get(list_members))
        .route("/v1/events", get(events));
    Router::new()
        .route("/", get(dashboard_page))
        .route("/dashboard/live", get(dashboard_live))
        .route("/metrics", get(metrics_text))
        .route("/health", get(health))
        .route("/members", get(join_targets))
        .route("/v1/clusters", get(clusters))
        .route("/v1/clusters/{cluster}", get(cluster_detail))
        .route(
            "/v1/clusters/{cluster}/members/{node}",
            get(get_member).put(heartbeat).delete(leave),
        )
        .route("/v1/clusters/{cluster}/claims", axum::routing::post(claim))
        .route_layer(
            tower::ServiceBuilder::new()
                .layer(axum::error_handling::HandleErrorLayer::new(
                    |_: tower::BoxError| async { ApiError::Timeout },
                ))
                .timeout(limits.request_timeout),
        )
        .merge(streaming)
        .route_layer(axum::middleware::from_fn(crate::telemetry::track_requests))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(limits.max_body_bytes))
        .layer(
            // A 503 `not_ready` is an expected answer, and real failures are logged where they
            // happen with their cause, so the trace layer reports failures at debug level only.
            tower_http::trace::TraceLayer::new_for_http().on_failure(
                tower_http::trace::DefaultOnFailure::new().level(tracing::Level::DEBUG),
            ),
        )
        .with_state(state)
}

/// Every error the API answers with. The client sees the code and a message; for server-side
/// failures the message is generic and the cause goes to the log.
#[derive(Debug)]
pub enum ApiError {
    Invalid(ValidationError),
    InvalidBody(String),
    UnsupportedMediaType(String),
    BodyTooLarge(String),
    InvalidQuery(String),
    Unauthorized,
    Forbidden(String),
    NotFound(String),
    MethodNotAllowed,
    LimitExceeded(String),
    NotReady {
        message: String,
        retry_after: Duration,
    },
    Storage(StoreError),
    Timeout,
}

impl From<ValidationError> for ApiError {
    fn from(e: ValidationError) -> Self {
        ApiError::Invalid(e)
    }
}

impl From<RefusedError> for ApiError {
    fn from(e: RefusedError) -> Self {
        match e {
            RefusedError::NotReady {
                message,
                retry_after,
            } => ApiError::NotReady {
                message,
                retry_after,
            },
            RefusedError::LimitExceeded(m) => ApiError::LimitExceeded(m),
            RefusedError::NotFound(m) => ApiError::NotFound(m),
            RefusedError::Storage(e) => ApiError::Storage(e),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        ApiError::Storage(e)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code, message) = match self {
            ApiError::Invalid(e) => (StatusCode::BAD_REQUEST, e.code, e.message),
            ApiError::InvalidBody(m) => (StatusCode::BAD_REQUEST, ErrorCode::InvalidBody, m),
            ApiError::UnsupportedMediaType(m) => (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                ErrorCode::InvalidBody,
                m,
            ),
            ApiError::BodyTooLarge(m) => {
                (StatusCode::PAYLOAD_TOO_LARGE, ErrorCode::BodyTooLarge, m)
            }
            ApiError::InvalidQuery(m) => (StatusCode::BAD_REQUEST, ErrorCode::InvalidQuery, m),
            ApiError::Unauthorized => {
                let body = ErrorBody {
                    code: ErrorCode::Unauthorized,
                    message: "this write needs a bearer token: Authorization: Bearer <token>"
                        .into(),
                };
                return (
                    StatusCode::UNAUTHORIZED,
                    [(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"))],
                    Json(body),
                )
                    .into_response();
            }
            ApiError::Forbidden(m) => (StatusCode::FORBIDDEN, ErrorCode::Forbidden, m),
            ApiError::NotFound(m) => (StatusCode::NOT_FOUND, ErrorCode::NotFound, m),
            ApiError::MethodNotAllowed => (
                StatusCode::METHOD_NOT_ALLOWED,
                ErrorCode::MethodNotAllowed,
                "this method is not allowed on this path".into(),
            ),
            ApiError::LimitExceeded(m) => {
                (StatusCode::TOO_MANY_REQUESTS, ErrorCode::LimitExceeded, m)
            }
            ApiError::NotReady {
                message,
                retry_after,
            } => {
                let secs = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
                let body = ErrorBody {
                    code: ErrorCode::NotReady,
                    message,
                };
                return (
                    StatusCode::SERVICE_UNAVAILABLE,
                    [(header::RETRY_AFTER, HeaderValue::from(secs.max(1)))],
                    Json(body),
                )
                    .into_response();
            }
            ApiError::Storage(e) => {
                tracing::error!(error = %e.message, disk_full = e.disk_full, "storage failure; the write was not acknowledged");
                if e.disk_full {
                    (
                        StatusCode::INSUFFICIENT_STORAGE,
                        ErrorCode::StorageError,
                        "the registry's disk is full; the write was not stored (reads still work)"
                            .into(),
                    )
                } else {
                    (
                        StatusCode::INTERNAL_SERVER_ERROR,
                        ErrorCode::StorageError,
                        "the registry could not store the write; it was not acknowledged".into(),
                    )
                }
            }
            ApiError::Timeout => (
                StatusCode::REQUEST_TIMEOUT,
                ErrorCode::Timeout,
                "the request took longer than the registry allows".into(),
            ),
        };
        (status, Json(ErrorBody { code, message })).into_response()
    }
}

/// `Json<T>` whose rejections are [`ApiError`]s.
#[derive(Debug)]
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(v)) => Ok(ApiJson(v)),
            Err(rejection) => Err(match rejection {
                JsonRejection::MissingJsonContentType(_) => ApiError::UnsupportedMediaType(
                    "the body must be JSON with Content-Type: application/json".into(),
                ),
                JsonRejection::JsonDataError(e) => ApiError::InvalidBody(e.body_text()),
                JsonRejection::JsonSyntaxError(e) => ApiError::InvalidBody(e.body_text()),
                JsonRejection::BytesRejection(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                    ApiError::BodyTooLarge("the body is larger than the registry accepts".into())
                }
                other => ApiError::InvalidBody(other.body_text()),
            }),
        }
    }
}

/// `Path<T>` whose rejections are [`ApiError`]s.
#[derive(Debug)]
pub struct ApiPath<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for ApiPath<T> {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, Self::Rejection> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|p| ApiPath(p.0))
            .map_err(|e: PathRejection| {
                ApiError::InvalidBody(format!("bad path: {}", e.body_text()))
            })
    }
}

/// `Query<T>` whose rejections are [`ApiError`]s.
#[derive(Debug)]
pub struct ApiQuery<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, Self::Rejection> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|q| ApiQuery(q.0))
            .map_err(|e: QueryRejection| ApiError::InvalidQuery(e.body_text()))
    }
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

async fn wait_durable(state: &AppState, durability: Durability) -> Result<(), ApiError> {
    if durability == Durability::FlushBeforeAnswer {
        state.registry.store().flush().await?;
    }
    Ok(())
}

fn index_header(index: u64) -> [(&'static str, HeaderValue); 1] {
    [(INDEX_HEADER, HeaderValue::from(index))]
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MembersQuery {
    role: Option<MemberRole>,
    /// Blocking read: return when the cluster's index differs from this one.
    index: Option<u64>,
    /// How long a blocking read may wait, like `30s` (default 5m, at most 10m).
    wait: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct JoinQuery {
    cluster: Option<String>,
    role: Option<MemberRole>,
    format: Option<JoinFormat>,
}

#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum JoinFormat {
    Json,
    Text,
}

#[tracing::instrument(skip_all, fields(cluster = %cluster, node = %node))]
async fn heartbeat(
    State(state): State<AppState>,
    ApiPath((cluster, node)): ApiPath<(String, String)>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<HeartbeatRequest>,
) -> Result<Response, ApiError> {
    validate_name(NameKind::Cluster, &cluster)?;
    validate_name(NameKind::Node, &node)?;
    authorize(&state, &cluster, &headers)?;
    body.validate()?;
    let (response, durability) = state.registry.heartbeat(&cluster, &node, body)?;
    wait_durable(&state, durability).await?;
    Ok(Json(response).into_response())
}

#[tracing::instrument(skip_all, fields(cluster = %cluster, node = %node))]
async fn leave(
    State(state): State<AppState>,
    ApiPath((cluster, node)): ApiPath<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    validate_name(NameKind::Cluster, &cluster)?;
    validate_name(NameKind::Node, &node)?;
    authorize(&state, &cluster, &headers)?;
    let durability = state.registry.leave(&cluster, &node)?;
    wait_durable(&state, durability).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn get_member(
    State(state): State<AppState>,
    ApiPath((cluster, node)): ApiPath<(String, String)>,
) -> Result<Response, ApiError> {
    validate_name(NameKind::Cluster, &cluster)?;
    validate_name(NameKind::Node, &node)?;
    match state.registry.member(&cluster, &node) {
        Some(m) => Ok(Json(m).into_response()),
        None => Err(ApiError::NotFound(format!(
            "{node:?} is not a live member of cluster {cluster:?}"
        ))),
    }
}

async fn list_members(
    State(state): State<AppState>,
    ApiPath(cluster): ApiPath<String>,
    ApiQuery(query): ApiQuery<MembersQuery>,
) -> Result<Response, ApiError> {
    validate_name(NameKind::Cluster, &cluster)?;
    let wait = match query.wait.as_deref() {
        None => DEFAULT_WATCH_WAIT,
        Some(w) => match humantime::parse_duration(w) {
            Ok(d) if d <= MAX_WATCH_WAIT => d,
            Ok(_) => {
                return Err(ApiError::InvalidQuery(format!(
                    "wait must be at most {}",
                    humantime::format_duration(MAX_WATCH_WAIT)
                )))
            }
            Err(e) => {
                return Err(ApiError::InvalidQuery(format!(
                    "wait {w:?} is not a duration like 30s: {e}"
                )))
            }
        },
    };
    if let Some(index) = query.index {
        wait_for_change(&state, &cluster, index, wait).await;
    }
    let members = state.registry.members(&cluster, query.role);
    Ok((index_header(members.index), Json(members)).into_response())
}

/// Blocks until `cluster`'s index differs from `index`, `wait` passes, or shutdown begins.
/// The receiver is taken before the first look, so a change between the look and the wait
/// still wakes it.
async fn wait_for_change(state: &AppState, cluster: &str, index: u64, wait: Duration) {
    let mut changes = state.registry.subscribe();
    let deadline = tokio::time::Instant::now() + wait;
    while state.registry.cluster_index(cluster) == index {
        tokio::select! {
            changed = changes.changed() => if changed.is_err() { return },
            _ = tokio::time::sleep_until(deadline) => return,
            _ = state.shutdown.cancelled() => return,
        }
    }
}

/// Server-Sent Events: one `change` event after every membership change or decision.
async fn events(
    State(state): State<AppState>,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let stream = WatchStream::from_changes(state.registry.subscribe())
        .map(|version| Ok(Event::default().event("change").data(version.to_string())))
        .take_until(state.shutdown.clone().cancelled_owned());
    Sse::new(stream).keep_alive(KeepAlive::default())
}

async fn dashboard_page(State(state): State<AppState>) -> Html<String> {
    Html(crate::dashboard::page(&state.registry).into_string())
}

async fn dashboard_live(State(state): State<AppState>) -> Response {
    (
        [(header::CACHE_CONTROL, HeaderValue::from_static("no-store"))],
        Html(crate::dashboard::live(&state.registry).into_string()),
    )
        .into_response()
}

async fn metrics_text(State(state): State<AppState>) -> Response {
    for c in state.registry.clusters() {
        metrics::gauge!("rollcall_live_members", "cluster" => c.cluster)
            .set(f64::from(c.live_members));
    }
    match crate::telemetry::prometheus() {
        Some(handle) => (
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            )],
            handle.render(),
        )
            .into_response(),
        None => {
            ApiError::NotFound("metrics are not recorded by this process".into()).into_response()
        }
    }
}

async fn cluster_detail(
    State(state): State<AppState>,
    ApiPath(cluster): ApiPath<String>,
) -> Result<Response, ApiError> {
    validate_name(NameKind::Cluster, &cluster)?;
    match state.registry.cluster_detail(&cluster) {
        Some(d) => Ok((index_header(d.index), Json(d)).into_response()),
        None => Err(ApiError::NotFound(format!(
            "the registry knows no cluster {cluster:?}"
        ))),
    }
}

async fn clusters(State(state): State<AppState>) -> Json<ClustersResponse> {
    Json(ClustersResponse {
        clusters: state.registry.clusters(),
    })
}

#[tracing::instrument(skip_all, fields(cluster = %cluster))]
async fn claim(
    State(state): State<AppState>,
    ApiPath(cluster): ApiPath<String>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<ClaimRequest>,
) -> Result<Response, ApiError> {
    validate_name(NameKind::Cluster, &cluster)?;
    authorize(&state, &cluster, &headers)?;
    body.validate()?;
    let (response, durability) = state.registry.claim(&cluster, &body)?;
    wait_durable(&state, durability).await?;
    Ok(Json(response).into_response())
}

async fn join_targets(
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<JoinQuery>,
) -> Result<Response, ApiError> {
    let cluster = query.cluster.unwrap_or_else(|| DEFAULT_CLUSTER.to_string());
    validate_name(NameKind::Cluster, &cluster)?;
    let members = state.registry.members(&cluster, query.role);
    let addresses: Vec<String> = members.members.into_iter().map(|m| m.address).collect();
    match query.format.unwrap_or(JoinFormat::Json) {
        JoinFormat::Text => {
            let mut body = addresses.join("\n");
            if !body.is_empty() {
                body.push('\n');
            }
            Ok((
                index_header(members.index),
                [(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("text/plain; charset=utf-8"),
                )],
                body,
            )
                .into_response())
        }
        JoinFormat::Json => Ok((
            index_header(members.index),
            Json(JoinTargetsResponse {
                cluster,
                index: members.index,
                addresses,
            }),
        )
            .into_response()),
    }
}

async fn health(State(state): State<AppState>) -> Response {
    let check = state.registry.store().check();
    let body = HealthResponse {
        status: if check.is_ok() {
            "ok".into()
        } else {
            "failing".into()
        },
        storage: match &check {
            Ok(()) => "ok".into(),
            Err(e) => e.message.clone(),
        },
        uptime_ms: state.registry.uptime().as_millis() as u64,
        version: env!("CARGO_PKG_VERSION").into(),
    };
    let status = if check.is_ok() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body)).into_response()
}

async fn not_found(uri: axum::http::Uri) -> ApiError {
    ApiError::NotFound(format!("no route for {}", uri.path()))
}

async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}
