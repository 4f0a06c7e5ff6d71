//! A typed async client for the registry's HTTP API, used by the sidecar and the tests.
//!
//! The client makes one request per call and never retries: retry policy belongs to the
//! caller, which knows whether it is starting up (retry with backoff) or heartbeating
//! (skip this round, the next one comes soon).

use std::time::Duration;

use reqwest::{header, Method, StatusCode};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::{ErrorBody, ErrorCode};
use crate::types::*;

/// What went wrong with a call.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The registry could not be reached, or did not answer in time.
    #[error("registry unreachable at {url}: {source}")]
    Unreachable {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    /// The registry answered with an error.
    #[error("registry answered {status}: {code}: {message}")]
    Api {
        status: u16,
        code: ErrorCode,
        message: String,
        /// From `Retry-After`, for `503 not_ready`.
        retry_after: Option<Duration>,
    },
    /// The registry answered something this client does not understand.
    #[error("unexpected answer from the registry ({status}): {detail}")]
    Unexpected { status: u16, detail: String },
}

impl ClientError {
    /// True when the registry asked the caller to come back later.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            ClientError::Api { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// True for errors that a later retry may fix (unreachable, 5xx, not ready).
    pub fn is_transient(&self) -> bool {
        match self {
            ClientError::Unreachable { .. } => true,
            ClientError::Api { status, .. } => *status >= 500 || *status == 408 || *status == 429,
            ClientError::Unexpected { status, .. } => *status >= 500,
        }
    }
}

/// The registry's address plus an optional bearer token.
#[derive(Clone)]
pub struct RegistryClient {
    base: String,
    token: Option<String>,
    http: reqwest::Client,
}

impl std::fmt::Debug for RegistryClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The token stays out of debug output, so it never reaches a log by accident.
        f.debug_struct("RegistryClient")
            .field("base", &self.base)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// How much longer than its `wait` a blocking read may take before the client gives up.
pub const WATCH_MARGIN: Duration = Duration::from_secs(5);

/// Reads a PEM bundle of CA certificates for verifying an `https://` registry.
pub fn load_ca_bundle(pem: &[u8]) -> Result<Vec<reqwest::Certificate>, String> {
    let certs = reqwest::Certificate::from_pem_bundle(pem).map_err(|e| e.to_string())?;
    if certs.is_empty() {
        return Err("the file holds no PEM certificate".into());
    }
    Ok(certs)
}

/// Per-request timeout unless the caller builds its own `reqwest::Client`.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

impl RegistryClient {
    /// A client for the registry at `base` (for example `http://bootstrap:7400`).
    pub fn new(base: impl Into<String>, token: Option<String>) -> Result<Self, ClientError> {
        let http = reqwest::Client::builder()
            .timeout(DEFAULT_REQUEST_TIMEOUT)
            .connect_timeout(Duration::from_secs(2))
            .build()
            .map_err(|source| ClientError::Unreachable {
                url: String::new(),
                source,
            })?;
        Ok(Self::with_http_client(base, token, http))
    }

    /// A client that uses a caller-built `reqwest::Client` (for TLS roots, timeouts).
    pub fn with_http_client(
        base: impl Into<String>,
        token: Option<String>,
        http: reqwest::Client,
    ) -> Self {
        let base = base.into().trim_end_matches('/').to_string();
        RegistryClient { base, token, http }
    }

    pub fn base_url(&self) -> &str {
        &self.base
    }

    /// Registers or renews `node` in `cluster`.
    pub async fn heartbeat(
        &self,
        cluster: &str,
        node: &str,
        request: &HeartbeatRequest,
    ) -> Result<HeartbeatResponse, ClientError> {
        let path = format!("/v1/clusters/{}/members/{}", seg(cluster), seg(node));
        self.send(Method::PUT, &path, Some(request)).await
    }

    /// Removes `node` from `cluster` (a graceful leave). Leaving twice is not an error.
    pub async fn leave(&self, cluster: &str, node: &str) -> Result<(), ClientError> {
        let path = format!("/v1/clusters/{}/members/{}", seg(cluster), seg(node));
        match self
            .send::<serde_json::Value, ()>(Method::DELETE, &path, None)
            .await
        {
            Ok(_) => Ok(()),
            Err(ClientError::Api { status: 404, .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// The live members of `cluster`, optionally of one role.
    pub async fn members(
        &self,
        cluster: &str,
        role: Option<MemberRole>,
    ) -> Result<MembersResponse, ClientError> {
        let mut path = format!("/v1/clusters/{}/members", seg(cluster));
        if let Some(role) = role {
            path.push_str("?role=");
            path.push_str(role.as_str());
        }
        self.send::<MembersResponse, ()>(Method::GET, &path, None)
            .await
    }

    /// A blocking read: returns when `cluster`'s index differs from `index`, or after `wait`.
    /// The request's own timeout is `wait` plus a margin, whatever the client's default.
    pub async fn watch_members(
        &self,
        cluster: &str,
        role: Option<MemberRole>,
        index: u64,
        wait: Duration,
    ) -> Result<MembersResponse, ClientError> {
        let mut path = format!(
            "/v1/clusters/{}/members?index={index}&wait={}ms",
            seg(cluster),
            wait.as_millis()
        );
        if let Some(role) = role {
            path.push_str("&role=");
            path.push_str(role.as_str());
        }
        self.send_with_timeout::<MembersResponse, ()>(
            Method::GET,
            &path,
            None,
            Some(wait + WATCH_MARGIN),
        )
        .await
    }

    /// Asks which role `request.node` must start as.
    pub async fn claim(
        &self,
        cluster: &str,
        request: &ClaimRequest,
    ) -> Result<ClaimResponse, ClientError> {
        let path = format!("/v1/clusters/{}/claims", seg(cluster));
        self.send(Method::POST, &path, Some(request)).await
    }

    /// An operator's reset of `cluster`: forgets its raft so that the next claim may bootstrap.
    pub async fn reset(
        &self,
        cluster: &str,
        request: &ResetRequest,
    ) -> Result<ResetResponse, ClientError> {
        let path = format!("/v1/clusters/{}/reset", seg(cluster));
        self.send(Method::POST, &path, Some(request)).await
    }

    /// One cluster in detail.
    pub async fn cluster(&self, cluster: &str) -> Result<ClusterDetail, ClientError> {
        let path = format!("/v1/clusters/{}", seg(cluster));
        self.send::<ClusterDetail, ()>(Method::GET, &path, None)
            .await
    }

    /// Every cluster the registry knows.
    pub async fn clusters(&self) -> Result<ClustersResponse, ClientError> {
        self.send::<ClustersResponse, ()>(Method::GET, "/v1/clusters", None)
            .await
    }

    /// `GET /members`: the join addresses of `cluster`.
    pub async fn join_targets(
        &self,
        cluster: &str,
        role: Option<MemberRole>,
    ) -> Result<JoinTargetsResponse, ClientError> {
        let mut path = format!("/members?cluster={}", seg(cluster));
        if let Some(role) = role {
            path.push_str("&role=");
            path.push_str(role.as_str());
        }
        self.send::<JoinTargetsResponse, ()>(Method::GET, &path, None)
            .await
    }

    /// `GET /health`.
    pub async fn health(&self) -> Result<HealthResponse, ClientError> {
        self.send::<HealthResponse, ()>(Method::GET, "/health", None)
            .await
    }

    async fn send<T: DeserializeOwned, B: Serialize>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
    ) -> Result<T, ClientError> {
        self.send_with_timeout(method, path, body, None).await
    }

    async fn send_with_timeout<T: DeserializeOwned, B: Serialize>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
        timeout: Option<Duration>,
    ) -> Result<T, ClientError> {
        let url = format!("{}{}", self.base, path);
        let mut request = self.http.request(method, &url);
        if let Some(timeout) = timeout {
            request = request.timeout(timeout);
        }
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request
            .send()
            .await
            .map_err(|source| ClientError::Unreachable {
                url: url.clone(),
                source,
            })?;
        let status = response.status();
        let retry_after = response
            .headers()
            .get(header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let bytes = response
            .bytes()
            .await
            .map_err(|source| ClientError::Unreachable {
                url: url.clone(),
                source,
            })?;
        if status.is_success() {
            if status == StatusCode::NO_CONTENT || bytes.is_empty() {
                return serde_json::from_slice(b"null").map_err(|e| ClientError::Unexpected {
                    status: status.as_u16(),
                    detail: e.to_string(),
                });
            }
            return serde_json::from_slice(&bytes).map_err(|e| ClientError::Unexpected {
                status: status.as_u16(),
                detail: format!(
                    "{e}: {}",
                    String::from_utf8_lossy(&bytes[..bytes.len().min(200)])
                ),
            });
        }
        match serde_json::from_slice::<ErrorBody>(&bytes) {
            Ok(body) => Err(ClientError::Api {
                status: status.as_u16(),
                code: body.code,
                message: body.message,
                retry_after,
            }),
            Err(_) => Err(ClientError::Unexpected {
                status: status.as_u16(),
                detail: String::from_utf8_lossy(&bytes[..bytes.len().min(200)]).into_owned(),
            }),
        }
    }
}

/// Names are validated to URL-safe characters before they reach the registry, but the client
/// may be handed anything: percent-encode whatever is not a name character so that a bad name
/// arrives as a bad name (and gets its 400) instead of as another path.
fn seg(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
