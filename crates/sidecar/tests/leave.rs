//! `rollcall-sidecar leave` on a real etcd raft of three sidecars: refused (exit 77, nothing
//! changed) while another voter is down, since the two voters left would have one healthy;
//! with all three up, it removes the member from etcd's member list, the registry no longer
//! lists it, and its running sidecar exits 0. Started again, the sidecar finds the
//! `rollcall-left` marker, moves the data directory aside and joins as a new member.

mod common;

use std::time::{Duration, Instant};

use common::*;

const CLUSTER: &str = "etcd-leave";

fn leave(registry: &TestRegistry, node: &EtcdNode) -> std::process::Output {
    node.sidecar_environment(&registry.url(), CLUSTER, 3)
        .arg("leave")
        .output()
        .expect("run rollcall-sidecar leave")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leave_removes_the_member_for_good_unless_it_would_cost_the_quorum() {
    let temp = tempfile::tempdir().expect("tempdir");
    let logs = temp.path();
    let registry = TestRegistry::start(0, &temp.path().join("registry"), logs, &[]).await;
    let nodes = EtcdNode::named(&["l1", "l2", "l3"], temp.path());
    let etcd = Etcd::default();
    let mut sidecars = EtcdNode::start_sidecars(&nodes, &registry.url(), CLUSTER, 3, logs);
    registry.until_voters_listed(&etcd, &nodes, CLUSTER).await;
    let ids_before = etcd
        .members(&nodes[1].client_url())
        .await
        .expect("member list");

    // l1 is down: l2 leaving would leave l1 and l3 with one healthy voter of two.
    sidecars[0].kill_all();
    let refused = leave(&registry, &nodes[1]);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(77), "{stderr}");
    assert!(stderr.contains("leave refused"), "{stderr}");
    assert!(stderr.contains("not a majority"), "{stderr}");
    assert_eq!(
        etcd.members(&nodes[1].client_url()).await,
        Some(ids_before.clone()),
        "nothing changed in the raft"
    );
    assert!(sidecars[1].running(), "the sidecar was not told to stop");
    assert!(!nodes[1].data_dir.join("rollcall-left").exists());
    assert!(
        registry.listing(CLUSTER, "l2").await.is_some(),
        "the registry still lists l2"
    );

    // l1 comes back from its data: now l3 may leave.
    sidecars[0] = nodes[0].start_sidecar(&registry.url(), CLUSTER, 3, logs);
    registry.until_voters_listed(&etcd, &nodes, CLUSTER).await;
    let leaving = Instant::now();
    let left = leave(&registry, &nodes[2]);
    let stderr = String::from_utf8_lossy(&left.stderr);
    assert_eq!(left.status.code(), Some(0), "{stderr}");
    let status = sidecars[2].wait_exit(Duration::from_secs(15)).await;
    assert_eq!(
        status.code(),
        Some(0),
        "the left member's sidecar exits 0: {}",
        sidecars[2].log_text()
    );
    eprintln!(
        "MEASURED leave to the sidecar's exit: {:?}",
        leaving.elapsed()
    );
    for node in &nodes[..2] {
        assert_eq!(
            etcd.member_names(&node.client_url()).await,
            Some(vec!["l1".to_string(), "l2".to_string()]),
            "{}'s member list",
            node.name
        );
    }
    assert!(nodes[2].data_dir.join("rollcall-left").exists());
    // Left at once, and not back after two more intervals (no heartbeat followed the leave).
    for _ in 0..2 {
        assert!(
            registry.listing(CLUSTER, "l3").await.is_none(),
            "the registry no longer lists l3"
        );
        tokio::time::sleep(INTERVAL).await;
    }
    assert!(etcd.put(&nodes[0].client_url(), "after-leave", "two").await);
    assert_eq!(
        etcd.get(&nodes[1].client_url(), "after-leave")
            .await
            .as_deref(),
        Some("two")
    );

    // Started again, l3 moves its old data aside and joins as a new member (a new ID).
    let old_l3 = ids_before
        .iter()
        .find(|m| m.1 == "l3")
        .map(|m| m.0.clone())
        .expect("l3's old ID");
    sidecars[2] = nodes[2].start_sidecar(&registry.url(), CLUSTER, 3, logs);
    registry.until_voters_listed(&etcd, &nodes, CLUSTER).await;
    let members = etcd
        .members(&nodes[0].client_url())
        .await
        .expect("member list");
    let new_l3 = members.iter().find(|m| m.1 == "l3").expect("l3 is back");
    assert_ne!(new_l3.0, old_l3, "l3 joined as a new member");
    let aside: Vec<String> = std::fs::read_dir(temp.path())
        .expect("read the test directory")
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| n.starts_with("l3.left-"))
        .collect();
    assert_eq!(
        aside.len(),
        1,
        "the old data directory was moved aside: {aside:?}"
    );
    assert!(temp
        .path()
        .join(&aside[0])
        .join("member")
        .join("wal")
        .is_dir());
    assert!(!nodes[2].data_dir.join("rollcall-left").exists());
    assert_eq!(
        etcd.get(&nodes[2].client_url(), "after-leave")
            .await
            .as_deref(),
        Some("two")
    );
}
