//! Consul's HTTP API as the sidecar reads it: the calls (with the ACL token when one is
//! configured) and the pure parsing of each documented answer into what a heartbeat carries.
//!
//! - `/v1/status/leader`: the leader's server RPC address (`ip:8300`), `""` without one.
//!   Needs no ACL token.
//! - `/v1/agent/self`: this agent's name, whether it is a server, its RPC address
//!   (`agent:read` with ACLs).
//! - `/v1/operator/autopilot/health`, or `/v1/operator/raft/configuration` when that fails:
//!   the raft's servers, which of them vote, and (Autopilot) which are healthy, with the
//!   raft's failure tolerance (`operator:read` with ACLs). Autopilot keeps a new server a
//!   non-voter for `server_stabilization_time`, and `/v1/status/peers` lists non-voters too,
//!   so voters are counted from these.
//! - Writes, by the leader's sidecar only (`operator:write`):
//!   `PUT /v1/operator/autopilot/configuration?cas=`, `PUT /v1/agent/force-leave/:node?prune`
//!   and `DELETE /v1/operator/raft/peer?id=` (see `cleanup.rs`).

use std::collections::HashMap;

use rollcall_protocol::AgentStatus;
use serde::Deserialize;

use crate::engine::describe;

/// The header Consul reads the ACL token from.
pub const TOKEN_HEADER: &str = "X-Consul-Token";

/// One agent's HTTP API, with the ACL token sent on every call when one is configured.
#[derive(Clone)]
pub struct ConsulApi {
    pub base: String,
    pub token: Option<String>,
    pub http: reqwest::Client,
}

/// Never prints the token: an engine printed with `{:?}` must not leak it to a log.
impl std::fmt::Debug for ConsulApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsulApi")
            .field("base", &self.base)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .finish_non_exhaustive()
    }
}

/// Why a call did not give a usable answer.
#[derive(Debug)]
pub enum CallError {
    /// Nothing answered: the agent is not running (yet).
    Unreachable(String),
    /// It answered, but not with success (a 403 without the right token, a 500 without a
    /// leader).
    Failed(String),
}

impl ConsulApi {
    /// `GET path`, accepting a success status or one of `also_accepted` (autopilot health
    /// answers 429 with its full body when the cluster is unhealthy).
    pub async fn get(&self, path: &str, also_accepted: &[u16]) -> Result<String, CallError> {
        let url = format!("{}{}", self.base, path);
        let mut request = self.http.get(&url);
        if let Some(token) = &self.token {
            request = request.header(TOKEN_HEADER, token);
        }
        let response = request
            .send()
            .await
            .map_err(|e| CallError::Unreachable(format!("{url}: {}", describe(&e))))?;
        let status = response.status();
        let body = response
            .text()
            .await
            .map_err(|e| CallError::Failed(format!("{url}: {e}")))?;
        if !status.is_success() && !also_accepted.contains(&status.as_u16()) {
            return Err(CallError::Failed(format!(
                "{url} answered {status}: {}",
                body.trim()
            )));
        }
        Ok(body)
    }

    /// A `PUT` or `DELETE` (`path` with its query), with a JSON body for a `PUT`.
    pub async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<String, CallError> {
        let url = format!("{}{}", self.base, path);
        let mut request = self.http.request(method.clone(), &url);
        if let Some(token) = &self.token {
            request = request.header(TOKEN_HEADER, token);
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request
            .send()
            .await
            .map_err(|e| CallError::Unreachable(format!("{method} {url}: {}", describe(&e))))?;
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        if !status.is_success() {
            return Err(CallError::Failed(format!(
                "{method} {url} answered {status}: {}",
                text.trim()
            )));
        }
        Ok(text)
    }

    /// Autopilot's health of the raft (answered with 200, or 429 while unhealthy).
    pub async fn autopilot_health(&self) -> Result<AutopilotHealth, String> {
        match self.get("/v1/operator/autopilot/health", &[429]).await {
            Ok(body) => parse_autopilot(&body),
            Err(CallError::Unreachable(e) | CallError::Failed(e)) => Err(e),
        }
    }

    /// The raft configuration.
    pub async fn raft_configuration(&self) -> Result<Vec<RaftServer>, String> {
        match self.get("/v1/operator/raft/configuration", &[]).await {
            Ok(body) => parse_raft_configuration(&body),
            Err(CallError::Unreachable(e) | CallError::Failed(e)) => Err(e),
        }
    }

    /// The raft's servers with Autopilot's health when it answers: from the health when it
    /// answers, else from the raft configuration.
    pub async fn raft_servers(&self) -> Result<(Vec<RaftServer>, Option<AutopilotHealth>), String> {
        let autopilot = match self.autopilot_health().await {
            Ok(health) => return Ok((health.raft_servers(), Some(health))),
            Err(e) => e,
        };
        match self.raft_configuration().await {
            Ok(servers) => Ok((servers, None)),
            Err(e) => Err(format!("{autopilot}; {e}")),
        }
    }
}

/// `GET /v1/status/leader`: a JSON string, `""` while there is no leader.
pub fn parse_leader(body: &str) -> Result<Option<String>, String> {
    let leader: String = serde_json::from_str(body)
        .map_err(|e| format!("/v1/status/leader is not a JSON string: {e}"))?;
    Ok(Some(leader).filter(|l| !l.is_empty()))
}

/// One server of the raft, as the operator endpoints list it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RaftServer {
    /// The raft ID (the node ID, a UUID; the address in Consul 0.7): what
    /// `DELETE /v1/operator/raft/peer?id=` takes.
    pub id: String,
    /// The Consul node name; `(unknown)` in the raft configuration for a stale server that
    /// Consul no longer knows.
    pub node: String,
    /// The server RPC address, `ip:8300`: what `/v1/status/leader` names.
    pub address: String,
    pub leader: bool,
    /// False for a non-voter (a server Autopilot has not promoted yet).
    pub voter: bool,
}

#[derive(Deserialize)]
struct RawRaftConfiguration {
    #[serde(rename = "Servers")]
    servers: Vec<RawRaftServer>,
}

#[derive(Deserialize)]
struct RawRaftServer {
    #[serde(rename = "ID", default)]
    id: String,
    #[serde(rename = "Node", default)]
    node: String,
    #[serde(rename = "Address", default)]
    address: String,
    #[serde(rename = "Leader", default)]
    leader: bool,
    #[serde(rename = "Voter", default)]
    voter: bool,
}

/// `GET /v1/operator/raft/configuration`.
pub fn parse_raft_configuration(body: &str) -> Result<Vec<RaftServer>, String> {
    let raw: RawRaftConfiguration = serde_json::from_str(body)
        .map_err(|e| format!("/v1/operator/raft/configuration has an unexpected shape: {e}"))?;
    Ok(raw
        .servers
        .into_iter()
        .map(|s| RaftServer {
            id: s.id,
            node: s.node,
            address: s.address,
            leader: s.leader,
            voter: s.voter,
        })
        .collect())
}

/// `GET /v1/operator/autopilot/health`, as Autopilot's health of the raft.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AutopilotHealth {
    /// Whether every server is healthy (Consul answers 429 instead of 200 when not).
    pub healthy: bool,
    /// How many servers could fail without an outage.
    pub failure_tolerance: u32,
    pub servers: Vec<ServerHealth>,
}

/// One server in Autopilot's health.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerHealth {
    pub id: String,
    pub name: String,
    pub address: String,
    /// Serf's view of the server: `alive`, `leaving`, `left`, `failed`, or another word for
    /// a server Serf does not know.
    pub serf_status: String,
    pub leader: bool,
    pub voter: bool,
    /// Healthy by the Autopilot configuration (`last_contact_threshold`,
    /// `max_trailing_logs`).
    pub healthy: bool,
    /// `LastContact`: the time since the server's last contact with the leader.
    pub last_contact: Option<String>,
}

impl AutopilotHealth {
    /// The entry of the raft server `server`: by raft ID, else by address.
    pub fn entry_for(&self, server: &RaftServer) -> Option<&ServerHealth> {
        self.servers
            .iter()
            .find(|h| !server.id.is_empty() && h.id == server.id)
            .or_else(|| {
                self.servers
                    .iter()
                    .find(|h| h.id.is_empty() && h.address == server.address)
            })
    }

    /// The servers as the raft lists them.
    pub fn raft_servers(&self) -> Vec<RaftServer> {
        self.servers
            .iter()
            .map(|s| RaftServer {
                id: s.id.clone(),
                node: s.name.clone(),
                address: s.address.clone(),
                leader: s.leader,
                voter: s.voter,
            })
            .collect()
    }
}

#[derive(Deserialize)]
struct RawAutopilotHealth {
    #[serde(rename = "Healthy", default)]
    healthy: bool,
    #[serde(rename = "FailureTolerance", default)]
    failure_tolerance: u32,
    #[serde(rename = "Servers")]
    servers: Vec<RawAutopilotServer>,
}

#[derive(Deserialize)]
struct RawAutopilotServer {
    #[serde(rename = "ID", default)]
    id: String,
    #[serde(rename = "Name", default)]
    name: String,
    #[serde(rename = "Address", default)]
    address: String,
    #[serde(rename = "SerfStatus", default)]
    serf_status: String,
    #[serde(rename = "Leader", default)]
    leader: bool,
    #[serde(rename = "Voter", default)]
    voter: bool,
    #[serde(rename = "Healthy", default)]
    healthy: bool,
    #[serde(rename = "LastContact", default)]
    last_contact: Option<String>,
}

/// `GET /v1/operator/autopilot/health` (the same body with 200 or, unhealthy, 429).
pub fn parse_autopilot(body: &str) -> Result<AutopilotHealth, String> {
    let raw: RawAutopilotHealth = serde_json::from_str(body)
        .map_err(|e| format!("/v1/operator/autopilot/health has an unexpected shape: {e}"))?;
    Ok(AutopilotHealth {
        healthy: raw.healthy,
        failure_tolerance: raw.failure_tolerance,
        servers: raw
            .servers
            .into_iter()
            .map(|s| ServerHealth {
                id: s.id,
                name: s.name,
                address: s.address,
                serf_status: s.serf_status,
                leader: s.leader,
                voter: s.voter,
                healthy: s.healthy,
                last_contact: s.last_contact,
            })
            .collect(),
    })
}

/// `GET /v1/operator/autopilot/health`, as the raft's servers.
pub fn parse_autopilot_health(body: &str) -> Result<Vec<RaftServer>, String> {
    parse_autopilot(body).map(|health| health.raft_servers())
}

/// The parts of `GET /v1/agent/self` the sidecar reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentSelf {
    pub node_name: String,
    pub server: bool,
    /// `Member.Addr:Member.Tags.port`: the server RPC address that `/v1/status/leader` and
    /// the operator endpoints name. Absent for client agents.
    pub rpc_address: Option<String>,
    /// `Stats.consul.leader` where the agent reports it.
    pub stats_leader: Option<bool>,
    /// `Stats.consul.acl`: `enabled` or `disabled` where the agent reports it.
    pub acl_enabled: Option<bool>,
}

#[derive(Deserialize)]
struct RawAgentSelf {
    #[serde(rename = "Config")]
    config: RawConfig,
    #[serde(rename = "Member", default)]
    member: Option<RawMember>,
    #[serde(rename = "Stats", default)]
    stats: Option<HashMap<String, HashMap<String, String>>>,
}

#[derive(Deserialize)]
struct RawConfig {
    #[serde(rename = "NodeName", default)]
    node_name: String,
    #[serde(rename = "Server", default)]
    server: bool,
}

#[derive(Deserialize)]
struct RawMember {
    #[serde(rename = "Addr", default)]
    addr: String,
    #[serde(rename = "Tags", default)]
    tags: HashMap<String, String>,
}

/// `GET /v1/agent/self`.
pub fn parse_agent_self(body: &str) -> Result<AgentSelf, String> {
    let raw: RawAgentSelf = serde_json::from_str(body)
        .map_err(|e| format!("/v1/agent/self has an unexpected shape: {e}"))?;
    let rpc_address = raw.member.as_ref().and_then(|m| {
        let port: u16 = m.tags.get("port")?.parse().ok()?;
        (raw.config.server && !m.addr.is_empty())
            .then(|| crate::config::join_host_port(&m.addr, port))
    });
    let consul_stats = raw.stats.as_ref().and_then(|s| s.get("consul"));
    let stats_leader = consul_stats
        .and_then(|c| c.get("leader"))
        .map(|v| v == "true");
    let acl_enabled = consul_stats
        .and_then(|c| c.get("acl"))
        .map(|v| v != "disabled");
    Ok(AgentSelf {
        node_name: raw.config.node_name,
        server: raw.config.server,
        rpc_address,
        stats_leader,
        acl_enabled,
    })
}

/// This agent's entry among the raft's servers: by RPC address, else by node name.
pub fn own_entry<'a>(servers: &'a [RaftServer], agent: &AgentSelf) -> Option<&'a RaftServer> {
    agent
        .rpc_address
        .as_deref()
        .and_then(|own| servers.iter().find(|s| s.address == own))
        .or_else(|| servers.iter().find(|s| s.node == agent.node_name))
}

/// Combines the answers into the status a heartbeat carries. `leader` stays Consul's
/// `ip:8300`. A server is in the raft only as a voter under a known leader; `peers` counts
/// voters. Without the raft's server list (no `operator:read`), both are left unknown rather
/// than guessed.
pub fn agent_status(
    leader: Option<&str>,
    servers: Option<&[RaftServer]>,
    agent: Option<&AgentSelf>,
) -> AgentStatus {
    let server = agent.map(|a| a.server);
    let own = match (servers, agent) {
        (Some(servers), Some(agent)) if agent.server => own_entry(servers, agent),
        _ => None,
    };
    let rpc_address = agent.and_then(|a| a.rpc_address.as_deref());
    let is_leader = match (
        server,
        own,
        agent.and_then(|a| a.stats_leader),
        rpc_address,
        leader,
    ) {
        (Some(false), ..) => Some(false),
        (_, Some(own), ..) => Some(own.leader),
        (_, None, Some(from_stats), ..) => Some(from_stats),
        (_, None, None, Some(own), Some(leader)) => Some(own == leader),
        (_, None, None, Some(_), None) => Some(false),
        _ => None,
    };
    let in_raft = match (server, servers) {
        (Some(true), Some(_)) => Some(leader.is_some() && own.is_some_and(|s| s.voter)),
        // A client agent is in the raft's service when the raft has a leader.
        (Some(false), _) => Some(leader.is_some()),
        // A server without the server list, or an agent that did not say what it is.
        _ => None,
    };
    AgentStatus {
        in_raft,
        leader: leader.map(str::to_string),
        peers: servers.map(|s| s.iter().filter(|s| s.voter).count() as u32),
        is_leader,
    }
}

/// True when this agent is a server that the raft lists but does not let vote yet.
pub fn is_non_voter(servers: &[RaftServer], agent: &AgentSelf) -> bool {
    agent.server && own_entry(servers, agent).is_some_and(|s| !s.voter)
}
