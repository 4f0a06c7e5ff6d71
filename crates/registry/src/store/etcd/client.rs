//! A small client of etcd's v3 API through its JSON gateway (`POST /v3/kv/range`, `/kv/txn`,
//! `/lease/grant`, `/lease/keepalive`, `/lease/revoke`, `/auth/authenticate`), on reqwest.
//!
//! Why the gateway and not a gRPC client: the registry needs five calls, all unary; reqwest and
//! rustls are already in the tree, while the `etcd-client` crate brings tonic, prost and a
//! protobuf build step, about doubling the registry's build on the project's two cores. The
//! gateway is part of every etcd server since 3.3 (`/v3/` since 3.4) and needs no extra
//! process. Keys and values travel base64-encoded; 64-bit numbers travel as JSON strings.
//!
//! Endpoints are tried in turn: a read or lease call that cannot reach one endpoint (connect
//! error, timeout, 5xx, etcd's "unavailable") goes to the next, and the one that answered is
//! tried first next time. A transaction goes to another endpoint only when it could not be
//! sent at all: once sent, no answer is an unknown outcome ([`EtcdError::NoAnswer`]), which
//! the store makes fail-stop. With a user, the client authenticates once and again whenever
//! etcd says the token is no longer valid.
//!
//! Over 500 lines because the wire format is here too: the JSON shapes etcd answers with
//! (base64 keys, 64-bit numbers as strings, fields omitted when zero) and their decoding.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::Mutex;

/// How to reach and authenticate to etcd.
#[derive(Clone, Debug, Default)]
pub struct EtcdOptions {
    /// Client URLs, `http://` or `https://`.
    pub endpoints: Vec<String>,
    /// PEM CA bundle that signs the endpoints' certificates.
    pub ca_pem: Option<Vec<u8>>,
    /// PEM client certificate and key, concatenated (etcd's `--client-cert-auth`).
    pub identity_pem: Option<Vec<u8>>,
    /// User and password for etcd's auth.
    pub user: Option<(String, String)>,
    /// Timeout of one call to one endpoint.
    pub request_timeout: Duration,
}

/// Why a call failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum EtcdError {
    /// No endpoint could be reached: nothing was sent.
    #[error("no etcd endpoint answered ({0})")]
    Unreachable(String),
    /// The request was sent and no answer came (a timeout, a dropped connection, etcd's own
    /// "request timed out"): a write may or may not happen, later even.
    #[error("etcd did not answer ({0}); the outcome is unknown")]
    NoAnswer(String),
    /// etcd answered with an error (`code` is gRPC's).
    #[error("etcd refused the call: {message} (code {code})")]
    Refused { code: i64, message: String },
    /// etcd answered something this client cannot read.
    #[error("etcd's answer could not be read: {0}")]
    Protocol(String),
}

impl EtcdError {
    /// etcd has no quorum or no leader right now (gRPC `Unavailable`, or no endpoint answered).
    pub fn is_unavailable(&self) -> bool {
        matches!(self, EtcdError::Unreachable(_) | EtcdError::NoAnswer(_))
            || matches!(self, EtcdError::Refused { code: 14, .. })
    }
}

/// One key-value as `range` returns it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kv {
    pub key: Vec<u8>,
    pub value: Vec<u8>,
    pub create_revision: i64,
    pub mod_revision: i64,
    pub lease: i64,
}

/// A comparison of a transaction.
#[derive(Debug, Clone)]
pub enum Compare {
    /// The key's `create_revision` equals this (0: the key does not exist).
    CreateRevision(Vec<u8>, i64),
}

/// An operation of a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    Put {
        key: Vec<u8>,
        value: Vec<u8>,
        lease: i64,
    },
    Delete {
        key: Vec<u8>,
    },
    /// A delete of every key under a prefix.
    DeletePrefix {
        prefix: Vec<u8>,
    },
    Get {
        key: Vec<u8>,
    },
}

impl Op {
    /// Roughly what the operation adds to a request, for splitting batches.
    pub fn size(&self) -> usize {
        match self {
            Op::Put { key, value, .. } => (key.len() + value.len()) * 4 / 3 + 64,
            Op::Delete { key } | Op::Get { key } => key.len() * 4 / 3 + 48,
            Op::DeletePrefix { prefix } => prefix.len() * 8 / 3 + 64,
        }
    }
}

/// What a transaction answered.
#[derive(Debug, Clone)]
pub struct TxnOutcome {
    pub succeeded: bool,
    /// The store's revision after the transaction (the revision of its writes when it wrote).
    pub revision: i64,
    /// The key-values of the `Get` operations that ran, in order.
    pub got: Vec<Vec<Kv>>,
}

/// The etcd client; a cheap `Clone`.
#[derive(Clone, Debug)]
pub struct EtcdClient {
    http: reqwest::Client,
    endpoints: Arc<Vec<String>>,
    current: Arc<AtomicUsize>,
    user: Option<(String, String)>,
    token: Arc<Mutex<Option<String>>>,
}

impl EtcdClient {
    pub fn new(options: &EtcdOptions) -> Result<EtcdClient, String> {
        if options.endpoints.is_empty() {
            return Err("no etcd endpoint given".into());
        }
        let mut endpoints = Vec::new();
        for e in &options.endpoints {
            let e = e.trim().trim_end_matches('/');
            if !(e.starts_with("http://") || e.starts_with("https://")) {
                return Err(format!(
                    "etcd endpoint {e:?} must start with http:// or https://"
                ));
            }
            endpoints.push(e.to_string());
        }
        let mut builder = reqwest::Client::builder()
            .timeout(options.request_timeout)
            .connect_timeout(options.request_timeout.min(Duration::from_secs(2)))
            .redirect(reqwest::redirect::Policy::none());
        if let Some(pem) = &options.ca_pem {
            let certs = reqwest::Certificate::from_pem_bundle(pem)
                .map_err(|e| format!("the etcd CA file: {e}"))?;
            if certs.is_empty() {
                return Err("the etcd CA file holds no PEM certificate".into());
            }
            for cert in certs {
                builder = builder.add_root_certificate(cert);
            }
        }
        if let Some(pem) = &options.identity_pem {
            let identity = reqwest::Identity::from_pem(pem)
                .map_err(|e| format!("the etcd client certificate and key: {e}"))?;
            builder = builder.identity(identity);
        }
        let http = builder
            .build()
            .map_err(|e| format!("cannot build the etcd client: {e}"))?;
        Ok(EtcdClient {
            http,
            endpoints: Arc::new(endpoints),
            current: Arc::new(AtomicUsize::new(0)),
            user: options.user.clone(),
            token: Arc::new(Mutex::new(None)),
        })
    }

    /// The endpoint tried first.
    pub fn current_endpoint(&self) -> &str {
        let i = self.current.load(Ordering::Relaxed) % self.endpoints.len();
        &self.endpoints[i]
    }

    /// Every key-value under `prefix`, read in pages at one revision.
    pub async fn range_prefix(&self, prefix: &[u8]) -> Result<(Vec<Kv>, i64), EtcdError> {
        const PAGE: i64 = 1000;
        let end = prefix_end(prefix);
        let mut start = prefix.to_vec();
        let mut out = Vec::new();
        let mut at_revision = 0i64;
        loop {
            let mut body = json!({
                "key": B64.encode(&start),
                "range_end": B64.encode(&end),
                "limit": PAGE.to_string(),
            });
            if at_revision > 0 {
                body["revision"] = json!(at_revision.to_string());
            }
            let answer = self.call("/v3/kv/range", body).await?;
            let page: RangeResponse = serde_json::from_value(answer)
                .map_err(|e| EtcdError::Protocol(format!("range: {e}")))?;
            if at_revision == 0 {
                at_revision = parse_i64(&page.header.revision);
            }
            let n = page.kvs.len();
            for kv in page.kvs {
                out.push(kv.decode()?);
            }
            if !page.more || n == 0 {
                return Ok((out, at_revision));
            }
            let last = out.last().map(|kv| kv.key.clone()).unwrap_or_default();
            start = last;
            start.push(0);
        }
    }

    /// One key, if it exists.
    pub async fn get(&self, key: &[u8]) -> Result<Option<Kv>, EtcdError> {
        let answer = self
            .call("/v3/kv/range", json!({ "key": B64.encode(key) }))
            .await?;
        let page: RangeResponse = serde_json::from_value(answer)
            .map_err(|e| EtcdError::Protocol(format!("range: {e}")))?;
        page.kvs.into_iter().next().map(WireKv::decode).transpose()
    }

    /// A transaction: when every comparison holds, `success` runs, else `failure`.
    pub async fn txn(
        &self,
        compare: &[Compare],
        success: &[Op],
        failure: &[Op],
    ) -> Result<TxnOutcome, EtcdError> {
        let compare: Vec<Value> = compare
            .iter()
            .map(|c| match c {
                Compare::CreateRevision(key, revision) => json!({
                    "key": B64.encode(key),
                    "target": "CREATE",
                    "result": "EQUAL",
                    "create_revision": revision.to_string(),
                }),
            })
            .collect();
        let ops = |ops: &[Op]| -> Vec<Value> { ops.iter().map(op_json).collect() };
        let answer = self
            .call_once_sent(
                "/v3/kv/txn",
                json!({ "compare": compare, "success": ops(success), "failure": ops(failure) }),
            )
            .await?;
        let txn: TxnResponse =
            serde_json::from_value(answer).map_err(|e| EtcdError::Protocol(format!("txn: {e}")))?;
        let mut got = Vec::new();
        for r in txn.responses {
            if let Some(range) = r.response_range {
                got.push(
                    range
                        .kvs
                        .into_iter()
                        .map(WireKv::decode)
                        .collect::<Result<_, _>>()?,
                );
            }
        }
        Ok(TxnOutcome {
            succeeded: txn.succeeded,
            revision: parse_i64(&txn.header.revision),
            got,
        })
    }

    /// A lease of `ttl` (rounded up to whole seconds); its ID and the TTL etcd granted (etcd
    /// raises a TTL below its minimum, one and a half election timeouts).
    pub async fn lease_grant(&self, ttl: Duration) -> Result<(i64, Duration), EtcdError> {
        let answer = self
            .call(
                "/v3/lease/grant",
                json!({ "TTL": ttl_secs(ttl).to_string() }),
            )
            .await?;
        let id = answer
            .get("ID")
            .and_then(Value::as_str)
            .map(parse_i64)
            .unwrap_or(0);
        if id == 0 {
            return Err(EtcdError::Protocol(format!(
                "lease grant answered {answer}"
            )));
        }
        let granted = answer
            .get("TTL")
            .and_then(Value::as_str)
            .map(parse_i64)
            .and_then(|s| u64::try_from(s).ok())
            .map_or(Duration::from_secs(ttl_secs(ttl)), Duration::from_secs);
        Ok((id, granted))
    }

    /// Renews a lease; the TTL left, zero when the lease is gone.
    pub async fn lease_keepalive(&self, id: i64) -> Result<i64, EtcdError> {
        let answer = self
            .call("/v3/lease/keepalive", json!({ "ID": id.to_string() }))
            .await?;
        let result = answer.get("result").unwrap_or(&answer);
        Ok(result
            .get("TTL")
            .and_then(Value::as_str)
            .map(parse_i64)
            .unwrap_or(0))
    }

    /// Ends a lease now (its keys go with it).
    pub async fn lease_revoke(&self, id: i64) -> Result<(), EtcdError> {
        match self
            .call("/v3/lease/revoke", json!({ "ID": id.to_string() }))
            .await
        {
            Ok(_) => Ok(()),
            // Already gone.
            Err(EtcdError::Refused { code: 5, .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Calls `path` on the endpoints in turn, from the one that answered last: for reads and
    /// lease calls, which may be sent twice.
    async fn call(&self, path: &str, body: Value) -> Result<Value, EtcdError> {
        self.call_endpoints(path, body, true).await
    }

    /// Like [`EtcdClient::call`], but once the request was sent to one endpoint it is never
    /// sent to another: a transaction whose answer did not come may still be applied, and
    /// sending it again could apply it twice, or after a later one.
    async fn call_once_sent(&self, path: &str, body: Value) -> Result<Value, EtcdError> {
        self.call_endpoints(path, body, false).await
    }

    async fn call_endpoints(
        &self,
        path: &str,
        body: Value,
        resend: bool,
    ) -> Result<Value, EtcdError> {
        let n = self.endpoints.len();
        let first = self.current.load(Ordering::Relaxed) % n;
        let mut failures = Vec::new();
        for step in 0..n {
            let i = (first + step) % n;
            let url = format!("{}{path}", self.endpoints[i]);
            match self.call_one(&url, &body, true).await {
                Ok(value) => {
                    self.current.store(i, Ordering::Relaxed);
                    return Ok(value);
                }
                Err(EtcdError::Unreachable(why)) => failures.push(format!("{url}: {why}")),
                Err(EtcdError::NoAnswer(why)) if resend => failures.push(format!("{url}: {why}")),
                Err(e) => {
                    self.current.store(i, Ordering::Relaxed);
                    return Err(e);
                }
            }
        }
        Err(EtcdError::Unreachable(failures.join("; ")))
    }

    async fn call_one(&self, url: &str, body: &Value, may_auth: bool) -> Result<Value, EtcdError> {
        let mut request = self.http.post(url).json(body);
        if let Some(token) = self.token(url).await? {
            request = request.header("Authorization", token);
        }
        let response = request.send().await.map_err(|e| {
            if e.is_connect() {
                EtcdError::Unreachable(error_chain(&e))
            } else {
                EtcdError::NoAnswer(error_chain(&e))
            }
        })?;
        let status = response.status();
        let value: Value = response
            .json()
            .await
            .map_err(|e| EtcdError::NoAnswer(format!("{status}: {}", error_chain(&e))))?;
        if let Some(message) = value.get("error").and_then(Value::as_str) {
            let code = value.get("code").and_then(Value::as_i64).unwrap_or(2);
            // 16: Unauthenticated (an expired or revoked token): authenticate again, once.
            if may_auth
                && self.user.is_some()
                && (code == 16 || message.contains("invalid auth token"))
            {
                *self.token.lock().await = None;
                return Box::pin(self.call_one(url, body, false)).await;
            }
            // 14 (Unavailable: no leader, or "request timed out", after which the request may
            // still be applied) from one member may not hold for another.
            if code == 14 {
                return Err(EtcdError::NoAnswer(message.to_string()));
            }
            return Err(EtcdError::Refused {
                code,
                message: message.to_string(),
            });
        }
        if status.is_server_error() {
            return Err(EtcdError::NoAnswer(format!("{status}: {value}")));
        }
        Ok(value)
    }

    /// The auth token, authenticating when there is none yet (no user: none needed).
    async fn token(&self, url: &str) -> Result<Option<String>, EtcdError> {
        let Some((user, password)) = &self.user else {
            return Ok(None);
        };
        let mut token = self.token.lock().await;
        if let Some(t) = token.as_ref() {
            return Ok(Some(t.clone()));
        }
        let base = url.split("/v3/").next().unwrap_or(url);
        let response = self
            .http
            .post(format!("{base}/v3/auth/authenticate"))
            .json(&json!({ "name": user, "password": password }))
            .send()
            .await
            .map_err(|e| EtcdError::Unreachable(error_chain(&e)))?;
        let value: Value = response
            .json()
            .await
            .map_err(|e| EtcdError::Unreachable(error_chain(&e)))?;
        match value.get("token").and_then(Value::as_str) {
            Some(t) => {
                *token = Some(t.to_string());
                Ok(Some(t.to_string()))
            }
            None => Err(EtcdError::Refused {
                code: value.get("code").and_then(Value::as_i64).unwrap_or(16),
                message: format!(
                    "authentication as {user:?} failed: {}",
                    value
                        .get("error")
                        .and_then(Value::as_str)
                        .unwrap_or("no token")
                ),
            }),
        }
    }
}

/// A lease TTL in whole seconds, rounded up (etcd's unit).
fn ttl_secs(ttl: Duration) -> u64 {
    ttl.as_secs() + u64::from(ttl.subsec_nanos() > 0)
}

/// The first key after every key that starts with `prefix`.
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    // Every byte 0xff: to the end of the keyspace.
    vec![0]
}

fn op_json(op: &Op) -> Value {
    match op {
        Op::Put { key, value, lease } => {
            let mut put = json!({ "key": B64.encode(key), "value": B64.encode(value) });
            if *lease != 0 {
                put["lease"] = json!(lease.to_string());
            }
            json!({ "request_put": put })
        }
        Op::Delete { key } => json!({ "request_delete_range": { "key": B64.encode(key) } }),
        Op::DeletePrefix { prefix } => json!({ "request_delete_range": {
            "key": B64.encode(prefix),
            "range_end": B64.encode(prefix_end(prefix)),
        } }),
        Op::Get { key } => json!({ "request_range": { "key": B64.encode(key) } }),
    }
}

fn parse_i64(s: &str) -> i64 {
    s.parse().unwrap_or(0)
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        source = inner.source();
    }
    s
}

#[derive(Debug, Default, Deserialize)]
struct Header {
    #[serde(default)]
    revision: String,
}

#[derive(Debug, Deserialize)]
struct WireKv {
    #[serde(default)]
    key: String,
    #[serde(default)]
    value: String,
    #[serde(default)]
    create_revision: String,
    #[serde(default)]
    mod_revision: String,
    #[serde(default)]
    lease: String,
}

impl WireKv {
    fn decode(self) -> Result<Kv, EtcdError> {
        let bytes = |s: &str| {
            B64.decode(s)
                .map_err(|e| EtcdError::Protocol(format!("base64: {e}")))
        };
        Ok(Kv {
            key: bytes(&self.key)?,
            value: bytes(&self.value)?,
            create_revision: parse_i64(&self.create_revision),
            mod_revision: parse_i64(&self.mod_revision),
            lease: parse_i64(&self.lease),
        })
    }
}

#[derive(Debug, Deserialize)]
struct RangeResponse {
    #[serde(default)]
    header: Header,
    #[serde(default)]
    kvs: Vec<WireKv>,
    #[serde(default)]
    more: bool,
}

#[derive(Debug, Deserialize)]
struct TxnResponse {
    #[serde(default)]
    header: Header,
    #[serde(default)]
    succeeded: bool,
    #[serde(default)]
    responses: Vec<TxnResponseOp>,
}

#[derive(Debug, Deserialize)]
struct TxnResponseOp {
    #[serde(default)]
    response_range: Option<RangeResponse>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_prefix_ends_at_its_successor() {
        assert_eq!(prefix_end(b"rollcall/"), b"rollcall0".to_vec());
        assert_eq!(prefix_end(&[b'a', 0xff]), vec![b'b']);
        assert_eq!(prefix_end(&[0xff, 0xff]), vec![0]);
    }
}
