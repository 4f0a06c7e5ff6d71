//! Dead-member cleanup on a real etcd raft: three sidecars with `--dead-member-after 4s`
//! against the real registry (TTL 1 s, interval 0.5 s); one member is killed with SIGKILL
//! (its sidecar and its etcd) and never comes back. The leader's sidecar removes it from
//! etcd's member list once both the leader's peer connections and the registry's absence
//! say it has been gone for the threshold: not before, and within the threshold plus two
//! intervals. The raft keeps serving writes and reads.

mod common;

use std::time::{Duration, Instant};

use common::*;

const CLUSTER: &str = "etcd-cleanup";
const CLEANUP_INTERVAL: Duration = Duration::from_millis(500);
const CLEANUP_TIMING: &[&str] = &[
    "--ttl",
    "1s",
    "--interval",
    "500ms",
    "--startup-grace",
    "500ms",
    "--quiet-period",
    "500ms",
];
const THRESHOLD: Duration = Duration::from_secs(4);
/// The removal may come after the threshold by: up to one interval until the leader first
/// sees the connection down (its evidence counts from that heartbeat), one more until the
/// next heartbeat's pass, and the requests and the poll's 100 ms granularity.
const REMOVAL_MARGIN: Duration = Duration::from_millis(500);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_member_is_removed_after_the_threshold_and_not_before() {
    let temp = tempfile::tempdir().expect("tempdir");
    let logs = temp.path();
    let registry = TestRegistry::start_with_timing(
        0,
        &temp.path().join("registry"),
        logs,
        CLEANUP_TIMING,
        &[],
    )
    .await;
    let nodes: Vec<EtcdNode> = ["d1", "d2", "d3"]
        .iter()
        .map(|n| EtcdNode::new(n, temp.path()))
        .collect();
    let etcd = Etcd::default();
    let mut sidecars: Vec<ProcessGuard> = nodes
        .iter()
        .map(|n| {
            n.start_sidecar_with(
                &registry.url(),
                CLUSTER,
                3,
                logs,
                &["--dead-member-after", "4s"],
            )
        })
        .collect();
    registry.until_voters_listed(&etcd, &nodes, CLUSTER).await;
    assert!(
        etcd.put(&nodes[0].client_url(), "before-kill", "kept")
            .await
    );

    // A follower dies for good: the leader's sidecar is the one that removes it.
    let (_, _, leader_id) = etcd.status(&nodes[0].client_url()).await.expect("status");
    let mut leader = None;
    let mut victim = None;
    for (i, node) in nodes.iter().enumerate() {
        let (_, member_id, _) = etcd.status(&node.client_url()).await.expect("status");
        if member_id == leader_id {
            leader = Some(i);
        } else if victim.is_none() {
            victim = Some(i);
        }
    }
    let (leader, victim) = (leader.expect("a leader"), victim.expect("a follower"));
    let survivors: Vec<usize> = (0..3).filter(|i| *i != victim).collect();
    let killed = Instant::now();
    sidecars[victim].kill_all();

    let removed_after = poll_until(
        THRESHOLD + Duration::from_secs(15),
        "the killed member's removal from etcd's member list",
        || {
            let (etcd, nodes, survivors) = (&etcd, &nodes, &survivors);
            async move {
                let names = etcd.member_names(&nodes[survivors[0]].client_url()).await?;
                (!names.contains(&nodes[victim].name)).then(|| killed.elapsed())
            }
        },
    )
    .await;
    eprintln!(
        "MEASURED killed member removed from etcd's member list {removed_after:?} after the kill (--dead-member-after {THRESHOLD:?}, interval {CLEANUP_INTERVAL:?})"
    );
    assert!(
        removed_after >= THRESHOLD,
        "removed {removed_after:?} after the kill, before the threshold {THRESHOLD:?}"
    );
    assert!(
        removed_after <= THRESHOLD + 2 * CLEANUP_INTERVAL + REMOVAL_MARGIN,
        "removed {removed_after:?} after the kill: more than the threshold plus two intervals"
    );

    // Exactly the two survivors remain, both voters; the raft serves writes and reads.
    let expected: Vec<String> = survivors.iter().map(|i| nodes[*i].name.clone()).collect();
    for i in &survivors {
        let members = etcd
            .members(&nodes[*i].client_url())
            .await
            .expect("member list");
        let names: Vec<String> = members.iter().map(|m| m.1.clone()).collect();
        assert_eq!(names, expected, "{}'s member list", nodes[*i].name);
        assert!(members.iter().all(|m| !m.2), "no learner: {members:?}");
    }
    for i in &survivors {
        let base = nodes[*i].client_url();
        assert_eq!(
            etcd.get(&base, "before-kill").await.as_deref(),
            Some("kept")
        );
        assert!(etcd.put(&base, "after-removal", &nodes[*i].name).await);
    }
    assert_eq!(
        etcd.get(&nodes[survivors[0]].client_url(), "after-removal")
            .await
            .as_deref(),
        Some(nodes[survivors[1]].name.as_str())
    );

    // The leader's sidecar said what it removed and on what evidence.
    let log = sidecars[leader].log_text();
    let line = log
        .lines()
        .find(|l| l.contains("removed a dead member from the raft"))
        .unwrap_or_else(|| panic!("no removal in the leader's log:\n{log}"));
    for evidence in [
        "disconnected_for",
        "absent_from_registry_for",
        "2 connected voters of 2 remain, at least 2 needed",
        &format!("name={}", nodes[victim].name),
    ] {
        assert!(line.contains(evidence), "{evidence:?} missing from: {line}");
    }
    // No one else goes: the connected survivors are never candidates.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        etcd.member_names(&nodes[survivors[0]].client_url())
            .await
            .expect("member list"),
        expected
    );
}
