//! The Consul engine: `consul agent` command lines and Consul's HTTP status API.
//!
//! Servers start as `consul agent -server -bootstrap-expect=N` with one `-retry-join` per
//! live server; the node granted `bootstrap` is simply the first server, with nothing to
//! join yet. `-bootstrap` is never used: it must not be mixed with `-bootstrap-expect`, and
//! `-bootstrap-expect` is what lets Consul itself wait for N servers before electing.
//! Client agents start with one `-retry-join` per live server.
//!
//! Health and status come from `/v1/status/leader`, `/v1/status/peers` and
//! `/v1/agent/self`. No Consul binary can be installed on the machines this was written on,
//! so the parsing is tested against the responses Consul documents (tests/fixtures).

use std::path::PathBuf;

use rollcall_protocol::{AgentStatus, MemberRole};
use serde::Deserialize;

use super::{describe, dir_has_entries, AgentCommand, Health, StartPlan};
use crate::config::{is_ip_literal, Settings, CONSUL_SERF_LAN_PORT};
use crate::exit::{Exit, EXIT_CONFIG};

/// Flags the sidecar decides itself; passing them through would contradict the registry.
const RESERVED_FLAGS: &[&str] = &[
    "bootstrap",
    "bootstrap-expect",
    "server",
    "node",
    "data-dir",
];

#[derive(Debug)]
pub struct ConsulEngine {
    program: String,
    node: String,
    data_dir: PathBuf,
    advertise_host: String,
    serf_lan_port: u16,
    expect: u32,
    http_base: String,
    passthrough: Vec<String>,
    http: reqwest::Client,
}

impl ConsulEngine {
    pub fn new(settings: &Settings, http: reqwest::Client) -> Result<Self, Exit> {
        if let Some(flag) = reserved_flag(&settings.agent_args) {
            return Err(Exit::new(
                EXIT_CONFIG,
                format!(
                    "{flag} is decided by the registry and must not be passed through to consul"
                ),
            ));
        }
        Ok(ConsulEngine {
            program: settings
                .agent_bin
                .clone()
                .unwrap_or_else(|| "consul".into()),
            node: settings.node.clone(),
            data_dir: settings.data_dir.clone(),
            advertise_host: settings.advertise_host.clone(),
            serf_lan_port: settings.advertise_port,
            expect: settings.expect,
            http_base: settings.consul_http.clone(),
            passthrough: settings.agent_args.clone(),
            http,
        })
    }

    /// A server keeps its raft log in `raft/` under the data directory.
    pub fn has_raft_state(&self) -> bool {
        dir_has_entries(&self.data_dir.join("raft"))
    }

    pub fn command(&self, plan: &StartPlan) -> AgentCommand {
        AgentCommand {
            program: self.program.clone(),
            args: agent_args(&ConsulArgs {
                node: &self.node,
                data_dir: &self.data_dir.to_string_lossy(),
                advertise_host: &self.advertise_host,
                serf_lan_port: self.serf_lan_port,
                expect: self.expect,
                server: match plan {
                    StartPlan::Agent { .. } => false,
                    StartPlan::Restart { .. } => self.has_raft_state(),
                    _ => true,
                },
                join: plan.join(),
                passthrough: &self.passthrough,
            }),
            env: vec![],
        }
    }

    pub async fn health(&self) -> Health {
        match self.get_text("/v1/status/leader").await {
            Err(CallError::Unreachable(e)) => Health::NotRunning(e),
            Err(CallError::Failed(e)) => Health::Starting(e),
            Ok(body) => match parse_leader(&body) {
                Ok(Some(_)) => Health::Healthy,
                Ok(None) => Health::Starting("consul sees no raft leader yet".into()),
                Err(e) => Health::Starting(e),
            },
        }
    }

    pub async fn status(&self) -> Option<AgentStatus> {
        let leader = parse_leader(&self.get_text("/v1/status/leader").await.ok()?).ok()?;
        let peers = self
            .get_text("/v1/status/peers")
            .await
            .ok()
            .and_then(|b| parse_peers(&b).ok());
        let agent = self
            .get_text("/v1/agent/self")
            .await
            .ok()
            .and_then(|b| parse_agent_self(&b).ok());
        Some(agent_status(
            leader.as_deref(),
            peers.as_deref(),
            agent.as_ref(),
        ))
    }

    pub async fn detect_role(&self) -> Option<MemberRole> {
        let agent = parse_agent_self(&self.get_text("/v1/agent/self").await.ok()?).ok()?;
        Some(if agent.server {
            MemberRole::Server
        } else {
            MemberRole::Agent
        })
    }

    async fn get_text(&self, path: &str) -> Result<String, CallError> {
        let url = format!("{}{}", self.http_base, path);
        let response = self
            .http
            .get(&url)
            .send()
            .await
            .map_err(|e| CallError::Unreachable(format!("{url}: {}", describe(&e))))?;
        let status = response.status();
        let body = response
            .text()
            .await
            .map_err(|e| CallError::Failed(format!("{url}: {e}")))?;
        if !status.is_success() {
            return Err(CallError::Failed(format!(
                "{url} answered {status}: {}",
                body.trim()
            )));
        }
        Ok(body)
    }
}

enum CallError {
    Unreachable(String),
    Failed(String),
}

/// Everything `consul agent`'s command line depends on.
#[derive(Debug, Clone)]
pub struct ConsulArgs<'a> {
    pub node: &'a str,
    pub data_dir: &'a str,
    pub advertise_host: &'a str,
    pub serf_lan_port: u16,
    pub expect: u32,
    pub server: bool,
    pub join: &'a [String],
    pub passthrough: &'a [String],
}

/// The arguments after the `consul` program name.
pub fn agent_args(a: &ConsulArgs<'_>) -> Vec<String> {
    let mut args = vec![
        "agent".to_string(),
        format!("-node={}", a.node),
        format!("-data-dir={}", a.data_dir),
    ];
    // Consul's -advertise takes an IP address; for a DNS name, Consul's own default (the
    // address it binds) is the better guess.
    if is_ip_literal(a.advertise_host) {
        args.push(format!("-advertise={}", a.advertise_host));
    }
    if a.serf_lan_port != CONSUL_SERF_LAN_PORT {
        args.push(format!("-serf-lan-port={}", a.serf_lan_port));
    }
    if a.server {
        args.push("-server".into());
        args.push(format!("-bootstrap-expect={}", a.expect));
    }
    for target in a.join {
        args.push(format!("-retry-join={target}"));
    }
    args.extend(a.passthrough.iter().cloned());
    args
}

/// The first pass-through flag that the sidecar decides itself, if any.
pub fn reserved_flag(args: &[String]) -> Option<String> {
    args.iter().find_map(|arg| {
        let name = arg.trim_start_matches('-');
        let name = name.split('=').next().unwrap_or(name);
        (arg.starts_with('-') && RESERVED_FLAGS.contains(&name)).then(|| arg.clone())
    })
}

/// `GET /v1/status/leader`: a JSON string, `""` while there is no leader.
pub fn parse_leader(body: &str) -> Result<Option<String>, String> {
    let leader: String = serde_json::from_str(body)
        .map_err(|e| format!("/v1/status/leader is not a JSON string: {e}"))?;
    Ok(Some(leader).filter(|l| !l.is_empty()))
}

/// `GET /v1/status/peers`: a JSON array of the voters' server RPC addresses.
pub fn parse_peers(body: &str) -> Result<Vec<String>, String> {
    serde_json::from_str(body)
        .map_err(|e| format!("/v1/status/peers is not a JSON array of strings: {e}"))
}

/// The parts of `GET /v1/agent/self` the sidecar reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentSelf {
    pub node_name: String,
    pub server: bool,
    /// `Member.Addr:Member.Tags.port`: the server RPC address that `/v1/status/leader` and
    /// `/v1/status/peers` name. Absent for client agents.
    pub rpc_address: Option<String>,
    /// `Stats.consul.leader` where the agent reports it.
    pub stats_leader: Option<bool>,
}

#[derive(Deserialize)]
struct RawAgentSelf {
    #[serde(rename = "Config")]
    config: RawConfig,
    #[serde(rename = "Member", default)]
    member: Option<RawMember>,
    #[serde(rename = "Stats", default)]
    stats: Option<std::collections::HashMap<String, std::collections::HashMap<String, String>>>,
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
    tags: std::collections::HashMap<String, String>,
}

pub fn parse_agent_self(body: &str) -> Result<AgentSelf, String> {
    let raw: RawAgentSelf = serde_json::from_str(body)
        .map_err(|e| format!("/v1/agent/self has an unexpected shape: {e}"))?;
    let rpc_address = raw.member.as_ref().and_then(|m| {
        let port: u16 = m.tags.get("port")?.parse().ok()?;
        (raw.config.server && !m.addr.is_empty())
            .then(|| crate::config::join_host_port(&m.addr, port))
    });
    let stats_leader = raw
        .stats
        .as_ref()
        .and_then(|s| s.get("consul"))
        .and_then(|c| c.get("leader"))
        .map(|v| v == "true");
    Ok(AgentSelf {
        node_name: raw.config.node_name,
        server: raw.config.server,
        rpc_address,
        stats_leader,
    })
}

/// Combines the three answers into the status a heartbeat carries.
pub fn agent_status(
    leader: Option<&str>,
    peers: Option<&[String]>,
    agent: Option<&AgentSelf>,
) -> AgentStatus {
    let server = agent.map(|a| a.server);
    let rpc_address = agent.and_then(|a| a.rpc_address.as_deref());
    let is_leader = match (
        server,
        agent.and_then(|a| a.stats_leader),
        rpc_address,
        leader,
    ) {
        (Some(false), ..) => Some(false),
        (_, Some(from_stats), ..) => Some(from_stats),
        (_, None, Some(own), Some(leader)) => Some(own == leader),
        (_, None, Some(_), None) => Some(false),
        _ => None,
    };
    let in_raft = match (server, rpc_address, peers) {
        // A server is in the raft when it is a voter and there is a leader.
        (Some(true), Some(own), Some(peers)) => {
            Some(leader.is_some() && peers.iter().any(|p| p == own))
        }
        _ => Some(leader.is_some()),
    };
    AgentStatus {
        in_raft,
        leader: leader.map(str::to_string),
        peers: peers.map(|p| p.len() as u32),
        is_leader,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserved_flags_are_found_in_every_spelling() {
        for (args, expected) in [
            (vec!["-ui"], None),
            (vec!["-bootstrap"], Some("-bootstrap")),
            (vec!["--bootstrap=true"], Some("--bootstrap=true")),
            (
                vec!["-ui", "-bootstrap-expect=5"],
                Some("-bootstrap-expect=5"),
            ),
            (vec!["-server"], Some("-server")),
            (vec!["-retry-join=10.0.0.9"], None),
            (vec!["-datacenter=eu"], None),
            (vec!["bootstrap"], None),
        ] {
            let args: Vec<String> = args.into_iter().map(String::from).collect();
            assert_eq!(reserved_flag(&args).as_deref(), expected, "{args:?}");
        }
    }
}
