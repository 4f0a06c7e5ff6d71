//! Registry replicas on a real three-node etcd on loopback (`--store etcd`): the real
//! `rollcall-registry` binaries, killed, frozen and restarted by pid; etcd members killed.
//!
//! - the active replica killed (kill -9) under load, 5 cycles: a standby is active within the
//!   lease TTL + 1 s, no acknowledged registration is lost, no cluster gets two bootstrap
//!   grants, and a node that claims during the failover gets a role within lease TTL +
//!   startup grace + one interval;
//! - the active replica frozen (SIGSTOP) past its lease: a standby takes over, and after
//!   SIGCONT the frozen one steps down and nothing it acknowledges is missing from etcd;
//! - one etcd member lost: the registry keeps serving; quorum lost: reads are served stale,
//!   writes refused with `store_unavailable`; quorum back: writes again.
//!
//! The long form of the kill cycles (`ROLLCALL_REPLICA_CYCLES=50`) is in RELIABILITY.md.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::etcd::{EtcdCluster, MIN_LEASE};
use common::TestRegistry;
use rollcall_registry::store::etcd::client::{EtcdClient, EtcdOptions};

/// The lease the replicas ask for: etcd's minimum with the test cluster's timeouts.
const LEASE: Duration = MIN_LEASE;
const STARTUP_GRACE: Duration = Duration::from_secs(1);
const INTERVAL: Duration = Duration::from_secs(1);
const PREFIX: &str = "/replicas/";

fn args(etcd: &EtcdCluster, name: &str) -> Vec<String> {
    [
        "--store",
        "etcd",
        "--etcd-endpoints",
        &etcd.endpoints(),
        "--etcd-prefix",
        PREFIX,
        "--lease-ttl",
        "3s",
        "--replica-name",
        name,
        // Long enough that nothing registered during a test expires before it is checked.
        "--ttl",
        "60s",
        "--interval",
        "1s",
        "--startup-grace",
        "1s",
        "--quiet-period",
        "1s",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

async fn start_replicas(etcd: &EtcdCluster, n: usize) -> Vec<TestRegistry> {
    let mut regs = Vec::new();
    for i in 0..n {
        let a = args(etcd, &format!("r{i}"));
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        regs.push(TestRegistry::start_logged(&a, "info").await);
    }
    regs
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(3))
        .build()
        .expect("client")
}

async fn role(http: &reqwest::Client, url: &str) -> Option<String> {
    let health: serde_json::Value = http
        .get(format!("{url}/health"))
        .send()
        .await
        .ok()?
        .json()
        .await
        .ok()?;
    Some(health["replica"]["role"].as_str()?.to_string())
}

/// Waits until one replica (not `except`) says it is active; its index and how long it took.
async fn wait_active(
    http: &reqwest::Client,
    urls: &[String],
    except: Option<usize>,
    timeout: Duration,
) -> (usize, Duration) {
    let started = Instant::now();
    loop {
        for (i, url) in urls.iter().enumerate() {
            if Some(i) != except && role(http, url).await.as_deref() == Some("active") {
                return (i, started.elapsed());
            }
        }
        assert!(
            started.elapsed() < timeout,
            "no replica became active within {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until every replica says `active` or `standby` (a replica starts as `unknown`).
async fn wait_settled(http: &reqwest::Client, urls: &[String]) {
    let started = Instant::now();
    for url in urls {
        loop {
            if matches!(role(http, url).await.as_deref(), Some("active" | "standby")) {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "{url} has no role after 20 s"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// What the load saw.
#[derive(Default)]
struct Tally {
    /// Registrations acknowledged (2xx), by node.
    acked: BTreeSet<String>,
    /// Failed attempts (any replica), counted.
    failed: u64,
    /// Every role each claimant was told, by cluster and node.
    roles: BTreeMap<String, BTreeMap<String, BTreeSet<String>>>,
}

/// Registers new nodes in cluster `load` through any replica, one after the other, until
/// `stop`; each answered 2xx is acknowledged durable.
async fn registrations(
    urls: Vec<String>,
    tally: Arc<Mutex<Tally>>,
    stop: Arc<Mutex<bool>>,
    tag: String,
) {
    let http = http();
    let mut i = 0u64;
    let mut next = 0usize;
    while !*stop.lock().expect("stop") {
        let node = format!("{tag}-{i}");
        let url = format!(
            "{}/v1/clusters/load/members/{node}",
            urls[next % urls.len()]
        );
        let answer = http
            .put(&url)
            .json(&serde_json::json!({ "address": format!("10.9.{}.{}:2379", i / 250, i % 250), "role": "agent" }))
            .send()
            .await;
        match answer {
            Ok(r) if r.status().is_success() => {
                tally.lock().expect("tally").acked.insert(node);
                i += 1;
            }
            _ => {
                tally.lock().expect("tally").failed += 1;
                next += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Claims for `node` in `cluster` through any replica, every 300 ms until `stop`, noting
/// every role it is told.
async fn claimant(
    urls: Vec<String>,
    cluster: String,
    node: String,
    tally: Arc<Mutex<Tally>>,
    stop: Arc<Mutex<bool>>,
) {
    let http = http();
    let mut next = 0usize;
    while !*stop.lock().expect("stop") {
        let url = format!("{}/v1/clusters/{cluster}/claims", urls[next % urls.len()]);
        let answer = http
            .post(&url)
            .json(&serde_json::json!({ "node": node, "address": format!("{node}:2380"), "expect": 3 }))
            .send()
            .await;
        match answer {
            Ok(r) if r.status().is_success() => {
                let body: serde_json::Value = r.json().await.unwrap_or_default();
                if let Some(role) = body["role"].as_str() {
                    tally
                        .lock()
                        .expect("tally")
                        .roles
                        .entry(cluster.clone())
                        .or_default()
                        .entry(node.clone())
                        .or_default()
                        .insert(role.to_string());
                }
            }
            _ => next += 1,
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// Every key under `prefix` + `tree/cluster/`, as node names.
async fn stored_nodes(etcd: &EtcdCluster, tree: &str, cluster: &str) -> BTreeSet<String> {
    let client = EtcdClient::new(&EtcdOptions {
        endpoints: etcd.endpoints().split(',').map(str::to_string).collect(),
        request_timeout: Duration::from_secs(3),
        ..Default::default()
    })
    .expect("client");
    let prefix = format!("{PREFIX}{tree}/{cluster}/");
    let (kvs, _) = client
        .range_prefix(prefix.as_bytes())
        .await
        .expect("read etcd");
    kvs.into_iter()
        .map(|kv| String::from_utf8_lossy(&kv.key[prefix.len()..]).into_owned())
        .collect()
}

/// A node that claims while no replica is active is granted a role (its first) within this.
fn role_bound() -> Duration {
    LEASE + STARTUP_GRACE + INTERVAL
}

#[tokio::test]
async fn the_active_replica_killed_under_load_is_replaced_within_the_lease_and_nothing_is_lost() {
    let cycles: usize = std::env::var("ROLLCALL_REPLICA_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let etcd = EtcdCluster::start(3).await;
    let mut regs = start_replicas(&etcd, 3).await;
    let urls: Vec<String> = regs.iter().map(TestRegistry::url).collect();
    let http = http();
    wait_active(&http, &urls, None, Duration::from_secs(20)).await;
    wait_settled(&http, &urls).await;

    let tally = Arc::new(Mutex::new(Tally::default()));
    let stop = Arc::new(Mutex::new(false));
    let mut load = Vec::new();
    for tag in ["a", "b"] {
        load.push(tokio::spawn(registrations(
            urls.clone(),
            tally.clone(),
            stop.clone(),
            tag.into(),
        )));
    }
    let mut failovers = Vec::new();
    let mut first_roles = Vec::new();
    for cycle in 0..cycles {
        // Three nodes race for a fresh cluster across the kill.
        let cluster = format!("boot-{cycle}");
        let stop_claims = Arc::new(Mutex::new(false));
        let mut claims = Vec::new();
        for n in 0..3 {
            claims.push(tokio::spawn(claimant(
                urls.clone(),
                cluster.clone(),
                format!("n{n}"),
                tally.clone(),
                stop_claims.clone(),
            )));
        }
        tokio::time::sleep(Duration::from_millis(700)).await;
        let (active, _) = wait_active(&http, &urls, None, Duration::from_secs(20)).await;
        regs[active].kill9();
        let killed_at = Instant::now();
        // A node that starts during the failover: its first role, through the others.
        let others: Vec<String> = (0..urls.len())
            .filter(|i| *i != active)
            .map(|i| urls[i].clone())
            .collect();
        let newcomer = {
            let http = http.clone();
            let cluster = format!("during-{cycle}");
            tokio::spawn(async move {
                let mut next = 0;
                loop {
                    let url = format!(
                        "{}/v1/clusters/{cluster}/claims",
                        others[next % others.len()]
                    );
                    if let Ok(r) = http
                        .post(&url)
                        .json(&serde_json::json!({ "node": "x", "address": "x:2380", "expect": 1 }))
                        .send()
                        .await
                    {
                        if r.status().is_success() {
                            return killed_at.elapsed();
                        }
                    }
                    next += 1;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            })
        };
        let (_, took) =
            wait_active(&http, &urls, Some(active), LEASE + Duration::from_secs(10)).await;
        failovers.push(took);
        let first_role = tokio::time::timeout(role_bound() + Duration::from_secs(5), newcomer)
            .await
            .expect("the newcomer got no role")
            .expect("newcomer task");
        first_roles.push(first_role);
        regs[active].restart().await;
        wait_settled(&http, &urls).await;
        *stop_claims.lock().expect("stop") = true;
        for task in claims {
            let _ = task.await;
        }
        assert_eq!(
            role(&http, &urls[active]).await.as_deref(),
            Some("standby"),
            "a killed active replica comes back as a standby"
        );
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    *stop.lock().expect("stop") = true;
    for task in load {
        let _ = task.await;
    }

    let tally = std::mem::take(&mut *tally.lock().expect("tally"));
    eprintln!(
        "failovers (kill -9 -> a standby active): {failovers:?}; a newcomer's first role after the kill: {first_roles:?}; {} registrations acknowledged, {} attempts failed",
        tally.acked.len(),
        tally.failed
    );
    for took in &failovers {
        assert!(
            *took <= LEASE + Duration::from_secs(1),
            "a standby took {took:?} to become active (lease {LEASE:?})"
        );
    }
    for (took, failover) in first_roles.iter().zip(&failovers) {
        assert!(
            *took <= role_bound(),
            "a newcomer waited {took:?} for a role"
        );
        // The new active replica applies the startup grace before it grants a bootstrap.
        assert!(
            *took + Duration::from_millis(300) >= *failover + STARTUP_GRACE,
            "a newcomer was told bootstrap {took:?} after the kill, within the grace of a replica active after {failover:?}"
        );
    }
    assert!(tally.acked.len() > 20, "the load made too little progress");
    let stored = stored_nodes(&etcd, "members", "load").await;
    let lost: Vec<&String> = tally.acked.difference(&stored).collect();
    assert!(
        lost.is_empty(),
        "acknowledged registrations missing from etcd: {lost:?}"
    );
    // The active replica lists them all (TTL 60 s: none expired).
    let (active, _) = wait_active(&http, &urls, None, Duration::from_secs(10)).await;
    let listed: serde_json::Value = http
        .get(format!("{}/v1/clusters/load/members", urls[active]))
        .send()
        .await
        .expect("list")
        .json()
        .await
        .expect("json");
    let listed: BTreeSet<String> = listed["members"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|m| m["node"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    let unlisted: Vec<&String> = tally.acked.difference(&listed).collect();
    assert!(
        unlisted.is_empty(),
        "acknowledged but not listed: {unlisted:?}"
    );
    for (cluster, nodes) in &tally.roles {
        let bootstraps: Vec<&String> = nodes
            .iter()
            .filter(|(_, roles)| roles.contains("bootstrap"))
            .map(|(n, _)| n)
            .collect();
        assert!(
            bootstraps.len() <= 1,
            "{cluster}: {bootstraps:?} were each told bootstrap"
        );
    }
}

#[tokio::test]
async fn a_frozen_active_replica_steps_down_and_nothing_it_acknowledges_is_lost() {
    let etcd = EtcdCluster::start(3).await;
    let regs = start_replicas(&etcd, 2).await;
    let urls: Vec<String> = regs.iter().map(TestRegistry::url).collect();
    let http = http();
    let (frozen, _) = wait_active(&http, &urls, None, Duration::from_secs(20)).await;
    wait_settled(&http, &urls).await;
    let other = 1 - frozen;

    // Registrations straight to the replica that will be frozen, some in flight at the freeze.
    let tally = Arc::new(Mutex::new(Tally::default()));
    let stop = Arc::new(Mutex::new(false));
    let answers: Arc<Mutex<Vec<(Instant, u16, String)>>> = Arc::default();
    let mut load = Vec::new();
    for t in 0..8 {
        let url = urls[frozen].clone();
        let tally = tally.clone();
        let stop = stop.clone();
        let answers = answers.clone();
        load.push(tokio::spawn(async move {
            let http = reqwest::Client::builder()
                .timeout(Duration::from_secs(20))
                .build()
                .expect("client");
            let mut i = 0;
            while !*stop.lock().expect("stop") {
                let node = format!("f{t}-{i}");
                i += 1;
                let sent = Instant::now();
                let answer = http
                    .put(format!("{url}/v1/clusters/load/members/{node}"))
                    .json(&serde_json::json!({ "address": format!("10.8.{t}.{}:2379", i % 250), "role": "agent" }))
                    .send()
                    .await;
                if let Ok(r) = answer {
                    let by = r
                        .headers()
                        .get("rollcall-replica")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("")
                        .to_string();
                    let status = r.status().as_u16();
                    answers.lock().expect("answers").push((sent, status, by));
                    if (200..300).contains(&status) {
                        tally.lock().expect("tally").acked.insert(node);
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let pid = regs[frozen].pid();
    let signal = |sig: &str| {
        std::process::Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(pid.to_string())
            .status()
            .expect("kill");
    };
    signal("STOP");
    let (_, took) = wait_active(&http, &urls, Some(frozen), LEASE + Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    signal("CONT");
    let resumed = Instant::now();
    tokio::time::sleep(Duration::from_secs(2)).await;
    *stop.lock().expect("stop") = true;
    for task in load {
        let _ = task.await;
    }

    assert!(
        took <= LEASE + Duration::from_secs(1),
        "takeover took {took:?}"
    );
    assert_eq!(role(&http, &urls[frozen]).await.as_deref(), Some("standby"));
    assert_eq!(role(&http, &urls[other]).await.as_deref(), Some("active"));
    let log = regs[frozen].log_text();
    assert!(log.contains("stepping down"), "{log}");
    // Sent after it resumed, answered by its own state: never.
    let answers = answers.lock().expect("answers").clone();
    let own_after: Vec<_> = answers
        .iter()
        .filter(|(sent, status, by)| {
            *sent > resumed && (200..300).contains(status) && by == &format!("r{frozen}")
        })
        .collect();
    assert!(
        own_after.is_empty(),
        "the frozen replica acknowledged after it resumed: {own_after:?}"
    );
    let tally = std::mem::take(&mut *tally.lock().expect("tally"));
    let stored = stored_nodes(&etcd, "members", "load").await;
    let lost: Vec<&String> = tally.acked.difference(&stored).collect();
    assert!(
        lost.is_empty(),
        "acknowledged registrations missing from etcd: {lost:?}"
    );
    eprintln!(
        "takeover {took:?}; {} registrations acknowledged, {} answers in all, the resumed replica's 2xx after the freeze: forwarded only",
        tally.acked.len(),
        answers.len()
    );
}

#[tokio::test]
async fn etcd_member_loss_keeps_serving_and_quorum_loss_serves_stale_reads_and_refuses_writes() {
    let mut etcd = EtcdCluster::start(3).await;
    let regs = start_replicas(&etcd, 2).await;
    let urls: Vec<String> = regs.iter().map(TestRegistry::url).collect();
    let http = http();
    let (active, _) = wait_active(&http, &urls, None, Duration::from_secs(20)).await;
    wait_settled(&http, &urls).await;
    let standby = 1 - active;
    let register = |node: String, url: String| {
        let http = http.clone();
        async move {
            http.put(format!("{url}/v1/clusters/c/members/{node}"))
                .json(&serde_json::json!({ "address": "10.7.0.1:2379", "role": "agent" }))
                .send()
                .await
        }
    };
    let ok = |r: &Result<reqwest::Response, reqwest::Error>| {
        r.as_ref().is_ok_and(|r| r.status().is_success())
    };
    assert!(ok(&register("before".into(), urls[standby].clone()).await));

    // One member of three lost: writes go on (after at most an etcd election).
    etcd.kill(0);
    let started = Instant::now();
    let mut i = 0;
    loop {
        i += 1;
        if ok(&register(format!("one-down-{i}"), urls[standby].clone()).await) {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "no write with one etcd member down"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let one_down = started.elapsed();

    // Killing an etcd member can cost an etcd election, and a lease renewal or a transaction
    // caught in it can end the active replica's term (the registry kept serving: the write
    // above went through), so the other replica may be the active one now. Which one is
    // active is read again before the quorum goes.
    wait_settled(&http, &urls).await;
    let (active, _) = wait_active(&http, &urls, None, Duration::from_secs(20)).await;
    let standby = 1 - active;

    // Heartbeats whose metadata changes (written without a wait) keep flowing, so that writes
    // are in flight when the quorum goes.
    let beating = Arc::new(Mutex::new(true));
    let beats = {
        let http = http.clone();
        let url = urls[active].clone();
        let beating = beating.clone();
        tokio::spawn(async move {
            let mut i = 0u64;
            while *beating.lock().expect("beating") {
                i += 1;
                let _ = http
                    .put(format!("{url}/v1/clusters/c/members/before"))
                    .json(&serde_json::json!({ "address": "10.7.0.1:2379", "role": "agent", "meta": { "beat": i.to_string() } }))
                    .send()
                    .await;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;

    // Quorum lost: past the lease, reads are answered from the last state, marked stale, and
    // writes are refused with a stable code, through either replica.
    etcd.kill(1);
    let started = Instant::now();
    let stale_read = loop {
        let r = http
            .get(format!("{}/v1/clusters/c/members", urls[standby]))
            .send()
            .await;
        if let Ok(r) = r {
            if r.headers().get("rollcall-stale").is_some() {
                assert_eq!(r.status().as_u16(), 200);
                let body: serde_json::Value = r.json().await.expect("json");
                assert!(
                    body["members"]
                        .as_array()
                        .is_some_and(|a| a.iter().any(|m| m["node"] == "before")),
                    "{body}"
                );
                break started.elapsed();
            }
        }
        assert!(
            started.elapsed() < LEASE + Duration::from_secs(15),
            "no stale read"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let refused = register("no-quorum".into(), urls[active].clone())
        .await
        .expect("an answer");
    assert_eq!(refused.status().as_u16(), 503);
    let body: serde_json::Value = refused.json().await.expect("json");
    assert_eq!(body["code"], "store_unavailable", "{body}");
    assert_eq!(
        role(&http, &urls[active]).await.as_deref(),
        Some("stale"),
        "the active replica's log:\n{}",
        regs[active].log_text()
    );

    *beating.lock().expect("beating") = false;
    let _ = beats.await;

    // Quorum back: writes again.
    etcd.restart(0);
    etcd.restart(1);
    etcd.wait_healthy(Duration::from_secs(30)).await;
    let started = Instant::now();
    let mut i = 0;
    loop {
        i += 1;
        if ok(&register(format!("back-{i}"), urls[standby].clone()).await) {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "no write after etcd's quorum came back"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!(
        "one etcd member down: a write after {one_down:?}; quorum lost: stale reads after {stale_read:?}; quorum back: a write after {:?}",
        started.elapsed()
    );
}
