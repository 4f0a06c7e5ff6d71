//! Mode determination: the rules a claim keeps, against the real binary.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{after_grace, is_not_ready, TestRegistry, FAST};
use rollcall_protocol::{
    ClaimRequest, ClientError, ErrorCode, GrantedRole, HeartbeatRequest, MemberRole, ResetRequest,
};

fn claim(node: &str, expect: u32) -> ClaimRequest {
    ClaimRequest {
        node: node.into(),
        address: format!("{node}:8300"),
        expect,
        agent_only: false,
        started_as: None,
        raft: None,
    }
}

fn hb(address: &str, role: MemberRole) -> HeartbeatRequest {
    HeartbeatRequest {
        raft_members: None,
        address: address.into(),
        role,
        status: None,
        meta: BTreeMap::new(),
        raft: None,
    }
}

#[tokio::test]
async fn fifty_concurrent_claims_yield_one_bootstrap_and_at_most_expect_servers() {
    let reg = TestRegistry::start(&[
        "--ttl",
        "10s",
        "--interval",
        "500ms",
        "--startup-grace",
        "500ms",
        "--quiet-period",
        "500ms",
    ])
    .await;
    after_grace(&reg).await;
    let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(50));
    let mut tasks = Vec::new();
    for i in 0..50 {
        let c = reg.client();
        let barrier = barrier.clone();
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            c.claim("race", &claim(&format!("node-{i}"), 3)).await
        }));
    }
    let mut roles = Vec::new();
    for t in tasks {
        roles.push(t.await.expect("task").expect("claim answered"));
    }
    let bootstraps: Vec<_> = roles
        .iter()
        .filter(|r| r.role == GrantedRole::Bootstrap)
        .collect();
    let servers = roles
        .iter()
        .filter(|r| r.role == GrantedRole::Server)
        .count();
    let agents = roles
        .iter()
        .filter(|r| r.role == GrantedRole::Agent)
        .count();
    assert_eq!(bootstraps.len(), 1, "exactly one bootstrap");
    assert_eq!(servers, 2, "bootstrap + servers = expect");
    assert_eq!(agents, 47);
    let boot = &bootstraps[0].node;
    for r in &roles {
        assert!(
            r.join.iter().all(|t| t.node != r.node),
            "{} was told to join itself",
            r.node
        );
        if r.role != GrantedRole::Bootstrap {
            assert!(
                r.join.iter().any(|t| &t.node == boot),
                "{} must be able to join the bootstrap node",
                r.node
            );
        }
    }
    // Claiming again gives the same answers.
    let c = reg.client();
    for r in roles.iter().take(10) {
        let again = c.claim("race", &claim(&r.node, 3)).await.expect("reclaim");
        assert_eq!(
            again.role, r.role,
            "{} changed its role on a re-claim",
            r.node
        );
    }
    let detail: serde_json::Value = reqwest::get(format!("{}/v1/clusters/race", reg.url()))
        .await
        .expect("get")
        .json()
        .await
        .expect("json");
    assert_eq!(detail["bootstrap"]["generation"], 1);
}

#[tokio::test]
async fn claim_inside_the_startup_grace_gets_503_with_retry_after() {
    let reg =
        TestRegistry::start(&["--ttl", "10s", "--interval", "1s", "--startup-grace", "3s"]).await;
    let err = reg
        .client()
        .claim("g", &claim("a", 3))
        .await
        .expect_err("must be refused inside the grace");
    match &err {
        ClientError::Api {
            status: 503,
            code: ErrorCode::NotReady,
            retry_after: Some(after),
            ..
        } => {
            assert!(
                *after >= Duration::from_secs(1) && *after <= Duration::from_secs(3),
                "{after:?}"
            );
        }
        other => panic!("expected 503 not_ready with Retry-After, got {other:?}"),
    }
    tokio::time::sleep(err.retry_after().expect("retry after") + Duration::from_millis(100)).await;
    let ok = reg
        .client()
        .claim("g", &claim("a", 3))
        .await
        .expect("answered after the grace");
    assert_eq!(ok.role, GrantedRole::Bootstrap);
}

/// Changed with "one raft per cluster, ever": a cluster whose raft was known (a member
/// heartbeated) is never bootstrapped again after its members leave, however long the wait;
/// the claimant is told the reset command, and after the operator's reset the next claim
/// bootstraps the next generation.
#[tokio::test]
async fn a_cluster_that_had_a_raft_is_bootstrapped_again_only_after_a_reset() {
    let reg = TestRegistry::start(&[
        "--ttl",
        "10s",
        "--interval",
        "500ms",
        "--startup-grace",
        "500ms",
        "--quiet-period",
        "1s",
    ])
    .await;
    after_grace(&reg).await;
    let c = reg.client();
    let granted = c.claim("q", &claim("old", 3)).await.expect("claim");
    assert_eq!(granted.role, GrantedRole::Bootstrap);
    c.heartbeat("q", "old", &hb("10.0.0.1:8300", MemberRole::Server))
        .await
        .expect("register");
    c.leave("q", "old").await.expect("leave");
    for wait in [Duration::ZERO, Duration::from_millis(1100)] {
        tokio::time::sleep(wait).await;
        let err = c
            .claim("q", &claim("new", 3))
            .await
            .expect_err("the cluster had a raft");
        match &err {
            ClientError::Api {
                status: 409,
                code: ErrorCode::ResetRequired,
                message,
                retry_after: Some(_),
            } => assert!(
                message.contains("rollcall-registry reset q --generation 1"),
                "{message}"
            ),
            other => panic!("expected 409 reset_required, got {other:?}"),
        }
    }
    // The wrong generation changes nothing.
    let reset = |generation| ResetRequest {
        generation,
        force: Vec::new(),
        reason: Some("test".into()),
    };
    let err = c.reset("q", &reset(2)).await.expect_err("wrong generation");
    assert!(
        matches!(
            err,
            ClientError::Api {
                status: 409,
                code: ErrorCode::GenerationMismatch,
                ..
            }
        ),
        "{err:?}"
    );
    let done = c.reset("q", &reset(1)).await.expect("reset");
    assert_eq!(done.next_generation, 2);
    let ok = c
        .claim("q", &claim("new", 3))
        .await
        .expect("claim after the reset");
    assert_eq!(ok.role, GrantedRole::Bootstrap);
    let detail = c.cluster("q").await.expect("detail");
    assert_eq!(detail.bootstrap.map(|b| b.generation), Some(2));
    assert_eq!(detail.last_reset.map(|r| r.from_generation), Some(1));
}

/// A grant whose raft never became known (nobody heartbeated) may be granted again, but not
/// within the quiet period after the cluster was last seen.
#[tokio::test]
async fn a_grant_that_never_became_a_raft_is_granted_again_after_the_quiet_period() {
    let reg = TestRegistry::start(&[
        "--ttl",
        "10s",
        "--interval",
        "500ms",
        "--startup-grace",
        "500ms",
        "--quiet-period",
        "2s",
    ])
    .await;
    after_grace(&reg).await;
    let c = reg.client();
    let granted = c.claim("q", &claim("old", 3)).await.expect("claim");
    assert_eq!(granted.role, GrantedRole::Bootstrap);
    c.leave("q", "old").await.expect("leave");
    let err = c
        .claim("q", &claim("new", 3))
        .await
        .expect_err("inside the quiet period");
    assert!(is_not_ready(&err), "{err:?}");
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let ok = c
        .claim("q", &claim("new", 3))
        .await
        .expect("after the quiet period");
    assert_eq!(ok.role, GrantedRole::Bootstrap);
    let detail = c.cluster("q").await.expect("detail");
    assert_eq!(detail.bootstrap.map(|b| b.generation), Some(2));
}

#[tokio::test]
async fn no_bootstrap_while_any_member_is_live() {
    let reg = TestRegistry::start(FAST).await;
    after_grace(&reg).await;
    let c = reg.client();
    c.heartbeat("live", "agent-1", &hb("10.0.0.5:8301", MemberRole::Agent))
        .await
        .expect("register");
    let err = c
        .claim("live", &claim("s1", 3))
        .await
        .expect_err("an agent is live");
    assert!(is_not_ready(&err), "{err:?}");
    // A live server means a raft exists: the claimant joins it instead.
    c.heartbeat("live", "server-1", &hb("10.0.0.6:8300", MemberRole::Server))
        .await
        .expect("register");
    let ok = c.claim("live", &claim("s1", 3)).await.expect("claim");
    assert_eq!(ok.role, GrantedRole::Server);
    assert_eq!(
        ok.join
            .iter()
            .map(|t| t.address.as_str())
            .collect::<Vec<_>>(),
        ["10.0.0.6:8300"]
    );
}

#[tokio::test]
async fn bootstrap_grant_survives_a_crash_and_blocks_a_second_raft() {
    let mut reg = TestRegistry::start_process(&[
        "--ttl",
        "10s",
        "--interval",
        "500ms",
        "--startup-grace",
        "500ms",
        "--quiet-period",
        "500ms",
    ])
    .await;
    after_grace(&reg).await;
    let first = reg
        .client()
        .claim("crash", &claim("first", 3))
        .await
        .expect("claim");
    assert_eq!(first.role, GrantedRole::Bootstrap);
    reg.kill9();
    reg.restart().await;
    after_grace(&reg).await;
    let c = reg.client();
    let second = c.claim("crash", &claim("second", 3)).await.expect("claim");
    assert_eq!(
        second.role,
        GrantedRole::Server,
        "the stored bootstrap claim is live again after the restart"
    );
    assert_eq!(second.join[0].node, "first");
    let again = c.claim("crash", &claim("first", 3)).await.expect("claim");
    assert_eq!(
        again.role,
        GrantedRole::Bootstrap,
        "the holder gets its answer again while no one heartbeats"
    );
}

#[tokio::test]
async fn bootstrap_holder_joins_instead_once_others_heartbeat() {
    let reg = TestRegistry::start(FAST).await;
    after_grace(&reg).await;
    let c = reg.client();
    assert_eq!(
        c.claim("h", &claim("a", 3)).await.expect("claim").role,
        GrantedRole::Bootstrap
    );
    assert_eq!(
        c.claim("h", &claim("b", 3)).await.expect("claim").role,
        GrantedRole::Server
    );
    c.heartbeat("h", "b", &hb("b:8300", MemberRole::Server))
        .await
        .expect("b runs");
    // "a" comes back without its data (it would otherwise not claim at all): it must not
    // start a second raft next to b's.
    let again = c.claim("h", &claim("a", 3)).await.expect("claim");
    assert_eq!(again.role, GrantedRole::Server);
    assert_eq!(again.join[0].node, "b");
}

#[tokio::test]
async fn an_expired_server_claim_frees_its_slot() {
    let reg = TestRegistry::start(FAST).await;
    after_grace(&reg).await;
    let c = reg.client();
    c.heartbeat("slots", "boot", &hb("boot:8300", MemberRole::Server))
        .await
        .expect("boot runs");
    assert_eq!(
        c.claim("slots", &claim("s1", 2)).await.expect("claim").role,
        GrantedRole::Server
    );
    assert_eq!(
        c.claim("slots", &claim("s2", 2)).await.expect("claim").role,
        GrantedRole::Agent
    );
    // Keep "boot" alive, let s1's claim lapse (TTL 2s).
    for _ in 0..10 {
        c.heartbeat("slots", "boot", &hb("boot:8300", MemberRole::Server))
            .await
            .expect("renew");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // s2 still holds a live agent claim? It lapsed too; a new node gets the freed slot.
    assert_eq!(
        c.claim("slots", &claim("s3", 2)).await.expect("claim").role,
        GrantedRole::Server
    );
}

#[tokio::test]
async fn agent_only_claims_never_take_a_server_slot() {
    let reg = TestRegistry::start(FAST).await;
    after_grace(&reg).await;
    let c = reg.client();
    c.heartbeat("ao", "boot", &hb("boot:8300", MemberRole::Server))
        .await
        .expect("boot runs");
    let mut req = claim("client-1", 3);
    req.agent_only = true;
    let r = c.claim("ao", &req).await.expect("claim");
    assert_eq!(r.role, GrantedRole::Agent);
    assert_eq!(r.join[0].address, "boot:8300");
}
