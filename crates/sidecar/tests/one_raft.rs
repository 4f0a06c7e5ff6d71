//! One raft per cluster, with real sidecars forming real etcd rafts (issue 12's failures 1
//! and 2, and the raft's identity): a raft whose sidecars stop heartbeating but whose etcd
//! still runs is never replaced, and a newcomer waits saying why; a frozen registry process
//! never tells a claim that queued during the freeze to bootstrap; etcd's cluster token names
//! the raft (two rafts of one name get two cluster IDs), heartbeats carry it, and a member
//! whose identity names another raft is handled as README's "Another raft's member" says;
//! claims wait out `expect_conflict` and `address_conflict`; renewals say the agent started,
//! so a registry that lost its data never tells it `bootstrap`.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;
use nix::sys::signal::Signal;
use rollcall_protocol::{ClaimRequest, GrantedRole, RaftIdentity};

/// The sidecar's raft identity file, as `raft_identity.rs` writes it.
fn identity_file(data_dir: &Path) -> PathBuf {
    data_dir.join("rollcall-raft.json")
}

fn read_identity(data_dir: &Path) -> Option<serde_json::Value> {
    let bytes = std::fs::read(identity_file(data_dir)).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// The sidecar's log line that says which role the registry granted.
fn granted(log: &str) -> &str {
    log.lines()
        .find(|l| l.contains("the registry granted a role"))
        .unwrap_or_default()
}

/// The command line of the etcd member a sidecar runs (its descendant with `--name=`).
fn etcd_command_line(sidecar: &ProcessGuard) -> Option<Vec<String>> {
    sidecar.descendants().into_iter().find_map(|pid| {
        let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        let args: Vec<String> = raw
            .split(|b| *b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        args.iter()
            .any(|a| a.starts_with("--name="))
            .then_some(args)
    })
}

/// A healthy etcd raft of exactly `names`, one cluster ID and one leader: the cluster ID and
/// the member list (ID, name, learner).
async fn healthy_raft(
    etcd: &Etcd,
    nodes: &[&EtcdNode],
) -> Option<(String, Vec<(String, String, bool)>)> {
    let mut cluster_ids = Vec::new();
    let mut leaders = Vec::new();
    let mut list = None;
    for node in nodes {
        if !etcd.healthy(&node.client_url()).await {
            return None;
        }
        let members = etcd.members(&node.client_url()).await?;
        if members.len() != nodes.len() || members.iter().any(|m| m.2) {
            return None;
        }
        let (cluster_id, _, leader) = etcd.status(&node.client_url()).await?;
        cluster_ids.push(cluster_id);
        leaders.push(leader);
        list = Some(members);
    }
    cluster_ids.dedup();
    leaders.dedup();
    let list = list?;
    (cluster_ids.len() == 1 && leaders.len() == 1).then(|| (cluster_ids.remove(0), list))
}

/// Issue 12, failure 2: the raft's three sidecars are paused (SIGSTOP; their etcd keeps
/// running) for longer than TTL + quiet period, so the registry expires all three. A fourth
/// node claiming meanwhile is refused `reset_required`, says why it waits, and starts no
/// etcd; a one-shot claim with a short --claim-wait-limit ends with 75. Resumed, the raft is
/// listed again with its three members, and the fourth node's wait ends with `agent` (the
/// three servers fill expect=3): a gateway to the same cluster ID, never a second raft.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_raft_is_never_replaced_and_a_newcomer_waits_saying_why() {
    const CLUSTER: &str = "paused-raft";
    let temp = tempfile::tempdir().expect("tempdir");
    let logs = temp.path();
    let registry = TestRegistry::start(0, &temp.path().join("registry"), logs, &[]).await;
    let nodes: Vec<EtcdNode> = ["n1", "n2", "n3"]
        .iter()
        .map(|n| EtcdNode::new(n, temp.path()))
        .collect();
    let etcd = Etcd::default();
    let sidecars: Vec<ProcessGuard> = nodes
        .iter()
        .map(|n| n.start_sidecar(&registry.url(), CLUSTER, 3, logs))
        .collect();
    let all: Vec<&EtcdNode> = nodes.iter().collect();
    let (cluster_id, members_before) = poll_until(
        Duration::from_secs(60),
        "a healthy three-member raft",
        || healthy_raft(&etcd, &all),
    )
    .await;
    poll_until(Duration::from_secs(10), "three listed servers", || {
        let registry = &registry;
        async move { (registry.servers_in_raft(CLUSTER).await.len() == 3).then_some(()) }
    })
    .await;

    // Pause the sidecars, not their etcd: the raft runs on but stops heartbeating.
    let paused_at = Instant::now();
    for sidecar in &sidecars {
        sidecar.signal(Signal::SIGSTOP);
    }
    poll_until(
        TTL + Duration::from_secs(3),
        "the registry to expire the paused raft",
        || {
            let registry = &registry;
            async move {
                let members = registry.members(CLUSTER).await?;
                members.members.is_empty().then_some(())
            }
        },
    )
    .await;
    let expired_after = paused_at.elapsed();

    // A newcomer claims while nothing of the raft is listed.
    let fourth = EtcdNode::new("n4", temp.path());
    let mut fourth_command = fourth.sidecar_command(&registry.url(), CLUSTER, 3);
    fourth_command.env("ROLLCALL_CLAIM_WAIT_LIMIT", "60s");
    let mut fourth_sidecar =
        ProcessGuard::spawn("sidecar n4", fourth_command, logs.join("sidecar-n4.log"));
    let refusal = poll_until(
        Duration::from_secs(10),
        "the fourth node to say why it waits",
        || {
            let log = fourth_sidecar.log_text();
            async move {
                log.lines()
                    .find(|l| {
                        l.contains("WARN")
                            && l.contains("reset_required")
                            && l.contains("no agent is started")
                    })
                    .map(str::to_string)
            }
        },
    )
    .await;
    assert!(
        refusal.contains("already has a raft") && refusal.contains("rollcall-registry reset"),
        "the warning carries the registry's message with the reset command: {refusal}"
    );
    // The same wait with a short deadline ends with 75 and the registry's message.
    let probe = sidecar(&registry.url(), CLUSTER, "n5")
        .args(["--advertise", &format!("127.0.0.1:{}", free_port())])
        .args(["--engine", "etcd", "--expect", "3"])
        .args(["--claim-wait-limit", "2s", "claim"])
        .output()
        .expect("run the claim");
    let probe_log = String::from_utf8_lossy(&probe.stderr);
    assert_eq!(probe.status.code(), Some(75), "{probe_log}");
    assert!(probe_log.contains("reset_required"), "{probe_log}");
    assert!(probe.stdout.is_empty(), "no role was printed");

    // Paused longer than TTL + quiet period (3 s + 1 s) and a margin.
    let pause = TTL + Duration::from_secs(2);
    if let Some(rest) = pause.checked_sub(paused_at.elapsed()) {
        tokio::time::sleep(rest).await;
    }
    assert!(fourth_sidecar.running(), "the fourth node still waits");
    assert!(
        fourth_sidecar.descendants().is_empty(),
        "no agent started while the claim waits"
    );
    assert!(!fourth.data_dir.join("member").exists());
    let paused_for = paused_at.elapsed();

    let resumed_at = Instant::now();
    for sidecar in &sidecars {
        sidecar.signal(Signal::SIGCONT);
    }
    poll_until(
        Duration::from_secs(10),
        "the resumed raft listed again",
        || {
            let registry = &registry;
            async move { (registry.servers_in_raft(CLUSTER).await.len() == 3).then_some(()) }
        },
    )
    .await;
    let relisted_after = resumed_at.elapsed();

    // The fourth node's wait ends: the three servers fill expect=3, so it is an agent (a
    // gateway) of the same raft.
    poll_until(
        Duration::from_secs(30),
        "the fourth node as a healthy agent",
        || registry.agent_in_raft(CLUSTER, "n4"),
    )
    .await;
    let waited_for = resumed_at.elapsed();
    let (gateway_cluster_id, _, _) = etcd
        .status(&fourth.client_url())
        .await
        .expect("status through the gateway");
    assert_eq!(gateway_cluster_id, cluster_id, "never a second cluster ID");
    // Every listed member says which etcd cluster it is in: all the same one.
    let listed = registry.members(CLUSTER).await.expect("members");
    let listed_ids: Vec<(String, Option<String>)> = listed
        .members
        .iter()
        .map(|m| (m.node.clone(), m.meta.get("etcd_cluster_id").cloned()))
        .collect();
    assert_eq!(listed_ids.len(), 4, "{listed_ids:?}");
    assert!(
        listed_ids
            .iter()
            .all(|(_, id)| id.as_deref() == Some(cluster_id.as_str())),
        "{listed_ids:?} (cluster {cluster_id})"
    );
    let (cluster_id_after, members_after) =
        healthy_raft(&etcd, &all).await.expect("the raft is whole");
    assert_eq!(cluster_id_after, cluster_id);
    assert_eq!(members_after, members_before, "the original three members");
    let fourth_log = fourth_sidecar.log_text();
    assert!(
        !fourth_log.contains("role=bootstrap"),
        "the fourth node was never told bootstrap"
    );
    assert!(granted(&fourth_log).contains("role=agent"), "{fourth_log}");
    assert!(
        !fourth.data_dir.join("member").exists(),
        "a gateway keeps no raft"
    );
    eprintln!(
        "MEASURED paused raft: expired {expired_after:?} after the pause, paused {paused_for:?}; relisted {relisted_after:?} after resuming; the newcomer was a gateway to the same raft {waited_for:?} after resuming"
    );
}

/// Issue 12, failure 1: the registry process is frozen (SIGSTOP) for more than 2 × TTL while
/// a formed raft's heartbeats time out, and a new node's claim queues during the freeze.
/// Resumed, the registry logs the freeze, and the new node is told `server` (never
/// `bootstrap`): it joins the same etcd raft, whose member list grows to two.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_that_queued_while_the_registry_was_frozen_joins_the_running_raft() {
    const CLUSTER: &str = "frozen-registry";
    let temp = tempfile::tempdir().expect("tempdir");
    let logs = temp.path();
    let registry = RegistryProcess::start(&temp.path().join("registry"), logs, &[]).await;
    let etcd = Etcd::default();
    let first = EtcdNode::new("n1", temp.path());
    let _first_sidecar = first.start_sidecar(&registry.url(), CLUSTER, 3, logs);
    let just_first = [&first];
    let (cluster_id, _) = poll_until(Duration::from_secs(30), "a one-member raft", || {
        healthy_raft(&etcd, &just_first)
    })
    .await;
    poll_until(Duration::from_secs(10), "n1 listed", || {
        registry.listing(CLUSTER, "n1")
    })
    .await;

    let frozen_at = Instant::now();
    registry.process.signal(Signal::SIGSTOP);
    tokio::time::sleep(Duration::from_millis(500)).await;
    // The new node's claim waits in the frozen registry's accept queue for the whole freeze.
    let second = EtcdNode::new("n2", temp.path());
    let mut second_command = second.sidecar_command(&registry.url(), CLUSTER, 3);
    second_command.env("ROLLCALL_REQUEST_TIMEOUT", "15s");
    let mut second_sidecar =
        ProcessGuard::spawn("sidecar n2", second_command, logs.join("sidecar-n2.log"));
    let freeze = 2 * TTL + Duration::from_secs(1);
    tokio::time::sleep(freeze.saturating_sub(frozen_at.elapsed())).await;
    assert!(
        !second_sidecar.log_text().contains("granted a role"),
        "nothing is decided while the registry is frozen"
    );
    registry.process.signal(Signal::SIGCONT);
    let resumed_at = Instant::now();

    let both = [&first, &second];
    let (cluster_id_after, members) =
        poll_until(Duration::from_secs(45), "a two-member raft", || {
            healthy_raft(&etcd, &both)
        })
        .await;
    let joined_after = resumed_at.elapsed();
    assert_eq!(
        cluster_id_after, cluster_id,
        "the same raft, not a second one"
    );
    assert_eq!(
        members.iter().map(|m| m.1.as_str()).collect::<Vec<_>>(),
        ["n1", "n2"]
    );
    let second_log = second_sidecar.log_text();
    assert!(granted(&second_log).contains("role=server"), "{second_log}");
    assert!(!second_log.contains("role=bootstrap"), "{second_log}");
    assert!(second_sidecar.running());
    let registry_log = registry.log_text();
    assert!(
        registry_log.contains("the registry did not run for"),
        "the registry logs the freeze: {registry_log}"
    );
    let detail = registry.client.cluster(CLUSTER).await.expect("cluster");
    assert_eq!(detail.bootstrap.map(|b| b.generation), Some(1));
    assert_eq!(detail.raft.map(|r| r.generation), Some(1));
    eprintln!(
        "MEASURED frozen registry: frozen {freeze:?} (TTL {TTL:?}); the queued claim's node joined the running raft {joined_after:?} after the registry resumed"
    );
}

/// The raft's identity: the bootstrapped etcd's cluster token is `<cluster>-<nonce>` of the
/// identity the sidecar wrote; heartbeats carry it (a registry restarted on an empty data
/// directory learns the nonce from them and names it in a claim answer); a member whose
/// identity file names another raft is refused, kept running when it was listed before, and
/// otherwise stopped, its data moved aside, exit 76.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_raft_identity_names_the_etcd_token_rides_on_heartbeats_and_refuses_another_raft() {
    const CLUSTER: &str = "identity";
    let temp = tempfile::tempdir().expect("tempdir");
    let logs = temp.path();
    let mut registry = TestRegistry::start(0, &temp.path().join("registry-a"), logs, &[]).await;
    let etcd = Etcd::default();
    let node = EtcdNode::new("n1", temp.path());
    let mut sidecar = node.start_sidecar(&registry.url(), CLUSTER, 1, logs);
    let just_node = [&node];
    poll_until(Duration::from_secs(30), "a one-member raft", || {
        healthy_raft(&etcd, &just_node)
    })
    .await;
    let identity = poll_until(Duration::from_secs(10), "the identity listed", || {
        let identity = read_identity(&node.data_dir);
        async move { identity.filter(|i| i["listed"] == true) }
    })
    .await;
    let nonce = identity["nonce"].as_str().expect("nonce").to_string();
    assert_eq!(nonce.len(), 16);
    assert!(nonce.bytes().all(|b| b.is_ascii_hexdigit()));
    assert_eq!(identity["generation"], 1);
    assert_eq!(identity["cluster"], CLUSTER);
    let command_line = etcd_command_line(&sidecar).expect("etcd's command line");
    assert!(
        command_line.contains(&format!("--initial-cluster-token={CLUSTER}-{nonce}")),
        "{command_line:?}"
    );
    let ours = RaftIdentity {
        generation: 1,
        nonce: nonce.clone(),
    };

    // A registry restarted on an empty data directory knows the raft only from heartbeats.
    let port = registry.port;
    registry.kill();
    drop(registry);
    let registry = TestRegistry::start(port, &temp.path().join("registry-b"), logs, &[]).await;
    let probe = ClaimRequest {
        node: "probe".into(),
        address: format!("127.0.0.1:{}", free_port()),
        expect: 1,
        agent_only: true,
        started_as: None,
        raft: None,
    };
    let answer = poll_until(
        Duration::from_secs(10),
        "a claim answer after the startup grace",
        || {
            let (client, probe) = (&registry.client, &probe);
            async move { client.claim(CLUSTER, probe).await.ok() }
        },
    )
    .await;
    assert_eq!(answer.role, GrantedRole::Agent);
    assert_eq!(
        answer.raft.as_ref(),
        Some(&ours),
        "the registry learned the raft's nonce from n1's heartbeats"
    );
    registry
        .client
        .leave(CLUSTER, "probe")
        .await
        .expect("leave");

    // Another raft's identity, listed before: refused, and the agent keeps running.
    let other_nonce = if nonce == "0123456789abcdef" {
        "fedcba9876543210"
    } else {
        "0123456789abcdef"
    };
    let write_identity = |listed: bool| {
        let record = serde_json::json!({
            "cluster": CLUSTER,
            "generation": 1,
            "nonce": other_nonce,
            "listed": listed,
        });
        std::fs::write(
            identity_file(&node.data_dir),
            serde_json::to_vec(&record).expect("json"),
        )
        .expect("write the identity file");
    };
    sidecar.signal(Signal::SIGTERM);
    sidecar.wait_exit(Duration::from_secs(10)).await;
    write_identity(true);
    let mut sidecar = node.start_sidecar(&registry.url(), CLUSTER, 1, logs);
    poll_until(Duration::from_secs(15), "two wrong_raft warnings", || {
        let log = sidecar.log_text();
        async move {
            (log.matches("it listed this raft before, so the agent keeps running")
                .count()
                >= 2)
                .then_some(())
        }
    })
    .await;
    assert!(sidecar.running(), "a listed raft is never stopped");
    assert!(etcd.healthy(&node.client_url()).await, "etcd keeps running");
    assert!(
        registry.listing(CLUSTER, "n1").await.is_none(),
        "not listed"
    );

    // Never listed: stopped, data moved aside (nothing deleted), exit 76.
    sidecar.signal(Signal::SIGTERM);
    sidecar.wait_exit(Duration::from_secs(10)).await;
    write_identity(false);
    let mut sidecar = node.start_sidecar(&registry.url(), CLUSTER, 1, logs);
    let status = sidecar.wait_exit(Duration::from_secs(20)).await;
    assert_eq!(status.code(), Some(76), "{}", sidecar.log_text());
    assert!(!node.data_dir.exists(), "the data directory moved aside");
    let aside: Vec<PathBuf> = std::fs::read_dir(temp.path())
        .expect("read the temp dir")
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("n1.wrong-raft-"))
        })
        .collect();
    assert_eq!(aside.len(), 1, "{aside:?}");
    assert!(aside[0].join("member/wal").is_dir(), "nothing deleted");
    assert!(identity_file(&aside[0]).is_file());
    assert!(
        sidecar.log_text().contains("moved to"),
        "{}",
        sidecar.log_text()
    );
    assert!(!etcd.healthy(&node.client_url()).await, "etcd was stopped");
}

/// Two rafts under one cluster name never share an etcd cluster ID: the same node (same
/// name, same peer and client URLs) bootstraps, loses its data, the operator resets the
/// cluster, and it bootstraps again. etcd derives the cluster ID from the members and the
/// cluster token only, so with the old token (the cluster name) both rafts had one ID; with
/// `<cluster>-<nonce>` they differ.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_cluster_bootstraps_a_raft_with_another_etcd_cluster_id() {
    const CLUSTER: &str = "reset-twice";
    let temp = tempfile::tempdir().expect("tempdir");
    let logs = temp.path();
    let registry = TestRegistry::start(0, &temp.path().join("registry"), logs, &[]).await;
    let etcd = Etcd::default();
    let node = EtcdNode::new("n1", temp.path());
    let just_node = [&node];

    let mut ids = Vec::new();
    for generation in [1, 2] {
        let mut sidecar = node.start_sidecar(&registry.url(), CLUSTER, 1, logs);
        let (cluster_id, _) = poll_until(Duration::from_secs(30), "a one-member raft", || {
            healthy_raft(&etcd, &just_node)
        })
        .await;
        let identity = poll_until(Duration::from_secs(10), "the identity listed", || {
            let identity = read_identity(&node.data_dir);
            async move { identity.filter(|i| i["listed"] == true) }
        })
        .await;
        assert_eq!(identity["generation"], generation);
        let nonce = identity["nonce"].as_str().expect("nonce").to_string();
        ids.push((cluster_id, nonce));
        // Stopped (it leaves the registry), its data lost, the cluster reset.
        sidecar.signal(Signal::SIGTERM);
        sidecar.wait_exit(Duration::from_secs(10)).await;
        std::fs::rename(
            &node.data_dir,
            temp.path().join(format!("n1.lost-{generation}")),
        )
        .expect("lose the data");
        let reset = rollcall_protocol::ResetRequest {
            generation,
            force: vec![],
            reason: Some("the test lost the data".into()),
        };
        poll_until(Duration::from_secs(10), "the reset", || {
            let (client, reset) = (&registry.client, &reset);
            async move { client.reset(CLUSTER, reset).await.ok() }
        })
        .await;
    }
    assert_ne!(ids[0].1, ids[1].1, "each raft has its own nonce");
    assert_ne!(
        ids[0].0, ids[1].0,
        "the same member bootstrapped twice gets another etcd cluster ID: {ids:?}"
    );
    eprintln!(
        "MEASURED one node bootstrapped twice across a reset: etcd cluster IDs {} and {}",
        ids[0].0, ids[1].0
    );
}

/// `rollcall-sidecar` with the exec engine for `node` at `address`, asking for `expect`
/// servers; its agent (when `run`) never becomes healthy, so it keeps renewing its claim.
fn exec_node(
    registry_url: &str,
    cluster: &str,
    node: &str,
    address: &str,
    expect: u32,
) -> std::process::Command {
    let mut command = sidecar(registry_url, cluster, node);
    command
        .args(["--advertise", address])
        .args(["--engine", "exec", "--expect", &expect.to_string()])
        .args([
            "--health-url",
            &format!("http://127.0.0.1:{}/never", free_port()),
        ]);
    command
}

/// The conflicts a claim waits out, with real processes: claims that disagree on `expect`
/// before the raft is known (`expect_conflict`: a claim with a 2 s --claim-wait-limit ends
/// with 75 and the registry's message), and a node name live at another address
/// (`address_conflict`: the newcomer waits, saying why, and is answered once the other
/// leaves).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conflicting_claims_wait_saying_why_and_end_with_75_or_a_role() {
    const CLUSTER: &str = "conflicts";
    let temp = tempfile::tempdir().expect("tempdir");
    let logs = temp.path();
    let registry = TestRegistry::start(0, &temp.path().join("registry"), logs, &[]).await;
    let first_address = format!("127.0.0.1:{}", free_port());
    let mut first_command = exec_node(&registry.url(), CLUSTER, "a", &first_address, 3);
    first_command.arg("run").args(run_script("sleep 60"));
    let first = ProcessGuard::spawn("sidecar a", first_command, logs.join("sidecar-a.log"));
    poll_until(Duration::from_secs(10), "a's claim", || {
        let log = first.log_text();
        async move { log.contains("the registry granted a role").then_some(()) }
    })
    .await;

    // Another size while the raft is not known: refused, waited out, 75 at the deadline.
    let other_size = exec_node(
        &registry.url(),
        CLUSTER,
        "b",
        &format!("127.0.0.1:{}", free_port()),
        5,
    )
    .args(["--claim-wait-limit", "2s", "claim"])
    .output()
    .expect("run the claim");
    let other_size_log = String::from_utf8_lossy(&other_size.stderr);
    assert_eq!(other_size.status.code(), Some(75), "{other_size_log}");
    assert!(
        other_size_log.contains("expect_conflict") && other_size_log.contains("expect=3"),
        "{other_size_log}"
    );

    // The same name from another address: waits until a's claim is gone.
    let mut same_name = exec_node(
        &registry.url(),
        CLUSTER,
        "a",
        &format!("127.0.0.1:{}", free_port()),
        3,
    );
    same_name.args(["--claim-wait-limit", "30s", "claim"]);
    let mut second = ProcessGuard::spawn("claim a again", same_name, logs.join("claim-a.log"));
    poll_until(
        Duration::from_secs(10),
        "the address conflict warning",
        || {
            let (log, first_address) = (second.log_text(), &first_address);
            async move {
                (log.contains("WARN")
                    && log.contains("address_conflict")
                    && log.contains(first_address.as_str()))
                .then_some(())
            }
        },
    )
    .await;
    assert!(second.running(), "still waiting");
    first.signal(Signal::SIGTERM);
    let status = second.wait_exit(Duration::from_secs(15)).await;
    assert_eq!(status.code(), Some(0), "{}", second.log_text());
    assert!(
        second.log_text().contains("the registry granted a role"),
        "{}",
        second.log_text()
    );
}

/// Issue 12, failure 3, from the sidecar's side: a node granted `bootstrap` whose agent is
/// still starting renews its claim saying so (`started_as`, its raft). A registry restarted
/// on an empty data directory then answers it `server` by rule `already-started`, even within
/// its startup grace, and never `bootstrap` again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_starting_agent_renews_saying_so_and_an_emptied_registry_never_tells_it_bootstrap() {
    const CLUSTER: &str = "renewals";
    let temp = tempfile::tempdir().expect("tempdir");
    let logs = temp.path();
    let mut registry = TestRegistry::start(0, &temp.path().join("registry-a"), logs, &[]).await;
    let address = format!("127.0.0.1:{}", free_port());
    let mut command = exec_node(&registry.url(), CLUSTER, "k1", &address, 3);
    command.arg("run").args(run_script("sleep 60"));
    let node = ProcessGuard::spawn("sidecar k1", command, logs.join("sidecar-k1.log"));
    poll_until(Duration::from_secs(10), "k1's bootstrap", || {
        let log = node.log_text();
        async move { granted(&log).contains("role=bootstrap").then_some(()) }
    })
    .await;

    let port = registry.port;
    registry.kill();
    drop(registry);
    let registry = TestRegistry::start(port, &temp.path().join("registry-b"), logs, &[]).await;
    poll_until(
        Duration::from_secs(10),
        "the renewal answered by rule already-started",
        || {
            let log = registry.log_text();
            async move {
                log.lines()
                    .any(|l| l.contains("node=\"k1\"") && l.contains("rule=already-started"))
                    .then_some(())
            }
        },
    )
    .await;
    poll_until(Duration::from_secs(5), "k1 told server", || {
        let log = node.log_text();
        async move {
            log.lines()
                .any(|l| {
                    l.contains("the registry now answers another role") && l.contains("now=server")
                })
                .then_some(())
        }
    })
    .await;
    let detail = registry.client.cluster(CLUSTER).await.expect("cluster");
    assert!(
        detail.bootstrap.is_none(),
        "no new bootstrap grant: {detail:?}"
    );
}
