//! Server processes under test: started with a recorded command line, their pid written to a
//! pid directory (so `bench/run.sh`'s trap can kill them even if this process dies), measured
//! through `/proc`, and killed by pid when dropped.

use std::fs;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// Linux reports CPU times in /proc in clock ticks of 1/100 s (USER_HZ) on every architecture.
const TICKS_PER_SECOND: f64 = 100.0;

/// How to start one server.
#[derive(Debug, Clone)]
pub struct ServerSpec {
    /// A short name for logs and pid files.
    pub name: String,
    pub program: PathBuf,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    /// Where its stdout and stderr go.
    pub log: PathBuf,
}

impl ServerSpec {
    /// The command line as a shell would show it, for BENCHMARKS.md.
    pub fn command_line(&self) -> String {
        let mut parts: Vec<String> = self.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
        parts.push(self.program.display().to_string());
        parts.extend(self.args.iter().map(|a| {
            if a.is_empty() || a.contains(' ') {
                format!("'{a}'")
            } else {
                a.clone()
            }
        }));
        parts.join(" ")
    }
}

/// A running server; killed with SIGKILL when dropped if still running.
#[derive(Debug)]
pub struct Server {
    pub spec: ServerSpec,
    child: Option<Child>,
    pid_file: PathBuf,
}

impl Server {
    /// Starts `spec`, writing its pid to `pid_dir`.
    pub fn start(spec: ServerSpec, pid_dir: &Path) -> anyhow::Result<Server> {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&spec.log)
            .with_context(|| format!("cannot open {}", spec.log.display()))?;
        let child = Command::new(&spec.program)
            .args(&spec.args)
            .envs(spec.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("cannot start {}", spec.program.display()))?;
        let pid_file = pid_dir.join(format!("{}.{}.pid", spec.name, child.id()));
        fs::write(&pid_file, child.id().to_string())
            .with_context(|| format!("cannot write {}", pid_file.display()))?;
        Ok(Server {
            spec,
            child: Some(child),
            pid_file,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).unwrap_or(0)
    }

    /// Fails if the process has already exited.
    pub fn check_running(&mut self) -> anyhow::Result<()> {
        if let Some(child) = self.child.as_mut() {
            if let Some(status) = child.try_wait()? {
                bail!(
                    "{} exited with {status}; the end of {}:\n{}",
                    self.spec.name,
                    self.spec.log.display(),
                    log_tail(&self.spec.log, 20)
                );
            }
        }
        Ok(())
    }

    /// Whether the process has exited (and been reaped).
    pub fn has_exited(&mut self) -> bool {
        match self.child.as_mut() {
            Some(child) => !matches!(child.try_wait(), Ok(None)),
            None => true,
        }
    }

    /// `kill -9` and reap.
    pub fn kill9(&mut self) -> anyhow::Result<()> {
        if let Some(mut child) = self.child.take() {
            child.kill().ok();
            child.wait().context("cannot reap a killed server")?;
        }
        fs::remove_file(&self.pid_file).ok();
        Ok(())
    }

    /// SIGTERM, then SIGKILL if it has not stopped within `grace`.
    pub fn stop(&mut self, grace: Duration) -> anyhow::Result<()> {
        if let Some(child) = self.child.as_mut() {
            let pid = Pid::from_raw(child.id() as i32);
            kill(pid, Signal::SIGTERM).ok();
            let deadline = std::time::Instant::now() + grace;
            while std::time::Instant::now() < deadline {
                if child.try_wait()?.is_some() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        self.kill9()
    }

    fn status_field_kib(&self, field: &str) -> anyhow::Result<u64> {
        let status = fs::read_to_string(format!("/proc/{}/status", self.pid()))?;
        status
            .lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
            .with_context(|| format!("no {field} in /proc/{}/status", self.pid()))
    }

    /// The peak resident set size (VmHWM) since start or the last [`Server::reset_peak_rss`].
    pub fn peak_rss_kib(&self) -> anyhow::Result<u64> {
        self.status_field_kib("VmHWM:")
    }

    /// The resident set size now (VmRSS).
    pub fn rss_kib(&self) -> anyhow::Result<u64> {
        self.status_field_kib("VmRSS:")
    }

    /// Resets VmHWM to the current RSS (`/proc/PID/clear_refs` 5), so a workload's peak is its own.
    pub fn reset_peak_rss(&self) -> bool {
        fs::write(format!("/proc/{}/clear_refs", self.pid()), "5").is_ok()
    }

    /// User plus system CPU time so far, in seconds (threads included).
    pub fn cpu_seconds(&self) -> anyhow::Result<f64> {
        let stat = fs::read_to_string(format!("/proc/{}/stat", self.pid()))?;
        // Fields after the command name (which may hold spaces) start after the last ')'.
        let after = stat
            .rsplit_once(')')
            .map(|(_, rest)| rest)
            .context("bad /proc/PID/stat")?;
        let fields: Vec<&str> = after.split_whitespace().collect();
        // utime and stime are fields 14 and 15 of stat; index 0 here is field 3 (state).
        let utime: f64 = fields.get(11).context("no utime")?.parse()?;
        let stime: f64 = fields.get(12).context("no stime")?.parse()?;
        Ok((utime + stime) / TICKS_PER_SECOND)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.kill9();
    }
}

/// The last `lines` lines of a server's log, so that a failure in CI says why by itself.
fn log_tail(log: &Path, lines: usize) -> String {
    match fs::read_to_string(log) {
        Ok(text) => {
            let all: Vec<&str> = text.lines().collect();
            all[all.len().saturating_sub(lines)..].join("\n")
        }
        Err(e) => format!("(cannot read it: {e})"),
    }
}

/// A loopback address with a port that was free a moment ago.
pub fn free_loopback_addr() -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").context("cannot bind a loopback port")?;
    Ok(listener.local_addr()?)
}
