//! rollcall's sidecar: runs a raft agent (Consul or etcd) as PID 1 of its container.
//!
//! It asks the registry which role to take ([`registry_link`]), starts the agent with the right
//! join arguments ([`engine`]), heartbeats while the agent is healthy ([`member_loop`]),
//! and forwards signals, reaps zombies and stops the agent within a timeout
//! ([`supervisor`]). [`run`] ties them together; [`commands`] holds the one-shot
//! subcommands; [`config`] parses flags and `ROLLCALL_*` variables once; [`exit`] lists the
//! exit codes; [`raft_identity`] keeps the raft the agent belongs to in its data directory;
//! [`leave`] is the `leave` subcommand and what `run` does about a member that left;
//! [`alive`] is the liveness check for orchestrators.

pub mod alive;
pub mod commands;
pub mod config;
pub mod dns;
pub mod engine;
pub mod exit;
pub mod leave;
pub mod member_loop;
pub mod raft_identity;
pub mod registry_link;
pub mod run;
pub mod supervisor;

use config::{Command, Settings};
use exit::Exit;

/// Runs one parsed command line and returns the process's exit code.
pub async fn dispatch(command: Command, settings: Settings) -> Result<i32, Exit> {
    match command {
        Command::Run(_) => {
            leave::before_run(&settings)?;
            let after = settings.clone();
            let code = run::run(settings).await?;
            Ok(leave::exit_code_after_run(&after, code))
        }
        Command::Heartbeat(args) => commands::heartbeat(settings, args.role.into()).await,
        Command::Members(args) => {
            commands::members(
                settings,
                args.role.map(Into::into),
                args.format,
                args.follow.then_some(args.wait),
            )
            .await
        }
        Command::Claim => commands::claim(settings).await,
        Command::Leave => leave::leave(settings).await,
        Command::Alive => alive::alive(settings).await,
        Command::ForceNewCluster => leave::request_force_new_cluster(settings),
    }
}
