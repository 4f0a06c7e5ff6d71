//! Raft engines: how to start each agent for a granted role, and how to read its health and
//! status from its own API.
//!
//! The rest of the sidecar only sees [`Engine`]: it hands over a [`StartPlan`] (what the
//! registry decided, or a restart from existing data) and gets back an [`AgentCommand`] to
//! spawn; later it asks [`Engine::health`] and [`Engine::status`], and, while an etcd
//! member that joined as a learner is not a voter yet, calls [`Engine::promote_learner`].
//! Each engine's argument building and response parsing are pure functions, tested by
//! tables in their modules.

pub mod agent_user;
pub mod consul;
pub mod etcd;
pub mod exec;

pub use consul::host_interfaces;

use std::future::Future;
use std::time::Duration;

use rollcall_protocol::{
    Absence, AgentStatus, HeartbeatResponse, MemberRole, RaftIdentity, RaftMember,
};

use crate::config::{EngineKind, Settings};
use crate::exit::Exit;

/// How the agent must start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartPlan {
    /// The registry granted `bootstrap`: start a brand-new raft.
    Bootstrap,
    /// The registry granted `server`: join the raft through these live servers.
    Server { join: Vec<String> },
    /// The registry granted `agent`: a non-voting client of these servers.
    Agent { join: Vec<String> },
    /// The data directory already holds raft state: restart with it, never bootstrap and
    /// never add the member again. `join` is whatever live servers the registry knew.
    Restart { join: Vec<String> },
}

impl StartPlan {
    /// The role the member reports in its heartbeats.
    pub fn member_role(&self) -> MemberRole {
        match self {
            StartPlan::Agent { .. } => MemberRole::Agent,
            _ => MemberRole::Server,
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            StartPlan::Bootstrap => "bootstrap",
            StartPlan::Server { .. } => "server",
            StartPlan::Agent { .. } => "agent",
            StartPlan::Restart { .. } => "restart",
        }
    }

    pub fn join(&self) -> &[String] {
        match self {
            StartPlan::Bootstrap => &[],
            StartPlan::Server { join }
            | StartPlan::Agent { join }
            | StartPlan::Restart { join } => join,
        }
    }
}

/// What a restart from data learns from the raft before the agent starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RestartCheck {
    /// Restart from the data (the member is in the raft, or nothing says otherwise).
    Rejoin,
    /// A live member of the same raft no longer lists this member: it was removed. Why.
    Removed(String),
}

/// Where an engine finds join targets beyond those granted at start: etcd asks again between
/// rounds of member adds, and a gateway granted no server waits here for one. The engine
/// does not know how they are found; `RegistryLink` asks the registry.
pub trait JoinTargets {
    /// The live servers' addresses other than this node's, or `None` when they cannot be
    /// known right now.
    fn live_server_addresses(&self) -> impl Future<Output = Option<Vec<String>>>;
}

/// A command line ready to spawn.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentCommand {
    pub program: String,
    pub args: Vec<String>,
    /// Extra environment for the agent.
    pub env: Vec<(String, String)>,
    /// The user the agent runs as (`--agent-user`); `None` runs it as the sidecar's user.
    pub user: Option<agent_user::AgentUser>,
}

/// What the agent's API says about it right now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    /// Serving, inside a raft with a leader: heartbeats may be sent.
    Healthy,
    /// Serving as a non-voting learner (etcd): the join's last step, promotion, is due
    /// ([`Engine::promote_learner`]). Not healthy until then: no one may be told to join
    /// through a member that cannot add them.
    Learner { member_id: String },
    /// Answering, but not ready (no leader yet).
    Starting(String),
    /// Not answering at all.
    NotRunning(String),
}

/// One of the supported raft agents.
#[derive(Debug)]
pub enum Engine {
    Consul(consul::ConsulEngine),
    Etcd(etcd::EtcdEngine),
    Exec(exec::ExecEngine),
}

impl Engine {
    pub fn new(settings: &Settings) -> Result<Engine, Exit> {
        let http = agent_http_client(settings.request_timeout)?;
        Ok(match settings.engine {
            EngineKind::Consul => Engine::Consul(consul::ConsulEngine::new(settings, http)?),
            EngineKind::Etcd => Engine::Etcd(etcd::EtcdEngine::new(settings, http)),
            EngineKind::Exec => Engine::Exec(exec::ExecEngine::new(settings, http)),
        })
    }

    /// True when the data directory holds raft state from an earlier run.
    pub fn has_raft_state(&self) -> bool {
        match self {
            Engine::Consul(e) => e.has_raft_state(),
            Engine::Etcd(e) => e.has_raft_state(),
            Engine::Exec(_) => false,
        }
    }

    /// Builds the command for `plan`. etcd's `server` adds the member through a live
    /// server's API here, retrying its join targets until one answers or `join_timeout` ends;
    /// `targets` is asked for fresh ones between rounds. `raft` is the raft the registry
    /// named: etcd's cluster token and exec's environment carry it; Consul has no setting
    /// that names a raft (its servers find each other by address), so it gets nothing.
    /// Consul resolves its `-advertise` IP and writes `CONSUL_LOCAL_CONFIG` here.
    pub async fn prepare(
        &self,
        plan: &StartPlan,
        raft: Option<&RaftIdentity>,
        targets: &impl JoinTargets,
    ) -> Result<AgentCommand, Exit> {
        match self {
            Engine::Consul(e) => e.prepare(plan).await,
            Engine::Etcd(e) => e.prepare(plan, raft, targets).await,
            Engine::Exec(e) => e.command(plan, raft),
        }
    }

    /// Before a restart from data: asks the live servers `join` whether this member (the IDs
    /// the identity file recorded) is still in the raft, and (etcd) updates its peer URL
    /// there when it changed with its address. Only etcd can tell; the others rejoin.
    pub async fn check_restart(
        &self,
        join: &[String],
        recorded: Option<&crate::raft_identity::MemberIds>,
    ) -> RestartCheck {
        match self {
            Engine::Etcd(e) => e.check_restart(join, recorded).await,
            Engine::Consul(_) | Engine::Exec(_) => RestartCheck::Rejoin,
        }
    }

    /// Called by the member loop while a server is healthy, until it answers once: etcd
    /// makes sure the raft lists this member at its current peer URL and returns the
    /// member's IDs for the identity file. `None` for the other engines.
    pub async fn confirm_own_member(&self) -> Option<crate::raft_identity::MemberIds> {
        match self {
            Engine::Etcd(e) => e.confirm_own_member().await,
            Engine::Consul(_) | Engine::Exec(_) => None,
        }
    }

    /// The `expect` of the registry's claim answer, which a join uses over `--expect`.
    pub fn use_claimed_expect(&self, expect: u32) {
        if let Engine::Etcd(e) = self {
            e.use_claimed_expect(expect);
        }
    }

    /// Reads the agent's health; `role` is the role it was started as. Only reads: what to
    /// do about the answer is the caller's.
    pub async fn health(&self, role: MemberRole) -> Health {
        match self {
            Engine::Consul(e) => e.health().await,
            Engine::Etcd(e) => e.health(role).await,
            Engine::Exec(e) => e.health().await,
        }
    }

    /// The last step of a join that added this member as a learner: promotion to a voter.
    /// Called by the member loop each time [`Engine::health`] answers [`Health::Learner`];
    /// etcd refuses until the learner has caught up, so an error means "not yet".
    pub async fn promote_learner(&self, member_id: &str) -> Result<(), String> {
        match self {
            Engine::Etcd(e) => e.promote_learner(member_id).await,
            Engine::Consul(_) | Engine::Exec(_) => {
                Err("only etcd members join as learners".to_string())
            }
        }
    }

    /// Reads what the agent says about its raft, for the heartbeat.
    pub async fn status(&self, role: MemberRole) -> Option<AgentStatus> {
        match self {
            Engine::Consul(e) => e.status().await,
            Engine::Etcd(e) => e.status(role).await,
            Engine::Exec(_) => None,
        }
    }

    /// The raft's membership as this member sees it, for the heartbeat's `raft_members`;
    /// the leader's adds its evidence (`connected`, `disconnected_for_ms`). etcd answers what
    /// its last [`Engine::status`] read; `None` when the member cannot tell (a client agent
    /// or gateway, or the raft cannot be read).
    pub async fn raft_members(&self, role: MemberRole) -> Option<Vec<RaftMember>> {
        match self {
            Engine::Consul(e) => e.raft_members(role).await,
            Engine::Etcd(e) => e.raft_members(),
            Engine::Exec(_) => None,
        }
    }

    /// The registry's heartbeat interval, once a claim's answer gives it (Consul's Autopilot
    /// timing follows it). Call before [`Engine::prepare`].
    pub fn set_registry_interval(&self, interval: Duration) {
        if let Engine::Consul(e) = self {
            e.set_registry_interval(interval);
        }
    }

    /// After a heartbeat the registry accepted: the leader's sidecar removes a dead member
    /// when the evidence says so (`absent` in the answer; `expect` the raft's size;
    /// `threshold` is `--dead-member-after`). etcd: `engine/etcd/cleanup.rs`; Consul, where
    /// Autopilot does not: `engine/consul/cleanup.rs`.
    pub async fn after_heartbeat(
        &self,
        answer: &HeartbeatResponse,
        expect: u32,
        threshold: Duration,
    ) {
        match self {
            Engine::Etcd(e) => e.after_heartbeat(answer, expect).await,
            Engine::Consul(_) => {
                let _ = self.consul_cleanup(&answer.absent, expect, threshold).await;
            }
            Engine::Exec(_) => {}
        }
    }

    /// Consul: one dead-server cleanup pass on the leader's sidecar (what
    /// [`Engine::after_heartbeat`] runs), returning what it did; `None` for the other engines.
    pub async fn consul_cleanup(
        &self,
        absent: &[Absence],
        expect: u32,
        threshold: Duration,
    ) -> Option<consul::CleanupOutcome> {
        match self {
            Engine::Consul(e) => Some(e.cleanup(absent, expect, threshold).await),
            _ => None,
        }
    }

    /// Consul tells its role itself; the others report what they were started as.
    pub async fn detect_role(&self) -> Option<MemberRole> {
        match self {
            Engine::Consul(e) => e.detect_role().await,
            _ => None,
        }
    }

    /// Metadata sent with every heartbeat (etcd: its peer and client URLs).
    pub fn meta(&self) -> std::collections::BTreeMap<String, String> {
        match self {
            Engine::Etcd(e) => e.meta(),
            _ => Default::default(),
        }
    }
}

/// The HTTP client for the agent's own API: never through a proxy, short timeouts.
fn agent_http_client(timeout: Duration) -> Result<reqwest::Client, Exit> {
    reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout.min(Duration::from_secs(2)))
        .no_proxy()
        .build()
        .map_err(|e| {
            Exit::new(
                crate::exit::EXIT_INTERNAL,
                format!("cannot build the HTTP client: {e}"),
            )
        })
}

/// Shuffles join targets so that a fleet does not pile onto the first live member.
pub fn shuffled(targets: &[String]) -> Vec<String> {
    use rand::seq::SliceRandom;
    let mut targets = targets.to_vec();
    targets.shuffle(&mut rand::thread_rng());
    targets
}

/// True when `dir` exists and holds at least one entry: how engines recognise raft state.
pub fn dir_has_entries(dir: &std::path::Path) -> bool {
    std::fs::read_dir(dir)
        .map(|mut entries| entries.next().is_some())
        .unwrap_or(false)
}

/// An error with its causes, since reqwest's own message hides them ("error sending request").
pub fn describe(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
