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
//! - `autopilot.rs`: the Autopilot settings that fit the registry's timing, passed to every
//!   server as `-hcl` and kept in the raft's stored configuration by the leader's sidecar.
//! - `cleanup.rs`: the leader's view of the raft for heartbeats (`raft_members`) and the
//!   dead-server cleanup where Autopilot cannot act.
//!
//! No Consul binary can be installed on the machines this was written on, so the parsing is
//! tested against the responses Consul documents (tests/fixtures/consul), and the start-up
//! conventions with a stand-in agent program (tests/consul_image.rs).
//!
//! Over 500 lines because it is the one place where the engine meets Consul's API: roles to
//! command lines, health, status, `raft_members` and Autopilot's settings each call it; the
//! pure parts live in `args.rs`, `api.rs`, `autopilot.rs` and `cleanup.rs`.

mod api;
mod args;
mod autopilot;
mod cleanup;
mod host;

pub use host::host_interfaces;

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rollcall_protocol::{Absence, AgentStatus, MemberRole, RaftMember};
use tracing::{debug, info, warn};

pub use self::api::{
    agent_status, is_non_voter, own_entry, parse_agent_self, parse_autopilot,
    parse_autopilot_health, parse_leader, parse_raft_configuration, AgentSelf, AutopilotHealth,
    CallError, ConsulApi, RaftServer, ServerHealth, TOKEN_HEADER,
};
pub use self::args::{agent_args, go_duration, reserved_flag, ConsulArgs};
pub use self::autopilot::{
    autopilot_hcl, autopilot_settings, autopilot_update, local_config_sets_autopilot,
    parse_go_duration, AutopilotSettings,
};
pub use self::cleanup::{
    decide, observe, raft_members, CleanupDecision, CleanupInputs, Removal, RemovalCall,
    ServerView, Watch, UNKNOWN_NODE,
};
pub use self::host::{
    advertise_ip, config_dir_wanted, interface_ipv4, resolve_host, write_local_config,
    AdvertiseSource,
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
    /// The registry's heartbeat interval in milliseconds (the Autopilot timing follows it).
    registry_interval_ms: AtomicU64,
    /// The last failure tolerance Autopilot reported (`u32::MAX`: none yet), logged on change.
    failure_tolerance: AtomicU32,
    /// `CONSUL_LOCAL_CONFIG` sets Autopilot itself: the sidecar leaves it alone.
    operator_autopilot: bool,
    /// The leader's watch (see `cleanup.rs`), and whether the stored Autopilot configuration
    /// was brought to the sidecar's values since this sidecar became leader.
    watch: Mutex<Watch>,
    autopilot_written: AtomicBool,
}

/// What one cleanup pass did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CleanupOutcome {
    /// Not the leader's sidecar, or the raft could not be read.
    NotLeader,
    Decided(CleanupDecision),
    /// The removal call failed.
    Failed(Removal, String),
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
            registry_interval_ms: AtomicU64::new(
                crate::member_loop::FALLBACK_HEARTBEAT_INTERVAL.as_millis() as u64,
            ),
            failure_tolerance: AtomicU32::new(u32::MAX),
            operator_autopilot: local_config_sets_autopilot(
                settings.consul_local_config.as_deref(),
            ),
            watch: Mutex::new(Watch::default()),
            autopilot_written: AtomicBool::new(false),
        })
    }

    /// The registry's heartbeat interval, from the claim's answer: the Autopilot timing
    /// follows it. Until set, the registry's default (5 s) is assumed.
    pub fn set_registry_interval(&self, interval: Duration) {
        self.registry_interval_ms.store(
            u64::try_from(interval.as_millis()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
    }

    fn registry_interval(&self) -> Duration {
        Duration::from_millis(self.registry_interval_ms.load(Ordering::Relaxed))
    }

    /// The Autopilot settings for `expect` at the registry's current interval.
    pub fn autopilot_settings(&self, expect: u32) -> AutopilotSettings {
        autopilot_settings(expect, self.registry_interval())
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
        let hcl = (!self.operator_autopilot)
            .then(|| autopilot_hcl(&self.autopilot_settings(self.expect)));
        if self.operator_autopilot {
            info!("CONSUL_LOCAL_CONFIG sets autopilot: the sidecar passes no autopilot block and leaves the raft's Autopilot configuration alone");
        }
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
                autopilot_hcl: hcl.as_deref(),
                passthrough: &self.passthrough,
            }),
            env: vec![],
            user: None,
        }
    }

    /// Healthy once Consul sees a raft leader and, for a server Autopilot lists, once
    /// Autopilot counts it healthy (in contact with the leader within
    /// `last_contact_threshold`, at most `max_trailing_logs` behind). Where Autopilot's health
    /// cannot be read (no `operator:read`) the leader alone decides, as before.
    pub async fn health(&self) -> Health {
        match self.api.get("/v1/status/leader", &[]).await {
            Err(CallError::Unreachable(e)) => return Health::NotRunning(e),
            Err(CallError::Failed(e)) => return Health::Starting(e),
            Ok(body) => match parse_leader(&body) {
                Ok(Some(_)) => {}
                Ok(None) => return Health::Starting("consul sees no raft leader yet".into()),
                Err(e) => return Health::Starting(e),
            },
        }
        let Some(agent) = self.agent_self().await.filter(|a| a.server) else {
            return Health::Healthy;
        };
        let Ok(health) = self.api.autopilot_health().await else {
            return Health::Healthy;
        };
        let servers = health.raft_servers();
        match own_entry(&servers, &agent).and_then(|own| health.entry_for(own)) {
            Some(own) if !own.healthy => Health::Starting(format!(
                "autopilot counts this server unhealthy (last contact with the leader {}, Serf {})",
                own.last_contact.as_deref().unwrap_or("unknown"),
                own.serf_status
            )),
            _ => Health::Healthy,
        }
    }

    async fn agent_self(&self) -> Option<AgentSelf> {
        self.api
            .get("/v1/agent/self", &[])
            .await
            .ok()
            .and_then(|b| parse_agent_self(&b).ok())
    }

    pub async fn status(&self) -> Option<AgentStatus> {
        let leader = parse_leader(&self.api.get("/v1/status/leader", &[]).await.ok()?).ok()?;
        let agent = self.agent_self().await;
        let read = match &agent {
            Some(agent) if agent.server => self.api.raft_servers().await.ok(),
            _ => None,
        };
        let servers = read.as_ref().map(|(servers, _)| servers.clone());
        if let Some(health) = read.as_ref().and_then(|(_, health)| health.as_ref()) {
            self.note_failure_tolerance(health);
        }
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

    /// Logs Autopilot's failure tolerance when it changes.
    fn note_failure_tolerance(&self, health: &AutopilotHealth) {
        let before = self
            .failure_tolerance
            .swap(health.failure_tolerance, Ordering::Relaxed);
        if before == health.failure_tolerance {
            return;
        }
        let unhealthy: Vec<&str> = health
            .servers
            .iter()
            .filter(|s| !s.healthy)
            .map(|s| s.name.as_str())
            .collect();
        if health.failure_tolerance == 0 {
            warn!(failure_tolerance = 0, healthy = health.healthy, unhealthy = ?unhealthy, "autopilot: the raft cannot lose another server without losing quorum");
        } else {
            info!(failure_tolerance = health.failure_tolerance, healthy = health.healthy, unhealthy = ?unhealthy, "autopilot: failure tolerance changed");
        }
    }

    /// Reads the raft configuration and, on the leader, Autopilot's health, and updates the
    /// leader's watch. `None` for a client agent or when the raft cannot be read.
    async fn leader_view(&self) -> Option<(bool, Vec<ServerView>)> {
        let agent = self.agent_self().await.filter(|a| a.server)?;
        let servers = self.api.raft_configuration().await.ok()?;
        let is_leader = own_entry(&servers, &agent).is_some_and(|own| own.leader);
        let health = if is_leader {
            self.api.autopilot_health().await.ok()
        } else {
            None
        };
        let mut watch = self.watch.lock().unwrap_or_else(|e| e.into_inner());
        if !is_leader {
            self.autopilot_written.store(false, Ordering::Relaxed);
        }
        Some((
            is_leader,
            observe(
                &mut watch,
                &servers,
                health.as_ref(),
                is_leader,
                Instant::now(),
            ),
        ))
    }

    /// The raft's membership for the heartbeat, as this server sees it (the raft
    /// configuration); the leader's adds its evidence from Autopilot's health. `None` for a
    /// client agent, or when the raft configuration cannot be read.
    pub async fn raft_members(&self, role: MemberRole) -> Option<Vec<RaftMember>> {
        if role == MemberRole::Agent {
            return None;
        }
        let (_, views) = self.leader_view().await?;
        Some(raft_members(&views))
    }

    /// One cleanup pass, run by the member loop after each accepted heartbeat with the
    /// answer's `absent`; it acts on the leader's sidecar only. First brings the raft's stored
    /// Autopilot configuration to the sidecar's values (once per leadership), then removes at
    /// most one dead server that Autopilot has left in the raft (see `cleanup.rs`).
    pub async fn cleanup(
        &self,
        absent: &[Absence],
        expect: u32,
        threshold: Duration,
    ) -> CleanupOutcome {
        let Some((true, views)) = self.leader_view().await else {
            return CleanupOutcome::NotLeader;
        };
        if !self.operator_autopilot && !self.autopilot_written.load(Ordering::Relaxed) {
            match self.write_autopilot(expect).await {
                Ok(()) => self.autopilot_written.store(true, Ordering::Relaxed),
                Err(e) => {
                    warn!(error = %e, "cannot bring the raft's Autopilot configuration to the sidecar's settings (needs operator:write with ACLs); will try again")
                }
            }
        }
        let since_last_removal = {
            let watch = self.watch.lock().unwrap_or_else(|e| e.into_inner());
            watch.last_removal.map(|t| t.elapsed())
        };
        let decision = decide(&CleanupInputs {
            is_leader: true,
            servers: &views,
            absent,
            threshold,
            expect,
            since_last_removal,
        });
        let removal = match decision {
            CleanupDecision::Remove(removal) => removal,
            CleanupDecision::Hold(ref reason) => {
                debug!(reason = %reason, "consul cleanup: no removal");
                return CleanupOutcome::Decided(decision);
            }
            CleanupDecision::Nothing => return CleanupOutcome::Decided(decision),
        };
        let result = match &removal.call {
            RemovalCall::ForceLeavePrune { node } => {
                self.api
                    .send(
                        reqwest::Method::PUT,
                        &format!("/v1/agent/force-leave/{}?prune", url_escape(node)),
                        None,
                    )
                    .await
            }
            RemovalCall::RemovePeer { id } => {
                self.api
                    .send(
                        reqwest::Method::DELETE,
                        &format!("/v1/operator/raft/peer?id={}", url_escape(id)),
                        None,
                    )
                    .await
            }
        };
        match result {
            Ok(_) => {
                self.watch
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .last_removal = Some(Instant::now());
                warn!(
                    node = %removal.name,
                    id = %removal.id,
                    voter = removal.voter,
                    call = ?removal.call,
                    disconnected_for = ?removal.disconnected_for,
                    absent_for = ?removal.absent_for,
                    voters_after = removal.voters_after,
                    connected_voters_after = removal.connected_voters_after,
                    quorum_floor = removal.quorum_floor,
                    threshold = ?threshold,
                    "removed a dead consul server that autopilot left in the raft"
                );
                CleanupOutcome::Decided(CleanupDecision::Remove(removal))
            }
            Err(CallError::Unreachable(e) | CallError::Failed(e)) => {
                warn!(node = %removal.name, id = %removal.id, error = %e, "could not remove a dead consul server");
                CleanupOutcome::Failed(removal, e)
            }
        }
    }

    /// Reads the raft's Autopilot configuration and writes the sidecar's values where they
    /// differ (check-and-set on its `ModifyIndex`).
    async fn write_autopilot(&self, expect: u32) -> Result<(), String> {
        let wanted = self.autopilot_settings(expect);
        let stored = match self
            .api
            .get("/v1/operator/autopilot/configuration", &[])
            .await
        {
            Ok(body) => body,
            Err(CallError::Unreachable(e) | CallError::Failed(e)) => return Err(e),
        };
        let Some((body, index)) = autopilot_update(&stored, &wanted)? else {
            return Ok(());
        };
        let answer = self
            .api
            .send(
                reqwest::Method::PUT,
                &format!("/v1/operator/autopilot/configuration?cas={index}"),
                Some(&body),
            )
            .await
            .map_err(|(CallError::Unreachable(e) | CallError::Failed(e))| e)?;
        if answer.trim() == "false" {
            return Err("the configuration changed while it was written (cas refused)".into());
        }
        info!(settings = ?wanted, "brought the raft's Autopilot configuration to the sidecar's settings");
        Ok(())
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

/// Escapes a node name or raft ID for a URL path or query (both are names or UUIDs, but a
/// name is not trusted to be one).
fn url_escape(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
