//! Test harness: the registry on loopback with sled in a temp dir, in one of two forms.
//!
//! - [`TestRegistry::start`]: in-process, `rollcall_registry::run` on a listener bound to
//!   `127.0.0.1:0` (no port is chosen and then released), on a runtime of its own. For every
//!   test whose subject is the API and its rules, not the process.
//! - [`TestRegistry::start_process`], [`TestRegistry::start_logged`],
//!   [`TestRegistry::start_on`]: the real `rollcall-registry` binary, for tests whose subject is
//!   the process: a kill -9, a restart, a signal, an exit code, its log. Every process a test
//!   starts is killed by its guard's `Drop`, by pid.

#![allow(dead_code)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

pub mod etcd;

use clap::Parser;
use rollcall_protocol::{ClientError, ErrorCode, RegistryClient};

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
    /// Set for an in-process registry: dropping it starts the registry's graceful shutdown.
    in_process: Option<tokio::sync::oneshot::Sender<()>>,
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
            in_process: None,
            port: 0,
            data_dir,
            _temp: temp,
            args: args.iter().map(|s| s.to_string()).collect(),
            started_at: Instant::now(),
            log,
            extra_env: vec![("ROLLCALL_LOG".into(), level.into())],
        }
    }

    /// Starts an in-process registry with a new, empty data directory.
    pub async fn start(args: &[&str]) -> TestRegistry {
        let temp = tempfile::tempdir().expect("tempdir");
        let mut reg = TestRegistry::new(temp.path().join("data"), None, args, None, "info");
        reg._temp = Some(temp);
        reg.run_in_process().await;
        reg
    }

    /// Starts the `rollcall-registry` binary with a new, empty data directory.
    pub async fn start_process(args: &[&str]) -> TestRegistry {
        let temp = tempfile::tempdir().expect("tempdir");
        let mut reg = TestRegistry::new(temp.path().join("data"), None, args, None, "info");
        reg._temp = Some(temp);
        reg.spawn().await;
        reg
    }

    /// `rollcall_registry::run` on its own thread and runtime, so that a test that blocks its
    /// own thread cannot stall the server.
    async fn run_in_process(&mut self) {
        let mut argv = vec![
            "rollcall-registry".to_string(),
            "--data-dir".to_string(),
            self.data_dir.display().to_string(),
        ];
        argv.extend(self.args.iter().cloned());
        let cli = rollcall_registry::config::Cli::try_parse_from(&argv)
            .unwrap_or_else(|e| panic!("registry arguments {argv:?}: {e}"));
        let config = cli
            .serve
            .validate()
            .unwrap_or_else(|e| panic!("registry arguments {argv:?}: {e}"));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (bound, port) = std::sync::mpsc::channel::<u16>();
        std::thread::Builder::new()
            .name("test-registry".into())
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                    .expect("registry runtime");
                runtime.block_on(async move {
                    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                        .await
                        .expect("bind 127.0.0.1:0");
                    let port = listener.local_addr().expect("local addr").port();
                    bound.send(port).expect("report the port");
                    let shutdown = async move {
                        let _ = stopped.await;
                    };
                    if let Err(e) = rollcall_registry::run(config, listener, shutdown).await {
                        eprintln!("in-process registry stopped: {e:#}");
                    }
                });
            })
            .expect("spawn the registry thread");
        self.port = port
            .recv_timeout(Duration::from_secs(10))
            .expect("the in-process registry did not bind");
        self.in_process = Some(stop);
        self.started_at = Instant::now();
        let client = self.client();
        let deadline = Instant::now() + Duration::from_secs(10);
        while client.health().await.is_err() {
            assert!(
                Instant::now() < deadline,
                "in-process registry did not answer /health within 10s"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
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

    /// `rollcall_limit_refusals_total{limit="<limit>"}` from `/metrics`: how often that bound
    /// refused something. Panics when the series is missing (every limit is registered at 0).
    pub async fn limit_refusals(&self, limit: &str) -> u64 {
        let text = self.get_text("/metrics").await;
        let series = format!("rollcall_limit_refusals_total{{limit=\"{limit}\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(&series))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no series {series:?} in /metrics"))
    }

    pub fn client(&self) -> RegistryClient {
        RegistryClient::new(self.url(), None).expect("client")
    }

    pub fn client_with_token(&self, token: &str) -> RegistryClient {
        RegistryClient::new(self.url(), Some(token.to_string())).expect("client")
    }

    pub fn pid(&self) -> u32 {
        self.child
            .as_ref()
            .expect("a running process: start it with start_process")
            .id()
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
        let child = self
            .child
            .as_mut()
            .expect("a running process: start it with start_process");
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
        assert!(
            self.in_process.is_none(),
            "an in-process registry cannot be killed: start it with start_process"
        );
        self.kill9();
        self.spawn().await;
    }
}

impl Drop for TestRegistry {
    fn drop(&mut self) {
        self.kill9();
        if let Some(stop) = self.in_process.take() {
            let _ = stop.send(());
        }
    }
}

/// A `503 not_ready` refusal (as opposed to any other error, or a 503 for connections).
pub fn is_not_ready(e: &ClientError) -> bool {
    matches!(
        e,
        ClientError::Api {
            status: 503,
            code: ErrorCode::NotReady,
            ..
        }
    )
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
