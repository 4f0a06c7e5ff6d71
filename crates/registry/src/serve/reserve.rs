//! The health reserve: a few connections beyond `--max-connections`, served by a service that
//! answers only `GET /health` (the registry's real answer) and refuses everything else with
//! the connection limit's `503 limit_exceeded`, one request per connection.
//!
//! So an orchestrator's health check is answered when every connection slot is taken, and a
//! busy registry is not killed for being busy. A reserve rather than a second (loopback)
//! listener: no new flag or port, and it works for health checks that come over the network
//! as well as Docker's, which runs inside the container. An idle socket can take a reserve
//! slot only for [`RESERVE_HEADER_READ_TIMEOUT`]; beyond the reserve, a connection is
//! answered 503 at once, as before.

use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode, Version};
use axum::response::{IntoResponse, Response};
use axum::Router;
use hyper_util::rt::TokioExecutor;
use hyper_util::server::conn::auto;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;

use super::connection::{self, Accepted};
use super::deadline::{AfterResponse, Deadlines};
use crate::telemetry::{limit_refused, Limit};

/// Connections served beyond `--max-connections` for health checks: a few orchestrator probes
/// at once (Docker, a load balancer, a monitor), not a second pool for clients.
pub const HEALTH_RESERVE_CONNECTIONS: usize = 8;

/// The header deadline of a reserve connection, when `--header-read-timeout` is longer: a
/// health check sends its request as soon as it is connected, and a reserve slot must not be
/// held for long by a socket that sends nothing.
pub const RESERVE_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(2);

const OVER_LIMIT_BODY: &str = r#"{"code":"limit_exceeded","message":"the registry has reached its limit of open connections; retry later"}"#;

/// The answer to a connection over the limit that is not served at all. Plain HTTP only: a
/// TLS client is just closed.
fn over_limit_response() -> Vec<u8> {
    format!(
        "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nRetry-After: 1\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{OVER_LIMIT_BODY}",
        OVER_LIMIT_BODY.len()
    )
    .into_bytes()
}

/// Counts and logs one connection refused by `--max-connections`.
fn count_refusal(accepted: &Accepted, why: &str) {
    metrics::counter!("rollcall_connections_refused_total").increment(1);
    limit_refused(Limit::MaxConnections);
    tracing::warn!(peer = %accepted.peer, "connection refused: the registry holds its limit of open connections; {why}");
}

/// Answers a connection over the limit with a 503 (plain HTTP) or closes it (TLS), without
/// reading anything from it.
pub fn refuse(accepted: Accepted, tls: bool) {
    count_refusal(&accepted, "the health reserve is full too");
    if !tls {
        tokio::spawn(write_refusal(accepted.stream));
    }
}

async fn write_refusal(mut stream: TcpStream) {
    let _ = tokio::time::timeout(
        Duration::from_secs(1),
        stream.write_all(&over_limit_response()),
    )
    .await;
    let _ = stream.shutdown().await;
}

/// The reserve's service: `GET /health` (and its `HEAD`) by `app`, anything else refused.
pub fn health_only(app: Router) -> Router {
    Router::new().fallback(health_or_refuse).with_state(app)
}

async fn health_or_refuse(State(app): State<Router>, request: Request) -> Response {
    let http1 = request.version() < Version::HTTP_2;
    let health = matches!(*request.method(), Method::GET | Method::HEAD)
        && request.uri().path() == "/health";
    let mut response = if health {
        match app.oneshot(request).await {
            Ok(response) => response,
            Err(never) => match never {},
        }
    } else {
        metrics::counter!("rollcall_connections_refused_total").increment(1);
        limit_refused(Limit::MaxConnections);
        (
            StatusCode::SERVICE_UNAVAILABLE,
            [
                (header::CONTENT_TYPE, "application/json"),
                (header::RETRY_AFTER, "1"),
            ],
            OVER_LIMIT_BODY,
        )
            .into_response()
    };
    if http1 {
        // HTTP/2 has no Connection header; the reserve closes it after this answer anyway.
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

/// The reserve's builder: the registry's, one request per connection.
pub fn builder(mut builder: auto::Builder<TokioExecutor>) -> auto::Builder<TokioExecutor> {
    builder.http1().keep_alive(false);
    builder.http2().max_concurrent_streams(1);
    builder
}

/// Serves one reserve connection: a request within the (shorter) header deadline, answered
/// once; a plain-HTTP client that sends nothing in that time gets the connection limit's 503.
pub async fn serve(
    accepted: Accepted,
    tls: Option<TlsAcceptor>,
    builder: &auto::Builder<TokioExecutor>,
    health_only: Router,
    header_read_timeout: Duration,
    stopping: watch::Receiver<bool>,
) {
    let header_read_timeout = header_read_timeout.min(RESERVE_HEADER_READ_TIMEOUT);
    // `peek`, not `readable`: readiness may be reported before a byte has arrived.
    let mut first = [0u8; 1];
    let spoke = tokio::time::timeout_at(
        accepted.at + header_read_timeout,
        accepted.stream.peek(&mut first),
    )
    .await;
    if !matches!(spoke, Ok(Ok(1))) {
        count_refusal(&accepted, "nothing was asked of the health reserve");
        if tls.is_none() {
            write_refusal(accepted.stream).await;
        }
        return;
    }
    let deadlines = Deadlines {
        header_read_timeout,
        after_response: AfterResponse::Close,
    };
    connection::serve(accepted, tls, builder, health_only, deadlines, stopping).await;
}
