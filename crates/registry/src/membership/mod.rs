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
//!
//! Liveness: every node entry (a member, a claim or both) lives until its last heartbeat or
//! claim plus the TTL; reads filter by that deadline, so nothing expired is ever returned
//! between sweeps. One clock: `tokio::time::Instant`, so that tests can pause it.

mod expiry;
pub mod rules;
mod state;
mod views;

use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rollcall_protocol::{
    ClaimRequest, ClaimResponse, GrantedRole, HeartbeatRequest, HeartbeatResponse,
};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::store::{ClaimRecord, GrantRecord, MemberRecord, Store, StoreError};
use rules::{ClaimInputs, Decision, Rule};
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
        let mut state = State::new(timing.ttl);
        for (cluster, grant) in loaded.grants {
            state.clusters.entry(cluster).or_default().grant = Some(grant);
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
        let previous = st
            .entry(cluster, node)
            .and_then(|e| e.member.as_ref())
            .map(|m| &m.record);
        let change = change_of(previous, &hb);

        if change == Change::Nothing {
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
        // Persist.
        self.store.put_member(cluster, node, &record)?;
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
        let durability = match change {
            Change::StatusOrMeta => Durability::NoWait,
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
        st.expire_due(now, &self.store);
        if st.entry(cluster, node).is_none() {
            return Err(RefusedError::NotFound(format!(
                "{node:?} is not a live member or claimant of cluster {cluster:?}"
            )));
        }
        self.store.delete_member(cluster, node)?;
        self.store.delete_claim(cluster, node)?;
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
        st.expire_due(now, &self.store);
        st.check_room(cluster, node, &self.limits)?;

        // Gather, decide.
        let cs = st.clusters.get(cluster);
        let inputs = ClaimInputs {
            cluster,
            node,
            expect: request.expect,
            agent_only: request.agent_only,
            own_claim: st
                .entry(cluster, node)
                .and_then(|e| e.claim.as_ref())
                .map(|c| c.role),
            others: cs.map(|c| c.others(node)).unwrap_or_default(),
            uptime: now.saturating_duration_since(self.started),
            startup_grace: timing.startup_grace,
            last_seen_ago: cs
                .and_then(|c| c.last_seen)
                .map(|s| now.saturating_duration_since(s)),
            quiet_period: timing.quiet_period,
            interval: timing.interval,
            last_generation: cs.and_then(|c| c.grant.as_ref()).map(|g| g.generation),
        };
        let (rule, role, generation, reason) = match rules::decide(&inputs) {
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
        };

        // Persist: the grant before the claim, so that a stored bootstrap claim always has its grant.
        let granted_at_unix_ms = unix_ms_now();
        let record = ClaimRecord {
            role,
            address: request.address.clone(),
            expect: request.expect,
            granted_at_unix_ms,
        };
        let new_grant = generation.map(|generation| GrantRecord {
            node: node.to_string(),
            address: request.address.clone(),
            expect: request.expect,
            generation,
            granted_at_unix_ms,
        });
        let changed_claim = st
            .entry(cluster, node)
            .and_then(|e| e.claim.as_ref())
            .is_none_or(|c| {
                c.role != record.role || c.address != record.address || c.expect != record.expect
            });
        if let Some(grant) = &new_grant {
            self.store.put_grant(cluster, grant)?;
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
        let durability = if changed_claim {
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
}

#[cfg(test)]
mod tests;
