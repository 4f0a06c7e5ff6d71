//! `rollcall-sidecar leave`, the raft's half: whether this member may leave for good
//! ([`may_leave`], pure, tested by a table), and its removal through another voter
//! ([`EtcdEngine::plan_leave`], [`EtcdEngine::remove_self`]). The registry's half, the
//! marker and the signal to the running sidecar are in [`crate::leave`].
//!
//! A voter may leave only when the voters that remain have a connected majority without it:
//! "connected" is judged from inside the leaving member's container by each other voter's
//! `/health` (true while it has a leader and no alarm), since only the leader has peer
//! metrics for every member. A learner carries no quorum weight and may always leave, as
//! long as a voter answers to remove it through.

use std::collections::BTreeSet;
use std::time::Duration;

use tokio::time::Instant;
use tracing::{info, warn};

use super::api::EtcdMember;
use super::status::parse_health;
use super::EtcdEngine;
use crate::exit::{Exit, EXIT_AGENT_NOT_RUNNING, EXIT_LEAVE_REFUSED};

/// How long `leave` keeps asking the voters to remove this member. etcd 3.4 refuses a
/// membership change until every voter has been connected for 5 s; this covers that twice.
pub const REMOVE_DEADLINE: Duration = Duration::from_secs(15);
/// Pause between two rounds over the voters.
const REMOVE_RETRY_PAUSE: Duration = Duration::from_secs(1);

/// What leaving changes, once allowed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeavePlan {
    pub self_id: String,
    pub learner: bool,
    /// Voters after this member is removed, and how many of them answer healthy.
    pub voters_after: usize,
    pub healthy_voters_after: usize,
    /// Client URLs of the healthy other voters, to remove this member through.
    pub through: Vec<String>,
}

/// Decides whether `self_id` may leave the raft of `members`, given the IDs of the other
/// members whose `/health` answered true; the refusal says why, with the arithmetic.
pub fn may_leave(
    self_id: &str,
    members: &[EtcdMember],
    healthy: &BTreeSet<String>,
) -> Result<LeavePlan, String> {
    let Some(me) = members.iter().find(|m| m.id == self_id) else {
        return Err(format!(
            "this member ({self_id}) is not in its raft's member list: it was removed already"
        ));
    };
    let other_voters: Vec<&EtcdMember> = members
        .iter()
        .filter(|m| m.id != self_id && !m.is_learner)
        .collect();
    let healthy_others: Vec<&EtcdMember> = other_voters
        .iter()
        .copied()
        .filter(|m| healthy.contains(&m.id))
        .collect();
    let plan = LeavePlan {
        self_id: self_id.to_string(),
        learner: me.is_learner,
        voters_after: other_voters.len(),
        healthy_voters_after: healthy_others.len(),
        through: healthy_others
            .iter()
            .flat_map(|m| m.client_urls.iter().cloned())
            .collect(),
    };
    if !plan.learner && plan.voters_after == 0 {
        return Err("this is the raft's last voter: it cannot leave (stop it instead, or reset the cluster in the registry)".into());
    }
    if !plan.learner && plan.healthy_voters_after * 2 <= plan.voters_after {
        return Err(format!(
            "removing this member would leave {} voters of which only {} answer healthy, not a majority: the raft would lose its quorum (bring the others back first)",
            plan.voters_after, plan.healthy_voters_after
        ));
    }
    if plan.through.is_empty() {
        return Err("no healthy voter has a client URL to remove this member through".into());
    }
    Ok(plan)
}

impl EtcdEngine {
    /// Reads the raft from this member's etcd and the other members' health, and decides
    /// whether this member may leave: the refusal is exit 77, an etcd that does not answer
    /// exit 255.
    pub async fn plan_leave(&self) -> Result<LeavePlan, Exit> {
        let base = self.local_client_url();
        let not_running = |reason: String| {
            Exit::new(
                EXIT_AGENT_NOT_RUNNING,
                format!("this member's etcd does not answer ({reason}); nothing changed"),
            )
        };
        let status = self.api.status(&base).await.map_err(not_running)?;
        let list = self.api.member_list(&base).await.map_err(not_running)?;
        let self_id = status.header.member_id;
        let mut healthy = BTreeSet::new();
        for member in list.members.iter().filter(|m| m.id != self_id) {
            for url in &member.client_urls {
                match self.api.health(url).await {
                    Ok(body) if parse_health(&body) => {
                        healthy.insert(member.id.clone());
                        break;
                    }
                    Ok(body) => {
                        info!(member = %member.name, %url, health = %body.trim(), "a member answers, but not healthy")
                    }
                    Err(reason) => {
                        info!(member = %member.name, %reason, "a member does not answer")
                    }
                }
            }
        }
        may_leave(&self_id, &list.members, &healthy).inspect(|plan| {
            info!(member_id = %plan.self_id, learner = plan.learner, voters_after = plan.voters_after, healthy_voters_after = plan.healthy_voters_after, "this member may leave: the remaining voters keep a healthy majority");
        }).map_err(|reason| Exit::new(EXIT_LEAVE_REFUSED, format!("leave refused: {reason}; nothing changed")))
    }

    /// Removes this member from the raft through one of the plan's voters (the first that
    /// accepts), retrying for at most [`REMOVE_DEADLINE`]: etcd refuses a membership change
    /// for a few seconds after a member (re)connected ("not enough started members").
    pub async fn remove_self(&self, plan: &LeavePlan) -> Result<(), Exit> {
        let deadline = Instant::now() + REMOVE_DEADLINE;
        let mut last_error = String::new();
        loop {
            for url in &plan.through {
                match self.api.remove_member(url, &plan.self_id).await {
                    Ok(()) => {
                        info!(member_id = %plan.self_id, via = %url, "removed this member from the raft");
                        return Ok(());
                    }
                    // An earlier try went through after all (its answer was lost).
                    Err(reason) if reason.ends_with("member not found") => {
                        info!(member_id = %plan.self_id, via = %url, "this member is no longer in the raft");
                        return Ok(());
                    }
                    Err(reason) => {
                        warn!(via = %url, %reason, "member remove failed; trying the next voter");
                        last_error = reason;
                    }
                }
            }
            if Instant::now() >= deadline {
                return Err(Exit::new(
                    EXIT_LEAVE_REFUSED,
                    format!(
                        "no voter removed this member within {REMOVE_DEADLINE:?} ({last_error}); nothing changed"
                    ),
                ));
            }
            tokio::time::sleep(REMOVE_RETRY_PAUSE).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(id: &str, learner: bool) -> EtcdMember {
        EtcdMember {
            id: id.to_string(),
            name: format!("n{id}"),
            peer_urls: vec![],
            client_urls: vec![format!("http://10.0.0.{id}:2379")],
            is_learner: learner,
        }
    }

    /// (case, members, self, healthy others, allowed: (voters after, healthy after))
    type LeaveCase<'a> = (
        &'a str,
        &'a [EtcdMember],
        &'a str,
        &'a [&'a str],
        Option<(usize, usize)>,
    );

    #[test]
    fn a_member_leaves_only_when_the_remaining_voters_keep_a_healthy_majority() {
        let three = [member("1", false), member("2", false), member("3", false)];
        let five = [
            member("1", false),
            member("2", false),
            member("3", false),
            member("4", false),
            member("5", false),
        ];
        let with_learner = [member("1", false), member("2", false), member("3", true)];
        // (case, members, self, healthy others, allowed: (voters after, healthy after))
        let table: [LeaveCase; 9] = [
            ("three healthy", &three, "1", &["2", "3"], Some((2, 2))),
            ("one other down: one of two", &three, "1", &["2"], None),
            ("both others down", &three, "1", &[], None),
            (
                "five, one other down: three of four",
                &five,
                "1",
                &["2", "3", "4"],
                Some((4, 3)),
            ),
            (
                "five, two others down: two of four",
                &five,
                "1",
                &["2", "3"],
                None,
            ),
            (
                "two voters, the other healthy",
                &three[..2],
                "1",
                &["2"],
                Some((1, 1)),
            ),
            ("the last voter", &three[..1], "1", &[], None),
            (
                "a learner leaves whatever the quorum",
                &with_learner,
                "3",
                &["1"],
                Some((2, 1)),
            ),
            (
                "not in the list any more",
                &three,
                "9",
                &["1", "2", "3"],
                None,
            ),
        ];
        for (case, members, me, healthy, allowed) in table {
            let healthy: BTreeSet<String> = healthy.iter().map(|s| s.to_string()).collect();
            let verdict = may_leave(me, members, &healthy);
            assert_eq!(
                verdict
                    .as_ref()
                    .ok()
                    .map(|p| (p.voters_after, p.healthy_voters_after)),
                allowed,
                "{case}: {verdict:?}"
            );
            if let Ok(plan) = verdict {
                // Only through healthy voters, never itself.
                assert!(plan
                    .through
                    .iter()
                    .all(|url| !url.ends_with(&format!(".{me}:2379"))));
                assert_eq!(plan.through.len(), plan.healthy_voters_after, "{case}");
            }
        }
    }
}
