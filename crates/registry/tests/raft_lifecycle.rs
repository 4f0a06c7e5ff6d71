//! A raft that lives, as the registry sees it over HTTP: the leader's view and the absence
//! evidence answered to it, the slot of a server the leader reports disconnected, agents told
//! `server_slot_open`, a raft lost past `--raft-lost-after`, and the operator's resize (its
//! compare-and-set, its refusals, its subcommand, and that it survives a restart).
//!
//! Short TTLs and thresholds (a TTL of 1 s, `--raft-lost-after` 2 s) keep each test within a
//! few seconds; the exact arithmetic of absence is pinned on a paused clock in
//! `membership/tests.rs`.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::{after_grace, TestRegistry, FAST};
use rollcall_protocol::{
    AgentStatus, ClaimRequest, ClientError, ErrorCode, GrantedRole, HeartbeatRequest, MemberRole,
    RaftChangeKind, RaftMember, RegistryClient,
};

fn hb(node: &str, role: MemberRole) -> HeartbeatRequest {
    HeartbeatRequest {
        raft_members: None,
        address: format!("{node}:8300"),
        role,
        status: None,
        meta: BTreeMap::new(),
        raft: None,
    }
}

/// The leader's heartbeat: the raft's members by name (id `id-<name>`), `down` reported
/// disconnected for 600 ms (more than FAST's interval).
fn leader_hb(node: &str, raft: &[&str], down: &[&str]) -> HeartbeatRequest {
    let mut request = hb(node, MemberRole::Server);
    request.status = Some(AgentStatus {
        in_raft: Some(true),
        is_leader: Some(true),
        ..Default::default()
    });
    request.raft_members = Some(
        raft.iter()
            .map(|name| RaftMember {
                id: format!("id-{name}"),
                name: name.to_string(),
                peer_urls: vec![format!("http://{name}:2380")],
                learner: false,
                connected: Some(!down.contains(name)),
                disconnected_for_ms: down.contains(name).then_some(600),
            })
            .collect(),
    );
    request
}

fn claim(node: &str) -> ClaimRequest {
    ClaimRequest {
        node: node.into(),
        address: format!("{node}:8300"),
        expect: 3,
        agent_only: false,
        started_as: None,
        raft: None,
    }
}

fn absences(answer: &rollcall_protocol::HeartbeatResponse) -> BTreeMap<String, u64> {
    answer
        .absent
        .iter()
        .map(|a| (a.node.clone(), a.absent_for_ms))
        .collect()
}

/// Inside the startup grace the leader is told nobody is absent; past it, the names of the raft
/// that are not live here, counted at most from the grace's end; never a live name or itself.
#[tokio::test]
async fn the_leader_learns_who_is_absent_only_past_the_grace() {
    let reg = TestRegistry::start(&[
        "--ttl",
        "1s",
        "--interval",
        "250ms",
        "--startup-grace",
        "1s",
        "--quiet-period",
        "1s",
    ])
    .await;
    let c = reg.client();
    let raft = ["n1", "n2", "n3", "n4"];
    c.heartbeat("c", "n2", &hb("n2", MemberRole::Server))
        .await
        .expect("n2");
    let answer = c
        .heartbeat("c", "n1", &leader_hb("n1", &raft, &[]))
        .await
        .expect("leader");
    let uptime = c.health().await.expect("health").uptime_ms;
    assert!(
        uptime < 1000,
        "the test began after the grace ({uptime} ms)"
    );
    assert!(answer.absent.is_empty(), "inside the grace: {answer:?}");
    // n4 stays live; n2 stops (it expires 1 s after its heartbeat); n3 was never seen.
    let started = Instant::now();
    let answer = loop {
        c.heartbeat("c", "n4", &hb("n4", MemberRole::Server))
            .await
            .expect("n4");
        let answer = c
            .heartbeat("c", "n1", &leader_hb("n1", &raft, &[]))
            .await
            .expect("leader");
        let absent = absences(&answer);
        if absent.contains_key("n2") {
            break answer;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "n2 never absent: {absent:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let uptime = c.health().await.expect("health").uptime_ms;
    let absent = absences(&answer);
    assert_eq!(
        absent.keys().collect::<Vec<_>>(),
        ["n2", "n3"],
        "the live n4 and the reporter n1 are never absent"
    );
    // Both were last seen (or never) before the grace ended: counted from its end.
    for (node, ms) in &absent {
        assert!(
            *ms <= uptime.saturating_sub(1000),
            "{node} absent for {ms} ms, {uptime} ms after the start and a 1 s grace"
        );
    }
    let detail = c.cluster("c").await.expect("cluster");
    let view = detail.raft_view.expect("the leader's view");
    assert_eq!(view.reporter, "n1");
    assert_eq!(view.members.len(), 4);
}

/// Three servers fill expect=3 until the leader reports one disconnected: then an agent is told
/// a slot is open and a new node is told `server`; the leader's next view without it is a
/// change, logged and counted.
#[tokio::test]
async fn a_server_reported_disconnected_frees_its_slot_for_a_replacement() {
    let reg = TestRegistry::start(FAST).await;
    after_grace(&reg).await;
    let c = reg.client();
    let raft = ["n1", "n2", "n3"];
    assert_eq!(
        c.claim("c", &claim("n1")).await.expect("n1").role,
        GrantedRole::Bootstrap
    );
    c.heartbeat("c", "n1", &leader_hb("n1", &raft, &[]))
        .await
        .expect("leader");
    for node in ["n2", "n3"] {
        assert_eq!(
            c.claim("c", &claim(node)).await.expect("claim").role,
            GrantedRole::Server
        );
        c.heartbeat("c", node, &hb(node, MemberRole::Server))
            .await
            .expect("heartbeat");
    }
    let agent = hb("a1", MemberRole::Agent);
    assert!(
        !c.heartbeat("c", "a1", &agent)
            .await
            .expect("agent")
            .server_slot_open
    );
    assert_eq!(
        c.claim("c", &claim("n4")).await.expect("n4").role,
        GrantedRole::Agent
    );
    c.leave("c", "n4").await.expect("leave");

    // n3 stops heartbeating; 800 ms later the leader has seen it gone for 600 ms (n2 stays).
    tokio::time::sleep(Duration::from_millis(800)).await;
    c.heartbeat("c", "n2", &hb("n2", MemberRole::Server))
        .await
        .expect("n2");
    c.heartbeat("c", "n1", &leader_hb("n1", &raft, &["n3"]))
        .await
        .expect("leader");
    // A running agent keeps its gateway while the dead voter is still in the raft: the raft
    // has no room for it until the leader removes that member.
    assert!(
        !c.heartbeat("c", "a1", &agent)
            .await
            .expect("agent")
            .server_slot_open
    );
    let replacement = c.claim("c", &claim("n4")).await.expect("n4");
    assert_eq!(replacement.role, GrantedRole::Server);
    assert!(
        replacement.reason.contains("reports disconnected"),
        "{}",
        replacement.reason
    );

    // The leader removed n3: now the raft has room, and an agent is told so (n4 has not
    // started yet, and holds its slot by its claim: a slot for the agent only after a resize).
    c.heartbeat("c", "n1", &leader_hb("n1", &["n1", "n2"], &[]))
        .await
        .expect("leader");
    c.leave("c", "n4").await.expect("leave");
    c.leave("c", "n3").await.expect("n3 expired"); // dead: it expires within its TTL
    assert!(
        c.heartbeat("c", "a1", &agent)
            .await
            .expect("agent")
            .server_slot_open
    );
    // ... and added n4 (this test's stand-in for the agent that took the slot).
    c.heartbeat("c", "n1", &leader_hb("n1", &["n1", "n2", "n4"], &[]))
        .await
        .expect("leader");
    let changes = c.cluster("c").await.expect("cluster").raft_changes;
    let seen: Vec<(RaftChangeKind, &str)> =
        changes.iter().map(|c| (c.kind, c.name.as_str())).collect();
    assert_eq!(
        seen,
        [
            (RaftChangeKind::Removed, "n3"),
            (RaftChangeKind::Added, "n4")
        ]
    );
    let metrics = reg.get_text("/metrics").await;
    assert!(
        metrics.contains("rollcall_raft_members_removed_total 1"),
        "{metrics}"
    );
}

fn code_of(e: &ClientError) -> Option<(u16, ErrorCode)> {
    match e {
        ClientError::Api { status, code, .. } => Some((*status, *code)),
        _ => None,
    }
}

/// The only server stops while an agent stays: claims wait (`no-live-server`) until the server
/// was last seen `--raft-lost-after` ago, then are refused `raft_lost` within one interval,
/// naming the forced new cluster and the reset with the live agent; the cluster shows the raft
/// as lost. With nothing live the answer stays `raft_lost`.
#[tokio::test]
async fn a_raft_without_a_live_server_past_the_threshold_is_lost() {
    let reg = TestRegistry::start(&[SHORT, &["--raft-lost-after", "2s"]].concat()).await;
    after_grace(&reg).await;
    let c = reg.client();
    assert_eq!(
        c.claim("c", &claim("n1")).await.expect("n1").role,
        GrantedRole::Bootstrap
    );
    c.heartbeat("c", "n1", &hb("n1", MemberRole::Server))
        .await
        .expect("n1");
    let last_server = Instant::now();
    let agent = hb("a1", MemberRole::Agent);
    // n1 expires one TTL after its heartbeat; until then a claim would take a slot beside it.
    loop {
        c.heartbeat("c", "a1", &agent).await.expect("agent");
        let detail = c.cluster("c").await.expect("cluster");
        if detail.claims.is_empty() && detail.members.iter().all(|m| m.node != "n1") {
            break;
        }
        assert!(
            last_server.elapsed() < Duration::from_secs(3),
            "n1 never expired"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (lost_after, message) = loop {
        c.heartbeat("c", "a1", &agent).await.expect("agent");
        let refused = c
            .claim("c", &claim("n9"))
            .await
            .expect_err("no server is live");
        match code_of(&refused) {
            Some((503, ErrorCode::NotReady)) => {}
            Some((409, ErrorCode::RaftLost)) => break (last_server.elapsed(), refused.to_string()),
            _ => panic!("{refused}"),
        }
        assert!(last_server.elapsed() < Duration::from_secs(6), "never lost");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        lost_after >= Duration::from_millis(1900)
            && lost_after <= Duration::from_millis(2250 + 300),
        "lost {lost_after:?} after the last server's heartbeat (threshold 2s, interval 250ms)"
    );
    eprintln!("raft lost {lost_after:?} after the last server's heartbeat (threshold 2s)");
    for needle in [
        "ROLLCALL_FORCE_NEW_CLUSTER=1",
        "rollcall-registry reset c --generation 1 --force a1",
    ] {
        assert!(message.contains(needle), "{needle:?} not in {message}");
    }
    let raft = c.cluster("c").await.expect("cluster").raft.expect("known");
    assert!(raft.lost);
    assert!(raft.no_live_server_for_ms.is_some_and(|ms| ms >= 2000));
    // The agent leaves: nothing is live, and the raft is still lost (not only reset-required).
    c.leave("c", "a1").await.expect("leave");
    let refused = c.claim("c", &claim("n9")).await.expect_err("lost");
    assert_eq!(
        code_of(&refused),
        Some((409, ErrorCode::RaftLost)),
        "{refused}"
    );
    let metrics = reg.get_text("/metrics").await;
    assert!(
        metrics.contains("rollcall_claims_total{result=\"raft_lost\"}"),
        "{metrics}"
    );
}

/// A TTL of 1 s, so that expiries and the windows counted in TTLs pass within a test.
const SHORT: &[&str] = &[
    "--ttl",
    "1s",
    "--interval",
    "250ms",
    "--startup-grace",
    "500ms",
    "--quiet-period",
    "500ms",
];

/// Waits out the startup grace, then `n1` claims cluster `c` and is told `bootstrap`.
async fn bootstrapped(reg: &TestRegistry) -> RegistryClient {
    after_grace(reg).await;
    let c = reg.client();
    assert_eq!(
        c.claim("c", &claim("n1")).await.expect("n1").role,
        GrantedRole::Bootstrap
    );
    c
}

/// Sends `beating`'s heartbeats to cluster `c` every 100 ms until `silent` has expired.
async fn until_silent_expires(
    c: &RegistryClient,
    silent: &str,
    beating: &[(&str, HeartbeatRequest)],
) {
    let started = Instant::now();
    loop {
        for (node, heartbeat) in beating {
            c.heartbeat("c", node, heartbeat).await.expect("heartbeat");
        }
        let detail = c.cluster("c").await.expect("cluster");
        if detail.members.iter().all(|m| m.node != silent) {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(4),
            "{silent} never expired"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits (without heartbeating) until nothing of `cluster` is listed or claimed any more.
async fn until_expired(c: &RegistryClient, cluster: &str) {
    let started = Instant::now();
    loop {
        let detail = c.cluster(cluster).await.expect("cluster");
        if detail.members.is_empty() && detail.claims.is_empty() {
            return;
        }
        assert!(started.elapsed() < Duration::from_secs(5), "never expired");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A raft whose members all went silent (paused sidecars, a partition from the registry) comes
/// back one member at a time. Until one TTL after its first server's return, a newcomer is not
/// given a server slot while fewer servers than its size are back (`raft-returning`), so it is
/// not made to wait for the removal of a member that is only late; once they fill the size it
/// is told `agent` at once. A server that stays away loses its slot one TTL after the return.
#[tokio::test]
async fn a_raft_that_comes_back_relists_before_a_newcomer_takes_a_slot() {
    let reg = TestRegistry::start(SHORT).await;
    let c = bootstrapped(&reg).await;
    let beat = |nodes: &'static [&'static str]| {
        let c = c.clone();
        async move {
            for node in nodes {
                c.heartbeat("c", node, &hb(node, MemberRole::Server))
                    .await
                    .expect("heartbeat");
            }
        }
    };
    beat(&["n1", "n2", "n3"]).await;
    assert_eq!(
        c.claim("c", &claim("n4")).await.expect("n4").role,
        GrantedRole::Agent,
        "three servers fill the raft"
    );

    // The whole raft goes silent, then two of its three servers are back.
    until_expired(&c, "c").await;
    beat(&["n1", "n2"]).await;
    let refused = c
        .claim("c", &claim("n4"))
        .await
        .expect_err("a returning raft gives no slot");
    assert_eq!(
        code_of(&refused),
        Some((503, ErrorCode::NotReady)),
        "{refused}"
    );
    let message = refused.to_string();
    assert!(
        message.contains("2 of expect=3 are back") && message.contains("one TTL (1s)"),
        "{message}"
    );
    // The third is back: the servers fill the raft, and the newcomer is an agent at once.
    beat(&["n3"]).await;
    assert_eq!(
        c.claim("c", &claim("n4")).await.expect("n4").role,
        GrantedRole::Agent
    );
    let dashboard = reg.get_text("/").await;
    assert!(
        dashboard.contains("[raft-returning]"),
        "the dashboard shows the deferral's rule"
    );

    // Silent again; this time n3 stays away. One TTL after n1's return, n5 takes its slot.
    until_expired(&c, "c").await;
    beat(&["n1", "n2"]).await;
    let returned = Instant::now();
    let (granted_after, join) = loop {
        beat(&["n1", "n2"]).await;
        match c.claim("c", &claim("n5")).await {
            Ok(answer) => break (returned.elapsed(), answer),
            Err(e) => assert_eq!(code_of(&e), Some((503, ErrorCode::NotReady)), "{e}"),
        }
        assert!(returned.elapsed() < Duration::from_secs(4), "never granted");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(join.role, GrantedRole::Server);
    let mut targets: Vec<&str> = join.join.iter().map(|t| t.node.as_str()).collect();
    targets.sort_unstable();
    assert_eq!(targets, ["n1", "n2"]);
    assert!(
        granted_after >= Duration::from_millis(900),
        "a slot was given {granted_after:?} after the return, within one TTL"
    );
    eprintln!(
        "the missing server's slot was given {granted_after:?} after the raft's return (TTL 1s)"
    );
}

/// The same return across a registry restart: the raft went silent and expired, the registry
/// was killed and restarted (it keeps the known raft, not the expired members), and the raft
/// comes back after the startup grace: the first server's return opens the same window.
#[tokio::test]
async fn a_raft_that_comes_back_after_a_registry_restart_relists_first() {
    let mut reg = TestRegistry::start_process(SHORT).await;
    let c = bootstrapped(&reg).await;
    for node in ["n1", "n2", "n3"] {
        c.heartbeat("c", node, &hb(node, MemberRole::Server))
            .await
            .expect("heartbeat");
    }
    until_expired(&c, "c").await;
    // The expiries reach the disk within a second even though nobody waits on them.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    reg.kill9();
    reg.restart().await;
    after_grace(&reg).await;
    let c = reg.client();
    let detail = c.cluster("c").await.expect("cluster");
    assert!(
        detail.members.is_empty() && detail.raft.is_some(),
        "the restarted registry knows the raft and none of its expired members: {detail:?}"
    );
    for node in ["n1", "n2"] {
        c.heartbeat("c", node, &hb(node, MemberRole::Server))
            .await
            .expect("heartbeat");
    }
    let refused = c
        .claim("c", &claim("n4"))
        .await
        .expect_err("a returning raft gives no slot");
    assert_eq!(
        code_of(&refused),
        Some((503, ErrorCode::NotReady)),
        "{refused}"
    );
    assert!(
        refused.to_string().contains("2 of expect=3 are back"),
        "{refused}"
    );
    c.heartbeat("c", "n3", &hb("n3", MemberRole::Server))
        .await
        .expect("n3");
    assert_eq!(
        c.claim("c", &claim("n4")).await.expect("n4").role,
        GrantedRole::Agent
    );
}

/// The leader's sidecar falls silent (paused, cut off from the registry) while its agent leads
/// on: it expires here, and once its last report is a TTL old no fresh view says it is in the
/// raft, but it holds its slot all the same (a newcomer told `server` would wait for a removal
/// that never comes): with two servers heartbeating, a newcomer is an agent. With one, the
/// third slot is free beside the silent leader's. Once another leader reports the old one
/// disconnected, its slot is free too.
#[tokio::test]
async fn a_silent_leader_holds_its_slot_until_a_leader_reports_it_gone() {
    let reg = TestRegistry::start(SHORT).await;
    let c = bootstrapped(&reg).await;
    let raft = ["n1", "n2", "n3"];
    c.heartbeat("c", "n1", &leader_hb("n1", &raft, &[]))
        .await
        .expect("n1");
    // n2 and n3 heartbeat on; the leader n1 falls silent until it expires, and then until its
    // last report is older than the TTL.
    let others = [
        ("n2", hb("n2", MemberRole::Server)),
        ("n3", hb("n3", MemberRole::Server)),
    ];
    until_silent_expires(&c, "n1", &others).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    for (node, heartbeat) in &others {
        c.heartbeat("c", node, heartbeat).await.expect("heartbeat");
    }
    let answer = c.claim("c", &claim("n4")).await.expect("n4");
    assert_eq!(answer.role, GrantedRole::Agent, "{}", answer.reason);
    assert!(
        answer
            .reason
            .contains("2 live server(s) with 1 voter(s) in the raft"),
        "{}",
        answer.reason
    );
    // n3 falls silent too: one heartbeating server, the silent leader's slot held, one free.
    until_silent_expires(&c, "n3", &others[..1]).await;
    let answer = c.claim("c", &claim("n5")).await.expect("n5");
    assert_eq!(answer.role, GrantedRole::Server, "{}", answer.reason);
    assert!(
        answer
            .reason
            .contains("2 of expect=3 server slots are taken (and 1 by voter(s)"),
        "{}",
        answer.reason
    );
    // n2 leads now and reports n1 disconnected for longer than an interval: its slot is free.
    c.heartbeat("c", "n2", &leader_hb("n2", &raft, &["n1", "n3"]))
        .await
        .expect("n2");
    let answer = c.claim("c", &claim("n6")).await.expect("n6");
    assert_eq!(answer.role, GrantedRole::Server, "{}", answer.reason);
}

/// A server whose sidecar stops heartbeating while its agent stays in the raft (paused, cut
/// off from the registry) expires here, but the leader still reports it connected: its slot is
/// held, and a newcomer is told `agent` rather than `server` (it would wait for a removal that
/// never comes). Once the leader reports it disconnected, its slot is free.
#[tokio::test]
async fn a_voter_the_leader_reports_connected_holds_its_slot_without_heartbeats() {
    let reg = TestRegistry::start(SHORT).await;
    let c = bootstrapped(&reg).await;
    let raft = ["n1", "n2", "n3"];
    c.heartbeat("c", "n3", &hb("n3", MemberRole::Server))
        .await
        .expect("n3");
    // n1 (the leader) and n2 heartbeat on; n3 falls silent until it expires.
    let others = [
        ("n1", leader_hb("n1", &raft, &[])),
        ("n2", hb("n2", MemberRole::Server)),
    ];
    until_silent_expires(&c, "n3", &others).await;
    let answer = c.claim("c", &claim("n4")).await.expect("n4");
    assert_eq!(answer.role, GrantedRole::Agent, "{}", answer.reason);
    assert!(
        answer.reason.contains("2 live server(s) with 1 voter(s)"),
        "{}",
        answer.reason
    );
    // The leader reports n3 disconnected for longer than an interval: its slot is free.
    c.heartbeat("c", "n1", &leader_hb("n1", &raft, &["n3"]))
        .await
        .expect("n1");
    let answer = c.claim("c", &claim("n5")).await.expect("n5");
    assert_eq!(answer.role, GrantedRole::Server, "{}", answer.reason);
}

/// POST /v1/clusters/{c}/resize with a raw client, for the refusals the typed client has no
/// call for.
async fn post_resize(reg: &TestRegistry, cluster: &str, token: Option<&str>, body: &str) -> u16 {
    let mut request = reqwest::Client::new()
        .post(format!("{}/v1/clusters/{cluster}/resize", reg.url()))
        .header("content-type", "application/json")
        .body(body.to_string());
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    request.send().await.expect("resize").status().as_u16()
}

fn resize_command(reg: &TestRegistry, args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_rollcall-registry"))
        .arg("resize")
        .args(args)
        .args(["--url", &reg.url(), "--token", "op"])
        .output()
        .expect("run rollcall-registry resize")
}

/// The resize: only the registry-wide token, 404 without a known raft, a compare-and-set on
/// the generation, then the new size in every answer and after a restart.
#[tokio::test]
async fn a_resize_is_an_operators_compare_and_set_and_survives_a_restart() {
    let mut args = vec!["--token", "op", "--cluster-token", "c=ct"];
    args.extend_from_slice(FAST);
    let mut reg = TestRegistry::start_process(&args).await;
    after_grace(&reg).await;
    let c = RegistryClient::new(reg.url(), Some("op".into())).expect("client");
    assert_eq!(
        c.claim("c", &claim("n1")).await.expect("n1").role,
        GrantedRole::Bootstrap
    );
    let body = r#"{"expect":5,"generation":1,"reason":"grow"}"#;
    assert_eq!(
        post_resize(&reg, "c", Some("op"), body).await,
        404,
        "no raft known yet"
    );
    c.heartbeat("c", "n1", &hb("n1", MemberRole::Server))
        .await
        .expect("n1");
    assert_eq!(post_resize(&reg, "c", None, body).await, 401);
    assert_eq!(post_resize(&reg, "c", Some("ct"), body).await, 403);
    assert_eq!(post_resize(&reg, "nowhere", Some("op"), body).await, 404);
    assert_eq!(
        post_resize(&reg, "c", Some("op"), r#"{"expect":0,"generation":1}"#).await,
        400
    );

    let refused = resize_command(&reg, &["c", "--expect", "5", "--generation", "2"]);
    assert_eq!(refused.status.code(), Some(65), "{refused:?}");
    assert!(String::from_utf8_lossy(&refused.stderr).contains("generation_mismatch"));
    let done = resize_command(
        &reg,
        &[
            "c",
            "--expect",
            "5",
            "--generation",
            "1",
            "--reason",
            "grow",
        ],
    );
    assert_eq!(done.status.code(), Some(0), "{done:?}");
    let answer: serde_json::Value = serde_json::from_slice(&done.stdout).expect("JSON on stdout");
    assert_eq!(answer["from_expect"], 3);
    assert_eq!(answer["expect"], 5);

    let detail = c.cluster("c").await.expect("cluster");
    assert_eq!(detail.raft.as_ref().and_then(|r| r.expect), Some(5));
    assert_eq!(detail.last_resize.map(|r| r.reason), Some("grow".into()));
    // Slots follow: n1 plus three more servers, and a fifth.
    for node in ["n2", "n3", "n4", "n5"] {
        assert_eq!(
            c.claim("c", &claim(node)).await.expect("claim").role,
            GrantedRole::Server,
            "{node}"
        );
    }
    assert!(reg
        .get_text("/metrics")
        .await
        .contains("rollcall_resizes_total 1"));

    reg.restart().await;
    let detail = c.cluster("c").await.expect("cluster after a restart");
    assert_eq!(detail.raft.and_then(|r| r.expect), Some(5));
}
