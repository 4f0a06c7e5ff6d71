//! Cluster slots and the registry's memory bounds (issue 14): a cluster with nothing live and no
//! raft or grant frees its slot (after a leave, an expiry, a restart); a cluster that had a
//! raft keeps its record outside `--max-clusters`, under `--max-bootstrapped-clusters`, until
//! an operator's reset; `--max-members` and `--max-metadata-bytes` bound every cluster together
//! while known members keep renewing.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{after_grace, TestRegistry, FAST};
use rollcall_protocol::{
    ClaimRequest, ClientError, ErrorCode, GrantedRole, HeartbeatRequest, MemberRole, ResetRequest,
};

fn claim(node: &str, agent_only: bool) -> ClaimRequest {
    ClaimRequest {
        node: node.into(),
        address: format!("{node}:8300"),
        expect: 1,
        agent_only,
        started_as: None,
        raft: None,
    }
}

fn hb(node: &str, meta: BTreeMap<String, String>) -> HeartbeatRequest {
    HeartbeatRequest {
        raft_members: None,
        address: format!("{node}:8300"),
        role: MemberRole::Server,
        status: None,
        meta,
        raft: None,
    }
}

/// `entries` metadata entries of `value_len` bytes each, under one-byte keys.
fn meta(entries: usize, value_len: usize) -> BTreeMap<String, String> {
    (0..entries)
        .map(|i| {
            (
                ((b'a' + i as u8) as char).to_string(),
                "x".repeat(value_len),
            )
        })
        .collect()
}

fn args<'a>(extra: &[&'a str]) -> Vec<&'a str> {
    FAST.iter().copied().chain(extra.iter().copied()).collect()
}

/// FAST's startup grace with a TTL no test outlives.
fn long_ttl<'a>(extra: &[&'a str]) -> Vec<&'a str> {
    let timing = [
        "--ttl",
        "60s",
        "--interval",
        "500ms",
        "--startup-grace",
        "500ms",
    ];
    timing.into_iter().chain(extra.iter().copied()).collect()
}

/// A `429 limit_exceeded` whose message names `flag`.
fn assert_limit(err: ClientError, flag: &str) {
    match err {
        ClientError::Api {
            status: 429,
            code: ErrorCode::LimitExceeded,
            message,
            ..
        } => assert!(message.contains(flag), "{message}"),
        other => panic!("expected 429 limit_exceeded naming {flag}, got {other:?}"),
    }
}

/// Three agent-only clusters join and leave: each leaves nothing behind.
async fn three_clusters_join_and_leave(reg: &TestRegistry) {
    let c = reg.client();
    for i in 0..3 {
        let cluster = format!("gone-{i}");
        let answer = c.claim(&cluster, &claim("n", true)).await.expect("claim");
        assert_eq!(answer.role, GrantedRole::Agent);
        c.leave(&cluster, "n").await.expect("leave");
    }
}

#[tokio::test]
async fn clusters_that_joined_and_left_free_their_slots() {
    let reg = TestRegistry::start(&args(&["--max-clusters", "3"])).await;
    after_grace(&reg).await;
    let c = reg.client();
    three_clusters_join_and_leave(&reg).await;
    assert!(
        c.clusters().await.expect("clusters").clusters.is_empty(),
        "a cluster with nothing live and no raft is forgotten"
    );
    for i in 0..3 {
        c.claim(&format!("live-{i}"), &claim("n", true))
            .await
            .expect("a freed slot is taken again");
    }
    let err = c
        .claim("live-3", &claim("n", true))
        .await
        .expect_err("three live clusters fill --max-clusters 3");
    assert_limit(err, "--max-clusters");
    assert_eq!(reg.limit_refusals("max-clusters").await, 1);
    c.leave("live-0", "n").await.expect("leave");
    c.claim("live-3", &claim("n", true))
        .await
        .expect("the slot of the cluster that left");
}

#[tokio::test]
async fn freed_slots_stay_free_after_a_restart() {
    let mut reg = TestRegistry::start_process(&args(&["--max-clusters", "3"])).await;
    after_grace(&reg).await;
    three_clusters_join_and_leave(&reg).await;
    reg.restart().await;
    after_grace(&reg).await;
    let c = reg.client();
    assert!(
        c.clusters().await.expect("clusters").clusters.is_empty(),
        "the restarted registry stored nothing of the clusters that left"
    );
    for i in 0..3 {
        c.claim(&format!("after-{i}"), &claim("n", true))
            .await
            .expect("every slot is free after the restart");
    }
}

#[tokio::test]
async fn an_expired_cluster_frees_its_slot() {
    let reg = TestRegistry::start(&args(&["--max-clusters", "1"])).await;
    after_grace(&reg).await;
    let c = reg.client();
    c.claim("first", &claim("n", true)).await.expect("claim");
    let err = c
        .claim("second", &claim("n", true))
        .await
        .expect_err("the first cluster holds the only slot");
    assert_limit(err, "--max-clusters");
    // FAST's TTL is 2s: the first cluster's only claim expires, and its slot with it.
    let taken = common::eventually(Duration::from_secs(6), || async {
        c.claim("second", &claim("n", true)).await.ok()
    })
    .await;
    assert!(
        taken.is_some(),
        "the expired cluster's slot was never freed"
    );
}

#[tokio::test]
async fn a_bootstrapped_cluster_keeps_its_record_under_its_own_bound() {
    let reg = TestRegistry::start(&args(&[
        "--max-clusters",
        "1",
        "--max-bootstrapped-clusters",
        "1",
    ]))
    .await;
    after_grace(&reg).await;
    let c = reg.client();
    let first = c.claim("raft", &claim("n1", false)).await.expect("claim");
    assert_eq!(first.role, GrantedRole::Bootstrap);
    c.heartbeat("raft", "n1", &hb("n1", BTreeMap::new()))
        .await
        .expect("the raft becomes known");
    c.leave("raft", "n1").await.expect("leave");

    // Its members left, but the raft may still run: a second bootstrap is refused.
    match c.claim("raft", &claim("n2", false)).await {
        Err(ClientError::Api {
            status: 409,
            code: ErrorCode::ResetRequired,
            ..
        }) => {}
        other => panic!("expected 409 reset_required, got {other:?}"),
    }
    // Its record does not count against --max-clusters.
    c.claim("agents", &claim("a", true))
        .await
        .expect("a live cluster beside the bootstrapped record");
    // Another cluster that would start a raft is beyond --max-bootstrapped-clusters, by claim
    // or by heartbeat; nothing of it is kept.
    let err = c
        .claim("second-raft", &claim("m1", false))
        .await
        .expect_err("a second bootstrapped cluster");
    assert_limit(err, "--max-bootstrapped-clusters");
    let err = c
        .heartbeat("third-raft", "m1", &hb("m1", BTreeMap::new()))
        .await
        .expect_err("a heartbeat makes a raft known");
    assert_limit(err, "--max-bootstrapped-clusters");
    assert_eq!(reg.limit_refusals("max-bootstrapped-clusters").await, 2);
    assert_eq!(reg.limit_refusals("max-clusters").await, 0);
    assert!(c.cluster("second-raft").await.is_err());

    // An operator's reset frees the record's place for the next raft.
    let reset = ResetRequest {
        generation: 1,
        force: Vec::new(),
        reason: Some("test".into()),
    };
    c.reset("raft", &reset).await.expect("reset");
    let next = c
        .claim("second-raft", &claim("m1", false))
        .await
        .expect("the reset cluster made room");
    assert_eq!(next.role, GrantedRole::Bootstrap);
}

#[tokio::test]
async fn members_of_all_clusters_together_are_bounded() {
    let reg = TestRegistry::start(&long_ttl(&["--max-members", "3"])).await;
    after_grace(&reg).await;
    let c = reg.client();
    c.heartbeat("a", "n0", &hb("n0", BTreeMap::new()))
        .await
        .expect("first");
    c.heartbeat("a", "n1", &hb("n1", BTreeMap::new()))
        .await
        .expect("second");
    c.heartbeat("b", "n2", &hb("n2", BTreeMap::new()))
        .await
        .expect("third, in another cluster");
    let err = c
        .heartbeat("b", "n3", &hb("n3", BTreeMap::new()))
        .await
        .expect_err("a fourth member");
    assert_limit(err, "--max-members");
    let err = c
        .claim("c", &claim("n4", true))
        .await
        .expect_err("a claimant counts as a member");
    assert_limit(err, "--max-members");
    assert_eq!(reg.limit_refusals("max-members").await, 2);
    // Known members renew at the bound.
    for (cluster, node) in [("a", "n0"), ("a", "n1"), ("b", "n2")] {
        c.heartbeat(cluster, node, &hb(node, BTreeMap::new()))
            .await
            .expect("a renewal at the bound");
    }
    c.leave("a", "n0").await.expect("leave");
    c.heartbeat("b", "n3", &hb("n3", BTreeMap::new()))
        .await
        .expect("the place of the member that left");
}

#[tokio::test]
async fn metadata_bytes_are_bounded() {
    let reg = TestRegistry::start(&long_ttl(&["--max-metadata-bytes", "1024"])).await;
    after_grace(&reg).await;
    let c = reg.client();
    // Two members of 2 × (1 + 250) = 502 bytes each: 1004 of 1024.
    c.heartbeat("m", "n0", &hb("n0", meta(2, 250)))
        .await
        .expect("first");
    c.heartbeat("m", "n1", &hb("n1", meta(2, 250)))
        .await
        .expect("second");
    let err = c
        .heartbeat("m", "n2", &hb("n2", meta(1, 50)))
        .await
        .expect_err("51 more bytes");
    assert_limit(err, "--max-metadata-bytes");
    // Known members renew at the bound, and may change what does not grow.
    c.heartbeat("m", "n0", &hb("n0", meta(2, 250)))
        .await
        .expect("a plain renewal");
    let mut same_size = meta(2, 250);
    same_size.insert("a".into(), "y".repeat(250));
    c.heartbeat("m", "n0", &hb("n0", same_size))
        .await
        .expect("new values of the same size");
    let err = c
        .heartbeat("m", "n1", &hb("n1", meta(3, 250)))
        .await
        .expect_err("a renewal that grows its metadata beyond the bound");
    assert_limit(err, "--max-metadata-bytes");
    assert_eq!(reg.limit_refusals("max-metadata-bytes").await, 2);
    // A member without metadata is not refused, and one that shrinks makes room.
    c.heartbeat("m", "n2", &hb("n2", BTreeMap::new()))
        .await
        .expect("no metadata");
    c.heartbeat("m", "n1", &hb("n1", meta(1, 10)))
        .await
        .expect("shrinking");
    c.heartbeat("m", "n2", &hb("n2", meta(1, 50)))
        .await
        .expect("the room the shrinking member left");
}
