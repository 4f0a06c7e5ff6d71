//! The registry's state: who is live in which cluster, who holds which claim, and the rules
//! that decide a claim. All decisions are made here, under one lock, so that two requests can
//! never decide from the same snapshot (that is what makes "exactly one bootstrap" hold).
//!
//! Each write method follows the same protocol: expire whatever is due, decide from the state
//! under the lock, write the change to the [`Store`] (still under the lock, so storage order is
//! decision order), apply it in memory, release the lock, then — for changes that must survive a
//! crash — await a [`Store::flush`] before answering. A later decision that saw an earlier,
//! not-yet-flushed change is itself answered only after its own flush, which covers both.
//!
//! Liveness: every node entry (a member, a claim or both) has one deadline, pushed to
//! `now + ttl` by its heartbeats and its claims. The expiry index is a `BTreeMap` ordered by
//! deadline, so expiring costs in proportion to what expires; reads also filter by deadline, so
//! nothing expired is ever returned between sweeps.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rollcall_protocol::{
    AgentStatus, BootstrapSummary, ClaimRequest, ClaimResponse, ClaimSummary, ClusterDetail,
    ClusterSummary, GrantedRole, HeartbeatRequest, HeartbeatResponse, JoinTarget, Member,
    MemberRole, MembersResponse,
};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::store::{ClaimRecord, GrantRecord, MemberRecord, Store, StoreError};

/// The timing rules of the registry. Validated by the config before they get here.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// A member or claim is forgotten this long after its last heartbeat or claim.
    pub ttl: Duration,
    /// The heartbeat interval told to members.
    pub interval: Duration,
    /// No bootstrap is granted this long after the registry starts, so that members of a raft
    /// that is still running re-register before anyone could start a second one.
    pub startup_grace: Duration,
    /// No bootstrap is granted this long after the last member of a cluster was seen.
    pub quiet_period: Duration,
}

/// Bounds on what one registry holds.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_clusters: usize,
    pub max_members_per_cluster: usize,
}

/// Why a request was refused by the rules (as opposed to by validation).
#[derive(Debug, thiserror::Error)]
pub enum RefusedError {
    #[error("{message}")]
    NotReady {
        message: String,
        retry_after: Duration,
    },
    #[error("{0}")]
    LimitExceeded(String),
    #[error("{0}")]
    NotFound(String),
    #[error(transparent)]
    Storage(#[from] StoreError),
}

/// The registry: state behind a lock, plus the store.
#[derive(Debug)]
pub struct Registry {
    state: Mutex<State>,
    store: Store,
    timing: Timing,
    limits: Limits,
    started: Instant,
    /// Carries a counter that grows with every membership change and every decision, so that
    /// blocking reads and the dashboard's event stream wake up without polling.
    changes: watch::Sender<u64>,
}

/// How many recent decisions the registry remembers for the dashboard.
pub const RECENT_DECISIONS: usize = 50;

/// A claim decision (or a refusal), kept for people to read.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DecisionRecord {
    pub at_unix_ms: u64,
    pub cluster: String,
    pub node: String,
    /// `bootstrap`, `server`, `agent` or `not_ready`.
    pub outcome: String,
    pub reason: String,
}

#[derive(Debug, Default)]
struct State {
    clusters: HashMap<String, ClusterState>,
    /// Deadline order of every node entry: (deadline, sequence) -> (cluster, node).
    expiry: BTreeMap<(Instant, u64), (String, String)>,
    next_seq: u64,
    /// Grows by one for every membership change in any cluster; a cluster's `index` is the
    /// value at its last change, as Consul's blocking queries use the raft index.
    index: u64,
    /// Grows with every change or decision; what `Registry::changes` publishes.
    events: u64,
    decisions: VecDeque<DecisionRecord>,
}

#[derive(Debug, Default)]
struct ClusterState {
    nodes: HashMap<String, NodeEntry>,
    /// The last bootstrap grant, kept after its holder is gone as the cluster's history.
    grant: Option<GrantRecord>,
    /// When an entry of this cluster was last live before it expired or left. A new raft may
    /// not be bootstrapped until `quiet_period` after this.
    last_seen: Option<Instant>,
    /// The global index at this cluster's last membership change.
    index: u64,
}

#[derive(Debug)]
struct NodeEntry {
    member: Option<LiveMember>,
    claim: Option<ClaimRecord>,
    deadline: Instant,
    /// The entry's key in `State::expiry` is `(indexed_deadline, seq)`. The index is lazy: a
    /// renewal only moves `deadline`; the sweep re-files an entry whose deadline moved when it
    /// reaches the old one. So a renewal costs no index update at all.
    indexed_deadline: Instant,
    seq: u64,
    /// The last heartbeat or claim, for "freshest first".
    last_refresh: Instant,
}

#[derive(Debug)]
struct LiveMember {
    record: MemberRecord,
    last_heartbeat: Instant,
}

/// What a write needs after the lock is released.
#[must_use]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// The change must be on disk before it is acknowledged.
    FlushBeforeAnswer,
    /// Nothing (or nothing that must survive a crash) was written.
    NoWait,
}

fn unix_ms_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn ms(d: Duration) -> u64 {
    d.as_millis().min(u64::MAX as u128) as u64
}

impl Registry {
    /// Loads the stored state, giving every stored member and claim a fresh TTL.
    pub fn open(store: Store, timing: Timing, limits: Limits) -> Result<Registry, StoreError> {
        let loaded = store.load()?;
        let now = Instant::now();
        let mut state = State::default();
        for (cluster, grant) in loaded.grants {
            state.clusters.entry(cluster).or_default().grant = Some(grant);
        }
        let (n_members, n_claims) = (loaded.members.len(), loaded.claims.len());
        for (cluster, node, record) in loaded.members {
            let entry = state.entry_for_load(&cluster, &node, now + timing.ttl, now);
            entry.member = Some(LiveMember {
                record,
                last_heartbeat: now,
            });
        }
        for (cluster, node, record) in loaded.claims {
            let entry = state.entry_for_load(&cluster, &node, now + timing.ttl, now);
            entry.claim = Some(record);
        }
        state.index = 1;
        for cs in state.clusters.values_mut() {
            cs.index = 1;
        }
        tracing::info!(
            members = n_members,
            claims = n_claims,
            clusters = state.clusters.len(),
            skipped = loaded.n_skipped,
            ttl = %humantime::format_duration(timing.ttl),
            "loaded stored state; every stored member and claim gets a fresh TTL so that a restart expires nobody"
        );
        let (changes, _) = watch::channel(0);
        Ok(Registry {
            state: Mutex::new(state),
            store,
            timing,
            limits,
            started: now,
            changes,
        })
    }

    pub fn timing(&self) -> Timing {
        self.timing
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock would be a bug; the state itself stays consistent
        // because every method applies its memory changes only after its storage write.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Releases the lock and wakes whoever waits for a change, if anything changed.
    fn publish(&self, st: MutexGuard<'_, State>) {
        let events = st.events;
        drop(st);
        self.changes.send_if_modified(|seen| {
            let changed = *seen != events;
            *seen = events;
            changed
        });
    }

    /// A receiver that sees a new value after every membership change or decision.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
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

    /// Removes every entry whose deadline has passed. Returns how many were removed.
    pub fn expire_due(&self) -> usize {
        let now = Instant::now();
        let mut st = self.lock();
        let n = st.expire_due(now, &self.store);
        self.publish(st);
        n
    }

    /// A heartbeat: registers or renews `node`.
    pub fn heartbeat(
        &self,
        cluster: &str,
        node: &str,
        hb: HeartbeatRequest,
    ) -> Result<(HeartbeatResponse, Durability), RefusedError> {
        let now = Instant::now();
        let mut st = self.lock();
        st.expire_due(now, &self.store);

        // The common case, a renewal that changes nothing: move the deadline and answer.
        if let Some(entry) = st
            .clusters
            .get_mut(cluster)
            .and_then(|c| c.nodes.get_mut(node))
        {
            if let Some(live) = entry.member.as_mut() {
                let rec = &live.record;
                let same_status = match &hb.status {
                    Some(status) => *status == rec.status,
                    None => rec.status == AgentStatus::default(),
                };
                if rec.address == hb.address
                    && rec.role == hb.role
                    && same_status
                    && rec.meta == hb.meta
                {
                    live.last_heartbeat = now;
                    entry.deadline = now + self.timing.ttl;
                    entry.last_refresh = now;
                    drop(st);
                    metrics::counter!("rollcall_heartbeats_total", "result" => "renewed")
                        .increment(1);
                    return Ok((
                        self.heartbeat_response(cluster, node, false),
                        Durability::NoWait,
                    ));
                }
            }
        }
        st.check_room(cluster, node, &self.limits)?;

        let previous = st
            .clusters
            .get(cluster)
            .and_then(|c| c.nodes.get(node))
            .and_then(|e| e.member.as_ref());
        let registered = previous.is_none();
        let (record, durability, changed) = match previous {
            None => (
                Some(MemberRecord::new(
                    hb.address,
                    hb.role,
                    hb.status.unwrap_or_default(),
                    hb.meta,
                    unix_ms_now(),
                )),
                Durability::FlushBeforeAnswer,
                true,
            ),
            Some(prev) => {
                let rec = &prev.record;
                let status = hb.status.unwrap_or_default();
                if rec.address != hb.address || rec.role != hb.role {
                    tracing::info!(cluster, node, old_address = %rec.address, address = %hb.address, old_role = %rec.role, role = %hb.role, "member changed its address or role");
                    (
                        Some(MemberRecord::new(
                            hb.address,
                            hb.role,
                            status,
                            hb.meta,
                            rec.registered_at_unix_ms,
                        )),
                        Durability::FlushBeforeAnswer,
                        true,
                    )
                } else if rec.status != status || rec.meta != hb.meta {
                    (
                        Some(MemberRecord::new(
                            hb.address,
                            hb.role,
                            status,
                            hb.meta,
                            rec.registered_at_unix_ms,
                        )),
                        Durability::NoWait,
                        true,
                    )
                } else {
                    (None, Durability::NoWait, false)
                }
            }
        };
        if let Some(record) = &record {
            self.store.put_member(cluster, node, record)?;
        }
        // Logged once the lock is released (below): writing a log line is slow.
        let registered_as = if registered {
            record.as_ref().map(|r| (r.address.clone(), r.role))
        } else {
            None
        };
        let deadline = now + self.timing.ttl;
        let index = if changed { st.bump_index() } else { 0 };
        let cs = st.clusters.entry(cluster.to_string()).or_default();
        if changed {
            cs.index = index;
        }
        let _ = cs;
        let entry = st.touch(cluster, node, deadline, now);
        match (record, entry.member.as_mut()) {
            (Some(record), Some(live)) => {
                live.record = record;
                live.last_heartbeat = now;
            }
            (Some(record), None) => {
                entry.member = Some(LiveMember {
                    record,
                    last_heartbeat: now,
                })
            }
            (None, Some(live)) => live.last_heartbeat = now,
            (None, None) => {}
        }
        if registered {
            metrics::counter!("rollcall_heartbeats_total", "result" => "registered").increment(1);
        } else {
            metrics::counter!("rollcall_heartbeats_total", "result" => "renewed").increment(1);
        }
        self.publish(st);
        if let Some((address, role)) = registered_as {
            tracing::info!(cluster, node, address, %role, "member registered");
        }
        Ok((
            self.heartbeat_response(cluster, node, registered),
            durability,
        ))
    }

    fn heartbeat_response(&self, cluster: &str, node: &str, registered: bool) -> HeartbeatResponse {
        HeartbeatResponse {
            cluster: cluster.to_string(),
            node: node.to_string(),
            registered,
            ttl_ms: ms(self.timing.ttl),
            interval_ms: ms(self.timing.interval),
        }
    }

    /// A graceful leave: forgets the member and its claim. `NotFound` when neither exists.
    pub fn leave(&self, cluster: &str, node: &str) -> Result<Durability, RefusedError> {
        let now = Instant::now();
        let mut st = self.lock();
        st.expire_due(now, &self.store);
        let exists = st
            .clusters
            .get(cluster)
            .and_then(|c| c.nodes.get(node))
            .is_some();
        if !exists {
            return Err(RefusedError::NotFound(format!(
                "{node:?} is not a live member or claimant of cluster {cluster:?}"
            )));
        }
        self.store.delete_member(cluster, node)?;
        self.store.delete_claim(cluster, node)?;
        let removed = st.remove_entry(cluster, node, now);
        if let Some(entry) = removed {
            tracing::info!(
                cluster,
                node,
                was_member = entry.member.is_some(),
                claim = entry
                    .claim
                    .as_ref()
                    .map(|c| c.role.as_str())
                    .unwrap_or("none"),
                "member left; its claim, if any, is released"
            );
            metrics::counter!("rollcall_leaves_total").increment(1);
        }
        self.publish(st);
        Ok(Durability::FlushBeforeAnswer)
    }

    /// Mode determination: which role `request.node` must start as. The rules are in
    /// ARCHITECTURE.md ("Claims"); each branch logs the reason it returns.
    pub fn claim(
        &self,
        cluster: &str,
        request: &ClaimRequest,
    ) -> Result<(ClaimResponse, Durability), RefusedError> {
        let now = Instant::now();
        let node = request.node.as_str();
        let mut st = self.lock();
        st.expire_due(now, &self.store);
        st.check_room(cluster, node, &self.limits)?;

        let timing = self.timing;
        let in_grace = now.duration_since(self.started) < timing.startup_grace;
        let cs = st.clusters.get(cluster);
        let own_claim = cs
            .and_then(|c| c.nodes.get(node))
            .and_then(|e| e.claim.clone());
        let others = cs.map(|c| c.others(node)).unwrap_or_default();

        let (role, reason, new_grant): (GrantedRole, String, Option<GrantRecord>) = match own_claim {
            Some(claim) if claim.role == GrantedRole::Bootstrap && others.members > 0 => (
                GrantedRole::Server,
                format!(
                    "{node} held the bootstrap grant, but {} other member(s) now heartbeat, so the raft exists beyond it: it must join them as a server and never bootstrap again",
                    others.members
                ),
                None,
            ),
            Some(claim) => (claim.role, format!("{node} already holds a live {} claim; the same answer again", claim.role), None),
            None if in_grace => {
                let left = timing.startup_grace - now.duration_since(self.started);
                let message = format!(
                    "the registry started {} ago; for its startup grace of {} it only answers nodes that hold a claim, so that members of a running raft re-register before any new decision",
                    humantime::format_duration(truncate_ms(now.duration_since(self.started))),
                    humantime::format_duration(timing.startup_grace)
                );
                return Err(self.defer(st, cluster, node, message, left));
            }
            None if request.agent_only => (GrantedRole::Agent, format!("{node} asked to be an agent only"), None),
            None if others.servers >= request.expect as usize => (
                GrantedRole::Agent,
                format!("{} live server(s) already fill expect={}; {node} joins as an agent", others.servers, request.expect),
                None,
            ),
            None if others.servers > 0 => (
                GrantedRole::Server,
                format!(
                    "{} of expect={} server slots are taken; {node} takes another and joins the live servers",
                    others.servers, request.expect
                ),
                None,
            ),
            None if others.any > 0 => {
                let message = format!(
                    "cluster {cluster} has {} live member(s) but no live server; a raft may still be running, so no node may bootstrap a new one until they are gone",
                    others.any
                );
                return Err(self.defer(st, cluster, node, message, timing.interval));
            }
            None => {
                let cs = st.clusters.get(cluster);
                if let Some(left) = cs.and_then(|c| c.last_seen).and_then(|seen| timing.quiet_period.checked_sub(now.duration_since(seen))) {
                    if !left.is_zero() {
                        let message = format!(
                            "the last member of cluster {cluster} was seen {} ago; no new raft may start within the quiet period of {}",
                            humantime::format_duration(truncate_ms(timing.quiet_period - left)),
                            humantime::format_duration(timing.quiet_period)
                        );
                        return Err(self.defer(st, cluster, node, message, left));
                    }
                }
                // Saturating: a stored generation at u64::MAX (only a tampered store holds one)
                // must not panic or wrap to 0; the count is for people, not for the rules.
                let generation = cs
                    .and_then(|c| c.grant.as_ref())
                    .map(|g| g.generation.saturating_add(1))
                    .unwrap_or(1);
                let grant = GrantRecord::new(node.to_string(), request.address.clone(), request.expect, generation, unix_ms_now());
                let reason = if generation == 1 {
                    format!("no member or claim is live in cluster {cluster}; {node} starts its first raft")
                } else {
                    format!(
                        "cluster {cluster} has had no live member for the quiet period; {node} starts raft generation {generation}"
                    )
                };
                (GrantedRole::Bootstrap, reason, Some(grant))
            }
        };

        // Persist: the grant before the claim, so that a stored bootstrap claim always has its grant.
        let record = ClaimRecord::new(role, request.address.clone(), request.expect, unix_ms_now());
        let changed_claim = st
            .clusters
            .get(cluster)
            .and_then(|c| c.nodes.get(node))
            .and_then(|e| e.claim.as_ref())
            .map(|c| {
                c.role != record.role || c.address != record.address || c.expect != record.expect
            })
            .unwrap_or(true);
        if let Some(grant) = &new_grant {
            self.store.put_grant(cluster, grant)?;
        }
        if changed_claim {
            self.store.put_claim(cluster, node, &record)?;
        }
        if let Some(grant) = new_grant {
            tracing::info!(
                cluster,
                node,
                generation = grant.generation,
                expect = grant.expect,
                "bootstrap granted"
            );
            st.clusters.entry(cluster.to_string()).or_default().grant = Some(grant);
        }
        let entry = st.touch(cluster, node, now + timing.ttl, now);
        if changed_claim {
            entry.claim = Some(record);
        }
        let join = if role == GrantedRole::Bootstrap {
            Vec::new()
        } else {
            st.clusters
                .get(cluster)
                .map(|c| c.join_targets(node, now))
                .unwrap_or_default()
        };
        tracing::info!(
            cluster,
            node,
            role = %role,
            join = %join.iter().map(|t| t.address.as_str()).collect::<Vec<_>>().join(","),
            reason = %reason,
            "claim decided"
        );
        let durability = if changed_claim {
            Durability::FlushBeforeAnswer
        } else {
            Durability::NoWait
        };
        metrics::counter!("rollcall_claims_total", "result" => role.as_str()).increment(1);
        st.record_decision(cluster, node, role.as_str(), &reason);
        self.publish(st);
        Ok((
            ClaimResponse {
                cluster: cluster.to_string(),
                node: node.to_string(),
                role,
                join,
                expect: request.expect,
                reason,
                ttl_ms: ms(timing.ttl),
                interval_ms: ms(timing.interval),
            },
            durability,
        ))
    }

    /// Logs, counts and records a refused claim, then builds the refusal.
    fn defer(
        &self,
        mut st: MutexGuard<'_, State>,
        cluster: &str,
        node: &str,
        message: String,
        retry_after: Duration,
    ) -> RefusedError {
        tracing::info!(cluster, node, reason = %message, retry_after_ms = ms(retry_after), "claim deferred");
        metrics::counter!("rollcall_claims_total", "result" => "not_ready").increment(1);
        st.record_decision(cluster, node, "not_ready", &message);
        self.publish(st);
        RefusedError::NotReady {
            message,
            retry_after,
        }
    }

    /// Live members of `cluster`, freshest first, optionally of one role.
    pub fn members(&self, cluster: &str, role: Option<MemberRole>) -> MembersResponse {
        let now = Instant::now();
        let st = self.lock();
        let (index, members) = match st.clusters.get(cluster) {
            Some(cs) => (cs.index, cs.live_members(now, role)),
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
        let st = self.lock();
        let cs = st.clusters.get(cluster)?;
        let entry = cs.nodes.get(node)?;
        if entry.deadline <= now {
            return None;
        }
        entry
            .member
            .as_ref()
            .map(|m| to_member(node, m, entry, now))
    }

    /// Every cluster with something live or a standing grant.
    pub fn clusters(&self) -> Vec<ClusterSummary> {
        let now = Instant::now();
        let st = self.lock();
        let mut out: Vec<ClusterSummary> = st
            .clusters
            .iter()
            .map(|(name, cs)| cs.summary(name, now))
            .collect();
        out.sort_by(|a, b| a.cluster.cmp(&b.cluster));
        out
    }

    /// Members, claims and the grant of one cluster.
    pub fn cluster_detail(&self, cluster: &str) -> Option<ClusterDetail> {
        let now = Instant::now();
        let st = self.lock();
        let cs = st.clusters.get(cluster)?;
        let mut claims: Vec<ClaimSummary> = cs
            .nodes
            .iter()
            .filter(|(_, e)| e.deadline > now)
            .filter_map(|(node, e)| {
                e.claim.as_ref().map(|c| ClaimSummary {
                    node: node.clone(),
                    address: c.address.clone(),
                    role: c.role,
                    expect: c.expect,
                    expires_in_ms: ms(e.deadline - now),
                })
            })
            .collect();
        claims.sort_by(|a, b| a.node.cmp(&b.node));
        let bootstrap = cs.grant.as_ref().map(|g| BootstrapSummary {
            node: g.node.clone(),
            address: g.address.clone(),
            generation: g.generation,
            granted_at_unix_ms: g.granted_at_unix_ms,
            live: cs
                .nodes
                .get(&g.node)
                .map(|e| {
                    e.deadline > now
                        && e.claim.as_ref().map(|c| c.role) == Some(GrantedRole::Bootstrap)
                })
                .unwrap_or(false),
        });
        Some(ClusterDetail {
            summary: cs.summary(cluster, now),
            index: cs.index,
            members: cs.live_members(now, None),
            claims,
            bootstrap,
        })
    }
}

/// Counts of the live entries other than the asking node.
#[derive(Debug, Default)]
struct Others {
    /// Entries with a member record or a claim.
    any: usize,
    /// Entries that heartbeat (members in a running agent).
    members: usize,
    /// Entries that hold a server slot: a bootstrap or server claim, or a member reporting `server`.
    servers: usize,
}

impl ClusterState {
    fn others(&self, node: &str) -> Others {
        // Expired entries were removed by `expire_due` just before this is called.
        let mut o = Others::default();
        for (name, e) in &self.nodes {
            if name == node {
                continue;
            }
            o.any += 1;
            if e.member.is_some() {
                o.members += 1;
            }
            if holds_server_slot(e) {
                o.servers += 1;
            }
        }
        o
    }

    /// Every live server except `node`: heartbeating servers and granted servers that do not
    /// heartbeat yet (they are starting, and a joiner retries until they answer). Freshest first.
    fn join_targets(&self, node: &str, now: Instant) -> Vec<JoinTarget> {
        let mut targets: Vec<(Instant, JoinTarget)> = self
            .nodes
            .iter()
            .filter(|(name, e)| name.as_str() != node && e.deadline > now && holds_server_slot(e))
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

    fn live_members(&self, now: Instant, role: Option<MemberRole>) -> Vec<Member> {
        let mut members: Vec<(Instant, Member)> = self
            .nodes
            .iter()
            .filter(|(_, e)| e.deadline > now)
            .filter_map(|(node, e)| {
                e.member
                    .as_ref()
                    .map(|m| (m.last_heartbeat, to_member(node, m, e, now)))
            })
            .filter(|(_, m)| role.is_none_or(|r| m.role == r))
            .collect();
        members.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.node.cmp(&b.1.node)));
        members.into_iter().map(|(_, m)| m).collect()
    }

    fn summary(&self, name: &str, now: Instant) -> ClusterSummary {
        let (mut servers, mut agents) = (0u32, 0u32);
        for e in self.nodes.values().filter(|e| e.deadline > now) {
            match e.member.as_ref().map(|m| m.record.role) {
                Some(MemberRole::Server) => servers += 1,
                Some(MemberRole::Agent) => agents += 1,
                None => {}
            }
        }
        let bootstrap_node = self.grant.as_ref().and_then(|g| {
            let live = self.nodes.get(&g.node).map(|e| {
                e.deadline > now && e.claim.as_ref().map(|c| c.role) == Some(GrantedRole::Bootstrap)
            });
            (live == Some(true)).then(|| g.node.clone())
        });
        ClusterSummary {
            cluster: name.to_string(),
            live_members: servers + agents,
            live_servers: servers,
            live_agents: agents,
            bootstrap_node,
        }
    }
}

fn holds_server_slot(e: &NodeEntry) -> bool {
    matches!(
        e.claim.as_ref().map(|c| c.role),
        Some(GrantedRole::Bootstrap | GrantedRole::Server)
    ) || e.member.as_ref().map(|m| m.record.role) == Some(MemberRole::Server)
}

fn to_member(node: &str, m: &LiveMember, e: &NodeEntry, now: Instant) -> Member {
    Member {
        node: node.to_string(),
        address: m.record.address.clone(),
        role: m.record.role,
        status: m.record.status.clone(),
        meta: m.record.meta.clone(),
        age_ms: ms(now.saturating_duration_since(m.last_heartbeat)),
        expires_in_ms: ms(e.deadline.saturating_duration_since(now)),
    }
}

fn truncate_ms(d: Duration) -> Duration {
    Duration::from_millis(d.as_millis() as u64)
}

impl State {
    fn bump_index(&mut self) -> u64 {
        self.index += 1;
        self.events += 1;
        self.index
    }

    fn record_decision(&mut self, cluster: &str, node: &str, outcome: &str, reason: &str) {
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

    fn entry_for_load(
        &mut self,
        cluster: &str,
        node: &str,
        deadline: Instant,
        now: Instant,
    ) -> &mut NodeEntry {
        self.touch(cluster, node, deadline, now)
    }

    /// Creates or refreshes the entry of `node`. A new entry is filed in the expiry index; a
    /// known one only gets its new deadline (see `NodeEntry::indexed_deadline`).
    fn touch(
        &mut self,
        cluster: &str,
        node: &str,
        deadline: Instant,
        now: Instant,
    ) -> &mut NodeEntry {
        let cs = self.clusters.entry(cluster.to_string()).or_default();
        if !cs.nodes.contains_key(node) {
            self.next_seq += 1;
            let seq = self.next_seq;
            cs.nodes.insert(
                node.to_string(),
                NodeEntry {
                    member: None,
                    claim: None,
                    deadline,
                    indexed_deadline: deadline,
                    seq,
                    last_refresh: now,
                },
            );
            self.expiry
                .insert((deadline, seq), (cluster.to_string(), node.to_string()));
        }
        // The entry exists: it was there or was inserted just above.
        let cs = self
            .clusters
            .get_mut(cluster)
            .expect("cluster entry exists");
        let entry = cs.nodes.get_mut(node).expect("node entry exists");
        entry.deadline = deadline;
        entry.last_refresh = now;
        entry
    }

    /// Removes an entry from memory (not from the store) and records when it was last live.
    fn remove_entry(&mut self, cluster: &str, node: &str, seen: Instant) -> Option<NodeEntry> {
        let index = self.bump_index();
        let cs = self.clusters.get_mut(cluster)?;
        let entry = cs.nodes.remove(node)?;
        self.expiry.remove(&(entry.indexed_deadline, entry.seq));
        cs.last_seen = Some(cs.last_seen.map_or(seen, |s| s.max(seen)));
        if entry.member.is_some() {
            cs.index = index;
        }
        Some(entry)
    }

    /// Expires every entry whose deadline is at or before `now`, deleting it from the store
    /// (without waiting for the disk: an expiry lost in a crash only brings a member back with
    /// a fresh TTL, after which it expires again).
    fn expire_due(&mut self, now: Instant, store: &Store) -> usize {
        let mut n_expired = 0;
        while let Some((&(indexed, seq), _)) = self.expiry.first_key_value() {
            if indexed > now {
                break;
            }
            let Some((cluster, node)) = self.expiry.remove(&(indexed, seq)) else {
                break;
            };
            let Some(entry) = self
                .clusters
                .get_mut(&cluster)
                .and_then(|c| c.nodes.get_mut(&node))
            else {
                continue;
            };
            if entry.deadline > now {
                // Renewed since it was filed: file it again at its real deadline.
                self.next_seq += 1;
                entry.indexed_deadline = entry.deadline;
                entry.seq = self.next_seq;
                self.expiry
                    .insert((entry.indexed_deadline, entry.seq), (cluster, node));
                continue;
            }
            let last_refresh = entry.last_refresh;
            // Put the key back so remove_entry finds and removes it consistently.
            self.expiry
                .insert((indexed, seq), (cluster.clone(), node.clone()));
            if let Err(e) = store
                .delete_member(&cluster, &node)
                .and_then(|_| store.delete_claim(&cluster, &node))
            {
                tracing::warn!(cluster, node, error = %e, "could not delete an expired entry from storage; it will come back with a fresh TTL after a restart");
            }
            if let Some(entry) = self.remove_entry(&cluster, &node, last_refresh) {
                n_expired += 1;
                metrics::counter!("rollcall_expiries_total").increment(1);
                tracing::info!(
                    cluster,
                    node,
                    was_member = entry.member.is_some(),
                    claim = entry
                        .claim
                        .as_ref()
                        .map(|c| c.role.as_str())
                        .unwrap_or("none"),
                    "expired: no heartbeat or claim within the TTL"
                );
            }
        }
        n_expired
    }

    /// Refuses a new cluster or member beyond the limits; known ones always pass.
    fn check_room(&self, cluster: &str, node: &str, limits: &Limits) -> Result<(), RefusedError> {
        match self.clusters.get(cluster) {
            None if self.clusters.len() >= limits.max_clusters => {
                Err(RefusedError::LimitExceeded(format!(
                "the registry holds its limit of {} clusters; cluster {cluster:?} cannot be added",
                limits.max_clusters
            )))
            }
            Some(cs)
                if !cs.nodes.contains_key(node)
                    && cs.nodes.len() >= limits.max_members_per_cluster =>
            {
                Err(RefusedError::LimitExceeded(format!(
                    "cluster {cluster:?} holds its limit of {} members; {node:?} cannot be added",
                    limits.max_members_per_cluster
                )))
            }
            _ => Ok(()),
        }
    }
}
