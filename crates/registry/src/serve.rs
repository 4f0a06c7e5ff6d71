//! The accept loop: plain TCP or TLS (rustls), a bound on open connections with a small
//! reserve for health checks, and a graceful drain.
//!
//! `axum::serve` has none of these knobs, so the registry drives hyper-util itself (as axum's
//! `low-level-rustls` example does). Each connection is served by `serve/connection.rs` and
//! closed at its deadlines (`serve/deadline.rs`): no complete request head within
//! `--header-read-timeout` of the accept (whatever it speaks: nothing, part of an HTTP/2
//! preface, a TLS handshake and then nothing), or no request in flight for `--idle-timeout`, so
//! idle clients cannot hold the server. HTTP/2 connections are pinged so that dead peers are
//! noticed, and carry at most `--max-streams-per-connection` requests at once. A connection
//! over the limit goes to the health reserve (`serve/reserve.rs`: only `/health` answered), or
//! beyond it is answered with a short `503` and closed at once, never left waiting in the
//! backlog.

mod connection;
mod deadline;
mod reserve;

use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use hyper_util::server::conn::auto;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};

use self::connection::Accepted;
use self::deadline::{AfterResponse, Deadlines};

/// An HTTP/2 connection whose peer has sent nothing for this long is sent a PING: a peer that died
/// without a FIN (a host gone, a dropped NAT entry) is noticed even while it holds an event
/// stream or a blocking read, which the idle timeout leaves alone.
const HTTP2_KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(30);
/// A PING unanswered for this long closes the connection (hyper's default).
const HTTP2_KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(20);

/// What the accept loop enforces.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub max_connections: usize,
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_streams_per_connection: u32,
    pub drain_timeout: Duration,
    pub tls: Option<Arc<rustls::ServerConfig>>,
}

/// Loads a PEM certificate chain and private key into a rustls server config.
pub fn load_tls(cert_path: &Path, key_path: &Path) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert_path)
        .with_context(|| format!("cannot read the certificate {}", cert_path.display()))?
        .collect::<Result<_, _>>()
        .with_context(|| format!("cannot parse the certificate {}", cert_path.display()))?;
    anyhow::ensure!(
        !certs.is_empty(),
        "{} holds no certificate",
        cert_path.display()
    );
    let key = PrivateKeyDer::from_pem_file(key_path)
        .with_context(|| format!("cannot read a private key from {}", key_path.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .context("the certificate and the key do not fit together")?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Serves `app` on `listener` until `shutdown` resolves, then stops accepting and waits up to
/// `drain_timeout` for open connections to finish their requests.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    options: ServeOptions,
    shutdown: impl Future<Output = ()>,
) {
    let connections = Arc::new(Semaphore::new(options.max_connections));
    let reserve = Arc::new(Semaphore::new(reserve::HEALTH_RESERVE_CONNECTIONS));
    // Every connection holds a receiver: `true` asks it to close once its requests are done,
    // and the drain is over when the last receiver is gone.
    let (stop_connections, stopping) = watch::channel(false);
    let builder = connection_builder(&options);
    let reserve_builder = reserve::builder(builder.clone());
    let health_only = reserve::health_only(app.clone());
    let deadlines = Deadlines {
        header_read_timeout: options.header_read_timeout,
        after_response: AfterResponse::StayOpen {
            idle_timeout: options.idle_timeout,
        },
    };
    let tls = options.tls.clone().map(tokio_rustls::TlsAcceptor::from);
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let accepted = Accepted {
            stream,
            peer,
            at: tokio::time::Instant::now(),
        };
        let tls = tls.clone();
        let stopping = stopping.clone();
        if let Ok(permit) = connections.clone().try_acquire_owned() {
            let (builder, app) = (builder.clone(), app.clone());
            tokio::spawn(async move {
                let _permit = permit;
                connection::serve(accepted, tls, &builder, app, deadlines, stopping).await;
            });
        } else if let Ok(permit) = reserve.clone().try_acquire_owned() {
            let (builder, health_only) = (reserve_builder.clone(), health_only.clone());
            let header_read_timeout = options.header_read_timeout;
            tokio::spawn(async move {
                let _permit = permit;
                reserve::serve(
                    accepted,
                    tls,
                    &builder,
                    health_only,
                    header_read_timeout,
                    stopping,
                )
                .await;
            });
        } else {
            reserve::refuse(accepted, tls.is_some());
        }
    }
    drop(listener);
    tracing::info!(timeout = %humantime::format_duration(options.drain_timeout), "shutting down: no new connections; draining in-flight requests");
    // Fails only when no connection is open, which is what the drain waits for anyway.
    let _ = stop_connections.send(true);
    drop(stopping);
    tokio::select! {
        _ = stop_connections.closed() => tracing::info!("all connections drained"),
        _ = tokio::time::sleep(options.drain_timeout) => {
            tracing::warn!("connections still open after the shutdown timeout; closing them");
        }
    }
}

/// The HTTP/1-or-HTTP/2 builder every connection is served by.
fn connection_builder(options: &ServeOptions) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // hyper's own HTTP/1 header timeout still cuts a partial head of a later request on a
    // kept-alive connection; the first head's deadline is the connection's own (deadline.rs).
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(options.header_read_timeout);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(HTTP2_KEEP_ALIVE_INTERVAL)
        .keep_alive_timeout(HTTP2_KEEP_ALIVE_TIMEOUT)
        .max_concurrent_streams(options.max_streams_per_connection);
    builder
}
