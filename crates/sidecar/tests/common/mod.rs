//! Test harness for the sidecar: the real registry served in the test process on a bound
//! loopback listener, real `rollcall-sidecar` processes and the real etcd they start, all on
//! 127.0.0.1 with temporary directories. Every process a test starts is killed by its
//! guard's `Drop`, by pid, with its descendants (a sidecar's agent) found through /proc.

#![allow(dead_code)]

use std::ffi::OsString;
use std::future::Future;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use clap::Parser as _;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use rollcall_protocol::{MemberRole, MembersResponse, RegistryClient};
use serde_json::{json, Value};

/// Registry timing that keeps tests quick (the registry requires grace and quiet period
/// of at least one interval, and an interval below the TTL).
pub const TTL: Duration = Duration::from_secs(3);
pub const INTERVAL: Duration = Duration::from_secs(1);
pub const REGISTRY_TIMING: &[&str] = &[
    "--ttl",
    "3s",
    "--interval",
    "1s",
    "--startup-grace",
    "1s",
    "--quiet-period",
    "1s",
];

/// A port that was free a moment ago: for etcd's ports (etcd binds them itself) and for
/// addresses where nothing must answer. Never for the registry, which binds first.
pub fn free_port() -> u16 {
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

/// The real registry, served in this test process on its own thread and runtime (so that
/// a test blocked on a sidecar's `output()` does not stall it), from a listener bound
/// before it starts: no other process can take its port. Its log goes to a file in the
/// test's log directory, and is printed when a test fails.
#[derive(Debug)]
pub struct TestRegistry {
    pub port: u16,
    /// A plain-HTTP client of it (a registry serving TLS needs one that trusts its CA).
    pub client: RegistryClient,
    log: PathBuf,
    server: Option<RegistryThread>,
}

/// The thread the registry runs on, and the switch that ends it.
#[derive(Debug)]
struct RegistryThread {
    kill: tokio::sync::oneshot::Sender<()>,
    thread: std::thread::JoinHandle<()>,
}

impl TestRegistry {
    /// Starts the registry on `port` (0: any free one) with `data_dir` and the test timing,
    /// and waits for /health.
    pub async fn start(port: u16, data_dir: &Path, logs: &Path, extra: &[&str]) -> TestRegistry {
        TestRegistry::start_with_timing(port, data_dir, logs, REGISTRY_TIMING, extra).await
    }

    /// [`TestRegistry::start`] with other timing flags than [`REGISTRY_TIMING`] (the
    /// registry refuses a flag given twice, so they cannot simply be overridden in `extra`).
    pub async fn start_with_timing(
        port: u16,
        data_dir: &Path,
        logs: &Path,
        timing: &[&str],
        extra: &[&str],
    ) -> TestRegistry {
        let args: Vec<&str> = timing.iter().chain(extra).copied().collect();
        let registry = TestRegistry::serve(port, data_dir, logs, &args);
        poll_until(Duration::from_secs(10), "the registry's /health", || {
            let client = registry.client.clone();
            async move { client.health().await.ok() }
        })
        .await;
        registry
    }

    /// Serves the registry on `port` (0: any free one; another: the port of a registry this
    /// test killed) with `data_dir` and the flags `args`, without waiting for it. The
    /// configuration is parsed by the registry's own flag parser, as its binary does.
    pub fn serve(port: u16, data_dir: &Path, logs: &Path, args: &[&str]) -> TestRegistry {
        let listener = TcpListener::bind(("127.0.0.1", port)).expect("bind the registry's port");
        listener
            .set_nonblocking(true)
            .expect("non-blocking listener");
        let port = listener.local_addr().expect("bound address").port();
        let mut argv: Vec<OsString> = vec!["rollcall-registry".into(), "--listen".into()];
        argv.push(format!("127.0.0.1:{port}").into());
        argv.push("--data-dir".into());
        argv.push(data_dir.into());
        argv.extend(args.iter().map(OsString::from));
        let config = rollcall_registry::config::Cli::try_parse_from(argv)
            .expect("registry flags")
            .serve
            .validate()
            .expect("registry configuration");
        let log = unique(logs.join(format!("registry-{port}.log")));
        let log_file = std::fs::File::create(&log).expect("create the registry log");
        let (kill, killed) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name(format!("registry-{port}"))
            .spawn(move || {
                // A current-thread runtime polls every task on this thread, so this thread's
                // subscriber sees all the registry logs.
                let subscriber = tracing_subscriber::fmt()
                    .with_writer(std::sync::Mutex::new(log_file))
                    .with_ansi(false)
                    .with_max_level(tracing::Level::INFO)
                    .finish();
                let _logging = tracing::subscriber::set_default(subscriber);
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("the registry's runtime");
                runtime.block_on(async move {
                    let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
                    tokio::select! {
                        result = rollcall_registry::run(config, listener, std::future::pending()) => {
                            if let Err(error) = result {
                                tracing::error!(error = format!("{error:#}"), "rollcall-registry stopped");
                            }
                        }
                        _ = killed => {}
                    }
                });
                runtime.shutdown_timeout(Duration::from_secs(1));
            })
            .expect("spawn the registry's thread");
        TestRegistry {
            port,
            client: RegistryClient::new(format!("http://127.0.0.1:{port}"), None).expect("client"),
            log,
            server: Some(RegistryThread { kill, thread }),
        }
    }

    /// Ends the registry as a crash would: no drain and no leave, every connection dropped
    /// and the listener closed (its port free again) when this returns.
    pub fn kill(&mut self) {
        if let Some(server) = self.server.take() {
            let _ = server.kill.send(());
            server.thread.join().expect("the registry's thread");
        }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub async fn members(&self, cluster: &str) -> Option<MembersResponse> {
        self.client.members(cluster, None).await.ok()
    }

    /// Live servers of `cluster` whose heartbeat says they are in the raft.
    pub async fn servers_in_raft(&self, cluster: &str) -> Vec<String> {
        let Some(members) = self.members(cluster).await else {
            return vec![];
        };
        members
            .members
            .into_iter()
            .filter(|m| m.role == MemberRole::Server && m.status.in_raft == Some(true))
            .map(|m| m.node)
            .collect()
    }
}

impl Drop for TestRegistry {
    fn drop(&mut self) {
        if std::thread::panicking() {
            print_log_tail("registry", &self.log_text());
        }
        self.kill();
    }
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

/// One etcd node run by a sidecar.
#[derive(Debug)]
pub struct EtcdNode {
    pub name: String,
    pub client_port: u16,
    pub peer_port: u16,
    pub data_dir: PathBuf,
}

impl EtcdNode {
    pub fn new(name: &str, base: &Path) -> EtcdNode {
        EtcdNode {
            name: name.to_string(),
            client_port: free_port(),
            peer_port: free_port(),
            data_dir: base.join(name),
        }
    }

    pub fn client_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.client_port)
    }

    /// The `rollcall-sidecar run --engine etcd` command for this node.
    pub fn sidecar_command(&self, registry_url: &str, cluster: &str, expect: u32) -> Command {
        let mut command = Command::new(sidecar_bin());
        command
            .args([
                "--registry",
                registry_url,
                "--cluster",
                cluster,
                "--node",
                &self.name,
            ])
            .args(["--advertise", &self.address()])
            .args(["--etcd-peer-port", &self.peer_port.to_string()])
            .args(["--engine", "etcd", "--expect", &expect.to_string()])
            .arg("--data-dir")
            .arg(&self.data_dir)
            .args([
                "--stop-timeout",
                "5s",
                "--registry-retry-limit",
                "20s",
                "--join-timeout",
                "60s",
            ])
            .arg("run")
            .env("ROLLCALL_LOG", "info");
        command
    }

    pub fn start_sidecar(
        &self,
        registry_url: &str,
        cluster: &str,
        expect: u32,
        logs: &Path,
    ) -> ProcessGuard {
        ProcessGuard::spawn(
            &format!("sidecar {}", self.name),
            self.sidecar_command(registry_url, cluster, expect),
            unique(logs.join(format!("sidecar-{}.log", self.name))),
        )
    }
}

/// A small client for etcd's v3 JSON gateway.
#[derive(Debug, Clone)]
pub struct Etcd {
    http: reqwest::Client,
}

impl Default for Etcd {
    fn default() -> Self {
        Etcd {
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(3))
                .no_proxy()
                .build()
                .expect("http client"),
        }
    }
}

impl Etcd {
    pub async fn post(&self, base: &str, path: &str, body: Value) -> Option<Value> {
        let response = self
            .http
            .post(format!("{base}{path}"))
            .json(&body)
            .send()
            .await
            .ok()?;
        if !response.status().is_success() {
            return None;
        }
        response.json().await.ok()
    }

    pub async fn healthy(&self, base: &str) -> bool {
        match self.http.get(format!("{base}/health")).send().await {
            Ok(r) => r
                .json::<Value>()
                .await
                .map(|v| v["health"] == "true")
                .unwrap_or(false),
            Err(_) => false,
        }
    }

    /// (cluster ID, this member's ID, the leader's ID).
    pub async fn status(&self, base: &str) -> Option<(String, String, String)> {
        let v = self.post(base, "/v3/maintenance/status", json!({})).await?;
        Some((
            v["header"]["cluster_id"].as_str()?.to_string(),
            v["header"]["member_id"].as_str()?.to_string(),
            v["leader"].as_str()?.to_string(),
        ))
    }

    /// (ID, name, is learner) of every member, sorted by name.
    pub async fn members(&self, base: &str) -> Option<Vec<(String, String, bool)>> {
        let v = self
            .post(base, "/v3/cluster/member/list", json!({}))
            .await?;
        let mut members: Vec<(String, String, bool)> = v["members"]
            .as_array()?
            .iter()
            .map(|m| {
                (
                    m["ID"].as_str().unwrap_or_default().to_string(),
                    m["name"].as_str().unwrap_or_default().to_string(),
                    m["isLearner"].as_bool().unwrap_or(false),
                )
            })
            .collect();
        members.sort_by(|a, b| a.1.cmp(&b.1));
        Some(members)
    }

    pub async fn put(&self, base: &str, key: &str, value: &str) -> bool {
        self.post(
            base,
            "/v3/kv/put",
            json!({ "key": b64_encode(key.as_bytes()), "value": b64_encode(value.as_bytes()) }),
        )
        .await
        .is_some()
    }

    /// A linearizable read.
    pub async fn get(&self, base: &str, key: &str) -> Option<String> {
        let v = self
            .post(
                base,
                "/v3/kv/range",
                json!({ "key": b64_encode(key.as_bytes()) }),
            )
            .await?;
        let value = v["kvs"].as_array()?.first()?["value"].as_str()?;
        String::from_utf8(b64_decode(value)?).ok()
    }
}

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Standard base64, as etcd's JSON gateway encodes keys and values.
pub fn b64_encode(bytes: &[u8]) -> String {
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(B64[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

pub fn b64_decode(text: &str) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    let digits: Vec<u32> = text
        .bytes()
        .filter(|b| *b != b'=')
        .map(|b| B64.iter().position(|c| *c == b).map(|p| p as u32))
        .collect::<Option<_>>()?;
    for chunk in digits.chunks(4) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, d)| n | d << (18 - 6 * i));
        for i in 0..chunk.len().saturating_sub(1) {
            out.push((n >> (16 - 8 * i) & 255) as u8);
        }
    }
    Some(out)
}

/// `rollcall-sidecar ... --engine exec` for node `node`, with `extra` flags before `cmd`.
pub fn exec_sidecar(registry_url: &str, cluster: &str, node: &str, cmd: &[&str]) -> Command {
    let mut command = Command::new(sidecar_bin());
    command
        .args([
            "--registry",
            registry_url,
            "--cluster",
            cluster,
            "--node",
            node,
        ])
        .args(["--advertise", &format!("127.0.0.1:{}", free_port())])
        .args(["--engine", "exec", "--expect", "1"])
        .env("ROLLCALL_LOG", "info");
    command.args(cmd);
    command
}

pub fn run_script(script: &str) -> Vec<String> {
    ["--", "sh", "-c", script]
        .iter()
        .map(|s| s.to_string())
        .collect()
}
