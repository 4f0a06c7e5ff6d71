//! Command-line flags (each with a `ROLLCALL_*` environment variable), validated once into a
//! typed [`Config`]. A bad setting stops the binary with exit code 64 and one clear line.

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
/// sled's page cache. Reads are served from memory, so sled's cache only speeds up its own
/// writes: side by side, 16 MiB gave ~7% fewer registrations per second than 32 MiB and a
/// ~22 MiB lower peak RSS with ~145k members stored (BENCHMARKS.md, change 10).
pub const DEFAULT_CACHE_BYTES: u64 = 16 * 1024 * 1024;
pub const DEFAULT_MAX_CONNECTIONS: usize = 4096;
pub const DEFAULT_HEADER_READ_TIMEOUT: &str = "10s";
/// Consul's limit on a blocking query's wait.
pub const DEFAULT_MAX_WATCH_WAIT: &str = "10m";

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
        /// The registry to ask.
        #[arg(
            long,
            env = "ROLLCALL_RESET_URL",
            default_value = "http://127.0.0.1:7400"
        )]
        url: String,
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
        /// The registry to ask (inside the registry's container, the default is right).
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
    /// Registry-wide bearer token for writes. Without any token, writes are open.
    #[arg(long, env = "ROLLCALL_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
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
    /// Most members (and claimants) one cluster holds.
    #[arg(long, env = "ROLLCALL_MAX_MEMBERS_PER_CLUSTER", default_value_t = DEFAULT_MAX_MEMBERS_PER_CLUSTER)]
    pub max_members_per_cluster: usize,
    /// Most open connections; one more is answered 503 and closed.
    #[arg(long, env = "ROLLCALL_MAX_CONNECTIONS", default_value_t = DEFAULT_MAX_CONNECTIONS)]
    pub max_connections: usize,
    /// A client must send its request headers within this time (and finish a TLS handshake).
    #[arg(long, env = "ROLLCALL_HEADER_READ_TIMEOUT", default_value = DEFAULT_HEADER_READ_TIMEOUT, value_parser = humantime::parse_duration)]
    pub header_read_timeout: Duration,
    /// PEM certificate chain: serve HTTPS instead of HTTP (with --tls-key).
    #[arg(long, env = "ROLLCALL_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, env = "ROLLCALL_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Blocking reads (`?index=&wait=`) wait at most this long, whatever they ask for.
    #[arg(long, env = "ROLLCALL_MAX_WATCH_WAIT", default_value = DEFAULT_MAX_WATCH_WAIT, value_parser = humantime::parse_duration)]
    pub max_watch_wait: Duration,
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
    pub max_watch_wait: Duration,
    /// Certificate and key paths, when the registry serves HTTPS.
    pub tls: Option<(PathBuf, PathBuf)>,
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
        let err = |s: String| Err(ConfigError(s));
        for (name, value) in [
            ("--ttl", Some(self.ttl)),
            ("--interval", Some(self.interval)),
            ("--startup-grace", self.startup_grace),
            ("--quiet-period", self.quiet_period),
            ("--rebootstrap-after", self.rebootstrap_after),
            ("--shutdown-timeout", Some(self.shutdown_timeout)),
            ("--request-timeout", Some(self.request_timeout)),
            ("--header-read-timeout", Some(self.header_read_timeout)),
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
        if self.max_body_bytes < 1024 {
            return err("--max-body-bytes must be at least 1024".into());
        }
        if self.max_connections == 0 {
            return err("--max-connections must be at least 1".into());
        }
        if self.header_read_timeout.is_zero() {
            return err("--header-read-timeout must be above zero".into());
        }
        if self.max_clusters == 0 || self.max_members_per_cluster == 0 {
            return err("--max-clusters and --max-members-per-cluster must be at least 1".into());
        }
        let registry = match self.token {
            Some(t) => {
                check_token("--token", &t)?;
                Some(Secret::new(t))
            }
            None => None,
        };
        let mut clusters = HashMap::new();
        for item in self.cluster_tokens {
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
            },
            limits: Limits {
                max_clusters: self.max_clusters,
                max_members_per_cluster: self.max_members_per_cluster,
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
            max_watch_wait: self.max_watch_wait,
            tls: self.tls_cert.zip(self.tls_key),
        })
    }
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
        assert!(c.tokens.is_open());
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
}
