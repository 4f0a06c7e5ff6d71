//! "One raft per cluster, ever" against the real binary: the ways a second raft used to get a
//! grant (issue 12's failures 3, 4 and 6), each now refused. Failures 1 and 2 involve a running
//! raft and are tested with real etcd in the sidecar's tests; failure 5 (storage that lies) in
//! `storage_integrity.rs`.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{after_grace, is_not_ready, TestRegistry};
use rollcall_protocol::{
    ClaimRequest, ClaimResponse, ClientError, ErrorCode, GrantedRole, HeartbeatRequest, MemberRole,
    RaftIdentity, RegistryClient,
};

fn claim(node: &str, expect: u32) -> ClaimRequest {
    ClaimRequest {
        node: node.into(),
        address: format!("10.0.0.{}:2380", node.len()),
        expect,
        agent_only: false,
        started_as: None,
        raft: None,
    }
}

fn hb(address: &str, raft: Option<RaftIdentity>) -> HeartbeatRequest {
    HeartbeatRequest {
        raft_members: None,
        address: address.into(),
        role: MemberRole::Server,
        status: None,
        meta: BTreeMap::new(),
        raft,
    }
}

/// TTL 3 s, interval and grace 500 ms, and the given quiet period: a restart in these tests
/// happens well inside one TTL.
fn short_timing(quiet_period: &str) -> [&str; 8] {
    [
        "--ttl",
        "3s",
        "--interval",
        "500ms",
        "--startup-grace",
        "500ms",
        "--quiet-period",
        quiet_period,
    ]
}

fn code(err: &ClientError) -> Option<(u16, ErrorCode)> {
    match err {
        ClientError::Api { status, code, .. } => Some((*status, *code)),
        _ => None,
    }
}

/// Claims until the registry answers (it may be inside its startup grace).
async fn claim_answered(
    c: &RegistryClient,
    cluster: &str,
    request: &ClaimRequest,
) -> ClaimResponse {
    common::eventually(Duration::from_secs(10), || async {
        match c.claim(cluster, request).await {
            Ok(answer) => Some(answer),
            Err(e) if is_not_ready(&e) => None,
            Err(e) => panic!("claim {}: {e:?}", request.node),
        }
    })
    .await
    .expect("an answer within 10s")
}

/// Failure 3: K1 is told `bootstrap`, K2 `server`; the registry comes back on an empty data
/// directory while both agents are still starting (they renew their claims, saying what they
/// started as). Neither, nor a third node, is ever told `bootstrap` again.
#[tokio::test]
async fn an_empty_data_directory_while_a_raft_forms_never_grants_a_second_bootstrap() {
    let mut reg = TestRegistry::start_process(&short_timing("1s")).await;
    after_grace(&reg).await;
    let c = reg.client();
    let k1 = c.claim("forming", &claim("k1", 3)).await.expect("k1");
    assert_eq!(k1.role, GrantedRole::Bootstrap);
    let identity = k1
        .raft
        .clone()
        .expect("a bootstrap carries the new raft's identity");
    let k2 = c.claim("forming", &claim("k2", 3)).await.expect("k2");
    assert_eq!(k2.role, GrantedRole::Server);
    assert_eq!(
        k2.raft.as_ref(),
        Some(&identity),
        "a joiner is told the raft it joins"
    );

    // The registry loses its data.
    let empty = tempfile::tempdir().expect("tempdir");
    reg.data_dir = empty.path().join("data");
    reg.restart().await;
    let c = reg.client();
    let renewal = |node: &str, started: GrantedRole| ClaimRequest {
        started_as: Some(started),
        raft: Some(identity.clone()),
        ..claim(node, 3)
    };
    // Inside the grace and after it, the starting agents keep being servers.
    for _ in 0..2 {
        let k2 = c
            .claim("forming", &renewal("k2", GrantedRole::Server))
            .await
            .expect("k2 renews");
        assert_eq!(k2.role, GrantedRole::Server, "{}", k2.reason);
        let k1 = c
            .claim("forming", &renewal("k1", GrantedRole::Bootstrap))
            .await
            .expect("k1 renews");
        assert_eq!(k1.role, GrantedRole::Server, "{}", k1.reason);
        tokio::time::sleep(Duration::from_millis(1100)).await;
    }
    let k3 = claim_answered(&c, "forming", &claim("k3", 3)).await;
    assert_eq!(k3.role, GrantedRole::Server, "{}", k3.reason);
    let joined: Vec<&str> = k3.join.iter().map(|t| t.node.as_str()).collect();
    assert!(
        joined.contains(&"k1") && joined.contains(&"k2"),
        "{joined:?}"
    );
}

/// Failure 4: what decides survives a restart. A grant that never became a raft stays in its
/// quiet period across a clean restart; a known raft stays known.
#[tokio::test]
async fn a_restart_forgets_neither_the_quiet_period_nor_the_raft() {
    let mut reg = TestRegistry::start_process(&short_timing("6s")).await;
    after_grace(&reg).await;
    let c = reg.client();
    // A grant whose raft never became known, released.
    assert_eq!(
        c.claim("quiet", &claim("a", 3)).await.expect("a").role,
        GrantedRole::Bootstrap
    );
    c.leave("quiet", "a").await.expect("leave");
    // A known raft, gone.
    let granted = c.claim("known", &claim("b", 3)).await.expect("b");
    c.heartbeat("known", "b", &hb("10.0.0.1:2380", granted.raft.clone()))
        .await
        .expect("hb");
    c.leave("known", "b").await.expect("leave");

    assert_eq!(reg.terminate().code(), Some(0));
    reg.restart().await;
    after_grace(&reg).await;
    let c = reg.client();
    let err = c
        .claim("quiet", &claim("new", 3))
        .await
        .expect_err("inside the quiet period");
    assert!(is_not_ready(&err), "{err:?}");
    let err = c
        .claim("known", &claim("new", 3))
        .await
        .expect_err("a known raft");
    assert_eq!(code(&err), Some((409, ErrorCode::ResetRequired)), "{err:?}");
    // And after a kill -9 as well.
    reg.kill9();
    reg.restart().await;
    after_grace(&reg).await;
    let err = reg
        .client()
        .claim("known", &claim("new", 3))
        .await
        .expect_err("a known raft");
    assert_eq!(code(&err), Some((409, ErrorCode::ResetRequired)), "{err:?}");
}

/// Failure 6: conflicts are refused, not answered. The same name from a second address while
/// the first holds the bootstrap claim; claims that disagree on `expect` before the raft is
/// known; once it is known, its stored size counts.
#[tokio::test]
async fn conflicting_addresses_and_sizes_are_refused() {
    let reg = TestRegistry::start(&[
        "--ttl",
        "3s",
        "--interval",
        "500ms",
        "--startup-grace",
        "500ms",
    ])
    .await;
    after_grace(&reg).await;
    let c = reg.client();
    let a = c.claim("conf", &claim("a", 3)).await.expect("a");
    assert_eq!(a.role, GrantedRole::Bootstrap);
    let elsewhere = ClaimRequest {
        address: "10.9.9.9:2380".into(),
        ..claim("a", 3)
    };
    let err = c
        .claim("conf", &elsewhere)
        .await
        .expect_err("same name, other address");
    assert_eq!(
        code(&err),
        Some((409, ErrorCode::AddressConflict)),
        "{err:?}"
    );
    assert!(err.retry_after().is_some(), "{err:?}");
    assert!(
        err.to_string().contains("10.9.9.9:2380") && err.to_string().contains(&a_address()),
        "{err}"
    );
    // The conflicting claim renewed nothing: a's claim still has its own address.
    let detail = c.cluster("conf").await.expect("detail");
    assert_eq!(detail.claims[0].address, a_address());

    for node in ["b", "c", "d", "e"] {
        let err = c
            .claim("conf", &claim(node, 7))
            .await
            .expect_err("expect 7 against 3");
        assert_eq!(
            code(&err),
            Some((409, ErrorCode::ExpectConflict)),
            "{err:?}"
        );
    }
    // The raft becomes known (a heartbeats); from then on its size, 3, counts.
    c.heartbeat("conf", "a", &hb(&a_address(), a.raft.clone()))
        .await
        .expect("hb");
    let answers: Vec<GrantedRole> = futures_roles(&c, &["b", "c", "d", "e"], 7).await;
    assert_eq!(
        answers,
        vec![
            GrantedRole::Server,
            GrantedRole::Server,
            GrantedRole::Agent,
            GrantedRole::Agent
        ],
        "three server slots, not seven"
    );
}

fn a_address() -> String {
    claim("a", 3).address
}

async fn futures_roles(c: &RegistryClient, nodes: &[&str], expect: u32) -> Vec<GrantedRole> {
    let mut roles = Vec::new();
    for node in nodes {
        let answer = c.claim("conf", &claim(node, expect)).await.expect("claim");
        assert_eq!(answer.expect, 3, "the answer carries the stored size");
        roles.push(answer.role);
    }
    roles
}

/// A heartbeat from another raft than the cluster's is refused and changes nothing.
#[tokio::test]
async fn a_heartbeat_from_another_raft_is_refused() {
    let reg = TestRegistry::start(&[
        "--ttl",
        "3s",
        "--interval",
        "500ms",
        "--startup-grace",
        "500ms",
    ])
    .await;
    after_grace(&reg).await;
    let c = reg.client();
    let a = c.claim("ids", &claim("a", 3)).await.expect("a");
    let ours = a.raft.clone().expect("identity");
    c.heartbeat("ids", "a", &hb("10.0.0.1:2380", Some(ours.clone())))
        .await
        .expect("ours");
    let theirs = RaftIdentity {
        generation: ours.generation,
        nonce: if ours.nonce == "0000000000000000" {
            "1111111111111111".into()
        } else {
            "0000000000000000".into()
        },
    };
    let err = c
        .heartbeat("ids", "x", &hb("10.0.0.2:2380", Some(theirs)))
        .await
        .expect_err("another raft");
    assert_eq!(code(&err), Some((409, ErrorCode::WrongRaft)), "{err:?}");
    let members = c.members("ids", None).await.expect("members");
    assert_eq!(
        members.members.len(),
        1,
        "the other raft's member is not listed"
    );
    let detail = c.cluster("ids").await.expect("detail");
    assert_eq!(detail.raft.expect("known").generation, ours.generation);
}

/// After losing its data the registry relearns a raft's identity from heartbeats during its
/// startup grace; when two identities appear then, it lists neither, refuses every claim, and
/// an operator's reset clears it.
#[tokio::test]
async fn two_rafts_seen_while_relearning_are_both_unlisted_until_a_reset() {
    let reg =
        TestRegistry::start(&["--ttl", "10s", "--interval", "1s", "--startup-grace", "3s"]).await;
    // Fresh registry (as after an empty volume): still inside its startup grace.
    let c = reg.client();
    let one = RaftIdentity {
        generation: 3,
        nonce: "1111111111111111".into(),
    };
    let two = RaftIdentity {
        generation: 1,
        nonce: "2222222222222222".into(),
    };
    c.heartbeat("twice", "a", &hb("10.0.0.1:2380", Some(one.clone())))
        .await
        .expect("the first raft relearned");
    let err = c
        .heartbeat("twice", "b", &hb("10.0.0.2:2380", Some(two)))
        .await
        .expect_err("another raft while relearning");
    assert_eq!(code(&err), Some((409, ErrorCode::WrongRaft)), "{err:?}");
    let members = c.members("twice", None).await.expect("members");
    assert!(
        members.members.is_empty(),
        "neither raft is listed: {members:?}"
    );
    let targets = c.join_targets("twice", None).await.expect("join targets");
    assert!(targets.addresses.is_empty(), "{targets:?}");
    after_grace(&reg).await;
    tokio::time::sleep(Duration::from_millis(2600)).await;
    let err = c
        .claim("twice", &claim("new", 3))
        .await
        .expect_err("refused");
    assert_eq!(code(&err), Some((409, ErrorCode::ResetRequired)), "{err:?}");
    assert!(err.to_string().contains("two rafts"), "{err}");
    // The operator stops the wrong raft's node and resets.
    let reset = rollcall_protocol::ResetRequest {
        generation: 3,
        force: vec!["a".into()],
        reason: Some("stopped the second raft".into()),
    };
    c.reset("twice", &reset).await.expect("reset");
    let answer = c
        .claim("twice", &claim("new", 3))
        .await
        .expect("claim after the reset");
    assert_eq!(answer.role, GrantedRole::Bootstrap);
    assert_eq!(answer.raft.map(|r| r.generation), Some(4));
}
