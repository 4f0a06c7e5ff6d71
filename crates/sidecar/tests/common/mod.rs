//! Test harness for the sidecar: the real registry served in the test process on a bound
//! loopback listener ([`registry`]), real `rollcall-sidecar` processes and the real etcd
//! they start ([`etcd`]), all on 127.0.0.1 with temporary directories. Every process a test
//! starts is killed by its guard's `Drop`, by pid, with its descendants (a sidecar's agent)
//! found through /proc.

#![allow(dead_code)]

pub mod consul;
pub mod etcd;
pub mod registry;

use std::future::Future;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

// Each test binary compiles this harness and uses only part of it.
#[allow(unused_imports)]
pub use self::etcd::*;
#[allow(unused_imports)]
pub use self::registry::*;

/// Ports each test process takes its etcd ports from: a block of its own, below the kernel's
/// ephemeral range (32768 and up), chosen by its pid. A port from `bind(…:0)` is free only
/// until someone else binds it, and with many tests forming rafts at once another test's
/// etcd took such a port first (a peer URL that answered with a client port's 404).
const PORT_BLOCK: u16 = 40;
const PORT_BLOCKS_START: u16 = 10_000;
const PORT_BLOCKS: u32 = 500;

/// A port that was free a moment ago and that no other test process hands out: for etcd's
/// ports (etcd binds them itself) and for addresses where nothing must answer. Never for the
/// registry, which binds first. Falls back to an ephemeral port when the block is full.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU16, Ordering};
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let block = PORT_BLOCKS_START + (std::process::id() % PORT_BLOCKS) as u16 * PORT_BLOCK;
    for _ in 0..PORT_BLOCK {
        let port = block + NEXT.fetch_add(1, Ordering::Relaxed) % PORT_BLOCK;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("an ephemeral port")
        .port()
}

/// Polls `check` every 100 ms until it returns `Some`, or panics with `what` at the deadline.
pub async fn poll_until<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub fn sidecar_bin() -> &'static str {
    env!("CARGO_BIN_EXE_rollcall-sidecar")
}

/// A child process killed (with its descendants) when the guard drops.
#[derive(Debug)]
pub struct ProcessGuard {
    pub name: String,
    child: Option<Child>,
    pub log: PathBuf,
}

impl ProcessGuard {
    pub fn spawn(name: &str, mut command: Command, log: PathBuf) -> ProcessGuard {
        // Orphans of a killed sidecar (its etcd) come back to the test, which reaps them.
        let _ = nix::sys::prctl::set_child_subreaper(true);
        let out = std::fs::File::create(&log).expect("create log");
        let err = out.try_clone().expect("clone log");
        command.stdin(Stdio::null()).stdout(out).stderr(err);
        let child = command
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {name}: {e}"));
        ProcessGuard {
            name: name.to_string(),
            child: Some(child),
            log,
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().map(|c| c.id() as i32).expect("running")
    }

    /// The pids of this process's descendants, from /proc.
    pub fn descendants(&self) -> Vec<i32> {
        descendants_of(self.pid())
    }

    pub fn signal(&self, signal: Signal) {
        kill(Pid::from_raw(self.pid()), signal).expect("signal the process");
    }

    /// Kills the process and all its descendants with SIGKILL, and reaps it.
    pub fn kill_all(&mut self) {
        if let Some(mut child) = self.child.take() {
            let descendants = descendants_of(child.id() as i32);
            let _ = child.kill();
            let _ = child.wait();
            for pid in descendants {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
                // Now the test's child (it is a subreaper): reap it so no zombie is left.
                let _ = nix::sys::wait::waitpid(Pid::from_raw(pid), None);
            }
        }
    }

    /// The exit status if the process has exited (it is reaped then), else `None`.
    pub fn try_exit(&mut self) -> Option<ExitStatus> {
        let child = self.child.as_mut()?;
        let status = child.try_wait().expect("try_wait")?;
        self.child = None;
        Some(status)
    }

    /// True while the process runs.
    pub fn running(&mut self) -> bool {
        self.child.is_some() && self.try_exit().is_none()
    }

    /// Waits for the process to exit by itself.
    pub async fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            let child = self.child.as_mut().expect("running");
            if let Some(status) = child.try_wait().expect("try_wait") {
                self.child = None;
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "{} did not exit within {timeout:?}",
                self.name
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for ProcessGuard {
    fn drop(&mut self) {
        if std::thread::panicking() {
            print_log_tail(&self.name, &self.log_text());
        }
        self.kill_all();
    }
}

/// The last 40 lines of a log, for a failing test's output.
fn print_log_tail(name: &str, log: &str) {
    let tail: Vec<&str> = log.lines().rev().take(40).collect();
    eprintln!("---- last lines of {name} ----");
    for line in tail.iter().rev() {
        eprintln!("{line}");
    }
}

/// Every descendant of `pid`, children first, read from /proc/*/stat.
pub fn descendants_of(pid: i32) -> Vec<i32> {
    let mut parents = Vec::new();
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for entry in entries.flatten() {
            let Some(child) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<i32>().ok())
            else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
                continue;
            };
            // The command name may hold spaces: the parent pid is the second field after ')'.
            if let Some(ppid) = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1))
                .and_then(|p| p.parse::<i32>().ok())
            {
                parents.push((child, ppid));
            }
        }
    }
    let mut found = Vec::new();
    let mut frontier = vec![pid];
    while let Some(parent) = frontier.pop() {
        for (child, ppid) in &parents {
            if *ppid == parent {
                found.push(*child);
                frontier.push(*child);
            }
        }
    }
    found
}
fn unique(path: PathBuf) -> PathBuf {
    let mut candidate = path.clone();
    let mut n = 1;
    while candidate.exists() {
        candidate = path.with_extension(format!("{n}.log"));
        n += 1;
    }
    candidate
}

/// `rollcall-sidecar` for node `node` of `cluster` at the registry `registry_url`, logging
/// at `info`; callers add the other flags and the command.
pub fn sidecar(registry_url: &str, cluster: &str, node: &str) -> Command {
    let mut command = Command::new(sidecar_bin());
    command
        .args(["--registry", registry_url])
        .args(["--cluster", cluster])
        .args(["--node", node])
        .env("ROLLCALL_LOG", "info");
    command
}

/// `rollcall-sidecar ... --engine exec` for node `node`, with `extra` flags before `cmd`.
pub fn exec_sidecar(registry_url: &str, cluster: &str, node: &str, cmd: &[&str]) -> Command {
    let mut command = sidecar(registry_url, cluster, node);
    command
        .args(["--advertise", &format!("127.0.0.1:{}", free_port())])
        .args(["--engine", "exec", "--expect", "1"])
        .args(cmd);
    command
}

pub fn run_script(script: &str) -> Vec<String> {
    ["--", "sh", "-c", script]
        .iter()
        .map(|s| s.to_string())
        .collect()
}
