//! `rollcall-sidecar run`: decide how to start, start, supervise, stop.
//!
//! 1. Decide: a data directory with raft state restarts the agent from it without claiming
//!    (it must never bootstrap or be added again), reporting the raft its identity file
//!    names, unless a live server of the same etcd cluster no longer lists the member the
//!    identity file recorded: a member removed from the raft while it was away moves its
//!    data directory aside (nothing deleted) and claims afresh, as a new member. Otherwise
//!    claim a role, waiting while the registry asks (startup grace, reset
//!    required, conflicts: at most `--claim-wait-limit`) and retrying an unreachable
//!    registry up to a limit, then write the raft the answer names to the identity file.
//! 2. Start the member loop (claim renewal, then heartbeats), then prepare the agent's
//!    command (etcd adds its member here) and spawn it.
//! 3. Supervise: forward SIGHUP; on SIGTERM or SIGINT forward it, leave the registry, wait
//!    for the agent up to the stop timeout, then kill it. When the agent exits on its own,
//!    leave the registry and exit with the agent's code. When the member loop ends because
//!    the registry refused this member as another raft's and never listed it, stop the
//!    agent the same way, move the data directory aside and exit 76.
//! 4. Re-decide: when the member loop ends because an agent must re-decide its role (a
//!    server slot opened, or it stayed unhealthy for `--join-timeout`), stop the agent the
//!    same way, leave the registry and go back to 1: a `server` answer joins the raft, an
//!    `agent` answer starts a gateway again with fresh join targets.
//!
//! A node whose agent cannot be prepared (a join that failed) or started leaves the registry
//! before it exits, so that its server slot is free at once rather than after a TTL.

use std::sync::Arc;
use std::time::Duration;

use nix::sys::signal::Signal;
use rollcall_protocol::GrantedRole;
use tokio::sync::watch;
use tracing::{info, warn, Instrument as _};

use crate::config::{EngineKind, Settings};
use crate::engine::{Engine, RestartCheck, StartPlan};
use crate::exit::{Exit, EXIT_INTERNAL, EXIT_SIGNAL_BASE, EXIT_WRONG_RAFT};
use crate::member_loop::{
    interval_from_ms, LoopEnd, MemberLoop, RedecideRule, FALLBACK_HEARTBEAT_INTERVAL,
};
use crate::raft_identity::{move_data_aside, IdentityStore};
use crate::registry_link::RegistryLink;
use crate::supervisor::{start_reaper, Agent, Signals};

/// How long a sidecar whose member left the raft waits for `leave` to finish (it sends
/// SIGTERM last) before it exits: `leave` runs inside the container, and dies with PID 1.
const LEAVE_FINISH_WAIT: Duration = Duration::from_secs(30);

/// Runs the sidecar and returns its exit code.
pub async fn run(settings: Settings) -> Result<i32, Exit> {
    let mut signals = Signals::new()?;
    let exits = start_reaper()?;
    let engine = Arc::new(Engine::new(&settings)?);
    let registry = Arc::new(RegistryLink::new(&settings)?);
    let identity = Arc::new(IdentityStore::load(
        &settings.data_dir,
        &settings.cluster,
        settings.engine != EngineKind::Exec,
    ));
    let node = Node {
        settings: &settings,
        engine,
        registry,
        identity,
    };
    loop {
        match node.run_role(&mut signals, exits.clone()).await? {
            RoleEnd::Exit(code) => return Ok(code),
            RoleEnd::Redecide => info!("claiming afresh"),
        }
    }
}

/// What `run` works with, for each role it takes in turn.
struct Node<'a> {
    settings: &'a Settings,
    engine: Arc<Engine>,
    registry: Arc<RegistryLink>,
    identity: Arc<IdentityStore>,
}

/// How one role ended.
enum RoleEnd {
    /// The sidecar exits with this code.
    Exit(i32),
    /// The agent stopped and the node left the registry: decide again.
    Redecide,
}

impl Node<'_> {
    /// Decides, starts the agent, supervises it, until the sidecar must exit or the agent
    /// must re-decide its role.
    async fn run_role(
        &self,
        signals: &mut Signals,
        exits: watch::Receiver<crate::supervisor::Exits>,
    ) -> Result<RoleEnd, Exit> {
        let (settings, engine, registry, identity) =
            (self.settings, &self.engine, &self.registry, &self.identity);
        let decision = tokio::select! {
            decision = decide(engine, registry, identity, settings) => decision?,
            signal = signals.recv_stop() => {
                info!(signal = %signal, "stopped before the agent started");
                return Ok(RoleEnd::Exit(EXIT_SIGNAL_BASE + signal as i32));
            }
        };
        if decision.granted.is_some() {
            crate::engine::etcd::cleanup::check_threshold(settings, decision.interval)?;
        }
        engine.set_registry_interval(decision.interval);

        let mut member_loop = RunningLoop::start(MemberLoop {
            engine: engine.clone(),
            registry: registry.clone(),
            role: decision.plan.member_role(),
            granted: decision.granted,
            interval: decision.interval,
            identity: identity.clone(),
            redecide: RedecideRule {
                may_be_server: !settings.agent_only,
                unhealthy_limit: settings.join_timeout,
            },
            dead_member_after: settings.dead_member_after,
        });

        let raft = identity.identity();
        let command = tokio::select! {
            command = engine.prepare(&decision.plan, raft.as_ref(), registry.as_ref()) => command,
            signal = signals.recv_stop() => {
                info!(signal = %signal, "stopped while preparing the agent");
                member_loop.stop().await;
                registry.leave().await;
                return Ok(RoleEnd::Exit(EXIT_SIGNAL_BASE + signal as i32));
            }
            end = member_loop.ended() => match end {
                LoopEnd::WrongRaft(message) => return Err(leave_raft(settings, &message)),
                LoopEnd::Redecide(reason) => {
                    info!(%reason, "re-deciding this node's role before its agent started: leaving the registry");
                    registry.leave().await;
                    return Ok(RoleEnd::Redecide);
                }
                LoopEnd::Stopped => {
                    return Err(Exit::new(EXIT_INTERNAL, "the member loop ended by itself"))
                }
            },
        };
        let command = command
            .and_then(|command| crate::engine::agent_user::run_as_agent_user(settings, command))
            .and_then(|command| Agent::spawn(&command, exits));
        let mut agent = match command {
            Ok(agent) => agent,
            Err(exit) => {
                // A failed join must not hold its server slot for a TTL.
                warn!(code = exit.code, error = %exit.message, "the agent cannot start: leaving the registry before exiting");
                member_loop.stop().await;
                registry.leave().await;
                return Err(exit);
            }
        };

        loop {
            tokio::select! {
                code = agent.wait() => {
                    info!(code, "the agent exited; leaving the registry");
                    member_loop.stop().await;
                    registry.leave().await;
                    if settings.data_dir.join(crate::leave::LEFT_MARKER).exists() {
                        // `leave` removed this member, so etcd stopped by itself; `leave` runs
                        // in this container and dies with it: stay up until it is done (its
                        // SIGTERM is its last step).
                        info!(code, wait = ?LEAVE_FINISH_WAIT, "the agent exited after this member left the raft: waiting for `leave` to finish");
                        tokio::select! {
                            _ = signals.recv_stop() => {}
                            _ = tokio::time::sleep(LEAVE_FINISH_WAIT) => {}
                        }
                    }
                    return Ok(RoleEnd::Exit(code));
                }
                signal = signals.recv() => {
                    agent.signal(signal);
                    if signal == Signal::SIGHUP {
                        continue;
                    }
                    info!(signal = %signal, timeout = ?settings.stop_timeout, "stopping: forwarded the signal, leaving the registry, waiting for the agent");
                    member_loop.stop().await;
                    let (code, ()) = tokio::join!(
                        wait_forwarding(&mut agent, signals, settings.stop_timeout),
                        registry.leave(),
                    );
                    info!(code, "the agent stopped");
                    return Ok(RoleEnd::Exit(code));
                }
                end = member_loop.ended() => match end {
                    LoopEnd::Stopped => continue,
                    LoopEnd::WrongRaft(message) => {
                        // No leave: the registry never listed this member, and a leave by
                        // name could remove a member of the cluster's own raft that has the
                        // same name.
                        warn!(timeout = ?settings.stop_timeout, "stopping the agent: the registry refused this member as another raft's, and never listed it");
                        agent.signal(Signal::SIGTERM);
                        let code = wait_forwarding(&mut agent, signals, settings.stop_timeout).await;
                        info!(code, "the agent stopped");
                        return Err(leave_raft(settings, &message));
                    }
                    LoopEnd::Redecide(reason) => {
                        info!(%reason, timeout = ?settings.stop_timeout, "re-deciding this node's role: stopping the agent, then leaving the registry and claiming afresh");
                        agent.signal(Signal::SIGTERM);
                        let code = tokio::select! {
                            code = agent.wait_or_kill(settings.stop_timeout) => code,
                            signal = signals.recv_stop() => {
                                // The operator stops the node meanwhile: exit, do not claim.
                                info!(signal = %signal, "stopped while re-deciding; not claiming again");
                                let code = agent.wait_or_kill(settings.stop_timeout).await;
                                registry.leave().await;
                                return Ok(RoleEnd::Exit(code));
                            }
                        };
                        info!(code, "the agent stopped; leaving the registry");
                        registry.leave().await;
                        return Ok(RoleEnd::Redecide);
                    }
                },
            }
        }
    }
}

/// Moves the data directory of a member the registry refused as another raft's (and never
/// listed) aside, nothing deleted, and returns the exit that says so: the next start finds
/// no raft state and claims afresh.
fn leave_raft(settings: &Settings, message: &str) -> Exit {
    match move_data_aside(&settings.data_dir) {
        Ok(aside) => Exit::new(
            EXIT_WRONG_RAFT,
            format!(
                "the registry refused this member as another raft's, and never listed it: {message}; its data directory {} was moved to {} (nothing deleted), so the next start claims afresh",
                settings.data_dir.display(),
                aside.display()
            ),
        ),
        Err(error) => Exit::new(
            EXIT_INTERNAL,
            format!(
                "the registry refused this member as another raft's ({message}), but its data directory {} could not be moved aside: {error}",
                settings.data_dir.display()
            ),
        ),
    }
}

/// The member loop's task and the switch that ends it.
struct RunningLoop {
    stop: watch::Sender<bool>,
    task: Option<tokio::task::JoinHandle<LoopEnd>>,
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

    /// Waits for the loop to end by itself (it ends only when this member must leave its
    /// raft); never, once it has ended or been stopped.
    async fn ended(&mut self) -> LoopEnd {
        let Some(task) = self.task.as_mut() else {
            return std::future::pending().await;
        };
        let end = task.await.unwrap_or(LoopEnd::Stopped);
        self.task = None;
        end
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
    identity: &IdentityStore,
    settings: &Settings,
) -> Result<Decision, Exit> {
    if engine.has_raft_state() {
        let record = identity.record();
        info!(
            data_dir = %settings.data_dir.display(),
            raft_generation = record.as_ref().map(|r| r.generation),
            raft_nonce = record.as_ref().map(|r| r.nonce.as_str()),
            listed = record.as_ref().is_some_and(|r| r.listed),
            "the data directory holds raft state: restarting from it without claiming (a member with its log is never bootstrapped or added again)"
        );
        let join = registry.live_server_addresses().await.unwrap_or_default();
        info!(join = ?join, "live servers the registry knows, for the agent to rejoin");
        let recorded = record.as_ref().and_then(|r| r.member_ids.as_ref());
        match engine.check_restart(&join, recorded).await {
            RestartCheck::Rejoin => {
                return Ok(Decision {
                    plan: StartPlan::Restart { join },
                    granted: None,
                    interval: FALLBACK_HEARTBEAT_INTERVAL,
                })
            }
            RestartCheck::Removed(why) => {
                let aside = move_data_aside(&settings.data_dir).map_err(|error| {
                    Exit::new(
                        EXIT_INTERNAL,
                        format!(
                            "this member was removed from the raft ({why}), but its data directory {} could not be moved aside: {error}",
                            settings.data_dir.display()
                        ),
                    )
                })?;
                warn!(%why, aside = %aside.display(), "this member was removed from the raft while it was away: moved its data directory aside (nothing deleted); claiming afresh, to join as a new member");
            }
        }
    }
    let claim = registry
        .claim_at_start(settings.registry_retry_limit, settings.claim_wait_limit)
        .await?;
    let join: Vec<String> = claim.join.iter().map(|t| t.address.clone()).collect();
    info!(
        role = %claim.role,
        reason = %claim.reason,
        join = ?join,
        expect = claim.expect,
        raft_generation = claim.raft.as_ref().map(|r| r.generation),
        raft_nonce = claim.raft.as_ref().map(|r| r.nonce.as_str()),
        "the registry granted a role"
    );
    // Before the agent starts: a restart from its data must report the same raft.
    identity.claimed(claim.raft.as_ref())?;
    engine.use_claimed_expect(claim.expect);
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
