//! Renders a [`Report`]: a plain table for the terminal and BENCHMARKS.md, with the ratios to
//! etcd, Redis and the ceiling and the issue's targets checked one by one.

use std::fmt::Write as _;

use crate::suite::{Report, Row};
use crate::systems::System;

/// The targets (issue 5, raised by issue 17), as numbers.
const RENEWAL_CEILING_RATIO: f64 = 0.7;
const REGISTRATION_REDIS_RATIO: f64 = 0.8;
const RENEWAL_ETCD_RATIO: f64 = 5.0;
const REGISTRATIONS_PER_SECOND: f64 = 20_000.0;
const REGISTRATION_P99_MS: f64 = 10.0;
const LIST_LARGE_P99_MS: f64 = 5.0;
const MEMORY_BASE_MIB: f64 = 64.0;
const MEMORY_PER_MEMBER_KIB: f64 = 1.0;
/// Issue 17: at the large population, whatever its size.
const MEMORY_LARGE_MIB: f64 = 100.0;
const RESTART_ANSWER_MS: f64 = 1000.0;
const IDLE_CPU_PERCENT: f64 = 1.0;

fn find<'a>(report: &'a Report, system: System, workload: &str, mode: &str) -> Option<&'a Row> {
    report
        .rows
        .iter()
        .find(|r| r.system == system && r.workload == workload && r.mode == mode)
}

fn workloads(report: &Report) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for r in &report.rows {
        if !out.contains(&r.workload) {
            out.push(r.workload.clone());
        }
    }
    out
}

fn systems(report: &Report) -> Vec<System> {
    let mut out = Vec::new();
    for r in &report.rows {
        if !out.contains(&r.system) {
            out.push(r.system);
        }
    }
    out
}

fn ms(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// The main table as Markdown (also readable in a terminal).
pub fn table(report: &Report) -> String {
    let mut out = String::new();
    out.push_str("| workload | system | mode | conns | offered req/s | achieved req/s | p50 ms | p99 ms | p99 ms, median repetition | p99.9 ms | errors | peak RSS MiB |\n");
    out.push_str("|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    for workload in workloads(report) {
        for system in systems(report) {
            for mode in ["closed", "fixed", "fixed@target"] {
                if let Some(r) = find(report, system, &workload, mode) {
                    let _ = writeln!(
                        out,
                        "| {} | {} | {} | {} | {} | {:.0} | {} | {} | {} | {} | {} | {:.0} |",
                        r.workload,
                        system.label(),
                        r.mode,
                        r.conns,
                        r.offered_rate
                            .map(|x| format!("{x:.0}"))
                            .unwrap_or_else(|| "as fast as answered".into()),
                        r.throughput,
                        ms(r.p50_ms),
                        ms(r.p99_ms),
                        if r.repetitions.is_empty() {
                            "–".to_string()
                        } else {
                            format!("{} (of {})", ms(r.median_p99_ms()), r.repetitions.len())
                        },
                        ms(r.p999_ms),
                        r.errors,
                        r.peak_rss_mib
                    );
                }
            }
        }
    }
    out
}

fn ratio_cell(numerator: Option<&Row>, denominator: Option<&Row>) -> String {
    match (numerator, denominator) {
        (Some(n), Some(d)) if d.throughput > 0.0 => format!("{:.2}×", n.throughput / d.throughput),
        _ => "–".into(),
    }
}

/// Closed-loop throughput of the registry divided by each other system's.
pub fn ratios(report: &Report) -> String {
    let mut out = String::new();
    out.push_str(
        "| workload | registry req/s | ÷ etcd | ÷ Redis | ÷ ceiling |\n|---|---:|---:|---:|---:|\n",
    );
    for workload in workloads(report) {
        let reg = find(report, System::Registry, &workload, "closed");
        let Some(r) = reg else { continue };
        let _ = writeln!(
            out,
            "| {workload} | {:.0} | {} | {} | {} |",
            r.throughput,
            ratio_cell(reg, find(report, System::Etcd, &workload, "closed")),
            ratio_cell(reg, find(report, System::Redis, &workload, "closed")),
            ratio_cell(reg, find(report, System::Ceiling, &workload, "closed")),
        );
    }
    out
}

/// The registry on etcd (`replicated`) against etcd itself and the registry on sled: renewals
/// should stay far above etcd's keepalives (they never touch etcd), registrations be bounded
/// by etcd's transactions.
pub fn replicated(report: &Report) -> String {
    let mut out = String::new();
    out.push_str("| workload | registry on etcd req/s | ÷ etcd 3.4 | ÷ registry on sled |\n|---|---:|---:|---:|\n");
    let mut any = false;
    for workload in workloads(report) {
        let rep = find(report, System::Replicated, &workload, "closed");
        let Some(r) = rep else { continue };
        any = true;
        let _ = writeln!(
            out,
            "| {workload} | {:.0} | {} | {} |",
            r.throughput,
            ratio_cell(rep, find(report, System::Etcd, &workload, "closed")),
            ratio_cell(rep, find(report, System::Registry, &workload, "closed")),
        );
    }
    if any {
        out
    } else {
        String::new()
    }
}

/// The restart test and the resources, one table each.
pub fn restart_and_resources(report: &Report) -> String {
    let mut out = String::new();
    out.push_str("| system | stored members | registrations acked during the kill | answers after (ms) | stored members missing | acked registrations missing |\n|---|---:|---:|---:|---:|---:|\n");
    for r in &report.restarts {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {:.0} | {} | {} |",
            r.system.label(),
            r.stored_members,
            r.acked_during_crash,
            r.answer_after_ms,
            r.missing_stored,
            r.missing_acked
        );
    }
    out.push('\n');
    out.push_str("| system | stored members | idle CPU (% of a core) | RSS MiB | peak RSS MiB (storing + renewing) |\n|---|---:|---:|---:|---:|\n");
    for r in &report.resources {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {:.0} | {:.0} |",
            r.system.label(),
            r.members,
            r.idle_cpu_percent
                .map(|c| format!("{c:.2}"))
                .unwrap_or_else(|| "–".into()),
            r.rss_mib,
            r.peak_rss_mib
        );
    }
    out
}

/// One target: what was measured and whether it holds.
#[derive(Debug)]
pub struct TargetCheck {
    pub target: String,
    pub measured: String,
    pub met: Option<bool>,
}

/// The issue's targets, checked against the registry's figures.
pub fn targets(report: &Report) -> Vec<TargetCheck> {
    let mut checks = Vec::new();
    let renew: Vec<&Row> = report
        .rows
        .iter()
        .filter(|r| {
            r.system == System::Registry && r.workload.starts_with("renew") && r.mode == "closed"
        })
        .collect();
    for r in &renew {
        let ceiling = find(report, System::Ceiling, &r.workload, "closed");
        let etcd = find(report, System::Etcd, &r.workload, "closed");
        checks.push(TargetCheck {
            target: format!(
                "{}: ≥ {RENEWAL_CEILING_RATIO}× the ceiling's req/s",
                r.workload
            ),
            measured: match ceiling {
                Some(c) => format!(
                    "{:.0} / {:.0} = {:.2}×",
                    r.throughput,
                    c.throughput,
                    r.throughput / c.throughput
                ),
                None => "no ceiling run".into(),
            },
            met: ceiling.map(|c| r.throughput >= RENEWAL_CEILING_RATIO * c.throughput),
        });
        checks.push(TargetCheck {
            target: format!(
                "{}: ≥ {RENEWAL_ETCD_RATIO}× etcd's keepalive rate",
                r.workload
            ),
            measured: match etcd {
                Some(e) => format!(
                    "{:.0} / {:.0} = {:.2}×",
                    r.throughput,
                    e.throughput,
                    r.throughput / e.throughput
                ),
                None => "no etcd run".into(),
            },
            met: etcd.map(|e| r.throughput >= RENEWAL_ETCD_RATIO * e.throughput),
        });
    }
    let reg_workload = workloads(report)
        .into_iter()
        .rfind(|w| w.starts_with("register-") && w != "register-1");
    if let Some(w) = reg_workload {
        let closed = find(report, System::Registry, &w, "closed");
        let fixed = find(report, System::Registry, &w, "fixed");
        let at_target = find(report, System::Registry, &w, "fixed@target");
        let redis = find(report, System::Redis, &w, "closed");
        checks.push(TargetCheck {
            target: format!("{w}: ≥ {REGISTRATIONS_PER_SECOND:.0} durable registrations/s"),
            measured: closed
                .map(|c| format!("{:.0}/s closed loop", c.throughput))
                .unwrap_or_else(|| "not run".into()),
            met: closed.map(|c| c.throughput >= REGISTRATIONS_PER_SECOND),
        });
        checks.push(TargetCheck {
            target: format!("{w}: ≥ {REGISTRATION_REDIS_RATIO}× Redis's closed loop"),
            measured: match (closed, redis) {
                (Some(c), Some(r)) => format!(
                    "{:.0} / {:.0} = {:.2}×",
                    c.throughput,
                    r.throughput,
                    c.throughput / r.throughput
                ),
                _ => "no Redis run".into(),
            },
            met: match (closed, redis) {
                (Some(c), Some(r)) => Some(c.throughput >= REGISTRATION_REDIS_RATIO * r.throughput),
                _ => None,
            },
        });
        for (row, at) in [
            (
                at_target,
                format!(
                    "{:.0}/s",
                    at_target.and_then(|t| t.offered_rate).unwrap_or(0.0)
                ),
            ),
            (fixed, "0.7× the closed loop".to_string()),
        ] {
            checks.push(TargetCheck {
                target: format!("{w}: p99 < {REGISTRATION_P99_MS} ms at {at}, worst repetition"),
                measured: row
                    .map(worst_and_median)
                    .unwrap_or_else(|| "not run".into()),
                met: row.map(|t| {
                    let offered = t.offered_rate.unwrap_or(0.0);
                    t.p99_ms < REGISTRATION_P99_MS && t.throughput >= 0.95 * offered
                }),
            });
        }
    }
    if let Some(w) = workloads(report)
        .into_iter()
        .rfind(|w| w.starts_with("list-"))
    {
        let fixed = find(report, System::Registry, &w, "fixed");
        let at_target = find(report, System::Registry, &w, "fixed@target");
        // Judged at the listing target rate when that phase ran; the 0.7× phase is shown too.
        let judged = at_target.or(fixed);
        checks.push(TargetCheck {
            target: format!("{w}: p99 < {LIST_LARGE_P99_MS} ms, worst repetition"),
            measured: match (at_target, fixed) {
                (Some(t), Some(f)) => format!(
                    "{} (at 0.7× the closed loop: {})",
                    worst_and_median(t),
                    worst_and_median(f)
                ),
                (None, Some(f)) => worst_and_median(f),
                _ => "not run".into(),
            },
            met: judged.map(|f| f.p99_ms < LIST_LARGE_P99_MS),
        });
    }
    let largest = report
        .resources
        .iter()
        .filter(|r| r.system == System::Registry)
        .map(|r| r.members)
        .max();
    for r in report
        .resources
        .iter()
        .filter(|r| r.system == System::Registry)
    {
        if r.idle_cpu_percent.is_some() {
            let cpu = r.idle_cpu_percent.unwrap_or(0.0);
            checks.push(TargetCheck {
                target: format!("idle CPU < {IDLE_CPU_PERCENT}% with {} members", r.members),
                measured: format!("{cpu:.2}% of a core"),
                met: Some(cpu < IDLE_CPU_PERCENT),
            });
        } else if Some(r.members) == largest && !report.smoke {
            checks.push(TargetCheck {
                target: format!(
                    "peak memory ≤ {MEMORY_LARGE_MIB:.0} MiB at {} members",
                    r.members
                ),
                measured: format!(
                    "peak RSS {:.0} MiB (now {:.0} MiB)",
                    r.peak_rss_mib, r.rss_mib
                ),
                met: Some(r.peak_rss_mib <= MEMORY_LARGE_MIB),
            });
        } else {
            let limit = MEMORY_BASE_MIB + MEMORY_PER_MEMBER_KIB * r.members as f64 / 1024.0;
            checks.push(TargetCheck {
                target: format!("memory < {MEMORY_BASE_MIB} MiB + {MEMORY_PER_MEMBER_KIB} KiB/member at {} members ({limit:.0} MiB)", r.members),
                measured: format!("peak RSS {:.0} MiB (now {:.0} MiB)", r.peak_rss_mib, r.rss_mib),
                met: Some(r.peak_rss_mib < limit),
            });
        }
    }
    for r in report
        .restarts
        .iter()
        .filter(|r| r.system == System::Registry)
    {
        checks.push(TargetCheck {
            target: format!(
                "restart with {} members answers within {RESTART_ANSWER_MS:.0} ms",
                r.stored_members
            ),
            measured: format!("{:.0} ms", r.answer_after_ms),
            met: Some(r.answer_after_ms <= RESTART_ANSWER_MS),
        });
        checks.push(TargetCheck {
            target: "restart: no acknowledged registration lost, nobody expired".into(),
            measured: format!(
                "{} stored + {} acked during the kill; missing {} + {}",
                r.stored_members, r.acked_during_crash, r.missing_stored, r.missing_acked
            ),
            met: Some(r.missing_stored == 0 && r.missing_acked == 0),
        });
    }
    checks
}

/// A fixed-rate row's p99: the worst repetition's, the median's, and where it was offered.
fn worst_and_median(r: &Row) -> String {
    format!(
        "p99 {} ms worst, {} ms median of {} at {:.0}/s offered ({:.0}/s achieved in the worst)",
        ms(r.p99_ms),
        ms(r.median_p99_ms()),
        r.repetitions.len().max(1),
        r.offered_rate.unwrap_or(0.0),
        r.throughput
    )
}

fn targets_table(report: &Report) -> String {
    let mut out = String::from("| target | measured | met |\n|---|---|---|\n");
    for c in targets(report) {
        let _ = writeln!(
            out,
            "| {} | {} | {} |",
            c.target,
            c.measured,
            match c.met {
                Some(true) => "yes",
                Some(false) => "**no**",
                None => "–",
            }
        );
    }
    out
}

/// Everything for the terminal.
pub fn terminal(report: &Report) -> String {
    let mut out = String::new();
    out.push_str(&table(report));
    out.push('\n');
    out.push_str(&ratios(report));
    out.push('\n');
    out.push_str(&replicated(report));
    out.push('\n');
    out.push_str(&restart_and_resources(report));
    out.push('\n');
    out.push_str(&targets_table(report));
    out
}

/// BENCHMARKS.md: how it was measured, the figures, and `analysis` (hand-written) at the end.
pub fn markdown(report: &Report, analysis: Option<&str>) -> String {
    let m = &report.machine;
    let mut out = String::new();
    out.push_str("# Benchmarks\n\n");
    out.push_str("<!-- Generated by `bash bench/run.sh` (crates/bench); the analysis at the end is bench/analysis.md. -->\n\n");
    if report.smoke {
        out.push_str("**This is a smoke run** (tiny populations, short phases): the figures only show that the benchmark works.\n\n");
    }
    out.push_str("The same workloads against rollcall-registry, a single-node etcd 3.4, Redis 7 with `appendonly yes` and `appendfsync always`, and a ceiling (a bare axum handler returning a small JSON body), all on loopback on one machine, client included. Run it with `bash bench/run.sh` (about 20 minutes on 2 cores: every fixed-rate phase runs three times) or `bash bench/run.sh --smoke` (seconds).\n\n");
    out.push_str("## Machine\n\n");
    let _ = writeln!(out, "- CPU: {} × {}", m.cores, m.cpu_model);
    let _ = writeln!(out, "- memory: {} MiB", m.mem_total_mib);
    let _ = writeln!(out, "- kernel: {}", m.kernel);
    let _ = writeln!(
        out,
        "- load average (1, 5, 15 min) before: `{}`; after: `{}`",
        m.load_before, m.load_after
    );
    let _ = writeln!(out, "- suite took {:.0} s", m.duration_s);
    for v in &report.versions {
        let _ = writeln!(out, "- {v}");
    }
    out.push_str("\nThe client (`rollcall-bench`) shares the cores with the server it measures, as the issue asks; every figure includes that contention.\n\n");
    out.push_str("## How it is measured\n\n");
    out.push_str("- **register-N**: every request stores a member never seen before, and the answer comes only once it is durable (registry: group-committed sled flush; etcd: `lease/grant` + `kv/put`, each a raft commit with an fsynced WAL; Redis: `MULTI SET … EX ttl; SADD … EXEC` with `appendfsync always`). N connections.\n");
    out.push_str("- **renew-N**: N stored members over the clusters; each request renews a random one (registry: the same `PUT`; etcd: `lease/keepalive`; Redis: `SET … EX ttl`, which Redis fsyncs too).\n");
    out.push_str("- **list-N**: every request lists a cluster of N members with their records (registry: `GET …/members`; etcd: `kv/range` over the prefix; Redis: `SMEMBERS` + `MGET`).\n");
    out.push_str("- **closed**: each connection sends its next request when the last is answered (throughput). **fixed**: open loop at the stated fraction of that throughput, each connection on its own schedule, latency counted from the intended send time (no coordinated omission; see crates/bench/src/load.rs). **fixed@target**: the registry at the rate a target is judged at: registrations at the issue's 20,000/s, the 10,000-member listing at 1,000/s (the issue names no rate for it; at 0.7× of the closed-loop throughput a listing run moves several GB/s of JSON through loopback, see below).\n");
    out.push_str("- Latency percentiles come from HdrHistogram (1 µs resolution, 3 significant digits). Peak RSS is VmHWM, reset through `/proc/PID/clear_refs` before each workload.\n");
    out.push_str("- etcd is driven through its v3 JSON gateway over HTTP/1.1 (one gRPC stream per keepalive request inside etcd), so etcd pays a translation the Go client would not.\n\n");
    out.push_str("Settings:\n\n");
    for (k, v) in &report.config {
        let _ = writeln!(out, "- {k}: {v}");
    }
    out.push_str("\nCommand lines (servers in the order started):\n\n```sh\n");
    for c in &report.commands {
        let _ = writeln!(out, "{c}");
    }
    out.push_str("```\n\n## Results\n\n");
    out.push_str(&table(report));
    out.push_str("\n### Ratios (closed-loop throughput)\n\n");
    out.push_str(&ratios(report));
    let replicated = replicated(report);
    if !replicated.is_empty() {
        out.push_str(
            "\n### The registry on etcd (`--store etcd`, one replica, a one-member etcd)\n\n",
        );
        out.push_str(&replicated);
    }
    out.push_str("\n### Restart after `kill -9`, idle CPU, memory\n\n");
    out.push_str(&restart_and_resources(report));
    out.push_str("\n### Targets (issue 5, raised by issue 17)\n\nA fixed-rate target counts as met only when the worst of its repetitions meets it.\n\n");
    out.push_str(&targets_table(report));
    if let Some(a) = analysis {
        out.push('\n');
        out.push_str(a.trim_end());
        out.push('\n');
    }
    out
}
