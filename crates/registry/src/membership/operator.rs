//! Operator actions on a cluster: the reset that lets a new raft start once the old one is
//! gone for good, and the resize of a known raft. The registry never resets on its own (unless
//! `--rebootstrap-after` says so): a raft that went quiet may still run.

use rollcall_protocol::{
    ErrorCode, ResetRequest, ResetResponse, ResizeRequest, ResizeResponse, ResizeSummary,
};
use tokio::time::Instant;

use super::{unix_ms_now, Durability, Membership, RefusedError};
use crate::store::ResetRecord;

impl Membership {
    /// Forgets `cluster`'s raft, so that the next claim may bootstrap generation + 1. A
    /// compare-and-set on the cluster's current generation; refused while anything is live in
    /// the cluster that the request does not name in `force` (those are forgotten with it).
    pub fn reset(
        &self,
        cluster: &str,
        request: &ResetRequest,
    ) -> Result<(ResetResponse, Durability), RefusedError> {
        let now = Instant::now();
        let mut st = self.lock();
        self.observe(&mut st, now);
        st.expire_due(now, &self.store);
        let Some(cs) = st.clusters.get(cluster) else {
            return Err(RefusedError::NotFound(format!(
                "the registry knows no cluster {cluster:?}; there is nothing to reset"
            )));
        };
        let current = cs.current_generation();
        if request.generation != current {
            return Err(RefusedError::Conflict {
                code: ErrorCode::GenerationMismatch,
                message: format!(
                    "cluster {cluster} is at generation {current}, not {}; nothing was reset (GET /v1/clusters/{cluster} shows raft.generation, else bootstrap.generation)",
                    request.generation
                ),
                retry_after: None,
            });
        }
        // A cluster that never had a raft or grant keeps nothing of its reset (a record would
        // take a bootstrapped slot it never held).
        let had_record = cs.has_record();
        let mut live: Vec<String> = cs.nodes.keys().map(|n| n.to_string()).collect();
        live.sort_unstable();
        let unnamed: Vec<&str> = live
            .iter()
            .filter(|node| !request.force.contains(node))
            .map(String::as_str)
            .collect();
        if !unnamed.is_empty() {
            return Err(RefusedError::Conflict {
                code: ErrorCode::MembersLive,
                message: format!(
                    "cluster {cluster} has {} live member(s) or claimant(s): {}; a reset while they run could start a second raft beside theirs. Stop them and wait for them to leave or expire, or name every one: --force {}",
                    unnamed.len(),
                    unnamed.join(", "),
                    live.join(",")
                ),
                retry_after: None,
            });
        }
        let reason = request
            .reason
            .clone()
            .unwrap_or_else(|| "no reason given".to_string());
        let record = ResetRecord {
            at_unix_ms: unix_ms_now(),
            from_generation: current,
            reason: reason.clone(),
            forced: live.clone(),
        };
        let mut history = cs.history(now);
        history.raft = None;
        history.last_generation = cs.last_generation.max(current);
        history.last_seen_unix_ms = None;
        history.last_reset = Some(record.clone());
        let next_generation = history.last_generation.saturating_add(1);

        // Persist.
        for node in &live {
            self.store.delete_member(cluster, node)?;
            self.store.delete_claim(cluster, node)?;
        }
        self.store.put_history(cluster, &history)?;

        // Apply.
        for node in &live {
            if let Some(entry) = st.remove_entry(cluster, node, now) {
                st.expiry.remove(entry.filed);
            }
        }
        if let Some(cs) = st.clusters.get_mut(cluster) {
            cs.raft = None;
            cs.raft_view = None;
            cs.server_last_seen = None;
            cs.servers_returned_at = None;
            cs.last_seen = None;
            cs.identity_learned_at = None;
            cs.two_rafts = None;
            cs.last_generation = history.last_generation;
            cs.last_reset = Some(record);
        }
        if !had_record {
            if let Err(e) = st.forget_cluster(cluster, &self.store) {
                tracing::warn!(cluster, error = %e, "could not delete a freed cluster's history from storage; it is forgotten again after a restart");
            }
        }
        metrics::counter!("rollcall_resets_total").increment(1);
        st.record_decision(
            cluster,
            "-",
            "reset",
            &format!(
                "[reset] an operator reset generation {current} ({reason}); forgot {}; the next bootstrap is generation {next_generation}",
                if live.is_empty() { "nothing live".to_string() } else { live.join(", ") }
            ),
        );
        self.publish(st);
        tracing::warn!(
            cluster,
            from_generation = current,
            next_generation,
            forced = %live.join(","),
            reason = %reason,
            "cluster reset by an operator: its raft is forgotten, and the next claim may bootstrap a new one"
        );
        Ok((
            ResetResponse {
                cluster: cluster.to_string(),
                from_generation: current,
                next_generation,
                forgot: live,
                reason,
            },
            Durability::FlushBeforeAnswer,
        ))
    }

    /// Changes the known raft's size (`expect`): the server slots follow at once (a growth
    /// opens slots that new nodes and `server_slot_open` agents take; a shrink is followed by
    /// `rollcall-sidecar leave` on the members to remove). A compare-and-set on the raft's
    /// generation; 404 while no raft is known. Stored in the cluster's history, flushed
    /// before the answer.
    pub fn resize(
        &self,
        cluster: &str,
        request: &ResizeRequest,
    ) -> Result<(ResizeResponse, Durability), RefusedError> {
        let now = Instant::now();
        let mut st = self.lock();
        self.observe(&mut st, now);
        st.expire_due(now, &self.store);
        let Some(raft) = st.clusters.get(cluster).and_then(|c| c.raft.as_ref()) else {
            return Err(RefusedError::NotFound(format!(
                "cluster {cluster:?} has no known raft to resize (no member heartbeated since its last grant); a claim's expect sets the size of a raft that is forming"
            )));
        };
        if request.generation != raft.generation {
            return Err(RefusedError::Conflict {
                code: ErrorCode::GenerationMismatch,
                message: format!(
                    "cluster {cluster}'s raft is generation {}, not {}; nothing was resized (GET /v1/clusters/{cluster} shows raft.generation)",
                    raft.generation, request.generation
                ),
                retry_after: None,
            });
        }
        let (generation, from_expect) = (raft.generation, raft.expect);
        let reason = request
            .reason
            .clone()
            .unwrap_or_else(|| "no reason given".to_string());
        let Some(cs) = st.clusters.get(cluster) else {
            unreachable!("the cluster's raft was found just above")
        };
        let mut history = cs.history(now);
        if let Some(raft) = history.raft.as_mut() {
            raft.expect = Some(request.expect);
        }

        // Persist.
        self.store.put_history(cluster, &history)?;

        // Apply.
        let record = ResizeSummary {
            at_unix_ms: unix_ms_now(),
            from_expect,
            expect: request.expect,
            reason: reason.clone(),
        };
        if let Some(cs) = st.clusters.get_mut(cluster) {
            if let Some(raft) = cs.raft.as_mut() {
                raft.expect = Some(request.expect);
            }
            cs.last_resize = Some(record);
        }
        let from = from_expect.map_or_else(|| "unknown".to_string(), |e| e.to_string());
        metrics::counter!("rollcall_resizes_total").increment(1);
        st.record_decision(
            cluster,
            "-",
            "resize",
            &format!(
                "[resize] an operator resized raft generation {generation} from expect={from} to expect={} ({reason})",
                request.expect
            ),
        );
        self.publish(st);
        tracing::warn!(
            cluster,
            generation,
            from_expect = %from,
            expect = request.expect,
            reason = %reason,
            "raft resized by an operator: the server slots follow the new size"
        );
        Ok((
            ResizeResponse {
                cluster: cluster.to_string(),
                generation,
                from_expect,
                expect: request.expect,
                reason,
            },
            Durability::FlushBeforeAnswer,
        ))
    }
}
