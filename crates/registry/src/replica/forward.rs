//! A standby's forwarding: the request as it came (method, path and query, headers, body) to
//! the active replica, and its answer back as it comes (streamed, so that blocking reads and
//! event streams work through a standby).
//!
//! Forward, not redirect: a client that follows a redirect to another host drops its
//! `Authorization` header, and the active replica's address may not be reachable from the
//! client at all. A forwarded request carries [`FORWARDED_BY`]; a replica that receives one
//! and is not active answers 503 rather than forwarding it again (two standbys that each
//! believe the other active would otherwise pass a request between them).

use axum::body::Body;
use axum::extract::Request;
use axum::http::{header, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use futures_util::TryStreamExt;
use rollcall_protocol::{ErrorBody, ErrorCode};

use super::unavailable;

/// The header a standby adds to what it forwards: its name.
pub const FORWARDED_BY: &str = "rollcall-forwarded-by";

/// Headers that belong to one connection, not to the request (RFC 9110, 7.6.1).
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "host",
];

/// Forwards `request` to the replica at `active_url`; `me` names this standby.
pub async fn forward(
    http: &reqwest::Client,
    active_url: &str,
    me: &str,
    max_body_bytes: usize,
    request: Request,
) -> Response {
    let (parts, body) = request.into_parts();
    let body = match axum::body::to_bytes(body, max_body_bytes).await {
        Ok(b) => b,
        Err(_) => {
            return rollcall_error(
                StatusCode::PAYLOAD_TOO_LARGE,
                ErrorCode::BodyTooLarge,
                "the body is larger than the registry accepts",
            )
        }
    };
    let path = parts
        .uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_string();
    let url = format!("{}{path}", active_url.trim_end_matches('/'));
    let Ok(method) = reqwest::Method::from_bytes(parts.method.as_str().as_bytes()) else {
        return rollcall_error(
            StatusCode::METHOD_NOT_ALLOWED,
            ErrorCode::MethodNotAllowed,
            "method not allowed",
        );
    };
    let mut outgoing = http.request(method, &url).body(body);
    for (name, value) in &parts.headers {
        if !HOP_BY_HOP.contains(&name.as_str()) && name != header::CONTENT_LENGTH {
            outgoing = outgoing.header(name.as_str(), value.as_bytes());
        }
    }
    outgoing = outgoing.header(FORWARDED_BY, me);
    let answer = match outgoing.send().await {
        Ok(a) => a,
        Err(e) => {
            tracing::warn!(active = %active_url, error = %e, "cannot forward a request to the active replica");
            return unavailable(
                ErrorCode::NoActiveReplica,
                &format!("this registry replica is a standby and cannot reach the active one at {active_url}: {e}; retry (a standby takes over within the lease TTL)"),
            );
        }
    };
    let mut response = Response::builder().status(answer.status().as_u16());
    if let Some(headers) = response.headers_mut() {
        for (name, value) in answer.headers() {
            if HOP_BY_HOP.contains(&name.as_str()) || name == reqwest::header::CONTENT_LENGTH {
                continue;
            }
            if let (Ok(n), Ok(v)) = (
                HeaderName::from_bytes(name.as_str().as_bytes()),
                HeaderValue::from_bytes(value.as_bytes()),
            ) {
                headers.append(n, v);
            }
        }
    }
    let stream = answer.bytes_stream().map_err(std::io::Error::other);
    response
        .body(Body::from_stream(stream))
        .unwrap_or_else(|_| StatusCode::BAD_GATEWAY.into_response())
}

fn rollcall_error(status: StatusCode, code: ErrorCode, message: &str) -> Response {
    (
        status,
        axum::Json(ErrorBody {
            code,
            message: message.into(),
        }),
    )
        .into_response()
}
