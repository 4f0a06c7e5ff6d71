//! The four systems under test and how each one does the benchmark's three operations.
//!
//! | operation | rollcall-registry / ceiling | etcd 3.4 (v3 JSON gateway)            | Redis 7 (AOF, fsync always)                  |
//! |-----------|-----------------------------|---------------------------------------|----------------------------------------------|
//! | register  | `PUT …/members/{node}`      | `lease/grant` then `kv/put` with it   | `MULTI; SET m:{c}:{n} v EX ttl; SADD c:{c} n; EXEC` |
//! | renew     | the same `PUT` again        | `lease/keepalive` of the member lease | `SET m:{c}:{n} v EX ttl`                     |
//! | list      | `GET …/members`             | `kv/range` over the cluster's prefix  | `SMEMBERS c:{c}` then `MGET` of those keys   |
//!
//! "rollcall-registry on etcd" (`replicated`) is the registry with `--store etcd`, one replica
//! on a one-member etcd started beside it: the registry's operations, its durable writes
//! through etcd's transactions, its renewals in memory.
//!
//! Every operation is acknowledged only when the system says it is durable: the registry
//! flushes new members before answering, etcd commits through its fsynced WAL, and Redis with
//! `appendfsync always` fsyncs its AOF before it replies.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use anyhow::{anyhow, bail, Context};
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use rollcall_protocol::{HeartbeatRequest, MemberRole, MembersResponse};
use serde::{Deserialize, Serialize};

/// A system the benchmark compares.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum System {
    Registry,
    /// The registry with `--store etcd`: one replica on a one-member etcd of its own.
    Replicated,
    Etcd,
    Redis,
    Ceiling,
}

impl System {
    pub fn label(self) -> &'static str {
        match self {
            System::Registry => "rollcall-registry",
            System::Replicated => "rollcall-registry on etcd",
            System::Etcd => "etcd 3.4",
            System::Redis => "Redis 7",
            System::Ceiling => "ceiling (bare axum)",
        }
    }

    /// Whether the system stores anything (the ceiling does not).
    pub fn is_durable(self) -> bool {
        self != System::Ceiling
    }
}

/// One member of one cluster, as the workloads name it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct MemberName {
    pub cluster: String,
    pub node: String,
}

impl MemberName {
    pub fn new(cluster: impl Into<String>, node: impl Into<String>) -> Self {
        MemberName {
            cluster: cluster.into(),
            node: node.into(),
        }
    }

    /// The join address the member reports: a name only, never dialled.
    fn address(&self) -> String {
        format!("{}.{}.bench:8300", self.node, self.cluster)
    }

    /// The member's heartbeat body, built with the protocol's own type. etcd and Redis
    /// store the same JSON as the member's record, so every system receives the same bytes.
    /// Serialising it costs about what formatting it by hand did, far below one request.
    fn heartbeat_body(&self) -> anyhow::Result<String> {
        let heartbeat = HeartbeatRequest {
            raft_members: None,
            address: self.address(),
            role: MemberRole::Server,
            status: None,
            meta: BTreeMap::new(),
            raft: None,
        };
        serde_json::to_string(&heartbeat).context("cannot serialise a heartbeat")
    }
}

/// One request of a workload.
#[derive(Debug, Clone)]
pub enum Op {
    /// A new member; durable before it is acknowledged.
    Register(MemberName),
    /// A heartbeat of an existing member. `lease` is its etcd lease (0 elsewhere).
    Renew(MemberName, i64),
    /// The live members of a cluster.
    List(String),
}

/// What an operation answered, when the caller needs it.
#[derive(Debug, Default)]
pub struct Answer {
    /// The etcd lease a registration created (0 for the other systems).
    pub lease: i64,
    /// For a listing with names requested: the live nodes.
    pub nodes: Vec<String>,
    /// For a listing: how many members it returned (or bytes, when names were not parsed).
    pub size: usize,
}

/// One client connection to a system. HTTP connections are HTTP/1.1 keep-alive without
/// pipelining, so one connection carries one request at a time, as `wrk` does.
pub enum Conn {
    Http {
        system: System,
        http: HttpConn,
        ttl_secs: u64,
    },
    Redis {
        conn: redis::aio::MultiplexedConnection,
        ttl_secs: u64,
    },
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Conn::Http { system, .. } => write!(f, "Conn::Http({system:?})"),
            Conn::Redis { .. } => write!(f, "Conn::Redis"),
        }
    }
}

impl Conn {
    /// Opens one connection to `system` at `addr`.
    pub async fn connect(system: System, addr: SocketAddr, ttl_secs: u64) -> anyhow::Result<Conn> {
        match system {
            System::Redis => {
                let client = redis::Client::open(format!("redis://{addr}/"))?;
                let conn = client
                    .get_multiplexed_async_connection()
                    .await
                    .with_context(|| format!("cannot connect to Redis at {addr}"))?;
                Ok(Conn::Redis { conn, ttl_secs })
            }
            _ => Ok(Conn::Http {
                system,
                http: HttpConn::connect(addr).await?,
                ttl_secs,
            }),
        }
    }

    /// Runs one operation; `want_nodes` parses a listing's node names (for verification).
    pub async fn execute(&mut self, op: &Op, want_nodes: bool) -> anyhow::Result<Answer> {
        match self {
            Conn::Http {
                system: System::Etcd,
                http,
                ttl_secs,
            } => etcd_execute(http, *ttl_secs, op, want_nodes).await,
            // The ceiling answers every request with the same small body: nothing to parse.
            Conn::Http {
                system: System::Ceiling,
                http,
                ..
            } => registry_execute(http, op, false).await,
            Conn::Http { http, .. } => registry_execute(http, op, want_nodes).await,
            Conn::Redis { conn, ttl_secs } => redis_execute(conn, *ttl_secs, op, want_nodes).await,
        }
    }
}

/// A minimal HTTP/1.1 client connection (hyper's low-level API: no pool, no retries).
pub struct HttpConn {
    sender: SendRequest<Full<Bytes>>,
    host: String,
}

impl std::fmt::Debug for HttpConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpConn")
            .field("host", &self.host)
            .finish()
    }
}

impl HttpConn {
    pub async fn connect(addr: SocketAddr) -> anyhow::Result<HttpConn> {
        let stream = tokio::net::TcpStream::connect(addr)
            .await
            .with_context(|| format!("cannot connect to {addr}"))?;
        stream.set_nodelay(true)?;
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .context("HTTP handshake failed")?;
        tokio::spawn(async move {
            // The connection ends when the server closes it or the sender is dropped; the
            // request that was waiting on it reports the error.
            let _ = connection.await;
        });
        Ok(HttpConn {
            sender,
            host: addr.to_string(),
        })
    }

    /// Sends one request and reads the whole response body.
    pub async fn request(
        &mut self,
        method: Method,
        path: &str,
        body: Option<String>,
    ) -> anyhow::Result<(StatusCode, Bytes)> {
        let mut builder = Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, &self.host);
        if body.is_some() {
            builder = builder.header(hyper::header::CONTENT_TYPE, "application/json");
        }
        let request = builder.body(Full::new(body.map(Bytes::from).unwrap_or_default()))?;
        self.sender.ready().await.context("connection closed")?;
        let response = self.sender.send_request(request).await?;
        let status = response.status();
        let bytes = response.into_body().collect().await?.to_bytes();
        Ok((status, bytes))
    }
}

async fn registry_execute(
    http: &mut HttpConn,
    op: &Op,
    want_nodes: bool,
) -> anyhow::Result<Answer> {
    match op {
        Op::Register(m) | Op::Renew(m, _) => {
            let path = format!("/v1/clusters/{}/members/{}", m.cluster, m.node);
            let body = m.heartbeat_body()?;
            let (status, bytes) = http.request(Method::PUT, &path, Some(body)).await?;
            if status != StatusCode::OK {
                bail!("PUT {path}: {status} {}", String::from_utf8_lossy(&bytes));
            }
            Ok(Answer::default())
        }
        Op::List(cluster) => {
            let path = format!("/v1/clusters/{cluster}/members");
            let (status, bytes) = http.request(Method::GET, &path, None).await?;
            if status != StatusCode::OK {
                bail!("GET {path}: {status} {}", String::from_utf8_lossy(&bytes));
            }
            let mut answer = Answer {
                size: bytes.len(),
                ..Answer::default()
            };
            if want_nodes {
                let listing: MembersResponse = serde_json::from_slice(&bytes)
                    .context("the registry's listing is not a MembersResponse")?;
                answer.nodes = listing.members.into_iter().map(|m| m.node).collect();
                answer.size = answer.nodes.len();
            }
            Ok(answer)
        }
    }
}

fn etcd_key(m: &MemberName) -> String {
    format!("/rollcall/{}/{}", m.cluster, m.node)
}

/// Reads an int64 that the gateway writes as a JSON string.
fn etcd_i64(value: &serde_json::Value) -> Option<i64> {
    match value {
        serde_json::Value::String(s) => s.parse().ok(),
        serde_json::Value::Number(n) => n.as_i64(),
        _ => None,
    }
}

async fn etcd_post(
    http: &mut HttpConn,
    path: &str,
    body: serde_json::Value,
) -> anyhow::Result<serde_json::Value> {
    let (status, bytes) = http
        .request(Method::POST, path, Some(body.to_string()))
        .await?;
    if status != StatusCode::OK {
        bail!("POST {path}: {status} {}", String::from_utf8_lossy(&bytes));
    }
    serde_json::from_slice(&bytes).with_context(|| format!("POST {path}: the answer is not JSON"))
}

async fn etcd_execute(
    http: &mut HttpConn,
    ttl_secs: u64,
    op: &Op,
    want_nodes: bool,
) -> anyhow::Result<Answer> {
    match op {
        Op::Register(m) => {
            let grant = etcd_post(
                http,
                "/v3/lease/grant",
                serde_json::json!({ "TTL": ttl_secs }),
            )
            .await?;
            let lease = etcd_i64(&grant["ID"]).ok_or_else(|| anyhow!("lease grant: no ID"))?;
            etcd_post(
                http,
                "/v3/kv/put",
                serde_json::json!({
                    "key": BASE64.encode(etcd_key(m)),
                    "value": BASE64.encode(m.heartbeat_body()?),
                    "lease": lease.to_string(),
                }),
            )
            .await?;
            Ok(Answer {
                lease,
                ..Answer::default()
            })
        }
        Op::Renew(m, lease) => {
            let answer = etcd_post(
                http,
                "/v3/lease/keepalive",
                serde_json::json!({ "ID": lease.to_string() }),
            )
            .await?;
            // An unknown or expired lease answers without a TTL.
            match etcd_i64(&answer["result"]["TTL"]) {
                Some(ttl) if ttl > 0 => Ok(Answer::default()),
                _ => bail!("keepalive of {}: lease {lease} is gone", etcd_key(m)),
            }
        }
        Op::List(cluster) => {
            let prefix = format!("/rollcall/{cluster}/");
            let end = format!("/rollcall/{cluster}0"); // '0' follows '/' in ASCII
            let (status, bytes) = http
                .request(
                    Method::POST,
                    "/v3/kv/range",
                    Some(
                        serde_json::json!({
                            "key": BASE64.encode(&prefix),
                            "range_end": BASE64.encode(end),
                        })
                        .to_string(),
                    ),
                )
                .await?;
            if status != StatusCode::OK {
                bail!(
                    "range {prefix}: {status} {}",
                    String::from_utf8_lossy(&bytes)
                );
            }
            let mut answer = Answer {
                size: bytes.len(),
                ..Answer::default()
            };
            if want_nodes {
                let value: serde_json::Value = serde_json::from_slice(&bytes)?;
                if let Some(kvs) = value["kvs"].as_array() {
                    for kv in kvs {
                        let key = kv["key"].as_str().unwrap_or_default();
                        let key = String::from_utf8(BASE64.decode(key)?)?;
                        if let Some(node) = key.strip_prefix(&prefix) {
                            answer.nodes.push(node.to_string());
                        }
                    }
                }
                answer.size = answer.nodes.len();
            }
            Ok(answer)
        }
    }
}

fn redis_member_key(m: &MemberName) -> String {
    format!("m:{}:{}", m.cluster, m.node)
}

async fn redis_execute(
    conn: &mut redis::aio::MultiplexedConnection,
    ttl_secs: u64,
    op: &Op,
    want_nodes: bool,
) -> anyhow::Result<Answer> {
    match op {
        Op::Register(m) => {
            let () = redis::pipe()
                .atomic()
                .cmd("SET")
                .arg(redis_member_key(m))
                .arg(m.heartbeat_body()?)
                .arg("EX")
                .arg(ttl_secs)
                .ignore()
                .cmd("SADD")
                .arg(format!("c:{}", m.cluster))
                .arg(&m.node)
                .ignore()
                .query_async(conn)
                .await?;
            Ok(Answer::default())
        }
        Op::Renew(m, _) => {
            let () = redis::cmd("SET")
                .arg(redis_member_key(m))
                .arg(m.heartbeat_body()?)
                .arg("EX")
                .arg(ttl_secs)
                .query_async(conn)
                .await?;
            Ok(Answer::default())
        }
        Op::List(cluster) => {
            let nodes: Vec<String> = redis::cmd("SMEMBERS")
                .arg(format!("c:{cluster}"))
                .query_async(conn)
                .await?;
            if nodes.is_empty() {
                return Ok(Answer::default());
            }
            let keys: Vec<String> = nodes.iter().map(|n| format!("m:{cluster}:{n}")).collect();
            let values: Vec<Option<Vec<u8>>> =
                redis::cmd("MGET").arg(&keys).query_async(conn).await?;
            let live: Vec<String> = nodes
                .into_iter()
                .zip(values)
                .filter_map(|(n, v)| v.map(|_| n))
                .collect();
            Ok(Answer {
                size: live.len(),
                nodes: if want_nodes { live } else { Vec::new() },
                lease: 0,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heartbeat_bodies_are_heartbeats_the_registry_accepts() {
        let member = MemberName::new("g0", "r4242-17");
        let body = member.heartbeat_body().expect("serialises");
        let heartbeat: HeartbeatRequest = serde_json::from_str(&body).expect("a HeartbeatRequest");
        heartbeat.validate().expect("valid");
        assert_eq!(heartbeat.address, "r4242-17.g0.bench:8300");
        assert_eq!(heartbeat.role, MemberRole::Server);
        assert_eq!(
            body,
            r#"{"address":"r4242-17.g0.bench:8300","role":"server"}"#
        );
    }
}
