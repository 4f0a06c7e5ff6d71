//! The benchmark suite: for each system, fresh servers on loopback, the same workloads, and the
//! figures gathered into a [`Report`].
//!
//! Each system gets three fresh servers with empty data directories, one per group:
//! 1. **registrations**: new members at 1 and at `conns` connections;
//! 2. **renewals**: a population of `small_population` members over `clusters` clusters is
//!    stored, the server's idle CPU is measured, renewals are run; the population grows to
//!    `large_population`, renewals again, the memory is read; then registrations run while the
//!    server is killed with SIGKILL, and the restarted server is timed and checked for every
//!    acknowledged member;
//! 3. **listing**: one cluster of `list_small` and one of `list_large` members are listed.
//!
//! Every workload runs closed loop (throughput), then at a fixed rate of `rate_fraction` × that
//! throughput (latency without coordinated omission), and the registry's judged workloads at
//! their target rates too. Each fixed-rate phase is repeated `repetitions` times and reported
//! by its worst repetition (the highest p99), with the median beside it: a target counts as
//! met only when its worst repetition meets it.
//!
//! Long on purpose: the phases share their servers and their report, and read best in order.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use rand::Rng;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::load::{self, LoadResult, OpSource, Pace, RunOptions};
use crate::server::{free_loopback_addr, Server, ServerSpec};
use crate::systems::{Conn, MemberName, Op, System};

/// Everything the suite needs to know; see `rollcall-bench suite --help`.
#[derive(Debug, Clone)]
pub struct SuiteConfig {
    pub registry_bin: PathBuf,
    pub ceiling_bin: PathBuf,
    pub etcd_bin: PathBuf,
    pub redis_bin: PathBuf,
    pub work_dir: PathBuf,
    pub pid_dir: PathBuf,
    pub systems: Vec<System>,
    /// Length of each measured phase (closed loop, then fixed rate).
    pub phase: Duration,
    /// How long the idle CPU is measured.
    pub idle: Duration,
    /// How long registrations run before the server is killed in the restart test.
    pub crash_after: Duration,
    pub clusters: usize,
    pub small_population: usize,
    pub large_population: usize,
    pub list_small: usize,
    pub list_large: usize,
    pub conns: usize,
    pub list_conns: usize,
    pub rate_fraction: f64,
    /// Extra fixed-rate registration run of the registry at the issue's target rate.
    pub registration_target_rate: f64,
    /// Extra fixed-rate run of the registry listing the large cluster: the rate at which the
    /// listing latency target is judged (a rate, since a 1.9 MB answer at 0.7 of the closed-loop
    /// throughput measures the loopback's copying more than the server).
    pub list_target_rate: f64,
    pub ttl_secs: u64,
    pub smoke: bool,
    /// How many times each fixed-rate phase runs.
    pub repetitions: usize,
}

/// One repetition of a fixed-rate phase.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Repetition {
    pub throughput: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub errors: u64,
}

/// One measured phase of one workload on one system.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Row {
    pub system: System,
    /// `register-1`, `register-64`, `renew-10k`, `renew-100k`, `list-10`, `list-10k` (the
    /// numbers are the configured sizes).
    pub workload: String,
    /// `closed`, `fixed` or `fixed@target`.
    pub mode: String,
    pub conns: usize,
    /// The offered rate of a fixed-rate phase.
    pub offered_rate: Option<f64>,
    pub throughput: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
    pub ops: u64,
    pub errors: u64,
    pub first_error: Option<String>,
    /// The server's peak RSS over this workload (both phases).
    pub peak_rss_mib: f64,
    /// Every repetition of a fixed-rate phase, in the order run (empty for a closed loop).
    /// The row's own figures are those of the worst one: the highest p99.
    #[serde(default)]
    pub repetitions: Vec<Repetition>,
}

impl Row {
    /// The median repetition's p99 (the row's own when it has no repetitions).
    pub fn median_p99_ms(&self) -> f64 {
        median(self.repetitions.iter().map(|r| r.p99_ms)).unwrap_or(self.p99_ms)
    }
}

fn median(values: impl Iterator<Item = f64>) -> Option<f64> {
    let mut v: Vec<f64> = values.collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    Some(v[v.len() / 2])
}

/// The restart test of one system.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RestartResult {
    pub system: System,
    pub stored_members: usize,
    /// Registrations acknowledged while the server was being killed.
    pub acked_during_crash: usize,
    /// From spawning the new process to its first successful listing of a stored cluster.
    pub answer_after_ms: f64,
    /// Stored members (acknowledged earlier) missing after the restart: lost or expired.
    pub missing_stored: usize,
    /// Registrations acknowledged just before the kill that are missing after the restart.
    pub missing_acked: usize,
}

/// Idle CPU and memory of one system with a stored population.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ResourceResult {
    pub system: System,
    pub members: usize,
    /// Percent of one core, over the idle window.
    pub idle_cpu_percent: Option<f64>,
    pub rss_mib: f64,
    pub peak_rss_mib: f64,
}

/// Where and when the suite ran.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Machine {
    pub cpu_model: String,
    pub cores: usize,
    pub mem_total_mib: u64,
    pub kernel: String,
    pub load_before: String,
    pub load_after: String,
    pub started_unix: u64,
    pub duration_s: f64,
}

/// Everything one suite run measured; `report` renders it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    pub smoke: bool,
    pub machine: Machine,
    pub versions: Vec<String>,
    /// The bench's own command line, then every server command line, in order.
    pub commands: Vec<String>,
    pub config: Vec<(String, String)>,
    pub rows: Vec<Row>,
    pub restarts: Vec<RestartResult>,
    pub resources: Vec<ResourceResult>,
}

/// Short name of a count: 10000 → "10k".
pub fn count_label(n: usize) -> String {
    if n >= 1000 && n.rem_euclid(1000) == 0 {
        format!("{}k", n / 1000)
    } else {
        n.to_string()
    }
}

struct Suite {
    config: SuiteConfig,
    report: Report,
}

/// Runs the whole suite.
pub async fn run(config: SuiteConfig, bench_command: String) -> anyhow::Result<Report> {
    let started = std::time::Instant::now();
    let machine = Machine {
        cpu_model: cpu_model(),
        cores: std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
        mem_total_mib: mem_total_mib(),
        kernel: read_trim("/proc/sys/kernel/osrelease"),
        load_before: read_trim("/proc/loadavg"),
        load_after: String::new(),
        started_unix: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
        duration_s: 0.0,
    };
    let mut versions = Vec::new();
    for system in &config.systems {
        match system {
            System::Etcd => versions.push(version_of(&config.etcd_bin, "--version")),
            System::Redis => versions.push(version_of(&config.redis_bin, "--version")),
            _ => {}
        }
    }
    let c = &config;
    let settings = vec![
        (
            "phase".into(),
            humantime::format_duration(c.phase).to_string(),
        ),
        ("clusters".into(), c.clusters.to_string()),
        (
            "populations".into(),
            format!("{} then {}", c.small_population, c.large_population),
        ),
        (
            "listed clusters".into(),
            format!("{} and {} members", c.list_small, c.list_large),
        ),
        (
            "connections".into(),
            format!("{} (listing: {})", c.conns, c.list_conns),
        ),
        (
            "fixed rate".into(),
            format!(
                "{} × the closed-loop throughput; fixed@target: registrations at {:.0}/s, listing {} members at {:.0}/s",
                c.rate_fraction, c.registration_target_rate, c.list_large, c.list_target_rate
            ),
        ),
        (
            "repetitions".into(),
            format!(
                "each fixed-rate phase {} times; its row is the worst (highest p99), the median beside it",
                c.repetitions
            ),
        ),
        ("ttl".into(), format!("{}s", c.ttl_secs)),
    ];
    let mut suite = Suite {
        report: Report {
            smoke: config.smoke,
            machine,
            versions,
            commands: vec![bench_command],
            config: settings,
            rows: Vec::new(),
            restarts: Vec::new(),
            resources: Vec::new(),
        },
        config,
    };
    for system in suite.config.systems.clone() {
        log(&format!(
            "== {} (at {:.0}s)",
            system.label(),
            started.elapsed().as_secs_f64()
        ));
        suite.registrations(system).await?;
        suite.renewals(system).await?;
        if system != System::Ceiling {
            suite.listing(system).await?;
        }
    }
    suite.report.machine.load_after = read_trim("/proc/loadavg");
    suite.report.machine.duration_s = started.elapsed().as_secs_f64();
    Ok(suite.report)
}

/// Progress goes to stderr so that stdout holds only the table.
pub fn log(line: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "[bench] {line}");
}

/// A started server and how to reach it.
struct Running {
    server: Server,
    /// The etcd a `replicated` registry stores in; stopped with it.
    _store: Option<Server>,
    system: System,
    addr: std::net::SocketAddr,
    ttl_secs: u64,
}

impl Running {
    async fn conns(&self, n: usize) -> anyhow::Result<Vec<Conn>> {
        let mut conns = Vec::with_capacity(n);
        for _ in 0..n {
            conns.push(Conn::connect(self.system, self.addr, self.ttl_secs).await?);
        }
        Ok(conns)
    }
}

impl Suite {
    fn spec(
        &self,
        system: System,
        group: &str,
        addr: std::net::SocketAddr,
        store: Option<std::net::SocketAddr>,
    ) -> anyhow::Result<ServerSpec> {
        let c = &self.config;
        let dir = c.work_dir.join(format!("{}-{group}", system_slug(system)));
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        let data = dir.join("data");
        let log = dir.join("server.log");
        let name = format!("{}-{group}", system_slug(system));
        let s = |v: &str| v.to_string();
        let (program, args, env) = match system {
            System::Registry => (
                c.registry_bin.clone(),
                vec![
                    s("--listen"),
                    addr.to_string(),
                    s("--data-dir"),
                    data.display().to_string(),
                    s("--ttl"),
                    format!("{}s", c.ttl_secs),
                    s("--interval"),
                    format!("{}s", c.ttl_secs / 3),
                ]
                .into_iter()
                .chain(unbounded_registry_limits())
                .collect(),
                Vec::new(),
            ),
            System::Replicated => (
                c.registry_bin.clone(),
                vec![
                    s("--listen"),
                    addr.to_string(),
                    s("--store"),
                    s("etcd"),
                    s("--etcd-endpoints"),
                    format!(
                        "http://{}",
                        store.context("a replicated registry needs its etcd")?
                    ),
                    s("--lease-ttl"),
                    s("2s"),
                    s("--ttl"),
                    format!("{}s", c.ttl_secs),
                    s("--interval"),
                    format!("{}s", c.ttl_secs / 3),
                ]
                .into_iter()
                .chain(unbounded_registry_limits())
                .collect(),
                Vec::new(),
            ),
            System::Ceiling => (
                c.ceiling_bin.clone(),
                vec![s("--listen"), addr.to_string()],
                Vec::new(),
            ),
            System::Etcd => {
                let peer = free_loopback_addr()?;
                (
                    c.etcd_bin.clone(),
                    vec![
                        s("--name"),
                        s("bench"),
                        s("--data-dir"),
                        data.display().to_string(),
                        s("--listen-client-urls"),
                        format!("http://{addr}"),
                        s("--advertise-client-urls"),
                        format!("http://{addr}"),
                        s("--listen-peer-urls"),
                        format!("http://{peer}"),
                        s("--initial-advertise-peer-urls"),
                        format!("http://{peer}"),
                        s("--initial-cluster"),
                        format!("bench=http://{peer}"),
                        s("--logger"),
                        s("zap"),
                        s("--log-level"),
                        s("warn"),
                    ],
                    Vec::new(),
                )
            }
            System::Redis => {
                std::fs::create_dir_all(&data)?;
                (
                    c.redis_bin.clone(),
                    vec![
                        s("--port"),
                        addr.port().to_string(),
                        s("--bind"),
                        s("127.0.0.1"),
                        s("--dir"),
                        data.display().to_string(),
                        s("--appendonly"),
                        s("yes"),
                        s("--appendfsync"),
                        s("always"),
                        s("--save"),
                        s(""),
                        s("--daemonize"),
                        s("no"),
                    ],
                    Vec::new(),
                )
            }
        };
        Ok(ServerSpec {
            name,
            program,
            args,
            env,
            log,
        })
    }

    /// Starts a fresh server for `group` and waits until it answers.
    ///
    /// The ports come from [`free_loopback_addr`], free a moment before the server binds them,
    /// so another process can take one in between. A server that exits before it answers is
    /// therefore started again on new ports and an empty data directory, at most
    /// [`START_ATTEMPTS`] times in all, each failure printed with the end of its log.
    async fn start(&mut self, system: System, group: &str) -> anyhow::Result<Running> {
        let mut attempt = 1;
        loop {
            // A replicated registry's etcd first.
            let store = if system == System::Replicated {
                Some(Box::pin(self.start(System::Etcd, &format!("{group}-store"))).await?)
            } else {
                None
            };
            let addr = free_loopback_addr()?;
            let spec = self.spec(system, group, addr, store.as_ref().map(|s| s.addr))?;
            let data = spec.log.with_file_name("data");
            let command = spec.command_line();
            let server = Server::start(spec, &self.config.pid_dir)?;
            let mut running = Running {
                server,
                _store: store.map(|s| s.server),
                system,
                addr,
                ttl_secs: self.config.ttl_secs,
            };
            match wait_answering(&mut running, "ready", Duration::from_secs(60), false).await {
                Ok(()) => {
                    self.report.commands.push(command);
                    return Ok(running);
                }
                Err(e) if attempt < START_ATTEMPTS && running.server.has_exited() => {
                    eprintln!("[bench] start {attempt} of {START_ATTEMPTS} failed: {e:#}");
                    drop(running);
                    std::fs::remove_dir_all(&data).ok();
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Closed loop, then fixed rate at a fraction of its throughput (and at `extra_rate` too).
    #[allow(clippy::too_many_arguments)]
    async fn measure(
        &mut self,
        running: &Running,
        workload: &str,
        conns: usize,
        source: OpSource,
        extra_rate: Option<f64>,
    ) -> anyhow::Result<()> {
        let reset = running.server.reset_peak_rss();
        let closed = self
            .phase(running, conns, source.clone(), Pace::Closed)
            .await?;
        let rate = (closed.throughput() * self.config.rate_fraction).max(1.0);
        let mut phases = vec![("closed", None, vec![closed])];
        let mut rates = vec![("fixed", rate)];
        rates.extend(extra_rate.map(|target| ("fixed@target", target)));
        for (mode, rate) in rates {
            let mut repetitions = Vec::new();
            for _ in 0..self.config.repetitions.max(1) {
                repetitions.push(
                    self.phase(running, conns, source.clone(), Pace::FixedRate(rate))
                        .await?,
                );
            }
            phases.push((mode, Some(rate), repetitions));
        }
        let peak = running.server.peak_rss_kib().unwrap_or(0) as f64 / 1024.0;
        if !reset {
            log("could not reset VmHWM; peak RSS is since the server started");
        }
        for (mode, offered, results) in phases {
            let repetitions: Vec<Repetition> = if offered.is_some() {
                results
                    .iter()
                    .map(|r| Repetition {
                        throughput: r.throughput(),
                        p50_ms: r.percentile_ms(0.5),
                        p99_ms: r.percentile_ms(0.99),
                        p999_ms: r.percentile_ms(0.999),
                        errors: r.errors,
                    })
                    .collect()
            } else {
                Vec::new()
            };
            for (i, r) in repetitions.iter().enumerate() {
                log(&format!(
                    "{:<18} {workload:<12} {mode:<12} repetition {} of {}: {:>9.0} req/s  p50 {:>7.3} ms  p99 {:>7.3} ms  p99.9 {:>8.3} ms  errors {}",
                    running.system.label(),
                    i + 1,
                    repetitions.len(),
                    r.throughput,
                    r.p50_ms,
                    r.p99_ms,
                    r.p999_ms,
                    r.errors
                ));
            }
            // The worst repetition: the highest p99.
            let Some(result) = results
                .iter()
                .max_by(|a, b| a.percentile_ms(0.99).total_cmp(&b.percentile_ms(0.99)))
            else {
                continue;
            };
            let row = Row {
                system: running.system,
                workload: workload.to_string(),
                mode: mode.to_string(),
                conns,
                offered_rate: offered,
                throughput: result.throughput(),
                p50_ms: result.percentile_ms(0.5),
                p99_ms: result.percentile_ms(0.99),
                p999_ms: result.percentile_ms(0.999),
                max_ms: result.latency_us.max() as f64 / 1000.0,
                ops: result.ops,
                errors: result.errors,
                first_error: result.first_error.clone(),
                peak_rss_mib: peak,
                repetitions,
            };
            log(&format!(
                "{:<18} {:<12} {:<12} {:>3} conns {:>9.0} req/s  p50 {:>7.3} ms  p99 {:>7.3} ms  p99.9 {:>8.3} ms  errors {}{}",
                running.system.label(),
                row.workload,
                row.mode,
                conns,
                row.throughput,
                row.p50_ms,
                row.p99_ms,
                row.p999_ms,
                row.errors,
                row.first_error.as_deref().map(|e| format!(" (first: {e})")).unwrap_or_default()
            ));
            self.report.rows.push(row);
        }
        Ok(())
    }

    async fn phase(
        &self,
        running: &Running,
        conns: usize,
        source: OpSource,
        pace: Pace,
    ) -> anyhow::Result<LoadResult> {
        let conns = running.conns(conns).await?;
        let options = RunOptions {
            pace,
            duration: self.config.phase,
            max_ops: None,
            stop_on_error: false,
            record_acks: false,
        };
        Ok(load::run(conns, source, options, None).await)
    }

    async fn registrations(&mut self, system: System) -> anyhow::Result<()> {
        let running = self.start(system, "register").await?;
        let clusters = self.config.clusters;
        let mut conns_list = vec![1, self.config.conns];
        conns_list.dedup();
        for conns in conns_list {
            // Every request registers a member never seen before.
            let next = Arc::new(AtomicU64::new(0));
            let source: OpSource = Arc::new(move |_, _| {
                let i = next.fetch_add(1, Ordering::Relaxed);
                Op::Register(MemberName::new(
                    format!("g{}", i as usize % clusters),
                    format!("c{conns}-n{i}"),
                ))
            });
            let target = (system == System::Registry && conns == self.config.conns)
                .then_some(self.config.registration_target_rate);
            self.measure(
                &running,
                &format!("register-{conns}"),
                conns,
                source,
                target,
            )
            .await?;
        }
        drop(running);
        Ok(())
    }

    /// Stores members until the population holds `target`, returning it with their leases.
    async fn grow_population(
        &self,
        running: &Running,
        population: &mut Vec<(MemberName, i64)>,
        target: usize,
    ) -> anyhow::Result<()> {
        if population.len() >= target {
            return Ok(());
        }
        let started = Instant::now();
        let clusters = self.config.clusters;
        let next = Arc::new(AtomicU64::new(population.len() as u64));
        let source: OpSource = Arc::new(move |_, _| {
            let i = next.fetch_add(1, Ordering::Relaxed) as usize;
            Op::Register(MemberName::new(
                format!("r{}", i % clusters),
                format!("n{i}"),
            ))
        });
        if running.system == System::Ceiling {
            // Nothing to store; the renewals only need names.
            for i in population.len()..target {
                population.push((
                    MemberName::new(format!("r{}", i % clusters), format!("n{i}")),
                    0,
                ));
            }
            return Ok(());
        }
        let options = RunOptions {
            pace: Pace::Closed,
            duration: Duration::from_secs(3600),
            max_ops: Some((target - population.len()) as u64),
            stop_on_error: true,
            record_acks: true,
        };
        let result = load::run(
            running.conns(self.config.conns).await?,
            source,
            options,
            None,
        )
        .await;
        if result.errors > 0 {
            bail!(
                "{}: storing the population failed: {}",
                running.system.label(),
                result.first_error.unwrap_or_default()
            );
        }
        for (op, lease) in result.acked {
            if let Op::Register(m) = op {
                population.push((m, lease));
            }
        }
        log(&format!(
            "{}: stored {} members in {:.1}s",
            running.system.label(),
            population.len(),
            started.elapsed().as_secs_f64()
        ));
        Ok(())
    }

    async fn renewals(&mut self, system: System) -> anyhow::Result<()> {
        let mut running = self.start(system, "renew").await?;
        let mut population = Vec::new();
        let sizes = [self.config.small_population, self.config.large_population];
        for (i, size) in sizes.into_iter().enumerate() {
            let peak_reset = running.server.reset_peak_rss();
            self.grow_population(&running, &mut population, size)
                .await?;
            let idle_cpu_percent = if i == 0 {
                // Let the preload's connections close and background work settle first.
                tokio::time::sleep(Duration::from_millis(500)).await;
                let before = running.server.cpu_seconds()?;
                let t0 = Instant::now();
                tokio::time::sleep(self.config.idle).await;
                let used = running.server.cpu_seconds()? - before;
                Some(100.0 * used / t0.elapsed().as_secs_f64())
            } else {
                None
            };
            let members = Arc::new(population.clone());
            let source: OpSource = Arc::new(move |_, _| {
                let (m, lease) = &members[rand::thread_rng().gen_range(0..members.len())];
                Op::Renew(m.clone(), *lease)
            });
            self.measure(
                &running,
                &format!("renew-{}", count_label(size)),
                self.config.conns,
                source,
                None,
            )
            .await?;
            if system.is_durable() {
                let peak = running.server.peak_rss_kib().unwrap_or(0) as f64 / 1024.0;
                self.report.resources.push(ResourceResult {
                    system,
                    members: population.len(),
                    idle_cpu_percent,
                    rss_mib: running.server.rss_kib().unwrap_or(0) as f64 / 1024.0,
                    peak_rss_mib: if peak_reset { peak } else { f64::NAN },
                });
            }
        }
        if system.is_durable() {
            self.restart(&mut running, &population).await?;
        }
        Ok(())
    }

    /// Registrations while the server is killed with SIGKILL; then the restart is timed and
    /// every acknowledged member looked for.
    async fn restart(
        &mut self,
        running: &mut Running,
        population: &[(MemberName, i64)],
    ) -> anyhow::Result<()> {
        let clusters = self.config.clusters;
        let next = Arc::new(AtomicU64::new(0));
        let source: OpSource = Arc::new(move |_, _| {
            let i = next.fetch_add(1, Ordering::Relaxed) as usize;
            Op::Register(MemberName::new(
                format!("x{}", i % clusters),
                format!("k{i}"),
            ))
        });
        let options = RunOptions {
            pace: Pace::Closed,
            duration: Duration::from_secs(60),
            max_ops: None,
            stop_on_error: true,
            record_acks: true,
        };
        let conns = running.conns(16.min(self.config.conns)).await?;
        let load = tokio::spawn(load::run(conns, source, options, None));
        tokio::time::sleep(self.config.crash_after).await;
        running.server.kill9()?;
        let crash = load.await.context("the crash load panicked")?;
        log(&format!(
            "{}: killed with SIGKILL after {} acknowledged registrations",
            running.system.label(),
            crash.acked.len()
        ));

        let spec = running.server.spec.clone();
        self.report
            .commands
            .push(format!("(restart) {}", spec.command_line()));
        let t0 = Instant::now();
        running.server = Server::start(spec, &self.config.pid_dir)?;
        let probe_cluster = population
            .first()
            .map(|(m, _)| m.cluster.clone())
            .unwrap_or_else(|| "r0".into());
        wait_answering(running, &probe_cluster, Duration::from_secs(120), true).await?;
        let answer_after = t0.elapsed();

        let mut present: HashSet<(String, String)> = HashSet::new();
        let mut conn = Conn::connect(running.system, running.addr, running.ttl_secs).await?;
        for prefix in ["r", "x"] {
            for c in 0..clusters {
                let cluster = format!("{prefix}{c}");
                let answer = conn.execute(&Op::List(cluster.clone()), true).await?;
                present.extend(answer.nodes.into_iter().map(|n| (cluster.clone(), n)));
            }
        }
        let missing = |m: &MemberName| !present.contains(&(m.cluster.clone(), m.node.clone()));
        let missing_stored = population.iter().filter(|(m, _)| missing(m)).count();
        let missing_acked = crash
            .acked
            .iter()
            .filter(|(op, _)| matches!(op, Op::Register(m) if missing(m)))
            .count();
        let result = RestartResult {
            system: running.system,
            stored_members: population.len(),
            acked_during_crash: crash.acked.len(),
            answer_after_ms: answer_after.as_secs_f64() * 1000.0,
            missing_stored,
            missing_acked,
        };
        log(&format!("{result:?}"));
        self.report.restarts.push(result);
        Ok(())
    }

    async fn listing(&mut self, system: System) -> anyhow::Result<()> {
        let running = self.start(system, "list").await?;
        for size in [self.config.list_small, self.config.list_large] {
            let cluster = format!("l{}", count_label(size));
            let next = Arc::new(AtomicU64::new(0));
            let fill_cluster = cluster.clone();
            let source: OpSource = Arc::new(move |_, _| {
                let i = next.fetch_add(1, Ordering::Relaxed);
                Op::Register(MemberName::new(fill_cluster.clone(), format!("n{i}")))
            });
            let options = RunOptions {
                pace: Pace::Closed,
                duration: Duration::from_secs(3600),
                max_ops: Some(size as u64),
                stop_on_error: true,
                record_acks: false,
            };
            let filled = load::run(
                running.conns(self.config.conns.min(size)).await?,
                source,
                options,
                None,
            )
            .await;
            if filled.errors > 0 || filled.ops != size as u64 {
                bail!(
                    "{}: filling cluster {cluster} failed: {}",
                    system.label(),
                    filled.first_error.unwrap_or_default()
                );
            }
            let check = Conn::connect(system, running.addr, running.ttl_secs)
                .await?
                .execute(&Op::List(cluster.clone()), true)
                .await?;
            if check.nodes.len() != size {
                bail!(
                    "{}: cluster {cluster} lists {} members, not {size}",
                    system.label(),
                    check.nodes.len()
                );
            }
            let source: OpSource = Arc::new(move |_, _| Op::List(cluster.clone()));
            self.measure(
                &running,
                &format!("list-{}", count_label(size)),
                self.config.list_conns,
                source,
                (system == System::Registry && size == self.config.list_large)
                    .then_some(self.config.list_target_rate),
            )
            .await?;
        }
        Ok(())
    }
}

/// How many times [`Suite::start`] starts a server that exits before it answers.
const START_ATTEMPTS: u32 = 3;

/// Polls until the server answers a listing of `cluster` (non-empty when `need_members`).
async fn wait_answering(
    running: &mut Running,
    cluster: &str,
    timeout: Duration,
    need_members: bool,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    let mut last_error = String::new();
    while Instant::now() < deadline {
        running.server.check_running()?;
        let attempt = async {
            let mut conn = Conn::connect(running.system, running.addr, running.ttl_secs).await?;
            conn.execute(&Op::List(cluster.to_string()), true).await
        };
        match attempt.await {
            Ok(answer) if !need_members || !answer.nodes.is_empty() => return Ok(()),
            Ok(_) => last_error = "answered with no members".into(),
            Err(e) => last_error = format!("{e:#}"),
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    bail!(
        "{} did not answer within {}: {last_error}",
        running.server.spec.name,
        humantime::format_duration(timeout)
    )
}

fn system_slug(system: System) -> &'static str {
    match system {
        System::Registry => "registry",
        System::Replicated => "replicated",
        System::Etcd => "etcd",
        System::Redis => "redis",
        System::Ceiling => "ceiling",
    }
}

fn read_trim(path: impl AsRef<Path>) -> String {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

fn cpu_model() -> String {
    read_trim("/proc/cpuinfo")
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|rest| rest.trim_start_matches([' ', '\t', ':']).to_string())
        .unwrap_or_else(|| "unknown".into())
}

fn mem_total_mib() -> u64 {
    read_trim("/proc/meminfo")
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|rest| {
            rest.trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<u64>()
                .ok()
        })
        .map(|kib| kib / 1024)
        .unwrap_or(0)
}

fn version_of(program: &Path, flag: &str) -> String {
    std::process::Command::new(program)
        .arg(flag)
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.lines().next().map(str::to_string))
        .unwrap_or_else(|| format!("{} (version unknown)", program.display()))
}

/// The registry's bounds lifted past anything a workload stores (a registration phase stores
/// hundreds of thousands of members), so that the benchmark measures the work, not a 429.
fn unbounded_registry_limits() -> Vec<String> {
    [
        "--max-members-per-cluster",
        "1000000",
        "--max-clusters",
        "100000",
        "--max-members",
        "100000000",
        "--max-metadata-bytes",
        "68719476736",
    ]
    .into_iter()
    .map(String::from)
    .collect()
}
