//! The `rollcall-registry` binary: parse flags, start tracing, serve until a signal.

use std::process::ExitCode;

use clap::Parser;
use rollcall_registry::config::{Cli, Command, LogFormat};

/// Exit codes (BSD sysexits): 0 clean stop, 1 runtime failure, 64 bad configuration.
const EXIT_FAILURE: u8 = 1;
const EXIT_USAGE: u8 = 64;

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
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "rollcall-registry stopped");
            ExitCode::from(EXIT_FAILURE)
        }
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
