//! A member killed with SIGKILL drops out of the registry within TTL + 1s and, restarted
//! with its data directory, rejoins as the same etcd member; a member stopped with SIGTERM
//! leaves the registry at once and its sidecar exits with etcd's own code.

mod common;

use std::time::{Duration, Instant};

use common::*;
use nix::sys::signal::Signal;

const CLUSTER: &str = "etcd-restart";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_member_expires_then_rejoins_with_its_data_and_a_stopped_one_leaves() {
    let temp = tempfile::tempdir().expect("tempdir");
    let logs = temp.path();
    let registry = TestRegistry::start(0, &temp.path().join("registry"), logs, &[]).await;
    let nodes = EtcdNode::named(&["m1", "m2", "m3"], temp.path());
    let etcd = Etcd::default();
    let mut sidecars = EtcdNode::start_sidecars(&nodes, &registry.url(), CLUSTER, 3, logs);
    poll_until(
        Duration::from_secs(60),
        "three servers in the raft and the registry",
        || {
            let registry = &registry;
            async move { (registry.servers_in_raft(CLUSTER).await.len() == 3).then_some(()) }
        },
    )
    .await;
    let members_before = etcd
        .members(&nodes[0].client_url())
        .await
        .expect("member list");
    assert_eq!(members_before.len(), 3);

    // SIGKILL the sidecar and its etcd: no leave is sent, so the entry must expire.
    let victim = &nodes[1];
    let agent_pids = sidecars[1].descendants();
    assert!(!agent_pids.is_empty(), "the sidecar runs etcd as its child");
    let killed = Instant::now();
    sidecars[1].kill_all();
    poll_until(
        TTL + Duration::from_secs(2),
        "the killed member to leave /members",
        || {
            let (registry, victim) = (&registry, victim);
            async move {
                let targets = registry.client.join_targets(CLUSTER, None).await.ok()?;
                (!targets.addresses.contains(&victim.address())).then_some(())
            }
        },
    )
    .await;
    let gone_after = killed.elapsed();
    eprintln!("MEASURED SIGKILLed member left /members after {gone_after:?} (TTL {TTL:?})");
    assert!(
        gone_after <= TTL + Duration::from_secs(1),
        "left after {gone_after:?}"
    );

    // Restarted with its data directory: no claim, no member add, the same member ID.
    sidecars[1] = victim.start_sidecar(&registry.url(), CLUSTER, 3, logs);
    poll_until(
        Duration::from_secs(30),
        "the restarted member back in the raft and the registry",
        || {
            let (registry, etcd, victim) = (&registry, &etcd, victim);
            async move {
                let listed = registry
                    .servers_in_raft(CLUSTER)
                    .await
                    .contains(&victim.name);
                (listed && etcd.healthy(&victim.client_url()).await).then_some(())
            }
        },
    )
    .await;
    assert_eq!(
        etcd.members(&nodes[0].client_url())
            .await
            .expect("member list"),
        members_before,
        "the same three members with the same IDs: the restarted node was not added again"
    );
    let log = sidecars[1].log_text();
    assert!(log.contains("restarting from it without claiming"), "{log}");
    assert!(!log.contains("added this node"), "{log}");

    // SIGTERM: etcd stops, the sidecar leaves the registry and exits with etcd's code
    // (etcd re-raises SIGTERM after its cleanup, so that code is 128 + 15).
    let stopping = &nodes[2];
    let etcd_pids = sidecars[2].descendants();
    sidecars[2].signal(Signal::SIGTERM);
    let status = sidecars[2].wait_exit(Duration::from_secs(10)).await;
    assert_eq!(
        status.code(),
        Some(143),
        "the sidecar exits with etcd's code"
    );
    let targets = registry
        .client
        .join_targets(CLUSTER, None)
        .await
        .expect("join targets");
    assert!(
        !targets.addresses.contains(&stopping.address()),
        "left the registry before exiting, not by expiry"
    );
    for pid in etcd_pids {
        assert!(
            !std::path::Path::new(&format!("/proc/{pid}")).exists(),
            "etcd {pid} is gone"
        );
    }
}
