//! The dashboard at `/`: server-rendered HTML and CSS, no front-end build.
//!
//! The page holds a `#live` section (clusters, members, recent decisions) that is also served
//! alone at `/dashboard/live`. A few lines of script listen to the Server-Sent Events at
//! `/v1/events`, which fire on every membership change or decision, and swap the section in
//! place, so the page follows the registry without a reload. Ages are refreshed every second.

use std::time::Duration;

use maud::{html, Markup, PreEscaped, DOCTYPE};
use rollcall_protocol::ClusterDetail;

use crate::membership::{DecisionRecord, Membership};

/// Most clusters the page shows; the rest are counted.
const MAX_CLUSTERS_SHOWN: usize = 100;

/// The whole page.
pub fn page(membership: &Membership) -> Markup {
    let timing = membership.timing();
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { "rollcall registry" }
                style { (PreEscaped(CSS)) }
            }
            body {
                header {
                    h1 { "rollcall" span.sub { " bootstrap registry" } }
                    p.meta {
                        "TTL " (fmt(timing.ttl)) " · heartbeat every " (fmt(timing.interval))
                        " · startup grace " (fmt(timing.startup_grace)) " · quiet period " (fmt(timing.quiet_period))
                        " · version " (env!("CARGO_PKG_VERSION"))
                    }
                }
                main #live { (live(membership)) }
                footer {
                    "JSON: " a href="/v1/clusters" { "/v1/clusters" } " · " a href="/members?format=text" { "/members" }
                    " · " a href="/metrics" { "/metrics" } " · " a href="/health" { "/health" }
                    span #conn.conn { "" }
                }
                // Served apart, so that the page's Content-Security-Policy allows no inline
                // script at all (`script-src 'self'`).
                script src="/dashboard.js" {}
            }
        }
    }
}

/// The part of the page that follows the membership.
pub fn live(membership: &Membership) -> Markup {
    let mut clusters = membership.clusters();
    clusters.sort_by(|a, b| {
        b.live_members
            .cmp(&a.live_members)
            .then_with(|| a.cluster.cmp(&b.cluster))
    });
    let hidden = clusters.len().saturating_sub(MAX_CLUSTERS_SHOWN);
    let details: Vec<ClusterDetail> = clusters
        .iter()
        .take(MAX_CLUSTERS_SHOWN)
        .filter_map(|c| membership.cluster_detail(&c.cluster))
        .collect();
    let decisions = membership.recent_decisions();
    let alarms: Vec<&DecisionRecord> = decisions
        .iter()
        .filter(|d| d.outcome == "wrong_raft")
        .collect();
    html! {
        @if !alarms.is_empty() {
            section.alarm {
                h2 { "Another raft under a cluster's name" }
                @for a in &alarms {
                    p { "Cluster " strong { (a.cluster) } ", node " strong { (a.node) } ": " (a.reason) }
                }
            }
        }
        @if details.is_empty() {
            section.empty {
                h2 { "No cluster has registered yet" }
                p { "Members appear here as soon as they heartbeat. Start a bootstrap instance and a three-node raft with:" }
                pre { "bash start.sh" }
                p { "or register a member by hand:" }
                pre { "curl -XPUT http://HOST:PORT/v1/clusters/default/members/node-1 \\\n     -H 'content-type: application/json' \\\n     -d '{\"address\":\"10.0.0.1:8301\",\"role\":\"server\"}'" }
            }
        }
        @for d in &details { (cluster(d)) }
        @if hidden > 0 { p.more { "and " (hidden) " more clusters: see " a href="/v1/clusters" { "/v1/clusters" } } }
        (decision_table(&decisions))
    }
}

fn cluster(d: &ClusterDetail) -> Markup {
    let s = &d.summary;
    html! {
        section.cluster data-cluster=(s.cluster) {
            h2 { (s.cluster) }
            p.counts {
                span.pill { (s.live_servers) " servers" } " "
                span.pill { (s.live_agents) " agents" } " "
                @if let Some(b) = &d.bootstrap {
                    span.pill.boot title="the node that was allowed to start this raft" {
                        "bootstrapped by " (b.node) " (generation " (b.generation) ")"
                        @if !b.live { " · grant released" }
                    }
                }
                " "
                @match &d.raft {
                    Some(r) => span.pill.boot title="once a raft is known, only an operator's reset lets a new one start" {
                        "raft known: generation " (r.generation)
                        @if let Some(e) = r.expect { ", size " (e) }
                    },
                    None => span.pill title="no member has heartbeated since the last grant" { "raft not known yet" },
                }
            }
            @if let Some(r) = &d.last_reset {
                p.reset { "Reset by an operator: generation " (r.from_generation) " (" (r.reason) ")"
                    @if !r.forced.is_empty() { ", forgetting " (r.forced.join(", ")) } }
            }
            @if d.members.is_empty() {
                p.none { "No live member. " (d.claims.len()) " live claim(s)." }
            } @else {
                div.scroll {
                    table {
                        thead { tr { th { "node" } th { "address" } th { "role" } th { "raft" } th { "leader it sees" } th { "peers" } th { "last heartbeat" } th { "expires in" } } }
                        tbody {
                            @for m in &d.members {
                                tr data-node=(m.node) {
                                    td.node { (m.node) @if m.status.is_leader == Some(true) { " " span.leader { "leader" } } }
                                    td.mono { (m.address) }
                                    td { (m.role) }
                                    td { @match m.status.in_raft { Some(true) => "in raft", Some(false) => "not in raft", None => "–" } }
                                    td.mono { (m.status.leader.as_deref().unwrap_or("–")) }
                                    td { @match m.status.peers { Some(p) => (p), None => "–" } }
                                    td data-age-ms=(m.age_ms) { (fmt_ms(m.age_ms)) " ago" }
                                    td data-expires-ms=(m.expires_in_ms) { (fmt_ms(m.expires_in_ms)) }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

fn decision_table(decisions: &[DecisionRecord]) -> Markup {
    html! {
        section.decisions {
            h2 { "Recent decisions" }
            @if decisions.is_empty() {
                p.none { "No claim yet. Each role the registry grants, and why, shows here." }
            } @else {
                div.scroll {
                    table {
                        thead { tr { th { "when" } th { "cluster" } th { "node" } th { "outcome" } th { "why" } } }
                        tbody {
                            @for d in decisions {
                                tr {
                                    td.when data-at-ms=(d.at_unix_ms) { "" }
                                    td { (d.cluster) }
                                    td { (d.node) }
                                    td { span class={ "outcome " (d.outcome) } { (d.outcome) } }
                                    td.reason { (d.reason) }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

fn fmt(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

fn fmt_ms(ms: u64) -> String {
    if ms < 1000 {
        format!("{ms}ms")
    } else {
        format!("{:.1}s", ms as f64 / 1000.0)
    }
}

const CSS: &str = r#"
:root { --fg:#1d232b; --muted:#5f6b7a; --line:#e3e7ec; --bg:#f7f9fb; --accent:#2f6fde; --ok:#1e8a4c; --warn:#b7791f; }
* { box-sizing: border-box; }
body { margin:0; font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif; color:var(--fg); background:var(--bg); }
header, main, footer { max-width: 1100px; margin: 0 auto; padding: 0 16px; }
header { padding-top: 18px; }
h1 { margin: 0; font-size: 24px; } h1 .sub { color: var(--muted); font-weight: 400; }
h2 { font-size: 18px; margin: 0 0 6px; }
.meta, footer, .none, .more { color: var(--muted); font-size: 13px; }
section { background:#fff; border:1px solid var(--line); border-radius:8px; padding:14px 16px; margin:14px 0; }
.scroll { overflow-x: auto; }
table { border-collapse: collapse; width: 100%; min-width: 640px; }
th, td { text-align:left; padding:6px 8px; border-bottom:1px solid var(--line); white-space: nowrap; }
th { font-size:12px; text-transform:uppercase; letter-spacing:.04em; color:var(--muted); font-weight:600; }
td.reason { white-space: normal; min-width: 280px; }
.mono, pre { font-family: ui-monospace,SFMono-Regular,Menlo,monospace; font-size: 13px; }
pre { background:#f0f3f6; padding:10px; border-radius:6px; overflow-x:auto; }
.pill { display:inline-block; background:#eef2f7; border-radius:999px; padding:2px 10px; font-size:13px; }
.pill.boot { background:#e8f0fe; color:var(--accent); }
.leader { color:#fff; background:var(--ok); border-radius:4px; padding:0 6px; font-size:12px; }
.outcome { border-radius:4px; padding:0 6px; font-size:12px; background:#eef2f7; }
.outcome.bootstrap { background:#e8f0fe; color:var(--accent); } .outcome.server { background:#e6f4ec; color:var(--ok); }
.outcome.not_ready { background:#fdf3e1; color:var(--warn); }
.outcome.wrong_raft, .outcome.reset_required, .outcome.address_conflict, .outcome.expect_conflict { background:#fde8e8; color:#b3261e; font-weight:600; }
.outcome.reset { background:#fde8e8; color:#b3261e; }
p.reset { color:#b3261e; font-size:13px; }
section.alarm { border:2px solid #b3261e; border-radius:8px; padding:8px 16px; background:#fff5f5; }
section.alarm h2 { color:#b3261e; }
footer { padding: 8px 16px 24px; } footer a { color: var(--accent); }
.conn { float:right; }
@media (max-width: 600px) { body { font-size:14px; } section { padding:10px; border-radius:0; margin:10px -16px; } }
"#;

/// The page's script, served at `/dashboard.js`.
pub const SCRIPT: &str = r#"
(function () {
  var live = document.getElementById('live'), conn = document.getElementById('conn');
  var pending = false;
  function stamp() {
    document.querySelectorAll('[data-at-ms]').forEach(function (td) {
      td.textContent = new Date(Number(td.getAttribute('data-at-ms'))).toLocaleTimeString();
    });
  }
  function refresh() {
    if (pending) return; pending = true;
    fetch('/dashboard/live', { cache: 'no-store' }).then(function (r) { return r.text(); })
      .then(function (html) { live.innerHTML = html; stamp(); })
      .catch(function () {}).then(function () { pending = false; });
  }
  stamp();
  if (window.EventSource) {
    var es = new EventSource('/v1/events');
    es.addEventListener('change', refresh);
    es.onopen = function () { conn.textContent = 'live'; };
    es.onerror = function () { conn.textContent = 'reconnecting…'; };
  }
  setInterval(refresh, 1000);
})();
"#;
