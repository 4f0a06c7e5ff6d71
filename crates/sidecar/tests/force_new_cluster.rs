//! Quorum-loss recovery with `--force-new-cluster`: two members of a three-member etcd raft
//! are killed for good; the survivor's sidecar, restarted on its data directory with the
//! flag, runs a one-member raft that serves the data written before. The flag works once per
//! data directory (a later start with it set ignores it), and is refused (exit 64) on a data
//! directory without raft state.

mod common;

use std::time::Duration;

use common::*;
use nix::sys::signal::Signal;

const CLUSTER: &str = "etcd-force";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_survivor_forced_into_a_new_cluster_keeps_its_data() {
    let temp = tempfile::tempdir().expect("tempdir");
    let logs = temp.path();
    let registry = TestRegistry::start(0, &temp.path().join("registry"), logs, &[]).await;
    let nodes = EtcdNode::named(&["f1", "f2", "f3"], temp.path());
    let etcd = Etcd::default();
    let mut sidecars = EtcdNode::start_sidecars(&nodes, &registry.url(), CLUSTER, 3, logs);
    registry.until_voters_listed(&etcd, &nodes, CLUSTER).await;
    assert!(etcd.put(&nodes[0].client_url(), "survives", "yes").await);
    // A linearizable read through the survivor: its own log holds the write (a write is
    // acknowledged once a majority has it, which need not include the survivor).
    assert_eq!(
        etcd.get(&nodes[0].client_url(), "survives")
            .await
            .as_deref(),
        Some("yes")
    );
    let (cluster_id, _, _) = etcd.status(&nodes[0].client_url()).await.expect("status");

    // Two of three gone for good. The survivor, without a quorum, is restarted by its
    // operator: stopped (SIGTERM, so etcd flushes what it applied: a SIGKILL could lose the
    // last 100 ms, etcd's backend batch interval, and `--force-new-cluster` discards WAL
    // entries past the last commit index it wrote), then started with the flag.
    sidecars[1].kill_all();
    sidecars[2].kill_all();
    sidecars[0].signal(Signal::SIGTERM);
    sidecars[0].wait_exit(Duration::from_secs(10)).await;
    let survivor = &nodes[0];
    let forced =
        survivor.start_sidecar_with(&registry.url(), CLUSTER, 3, logs, &["--force-new-cluster"]);
    poll_until(
        Duration::from_secs(30),
        "a one-member raft on the survivor that serves the old key",
        || {
            let (etcd, survivor) = (&etcd, survivor);
            async move {
                let names = etcd.member_names(&survivor.client_url()).await?;
                let value = etcd.get(&survivor.client_url(), "survives").await?;
                (names == ["f1"] && value == "yes").then_some(())
            }
        },
    )
    .await;
    assert!(etcd.put(&survivor.client_url(), "after-force", "ok").await);
    let (forced_cluster_id, _, _) = etcd.status(&survivor.client_url()).await.expect("status");
    assert_eq!(
        forced_cluster_id, cluster_id,
        "the same etcd cluster, one member"
    );
    poll_until(
        Duration::from_secs(10),
        "the force-new-cluster marker",
        || async {
            survivor
                .data_dir
                .join("rollcall-forced-new-cluster")
                .exists()
                .then_some(())
        },
    )
    .await;
    poll_until(
        Duration::from_secs(10),
        "the registry to list the survivor",
        || registry.listing(CLUSTER, "f1"),
    )
    .await;

    // Once per data directory: started again with the flag still set, it is ignored.
    drop(forced);
    let again =
        survivor.start_sidecar_with(&registry.url(), CLUSTER, 3, logs, &["--force-new-cluster"]);
    poll_until(
        Duration::from_secs(30),
        "the survivor back from its data",
        || {
            let (etcd, survivor) = (&etcd, survivor);
            async move {
                let value = etcd.get(&survivor.client_url(), "after-force").await?;
                (value == "ok").then_some(())
            }
        },
    )
    .await;
    assert!(again.log_text().contains("ignoring the flag"));
    assert_eq!(
        etcd.member_names(&survivor.client_url()).await,
        Some(vec!["f1".to_string()])
    );

    // Without raft state there is nothing to recover: exit 64 before anything starts.
    let empty = EtcdNode::new("f4", temp.path());
    let refused = empty
        .sidecar_command_with(&registry.url(), CLUSTER, 3, &["--force-new-cluster"])
        .output()
        .expect("run the sidecar");
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(64), "{stderr}");
    assert!(stderr.contains("holds none"), "{stderr}");
    assert!(!empty.data_dir.join("member").exists());
}

/// The in-container path: `rollcall-sidecar force-new-cluster` (what `docker exec` runs)
/// asks for it and stops the running sidecar; started again with the same command line (a
/// restart policy does that), the survivor runs a one-member raft with its data, and two new
/// nodes join it: three voters again, the key kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn force_new_cluster_from_inside_then_two_new_nodes_make_three_voters_again() {
    let temp = tempfile::tempdir().expect("tempdir");
    let logs = temp.path();
    let registry = TestRegistry::start(0, &temp.path().join("registry"), logs, &[]).await;
    let cluster = "etcd-force-inside";
    let nodes = EtcdNode::named(&["h1", "h2", "h3"], temp.path());
    let etcd = Etcd::default();
    let mut sidecars = EtcdNode::start_sidecars(&nodes, &registry.url(), cluster, 3, logs);
    registry.until_voters_listed(&etcd, &nodes, cluster).await;
    assert!(etcd.put(&nodes[0].client_url(), "kept", "yes").await);
    assert_eq!(
        etcd.get(&nodes[0].client_url(), "kept").await.as_deref(),
        Some("yes")
    );

    // Two of three gone for good; the survivor is stuck without a quorum.
    sidecars[1].kill_all();
    sidecars[2].kill_all();
    let survivor = &nodes[0];
    let asked = survivor
        .sidecar_environment(&registry.url(), cluster, 3)
        .arg("force-new-cluster")
        .output()
        .expect("run force-new-cluster");
    assert!(
        asked.status.success(),
        "{}",
        String::from_utf8_lossy(&asked.stderr)
    );
    let stopped = sidecars[0].wait_exit(Duration::from_secs(15)).await;
    assert_eq!(
        stopped.code(),
        Some(143),
        "the survivor's sidecar stops on SIGTERM"
    );

    // The restart policy's start: the same command line, no flag.
    let _forced = survivor.start_sidecar(&registry.url(), cluster, 3, logs);
    poll_until(
        Duration::from_secs(30),
        "a one-member raft with the old key",
        || {
            let (etcd, survivor) = (&etcd, survivor);
            async move {
                let names = etcd.member_names(&survivor.client_url()).await?;
                let value = etcd.get(&survivor.client_url(), "kept").await?;
                (names == ["h1"] && value == "yes").then_some(())
            }
        },
    )
    .await;
    poll_until(Duration::from_secs(10), "the request served", || async {
        (!survivor
            .data_dir
            .join("rollcall-force-new-cluster")
            .exists())
        .then_some(())
    })
    .await;

    // Two new nodes join the survivor: three voters again. The dead members' registry
    // entries expired long ago; the forced raft has no trace of them.
    let newcomers: Vec<EtcdNode> = ["h4", "h5"]
        .iter()
        .map(|n| EtcdNode::new(n, temp.path()))
        .collect();
    let _newcomers: Vec<ProcessGuard> = newcomers
        .iter()
        .map(|n| n.start_sidecar(&registry.url(), cluster, 3, logs))
        .collect();
    poll_until(Duration::from_secs(60), "three voters again", || {
        let (etcd, survivor) = (&etcd, survivor);
        async move {
            let members = etcd.members(&survivor.client_url()).await?;
            let voters: Vec<&str> = members
                .iter()
                .filter(|m| !m.2)
                .map(|m| m.1.as_str())
                .collect();
            (voters == ["h1", "h4", "h5"]).then_some(())
        }
    })
    .await;
    assert_eq!(
        etcd.get(&newcomers[1].client_url(), "kept")
            .await
            .as_deref(),
        Some("yes")
    );
}
