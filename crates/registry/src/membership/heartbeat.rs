//! The heartbeat write: register or renew a member, learn the cluster's raft from it, refuse a
//! member of another raft.

use rollcall_protocol::{
    Absence, ErrorCode, HeartbeatRequest, HeartbeatResponse, MemberRole, RaftChange,
    RaftChangeKind, RaftMember,
};
use tokio::time::Instant;

use super::slots::meta_bytes;
use super::state::{self, change_of, Change, LiveMember, State};
use super::{ms, unix_ms_now, Durability, Membership, RefusedError};
use crate::store::{HistoryRecord, MemberRecord};

impl Membership {
    /// A heartbeat: registers or renews `node`. The first heartbeat of a cluster whose raft is
    /// not known makes it known (a member heartbeats only while its agent is healthy).
    pub fn heartbeat(
        &self,
        cluster: &str,
        node: &str,
        mut hb: HeartbeatRequest,
    ) -> Result<(HeartbeatResponse, Durability), RefusedError> {
        let now = Instant::now();
        // The leader's view of the raft; any other member's list is not used.
        let view = hb
            .raft_members
            .take()
            .filter(|_| hb.status.as_ref().and_then(|s| s.is_leader) == Some(true));
        let mut st = self.lock();
        self.observe(&mut st, now);
        st.expire_due(now, &self.store);
        let cs = st.clusters.get(cluster);
        let previous = cs
            .and_then(|c| c.nodes.get(node))
            .and_then(|e| e.member.as_ref())
            .map(|m| &m.record);
        let change = change_of(previous, &hb);
        let conflict = cs
            .zip(hb.raft.as_ref())
            .and_then(|(c, r)| c.conflicting_identity(r));
        if let (Some(reported), Some(ours)) = (&hb.raft, &conflict) {
            // Relearned from a heartbeat within this startup grace: the registry cannot tell
            // which of the two is the cluster's raft, so it lists neither.
            let relearning = now < st.grace_from + self.timing.startup_grace
                && cs
                    .and_then(|c| c.identity_learned_at)
                    .is_some_and(|at| at >= st.grace_from);
            if relearning {
                if let Some(cs) = st.clusters.get_mut(cluster) {
                    if cs.two_rafts.is_none() {
                        tracing::error!(cluster, %ours, other = %reported, "two rafts report themselves under one cluster name while the registry relearns it: neither is listed until an operator resets the cluster");
                        cs.two_rafts = Some((ours.clone(), reported.clone()));
                        st.events += 1;
                    }
                }
            }
            {
                let message = if relearning {
                    format!(
                        "{node} reports raft {reported}, but cluster {cluster} was relearned as raft {ours} in this startup grace: two rafts claim the name, so neither is listed or given as a join target until an operator stops one and resets the cluster"
                    )
                } else {
                    format!(
                        "{node} reports raft {reported}, but cluster {cluster}'s raft is {ours}; it is not listed, and nobody is given it as a join target"
                    )
                };
                tracing::warn!(cluster, node, %reported, %ours, "heartbeat from another raft refused");
                metrics::counter!("rollcall_wrong_raft_total").increment(1);
                st.record_decision(
                    cluster,
                    node,
                    "wrong_raft",
                    &format!("[wrong-raft] {message}"),
                );
                self.publish(st);
                return Err(RefusedError::Conflict {
                    code: ErrorCode::WrongRaft,
                    message,
                    retry_after: None,
                });
            }
        }
        let mut learn = match cs {
            Some(cs) => cs.raft_to_learn(),
            None => state::ClusterState::default().raft_to_learn(),
        };
        // A raft known without its nonce (relearned after a data loss, or from a grant of
        // format 1) learns it from the first member that reports one.
        let known_without_nonce = cs
            .and_then(|c| c.raft.as_ref())
            .filter(|r| r.nonce.is_none())
            .cloned();
        let mut learned_from_report = false;
        if let (Some(mut raft), Some(reported)) = (known_without_nonce, &hb.raft) {
            raft.generation = reported.generation;
            raft.nonce = Some(reported.nonce.clone());
            learn = Some(raft);
            learned_from_report = true;
        }
        if let (Some(raft), Some(reported)) = (learn.as_mut(), &hb.raft) {
            if raft.nonce.is_none() {
                raft.generation = reported.generation;
                raft.nonce = Some(reported.nonce.clone());
                learned_from_report = true;
            }
        }

        if change == Change::Nothing && learn.is_none() {
            // The common case, a renewal: move the deadline and answer. No index, no write.
            // `Nothing` means the member was found above, under this lock: its entry exists.
            let renewed = st.renew(cluster, node, now);
            debug_assert!(renewed, "a known member's entry exists");
            let (answer, changes) = self.answer(&mut st, cluster, node, false, view, now);
            self.publish(st);
            crate::telemetry::count_heartbeat(false);
            log_raft_changes(cluster, &changes);
            return Ok((answer, Durability::NoWait));
        }

        // Gather. After a heartbeat the cluster's raft is known, so it holds a bootstrapped
        // record; a reset cluster with nothing live may make room for it.
        st.check_entry_room(cluster, node, Some(meta_bytes(&hb.meta)), &self.limits)?;
        let make_room = st.check_cluster_room(cluster, true, &self.limits)?;
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
            raft: hb.raft,
        };
        let history = learn.as_ref().map(|raft| {
            let mut history = cs.map_or_else(HistoryRecord::default, |c| c.history(now));
            history.raft = Some(raft.clone());
            history
        });
        // A server of the known raft heartbeats while none was live, after this registry saw
        // its servers go or started with the raft known: the raft is coming back (rule
        // `raft-returning`). A raft relearned from an agent's heartbeat, none of whose servers
        // this registry ever counted, is forming, not returning.
        let returns = record.role == MemberRole::Server
            && cs.is_some_and(|c| {
                c.server_last_seen.is_some() && c.no_live_server_for(now, st.grace_from).is_some()
            });
        // Persist.
        if let Some(spare) = make_room {
            st.forget_cluster(&spare, &self.store)?;
        }
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
        let live = LiveMember {
            record,
            last_heartbeat: now,
        };
        st.put_member(cluster, node, live, now);
        if let Some(cs) = st.clusters.get_mut(cluster) {
            cs.index = index;
            if let Some(raft) = &learn {
                cs.raft = Some(raft.clone());
            }
            if learned_from_report {
                cs.identity_learned_at = Some(now);
            }
            if returns {
                cs.servers_returned_at = Some(now);
            }
        }
        let (answer, changes) =
            self.answer(&mut st, cluster, node, registered_as.is_some(), view, now);
        crate::telemetry::count_heartbeat(registered_as.is_some());
        self.publish(st);
        log_raft_changes(cluster, &changes);
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
        Ok((answer, durability))
    }

    /// The answer to a heartbeat of `node`, whose entry is filed: a leader's view is taken
    /// (its changes returned, to be logged once the lock is released) and answered with the
    /// absence evidence; an agent is told whether a server slot is open. Neither is answered
    /// within the startup grace, when live members may not have re-registered yet.
    fn answer(
        &self,
        st: &mut State,
        cluster: &str,
        node: &str,
        registered: bool,
        view: Option<Vec<RaftMember>>,
        now: Instant,
    ) -> (HeartbeatResponse, Vec<RaftChange>) {
        let (ttl, events) = (st.ttl, st.events);
        let grace_end = st.grace_from + self.timing.startup_grace;
        let past_grace = now >= grace_end;
        let mut absent: Vec<Absence> = Vec::new();
        let mut changes = Vec::new();
        let mut server_slot_open = false;
        let mut event = false;
        let mut expect = None;
        if let Some(cs) = st.clusters.get_mut(cluster) {
            expect = cs.raft.as_ref().and_then(|r| r.expect);
            if let Some(members) = view {
                if past_grace {
                    absent = cs.absent(node, &members, ttl, now, grace_end);
                }
                let differs;
                (changes, differs) = cs.take_view(node, members, now);
                event = differs;
            }
            let is_agent = cs
                .nodes
                .get(node)
                .and_then(|e| e.member.as_ref())
                .is_some_and(|m| m.record.role == MemberRole::Agent);
            if is_agent && past_grace {
                server_slot_open =
                    cs.server_slot_open(node, ttl, self.timing.interval, now, events);
            }
        }
        if event {
            st.events += 1;
        }
        let answer = HeartbeatResponse {
            cluster: cluster.to_string(),
            node: node.to_string(),
            registered,
            ttl_ms: ms(self.timing.ttl),
            interval_ms: ms(self.timing.interval),
            absent,
            server_slot_open,
            expect,
        };
        (answer, changes)
    }
}

/// Logs and counts the changes between two consecutive views of a cluster's raft.
fn log_raft_changes(cluster: &str, changes: &[RaftChange]) {
    for c in changes {
        let (id, member, leader) = (c.id.as_str(), c.name.as_str(), c.reporter.as_str());
        match c.kind {
            RaftChangeKind::Removed => {
                metrics::counter!("rollcall_raft_members_removed_total").increment(1);
                tracing::warn!(
                    cluster,
                    member,
                    id,
                    leader,
                    "raft member {member} ({id}) left the raft, as leader {leader} reports"
                );
            }
            RaftChangeKind::Added => {
                metrics::counter!("rollcall_raft_members_added_total").increment(1);
                tracing::info!(
                    cluster,
                    member,
                    id,
                    leader,
                    "raft member {member} ({id}) joined the raft, as leader {leader} reports"
                );
            }
            RaftChangeKind::Promoted => {
                tracing::info!(
                    cluster,
                    member,
                    id,
                    leader,
                    "raft member {member} ({id}) became a voter, as leader {leader} reports"
                );
            }
        }
    }
}
