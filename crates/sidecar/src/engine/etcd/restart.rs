//! A member that restarts from its data: is it still in the raft, and at which peer URL?
//!
//! Before etcd starts ([`EtcdEngine::check_restart`]), the member list of a live server the
//! registry names is compared with the IDs the identity file recorded when this member was
//! first healthy ([`membership_on_restart`], pure): a member of the same etcd cluster that
//! the list lacks was removed from the raft meanwhile (its data would only make etcd refuse
//! to start, or worse, start a raft of its own), so `run` moves the data directory aside and
//! claims afresh; a member listed with another peer URL than this start advertises (Docker
//! gave the container a new address) has its peer URL updated (`member update`) before etcd
//! starts, so that its peers reach it at once.
//!
//! When no live server answered before the start, the same update is made through this
//! member's own etcd once it is healthy, before its first heartbeat
//! ([`EtcdEngine::confirm_own_member`], which also reads the IDs the identity file records).
//! A whole raft restarted at new addresses cannot do this: none of its members reaches a
//! quorum at the old peer URLs (advertise a stable host name instead of an address then).

use std::sync::atomic::Ordering;

use tracing::{info, warn};

use super::api::MemberListResponse;
use super::EtcdEngine;
use crate::engine::{shuffled, RestartCheck};
use crate::raft_identity::MemberIds;

/// What a live server's member list says about this member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RestartMembership {
    /// The list is of another etcd cluster (another raft under the cluster's name), or this
    /// member's IDs were never recorded and no member has its name: it says nothing.
    Unknown(String),
    /// The list is of this member's etcd cluster and lacks its ID.
    Removed,
    /// The member is listed at other peer URLs than this start advertises.
    PeerUrlChanged { member_id: String, old: Vec<String> },
    /// Listed as it is.
    Current,
}

/// Compares `list` with this member (its recorded IDs, its name, the peer URL it advertises
/// now). Without recorded IDs the member is found by name, and never found removed: a name
/// alone does not prove which member this data directory holds.
pub fn membership_on_restart(
    list: &MemberListResponse,
    recorded: Option<&MemberIds>,
    node: &str,
    peer_url: &str,
) -> RestartMembership {
    let member = match recorded {
        Some(ids) if ids.cluster_id != list.header.cluster_id => {
            return RestartMembership::Unknown(format!(
                "the list is of etcd cluster {}, this member's is {}",
                list.header.cluster_id, ids.cluster_id
            ))
        }
        Some(ids) => match list.members.iter().find(|m| m.id == ids.member_id) {
            Some(member) => member,
            None => return RestartMembership::Removed,
        },
        None => match list.members.iter().find(|m| m.name == node) {
            Some(member) => member,
            None => {
                return RestartMembership::Unknown(
                    "no member IDs recorded, and no member has this node's name".into(),
                )
            }
        },
    };
    if member.peer_urls.len() == 1 && member.peer_urls[0] == peer_url {
        RestartMembership::Current
    } else {
        RestartMembership::PeerUrlChanged {
            member_id: member.id.clone(),
            old: member.peer_urls.clone(),
        }
    }
}

impl EtcdEngine {
    /// Asks the live servers `join` (shuffled, the first that answers for this member's
    /// cluster decides) whether this member, restarting from its data, is still in the raft,
    /// and updates its peer URL there when it changed. Anything unknown restarts from the
    /// data as before.
    pub async fn check_restart(
        &self,
        join: &[String],
        recorded: Option<&MemberIds>,
    ) -> RestartCheck {
        let peer_url = self.peer_url();
        for target in shuffled(join) {
            let base = format!("http://{target}");
            let list = match self.api.member_list(&base).await {
                Ok(list) => list,
                Err(error) => {
                    warn!(%target, %error, "cannot read the member list from this live server before restarting");
                    continue;
                }
            };
            match membership_on_restart(&list, recorded, &self.node, &peer_url) {
                RestartMembership::Unknown(why) => {
                    info!(%target, %why, "this live server's member list says nothing about this member");
                }
                RestartMembership::Removed => {
                    let member_id = recorded
                        .map(|ids| ids.member_id.as_str())
                        .unwrap_or_default();
                    return RestartCheck::Removed(format!(
                        "the member list of {target} (etcd cluster {}) lacks this member ({member_id}): it was removed from the raft while it was away",
                        list.header.cluster_id
                    ));
                }
                RestartMembership::PeerUrlChanged { member_id, old } => {
                    match self
                        .api
                        .update_peer_urls(&base, &member_id, vec![peer_url.clone()])
                        .await
                    {
                        Ok(()) => {
                            info!(%member_id, ?old, new = %peer_url, via = %target, "this member restarts at another peer URL: updated it in the raft before starting etcd");
                            self.own_member_confirmed.store(false, Ordering::Relaxed);
                        }
                        Err(error) => {
                            warn!(%member_id, ?old, new = %peer_url, %error, "cannot update this member's peer URL before starting etcd; trying again through etcd itself once it is healthy");
                        }
                    }
                    return RestartCheck::Rejoin;
                }
                RestartMembership::Current => return RestartCheck::Rejoin,
            }
        }
        if !join.is_empty() {
            warn!(join = ?join, "no live server answered for this member's etcd cluster: restarting from the data unchecked");
        }
        RestartCheck::Rejoin
    }

    /// Once per run, when this member is first healthy: reads its IDs from its own etcd and
    /// makes sure the raft lists it at the peer URL it advertises (updating it through its
    /// own etcd if not). `None` once done, or while it cannot be done (tried again next
    /// round; heartbeats go on meanwhile).
    pub async fn confirm_own_member(&self) -> Option<MemberIds> {
        if self.own_member_confirmed.load(Ordering::Relaxed) {
            return None;
        }
        let base = self.local_client_url();
        let status = self.api.status(&base).await.ok()?;
        let ids = MemberIds {
            cluster_id: status.header.cluster_id.clone(),
            member_id: status.header.member_id.clone(),
        };
        let list = match self.api.member_list(&base).await {
            Ok(list) => list,
            Err(error) => {
                warn!(%error, "cannot read the member list from this member's own etcd");
                return None;
            }
        };
        let peer_url = self.peer_url();
        if let RestartMembership::PeerUrlChanged { member_id, old } =
            membership_on_restart(&list, Some(&ids), &self.node, &peer_url)
        {
            match self
                .api
                .update_peer_urls(&base, &member_id, vec![peer_url.clone()])
                .await
            {
                Ok(()) => {
                    info!(%member_id, ?old, new = %peer_url, "this member runs at another peer URL than the raft listed: updated it through its own etcd")
                }
                Err(error) => {
                    warn!(%member_id, ?old, new = %peer_url, %error, "cannot update this member's peer URL; trying again next round");
                    return None;
                }
            }
        }
        self.own_member_confirmed.store(true, Ordering::Relaxed);
        Some(ids)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_restart_finds_its_member_removed_moved_or_as_it_was() {
        // A member list etcd 3.4 gave on this machine, trimmed to two members.
        let list: MemberListResponse = serde_json::from_str(
            r#"{"header":{"cluster_id":"5298435163934787985","member_id":"8645782499530242234"},"members":[{"ID":"8645782499530242234","name":"a","peerURLs":["http://127.0.0.1:23801"],"clientURLs":["http://127.0.0.1:23791"]},{"ID":"1438879902281274126","name":"b","peerURLs":["http://127.0.0.1:23802"],"clientURLs":["http://127.0.0.1:23792"]}]}"#,
        )
        .expect("parse");
        let ids = |cluster: &str, member: &str| MemberIds {
            cluster_id: cluster.into(),
            member_id: member.into(),
        };
        const CLUSTER: &str = "5298435163934787985";
        // (recorded IDs, node, peer URL now, answer)
        let table = [
            (
                Some(ids(CLUSTER, "1438879902281274126")),
                "b",
                "http://127.0.0.1:23802",
                RestartMembership::Current,
            ),
            (
                Some(ids(CLUSTER, "1438879902281274126")),
                "b",
                "http://127.0.0.1:33802",
                RestartMembership::PeerUrlChanged {
                    member_id: "1438879902281274126".into(),
                    old: vec!["http://127.0.0.1:23802".into()],
                },
            ),
            // The same cluster without this member's ID: removed (its name is no proof).
            (
                Some(ids(CLUSTER, "999")),
                "b",
                "http://127.0.0.1:23802",
                RestartMembership::Removed,
            ),
            // Nothing recorded: found by name; not found says nothing.
            (
                None,
                "b",
                "http://127.0.0.1:33802",
                RestartMembership::PeerUrlChanged {
                    member_id: "1438879902281274126".into(),
                    old: vec!["http://127.0.0.1:23802".into()],
                },
            ),
        ];
        for (recorded, node, peer_url, expected) in table {
            assert_eq!(
                membership_on_restart(&list, recorded.as_ref(), node, peer_url),
                expected,
                "{recorded:?} {node} {peer_url}"
            );
        }
        for (recorded, node) in [(Some(ids("1", "999")), "b"), (None, "c")] {
            assert!(
                matches!(
                    membership_on_restart(&list, recorded.as_ref(), node, "http://x:1"),
                    RestartMembership::Unknown(_)
                ),
                "{recorded:?} {node}"
            );
        }
    }
}
