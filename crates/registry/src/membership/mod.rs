//! The registry's membership: who is live in which cluster, who holds which claim, and the
//! write protocol that applies the claim rules. All decisions are made under one lock, so that
//! two requests can never decide from the same snapshot (that is what makes "exactly one
//! bootstrap" hold).
//!
//! Every write follows the same protocol: expire whatever is due, **gather** the inputs from
//! the state under the lock, **decide** (for claims, the pure [`rules::decide`]), **persist**
//! the change to the [`Store`] (still under the lock, so storage order is decision order),
//! **apply** it in memory, release the lock, then (for changes that must survive a crash)
//! await a [`Store::flush`] before answering. A later decision that saw an earlier,
//! not-yet-flushed change is itself answered only after its own flush, which covers both.
//!
//! - `rules.rs`: the claim rules, a pure function with table tests.
//! - `state.rs`: the state in memory and the changes every write shares.
//! - `expiry.rs`: the expiry index.
//! - `views.rs`: the read side (members, clusters, join targets).
//! - `operator.rs`: the operator's reset.
//!
//! Liveness: every node entry (a member, a claim or both) lives until its last heartbeat or
//! claim plus the TTL; reads filter by that deadline, so nothing expired is ever returned
//! between sweeps. One clock: `tokio::time::Instant`, so that tests can pause it.

mod expiry;
mod operator;
pub mod rules;
mod state;
mod views;

use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rollcall_protocol::{
    ClaimRequest, ClaimResponse, ErrorCode, GrantedRole, HeartbeatRequest, HeartbeatResponse,
};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::store::{
    ClaimRecord, GrantRecord, HistoryRecord, MemberRecord, RaftRecord, Store, StoreError,
};
use rules::{ClaimInputs, Conflict, Decision, GrantFacts, KnownRaft, Rule};
use state::{change_of, Change, LiveMember, State};

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
    /// Off (`None`) by default: once a cluster's raft is known, only an operator's reset lets a
    /// new one start. With a duration, a raft none of whose members was seen for that long
    /// may be replaced by a new one on the registry's own word.
    pub rebootstrap_after: Option<Duration>,
}

/// A gap this long between two moments the registry ran (a sweep every 250 ms, or any
/// decision) means the process was frozen: `State::observe` then extends every deadline and
/// re-enters the startup grace. Far above any scheduling delay, far below any TTL allowed.
pub const FREEZE_GAP: Duration = Duration::from_secs(2);

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
    /// The request conflicts with what the registry knows; nothing changed.
    #[error("{message}")]
    Conflict {
        code: ErrorCode,
        message: String,
        retry_after: Option<Duration>,
    },
    #[error(transparent)]
    Storage(#[from] StoreError),
}

/// The membership of every cluster: the state behind one lock, plus the store.
#[derive(Debug)]
pub struct Membership {
    /// Everything known, behind the lock every decision takes.
    state: Mutex<State>,
    /// Where changes go before they are applied in memory.
    store: Store,
    timing: Timing,
    limits: Limits,
    /// When this process loaded its state: the startup grace counts from here.
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
    /// The rule's id and why it applied, e.g. `[take-slot] 1 of expect=3 server slots ...`.
    pub reason: String,
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

pub(crate) fn unix_ms_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

pub(crate) fn ms(d: Duration) -> u64 {
    d.as_millis().min(u64::MAX as u128) as u64
}

impl Membership {
    /// Loads the stored state, giving every stored member and claim a fresh TTL.
    pub fn open(store: Store, timing: Timing, limits: Limits) -> Result<Membership, StoreError> {
        let loaded = store.load()?;
        let now = Instant::now();
        let mut state = State::new(timing.ttl, now);
        for (cluster, grant) in loaded.grants {
            let cs = state.clusters.entry(cluster).or_default();
            cs.last_generation = cs.last_generation.max(grant.generation);
            cs.grant = Some(grant);
        }
        let mut with_history = std::collections::HashSet::new();
        for (cluster, history) in loaded.histories {
            state
                .clusters
                .entry(cluster.clone())
                .or_default()
                .load_history(history, now);
            with_history.insert(cluster);
        }
        for (cluster, cs) in state.clusters.iter_mut() {
            if with_history.contains(cluster) {
                continue;
            }
            // A grant stored before histories existed: its raft may run, so it counts as known.
            if let Some(grant) = &cs.grant {
                cs.raft = Some(RaftRecord {
                    generation: grant.generation,
                    expect: Some(grant.expect),
                    known_at_unix_ms: grant.granted_at_unix_ms,
                });
            }
        }
        let (n_members, n_claims) = (loaded.members.len(), loaded.claims.len());
        for (cluster, node, record) in loaded.members {
            state.touch(&cluster, &node, now).member = Some(LiveMember {
                record,
                last_heartbeat: now,
            });
        }
        for (cluster, node, record) in loaded.claims {
            state.touch(&cluster, &node, now).claim = Some(record);
        }
        // Stored members run a raft, whether or not the history says so (it may predate them).
        for (cluster, cs) in state.clusters.iter_mut() {
            if cs.nodes.values().any(|e| e.member.is_some()) {
                if let Some(raft) = cs.raft_to_learn() {
                    tracing::info!(
                        cluster,
                        generation = raft.generation,
                        "stored members run a raft: it counts as known"
                    );
                    cs.raft = Some(raft);
                    store.put_history(cluster, &cs.history(now))?;
                }
            }
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
        Ok(Membership {
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

    /// Notices a freeze before anything is decided (see `State::observe`), and logs it.
    fn observe(&self, st: &mut State, now: Instant) {
        if let Some(gap) = st.observe(now, FREEZE_GAP) {
            metrics::counter!("rollcall_freezes_total").increment(1);
            tracing::warn!(
                gap_ms = ms(gap),
                startup_grace = %humantime::format_duration(self.timing.startup_grace),
                "the registry did not run for {}: every deadline and last-seen time moves on by that much, and the startup grace starts again before anything is decided",
                humantime::format_duration(Duration::from_millis(ms(gap)))
            );
        }
    }

    /// Removes every entry whose deadline has passed. Returns how many were removed. The
    /// sweeper calls this every 250 ms, which is also the registry's own tick for `observe`.
    pub fn expire_due(&self) -> usize {
        let now = Instant::now();
        let mut st = self.lock();
        self.observe(&mut st, now);
        let n = st.expire_due(now, &self.store);
        self.publish(st);
        n
    }

    /// A heartbeat: registers or renews `node`. The first heartbeat of a cluster whose raft is
    /// not known makes it known (a member heartbeats only while its agent is healthy).
    pub fn heartbeat(
        &self,
        cluster: &str,
        node: &str,
        hb: HeartbeatRequest,
    ) -> Result<(HeartbeatResponse, Durability), RefusedError> {
        let now = Instant::now();
        let mut st = self.lock();
        self.observe(&mut st, now);
        st.expire_due(now, &self.store);
        let cs = st.clusters.get(cluster);
        let previous = cs
            .and_then(|c| c.nodes.get(node))
            .and_then(|e| e.member.as_ref())
            .map(|m| &m.record);
        let change = change_of(previous, &hb);
        let learn = match cs {
            Some(cs) => cs.raft_to_learn(),
            None => state::ClusterState::default().raft_to_learn(),
        };

        if change == Change::Nothing && learn.is_none() {
            // The common case, a renewal: move the deadline and answer. No index, no write.
            let entry = st.touch(cluster, node, now);
            if let Some(live) = entry.member.as_mut() {
                live.last_heartbeat = now;
            }
            drop(st);
            metrics::counter!("rollcall_heartbeats_total", "result" => "renewed").increment(1);
            return Ok((
                self.heartbeat_response(cluster, node, false),
                Durability::NoWait,
            ));
        }

        // Gather.
        st.check_room(cluster, node, &self.limits)?;
        let registered_at_unix_ms = previous.map_or_else(unix_ms_now, |r| r.registered_at_unix_ms);
        if let (Change::AddressOrRole, Some(rec)) = (change, previous) {
            tracing::info!(cluster, node, old_address = %rec.address, address = %hb.address, old_role = %rec.role, role = %hb.role, "member changed its address or role");
        }
        let record = MemberRecord {
            address: hb.address,
            role: hb.role,
            status: hb.status.unwrap_or_default(),
            meta: hb.meta,
            registered_at_unix_ms,
        };
        let history = learn.as_ref().map(|raft| {
            let mut history = cs.map_or_else(HistoryRecord::default, |c| c.history(now));
            history.raft = Some(raft.clone());
            history
        });
        // Persist.
        if change != Change::Nothing {
            self.store.put_member(cluster, node, &record)?;
        }
        if let Some(history) = &history {
            self.store.put_history(cluster, history)?;
        }
        // Apply.
        let registered_as =
            (change == Change::Registers).then(|| (record.address.clone(), record.role));
        let index = st.bump_index();
        st.touch(cluster, node, now).member = Some(LiveMember {
            record,
            last_heartbeat: now,
        });
        if let Some(cs) = st.clusters.get_mut(cluster) {
            cs.index = index;
            if let Some(raft) = &learn {
                cs.raft = Some(raft.clone());
            }
        }
        let result = if registered_as.is_some() {
            "registered"
        } else {
            "renewed"
        };
        metrics::counter!("rollcall_heartbeats_total", "result" => result).increment(1);
        self.publish(st);
        // Logged once the lock is released: writing a log line is slow.
        if let Some((address, role)) = &registered_as {
            tracing::info!(cluster, node, address, %role, "member registered");
        }
        if let Some(raft) = &learn {
            tracing::info!(
                cluster,
                node,
                generation = raft.generation,
                expect = raft.expect,
                "the cluster's raft is known from this heartbeat: from now on only an operator's reset lets a new raft start"
            );
        }
        let durability = match (change, &learn) {
            (Change::StatusOrMeta | Change::Nothing, None) => Durability::NoWait,
            _ => Durability::FlushBeforeAnswer,
        };
        Ok((
            self.heartbeat_response(cluster, node, registered_as.is_some()),
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
        self.observe(&mut st, now);
        st.expire_due(now, &self.store);
        let Some(cs) = st
            .clusters
            .get(cluster)
            .filter(|c| c.nodes.contains_key(node))
        else {
            return Err(RefusedError::NotFound(format!(
                "{node:?} is not a live member or claimant of cluster {cluster:?}"
            )));
        };
        let mut history = cs.history(now);
        history.last_seen_unix_ms = Some(unix_ms_now());
        self.store.delete_member(cluster, node)?;
        self.store.delete_claim(cluster, node)?;
        self.store.put_history(cluster, &history)?;
        if let Some(entry) = st.remove_entry(cluster, node, now) {
            st.expiry.remove(entry.filed);
            tracing::info!(
                cluster,
                node,
                was_member = entry.member.is_some(),
                claim = entry.claim_name(),
                "member left; its claim, if any, is released"
            );
            metrics::counter!("rollcall_leaves_total").increment(1);
        }
        self.publish(st);
        Ok(Durability::FlushBeforeAnswer)
    }

    /// Mode determination: which role `request.node` must start as. The rules are
    /// [`rules::decide`]; this gathers their inputs, persists and applies the decision.
    pub fn claim(
        &self,
        cluster: &str,
        request: &ClaimRequest,
    ) -> Result<(ClaimResponse, Durability), RefusedError> {
        let now = Instant::now();
        let node = request.node.as_str();
        let timing = self.timing;
        let mut st = self.lock();
        self.observe(&mut st, now);
        st.expire_due(now, &self.store);
        st.check_room(cluster, node, &self.limits)?;

        // Gather, decide.
        let ttl = st.ttl;
        let cs = st.clusters.get(cluster);
        let own = cs.and_then(|c| c.nodes.get(node));
        let other_expects = cs.map(|c| c.other_expects(node)).unwrap_or_default();
        let raft = cs.and_then(|c| c.raft.as_ref()).map(|r| KnownRaft {
            generation: r.generation,
            expect: r.expect,
            known_at_unix_ms: r.known_at_unix_ms,
        });
        let inputs = ClaimInputs {
            cluster,
            node,
            expect: request.expect,
            agent_only: request.agent_only,
            own_claim: own.and_then(|e| e.claim.as_ref()).map(|c| c.role),
            others: cs.map(|c| c.others(node)).unwrap_or_default(),
            uptime: now.saturating_duration_since(st.grace_from),
            startup_grace: timing.startup_grace,
            last_seen_ago: cs
                .and_then(|c| c.last_seen)
                .map(|s| now.saturating_duration_since(s)),
            quiet_period: timing.quiet_period,
            interval: timing.interval,
            last_generation: cs.map(|c| c.last_generation).filter(|g| *g > 0),
            own_address: own.and_then(|e| {
                e.member
                    .as_ref()
                    .map(|m| m.record.address.as_str())
                    .or(e.claim.as_ref().map(|c| c.address.as_str()))
            }),
            address: &request.address,
            own_expires_in: own.map_or(Duration::ZERO, |e| {
                e.deadline(ttl).saturating_duration_since(now)
            }),
            other_expects: &other_expects,
            raft: raft.as_ref(),
            grant: cs.and_then(|c| c.grant.as_ref()).map(|g| GrantFacts {
                node: &g.node,
                generation: g.generation,
                granted_at_unix_ms: g.granted_at_unix_ms,
            }),
            rebootstrap_after: timing.rebootstrap_after,
        };
        let decision = rules::decide(&inputs);
        let (rule, role, generation, reason) = match decision {
            Decision::Grant {
                rule,
                role,
                generation,
                reason,
            } => (rule, role, generation, reason),
            Decision::Defer {
                rule,
                message,
                retry_after,
            } => return Err(self.defer(st, cluster, node, rule, message, retry_after)),
            Decision::Refuse {
                rule,
                conflict,
                message,
                retry_after,
            } => return Err(self.refuse(st, cluster, node, rule, conflict, message, retry_after)),
        };
        // Once the raft is known its stored size counts; a claim that says otherwise is told.
        let expect = raft
            .as_ref()
            .and_then(|r| r.expect)
            .unwrap_or(request.expect);
        if expect != request.expect {
            tracing::info!(cluster, node, claimed = request.expect, expect, "the claim's expect differs from the raft's stored size; the stored size counts (an operator's resize changes it)");
        }

        // Persist: the grant before the claim, so that a stored bootstrap claim always has its
        // grant; with a new grant, the history forgets the last raft and counts the generation.
        let granted_at_unix_ms = unix_ms_now();
        let record = ClaimRecord {
            role,
            address: request.address.clone(),
            expect,
            granted_at_unix_ms,
        };
        let new_grant = generation.map(|generation| GrantRecord {
            node: node.to_string(),
            address: request.address.clone(),
            expect,
            generation,
            granted_at_unix_ms,
        });
        let new_history = new_grant.as_ref().map(|grant| {
            let mut history = cs.map_or_else(HistoryRecord::default, |c| c.history(now));
            history.raft = None;
            history.last_generation = grant.generation;
            history
        });
        let changed_claim = own.and_then(|e| e.claim.as_ref()).is_none_or(|c| {
            c.role != record.role || c.address != record.address || c.expect != record.expect
        });
        if let Some(grant) = &new_grant {
            self.store.put_grant(cluster, grant)?;
        }
        if let Some(history) = &new_history {
            self.store.put_history(cluster, history)?;
        }
        if changed_claim {
            self.store.put_claim(cluster, node, &record)?;
        }

        // Apply.
        let entry = st.touch(cluster, node, now);
        if changed_claim {
            entry.claim = Some(record);
        }
        if let Some(grant) = new_grant {
            tracing::info!(
                cluster,
                node,
                generation = grant.generation,
                expect = grant.expect,
                "bootstrap granted"
            );
            if let Some(cs) = st.clusters.get_mut(cluster) {
                cs.last_generation = grant.generation;
                cs.raft = None;
                cs.grant = Some(grant);
            }
        }
        let join = match (role, st.clusters.get(cluster)) {
            (GrantedRole::Bootstrap, _) | (_, None) => Vec::new(),
            (_, Some(cs)) => cs.join_targets(node, st.ttl, now),
        };
        tracing::info!(
            cluster,
            node,
            role = %role,
            %rule,
            join = %join.iter().map(|t| t.address.as_str()).collect::<Vec<_>>().join(","),
            reason = %reason,
            "claim decided"
        );
        metrics::counter!("rollcall_claims_total", "result" => role.as_str()).increment(1);
        st.record_decision(cluster, node, role.as_str(), &format!("[{rule}] {reason}"));
        self.publish(st);
        let durability = if changed_claim || generation.is_some() {
            Durability::FlushBeforeAnswer
        } else {
            Durability::NoWait
        };
        Ok((
            ClaimResponse {
                cluster: cluster.to_string(),
                node: node.to_string(),
                role,
                join,
                expect,
                reason,
                ttl_ms: ms(timing.ttl),
                interval_ms: ms(timing.interval),
            },
            durability,
        ))
    }

    /// Logs, counts and records a deferred claim, then builds the refusal.
    fn defer(
        &self,
        mut st: MutexGuard<'_, State>,
        cluster: &str,
        node: &str,
        rule: Rule,
        message: String,
        retry_after: Duration,
    ) -> RefusedError {
        tracing::info!(cluster, node, %rule, reason = %message, retry_after_ms = ms(retry_after), "claim deferred");
        metrics::counter!("rollcall_claims_total", "result" => "not_ready").increment(1);
        st.record_decision(cluster, node, "not_ready", &format!("[{rule}] {message}"));
        self.publish(st);
        RefusedError::NotReady {
            message,
            retry_after,
        }
    }

    /// Logs, counts and records a claim refused for a conflict, then builds the refusal.
    #[allow(clippy::too_many_arguments)]
    fn refuse(
        &self,
        mut st: MutexGuard<'_, State>,
        cluster: &str,
        node: &str,
        rule: Rule,
        conflict: Conflict,
        message: String,
        retry_after: Duration,
    ) -> RefusedError {
        let code = match conflict {
            Conflict::Address => ErrorCode::AddressConflict,
            Conflict::Expect => ErrorCode::ExpectConflict,
            Conflict::ResetRequired => ErrorCode::ResetRequired,
        };
        tracing::warn!(cluster, node, %rule, %code, reason = %message, "claim refused");
        metrics::counter!("rollcall_claims_total", "result" => code.as_str()).increment(1);
        st.record_decision(cluster, node, code.as_str(), &format!("[{rule}] {message}"));
        self.publish(st);
        RefusedError::Conflict {
            code,
            message,
            retry_after: Some(retry_after),
        }
    }
}

#[cfg(test)]
mod tests;
