//! The command line and environment, parsed once by clap and validated once into a typed
//! [`Settings`] that the rest of the sidecar reads.
//!
//! Every flag has a `ROLLCALL_*` environment variable, so that a Compose file can configure
//! the sidecar without rewriting the container's command. Defaults are the named constants
//! below; the README's configuration table lists the same names.
//!
//! Long on purpose: every flag and variable of the sidecar is declared and validated here, one
//! home for the configuration that README's table mirrors.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use rollcall_protocol::validate::NameKind;
use rollcall_protocol::{validate_address, validate_name, MemberRole, DEFAULT_CLUSTER};

/// Servers a raft wants when `--expect` is not given: the smallest raft that survives a loss.
pub const DEFAULT_EXPECT: u32 = 3;
/// Where the agent keeps its state unless told otherwise (a volume in the container).
pub const DEFAULT_DATA_DIR: &str = "/data";
/// How long `run` keeps retrying an unreachable registry before it gives up at start.
pub const DEFAULT_REGISTRY_RETRY_LIMIT: Duration = Duration::from_secs(60);
/// How long a claim waits, in all, while the registry asks it to (`503 not_ready`, or the
/// conflicts `reset_required`, `address_conflict`, `expect_conflict`) before exiting 75.
/// Ten minutes: longer than any startup grace, quiet period or address conflict (at most a
/// TTL plus an interval) with the registry's defaults, long enough for an operator to see the
/// warning and act (start the raft's members, or reset the cluster), and short enough that a
/// forgotten container does not wait silently forever: the exit is temporary (75), so its
/// restart policy brings it back to ask again.
pub const DEFAULT_CLAIM_WAIT_LIMIT: Duration = Duration::from_secs(600);
/// How long a `server` or `agent` keeps trying its join targets before it gives up.
pub const DEFAULT_JOIN_TIMEOUT: Duration = Duration::from_secs(120);
/// How long the agent has to exit after the stop signal before it is killed.
pub const DEFAULT_STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// The Consul engine's stop timeout: a Consul client agent leaves gracefully on SIGTERM
/// (`leave_on_terminate` is on for clients) and Consul gives that leave up to 15 s before it
/// gives up; 2 s more let it log and exit instead of being killed mid-leave, and stay under
/// the `stop_grace_period: 20s` of docker-compose.yml, so that the sidecar, not Docker,
/// kills an agent that overruns. A server (`leave_on_terminate` off) exits at once, so the
/// longer timeout costs it nothing.
pub const DEFAULT_CONSUL_STOP_TIMEOUT: Duration = Duration::from_secs(17);
/// Consul's `-retry-interval` as the sidecar passes it. Consul's own default is 30 s: a
/// server granted `server` at the same instant as the bootstrap server tries to join it
/// before its Consul listens on 8301, and would then wait 30 s for the next try.
pub const DEFAULT_CONSUL_RETRY_INTERVAL: Duration = Duration::from_secs(3);
/// Where the official Consul image keeps configuration files (`-config-dir`).
pub const DEFAULT_CONSUL_CONFIG_DIR: &str = "/consul/config";
/// Timeout of one HTTP request to the registry or to the agent.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Consul's HTTP API on the agent's loopback (Consul's own default `-client` and `-http-port`).
pub const DEFAULT_CONSUL_HTTP: &str = "http://127.0.0.1:8500";
/// Consul's Serf LAN port, the address other agents `-retry-join`.
pub const CONSUL_SERF_LAN_PORT: u16 = 8301;
/// etcd's client port (IANA), the address registered in the registry for etcd members.
pub const ETCD_CLIENT_PORT: u16 = 2379;
/// etcd's peer port (IANA), derived for the member's peer URL.
pub const ETCD_PEER_PORT: u16 = 2380;
/// Port registered for the `exec` engine when `--advertise` names none.
pub const EXEC_DEFAULT_PORT: u16 = 7000;
/// How long a raft member must be gone, by both the leader's peer connections and the
/// registry's word, before the leader's sidecar removes it (`--dead-member-after`); a joiner
/// that waits for such a removal waits this plus `--join-timeout`. Five
/// minutes: longer than a container restart or a host reboot (a member that is only
/// restarting must not be removed: it would come back, find itself removed and resync from
/// scratch), short enough that a three-voter raft tolerates a failure again within minutes;
/// Kubernetes evicts the pods of an unreachable node after five minutes too.
pub const DEFAULT_DEAD_MEMBER_AFTER: Duration = Duration::from_secs(300);
/// The shortest `--dead-member-after` accepted at parse time; once the registry names its
/// heartbeat interval, the threshold must also be at least twice that.
pub const MIN_DEAD_MEMBER_AFTER: Duration = Duration::from_secs(1);

/// Runs a raft agent (Consul or etcd) as PID 1: claims a role from the rollcall registry,
/// starts and joins the agent, heartbeats while it is healthy, and stops it cleanly.
#[derive(Debug, Parser)]
#[command(name = "rollcall-sidecar", version, about)]
pub struct Cli {
    #[command(flatten)]
    pub common: CommonArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Claim a role, start the agent, join, heartbeat and supervise it; exit with its code.
    Run(RunArgs),
    /// Send one heartbeat for an agent that runs elsewhere (0 sent, 255 agent not running).
    Heartbeat(HeartbeatArgs),
    /// Print the cluster's join targets, one `host:port` a line (or, with `--format tsv`, one
    /// member a line with what the registry knows of it).
    Members(MembersArgs),
    /// Print the role the registry gives this node, then its join targets.
    Claim,
    /// Leave the raft for good (etcd; run inside the member's container, with the same
    /// environment as `run`): remove this member from the raft through a voter, leave the
    /// registry, and stop the running sidecar, which then exits 0. Refused (exit 77) when
    /// the remaining voters would have no connected majority.
    Leave,
    /// Liveness for an orchestrator's healthcheck: exit 0 while this container's sidecar runs
    /// and its agent, once started, answers its API at all (a raft without quorum is alive),
    /// 1 otherwise.
    Alive,
    /// Quorum-loss recovery inside a container (etcd): ask for `--force-new-cluster` at the
    /// next start (a request file in the data directory) and stop the running sidecar, so
    /// that the container's restart policy starts it again as a one-member raft that keeps
    /// its data. Stop the other members first.
    ForceNewCluster,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Arguments passed to the agent unchanged (after `--`); for the `exec` engine, the
    /// command to run.
    #[arg(last = true, value_name = "AGENT_ARGS")]
    pub agent_args: Vec<String>,
}

#[derive(Debug, Args)]
pub struct HeartbeatArgs {
    /// The role to report; Consul tells it itself, so this matters for etcd and exec.
    #[arg(long, env = "ROLLCALL_ROLE", value_enum, default_value_t = RoleArg::Server)]
    pub role: RoleArg,
}

#[derive(Debug, Args)]
pub struct MembersArgs {
    /// Only members of this role.
    #[arg(long, env = "ROLLCALL_ROLE", value_enum)]
    pub role: Option<RoleArg>,
    /// Keep following the cluster: print the join targets again (after an empty line) each
    /// time they change, using the registry's blocking reads.
    #[arg(long)]
    pub follow: bool,
    /// What to print for each member: `addresses` (one `host:port` a line) or `tsv` (one
    /// member a line, for scripts: node, address, role, in_raft, is_leader, leader).
    #[arg(long, value_enum, default_value_t = MembersFormat::Addresses)]
    pub format: MembersFormat,
    /// With --follow: how long one blocking read may wait.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "5m")]
    pub wait: Duration,
}

/// What `members` prints for each member.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum MembersFormat {
    /// The join address, `host:port`.
    Addresses,
    /// Tab-separated: node, address, role, in_raft, is_leader, leader (what the member's
    /// agent says; a field is empty when it did not say).
    Tsv,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RoleArg {
    Server,
    Agent,
}

impl From<RoleArg> for MemberRole {
    fn from(role: RoleArg) -> Self {
        match role {
            RoleArg::Server => MemberRole::Server,
            RoleArg::Agent => MemberRole::Agent,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum EngineKind {
    /// HashiCorp Consul: `consul agent -server -bootstrap-expect=N -retry-join=...`.
    Consul,
    /// etcd 3.4+: a new cluster, a learner added through a member's API, or a gateway.
    Etcd,
    /// Any command (after `--`): learns its role and join targets from environment variables.
    Exec,
}

impl EngineKind {
    /// The port registered when `--advertise` gives only a host.
    pub fn default_port(self) -> u16 {
        match self {
            EngineKind::Consul => CONSUL_SERF_LAN_PORT,
            EngineKind::Etcd => ETCD_CLIENT_PORT,
            EngineKind::Exec => EXEC_DEFAULT_PORT,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Flags shared by every subcommand.
#[derive(Debug, Args)]
pub struct CommonArgs {
    /// The registry's base URL, for example `http://rollcall:7400`, or the URLs of its
    /// replicas separated by commas (`http://r1:7400,http://r2:7400`): requests go to one,
    /// and to the next at once when it does not answer.
    #[arg(long, env = "ROLLCALL_REGISTRY", global = true)]
    pub registry: Option<String>,
    /// Bearer token for the registry.
    #[arg(long, env = "ROLLCALL_TOKEN", global = true, hide_env_values = true)]
    pub token: Option<String>,
    /// A file holding the bearer token (a Docker or Kubernetes secret), instead of `--token`;
    /// one trailing newline is ignored.
    #[arg(
        long,
        env = "ROLLCALL_TOKEN_FILE",
        global = true,
        conflicts_with = "token"
    )]
    pub token_file: Option<PathBuf>,
    /// PEM file of the CA certificate(s) that sign an `https://` registry's certificate.
    #[arg(long, env = "ROLLCALL_CA_CERT", global = true)]
    pub ca_cert: Option<PathBuf>,
    /// The cluster this node belongs to.
    #[arg(long, env = "ROLLCALL_CLUSTER", global = true, default_value = DEFAULT_CLUSTER)]
    pub cluster: String,
    /// This node's name; defaults to the hostname.
    #[arg(long, env = "ROLLCALL_NODE", global = true)]
    pub node: Option<String>,
    /// Where other members reach this node: `host` or `host:port` (the port defaults to the
    /// engine's: Consul 8301, etcd 2379). Defaults to the hostname's address in /etc/hosts.
    #[arg(long, env = "ROLLCALL_ADVERTISE", global = true)]
    pub advertise: Option<String>,
    /// Advertise this host's IPv4 address in this subnet (CIDR, e.g. `10.77.0.0/24`), found
    /// among its interfaces: for a container on several networks (a Swarm task has its
    /// overlay network and docker_gwbridge), the network the raft talks on. Ignored when
    /// `--advertise` is given.
    #[arg(long, env = "ROLLCALL_ADVERTISE_SUBNET", global = true)]
    pub advertise_subnet: Option<String>,
    /// How many servers the raft wants.
    #[arg(long, env = "ROLLCALL_EXPECT", global = true, default_value_t = DEFAULT_EXPECT)]
    pub expect: u32,
    /// Ask only ever to be a client agent, never a server.
    #[arg(long, env = "ROLLCALL_AGENT_ONLY", global = true)]
    pub agent_only: bool,
    /// Which raft agent to run.
    #[arg(long, env = "ROLLCALL_ENGINE", global = true, value_enum, default_value_t = EngineKind::Consul)]
    pub engine: EngineKind,
    /// The agent's data directory.
    #[arg(long, env = "ROLLCALL_DATA_DIR", global = true, default_value = DEFAULT_DATA_DIR)]
    pub data_dir: PathBuf,
    /// The agent binary; defaults to `consul` or `etcd` on the PATH.
    #[arg(long, env = "ROLLCALL_AGENT_BIN", global = true)]
    pub agent_bin: Option<String>,
    /// etcd: the peer port; the peer URL is `http://ADVERTISE_HOST:PORT`.
    #[arg(long, env = "ROLLCALL_ETCD_PEER_PORT", global = true, default_value_t = ETCD_PEER_PORT)]
    pub etcd_peer_port: u16,
    /// etcd: the host of the advertised peer URL, when it must differ from `--advertise`'s:
    /// a name that outlives the address (a container's host name), so that the peer URLs the
    /// raft stores stay valid when every member restarts at a new address.
    #[arg(long, env = "ROLLCALL_ETCD_PEER_HOST", global = true)]
    pub etcd_peer_host: Option<String>,
    /// Consul: the agent's HTTP API.
    #[arg(long, env = "ROLLCALL_CONSUL_HTTP", global = true, default_value = DEFAULT_CONSUL_HTTP)]
    pub consul_http: String,
    /// Consul: `-retry-interval`, how long Consul waits between tries of its `-retry-join`
    /// targets (Consul's own default is 30 s).
    #[arg(long, env = "ROLLCALL_CONSUL_RETRY_INTERVAL", global = true, value_parser = humantime::parse_duration, default_value = "3s")]
    pub consul_retry_interval: Duration,
    /// Consul: the directory passed as `-config-dir` (when it exists, or when
    /// `CONSUL_LOCAL_CONFIG` is written into it), as the official image does.
    #[arg(long, env = "ROLLCALL_CONSUL_CONFIG_DIR", global = true, default_value = DEFAULT_CONSUL_CONFIG_DIR)]
    pub consul_config_dir: PathBuf,
    /// Consul: JSON written to `<config dir>/local.json` before Consul starts (the official
    /// image's `CONSUL_LOCAL_CONFIG`).
    #[arg(
        long,
        env = "CONSUL_LOCAL_CONFIG",
        global = true,
        hide_env_values = true
    )]
    pub consul_local_config: Option<String>,
    /// Consul: the network interface whose IPv4 address is passed as `-bind` (the official
    /// image's `CONSUL_BIND_INTERFACE`).
    #[arg(long, env = "CONSUL_BIND_INTERFACE", global = true)]
    pub consul_bind_interface: Option<String>,
    /// Consul: the network interface whose IPv4 address is passed as `-client` (the official
    /// image's `CONSUL_CLIENT_INTERFACE`); the sidecar then reads Consul's API there.
    #[arg(long, env = "CONSUL_CLIENT_INTERFACE", global = true)]
    pub consul_client_interface: Option<String>,
    /// Consul: the network interface whose IPv4 address is passed as `-advertise`, instead
    /// of the advertised host's address.
    #[arg(long, env = "ROLLCALL_CONSUL_ADVERTISE_INTERFACE", global = true)]
    pub consul_advertise_interface: Option<String>,
    /// Consul: the ACL token sent (`X-Consul-Token`) with every call to Consul's API.
    #[arg(long, env = "CONSUL_HTTP_TOKEN", global = true, hide_env_values = true)]
    pub consul_http_token: Option<String>,
    /// Consul: a file holding the ACL token (a Docker secret), instead of CONSUL_HTTP_TOKEN.
    #[arg(
        long,
        env = "CONSUL_HTTP_TOKEN_FILE",
        global = true,
        conflicts_with = "consul_http_token"
    )]
    pub consul_http_token_file: Option<PathBuf>,
    /// The user the agent runs as (a name in /etc/passwd, or a numeric uid). The sidecar,
    /// running as root, makes the data directory (and Consul's config directory) that
    /// user's before starting the agent, as the official Consul image's entrypoint does.
    #[arg(long, env = "ROLLCALL_AGENT_USER", global = true)]
    pub agent_user: Option<String>,
    /// exec: a URL that answers 2xx while the agent is healthy; without it, a running
    /// process counts as healthy.
    #[arg(long, env = "ROLLCALL_HEALTH_URL", global = true)]
    pub health_url: Option<String>,
    /// How long `run` retries an unreachable registry at start before exiting with 69.
    #[arg(long, env = "ROLLCALL_REGISTRY_RETRY_LIMIT", global = true, value_parser = humantime::parse_duration, default_value = "60s")]
    pub registry_retry_limit: Duration,
    /// How long a claim waits in all while the registry asks it to (not ready, reset
    /// required, address or expect conflict) before exiting with 75.
    #[arg(long, env = "ROLLCALL_CLAIM_WAIT_LIMIT", global = true, value_parser = humantime::parse_duration, default_value = "10m")]
    pub claim_wait_limit: Duration,
    /// How long a joining node tries its join targets before exiting with 75.
    #[arg(long, env = "ROLLCALL_JOIN_TIMEOUT", global = true, value_parser = humantime::parse_duration, default_value = "120s")]
    pub join_timeout: Duration,
    /// How long a raft member may be gone (no peer connection from the leader, not live in
    /// the registry) before the leader's sidecar removes it; a joiner that waits for such a
    /// removal waits this plus `--join-timeout`.
    #[arg(long, env = "ROLLCALL_DEAD_MEMBER_AFTER", global = true, value_parser = humantime::parse_duration, default_value = "5m")]
    pub dead_member_after: Duration,
    /// How long the agent has to exit after SIGTERM before it is killed (default 17s for
    /// Consul, whose client agents take up to 15 s to leave; 10s otherwise).
    #[arg(long, env = "ROLLCALL_STOP_TIMEOUT", global = true, value_parser = humantime::parse_duration)]
    pub stop_timeout: Option<Duration>,
    /// Timeout of one HTTP request to the registry or the agent.
    #[arg(long, env = "ROLLCALL_REQUEST_TIMEOUT", global = true, value_parser = humantime::parse_duration, default_value = "5s")]
    pub request_timeout: Duration,
    /// etcd: start this survivor of a raft that lost its quorum as a new one-member raft
    /// that keeps its data (etcd's `--force-new-cluster`); once per data directory. The
    /// variable takes `1`/`0` as well as `true`/`false`.
    #[arg(long, env = "ROLLCALL_FORCE_NEW_CLUSTER", global = true, value_parser = clap::builder::BoolishValueParser::new())]
    pub force_new_cluster: bool,
    /// etcd: a node granted `bootstrap` starts the new raft from this `etcdctl snapshot save`
    /// file (the next generation of a lost raft keeps its data); ignored, with a warning, by
    /// a node granted anything else.
    #[arg(long, env = "ROLLCALL_RESTORE_SNAPSHOT", global = true)]
    pub restore_snapshot: Option<PathBuf>,
    /// Log format.
    #[arg(long, env = "ROLLCALL_LOG_FORMAT", global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

/// A configuration error: exit 64 with this message.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

/// The validated configuration shared by every subcommand.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The registry's URLs (its replicas), each `http://` or `https://`, none twice, in the
    /// order given; never empty.
    pub registry_urls: Vec<String>,
    pub token: Option<String>,
    /// Extra CA certificates that verify the registry's TLS certificate.
    pub ca_cert: Option<PathBuf>,
    pub cluster: String,
    pub node: String,
    /// The advertised host (an IP address or a DNS name) without the port.
    pub advertise_host: String,
    pub advertise_port: u16,
    pub expect: u32,
    pub agent_only: bool,
    pub engine: EngineKind,
    pub data_dir: PathBuf,
    pub agent_bin: Option<String>,
    pub etcd_peer_port: u16,
    pub etcd_peer_host: Option<String>,
    pub consul_http: String,
    pub consul_retry_interval: Duration,
    pub consul_config_dir: PathBuf,
    pub consul_local_config: Option<String>,
    pub consul_bind_interface: Option<String>,
    pub consul_client_interface: Option<String>,
    pub consul_advertise_interface: Option<String>,
    pub consul_http_token: Option<String>,
    pub agent_user: Option<String>,
    pub health_url: Option<String>,
    pub registry_retry_limit: Duration,
    pub claim_wait_limit: Duration,
    pub join_timeout: Duration,
    /// `--dead-member-after`: the dead-member cleanup's threshold.
    pub dead_member_after: Duration,
    pub stop_timeout: Duration,
    pub request_timeout: Duration,
    /// etcd: `--force-new-cluster` was asked for (one-shot per data directory).
    pub force_new_cluster: bool,
    /// etcd: `--restore-snapshot`, checked to be a readable file.
    pub restore_snapshot: Option<PathBuf>,
    /// Arguments after `--`.
    pub agent_args: Vec<String>,
}

impl Settings {
    /// `host:port` as the registry records it.
    pub fn advertise_address(&self) -> String {
        join_host_port(&self.advertise_host, self.advertise_port)
    }

    /// Validates the raw arguments. `hostname` and `etc_hosts` are passed in so that tests
    /// can check the defaults without touching the machine.
    pub fn from_args(
        common: &CommonArgs,
        agent_args: Vec<String>,
        hostname: Option<String>,
        etc_hosts: Option<&str>,
    ) -> Result<Settings, ConfigError> {
        let registry = common
            .registry
            .as_deref()
            .ok_or_else(|| ConfigError("--registry (ROLLCALL_REGISTRY) is required".into()))?;
        let registry_urls = rollcall_protocol::parse_base_urls(registry)
            .map_err(|e| ConfigError(format!("--registry (ROLLCALL_REGISTRY): {e}")))?;
        validate_name(NameKind::Cluster, &common.cluster).map_err(|e| ConfigError(e.message))?;
        let node = match &common.node {
            Some(node) => node.clone(),
            None => hostname.clone().ok_or_else(|| {
                ConfigError("--node (ROLLCALL_NODE) is not set and the hostname is unknown".into())
            })?,
        };
        validate_name(NameKind::Node, &node).map_err(|e| ConfigError(e.message))?;
        rollcall_protocol::validate::validate_expect(common.expect)
            .map_err(|e| ConfigError(e.message))?;

        let default_port = common.engine.default_port();
        let (advertise_host, advertise_port) = match &common.advertise {
            Some(advertise) => split_advertise(advertise, default_port)?,
            None => {
                let host = hostname
                    .as_deref()
                    .and_then(|h| etc_hosts.and_then(|hosts| address_of_host(hosts, h)))
                    .ok_or_else(|| {
                        ConfigError(
                            "--advertise (ROLLCALL_ADVERTISE) is not set and /etc/hosts has no \
                             non-loopback address for the hostname"
                                .into(),
                        )
                    })?;
                (host.to_string(), default_port)
            }
        };
        validate_address(&join_host_port(&advertise_host, advertise_port))
            .map_err(|e| ConfigError(e.message))?;
        if let Some(snapshot) = &common.restore_snapshot {
            std::fs::File::open(snapshot).map_err(|e| {
                ConfigError(format!(
                    "--restore-snapshot {}: cannot read it: {e}",
                    snapshot.display()
                ))
            })?;
        }
        if let Some(host) = &common.etcd_peer_host {
            if !is_peer_host(host) {
                return Err(ConfigError(format!(
                    "--etcd-peer-host {host:?} must be an IP address or a host name (labels of letters, digits and inner hyphens, at most 253 characters)"
                )));
            }
        }
        let stop_timeout = common.stop_timeout.unwrap_or(match common.engine {
            EngineKind::Consul => DEFAULT_CONSUL_STOP_TIMEOUT,
            EngineKind::Etcd | EngineKind::Exec => DEFAULT_STOP_TIMEOUT,
        });
        for (name, value) in [
            ("--stop-timeout", stop_timeout),
            ("--consul-retry-interval", common.consul_retry_interval),
            ("--request-timeout", common.request_timeout),
            ("--claim-wait-limit", common.claim_wait_limit),
        ] {
            if value.is_zero() {
                return Err(ConfigError(format!("{name} must be more than zero")));
            }
        }
        if common.dead_member_after < MIN_DEAD_MEMBER_AFTER {
            return Err(ConfigError(format!(
                "--dead-member-after must be at least {}",
                humantime::format_duration(MIN_DEAD_MEMBER_AFTER)
            )));
        }
        Ok(Settings {
            registry_urls,
            token: match &common.token_file {
                Some(path) => Some(read_secret_file("--token-file", path)?),
                None => common.token.clone().filter(|t| !t.is_empty()),
            },
            cluster: common.cluster.clone(),
            node,
            advertise_host,
            advertise_port,
            expect: common.expect,
            agent_only: common.agent_only,
            engine: common.engine,
            data_dir: common.data_dir.clone(),
            agent_bin: common.agent_bin.clone(),
            etcd_peer_port: common.etcd_peer_port,
            etcd_peer_host: common.etcd_peer_host.clone(),
            consul_http: common.consul_http.trim_end_matches('/').to_string(),
            consul_retry_interval: common.consul_retry_interval,
            consul_config_dir: common.consul_config_dir.clone(),
            consul_local_config: common.consul_local_config.clone().filter(|c| !c.is_empty()),
            consul_bind_interface: common
                .consul_bind_interface
                .clone()
                .filter(|i| !i.is_empty()),
            consul_client_interface: common
                .consul_client_interface
                .clone()
                .filter(|i| !i.is_empty()),
            consul_advertise_interface: common
                .consul_advertise_interface
                .clone()
                .filter(|i| !i.is_empty()),
            consul_http_token: match &common.consul_http_token_file {
                Some(path) => Some(read_secret_file("--consul-http-token-file", path)?),
                None => common.consul_http_token.clone().filter(|t| !t.is_empty()),
            },
            agent_user: common.agent_user.clone().filter(|u| !u.is_empty()),
            health_url: common.health_url.clone(),
            registry_retry_limit: common.registry_retry_limit,
            claim_wait_limit: common.claim_wait_limit,
            join_timeout: common.join_timeout,
            dead_member_after: common.dead_member_after,
            stop_timeout,
            request_timeout: common.request_timeout,
            force_new_cluster: common.force_new_cluster,
            restore_snapshot: common.restore_snapshot.clone(),
            agent_args,
            ca_cert: common.ca_cert.clone(),
        })
    }
}

/// `host:port`, bracketing an IPv6 host.
pub fn join_host_port(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// Splits `host`, `host:port`, `[v6]` or `[v6]:port`.
fn split_advertise(advertise: &str, default_port: u16) -> Result<(String, u16), ConfigError> {
    let bad = || {
        ConfigError(format!(
            "--advertise {advertise:?} must be host or host:port with a port from 1 to 65535"
        ))
    };
    let (host, port) = if let Some(rest) = advertise.strip_prefix('[') {
        let (host, after) = rest.split_once(']').ok_or_else(bad)?;
        match after.strip_prefix(':') {
            Some(port) => (host.to_string(), Some(port)),
            None if after.is_empty() => (host.to_string(), None),
            None => return Err(bad()),
        }
    } else if advertise.parse::<IpAddr>().is_ok() {
        (advertise.to_string(), None)
    } else {
        match advertise.rsplit_once(':') {
            Some((host, port)) => (host.to_string(), Some(port)),
            None => (advertise.to_string(), None),
        }
    };
    let port = match port {
        None => default_port,
        Some(port) => port
            .parse::<u16>()
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(bad)?,
    };
    Ok((host, port))
}

/// A secret from a file (a Docker secret): see [`rollcall_protocol::read_secret_file`].
pub fn read_secret_file(flag: &str, path: &Path) -> Result<String, ConfigError> {
    rollcall_protocol::read_secret_file(flag, path).map_err(ConfigError)
}

/// The IPv4 address in `subnet` (CIDR) among `interfaces` (`(name, address)`, as
/// `getifaddrs` lists them), with the interface's name, for `--advertise-subnet`. None in
/// it, or several on different interfaces, is an error naming what there is.
pub fn address_in_subnet(
    interfaces: &[(String, IpAddr)],
    subnet: &str,
) -> Result<(String, IpAddr), ConfigError> {
    let net: ipnet::IpNet = subnet.trim().parse().map_err(|_| {
        ConfigError(format!(
            "--advertise-subnet must be a subnet in CIDR notation such as 10.77.0.0/24, not {subnet:?}"
        ))
    })?;
    let found: Vec<&(String, IpAddr)> = interfaces
        .iter()
        .filter(|(_, ip)| net.contains(ip))
        .collect();
    match found.as_slice() {
        [(name, ip)] => Ok((name.clone(), *ip)),
        [] => {
            let known: Vec<String> = interfaces
                .iter()
                .filter(|(_, ip)| !ip.is_loopback())
                .map(|(name, ip)| format!("{name} {ip}"))
                .collect();
            Err(ConfigError(format!(
                "--advertise-subnet {net}: no interface has an address in it (addresses: {})",
                known.join(", ")
            )))
        }
        several => Err(ConfigError(format!(
            "--advertise-subnet {net}: several addresses are in it ({}); name one with --advertise",
            several
                .iter()
                .map(|(name, ip)| format!("{name} {ip}"))
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}

/// The first non-loopback address that /etc/hosts gives `hostname`: Docker writes the
/// container's address there under its hostname, and reading the file needs no resolver.
pub fn address_of_host(etc_hosts: &str, hostname: &str) -> Option<IpAddr> {
    etc_hosts.lines().find_map(|line| {
        let line = line.split('#').next().unwrap_or_default();
        let mut fields = line.split_whitespace();
        let address = fields.next()?.parse::<IpAddr>().ok()?;
        if address.is_loopback() || !fields.any(|name| name == hostname) {
            return None;
        }
        Some(address)
    })
}

/// True when `host` is an IP literal (so an agent can bind or advertise it as is).
pub fn is_ip_literal(host: &str) -> bool {
    host.parse::<IpAddr>().is_ok()
}

/// A host for etcd's peer URL: an IP address or an RFC 1123 host name. Laxer than the
/// registry's address rule (whose last label must start with a letter, to tell a name from
/// an IPv4 address): a container's host name is its short id, which may start with a digit,
/// and the peer URL never goes to the registry as an address.
pub fn is_peer_host(host: &str) -> bool {
    if is_ip_literal(host) {
        return true;
    }
    !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_peer_host_may_be_a_containers_short_id() {
        for host in ["89e55eb8ed58", "etcd-1", "node.example", "10.0.0.2", "::1"] {
            assert!(is_peer_host(host), "{host}");
        }
        for host in ["", "-x", "x-", "a b", "a..b", "a/b", &"x".repeat(64)] {
            assert!(!is_peer_host(host), "{host}");
        }
    }

    fn common(args: &[&str]) -> CommonArgs {
        let mut argv = vec!["rollcall-sidecar"];
        argv.extend_from_slice(args);
        argv.push("claim");
        Cli::try_parse_from(argv).expect("parse").common
    }

    #[test]
    fn advertise_defaults_to_the_hostname_address_in_etc_hosts() {
        let hosts = "127.0.0.1\tlocalhost\n::1 localhost ip6-localhost\n172.18.0.3\tabc123 web\n";
        let settings = Settings::from_args(
            &common(&["--registry", "http://r:7400", "--engine", "etcd"]),
            vec![],
            Some("abc123".into()),
            Some(hosts),
        )
        .expect("settings");
        assert_eq!(settings.node, "abc123");
        assert_eq!(settings.advertise_address(), "172.18.0.3:2379");
    }

    #[test]
    fn advertise_accepts_host_host_port_and_ipv6() {
        for (given, engine, expected) in [
            ("10.0.0.2", "consul", "10.0.0.2:8301"),
            ("10.0.0.2:9000", "consul", "10.0.0.2:9000"),
            ("consul-1", "consul", "consul-1:8301"),
            ("etcd-1:3379", "etcd", "etcd-1:3379"),
            ("::1", "etcd", "[::1]:2379"),
            ("[::1]:4000", "etcd", "[::1]:4000"),
        ] {
            let settings = Settings::from_args(
                &common(&[
                    "--registry",
                    "http://r",
                    "--engine",
                    engine,
                    "--advertise",
                    given,
                ]),
                vec![],
                Some("n1".into()),
                None,
            )
            .expect(given);
            assert_eq!(settings.advertise_address(), expected, "{given}");
        }
    }

    #[test]
    fn every_wait_has_a_deadline_by_default() {
        let settings = Settings::from_args(
            &common(&["--registry", "http://r", "--advertise", "a"]),
            vec![],
            Some("n1".into()),
            None,
        )
        .expect("settings");
        assert_eq!(settings.claim_wait_limit, DEFAULT_CLAIM_WAIT_LIMIT);
        assert_eq!(settings.registry_retry_limit, DEFAULT_REGISTRY_RETRY_LIMIT);
        assert_eq!(settings.join_timeout, DEFAULT_JOIN_TIMEOUT);
        assert_eq!(settings.dead_member_after, DEFAULT_DEAD_MEMBER_AFTER);
        assert!(!settings.force_new_cluster);
    }

    #[test]
    fn the_stop_timeout_fits_consuls_graceful_leave_unless_given() {
        for (flags, expected) in [
            (vec!["--engine", "consul"], DEFAULT_CONSUL_STOP_TIMEOUT),
            (vec!["--engine", "etcd"], DEFAULT_STOP_TIMEOUT),
            (vec!["--engine", "exec"], DEFAULT_STOP_TIMEOUT),
            (
                vec!["--engine", "consul", "--stop-timeout", "7s"],
                Duration::from_secs(7),
            ),
        ] {
            let mut args = vec!["--registry", "http://r", "--advertise", "a"];
            args.extend(flags.iter());
            let settings = Settings::from_args(&common(&args), vec![], Some("n1".into()), None)
                .expect("settings");
            assert_eq!(settings.stop_timeout, expected, "{flags:?}");
        }
        // Consul gives a client's graceful leave 15 s; the sidecar must not kill it sooner.
        assert!(DEFAULT_CONSUL_STOP_TIMEOUT > Duration::from_secs(15));
    }

    #[test]
    fn bad_configuration_is_refused_with_a_reason() {
        for args in [
            vec!["--advertise", "10.0.0.1:0"],
            vec!["--advertise", "10.0.0.1:99999"],
            vec!["--registry", "r:7400", "--advertise", "a"],
            vec!["--advertise", "a", "--cluster", "bad name"],
            vec!["--advertise", "a", "--expect", "0"],
            vec!["--advertise", "a", "--node=-x"],
            vec!["--advertise", "a", "--claim-wait-limit", "0s"],
            vec!["--advertise", "a", "--dead-member-after", "500ms"],
        ] {
            let mut full = if args.contains(&"--registry") {
                vec![]
            } else {
                vec!["--registry", "http://r"]
            };
            full.extend(args.iter());
            let result = Settings::from_args(&common(&full), vec![], Some("n1".into()), None);
            assert!(result.is_err(), "{args:?}");
        }
        let missing_registry = Settings::from_args(&common(&[]), vec![], Some("n".into()), None);
        assert!(missing_registry.is_err());
    }

    #[test]
    fn the_registry_may_be_a_list_of_replicas_each_given_once() {
        let settings = Settings::from_args(
            &common(&[
                "--registry",
                "http://r1:7400, https://r2:7443/",
                "--advertise",
                "a",
            ]),
            vec![],
            Some("n1".into()),
            None,
        )
        .expect("settings");
        assert_eq!(
            settings.registry_urls,
            ["http://r1:7400", "https://r2:7443"]
        );
        for (list, reason) in [
            ("http://r1:7400,http://r1:7400/", "same registry URL"),
            (
                "http://r1:7400,r2:7400",
                "must start with http:// or https://",
            ),
            ("http://r1:7400,", "empty entry"),
        ] {
            let error = Settings::from_args(
                &common(&["--registry", list, "--advertise", "a"]),
                vec![],
                Some("n1".into()),
                None,
            )
            .expect_err(list);
            assert!(error.0.starts_with("--registry"), "{error}");
            assert!(error.0.contains(reason), "{list}: {error}");
        }
    }

    #[test]
    fn a_secret_file_loses_one_trailing_newline_and_nothing_else() {
        let dir = tempfile::tempdir().expect("tempdir");
        let write = |name: &str, text: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, text).expect("write");
            path
        };
        let read = |path: &Path| read_secret_file("--token-file", path);
        assert_eq!(read(&write("plain", "s3cret")).expect("plain"), "s3cret");
        assert_eq!(read(&write("lf", "s3cret\n")).expect("lf"), "s3cret");
        assert_eq!(read(&write("crlf", "s3cret\r\n")).expect("crlf"), "s3cret");
        for (name, text) in [
            ("empty", ""),
            ("blank", "\n"),
            ("two", "s3cret\n\n"),
            ("lead", " s3cret"),
        ] {
            let error = read(&write(name, text)).expect_err(name);
            assert!(error.0.starts_with("--token-file: "), "{error}");
        }
        let missing = read(&dir.path().join("missing")).expect_err("missing");
        assert!(missing.0.contains("cannot read"), "{missing}");
    }

    #[test]
    fn the_advertise_subnet_picks_the_one_address_in_it() {
        let interfaces: Vec<(String, IpAddr)> = [
            ("lo", "127.0.0.1"),
            ("eth0", "10.213.0.7"),
            ("eth1", "172.18.0.3"),
            ("eth0", "fe80::1"),
        ]
        .iter()
        .map(|(n, ip)| (n.to_string(), ip.parse().expect("ip")))
        .collect();
        let (name, ip) = address_in_subnet(&interfaces, "10.213.0.0/24").expect("found");
        assert_eq!(
            (name.as_str(), ip.to_string().as_str()),
            ("eth0", "10.213.0.7")
        );
        let none = address_in_subnet(&interfaces, "10.99.0.0/16").expect_err("none");
        assert!(
            none.0.contains("eth1 172.18.0.3"),
            "names what there is: {none}"
        );
        let bad = address_in_subnet(&interfaces, "10.213.0.0").expect_err("not CIDR");
        assert!(bad.0.contains("CIDR"), "{bad}");
        let both = address_in_subnet(&interfaces, "0.0.0.0/0").expect_err("several");
        assert!(both.0.contains("several"), "{both}");
    }
}
