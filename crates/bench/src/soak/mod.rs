//! The soak of issue 14: the real registry binary under its heartbeat workload, first alone,
//! then while eight readers load the dashboard of a cluster of `dashboard_members` (before the
//! abuse, so that the page is that cluster's, as an operator's would be), then while abusive
//! clients of every kind come and go ([`abuse`]). It reports heartbeat latency per
//! phase, the registry's peak RSS, what every kind of client was answered, and fails when the
//! registry panicked, died, answered a 5xx the API does not document, let a socket outlive its
//! deadline, or (when given a cap) grew past it.
//!
//! `bash bench/soak.sh` runs the ten-minute form (RELIABILITY.md has its figures);
//! `bash bench/soak.sh --short` is the form `bash test.sh` runs.

pub mod abuse;
pub mod tally;
pub mod workload;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use hyper::Method;

use crate::server::{free_loopback_addr, Server, ServerSpec};
use crate::systems::HttpConn;
use tally::Tally;
use workload::Heartbeats;

/// How the soak runs.
#[derive(Debug, Clone)]
pub struct SoakConfig {
    pub registry_bin: PathBuf,
    pub work_dir: PathBuf,
    pub pid_dir: PathBuf,
    /// The heartbeat workload alone, then under abuse, then with the dashboard's readers.
    pub baseline: Duration,
    pub abuse: Duration,
    pub dashboard: Duration,
    /// Heartbeating members and their rate (heartbeats a second, all together).
    pub members: usize,
    pub rate: f64,
    pub conns: usize,
    /// Members of the cluster the dashboard shows (stored before the first phase).
    pub dashboard_members: usize,
    pub dashboard_readers: usize,
    /// The registry's header deadline; a socket open longer than it plus `close_grace` without
    /// a request head counts against the registry.
    pub header_read_timeout: Duration,
    pub close_grace: Duration,
    /// Blocking reads each abusive HTTP/2 connection opens.
    pub streams_per_connection: usize,
    /// Fail when the registry's peak RSS passes this many MiB.
    pub rss_cap_mib: Option<u64>,
    /// Flags for the registry beyond the listen address and data directory.
    pub registry_args: Vec<String>,
}

/// What the soak measured.
#[derive(Debug)]
pub struct SoakReport {
    pub phases: Vec<(String, Heartbeats)>,
    pub peak_rss_mib: f64,
    pub dashboard_pages: u64,
    pub dashboard_largest_page: usize,
    pub classes: BTreeMap<&'static str, tally::ClassCounts>,
    pub limit_refusals: BTreeMap<String, u64>,
    pub panicked: Vec<String>,
    pub exit: String,
    pub failures: Vec<String>,
}

/// Runs the soak; `Err` only when it could not run at all (the report lists what failed).
pub async fn run(config: &SoakConfig) -> anyhow::Result<SoakReport> {
    std::fs::create_dir_all(&config.work_dir)?;
    let addr = free_loopback_addr()?;
    let data = config.work_dir.join("data");
    let log = config.work_dir.join("registry.log");
    let mut args = vec![
        "--listen".to_string(),
        addr.to_string(),
        "--data-dir".into(),
        data.display().to_string(),
        "--header-read-timeout".into(),
        format!("{}ms", config.header_read_timeout.as_millis()),
    ];
    args.extend(config.registry_args.iter().cloned());
    let spec = ServerSpec {
        name: "soak-registry".into(),
        program: config.registry_bin.clone(),
        args,
        // The default log level (info), as operators run it: its cost is part of the figures.
        env: Vec::new(),
        log: log.clone(),
    };
    say(&format!("registry: {}", spec.command_line()));
    let mut server = Server::start(spec, &config.pid_dir)?;
    wait_healthy(&mut server, addr).await?;

    say(&format!(
        "storing {} members in the dashboard's cluster and {} heartbeating members",
        config.dashboard_members, config.members
    ));
    store_members(addr, "dash", config.dashboard_members, 16).await?;
    store_members(addr, "soak", config.members, 8).await?;

    let tally = Arc::new(Tally::default());
    let peak = Arc::new(AtomicU64::new(0));
    let sampling = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (pid, peak, done) = (server.pid(), peak.clone(), sampling.clone());
        tokio::spawn(async move {
            while !done.load(Ordering::Relaxed) {
                if let Some(kib) = rss_kib(pid) {
                    peak.fetch_max(kib, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };

    let mut phases = Vec::new();
    say(&format!(
        "phase 1: heartbeats alone for {}",
        humantime::format_duration(config.baseline)
    ));
    phases.push((
        "heartbeats alone".to_string(),
        heartbeat_phase(config, addr, config.baseline, &tally).await,
    ));

    say(&format!(
        "phase 2: heartbeats while {} readers load the dashboard of {} members, for {}",
        config.dashboard_readers,
        config.dashboard_members,
        humantime::format_duration(config.dashboard)
    ));
    let stop_readers = Arc::new(AtomicBool::new(false));
    let readers = tokio::spawn(workload::dashboard_readers(
        addr,
        config.dashboard_readers,
        stop_readers.clone(),
        tally.clone(),
    ));
    phases.push((
        format!(
            "heartbeats with {} dashboard readers",
            config.dashboard_readers
        ),
        heartbeat_phase(config, addr, config.dashboard, &tally).await,
    ));
    stop_readers.store(true, Ordering::Relaxed);
    let (dashboard_pages, dashboard_largest_page) = readers.await.unwrap_or((0, 0));

    say(&format!(
        "phase 3: heartbeats while abusive clients of {} kinds come and go, for {}",
        abuse::KINDS.len(),
        humantime::format_duration(config.abuse)
    ));
    let stop_abuse = Arc::new(AtomicBool::new(false));
    let mut abusers = abuse::start(
        abuse::AbuseOptions {
            addr,
            close_within: config.header_read_timeout + config.close_grace,
            streams_per_connection: config.streams_per_connection,
        },
        stop_abuse.clone(),
        tally.clone(),
    );
    phases.push((
        "heartbeats under abuse".to_string(),
        heartbeat_phase(config, addr, config.abuse, &tally).await,
    ));
    stop_abuse.store(true, Ordering::Relaxed);
    while abusers.join_next().await.is_some() {}

    let limit_refusals = limit_refusals(addr).await.unwrap_or_default();
    let alive = !server.has_exited();
    sampling.store(true, Ordering::Relaxed);
    let _ = sampler.await;
    let peak_hwm = server.peak_rss_kib().unwrap_or(0);
    let peak_rss_mib = peak.load(Ordering::Relaxed).max(peak_hwm) as f64 / 1024.0;
    server.stop(Duration::from_secs(10))?;
    let exit = if alive {
        "running until the end, then stopped with SIGTERM".to_string()
    } else {
        "DIED during the soak".to_string()
    };
    let log_text = std::fs::read_to_string(&log).unwrap_or_default();
    let panicked: Vec<String> = log_text
        .lines()
        .filter(|l| l.contains("panicked"))
        .take(5)
        .map(str::to_string)
        .collect();

    let classes = tally.snapshot();
    let mut failures = Vec::new();
    if !alive {
        failures.push("the registry died during the soak".into());
    }
    if !panicked.is_empty() {
        failures.push(format!("the registry panicked: {}", panicked[0]));
    }
    for (class, counts) in &classes {
        if !counts.undocumented.is_empty() {
            failures.push(format!(
                "{class}: undocumented 5xx answers, e.g. {}",
                counts.undocumented[0]
            ));
        }
        if counts.outlived_deadline > 0 {
            failures.push(format!(
                "{class}: {} sockets still open {} after they connected without a request head",
                counts.outlived_deadline,
                humantime::format_duration(config.header_read_timeout + config.close_grace)
            ));
        }
    }
    if let Some(cap) = config.rss_cap_mib {
        if peak_rss_mib > cap as f64 {
            failures.push(format!(
                "peak RSS {peak_rss_mib:.0} MiB is over the cap of {cap} MiB"
            ));
        }
    }
    if phases.iter().any(|(_, h)| h.sent == 0) {
        failures.push("a phase sent no heartbeat".into());
    }
    Ok(SoakReport {
        phases,
        peak_rss_mib,
        dashboard_pages,
        dashboard_largest_page,
        classes,
        limit_refusals,
        panicked,
        exit,
        failures,
    })
}

async fn heartbeat_phase(
    config: &SoakConfig,
    addr: SocketAddr,
    length: Duration,
    tally: &Arc<Tally>,
) -> Heartbeats {
    let stop = Arc::new(AtomicBool::new(false));
    let timer = {
        let stop = stop.clone();
        tokio::spawn(async move {
            tokio::time::sleep(length).await;
            stop.store(true, Ordering::Relaxed);
        })
    };
    let result = workload::heartbeats(
        addr,
        "soak",
        config.members,
        config.rate,
        config.conns,
        stop,
        tally.clone(),
    )
    .await;
    let _ = timer.await;
    result
}

/// Stores `n` members of `cluster` over `conns` connections.
async fn store_members(
    addr: SocketAddr,
    cluster: &'static str,
    n: usize,
    conns: usize,
) -> anyhow::Result<()> {
    let mut tasks = tokio::task::JoinSet::new();
    for c in 0..conns {
        tasks.spawn(async move {
            let mut http = HttpConn::connect(addr).await?;
            for i in (c..n).step_by(conns) {
                let path = format!("/v1/clusters/{cluster}/members/m{i}");
                let (status, body) = http
                    .request(Method::PUT, &path, Some(workload::heartbeat_body(i, None)))
                    .await?;
                if !status.is_success() {
                    bail!("PUT {path}: {status} {}", String::from_utf8_lossy(&body));
                }
            }
            anyhow::Ok(())
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.context("a storing task failed")??;
    }
    Ok(())
}

async fn wait_healthy(server: &mut Server, addr: SocketAddr) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while tokio::time::Instant::now() < deadline {
        server.check_running()?;
        if let Ok(mut http) = HttpConn::connect(addr).await {
            if let Ok((status, _)) = http.request(Method::GET, "/health", None).await {
                if status.is_success() {
                    return Ok(());
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("the registry did not answer /health within 30 s")
}

/// `rollcall_limit_refusals_total` by limit, from `/metrics`.
async fn limit_refusals(addr: SocketAddr) -> anyhow::Result<BTreeMap<String, u64>> {
    let mut http = HttpConn::connect(addr).await?;
    let (_, body) = http.request(Method::GET, "/metrics", None).await?;
    let text = String::from_utf8_lossy(&body);
    Ok(text
        .lines()
        .filter_map(|l| l.strip_prefix("rollcall_limit_refusals_total{limit=\""))
        .filter_map(|rest| {
            let (limit, value) = rest.split_once("\"} ")?;
            Some((limit.to_string(), value.trim().parse().ok()?))
        })
        .collect())
}

fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

fn say(line: &str) {
    eprintln!("[soak] {line}");
}

/// The report as Markdown, for the terminal and RELIABILITY.md.
pub fn render(report: &SoakReport, config: &SoakConfig) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "Heartbeats: {} members, {}/s over {} connections; dashboard cluster: {} members.\n",
        config.members, config.rate, config.conns, config.dashboard_members
    );
    out.push_str("| phase | heartbeats | p50 ms | p99 ms | max ms | reconnects |\n|---|---:|---:|---:|---:|---:|\n");
    for (name, h) in &report.phases {
        let _ = writeln!(
            out,
            "| {name} | {} | {:.2} | {:.2} | {:.2} | {} |",
            h.sent,
            h.p_ms(0.5),
            h.p_ms(0.99),
            h.latency_us.max() as f64 / 1000.0,
            h.reconnects
        );
    }
    if let [(_, alone), (_, dash), (_, abused)] = &report.phases[..] {
        let base = alone.p_ms(0.99).max(0.001);
        let _ = writeln!(
            out,
            "\np99 under abuse: {:.2}× alone; with the dashboard's readers: {:.2}× alone.",
            abused.p_ms(0.99) / base,
            dash.p_ms(0.99) / base
        );
    }
    let _ = writeln!(
        out,
        "\nPeak RSS {:.0} MiB; dashboard: {} pages loaded, the largest {} KiB; registry {}.\n",
        report.peak_rss_mib,
        report.dashboard_pages,
        report.dashboard_largest_page / 1024,
        report.exit
    );
    out.push_str("| client kind | answers by status | closed by the registry | outlived the deadline | transport errors |\n|---|---|---:|---:|---:|\n");
    for (class, c) in &report.classes {
        let statuses: Vec<String> = c.statuses.iter().map(|(s, n)| format!("{s}×{n}")).collect();
        let _ = writeln!(
            out,
            "| {class} | {} | {} | {} | {} |",
            if statuses.is_empty() {
                "—".into()
            } else {
                statuses.join(" ")
            },
            c.closed_by_server,
            c.outlived_deadline,
            c.transport_errors
        );
    }
    let refused: Vec<String> = report
        .limit_refusals
        .iter()
        .filter(|(_, n)| **n > 0)
        .map(|(l, n)| format!("{l} {n}"))
        .collect();
    let _ = writeln!(
        out,
        "\nRefusals by limit (rollcall_limit_refusals_total): {}.",
        if refused.is_empty() {
            "none".into()
        } else {
            refused.join(", ")
        }
    );
    if report.failures.is_empty() {
        out.push_str("\nResult: pass (no panic, no undocumented 5xx, every socket closed on time");
        if let Some(cap) = config.rss_cap_mib {
            let _ = write!(out, ", peak RSS under {cap} MiB");
        }
        out.push_str(").\n");
    } else {
        out.push_str("\nResult: FAIL\n");
        for f in &report.failures {
            let _ = writeln!(out, "- {f}");
        }
    }
    out
}
