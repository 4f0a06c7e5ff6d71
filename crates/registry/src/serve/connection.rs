//! One accepted connection, from its TLS handshake to its close: served by hyper-util's
//! HTTP/1-or-HTTP/2 `auto` builder, watched by its [`deadline`](super::deadline)s, asked to
//! close gracefully when one passes or the registry shuts down, and dropped if it does not.

use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;

use super::deadline::{expiry, Deadlines, Expiry, Tracked};
use crate::telemetry::{limit_refused, Limit};

/// How long a connection asked to close at a deadline may take to do it before it is dropped.
/// HTTP/2 closes with a GOAWAY and waits for the peer to answer a PING, which a peer that
/// reads nothing never does; an idle HTTP/1 connection closes at once.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// A connection just accepted, with the instant its deadlines count from.
#[derive(Debug)]
pub struct Accepted {
    pub stream: TcpStream,
    pub peer: SocketAddr,
    pub at: Instant,
}

/// Serves `accepted` with `app` until the client closes it, a deadline passes (counted by
/// its limit) or `stopping` turns true (then in-flight requests finish; the registry's drain
/// timeout bounds the wait).
pub async fn serve(
    accepted: Accepted,
    tls: Option<TlsAcceptor>,
    builder: &auto::Builder<TokioExecutor>,
    app: Router,
    deadlines: Deadlines,
    stopping: watch::Receiver<bool>,
) {
    let Accepted { stream, peer, at } = accepted;
    let closed_by = match tls {
        None => drive(stream, peer, at, builder, app, deadlines, stopping).await,
        Some(acceptor) => {
            // The handshake is part of the header deadline: it counts from the accept.
            let handshake = tokio::time::timeout_at(
                at + deadlines.header_read_timeout,
                acceptor.accept(stream),
            );
            match handshake.await {
                Ok(Ok(stream)) => drive(stream, peer, at, builder, app, deadlines, stopping).await,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                    None
                }
                Err(_) => Some(Expiry::HeaderRead),
            }
        }
    };
    match closed_by {
        Some(Expiry::HeaderRead) => {
            limit_refused(Limit::HeaderReadTimeout);
            tracing::debug!(%peer, "connection closed: no complete request head within the header deadline");
        }
        Some(Expiry::Idle) => {
            limit_refused(Limit::IdleTimeout);
            tracing::debug!(%peer, "connection closed: idle");
        }
        Some(Expiry::Answered) | None => {}
    }
}

/// Runs the HTTP connection over `io`; returns the deadline that closed it, if one did.
async fn drive<I>(
    io: I,
    peer: SocketAddr,
    accepted: Instant,
    builder: &auto::Builder<TokioExecutor>,
    app: Router,
    deadlines: Deadlines,
    mut stopping: watch::Receiver<bool>,
) -> Option<Expiry>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (service, activity) = Tracked::new(TowerToHyperService::new(app), accepted);
    let connection = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
    tokio::pin!(connection);
    let closed_by = tokio::select! {
        result = connection.as_mut() => {
            let Err(e) = result else { return None };
            tracing::debug!(%peer, error = %e, "connection ended with an error");
            // hyper's own HTTP/1 header timeout may cut a first head a moment before the
            // connection's deadline does: the same refusal. Its cut of a kept-alive connection
            // waiting for a next request is the end of an idle connection, not counted.
            let timed_out = e
                .downcast_ref::<hyper::Error>()
                .is_some_and(hyper::Error::is_timeout);
            let first_head = activity.borrow().awaiting_first_head();
            return (timed_out && first_head).then_some(Expiry::HeaderRead);
        }
        why = expiry(activity.clone(), accepted, deadlines) => Some(why),
        // An error means the accept loop is gone: stop as well.
        _ = stopping.wait_for(|stop| *stop) => None,
    };
    connection.as_mut().graceful_shutdown();
    match closed_by {
        Some(_) => {
            let _ = tokio::time::timeout(CLOSE_GRACE, connection).await;
        }
        None => {
            let _ = connection.await;
        }
    }
    closed_by
}
