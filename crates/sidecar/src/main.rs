//! `rollcall-sidecar`: parse the configuration, start logging, run, exit with the code.

use std::ffi::OsStr;
use std::io::IsTerminal as _;

use clap::Parser as _;
use rollcall_sidecar::config::{Cli, Command, LogFormat, Settings};
use rollcall_sidecar::exit::{EXIT_CONFIG, EXIT_INTERNAL};
use tracing::Instrument as _;
use tracing_subscriber::EnvFilter;

fn main() {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) if error.use_stderr() => {
            // A bad flag or variable is a configuration error, with the exit code of one.
            let _ = error.print();
            std::process::exit(EXIT_CONFIG);
        }
        // --help and --version.
        Err(error) => error.exit(),
    };
    init_tracing(cli.common.log_format);
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

fn init_tracing(format: LogFormat) {
    let filter = EnvFilter::try_from_env("ROLLCALL_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let ansi = use_colours(
        std::io::stderr().is_terminal(),
        std::env::var_os("NO_COLOR").as_deref(),
    );
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// Colour escape codes only for a person at a terminal: `docker logs` and log files get
/// plain text, and `NO_COLOR` set to anything but the empty string turns colours off
/// (<https://no-color.org>).
fn use_colours(stderr_is_terminal: bool, no_color: Option<&OsStr>) -> bool {
    let no_color_set = match no_color {
        Some(value) => !value.is_empty(),
        None => false,
    };
    stderr_is_terminal && !no_color_set
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colours_only_on_a_terminal_and_never_with_no_color() {
        let set = Some(OsStr::new("1"));
        let empty = Some(OsStr::new(""));
        // (stderr is a terminal, NO_COLOR, colours)
        for (terminal, no_color, colours) in [
            (true, None, true),
            (true, empty, true),
            (true, set, false),
            (false, None, false),
            (false, empty, false),
            (false, set, false),
        ] {
            assert_eq!(
                use_colours(terminal, no_color),
                colours,
                "terminal {terminal}, NO_COLOR {no_color:?}"
            );
        }
    }
}
