//! The `rollcall-registry` binary: parse flags, start tracing, serve until a signal.

use std::process::ExitCode;

use clap::Parser;
use rollcall_registry::config::{Cli, Command, LogFormat};
use rollcall_registry::store::DataLossRefused;
use tracing_subscriber::EnvFilter;

/// Exit codes (BSD sysexits): 0 clean stop, 1 runtime failure, 64 bad configuration, 65 sled
/// lost acknowledged writes (EX_DATAERR; `--accept-data-loss` starts anyway).
const EXIT_FAILURE: u8 = 1;
const EXIT_USAGE: u8 = 64;
const EXIT_DATA_LOSS: u8 = 65;

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(Command::Healthcheck { url }) = cli.command {
        return healthcheck(&url);
    }
    let config = match cli.serve.validate() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("rollcall-registry: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    init_tracing(config.log_format);
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

fn init_tracing(format: LogFormat) {
    let filter = EnvFilter::try_from_env("ROLLCALL_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    // Colours only for a person at a terminal: `docker logs` and files get plain text, and
    // NO_COLOR (no-color.org) turns them off anywhere.
    use std::io::IsTerminal;
    let ansi = std::io::stderr().is_terminal()
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

fn healthcheck(url: &str) -> ExitCode {
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
