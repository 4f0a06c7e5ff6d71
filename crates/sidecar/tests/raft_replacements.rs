//! Replacements and restarts of etcd members formed by real sidecars, asserted on etcd's own
//! member list and on reads through etcd (issue 13): a node recreated under its name at a
//! new address with an empty data directory replaces its old member; a node restarted from
//! its data at a new address has its peer URL updated; an agent whose server slot opens
//! becomes a voter once the dead member is gone; a member removed while it was away moves
//! its data aside and rejoins as a new member; and a node whose agent cannot start leaves
//! the registry before it exits.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use nix::sys::signal::Signal;

/// The cleanup's threshold the sidecars run with: short, so that a test waits seconds.
const DEAD_MEMBER_AFTER: &str = "4s";

/// Starts `names` as etcd servers of `cluster` (expect 3) and waits until the registry lists
/// all three in the raft.
async fn form_raft(
    registry: &TestRegistry,
    cluster: &str,
    base: &Path,
    names: &[&str],
) -> (Vec<EtcdNode>, Vec<ProcessGuard>) {
    let nodes = EtcdNode::named(names, base);
    let sidecars = nodes
        .iter()
        .map(|n| {
            n.start_sidecar_with(
                &registry.url(),
                cluster,
                3,
                base,
                &["--dead-member-after", DEAD_MEMBER_AFTER],
            )
        })
        .collect();
    poll_until(
        Duration::from_secs(60),
        "three servers in the raft and the registry",
        || async { (registry.servers_in_raft(cluster).await.len() == 3).then_some(()) },
    )
    .await;
    (nodes, sidecars)
}

/// Waits until `node`'s address has left the registry's join targets (it expired).
async fn expired(registry: &TestRegistry, cluster: &str, node: &EtcdNode) {
    poll_until(
        TTL + Duration::from_secs(3),
        "the killed member to expire",
        || async {
            let targets = registry.client.join_targets(cluster, None).await.ok()?;
            (!targets.addresses.contains(&node.address())).then_some(())
        },
    )
    .await;
}

/// `Some(members)` once `base`'s member list has exactly `names`, all voters, each healthy.
async fn voters_exactly(
    etcd: &Etcd,
    base: &str,
    names: &[&str],
    nodes: &[&EtcdNode],
) -> Option<Vec<ListedMember>> {
    let members = etcd.member_list(base).await?;
    let listed: Vec<&str> = members.iter().map(|m| m.name.as_str()).collect();
    if listed != names || members.iter().any(|m| m.learner) {
        return None;
    }
    for node in nodes {
        if !etcd.healthy(&node.client_url()).await {
            return None;
        }
    }
    Some(members)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_name_at_a_new_address_with_empty_data_replaces_its_old_member() {
    const CLUSTER: &str = "same-name";
    let temp = tempfile::tempdir().expect("tempdir");
    let registry = TestRegistry::start(0, &temp.path().join("registry"), temp.path(), &[]).await;
    let (nodes, mut sidecars) = form_raft(&registry, CLUSTER, temp.path(), &["a", "b", "c"]).await;
    let etcd = Etcd::default();
    assert!(etcd.put(&nodes[0].client_url(), "before", "kept").await);
    let old_c = etcd
        .member_list(&nodes[0].client_url())
        .await
        .expect("member list")
        .into_iter()
        .find(|m| m.name == "c")
        .expect("c is a member");

    // The container is recreated without its volume, at another address.
    sidecars[2].kill_all();
    expired(&registry, CLUSTER, &nodes[2]).await;
    let new_c = EtcdNode::at("c", temp.path().join("c-new"), free_port(), free_port());
    let started = Instant::now();
    let mut replacement = new_c.start_sidecar_with(
        &registry.url(),
        CLUSTER,
        3,
        temp.path(),
        &["--dead-member-after", DEAD_MEMBER_AFTER],
    );
    let members = poll_until(
        Duration::from_secs(40),
        "three voters with c at its new peer URL",
        || {
            let (etcd, nodes, new_c) = (&etcd, &nodes, &new_c);
            async move {
                let members = voters_exactly(
                    etcd,
                    &nodes[0].client_url(),
                    &["a", "b", "c"],
                    &[&nodes[0], &nodes[1], new_c],
                )
                .await?;
                members
                    .iter()
                    .any(|m| m.name == "c" && m.peer_urls == [new_c.peer_url()])
                    .then_some(members)
            }
        },
    )
    .await;
    eprintln!(
        "MEASURED same name, new address: a voter again {:?} after the replacement started",
        started.elapsed()
    );
    assert!(
        members.iter().all(|m| m.id != old_c.id),
        "the old member is gone: {members:?}"
    );
    assert_eq!(
        etcd.get(&new_c.client_url(), "before").await.as_deref(),
        Some("kept"),
        "a key written before the replacement is readable through it"
    );
    let log = replacement.log_text();
    assert!(
        log.contains("removing this node's old member before adding it again"),
        "{log}"
    );
    assert!(replacement.running());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_restarted_from_its_data_at_a_new_address_updates_its_peer_url() {
    const CLUSTER: &str = "moved";
    let temp = tempfile::tempdir().expect("tempdir");
    let registry = TestRegistry::start(0, &temp.path().join("registry"), temp.path(), &[]).await;
    let (nodes, mut sidecars) = form_raft(&registry, CLUSTER, temp.path(), &["a", "b", "c"]).await;
    let etcd = Etcd::default();
    let before = etcd
        .member_list(&nodes[0].client_url())
        .await
        .expect("member list");

    // Docker gave the container another address across a stop and a start.
    sidecars[2].kill_all();
    expired(&registry, CLUSTER, &nodes[2]).await;
    let moved = EtcdNode::at("c", nodes[2].data_dir.clone(), free_port(), free_port());
    let started = Instant::now();
    sidecars[2] = moved.start_sidecar_with(
        &registry.url(),
        CLUSTER,
        3,
        temp.path(),
        &["--dead-member-after", DEAD_MEMBER_AFTER],
    );
    let after = poll_until(
        Duration::from_secs(30),
        "c at its new peer URL among three healthy voters",
        || {
            let (etcd, nodes, moved) = (&etcd, &nodes, &moved);
            async move {
                let members = voters_exactly(
                    etcd,
                    &nodes[0].client_url(),
                    &["a", "b", "c"],
                    &[&nodes[0], &nodes[1], moved],
                )
                .await?;
                members
                    .iter()
                    .any(|m| m.name == "c" && m.peer_urls == [moved.peer_url()])
                    .then_some(members)
            }
        },
    )
    .await;
    poll_until(Duration::from_secs(10), "c listed in the raft", || async {
        registry
            .servers_in_raft(CLUSTER)
            .await
            .contains(&"c".to_string())
            .then_some(())
    })
    .await;
    eprintln!(
        "MEASURED same data, new address: healthy at the new peer URL {:?} after the restart",
        started.elapsed()
    );
    let ids = |members: &[ListedMember]| members.iter().map(|m| m.id.clone()).collect::<Vec<_>>();
    assert_eq!(ids(&after), ids(&before), "the same three members");
    assert!(etcd.put(&moved.client_url(), "after-move", "ok").await);
    let log = sidecars[2].log_text();
    assert!(log.contains("restarting from it without claiming"), "{log}");
    assert!(
        log.contains("updated it in the raft before starting etcd"),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_whose_server_slot_opens_becomes_a_voter_once_the_dead_member_is_gone() {
    const CLUSTER: &str = "redecide";
    let temp = tempfile::tempdir().expect("tempdir");
    let registry = TestRegistry::start(0, &temp.path().join("registry"), temp.path(), &[]).await;
    let (nodes, mut sidecars) = form_raft(&registry, CLUSTER, temp.path(), &["a", "b", "c"]).await;
    let etcd = Etcd::default();
    let agent = EtcdNode::new("d", temp.path());
    let mut agent_sidecar = agent.start_sidecar_with(
        &registry.url(),
        CLUSTER,
        3,
        temp.path(),
        &["--dead-member-after", DEAD_MEMBER_AFTER],
    );
    poll_until(Duration::from_secs(20), "d a gateway in the raft", || {
        registry.agent_in_raft(CLUSTER, "d")
    })
    .await;
    // No slot is open while the three servers live: d stays a gateway.
    tokio::time::sleep(2 * INTERVAL).await;
    assert!(registry.agent_in_raft(CLUSTER, "d").await.is_some());

    // A server dies: its slot opens once it expires; d may take it only once the dead
    // member is removed from the raft (etcd refuses a fourth voter's add meanwhile).
    sidecars[0].kill_all();
    let killed = Instant::now();
    let survivors = [&nodes[1], &nodes[2], &agent];
    let saw_four_voters = std::cell::Cell::new(false);
    poll_until(Duration::from_secs(45), "d a voter among b, c, d", || {
        let (etcd, nodes, saw_four_voters, survivors) =
            (&etcd, &nodes, &saw_four_voters, &survivors);
        async move {
            let members = etcd.member_list(&nodes[1].client_url()).await?;
            if members.iter().filter(|m| !m.learner).count() > 3 {
                saw_four_voters.set(true);
            }
            voters_exactly(etcd, &nodes[1].client_url(), &["b", "c", "d"], survivors)
                .await
                .map(|_| ())
        }
    })
    .await;
    eprintln!(
        "MEASURED re-decide: the agent a voter {:?} after a server was killed (dead member after {DEAD_MEMBER_AFTER})",
        killed.elapsed()
    );
    assert!(!saw_four_voters.get(), "never more voters than expect");
    let log = agent_sidecar.log_text();
    assert!(log.contains("server slot is open"), "{log}");
    assert!(agent_sidecar.running());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_member_restarting_from_its_data_moves_it_aside_and_rejoins_as_a_new_member() {
    const CLUSTER: &str = "removed";
    let temp = tempfile::tempdir().expect("tempdir");
    let registry = TestRegistry::start(0, &temp.path().join("registry"), temp.path(), &[]).await;
    let (nodes, mut sidecars) = form_raft(&registry, CLUSTER, temp.path(), &["a", "b", "c"]).await;
    let etcd = Etcd::default();
    assert!(etcd.put(&nodes[0].client_url(), "before", "kept").await);
    let c = &nodes[2];
    // Once healthy, the member's IDs are in its identity file.
    let identity = c.data_dir.join("rollcall-raft.json");
    poll_until(
        Duration::from_secs(10),
        "c's member ID recorded",
        || async {
            let text = std::fs::read_to_string(&identity).ok()?;
            text.contains("member_id").then_some(())
        },
    )
    .await;
    let old_id = etcd
        .member_list(&nodes[0].client_url())
        .await
        .expect("member list")
        .into_iter()
        .find(|m| m.name == "c")
        .expect("c is a member")
        .id;

    // Stopped, then removed by hand while away.
    sidecars[2].signal(Signal::SIGTERM);
    sidecars[2].wait_exit(Duration::from_secs(10)).await;
    let hex_id = format!("{:x}", old_id.parse::<u64>().expect("decimal ID"));
    let removed = std::process::Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .args([
            "--endpoints",
            &nodes[0].client_url(),
            "member",
            "remove",
            &hex_id,
        ])
        .output()
        .expect("run etcdctl");
    assert!(
        removed.status.success(),
        "etcdctl member remove: {}",
        String::from_utf8_lossy(&removed.stderr)
    );

    let started = Instant::now();
    sidecars[2] = c.start_sidecar_with(
        &registry.url(),
        CLUSTER,
        3,
        temp.path(),
        &["--dead-member-after", DEAD_MEMBER_AFTER],
    );
    let members = poll_until(Duration::from_secs(40), "c back as a voter", || async {
        voters_exactly(
            &etcd,
            &nodes[0].client_url(),
            &["a", "b", "c"],
            &[&nodes[0], &nodes[1], c],
        )
        .await
    })
    .await;
    eprintln!(
        "MEASURED removed member: a voter again as a new member {:?} after its restart",
        started.elapsed()
    );
    let new_id = &members.iter().find(|m| m.name == "c").expect("c").id;
    assert_ne!(*new_id, old_id, "a new member, not the removed one");
    assert_eq!(
        etcd.get(&c.client_url(), "before").await.as_deref(),
        Some("kept")
    );
    // The old data is kept beside the data directory, nothing deleted.
    let aside: Vec<_> = std::fs::read_dir(temp.path())
        .expect("read the temp dir")
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("c.wrong-raft-"))
        .collect();
    assert_eq!(aside.len(), 1, "one directory moved aside");
    assert!(aside[0].path().join("member/wal").is_dir());
    let log = sidecars[2].log_text();
    assert!(
        log.contains("removed from the raft while it was away"),
        "{log}"
    );
}

#[tokio::test]
async fn a_node_whose_agent_cannot_start_leaves_the_registry_before_it_exits() {
    const CLUSTER: &str = "failed-start";
    let temp = tempfile::tempdir().expect("tempdir");
    let registry = TestRegistry::start(0, &temp.path().join("registry"), temp.path(), &[]).await;
    let mut command = exec_sidecar(&registry.url(), CLUSTER, "broken", &[]);
    command.args(["run", "--", "/nonexistent/agent"]);
    let mut sidecar = ProcessGuard::spawn("broken", command, temp.path().join("broken.log"));
    let status = sidecar.wait_exit(Duration::from_secs(10)).await;
    assert_eq!(status.code(), Some(127), "{}", sidecar.log_text());
    // Well within the claim's TTL: the slot was released by the leave, not by expiry.
    let detail = registry.client.cluster(CLUSTER).await.expect("cluster");
    assert!(
        detail.claims.iter().all(|c| c.node != "broken"),
        "the claim is released at once: {:?}",
        detail.claims
    );
    assert!(sidecar.log_text().contains("left the registry"));
}
