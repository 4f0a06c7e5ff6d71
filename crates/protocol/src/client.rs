//! A typed async client for the registry's HTTP API, used by the sidecar and the tests.
//!
//! The client never retries an answer: retry policy belongs to the caller, which knows
//! whether it is starting up (retry with backoff) or heartbeating (skip this round, the next
//! one comes soon). What it does do is fail over between the replicas of a registry.
//!
//! Over 700 lines because failover, its time budget and redirects are one mechanism that
//! every call goes through, read together with the calls; the tests of that mechanism with
//! real registries are in `crates/sidecar/tests/registry_failover.rs`.
//!
//! # Several registry URLs
//!
//! A client may be given several base URLs, the replicas of one registry (any replica answers
//! any request: a standby forwards it to the active one). It sends to the *current* URL,
//! shared by every clone of the client. When that URL does not answer, it tries the next one
//! at once, and so on, at most once round the list in one call; the URL that answered becomes
//! the current one, with one INFO line naming both URLs and why. "Does not answer" means no
//! connection, a broken connection, a timeout, or a 502, 503 or 504 without a rollcall error
//! body (a proxy in front of a dead replica). An answer with a rollcall error body (a 400, a
//! 409, a `503 not_ready`) is the registry's answer and is returned as it is: another replica
//! would give the same one, and failing over on it would only hide it.
//!
//! Sending a request again after a broken connection is safe because every write of the API
//! is idempotent (a heartbeat; a claim, which the registry answers alike while it holds; a
//! leave) or guarded by a generation (a reset, a resize): one sent again after its answer was
//! lost is refused `409 generation_mismatch` rather than applied twice.
//!
//! # Timeouts
//!
//! With several URLs one call keeps to one budget, the request timeout
//! ([`RegistryClient::with_request_timeout`], [`DEFAULT_REQUEST_TIMEOUT`] unless set), and
//! each try gets an equal share of what is left of it among the URLs not yet tried. A frozen
//! replica (its kernel accepts connections, nothing answers) costs at most its share; a dead
//! one (connection refused) costs nothing and leaves its share to the next. So a call that
//! must try every URL still ends within the request timeout, and with the sidecar's defaults
//! (a request timeout of 5 s, the registry's heartbeat interval) a heartbeat fails over and
//! is answered within one interval, whichever replica failed. The price: with n URLs, a
//! request slower than 1/n of the budget on a live replica is abandoned for the next one. The
//! registry answers in milliseconds, so a replica that slow is as good as frozen. With one URL
//! nothing changes: the reqwest client's own timeout applies.
//!
//! A blocking read ([`RegistryClient::watch_members`]) is the exception: a replica holding it
//! open and a frozen one look the same until `wait` has passed, so each try gets all of
//! `wait` plus [`WATCH_MARGIN`]. A dead replica, or one that dies during the read, is failed
//! over at once.
//!
//! # Redirects
//!
//! The clients built here follow no redirect by themselves (`redirect::Policy::none()`). A
//! `307` or `308` whose `Location` has the origin (scheme, host, port) of a configured URL is
//! followed by this client with the same method, body and token, and that URL becomes the
//! current one; any other redirect (another origin, or a 301/302/303, which would change the
//! method) is [`ClientError::RedirectRefused`], naming the `Location`. The token goes only to
//! configured origins. A caller-built reqwest client that follows redirects itself cannot be
//! stopped from following, but an answer from an origin that is not configured is refused
//! all the same (and reqwest drops the `Authorization` header on a cross-host redirect).
//!
//! # A name with several addresses
//!
//! One URL whose host resolves to several addresses is failed over by reqwest's connector
//! (hyper-util's `HttpConnector`), not by this client: on a connection error it tries the
//! next address in the order the resolver gave them, each with an equal share of the connect
//! timeout (IPv6 and IPv4 raced, Happy Eyeballs). That covers a dead replica behind one DNS
//! name; a frozen one accepts the connection, and only a list of URLs covers that.
//!
//! Long because it is the whole client: one method per route, and the one send path (fail
//! over, follow a redirect to a configured URL, decode errors) that every method shares.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::{header, Method, StatusCode, Url};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tracing::info;

use crate::base_urls::{check_base_urls, parse_base_urls, try_timeout, BaseUrl};
use crate::error::{ErrorBody, ErrorCode};
use crate::types::*;

/// What went wrong with a call.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The registry could not be reached, or did not answer in time (with several URLs:
    /// the last one tried).
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
    /// A redirect this client does not follow: to an origin that is not one of its
    /// registry URLs (where the token must not go), or one that would change the method.
    #[error("refused the redirect from {url} to {location}: {reason}")]
    RedirectRefused {
        url: String,
        location: String,
        reason: String,
    },
    /// The registry URLs given to the constructor are not a valid list.
    #[error("invalid registry URL: {0}")]
    InvalidBaseUrls(String),
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
            ClientError::RedirectRefused { .. } | ClientError::InvalidBaseUrls(_) => false,
        }
    }
}

/// The registry's addresses (one, or its replicas) plus an optional bearer token.
#[derive(Clone)]
pub struct RegistryClient {
    /// The registry's URLs in the order given; never empty.
    bases: Arc<[BaseUrl]>,
    /// Which of `bases` a call tries first: the last one that answered. Shared by every
    /// clone, so that once one call has failed over, the others skip the dead replica too.
    current: Arc<AtomicUsize>,
    token: Option<String>,
    http: reqwest::Client,
    /// With several URLs, the time one call may take across all its tries (see the module's
    /// header); with one, unused (the reqwest client's own timeout applies).
    request_timeout: Duration,
}

impl std::fmt::Debug for RegistryClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The token stays out of debug output, so it never reaches a log by accident.
        f.debug_struct("RegistryClient")
            .field("bases", &self.base_urls().collect::<Vec<_>>())
            .field("current", &self.base_url())
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// How much longer than its `wait` a blocking read may take before the client gives up.
pub const WATCH_MARGIN: Duration = Duration::from_secs(5);

/// The longest chain of redirects between configured URLs one try follows: more than any
/// set of replicas needs, so a longer one is a loop.
pub const MAX_REDIRECTS: usize = 5;

/// Reads a PEM bundle of CA certificates for verifying an `https://` registry.
pub fn load_ca_bundle(pem: &[u8]) -> Result<Vec<reqwest::Certificate>, String> {
    let certs = reqwest::Certificate::from_pem_bundle(pem).map_err(|e| e.to_string())?;
    if certs.is_empty() {
        return Err("the file holds no PEM certificate".into());
    }
    Ok(certs)
}

/// Per-request timeout unless the caller builds its own `reqwest::Client`; with several
/// URLs, one call's budget unless [`RegistryClient::with_request_timeout`] sets another.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

impl RegistryClient {
    /// A client for the registry at `base` (for example `http://bootstrap:7400`), or at
    /// several replicas separated by commas (`http://r1:7400,http://r2:7400`); the list is
    /// validated (see [`crate::base_urls::check_base_urls`]).
    pub fn new(base: impl Into<String>, token: Option<String>) -> Result<Self, ClientError> {
        let bases = parse_base_urls(&base.into()).map_err(ClientError::InvalidBaseUrls)?;
        let http = reqwest::Client::builder()
            .timeout(DEFAULT_REQUEST_TIMEOUT)
            .connect_timeout(Duration::from_secs(2))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|source| ClientError::Unreachable {
                url: String::new(),
                source,
            })?;
        Self::with_bases(bases, token, http)
    }

    /// A client that uses a caller-built `reqwest::Client` (for TLS roots, timeouts), which
    /// should not follow redirects (`redirect::Policy::none()`; see the module's header).
    /// `base` may be a comma-separated list; it is taken as it is, without validation (empty
    /// entries and repeats are dropped), as this constructor always did:
    /// [`RegistryClient::with_bases`] validates.
    pub fn with_http_client(
        base: impl Into<String>,
        token: Option<String>,
        http: reqwest::Client,
    ) -> Self {
        let base = base.into();
        let mut bases: Vec<BaseUrl> = Vec::new();
        for entry in base.split(',').map(BaseUrl::new) {
            if !entry.text.is_empty() && !bases.iter().any(|b| b.text == entry.text) {
                bases.push(entry);
            }
        }
        if bases.is_empty() {
            bases.push(BaseUrl::new(&base));
        }
        Self::from_bases(bases, token, http)
    }

    /// A client for the registry's replicas `bases`, tried in this order from the current
    /// one on (see the module's header). Refused when a URL is not `http://` or `https://`,
    /// or is given twice.
    pub fn with_bases(
        bases: Vec<String>,
        token: Option<String>,
        http: reqwest::Client,
    ) -> Result<Self, ClientError> {
        let bases = check_base_urls(bases).map_err(ClientError::InvalidBaseUrls)?;
        Ok(Self::from_bases(
            bases.iter().map(|b| BaseUrl::new(b)).collect(),
            token,
            http,
        ))
    }

    fn from_bases(bases: Vec<BaseUrl>, token: Option<String>, http: reqwest::Client) -> Self {
        RegistryClient {
            bases: bases.into(),
            current: Arc::new(AtomicUsize::new(0)),
            token,
            http,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
        }
    }

    /// Sets one call's budget across its tries when there are several URLs; give the
    /// reqwest client's own timeout, so that a call's tries fit in the time it allows one.
    pub fn with_request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// The URL calls go to first: the last one that answered.
    pub fn base_url(&self) -> &str {
        self.base_text(self.current.load(Ordering::Relaxed))
    }

    /// Every configured URL, in the order given.
    pub fn base_urls(&self) -> impl Iterator<Item = &str> {
        self.bases.iter().map(|b| b.text.as_str())
    }

    fn base_text(&self, index: usize) -> &str {
        self.bases.get(index).map_or("", |b| b.text.as_str())
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

    /// An operator's resize of `cluster`'s known raft (its `expect`).
    pub async fn resize(
        &self,
        cluster: &str,
        request: &ResizeRequest,
    ) -> Result<ResizeResponse, ClientError> {
        let path = format!("/v1/clusters/{}/resize", seg(cluster));
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

    /// One call: `blocking` is a blocking read's timeout for each try, instead of a share of
    /// the request timeout.
    async fn send_with_timeout<T: DeserializeOwned, B: Serialize>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
        blocking: Option<Duration>,
    ) -> Result<T, ClientError> {
        let body =
            body.map(serde_json::to_vec)
                .transpose()
                .map_err(|e| ClientError::Unexpected {
                    status: 0,
                    detail: format!("cannot encode the request: {e}"),
                })?;
        let answer = self.call(&method, path, body.as_deref(), blocking).await?;
        answer.decode()
    }

    /// Sends to the current URL, then to each next one that does not answer, at most once
    /// round; remembers the one that answered.
    async fn call(
        &self,
        method: &Method,
        path: &str,
        body: Option<&[u8]>,
        blocking: Option<Duration>,
    ) -> Result<Answer, ClientError> {
        let n = self.bases.len();
        let first = self.current.load(Ordering::Relaxed) % n.max(1);
        let started = Instant::now();
        // Why each URL before the one that answered was passed over, for the switch's log line.
        let mut passed_over: Vec<String> = Vec::new();
        let mut last_error = None;
        for tried in 0..n {
            let index = (first + tried) % n;
            let timeout = match blocking {
                Some(wait) => Some(wait),
                None if n > 1 => Some(try_timeout(
                    self.request_timeout.saturating_sub(started.elapsed()),
                    n - tried,
                )),
                None => None,
            };
            match self.try_base(index, method, path, body, timeout).await {
                Try::Answered {
                    answer,
                    answered_by,
                    redirects,
                } => {
                    passed_over.extend(redirects);
                    self.remember(first, answered_by, &passed_over);
                    return Ok(answer);
                }
                Try::Refused(error) => return Err(error),
                Try::Unreachable { error, reason } => {
                    passed_over.push(reason);
                    last_error = Some(error);
                }
            }
        }
        Err(last_error.unwrap_or_else(|| ClientError::InvalidBaseUrls("no registry URL".into())))
    }

    /// One try of the URL `index`, following redirects to configured URLs, within `timeout`
    /// (none: the reqwest client's own, per request).
    async fn try_base(
        &self,
        index: usize,
        method: &Method,
        path: &str,
        body: Option<&[u8]>,
        timeout: Option<Duration>,
    ) -> Try {
        let deadline = timeout.map(|t| Instant::now() + t);
        let mut url = format!("{}{path}", self.base_text(index));
        let mut answering = index;
        let mut redirects: Vec<String> = Vec::new();
        loop {
            let mut request = self.http.request(method.clone(), &url);
            if let Some(deadline) = deadline {
                request = request.timeout(deadline.saturating_duration_since(Instant::now()));
            }
            if let Some(token) = &self.token {
                request = request.bearer_auth(token);
            }
            if let Some(body) = body {
                request = request
                    .header(header::CONTENT_TYPE, "application/json")
                    .body(body.to_vec());
            }
            let response = match request.send().await {
                Ok(response) => response,
                Err(source) => {
                    return Try::Unreachable {
                        reason: unreachable_reason(self.base_text(answering), &source, timeout),
                        error: ClientError::Unreachable { url, source },
                    }
                }
            };
            // A caller-built client may have followed a redirect by itself.
            if self.configured(response.url()).is_none() {
                return Try::Refused(ClientError::RedirectRefused {
                    location: response.url().to_string(),
                    url,
                    reason: "the HTTP client followed it, and it is not one of the registry URLs"
                        .into(),
                });
            }
            let status = response.status();
            let location = response
                .headers()
                .get(header::LOCATION)
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
            if let Some(location) = location.filter(|_| status.is_redirection()) {
                match self.redirect_target(status, response.url(), &location, redirects.len()) {
                    Ok((next, next_index)) => {
                        redirects.push(format!("{url} answered {status} to {next}"));
                        url = next.to_string();
                        answering = next_index;
                        continue;
                    }
                    Err(reason) => {
                        return Try::Refused(ClientError::RedirectRefused {
                            url,
                            location,
                            reason,
                        })
                    }
                }
            }
            let retry_after = response
                .headers()
                .get(header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(Duration::from_secs);
            let bytes = match response.bytes().await {
                Ok(bytes) => bytes.to_vec(),
                Err(source) => {
                    return Try::Unreachable {
                        reason: unreachable_reason(self.base_text(answering), &source, timeout),
                        error: ClientError::Unreachable { url, source },
                    }
                }
            };
            let is_gateway_error = matches!(
                status,
                StatusCode::BAD_GATEWAY
                    | StatusCode::SERVICE_UNAVAILABLE
                    | StatusCode::GATEWAY_TIMEOUT
            );
            if is_gateway_error && serde_json::from_slice::<ErrorBody>(&bytes).is_err() {
                return Try::Unreachable {
                    reason: format!(
                        "{} answered {status} without a rollcall error body",
                        self.base_text(answering)
                    ),
                    error: ClientError::Unexpected {
                        status: status.as_u16(),
                        detail: snippet(&bytes),
                    },
                };
            }
            return Try::Answered {
                answer: Answer {
                    status,
                    retry_after,
                    bytes,
                },
                answered_by: answering,
                redirects,
            };
        }
    }

    /// Where a redirect from `from` to `location` may go: a `307` or `308` to a configured
    /// origin, within [`MAX_REDIRECTS`]; else why not.
    fn redirect_target(
        &self,
        status: StatusCode,
        from: &Url,
        location: &str,
        followed: usize,
    ) -> Result<(Url, usize), String> {
        let next = from
            .join(location)
            .map_err(|e| format!("the Location is not a URL: {e}"))?;
        let Some(index) = self.configured(&next) else {
            return Err(
                "it is not one of the registry URLs, and the token goes nowhere else".into(),
            );
        };
        if !matches!(
            status,
            StatusCode::TEMPORARY_REDIRECT | StatusCode::PERMANENT_REDIRECT
        ) {
            return Err(format!(
                "a {status} would change the method; only 307 and 308 are followed"
            ));
        }
        if followed >= MAX_REDIRECTS {
            return Err(format!("more than {MAX_REDIRECTS} redirects in one try"));
        }
        Ok((next, index))
    }

    /// The index of the configured URL with `url`'s origin.
    fn configured(&self, url: &Url) -> Option<usize> {
        self.bases.iter().position(|b| b.same_origin(url))
    }

    /// Makes `answered_by` the current URL if it still is `first`, and logs the switch once
    /// (a concurrent call that failed over the same way finds it done and says nothing).
    fn remember(&self, first: usize, answered_by: usize, passed_over: &[String]) {
        if answered_by == first {
            return;
        }
        if self
            .current
            .compare_exchange(first, answered_by, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
        {
            info!(
                from = %self.base_text(first),
                to = %self.base_text(answered_by),
                reason = %passed_over.join("; "),
                "switched to another registry URL"
            );
        }
    }
}

/// The outcome of one try of one URL.
enum Try {
    /// An answer to decode, from the configured URL `answered_by`, after `redirects`.
    Answered {
        answer: Answer,
        answered_by: usize,
        redirects: Vec<String>,
    },
    /// No answer: try the next URL. `reason` says why, for the log.
    Unreachable { error: ClientError, reason: String },
    /// An answer that ends the call with this error, without trying another URL.
    Refused(ClientError),
}

/// A response, read whole.
struct Answer {
    status: StatusCode,
    retry_after: Option<Duration>,
    bytes: Vec<u8>,
}

impl Answer {
    fn decode<T: DeserializeOwned>(self) -> Result<T, ClientError> {
        let Answer {
            status,
            retry_after,
            bytes,
        } = self;
        if status.is_success() {
            if status == StatusCode::NO_CONTENT || bytes.is_empty() {
                return serde_json::from_slice(b"null").map_err(|e| ClientError::Unexpected {
                    status: status.as_u16(),
                    detail: e.to_string(),
                });
            }
            return serde_json::from_slice(&bytes).map_err(|e| ClientError::Unexpected {
                status: status.as_u16(),
                detail: format!("{e}: {}", snippet(&bytes)),
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
                detail: snippet(&bytes),
            }),
        }
    }
}

/// The first 200 bytes of a body, for an error message.
fn snippet(bytes: &[u8]) -> String {
    String::from_utf8_lossy(&bytes[..bytes.len().min(200)]).into_owned()
}

/// Why `base` did not answer, for the switch's log line: what failed and its innermost cause
/// (reqwest's own message names only the URL).
fn unreachable_reason(base: &str, error: &reqwest::Error, timeout: Option<Duration>) -> String {
    let what = if error.is_timeout() {
        match timeout {
            Some(timeout) => format!("no answer within {timeout:?}"),
            None => "no answer in time".to_string(),
        }
    } else if error.is_connect() {
        "cannot connect".to_string()
    } else {
        "the connection failed".to_string()
    };
    let mut cause: &dyn std::error::Error = error;
    while let Some(source) = cause.source() {
        cause = source;
    }
    format!("{base}: {what} ({cause})")
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
