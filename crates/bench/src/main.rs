//! The `rollcall-bench` binary: `suite` runs every workload against every system and writes the
//! results; `report` renders saved results again. `bench/run.sh` is the usual way in.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use rollcall_bench::report;
use rollcall_bench::suite::{self, Report, SuiteConfig};
use rollcall_bench::systems::System;

#[derive(Debug, Parser)]
#[command(
    name = "rollcall-bench",
    about = "The same heartbeat workloads against rollcall-registry, etcd, Redis and a bare axum ceiling"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Starts every server on loopback, runs the workloads, writes the results.
    Suite(Box<SuiteArgs>),
    /// Renders saved results (JSON from `suite`) again.
    Report(OutputArgs),
    /// One workload against a server that is already running (for profiling it).
    Load(LoadArgs),
    /// The registry binary under heartbeats while abusive clients come and go (issue 14).
    Soak(SoakArgs),
}

#[derive(Debug, clap::Args)]
struct SoakArgs {
    #[arg(long)]
    registry_bin: PathBuf,
    /// Scratch directory for the registry's data and log.
    #[arg(long)]
    work_dir: PathBuf,
    /// The registry's pid is written here, for the caller's cleanup trap.
    #[arg(long)]
    pid_dir: PathBuf,
    /// The short form `bash test.sh` runs: phases (alone, dashboard readers, abuse) of 8 s,
    /// 8 s and 20 s, 2,000 dashboard members, a 256 MiB RSS cap. Without it: 2, 2 and 6
    /// minutes, 10,000 members, no cap.
    #[arg(long)]
    short: bool,
    /// Heartbeats a second, all members together.
    #[arg(long, default_value_t = 500.0)]
    rate: f64,
    /// Writes the report (Markdown) here too.
    #[arg(long)]
    markdown: Option<PathBuf>,
    /// A flag for the registry (repeatable), after the soak's own.
    #[arg(long = "registry-arg", allow_hyphen_values = true)]
    registry_args: Vec<String>,
}

#[derive(Debug, clap::Args)]
struct LoadArgs {
    #[arg(long, default_value = "registry")]
    system: System,
    #[arg(long, default_value = "127.0.0.1:7400")]
    addr: std::net::SocketAddr,
    #[arg(long)]
    workload: LoadWorkload,
    /// Members stored first (renew) or in the listed cluster (list).
    #[arg(long, default_value_t = 10_000)]
    members: usize,
    #[arg(long, default_value_t = 100)]
    clusters: usize,
    #[arg(long, default_value_t = 64)]
    conns: usize,
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Fixed rate in requests per second; closed loop without it.
    #[arg(long)]
    rate: Option<f64>,
    #[arg(long, default_value_t = 2)]
    client_threads: usize,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum LoadWorkload {
    Register,
    Renew,
    List,
}

#[derive(Debug, clap::Args)]
struct OutputArgs {
    /// Results as JSON (written by `suite`, read by `report`).
    #[arg(long)]
    json: PathBuf,
    /// Where to write BENCHMARKS.md (not written when absent).
    #[arg(long)]
    markdown: Option<PathBuf>,
    /// Hand-written analysis appended to BENCHMARKS.md.
    #[arg(long)]
    analysis: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
struct SuiteArgs {
    #[command(flatten)]
    output: OutputArgs,
    #[arg(long)]
    registry_bin: PathBuf,
    #[arg(long)]
    ceiling_bin: PathBuf,
    #[arg(long, default_value = "/usr/bin/etcd")]
    etcd_bin: PathBuf,
    #[arg(long, default_value = "/usr/bin/redis-server")]
    redis_bin: PathBuf,
    /// Scratch directory for data directories and server logs.
    #[arg(long)]
    work_dir: PathBuf,
    /// Every started server's pid is written here, for the caller's cleanup trap.
    #[arg(long)]
    pid_dir: PathBuf,
    /// Systems to run, comma-separated.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "registry,replicated,redis,etcd,ceiling"
    )]
    systems: Vec<System>,
    /// Tiny populations and short phases, to check that the benchmark works.
    #[arg(long)]
    smoke: bool,
    /// Length of each measured phase [default: 8s, smoke 500ms].
    #[arg(long, value_parser = humantime::parse_duration)]
    phase: Option<Duration>,
    /// A line for BENCHMARKS.md's machine section (repeatable), e.g. the revision measured.
    #[arg(long)]
    note: Vec<String>,
    /// Client runtime threads.
    #[arg(long, default_value_t = 2)]
    client_threads: usize,
    /// Connections for registrations and renewals.
    #[arg(long, default_value_t = 64)]
    conns: usize,
    /// Connections for listings.
    #[arg(long, default_value_t = 16)]
    list_conns: usize,
    /// The fixed-rate phase offers this fraction of the closed-loop throughput.
    #[arg(long, default_value_t = 0.7)]
    rate_fraction: f64,
    /// How many times each fixed-rate phase runs; it is judged by the worst [default: 3,
    /// smoke 2].
    #[arg(long)]
    repetitions: Option<usize>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            suite::log(&format!("failed: {e:#}"));
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Report(output) => {
            let json = std::fs::read_to_string(&output.json)
                .with_context(|| format!("cannot read {}", output.json.display()))?;
            let report: Report = serde_json::from_str(&json).context("bad results file")?;
            write_outputs(&report, &output, false)
        }
        Command::Load(args) => {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(args.client_threads.max(1))
                .enable_all()
                .build()
                .context("cannot start the client runtime")?;
            let line = runtime.block_on(load_once(args))?;
            writeln!(std::io::stdout(), "{line}")?;
            Ok(())
        }
        Command::Soak(args) => soak(args),
        Command::Suite(args) => {
            let args = *args;
            let command = std::env::args().collect::<Vec<_>>().join(" ");
            let smoke = args.smoke;
            let config = SuiteConfig {
                registry_bin: args.registry_bin,
                ceiling_bin: args.ceiling_bin,
                etcd_bin: args.etcd_bin,
                redis_bin: args.redis_bin,
                work_dir: args.work_dir,
                pid_dir: args.pid_dir,
                systems: args.systems,
                phase: args.phase.unwrap_or(if smoke {
                    Duration::from_millis(500)
                } else {
                    Duration::from_secs(8)
                }),
                idle: if smoke {
                    Duration::from_millis(500)
                } else {
                    Duration::from_secs(10)
                },
                crash_after: if smoke {
                    Duration::from_millis(300)
                } else {
                    Duration::from_secs(1)
                },
                clusters: if smoke { 10 } else { 100 },
                small_population: if smoke { 500 } else { 10_000 },
                large_population: if smoke { 2_000 } else { 100_000 },
                list_small: 10,
                list_large: if smoke { 500 } else { 10_000 },
                conns: args.conns,
                list_conns: args.list_conns,
                rate_fraction: args.rate_fraction,
                registration_target_rate: if smoke { 1_000.0 } else { 20_000.0 },
                list_target_rate: if smoke { 200.0 } else { 1_000.0 },
                ttl_secs: 600,
                smoke,
                repetitions: args.repetitions.unwrap_or(if smoke { 2 } else { 3 }),
            };
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(args.client_threads.max(1))
                .enable_all()
                .build()
                .context("cannot start the client runtime")?;
            let mut report = runtime.block_on(suite::run(config, command))?;
            report.versions.extend(args.note);
            std::fs::write(&args.output.json, serde_json::to_string_pretty(&report)?)
                .with_context(|| format!("cannot write {}", args.output.json.display()))?;
            write_outputs(&report, &args.output, true)?;
            let failures: Vec<String> = report
                .rows
                .iter()
                .filter(|r| r.ops == 0)
                .map(|r| format!("{} {} {}", r.system.label(), r.workload, r.mode))
                .collect();
            if !failures.is_empty() {
                anyhow::bail!("no request succeeded in: {}", failures.join("; "));
            }
            Ok(())
        }
    }
}

/// The registry's flags in the soak: bounds small enough that the abuse reaches them.
const SOAK_REGISTRY_ARGS: &[&str] = &[
    "--ttl",
    "10m",
    "--interval",
    "3m",
    "--max-connections",
    "256",
    "--max-clusters",
    "200",
    "--max-members-per-cluster",
    "20000",
    "--max-watchers",
    "64",
    "--max-streams-per-connection",
    "50",
    "--idle-timeout",
    "5s",
    "--max-members",
    "50000",
    "--max-metadata-bytes",
    "33554432",
];

fn soak(args: SoakArgs) -> anyhow::Result<()> {
    use rollcall_bench::soak;
    let (short, s) = (args.short, |secs: u64| Duration::from_secs(secs));
    let mut registry_args: Vec<String> = SOAK_REGISTRY_ARGS.iter().map(|a| a.to_string()).collect();
    registry_args.extend(args.registry_args);
    let config = soak::SoakConfig {
        registry_bin: args.registry_bin,
        work_dir: args.work_dir,
        pid_dir: args.pid_dir,
        baseline: if short { s(8) } else { s(120) },
        dashboard: if short { s(8) } else { s(120) },
        abuse: if short { s(20) } else { s(360) },
        members: 200,
        rate: args.rate,
        conns: 8,
        dashboard_members: if short { 2_000 } else { 10_000 },
        dashboard_readers: 8,
        header_read_timeout: s(2),
        close_grace: s(3),
        streams_per_connection: 100,
        rss_cap_mib: short.then_some(256),
        registry_args,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the client runtime")?;
    let report = runtime.block_on(soak::run(&config))?;
    let text = soak::render(&report, &config);
    std::io::stdout().write_all(text.as_bytes())?;
    if let Some(path) = &args.markdown {
        std::fs::write(path, &text).with_context(|| format!("cannot write {}", path.display()))?;
    }
    if !report.failures.is_empty() {
        anyhow::bail!("the soak failed: {}", report.failures.join("; "));
    }
    Ok(())
}

fn write_outputs(report: &Report, output: &OutputArgs, _fresh: bool) -> anyhow::Result<()> {
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(report::terminal(report).as_bytes())?;
    if let Some(path) = &output.markdown {
        let analysis = match &output.analysis {
            Some(p) => Some(
                std::fs::read_to_string(p)
                    .with_context(|| format!("cannot read {}", p.display()))?,
            ),
            None => None,
        };
        std::fs::write(path, report::markdown(report, analysis.as_deref()))
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}

/// `rollcall-bench load`: stores what the workload needs, runs it once, returns a summary line.
async fn load_once(args: LoadArgs) -> anyhow::Result<String> {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;

    use rand::Rng;
    use rollcall_bench::load::{self, OpSource, Pace, RunOptions};
    use rollcall_bench::systems::{Conn, MemberName, Op};

    let ttl_secs = 600;
    let connect = |n: usize| async move {
        let mut conns = Vec::with_capacity(n);
        for _ in 0..n {
            conns.push(Conn::connect(args.system, args.addr, ttl_secs).await?);
        }
        anyhow::Ok(conns)
    };
    let clusters = args.clusters.max(1);
    let tag = std::process::id();
    let prepare = |cluster_of: Arc<dyn Fn(usize) -> String + Send + Sync>| {
        let next = Arc::new(AtomicU64::new(0));
        let source: OpSource = Arc::new(move |_, _| {
            let i = next.fetch_add(1, Ordering::Relaxed) as usize;
            Op::Register(MemberName::new(cluster_of(i), format!("p{tag}-{i}")))
        });
        source
    };
    let fill = |source: OpSource, n: usize| async move {
        let options = RunOptions {
            pace: Pace::Closed,
            duration: Duration::from_secs(3600),
            max_ops: Some(n as u64),
            stop_on_error: true,
            record_acks: true,
        };
        let result = load::run(
            connect(args.conns.min(n.max(1))).await?,
            source,
            options,
            None,
        )
        .await;
        if result.errors > 0 {
            anyhow::bail!(
                "storing members failed: {}",
                result.first_error.unwrap_or_default()
            );
        }
        anyhow::Ok(result.acked)
    };
    let source: OpSource = match args.workload {
        LoadWorkload::Register => {
            let next = Arc::new(AtomicU64::new(0));
            Arc::new(move |_, _| {
                let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                Op::Register(MemberName::new(
                    format!("g{}", i % clusters),
                    format!("r{tag}-{i}"),
                ))
            })
        }
        LoadWorkload::Renew => {
            let acked = fill(
                prepare(Arc::new(move |i| format!("r{}", i % clusters))),
                args.members,
            )
            .await?;
            let members: Arc<Vec<(MemberName, i64)>> = Arc::new(
                acked
                    .into_iter()
                    .filter_map(|(op, lease)| match op {
                        Op::Register(m) => Some((m, lease)),
                        _ => None,
                    })
                    .collect(),
            );
            anyhow::ensure!(!members.is_empty(), "no member stored");
            Arc::new(move |_, _| {
                let (m, lease) = &members[rand::thread_rng().gen_range(0..members.len())];
                Op::Renew(m.clone(), *lease)
            })
        }
        LoadWorkload::List => {
            let cluster = format!("list{tag}");
            let c = cluster.clone();
            fill(prepare(Arc::new(move |_| c.clone())), args.members).await?;
            Arc::new(move |_, _| Op::List(cluster.clone()))
        }
    };
    let options = RunOptions {
        pace: args.rate.map(Pace::FixedRate).unwrap_or(Pace::Closed),
        duration: args.duration,
        max_ops: None,
        stop_on_error: false,
        record_acks: false,
    };
    let r = load::run(connect(args.conns).await?, source, options, None).await;
    Ok(format!(
        "{:?} {:?} conns={} rate={}: {:.0} req/s p50 {:.3} ms p99 {:.3} ms p99.9 {:.3} ms max {:.3} ms errors {}{}",
        args.system,
        args.workload,
        args.conns,
        args.rate.map(|r| format!("{r:.0}")).unwrap_or_else(|| "closed".into()),
        r.throughput(),
        r.percentile_ms(0.5),
        r.percentile_ms(0.99),
        r.percentile_ms(0.999),
        r.latency_us.max() as f64 / 1000.0,
        r.errors,
        r.first_error.map(|e| format!(" (first: {e})")).unwrap_or_default()
    ))
}
