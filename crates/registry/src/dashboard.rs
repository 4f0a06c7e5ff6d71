//! The dashboard at `/`: server-rendered HTML and CSS, no front-end build.
//!
//! The page holds a `#live` section (clusters, members, recent decisions) that is also served
//! alone at `/dashboard/live`. A few lines of script listen to the Server-Sent Events at
//! `/v1/events`, which fire on every membership change or decision, and swap the section in
//! place (at most once a second), so the page follows the registry without a reload. Ages are
//! refreshed every second.
//!
//! Both are rendered from a [`DashboardSnapshot`]: the membership's lock is held only while
//! that bounded copy is taken, never while the HTML is built, and the page stays the same size
//! whether a cluster has a hundred members or ten thousand (the rest are counted and linked to
//! their JSON). The bounds are constants, not flags: they bound what a person reads, and the
//! JSON endpoints list everything for anyone who needs more.
//!
//! [`RenderCache`] bounds what readers cost together: each of the two views is rendered at most
//! once every [`MIN_RENDER_INTERVAL`] on a blocking thread (not on the runtime's workers, which
//! serve heartbeats), one render at a time, and every reader that arrives meanwhile gets that
//! render. A reader never gets a render older than the last change before its request.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::Mutex;
use tokio::time::Instant;

use maud::{html, Markup, PreEscaped, DOCTYPE};
use rollcall_protocol::{RaftChange, RaftChangeKind, RaftView};

use crate::membership::{
    ClusterPanel, DashboardBounds, DashboardSnapshot, DecisionRecord, Membership,
};

/// Most clusters the page shows, the most live members first; the rest are counted.
pub const MAX_CLUSTERS_SHOWN: usize = 100;
/// Most members of one cluster the page lists: a screenful an operator can scan, as Consul's
/// and Eureka's UIs page theirs. The rest are counted and linked to the cluster's JSON.
pub const MAX_MEMBERS_SHOWN: usize = 100;
/// Most rows of members and raft views on the whole page: past it, a cluster shows its counts
/// and the links only. With every field at its longest a row is about 1 KB (2.5 KB for a raft
/// member with eight peer URLs), so this is what bounds the page's size.
pub const MAX_ROWS_SHOWN: usize = 1_000;
/// Most names of a reset's forced nodes the page lists (a reset may name 500).
const MAX_FORCED_SHOWN: usize = 10;

/// What the page shows of the membership.
pub const BOUNDS: DashboardBounds = DashboardBounds {
    clusters: MAX_CLUSTERS_SHOWN,
    members_per_cluster: MAX_MEMBERS_SHOWN,
    rows: MAX_ROWS_SHOWN,
};

/// How often each view may be rendered, however many read it.
pub const MIN_RENDER_INTERVAL: Duration = Duration::from_millis(250);
/// How long a render is served while nothing changes (its ages tick on the page itself).
const MAX_RENDER_AGE: Duration = Duration::from_secs(1);

/// The last render of each view, shared by every reader.
#[derive(Debug, Default)]
pub struct RenderCache {
    page: Mutex<Option<Rendered>>,
    live: Mutex<Option<Rendered>>,
}

#[derive(Debug)]
struct Rendered {
    /// The membership's change counter when its snapshot was taken.
    events: u64,
    at: Instant,
    body: Bytes,
}

impl RenderCache {
    /// The whole page.
    pub async fn page(&self, membership: &Arc<Membership>) -> Bytes {
        Self::get(&self.page, membership, |m| page(m).into_string()).await
    }

    /// The `#live` section.
    pub async fn live(&self, membership: &Arc<Membership>) -> Bytes {
        Self::get(&self.live, membership, |m| live(m).into_string()).await
    }

    /// The cached render when nothing changed since it and it is young; else a new one, no
    /// sooner than [`MIN_RENDER_INTERVAL`] after the last. The slot's lock makes readers that
    /// arrive during a render wait for it instead of starting their own.
    async fn get(
        slot: &Mutex<Option<Rendered>>,
        membership: &Arc<Membership>,
        render: fn(&Membership) -> String,
    ) -> Bytes {
        let mut last = slot.lock().await;
        if let Some(r) = last.as_ref() {
            if r.events == membership.events() && r.at.elapsed() < MAX_RENDER_AGE {
                return r.body.clone();
            }
            tokio::time::sleep_until(r.at + MIN_RENDER_INTERVAL).await;
        }
        let events = membership.events();
        let m = membership.clone();
        let body = match tokio::task::spawn_blocking(move || render(&m)).await {
            Ok(text) => Bytes::from(text),
            Err(e) => {
                tracing::error!(error = %e, "rendering the dashboard failed");
                Bytes::from_static(
                    b"<!DOCTYPE html><p>The dashboard could not be rendered; the log says why.</p>",
                )
            }
        };
        *last = Some(Rendered {
            events,
            at: Instant::now(),
            body: body.clone(),
        });
        body
    }
}

/// The whole page, from a snapshot taken now.
pub fn page(membership: &Membership) -> Markup {
    render_page(&membership.dashboard_snapshot(BOUNDS))
}

/// The part of the page that follows the membership, from a snapshot taken now.
pub fn live(membership: &Membership) -> Markup {
    render_live(&membership.dashboard_snapshot(BOUNDS))
}

/// The whole page from `snapshot`; holds no lock.
pub fn render_page(snapshot: &DashboardSnapshot) -> Markup {
    let timing = snapshot.timing;
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
                main #live { (render_live(snapshot)) }
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

/// The part of the page that follows the membership, from `snapshot`; holds no lock.
pub fn render_live(snapshot: &DashboardSnapshot) -> Markup {
    let details = &snapshot.clusters;
    let hidden = snapshot.clusters_total.saturating_sub(details.len());
    let decisions = &snapshot.decisions;
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
        @for d in details { (cluster(d)) }
        @if hidden > 0 { p.more { "and " (hidden) " more clusters: see " a href="/v1/clusters" { "/v1/clusters" } } }
        (decision_table(decisions))
    }
}

fn cluster(d: &ClusterPanel) -> Markup {
    let s = &d.summary;
    let json = format!("/v1/clusters/{}/members", s.cluster);
    let detail_json = format!("/v1/clusters/{}", s.cluster);
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
                    Some(r) if r.lost => span.pill.lost title="no server of the raft was live for --raft-lost-after: claims are refused raft_lost; restart a survivor with ROLLCALL_FORCE_NEW_CLUSTER=1, or reset the cluster" {
                        "raft LOST: generation " (r.generation)
                        @if let Some(e) = r.expect { ", size " (e) }
                        @if let Some(gone) = r.no_live_server_for_ms { " · no live server for " (fmt_ms(gone)) }
                    },
                    Some(r) => span.pill.boot title="once a raft is known, only an operator's reset lets a new one start" {
                        "raft known: generation " (r.generation)
                        @if let Some(e) = r.expect { ", size " (e) }
                        @if let Some(gone) = r.no_live_server_for_ms { " · no live server for " (fmt_ms(gone)) }
                    },
                    None => span.pill title="no member has heartbeated since the last grant" { "raft not known yet" },
                }
            }
            @if let Some(r) = &d.last_resize {
                p.resize { "Resized by an operator: expect "
                    @match r.from_expect { Some(from) => (from), None => "unknown" }
                    " → " (r.expect) " (" (r.reason) ")" }
            }
            @if let Some(v) = &d.raft_view { (raft_view(v, &d.raft_changes)) }
            @if d.raft_view_omitted {
                p.more { "The leader's view of the raft is not shown (the page lists at most " (MAX_ROWS_SHOWN) " rows): see "
                    a href=(detail_json) { (detail_json) } }
            }
            @if let Some(r) = &d.last_reset {
                p.reset { "Reset by an operator: generation " (r.from_generation) " (" (r.reason) ")"
                    @if !r.forced.is_empty() { ", forgetting " (forced_names(&r.forced)) } }
            }
            @if d.members_total == 0 {
                p.none { "No live member. " (d.live_claims) " live claim(s)." }
            } @else {
                @if d.members.len() < d.members_total {
                    p.more.shown {
                        "Showing " (d.members.len()) " of " (d.members_total) " live members"
                        @if !d.members.is_empty() { " (the leader, servers in the raft, other servers, then agents; each by name)" }
                        ". All of them: " a href=(json) { (json) }
                    }
                }
            }
            @if !d.members.is_empty() {
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

/// The raft's membership as its leader last reported it, and its last changes.
fn raft_view(v: &RaftView, changes: &[RaftChange]) -> Markup {
    html! {
        details.raftview open {
            summary { "Raft members as leader " strong { (v.reporter) } " reported " (fmt_ms(v.age_ms)) " ago" }
            div.scroll {
                table {
                    thead { tr { th { "member" } th { "id" } th { "peer URLs" } th { "voter" } th { "leader's connection" } } }
                    tbody {
                        @for m in &v.members {
                            tr data-raft-member=(m.id) {
                                td.node { @if m.name.is_empty() { "(never started)" } @else { (m.name) } }
                                td.mono { (m.id) }
                                td.mono { (m.peer_urls.join(", ")) }
                                td { @if m.learner { "learner" } @else { "voter" } }
                                td { @match (m.connected, m.disconnected_for_ms) {
                                    (Some(false), Some(gone)) => span.down { "disconnected for " (fmt_ms(gone)) },
                                    (Some(false), None) => span.down { "disconnected" },
                                    (Some(true), _) => "connected",
                                    (None, _) => "–",
                                } }
                            }
                        }
                    }
                }
            }
            @if !changes.is_empty() {
                p.changes { "Last changes: "
                    @for (n, c) in changes.iter().rev().enumerate() {
                        @if n > 0 { " · " }
                        span.when data-at-ms=(c.at_unix_ms) { "" } " "
                        (kind_word(c.kind)) " " (if c.name.is_empty() { c.id.as_str() } else { c.name.as_str() })
                        " (" (c.id) ", as " (c.reporter) " reports)"
                    }
                }
            }
        }
    }
}

/// The first [`MAX_FORCED_SHOWN`] names, and how many more.
fn forced_names(forced: &[String]) -> String {
    let shown = forced[..forced.len().min(MAX_FORCED_SHOWN)].join(", ");
    match forced.len().saturating_sub(MAX_FORCED_SHOWN) {
        0 => shown,
        more => format!("{shown} and {more} more"),
    }
}

fn kind_word(kind: RaftChangeKind) -> &'static str {
    match kind {
        RaftChangeKind::Added => "added",
        RaftChangeKind::Removed => "removed",
        RaftChangeKind::Promoted => "promoted",
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
.pill.lost { background:#fde8e8; color:#b3261e; font-weight:600; }
p.resize, p.changes { color:var(--muted); font-size:13px; }
details.raftview summary { cursor:pointer; font-size:13px; color:var(--muted); margin:6px 0; }
.down { color:#b3261e; }
.outcome.raft_lost { background:#fde8e8; color:#b3261e; font-weight:600; }
.outcome.resize { background:#e8f0fe; color:var(--accent); }
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
    if (pending) return; pending = true; last = Date.now();
    fetch('/dashboard/live', { cache: 'no-store' }).then(function (r) { return r.text(); })
      .then(function (html) { live.innerHTML = html; stamp(); })
      .catch(function () {}).then(function () { pending = false; });
  }
  // At most one refresh a second, however often the membership changes: a busy cluster
  // fires many change events, and each refresh costs the registry a snapshot.
  var last = 0, timer = null;
  function soon() {
    if (timer) return;
    timer = setTimeout(function () { timer = null; refresh(); }, Math.max(0, last + 1000 - Date.now()));
  }
  stamp();
  if (window.EventSource) {
    var es = new EventSource('/v1/events');
    es.addEventListener('change', soon);
    es.onopen = function () { conn.textContent = 'live'; };
    es.onerror = function () { conn.textContent = 'reconnecting…'; };
  }
  setInterval(soon, 1000);
})();
"#;
