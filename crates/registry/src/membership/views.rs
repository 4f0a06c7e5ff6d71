//! What the registry shows: live members, one member, cluster summaries and details, join
//! targets, recent decisions, and the dashboard's bounded snapshot. Reads never show an expired
//! entry, even between sweeps: they filter by deadline.

use std::collections::HashSet;
use std::time::Duration;

use rollcall_protocol::{
    BootstrapSummary, ClaimSummary, ClusterDetail, ClusterSummary, GrantedRole, JoinTarget, Member,
    MemberRole, MembersResponse, RaftChange, RaftSummary, RaftView, ResetSummary, ResizeSummary,
};
use tokio::time::Instant;

use super::state::{ClusterState, LiveMember, NodeEntry};
use super::{ms, DecisionRecord, Membership, Timing};

/// How much of the membership the dashboard copies out of the lock.
#[derive(Debug, Clone, Copy)]
pub struct DashboardBounds {
    /// Most clusters shown, the largest first; the rest are counted.
    pub clusters: usize,
    /// Most member rows of one cluster.
    pub members_per_cluster: usize,
    /// Most rows of members and of leaders' raft views on the whole page, so that many large
    /// clusters do not add up to a page as large as the one the per-cluster bound avoids.
    pub rows: usize,
}

/// What the dashboard shows, copied under the lock and owning its data, so that the page is
/// rendered after the lock is released. Its size is bounded by [`DashboardBounds`], whatever
/// the membership holds.
#[derive(Debug, Clone)]
pub struct DashboardSnapshot {
    pub timing: Timing,
    /// The clusters shown, the most live members first, then by name.
    pub clusters: Vec<ClusterPanel>,
    /// Every cluster with something live or a standing grant, shown or not.
    pub clusters_total: usize,
    /// The most recent claim decisions, newest first.
    pub decisions: Vec<DecisionRecord>,
}

/// One cluster as the dashboard shows it: what `GET /v1/clusters/{cluster}` answers, except
/// that only some members are copied, and only the number of claims.
#[derive(Debug, Clone)]
pub struct ClusterPanel {
    pub summary: ClusterSummary,
    /// At most the bound: the leader, then servers in the raft, other servers, agents; each
    /// group by name (an operator looks for the raft first, and finds a node by its name).
    pub members: Vec<Member>,
    /// Every member `GET /v1/clusters/{cluster}/members` would list.
    pub members_total: usize,
    pub live_claims: usize,
    pub bootstrap: Option<BootstrapSummary>,
    pub raft: Option<RaftSummary>,
    pub last_reset: Option<ResetSummary>,
    /// The leader's view of the raft, unless the page's rows ran out (`raft_view_omitted`).
    pub raft_view: Option<RaftView>,
    pub raft_view_omitted: bool,
    pub raft_changes: Vec<RaftChange>,
    pub last_resize: Option<ResizeSummary>,
}

impl Membership {
    /// Live members of `cluster`, freshest first, optionally of one role.
    pub fn members(&self, cluster: &str, role: Option<MemberRole>) -> MembersResponse {
        let now = Instant::now();
        let st = self.observed_lock(now);
        let (index, members) = match st.clusters.get(cluster) {
            // Two rafts under one name: listing either could join a client to the wrong one.
            Some(cs) if cs.two_rafts.is_some() => (cs.index, Vec::new()),
            Some(cs) => (cs.index, cs.live_members(st.ttl, now, role)),
            None => (0, Vec::new()),
        };
        MembersResponse {
            cluster: cluster.to_string(),
            index,
            members,
        }
    }

    /// One live member.
    pub fn member(&self, cluster: &str, node: &str) -> Option<Member> {
        let now = Instant::now();
        let st = self.observed_lock(now);
        let entry = st.entry(cluster, node)?;
        if !entry.is_live(st.ttl, now) {
            return None;
        }
        entry
            .member
            .as_ref()
            .map(|m| to_member(node, m, entry, st.ttl, now))
    }

    /// Every cluster with something live or a standing grant.
    pub fn clusters(&self) -> Vec<ClusterSummary> {
        let now = Instant::now();
        let st = self.observed_lock(now);
        let mut out: Vec<ClusterSummary> = st
            .clusters
            .iter()
            .map(|(name, cs)| cs.summary(name, st.ttl, now))
            .collect();
        out.sort_by(|a, b| a.cluster.cmp(&b.cluster));
        out
    }

    /// Members, claims and the grant of one cluster, its known raft (lost or not), the leader's
    /// view of the raft and its last changes.
    pub fn cluster_detail(&self, cluster: &str) -> Option<ClusterDetail> {
        let now = Instant::now();
        let st = self.observed_lock(now);
        let ttl = st.ttl;
        let cs = st.clusters.get(cluster)?;
        let mut claims: Vec<ClaimSummary> = cs
            .nodes
            .iter()
            .filter(|(_, e)| e.is_live(ttl, now))
            .filter_map(|(node, e)| {
                e.claim.as_ref().map(|c| ClaimSummary {
                    node: node.to_string(),
                    address: c.address.clone(),
                    role: c.role,
                    expect: c.expect,
                    expires_in_ms: ms(e.deadline(ttl) - now),
                })
            })
            .collect();
        claims.sort_by(|a, b| a.node.cmp(&b.node));
        let standing = self.standing(cs, ttl, now, st.grace_from);
        Some(ClusterDetail {
            summary: cs.summary(cluster, ttl, now),
            index: cs.index,
            members: cs.live_members(ttl, now, None),
            claims,
            bootstrap: standing.bootstrap,
            raft: standing.raft,
            last_reset: standing.last_reset,
            raft_view: standing.raft_view,
            raft_changes: standing.raft_changes,
            last_resize: standing.last_resize,
        })
    }

    /// What the dashboard shows, within `bounds`. The lock is held only to copy that much: the
    /// summaries (a count over every entry), then at most `bounds.rows` members and raft-view
    /// rows. Rendering happens on the copy, after the lock is released.
    pub fn dashboard_snapshot(&self, bounds: DashboardBounds) -> DashboardSnapshot {
        let now = Instant::now();
        let st = self.observed_lock(now);
        let ttl = st.ttl;
        let mut summaries: Vec<(ClusterSummary, &ClusterState)> = st
            .clusters
            .iter()
            .map(|(name, cs)| (cs.summary(name, ttl, now), cs))
            .collect();
        let clusters_total = summaries.len();
        let largest_first = |a: &(ClusterSummary, &ClusterState),
                             b: &(ClusterSummary, &ClusterState)| {
            b.0.live_members
                .cmp(&a.0.live_members)
                .then_with(|| a.0.cluster.cmp(&b.0.cluster))
        };
        keep_first(&mut summaries, bounds.clusters, largest_first);
        // The raft's view comes before the members in the budget: an operator reads the raft
        // first, and a view has at most `MAX_RAFT_MEMBERS` rows.
        let mut rows_left = bounds.rows;
        let clusters = summaries
            .into_iter()
            .map(|(summary, cs)| {
                let mut standing = self.standing(cs, ttl, now, st.grace_from);
                let view_rows = standing.raft_view.as_ref().map_or(0, |v| v.members.len());
                let raft_view_omitted = view_rows > rows_left;
                if raft_view_omitted {
                    standing.raft_view = None;
                } else {
                    rows_left -= view_rows;
                }
                let (members, members_total) =
                    cs.dashboard_members(ttl, now, bounds.members_per_cluster.min(rows_left));
                rows_left -= members.len();
                let live_claims = cs
                    .nodes
                    .values()
                    .filter(|e| e.claim.is_some() && e.is_live(ttl, now))
                    .count();
                ClusterPanel {
                    summary,
                    members,
                    members_total,
                    live_claims,
                    bootstrap: standing.bootstrap,
                    raft: standing.raft,
                    last_reset: standing.last_reset,
                    raft_view: standing.raft_view,
                    raft_view_omitted,
                    raft_changes: standing.raft_changes,
                    last_resize: standing.last_resize,
                }
            })
            .collect();
        let decisions = st.decisions.iter().rev().cloned().collect();
        drop(st);
        DashboardSnapshot {
            timing: self.timing,
            clusters,
            clusters_total,
            decisions,
        }
    }

    /// The grant, the raft, the leader's view and the operator's last actions of one cluster:
    /// each bounded (the view by the protocol's `MAX_RAFT_MEMBERS`, the changes by
    /// `RAFT_CHANGES`, a reset's forced names by `MAX_FORCED_NODES`).
    fn standing(
        &self,
        cs: &ClusterState,
        ttl: Duration,
        now: Instant,
        grace_from: Instant,
    ) -> Standing {
        let no_live_server_for = cs.no_live_server_for(now, grace_from);
        Standing {
            bootstrap: cs.grant.as_ref().map(|g| BootstrapSummary {
                node: g.node.clone(),
                address: g.address.clone(),
                generation: g.generation,
                granted_at_unix_ms: g.granted_at_unix_ms,
                live: cs.bootstrap_holder_is_live(&g.node, ttl, now),
            }),
            raft: cs.raft.as_ref().map(|r| RaftSummary {
                generation: r.generation,
                expect: r.expect,
                known_at_unix_ms: r.known_at_unix_ms,
                nonce: r.nonce.clone(),
                lost: no_live_server_for.is_some_and(|d| d >= self.timing.raft_lost_after),
                no_live_server_for_ms: no_live_server_for.map(ms),
            }),
            last_reset: cs.last_reset.as_ref().map(|r| ResetSummary {
                at_unix_ms: r.at_unix_ms,
                from_generation: r.from_generation,
                reason: r.reason.clone(),
                forced: r.forced.clone(),
            }),
            raft_view: cs.raft_view.as_ref().map(|v| RaftView {
                reporter: v.reporter.clone(),
                age_ms: ms(now.saturating_duration_since(v.at)),
                members: v.members.clone(),
            }),
            raft_changes: cs.raft_changes.iter().cloned().collect(),
            last_resize: cs.last_resize.clone(),
        }
    }

    /// The index of `cluster`'s membership (0 for a cluster the registry does not know).
    pub fn cluster_index(&self, cluster: &str) -> u64 {
        self.lock()
            .clusters
            .get(cluster)
            .map(|c| c.index)
            .unwrap_or(0)
    }
}

/// The parts of a cluster's detail that are neither members nor claims.
struct Standing {
    bootstrap: Option<BootstrapSummary>,
    raft: Option<RaftSummary>,
    last_reset: Option<ResetSummary>,
    raft_view: Option<RaftView>,
    raft_changes: Vec<RaftChange>,
    last_resize: Option<ResizeSummary>,
}

/// Keeps the first `n` of `items` in `order`, sorted: a selection, then a sort of only those
/// kept, so that picking 100 of 10,000 does not sort 10,000 under the lock.
fn keep_first<T>(items: &mut Vec<T>, n: usize, order: impl Fn(&T, &T) -> std::cmp::Ordering) {
    if items.len() > n {
        if n > 0 {
            items.select_nth_unstable_by(n - 1, &order);
        }
        items.truncate(n);
    }
    items.sort_by(order);
}

impl ClusterState {
    /// The members the dashboard shows of this cluster (at most `n`, in the panel's order), and
    /// how many `live_members` would list.
    fn dashboard_members(&self, ttl: Duration, now: Instant, n: usize) -> (Vec<Member>, usize) {
        let in_view: HashSet<&str> = self
            .raft_view
            .iter()
            .flat_map(|v| v.members.iter().map(|m| m.name.as_str()))
            .collect();
        let mut listed: Vec<(u8, &str, &LiveMember, &NodeEntry)> = self
            .nodes
            .iter()
            .filter(|(_, e)| e.is_live(ttl, now) && self.of_this_raft(e))
            .filter_map(|(node, e)| {
                let m = e.member.as_ref()?;
                let status = &m.record.status;
                let server = m.record.role == MemberRole::Server;
                let in_raft = status.in_raft == Some(true) || in_view.contains(&**node);
                let group = match () {
                    _ if status.is_leader == Some(true) => 0,
                    _ if server && in_raft => 1,
                    _ if server => 2,
                    _ => 3,
                };
                Some((group, &**node, m, &**e))
            })
            .collect();
        let total = listed.len();
        keep_first(&mut listed, n, |a, b| (a.0, a.1).cmp(&(b.0, b.1)));
        let members = listed
            .into_iter()
            .map(|(_, node, m, e)| to_member(node, m, e, ttl, now))
            .collect();
        (members, total)
    }

    /// Every live server except `node`: heartbeating servers and granted servers that do not
    /// heartbeat yet (they are starting, and a joiner retries until they answer). Freshest first.
    pub(super) fn join_targets(&self, node: &str, ttl: Duration, now: Instant) -> Vec<JoinTarget> {
        if self.two_rafts.is_some() {
            return Vec::new();
        }
        let mut targets: Vec<(Instant, JoinTarget)> = self
            .nodes
            .iter()
            .filter(|(name, e)| {
                &***name != node
                    && e.is_live(ttl, now)
                    && e.holds_server_slot()
                    && self.of_this_raft(e)
            })
            .map(|(name, e)| {
                let address = match (&e.member, &e.claim) {
                    (Some(m), _) => m.record.address.clone(),
                    (None, Some(c)) => c.address.clone(),
                    (None, None) => String::new(),
                };
                (
                    e.last_refresh,
                    JoinTarget {
                        node: name.to_string(),
                        address,
                        role: MemberRole::Server,
                    },
                )
            })
            .collect();
        targets.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.node.cmp(&b.1.node)));
        targets.into_iter().map(|(_, t)| t).collect()
    }

    /// Whether an entry may be listed: its member reported no raft (unknown: listed), or the
    /// cluster's. Heartbeats from another raft are refused, so this only keeps out a member
    /// that registered before the cluster's identity changed under it.
    fn of_this_raft(&self, e: &NodeEntry) -> bool {
        match e.member.as_ref().and_then(|m| m.record.raft.as_ref()) {
            Some(reported) => self.conflicting_identity(reported).is_none(),
            None => true,
        }
    }

    fn live_members(&self, ttl: Duration, now: Instant, role: Option<MemberRole>) -> Vec<Member> {
        let mut members: Vec<(Instant, Member)> = self
            .nodes
            .iter()
            .filter(|(_, e)| e.is_live(ttl, now) && self.of_this_raft(e))
            .filter_map(|(node, e)| {
                e.member
                    .as_ref()
                    .map(|m| (m.last_heartbeat, to_member(node, m, e, ttl, now)))
            })
            .filter(|(_, m)| role.is_none_or(|r| m.role == r))
            .collect();
        members.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.node.cmp(&b.1.node)));
        members.into_iter().map(|(_, m)| m).collect()
    }

    /// Whether `holder` still holds a live bootstrap claim.
    fn bootstrap_holder_is_live(&self, holder: &str, ttl: Duration, now: Instant) -> bool {
        self.nodes.get(holder).is_some_and(|e| {
            e.is_live(ttl, now) && e.claim.as_ref().map(|c| c.role) == Some(GrantedRole::Bootstrap)
        })
    }

    fn summary(&self, name: &str, ttl: Duration, now: Instant) -> ClusterSummary {
        let (mut servers, mut agents) = (0u32, 0u32);
        for e in self.nodes.values().filter(|e| e.is_live(ttl, now)) {
            match e.member.as_ref().map(|m| m.record.role) {
                Some(MemberRole::Server) => servers += 1,
                Some(MemberRole::Agent) => agents += 1,
                None => {}
            }
        }
        let bootstrap_node = self
            .grant
            .as_ref()
            .filter(|g| self.bootstrap_holder_is_live(&g.node, ttl, now))
            .map(|g| g.node.clone());
        ClusterSummary {
            cluster: name.to_string(),
            live_members: servers + agents,
            live_servers: servers,
            live_agents: agents,
            bootstrap_node,
        }
    }
}

fn to_member(node: &str, m: &LiveMember, e: &NodeEntry, ttl: Duration, now: Instant) -> Member {
    Member {
        node: node.to_string(),
        address: m.record.address.clone(),
        role: m.record.role,
        status: m.record.status.clone(),
        meta: m.record.meta.clone(),
        age_ms: ms(now.saturating_duration_since(m.last_heartbeat)),
        expires_in_ms: ms(e.deadline(ttl).saturating_duration_since(now)),
    }
}
