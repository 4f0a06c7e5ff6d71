//! Dead-member cleanup, Autopilot-style: the sidecar of the raft's leader removes a member
//! that is gone for good, one at a time, on two kinds of evidence.
//!
//! [`decide`] is a pure function of [`CleanupInputs`] (tested by tables below); the runner,
//! [`DeadMemberCleanup::after_heartbeat`], is called by the member loop after each heartbeat
//! the registry accepted, with that answer's `absent` list, and does the removal. A member is
//! removed only when all of these hold:
//!
//! 1. it is not this member;
//! 2. the leader has had no peer connection to it for at least the threshold
//!    (`--dead-member-after`), counted from when this sidecar saw its member become leader
//!    ([`super::peers::PeerWatch`]);
//! 3. the registry's answer says it has not seen it live for at least the threshold (the
//!    registry counts from the later of its last heartbeat and its own startup grace). A
//!    learner without a name (added, never started) needs only the leader's evidence: it has
//!    no node the registry could know, and a learner carries no quorum weight. A voter
//!    without a name is never removed (no registry evidence can exist for it);
//! 4. removing a voter leaves connected voters (this member included) that are a majority of
//!    the remaining voters and at least `floor(expect/2)+1`;
//! 5. this sidecar removed no other member within the last threshold.
//!
//! At most one member per pass: the one disconnected longest. Every removal is logged with
//! both durations and the quorum arithmetic.
//!
//! About 700 lines on purpose: the pure decision, its runner and the table of cases that
//! covers every condition that holds a removal back are read side by side.

use std::sync::Mutex;
use std::time::Duration;

use rollcall_protocol::{Absence, RaftMember};
use tokio::time::Instant;
use tracing::{error, info, warn};

use super::api::EtcdApi;
use super::peers::{active_peers, member_id_hex};
use crate::config::{EngineKind, Settings};
use crate::exit::{Exit, EXIT_CONFIG};

/// `--dead-member-after` must be at least twice the registry's heartbeat interval, or one
/// late heartbeat would look like a dead member: checked once the registry has named the
/// interval in its claim answer (exit 64), and by the runner on every pass (a restart from
/// data learns the interval from its first heartbeat answer, and only logs the error).
pub fn check_threshold(settings: &Settings, interval: Duration) -> Result<(), Exit> {
    if settings.engine == EngineKind::Etcd && settings.dead_member_after < interval * 2 {
        return Err(Exit::new(
            EXIT_CONFIG,
            format!(
                "--dead-member-after {} is shorter than twice the registry's heartbeat interval ({})",
                humantime::format_duration(settings.dead_member_after),
                humantime::format_duration(interval)
            ),
        ));
    }
    Ok(())
}

/// What [`decide`] decides on: the leader's view of the raft and the registry's answer.
#[derive(Debug, Clone)]
pub struct CleanupInputs<'a> {
    /// This member's ID (the leader's).
    pub self_id: &'a str,
    /// The member list with the leader's evidence (`connected`, `disconnected_for_ms`).
    pub members: &'a [RaftMember],
    /// The registry's `absent` list from the heartbeat answer.
    pub absent: &'a [Absence],
    pub threshold: Duration,
    /// The raft's size: the registry's last answer, else `--expect`.
    pub expect: u32,
    /// How long ago this sidecar last removed a member; `None`: never.
    pub since_last_removal: Option<Duration>,
}

/// The quorum arithmetic of a removal, for the log and the tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quorum {
    pub voters_after: usize,
    /// Connected voters after the removal, this member included.
    pub connected_voters_after: usize,
    /// `floor(expect/2)+1`.
    pub min_quorum: usize,
}

impl Quorum {
    /// Connected voters are a majority of the voters and at least the minimum quorum.
    pub fn holds(&self) -> bool {
        self.connected_voters_after * 2 > self.voters_after
            && self.connected_voters_after >= self.min_quorum
    }
}

/// A member to remove, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Removal {
    pub id: String,
    pub name: String,
    pub learner: bool,
    pub disconnected_for: Duration,
    /// The registry's figure; `None` for a nameless learner.
    pub absent_for: Option<Duration>,
    /// `None` for a learner, whose removal changes no quorum.
    pub quorum: Option<Quorum>,
}

/// Why a member that is not connected stays.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HoldReason {
    /// The leader has no evidence about it (its `/metrics` could not be read).
    NoPeerEvidence,
    /// Disconnected, but for less than the threshold.
    DisconnectedTooShort { disconnected_for: Duration },
    /// A voter without a name: the registry cannot have evidence about it.
    NamelessVoter,
    /// The registry does not list it as absent (it is live there, or the registry is still
    /// in its startup grace).
    NotAbsentInRegistry,
    /// The registry has not missed it for the threshold yet.
    AbsentTooShort { absent_for: Duration },
    /// Removing it would leave too few connected voters.
    Quorum(Quorum),
    /// This sidecar removed another member less than a threshold ago.
    RecentRemoval { since: Duration },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Held {
    pub id: String,
    pub name: String,
    pub reason: HoldReason,
}

/// The decision of one pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CleanupDecision {
    /// Remove this member; the others that are not connected are held, with why.
    Remove { removal: Removal, held: Vec<Held> },
    /// Remove no one; every member that is not connected, with why it stays (empty: every
    /// member is connected).
    Hold(Vec<Held>),
}

/// Decides one pass of the cleanup; see the module's header for the rules.
pub fn decide(inputs: &CleanupInputs<'_>) -> CleanupDecision {
    let voters = inputs.members.iter().filter(|m| !m.learner).count();
    let connected_voters = inputs
        .members
        .iter()
        .filter(|m| !m.learner && (m.id == inputs.self_id || m.connected == Some(true)))
        .count();
    let min_quorum = (inputs.expect / 2 + 1) as usize;
    let mut held = Vec::new();
    let mut eligible: Vec<Removal> = Vec::new();
    for member in inputs.members {
        if member.id == inputs.self_id || member.connected == Some(true) {
            continue;
        }
        let hold = |reason| Held {
            id: member.id.clone(),
            name: member.name.clone(),
            reason,
        };
        let disconnected_for = match (member.connected, member.disconnected_for_ms) {
            (Some(false), Some(ms)) => Duration::from_millis(ms),
            _ => {
                held.push(hold(HoldReason::NoPeerEvidence));
                continue;
            }
        };
        if disconnected_for < inputs.threshold {
            held.push(hold(HoldReason::DisconnectedTooShort { disconnected_for }));
            continue;
        }
        let absent_for = if member.name.is_empty() {
            if !member.learner {
                held.push(hold(HoldReason::NamelessVoter));
                continue;
            }
            None
        } else {
            match inputs.absent.iter().find(|a| a.node == member.name) {
                None => {
                    held.push(hold(HoldReason::NotAbsentInRegistry));
                    continue;
                }
                Some(absence) => {
                    let absent_for = Duration::from_millis(absence.absent_for_ms);
                    if absent_for < inputs.threshold {
                        held.push(hold(HoldReason::AbsentTooShort { absent_for }));
                        continue;
                    }
                    Some(absent_for)
                }
            }
        };
        let quorum = (!member.learner).then(|| Quorum {
            voters_after: voters - 1,
            connected_voters_after: connected_voters,
            min_quorum,
        });
        if let Some(quorum) = quorum.filter(|q| !q.holds()) {
            held.push(hold(HoldReason::Quorum(quorum)));
            continue;
        }
        if let Some(since) = inputs
            .since_last_removal
            .filter(|since| *since < inputs.threshold)
        {
            held.push(hold(HoldReason::RecentRemoval { since }));
            continue;
        }
        eligible.push(Removal {
            id: member.id.clone(),
            name: member.name.clone(),
            learner: member.learner,
            disconnected_for,
            absent_for,
            quorum,
        });
    }
    // One per pass: the member gone longest (by the leader's count), then the lowest ID, so
    // that the choice does not depend on the member list's order.
    eligible.sort_by(|a, b| {
        b.disconnected_for
            .cmp(&a.disconnected_for)
            .then_with(|| a.id.cmp(&b.id))
    });
    let mut eligible = eligible.into_iter();
    match eligible.next() {
        Some(removal) => {
            // The others wait for the next pass, a threshold later.
            held.extend(eligible.map(|other| Held {
                id: other.id,
                name: other.name,
                reason: HoldReason::RecentRemoval {
                    since: Duration::ZERO,
                },
            }));
            CleanupDecision::Remove { removal, held }
        }
        None => CleanupDecision::Hold(held),
    }
}

/// The runner: the leader's last removal and the last reasons logged, and the call to etcd.
#[derive(Debug)]
pub struct DeadMemberCleanup {
    api: EtcdApi,
    threshold: Duration,
    state: Mutex<RunnerState>,
}

#[derive(Debug, Default)]
struct RunnerState {
    /// When this sidecar last removed a member: at most one removal per threshold.
    last_removal: Option<Instant>,
    /// What the last pass held and why (without durations), so that the log says it once.
    last_held: String,
    /// The threshold was found too short for the registry's interval and said so.
    refused_for_interval: bool,
}

impl DeadMemberCleanup {
    pub fn new(api: EtcdApi, threshold: Duration) -> Self {
        DeadMemberCleanup {
            api,
            threshold,
            state: Mutex::new(RunnerState::default()),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, RunnerState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// One pass after an accepted heartbeat: `members` is what the heartbeat carried (with
    /// the leader's evidence), `absent` the registry's answer, `interval` its heartbeat
    /// interval, `base` this member's client URL.
    pub async fn after_heartbeat(
        &self,
        base: &str,
        self_id: &str,
        members: &[RaftMember],
        absent: &[Absence],
        expect: u32,
        interval: Duration,
    ) {
        if self.threshold < interval * 2 {
            let mut state = self.state();
            if !state.refused_for_interval {
                error!(dead_member_after = ?self.threshold, registry_interval = ?interval, "--dead-member-after is shorter than twice the registry's heartbeat interval: no dead member is removed");
                state.refused_for_interval = true;
            }
            return;
        }
        let since_last_removal = self.state().last_removal.map(|at| at.elapsed());
        let decision = decide(&CleanupInputs {
            self_id,
            members,
            absent,
            threshold: self.threshold,
            expect,
            since_last_removal,
        });
        let (removal, held) = match decision {
            CleanupDecision::Remove { removal, held } => (Some(removal), held),
            CleanupDecision::Hold(held) => (None, held),
        };
        self.log_held(&held);
        let Some(removal) = removal else {
            return;
        };
        // The evidence is a heartbeat old: look at the connection once more.
        if self.connected_now(base, self_id, &removal.id).await {
            info!(member_id = %removal.id, name = %removal.name, "a member about to be removed has a peer connection again; keeping it");
            return;
        }
        match self.api.remove_member(base, &removal.id).await {
            Ok(()) => {
                self.state().last_removal = Some(Instant::now());
                let quorum = removal.quorum.map(|q| {
                    format!(
                        "{} connected voters of {} remain, at least {} needed",
                        q.connected_voters_after, q.voters_after, q.min_quorum
                    )
                });
                warn!(
                    member_id = %removal.id,
                    name = %removal.name,
                    learner = removal.learner,
                    disconnected_for = ?removal.disconnected_for,
                    absent_from_registry_for = ?removal.absent_for,
                    quorum = quorum.as_deref().unwrap_or("a learner: no quorum changes"),
                    dead_member_after = ?self.threshold,
                    "removed a dead member from the raft: the leader had no peer connection to it and the registry had not seen it for the threshold"
                );
            }
            Err(reason) => {
                warn!(member_id = %removal.id, name = %removal.name, %reason, "could not remove a dead member; the next pass tries again")
            }
        }
    }

    /// Whether the leader's etcd has a peer connection to `member_id` right now; `false`
    /// when `/metrics` cannot be read (the decision's evidence stands).
    async fn connected_now(&self, base: &str, self_id: &str, member_id: &str) -> bool {
        let (Some(local), Some(remote)) = (member_id_hex(self_id), member_id_hex(member_id)) else {
            return false;
        };
        match self.api.metrics(base).await {
            Ok(text) => active_peers(&text, &local)
                .get(&remote)
                .copied()
                .unwrap_or(false),
            Err(_) => false,
        }
    }

    fn log_held(&self, held: &[Held]) {
        let summary: Vec<String> = held
            .iter()
            .map(|h| format!("{} ({}): {}", h.name, h.id, reason_kind(&h.reason)))
            .collect();
        let summary = summary.join("; ");
        let mut state = self.state();
        if summary != state.last_held {
            if !held.is_empty() {
                info!(held = ?held, "raft members without a peer connection from the leader, kept for now");
            }
            state.last_held = summary;
        }
    }
}

fn reason_kind(reason: &HoldReason) -> &'static str {
    match reason {
        HoldReason::NoPeerEvidence => "no peer evidence",
        HoldReason::DisconnectedTooShort { .. } => "disconnected for less than the threshold",
        HoldReason::NamelessVoter => "a voter without a name",
        HoldReason::NotAbsentInRegistry => "not absent in the registry",
        HoldReason::AbsentTooShort { .. } => "absent from the registry for less than the threshold",
        HoldReason::Quorum(_) => "its removal would cost the quorum",
        HoldReason::RecentRemoval { .. } => "another member was removed less than a threshold ago",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: Duration = Duration::from_secs(1);
    const THRESHOLD: Duration = Duration::from_secs(300);

    /// A member: name, learner, connected, disconnected for (seconds).
    fn member(name: &str, learner: bool, connected: Option<bool>, gone: Option<u64>) -> RaftMember {
        RaftMember {
            id: format!("id-{name}"),
            name: name.to_string(),
            peer_urls: vec![],
            learner,
            connected,
            disconnected_for_ms: gone.map(|s| s * 1000),
        }
    }

    fn up(name: &str) -> RaftMember {
        member(name, false, Some(true), None)
    }

    fn down(name: &str, seconds: u64) -> RaftMember {
        member(name, false, Some(false), Some(seconds))
    }

    fn absent(name: &str, seconds: u64) -> Absence {
        Absence {
            node: name.to_string(),
            absent_for_ms: seconds * 1000,
        }
    }

    fn inputs<'a>(
        members: &'a [RaftMember],
        absent: &'a [Absence],
        expect: u32,
    ) -> CleanupInputs<'a> {
        CleanupInputs {
            self_id: "id-a",
            members,
            absent,
            threshold: THRESHOLD,
            expect,
            since_last_removal: None,
        }
    }

    fn removed(decision: &CleanupDecision) -> Option<&str> {
        match decision {
            CleanupDecision::Remove { removal, .. } => Some(removal.name.as_str()),
            CleanupDecision::Hold(_) => None,
        }
    }

    fn held_reason<'d>(decision: &'d CleanupDecision, name: &str) -> Option<&'d HoldReason> {
        let held = match decision {
            CleanupDecision::Remove { held, .. } | CleanupDecision::Hold(held) => held,
        };
        held.iter().find(|h| h.name == name).map(|h| &h.reason)
    }

    #[test]
    fn a_voter_gone_for_the_threshold_by_both_counts_is_removed_with_its_evidence() {
        let members = [up("a"), up("b"), down("c", 301)];
        let absent = [absent("c", 302)];
        let decision = decide(&inputs(&members, &absent, 3));
        assert_eq!(
            decision,
            CleanupDecision::Remove {
                removal: Removal {
                    id: "id-c".into(),
                    name: "c".into(),
                    learner: false,
                    disconnected_for: 301 * SECOND,
                    absent_for: Some(302 * SECOND),
                    quorum: Some(Quorum {
                        voters_after: 2,
                        connected_voters_after: 2,
                        min_quorum: 2
                    }),
                },
                held: vec![],
            }
        );
    }

    /// (case, members, the registry's absent list, expect, seconds since the last removal,
    /// why the third member stays)
    type BlockCase = (
        &'static str,
        Vec<RaftMember>,
        Vec<Absence>,
        u32,
        Option<u64>,
        HoldReason,
    );

    #[test]
    fn every_condition_blocks_a_removal_on_its_own() {
        let gone = 301;
        let table: Vec<BlockCase> = vec![
            (
                "the leader's count is below the threshold by a second",
                vec![up("a"), up("b"), down("c", 299)],
                vec![absent("c", gone)],
                3,
                None,
                HoldReason::DisconnectedTooShort {
                    disconnected_for: 299 * SECOND,
                },
            ),
            (
                "the registry's count is below the threshold by a second",
                vec![up("a"), up("b"), down("c", gone)],
                vec![absent("c", 299)],
                3,
                None,
                HoldReason::AbsentTooShort {
                    absent_for: 299 * SECOND,
                },
            ),
            (
                "the registry lists it live (not in absent)",
                vec![up("a"), up("b"), down("c", gone)],
                vec![absent("d", gone)],
                3,
                None,
                HoldReason::NotAbsentInRegistry,
            ),
            (
                "the registry answered no absent list (startup grace, or unreachable)",
                vec![up("a"), up("b"), down("c", gone)],
                vec![],
                3,
                None,
                HoldReason::NotAbsentInRegistry,
            ),
            (
                "the leader could not read its metrics",
                vec![up("a"), up("b"), member("c", false, None, None)],
                vec![absent("c", gone)],
                3,
                None,
                HoldReason::NoPeerEvidence,
            ),
            (
                "another removal less than a threshold ago",
                vec![up("a"), up("b"), down("c", gone)],
                vec![absent("c", gone)],
                3,
                Some(299),
                HoldReason::RecentRemoval {
                    since: 299 * SECOND,
                },
            ),
            (
                "b is down too, not for long: one connected voter of two left",
                vec![up("a"), down("b", 10), down("c", gone)],
                vec![absent("c", gone)],
                3,
                None,
                HoldReason::Quorum(Quorum {
                    voters_after: 2,
                    connected_voters_after: 1,
                    min_quorum: 2,
                }),
            ),
            (
                "expect 5 wants three connected voters, two would remain",
                vec![up("a"), up("b"), down("c", gone)],
                vec![absent("c", gone)],
                5,
                None,
                HoldReason::Quorum(Quorum {
                    voters_after: 2,
                    connected_voters_after: 2,
                    min_quorum: 3,
                }),
            ),
            (
                "five voters, three not connected: two of four is no majority",
                vec![
                    up("a"),
                    up("b"),
                    down("c", gone),
                    down("d", 10),
                    down("e", 10),
                ],
                vec![absent("c", gone)],
                3,
                None,
                HoldReason::Quorum(Quorum {
                    voters_after: 4,
                    connected_voters_after: 2,
                    min_quorum: 2,
                }),
            ),
            (
                "a voter without a name has no registry evidence",
                vec![up("a"), up("b"), down("", gone)],
                vec![absent("", gone)],
                3,
                None,
                HoldReason::NamelessVoter,
            ),
        ];
        for (case, members, absent, expect, since, reason) in table {
            let inputs = CleanupInputs {
                since_last_removal: since.map(Duration::from_secs),
                ..inputs(&members, &absent, expect)
            };
            let decision = decide(&inputs);
            assert_eq!(removed(&decision), None, "{case}");
            let name = if members[2].name.is_empty() { "" } else { "c" };
            assert_eq!(held_reason(&decision, name), Some(&reason), "{case}");
        }
    }

    #[test]
    fn exactly_the_threshold_is_enough_on_both_counts() {
        let members = [up("a"), up("b"), down("c", 300)];
        let absent = [absent("c", 300)];
        assert_eq!(removed(&decide(&inputs(&members, &absent, 3))), Some("c"));
        // And a removal exactly a threshold ago no longer holds the next one back.
        let after_one = CleanupInputs {
            since_last_removal: Some(THRESHOLD),
            ..inputs(&members, &absent, 3)
        };
        assert_eq!(removed(&decide(&after_one)), Some("c"));
    }

    #[test]
    fn this_member_is_never_removed() {
        // Even with evidence against it (which a leader never reports about itself).
        let members = [down("a", 900), up("b"), up("c")];
        let absent = [absent("a", 900)];
        assert_eq!(
            decide(&inputs(&members, &absent, 3)),
            CleanupDecision::Hold(vec![])
        );
    }

    #[test]
    fn the_quorum_arithmetic_of_five_voters_allows_two_removals_one_per_pass() {
        // Five voters, two dead: the first removal leaves three connected of four.
        let members = [up("a"), up("b"), up("c"), down("d", 400), down("e", 350)];
        let absent = [absent("d", 400), absent("e", 400)];
        let decision = decide(&inputs(&members, &absent, 5));
        // The one gone longest goes first; the other waits a threshold.
        assert_eq!(removed(&decision), Some("d"));
        assert_eq!(
            held_reason(&decision, "e"),
            Some(&HoldReason::RecentRemoval {
                since: Duration::ZERO
            })
        );
        let CleanupDecision::Remove { removal, .. } = &decision else {
            unreachable!()
        };
        assert_eq!(
            removal.quorum,
            Some(Quorum {
                voters_after: 4,
                connected_voters_after: 3,
                min_quorum: 3
            })
        );
        // A threshold later: three of three remain, at least three: allowed.
        let members = [up("a"), up("b"), up("c"), down("e", 650)];
        let next = CleanupInputs {
            since_last_removal: Some(THRESHOLD + SECOND),
            ..inputs(&members, &absent, 5)
        };
        assert_eq!(removed(&decide(&next)), Some("e"));
    }

    #[test]
    fn a_nameless_learner_needs_only_the_leaders_evidence_and_no_quorum() {
        // A learner added and never started: no name, no registry entry.
        let learner = member("", true, Some(false), Some(301));
        let members = [up("a"), up("b"), down("c", 10), learner.clone()];
        let decision = decide(&inputs(&members, &[], 3));
        assert_eq!(removed(&decision), Some(""));
        let CleanupDecision::Remove { removal, .. } = &decision else {
            unreachable!()
        };
        assert_eq!(removal.absent_for, None);
        assert_eq!(removal.quorum, None, "a learner carries no quorum weight");
        // Below the threshold it stays like anyone else.
        let young = member("", true, Some(false), Some(299));
        let members = [up("a"), up("b"), up("c"), young];
        assert_eq!(removed(&decide(&inputs(&members, &[], 3))), None);
        // A named learner needs the registry's word like a voter.
        let named = member("d", true, Some(false), Some(301));
        let members = [up("a"), up("b"), up("c"), named];
        let decision = decide(&inputs(&members, &[], 3));
        assert_eq!(
            held_reason(&decision, "d"),
            Some(&HoldReason::NotAbsentInRegistry)
        );
        let absent = [absent("d", 301)];
        assert_eq!(removed(&decide(&inputs(&members, &absent, 3))), Some("d"));
    }

    #[test]
    fn every_member_connected_holds_nothing() {
        let members = [up("a"), up("b"), up("c")];
        // The registry may list a node absent that the leader is connected to (its
        // sidecar died, its etcd runs): the peer evidence wins.
        let absent = [absent("c", 900)];
        assert_eq!(
            decide(&inputs(&members, &absent, 3)),
            CleanupDecision::Hold(vec![])
        );
    }
}
