//! [`ApiError`], every error the API answers with, and the sets of statuses each kind of route
//! can answer, from which the OpenAPI document lists each route's error responses.
//!
//! A handler returns `Result<_, RouteError<S>>` where `S` is its route's [`StatusSet`]: the
//! same type that the handler's `#[utoipa::path]` names in its responses, so a route's
//! documented statuses are its error type's, and an answer outside the set is logged as a bug.

use std::collections::BTreeMap;
use std::marker::PhantomData;
use std::time::Duration;

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use rollcall_protocol::{ErrorBody, ErrorCode, ValidationError};
use utoipa::openapi::{ContentBuilder, HeaderBuilder, Ref, RefOr, ResponseBuilder};

use crate::membership::RefusedError;
use crate::store::StoreError;

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
    /// 429 for a bound that frees itself as others finish (`--max-watchers`): `Retry-After`.
    LimitExceededRetry {
        message: String,
        retry_after: Duration,
    },
    NotReady {
        message: String,
        retry_after: Duration,
    },
    /// 409: the request conflicts with what the registry knows; the code says how.
    Conflict {
        code: ErrorCode,
        message: String,
        retry_after: Option<Duration>,
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
            RefusedError::Conflict {
                code,
                message,
                retry_after,
            } => ApiError::Conflict {
                code,
                message,
                retry_after,
            },
            RefusedError::Storage(e) => ApiError::Storage(e),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        ApiError::Storage(e)
    }
}

impl From<PathRejection> for ApiError {
    fn from(e: PathRejection) -> Self {
        ApiError::InvalidBody(format!("bad path: {}", e.body_text()))
    }
}

impl From<QueryRejection> for ApiError {
    fn from(e: QueryRejection) -> Self {
        ApiError::InvalidQuery(e.body_text())
    }
}

impl ApiError {
    fn status(&self) -> StatusCode {
        match self {
            ApiError::Invalid(_) | ApiError::InvalidBody(_) | ApiError::InvalidQuery(_) => {
                StatusCode::BAD_REQUEST
            }
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::BodyTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::LimitExceeded(_) | ApiError::LimitExceededRetry { .. } => {
                StatusCode::TOO_MANY_REQUESTS
            }
            ApiError::NotReady { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Conflict { .. } => StatusCode::CONFLICT,
            ApiError::Storage(e) if e.disk_full => StatusCode::INSUFFICIENT_STORAGE,
            ApiError::Storage(e) if e.unavailable => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Storage(_) => StatusCode::INTERNAL_SERVER_ERROR,
            ApiError::Timeout => StatusCode::REQUEST_TIMEOUT,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let (code, message) = match self {
            ApiError::Invalid(e) => (e.code, e.message),
            ApiError::InvalidBody(m) | ApiError::UnsupportedMediaType(m) => {
                (ErrorCode::InvalidBody, m)
            }
            ApiError::BodyTooLarge(m) => (ErrorCode::BodyTooLarge, m),
            ApiError::InvalidQuery(m) => (ErrorCode::InvalidQuery, m),
            ApiError::Unauthorized => {
                let body = ErrorBody {
                    code: ErrorCode::Unauthorized,
                    message: "this write needs a bearer token: Authorization: Bearer <token>"
                        .into(),
                };
                return (
                    status,
                    [(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"))],
                    Json(body),
                )
                    .into_response();
            }
            ApiError::Forbidden(m) => (ErrorCode::Forbidden, m),
            ApiError::NotFound(m) => (ErrorCode::NotFound, m),
            ApiError::MethodNotAllowed => (
                ErrorCode::MethodNotAllowed,
                "this method is not allowed on this path".into(),
            ),
            ApiError::LimitExceeded(m) => (ErrorCode::LimitExceeded, m),
            ApiError::LimitExceededRetry {
                message,
                retry_after,
            } => {
                return with_retry_after(
                    status,
                    ErrorCode::LimitExceeded,
                    message,
                    Some(retry_after),
                )
            }
            ApiError::NotReady {
                message,
                retry_after,
            } => return with_retry_after(status, ErrorCode::NotReady, message, Some(retry_after)),
            ApiError::Conflict {
                code,
                message,
                retry_after,
            } => return with_retry_after(status, code, message, retry_after),
            ApiError::Storage(e) if e.unavailable => {
                tracing::warn!(error = %e.message, "storage unavailable; the write was not acknowledged");
                (
                    ErrorCode::StoreUnavailable,
                    "the registry's etcd cannot be reached (no quorum, or no endpoint answers): the write was not acknowledged; retry".into(),
                )
            }
            ApiError::Storage(e) => {
                tracing::error!(error = %e.message, disk_full = e.disk_full, "storage failure; the write was not acknowledged");
                let message = if e.disk_full {
                    "the registry's disk is full; the write was not stored (reads still work)"
                } else {
                    "the registry could not store the write; it was not acknowledged"
                };
                (ErrorCode::StorageError, message.into())
            }
            ApiError::Timeout => (
                ErrorCode::Timeout,
                "the request took longer than the registry allows".into(),
            ),
        };
        (status, Json(ErrorBody { code, message })).into_response()
    }
}

/// An error answer with `Retry-After` in whole seconds (at least 1), when there is one.
fn with_retry_after(
    status: StatusCode,
    code: ErrorCode,
    message: String,
    retry_after: Option<Duration>,
) -> Response {
    let body = Json(ErrorBody { code, message });
    match retry_after {
        Some(after) => {
            let secs = after.as_secs() + u64::from(after.subsec_nanos() > 0);
            (
                status,
                [(header::RETRY_AFTER, HeaderValue::from(secs.max(1)))],
                body,
            )
                .into_response()
        }
        None => (status, body).into_response(),
    }
}

/// One documented error status.
#[derive(Debug, Clone, Copy)]
pub struct Documented {
    pub status: u16,
    pub description: &'static str,
    /// The answer carries `Retry-After` (seconds).
    pub retry_after: bool,
}

const fn doc(status: u16, description: &'static str) -> Documented {
    Documented {
        status,
        description,
        retry_after: false,
    }
}

const INVALID: Documented = doc(400, "invalid input");
const UNAUTHORIZED: Documented = doc(401, "a token is needed");
const FORBIDDEN: Documented = doc(403, "the token is for another cluster");
const TIMEOUT: Documented = doc(408, "the request took too long");
const TOO_LARGE: Documented = doc(413, "the body is too large");
const NOT_JSON: Documented = doc(415, "the body is not JSON");
const LIMIT: Documented = doc(429, "a limit was reached (members per cluster, clusters)");
const STORAGE: Documented = doc(500, "storage failure; nothing acknowledged");
const BUSY: Documented = Documented {
    status: 503,
    description: "too many connections; retry after Retry-After seconds",
    retry_after: true,
};
const DISK_FULL: Documented = doc(507, "the disk is full; nothing acknowledged");

/// The error statuses one kind of route can answer: what it refuses itself, plus what the
/// server answers for any route (`503` past the connection limit, `408` past the request
/// timeout on routes that have one).
pub trait StatusSet: Send + Sync + 'static {
    const STATUSES: &'static [Documented];
}

macro_rules! status_set {
    ($(#[$doc:meta])* $name:ident = [$($status:expr),* $(,)?]) => {
        $(#[$doc])*
        #[derive(Debug)]
        pub struct $name;
        impl StatusSet for $name {
            const STATUSES: &'static [Documented] = &[$($status),*];
        }
    };
}

status_set!(
    /// A read of one named thing (a member, a cluster).
    ReadOne = [INVALID, doc(404, "no such member or cluster"), TIMEOUT, BUSY]
);
status_set!(
    /// A read that takes no input.
    ReadAll = [TIMEOUT, BUSY]
);
status_set!(
    /// A list that takes a query, under the request timeout (`/members`).
    ListQuery = [INVALID, TIMEOUT, BUSY]
);
status_set!(
    /// A blocking read: no request timeout (it is bounded by its own `wait`), and a slot among
    /// `--max-watchers` while it waits.
    ListStreaming = [
        INVALID,
        Documented {
            status: 429,
            description: "limit_exceeded: --max-watchers blocking reads and event streams are open; retry after Retry-After seconds, or read without index",
            retry_after: true,
        },
        BUSY,
    ]
);
status_set!(
    /// A heartbeat: a body, a token, a limit, storage.
    Heartbeat = [
        INVALID, UNAUTHORIZED, FORBIDDEN, TIMEOUT, TOO_LARGE, NOT_JSON,
        doc(409, "wrong_raft: the member reports another raft than the cluster's; it is not listed"),
        LIMIT, STORAGE, BUSY, DISK_FULL,
    ]
);
status_set!(
    /// A claim: a heartbeat's statuses, and `503 not_ready` when it is not safe to answer yet.
    Claim = [
        INVALID, UNAUTHORIZED, FORBIDDEN, TIMEOUT, TOO_LARGE, NOT_JSON, LIMIT, STORAGE,
        Documented {
            status: 409,
            description: "the claim conflicts with what the registry knows (address_conflict, expect_conflict, reset_required: the message names the reset command; raft_lost: no server of the known raft was live for --raft-lost-after, the message names the recovery and the reset); nothing changed, retry after Retry-After seconds",
            retry_after: true,
        },
        Documented {
            status: 503,
            description: "not safe to answer yet (startup grace, quiet period, a possibly running raft), or too many connections; retry after Retry-After seconds",
            retry_after: true,
        },
        DISK_FULL,
    ]
);
status_set!(
    /// An operator's reset: the registry-wide token, a compare-and-set on the generation.
    Reset = [
        INVALID, UNAUTHORIZED, FORBIDDEN, doc(404, "the registry knows no such cluster"), TIMEOUT,
        doc(409, "generation_mismatch (another generation is current) or members_live (live members not named in force); nothing changed"),
        TOO_LARGE, NOT_JSON, STORAGE, BUSY, DISK_FULL,
    ]
);
status_set!(
    /// An operator's resize: the registry-wide token, a compare-and-set on the raft's generation.
    Resize = [
        INVALID, UNAUTHORIZED, FORBIDDEN, doc(404, "the cluster has no known raft"), TIMEOUT,
        doc(409, "generation_mismatch: another generation is current; nothing changed"),
        TOO_LARGE, NOT_JSON, STORAGE, BUSY, DISK_FULL,
    ]
);
status_set!(
    /// A leave: no body, no new entry, so no 413, 415 or 429.
    Leave = [INVALID, UNAUTHORIZED, FORBIDDEN, doc(404, "no such member or claimant"), TIMEOUT, STORAGE, BUSY, DISK_FULL]
);
status_set!(
    /// `/metrics`.
    Metrics = [doc(404, "no recorder in this process"), TIMEOUT, BUSY]
);

/// The error of a handler whose route can answer the statuses of `S`.
pub struct RouteError<S: StatusSet>(ApiError, PhantomData<S>);

impl<S: StatusSet> std::fmt::Debug for RouteError<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl<S: StatusSet, E: Into<ApiError>> From<E> for RouteError<S> {
    fn from(e: E) -> Self {
        RouteError(e.into(), PhantomData)
    }
}

impl<S: StatusSet> IntoResponse for RouteError<S> {
    fn into_response(self) -> Response {
        let status = self.0.status().as_u16();
        if !S::STATUSES.iter().any(|d| d.status == status) {
            // The OpenAPI document would be lying about this route: a bug, never the client's.
            tracing::error!(
                status,
                set = std::any::type_name::<S>(),
                "a handler answered a status its route does not document"
            );
        }
        self.0.into_response()
    }
}

impl<S: StatusSet> utoipa::IntoResponses for RouteError<S> {
    fn responses() -> BTreeMap<String, RefOr<utoipa::openapi::response::Response>> {
        S::STATUSES
            .iter()
            .map(|d| {
                let content = ContentBuilder::new()
                    .schema(Some(Ref::from_schema_name("ErrorBody")))
                    .build();
                let mut response = ResponseBuilder::new()
                    .description(d.description)
                    .content("application/json", content);
                if d.retry_after {
                    let seconds = utoipa::openapi::schema::ObjectBuilder::new()
                        .schema_type(utoipa::openapi::schema::Type::Integer)
                        .minimum(Some(1));
                    response = response.header(
                        "retry-after",
                        HeaderBuilder::new()
                            .schema(seconds)
                            .description(Some("seconds to wait"))
                            .build(),
                    );
                }
                (d.status.to_string(), RefOr::T(response.build()))
            })
            .collect()
    }
}

/// The error types of the routes, by name.
pub type ReadOneError = RouteError<ReadOne>;
pub type ReadAllError = RouteError<ReadAll>;
pub type ListQueryError = RouteError<ListQuery>;
pub type ListStreamingError = RouteError<ListStreaming>;
pub type HeartbeatError = RouteError<Heartbeat>;
pub type ClaimError = RouteError<Claim>;
pub type LeaveError = RouteError<Leave>;
pub type MetricsError = RouteError<Metrics>;
pub type ResetError = RouteError<Reset>;
pub type ResizeError = RouteError<Resize>;
