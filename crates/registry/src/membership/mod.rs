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
//! - `rules.rs`: the claim rules, a pure function with table tests; `claim.rs` applies them.
//! - `heartbeat.rs`: the heartbeat write.
//! - `state.rs`: the state in memory and the changes every write shares.
//! - `slots.rs`: the bounds on clusters, members and metadata, and when a cluster is forgotten.
//! - `expiry.rs`: the expiry index.
//! - `views.rs`: the read side (members, clusters, join targets).
//! - `operator.rs`: the operator's reset and resize.
//! - `raft_view.rs`: the raft's membership as its leader reports it, the absence evidence the
//!   leader's cleanup needs, and the slots of members the leader reports disconnected.
//! - `changes.rs`: who is woken by a change (the event stream by every one, a blocking read
//!   only by its own cluster's).
//!
//! Liveness: every node entry (a member, a claim or both) lives until its last heartbeat or
//! claim plus the TTL; reads filter by that deadline, so nothing expired is ever returned
//! between sweeps. One clock: `tokio::time::Instant`, so that tests can pause it.

mod changes;
mod claim;
mod expiry;
mod heartbeat;
mod operator;
mod raft_view;
pub mod rules;
mod slots;
mod state;
mod views;

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rollcall_protocol::ErrorCode;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::store::{RaftRecord, Store, StoreError};
use changes::Changes;
pub use changes::ClusterWatch;
use state::{LiveMember, State};
pub use views::{ClusterPanel, DashboardBounds, DashboardSnapshot};

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
    /// A known raft none of whose servers was live for this long is lost: claims are refused
    /// `raft_lost`, naming the recovery and the reset. At least the TTL.
    pub raft_lost_after: Duration,
}

/// A gap this long between two moments the registry ran (a sweep every 250 ms, or any
/// decision) means the process was frozen: `State::observe` then extends every deadline and
/// re-enters the startup grace. Far above any scheduling delay, far below any TTL allowed.
pub const FREEZE_GAP: Duration = Duration::from_secs(2);

/// Bounds on what one registry holds (how each counts: `slots.rs`).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Clusters with something live and no raft or grant.
    pub max_clusters: usize,
    /// Clusters with a raft or a grant, and what resets left.
    pub max_bootstrapped_clusters: usize,
    pub max_members_per_cluster: usize,
    /// Members and claimants of every cluster together.
    pub max_members: usize,
    /// Bytes of metadata keys and values of every member record together.
    pub max_metadata_bytes: usize,
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
    /// Wakes blocking reads (by cluster) and the event stream (on everything) without polling.
    changes: Changes,
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
            let cs = state.clusters.entry(Arc::from(cluster)).or_default();
            cs.last_generation = cs.last_generation.max(grant.generation);
            cs.grant = Some(grant);
        }
        let mut with_history = std::collections::HashSet::new();
        for (cluster, history) in loaded.histories {
            state
                .clusters
                .entry(Arc::from(cluster.as_str()))
                .or_default()
                .load_history(history, now);
            with_history.insert(cluster);
        }
        for (cluster, cs) in state.clusters.iter_mut() {
            if with_history.contains(&**cluster) {
                continue;
            }
            // A grant stored before histories existed: its raft may run, so it counts as known.
            if let Some(grant) = &cs.grant {
                cs.raft = Some(RaftRecord {
                    generation: grant.generation,
                    expect: Some(grant.expect),
                    known_at_unix_ms: grant.granted_at_unix_ms,
                    nonce: grant.nonce.clone(),
                });
            }
        }
        let (n_members, n_claims) = (loaded.members.len(), loaded.claims.len());
        for (cluster, node, record) in loaded.members {
            let live = LiveMember {
                record,
                last_heartbeat: now,
            };
            state.put_member(&cluster, &node, live, now);
        }
        for (cluster, node, record) in loaded.claims {
            state.touch(&cluster, &node, now).claim = Some(record);
        }
        // Stored members run a raft, whether or not the history says so (it may predate them).
        for (cluster, cs) in state.clusters.iter_mut() {
            if cs.nodes.values().any(|e| e.member.is_some()) {
                if let Some(raft) = cs.raft_to_learn() {
                    tracing::info!(
                        cluster = &**cluster,
                        generation = raft.generation,
                        "stored members run a raft: it counts as known"
                    );
                    cs.raft = Some(raft);
                    store.put_history(cluster, &cs.history(now))?;
                }
            }
        }
        state.forget_unused_at_start(&store, &limits)?;
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
        Ok(Membership {
            state: Mutex::new(state),
            store,
            timing,
            limits,
            started: now,
            changes: Changes::new(),
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

    /// The lock, after noticing a freeze (so that a read right after one does not show members
    /// as expired that the next decision would keep).
    fn observed_lock(&self, now: Instant) -> MutexGuard<'_, State> {
        let mut st = self.lock();
        self.observe(&mut st, now);
        st
    }

    /// Releases the lock and wakes whoever waits for a change, if anything changed: the
    /// watchers of each cluster whose index moved, and the followers of every change.
    fn publish(&self, st: MutexGuard<'_, State>) {
        self.changes.wake_clusters(&st);
        let events = st.events;
        drop(st);
        self.changes.wake_all(events);
    }

    /// A receiver that sees a new value after every membership change or decision, in any
    /// cluster (the event stream's).
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.subscribe_all()
    }

    /// The change counter now: it moves with every membership change or decision (the
    /// dashboard's render cache compares it).
    pub fn events(&self) -> u64 {
        *self.changes.subscribe_all().borrow()
    }

    /// A watch of `cluster`'s index, woken only when that index moves, and the index now.
    /// Taken under the lock, so a change after it is never missed.
    pub fn watch_cluster(&self, cluster: &str) -> (ClusterWatch, u64) {
        let st = self.lock();
        let index = st.clusters.get(cluster).map_or(0, |c| c.index);
        (self.changes.watch_cluster(cluster, index), index)
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
        // The last entry of a cluster without a raft or grant: the cluster frees its slot.
        let frees_slot = cs.nodes.len() == 1 && !cs.has_record();
        self.store.delete_member(cluster, node)?;
        self.store.delete_claim(cluster, node)?;
        if !frees_slot {
            self.store.put_history(cluster, &history)?;
        }
        if let Some(entry) = st.remove_entry(cluster, node, now) {
            st.expiry.remove(entry.filed);
            entry.log_removed(cluster, node, "member left; its claim, if any, is released");
            metrics::counter!("rollcall_leaves_total").increment(1);
        }
        if let Err(e) = st.forget_if_unused(cluster, &self.store) {
            tracing::warn!(cluster, error = %e, "could not delete a freed cluster's history from storage; it is forgotten again after a restart");
        }
        self.publish(st);
        Ok(Durability::FlushBeforeAnswer)
    }
}

#[cfg(test)]
mod model_tests;
#[cfg(test)]
mod tests;
