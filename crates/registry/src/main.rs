//! The `rollcall-registry` binary: parse flags, start tracing, serve until a signal. The
//! subcommands serve scripts, operators and Docker instead: `healthcheck` asks a running
//! registry, `generation` and `reset` are the operator's reset of a cluster, `resize` changes
//! a known raft's size, and `defaults` prints the settings' defaults.

use std::io::Write as _;
use std::process::ExitCode;

use clap::{CommandFactory as _, FromArgMatches as _};
use rollcall_registry::config::{Cli, Command, LogFormat};
use rollcall_registry::store::DataLossRefused;

/// Exit codes (BSD sysexits): 0 clean stop, 1 runtime failure, 64 bad configuration, 65 sled
/// lost acknowledged writes (EX_DATAERR; `--accept-data-loss` starts anyway); `reset` and
/// `resize` also exit 65 when the registry refused them.
const EXIT_FAILURE: u8 = 1;
const EXIT_USAGE: u8 = 64;
const EXIT_DATA_LOSS: u8 = 65;

/// jemalloc instead of glibc's malloc: under load glibc's malloc took 18% of the registry's
/// CPU (arena lock waits included); BENCHMARKS.md's analysis has the profiles and figures.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    let matches = Cli::command().subcommand(defaults_command()).get_matches();
    if let Some(("defaults", args)) = matches.subcommand() {
        let names: Vec<&String> = args.get_many("name").into_iter().flatten().collect();
        return print_defaults(&names);
    }
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    match cli.command {
        Some(Command::Healthcheck { url }) => return healthcheck(&url),
        Some(Command::Generation { cluster, url }) => return generation(&url, &cluster),
        Some(Command::Reset {
            cluster,
            generation,
            force,
            reason,
            url,
            token,
        }) => {
            let request = rollcall_protocol::ResetRequest {
                generation,
                force,
                reason,
            };
            return reset(&url, token, &cluster, &request);
        }
        Some(Command::Resize {
            cluster,
            expect,
            generation,
            reason,
            url,
            token,
        }) => {
            let request = rollcall_protocol::ResizeRequest {
                expect,
                generation,
                reason,
            };
            return resize(&url, token, &cluster, &request);
        }
        Some(Command::Migrate { data_dir, etcd }) => return migrate(&data_dir, &etcd),
        None => {}
    }
    let config = match cli.serve.validate() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("rollcall-registry: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    if let Err(e) = rollcall_registry::fd_limit::ensure_for(config.max_connections) {
        eprintln!("rollcall-registry: invalid configuration: {e}");
        return ExitCode::from(EXIT_USAGE);
    }
    rollcall_logging::init(match config.log_format {
        LogFormat::Text => rollcall_logging::Format::Text,
        LogFormat::Json => rollcall_logging::Format::Json,
    });
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("rollcall-registry: cannot start the async runtime: {e}");
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    let result = runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", config.listen))?;
        rollcall_registry::run(config, listener, rollcall_registry::shutdown_signal()).await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.is::<DataLossRefused>() => {
            tracing::error!("{e}");
            ExitCode::from(EXIT_DATA_LOSS)
        }
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "rollcall-registry stopped");
            ExitCode::from(EXIT_FAILURE)
        }
    }
}

/// `migrate`: copies a sled data directory into etcd and says what it copied.
fn migrate(data_dir: &std::path::Path, etcd: &rollcall_registry::config::EtcdArgs) -> ExitCode {
    let (options, prefix) = match etcd.options(std::time::Duration::from_secs(5)) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("rollcall-registry migrate: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("rollcall-registry migrate: cannot start the async runtime: {e}");
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    match runtime.block_on(rollcall_registry::migrate::migrate(
        data_dir, &options, &prefix,
    )) {
        Ok(c) => {
            let mut out = std::io::stdout().lock();
            let _ = writeln!(
                out,
                "copied {} member(s), {} claim(s), {} grant(s) and {} history record(s) from {} into etcd under {prefix}; start the registry with --store etcd --etcd-prefix {prefix}",
                c.members,
                c.claims,
                c.grants,
                c.histories,
                data_dir.display()
            );
            ExitCode::SUCCESS
        }
        Err(e) if e.is::<DataLossRefused>() => {
            eprintln!("rollcall-registry migrate: {e:#}");
            ExitCode::from(EXIT_DATA_LOSS)
        }
        Err(e) => {
            eprintln!("rollcall-registry migrate: {e:#}");
            ExitCode::from(EXIT_FAILURE)
        }
    }
}

/// A current-thread runtime and a client for the one-request subcommands. `url` may list the
/// registry's replicas separated by commas: the client fails over between them.
fn one_request(
    url: &str,
    token: Option<String>,
    name: &str,
) -> Option<(tokio::runtime::Runtime, rollcall_protocol::RegistryClient)> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| eprintln!("rollcall-registry {name}: cannot start the async runtime: {e}"))
        .ok()?;
    let client = rollcall_protocol::RegistryClient::new(url, token)
        .map_err(|e| eprintln!("rollcall-registry {name}: {e}"))
        .ok()?;
    Some((runtime, client))
}

/// `rollcall-registry generation`: the cluster's current generation, a number on stdout (0 for a
/// cluster the registry does not know).
fn generation(url: &str, cluster: &str) -> ExitCode {
    let Some((runtime, client)) = one_request(url, None, "generation") else {
        return ExitCode::from(EXIT_FAILURE);
    };
    let generation = match runtime.block_on(client.cluster(cluster)) {
        Ok(detail) => detail
            .raft
            .map(|r| r.generation)
            .or(detail.bootstrap.map(|b| b.generation))
            .unwrap_or(0),
        Err(rollcall_protocol::ClientError::Api { status: 404, .. }) => 0,
        Err(e) => {
            eprintln!("rollcall-registry generation: {e}");
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    match writeln!(std::io::stdout().lock(), "{generation}") {
        Ok(()) => ExitCode::SUCCESS,
        Err(_) => ExitCode::from(EXIT_FAILURE),
    }
}

/// Exit code of `reset` when the registry refused it (sysexits `EX_DATAERR`).
const EXIT_REFUSED: u8 = 65;

/// `rollcall-registry reset`: one request to the registry's reset endpoint.
fn reset(
    url: &str,
    token: Option<String>,
    cluster: &str,
    request: &rollcall_protocol::ResetRequest,
) -> ExitCode {
    let Some((runtime, client)) = one_request(url, token, "reset") else {
        return ExitCode::from(EXIT_FAILURE);
    };
    match runtime.block_on(client.reset(cluster, request)) {
        Ok(answer) => {
            // The answer is this command's output, for scripts; stdout holds nothing else.
            let json = serde_json::to_string_pretty(&answer).unwrap_or_default();
            if let Err(e) = writeln!(std::io::stdout().lock(), "{json}") {
                eprintln!("rollcall-registry reset: done, but cannot print the answer: {e}");
            }
            ExitCode::SUCCESS
        }
        Err(e) if e.is_transient() => {
            eprintln!("rollcall-registry reset: {e}");
            ExitCode::from(EXIT_FAILURE)
        }
        Err(e) => {
            eprintln!("rollcall-registry reset: refused: {e}");
            ExitCode::from(EXIT_REFUSED)
        }
    }
}

/// `rollcall-registry resize`: one request to the registry's resize endpoint. Exits 0 with the
/// answer as JSON on stdout, 65 when the registry refused it (4xx), 1 when it could not ask.
fn resize(
    url: &str,
    token: Option<String>,
    cluster: &str,
    request: &rollcall_protocol::ResizeRequest,
) -> ExitCode {
    if let Err(e) = request.validate() {
        eprintln!("rollcall-registry resize: {e}");
        return ExitCode::from(EXIT_USAGE);
    }
    if let Err(e) =
        rollcall_protocol::validate_name(rollcall_protocol::validate::NameKind::Cluster, cluster)
    {
        eprintln!("rollcall-registry resize: {e}");
        return ExitCode::from(EXIT_USAGE);
    }
    let Some((runtime, client)) = one_request(url, token, "resize") else {
        return ExitCode::from(EXIT_FAILURE);
    };
    match runtime.block_on(client.resize(cluster, request)) {
        Ok(answer) => {
            // The answer is this command's output, for scripts; stdout holds nothing else.
            let json = serde_json::to_string_pretty(&answer).unwrap_or_default();
            if let Err(e) = writeln!(std::io::stdout().lock(), "{json}") {
                eprintln!("rollcall-registry resize: done, but cannot print the answer: {e}");
            }
            ExitCode::SUCCESS
        }
        Err(e) if e.is_transient() => {
            eprintln!("rollcall-registry resize: {e}");
            ExitCode::from(EXIT_FAILURE)
        }
        Err(e) => {
            eprintln!("rollcall-registry resize: refused: {e}");
            ExitCode::from(EXIT_REFUSED)
        }
    }
}

fn healthcheck(url: &str) -> ExitCode {
    // A healthcheck asks about one registry: given a list, the client would fail over and a
    // healthy replica would vouch for a dead one.
    if url.contains(',') {
        eprintln!("unhealthy: healthcheck asks one registry, not a list: {url}");
        return ExitCode::from(EXIT_FAILURE);
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(_) => return ExitCode::from(EXIT_FAILURE),
    };
    let client = match rollcall_protocol::RegistryClient::new(url, None) {
        Ok(c) => c,
        Err(_) => return ExitCode::from(EXIT_FAILURE),
    };
    match runtime.block_on(client.health()) {
        Ok(h) if h.status == "ok" => ExitCode::SUCCESS,
        Ok(h) => {
            eprintln!("unhealthy: storage {}", h.storage);
            ExitCode::from(EXIT_FAILURE)
        }
        Err(e) => {
            eprintln!("unhealthy: {e}");
            ExitCode::from(EXIT_FAILURE)
        }
    }
}

/// `defaults`: what scripts and operators need to know of the registry's settings without
/// repeating them. The values come from the flags' own definitions, so they cannot drift.
fn defaults_command() -> clap::Command {
    clap::Command::new("defaults")
        .about(
            "Prints each setting's default as NAME=VALUE lines (an env file), then MAX_EXPECT, \
             the most servers a claim may ask for; with NAMEs, only their values, one a line",
        )
        .arg(
            clap::Arg::new("name")
                .value_name("NAME")
                .num_args(0..)
                .help("Print only these values (for example ROLLCALL_INTERVAL)"),
        )
}

/// Every setting with a fixed default, by its environment variable, then the protocol's
/// limit on `expect`. Settings whose default is derived from others (the startup grace, the
/// quiet period and `--raft-lost-after`) or that have none (tokens, TLS) are left out.
fn defaults() -> Vec<(String, String)> {
    let mut defaults: Vec<(String, String)> = Cli::command()
        .get_arguments()
        .filter_map(|arg| {
            let variable = arg.get_env()?.to_str()?;
            let values = arg.get_default_values();
            if values.is_empty() {
                return None;
            }
            let values: Vec<_> = values.iter().map(|v| v.to_string_lossy()).collect();
            Some((variable.to_string(), values.join(",")))
        })
        .collect();
    defaults.push((
        "MAX_EXPECT".to_string(),
        rollcall_protocol::validate::MAX_EXPECT.to_string(),
    ));
    defaults
}

fn print_defaults(names: &[&String]) -> ExitCode {
    let defaults = defaults();
    let mut lines = Vec::new();
    if names.is_empty() {
        lines.extend(
            defaults
                .iter()
                .map(|(name, value)| format!("{name}={value}")),
        );
    }
    for name in names {
        match defaults.iter().find(|(known, _)| known == *name) {
            Some((_, value)) => lines.push(value.clone()),
            None => {
                eprintln!("rollcall-registry defaults: {name} has no fixed default");
                return ExitCode::from(EXIT_USAGE);
            }
        }
    }
    let mut stdout = std::io::stdout().lock();
    for line in lines {
        if writeln!(stdout, "{line}").is_err() {
            return ExitCode::from(EXIT_FAILURE);
        }
    }
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::*;

    fn default_of(name: &str) -> String {
        let defaults = defaults();
        let found = defaults.iter().find(|(known, _)| known == name);
        found.map(|(_, value)| value.clone()).unwrap_or_default()
    }

    #[test]
    fn defaults_are_the_values_the_registry_runs_with() {
        let config = Cli::try_parse_from(["rollcall-registry"])
            .expect("no flags")
            .serve
            .validate()
            .expect("the defaults are valid");
        let parse = |name| humantime::parse_duration(&default_of(name)).expect(name);
        assert_eq!(parse("ROLLCALL_TTL"), config.timing.ttl);
        assert_eq!(parse("ROLLCALL_INTERVAL"), config.timing.interval);
        assert_eq!(default_of("ROLLCALL_LISTEN"), config.listen.to_string());
        assert_eq!(default_of("ROLLCALL_LOG_FORMAT"), "text");
        assert_eq!(
            default_of("ROLLCALL_CACHE_BYTES"),
            config.cache_bytes.to_string()
        );
        assert_eq!(
            default_of("MAX_EXPECT"),
            rollcall_protocol::validate::MAX_EXPECT.to_string()
        );
        assert_eq!(default_of("ROLLCALL_TOKEN"), "", "no default, not listed");
    }
}
