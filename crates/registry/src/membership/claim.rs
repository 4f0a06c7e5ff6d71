//! The claim write: gather the inputs of [`rules::decide`] under the lock, then persist and
//! apply what it decided.

use std::sync::MutexGuard;
use std::time::Duration;

use rollcall_protocol::{ClaimRequest, ClaimResponse, ErrorCode, GrantedRole};
use tokio::time::Instant;

use super::rules::{self, ClaimInputs, Conflict, Decision, GrantFacts, KnownRaft, Rule};
use super::state::State;
use super::{ms, unix_ms_now, Durability, Membership, RefusedError};
use crate::store::{ClaimRecord, GrantRecord, HistoryRecord};

impl Membership {
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
        st.check_entry_room(cluster, node, None, &self.limits)?;

        // Gather, decide.
        let ttl = st.ttl;
        let cs = st.clusters.get(cluster);
        let own = cs.and_then(|c| c.nodes.get(node));
        let other_expects = cs.map(|c| c.other_expects(node)).unwrap_or_default();
        let cluster_identity = cs.and_then(|c| c.identity());
        let no_live_server_for = cs.and_then(|c| c.no_live_server_for(now, st.grace_from));
        let live_names: Vec<String> = match (cs, no_live_server_for) {
            (Some(c), Some(_)) => {
                let mut names: Vec<String> = c
                    .nodes
                    .keys()
                    .filter(|n| &***n != node)
                    .map(|n| n.to_string())
                    .collect();
                names.sort_unstable();
                names
            }
            _ => Vec::new(),
        };
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
            others: cs
                .map(|c| c.others(node, ttl, timing.interval, timing.raft_lost_after, now))
                .unwrap_or_default(),
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
            started_as: request.started_as,
            reported_raft: request.raft.as_ref(),
            cluster_raft: cluster_identity.as_ref(),
            two_rafts: cs.and_then(|c| c.two_rafts.as_ref()).map(|(a, b)| (a, b)),
            no_live_server_for,
            raft_lost_after: timing.raft_lost_after,
            live_names: &live_names,
            servers_returned_ago: cs
                .filter(|c| c.raft.is_some())
                .and_then(|c| c.servers_returned_at)
                .map(|at| now.saturating_duration_since(at)),
            ttl,
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
        // Which bound the cluster counts against depends on the decision: a bootstrap makes it
        // a bootstrapped record, anything else leaves it live or as it was.
        let bootstrapped_after = generation.is_some() || cs.is_some_and(|c| c.is_bootstrapped());
        let make_room = st.check_cluster_room(cluster, bootstrapped_after, &self.limits)?;
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
            nonce: Some(format!("{:016x}", rand::random::<u64>())),
        });
        let answer_raft = match &new_grant {
            Some(grant) => grant.identity(),
            None => cluster_identity.clone(),
        };
        let new_history = new_grant.as_ref().map(|grant| {
            let mut history = cs.map_or_else(HistoryRecord::default, |c| c.history(now));
            history.raft = None;
            history.last_generation = grant.generation;
            history
        });
        let changed_claim = own.and_then(|e| e.claim.as_ref()).is_none_or(|c| {
            c.role != record.role || c.address != record.address || c.expect != record.expect
        });
        if let Some(spare) = make_room {
            st.forget_cluster(&spare, &self.store)?;
        }
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
                cs.raft_view = None;
                cs.server_last_seen = None;
                cs.servers_returned_at = None;
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
        // Every claim answer waits for the store, a repeated one too: the same answer again
        // may repeat a decision whose write is still on its way (the first answer's client
        // gave up waiting), and must not be given before that write is durable. With nothing
        // new queued this is a wait for the commit in flight, if any. Claims are rare (a
        // starting node's), so the cost does not matter.
        let durability = Durability::FlushBeforeAnswer;
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
                raft: answer_raft,
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
            Conflict::WrongRaft => ErrorCode::WrongRaft,
            Conflict::RaftLost => ErrorCode::RaftLost,
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
