//! The registry for the sidecar's tests: the real one, served in the test process on a
//! listener bound before it starts, with timing that keeps tests quick; and, for the tests
//! whose subject is the registry's process (frozen by SIGSTOP), the `rollcall-registry`
//! binary ([`RegistryProcess`]).

use std::ffi::OsString;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Parser as _;
use rollcall_protocol::{MemberRole, MembersResponse, RegistryClient};

use super::{free_port, poll_until, print_log_tail, unique, ProcessGuard};

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

    /// `Some(())` once `cluster` lists `node`, for [`poll_until`].
    pub async fn listing(&self, cluster: &str, node: &str) -> Option<()> {
        let members = self.members(cluster).await?;
        members.members.iter().any(|m| m.node == node).then_some(())
    }

    /// `Some(())` once `cluster` lists `node` as an agent whose heartbeat says it reaches the
    /// raft (an etcd gateway), for [`poll_until`].
    pub async fn agent_in_raft(&self, cluster: &str, node: &str) -> Option<()> {
        let members = self.members(cluster).await?;
        members
            .members
            .iter()
            .any(|m| {
                m.node == node && m.role == MemberRole::Agent && m.status.in_raft == Some(true)
            })
            .then_some(())
    }

    /// Waits until every node of `nodes` is healthy, the first lists them all as named voters
    /// and this registry lists as many servers of `cluster` in the raft.
    pub async fn until_voters_listed(
        &self,
        etcd: &super::Etcd,
        nodes: &[super::EtcdNode],
        cluster: &str,
    ) {
        poll_until(
            Duration::from_secs(60),
            "every node a voter in the raft, listed by the registry",
            || async move {
                for node in nodes {
                    if !etcd.healthy(&node.client_url()).await {
                        return None;
                    }
                }
                let members = etcd.members(&nodes[0].client_url()).await?;
                let voters = members.iter().filter(|m| !m.2 && !m.1.is_empty()).count();
                (voters == nodes.len() && self.servers_in_raft(cluster).await.len() == nodes.len())
                    .then_some(())
            },
        )
        .await;
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

/// The `rollcall-registry` binary, next to this package's binary in the target directory.
/// A sidecar test cannot make cargo build another package's binary (a dev-dependency
/// builds only its library), so the workspace build (`cargo build --workspace`, or
/// `cargo build -p rollcall-registry`) must have built it.
pub fn registry_bin() -> PathBuf {
    let bin = Path::new(super::sidecar_bin()).with_file_name("rollcall-registry");
    assert!(
        bin.exists(),
        "{} is missing: run `cargo build -p rollcall-registry` first",
        bin.display()
    );
    bin
}

/// The registry as a process of its own, for tests that freeze it (SIGSTOP) or otherwise
/// act on the process. Killed by pid when it drops; its log is in the test's log directory.
#[derive(Debug)]
pub struct RegistryProcess {
    pub port: u16,
    pub client: RegistryClient,
    pub process: ProcessGuard,
}

impl RegistryProcess {
    /// Starts the binary with `data_dir`, the test timing and `extra`, on a free port (a
    /// port taken between choosing and binding makes it exit: then another is tried), and
    /// waits for /health.
    pub async fn start(data_dir: &Path, logs: &Path, extra: &[&str]) -> RegistryProcess {
        for _ in 0..5 {
            let port = free_port();
            let mut command = std::process::Command::new(registry_bin());
            command
                .arg("--listen")
                .arg(format!("127.0.0.1:{port}"))
                .arg("--data-dir")
                .arg(data_dir)
                .args(REGISTRY_TIMING)
                .args(extra)
                .env("ROLLCALL_LOG", "info");
            let mut process = ProcessGuard::spawn(
                "registry",
                command,
                unique(logs.join(format!("registry-process-{port}.log"))),
            );
            let client =
                RegistryClient::new(format!("http://127.0.0.1:{port}"), None).expect("client");
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            loop {
                if process.try_exit().is_some() {
                    break; // most likely the port was taken
                }
                if client.health().await.is_ok() {
                    return RegistryProcess {
                        port,
                        client,
                        process,
                    };
                }
                assert!(
                    std::time::Instant::now() < deadline,
                    "rollcall-registry did not answer /health within 10 s"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        panic!("could not start rollcall-registry on a free port");
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn log_text(&self) -> String {
        self.process.log_text()
    }

    pub async fn members(&self, cluster: &str) -> Option<MembersResponse> {
        self.client.members(cluster, None).await.ok()
    }

    /// `Some(())` once `cluster` lists `node`, for [`poll_until`].
    pub async fn listing(&self, cluster: &str, node: &str) -> Option<()> {
        let members = self.members(cluster).await?;
        members.members.iter().any(|m| m.node == node).then_some(())
    }
}
