//! `--max-watchers` and per-cluster wake-ups: blocking reads that wait and event streams are
//! bounded together, whatever connection or protocol carries them (HTTP/1 connections, HTTP/2
//! streams on one connection); a watcher that ends gives its slot back; a change wakes only
//! the blocking reads of the cluster that changed.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use axum::body::Body;
use common::{eventually, TestRegistry};
use hyper::client::conn::http2::SendRequest;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rollcall_protocol::{ErrorBody, ErrorCode, HeartbeatRequest, MemberRole, MembersResponse};

/// Long enough that nothing expires during a test, so that only the test's own writes change
/// a cluster's index.
const STEADY: &[&str] = &[
    "--ttl",
    "60s",
    "--interval",
    "1s",
    "--startup-grace",
    "1s",
    "--quiet-period",
    "1s",
];

fn args(max_watchers: &str) -> Vec<&str> {
    let mut all = STEADY.to_vec();
    all.extend(["--max-watchers", max_watchers]);
    all
}

fn hb(address: &str) -> HeartbeatRequest {
    HeartbeatRequest {
        raft_members: None,
        address: address.into(),
        role: MemberRole::Server,
        status: None,
        meta: BTreeMap::new(),
        raft: None,
    }
}

/// A value of an unlabelled series in `/metrics`.
async fn metric(reg: &TestRegistry, name: &str) -> u64 {
    let text = reg.get_text("/metrics").await;
    let prefix = format!("{name} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .unwrap_or_else(|| panic!("no series {name} in /metrics")) as u64
}

/// Waits until `rollcall_watchers` reads `n`.
async fn until_watchers(reg: &TestRegistry, n: u64) {
    let reached = eventually(Duration::from_secs(10), || async {
        (metric(reg, "rollcall_watchers").await == n).then_some(())
    })
    .await;
    assert!(
        reached.is_some(),
        "rollcall_watchers never read {n} (it reads {})",
        metric(reg, "rollcall_watchers").await
    );
}

/// Registers `node` in `cluster` and returns the cluster's index after it.
async fn register(reg: &TestRegistry, cluster: &str, node: &str) -> u64 {
    let c = reg.client();
    c.heartbeat(cluster, node, &hb("10.0.0.1:1"))
        .await
        .expect("register");
    c.members(cluster, None).await.expect("list").index
}

fn blocking_read_path(cluster: &str, index: u64, wait: &str) -> String {
    format!("/v1/clusters/{cluster}/members?index={index}&wait={wait}")
}

/// A blocking read over HTTP/1 (one connection each), as a task.
fn spawn_http1_read(reg: &TestRegistry, path: &str) -> tokio::task::JoinHandle<reqwest::Response> {
    let url = format!("{}{path}", reg.url());
    tokio::spawn(async move { reqwest::get(url).await.expect("blocking read") })
}

/// Asserts a `429 limit_exceeded` that names the flag and says when to retry.
async fn assert_refused_over_http1(resp: reqwest::Response) {
    assert_eq!(resp.status(), 429);
    assert!(
        resp.headers().contains_key("retry-after"),
        "a refused watcher is told when to retry"
    );
    let body: ErrorBody = resp.json().await.expect("error body");
    assert_eq!(body.code, ErrorCode::LimitExceeded);
    assert!(body.message.contains("--max-watchers"), "{}", body.message);
}

/// One cleartext HTTP/2 connection (prior knowledge), whose streams are the test's watchers.
async fn http2_connection(reg: &TestRegistry) -> SendRequest<Body> {
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", reg.port))
        .await
        .expect("connect");
    let (send, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .expect("HTTP/2 handshake");
    tokio::spawn(connection);
    send
}

fn http2_get(reg: &TestRegistry, path: &str) -> Request<Body> {
    Request::get(format!("{}{path}", reg.url()))
        .body(Body::empty())
        .expect("request")
}

async fn http2_send(send: &SendRequest<Body>, request: Request<Body>) -> Response<Body> {
    let mut send = send.clone();
    send.ready().await.expect("connection ready");
    send.send_request(request)
        .await
        .expect("HTTP/2 answer")
        .map(Body::new)
}

async fn error_code(resp: Response<Body>) -> (u16, ErrorCode) {
    let status = resp.status().as_u16();
    let bytes = axum::body::to_bytes(resp.into_body(), 64 * 1024)
        .await
        .expect("body");
    let body: ErrorBody = serde_json::from_slice(&bytes).expect("error body");
    (status, body.code)
}

#[tokio::test]
async fn blocking_reads_beyond_max_watchers_are_refused_with_limit_exceeded() {
    let reg = TestRegistry::start(&args("4")).await;
    let index = register(&reg, "w", "n1").await;
    let path = blocking_read_path("w", index, "30s");
    let held: Vec<_> = (0..4).map(|_| spawn_http1_read(&reg, &path)).collect();
    until_watchers(&reg, 4).await;

    let fifth = reqwest::get(format!("{}{path}", reg.url()))
        .await
        .expect("fifth");
    assert_refused_over_http1(fifth).await;
    assert_eq!(reg.limit_refusals("max-watchers").await, 1);

    // Reads that do not wait take no slot: a plain list, and a blocking read whose index is
    // already stale.
    let c = reg.client();
    c.members("w", None).await.expect("a plain list");
    let stale = reqwest::get(format!(
        "{}{}",
        reg.url(),
        blocking_read_path("w", index - 1, "30s")
    ))
    .await
    .expect("stale");
    assert_eq!(stale.status(), 200);
    assert_eq!(reg.limit_refusals("max-watchers").await, 1);

    // A change ends the four waits: their slots come back, and a new watcher is admitted.
    let changed = register(&reg, "w", "n2").await;
    for read in held {
        let resp = read.await.expect("task");
        assert_eq!(resp.status(), 200);
        let body: MembersResponse = resp.json().await.expect("list");
        assert_eq!(body.index, changed);
    }
    until_watchers(&reg, 0).await;
    let _admitted = spawn_http1_read(&reg, &blocking_read_path("w", changed, "30s"));
    until_watchers(&reg, 1).await;
    assert_eq!(reg.limit_refusals("max-watchers").await, 1);
}

#[tokio::test]
async fn http2_streams_and_http1_event_streams_share_one_bound() {
    let reg = TestRegistry::start(&args("4")).await;
    let index = register(&reg, "w", "n1").await;
    let path = blocking_read_path("w", index, "30s");

    // Three watchers on one HTTP/2 connection: two blocking reads and an event stream.
    let h2 = http2_connection(&reg).await;
    let reads: Vec<_> = (0..2)
        .map(|_| {
            let (h2, request) = (h2.clone(), http2_get(&reg, &path));
            tokio::spawn(async move { http2_send(&h2, request).await.status() })
        })
        .collect();
    let h2_events = http2_send(&h2, http2_get(&reg, "/v1/events")).await;
    assert_eq!(h2_events.status(), 200);
    // And one over HTTP/1.
    let h1_events = reqwest::get(format!("{}/v1/events", reg.url()))
        .await
        .expect("events");
    assert_eq!(h1_events.status(), 200);
    until_watchers(&reg, 4).await;

    // Full, over either protocol, for either kind of watcher.
    let refused = http2_send(&h2, http2_get(&reg, "/v1/events")).await;
    assert_eq!(
        error_code(refused).await,
        (429, ErrorCode::LimitExceeded),
        "an HTTP/2 event stream beyond the bound"
    );
    let refused = http2_send(&h2, http2_get(&reg, &path)).await;
    assert_eq!(
        error_code(refused).await,
        (429, ErrorCode::LimitExceeded),
        "an HTTP/2 blocking read beyond the bound"
    );
    let refused = reqwest::get(format!("{}/v1/events", reg.url()))
        .await
        .expect("events");
    assert_refused_over_http1(refused).await;
    assert_eq!(reg.limit_refusals("max-watchers").await, 3);

    // Everything else still answers on the same HTTP/2 connection.
    let health = http2_send(&h2, http2_get(&reg, "/health")).await;
    assert_eq!(health.status(), 200);

    register(&reg, "w", "n2").await;
    for read in reads {
        assert_eq!(read.await.expect("task"), 200);
    }
    until_watchers(&reg, 2).await;
    drop((h2_events, h1_events));
}

#[tokio::test]
async fn a_watcher_that_ends_gives_its_slot_back() {
    let reg = TestRegistry::start(&args("1")).await;
    let index = register(&reg, "w", "n1").await;

    // Its wait ends.
    let short = spawn_http1_read(&reg, &blocking_read_path("w", index, "300ms"));
    assert_eq!(short.await.expect("task").status(), 200);
    until_watchers(&reg, 0).await;

    // Its client resets an HTTP/2 stream: an event stream, then a blocking read.
    let h2 = http2_connection(&reg).await;
    let events = http2_send(&h2, http2_get(&reg, "/v1/events")).await;
    assert_eq!(events.status(), 200);
    until_watchers(&reg, 1).await;
    drop(events);
    until_watchers(&reg, 0).await;
    let read = {
        let (h2, request) = (
            h2.clone(),
            http2_get(&reg, &blocking_read_path("w", index, "30s")),
        );
        tokio::spawn(async move { http2_send(&h2, request).await })
    };
    until_watchers(&reg, 1).await;
    read.abort();
    until_watchers(&reg, 0).await;

    // Its HTTP/1 client goes away while it waits.
    let gone = spawn_http1_read(&reg, &blocking_read_path("w", index, "30s"));
    until_watchers(&reg, 1).await;
    gone.abort();
    until_watchers(&reg, 0).await;

    // Each time, the next watcher was admitted: nothing was refused.
    let events = http2_send(&h2, http2_get(&reg, "/v1/events")).await;
    assert_eq!(events.status(), 200);
    assert_eq!(reg.limit_refusals("max-watchers").await, 0);
}

#[tokio::test]
async fn a_change_wakes_only_the_blocking_reads_of_its_cluster() {
    let reg = TestRegistry::start(&args("4")).await;
    register(&reg, "a", "n1").await;
    let index_b = register(&reg, "b", "n1").await;
    let read_b = spawn_http1_read(&reg, &blocking_read_path("b", index_b, "30s"));
    until_watchers(&reg, 1).await;
    assert_eq!(metric(&reg, "rollcall_watch_wakeups_total").await, 0);

    // Five membership changes in cluster a: b's read neither returns nor wakes.
    for i in 2..7 {
        register(&reg, "a", &format!("n{i}")).await;
    }
    reg.client().leave("a", "n2").await.expect("leave");
    assert_eq!(
        metric(&reg, "rollcall_watch_wakeups_total").await,
        0,
        "changes in cluster a woke a blocking read of cluster b"
    );
    assert!(!read_b.is_finished(), "b's read returned on a's changes");

    // One change in b wakes it, once, and it returns well before its wait.
    let started = Instant::now();
    let changed = register(&reg, "b", "n2").await;
    let resp = tokio::time::timeout(Duration::from_secs(10), read_b)
        .await
        .expect("b's read returned on b's change")
        .expect("task");
    assert!(started.elapsed() < Duration::from_secs(25));
    let body: MembersResponse = resp.json().await.expect("list");
    assert_eq!(body.index, changed);
    assert_eq!(metric(&reg, "rollcall_watch_wakeups_total").await, 1);
    until_watchers(&reg, 0).await;
}
