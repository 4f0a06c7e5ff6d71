//! The bounds on what the registry holds, and when it forgets a cluster. README.md's "How the
//! limits count" says the same for people; this is where it is decided.
//!
//! A cluster is in one of three states, by what it holds:
//!
//! - **bootstrapped**: a known raft, or a bootstrap grant since its last reset. The registry
//!   must keep refusing a second raft under that name (rule `reset-required`), so the record is
//!   never forgotten: only an operator's reset ends it. Counts against
//!   `--max-bootstrapped-clusters`, whether or not anything is live.
//! - **reset**: no raft and no grant since its last reset, but the reset left the cluster's
//!   generation count and the reset's own record (so that the next bootstrap is one generation
//!   later). It keeps its place under `--max-bootstrapped-clusters` until a new bootstrapped
//!   cluster needs it: then the oldest reset cluster with nothing live is forgotten (its next
//!   bootstrap starts again at generation 1, which the raft's random nonce still tells apart).
//!   So a reset is what frees a bootstrapped slot.
//! - neither: only what is live (agent-only claims, or claims of agents that already run).
//!   Counts against `--max-clusters` while something is live, and is forgotten (in memory and
//!   in the store) when its last entry leaves or expires. The quiet period does not need it:
//!   that rule only delays the regrant of a grant, and such a cluster never had one.
//!
//! A cluster with something live and no raft or grant since its reset counts against
//! `--max-clusters` (a reset cluster with live agents counts against both bounds).
//!
//! `--max-members` counts node entries (members and claimants) of every cluster together, and
//! `--max-metadata-bytes` the bytes of metadata keys and values of every member record: both
//! are kept as running totals in `State`, so that checking them costs nothing. Known entries
//! always renew; a write that makes a member's metadata larger is refused beyond the bound.

use std::collections::BTreeMap;

use crate::store::{Store, StoreError};
use crate::telemetry::{limit_refused, Limit};

use super::state::{ClusterState, State};
use super::{Limits, RefusedError};

/// The bytes a member's metadata counts for under `--max-metadata-bytes`: its keys and values.
pub fn meta_bytes(meta: &BTreeMap<String, String>) -> usize {
    meta.iter().map(|(k, v)| k.len() + v.len()).sum()
}

impl ClusterState {
    /// A bootstrap grant made since the cluster's last reset (a reset keeps the old grant,
    /// for the identity of stragglers and for people, but its raft is forgotten).
    fn grant_since_reset(&self) -> bool {
        self.grant.as_ref().is_some_and(|g| {
            self.last_reset
                .as_ref()
                .is_none_or(|r| g.generation > r.from_generation)
        })
    }

    /// A known raft or a grant since the last reset: never forgotten.
    pub fn is_bootstrapped(&self) -> bool {
        self.raft.is_some() || self.grant_since_reset()
    }

    /// Holds a place under `--max-bootstrapped-clusters`: bootstrapped, or what a reset left.
    pub fn has_record(&self) -> bool {
        self.is_bootstrapped()
            || self.grant.is_some()
            || self.last_generation > 0
            || self.last_reset.is_some()
    }

    /// Holds a place under `--max-clusters`: something live, and no raft or grant.
    pub fn counts_as_live(&self) -> bool {
        !self.nodes.is_empty() && !self.is_bootstrapped()
    }

    /// Nothing live and no record: the cluster frees its slot.
    pub fn is_unused(&self) -> bool {
        self.nodes.is_empty() && !self.has_record()
    }

    /// A reset cluster with nothing live: forgotten when a bootstrapped cluster needs room.
    fn is_spare_reset(&self) -> bool {
        self.nodes.is_empty() && self.has_record() && !self.is_bootstrapped()
    }
}

impl State {
    /// Refuses a new entry beyond `--max-members-per-cluster` or `--max-members`, and a member
    /// record whose metadata (`meta_bytes`, when the write files one) would take the total
    /// beyond `--max-metadata-bytes`. Known entries pass, and so does metadata that does not
    /// grow.
    pub fn check_entry_room(
        &self,
        cluster: &str,
        node: &str,
        meta: Option<usize>,
        limits: &Limits,
    ) -> Result<(), RefusedError> {
        let cs = self.clusters.get(cluster);
        let entry = cs.and_then(|c| c.nodes.get(node));
        if entry.is_none() {
            if cs.map_or(0, |c| c.nodes.len()) >= limits.max_members_per_cluster {
                limit_refused(Limit::MaxMembersPerCluster);
                return Err(RefusedError::LimitExceeded(format!(
                    "cluster {cluster:?} holds its limit of {} members; {node:?} cannot be added (--max-members-per-cluster)",
                    limits.max_members_per_cluster
                )));
            }
            if self.n_entries >= limits.max_members {
                limit_refused(Limit::MaxMembers);
                return Err(RefusedError::LimitExceeded(format!(
                    "the registry holds its limit of {} members and claimants in all clusters together (--max-members {}); {node:?} cannot be added to cluster {cluster:?} until others leave or expire, or the operator raises the flag",
                    limits.max_members, limits.max_members
                )));
            }
        }
        if let Some(new) = meta {
            let old = entry
                .and_then(|e| e.member.as_ref())
                .map_or(0, |m| meta_bytes(&m.record.meta));
            let total = self.meta_bytes.saturating_sub(old).saturating_add(new);
            if new > old && total > limits.max_metadata_bytes {
                limit_refused(Limit::MaxMetadataBytes);
                return Err(RefusedError::LimitExceeded(format!(
                    "the registry holds {} of at most {} bytes of member metadata (--max-metadata-bytes {}); {node:?} of cluster {cluster:?} cannot add {} bytes (send less metadata, or the operator raises the flag)",
                    self.meta_bytes,
                    limits.max_metadata_bytes,
                    limits.max_metadata_bytes,
                    new - old
                )));
            }
        }
        Ok(())
    }

    /// Refuses a write that would give `cluster` a place it does not hold yet beyond its bound:
    /// under `--max-bootstrapped-clusters` when the write leaves it bootstrapped (a heartbeat
    /// makes its raft known, a claim is granted a bootstrap), else under `--max-clusters`.
    /// When the bootstrapped bound is full, the oldest reset cluster with nothing live makes
    /// room: its name is returned, for the caller to forget once the write is decided.
    pub fn check_cluster_room(
        &self,
        cluster: &str,
        bootstrapped_after: bool,
        limits: &Limits,
    ) -> Result<Option<String>, RefusedError> {
        let cs = self.clusters.get(cluster);
        if bootstrapped_after {
            if cs.is_some_and(|c| c.has_record()) {
                return Ok(None);
            }
            let records = self.clusters.values().filter(|c| c.has_record()).count();
            if records < limits.max_bootstrapped_clusters {
                return Ok(None);
            }
            let spare = self
                .clusters
                .iter()
                .filter(|(name, c)| &***name != cluster && c.is_spare_reset())
                .min_by_key(|(name, c)| (c.last_reset.as_ref().map(|r| r.at_unix_ms), *name));
            if let Some((name, _)) = spare {
                return Ok(Some(name.to_string()));
            }
            limit_refused(Limit::MaxBootstrappedClusters);
            return Err(RefusedError::LimitExceeded(format!(
                "the registry holds its limit of {} clusters that have a raft or a bootstrap grant (--max-bootstrapped-clusters {}); their records are kept so that no second raft starts under their names, and only an operator's reset frees one. Cluster {cluster:?} cannot start or report a raft until then, or until the operator raises the flag",
                limits.max_bootstrapped_clusters, limits.max_bootstrapped_clusters
            )));
        }
        if cs.is_some_and(|c| c.counts_as_live()) {
            return Ok(None);
        }
        let live = self
            .clusters
            .values()
            .filter(|c| c.counts_as_live())
            .count();
        if live >= limits.max_clusters {
            limit_refused(Limit::MaxClusters);
            return Err(RefusedError::LimitExceeded(format!(
                "the registry holds its limit of {} clusters with live members or claims and no raft (--max-clusters {}); cluster {cluster:?} cannot be added until one of them is empty, or the operator raises the flag",
                limits.max_clusters, limits.max_clusters
            )));
        }
        Ok(None)
    }

    /// Forgets `cluster` in memory and in the store (its grant and history): it frees its slot,
    /// or a reset cluster makes room for a bootstrapped one. The caller has checked that
    /// nothing is live and no raft or grant since a reset is known. Memory forgets it even
    /// when the store fails: a restart forgets it again (`forget_unused_at_start`).
    pub fn forget_cluster(&mut self, cluster: &str, store: &Store) -> Result<(), StoreError> {
        let stored = store.delete_cluster(cluster);
        if let Some(cs) = self.clusters.remove(cluster) {
            tracing::info!(
                cluster,
                reset = cs.last_reset.is_some(),
                "cluster forgotten: nothing live and no raft or bootstrap grant, so its slot is free"
            );
            self.events += 1;
        }
        stored
    }

    /// Forgets `cluster` if it is unused (see [`ClusterState::is_unused`]).
    pub fn forget_if_unused(&mut self, cluster: &str, store: &Store) -> Result<(), StoreError> {
        match self.clusters.get(cluster) {
            Some(cs) if cs.is_unused() => self.forget_cluster(cluster, store),
            _ => Ok(()),
        }
    }

    /// After loading: forgets what earlier versions stored for clusters that hold nothing now
    /// (a history written when their last entry left), so that a restart counts the same slots
    /// as the process before it. Logs when what is kept is beyond the bounds (a restart with
    /// smaller bounds): nothing bootstrapped is ever dropped for that.
    pub fn forget_unused_at_start(
        &mut self,
        store: &Store,
        limits: &Limits,
    ) -> Result<(), StoreError> {
        let unused: Vec<String> = self
            .clusters
            .iter()
            .filter(|(_, c)| c.is_unused())
            .map(|(name, _)| name.to_string())
            .collect();
        for cluster in &unused {
            self.forget_cluster(cluster, store)?;
        }
        let records = self.clusters.values().filter(|c| c.has_record()).count();
        let live = self
            .clusters
            .values()
            .filter(|c| c.counts_as_live())
            .count();
        if records > limits.max_bootstrapped_clusters || live > limits.max_clusters {
            tracing::warn!(
                records,
                live,
                max_bootstrapped_clusters = limits.max_bootstrapped_clusters,
                max_clusters = limits.max_clusters,
                "the stored clusters are beyond the limits: all are kept (a raft's record is never dropped), and new clusters are refused until they are under them again"
            );
        }
        Ok(())
    }
}
