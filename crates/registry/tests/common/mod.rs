//! Test harness: the real `rollcall-registry` binary on a loopback port with sled in a temp
//! dir. Every process a test starts is killed by its guard's `Drop`, by pid.

#![allow(dead_code)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use rollcall_protocol::RegistryClient;

/// Timing that keeps tests quick: members expire 2s after their last heartbeat.
pub const FAST: &[&str] = &[
    "--ttl",
    "2s",
    "--interval",
    "500ms",
    "--startup-grace",
    "500ms",
    "--quiet-period",
    "500ms",
];

pub struct TestRegistry {
    child: Option<Child>,
    pub port: u16,
    pub data_dir: PathBuf,
    _temp: Option<tempfile::TempDir>,
    args: Vec<String>,
    pub started_at: Instant,
    /// Where the registry's log goes, when a test reads it.
    pub log: Option<PathBuf>,
    extra_env: Vec<(String, String)>,
}

fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    l.local_addr().expect("local addr").port()
}

impl TestRegistry {
    /// A registry not started yet; `spawn` starts it.
    fn new(
        data_dir: PathBuf,
        temp: Option<tempfile::TempDir>,
        args: &[&str],
        log: Option<PathBuf>,
        level: &str,
    ) -> TestRegistry {
        TestRegistry {
            child: None,
            port: 0,
            data_dir,
            _temp: temp,
            args: args.iter().map(|s| s.to_string()).collect(),
            started_at: Instant::now(),
            log,
            extra_env: vec![("ROLLCALL_LOG".into(), level.into())],
        }
    }

    /// Starts a registry with a new, empty data directory.
    pub async fn start(args: &[&str]) -> TestRegistry {
        let temp = tempfile::tempdir().expect("tempdir");
        let mut reg = TestRegistry::new(temp.path().join("data"), None, args, None, "info");
        reg._temp = Some(temp);
        reg.spawn().await;
        reg
    }

    /// Starts a registry whose log (at `level`) goes to a file the test can read.
    pub async fn start_logged(args: &[&str], level: &str) -> TestRegistry {
        let temp = tempfile::tempdir().expect("tempdir");
        let log = temp.path().join("registry.log");
        let mut reg =
            TestRegistry::new(temp.path().join("data"), Some(temp), args, Some(log), level);
        reg.spawn().await;
        reg
    }

    pub fn log_text(&self) -> String {
        self.log
            .as_ref()
            .map(|p| std::fs::read_to_string(p).unwrap_or_default())
            .unwrap_or_default()
    }

    /// Starts a registry on an existing data directory (kept by the caller).
    pub async fn start_on(data_dir: &Path, args: &[&str]) -> TestRegistry {
        let mut reg = TestRegistry::new(data_dir.to_path_buf(), None, args, None, "info");
        reg.spawn().await;
        reg
    }

    async fn spawn(&mut self) {
        // The port is free when chosen; if another process takes it first, try another.
        for _ in 0..5 {
            let port = if self.port == 0 {
                free_port()
            } else {
                self.port
            };
            let mut child = Command::new(env!("CARGO_BIN_EXE_rollcall-registry"))
                .arg("--listen")
                .arg(format!("127.0.0.1:{port}"))
                .arg("--data-dir")
                .arg(&self.data_dir)
                .args(&self.args)
                .env("ROLLCALL_LOG", "info")
                .envs(self.extra_env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
                .stdout(Stdio::null())
                .stderr(match &self.log {
                    Some(path) => Stdio::from(
                        std::fs::OpenOptions::new()
                            .create(true)
                            .append(true)
                            .open(path)
                            .expect("open log"),
                    ),
                    None if std::env::var_os("ROLLCALL_TEST_LOGS").is_some() => Stdio::inherit(),
                    None => Stdio::null(),
                })
                .spawn()
                .expect("spawn rollcall-registry");
            self.started_at = Instant::now();
            let client =
                RegistryClient::new(format!("http://127.0.0.1:{port}"), None).expect("client");
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                if let Ok(Some(_)) = child.try_wait() {
                    break; // exited: most likely the port was taken
                }
                if client.health().await.is_ok() {
                    self.port = port;
                    self.child = Some(child);
                    return;
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    panic!("rollcall-registry did not answer /health within 10s");
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let _ = child.wait();
            self.port = 0;
        }
        panic!("could not start rollcall-registry on a free port");
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// `GET {url}{path}` as text (for what the typed client does not read: the dashboard,
    /// `/metrics`, `/members?format=text`). Panics on a transport error, not on a status.
    pub async fn get_text(&self, path: &str) -> String {
        reqwest::get(format!("{}{path}", self.url()))
            .await
            .unwrap_or_else(|e| panic!("GET {path}: {e}"))
            .text()
            .await
            .unwrap_or_else(|e| panic!("GET {path}: reading the body: {e}"))
    }

    pub fn client(&self) -> RegistryClient {
        RegistryClient::new(self.url(), None).expect("client")
    }

    pub fn client_with_token(&self, token: &str) -> RegistryClient {
        RegistryClient::new(self.url(), Some(token.to_string())).expect("client")
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// SIGKILL: no shutdown path runs, nothing is flushed beyond what was acknowledged.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM and wait for the exit.
    pub fn terminate(&mut self) -> ExitStatus {
        let child = self.child.as_mut().expect("running");
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                self.child = None;
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "registry did not exit within 15s of SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts the same registry again on the same port and data directory.
    pub async fn restart(&mut self) {
        self.kill9();
        self.spawn().await;
    }
}

impl Drop for TestRegistry {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Polls `f` until it returns `Some` or `timeout` passes.
pub async fn eventually<T, F, Fut>(timeout: Duration, mut f: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return Some(v);
        }
        if Instant::now() > deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Waits until the registry's startup grace (500ms, as in `FAST` and most tests) is over, by
/// the registry's own clock: it reports its uptime in `/health`.
pub async fn after_grace(reg: &TestRegistry) {
    let grace = Duration::from_millis(500);
    let uptime = reg.client().health().await.expect("health").uptime_ms;
    let uptime = Duration::from_millis(uptime);
    if uptime < grace {
        tokio::time::sleep(grace - uptime + Duration::from_millis(20)).await;
    }
}
