//! How an etcd member joins a running cluster: it adds itself as a learner through a live
//! server ([`EtcdJoin::add_self_as_learner`]), starts with the member list that call
//! returned, and, once it has caught up, is promoted to a voter
//! ([`EtcdJoin::promote_learner`]). A gateway granted no server waits here for one
//! ([`EtcdJoin::wait_for_servers`]).
//!
//! A learner never costs the raft its quorum, which a plain add does while the new member is
//! still starting. etcd 3.4 allows one learner at a time, so concurrent joiners take turns:
//! "too many learner members" is a retry, not a failure.
//!
//! Before adding, the member list decides ([`plan_join`], pure): a member with this node's
//! name or peer URL that ran before is this node's old incarnation (its log is lost with
//! the data directory, and etcd's `--initial-cluster` cannot hold one name twice), so it is
//! removed first. A raft that already has `expect` voters, or whose reconfiguration check
//! refuses the add (a voter is disconnected: "unhealthy cluster", "not enough started
//! members"), has a dead member the leader's sidecar will remove: the join waits for that
//! cleanup, asking every [`CLEANUP_RETRY_PAUSE`], until `--dead-member-after` +
//! `--join-timeout` have passed since it began, then exits 75 saying what it waited for.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::api::{EtcdApi, EtcdMember};
use crate::engine::{shuffled, JoinTargets};
use crate::exit::{Exit, EXIT_JOIN_FAILED};

/// Pause between two rounds over the join targets.
const JOIN_RETRY_PAUSE: Duration = Duration::from_millis(500);
/// Pause between two asks while the join waits for a dead member's cleanup: the cleanup
/// takes minutes, and each ask costs the raft a member list.
pub const CLEANUP_RETRY_PAUSE: Duration = Duration::from_secs(2);

/// This member's join: who it is, how long it may take, and whom to ask for the promotion.
#[derive(Debug)]
pub struct EtcdJoin {
    api: EtcdApi,
    /// The member's name, given to it in `--initial-cluster`.
    node: String,
    /// The advertised peer URL: how the cluster knows this member before it has a name.
    peer_url: String,
    join_timeout: Duration,
    /// `--dead-member-after`: a join that waits for a dead member's cleanup waits this much
    /// longer than the join timeout.
    dead_member_after: Duration,
    /// The voters the raft wants: the claim's answer once it came (see
    /// [`EtcdJoin::use_expect`]), else `--expect`. A raft that has this many voters has no
    /// room for this node until a dead one is removed.
    expect: AtomicU32,
    /// Client URLs of voters that can promote this member once it runs as a learner: the
    /// voters the member-add answer listed, then the join targets. A learner cannot answer
    /// membership calls itself.
    voters: Mutex<Vec<String>>,
}

impl EtcdJoin {
    pub fn new(
        api: EtcdApi,
        node: String,
        peer_url: String,
        join_timeout: Duration,
        dead_member_after: Duration,
        expect: u32,
    ) -> Self {
        EtcdJoin {
            api,
            node,
            peer_url,
            join_timeout,
            dead_member_after,
            expect: AtomicU32::new(expect),
            voters: Mutex::new(Vec::new()),
        }
    }

    /// The `expect` the registry's claim answer used, which wins over `--expect`.
    pub fn use_expect(&self, expect: u32) {
        self.expect.store(expect, Ordering::Relaxed);
    }

    /// The granted join targets (`host:port` of live servers' client APIs) can promote too.
    pub fn remember_join_targets(&self, join: &[String]) {
        self.remember_voters(join.iter().map(|t| format!("http://{t}")));
    }

    /// Waits until `targets` names a live server, for at most the join timeout.
    pub async fn wait_for_servers(&self, targets: &impl JoinTargets) -> Result<Vec<String>, Exit> {
        let deadline = Instant::now() + self.join_timeout;
        loop {
            if let Some(servers) = targets
                .live_server_addresses()
                .await
                .filter(|t| !t.is_empty())
            {
                return Ok(servers);
            }
            if Instant::now() >= deadline {
                return Err(Exit::new(
                    EXIT_JOIN_FAILED,
                    "no live etcd server to proxy to within the join timeout",
                ));
            }
            tokio::time::sleep(JOIN_RETRY_PAUSE).await;
        }
    }

    /// Adds this node as a learner through one of `join` (shuffled, retried until one
    /// answers) and returns the `--initial-cluster` value. Waits for a dead member's cleanup
    /// when the raft has no room (see the module's header).
    pub async fn add_self_as_learner(
        &self,
        join: &[String],
        targets: &impl JoinTargets,
    ) -> Result<String, Exit> {
        let started = Instant::now();
        let mut candidates = join.to_vec();
        // What the join waits for, once the raft said it has no room: the deadline is then
        // the cleanup's threshold plus the join timeout. The last reason is logged once.
        let mut cleanup_wait: Option<String> = None;
        loop {
            let mut no_room = None;
            for target in shuffled(&candidates) {
                // While the join waits for a cleanup, the wait was logged once; each try is not.
                if cleanup_wait.is_none() {
                    info!(target = %target, "joining the etcd cluster through this member, chosen at random among the live servers");
                } else {
                    debug!(target = %target, "asking again whether the raft has room for this node");
                }
                match self.add_through(&target).await {
                    Ok(initial_cluster) => return Ok(initial_cluster),
                    Err(JoinRefusal::Failed(reason)) => {
                        warn!(target = %target, %reason, "member add failed; trying the next join target")
                    }
                    // The raft's answer, the same through any member: no use asking the rest.
                    Err(JoinRefusal::NoRoom(reason)) => {
                        no_room = Some(reason);
                        break;
                    }
                }
            }
            if let Some(reason) = no_room {
                if cleanup_wait.as_deref() != Some(reason.as_str()) {
                    info!(%reason, gives_up_in = ?(started + self.dead_member_after + self.join_timeout).saturating_duration_since(Instant::now()), "waiting for the leader's sidecar to remove a dead member before this node can join");
                }
                cleanup_wait = Some(reason);
            }
            let (limit, pause) = match &cleanup_wait {
                Some(_) => (
                    self.dead_member_after + self.join_timeout,
                    CLEANUP_RETRY_PAUSE,
                ),
                None => (self.join_timeout, JOIN_RETRY_PAUSE),
            };
            if started.elapsed() >= limit {
                return Err(Exit::new(
                    EXIT_JOIN_FAILED,
                    match cleanup_wait {
                        Some(reason) => format!(
                            "the join waited {} (--dead-member-after + --join-timeout) for a dead member's removal, and the raft still has no room for this node: {reason}",
                            humantime::format_duration(limit)
                        ),
                        None => format!(
                            "no join target accepted this member within {:?}",
                            self.join_timeout
                        ),
                    },
                ));
            }
            tokio::time::sleep(pause).await;
            // The live servers may have changed while we tried: ask again.
            if let Some(fresh) = targets
                .live_server_addresses()
                .await
                .filter(|t| !t.is_empty())
            {
                candidates = fresh;
            }
        }
    }

    async fn add_through(&self, target: &str) -> Result<String, JoinRefusal> {
        let base = format!("http://{target}");
        let list = self
            .api
            .member_list(&base)
            .await
            .map_err(JoinRefusal::Failed)?;
        let expect = self.expect.load(Ordering::Relaxed);
        let plan = plan_join(&list.members, &self.node, &self.peer_url, expect);
        for old in &plan.remove {
            warn!(member_id = %old.member.id, name = %old.member.name, peer_urls = ?old.member.peer_urls, reason = %old.reason, "removing this node's old member before adding it again");
            self.api
                .remove_member(&base, &old.member.id)
                .await
                .map_err(JoinRefusal::Failed)?;
        }
        let remaining: Vec<EtcdMember> = list
            .members
            .iter()
            .filter(|m| !plan.remove.iter().any(|old| old.member.id == m.id))
            .cloned()
            .collect();
        match plan.next {
            JoinNext::Reuse(member_id) => {
                info!(%member_id, "this peer URL was added earlier but never started: reusing that member instead of adding it again");
                Ok(initial_cluster(&remaining, &member_id, &self.node))
            }
            JoinNext::WaitForCleanup(reason) => Err(JoinRefusal::NoRoom(reason)),
            JoinNext::Add => {
                let added = self
                    .api
                    .add_learner(&base, self.peer_url.clone())
                    .await
                    .map_err(|error| {
                        if is_reconfiguration_refusal(&error) {
                            JoinRefusal::NoRoom(format!("etcd's reconfiguration check refuses to add a member while a voter is disconnected: {error}"))
                        } else {
                            JoinRefusal::Failed(error)
                        }
                    })?;
                info!(member_id = %added.member.id, via = %target, "added this node to the etcd cluster as a learner");
                self.remember_voters(
                    added
                        .members
                        .iter()
                        .filter(|m| !m.is_learner)
                        .flat_map(|m| m.client_urls.iter().cloned())
                        .chain(std::iter::once(base)),
                );
                Ok(initial_cluster(
                    &added.members,
                    &added.member.id,
                    &self.node,
                ))
            }
        }
    }

    /// The join's last step: promotes this learner (`member_id`) to a voter through any known
    /// voter. "Not in sync" means "later": the caller tries again on its next round.
    pub async fn promote_learner(&self, member_id: &str) -> Result<(), String> {
        let voters = self.voters().clone();
        let mut last_error = "no voter known to promote this learner through".to_string();
        for url in &voters {
            match self.api.promote_member(url, member_id).await {
                Ok(()) => {
                    info!(%member_id, via = %url, "promoted this learner to a voting member");
                    return Ok(());
                }
                // Someone (an earlier run of this sidecar) promoted it already.
                Err(e) if e.ends_with("can only promote a learner member") => return Ok(()),
                Err(e) => last_error = format!("learner not promoted yet: {e}"),
            }
        }
        Err(last_error)
    }

    /// Adds voter client URLs to try for the promotion, most recent first, without repeats.
    fn remember_voters(&self, urls: impl Iterator<Item = String>) {
        let mut voters = self.voters();
        for url in urls {
            voters.retain(|known| *known != url);
            voters.insert(0, url);
        }
    }

    fn voters(&self) -> MutexGuard<'_, Vec<String>> {
        // The list is only whom to ask first: a panic while it was held leaves it usable.
        self.voters
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Why one attempt through one join target did not add this node.
#[derive(Debug)]
enum JoinRefusal {
    /// The target did not answer, or refused for a reason of its own: try the next one.
    Failed(String),
    /// The raft has no room for this node until a dead member is removed.
    NoRoom(String),
}

/// etcd's answers to a member add that its reconfiguration check (`--strict-reconfig-check`,
/// on by default) refused: a voter is not connected ("unhealthy cluster"), or too few
/// members have started.
pub fn is_reconfiguration_refusal(error: &str) -> bool {
    error.contains("unhealthy cluster") || error.contains("not enough started members")
}

/// A member to remove before this node joins, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OldMember {
    pub member: EtcdMember,
    pub reason: String,
}

/// What a `server` join does next, once its old members are removed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JoinNext {
    /// A member with this node's peer URL was added but never started (an earlier attempt
    /// whose answer was lost): start as that member (its ID).
    Reuse(String),
    /// Add this node as a learner.
    Add,
    /// The raft has as many voters as it wants: wait for a dead one's removal (why).
    WaitForCleanup(String),
}

/// The join's decision on a member list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinPlan {
    /// This node's old incarnations, removed first.
    pub remove: Vec<OldMember>,
    pub next: JoinNext,
}

/// Decides a `server` join on the member list a live server gave: this node is `node` at
/// `peer_url`, with an empty data directory, and the raft wants `expect` voters.
pub fn plan_join(members: &[EtcdMember], node: &str, peer_url: &str, expect: u32) -> JoinPlan {
    let mut remove = Vec::new();
    let mut reuse = None;
    for member in members {
        let same_url = member.peer_urls.iter().any(|u| u == peer_url);
        if same_url && member.name.is_empty() {
            reuse = Some(member.id.clone());
        } else if same_url {
            // The member ran before, but this data directory holds no raft state: its log is
            // lost, so the only way back in is to replace the old member.
            remove.push(OldMember {
                member: member.clone(),
                reason: "a member with this peer URL ran before, but the data directory is empty"
                    .into(),
            });
        } else if member.name == node {
            remove.push(OldMember {
                member: member.clone(),
                reason: "the old member of this node's name, at another peer URL: etcd's --initial-cluster cannot hold one name twice".into(),
            });
        }
    }
    let next = match reuse {
        Some(member_id) => JoinNext::Reuse(member_id),
        None => {
            let voters = members
                .iter()
                .filter(|m| !m.is_learner && !remove.iter().any(|old| old.member.id == m.id))
                .count();
            if voters >= expect as usize {
                JoinNext::WaitForCleanup(format!(
                    "the raft has {voters} voters, as many as it wants (expect {expect}): one of them must be dead, since the registry granted this node a server slot"
                ))
            } else {
                JoinNext::Add
            }
        }
    };
    JoinPlan { remove, next }
}

/// `--initial-cluster` from a member list, naming the new member as etcdctl does.
pub fn initial_cluster(members: &[EtcdMember], new_member_id: &str, node: &str) -> String {
    let mut entries = Vec::new();
    for member in members {
        let name = if member.id == new_member_id {
            node
        } else {
            member.name.as_str()
        };
        for url in &member.peer_urls {
            entries.push(format!("{name}={url}"));
        }
    }
    entries.join(",")
}

#[cfg(test)]
mod tests {
    use super::super::api::MemberAddResponse;
    use super::*;

    #[test]
    fn initial_cluster_names_the_new_member_like_etcdctl() {
        // The answer etcd 3.4.23 gave to a learner add on this machine.
        let body = r#"{"header":{"cluster_id":"5298435163934787985","member_id":"8645782499530242234","raft_term":"2"},"member":{"ID":"1438879902281274126","peerURLs":["http://127.0.0.1:23802"],"isLearner":true},"members":[{"ID":"1438879902281274126","peerURLs":["http://127.0.0.1:23802"],"isLearner":true},{"ID":"8645782499530242234","name":"a","peerURLs":["http://127.0.0.1:23801"],"clientURLs":["http://127.0.0.1:23791"]}]}"#;
        let added: MemberAddResponse = serde_json::from_str(body).expect("parse");
        assert_eq!(
            initial_cluster(&added.members, &added.member.id, "b"),
            "b=http://127.0.0.1:23802,a=http://127.0.0.1:23801"
        );
    }

    fn member(id: &str, name: &str, peer_url: &str, is_learner: bool) -> EtcdMember {
        EtcdMember {
            id: id.into(),
            name: name.into(),
            peer_urls: vec![peer_url.into()],
            client_urls: vec![],
            is_learner,
        }
    }

    #[test]
    fn a_join_removes_this_nodes_old_member_and_waits_when_the_raft_is_full() {
        const NEW_URL: &str = "http://10.0.0.9:2380";
        let a = member("1", "a", "http://10.0.0.1:2380", false);
        let b = member("2", "b", "http://10.0.0.2:2380", false);
        let c_old = member("3", "c", "http://10.0.0.3:2380", false);
        let dead = member("4", "d", "http://10.0.0.4:2380", false);
        let unstarted = member("5", "", NEW_URL, true);
        let same_url = member("6", "x", NEW_URL, false);
        let learner = member("7", "e", "http://10.0.0.5:2380", true);
        let removes = |ids: &[&str], next: JoinNext| {
            (ids.iter().map(|s| s.to_string()).collect::<Vec<_>>(), next)
        };
        /// (members, this node's name, expect, (removed IDs, next step))
        type Row = (Vec<EtcdMember>, &'static str, u32, (Vec<String>, JoinNext));
        let table: Vec<Row> = vec![
            // Room for one more voter.
            (
                vec![a.clone(), b.clone()],
                "c",
                3,
                removes(&[], JoinNext::Add),
            ),
            // Same name at another address: the old member goes, then there is room.
            (
                vec![a.clone(), b.clone(), c_old.clone()],
                "c",
                3,
                removes(&["3"], JoinNext::Add),
            ),
            // The raft is full of others: one is dead (the registry gave this node a slot).
            (
                vec![a.clone(), b.clone(), dead.clone()],
                "c",
                3,
                removes(&[], JoinNext::WaitForCleanup(String::new())),
            ),
            // A learner holds no voter's place.
            (
                vec![a.clone(), b.clone(), learner.clone()],
                "c",
                3,
                removes(&[], JoinNext::Add),
            ),
            // The same peer URL, never started: reused, even when the raft looks full.
            (
                vec![a.clone(), b.clone(), dead.clone(), unstarted.clone()],
                "c",
                3,
                removes(&[], JoinNext::Reuse("5".into())),
            ),
            // The same peer URL under a name, and this node's name elsewhere: both go.
            (
                vec![a.clone(), same_url.clone(), c_old.clone()],
                "c",
                3,
                removes(&["6", "3"], JoinNext::Add),
            ),
            // Five wanted: room even with a dead one.
            (
                vec![a.clone(), b.clone(), dead.clone()],
                "c",
                5,
                removes(&[], JoinNext::Add),
            ),
        ];
        for (members, node, expect, (removed, next)) in table {
            let plan = plan_join(&members, node, NEW_URL, expect);
            let ids: Vec<String> = plan.remove.iter().map(|o| o.member.id.clone()).collect();
            assert_eq!(ids, removed, "{members:?}");
            match (&plan.next, &next) {
                (JoinNext::WaitForCleanup(reason), JoinNext::WaitForCleanup(_)) => {
                    assert!(reason.contains("3 voters"), "{reason}")
                }
                _ => assert_eq!(plan.next, next, "{members:?}"),
            }
        }
    }

    #[test]
    fn etcds_reconfiguration_refusals_mean_wait_for_the_cleanup() {
        // etcd 3.4's messages (etcdserver/errors.go) as the JSON gateway passes them on.
        for (error, refusal) in [
            ("http://127.0.0.1:2379/v3/cluster/member/add answered 503 Service Unavailable: etcdserver: unhealthy cluster", true),
            ("http://127.0.0.1:2379/v3/cluster/member/add answered 412 Precondition Failed: etcdserver: re-configuration failed due to not enough started members", true),
            ("http://127.0.0.1:2379/v3/cluster/member/add answered 400 Bad Request: etcdserver: too many learner members in cluster", false),
            ("http://127.0.0.1:2379/v3/cluster/member/add: error sending request: connection refused", false),
        ] {
            assert_eq!(is_reconfiguration_refusal(error), refusal, "{error}");
        }
    }
}
