//! PID 1 duties: spawn the agent, reap every child (the agent and any orphan the kernel
//! hands to PID 1), forward signals, and stop the agent within a timeout.
//!
//! One reaper task calls `waitpid(-1)` on every SIGCHLD (and on a slow tick, in case a
//! signal was coalesced) and publishes each exit on a watch channel. The agent is spawned
//! with `std::process::Command` and never waited on through its `Child`, so the reaper is
//! the only caller of `waitpid`. The runtime is single-threaded (see `main.rs`): the
//! reaper cannot run while `Command::spawn` is inside its own short `waitpid` for a failed
//! `exec`, so it never steals that status.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;
use tracing::{debug, info, warn, Instrument as _};

use crate::engine::AgentCommand;
use crate::exit::{
    Exit, EXIT_AGENT_NOT_EXECUTABLE, EXIT_AGENT_NOT_FOUND, EXIT_INTERNAL, EXIT_SIGNAL_BASE,
};

/// The reaper's safety net when a SIGCHLD was merged with another one.
const REAP_TICK: Duration = Duration::from_millis(500);

/// Exit codes of reaped children by pid (128 + signal for a signal death).
pub type Exits = HashMap<i32, i32>;

/// Starts the reaper. Call it before spawning anything.
///
/// Outside a container the sidecar is not PID 1, so it also makes itself a child
/// subreaper: processes the agent leaves behind are then handed to the sidecar, which
/// reaps them, instead of to the host's init.
pub fn start_reaper() -> Result<watch::Receiver<Exits>, Exit> {
    if std::process::id() != 1 {
        if let Err(error) = nix::sys::prctl::set_child_subreaper(true) {
            warn!(%error, "cannot become a child subreaper; orphans of the agent go to init");
        }
    }
    let mut sigchld = signal(SignalKind::child())
        .map_err(|e| Exit::new(EXIT_INTERNAL, format!("cannot listen for SIGCHLD: {e}")))?;
    let (sender, receiver) = watch::channel(Exits::new());
    tokio::spawn(
        async move {
            let mut tick = tokio::time::interval(REAP_TICK);
            loop {
                tokio::select! {
                    _ = sigchld.recv() => {}
                    _ = tick.tick() => {}
                }
                reap_all(&sender);
            }
        }
        .in_current_span(),
    );
    Ok(receiver)
}

fn reap_all(sender: &watch::Sender<Exits>) {
    loop {
        let (pid, code) = match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(pid, code)) => (pid, code),
            Ok(WaitStatus::Signaled(pid, signal, _)) => (pid, EXIT_SIGNAL_BASE + signal as i32),
            Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => return,
            Ok(_) | Err(Errno::EINTR) => continue,
            Err(error) => {
                warn!(%error, "waitpid failed");
                return;
            }
        };
        debug!(pid = pid.as_raw(), code, "reaped a child process");
        sender.send_modify(|exits| {
            exits.insert(pid.as_raw(), code);
        });
    }
}

/// The running agent.
#[derive(Debug)]
pub struct Agent {
    pid: Pid,
    exits: watch::Receiver<Exits>,
}

impl Agent {
    /// Spawns `command`; its output goes to the sidecar's own stdout and stderr.
    pub fn spawn(command: &AgentCommand, exits: watch::Receiver<Exits>) -> Result<Agent, Exit> {
        let program = resolve_program(&command.program)?;
        info!(program = %program.display(), args = ?command.args, user = command.user.as_ref().map(|u| u.name.as_str()), "starting the agent");
        let mut process = std::process::Command::new(&program);
        process
            .args(&command.args)
            .envs(command.env.iter().cloned())
            .stdin(Stdio::null());
        if let Some(user) = &command.user {
            use std::os::unix::process::CommandExt as _;
            // As root, std also drops the supplementary groups before setting the uid.
            process.uid(user.uid).gid(user.gid);
        }
        let child = process.spawn().map_err(|e| {
            let code = match e.kind() {
                std::io::ErrorKind::NotFound => EXIT_AGENT_NOT_FOUND,
                std::io::ErrorKind::PermissionDenied => EXIT_AGENT_NOT_EXECUTABLE,
                _ => EXIT_INTERNAL,
            };
            Exit::new(code, format!("cannot start {}: {e}", program.display()))
        })?;
        let pid = Pid::from_raw(child.id() as i32);
        // The reaper owns waiting; dropping the handle neither waits nor kills.
        drop(child);
        Ok(Agent { pid, exits })
    }

    pub fn pid(&self) -> i32 {
        self.pid.as_raw()
    }

    /// The agent's exit code once it has exited (128 + signal for a signal death).
    pub async fn wait(&mut self) -> i32 {
        let pid = self.pid.as_raw();
        match self.exits.wait_for(|exits| exits.contains_key(&pid)).await {
            Ok(exits) => exits[&pid],
            // The reaper never stops while the runtime runs; if it did, say so loudly.
            Err(_) => EXIT_INTERNAL,
        }
    }

    /// Sends `signal` to the agent; an agent that already exited is not an error.
    pub fn signal(&self, signal: Signal) {
        match kill(self.pid, signal) {
            Ok(()) => {
                info!(pid = self.pid.as_raw(), signal = %signal, "sent the signal to the agent")
            }
            Err(Errno::ESRCH) => debug!("the agent is already gone"),
            Err(error) => warn!(%error, signal = %signal, "could not signal the agent"),
        }
    }

    /// Waits up to `timeout` for the agent to exit, then kills it and waits for that.
    pub async fn wait_or_kill(&mut self, timeout: Duration) -> i32 {
        match tokio::time::timeout(timeout, self.wait()).await {
            Ok(code) => code,
            Err(_) => {
                warn!(timeout = ?timeout, "the agent did not stop in time; killing it");
                self.signal(Signal::SIGKILL);
                self.wait().await
            }
        }
    }
}

/// Finds `program` on the PATH as `execvp` would, so a missing binary gets its own exit
/// code and a clear message instead of a failed `exec` in the child.
fn resolve_program(program: &str) -> Result<PathBuf, Exit> {
    let candidates: Vec<PathBuf> = if program.contains('/') {
        vec![PathBuf::from(program)]
    } else {
        std::env::var_os("PATH")
            .map(|path| {
                std::env::split_paths(&path)
                    .map(|dir| dir.join(program))
                    .collect()
            })
            .unwrap_or_default()
    };
    let mut found_not_executable = None;
    for candidate in candidates {
        if candidate.is_file() {
            if is_executable(&candidate) {
                return Ok(candidate);
            }
            found_not_executable.get_or_insert(candidate);
        }
    }
    Err(match found_not_executable {
        Some(path) => Exit::new(
            EXIT_AGENT_NOT_EXECUTABLE,
            format!("{} is not executable", path.display()),
        ),
        None => Exit::new(
            EXIT_AGENT_NOT_FOUND,
            format!("agent program {program:?} not found"),
        ),
    })
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .map(|m| m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// The signals the sidecar handles: SIGTERM and SIGINT stop, SIGHUP is only forwarded.
#[derive(Debug)]
pub struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    pub fn new() -> Result<Signals, Exit> {
        let listen = |kind| {
            signal(kind)
                .map_err(|e| Exit::new(EXIT_INTERNAL, format!("cannot listen for signals: {e}")))
        };
        Ok(Signals {
            term: listen(SignalKind::terminate())?,
            int: listen(SignalKind::interrupt())?,
            hup: listen(SignalKind::hangup())?,
        })
    }

    /// The next signal received.
    pub async fn recv(&mut self) -> Signal {
        tokio::select! {
            _ = self.term.recv() => Signal::SIGTERM,
            _ = self.int.recv() => Signal::SIGINT,
            _ = self.hup.recv() => Signal::SIGHUP,
        }
    }

    /// The next stop signal (SIGTERM or SIGINT); SIGHUP is logged and ignored meanwhile.
    pub async fn recv_stop(&mut self) -> Signal {
        loop {
            let signal = self.recv().await;
            if signal != Signal::SIGHUP {
                return signal;
            }
            info!("SIGHUP received before the agent started; nothing to forward it to");
        }
    }
}
