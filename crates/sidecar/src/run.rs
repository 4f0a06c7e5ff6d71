//! `rollcall-sidecar run`: decide how to start, start, supervise, stop.
//!
//! 1. Decide: a data directory with raft state restarts the agent from it without claiming
//!    (it must never bootstrap or be added again); otherwise claim a role, waiting out the
//!    registry's startup grace and retrying an unreachable registry up to a limit.
//! 2. Start the member loop (claim renewal, then heartbeats), then prepare the agent's
//!    command (etcd adds its member here) and spawn it.
//! 3. Supervise: forward SIGHUP; on SIGTERM or SIGINT forward it, leave the registry, wait
//!    for the agent up to the stop timeout, then kill it. When the agent exits on its own,
//!    leave the registry and exit with the agent's code.

use std::sync::Arc;
use std::time::Duration;

use nix::sys::signal::Signal;
use rollcall_protocol::GrantedRole;
use tokio::sync::watch;
use tracing::{info, warn, Instrument as _};

use crate::config::Settings;
use crate::engine::{Engine, StartPlan};
use crate::exit::{Exit, EXIT_SIGNAL_BASE};
use crate::member_loop::{interval_from_ms, MemberLoop, FALLBACK_HEARTBEAT_INTERVAL};
use crate::registry_link::RegistryLink;
use crate::supervisor::{start_reaper, Agent, Signals};

/// Runs the sidecar and returns its exit code.
pub async fn run(settings: Settings) -> Result<i32, Exit> {
    let mut signals = Signals::new()?;
    let exits = start_reaper()?;
    let engine = Arc::new(Engine::new(&settings)?);
    let registry = Arc::new(RegistryLink::new(&settings)?);

    let decision = tokio::select! {
        decision = decide(&engine, &registry, &settings) => decision?,
        signal = signals.recv_stop() => {
            info!(signal = %signal, "stopped before the agent started");
            return Ok(EXIT_SIGNAL_BASE + signal as i32);
        }
    };

    let mut member_loop = RunningLoop::start(MemberLoop {
        engine: engine.clone(),
        registry: registry.clone(),
        role: decision.plan.member_role(),
        granted: decision.granted,
        interval: decision.interval,
    });

    let command = tokio::select! {
        command = engine.prepare(&decision.plan, registry.as_ref()) => command,
        signal = signals.recv_stop() => {
            info!(signal = %signal, "stopped while preparing the agent");
            member_loop.stop().await;
            return Ok(EXIT_SIGNAL_BASE + signal as i32);
        }
    };
    let command = match command {
        Ok(command) => command,
        Err(exit) => {
            member_loop.stop().await;
            return Err(exit);
        }
    };
    let mut agent = match Agent::spawn(&command, exits) {
        Ok(agent) => agent,
        Err(exit) => {
            member_loop.stop().await;
            return Err(exit);
        }
    };

    loop {
        tokio::select! {
            code = agent.wait() => {
                info!(code, "the agent exited; leaving the registry");
                member_loop.stop().await;
                registry.leave().await;
                return Ok(code);
            }
            signal = signals.recv() => {
                agent.signal(signal);
                if signal == Signal::SIGHUP {
                    continue;
                }
                info!(signal = %signal, timeout = ?settings.stop_timeout, "stopping: forwarded the signal, leaving the registry, waiting for the agent");
                member_loop.stop().await;
                let (code, ()) = tokio::join!(
                    wait_forwarding(&mut agent, &mut signals, settings.stop_timeout),
                    registry.leave(),
                );
                info!(code, "the agent stopped");
                return Ok(code);
            }
        }
    }
}

/// The member loop's task and the switch that ends it.
struct RunningLoop {
    stop: watch::Sender<bool>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl RunningLoop {
    fn start(member_loop: MemberLoop) -> RunningLoop {
        let (stop, stop_receiver) = watch::channel(false);
        RunningLoop {
            stop,
            task: Some(tokio::spawn(
                member_loop.run(stop_receiver).in_current_span(),
            )),
        }
    }

    /// Ends the loop, so that no heartbeat follows the leave.
    async fn stop(&mut self) {
        let _ = self.stop.send(true);
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

/// Waits for the agent to stop, forwarding further signals, and kills it after `timeout`.
async fn wait_forwarding(agent: &mut Agent, signals: &mut Signals, timeout: Duration) -> i32 {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        tokio::select! {
            code = tokio::time::timeout_at(deadline, agent.wait()) => match code {
                Ok(code) => return code,
                Err(_) => {
                    warn!(timeout = ?timeout, "the agent did not stop in time; killing it");
                    agent.signal(Signal::SIGKILL);
                    return agent.wait().await;
                }
            },
            signal = signals.recv() => agent.signal(signal),
        }
    }
}

/// How the agent starts, and what the registry said.
#[derive(Debug)]
struct Decision {
    plan: StartPlan,
    granted: Option<GrantedRole>,
    interval: Duration,
}

async fn decide(
    engine: &Engine,
    registry: &RegistryLink,
    settings: &Settings,
) -> Result<Decision, Exit> {
    if engine.has_raft_state() {
        info!(
            data_dir = %settings.data_dir.display(),
            "the data directory holds raft state: restarting from it without claiming (a member with its log is never bootstrapped or added again)"
        );
        let join = registry.live_server_addresses().await.unwrap_or_default();
        info!(join = ?join, "live servers the registry knows, for the agent to rejoin");
        return Ok(Decision {
            plan: StartPlan::Restart { join },
            granted: None,
            interval: FALLBACK_HEARTBEAT_INTERVAL,
        });
    }
    let claim = registry
        .claim_at_start(settings.registry_retry_limit)
        .await?;
    let join: Vec<String> = claim.join.iter().map(|t| t.address.clone()).collect();
    info!(
        role = %claim.role,
        reason = %claim.reason,
        join = ?join,
        expect = claim.expect,
        "the registry granted a role"
    );
    let plan = match claim.role {
        GrantedRole::Bootstrap => StartPlan::Bootstrap,
        GrantedRole::Server => StartPlan::Server { join },
        GrantedRole::Agent => StartPlan::Agent { join },
    };
    Ok(Decision {
        plan,
        granted: Some(claim.role),
        interval: interval_from_ms(claim.interval_ms),
    })
}
