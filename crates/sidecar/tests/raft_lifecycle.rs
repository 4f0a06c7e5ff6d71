//! A raft that lives (issue 13), with real etcd members formed by real sidecars and the real
//! registry, on loopback, with short thresholds: every assertion reads etcd's own member list
//! and writes and reads through etcd.
//!
//! - three successive replacements, each with a new name and a new address: writable
//!   throughout except during elections, and at the end exactly the three live members;
//! - the leader killed with SIGKILL: removed within the threshold plus an interval, and a new
//!   node takes its place;
//! - grow 3 -> 5 voters by resizing (the agents become voters), shrink 5 -> 3 with `leave`,
//!   then one more killed: the raft keeps its quorum;
//! - total loss: a clear refusal (`raft_lost`) within one interval after the threshold, the
//!   operator's reset, a new raft;
//! - a staggered full stop and restart keeps every member and key.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use nix::sys::signal::Signal;
use rollcall_protocol::{ClaimRequest, ClientError, ErrorCode};

/// The cleanup threshold (`--dead-member-after`) the sidecars run with here.
const DEAD_AFTER: Duration = Duration::from_secs(4);
/// `--raft-lost-after` for the registry here.
const LOST_AFTER: &str = "4s";

/// A node with its sidecar, started with the short threshold.
fn start(node: &EtcdNode, registry: &str, cluster: &str, expect: u32, logs: &Path) -> ProcessGuard {
    let mut command = node.sidecar_command(registry, cluster, expect);
    command
        .env("ROLLCALL_DEAD_MEMBER_AFTER", "4s")
        .env("ROLLCALL_JOIN_TIMEOUT", "30s");
    ProcessGuard::spawn(
        &format!("sidecar {}", node.name),
        command,
        logs.join(format!("sidecar-{}-{}.log", node.name, node.client_port)),
    )
}

/// The names of etcd's members as `via` lists them, when every one of them is a started
/// voter (named, not a learner); `None` otherwise or when `via` does not answer.
async fn started_voters(etcd: &Etcd, via: &str) -> Option<BTreeSet<String>> {
    let members = etcd.members(via).await?;
    if members
        .iter()
        .any(|(_, name, learner)| name.is_empty() || *learner)
    {
        return None;
    }
    Some(members.into_iter().map(|(_, name, _)| name).collect())
}

/// A sidecar for each of `nodes`, all at once, with the short threshold (expect 3).
fn start_all(nodes: &[EtcdNode], registry: &str, cluster: &str, logs: &Path) -> Vec<ProcessGuard> {
    nodes
        .iter()
        .map(|n| start(n, registry, cluster, 3, logs))
        .collect()
}

/// Waits until every node of `live` lists exactly `live`'s names as started voters, all with
/// one leader, and returns the time it took.
async fn until_exactly(etcd: &Etcd, live: &[&EtcdNode], timeout: Duration, what: &str) -> Duration {
    let want: BTreeSet<String> = live.iter().map(|n| n.name.clone()).collect();
    let started = Instant::now();
    poll_until(timeout, what, || {
        let want = want.clone();
        async move {
            let mut leaders = BTreeSet::new();
            for node in live {
                if !etcd.healthy(&node.client_url()).await {
                    return None;
                }
                if started_voters(etcd, &node.client_url()).await? != want {
                    return None;
                }
                leaders.insert(etcd.status(&node.client_url()).await?.2);
            }
            (leaders.len() == 1).then_some(())
        }
    })
    .await;
    started.elapsed()
}

/// The node among `nodes` that leads the raft.
async fn leader<'a>(etcd: &Etcd, nodes: &[&'a EtcdNode]) -> &'a EtcdNode {
    poll_until(Duration::from_secs(20), "a leader", || async {
        for node in nodes {
            let (_, me, leader) = etcd.status(&node.client_url()).await?;
            if me == leader {
                return Some(*node);
            }
        }
        None
    })
    .await
}

/// Writes `key` through any of `nodes` every 100 ms in the background and records the longest
/// stretch in which no write succeeded, until the returned sender is dropped.
struct WriteProbe {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<(u32, Duration)>,
}

impl WriteProbe {
    fn start(etcd: Etcd, urls: std::sync::Arc<std::sync::Mutex<Vec<String>>>) -> WriteProbe {
        let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let (mut writes, mut longest) = (0u32, Duration::ZERO);
            let mut last_ok = Instant::now();
            loop {
                let targets = urls.lock().expect("urls").clone();
                let mut ok = false;
                for url in &targets {
                    if etcd.put(url, "probe", &writes.to_string()).await {
                        ok = true;
                        break;
                    }
                }
                if ok {
                    writes += 1;
                    last_ok = Instant::now();
                } else {
                    longest = longest.max(last_ok.elapsed());
                }
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                    _ = &mut stopped => return (writes, longest.max(last_ok.elapsed())),
                }
            }
        });
        WriteProbe { stop, task }
    }

    async fn finish(self) -> (u32, Duration) {
        let _ = self.stop.send(());
        self.task.await.expect("probe")
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_successive_replacements_keep_the_raft_writable_and_its_data() {
    let temp = tempfile::tempdir().expect("tempdir");
    let logs = temp.path();
    let registry = TestRegistry::start(0, &temp.path().join("registry"), logs, &[]).await;
    let cluster = "replaced-thrice";
    let etcd = Etcd::default();
    let mut nodes = EtcdNode::named(&["a1", "a2", "a3"], temp.path());
    let mut sidecars = start_all(&nodes, &registry.url(), cluster, logs);
    until_exactly(
        &etcd,
        &nodes.iter().collect::<Vec<_>>(),
        Duration::from_secs(60),
        "three voters",
    )
    .await;
    assert!(
        etcd.put(&nodes[0].client_url(), "before", "the first replacement")
            .await
    );

    let urls = std::sync::Arc::new(std::sync::Mutex::new(
        nodes.iter().map(|n| n.client_url()).collect::<Vec<_>>(),
    ));
    let probe = WriteProbe::start(etcd.clone(), urls.clone());
    for round in 1..=3 {
        // The oldest member goes (in the second round that includes whoever leads).
        let killed = nodes.remove(0);
        let mut guard = sidecars.remove(0);
        let killed_at = Instant::now();
        guard.kill_all();
        urls.lock()
            .expect("urls")
            .retain(|u| *u != killed.client_url());
        let replacement = EtcdNode::new(&format!("r{round}"), temp.path());
        let replacement_started = Instant::now();
        sidecars.push(start(&replacement, &registry.url(), cluster, 3, logs));
        nodes.push(replacement);
        let live: Vec<&EtcdNode> = nodes.iter().collect();
        until_exactly(
            &etcd,
            &live,
            DEAD_AFTER + Duration::from_secs(60),
            &format!("round {round}: {} replaced by r{round}", killed.name),
        )
        .await;
        urls.lock()
            .expect("urls")
            .push(nodes.last().expect("replacement").client_url());
        eprintln!(
            "round {round}: {} killed; exactly the three live members {:.1} s after the kill, the replacement a voter {:.1} s after it started",
            killed.name,
            killed_at.elapsed().as_secs_f64(),
            replacement_started.elapsed().as_secs_f64()
        );
    }
    let (writes, longest) = probe.finish().await;
    eprintln!(
        "{writes} writes during the replacements; the longest stretch without a write: {longest:?}"
    );
    assert!(
        longest < Duration::from_secs(4),
        "the raft took no write for {longest:?} during the replacements: more than an election"
    );
    assert_eq!(
        etcd.get(&nodes[2].client_url(), "before").await.as_deref(),
        Some("the first replacement"),
        "a key written before the first replacement is lost"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_leader_is_removed_within_the_threshold_and_replaced() {
    let temp = tempfile::tempdir().expect("tempdir");
    let logs = temp.path();
    let registry = TestRegistry::start(0, &temp.path().join("registry"), logs, &[]).await;
    let cluster = "leader-killed";
    let etcd = Etcd::default();
    let nodes = EtcdNode::named(&["l1", "l2", "l3"], temp.path());
    let mut sidecars = start_all(&nodes, &registry.url(), cluster, logs);
    let all: Vec<&EtcdNode> = nodes.iter().collect();
    until_exactly(&etcd, &all, Duration::from_secs(60), "three voters").await;
    assert!(etcd.put(&nodes[0].client_url(), "k", "v").await);

    let leading = leader(&etcd, &all).await;
    let index = nodes
        .iter()
        .position(|n| n.name == leading.name)
        .expect("leader");
    let killed_at = Instant::now();
    sidecars[index].kill_all();
    let survivors: Vec<&EtcdNode> = nodes.iter().filter(|n| n.name != leading.name).collect();
    // Not before the threshold: a member that is only restarting must not be removed.
    let removed_after = until_exactly(
        &etcd,
        &survivors,
        DEAD_AFTER + INTERVAL + Duration::from_secs(10),
        "the dead leader removed",
    )
    .await;
    let removed = killed_at.elapsed();
    eprintln!(
        "leader {} killed; removed from etcd's member list after {removed:?}",
        leading.name
    );
    assert!(
        removed >= DEAD_AFTER,
        "the dead leader was removed after {removed:?}, before the threshold {DEAD_AFTER:?}"
    );
    // Registry absence is counted from the last heartbeat, up to an interval before the kill;
    // the new leader's watch from its election, about a second after it.
    assert!(
        removed <= DEAD_AFTER + INTERVAL + Duration::from_secs(4),
        "the dead leader was removed only after {removed:?} ({removed_after:?} of polling)"
    );
    let newcomer = EtcdNode::new("l4", temp.path());
    let started = Instant::now();
    let _newcomer = start(&newcomer, &registry.url(), cluster, 3, logs);
    let mut live = survivors.clone();
    live.push(&newcomer);
    until_exactly(
        &etcd,
        &live,
        Duration::from_secs(60),
        "the newcomer a voter",
    )
    .await;
    eprintln!(
        "the newcomer became a voter {:?} after it started",
        started.elapsed()
    );
    assert_eq!(
        etcd.get(&newcomer.client_url(), "k").await.as_deref(),
        Some("v")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grow_by_resize_then_shrink_by_leave_and_survive_one_more_failure() {
    let temp = tempfile::tempdir().expect("tempdir");
    let logs = temp.path();
    let registry = TestRegistry::start(0, &temp.path().join("registry"), logs, &[]).await;
    let cluster = "resized";
    let etcd = Etcd::default();
    let nodes = EtcdNode::named(&["g1", "g2", "g3", "g4", "g5"], temp.path());
    let mut sidecars: Vec<ProcessGuard> = Vec::new();
    for node in &nodes[..3] {
        sidecars.push(start(node, &registry.url(), cluster, 3, logs));
    }
    let first: Vec<&EtcdNode> = nodes[..3].iter().collect();
    until_exactly(&etcd, &first, Duration::from_secs(60), "three voters").await;
    assert!(
        etcd.put(&nodes[0].client_url(), "k", "before the resize")
            .await
    );
    // Two more nodes: slots are full, so they run as agents (etcd gateways).
    for node in &nodes[3..] {
        sidecars.push(start(node, &registry.url(), cluster, 3, logs));
    }
    for node in &nodes[3..] {
        poll_until(
            Duration::from_secs(30),
            "the extra nodes run as agents",
            || registry.agent_in_raft(cluster, &node.name),
        )
        .await;
    }

    // Grow: the operator's resize; the agents take the new slots and become voters.
    let generation = raft_generation(&registry, cluster).await;
    resize(&registry, cluster, 5, generation).await;
    let started = Instant::now();
    let all: Vec<&EtcdNode> = nodes.iter().collect();
    until_exactly(
        &etcd,
        &all,
        Duration::from_secs(90),
        "five voters after the resize",
    )
    .await;
    eprintln!(
        "resized 3 -> 5: five voters {:?} after the resize",
        started.elapsed()
    );

    // Shrink: resize, then `leave` on two of them.
    resize(&registry, cluster, 3, generation).await;
    for (node, guard) in nodes[3..].iter().zip(sidecars[3..].iter_mut()) {
        let output = node_command(node, &registry.url(), cluster)
            .arg("leave")
            .output()
            .expect("run leave");
        assert!(
            output.status.success(),
            "leave on {} failed: {}{}",
            node.name,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        let status = guard.wait_exit(Duration::from_secs(20)).await;
        assert_eq!(
            status.code(),
            Some(0),
            "{} after leave: {status:?}",
            node.name
        );
    }
    until_exactly(
        &etcd,
        &first,
        Duration::from_secs(30),
        "three voters after the leaves",
    )
    .await;
    poll_until(
        Duration::from_secs(10),
        "the registry forgets the nodes that left",
        || async {
            let members = registry.members(cluster).await?;
            members
                .members
                .iter()
                .all(|m| m.node != "g4" && m.node != "g5")
                .then_some(())
        },
    )
    .await;

    // One more failure: two of three keep the quorum.
    sidecars[2].kill_all();
    let written = poll_until(
        Duration::from_secs(10),
        "a write with one of three dead",
        || async {
            etcd.put(&nodes[0].client_url(), "k", "after the shrink")
                .await
                .then_some(())
        },
    )
    .await;
    let () = written;
    assert_eq!(
        etcd.get(&nodes[1].client_url(), "k").await.as_deref(),
        Some("after the shrink")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn total_loss_is_refused_as_raft_lost_until_the_reset_starts_a_new_raft() {
    let temp = tempfile::tempdir().expect("tempdir");
    let logs = temp.path();
    let registry = TestRegistry::start(
        0,
        &temp.path().join("registry"),
        logs,
        &["--raft-lost-after", LOST_AFTER],
    )
    .await;
    let cluster = "lost";
    let etcd = Etcd::default();
    let old = EtcdNode::named(&["o1", "o2", "o3"], temp.path());
    let mut sidecars = start_all(&old, &registry.url(), cluster, logs);
    until_exactly(
        &etcd,
        &old.iter().collect::<Vec<_>>(),
        Duration::from_secs(60),
        "three voters",
    )
    .await;
    let (old_cluster_id, _, _) = etcd.status(&old[0].client_url()).await.expect("status");
    let generation = raft_generation(&registry, cluster).await;

    // Every node and its data gone at once; three fresh nodes at new addresses start at once.
    let lost_at = Instant::now();
    for guard in &mut sidecars {
        guard.kill_all();
    }
    for node in &old {
        let _ = std::fs::remove_dir_all(&node.data_dir);
    }
    let fresh = EtcdNode::named(&["f1", "f2", "f3"], temp.path());
    let mut fresh_sidecars: Vec<ProcessGuard> = fresh
        .iter()
        .map(|n| {
            // A gateway whose join targets are all dead re-decides after --join-timeout.
            let mut command = n.sidecar_environment(&registry.url(), cluster, 3);
            command
                .args(["--stop-timeout", "5s", "--registry-retry-limit", "20s"])
                .args(["--join-timeout", "6s", "run"])
                .env("ROLLCALL_DEAD_MEMBER_AFTER", "4s");
            ProcessGuard::spawn(
                &format!("sidecar {}", n.name),
                command,
                logs.join(format!("sidecar-{}.log", n.name)),
            )
        })
        .collect();

    // A claim of a new node is refused as raft_lost within one interval after the
    // threshold, counted from the last heartbeat of a live server (at most an interval
    // before the kill) plus the TTL in which the dead were still listed.
    // Each probe is a new node: a node that holds a claim is given that claim's role again.
    let probes = std::sync::atomic::AtomicU32::new(0);
    let refused = poll_until(Duration::from_secs(30), "a raft_lost refusal", || async {
        let n = probes.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let probe = ClaimRequest {
            node: format!("probe-{n}"),
            address: format!("127.0.0.1:{}", 1 + n),
            expect: 3,
            agent_only: false,
            started_as: None,
            raft: None,
        };
        match registry.client.claim(cluster, &probe).await {
            Err(ClientError::Api {
                code: ErrorCode::RaftLost,
                message,
                ..
            }) => Some(message),
            _ => None,
        }
    })
    .await;
    let refused_after = lost_at.elapsed();
    eprintln!("total loss: raft_lost after {refused_after:?}: {refused}");
    let lost_after = humantime::parse_duration(LOST_AFTER).expect("duration");
    assert!(
        refused_after <= TTL + lost_after + 2 * INTERVAL + Duration::from_millis(500),
        "raft_lost only after {refused_after:?}"
    );
    assert!(refused.contains("rollcall-registry reset"), "{refused}");
    // The fresh nodes, told `agent` while the dead were still listed, re-decide and are
    // refused too: they wait and say why, and none of them starts a raft on its own.
    for (node, sidecar) in fresh.iter().zip(&fresh_sidecars) {
        poll_until(
            Duration::from_secs(30),
            "a fresh node told raft_lost",
            || async { sidecar.log_text().contains("raft_lost").then_some(()) },
        )
        .await;
        assert!(
            etcd.members(&node.client_url())
                .await
                .is_none_or(|m| m.is_empty()),
            "{} runs an etcd member before the reset",
            node.name
        );
    }

    // The operator's reset, naming whatever of the fresh nodes is live, starts the next raft.
    let live: Vec<String> = registry
        .client
        .cluster(cluster)
        .await
        .map(|c| {
            c.members
                .iter()
                .map(|m| m.node.clone())
                .chain(c.claims.iter().map(|c| c.node.clone()))
                .collect()
        })
        .unwrap_or_default();
    let reset = reqwest::Client::new()
        .post(format!("{}/v1/clusters/{cluster}/reset", registry.url()))
        .json(&serde_json::json!({ "generation": generation, "force": live, "reason": "total loss (test)" }))
        .send()
        .await
        .expect("reset");
    assert!(
        reset.status().is_success(),
        "reset: {}",
        reset.text().await.unwrap_or_default()
    );
    let formed = Instant::now();
    let fresh_refs: Vec<&EtcdNode> = fresh.iter().collect();
    until_exactly(
        &etcd,
        &fresh_refs,
        Duration::from_secs(90),
        "a new raft of the fresh nodes",
    )
    .await;
    eprintln!(
        "after the reset, the fresh nodes formed a new raft in {:?}",
        formed.elapsed()
    );
    let (new_cluster_id, _, _) = etcd.status(&fresh[0].client_url()).await.expect("status");
    assert_ne!(new_cluster_id, old_cluster_id);
    assert_eq!(raft_generation(&registry, cluster).await, generation + 1);
    fresh_sidecars.clear();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_staggered_full_stop_and_restart_keeps_every_member_and_key() {
    let temp = tempfile::tempdir().expect("tempdir");
    let logs = temp.path();
    let registry = TestRegistry::start(0, &temp.path().join("registry"), logs, &[]).await;
    let cluster = "staggered";
    let etcd = Etcd::default();
    let nodes = EtcdNode::named(&["s1", "s2", "s3"], temp.path());
    let mut sidecars = start_all(&nodes, &registry.url(), cluster, logs);
    let all: Vec<&EtcdNode> = nodes.iter().collect();
    until_exactly(&etcd, &all, Duration::from_secs(60), "three voters").await;
    let ids_before = etcd.members(&nodes[0].client_url()).await.expect("members");
    assert!(etcd.put(&nodes[0].client_url(), "k", "kept").await);

    // Everything stops (as `docker stop` does), and stays down longer than the threshold.
    for guard in &mut sidecars {
        guard.signal(Signal::SIGTERM);
    }
    for guard in &mut sidecars {
        guard.wait_exit(Duration::from_secs(20)).await;
    }
    tokio::time::sleep(DEAD_AFTER + Duration::from_secs(1)).await;
    // Back one at a time, each under the threshold after the one before.
    sidecars.clear();
    for node in &nodes {
        sidecars.push(start(node, &registry.url(), cluster, 3, logs));
        tokio::time::sleep(DEAD_AFTER / 2).await;
    }
    until_exactly(&etcd, &all, Duration::from_secs(60), "three voters again").await;
    // Well past the threshold with everyone back: nobody was, or is, removed.
    tokio::time::sleep(DEAD_AFTER + 2 * INTERVAL).await;
    let ids_after = etcd.members(&nodes[0].client_url()).await.expect("members");
    assert_eq!(
        ids_after, ids_before,
        "the staggered restart changed etcd's members"
    );
    assert_eq!(
        etcd.get(&nodes[2].client_url(), "k").await.as_deref(),
        Some("kept")
    );
}

/// `rollcall-sidecar` with the flags `run` had for `node`, for another command (`leave`).
fn node_command(node: &EtcdNode, registry: &str, cluster: &str) -> std::process::Command {
    let mut command = sidecar(registry, cluster, &node.name);
    command
        .args(["--advertise", &node.address()])
        .args(["--etcd-peer-port", &node.peer_port.to_string()])
        .args(["--engine", "etcd", "--expect", "3"])
        .arg("--data-dir")
        .arg(&node.data_dir);
    command
}

async fn raft_generation(registry: &TestRegistry, cluster: &str) -> u64 {
    let detail = registry
        .client
        .cluster(cluster)
        .await
        .expect("cluster detail");
    detail.raft.expect("a known raft").generation
}

async fn resize(registry: &TestRegistry, cluster: &str, expect: u32, generation: u64) {
    let answer = reqwest::Client::new()
        .post(format!("{}/v1/clusters/{cluster}/resize", registry.url()))
        .json(&serde_json::json!({ "expect": expect, "generation": generation, "reason": "test" }))
        .send()
        .await
        .expect("resize");
    assert!(
        answer.status().is_success(),
        "resize to {expect}: {}",
        answer.text().await.unwrap_or_default()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_raft_restored_from_a_snapshot_into_the_next_generation_keeps_its_data() {
    let temp = tempfile::tempdir().expect("tempdir");
    let logs = temp.path();
    let registry = TestRegistry::start(0, &temp.path().join("registry"), logs, &[]).await;
    let cluster = "restored";
    let etcd = Etcd::default();
    let old = EtcdNode::named(&["b1", "b2", "b3"], temp.path());
    let mut sidecars = start_all(&old, &registry.url(), cluster, logs);
    until_exactly(
        &etcd,
        &old.iter().collect::<Vec<_>>(),
        Duration::from_secs(60),
        "three voters",
    )
    .await;
    assert!(
        etcd.put(&old[0].client_url(), "k", "from the old raft")
            .await
    );
    let (old_cluster_id, _, _) = etcd.status(&old[0].client_url()).await.expect("status");
    // The operator's backup, as etcd documents it.
    let snapshot = temp.path().join("snap.db");
    let saved = std::process::Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={}", old[1].client_url()))
        .args(["snapshot", "save"])
        .arg(&snapshot)
        .output()
        .expect("run etcdctl");
    assert!(
        saved.status.success(),
        "{}",
        String::from_utf8_lossy(&saved.stderr)
    );

    // Every node and its data gone; once nothing is live, the operator resets the cluster.
    for guard in &mut sidecars {
        guard.kill_all();
    }
    for node in &old {
        let _ = std::fs::remove_dir_all(&node.data_dir);
    }
    let generation = raft_generation(&registry, cluster).await;
    poll_until(
        Duration::from_secs(20),
        "the reset, once nothing is live",
        || async {
            let reset = reqwest::Client::new()
                .post(format!("{}/v1/clusters/{cluster}/reset", registry.url()))
                .json(&serde_json::json!({ "generation": generation, "reason": "restore (test)" }))
                .send()
                .await
                .ok()?;
            reset.status().is_success().then_some(())
        },
    )
    .await;

    // The first new node bootstraps generation 2 from the snapshot; the others join it.
    let fresh = EtcdNode::named(&["c1", "c2", "c3"], temp.path());
    let started = Instant::now();
    let mut first = fresh[0].sidecar_command(&registry.url(), cluster, 3);
    first.env("ROLLCALL_RESTORE_SNAPSHOT", &snapshot);
    let mut fresh_sidecars = vec![ProcessGuard::spawn(
        "sidecar c1",
        first,
        logs.join("sidecar-c1.log"),
    )];
    until_exactly(
        &etcd,
        &[&fresh[0]],
        Duration::from_secs(30),
        "c1 restored from the snapshot",
    )
    .await;
    for node in &fresh[1..] {
        fresh_sidecars.push(start(node, &registry.url(), cluster, 3, logs));
    }
    until_exactly(
        &etcd,
        &fresh.iter().collect::<Vec<_>>(),
        Duration::from_secs(60),
        "three voters of generation 2",
    )
    .await;
    eprintln!("restored from the snapshot into generation {}: three voters {:?} after the first new node started", generation + 1, started.elapsed());
    assert_eq!(
        etcd.get(&fresh[2].client_url(), "k").await.as_deref(),
        Some("from the old raft"),
        "the new raft does not hold the snapshot's data"
    );
    let (new_cluster_id, _, _) = etcd.status(&fresh[2].client_url()).await.expect("status");
    assert_ne!(
        new_cluster_id, old_cluster_id,
        "the restored raft must be a new one"
    );
    assert_eq!(raft_generation(&registry, cluster).await, generation + 1);
}
