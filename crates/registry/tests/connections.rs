//! Connections that hold a slot without asking anything are closed, whatever they speak;
//! requests in flight are never cut; HTTP/2 connections are capped in streams; and `/health`
//! is answered when every connection slot is taken.
//!
//! Each test opens the kind of socket an abusive or dead client leaves behind and asserts that
//! the registry closes it (the read ends) within a bound far above the deadline, that the slot
//! serves a new client afterwards, and that the closing limit was counted.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use common::TestRegistry;
use hyper::Request;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rollcall_protocol::{HeartbeatRequest, MemberRole};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Far longer than any deadline the tests set, so that "closed within it" means "closed by a
/// deadline", not "closed in time".
const CLOSED_WITHIN: Duration = Duration::from_secs(10);

/// The HTTP/2 client connection preface.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// An empty SETTINGS frame: length 0, type 4, no flags, stream 0.
const EMPTY_SETTINGS: &[u8] = &[0, 0, 0, 4, 0, 0, 0, 0, 0];

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

async fn connect(reg: &TestRegistry) -> TcpStream {
    TcpStream::connect(("127.0.0.1", reg.port))
        .await
        .expect("connect")
}

/// Reads until the registry closes `stream`; panics if it is still open after
/// [`CLOSED_WITHIN`]. A reset counts as closed.
async fn closed_by_the_registry<S>(stream: &mut S, what: &str) -> Vec<u8>
where
    S: tokio::io::AsyncRead + Unpin,
{
    let mut seen = Vec::new();
    match tokio::time::timeout(CLOSED_WITHIN, stream.read_to_end(&mut seen)).await {
        Ok(_) => seen,
        Err(_) => panic!(
            "{what}: still open after {CLOSED_WITHIN:?} ({} bytes received)",
            seen.len()
        ),
    }
}

/// A socket that sent `sent` and then nothing is closed at the header deadline, and its slot
/// (the only one) serves a request afterwards.
async fn a_socket_that_sent_only(sent: &[u8], what: &str) {
    let reg = TestRegistry::start(&["--max-connections", "1", "--header-read-timeout", "1s"]).await;
    for attempt in 1.. {
        let mut idle = connect(&reg).await;
        idle.write_all(sent).await.expect("send");
        let seen = closed_by_the_registry(&mut idle, what).await;
        // The harness's own first connection may still hold the only slot for a moment; then
        // this socket went to the health reserve, which answers a silent one with a 503.
        if !seen.starts_with(b"HTTP/1.1 503") {
            break;
        }
        assert!(
            attempt < 3,
            "{what}: refused as over the limit {attempt} times"
        );
    }
    let served = common::eventually(Duration::from_secs(5), || async {
        reg.client().clusters().await.ok()
    })
    .await;
    assert!(served.is_some(), "the freed slot serves a new client");
    assert!(refusals(&reg, "header-read-timeout").await >= 1);
}

/// `rollcall_limit_refusals_total{limit}`, read once a connection slot is free to ask it (with
/// one slot, `TestRegistry::limit_refusals` may find it still held and be refused).
async fn refusals(reg: &TestRegistry, limit: &str) -> u64 {
    let text = common::eventually(Duration::from_secs(5), || async {
        let response = reqwest::get(format!("{}/metrics", reg.url())).await.ok()?;
        if response.status() != 200 {
            return None;
        }
        response.text().await.ok()
    })
    .await
    .expect("a connection slot is free to read /metrics");
    let series = format!("rollcall_limit_refusals_total{{limit=\"{limit}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&series))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no series {series:?} in /metrics"))
}

#[tokio::test]
async fn a_socket_that_sends_nothing_is_closed_at_the_header_deadline() {
    a_socket_that_sent_only(b"", "a silent socket").await;
}

#[tokio::test]
async fn a_partial_http2_preface_is_closed_at_the_header_deadline() {
    a_socket_that_sent_only(&H2_PREFACE[..10], "a partial HTTP/2 preface").await;
}

#[tokio::test]
async fn an_http2_preface_and_settings_without_a_request_are_closed_at_the_header_deadline() {
    let sent = [H2_PREFACE, EMPTY_SETTINGS].concat();
    a_socket_that_sent_only(&sent, "an HTTP/2 preface and SETTINGS").await;
}

#[tokio::test]
async fn a_partial_http1_head_is_still_closed_at_the_header_deadline() {
    a_socket_that_sent_only(
        b"GET /health HTTP/1.1\r\nHost: x\r\n",
        "a partial HTTP/1 head",
    )
    .await;
}

/// A registry in process serving HTTPS with a self-signed certificate for `localhost`, and a
/// client configuration that trusts it. `TestRegistry` asks `/health` over plain HTTP to know
/// it is up, so it cannot start this one.
struct TlsRegistry {
    port: u16,
    client: tokio_rustls::TlsConnector,
    _stop: tokio::sync::oneshot::Sender<()>,
    _temp: tempfile::TempDir,
}

impl TlsRegistry {
    fn start(args: &[&str]) -> TlsRegistry {
        use clap::Parser;
        let temp = tempfile::tempdir().expect("tempdir");
        let certified =
            rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).expect("cert");
        let cert = temp.path().join("cert.pem");
        let key = temp.path().join("key.pem");
        std::fs::write(&cert, certified.cert.pem()).expect("write cert");
        std::fs::write(&key, certified.key_pair.serialize_pem()).expect("write key");
        let data = temp.path().join("data");
        let mut argv: Vec<String> = [
            "rollcall-registry",
            "--data-dir",
            data.to_str().expect("UTF-8"),
            "--tls-cert",
            cert.to_str().expect("UTF-8"),
            "--tls-key",
            key.to_str().expect("UTF-8"),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        argv.extend(args.iter().map(|s| s.to_string()));
        let config = rollcall_registry::config::Cli::try_parse_from(&argv)
            .expect("arguments")
            .serve
            .validate()
            .expect("configuration");
        // Bound before the registry runs: connections wait in the backlog until it accepts.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.set_nonblocking(true).expect("nonblocking");
        let port = listener.local_addr().expect("local addr").port();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
                let shutdown = async move {
                    let _ = stopped.await;
                };
                if let Err(e) = rollcall_registry::run(config, listener, shutdown).await {
                    eprintln!("TLS registry stopped: {e:#}");
                }
            });
        });
        let mut roots = rustls::RootCertStore::empty();
        roots.add(certified.cert.der().clone()).expect("root");
        let client = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
        TlsRegistry {
            port,
            client: tokio_rustls::TlsConnector::from(Arc::new(client)),
            _stop: stop,
            _temp: temp,
        }
    }

    async fn handshake(&self) -> tokio_rustls::client::TlsStream<TcpStream> {
        let tcp = TcpStream::connect(("127.0.0.1", self.port))
            .await
            .expect("connect");
        let name = rustls_pki_types::ServerName::try_from("localhost").expect("name");
        tokio::time::timeout(CLOSED_WITHIN, self.client.connect(name, tcp))
            .await
            .expect("handshake in time")
            .expect("handshake")
    }
}

#[tokio::test]
async fn a_tls_client_silent_after_its_handshake_is_closed_at_the_header_deadline() {
    let reg = TlsRegistry::start(&["--max-connections", "1", "--header-read-timeout", "1s"]);
    let mut silent = reg.handshake().await;
    closed_by_the_registry(&mut silent, "a silent TLS client").await;
    // The slot is free again: a TLS client that asks is answered.
    let mut asking = reg.handshake().await;
    asking
        .write_all(b"GET /health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .expect("ask");
    let mut answer = Vec::new();
    tokio::time::timeout(CLOSED_WITHIN, asking.read_to_end(&mut answer))
        .await
        .expect("answered in time")
        .expect("answer");
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 200"), "got {answer:?}");
}

/// An HTTP/2 (prior knowledge) client on a new connection; its connection task resolves
/// when the registry closes the connection.
async fn http2_client(
    reg: &TestRegistry,
) -> (
    hyper::client::conn::http2::SendRequest<Body>,
    tokio::task::JoinHandle<()>,
) {
    let io = TokioIo::new(connect(reg).await);
    let (sender, connection) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
        .await
        .expect("HTTP/2 handshake");
    let task = tokio::spawn(async move {
        let _ = connection.await;
    });
    (sender, task)
}

async fn http2_get(
    sender: &mut hyper::client::conn::http2::SendRequest<Body>,
    reg: &TestRegistry,
    path: &str,
) -> (u16, String) {
    let request = Request::get(format!("http://127.0.0.1:{}{path}", reg.port))
        .body(Body::empty())
        .expect("request");
    let response = sender.send_request(request).await.expect("response");
    let status = response.status().as_u16();
    let body = axum::body::to_bytes(Body::new(response.into_body()), 1 << 20)
        .await
        .expect("body");
    (status, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test]
async fn an_idle_http2_connection_is_closed_after_the_idle_timeout() {
    let reg = TestRegistry::start(&["--idle-timeout", "1s"]).await;
    let (mut sender, connection) = http2_client(&reg).await;
    assert_eq!(http2_get(&mut sender, &reg, "/health").await.0, 200);
    tokio::time::timeout(CLOSED_WITHIN, connection)
        .await
        .expect("the idle HTTP/2 connection was closed")
        .expect("connection task");
    assert!(refusals(&reg, "idle-timeout").await >= 1);
}

#[tokio::test]
async fn a_blocking_read_longer_than_the_idle_timeout_is_not_cut() {
    let reg = TestRegistry::start(&["--idle-timeout", "1s"]).await;
    let c = reg.client();
    c.heartbeat("watched", "n1", &hb("10.0.0.1:1"))
        .await
        .expect("register");
    let index = c.members("watched", None).await.expect("list").index;
    // HTTP/2: the read waits three idle timeouts for a change that never comes.
    let (mut sender, _connection) = http2_client(&reg).await;
    let path = format!("/v1/clusters/watched/members?index={index}&wait=3s");
    let (status, body) = http2_get(&mut sender, &reg, &path).await;
    assert_eq!(status, 200, "{body}");
    // HTTP/1, through the typed client.
    let answer = c
        .watch_members("watched", None, index, Duration::from_secs(3))
        .await
        .expect("an HTTP/1 blocking read is not cut either");
    assert_eq!(answer.index, index);
}

#[tokio::test]
async fn an_event_stream_quiet_for_longer_than_the_idle_timeout_is_not_cut() {
    let reg = TestRegistry::start(&["--idle-timeout", "1s"]).await;
    let (mut sender, _connection) = http2_client(&reg).await;
    let request = Request::get(format!("http://127.0.0.1:{}/v1/events", reg.port))
        .body(Body::empty())
        .expect("request");
    let response = sender.send_request(request).await.expect("response");
    assert_eq!(response.status(), 200);
    let mut events = Body::new(response.into_body()).into_data_stream();
    // Nothing happens for three idle timeouts; then a change must still reach the stream.
    tokio::time::sleep(Duration::from_secs(3)).await;
    reg.client()
        .heartbeat("streamed", "n1", &hb("10.0.0.1:1"))
        .await
        .expect("register");
    use futures_util::StreamExt;
    let mut seen = String::new();
    while !seen.contains("event: change") {
        let chunk = tokio::time::timeout(CLOSED_WITHIN, events.next())
            .await
            .expect("an event in time")
            .expect("the stream is still open")
            .expect("a chunk");
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
}

/// The value of SETTINGS_MAX_CONCURRENT_STREAMS in the server's first SETTINGS frame.
async fn advertised_max_concurrent_streams(stream: &mut TcpStream) -> Option<u32> {
    loop {
        let mut header = [0u8; 9];
        stream.read_exact(&mut header).await.expect("frame header");
        let length = u32::from_be_bytes([0, header[0], header[1], header[2]]) as usize;
        let mut payload = vec![0u8; length];
        stream
            .read_exact(&mut payload)
            .await
            .expect("frame payload");
        let (kind, ack) = (header[3], header[4] & 1 == 1);
        if kind == 4 && !ack {
            return payload.chunks_exact(6).find_map(|setting| {
                (u16::from_be_bytes([setting[0], setting[1]]) == 3)
                    .then(|| u32::from_be_bytes([setting[2], setting[3], setting[4], setting[5]]))
            });
        }
    }
}

#[tokio::test]
async fn http2_settings_advertise_the_stream_cap() {
    let reg = TestRegistry::start(&["--max-streams-per-connection", "7"]).await;
    let mut raw = connect(&reg).await;
    raw.write_all(&[H2_PREFACE, EMPTY_SETTINGS].concat())
        .await
        .expect("preface");
    let cap = tokio::time::timeout(CLOSED_WITHIN, advertised_max_concurrent_streams(&mut raw))
        .await
        .expect("SETTINGS in time");
    assert_eq!(cap, Some(7));
    // And by default: 100.
    let reg = TestRegistry::start(&[]).await;
    let mut raw = connect(&reg).await;
    raw.write_all(&[H2_PREFACE, EMPTY_SETTINGS].concat())
        .await
        .expect("preface");
    let cap = tokio::time::timeout(CLOSED_WITHIN, advertised_max_concurrent_streams(&mut raw))
        .await
        .expect("SETTINGS in time");
    assert_eq!(cap, Some(100));
}

/// Every connection slot of `reg` (it has `max_connections`) held by an idle keep-alive
/// connection, each proven to hold a slot by a `200` (the health reserve refuses the path).
async fn hold_every_slot(reg: &TestRegistry, max_connections: usize) -> Vec<TcpStream> {
    let mut held = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while held.len() < max_connections {
        assert!(
            tokio::time::Instant::now() < deadline,
            "could not take every connection slot"
        );
        let mut socket = connect(reg).await;
        socket
            .write_all(b"GET /v1/clusters HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .expect("ask");
        let mut answer = [0u8; 4096];
        let n = socket.read(&mut answer).await.expect("answer");
        // A 503: a connection of the harness still held a slot; it is going away.
        if answer[..n].starts_with(b"HTTP/1.1 200") {
            held.push(socket);
        }
    }
    held
}

#[tokio::test]
async fn health_is_answered_while_every_connection_slot_is_held() {
    let reg =
        TestRegistry::start(&["--max-connections", "2", "--header-read-timeout", "30s"]).await;
    let held = hold_every_slot(&reg, 2).await;
    // /health is answered from the reserve, with the registry's real answer, several times.
    for _ in 0..3 {
        let health = reg
            .client()
            .health()
            .await
            .expect("/health with every slot held");
        assert_eq!(health.status, "ok");
    }
    // Anything else is the connection limit's 503, and a reserve connection is closed after
    // its answer.
    let other = reqwest::get(format!("{}/v1/clusters", reg.url()))
        .await
        .expect("an answer");
    assert_eq!(other.status(), 503);
    assert_eq!(
        other.headers().get("connection").map(|v| v.as_bytes()),
        Some(&b"close"[..])
    );
    let other = reqwest::Client::new()
        .post(format!("{}/health", reg.url()))
        .send()
        .await
        .expect("an answer");
    assert_eq!(other.status(), 503);
    // A socket that asks nothing of the reserve gets the 503 too.
    let mut silent = connect(&reg).await;
    let mut answer = Vec::new();
    tokio::time::timeout(CLOSED_WITHIN, silent.read_to_end(&mut answer))
        .await
        .expect("a silent reserve connection is answered and closed")
        .expect("read");
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 503"), "got {answer:?}");
    assert!(answer.contains("limit_exceeded"), "got {answer:?}");
    drop(held);
    assert!(refusals(&reg, "max-connections").await >= 3);
}
