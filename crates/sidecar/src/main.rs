//! `rollcall-sidecar`: parse the configuration, start logging, run, exit with the code.

use clap::Parser as _;
use rollcall_sidecar::config::{Cli, Command, LogFormat, Settings};
use rollcall_sidecar::exit::{EXIT_CONFIG, EXIT_INTERNAL};
use tracing::Instrument as _;

fn main() {
    let mut cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) if error.use_stderr() => {
            // A bad flag or variable is a configuration error, with the exit code of one.
            let _ = error.print();
            std::process::exit(EXIT_CONFIG);
        }
        // --help and --version.
        Err(error) => error.exit(),
    };
    rollcall_logging::init(match cli.common.log_format {
        LogFormat::Text => rollcall_logging::Format::Text,
        LogFormat::Json => rollcall_logging::Format::Json,
    });
    // `members` only reads the registry and never sends this node's address, so it must not
    // need one: on a machine whose /etc/hosts has no address for its hostname (a laptop
    // running start.sh) it works too.
    if matches!(cli.command, Command::Members(_)) && cli.common.advertise.is_none() {
        cli.common.advertise = Some(std::net::Ipv4Addr::LOCALHOST.to_string());
    }
    // `--advertise-subnet`: the address this host has in the raft's network, chosen among its
    // interfaces here (the pure choice is config::address_in_subnet), before the settings.
    if cli.common.advertise.is_none() {
        if let Some(subnet) = cli
            .common
            .advertise_subnet
            .clone()
            .filter(|s| !s.is_empty())
        {
            let interfaces = rollcall_sidecar::engine::host_interfaces();
            match rollcall_sidecar::config::address_in_subnet(&interfaces, &subnet) {
                Ok((interface, ip)) => {
                    tracing::info!(%interface, %ip, %subnet, "advertising this host's address in --advertise-subnet");
                    cli.common.advertise = Some(ip.to_string());
                }
                Err(error) => {
                    tracing::error!(%error, "invalid configuration");
                    std::process::exit(EXIT_CONFIG);
                }
            }
        }
    }
    let agent_args = match &cli.command {
        Command::Run(args) => args.agent_args.clone(),
        _ => Vec::new(),
    };
    let hostname = nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok());
    let etc_hosts = std::fs::read_to_string("/etc/hosts").ok();
    let settings =
        match Settings::from_args(&cli.common, agent_args, hostname, etc_hosts.as_deref()) {
            Ok(settings) => settings,
            Err(error) => {
                tracing::error!(%error, "invalid configuration");
                std::process::exit(EXIT_CONFIG);
            }
        };
    // One thread: the sidecar waits on the network and on signals, and a single thread
    // keeps the reaper from racing `Command::spawn` (see supervisor.rs).
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            tracing::error!(%error, "cannot start the async runtime");
            std::process::exit(EXIT_INTERNAL);
        }
    };
    // Every log line carries the node and the cluster.
    let span = tracing::info_span!("sidecar", node = %settings.node, cluster = %settings.cluster);
    let code = match runtime
        .block_on(rollcall_sidecar::dispatch(cli.command, settings).instrument(span))
    {
        Ok(code) => code,
        Err(exit) => {
            tracing::error!(code = exit.code, error = %exit.message, "rollcall-sidecar failed");
            exit.code
        }
    };
    // Background tasks (the reaper) must not keep the process alive.
    runtime.shutdown_background();
    std::process::exit(code);
}
