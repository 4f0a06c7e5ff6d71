//! Three real sidecars running real etcd against the real registry: they form one raft,
//! the raft outlives the registry, a registry restarted empty relearns every member from
//! heartbeats, and a fourth node joins the same raft instead of starting a second one.

mod common;

use std::time::{Duration, Instant};

use common::*;

const CLUSTER: &str = "etcd-three";
/// What "within one interval" may exceed the interval by: the heartbeat request, the
/// registry's answer and the poll's 100 ms granularity.
const SCHEDULING_MARGIN: Duration = Duration::from_millis(300);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_sidecars_form_one_raft_that_outlives_and_refills_the_registry() {
    let temp = tempfile::tempdir().expect("tempdir");
    let logs = temp.path();
    let mut registry = TestRegistry::start(0, &temp.path().join("registry-a"), logs, &[]).await;
    let nodes: Vec<EtcdNode> = ["n1", "n2", "n3"]
        .iter()
        .map(|n| EtcdNode::new(n, temp.path()))
        .collect();
    let etcd = Etcd::default();

    // All three at the same instant.
    let started = Instant::now();
    let _sidecars: Vec<ProcessGuard> = nodes
        .iter()
        .map(|n| n.start_sidecar(&registry.url(), CLUSTER, 3, logs))
        .collect();

    // One raft of three healthy voters with one leader, all three listed by the registry.
    let cluster_id = poll_until(
        Duration::from_secs(60),
        "a healthy three-member raft",
        || {
            let (etcd, nodes) = (&etcd, &nodes);
            async move {
                let mut cluster_ids = Vec::new();
                let mut leaders = Vec::new();
                for node in nodes {
                    if !etcd.healthy(&node.client_url()).await {
                        return None;
                    }
                    let members = etcd.members(&node.client_url()).await?;
                    if members.len() != 3 || members.iter().any(|m| m.2) {
                        return None;
                    }
                    let (cluster_id, _, leader) = etcd.status(&node.client_url()).await?;
                    cluster_ids.push(cluster_id);
                    leaders.push(leader);
                }
                cluster_ids.dedup();
                leaders.dedup();
                (cluster_ids.len() == 1 && leaders.len() == 1).then(|| cluster_ids.remove(0))
            }
        },
    )
    .await;
    let raft_healthy_after = started.elapsed();
    poll_until(
        Duration::from_secs(10),
        "the registry to list three servers in the raft",
        || {
            let registry = &registry;
            async move { (registry.servers_in_raft(CLUSTER).await.len() == 3).then_some(()) }
        },
    )
    .await;
    let registered_after = started.elapsed();
    eprintln!(
        "MEASURED start to healthy three-member etcd raft: {raft_healthy_after:?}; to three servers in the registry: {registered_after:?}"
    );
    let member_ids_before = etcd
        .members(&nodes[0].client_url())
        .await
        .expect("member list");

    // The registry dies: the raft keeps serving writes and reads.
    registry.kill();
    assert!(
        etcd.put(&nodes[0].client_url(), "written-without-registry", "yes")
            .await
    );
    assert_eq!(
        etcd.get(&nodes[2].client_url(), "written-without-registry")
            .await
            .as_deref(),
        Some("yes")
    );

    // A registry restarted on the same port with an EMPTY data directory lists all three
    // again within one heartbeat interval, plus a small scheduling margin: a heartbeat that
    // failed while it was down is retried after a quarter interval, one that did not fail
    // comes within the interval anyway. The poll waits longer so a miss prints its figure.
    let port = registry.port;
    drop(registry);
    let registry = TestRegistry::start(port, &temp.path().join("registry-b"), logs, &[]).await;
    let restarted = Instant::now();
    poll_until(
        INTERVAL + Duration::from_secs(3),
        "the empty registry to relearn three servers",
        || {
            let registry = &registry;
            async move { (registry.servers_in_raft(CLUSTER).await.len() == 3).then_some(()) }
        },
    )
    .await;
    let relisted_after = restarted.elapsed();
    eprintln!("MEASURED empty registry relisted all three servers after {relisted_after:?} (interval {INTERVAL:?})");
    assert!(
        relisted_after <= INTERVAL + SCHEDULING_MARGIN,
        "relisted after {relisted_after:?}, more than one interval ({INTERVAL:?}) plus {SCHEDULING_MARGIN:?}"
    );

    // A fourth node with expect=3: three live servers fill the raft, so it is granted
    // `agent` and runs an etcd gateway to them. It serves the same data and cluster ID,
    // and the raft still has exactly the same three members: no second raft started.
    let fourth = EtcdNode::new("n4", temp.path());
    let _fourth_sidecar = fourth.start_sidecar(&registry.url(), CLUSTER, 3, logs);
    poll_until(
        Duration::from_secs(30),
        "the fourth node as a healthy agent",
        || registry.agent_in_raft(CLUSTER, "n4"),
    )
    .await;
    assert_eq!(
        etcd.get(&fourth.client_url(), "written-without-registry")
            .await
            .as_deref(),
        Some("yes"),
        "the gateway reads the same raft"
    );
    let (gateway_cluster_id, _, _) = etcd
        .status(&fourth.client_url())
        .await
        .expect("status through the gateway");
    assert_eq!(gateway_cluster_id, cluster_id);
    for node in &nodes {
        let (id, _, _) = etcd.status(&node.client_url()).await.expect("status");
        assert_eq!(id, cluster_id, "{} is still in the first raft", node.name);
    }
    assert_eq!(
        etcd.members(&nodes[1].client_url())
            .await
            .expect("member list"),
        member_ids_before
    );
    assert_eq!(registry.servers_in_raft(CLUSTER).await.len(), 3);
    assert!(
        !fourth.data_dir.join("member").exists(),
        "a gateway keeps no raft of its own"
    );
}
