//! `rollcall-sidecar alive`, the healthcheck a Swarm service uses, against a real etcd raft
//! formed by real sidecars: alive while etcd answers at all, including after the raft lost
//! its quorum (etcd's /health fails then, and an orchestrator that killed the member would
//! only make recovery harder); not alive when etcd stops answering or no sidecar runs.

mod common;

use std::time::Duration;

use common::*;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

const CLUSTER: &str = "alive";

fn alive(node: &EtcdNode, registry_url: &str) -> (i32, String) {
    let output = node
        .sidecar_environment(registry_url, CLUSTER, 3)
        .arg("alive")
        .output()
        .expect("rollcall-sidecar alive");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alive_while_etcd_answers_even_without_quorum_and_not_when_it_stops_answering() {
    let temp = tempfile::tempdir().expect("tempdir");
    let logs = temp.path();
    let registry = TestRegistry::start(0, &temp.path().join("registry"), logs, &[]).await;
    let nodes: Vec<EtcdNode> = ["a1", "a2", "a3"]
        .iter()
        .map(|n| EtcdNode::new(n, temp.path()))
        .collect();

    // No sidecar runs for this data directory yet.
    let (code, line) = alive(&nodes[0], &registry.url());
    assert_eq!(code, 1, "{line}");
    assert!(line.contains("no rollcall-sidecar process"), "{line}");

    let etcd = Etcd::default();
    let mut sidecars: Vec<ProcessGuard> = nodes
        .iter()
        .map(|n| n.start_sidecar(&registry.url(), CLUSTER, 3, logs))
        .collect();
    registry.until_voters_listed(&etcd, &nodes, CLUSTER).await;
    let (code, line) = alive(&nodes[0], &registry.url());
    assert_eq!(code, 0, "{line}");
    assert!(line.contains("answered") && line.contains("200"), "{line}");

    // Two of three members gone: no quorum, etcd's /health fails, the member is alive.
    sidecars[1].kill_all();
    sidecars[2].kill_all();
    poll_until(
        Duration::from_secs(20),
        "etcd's /health to fail without quorum",
        || {
            let (etcd, node) = (&etcd, &nodes[0]);
            async move { (!etcd.healthy(&node.client_url()).await).then_some(()) }
        },
    )
    .await;
    let (code, line) = alive(&nodes[0], &registry.url());
    assert_eq!(code, 0, "a member without quorum is alive: {line}");

    // etcd frozen: it answers nothing, and the member is not alive.
    let agents = sidecars[0].descendants();
    assert!(!agents.is_empty(), "the sidecar runs etcd");
    for pid in &agents {
        kill(Pid::from_raw(*pid), Signal::SIGSTOP).expect("SIGSTOP etcd");
    }
    let (code, line) = alive(&nodes[0], &registry.url());
    for pid in &agents {
        kill(Pid::from_raw(*pid), Signal::SIGCONT).expect("SIGCONT etcd");
    }
    assert_eq!(code, 1, "{line}");
    assert!(line.contains("did not answer"), "{line}");
    sidecars[0].kill_all();
}
