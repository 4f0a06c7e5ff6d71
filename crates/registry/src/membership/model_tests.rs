//! A model-based test of the claim rules and the registry's state: random sequences of claims,
//! heartbeats, leaves, time passing, freezes, restarts (clean, and on an empty data directory)
//! and resets, run against `Membership` on a real sled store with a paused clock, and checked
//! after every step against a small model of what the registry could know:
//!
//! 1. never `bootstrap` while the cluster's raft is known (a member of it heartbeated since the
//!    last reset, and the registry has not lost its data since);
//! 2. so at most one bootstrap per cluster between resets, but for a grant whose raft never
//!    became known;
//! 3. no grant of a server slot (`take-slot`, `bootstrap`) beyond the raft's size.
//!
//! `ROLLCALL_MODEL_CASES` sets how many sequences run (CI: the default; RELIABILITY.md records
//! a long run).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use rollcall_protocol::{
    ClaimRequest, GrantedRole, HeartbeatRequest, MemberRole, RaftIdentity, ResetRequest,
};

use super::*;

const CLUSTERS: usize = 2;
const NODES: usize = 5;
const TTL: Duration = Duration::from_secs(6);
const TICK: Duration = Duration::from_millis(250);

#[derive(Debug, Clone)]
enum Op {
    Claim {
        cluster: usize,
        node: usize,
        expect: u32,
    },
    /// A node whose agent runs (it was told a role) heartbeats; `honest` reports its identity.
    Heartbeat {
        cluster: usize,
        node: usize,
        honest: bool,
    },
    /// A node whose agent runs claims again while it starts (`started_as`).
    Renew {
        cluster: usize,
        node: usize,
    },
    Leave {
        cluster: usize,
        node: usize,
    },
    /// Time passes with the sweeper ticking.
    Pass {
        ms: u64,
    },
    /// The process is frozen: time passes without a tick.
    Freeze {
        ms: u64,
    },
    Restart {
        empty: bool,
    },
    Reset {
        cluster: usize,
    },
}

fn op() -> impl Strategy<Value = Op> {
    let c = 0..CLUSTERS;
    let n = 0..NODES;
    prop_oneof![
        4 => (c.clone(), n.clone(), prop_oneof![Just(1u32), Just(3u32)])
            .prop_map(|(cluster, node, expect)| Op::Claim { cluster, node, expect }),
        5 => (c.clone(), n.clone(), prop::bool::weighted(0.9))
            .prop_map(|(cluster, node, honest)| Op::Heartbeat { cluster, node, honest }),
        1 => (c.clone(), n.clone()).prop_map(|(cluster, node)| Op::Renew { cluster, node }),
        1 => (c.clone(), n.clone()).prop_map(|(cluster, node)| Op::Leave { cluster, node }),
        3 => (0u64..9000).prop_map(|ms| Op::Pass { ms }),
        1 => (2500u64..20_000).prop_map(|ms| Op::Freeze { ms }),
        1 => prop::bool::weighted(0.3).prop_map(|empty| Op::Restart { empty }),
        1 => c.prop_map(|cluster| Op::Reset { cluster }),
    ]
}

/// What the model knows of one node: the answer it was given, and whether its agent runs.
#[derive(Debug, Clone)]
struct NodeModel {
    role: GrantedRole,
    raft: Option<RaftIdentity>,
    running: bool,
}

#[derive(Debug, Default)]
struct ClusterModel {
    nodes: HashMap<usize, NodeModel>,
    /// The generation the registry must know the raft by: set when a heartbeat of it was
    /// accepted, cleared by a reset and by the loss of the registry's data.
    known: Option<u64>,
}

struct Harness {
    dir: tempfile::TempDir,
    membership: Option<Membership>,
    clusters: Vec<ClusterModel>,
}

fn timing() -> Timing {
    Timing {
        ttl: TTL,
        interval: Duration::from_secs(2),
        startup_grace: Duration::from_secs(4),
        quiet_period: TTL,
        rebootstrap_after: None,
        raft_lost_after: Duration::from_secs(300),
    }
}

fn open(dir: &std::path::Path) -> Membership {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        match Store::open(dir, 1 << 20) {
            Ok(store) => {
                let limits = Limits {
                    max_clusters: 100,
                    max_members_per_cluster: 100,
                    max_bootstrapped_clusters: 100,
                    max_members: 10_000,
                    max_metadata_bytes: 1 << 20,
                };
                return Membership::open(store, timing(), limits).expect("open membership");
            }
            // The flusher thread lets go of sled a moment after the last Store is dropped.
            Err(e) if std::time::Instant::now() < deadline => {
                let _ = e;
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => panic!("reopen: {e}"),
        }
    }
}

fn name(cluster: usize) -> String {
    format!("c{cluster}")
}

fn node_name(node: usize) -> String {
    format!("n{node}")
}

fn address(node: usize) -> String {
    format!("10.0.0.{node}:2380")
}

impl Harness {
    fn m(&self) -> &Membership {
        self.membership.as_ref().expect("open")
    }

    async fn pass(&self, d: Duration) {
        let mut left = d;
        while !left.is_zero() {
            let step = left.min(TICK);
            tokio::time::advance(step).await;
            self.m().expire_due();
            left -= step;
        }
    }

    async fn step(&mut self, op: &Op) -> Result<(), TestCaseError> {
        match op.clone() {
            Op::Claim {
                cluster,
                node,
                expect,
            } => {
                let request = ClaimRequest {
                    node: node_name(node),
                    address: address(node),
                    expect,
                    agent_only: false,
                    started_as: None,
                    raft: None,
                };
                self.claim(cluster, node, request, expect)?;
            }
            Op::Renew { cluster, node } => {
                let Some(known) = self.clusters[cluster].nodes.get(&node).cloned() else {
                    return Ok(());
                };
                let request = ClaimRequest {
                    node: node_name(node),
                    address: address(node),
                    expect: 3,
                    agent_only: false,
                    started_as: Some(known.role),
                    raft: known.raft.clone(),
                };
                self.claim(cluster, node, request, 3)?;
            }
            Op::Heartbeat {
                cluster,
                node,
                honest,
            } => {
                let Some(known) = self.clusters[cluster].nodes.get(&node).cloned() else {
                    return Ok(());
                };
                let role = match known.role {
                    GrantedRole::Agent => MemberRole::Agent,
                    _ => MemberRole::Server,
                };
                let raft = if honest {
                    known.raft.clone()
                } else {
                    Some(RaftIdentity {
                        generation: 99,
                        nonce: "ffffffffffffffff".into(),
                    })
                };
                let hb = HeartbeatRequest {
                    raft_members: None,
                    address: address(node),
                    role,
                    status: None,
                    meta: BTreeMap::new(),
                    raft,
                };
                if self
                    .m()
                    .heartbeat(&name(cluster), &node_name(node), hb)
                    .is_ok()
                {
                    let cm = &mut self.clusters[cluster];
                    if let Some(n) = cm.nodes.get_mut(&node) {
                        n.running = true;
                    }
                    if honest {
                        if let Some(raft) = &known.raft {
                            cm.known.get_or_insert(raft.generation);
                        }
                    }
                }
            }
            Op::Leave { cluster, node } => {
                let _ = self.m().leave(&name(cluster), &node_name(node));
                self.clusters[cluster].nodes.remove(&node);
            }
            Op::Pass { ms } => self.pass(Duration::from_millis(ms)).await,
            Op::Freeze { ms } => tokio::time::advance(Duration::from_millis(ms)).await,
            Op::Restart { empty } => {
                self.m().store().flush().await.expect("flush");
                self.membership = None;
                if empty {
                    self.dir = tempfile::tempdir().expect("tempdir");
                    for cm in &mut self.clusters {
                        cm.known = None;
                    }
                }
                self.membership = Some(open(self.dir.path()));
            }
            Op::Reset { cluster } => {
                let Some(detail) = self.m().cluster_detail(&name(cluster)) else {
                    return Ok(());
                };
                let generation = detail
                    .raft
                    .map(|r| r.generation)
                    .or(detail.bootstrap.map(|b| b.generation))
                    .unwrap_or(0);
                let mut force: Vec<String> =
                    detail.members.iter().map(|m| m.node.clone()).collect();
                force.extend(detail.claims.iter().map(|c| c.node.clone()));
                force.sort();
                force.dedup();
                let request = ResetRequest {
                    generation,
                    force,
                    reason: Some("model".into()),
                };
                // A reset may still be refused (an entry live but not listed); only a done
                // reset changes the model.
                if self.m().reset(&name(cluster), &request).is_ok() {
                    self.clusters[cluster] = ClusterModel::default();
                }
            }
        }
        Ok(())
    }

    fn claim(
        &mut self,
        cluster: usize,
        node: usize,
        request: ClaimRequest,
        claimed_expect: u32,
    ) -> Result<(), TestCaseError> {
        let renewal = request.started_as.is_some();
        let held_a_slot = self.m().cluster_detail(&name(cluster)).is_some_and(|d| {
            d.claims.iter().any(|c| {
                c.node == request.node
                    && matches!(c.role, GrantedRole::Bootstrap | GrantedRole::Server)
            }) || d
                .members
                .iter()
                .any(|m| m.node == request.node && m.role == MemberRole::Server)
        });
        let Ok((answer, _)) = self.m().claim(&name(cluster), &request) else {
            return Ok(());
        };
        let detail = self
            .m()
            .cluster_detail(&name(cluster))
            .expect("known cluster");
        let cm = &mut self.clusters[cluster];
        if answer.role == GrantedRole::Bootstrap
            && !cm
                .nodes
                .get(&node)
                .is_some_and(|n| n.role == GrantedRole::Bootstrap)
        {
            prop_assert!(
                cm.known.is_none(),
                "bootstrap granted to n{node} of c{cluster} while its raft generation {:?} is known: {}",
                cm.known,
                answer.reason
            );
            prop_assert!(
                !renewal,
                "a node that said it started was told to bootstrap: {}",
                answer.reason
            );
        }
        if matches!(answer.role, GrantedRole::Bootstrap | GrantedRole::Server)
            && !renewal
            && !held_a_slot
        {
            let mut slots: HashSet<&str> = detail
                .claims
                .iter()
                .filter(|c| matches!(c.role, GrantedRole::Bootstrap | GrantedRole::Server))
                .map(|c| c.node.as_str())
                .collect();
            slots.extend(
                detail
                    .members
                    .iter()
                    .filter(|m| m.role == MemberRole::Server)
                    .map(|m| m.node.as_str()),
            );
            let size = detail.raft.and_then(|r| r.expect).unwrap_or(claimed_expect);
            prop_assert!(
                slots.len() <= size as usize || slots.len() <= answer.expect as usize,
                "{} server slots in c{cluster} after granting n{node} {:?}, size {size}: {}",
                slots.len(),
                answer.role,
                answer.reason
            );
        }
        let running = cm.nodes.get(&node).is_some_and(|n| n.running);
        cm.nodes.insert(
            node,
            NodeModel {
                role: answer.role,
                raft: answer.raft.clone(),
                running,
            },
        );
        Ok(())
    }
}

fn cases() -> u32 {
    std::env::var("ROLLCALL_MODEL_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3000)
}

#[test]
fn the_registry_never_grants_a_second_raft() {
    let mut runner = TestRunner::new(Config {
        cases: cases(),
        failure_persistence: None,
        ..Config::default()
    });
    let result = runner.run(&prop::collection::vec(op(), 1..80), |ops| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .expect("runtime");
        runtime.block_on(async {
            let dir = tempfile::tempdir().expect("tempdir");
            let membership = open(dir.path());
            let mut h = Harness {
                dir,
                membership: Some(membership),
                clusters: (0..CLUSTERS).map(|_| ClusterModel::default()).collect(),
            };
            // Past the first startup grace, as the sweeper would see it.
            h.pass(Duration::from_secs(5)).await;
            for op in &ops {
                h.step(op).await?;
            }
            Ok(())
        })
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}
