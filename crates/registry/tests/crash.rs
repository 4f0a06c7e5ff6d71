//! Crash test: the registry under a mixed load (registrations, renewals, leaves, claims) is
//! killed with SIGKILL at random moments and restarted on the same data directory. After each
//! restart every acknowledged durable write must be there, no cluster may have a second
//! bootstrap grant, and the store must open cleanly.
//!
//! Short form (CI): 10 cycles. Long form, as RELIABILITY.md records it:
//! `ROLLCALL_CRASH_CYCLES=100 cargo test --release -p rollcall-registry --test crash -- --nocapture`

mod common;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{is_not_ready, TestRegistry};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rollcall_protocol::{ClaimRequest, GrantedRole, HeartbeatRequest, MemberRole, RegistryClient};

const MEMBER_CLUSTERS: usize = 8;
const CLAIM_CLUSTERS: usize = 8;
const WORKERS: usize = 6;

/// What the test knows about one key after the registry answered (or did not).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Known {
    Present(String),
    Absent,
    /// A write was in flight when the registry died: either outcome is allowed.
    Uncertain,
}

#[derive(Debug, Default)]
struct Model {
    members: HashMap<(String, String), Known>,
    claims: HashMap<(String, String), (Known, Option<GrantedRole>)>,
    /// The one node per cluster that was ever told `bootstrap`.
    bootstrap: HashMap<String, String>,
    double_grants: Vec<String>,
    acknowledged: u64,
    next_node: u64,
}

#[derive(Debug, Default)]
struct Tally {
    cycles: u64,
    acknowledged: u64,
    lost: u64,
    double_grants: u64,
    checked: u64,
}

fn hb(address: &str) -> HeartbeatRequest {
    HeartbeatRequest {
        raft_members: None,
        address: address.into(),
        role: MemberRole::Server,
        status: None,
        meta: BTreeMap::new(),
        raft: None,
    }
}

/// One worker: random operations until the registry stops answering. Each worker touches
/// only the nodes it named itself, so the operations on one key never race each other and
/// the model can say exactly what an answer means.
async fn worker(client: RegistryClient, model: Arc<Mutex<Model>>, worker: usize, seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mine = |key: &(String, String)| key.1.starts_with(&format!("w{worker}-"));
    loop {
        let op = rng.gen_range(0..100);
        if op < 40 {
            let (cluster, node) = {
                let mut m = model.lock().expect("model");
                m.next_node += 1;
                (
                    format!("m-{}", rng.gen_range(0..MEMBER_CLUSTERS)),
                    format!("w{worker}-n{}", m.next_node),
                )
            };
            let address = format!(
                "10.{}.{}.{}:8300",
                rng.gen_range(0..250),
                rng.gen_range(0..250),
                rng.gen_range(1..250)
            );
            model
                .lock()
                .expect("model")
                .members
                .insert((cluster.clone(), node.clone()), Known::Uncertain);
            match client.heartbeat(&cluster, &node, &hb(&address)).await {
                Ok(_) => {
                    let mut m = model.lock().expect("model");
                    m.members.insert((cluster, node), Known::Present(address));
                    m.acknowledged += 1;
                }
                Err(_) => return,
            }
        } else if op < 60 {
            let pick = {
                let m = model.lock().expect("model");
                m.members
                    .iter()
                    .filter(|(k, v)| mine(k) && matches!(v, Known::Present(_)))
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .nth(rng.gen_range(0..8))
            };
            if let Some(((cluster, node), Known::Present(address))) = pick {
                if client
                    .heartbeat(&cluster, &node, &hb(&address))
                    .await
                    .is_err()
                {
                    return;
                }
            }
        } else if op < 75 {
            let pick = {
                let m = model.lock().expect("model");
                m.members
                    .iter()
                    .filter(|(k, v)| mine(k) && matches!(v, Known::Present(_)))
                    .map(|(k, _)| k.clone())
                    .nth(rng.gen_range(0..8))
            };
            if let Some((cluster, node)) = pick {
                model
                    .lock()
                    .expect("model")
                    .members
                    .insert((cluster.clone(), node.clone()), Known::Uncertain);
                match client.leave(&cluster, &node).await {
                    Ok(()) => {
                        let mut m = model.lock().expect("model");
                        m.members.insert((cluster, node), Known::Absent);
                        m.acknowledged += 1;
                    }
                    Err(_) => return,
                }
            }
        } else {
            let cluster = format!("c-{}", rng.gen_range(0..CLAIM_CLUSTERS));
            let node = format!("w{worker}-s{}", rng.gen_range(0..3));
            let address = format!("{node}.{cluster}:8300");
            let key = (cluster.clone(), node.clone());
            let previous = model.lock().expect("model").claims.get(&key).cloned();
            if previous
                .as_ref()
                .map(|p| p.0 != Known::Uncertain)
                .unwrap_or(true)
            {
                model
                    .lock()
                    .expect("model")
                    .claims
                    .insert(key.clone(), (Known::Uncertain, None));
            }
            let request = ClaimRequest {
                node: node.clone(),
                address: address.clone(),
                expect: 3,
                agent_only: false,
                started_as: None,
                raft: None,
            };
            match client.claim(&cluster, &request).await {
                Ok(answer) => {
                    let mut m = model.lock().expect("model");
                    if answer.role == GrantedRole::Bootstrap {
                        match m.bootstrap.get(&cluster) {
                            Some(holder) if holder != &node => {
                                let msg = format!("{cluster}: {node} was granted bootstrap, but {holder} holds it");
                                m.double_grants.push(msg);
                            }
                            _ => {
                                m.bootstrap.insert(cluster.clone(), node.clone());
                            }
                        }
                    }
                    m.claims
                        .insert(key, (Known::Present(address), Some(answer.role)));
                    m.acknowledged += 1;
                }
                Err(e) if is_not_ready(&e) => {
                    // Refused (startup grace): nothing was written. Put back what was known.
                    {
                        let mut m = model.lock().expect("model");
                        match previous {
                            Some(p) => m.claims.insert(key, p),
                            None => m.claims.remove(&key),
                        };
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(_) => return,
            }
        }
    }
}

/// Compares the restarted registry with the model; returns (checked, lost) and resolves every
/// uncertain key from what the registry shows.
async fn verify(client: &RegistryClient, model: &Mutex<Model>, tally: &mut Tally) {
    let mut listed: HashMap<(String, String), String> = HashMap::new();
    for i in 0..MEMBER_CLUSTERS {
        let cluster = format!("m-{i}");
        for m in client
            .members(&cluster, None)
            .await
            .expect("list after restart")
            .members
        {
            listed.insert((cluster.clone(), m.node), m.address);
        }
    }
    let mut claims: HashMap<(String, String), (String, GrantedRole)> = HashMap::new();
    let mut generations: HashMap<String, (u64, String)> = HashMap::new();
    for i in 0..CLAIM_CLUSTERS {
        let cluster = format!("c-{i}");
        let resp = reqwest::get(format!("{}/v1/clusters/{cluster}", client.base_url()))
            .await
            .expect("detail");
        if resp.status() == 404 {
            continue;
        }
        let detail: rollcall_protocol::ClusterDetail = resp.json().await.expect("detail json");
        for c in detail.claims {
            claims.insert((cluster.clone(), c.node), (c.address, c.role));
        }
        if let Some(b) = detail.bootstrap {
            generations.insert(cluster.clone(), (b.generation, b.node));
        }
    }
    let mut m = model.lock().expect("model");
    for (key, known) in m.members.iter_mut() {
        match known.clone() {
            Known::Present(address) => {
                tally.checked += 1;
                if listed.get(key) != Some(&address) {
                    tally.lost += 1;
                    eprintln!(
                        "LOST: member {key:?} at {address} was acknowledged but is not listed"
                    );
                }
            }
            Known::Absent => {
                tally.checked += 1;
                if listed.contains_key(key) {
                    tally.lost += 1;
                    eprintln!("LOST: the acknowledged leave of {key:?} was undone");
                }
            }
            Known::Uncertain => {}
        }
        *known = match listed.get(key) {
            Some(a) => Known::Present(a.clone()),
            None => Known::Absent,
        };
    }
    for (key, (known, role)) in m.claims.iter_mut() {
        if let Known::Present(address) = known.clone() {
            tally.checked += 1;
            match claims.get(key) {
                Some((a, r)) if *a == address && Some(*r) == *role => {}
                other => {
                    tally.lost += 1;
                    eprintln!("LOST: claim {key:?} ({role:?} at {address}) was acknowledged, the registry has {other:?}");
                }
            }
        }
        if let Some((a, r)) = claims.get(key) {
            *known = Known::Present(a.clone());
            *role = Some(*r);
        } else {
            *known = Known::Absent;
        }
    }
    let mut problems = Vec::new();
    for (cluster, (generation, node)) in &generations {
        if *generation != 1 {
            problems.push(format!("{cluster} has bootstrap generation {generation}"));
        }
        if let Some(holder) = m.bootstrap.get(cluster) {
            if holder != node {
                problems.push(format!(
                    "{cluster}: the stored grant names {node}, the acknowledged one {holder}"
                ));
            }
        }
    }
    m.double_grants.extend(problems);
    tally.double_grants = m.double_grants.len() as u64;
    tally.acknowledged = m.acknowledged;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_loses_no_acknowledged_write_and_never_grants_a_second_bootstrap() {
    let cycles: u64 = std::env::var("ROLLCALL_CRASH_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    let seed: u64 = std::env::var("ROLLCALL_CRASH_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(rand::random);
    eprintln!("crash test: {cycles} cycles, seed {seed} (ROLLCALL_CRASH_SEED={seed} repeats the kill times)");
    let mut rng = StdRng::seed_from_u64(seed);
    // A long TTL: nothing expires during the test, so every acknowledged write must stay.
    let args = [
        "--ttl",
        "10m",
        "--interval",
        "500ms",
        "--startup-grace",
        "500ms",
        "--quiet-period",
        "500ms",
    ];
    let mut reg = TestRegistry::start_process(&args).await;
    let model = Arc::new(Mutex::new(Model::default()));
    let mut tally = Tally::default();
    for cycle in 0..cycles {
        let client = reg.client();
        let tasks: Vec<_> = (0..WORKERS)
            .map(|w| {
                tokio::spawn(worker(
                    client.clone(),
                    model.clone(),
                    w,
                    seed ^ (cycle << 8) ^ w as u64,
                ))
            })
            .collect();
        let run_for = Duration::from_millis(rng.gen_range(100..700));
        tokio::time::sleep(run_for).await;
        reg.kill9();
        for t in tasks {
            let _ = tokio::time::timeout(Duration::from_secs(10), t).await;
        }
        reg.restart().await;
        verify(&reg.client(), &model, &mut tally).await;
        tally.cycles += 1;
        assert_eq!(
            tally.lost, 0,
            "cycle {cycle}: acknowledged writes were lost (seed {seed})"
        );
        let m = model.lock().expect("model");
        assert!(
            m.double_grants.is_empty(),
            "cycle {cycle}: {:?} (seed {seed})",
            m.double_grants
        );
    }
    eprintln!(
        "crash test: {} cycles, {} writes acknowledged, {} checked after restarts, {} lost, {} double bootstrap grants",
        tally.cycles, tally.acknowledged, tally.checked, tally.lost, tally.double_grants
    );
    assert!(
        tally.acknowledged > cycles * 20,
        "too little load to mean anything: {}",
        tally.acknowledged
    );
}
