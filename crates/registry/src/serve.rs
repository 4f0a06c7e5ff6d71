//! The accept loop: plain TCP or TLS (rustls), a bound on open connections, a deadline for
//! request headers, and a graceful drain.
//!
//! `axum::serve` has none of these knobs, so the registry drives hyper-util itself (as axum's
//! `low-level-rustls` example does). A connection over the limit is answered with a short
//! `503` and closed at once, never left waiting in the backlog; a client that sends its headers
//! too slowly is cut off by hyper's `header_read_timeout`, so slow clients cannot hold the
//! server.

use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

/// What the accept loop enforces.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub max_connections: usize,
    pub header_read_timeout: Duration,
    pub drain_timeout: Duration,
    pub tls: Option<Arc<rustls::ServerConfig>>,
}

/// The answer to a connection over the limit. Plain HTTP only: a TLS client is just closed.
fn over_limit_response() -> Vec<u8> {
    let body = r#"{"code":"limit_exceeded","message":"the registry has reached its limit of open connections; retry later"}"#;
    format!(
        "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nRetry-After: 1\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
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
    let graceful = GracefulShutdown::new();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(options.header_read_timeout);
    builder.http2().timer(TokioTimer::new());
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
        let Ok(permit) = connections.clone().try_acquire_owned() else {
            metrics::counter!("rollcall_connections_refused_total").increment(1);
            tracing::warn!(%peer, limit = options.max_connections, "connection refused: the registry holds its limit of open connections");
            if tls.is_none() {
                tokio::spawn(async move {
                    let mut stream = stream;
                    let _ = tokio::time::timeout(
                        Duration::from_secs(1),
                        stream.write_all(&over_limit_response()),
                    )
                    .await;
                    let _ = stream.shutdown().await;
                });
            }
            continue;
        };
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(app.clone());
        let builder = builder.clone();
        let watcher = graceful.watcher();
        let tls = tls.clone();
        let handshake_timeout = options.header_read_timeout;
        tokio::spawn(async move {
            let _permit = permit;
            let result =
                match tls {
                    None => {
                        watcher
                            .watch(
                                builder
                                    .serve_connection_with_upgrades(TokioIo::new(stream), service)
                                    .into_owned(),
                            )
                            .await
                    }
                    Some(acceptor) => {
                        let stream =
                            match tokio::time::timeout(handshake_timeout, acceptor.accept(stream))
                                .await
                            {
                                Ok(Ok(s)) => s,
                                Ok(Err(e)) => {
                                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                                    return;
                                }
                                Err(_) => {
                                    tracing::debug!(%peer, "TLS handshake timed out");
                                    return;
                                }
                            };
                        watcher
                            .watch(
                                builder
                                    .serve_connection_with_upgrades(TokioIo::new(stream), service)
                                    .into_owned(),
                            )
                            .await
                    }
                };
            if let Err(e) = result {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    tracing::info!(timeout = %humantime::format_duration(options.drain_timeout), "shutting down: no new connections; draining in-flight requests");
    tokio::select! {
        _ = graceful.shutdown() => tracing::info!("all connections drained"),
        _ = tokio::time::sleep(options.drain_timeout) => {
            tracing::warn!("connections still open after the shutdown timeout; closing them");
        }
    }
}
