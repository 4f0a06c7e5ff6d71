//! What the registry shows: live members, one member, cluster summaries and details, join
//! targets and recent decisions. Reads never show an expired entry, even between sweeps: they
//! filter by deadline.

use std::time::Duration;

use rollcall_protocol::{
    BootstrapSummary, ClaimSummary, ClusterDetail, ClusterSummary, GrantedRole, JoinTarget, Member,
    MemberRole, MembersResponse, RaftSummary, ResetSummary,
};
use tokio::time::Instant;

use super::state::{ClusterState, LiveMember, NodeEntry};
use super::{ms, DecisionRecord, Membership};

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

    /// Members, claims and the grant of one cluster.
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
                    node: node.clone(),
                    address: c.address.clone(),
                    role: c.role,
                    expect: c.expect,
                    expires_in_ms: ms(e.deadline(ttl) - now),
                })
            })
            .collect();
        claims.sort_by(|a, b| a.node.cmp(&b.node));
        let bootstrap = cs.grant.as_ref().map(|g| BootstrapSummary {
            node: g.node.clone(),
            address: g.address.clone(),
            generation: g.generation,
            granted_at_unix_ms: g.granted_at_unix_ms,
            live: cs.bootstrap_holder_is_live(&g.node, ttl, now),
        });
        Some(ClusterDetail {
            summary: cs.summary(cluster, ttl, now),
            index: cs.index,
            members: cs.live_members(ttl, now, None),
            claims,
            bootstrap,
            raft: cs.raft.as_ref().map(|r| RaftSummary {
                generation: r.generation,
                expect: r.expect,
                known_at_unix_ms: r.known_at_unix_ms,
                nonce: r.nonce.clone(),
            }),
            last_reset: cs.last_reset.as_ref().map(|r| ResetSummary {
                at_unix_ms: r.at_unix_ms,
                from_generation: r.from_generation,
                reason: r.reason.clone(),
                forced: r.forced.clone(),
            }),
        })
    }

    /// The index of `cluster`'s membership (0 for a cluster the registry does not know).
    pub fn cluster_index(&self, cluster: &str) -> u64 {
        self.lock()
            .clusters
            .get(cluster)
            .map(|c| c.index)
            .unwrap_or(0)
    }

    /// The most recent claim decisions, newest first.
    pub fn recent_decisions(&self) -> Vec<DecisionRecord> {
        self.lock().decisions.iter().rev().cloned().collect()
    }
}

impl ClusterState {
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
                name.as_str() != node
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
                        node: name.clone(),
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
