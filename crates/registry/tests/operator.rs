//! What operators and watching tools use: blocking reads, `/metrics`, the event stream, the
//! reset subcommand.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::{after_grace, TestRegistry, FAST};
use rollcall_protocol::{
    ClaimRequest, GrantedRole, HeartbeatRequest, MemberRole, MembersResponse, INDEX_HEADER,
};

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

async fn watch(
    reg: &TestRegistry,
    cluster: &str,
    index: u64,
    wait: &str,
) -> (Duration, MembersResponse, u64) {
    let started = Instant::now();
    let resp = reqwest::get(format!(
        "{}/v1/clusters/{cluster}/members?index={index}&wait={wait}",
        reg.url()
    ))
    .await
    .expect("watch");
    assert_eq!(resp.status(), 200);
    let header: u64 = resp.headers()[INDEX_HEADER]
        .to_str()
        .expect("ascii")
        .parse()
        .expect("number");
    let body: MembersResponse = resp.json().await.expect("json");
    (started.elapsed(), body, header)
}

#[tokio::test]
async fn watch_returns_at_once_on_a_stale_index() {
    let reg = TestRegistry::start(FAST).await;
    reg.client()
        .heartbeat("w", "n1", &hb("10.0.0.1:1"))
        .await
        .expect("register");
    let current = reg.client().members("w", None).await.expect("list").index;
    let (took, body, header) = watch(&reg, "w", current - 1, "10s").await;
    assert!(took < Duration::from_millis(500), "took {took:?}");
    assert_eq!(body.index, current);
    assert_eq!(header, current);
}

#[tokio::test]
async fn watch_blocks_on_the_current_index_until_the_wait_ends() {
    let reg = TestRegistry::start(&[
        "--ttl",
        "60s",
        "--interval",
        "1s",
        "--startup-grace",
        "1s",
        "--quiet-period",
        "1s",
    ])
    .await;
    reg.client()
        .heartbeat("w", "n1", &hb("10.0.0.1:1"))
        .await
        .expect("register");
    let current = reg.client().members("w", None).await.expect("list").index;
    // Renewals and changes in other clusters do not end the wait.
    let c = reg.client();
    let noise = tokio::spawn(async move {
        for i in 0..10 {
            let _ = c.heartbeat("w", "n1", &hb("10.0.0.1:1")).await;
            let _ = c
                .heartbeat("other", &format!("x{i}"), &hb("10.0.0.9:1"))
                .await;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let (took, body, _) = watch(&reg, "w", current, "1500ms").await;
    noise.abort();
    assert!(
        took >= Duration::from_millis(1450),
        "returned after {took:?} though nothing changed"
    );
    assert!(took < Duration::from_millis(3000), "took {took:?}");
    assert_eq!(body.index, current);
}

#[tokio::test]
async fn watch_returns_within_a_second_of_a_change() {
    let reg = TestRegistry::start(FAST).await;
    reg.client()
        .heartbeat("w", "n1", &hb("10.0.0.1:1"))
        .await
        .expect("register");
    let current = reg.client().members("w", None).await.expect("list").index;
    let c = reg.client();
    let changed_at = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(400)).await;
        c.heartbeat("w", "n2", &hb("10.0.0.2:1"))
            .await
            .expect("register n2");
        Instant::now()
    });
    let started = Instant::now();
    let (_, body, _) = watch(&reg, "w", current, "30s").await;
    let returned = Instant::now();
    let changed_at = changed_at.await.expect("task");
    assert!(returned - started < Duration::from_secs(5));
    assert!(returned.saturating_duration_since(changed_at) < Duration::from_secs(1));
    assert!(body.index > current);
    assert!(body.members.iter().any(|m| m.node == "n2"));
}

#[tokio::test]
async fn watch_wakes_on_expiry() {
    let reg = TestRegistry::start(FAST).await;
    reg.client()
        .heartbeat("w", "n1", &hb("10.0.0.1:1"))
        .await
        .expect("register");
    let current = reg.client().members("w", None).await.expect("list").index;
    let (took, body, _) = watch(&reg, "w", current, "10s").await;
    assert!(body.members.is_empty(), "the wake-up was the expiry");
    assert!(took < Duration::from_secs(3), "TTL is 2s; took {took:?}");
}

#[tokio::test]
async fn bad_watch_parameters_are_refused() {
    let reg = TestRegistry::start(FAST).await;
    for q in [
        "index=x",
        "index=1&wait=forever",
        "index=1&wait=1m30s",
        "index=9223372036854775808",
        "index=-1",
    ] {
        let resp = reqwest::get(format!("{}/v1/clusters/w/members?{q}", reg.url()))
            .await
            .expect("get");
        assert_eq!(resp.status(), 400, "{q}");
    }
}

/// Reads a counter or gauge from Prometheus text; 0 when the series is absent.
fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(series)
                .and_then(|rest| rest.strip_prefix(' '))
                .map(|v| v.trim().parse::<f64>().expect("number"))
        })
        .unwrap_or(0.0)
}

#[tokio::test]
async fn metrics_counters_move_with_the_traffic() {
    let reg = TestRegistry::start(FAST).await;
    after_grace(&reg).await;
    let scrape = || reg.get_text("/metrics");
    let before = scrape().await;
    let c = reg.client();
    for i in 0..5 {
        c.heartbeat("m", &format!("n{i}"), &hb(&format!("10.0.0.{i}:1")))
            .await
            .expect("register");
    }
    for _ in 0..3 {
        c.heartbeat("m", "n0", &hb("10.0.0.0:1"))
            .await
            .expect("renew");
    }
    c.claim(
        "fresh",
        &ClaimRequest {
            node: "a".into(),
            address: "a:1".into(),
            expect: 3,
            agent_only: false,
            started_as: None,
            raft: None,
        },
    )
    .await
    .expect("claim");
    c.claim(
        "fresh",
        &ClaimRequest {
            node: "b".into(),
            address: "b:1".into(),
            expect: 3,
            agent_only: false,
            started_as: None,
            raft: None,
        },
    )
    .await
    .expect("claim");
    c.leave("m", "n4").await.expect("leave");
    let _ = reqwest::get(format!("{}/v1/clusters/m/members?role=nobody", reg.url())).await;
    let after = scrape().await;

    let delta = |series: &str| metric(&after, series) - metric(&before, series);
    assert_eq!(
        delta(r#"rollcall_heartbeats_total{result="registered"}"#),
        5.0
    );
    assert_eq!(delta(r#"rollcall_heartbeats_total{result="renewed"}"#), 3.0);
    assert_eq!(delta(r#"rollcall_claims_total{result="bootstrap"}"#), 1.0);
    assert_eq!(delta(r#"rollcall_claims_total{result="server"}"#), 1.0);
    assert_eq!(delta("rollcall_leaves_total"), 1.0);
    assert_eq!(
        delta(
            r#"rollcall_http_requests_total{method="PUT",route="/v1/clusters/{cluster}/members/{node}",status="200"}"#
        ),
        8.0
    );
    assert_eq!(
        delta(
            r#"rollcall_http_requests_total{method="GET",route="/v1/clusters/{cluster}/members",status="400"}"#
        ),
        1.0
    );
    assert_eq!(metric(&after, r#"rollcall_live_members{cluster="m"}"#), 4.0);
    assert!(
        metric(&after, "rollcall_storage_flush_seconds_count") >= 8.0,
        "every registration and claim waited for a flush"
    );
    assert!(after.contains("rollcall_http_request_duration_seconds_bucket"));

    // Expiry is counted too (TTL 2s).
    let expired = common::eventually(Duration::from_secs(4), || async {
        let text = scrape().await;
        (metric(&text, "rollcall_expiries_total") - metric(&before, "rollcall_expiries_total")
            >= 4.0)
            .then_some(())
    })
    .await;
    assert!(
        expired.is_some(),
        "four members should have expired and been counted"
    );
}

#[tokio::test]
async fn the_event_stream_announces_changes() {
    let reg = TestRegistry::start(FAST).await;
    let mut resp = reqwest::get(format!("{}/v1/events", reg.url()))
        .await
        .expect("events");
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let c = reg.client();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(200)).await;
        c.heartbeat("e", "n1", &hb("10.0.0.1:1"))
            .await
            .expect("register");
    });
    let mut seen = String::new();
    let deadline = Instant::now() + Duration::from_secs(3);
    while !seen.contains("event: change") {
        let left = deadline.saturating_duration_since(Instant::now());
        let chunk = tokio::time::timeout(left, resp.chunk())
            .await
            .expect("an event within 3s")
            .expect("chunk");
        seen.push_str(&String::from_utf8_lossy(&chunk.expect("stream open")));
    }
}

#[tokio::test]
async fn the_grafana_dashboard_only_uses_metrics_the_registry_exports() {
    let reg = TestRegistry::start(FAST).await;
    after_grace(&reg).await;
    let c = reg.client();
    c.heartbeat("g", "n1", &hb("10.0.0.1:1"))
        .await
        .expect("register");
    c.heartbeat("g", "n1", &hb("10.0.0.1:1"))
        .await
        .expect("renew");
    c.claim(
        "g2",
        &ClaimRequest {
            node: "a".into(),
            address: "a:1".into(),
            expect: 1,
            agent_only: false,
            started_as: None,
            raft: None,
        },
    )
    .await
    .expect("claim");
    c.leave("g", "n1").await.expect("leave");
    c.heartbeat("g", "n2", &hb("10.0.0.2:1"))
        .await
        .expect("register");
    // Wait for n2 to expire, so the expiry counter exists.
    tokio::time::sleep(Duration::from_millis(2600)).await;
    let scrape = reg.get_text("/metrics").await;
    let dashboard = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../docs/grafana/rollcall.json"
    ))
    .expect("dashboard json");
    let _: serde_json::Value = serde_json::from_str(&dashboard).expect("valid JSON");
    let mut names: Vec<&str> = dashboard
        .match_indices("rollcall_")
        .map(|(i, _)| {
            let rest = &dashboard[i..];
            let end = rest
                .find(|ch: char| !(ch.is_ascii_alphanumeric() || ch == '_'))
                .unwrap_or(rest.len());
            &rest[..end]
        })
        .filter(|n| n.len() > "rollcall_".len() && *n != "rollcall_registry")
        .collect();
    names.sort();
    names.dedup();
    assert!(names.len() >= 8, "{names:?}");
    for name in names {
        assert!(
            scrape.contains(name),
            "the dashboard uses {name}, which /metrics does not export"
        );
    }
}

#[tokio::test]
async fn a_wait_longer_than_allowed_is_cut_to_the_maximum() {
    let reg = TestRegistry::start(&["--max-watch-wait", "1s"]).await;
    reg.client()
        .heartbeat("w", "n1", &hb("10.0.0.1:1"))
        .await
        .expect("register");
    let current = reg.client().members("w", None).await.expect("list").index;
    let (took, _, _) = watch(&reg, "w", current, "10m").await;
    assert!(
        took >= Duration::from_millis(950) && took < Duration::from_secs(3),
        "took {took:?}"
    );
}

#[tokio::test]
async fn the_openapi_document_covers_every_json_route() {
    let reg = TestRegistry::start(FAST).await;
    let doc: serde_json::Value = reqwest::get(format!("{}/openapi.json", reg.url()))
        .await
        .expect("get")
        .json()
        .await
        .expect("json");
    assert!(doc["openapi"].as_str().expect("version").starts_with("3.1"));
    let paths = doc["paths"].as_object().expect("paths");
    for (path, methods) in [
        (
            "/v1/clusters/{cluster}/members/{node}",
            &["get", "put", "delete"][..],
        ),
        ("/v1/clusters/{cluster}/members", &["get"]),
        ("/v1/clusters/{cluster}/claims", &["post"]),
        ("/v1/clusters/{cluster}", &["get"]),
        ("/v1/clusters", &["get"]),
        ("/members", &["get"]),
        ("/health", &["get"]),
        ("/metrics", &["get"]),
    ] {
        for m in methods {
            assert!(
                paths.get(path).and_then(|p| p.get(*m)).is_some(),
                "{m} {path} is not documented"
            );
        }
    }
    // The patterns are the validators' own.
    let address =
        &doc["components"]["schemas"]["HeartbeatRequest"]["properties"]["address"]["pattern"];
    assert_eq!(
        address.as_str(),
        Some(rollcall_protocol::validate::ADDRESS_PATTERN)
    );
}

/// `rollcall-registry reset` (what an operator runs through `docker exec`): refused with 65
/// while a member is live, done with 0 once it left; the next claim bootstraps generation 2.
#[tokio::test]
async fn the_reset_subcommand_resets_a_cluster_and_says_when_it_refuses() {
    let reg = TestRegistry::start(&[
        "--token",
        "op-token",
        "--startup-grace",
        "500ms",
        "--interval",
        "500ms",
    ])
    .await;
    common::after_grace(&reg).await;
    let c = reg.client_with_token("op-token");
    let claim = |node: &str| ClaimRequest {
        node: node.into(),
        address: format!("{node}:8300"),
        expect: 3,
        agent_only: false,
        started_as: None,
        raft: None,
    };
    let first = c.claim("ops", &claim("n1")).await.expect("claim");
    assert_eq!(first.role, GrantedRole::Bootstrap);
    c.heartbeat("ops", "n1", &hb("n1:8300"))
        .await
        .expect("heartbeat");
    let reset = |extra: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_rollcall-registry"))
            .args(["reset", "ops", "--generation", "1", "--reason", "test"])
            .args(extra)
            .args(["--url", &reg.url(), "--token", "op-token"])
            .output()
            .expect("run rollcall-registry reset")
    };
    let generation = std::process::Command::new(env!("CARGO_BIN_EXE_rollcall-registry"))
        .args(["generation", "ops", "--url", &reg.url()])
        .output()
        .expect("run rollcall-registry generation");
    assert_eq!(generation.status.code(), Some(0), "{generation:?}");
    assert_eq!(String::from_utf8_lossy(&generation.stdout).trim(), "1");
    let refused = reset(&[]);
    assert_eq!(refused.status.code(), Some(65), "{refused:?}");
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(
        said.contains("members_live") && said.contains("n1"),
        "{said}"
    );
    c.leave("ops", "n1").await.expect("leave");
    let done = reset(&[]);
    assert_eq!(done.status.code(), Some(0), "{done:?}");
    let answer: serde_json::Value = serde_json::from_slice(&done.stdout).expect("JSON on stdout");
    assert_eq!(answer["next_generation"], 2);
    let next = c.claim("ops", &claim("n2")).await.expect("claim");
    assert_eq!(next.role, GrantedRole::Bootstrap);
    assert_eq!(next.raft.map(|r| r.generation), Some(2));
}

/// Requests are traced (method, URI, status, latency) whenever the log filter lets debug lines
/// through at startup, for the whole log or for tower-http alone; below that the layer is not
/// built at all (bench/analysis.md, change 17).
#[tokio::test]
async fn requests_are_traced_when_the_filter_lets_debug_lines_through() {
    for filter in ["debug", "info,tower_http=debug"] {
        let reg = TestRegistry::start_logged(&[], filter).await;
        reg.client()
            .heartbeat("traced", "n1", &hb("10.0.0.1:1"))
            .await
            .expect("heartbeat");
        let log = common::eventually(Duration::from_secs(5), || async {
            let log = reg.log_text();
            log.contains("finished processing request").then_some(log)
        })
        .await
        .unwrap_or_else(|| panic!("with {filter}, no request was traced: {}", reg.log_text()));
        assert!(
            log.lines()
                .any(|l| l.contains("finished processing request")
                    && l.contains("/v1/clusters/traced/members/n1")
                    && l.contains("200")),
            "with {filter}, the heartbeat's trace names its URI and status: {log}"
        );
    }
}
