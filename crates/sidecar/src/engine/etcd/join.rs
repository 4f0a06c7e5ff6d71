//! How an etcd member joins a running cluster: it adds itself as a learner through a live
//! server ([`EtcdJoin::add_self_as_learner`]), starts with the member list that call
//! returned, and, once it has caught up, is promoted to a voter
//! ([`EtcdJoin::promote_learner`]). A gateway granted no server waits here for one
//! ([`EtcdJoin::wait_for_servers`]).
//!
//! A learner never costs the raft its quorum, which a plain add does while the new member is
//! still starting. etcd 3.4 allows one learner at a time, so concurrent joiners take turns:
//! "too many learner members" is a retry, not a failure.

use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use tokio::time::Instant;
use tracing::{info, warn};

use super::api::{EtcdApi, EtcdMember};
use crate::engine::{shuffled, JoinTargets};
use crate::exit::{Exit, EXIT_JOIN_FAILED};

/// Pause between two rounds over the join targets.
const JOIN_RETRY_PAUSE: Duration = Duration::from_millis(500);

/// This member's join: who it is, how long it may take, and whom to ask for the promotion.
#[derive(Debug)]
pub struct EtcdJoin {
    api: EtcdApi,
    /// The member's name, given to it in `--initial-cluster`.
    node: String,
    /// The advertised peer URL: how the cluster knows this member before it has a name.
    peer_url: String,
    join_timeout: Duration,
    /// Client URLs of voters that can promote this member once it runs as a learner: the
    /// voters the member-add answer listed, then the join targets. A learner cannot answer
    /// membership calls itself.
    voters: Mutex<Vec<String>>,
}

impl EtcdJoin {
    pub fn new(api: EtcdApi, node: String, peer_url: String, join_timeout: Duration) -> Self {
        EtcdJoin {
            api,
            node,
            peer_url,
            join_timeout,
            voters: Mutex::new(Vec::new()),
        }
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
    /// answers) and returns the `--initial-cluster` value.
    pub async fn add_self_as_learner(
        &self,
        join: &[String],
        targets: &impl JoinTargets,
    ) -> Result<String, Exit> {
        let deadline = Instant::now() + self.join_timeout;
        let mut candidates = join.to_vec();
        loop {
            for target in shuffled(&candidates) {
                info!(target = %target, "joining the etcd cluster through this member, chosen at random among the live servers");
                match self.add_through(&target).await {
                    Ok(initial_cluster) => return Ok(initial_cluster),
                    Err(reason) => {
                        warn!(target = %target, %reason, "member add failed; trying the next join target")
                    }
                }
            }
            if Instant::now() >= deadline {
                return Err(Exit::new(
                    EXIT_JOIN_FAILED,
                    format!(
                        "no join target accepted this member within {:?}",
                        self.join_timeout
                    ),
                ));
            }
            tokio::time::sleep(JOIN_RETRY_PAUSE).await;
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

    async fn add_through(&self, target: &str) -> Result<String, String> {
        let base = format!("http://{target}");
        let list = self.api.member_list(&base).await?;
        if let Some(existing) = list
            .members
            .iter()
            .find(|m| m.peer_urls.contains(&self.peer_url))
        {
            if existing.name.is_empty() {
                info!(member_id = %existing.id, "this peer URL was added earlier but never started: reusing that member instead of adding it again");
                return Ok(initial_cluster(&list.members, &existing.id, &self.node));
            }
            // The member ran before, but this data directory holds no raft state: its log is
            // lost, so the only way back in is to replace the old member.
            warn!(member_id = %existing.id, name = %existing.name, "a member with this peer URL exists but the data directory is empty: removing it before adding this node again");
            self.api.remove_member(&base, &existing.id).await?;
        }
        let added = self.api.add_learner(&base, self.peer_url.clone()).await?;
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
}
