//! The abusive clients of the soak, one loop per kind, each coming and going until told to
//! stop. Every kind is one the registry's bounds are meant to hold against (issue 14): sockets
//! that send nothing or part of a request head in either protocol, HTTP/2 connections full of
//! blocking reads, event streams, clusters made and left, members of the largest size, and
//! malformed requests. What each saw goes to the [`Tally`].

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::{Method, Request};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinSet;

use super::tally::Tally;
use crate::systems::HttpConn;

/// The HTTP/2 client preface (RFC 9113 §3.4) and an empty SETTINGS frame.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const H2_EMPTY_SETTINGS: &[u8] = &[0, 0, 0, 4, 0, 0, 0, 0, 0];

/// Every kind of abusive client, by the name the report uses.
pub const KINDS: &[&str] = &[
    "idle-socket",
    "h2-partial-preface",
    "h2-preface-settings",
    "slow-http1-head",
    "garbage-bytes",
    "h2-watchers",
    "event-streams",
    "cluster-churn",
    "largest-members",
    "bad-requests",
];

/// What the abusers need to know.
#[derive(Debug, Clone)]
pub struct AbuseOptions {
    pub addr: SocketAddr,
    /// How long a socket that never completes a request head may stay open before the soak
    /// counts it as outliving the registry's deadline (the header deadline plus a grace).
    pub close_within: Duration,
    /// Blocking reads per HTTP/2 connection of the `h2-watchers` kind.
    pub streams_per_connection: usize,
}

/// Starts every kind; they run until `stop` and are joined by awaiting the returned set.
pub fn start(options: AbuseOptions, stop: Arc<AtomicBool>, tally: Arc<Tally>) -> JoinSet<()> {
    let mut set = JoinSet::new();
    let seq = Arc::new(AtomicU64::new(0));
    for &kind in KINDS {
        // Several clients of the socket kinds at once, so that they hold many slots together.
        let copies = match kind {
            "idle-socket" | "h2-partial-preface" | "h2-preface-settings" | "slow-http1-head" => 8,
            "event-streams" => 4,
            "h2-watchers" => 2,
            _ => 1,
        };
        for _ in 0..copies {
            let (o, stop, tally, seq) = (options.clone(), stop.clone(), tally.clone(), seq.clone());
            set.spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let n = seq.fetch_add(1, Ordering::Relaxed);
                    one(kind, &o, n, &tally).await;
                    // Come and go: a short pause between visits, never a hot loop.
                    tokio::time::sleep(Duration::from_millis(20 + n % 80)).await;
                }
            });
        }
    }
    set
}

/// One visit of an abusive client of `kind`.
async fn one(kind: &'static str, o: &AbuseOptions, n: u64, tally: &Tally) {
    match kind {
        "idle-socket" => silent_socket(kind, o, &[], tally).await,
        "h2-partial-preface" => silent_socket(kind, o, &H2_PREFACE[..14], tally).await,
        "h2-preface-settings" => {
            let mut hello = H2_PREFACE.to_vec();
            hello.extend_from_slice(H2_EMPTY_SETTINGS);
            silent_socket(kind, o, &hello, tally).await
        }
        "slow-http1-head" => slow_head(kind, o, tally).await,
        "garbage-bytes" => garbage(kind, o, n, tally).await,
        "h2-watchers" => h2_watchers(kind, o, n, tally).await,
        "event-streams" => event_stream(kind, o, n, tally).await,
        "cluster-churn" => churn(kind, o, n, tally).await,
        "largest-members" => largest_member(kind, o, n, tally).await,
        "bad-requests" => bad_request(kind, o, n, tally).await,
        _ => {}
    }
}

/// Connects, sends `hello` (perhaps nothing) and waits for the registry to close the socket.
async fn silent_socket(kind: &'static str, o: &AbuseOptions, hello: &[u8], tally: &Tally) {
    let Ok(mut stream) = TcpStream::connect(o.addr).await else {
        tally.transport_error(kind);
        return;
    };
    if stream.write_all(hello).await.is_err() {
        tally.closed(kind);
        return;
    }
    wait_closed(kind, &mut stream, o.close_within, tally).await;
}

/// Sends a request head one header line every half second, never ending it.
async fn slow_head(kind: &'static str, o: &AbuseOptions, tally: &Tally) {
    let Ok(mut stream) = TcpStream::connect(o.addr).await else {
        tally.transport_error(kind);
        return;
    };
    let deadline = tokio::time::Instant::now() + o.close_within;
    if stream
        .write_all(b"GET /health HTTP/1.1\r\nHost: soak\r\n")
        .await
        .is_err()
    {
        tally.closed(kind);
        return;
    }
    let mut buf = [0u8; 1024];
    while tokio::time::Instant::now() < deadline {
        tokio::select! {
            read = stream.read(&mut buf) => {
                // An answer (the over-limit 503, or a 408) or EOF: either way the registry ended it.
                if let Ok(k) = read {
                    if k > 0 {
                        record_raw_answer(kind, &buf[..k], tally);
                    }
                }
                tally.closed(kind);
                return;
            }
            _ = tokio::time::sleep(Duration::from_millis(500)) => {
                if stream.write_all(b"X-Slow: 1\r\n").await.is_err() {
                    tally.closed(kind);
                    return;
                }
            }
        }
    }
    tally.outlived(kind);
}

/// Random bytes, sometimes shaped like the start of a TLS ClientHello.
async fn garbage(kind: &'static str, o: &AbuseOptions, n: u64, tally: &Tally) {
    let Ok(mut stream) = TcpStream::connect(o.addr).await else {
        tally.transport_error(kind);
        return;
    };
    let mut bytes: Vec<u8> = (0..256).map(|_| rand::random::<u8>()).collect();
    if n.is_multiple_of(2) {
        bytes[..5].copy_from_slice(&[0x16, 0x03, 0x01, 0x02, 0x00]);
    }
    let _ = stream.write_all(&bytes).await;
    wait_closed(kind, &mut stream, o.close_within, tally).await;
}

/// One HTTP/2 connection that opens `streams_per_connection` blocking reads at once.
async fn h2_watchers(kind: &'static str, o: &AbuseOptions, n: u64, tally: &Tally) {
    let Ok(stream) = TcpStream::connect(o.addr).await else {
        tally.transport_error(kind);
        return;
    };
    let Ok((sender, connection)) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream)).await
    else {
        tally.closed(kind);
        return;
    };
    let driver = tokio::spawn(connection);
    // The cluster's index now, so that the reads below block (an older one answers at once).
    let cluster = format!("w{}", n % 16);
    let index = async {
        let request = Request::builder()
            .uri(format!("http://{}/v1/clusters/{cluster}/members", o.addr))
            .body(Empty::<Bytes>::new())
            .ok()?;
        let response = sender.clone().send_request(request).await.ok()?;
        response
            .headers()
            .get(rollcall_protocol::INDEX_HEADER)?
            .to_str()
            .ok()?
            .parse::<u64>()
            .ok()
    }
    .await
    .unwrap_or(0);
    let mut streams = JoinSet::new();
    for _ in 0..o.streams_per_connection {
        let mut sender = sender.clone();
        let uri = format!(
            "http://{}/v1/clusters/{cluster}/members?index={index}&wait=5s",
            o.addr
        );
        streams.spawn(async move {
            let request = Request::builder()
                .method(Method::GET)
                .uri(uri)
                .body(Empty::<Bytes>::new())
                .ok()?;
            let response = sender.send_request(request).await.ok()?;
            let status = response.status().as_u16();
            let body = response.into_body().collect().await.ok()?.to_bytes();
            Some((status, body))
        });
    }
    while let Some(done) = streams.join_next().await {
        match done {
            Ok(Some((status, body))) => tally.answer(kind, status, &body),
            _ => tally.transport_error(kind),
        }
    }
    drop(sender);
    driver.abort();
}

/// An HTTP/1 event stream, followed for a second or three and then dropped.
async fn event_stream(kind: &'static str, o: &AbuseOptions, n: u64, tally: &Tally) {
    let Ok(mut stream) = TcpStream::connect(o.addr).await else {
        tally.transport_error(kind);
        return;
    };
    let request = "GET /v1/events HTTP/1.1\r\nHost: soak\r\nAccept: text/event-stream\r\n\r\n";
    if stream.write_all(request.as_bytes()).await.is_err() {
        tally.closed(kind);
        return;
    }
    let mut buf = vec![0u8; 16 * 1024];
    let follow = Duration::from_millis(1000 + (n % 3) * 1000);
    let mut first = true;
    let _ = tokio::time::timeout(follow, async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(k) => {
                    if first {
                        record_raw_answer(kind, &buf[..k], tally);
                        first = false;
                    }
                }
            }
        }
    })
    .await;
}

/// A member in a fresh cluster, then its leave: the cluster's slot must come back.
async fn churn(kind: &'static str, o: &AbuseOptions, n: u64, tally: &Tally) {
    let Ok(mut http) = HttpConn::connect(o.addr).await else {
        tally.transport_error(kind);
        return;
    };
    let path = format!("/v1/clusters/churn-{n}/members/x");
    let body = super::workload::heartbeat_body(n as usize, None);
    for (method, body) in [(Method::PUT, Some(body)), (Method::DELETE, None)] {
        match http.request(method, &path, body).await {
            Ok((status, bytes)) => tally.answer(kind, status.as_u16(), &bytes),
            Err(_) => {
                tally.transport_error(kind);
                return;
            }
        }
    }
}

/// A member with the most metadata the protocol allows, in one of 50 clusters; they stay,
/// so the member and byte bounds are what stops them.
async fn largest_member(kind: &'static str, o: &AbuseOptions, n: u64, tally: &Tally) {
    let Ok(mut http) = HttpConn::connect(o.addr).await else {
        tally.transport_error(kind);
        return;
    };
    for k in 0..20 {
        let id = n * 20 + k;
        let meta: serde_json::Map<String, serde_json::Value> = (0
            ..rollcall_protocol::validate::MAX_METADATA_ENTRIES)
            .map(|e| {
                let key = format!(
                    "{e:02}{}",
                    "k".repeat(rollcall_protocol::validate::MAX_METADATA_KEY_LEN - 2)
                );
                let value = "v".repeat(rollcall_protocol::validate::MAX_METADATA_VALUE_LEN);
                (key, serde_json::Value::String(value))
            })
            .collect();
        let body = serde_json::json!({
            "address": format!("{}.big.soak.example.org:8300", "a".repeat(40)),
            "role": "agent",
            "meta": meta,
        })
        .to_string();
        let path = format!("/v1/clusters/big-{}/members/b{id}", id % 50);
        match http.request(Method::PUT, &path, Some(body)).await {
            Ok((status, bytes)) => tally.answer(kind, status.as_u16(), &bytes),
            Err(_) => {
                tally.transport_error(kind);
                return;
            }
        }
    }
}

/// Requests the API refuses: bad JSON, a wrong content type, control characters, a
/// duplicate key, an unknown token scheme, a path that is not a route.
async fn bad_request(kind: &'static str, o: &AbuseOptions, n: u64, tally: &Tally) {
    let cases: [(&str, &str, &str); 6] = [
        ("PUT", "application/json", "{\"address\":"),
        ("PUT", "text/plain", "{}"),
        (
            "PUT",
            "application/json",
            "{\"address\":\"a:1\",\"role\":\"server\",\"meta\":{\"k\":\"\\u202e\"}}",
        ),
        (
            "PUT",
            "application/json",
            "{\"address\":\"a:1\",\"role\":\"server\",\"meta\":{\"k\":\"1\",\"k\":\"2\"}}",
        ),
        ("POST", "application/json", "[1,2,3]"),
        ("GET", "application/json", ""),
    ];
    let (method, content_type, body) = cases[(n % cases.len() as u64) as usize];
    let path = if method == "GET" {
        "/v1/clusters/%00/members"
    } else if method == "POST" {
        "/v1/clusters/bad/claims"
    } else {
        "/v1/clusters/bad/members/x"
    };
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: soak\r\nAuthorization: Negotiate abc\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let Ok(mut stream) = TcpStream::connect(o.addr).await else {
        tally.transport_error(kind);
        return;
    };
    if stream.write_all(request.as_bytes()).await.is_err() {
        tally.transport_error(kind);
        return;
    }
    let mut answer = Vec::new();
    let read = tokio::time::timeout(o.close_within, stream.read_to_end(&mut answer)).await;
    match read {
        Ok(_) if !answer.is_empty() => record_raw_answer(kind, &answer, tally),
        Ok(_) => tally.closed(kind),
        Err(_) => tally.outlived(kind),
    }
}

/// Reads until the registry closes the socket (EOF or reset), at most `limit`.
async fn wait_closed(kind: &'static str, stream: &mut TcpStream, limit: Duration, tally: &Tally) {
    let mut buf = vec![0u8; 4096];
    let mut first = true;
    let closed = tokio::time::timeout(limit, async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(k) => {
                    // HTTP/1 answers (the over-limit 503, a 400) are tallied; HTTP/2 frames are not.
                    if first && buf.starts_with(b"HTTP/1.1 ") {
                        record_raw_answer(kind, &buf[..k], tally);
                    }
                    first = false;
                }
            }
        }
    })
    .await;
    match closed {
        Ok(()) => tally.closed(kind),
        Err(_) => tally.outlived(kind),
    }
}

/// Tallies the status of a raw HTTP/1.1 answer.
fn record_raw_answer(kind: &'static str, raw: &[u8], tally: &Tally) {
    let text = String::from_utf8_lossy(raw);
    let Some(status) = text
        .strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|s| s.parse::<u16>().ok())
    else {
        return;
    };
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    tally.answer(kind, status, body.as_bytes());
}
