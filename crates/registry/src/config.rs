//! Command-line flags (each with a `ROLLCALL_*` environment variable), validated once into a
//! typed [`Config`]. A bad setting stops the binary with exit code 64 and one clear line.
//!
//! About 900 lines, a seventh of them tests: every flag, its bound and its test are here (the
//! etcd flags of `--store etcd` and `migrate` included, in [`EtcdArgs`]), so that the
//! registry's whole configuration is read in one file.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use rollcall_protocol::validate::NameKind;

use crate::auth::{Secret, Tokens};
use crate::membership::{Limits, Timing};

pub const DEFAULT_LISTEN: &str = "0.0.0.0:7400";
pub const DEFAULT_DATA_DIR: &str = "./rollcall-data";
/// Short enough that a docker demo converges in seconds, long enough to ride out a GC pause.
pub const DEFAULT_TTL: &str = "15s";
pub const DEFAULT_INTERVAL: &str = "5s";
pub const DEFAULT_SHUTDOWN_TIMEOUT: &str = "10s";
pub const DEFAULT_REQUEST_TIMEOUT: &str = "10s";
pub const DEFAULT_MAX_BODY_BYTES: usize = 64 * 1024;
pub const DEFAULT_MAX_CLUSTERS: usize = 10_000;
pub const DEFAULT_MAX_MEMBERS_PER_CLUSTER: usize = 10_000;
/// With the metadata bound below, what the defaults let the registry hold stays near 1 GiB of
/// RSS at worst (README.md, "How the limits count").
pub const DEFAULT_MAX_MEMBERS: usize = 100_000;
pub const DEFAULT_MAX_METADATA_BYTES: usize = 64 * 1024 * 1024;
/// Far above any fleet, and what keeps the totals of `--max-members` and
/// `--max-metadata-bytes` meaningful on a 64-bit machine.
const MAX_MAX_MEMBERS: usize = 100_000_000;
const MAX_MAX_METADATA_BYTES: usize = 64 * 1024 * 1024 * 1024;
/// sled's page cache. Reads are served from memory, so sled's cache only speeds up its own
/// writes: side by side, 16 MiB gave ~7% fewer registrations per second than 32 MiB and a
/// ~22 MiB lower peak RSS with ~145k members stored (BENCHMARKS.md, change 10); 8 MiB gave
/// 15,747 and 15,769 registrations/s over 64 connections against 14,590 and 16,915 at 16 MiB,
/// and an RSS 10.6 MiB lower with 100,000 members stored (89 against 100 MiB; issue 17).
pub const DEFAULT_CACHE_BYTES: u64 = 8 * 1024 * 1024;
pub const DEFAULT_MAX_CONNECTIONS: usize = 4096;
pub const DEFAULT_HEADER_READ_TIMEOUT: &str = "10s";
/// Longer than the idle timeout of reqwest's and hyper's client pools (90 s), so that a client
/// drops a pooled connection before the registry closes it and never races a close with a
/// request; far longer than a heartbeat interval, so that heartbeats reuse their connection.
/// Between nginx's `keepalive_timeout` (75 s) and its old `http2_idle_timeout` (3 m).
pub const DEFAULT_IDLE_TIMEOUT: &str = "120s";
/// nginx's `http2_max_concurrent_streams` is 128, Envoy's gRPC guidance 100: enough for a
/// client that multiplexes its watches, few enough that one connection cannot hold a large
/// share of `--max-watchers`.
pub const DEFAULT_MAX_STREAMS_PER_CONNECTION: u32 = 100;
/// A raft with no live server for this long is lost: as long as the sidecars' dead-member
/// threshold (`--dead-member-after`), far longer than a container restart or a host reboot.
/// A TTL longer than this is the default instead, since a server is live for its TTL.
pub const DEFAULT_RAFT_LOST_AFTER: Duration = Duration::from_secs(300);
/// Consul's limit on a blocking query's wait.
pub const DEFAULT_MAX_WATCH_WAIT: &str = "10m";
/// Watchers are tools (`rollcall-sidecar members --follow`, dashboards, scripts), not the
/// members, which only heartbeat: 1024 is far above what they need, keeps their memory to a
/// few MiB (README, Limits), and is a quarter of `--max-connections`' default, so that over
/// HTTP/1 watchers alone never take every connection from the heartbeats.
pub const DEFAULT_MAX_WATCHERS: usize = 1024;

#[derive(Debug, Parser)]
#[command(
    name = "rollcall-registry",
    version,
    about = "rollcall's bootstrap instance: members heartbeat to it, it serves join addresses and decides who may start a raft"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub serve: ServeArgs,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Checks a running registry's /health and exits 0 when it is healthy, 1 otherwise (for Docker's HEALTHCHECK).
    Healthcheck {
        /// The registry to check.
        #[arg(
            long,
            env = "ROLLCALL_HEALTHCHECK_URL",
            default_value = "http://127.0.0.1:7400"
        )]
        url: String,
    },
    /// Prints a cluster's current generation (its known raft's, else its last grant's, else 0):
    /// the number `reset --generation` needs. Exits 1 when the registry cannot be asked.
    Generation {
        /// The cluster.
        cluster: String,
        /// The registry to ask: a URL, or the URLs of its replicas, comma-separated.
        #[arg(
            long,
            env = "ROLLCALL_RESET_URL",
            default_value = "http://127.0.0.1:7400"
        )]
        url: String,
    },
    /// Resizes a cluster's known raft (its `expect`, the number of voters): growing lets new
    /// nodes and running agents take the new server slots; shrinking is followed by
    /// `rollcall-sidecar leave` on the members to remove. Refused unless GENERATION is the
    /// raft's current one. Prints the registry's answer as JSON.
    Resize {
        /// The cluster to resize.
        cluster: String,
        /// The new number of voters.
        #[arg(long)]
        expect: u32,
        /// The raft's current generation (`raft.generation` from GET /v1/clusters/CLUSTER, or
        /// `rollcall-registry generation CLUSTER`).
        #[arg(long)]
        generation: u64,
        /// Why, for the log and the dashboard.
        #[arg(long)]
        reason: Option<String>,
        /// The registry to ask (inside the registry's container, the default is right); the
        /// URLs of its replicas, comma-separated, are tried in turn.
        #[arg(
            long,
            env = "ROLLCALL_RESET_URL",
            default_value = "http://127.0.0.1:7400"
        )]
        url: String,
        /// The registry-wide token, when writes need one.
        #[arg(long, env = "ROLLCALL_TOKEN", hide_env_values = true)]
        token: Option<String>,
    },
    /// Copies a sled data directory's records (members, claims, grants, histories) into etcd,
    /// to move a registry to --store etcd. Run it with the registry stopped; refused when the
    /// prefix in etcd already holds anything (records, or a replica's leader key). Prints what
    /// it copied; exits 0, 1 when refused or etcd fails, 65 when sled lost acknowledged writes.
    Migrate {
        /// The sled data directory to copy from.
        #[arg(long, env = "ROLLCALL_DATA_DIR", default_value = DEFAULT_DATA_DIR)]
        data_dir: PathBuf,
        #[command(flatten)]
        etcd: EtcdArgs,
    },
    /// Resets a cluster whose raft is gone for good, so that its next claim bootstraps a new
    /// raft (generation + 1). Refused unless GENERATION is the cluster's current one, and while
    /// live members are not named in --force. Prints the registry's answer as JSON.
    Reset {
        /// The cluster to reset.
        cluster: String,
        /// The cluster's current generation (`raft.generation`, else `bootstrap.generation`,
        /// from GET /v1/clusters/CLUSTER; the refusal a claimant gets names it too).
        #[arg(long)]
        generation: u64,
        /// Live members or claimants to forget although they are live (comma-separated).
        #[arg(long, value_delimiter = ',')]
        force: Vec<String>,
        /// Why, for the log and the dashboard.
        #[arg(long)]
        reason: Option<String>,
        /// The registry to ask (inside the registry's container, the default is right); the
        /// URLs of its replicas, comma-separated, are tried in turn.
        #[arg(
            long,
            env = "ROLLCALL_RESET_URL",
            default_value = "http://127.0.0.1:7400"
        )]
        url: String,
        /// The registry-wide token, when writes need one.
        #[arg(long, env = "ROLLCALL_TOKEN", hide_env_values = true)]
        token: Option<String>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// Address and port to serve HTTP on.
    #[arg(long, env = "ROLLCALL_LISTEN", default_value = DEFAULT_LISTEN)]
    pub listen: SocketAddr,
    /// Directory of the sled database.
    #[arg(long, env = "ROLLCALL_DATA_DIR", default_value = DEFAULT_DATA_DIR)]
    pub data_dir: PathBuf,
    /// A member is forgotten this long after its last heartbeat (e.g. 15s).
    #[arg(long, env = "ROLLCALL_TTL", default_value = DEFAULT_TTL, value_parser = humantime::parse_duration)]
    pub ttl: Duration,
    /// The heartbeat interval told to members; must be shorter than the TTL.
    #[arg(long, env = "ROLLCALL_INTERVAL", default_value = DEFAULT_INTERVAL, value_parser = humantime::parse_duration)]
    pub interval: Duration,
    /// No bootstrap is granted this long after the registry starts [default: 2 x interval].
    #[arg(long, env = "ROLLCALL_STARTUP_GRACE", value_parser = humantime::parse_duration)]
    pub startup_grace: Option<Duration>,
    /// No bootstrap is granted this long after a cluster's last member was seen [default: the TTL].
    #[arg(long, env = "ROLLCALL_QUIET_PERIOD", value_parser = humantime::parse_duration)]
    pub quiet_period: Option<Duration>,
    /// Off by default: once a cluster's raft is known, only an operator's reset lets a new
    /// raft start. With a duration (e.g. 24h), a raft none of whose members was seen for that
    /// long may be replaced by a new one without a reset.
    #[arg(long, env = "ROLLCALL_REBOOTSTRAP_AFTER", value_parser = humantime::parse_duration)]
    pub rebootstrap_after: Option<Duration>,
    /// A known raft none of whose servers was live for this long is lost: claims are refused
    /// `409 raft_lost` with the ways forward (a survivor's forced new cluster, or a reset).
    /// At least the TTL [default: 5m, or the TTL if that is longer].
    #[arg(long, env = "ROLLCALL_RAFT_LOST_AFTER", value_parser = humantime::parse_duration)]
    pub raft_lost_after: Option<Duration>,
    /// Registry-wide bearer token for writes. Without any token, writes are open.
    #[arg(long, env = "ROLLCALL_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// A file holding the registry-wide token (a Docker secret), instead of `--token`; one
    /// trailing newline is ignored.
    #[arg(long, env = "ROLLCALL_TOKEN_FILE", conflicts_with = "token")]
    pub token_file: Option<PathBuf>,
    /// A file of per-cluster tokens, one CLUSTER=TOKEN a line (blank lines and lines starting
    /// with `#` ignored), in addition to any `--cluster-token`.
    #[arg(long, env = "ROLLCALL_CLUSTER_TOKENS_FILE")]
    pub cluster_tokens_file: Option<PathBuf>,
    /// A token that may write to one cluster only, as CLUSTER=TOKEN; repeat the flag, or separate with commas in the variable.
    #[arg(
        long = "cluster-token",
        env = "ROLLCALL_CLUSTER_TOKENS",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub cluster_tokens: Vec<String>,
    /// Log format.
    #[arg(long, env = "ROLLCALL_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,
    /// How long shutdown waits for in-flight requests before it flushes and exits.
    #[arg(long, env = "ROLLCALL_SHUTDOWN_TIMEOUT", default_value = DEFAULT_SHUTDOWN_TIMEOUT, value_parser = humantime::parse_duration)]
    pub shutdown_timeout: Duration,
    /// A request that takes longer is answered 408.
    #[arg(long, env = "ROLLCALL_REQUEST_TIMEOUT", default_value = DEFAULT_REQUEST_TIMEOUT, value_parser = humantime::parse_duration)]
    pub request_timeout: Duration,
    /// Largest request body, in bytes.
    #[arg(long, env = "ROLLCALL_MAX_BODY_BYTES", default_value_t = DEFAULT_MAX_BODY_BYTES)]
    pub max_body_bytes: usize,
    /// Most clusters one registry holds.
    #[arg(long, env = "ROLLCALL_MAX_CLUSTERS", default_value_t = DEFAULT_MAX_CLUSTERS)]
    pub max_clusters: usize,
    /// Most clusters with a raft or a bootstrap grant (and reset clusters) one registry keeps;
    /// defaults to --max-clusters.
    #[arg(long, env = "ROLLCALL_MAX_BOOTSTRAPPED_CLUSTERS")]
    pub max_bootstrapped_clusters: Option<usize>,
    /// Most members and claimants of all clusters together.
    #[arg(long, env = "ROLLCALL_MAX_MEMBERS", default_value_t = DEFAULT_MAX_MEMBERS)]
    pub max_members: usize,
    /// Most bytes of metadata (keys and values) of all members together.
    #[arg(long, env = "ROLLCALL_MAX_METADATA_BYTES", default_value_t = DEFAULT_MAX_METADATA_BYTES)]
    pub max_metadata_bytes: usize,
    /// Most members (and claimants) one cluster holds.
    #[arg(long, env = "ROLLCALL_MAX_MEMBERS_PER_CLUSTER", default_value_t = DEFAULT_MAX_MEMBERS_PER_CLUSTER)]
    pub max_members_per_cluster: usize,
    /// Most open connections; one more is answered 503 and closed.
    #[arg(long, env = "ROLLCALL_MAX_CONNECTIONS", default_value_t = DEFAULT_MAX_CONNECTIONS)]
    pub max_connections: usize,
    /// A client must send its request headers within this time (and finish a TLS handshake).
    #[arg(long, env = "ROLLCALL_HEADER_READ_TIMEOUT", default_value = DEFAULT_HEADER_READ_TIMEOUT, value_parser = humantime::parse_duration)]
    pub header_read_timeout: Duration,
    /// A connection with no request in flight for this long is closed (HTTP/1 and HTTP/2).
    #[arg(long, env = "ROLLCALL_IDLE_TIMEOUT", default_value = DEFAULT_IDLE_TIMEOUT, value_parser = humantime::parse_duration)]
    pub idle_timeout: Duration,
    /// Most concurrent requests (streams) on one HTTP/2 connection, advertised in its SETTINGS.
    #[arg(long, env = "ROLLCALL_MAX_STREAMS_PER_CONNECTION", default_value_t = DEFAULT_MAX_STREAMS_PER_CONNECTION)]
    pub max_streams_per_connection: u32,
    /// PEM certificate chain: serve HTTPS instead of HTTP (with --tls-key).
    #[arg(long, env = "ROLLCALL_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, env = "ROLLCALL_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Blocking reads (`?index=&wait=`) wait at most this long, whatever they ask for.
    #[arg(long, env = "ROLLCALL_MAX_WATCH_WAIT", default_value = DEFAULT_MAX_WATCH_WAIT, value_parser = humantime::parse_duration)]
    pub max_watch_wait: Duration,
    /// Most watchers at once (blocking reads that wait, event streams), over all connections
    /// and protocols; one more is answered 429 limit_exceeded with Retry-After.
    #[arg(long, env = "ROLLCALL_MAX_WATCHERS", default_value_t = DEFAULT_MAX_WATCHERS)]
    pub max_watchers: usize,
    /// sled's page cache, in bytes.
    #[arg(long, env = "ROLLCALL_CACHE_BYTES", default_value_t = DEFAULT_CACHE_BYTES)]
    pub cache_bytes: u64,
    /// Start even when sled lost acknowledged writes (its commit is below the high-water mark,
    /// or the mark cannot be read): run on what is left, restore grants and histories from
    /// their copy, and start the mark again. Without it the registry exits 65. The variable
    /// takes 1, true, yes or on.
    #[arg(
        long,
        env = "ROLLCALL_ACCEPT_DATA_LOSS",
        action = clap::ArgAction::SetTrue,
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    pub accept_data_loss: bool,
    /// Where the state lives: `sled` (embedded, in --data-dir, one registry) or `etcd` (an etcd
    /// v3 cluster you provide, shared by several registry replicas of which one is active and
    /// the others forward to it).
    #[arg(long, env = "ROLLCALL_STORE", value_enum, default_value = "sled")]
    pub store: StoreKind,
    #[command(flatten)]
    pub etcd: EtcdArgs,
    /// With --store etcd: the active replica's lease. A standby takes over at most this long
    /// (plus a quarter second) after the active replica dies; a frozen active replica stops
    /// answering as active when it ends.
    #[arg(long, env = "ROLLCALL_LEASE_TTL", default_value = DEFAULT_LEASE_TTL, value_parser = humantime::parse_duration)]
    pub lease_ttl: Duration,
    /// With --store etcd: the URL at which the other replicas reach this one to forward
    /// requests [default: http(s)://<host name>:<listen port>].
    #[arg(long, env = "ROLLCALL_ADVERTISE_URL")]
    pub advertise_url: Option<String>,
    /// With --store etcd: this replica's name in logs, /health and the dashboard [default:
    /// the host name].
    #[arg(long, env = "ROLLCALL_REPLICA_NAME")]
    pub replica_name: Option<String>,
}

/// How to reach etcd: for `--store etcd` and for `migrate`.
#[derive(Debug, Clone, clap::Args)]
pub struct EtcdArgs {
    /// etcd's client URLs, comma-separated.
    #[arg(long, env = "ROLLCALL_ETCD_ENDPOINTS", value_delimiter = ',')]
    pub etcd_endpoints: Vec<String>,
    /// The prefix of every key the registry writes.
    #[arg(long, env = "ROLLCALL_ETCD_PREFIX", default_value = DEFAULT_ETCD_PREFIX)]
    pub etcd_prefix: String,
    /// PEM file of the CA certificate(s) that sign etcd's certificates.
    #[arg(long, env = "ROLLCALL_ETCD_CA_FILE")]
    pub etcd_ca_file: Option<PathBuf>,
    /// PEM client certificate for etcd (with --etcd-key-file).
    #[arg(long, env = "ROLLCALL_ETCD_CERT_FILE", requires = "etcd_key_file")]
    pub etcd_cert_file: Option<PathBuf>,
    /// PEM private key of --etcd-cert-file.
    #[arg(long, env = "ROLLCALL_ETCD_KEY_FILE", requires = "etcd_cert_file")]
    pub etcd_key_file: Option<PathBuf>,
    /// etcd user (with --etcd-password-file).
    #[arg(long, env = "ROLLCALL_ETCD_USER", requires = "etcd_password_file")]
    pub etcd_user: Option<String>,
    /// File holding the etcd user's password.
    #[arg(long, env = "ROLLCALL_ETCD_PASSWORD_FILE", requires = "etcd_user")]
    pub etcd_password_file: Option<PathBuf>,
}

impl EtcdArgs {
    /// The client's options and the prefix (ending with `/`), files read now so that a bad one
    /// is a configuration error.
    pub fn options(
        &self,
        request_timeout: Duration,
    ) -> Result<(crate::store::etcd::client::EtcdOptions, String), ConfigError> {
        let err = |s: String| Err(ConfigError(s));
        if self.etcd_endpoints.is_empty() {
            return err("--etcd-endpoints URL,... is required".into());
        }
        for e in &self.etcd_endpoints {
            if !(e.starts_with("http://") || e.starts_with("https://")) {
                return err(format!(
                    "--etcd-endpoints: {e:?} must start with http:// or https://"
                ));
            }
        }
        let mut prefix = self.etcd_prefix.clone();
        if prefix.is_empty() || prefix.len() > 128 || prefix.chars().any(char::is_control) {
            return err(format!(
                "--etcd-prefix {prefix:?} must be 1 to 128 characters, none a control character"
            ));
        }
        if !prefix.ends_with('/') {
            prefix.push('/');
        }
        let read = |flag: &str, path: &PathBuf| {
            std::fs::read(path).map_err(|e| ConfigError(format!("{flag} {}: {e}", path.display())))
        };
        let ca_pem = match &self.etcd_ca_file {
            Some(p) => Some(read("--etcd-ca-file", p)?),
            None => None,
        };
        let identity_pem = match (&self.etcd_cert_file, &self.etcd_key_file) {
            (Some(c), Some(k)) => {
                let mut pem = read("--etcd-cert-file", c)?;
                pem.push(b'\n');
                pem.extend(read("--etcd-key-file", k)?);
                Some(pem)
            }
            _ => None,
        };
        let user = match (&self.etcd_user, &self.etcd_password_file) {
            (Some(u), Some(p)) => {
                let password = rollcall_protocol::read_secret_file("--etcd-password-file", p)
                    .map_err(ConfigError)?;
                Some((u.clone(), password))
            }
            _ => None,
        };
        Ok((
            crate::store::etcd::client::EtcdOptions {
                endpoints: self.etcd_endpoints.clone(),
                ca_pem,
                identity_pem,
                user,
                request_timeout,
            },
            prefix,
        ))
    }
}

/// Where the registry keeps its state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum StoreKind {
    Sled,
    Etcd,
}

/// The default key prefix in etcd.
pub const DEFAULT_ETCD_PREFIX: &str = "/rollcall/";
/// The default lease of the active replica.
pub const DEFAULT_LEASE_TTL: &str = "10s";

/// The etcd backend's settings, validated.
#[derive(Debug, Clone)]
pub struct EtcdConfig {
    pub options: crate::store::etcd::client::EtcdOptions,
    /// Ends with `/`.
    pub prefix: String,
    pub lease_ttl: Duration,
    pub advertise_url: String,
    pub replica_name: String,
}

/// The validated configuration the server runs with.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    pub timing: Timing,
    pub limits: Limits,
    pub tokens: Tokens,
    pub log_format: LogFormat,
    pub shutdown_timeout: Duration,
    pub request_timeout: Duration,
    pub max_body_bytes: usize,
    pub cache_bytes: u64,
    /// Start on a sled that lost acknowledged writes (see `Store::open_checked`).
    pub accept_data_loss: bool,
    pub max_connections: usize,
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_streams_per_connection: u32,
    pub max_watch_wait: Duration,
    pub max_watchers: usize,
    /// Certificate and key paths, when the registry serves HTTPS.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// `None`: sled in `data_dir`.
    pub etcd: Option<EtcdConfig>,
}

/// A setting that cannot work, said in one line.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {0}")]
pub struct ConfigError(pub String);

/// The longest a duration flag may be: far beyond any sane setting, far below what would
/// overflow an instant when added to "now".
const MAX_DURATION: Duration = Duration::from_secs(30 * 24 * 3600);
/// Bounds of the size flags, so that none is accepted and then fails at run time.
const MAX_BODY_BYTES: usize = 16 * 1024 * 1024;
const MIN_CACHE_BYTES: u64 = 1024 * 1024;
const MAX_CACHE_BYTES: u64 = 64 * 1024 * 1024 * 1024;
const MAX_CONNECTIONS: usize = 1_000_000;
/// HTTP/2 allows 2^31 - 1; beyond a few thousand, one connection is a denial of service.
const MAX_STREAMS_PER_CONNECTION: u32 = 10_000;
const MAX_WATCHERS: usize = 1_000_000;

/// `name` at most [`MAX_DURATION`].
fn check_duration(name: &str, value: Duration) -> Result<(), ConfigError> {
    if value > MAX_DURATION {
        return Err(ConfigError(format!(
            "{name} is {}; it must be at most {}",
            humantime::format_duration(value),
            humantime::format_duration(MAX_DURATION)
        )));
    }
    Ok(())
}

/// A token the registry can match: not empty, no white space around it (a token with a
/// leading space would be accepted here and then never match the trimmed header).
fn check_token(name: &str, token: &str) -> Result<(), ConfigError> {
    if token.trim().is_empty() {
        return Err(ConfigError(format!("{name} is empty")));
    }
    if token.trim() != token {
        return Err(ConfigError(format!(
            "{name} has white space before or after it; remove it (the Authorization header's token is matched without it)"
        )));
    }
    Ok(())
}

impl ServeArgs {
    pub fn validate(self) -> Result<Config, ConfigError> {
        let etcd = self.etcd_config()?;
        let err = |s: String| Err(ConfigError(s));
        for (name, value) in [
            ("--ttl", Some(self.ttl)),
            ("--interval", Some(self.interval)),
            ("--startup-grace", self.startup_grace),
            ("--quiet-period", self.quiet_period),
            ("--rebootstrap-after", self.rebootstrap_after),
            ("--raft-lost-after", self.raft_lost_after),
            ("--shutdown-timeout", Some(self.shutdown_timeout)),
            ("--request-timeout", Some(self.request_timeout)),
            ("--header-read-timeout", Some(self.header_read_timeout)),
            ("--idle-timeout", Some(self.idle_timeout)),
            ("--max-watch-wait", Some(self.max_watch_wait)),
        ] {
            if let Some(value) = value {
                check_duration(name, value)?;
            }
        }
        if self.max_body_bytes > MAX_BODY_BYTES {
            return err(format!("--max-body-bytes must be at most {MAX_BODY_BYTES}"));
        }
        if !(MIN_CACHE_BYTES..=MAX_CACHE_BYTES).contains(&self.cache_bytes) {
            return err(format!(
                "--cache-bytes is {}; it must be from {MIN_CACHE_BYTES} (1 MiB) to {MAX_CACHE_BYTES} (64 GiB)",
                self.cache_bytes
            ));
        }
        if self.max_connections > MAX_CONNECTIONS {
            return err(format!(
                "--max-connections must be at most {MAX_CONNECTIONS}"
            ));
        }
        if self.ttl < Duration::from_secs(1) {
            return err(format!(
                "--ttl is {}; it must be at least 1s",
                humantime::format_duration(self.ttl)
            ));
        }
        if self.interval.is_zero() || self.interval >= self.ttl {
            return err(format!(
                "--interval ({}) must be above zero and shorter than --ttl ({}), or members expire between heartbeats",
                humantime::format_duration(self.interval),
                humantime::format_duration(self.ttl)
            ));
        }
        let startup_grace = self.startup_grace.unwrap_or(self.interval * 2);
        if startup_grace < self.interval {
            return err(format!(
                "--startup-grace ({}) must be at least one --interval ({}), so that running members re-register before any bootstrap",
                humantime::format_duration(startup_grace),
                humantime::format_duration(self.interval)
            ));
        }
        let quiet_period = self.quiet_period.unwrap_or(self.ttl);
        if quiet_period < self.interval {
            return err(format!(
                "--quiet-period ({}) must be at least one --interval ({})",
                humantime::format_duration(quiet_period),
                humantime::format_duration(self.interval)
            ));
        }
        if let Some(after) = self.rebootstrap_after {
            if after < quiet_period {
                return err(format!(
                    "--rebootstrap-after ({}) must be at least the quiet period ({})",
                    humantime::format_duration(after),
                    humantime::format_duration(quiet_period)
                ));
            }
        }
        let raft_lost_after = self
            .raft_lost_after
            .unwrap_or(DEFAULT_RAFT_LOST_AFTER.max(self.ttl));
        if raft_lost_after < self.ttl {
            return err(format!(
                "--raft-lost-after ({}) must be at least --ttl ({}): a server is live until its TTL passes",
                humantime::format_duration(raft_lost_after),
                humantime::format_duration(self.ttl)
            ));
        }
        if self.max_body_bytes < 1024 {
            return err("--max-body-bytes must be at least 1024".into());
        }
        if self.max_connections == 0 {
            return err("--max-connections must be at least 1".into());
        }
        if !(1..=MAX_WATCHERS).contains(&self.max_watchers) {
            return err(format!(
                "--max-watchers is {}; it must be from 1 to {MAX_WATCHERS}",
                self.max_watchers
            ));
        }
        if self.header_read_timeout.is_zero() {
            return err("--header-read-timeout must be above zero".into());
        }
        if self.idle_timeout.is_zero() {
            return err("--idle-timeout must be above zero".into());
        }
        if !(1..=MAX_STREAMS_PER_CONNECTION).contains(&self.max_streams_per_connection) {
            return err(format!(
                "--max-streams-per-connection is {}; it must be from 1 to {MAX_STREAMS_PER_CONNECTION}",
                self.max_streams_per_connection
            ));
        }
        if self.max_clusters == 0 || self.max_members_per_cluster == 0 {
            return err("--max-clusters and --max-members-per-cluster must be at least 1".into());
        }
        let max_bootstrapped_clusters = self.max_bootstrapped_clusters.unwrap_or(self.max_clusters);
        if max_bootstrapped_clusters == 0 {
            return err("--max-bootstrapped-clusters must be at least 1".into());
        }
        if !(1..=MAX_MAX_MEMBERS).contains(&self.max_members) {
            return err(format!(
                "--max-members is {}; it must be from 1 to {MAX_MAX_MEMBERS}",
                self.max_members
            ));
        }
        if !(1024..=MAX_MAX_METADATA_BYTES).contains(&self.max_metadata_bytes) {
            return err(format!(
                "--max-metadata-bytes is {}; it must be from 1024 to {MAX_MAX_METADATA_BYTES} (64 GiB)",
                self.max_metadata_bytes
            ));
        }
        let file_token = match &self.token_file {
            Some(path) => Some(
                rollcall_protocol::read_secret_file("--token-file", path).map_err(ConfigError)?,
            ),
            None => None,
        };
        let mut cluster_tokens = self.cluster_tokens;
        if let Some(path) = &self.cluster_tokens_file {
            let text = std::fs::read_to_string(path).map_err(|e| {
                ConfigError(format!(
                    "--cluster-tokens-file: cannot read {}: {e}",
                    path.display()
                ))
            })?;
            cluster_tokens.extend(
                text.lines()
                    .map(|l| l.strip_suffix('\r').unwrap_or(l))
                    .filter(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
                    .map(str::to_string),
            );
        }
        let registry = match self.token.or(file_token) {
            Some(t) => {
                check_token("--token", &t)?;
                Some(Secret::new(t))
            }
            None => None,
        };
        let mut clusters = HashMap::new();
        for item in cluster_tokens {
            let Some((cluster, token)) = item.split_once('=') else {
                return err("--cluster-token must be CLUSTER=TOKEN".into());
            };
            if let Err(e) = rollcall_protocol::validate_name(NameKind::Cluster, cluster) {
                return err(format!("--cluster-token: {e}"));
            }
            check_token(&format!("--cluster-token for {cluster:?}"), token)?;
            if clusters
                .insert(cluster.to_string(), Secret::new(token.to_string()))
                .is_some()
            {
                return err(format!("--cluster-token names cluster {cluster:?} twice"));
            }
        }
        Ok(Config {
            listen: self.listen,
            data_dir: self.data_dir,
            timing: Timing {
                ttl: self.ttl,
                interval: self.interval,
                startup_grace,
                quiet_period,
                rebootstrap_after: self.rebootstrap_after,
                raft_lost_after,
            },
            limits: Limits {
                max_clusters: self.max_clusters,
                max_bootstrapped_clusters,
                max_members_per_cluster: self.max_members_per_cluster,
                max_members: self.max_members,
                max_metadata_bytes: self.max_metadata_bytes,
            },
            tokens: Tokens { registry, clusters },
            log_format: self.log_format,
            shutdown_timeout: self.shutdown_timeout,
            request_timeout: self.request_timeout,
            max_body_bytes: self.max_body_bytes,
            cache_bytes: self.cache_bytes,
            accept_data_loss: self.accept_data_loss,
            max_connections: self.max_connections,
            header_read_timeout: self.header_read_timeout,
            idle_timeout: self.idle_timeout,
            max_streams_per_connection: self.max_streams_per_connection,
            max_watch_wait: self.max_watch_wait,
            max_watchers: self.max_watchers,
            tls: self.tls_cert.zip(self.tls_key),
            etcd,
        })
    }

    /// The etcd settings with --store etcd (files read now, so that a bad one is a
    /// configuration error), or `None` with sled (etcd flags then refused).
    fn etcd_config(&self) -> Result<Option<EtcdConfig>, ConfigError> {
        let err = |s: String| Err(ConfigError(s));
        if self.store == StoreKind::Sled {
            if !self.etcd.etcd_endpoints.is_empty() {
                return err("--etcd-endpoints needs --store etcd".into());
            }
            return Ok(None);
        }
        if self.lease_ttl < Duration::from_secs(2) || self.lease_ttl > Duration::from_secs(300) {
            return err(format!(
                "--lease-ttl ({}) must be from 2s to 5m: etcd grants no shorter lease on default settings, and a longer one keeps clients waiting after a failover",
                humantime::format_duration(self.lease_ttl)
            ));
        }
        let (options, prefix) = self
            .etcd
            .options((self.lease_ttl / 3).clamp(Duration::from_secs(1), Duration::from_secs(5)))
            .map_err(|e| ConfigError(format!("--store etcd: {}", e.0)))?;
        let host = host_name();
        let scheme = if self.tls_cert.is_some() {
            "https"
        } else {
            "http"
        };
        let advertise_url = match &self.advertise_url {
            Some(u) if u.starts_with("http://") || u.starts_with("https://") => {
                u.trim_end_matches('/').to_string()
            }
            Some(u) => {
                return err(format!(
                    "--advertise-url {u:?} must start with http:// or https://"
                ))
            }
            None if !self.listen.ip().is_unspecified() => format!("{scheme}://{}", self.listen),
            None => format!("{scheme}://{host}:{}", self.listen.port()),
        };
        let replica_name = self.replica_name.clone().unwrap_or(host);
        if let Err(e) = rollcall_protocol::validate_name(NameKind::Node, &replica_name) {
            return err(format!("--replica-name: {e}"));
        }
        Ok(Some(EtcdConfig {
            options,
            prefix,
            lease_ttl: self.lease_ttl,
            advertise_url,
            replica_name,
        }))
    }
}

/// This machine's host name (a container's is its ID or its `hostname:`), else `registry`.
fn host_name() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "registry".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Config, ConfigError> {
        let mut all = vec!["rollcall-registry"];
        all.extend_from_slice(args);
        Cli::try_parse_from(all)
            .map_err(|e| ConfigError(e.to_string()))?
            .serve
            .validate()
    }

    #[test]
    fn defaults_are_valid() {
        let c = parse(&[]).expect("defaults");
        assert_eq!(c.timing.ttl, Duration::from_secs(15));
        assert_eq!(c.timing.interval, Duration::from_secs(5));
        assert_eq!(c.timing.startup_grace, Duration::from_secs(10));
        assert_eq!(c.timing.quiet_period, Duration::from_secs(15));
        assert_eq!(c.timing.raft_lost_after, Duration::from_secs(300));
        let long_ttl = parse(&["--ttl", "10m"]).expect("a TTL above 5m");
        assert_eq!(long_ttl.timing.raft_lost_after, Duration::from_secs(600));
        assert!(c.tokens.is_open());
        assert_eq!(c.idle_timeout, Duration::from_secs(120));
        assert_eq!(c.max_streams_per_connection, 100);
        assert_eq!(c.limits.max_bootstrapped_clusters, DEFAULT_MAX_CLUSTERS);
        let few = parse(&["--max-clusters", "3"]).expect("a smaller --max-clusters");
        assert_eq!(
            few.limits.max_bootstrapped_clusters, 3,
            "--max-bootstrapped-clusters follows --max-clusters unless set"
        );
    }

    #[test]
    fn nonsense_is_refused_with_a_reason() {
        for args in [
            &["--ttl", "500ms"][..],
            &["--ttl", "10s", "--interval", "10s"],
            &["--interval", "5s", "--startup-grace", "1s"],
            &["--quiet-period", "1s"],
            &["--cluster-token", "nobody"],
            &["--cluster-token", "a=x,a=y"],
            &["--cluster-token", "bad name=x"],
            &["--token", " "],
            &["--token", " T"],
            &["--token", "T "],
            &["--cluster-token", "a= x"],
            &["--ttl", "fifteen"],
            // Accepted once, then a panic at run time: now refused at start.
            &["--ttl", "10000000000000000000s"],
            &["--header-read-timeout", "10000000000000000000s"],
            &["--max-watch-wait", "1000000h"],
            &["--rebootstrap-after", "10000000000000000000s"],
            &["--cache-bytes", "0"],
            &["--max-body-bytes", "1000000000"],
            &["--max-connections", "100000000"],
            &["--idle-timeout", "0s"],
            &["--idle-timeout", "1000000h"],
            &["--max-streams-per-connection", "0"],
            &["--max-streams-per-connection", "100000"],
            &["--max-watchers", "0"],
            &["--max-watchers", "100000000"],
            // A server is live for a TTL: it cannot be lost sooner.
            &["--ttl", "10s", "--raft-lost-after", "9s"],
            &["--raft-lost-after", "1000000h"],
            &["--max-bootstrapped-clusters", "0"],
            &["--max-members", "0"],
            &["--max-members", "1000000000"],
            &["--max-metadata-bytes", "100"],
        ] {
            assert!(parse(args).is_err(), "{args:?} was accepted");
        }
    }

    #[test]
    fn accept_data_loss_is_off_unless_asked_for() {
        assert!(!parse(&[]).expect("defaults").accept_data_loss);
        assert!(
            parse(&["--accept-data-loss"])
                .expect("flag")
                .accept_data_loss
        );
    }

    #[test]
    fn cluster_tokens_parse() {
        let c = parse(&["--cluster-token", "a=x,b=y", "--token", "root"]).expect("tokens");
        assert_eq!(c.tokens.clusters.len(), 2);
        assert!(c.tokens.registry.is_some());
    }

    #[test]
    fn tokens_come_from_secret_files_too() {
        let dir = tempfile::tempdir().expect("tempdir");
        let token = dir.path().join("token");
        std::fs::write(&token, "root\n").expect("write");
        let clusters = dir.path().join("clusters");
        std::fs::write(&clusters, "# one a line\na=x\r\n\nb=y\n").expect("write");
        let token_arg = token.display().to_string();
        let clusters_arg = clusters.display().to_string();
        let c = parse(&[
            "--token-file",
            &token_arg,
            "--cluster-tokens-file",
            &clusters_arg,
            "--cluster-token",
            "c=z",
        ])
        .expect("files");
        assert!(c.tokens.registry.is_some());
        assert_eq!(c.tokens.clusters.len(), 3);
        // Both a token and a token file: refused by the parser, not silently one of them.
        assert!(Cli::try_parse_from([
            "rollcall-registry",
            "--token",
            "t",
            "--token-file",
            &token_arg
        ])
        .is_err());
        std::fs::write(&token, " root\n").expect("write");
        let e = parse(&["--token-file", &token_arg]).expect_err("white space");
        assert!(e.0.starts_with("--token-file: "), "{e}");
        let missing = dir.path().join("missing").display().to_string();
        assert!(parse(&["--cluster-tokens-file", &missing]).is_err());
    }
}
