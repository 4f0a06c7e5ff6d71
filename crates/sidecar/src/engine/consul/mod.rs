//! The Consul engine: `consul agent` command lines and Consul's HTTP status API.
//!
//! Servers start as `consul agent -server -bootstrap-expect=N` with one `-retry-join` per
//! live server; the node granted `bootstrap` is simply the first server, with nothing to
//! join yet. `-bootstrap` is never used: it must not be mixed with `-bootstrap-expect`, and
//! `-bootstrap-expect` is what lets Consul itself wait for N servers before electing.
//! Client agents start with one `-retry-join` per live server. Every role gets a short
//! `-retry-interval` and `-advertise` with an IP.
//!
//! - `args.rs`: the command line, a pure function.
//! - `host.rs`: what is learnt from the host once at start (interface addresses, the
//!   advertised host's IP, the official image's config directory conventions).
//! - `api.rs`: Consul's HTTP API (with the ACL token) and the parsing of its answers.
//!
//! No Consul binary can be installed on the machines this was written on, so the parsing is
//! tested against the responses Consul documents (tests/fixtures/consul), and the start-up
//! conventions with a stand-in agent program (tests/consul_image.rs).

mod api;
mod args;
mod host;

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use rollcall_protocol::{AgentStatus, MemberRole};
use tracing::info;

pub use self::api::{
    agent_status, is_non_voter, own_entry, parse_agent_self, parse_autopilot_health, parse_leader,
    parse_raft_configuration, AgentSelf, CallError, ConsulApi, RaftServer, TOKEN_HEADER,
};
pub use self::args::{agent_args, go_duration, reserved_flag, ConsulArgs};
pub use self::host::{
    advertise_ip, config_dir_wanted, host_interfaces, interface_ipv4, resolve_host,
    write_local_config, AdvertiseSource,
};
use super::agent_user::{self, AgentUser};
use super::{dir_has_entries, AgentCommand, Health, StartPlan};
use crate::config::{Settings, DEFAULT_CONSUL_HTTP};
use crate::exit::{Exit, EXIT_CONFIG};

#[derive(Debug)]
pub struct ConsulEngine {
    program: String,
    node: String,
    data_dir: PathBuf,
    config_dir: PathBuf,
    local_config: Option<String>,
    advertise_host: String,
    advertise_interface: Option<String>,
    /// `CONSUL_BIND_INTERFACE`'s address, read once when the engine is made.
    bind_ip: Option<IpAddr>,
    /// `CONSUL_CLIENT_INTERFACE`'s address; Consul's API is read there too.
    client_ip: Option<IpAddr>,
    serf_lan_port: u16,
    expect: u32,
    retry_interval: Duration,
    passthrough: Vec<String>,
    /// Who Consul runs as (`--agent-user`): its config directory is given to it too.
    agent_user: Option<String>,
    api: ConsulApi,
    /// Whether the last status found this server a non-voter: the change is logged once,
    /// not on every heartbeat.
    was_non_voter: AtomicBool,
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
        let interfaces = if settings.consul_bind_interface.is_some()
            || settings.consul_client_interface.is_some()
            || settings.consul_advertise_interface.is_some()
        {
            host_interfaces()
        } else {
            Vec::new()
        };
        let address_of = |variable: &str, interface: &Option<String>| {
            interface
                .as_deref()
                .map(|name| {
                    interface_ipv4(&interfaces, name)
                        .map_err(|e| Exit::new(EXIT_CONFIG, format!("{variable}: {e}")))
                })
                .transpose()
        };
        let bind_ip = address_of("CONSUL_BIND_INTERFACE", &settings.consul_bind_interface)?;
        let client_ip = address_of("CONSUL_CLIENT_INTERFACE", &settings.consul_client_interface)?;
        address_of(
            "--consul-advertise-interface",
            &settings.consul_advertise_interface,
        )?;
        // Consul's HTTP API listens on the -client address only: with CONSUL_CLIENT_INTERFACE
        // and the default --consul-http, the API is read there instead of on 127.0.0.1.
        let http_base = match client_ip {
            Some(ip) if settings.consul_http == DEFAULT_CONSUL_HTTP => {
                format!(
                    "http://{}",
                    crate::config::join_host_port(&ip.to_string(), 8500)
                )
            }
            _ => settings.consul_http.clone(),
        };
        Ok(ConsulEngine {
            program: settings
                .agent_bin
                .clone()
                .unwrap_or_else(|| "consul".into()),
            node: settings.node.clone(),
            data_dir: settings.data_dir.clone(),
            config_dir: settings.consul_config_dir.clone(),
            local_config: settings.consul_local_config.clone(),
            advertise_host: settings.advertise_host.clone(),
            advertise_interface: settings.consul_advertise_interface.clone(),
            bind_ip,
            client_ip,
            serf_lan_port: settings.advertise_port,
            expect: settings.expect,
            retry_interval: settings.consul_retry_interval,
            passthrough: settings.agent_args.clone(),
            agent_user: settings.agent_user.clone(),
            api: ConsulApi {
                base: http_base,
                token: settings.consul_http_token.clone(),
                http,
            },
            was_non_voter: AtomicBool::new(false),
        })
    }

    /// The base URL of the agent's HTTP API that the sidecar reads.
    pub fn api_base(&self) -> &str {
        &self.api.base
    }

    /// A server keeps its raft log in `raft/` under the data directory.
    pub fn has_raft_state(&self) -> bool {
        dir_has_entries(&self.data_dir.join("raft"))
    }

    /// Learns what the command line needs from the host (once: this runs once per start),
    /// writes `CONSUL_LOCAL_CONFIG`, and builds the command.
    pub async fn prepare(&self, plan: &StartPlan) -> Result<AgentCommand, Exit> {
        let advertise = self.advertise_ip().await?;
        let config_dir = self.prepare_config_dir()?;
        Ok(self.command(plan, advertise, config_dir))
    }

    /// `-advertise`'s IP: resolved once and logged with where it came from.
    async fn advertise_ip(&self) -> Result<IpAddr, Exit> {
        let interfaces = if self.advertise_interface.is_some() {
            host_interfaces()
        } else {
            Vec::new()
        };
        let needs_lookup =
            self.advertise_interface.is_none() && self.advertise_host.parse::<IpAddr>().is_err();
        let resolved = if needs_lookup {
            Some(resolve_host(&self.advertise_host).await)
        } else {
            None
        };
        let (ip, source) = advertise_ip(
            &self.advertise_host,
            self.advertise_interface.as_deref(),
            &interfaces,
            resolved,
        )
        .map_err(|e| {
            Exit::new(
                EXIT_CONFIG,
                format!("consul's -advertise needs an IP: {e}; pass --advertise with an IP or --consul-advertise-interface"),
            )
        })?;
        info!(advertise = %ip, source = ?source, host = %self.advertise_host, "consul advertises this address");
        Ok(ip)
    }

    /// Writes `CONSUL_LOCAL_CONFIG`, gives the directory to the agent's user, and says
    /// whether `-config-dir` is passed.
    fn prepare_config_dir(&self) -> Result<Option<String>, Exit> {
        if !config_dir_wanted(&self.config_dir, self.local_config.as_deref()) {
            return Ok(None);
        }
        if let Some(local_config) = &self.local_config {
            write_local_config(&self.config_dir, local_config)
                .map_err(|e| Exit::new(EXIT_CONFIG, e))?;
            info!(path = %self.config_dir.join("local.json").display(), "wrote CONSUL_LOCAL_CONFIG");
        }
        if let Some(user) = &self.agent_user {
            let user: AgentUser = agent_user::lookup(user)?;
            agent_user::give_dir_to(&self.config_dir, &user)?;
        }
        Ok(Some(self.config_dir.to_string_lossy().into_owned()))
    }

    fn command(
        &self,
        plan: &StartPlan,
        advertise_ip: IpAddr,
        config_dir: Option<String>,
    ) -> AgentCommand {
        AgentCommand {
            program: self.program.clone(),
            args: agent_args(&ConsulArgs {
                node: &self.node,
                data_dir: &self.data_dir.to_string_lossy(),
                config_dir: config_dir.as_deref(),
                advertise_ip: Some(advertise_ip),
                bind_ip: self.bind_ip,
                client_ip: self.client_ip,
                serf_lan_port: self.serf_lan_port,
                expect: self.expect,
                server: match plan {
                    StartPlan::Agent { .. } => false,
                    StartPlan::Restart { .. } => self.has_raft_state(),
                    _ => true,
                },
                retry_interval: self.retry_interval,
                join: plan.join(),
                passthrough: &self.passthrough,
            }),
            env: vec![],
            user: None,
        }
    }

    pub async fn health(&self) -> Health {
        match self.api.get("/v1/status/leader", &[]).await {
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
        let leader = parse_leader(&self.api.get("/v1/status/leader", &[]).await.ok()?).ok()?;
        let agent = self
            .api
            .get("/v1/agent/self", &[])
            .await
            .ok()
            .and_then(|b| parse_agent_self(&b).ok());
        let servers = match &agent {
            Some(agent) if agent.server => self.api.raft_servers().await.ok(),
            _ => None,
        };
        if let (Some(servers), Some(agent)) = (&servers, &agent) {
            let non_voter = is_non_voter(servers, agent);
            if self.was_non_voter.swap(non_voter, Ordering::Relaxed) != non_voter {
                info!(
                    non_voter,
                    "consul's raft configuration lists this server as {}",
                    if non_voter {
                        "a non-voter (Autopilot promotes a stable server after server_stabilization_time); it is reported as not in the raft"
                    } else {
                        "a voter"
                    }
                );
            }
        }
        Some(agent_status(
            leader.as_deref(),
            servers.as_deref(),
            agent.as_ref(),
        ))
    }

    pub async fn detect_role(&self) -> Option<MemberRole> {
        let agent = parse_agent_self(&self.api.get("/v1/agent/self", &[]).await.ok()?).ok()?;
        Some(if agent.server {
            MemberRole::Server
        } else {
            MemberRole::Agent
        })
    }
}
