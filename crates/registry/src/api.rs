//! The HTTP API: routes, handlers, the error type and the extractors that turn every
//! malformed request into a 4xx with a stable code.
//!
//! [`router`] builds the whole service, so tests can drive it with `oneshot` and the binary
//! serves the very same thing. Handlers validate, call [`Membership`], and for writes that must
//! be durable await the store's flush before answering.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
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
use rollcall_protocol::openapi::name_schema;
use rollcall_protocol::validate::NameKind;
use rollcall_protocol::{
    validate_name, ClaimRequest, ClaimResponse, ClusterDetail, ClustersResponse, ErrorBody,
    ErrorCode, HealthResponse, HeartbeatRequest, HeartbeatResponse, JoinTargetsResponse, Member,
    MemberRole, MembersResponse, ValidationError, DEFAULT_CLUSTER, INDEX_HEADER,
};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use utoipa::IntoParams;

use crate::auth::{Denied, Tokens};
use crate::lists::{ListCache, ListKey, ListKind};
use crate::membership::{Durability, Membership, RefusedError};
use crate::store::StoreError;

/// What the handlers share.
#[derive(Debug, Clone)]
pub struct AppState {
    pub membership: Arc<Membership>,
    pub tokens: Arc<Tokens>,
    /// Cancelled when shutdown begins, so that long polls and event streams end at once
    /// instead of holding the drain open.
    pub shutdown: CancellationToken,
    /// Blocking reads wait at most this long, whatever they ask for.
    pub max_watch_wait: Duration,
    /// Pre-serialised list answers.
    pub lists: Arc<ListCache>,
}

/// The wait of a blocking read that names none (Consul's default).
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
        .route("/openapi.json", get(openapi_json))
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
        if !json_content_type(req.headers()) {
            return Err(ApiError::UnsupportedMediaType(
                "the body must be JSON with Content-Type: application/json".into(),
            ));
        }
        let bytes = axum::body::Bytes::from_request(req, state)
            .await
            .map_err(|e| {
                if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                    ApiError::BodyTooLarge("the body is larger than the registry accepts".into())
                } else {
                    ApiError::InvalidBody(e.body_text())
                }
            })?;
        // serde reads a struct from a JSON array too (by position); every request body of this
        // API is an object, so anything else is refused before it gets that far.
        if bytes.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
            return Err(ApiError::InvalidBody(
                "the body must be a JSON object".into(),
            ));
        }
        match Json::<T>::from_bytes(&bytes) {
            Ok(Json(v)) => Ok(ApiJson(v)),
            Err(rejection) => Err(match rejection {
                JsonRejection::JsonDataError(e) => ApiError::InvalidBody(e.body_text()),
                JsonRejection::JsonSyntaxError(e) => ApiError::InvalidBody(e.body_text()),
                other => ApiError::InvalidBody(other.body_text()),
            }),
        }
    }
}

/// `application/json`, or any `application/*+json`, as axum's `Json` accepts.
fn json_content_type(headers: &HeaderMap) -> bool {
    let Some(value) = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let essence = value
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
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
        state.membership.store().flush().await?;
    }
    Ok(())
}

fn index_header(index: u64) -> [(&'static str, HeaderValue); 1] {
    [(INDEX_HEADER, HeaderValue::from(index))]
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct MembersQuery {
    /// Only members of this role.
    role: Option<MemberRole>,
    /// Blocking read: return when the cluster's index differs from this one.
    #[param(minimum = 0, maximum = 9223372036854775807_i64)]
    index: Option<u64>,
    /// How long a blocking read may wait, like `30s` (default 5m; longer waits are cut to the
    /// registry's `--max-watch-wait`).
    #[param(schema_with = wait_schema)]
    wait: Option<String>,
}

/// `{cluster}` in a path.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
#[allow(dead_code)] // documents the path; the handlers extract the segments as strings
struct ClusterPath {
    #[param(schema_with = name_schema)]
    cluster: String,
}

/// `{cluster}` and `{node}` in a path.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
#[allow(dead_code)] // documents the path; the handlers extract the segments as strings
struct MemberPath {
    #[param(schema_with = name_schema)]
    cluster: String,
    #[param(schema_with = name_schema)]
    node: String,
}

fn wait_schema() -> utoipa::openapi::schema::Object {
    utoipa::openapi::schema::ObjectBuilder::new()
        .schema_type(utoipa::openapi::schema::Type::String)
        .pattern(Some(rollcall_protocol::validate::WAIT_PATTERN))
        .description(Some("a whole number and a unit: ms, s, m or h"))
        .build()
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct JoinQuery {
    /// The cluster (default `default`).
    #[param(schema_with = name_schema)]
    cluster: Option<String>,
    /// Only members of this role.
    role: Option<MemberRole>,
    /// `json` (default) or `text`, one host:port per line.
    format: Option<JoinFormat>,
}

#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
enum JoinFormat {
    Json,
    Text,
}

#[utoipa::path(
    put,
    path = "/v1/clusters/{cluster}/members/{node}",
    tag = "members",
    summary = "Heartbeat: register or renew a member",
    params(MemberPath),
    request_body = HeartbeatRequest,
    security((), ("bearer" = [])),
    responses(
        (status = 200, description = "registered or renewed", body = HeartbeatResponse),
        (status = 401, description = "a token is needed", body = ErrorBody),
        (status = 403, description = "the token is for another cluster", body = ErrorBody),
        (status = 429, description = "a limit was reached (members per cluster, clusters)", body = ErrorBody),
        (status = 507, description = "the disk is full; nothing acknowledged", body = ErrorBody),
        (status = 400, description = "invalid input", body = ErrorBody),
        (status = 408, description = "the request took too long", body = ErrorBody),
        (status = 413, description = "the body is too large", body = ErrorBody),
        (status = 415, description = "the body is not JSON", body = ErrorBody),
        (status = 500, description = "storage failure; nothing acknowledged", body = ErrorBody),
        (status = 503, description = "too many connections", body = ErrorBody)
    )
)]
#[tracing::instrument(level = "debug", skip_all, fields(cluster = %cluster, node = %node))]
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
    let (response, durability) = state.membership.heartbeat(&cluster, &node, body)?;
    wait_durable(&state, durability).await?;
    Ok(Json(response).into_response())
}

#[utoipa::path(
    delete,
    path = "/v1/clusters/{cluster}/members/{node}",
    tag = "members",
    summary = "Leave: forget a member and release its claim",
    params(MemberPath),
    security((), ("bearer" = [])),
    responses(
        (status = 204, description = "the member left"),
        (status = 404, description = "no such member or claimant", body = ErrorBody),
        (status = 401, description = "a token is needed", body = ErrorBody),
        (status = 403, description = "the token is for another cluster", body = ErrorBody),
        (status = 429, description = "a limit was reached (members per cluster, clusters)", body = ErrorBody),
        (status = 507, description = "the disk is full; nothing acknowledged", body = ErrorBody),
        (status = 400, description = "invalid input", body = ErrorBody),
        (status = 408, description = "the request took too long", body = ErrorBody),
        (status = 413, description = "the body is too large", body = ErrorBody),
        (status = 415, description = "the body is not JSON", body = ErrorBody),
        (status = 500, description = "storage failure; nothing acknowledged", body = ErrorBody),
        (status = 503, description = "too many connections", body = ErrorBody)
    )
)]
#[tracing::instrument(level = "debug", skip_all, fields(cluster = %cluster, node = %node))]
async fn leave(
    State(state): State<AppState>,
    ApiPath((cluster, node)): ApiPath<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    validate_name(NameKind::Cluster, &cluster)?;
    validate_name(NameKind::Node, &node)?;
    authorize(&state, &cluster, &headers)?;
    let durability = state.membership.leave(&cluster, &node)?;
    wait_durable(&state, durability).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[utoipa::path(
    get,
    path = "/v1/clusters/{cluster}/members/{node}",
    tag = "members",
    summary = "One live member",
    params(MemberPath),
    responses(
        (status = 200, description = "the member", body = Member),
        (status = 404, description = "not a live member", body = ErrorBody),
        (status = 400, description = "invalid input", body = ErrorBody),
        (status = 408, description = "the request took too long", body = ErrorBody),
        (status = 413, description = "the body is too large", body = ErrorBody),
        (status = 415, description = "the body is not JSON", body = ErrorBody),
        (status = 500, description = "storage failure; nothing acknowledged", body = ErrorBody),
        (status = 503, description = "too many connections", body = ErrorBody)
    )
)]
async fn get_member(
    State(state): State<AppState>,
    ApiPath((cluster, node)): ApiPath<(String, String)>,
) -> Result<Response, ApiError> {
    validate_name(NameKind::Cluster, &cluster)?;
    validate_name(NameKind::Node, &node)?;
    match state.membership.member(&cluster, &node) {
        Some(m) => Ok(Json(m).into_response()),
        None => Err(ApiError::NotFound(format!(
            "{node:?} is not a live member of cluster {cluster:?}"
        ))),
    }
}

#[utoipa::path(
    get,
    path = "/v1/clusters/{cluster}/members",
    tag = "members",
    summary = "Live members, freshest first; a blocking read with `index` and `wait`",
    params(ClusterPath, MembersQuery),
    responses(
        (status = 200, description = "the live members", body = MembersResponse,
            headers(("x-rollcall-index" = u64, description = "the cluster's membership index"))),
        (status = 400, description = "invalid input", body = ErrorBody),
        (status = 408, description = "the request took too long", body = ErrorBody),
        (status = 413, description = "the body is too large", body = ErrorBody),
        (status = 415, description = "the body is not JSON", body = ErrorBody),
        (status = 500, description = "storage failure; nothing acknowledged", body = ErrorBody),
        (status = 503, description = "too many connections", body = ErrorBody)
    )
)]
async fn list_members(
    State(state): State<AppState>,
    ApiPath(cluster): ApiPath<String>,
    ApiQuery(query): ApiQuery<MembersQuery>,
) -> Result<Response, ApiError> {
    validate_name(NameKind::Cluster, &cluster)?;
    let wait = match query.wait.as_deref() {
        None => DEFAULT_WATCH_WAIT,
        Some(w) if !rollcall_protocol::validate::matches_wait(w) => {
            return Err(ApiError::InvalidQuery(format!(
                "wait {w:?} is not a whole number and a unit (ms, s, m or h), like 30s"
            )))
        }
        // Like Consul, a longer wait than allowed is cut to the maximum rather than refused.
        Some(w) => humantime::parse_duration(w)
            .map_err(|e| ApiError::InvalidQuery(format!("wait {w:?}: {e}")))?,
    }
    .min(state.max_watch_wait);
    if query.index.is_some_and(|i| i > i64::MAX as u64) {
        return Err(ApiError::InvalidQuery(format!(
            "index must be at most {}",
            i64::MAX
        )));
    }
    if let Some(index) = query.index {
        wait_for_change(&state, &cluster, index, wait).await;
    }
    let key = ListKey {
        cluster,
        role: query.role,
        kind: ListKind::Members,
    };
    let (index, body) = state.lists.get(&state.membership, key).await;
    Ok(list_response(index, "application/json", body))
}

fn list_response(index: u64, content_type: &'static str, body: Bytes) -> Response {
    (
        index_header(index),
        [(header::CONTENT_TYPE, HeaderValue::from_static(content_type))],
        body,
    )
        .into_response()
}

/// Blocks until `cluster`'s index differs from `index`, `wait` passes, or shutdown begins.
/// The receiver is taken before the first look, so a change between the look and the wait
/// still wakes it.
async fn wait_for_change(state: &AppState, cluster: &str, index: u64, wait: Duration) {
    let mut changes = state.membership.subscribe();
    let deadline = tokio::time::Instant::now() + wait;
    while state.membership.cluster_index(cluster) == index {
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
    let stream = WatchStream::from_changes(state.membership.subscribe())
        .map(|version| Ok(Event::default().event("change").data(version.to_string())))
        .take_until(state.shutdown.clone().cancelled_owned());
    Sse::new(stream).keep_alive(KeepAlive::default())
}

async fn dashboard_page(State(state): State<AppState>) -> Html<String> {
    Html(crate::dashboard::page(&state.membership).into_string())
}

async fn dashboard_live(State(state): State<AppState>) -> Response {
    (
        [(header::CACHE_CONTROL, HeaderValue::from_static("no-store"))],
        Html(crate::dashboard::live(&state.membership).into_string()),
    )
        .into_response()
}

#[utoipa::path(
    get,
    path = "/metrics",
    tag = "operations",
    summary = "Prometheus metrics in text format",
    responses(
        (status = 200, description = "the metrics", body = String, content_type = "text/plain"),
        (status = 404, description = "no recorder in this process", body = ErrorBody),
        (status = 408, description = "the request took too long", body = ErrorBody),
        (status = 503, description = "too many connections", body = ErrorBody)
    )
)]
async fn metrics_text(State(state): State<AppState>) -> Response {
    for c in state.membership.clusters() {
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

#[utoipa::path(
    get,
    path = "/v1/clusters/{cluster}",
    tag = "clusters",
    summary = "Members, live claims and the bootstrap grant of one cluster",
    params(ClusterPath),
    responses(
        (status = 200, description = "the cluster", body = ClusterDetail,
            headers(("x-rollcall-index" = u64, description = "the cluster's membership index"))),
        (status = 404, description = "the registry knows no such cluster", body = ErrorBody),
        (status = 400, description = "invalid input", body = ErrorBody),
        (status = 408, description = "the request took too long", body = ErrorBody),
        (status = 413, description = "the body is too large", body = ErrorBody),
        (status = 415, description = "the body is not JSON", body = ErrorBody),
        (status = 500, description = "storage failure; nothing acknowledged", body = ErrorBody),
        (status = 503, description = "too many connections", body = ErrorBody)
    )
)]
async fn cluster_detail(
    State(state): State<AppState>,
    ApiPath(cluster): ApiPath<String>,
) -> Result<Response, ApiError> {
    validate_name(NameKind::Cluster, &cluster)?;
    match state.membership.cluster_detail(&cluster) {
        Some(d) => Ok((index_header(d.index), Json(d)).into_response()),
        None => Err(ApiError::NotFound(format!(
            "the registry knows no cluster {cluster:?}"
        ))),
    }
}

#[utoipa::path(
    get,
    path = "/v1/clusters",
    tag = "clusters",
    summary = "Every cluster the registry knows",
    responses(
        (status = 200, description = "the clusters", body = ClustersResponse),
        (status = 400, description = "invalid input", body = ErrorBody),
        (status = 408, description = "the request took too long", body = ErrorBody),
        (status = 413, description = "the body is too large", body = ErrorBody),
        (status = 415, description = "the body is not JSON", body = ErrorBody),
        (status = 500, description = "storage failure; nothing acknowledged", body = ErrorBody),
        (status = 503, description = "too many connections", body = ErrorBody)
    )
)]
async fn clusters(State(state): State<AppState>) -> Json<ClustersResponse> {
    Json(ClustersResponse {
        clusters: state.membership.clusters(),
    })
}

#[utoipa::path(
    post,
    path = "/v1/clusters/{cluster}/claims",
    tag = "claims",
    summary = "Mode determination: the role a node must start as, and its join targets",
    params(ClusterPath),
    request_body = ClaimRequest,
    security((), ("bearer" = [])),
    responses(
        (status = 200, description = "the role and the join targets", body = ClaimResponse),
        (status = 503, description = "not safe to answer yet (startup grace, quiet period, a possibly running raft), or too many connections; retry after Retry-After seconds",
            body = ErrorBody, headers(("retry-after" = u64, description = "seconds to wait"))),
        (status = 401, description = "a token is needed", body = ErrorBody),
        (status = 403, description = "the token is for another cluster", body = ErrorBody),
        (status = 429, description = "a limit was reached (members per cluster, clusters)", body = ErrorBody),
        (status = 507, description = "the disk is full; nothing acknowledged", body = ErrorBody),
        (status = 400, description = "invalid input", body = ErrorBody),
        (status = 408, description = "the request took too long", body = ErrorBody),
        (status = 413, description = "the body is too large", body = ErrorBody),
        (status = 415, description = "the body is not JSON", body = ErrorBody),
        (status = 500, description = "storage failure; nothing acknowledged", body = ErrorBody)
    )
)]
#[tracing::instrument(level = "debug", skip_all, fields(cluster = %cluster))]
async fn claim(
    State(state): State<AppState>,
    ApiPath(cluster): ApiPath<String>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<ClaimRequest>,
) -> Result<Response, ApiError> {
    validate_name(NameKind::Cluster, &cluster)?;
    authorize(&state, &cluster, &headers)?;
    body.validate()?;
    let (response, durability) = state.membership.claim(&cluster, &body)?;
    wait_durable(&state, durability).await?;
    Ok(Json(response).into_response())
}

#[utoipa::path(
    get,
    path = "/members",
    tag = "members",
    summary = "Join addresses of a cluster, as JSON or (format=text) one host:port per line",
    params(JoinQuery),
    responses(
        (status = 200, description = "the addresses", content(
            (JoinTargetsResponse = "application/json"),
            (String = "text/plain")
        ), headers(("x-rollcall-index" = u64, description = "the cluster's membership index"))),
        (status = 400, description = "invalid input", body = ErrorBody),
        (status = 408, description = "the request took too long", body = ErrorBody),
        (status = 413, description = "the body is too large", body = ErrorBody),
        (status = 415, description = "the body is not JSON", body = ErrorBody),
        (status = 500, description = "storage failure; nothing acknowledged", body = ErrorBody),
        (status = 503, description = "too many connections", body = ErrorBody)
    )
)]
async fn join_targets(
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<JoinQuery>,
) -> Result<Response, ApiError> {
    let cluster = query.cluster.unwrap_or_else(|| DEFAULT_CLUSTER.to_string());
    validate_name(NameKind::Cluster, &cluster)?;
    let format = query.format.unwrap_or(JoinFormat::Json);
    let kind = match format {
        JoinFormat::Json => ListKind::JoinJson,
        JoinFormat::Text => ListKind::JoinText,
    };
    let key = ListKey {
        cluster,
        role: query.role,
        kind,
    };
    let (index, body) = state.lists.get(&state.membership, key).await;
    let content_type = match format {
        JoinFormat::Json => "application/json",
        JoinFormat::Text => "text/plain; charset=utf-8",
    };
    Ok(list_response(index, content_type, body))
}

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
async fn health(State(state): State<AppState>) -> Response {
    let check = state.membership.store().check();
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
        uptime_ms: state.membership.uptime().as_millis() as u64,
        version: env!("CARGO_PKG_VERSION").into(),
    };
    let status = if check.is_ok() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body)).into_response()
}

/// The OpenAPI 3.1 document of the JSON API, generated from the handlers and the wire types.
#[derive(utoipa::OpenApi)]
#[openapi(
    info(title = "rollcall registry", description = "The bootstrap registry of raft clusters: heartbeats, join targets and race-free mode determination."),
    paths(heartbeat, leave, get_member, list_members, cluster_detail, clusters, claim, join_targets, health, metrics_text),
    components(schemas(JoinFormat)),
    modifiers(&BearerAuth),
    tags(
        (name = "members", description = "Heartbeats, leaves and join targets"),
        (name = "claims", description = "Which node may start a raft"),
        (name = "clusters", description = "What the registry knows"),
        (name = "operations", description = "Health and metrics")
    )
)]
#[derive(Debug)]
pub struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// `ApiDoc` as JSON, built once.
pub fn openapi_document() -> &'static str {
    static DOC: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DOC.get_or_init(|| {
        use utoipa::OpenApi;
        let mut doc = ApiDoc::openapi();
        doc.info.version = env!("CARGO_PKG_VERSION").to_string();
        doc.to_pretty_json().unwrap_or_else(|_| "{}".to_string())
    })
}

async fn openapi_json() -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        openapi_document(),
    )
        .into_response()
}

async fn not_found(uri: axum::http::Uri) -> ApiError {
    ApiError::NotFound(format!("no route for {}", uri.path()))
}

async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}
