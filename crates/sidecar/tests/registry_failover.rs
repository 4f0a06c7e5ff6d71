//! Several registry URLs: the protocol client and the sidecar fail over from a dead or
//! frozen registry to the next URL within one heartbeat interval, and say so once in the log;
//! an API error is an answer, never a reason to fail over; a redirect is followed only to a
//! configured URL, and the token never goes anywhere else.
//!
//! Two real `rollcall-registry` processes on loopback stand in for a registry's replicas.
//! They do not share their data (each has its own sled directory), which is enough to test
//! the client's mechanics: which registry a node appears in shows where its requests went.
//! The hostile redirecting server and the listener that records what reaches it are small
//! axum servers in the test: strangers on the network, not stand-ins for rollcall.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use nix::sys::signal::Signal;
use rollcall_protocol::{
    ClaimRequest, ClientError, ErrorCode, HeartbeatRequest, MemberRole, RegistryClient,
};

const CLUSTER: &str = "failover";
const TOKEN: &str = "s3cret-token";
/// The log line of a switch, from the protocol client.
const SWITCHED: &str = "switched to another registry URL";

fn heartbeat(address: &str) -> HeartbeatRequest {
    HeartbeatRequest {
        address: address.into(),
        role: MemberRole::Agent,
        status: None,
        raft_members: None,
        meta: Default::default(),
        raft: None,
    }
}

/// A client of `urls` that follows no redirect by itself, as the sidecar's, with one call's
/// budget `timeout`.
fn client_of(urls: &[String], token: Option<&str>, timeout: Duration) -> RegistryClient {
    let http = reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(Duration::from_secs(1))
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("http client");
    RegistryClient::with_bases(urls.to_vec(), token.map(str::to_string), http)
        .expect("valid URLs")
        .with_request_timeout(timeout)
}

fn dead_url() -> String {
    format!("http://127.0.0.1:{}", free_port())
}

#[tokio::test]
async fn a_running_sidecar_fails_over_within_one_interval_when_its_registry_is_killed() {
    let temp = tempfile::tempdir().expect("tempdir");
    let logs = temp.path();
    let mut first = RegistryProcess::start(&temp.path().join("first"), logs, &[]).await;
    let second = RegistryProcess::start(&temp.path().join("second"), logs, &[]).await;
    let urls = format!("{},{}", first.url(), second.url());
    let mut command = exec_sidecar(&urls, CLUSTER, "n1", &[]);
    command.arg("run").args(run_script("exec sleep 600"));
    let sidecar = ProcessGuard::spawn("n1", command, logs.join("n1.log"));
    poll_until(Duration::from_secs(15), "n1 in the first registry", || {
        first.listing(CLUSTER, "n1")
    })
    .await;
    assert!(
        second.listing(CLUSTER, "n1").await.is_none(),
        "while the first answers, the second hears nothing"
    );

    first.process.kill_all(); // SIGKILL
    let killed = Instant::now();
    // The next heartbeat comes within one interval; its refused connection costs nothing.
    // A second more for the poll's granularity and a loaded machine: a fail over that waited
    // for a request timeout (5 s) cannot pass.
    poll_until(
        INTERVAL + Duration::from_secs(1),
        "n1 in the second registry",
        || second.listing(CLUSTER, "n1"),
    )
    .await;
    let took = killed.elapsed();
    // The line is written once the answer is in, which may be just after the poll saw it.
    poll_until(Duration::from_secs(2), "the switch in the log", || {
        let sidecar = &sidecar;
        async move { sidecar.log_text().contains(SWITCHED).then_some(()) }
    })
    .await;
    let log = sidecar.log_text();
    let switches: Vec<&str> = log.lines().filter(|l| l.contains(SWITCHED)).collect();
    assert_eq!(switches.len(), 1, "one line per switch: {log}");
    assert!(
        switches[0].contains(&format!("from={}", first.url()))
            && switches[0].contains(&format!("to={}", second.url()))
            && switches[0].contains("cannot connect"),
        "the line names both URLs and why: {}",
        switches[0]
    );
    eprintln!("failed over {took:?} after the kill");
}

#[tokio::test]
async fn one_shot_commands_use_the_next_registry_when_the_first_never_started() {
    let temp = tempfile::tempdir().expect("tempdir");
    let logs = temp.path();
    let second = RegistryProcess::start(&temp.path().join("second"), logs, &[]).await;
    let urls = format!("{},{}", dead_url(), second.url());

    let mut claim = exec_sidecar(&urls, CLUSTER, "claimer", &[]);
    claim.arg("claim");
    let output = claim.output().expect("run claim");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    assert_eq!(stdout.lines().next(), Some("bootstrap"), "{stdout}");
    assert_eq!(stderr.matches(SWITCHED).count(), 1, "{stderr}");

    // A claim lists no member: one heartbeats straight to the second.
    second
        .client
        .heartbeat(CLUSTER, "claimer", &heartbeat("127.0.0.1:7001"))
        .await
        .expect("heartbeat");
    let mut members = exec_sidecar(&urls, CLUSTER, "reader", &[]);
    members.args(["members", "--format", "tsv"]);
    let output = members.output().expect("run members");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.starts_with("claimer\t"), "{stdout}");
    assert_eq!(
        String::from_utf8_lossy(&output.stderr)
            .matches(SWITCHED)
            .count(),
        1
    );
}

#[tokio::test]
async fn an_api_error_is_the_registrys_answer_and_no_reason_to_fail_over() {
    let temp = tempfile::tempdir().expect("tempdir");
    let logs = temp.path();
    // The first refuses writes without its token; the second would accept them.
    let first = RegistryProcess::start(&temp.path().join("first"), logs, &["--token", TOKEN]).await;
    let second = RegistryProcess::start(&temp.path().join("second"), logs, &[]).await;
    let client = client_of(
        &[first.url(), second.url()],
        Some("wrong-token"),
        Duration::from_secs(5),
    );
    let error = client
        .heartbeat(CLUSTER, "n1", &heartbeat("127.0.0.1:7001"))
        .await
        .expect_err("the first registry refuses the token");
    assert!(
        matches!(
            error,
            ClientError::Api {
                status: 401,
                code: ErrorCode::Unauthorized,
                ..
            }
        ),
        "{error}"
    );
    assert_eq!(client.base_url(), first.url(), "no switch on an answer");
    assert_unknown_to(&second).await;

    // The sidecar alike: the claim is refused (65), and it never tried the second.
    let mut claim = exec_sidecar(
        &format!("{},{}", first.url(), second.url()),
        CLUSTER,
        "n2",
        &[],
    );
    claim.args(["--token", "wrong-token", "claim"]);
    let output = claim.output().expect("run claim");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(65), "{stderr}");
    assert!(!stderr.contains(SWITCHED), "{stderr}");
    assert_unknown_to(&second).await;
}

/// Nothing of `CLUSTER` reached `registry`: it does not know the cluster.
async fn assert_unknown_to(registry: &RegistryProcess) {
    let answer = registry.client.cluster(CLUSTER).await;
    assert!(
        matches!(answer, Err(ClientError::Api { status: 404, .. })),
        "nothing reached it: {answer:?}"
    );
}

/// What reached a listener: the `Authorization` header of each request (`None`: absent).
type Seen = Arc<Mutex<Vec<Option<String>>>>;

/// A server on loopback that answers every request with `status` to `location` + the path,
/// and its URL.
async fn redirecting_server(status: u16, location: String) -> String {
    let app = axum::Router::new().fallback(move |uri: axum::http::Uri| {
        let location = format!(
            "{location}{}",
            uri.path_and_query().map_or("", |p| p.as_str())
        );
        async move {
            (
                axum::http::StatusCode::from_u16(status).expect("status"),
                [(axum::http::header::LOCATION, location)],
            )
        }
    });
    serve(app).await
}

/// A server on loopback that records each request's `Authorization` header and answers an
/// empty cluster list, and its URL.
async fn recording_server(seen: Seen) -> String {
    let app = axum::Router::new().fallback(move |headers: axum::http::HeaderMap| {
        let seen = seen.clone();
        async move {
            let authorization = headers
                .get(axum::http::header::AUTHORIZATION)
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
            seen.lock().expect("lock").push(authorization);
            axum::Json(serde_json::json!({ "clusters": [] }))
        }
    });
    serve(app).await
}

async fn serve(app: axum::Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("address"));
    tokio::spawn(async move { axum::serve(listener, app).await });
    url
}

#[tokio::test]
async fn a_redirect_to_an_unconfigured_url_is_refused_and_the_token_never_goes_there() {
    let temp = tempfile::tempdir().expect("tempdir");
    let second = RegistryProcess::start(&temp.path().join("second"), temp.path(), &[]).await;
    let seen: Seen = Arc::default();
    let stranger = recording_server(seen.clone()).await;
    let hostile = redirecting_server(307, stranger.clone()).await;

    let client = client_of(
        &[hostile.clone(), second.url()],
        Some(TOKEN),
        Duration::from_secs(5),
    );
    let error = client
        .clusters()
        .await
        .expect_err("the redirect is refused");
    match &error {
        ClientError::RedirectRefused { location, .. } => {
            assert!(
                location.starts_with(&stranger),
                "names the Location: {error}"
            )
        }
        other => panic!("expected a refused redirect, got {other}"),
    }
    assert_eq!(client.base_url(), hostile, "a refusal is no fail over");
    assert!(
        seen.lock().expect("lock").is_empty(),
        "nothing reached the stranger"
    );

    // A caller-built client that follows redirects itself does reach the stranger, but
    // reqwest drops the token on a cross-host redirect, and the answer is refused.
    let following = RegistryClient::with_http_client(
        format!("{hostile},{}", second.url()),
        Some(TOKEN.into()),
        reqwest::Client::new(),
    );
    let error = following
        .clusters()
        .await
        .expect_err("an unconfigured answer");
    assert!(
        matches!(error, ClientError::RedirectRefused { .. }),
        "{error}"
    );
    let seen = seen.lock().expect("lock").clone();
    assert_eq!(seen, [None], "the stranger got no token");
}

#[tokio::test]
async fn a_redirect_to_a_configured_url_is_followed_with_method_body_and_token() {
    let temp = tempfile::tempdir().expect("tempdir");
    // The second accepts writes only with the token: a claim it answers carried it.
    let second = RegistryProcess::start(
        &temp.path().join("second"),
        temp.path(),
        &["--token", TOKEN],
    )
    .await;
    let standby = redirecting_server(307, second.url()).await;
    let client = client_of(
        &[standby.clone(), second.url()],
        Some(TOKEN),
        Duration::from_secs(5),
    );
    let request = ClaimRequest {
        node: "n1".into(),
        address: "127.0.0.1:7001".into(),
        expect: 1,
        agent_only: false,
        started_as: None,
        raft: None,
    };
    // Until its startup grace is over the second answers `503 not_ready`, an answer too.
    let claim = poll_until(
        Duration::from_secs(10),
        "the claim, answered by the second after the redirect",
        || {
            let (client, request) = (&client, &request);
            async move {
                match client.claim(CLUSTER, request).await {
                    Ok(claim) => Some(claim),
                    Err(ClientError::Api {
                        code: ErrorCode::NotReady,
                        ..
                    }) => None,
                    Err(error) => panic!("{error}"),
                }
            }
        },
    )
    .await;
    assert_eq!(claim.role.as_str(), "bootstrap", "the body arrived");
    assert_eq!(
        client.base_url(),
        second.url(),
        "the redirect's target answered"
    );
}

#[tokio::test]
async fn a_frozen_registry_costs_a_call_at_most_its_share_of_the_request_timeout() {
    let temp = tempfile::tempdir().expect("tempdir");
    let logs = temp.path();
    let first = RegistryProcess::start(&temp.path().join("first"), logs, &[]).await;
    let second = RegistryProcess::start(&temp.path().join("second"), logs, &[]).await;
    let budget = Duration::from_secs(2);
    let client = client_of(&[first.url(), second.url()], None, budget);
    client.health().await.expect("the first answers");
    assert_eq!(client.base_url(), first.url());

    // Frozen, its kernel still accepts connections: only a timeout tells.
    first.process.signal(Signal::SIGSTOP);
    let started = Instant::now();
    let answer = client
        .heartbeat(CLUSTER, "n1", &heartbeat("127.0.0.1:7001"))
        .await;
    let took = started.elapsed();
    first.process.signal(Signal::SIGCONT);
    answer.expect("answered by the second");
    assert_eq!(client.base_url(), second.url());
    assert!(
        took >= budget / 2 && took < budget,
        "the frozen one had half of {budget:?}, the call took {took:?}"
    );
    second
        .listing(CLUSTER, "n1")
        .await
        .expect("the heartbeat went to the second");
}

#[tokio::test]
async fn a_blocking_read_fails_over_when_its_registry_dies_during_the_read() {
    let temp = tempfile::tempdir().expect("tempdir");
    let logs = temp.path();
    let mut first = RegistryProcess::start(&temp.path().join("first"), logs, &[]).await;
    let second = RegistryProcess::start(&temp.path().join("second"), logs, &[]).await;
    first
        .client
        .heartbeat(CLUSTER, "only-in-first", &heartbeat("127.0.0.1:7001"))
        .await
        .expect("heartbeat");
    for (n, node) in ["only-in-second-1", "only-in-second-2", "only-in-second-3"]
        .iter()
        .enumerate()
    {
        second
            .client
            .heartbeat(
                CLUSTER,
                node,
                &heartbeat(&format!("127.0.0.1:{}", 7002 + n)),
            )
            .await
            .expect("heartbeat");
    }
    let index = first.members(CLUSTER).await.expect("members").index;
    let client = client_of(&[first.url(), second.url()], None, Duration::from_secs(5));
    let wait = Duration::from_secs(8);
    let watch = {
        let client = client.clone();
        tokio::spawn(async move { client.watch_members(CLUSTER, None, index, wait).await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    first.process.kill_all(); // SIGKILL, in the middle of the read
    let killed = Instant::now();
    let answer = tokio::time::timeout(wait, watch)
        .await
        .expect("the read ends before its wait")
        .expect("task")
        .expect("answered by the second");
    assert!(
        killed.elapsed() < Duration::from_secs(2),
        "{:?}",
        killed.elapsed()
    );
    assert!(
        answer.members.iter().any(|m| m.node == "only-in-second-1"),
        "{answer:?}"
    );
    assert_eq!(client.base_url(), second.url());
}

/// One URL whose name has several addresses (a dead one first) needs no fail over of ours:
/// reqwest's connector tries the next address on a connection error. The name is resolved
/// by the test's own table (loopback has one address per name); the URL names no port, so
/// each address keeps its own.
#[tokio::test]
async fn a_name_with_several_addresses_is_tried_address_by_address() {
    let temp = tempfile::tempdir().expect("tempdir");
    let second = RegistryProcess::start(&temp.path().join("second"), temp.path(), &[]).await;
    let dead: std::net::SocketAddr = format!("127.0.0.1:{}", free_port())
        .parse()
        .expect("address");
    let live: std::net::SocketAddr = format!("127.0.0.1:{}", second.port)
        .parse()
        .expect("address");
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .resolve_to_addrs("registry.test", &[dead, live])
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("http client");
    let client = RegistryClient::with_bases(vec!["http://registry.test".into()], None, http)
        .expect("valid URL");
    let health = client.health().await.expect("the second address answers");
    assert_eq!(health.status, "ok");
}
