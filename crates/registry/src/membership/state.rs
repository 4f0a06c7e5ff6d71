//! The registry's state in memory, and the changes to it that every write shares: filing and
//! refreshing an entry, removing it, expiring what is due. The limits on what is held, and
//! when a cluster is forgotten, are in `slots.rs`.
//! Nothing here decides a claim (that is `rules.rs`) or talks to a client.
//!
//! Over 500 lines: every field of the state is documented where it is declared, which
//! is where a reader of the claim rules looks them up.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use rollcall_protocol::{
    AgentStatus, GrantedRole, HeartbeatRequest, MemberRole, RaftChange, RaftIdentity, ResizeSummary,
};
use tokio::time::Instant;

use super::expiry::{ExpiryIndex, Filed};
use super::raft_view::RaftView;
use super::rules::Others;
use super::slots::meta_bytes;
use super::{unix_ms_now, DecisionRecord, RECENT_DECISIONS};
use crate::store::{
    ClaimRecord, GrantRecord, HistoryRecord, MemberRecord, RaftRecord, ResetRecord, Store,
};

/// A map by cluster or node name. foldhash instead of std's SipHash: every heartbeat looks
/// names up under the lock. Its `RandomState` is seeded at random (once per process, and per
/// map), so names chosen by clients cannot be made to collide without knowing the seed, and
/// the limits bound how many names a cluster and the registry hold.
pub(super) type Names<V> = HashMap<Arc<str>, V, foldhash::fast::RandomState>;

/// Everything the registry knows, behind `Membership`'s one lock.
#[derive(Debug)]
pub(super) struct State {
    /// Every cluster the registry has heard of, by name. Names are `Arc<str>` so that the
    /// expiry index shares them instead of holding copies.
    pub clusters: Names<ClusterState>,
    /// Node entries by deadline, so that the sweep finds what is due without scanning.
    pub expiry: ExpiryIndex,
    /// Grows by one for every membership change in any cluster; a cluster's `index` is the
    /// value at its last change, as Consul's blocking queries use the raft index.
    pub index: u64,
    /// Grows with every change or decision: what `Membership::subscribe` publishes, so that
    /// watchers and the dashboard's event stream wake without polling.
    pub events: u64,
    /// The last [`RECENT_DECISIONS`] claim decisions, for the dashboard.
    pub decisions: VecDeque<DecisionRecord>,
    /// The TTL: an entry's deadline is its last refresh plus this.
    pub ttl: Duration,
    /// The last moment the registry is known to have run (a sweep or a decision): a longer gap
    /// than `FREEZE_GAP` before the next one means the process was frozen.
    pub last_ran: Instant,
    /// The startup grace counts from here: the start, or the end of the last freeze.
    pub grace_from: Instant,
    /// Node entries of every cluster together, for `--max-members`: kept by `touch` and
    /// `remove_entry` so that the bound costs no scan.
    pub n_entries: usize,
    /// Bytes of metadata (keys and values) of every member record, for `--max-metadata-bytes`:
    /// kept by `put_member` and `remove_entry`.
    pub meta_bytes: usize,
}

/// One cluster.
#[derive(Debug, Default)]
pub(super) struct ClusterState {
    /// Live nodes (members, claimants or both) by name. Entries are boxed: a hash table keeps
    /// up to half its slots empty, and an empty slot then costs a pointer, not an entry
    /// (at 100,000 members, 52 MiB of tables became 6.5 MiB; bench/analysis.md).
    pub nodes: Names<Box<NodeEntry>>,
    /// The last bootstrap grant, kept after its holder is gone as the cluster's history: the
    /// next bootstrap is one generation later.
    pub grant: Option<GrantRecord>,
    /// When an entry of this cluster was last live before it expired or left. A new raft may
    /// not be bootstrapped until `quiet_period` after this. Stored (as wall-clock time) in the
    /// cluster's history, so a restart does not forget it.
    pub last_seen: Option<Instant>,
    /// The cluster's raft, once a member heartbeated after a grant (or the registry relearned
    /// it from heartbeats): from then on only an operator's reset lets a new raft start.
    pub raft: Option<RaftRecord>,
    /// The highest generation the cluster ever had; a new raft gets one more.
    pub last_generation: u64,
    /// The operator's last reset, for the dashboard.
    pub last_reset: Option<ResetRecord>,
    /// When the raft's identity was learned from a member's heartbeat instead of a grant (the
    /// registry had lost its data): another identity reported within that same startup grace
    /// means two rafts claim the name.
    pub identity_learned_at: Option<Instant>,
    /// Two rafts reported themselves under this name while the registry relearned it: neither
    /// is listed or given as a join target, and every claim is refused, until an operator
    /// resets the cluster. Kept in memory: a restart relearns, and finds them again.
    pub two_rafts: Option<(RaftIdentity, RaftIdentity)>,
    /// The global index at this cluster's last membership change, for blocking reads.
    pub index: u64,
    /// When each node was last live (a member record or a claim), kept when its entry expires
    /// or leaves: the registry's half of the evidence for a dead-member cleanup (`absent` in
    /// the leader's heartbeat answer). In memory, at most [`SEEN_NAMES`] names (the oldest go).
    pub seen: HashMap<String, Instant>,
    /// When a server member (one that heartbeated) was last live, for `raft-lost`. In memory: after a
    /// restart, absence counts from the start.
    pub server_last_seen: Option<Instant>,
    /// When a server member heartbeated while the raft was known and no server was live, after
    /// this registry saw its servers go (the raft came back): for one TTL after, its other
    /// members may still be re-registering (rule `raft-returning`). In memory, as
    /// `server_last_seen`.
    pub servers_returned_at: Option<Instant>,
    /// The raft's membership as its leader last reported it (see `raft_view.rs`).
    pub raft_view: Option<RaftView>,
    /// The last [`RAFT_CHANGES`] changes between the leader's consecutive views, oldest first.
    pub raft_changes: VecDeque<RaftChange>,
    /// The operator's last resize, for people (in memory; the size itself is in the history).
    pub last_resize: Option<ResizeSummary>,
    /// The number of live entries holding a server slot (as `others` counts them) at the
    /// event count (and freshness of the leader's view) it was computed at: an agent's heartbeat answers `server_slot_open` from it
    /// without scanning the cluster while nothing changes.
    pub slot_count: Option<((u64, bool), usize)>,
}

/// Most names a cluster's last-seen map keeps.
pub const SEEN_NAMES: usize = 256;
/// Most raft changes a cluster keeps for people.
pub const RAFT_CHANGES: usize = 16;

/// A live node: it heartbeats, holds a claim, or both.
#[derive(Debug)]
pub(super) struct NodeEntry {
    /// Its member record, once its agent is healthy and it heartbeats.
    pub member: Option<LiveMember>,
    /// The role it was granted, while the claim is live (a claim is renewed by claiming again
    /// and by heartbeats, and dies with the entry).
    pub claim: Option<ClaimRecord>,
    /// Where the entry is filed in the expiry index: under the deadline it had when filed,
    /// which a renewal since may have moved on (see `expiry.rs`).
    pub filed: Filed,
    /// The last heartbeat or claim. The entry's deadline is this plus the TTL, and "freshest
    /// first" orders join targets by it.
    pub last_refresh: Instant,
}

/// A member's record and when it last heartbeat.
#[derive(Debug)]
pub(super) struct LiveMember {
    pub record: MemberRecord,
    /// The last heartbeat (a claim renews the entry, not this): what a member's age counts.
    pub last_heartbeat: Instant,
}

/// What a heartbeat changes in a member's record: the one check that both the renewal fast
/// path and the write use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Change {
    /// No record yet: the member registers (durable).
    Registers,
    /// A new address or role (durable: join targets depend on it).
    AddressOrRole,
    /// Only the status or metadata (written, not waited for).
    StatusOrMeta,
    /// A plain renewal: nothing is written.
    Nothing,
}

pub(super) fn change_of(previous: Option<&MemberRecord>, hb: &HeartbeatRequest) -> Change {
    let Some(rec) = previous else {
        return Change::Registers;
    };
    // A heartbeat without a status reports the empty status.
    let same_status = match &hb.status {
        Some(status) => *status == rec.status,
        None => rec.status == AgentStatus::default(),
    };
    if rec.address != hb.address || rec.role != hb.role {
        Change::AddressOrRole
    } else if !same_status || rec.meta != hb.meta || rec.raft != hb.raft {
        Change::StatusOrMeta
    } else {
        Change::Nothing
    }
}

impl NodeEntry {
    pub fn deadline(&self, ttl: Duration) -> Instant {
        self.last_refresh + ttl
    }

    pub fn is_live(&self, ttl: Duration, now: Instant) -> bool {
        self.deadline(ttl) > now
    }

    /// Logs that the entry was removed, and why.
    pub fn log_removed(&self, cluster: &str, node: &str, why: &str) {
        tracing::info!(
            cluster,
            node,
            was_member = self.member.is_some(),
            claim = self.claim_name(),
            "{why}"
        );
    }

    /// The role of its claim for a log line, `none` without one.
    pub fn claim_name(&self) -> &'static str {
        self.claim.as_ref().map_or("none", |c| c.role.as_str())
    }

    /// A member that heartbeats as `server` (a claim does not make one).
    pub fn is_server_member(&self) -> bool {
        self.member.as_ref().map(|m| m.record.role) == Some(MemberRole::Server)
    }

    /// A bootstrap or server claim, or a member reporting `server`.
    pub fn holds_server_slot(&self) -> bool {
        matches!(
            self.claim.as_ref().map(|c| c.role),
            Some(GrantedRole::Bootstrap | GrantedRole::Server)
        ) || self.member.as_ref().map(|m| m.record.role) == Some(MemberRole::Server)
    }
}

impl ClusterState {
    /// The cluster's history as stored: `last_seen` is turned into wall-clock time.
    pub fn history(&self, now: Instant) -> HistoryRecord {
        HistoryRecord {
            raft: self.raft.clone(),
            last_generation: self.last_generation,
            last_seen_unix_ms: self.last_seen.map(|seen| {
                unix_ms_now().saturating_sub(now.saturating_duration_since(seen).as_millis() as u64)
            }),
            last_reset: self.last_reset.clone(),
        }
    }

    /// Loads a stored history; `last_seen` comes back as the same distance in the past.
    pub fn load_history(&mut self, history: HistoryRecord, now: Instant) {
        self.raft = history.raft;
        // The servers of a known raft are counted as last seen at the start: the registry
        // cannot have seen them since, and when one heartbeats while none is live, that is a
        // return (rule `raft-returning`), as it is for a raft the registry saw go.
        self.server_last_seen = self.raft.as_ref().map(|_| now);
        self.last_generation = self.last_generation.max(history.last_generation);
        self.last_reset = history.last_reset;
        self.last_seen = history.last_seen_unix_ms.map(|seen_ms| {
            let ago = Duration::from_millis(unix_ms_now().saturating_sub(seen_ms));
            // Before the machine booted: count from now, the safe side for the quiet period.
            now.checked_sub(ago).unwrap_or(now)
        });
    }

    /// The generation an operator's reset must name: the known raft's, else the last grant's.
    pub fn current_generation(&self) -> u64 {
        match (&self.raft, &self.grant) {
            (Some(raft), _) => raft.generation,
            (None, Some(grant)) => grant.generation,
            (None, None) => 0,
        }
    }

    /// The raft this cluster learns when a member heartbeats while none is known: of the last
    /// grant's generation and size, or of generation 0 and no size when the registry relearns
    /// it without a grant (it lost its data). `None` when a raft is known already.
    pub fn raft_to_learn(&self) -> Option<RaftRecord> {
        if self.raft.is_some() {
            return None;
        }
        Some(RaftRecord {
            generation: self.grant.as_ref().map_or(0, |g| g.generation),
            expect: self.grant.as_ref().map(|g| g.expect),
            known_at_unix_ms: unix_ms_now(),
            nonce: self.grant.as_ref().and_then(|g| g.nonce.clone()),
        })
    }

    /// The cluster's raft identity when `reported` is not it (a renewal compares without
    /// allocating; only a conflict clones).
    pub fn conflicting_identity(&self, reported: &RaftIdentity) -> Option<RaftIdentity> {
        let (generation, nonce) = match (&self.raft, &self.grant) {
            (Some(raft), _) => (raft.generation, raft.nonce.as_deref()?),
            (None, Some(grant)) => (grant.generation, grant.nonce.as_deref()?),
            (None, None) => return None,
        };
        (reported.generation != generation || reported.nonce != nonce).then(|| RaftIdentity {
            generation,
            nonce: nonce.to_string(),
        })
    }

    /// The cluster's raft identity: the known raft's, else the last grant's (a raft forming).
    pub fn identity(&self) -> Option<RaftIdentity> {
        match &self.raft {
            Some(raft) => raft.identity(),
            None => self.grant.as_ref().and_then(|g| g.identity()),
        }
    }

    /// The `expect` of the other live bootstrap and server claims.
    pub fn other_expects(&self, node: &str) -> Vec<u32> {
        let mut expects: Vec<u32> = self
            .nodes
            .iter()
            .filter(|(name, _)| &***name != node)
            .filter_map(|(_, e)| e.claim.as_ref())
            .filter(|c| matches!(c.role, GrantedRole::Bootstrap | GrantedRole::Server))
            .map(|c| c.expect)
            .collect();
        expects.sort_unstable();
        expects.dedup();
        expects
    }

    /// What is live besides `node`. Voters in the raft that hold no slot here count as
    /// `unlisted_voters` (see [`Self::unlisted_voters`]; `hold` is `--raft-lost-after`). Expired entries were removed by `expire_due` just before
    /// this is called. A server the raft's leader reports disconnected for at least one
    /// `interval` (in a view received within `ttl`) holds no slot, unless it has heartbeated
    /// since its disconnection began, not saying it is out of the raft: its own heartbeat is
    /// the fresher word (a task replaced at a new address reconnects within seconds, while
    /// the leader's views are an interval apart, and a node granted its slot meanwhile would
    /// wait for a cleanup that never comes). A dead member's last heartbeat comes before its
    /// death, and so before the leader saw it go.
    pub fn others(
        &self,
        node: &str,
        ttl: Duration,
        interval: Duration,
        hold: Duration,
        now: Instant,
    ) -> Others {
        let disconnected = self.disconnected(ttl, interval, now);
        let gone = |name: &str, e: &NodeEntry| {
            disconnected.iter().any(|(n, since)| {
                *n == name
                    && !e.member.as_ref().is_some_and(|m| {
                        m.last_heartbeat > *since && m.record.status.in_raft != Some(false)
                    })
            })
        };
        let mut o = Others::default();
        for (name, e) in &self.nodes {
            if &**name == node {
                continue;
            }
            o.any += 1;
            if e.member.is_some() {
                o.members += 1;
            }
            if e.holds_server_slot() {
                if gone(name, e) {
                    o.disconnected += 1;
                } else {
                    o.servers += 1;
                }
            }
        }
        o.unlisted_voters = self.unlisted_voters(node, ttl, hold, now);
        o
    }

    /// Remembers when `node` was last live, keeping at most [`SEEN_NAMES`] names.
    fn remember_seen(&mut self, node: &str, seen: Instant) {
        let at = self.seen.entry(node.to_string()).or_insert(seen);
        *at = (*at).max(seen);
        if self.seen.len() > SEEN_NAMES {
            if let Some(oldest) = self
                .seen
                .iter()
                .min_by_key(|(_, at)| **at)
                .map(|(name, _)| name.clone())
            {
                self.seen.remove(&oldest);
            }
        }
    }
}

impl State {
    pub fn new(ttl: Duration, now: Instant) -> State {
        State {
            clusters: Names::default(),
            expiry: ExpiryIndex::default(),
            index: 0,
            events: 0,
            decisions: VecDeque::new(),
            ttl,
            last_ran: now,
            grace_from: now,
            n_entries: 0,
            meta_bytes: 0,
        }
    }

    /// Notices that the process did not run for more than `freeze_gap` (a `docker pause`, a
    /// stalled VM, SIGSTOP) before anything is decided: every deadline and every cluster's
    /// last-seen time move on by the gap, since nothing could be observed meanwhile, and the
    /// startup grace starts again so that members re-register before any new decision.
    /// Returns the gap when it was a freeze.
    pub fn observe(&mut self, now: Instant, freeze_gap: Duration) -> Option<Duration> {
        let gap = now.saturating_duration_since(self.last_ran);
        self.last_ran = self.last_ran.max(now);
        if gap <= freeze_gap {
            return None;
        }
        for cs in self.clusters.values_mut() {
            for entry in cs.nodes.values_mut() {
                entry.last_refresh += gap;
            }
            if let Some(seen) = cs.last_seen.as_mut() {
                *seen += gap;
            }
            for seen in cs.seen.values_mut() {
                *seen += gap;
            }
            if let Some(seen) = cs.server_last_seen.as_mut() {
                *seen += gap;
            }
            if let Some(back) = cs.servers_returned_at.as_mut() {
                *back += gap;
            }
            if let Some(view) = cs.raft_view.as_mut() {
                view.at += gap;
            }
        }
        self.grace_from = now;
        self.events += 1;
        Some(gap)
    }

    pub fn bump_index(&mut self) -> u64 {
        self.index += 1;
        self.events += 1;
        self.index
    }

    pub fn record_decision(&mut self, cluster: &str, node: &str, outcome: &str, reason: &str) {
        if self.decisions.len() == RECENT_DECISIONS {
            self.decisions.pop_front();
        }
        self.decisions.push_back(DecisionRecord {
            at_unix_ms: unix_ms_now(),
            cluster: cluster.to_string(),
            node: node.to_string(),
            outcome: outcome.to_string(),
            reason: reason.to_string(),
        });
        self.events += 1;
    }

    /// The entry of `node`, if it is live in memory.
    pub fn entry(&self, cluster: &str, node: &str) -> Option<&NodeEntry> {
        self.clusters.get(cluster)?.nodes.get(node).map(|e| &**e)
    }

    /// Creates the entry of `node` (filed in the expiry index) or refreshes it (its deadline
    /// moves; the index is not touched). Allocates only for a new cluster or node.
    pub fn touch(&mut self, cluster: &str, node: &str, now: Instant) -> &mut NodeEntry {
        if !self.clusters.contains_key(cluster) {
            self.clusters
                .insert(Arc::from(cluster), ClusterState::default());
        }
        let deadline = now + self.ttl;
        let Self {
            clusters,
            expiry,
            n_entries,
            ..
        } = self;
        let Some((cluster_name, cs)) = clusters.get_key_value(cluster) else {
            unreachable!("the cluster was inserted just above")
        };
        let new_node = (!cs.nodes.contains_key(node)).then(|| {
            let node_name: Arc<str> = Arc::from(node);
            (expiry.file(cluster_name, &node_name, deadline), node_name)
        });
        let Some(cs) = clusters.get_mut(cluster) else {
            unreachable!("the cluster was inserted just above")
        };
        if let Some((filed, node_name)) = new_node {
            *n_entries += 1;
            cs.nodes.insert(
                node_name,
                Box::new(NodeEntry {
                    member: None,
                    claim: None,
                    filed,
                    last_refresh: now,
                }),
            );
        }
        let Some(entry) = cs.nodes.get_mut(node) else {
            unreachable!("the node was inserted just above")
        };
        entry.last_refresh = now;
        entry
    }

    /// A renewal: moves the deadline and last heartbeat of `node`'s entry if it exists (two
    /// lookups, where `touch` takes five). Whether it existed.
    pub fn renew(&mut self, cluster: &str, node: &str, now: Instant) -> bool {
        let Some(entry) = self
            .clusters
            .get_mut(cluster)
            .and_then(|cs| cs.nodes.get_mut(node))
        else {
            return false;
        };
        entry.last_refresh = now;
        if let Some(live) = entry.member.as_mut() {
            live.last_heartbeat = now;
        }
        true
    }

    /// Files `node`'s member record (creating or refreshing its entry), keeping the count of
    /// metadata bytes.
    pub fn put_member(&mut self, cluster: &str, node: &str, live: LiveMember, now: Instant) {
        let added = meta_bytes(&live.record.meta);
        let entry = self.touch(cluster, node, now);
        let removed = entry
            .member
            .replace(live)
            .map_or(0, |old| meta_bytes(&old.record.meta));
        self.meta_bytes = (self.meta_bytes + added).saturating_sub(removed);
    }

    /// Removes an entry from memory (not from the store or the expiry index: the caller either
    /// popped it from the index or unfiles it) and records when it was last live.
    pub fn remove_entry(&mut self, cluster: &str, node: &str, seen: Instant) -> Option<NodeEntry> {
        let index = self.bump_index();
        let cs = self.clusters.get_mut(cluster)?;
        let entry = *cs.nodes.remove(node)?;
        self.n_entries = self.n_entries.saturating_sub(1);
        if let Some(live) = &entry.member {
            self.meta_bytes = self
                .meta_bytes
                .saturating_sub(meta_bytes(&live.record.meta));
        }
        cs.last_seen = Some(cs.last_seen.map_or(seen, |s| s.max(seen)));
        cs.remember_seen(node, seen);
        if entry.is_server_member() {
            cs.server_last_seen = Some(cs.server_last_seen.map_or(seen, |s| s.max(seen)));
        }
        if entry.member.is_some() {
            cs.index = index;
        }
        Some(entry)
    }

    /// Expires every entry whose deadline is at or before `now`, deleting it from the store
    /// (without waiting for the disk: an expiry lost in a crash only brings a member back with
    /// a fresh TTL, after which it expires again). Returns how many expired.
    pub fn expire_due(&mut self, now: Instant, store: &Store) -> usize {
        let mut n_expired = 0;
        while let Some((cluster_name, node_name)) = self.expiry.pop_due(now) {
            let (cluster, node): (&str, &str) = (&cluster_name, &node_name);
            let ttl = self.ttl;
            let Some(entry) = self
                .clusters
                .get_mut(cluster)
                .and_then(|c| c.nodes.get_mut(node))
            else {
                continue;
            };
            if entry.is_live(ttl, now) {
                // Renewed since it was filed: file it again under its real deadline.
                entry.filed = self
                    .expiry
                    .file(&cluster_name, &node_name, entry.deadline(ttl));
                continue;
            }
            let last_refresh = entry.last_refresh;
            if let Err(e) = store
                .delete_member(cluster, node)
                .and_then(|_| store.delete_claim(cluster, node))
            {
                tracing::warn!(cluster, node, error = %e, "could not delete an expired entry from storage; it will come back with a fresh TTL after a restart");
            }
            if let Some(entry) = self.remove_entry(cluster, node, last_refresh) {
                match self.clusters.get(cluster) {
                    Some(cs) if cs.is_unused() => {
                        if let Err(e) = self.forget_cluster(cluster, store) {
                            tracing::warn!(cluster, error = %e, "could not delete a freed cluster's history from storage; it is forgotten again after a restart");
                        }
                    }
                    Some(cs) => {
                        if let Err(e) = store.put_history(cluster, &cs.history(now)) {
                            tracing::warn!(cluster, error = %e, "could not store when the cluster was last seen");
                        }
                    }
                    None => {}
                }
                n_expired += 1;
                metrics::counter!("rollcall_expiries_total").increment(1);
                entry.log_removed(
                    cluster,
                    node,
                    "expired: no heartbeat or claim within the TTL",
                );
            }
        }
        n_expired
    }
}
