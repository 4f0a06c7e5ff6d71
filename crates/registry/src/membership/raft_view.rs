//! The raft's membership as its leader reports it, and what the registry derives from it: the
//! changes between consecutive views (logged, counted, kept for people), the absence evidence
//! the leader's dead-member cleanup needs (`absent` in its heartbeat answer), the slots of live
//! servers the leader reports disconnected, the slots of voters that do not heartbeat here
//! (those it reports connected, or, once its view is a TTL old, the silent leader itself),
//! `server_slot_open` for agents, and how long no server has been live (for `raft-lost`). All
//! in memory: a restart learns the view again from the leader's next heartbeat.

use std::time::Duration;

use rollcall_protocol::{Absence, RaftChange, RaftChangeKind, RaftMember};
use tokio::time::Instant;

use super::state::{ClusterState, RAFT_CHANGES};
use super::{ms, unix_ms_now};

/// A leader's report of the raft's membership: a heartbeat whose status says `is_leader` and
/// that lists `raft_members`.
#[derive(Debug, Clone)]
pub(super) struct RaftView {
    /// The leader that reported it.
    pub reporter: String,
    /// When the registry received it: a view older than one TTL is not used for slots.
    pub at: Instant,
    pub members: Vec<RaftMember>,
}

impl ClusterState {
    /// Takes a leader's view, and returns what changed since the last one (nothing for the
    /// first view: there is nothing to compare it with), and whether the view differs from the
    /// last one in anything (a connection, a duration) or comes from another reporter.
    pub fn take_view(
        &mut self,
        reporter: &str,
        members: Vec<RaftMember>,
        now: Instant,
    ) -> (Vec<RaftChange>, bool) {
        let differs = self
            .raft_view
            .as_ref()
            .is_none_or(|v| v.reporter != reporter || v.members != members);
        let mut changes = Vec::new();
        if let Some(previous) = &self.raft_view {
            let change = |kind, m: &RaftMember| RaftChange {
                at_unix_ms: unix_ms_now(),
                kind,
                id: m.id.clone(),
                name: m.name.clone(),
                reporter: reporter.to_string(),
            };
            for old in &previous.members {
                match members.iter().find(|m| m.id == old.id) {
                    None => changes.push(change(RaftChangeKind::Removed, old)),
                    Some(new) if old.learner && !new.learner => {
                        changes.push(change(RaftChangeKind::Promoted, new))
                    }
                    Some(_) => {}
                }
            }
            for new in &members {
                if !previous.members.iter().any(|m| m.id == new.id) {
                    changes.push(change(RaftChangeKind::Added, new));
                }
            }
        }
        for change in &changes {
            if self.raft_changes.len() == RAFT_CHANGES {
                self.raft_changes.pop_front();
            }
            self.raft_changes.push_back(change.clone());
        }
        self.raft_view = Some(RaftView {
            reporter: reporter.to_string(),
            at: now,
            members,
        });
        (changes, differs)
    }

    /// The leader's view, if it was received within `ttl`.
    fn fresh_view(&self, ttl: Duration, now: Instant) -> Option<&RaftView> {
        self.raft_view
            .as_ref()
            .filter(|v| now.saturating_duration_since(v.at) < ttl)
    }

    /// The members the leader's fresh view reports disconnected (`connected: false`) for at
    /// least `interval`, each with when its disconnection began as the leader counts it (the
    /// view's receipt less `disconnected_for_ms`). A shorter disconnection, or one of unknown
    /// length, is not reported here: a task replaced at a new address is unreachable by name
    /// for a few seconds after it is back (its peer connections flap while the overlay's DNS
    /// catches up), and the leader observes once an interval.
    pub fn disconnected(
        &self,
        ttl: Duration,
        interval: Duration,
        now: Instant,
    ) -> Vec<(&str, Instant)> {
        self.fresh_view(ttl, now).map_or_else(Vec::new, |v| {
            v.members
                .iter()
                .filter(|m| m.connected == Some(false) && !m.name.is_empty())
                .filter_map(|m| {
                    let gone_for = Duration::from_millis(m.disconnected_for_ms?);
                    (gone_for >= interval)
                        .then(|| (m.name.as_str(), v.at.checked_sub(gone_for).unwrap_or(v.at)))
                })
                .collect()
        })
    }

    /// The voters in the raft, other than `node`, that hold no server slot here (their
    /// sidecars do not heartbeat), as the leader's last view tells:
    /// - while the view is fresh (received within `ttl`), the voters it reports connected.
    ///   Only `connected: true` counts: a voter of unknown connection (the leader could not
    ///   read its peers, or was just elected) or one disconnected may be dead, and its slot is
    ///   then for a replacement;
    /// - while it is older, but younger than `hold` (`--raft-lost-after`), only the leader that
    ///   reported it: its sidecar is silent (its own report would be fresh otherwise), and
    ///   whether its agent still leads the raft only that report could say; a dead leader's
    ///   raft elects another, whose report frees the slot within an interval. Past `hold`, a
    ///   leader silent that long holds nothing.
    ///
    /// A voter without a name is not counted: the registry cannot tell whether it is one of
    /// its entries.
    pub fn unlisted_voters(
        &self,
        node: &str,
        ttl: Duration,
        hold: Duration,
        now: Instant,
    ) -> usize {
        let Some(view) = &self.raft_view else {
            return 0;
        };
        let unlisted = |name: &str| {
            !name.is_empty()
                && name != node
                && !self.nodes.get(name).is_some_and(|e| e.holds_server_slot())
        };
        let age = now.saturating_duration_since(view.at);
        if age < ttl {
            view.members
                .iter()
                .filter(|m| !m.learner && m.connected == Some(true) && unlisted(&m.name))
                .count()
        } else if age < hold {
            usize::from(unlisted(&view.reporter))
        } else {
            0
        }
    }

    /// The registry's absence evidence for the leader `reporter`: each named raft member other
    /// than the reporter that is not live here, absent since the later of when it was last
    /// live and `grace_end` (before that the registry could not have seen it).
    pub fn absent(
        &self,
        reporter: &str,
        members: &[RaftMember],
        ttl: Duration,
        now: Instant,
        grace_end: Instant,
    ) -> Vec<Absence> {
        members
            .iter()
            .filter(|m| !m.name.is_empty() && m.name != reporter)
            .filter(|m| {
                !self
                    .nodes
                    .get(m.name.as_str())
                    .is_some_and(|e| e.is_live(ttl, now))
            })
            .map(|m| {
                let since = self
                    .seen
                    .get(&m.name)
                    .map_or(grace_end, |seen| (*seen).max(grace_end));
                Absence {
                    node: m.name.clone(),
                    absent_for_ms: ms(now.saturating_duration_since(since)),
                }
            })
            .collect()
    }

    /// Whether an agent's heartbeat answer says `server_slot_open`: the raft's size is known,
    /// the raft's leader reports fewer voters than that (a view received within one TTL), and
    /// the live servers (those the leader reports disconnected not counted, voters it reports
    /// connected that do not heartbeat here counted) are fewer too.
    /// Both: the live servers alone are fewer for a while whenever members re-register (a
    /// registry restarted empty, a raft paused past its TTL), and an agent told then would
    /// give up its gateway to join a raft that has no room. No fresh view, no slot.
    /// `events` is the registry's event count: the count of servers is cached until it moves.
    pub fn server_slot_open(
        &mut self,
        node: &str,
        ttl: Duration,
        interval: Duration,
        now: Instant,
        events: u64,
    ) -> bool {
        let Some(expect) = self.raft.as_ref().and_then(|r| r.expect) else {
            return false;
        };
        let Some(view) = self.fresh_view(ttl, now) else {
            return false;
        };
        if view.members.iter().filter(|m| !m.learner).count() >= expect as usize {
            return false;
        }
        // A view that went stale changes the count without an event: part of the key.
        let key = (events, self.fresh_view(ttl, now).is_some());
        let servers = match self.slot_count {
            Some((at, n)) if at == key => n,
            _ => {
                // Counted for no claimant at all, then less this node if it holds a slot.
                // The view is fresh here: a silent leader's hold never applies.
                let o = self.others("", ttl, interval, Duration::ZERO, now);
                let n = o.servers + o.unlisted_voters;
                self.slot_count = Some((key, n));
                n
            }
        };
        let own = self.nodes.get(node).is_some_and(|e| e.holds_server_slot());
        servers.saturating_sub(usize::from(own)) < expect as usize
    }

    /// How long no server member has heartbeated (a server claim does not count: it is a node
    /// still joining), counted at most from `floor` (the registry's start or resumption);
    /// `None` while one is live or no raft is known.
    pub fn no_live_server_for(&self, now: Instant, floor: Instant) -> Option<Duration> {
        if self.raft.is_none() || self.nodes.values().any(|e| e.is_server_member()) {
            return None;
        }
        let since = self.server_last_seen.map_or(floor, |seen| seen.max(floor));
        Some(now.saturating_duration_since(since))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(
        name: &str,
        learner: bool,
        connected: Option<bool>,
        gone_ms: Option<u64>,
    ) -> RaftMember {
        RaftMember {
            id: format!("id-{name}"),
            name: name.to_string(),
            peer_urls: vec![format!("http://{name}:2380")],
            learner,
            connected,
            disconnected_for_ms: gone_ms,
        }
    }

    /// Only a named voter the leader reports connected holds a slot without heartbeating: not
    /// one of unknown connection, not one disconnected (for however long), not a learner, not
    /// the claimant. Once the view is older than one TTL, only its silent reporter does, and
    /// not past `hold`.
    #[test]
    fn only_voters_reported_connected_count_as_unlisted() {
        let ttl = Duration::from_secs(3);
        let now = Instant::now();
        let mut cs = ClusterState::default();
        cs.take_view(
            "leader",
            vec![
                member("a", false, Some(true), None),
                member("b", false, None, None),
                member("c", false, Some(false), Some(100)),
                member("d", false, Some(false), Some(5_000)),
                member("e", true, Some(true), None),
                member("", false, Some(true), None),
                member("f", false, Some(true), None),
            ],
            now,
        );
        let hold = Duration::from_secs(300);
        assert_eq!(cs.unlisted_voters("n9", ttl, hold, now), 2, "a and f");
        assert_eq!(
            cs.unlisted_voters("a", ttl, hold, now),
            1,
            "f: a is the claimant"
        );
        // Older than a TTL: only the silent leader that reported it, until `hold`.
        assert_eq!(
            cs.unlisted_voters("n9", ttl, hold, now + ttl),
            1,
            "the leader"
        );
        assert_eq!(
            cs.unlisted_voters("leader", ttl, hold, now + ttl),
            0,
            "the claimant"
        );
        assert_eq!(
            cs.unlisted_voters("n9", ttl, hold, now + hold),
            0,
            "silent too long"
        );
    }
}
