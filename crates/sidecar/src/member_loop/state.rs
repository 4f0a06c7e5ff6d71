//! The member loop's decisions as a state machine of plain values: each round the loop tells
//! [`MemberState`] what it observed (the agent's health, the registry's answer, the time)
//! and does the [`Step`] it is given. No I/O and no clock of its own, so the rules are tested
//! with tables of rounds, without sockets or sleeps.
//!
//! The rules: while the agent is not healthy, the claim is renewed every interval (only when
//! one was granted at start, and only until the registry first accepts a heartbeat) and the
//! health is polled quickly ([`STARTING_HEALTH_POLL`]), or, once the agent has been healthy,
//! every interval (at most a second). While it is healthy, a heartbeat is sent every
//! interval; one that finds the registry unreachable or failing is retried after a quarter
//! of the interval (at most [`HEARTBEAT_RETRY_MAX`]), and one the registry refuses one
//! interval later. Every pause after a heartbeat or a renewal is jittered.
//!
//! A heartbeat or a renewal refused as another raft's (`409 wrong_raft`): when the registry
//! ever listed this member in its raft, the agent keeps running and the loop keeps trying
//! each interval, with a warning each time (a raft is never stopped on the registry's word);
//! when it never did, the loop ends and says so ([`MemberState::leaving_raft`]), and `run`
//! stops the agent and moves its data aside.
//!
//! An agent (a gateway) re-decides its role ([`MemberState::redeciding`], see
//! [`RedecideRule`]): when a heartbeat's answer says a server slot is open and the node may
//! be a server, or when the agent has not been healthy for the rule's limit (the join
//! timeout), counted from its start or from its last healthy reading (its join targets are
//! all dead). The loop ends then, and `run` stops the agent, leaves and claims afresh.
//!
//! A little over 500 lines on purpose: the state machine and its table of rounds are read
//! side by side.

use std::time::Duration;

use rollcall_protocol::{GrantedRole, MemberRole};
use tokio::time::Instant;
use tracing::{debug, info, warn};

/// How often the health of a starting agent is polled, so the first heartbeat is prompt.
pub const STARTING_HEALTH_POLL: Duration = Duration::from_millis(250);
/// Longest pause before a heartbeat that failed on an unreachable or failing registry is
/// tried again. A retry one whole interval later could land after the interval in which a
/// restarted registry must relearn its members.
pub const HEARTBEAT_RETRY_MAX: Duration = Duration::from_secs(1);
/// Longest pause between two health polls of an agent that was healthy before.
const UNHEALTHY_POLL_MAX: Duration = Duration::from_secs(1);

/// What the loop does next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Send a heartbeat carrying the agent's status; report the answer to
    /// [`MemberState::heartbeat_answered`].
    Heartbeat,
    /// Renew the claim while the agent is not healthy for this reason; report the answer to
    /// [`MemberState::claim_answered`].
    RenewClaim { waiting_for: String },
    /// Nothing to send: read the agent's health again after this pause.
    Pause(Duration),
}

/// The registry's answer to a heartbeat, as far as the loop's decisions go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeartbeatOutcome {
    /// Accepted. `registered`: the registry did not know the member (or it had expired).
    /// `server_slot_open`: (to an agent) live servers are fewer than the raft wants.
    Accepted {
        interval: Duration,
        registered: bool,
        server_slot_open: bool,
    },
    /// The registry could not be reached or failed (5xx): worth trying again soon.
    Unreachable(String),
    /// The registry refused (a bad token, an invalid name): asking again soon does not help.
    Refused(String),
    /// The registry refused this member as another raft's (`409 wrong_raft`); `listed`: the
    /// registry accepted a heartbeat of it in its own raft before (the identity file says).
    WrongRaft { message: String, listed: bool },
}

/// The registry's answer to a claim renewal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClaimOutcome {
    Answered {
        role: GrantedRole,
        reason: String,
        interval: Duration,
    },
    Failed(String),
    /// Refused as another raft's (`409 wrong_raft`); `listed` as for heartbeats.
    WrongRaft {
        message: String,
        listed: bool,
    },
}

/// When an agent gives up its role and claims afresh.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RedecideRule {
    /// The node may be a server (not `--agent-only`): an open server slot is its to take.
    pub may_be_server: bool,
    /// An agent not healthy for this long (`--join-timeout`) claims afresh: its join
    /// targets are fixed at its start, and may all be dead.
    pub unhealthy_limit: Duration,
}

/// Everything the loop's decisions depend on besides what it observes in a round.
#[derive(Debug)]
pub struct MemberState {
    /// The role the agent runs as, for the log.
    role: MemberRole,
    /// The role the start-up claim granted, to notice when the registry answers another;
    /// `None` for a restart that did not claim, which has no claim to renew.
    granted: Option<GrantedRole>,
    /// The registry's heartbeat interval as it last named it (claims and heartbeats both
    /// carry it): the pace of heartbeats and renewals.
    interval: Duration,
    /// The claim is renewed while this holds: from a granted claim until the registry first
    /// accepts a heartbeat. Renewing keeps the node's server slot, and keeps it listed as a
    /// join target, while the agent is still joining.
    renew_claim: bool,
    /// When the claim is next due for renewal.
    next_claim: Instant,
    /// The agent has been healthy before: an unhealthy agent is then polled at the interval
    /// (at most a second), not at the quick start-up pace.
    ever_healthy: bool,
    /// The agent was healthy in the last round: changes are logged once, not every round.
    healthy: bool,
    /// Heartbeats that failed in a row on an unreachable registry, and when the first of
    /// them failed, so that an outage is logged once when it starts and once when it ends.
    failed_heartbeats: u32,
    failing_since: Option<Instant>,
    /// Set when the registry refused this member as another raft's and never listed it: the
    /// loop ends, and `run` stops the agent and moves its data aside. The registry's message.
    leaving_raft: Option<String>,
    /// For an agent: when to re-decide its role; `None` for a server, or never.
    redecide: Option<RedecideRule>,
    /// Since when the agent has not been healthy: its start, or its last unhealthy reading
    /// after a healthy one. `None` while healthy.
    unhealthy_since: Option<Instant>,
    /// Set when the agent must re-decide its role: the loop ends, and `run` stops the agent,
    /// leaves the registry and claims afresh. Why.
    redeciding: Option<String>,
    /// Shortens a pause by up to [`super::HEARTBEAT_JITTER`] to spread a fleet's requests;
    /// tests pass the identity.
    jitter: fn(Duration) -> Duration,
}

impl MemberState {
    pub fn new(
        role: MemberRole,
        granted: Option<GrantedRole>,
        interval: Duration,
        now: Instant,
        jitter: fn(Duration) -> Duration,
    ) -> MemberState {
        MemberState {
            role,
            granted,
            interval,
            renew_claim: granted.is_some(),
            next_claim: now + interval,
            ever_healthy: false,
            healthy: false,
            failed_heartbeats: 0,
            failing_since: None,
            leaving_raft: None,
            redecide: None,
            unhealthy_since: Some(now),
            redeciding: None,
            jitter,
        }
    }

    /// Makes an agent re-decide its role by `rule`; a server never does.
    pub fn with_redecide(mut self, rule: RedecideRule) -> MemberState {
        if self.role == MemberRole::Agent {
            self.redecide = Some(rule);
        }
        self
    }

    /// Why this agent must re-decide its role, once it must. The loop ends when this is set.
    pub fn redeciding(&self) -> Option<&str> {
        self.redeciding.as_deref()
    }

    /// The registry's message when this member must leave its raft: refused as another
    /// raft's, and never listed in the cluster's. The loop ends when this is set.
    pub fn leaving_raft(&self) -> Option<&str> {
        self.leaving_raft.as_deref()
    }

    /// A refusal as another raft's: keep going when the raft was ever listed, else leave.
    fn wrong_raft(&mut self, message: String, listed: bool) {
        if listed {
            warn!(%message, "the registry says this member belongs to another raft than the cluster's; it listed this raft before, so the agent keeps running (a raft is never stopped on the registry's word) and the next try comes in one interval");
        } else {
            warn!(%message, "the registry says this member belongs to another raft than the cluster's, and never listed it: stopping the agent and moving its data aside");
            self.leaving_raft = Some(message);
        }
    }

    /// Decides the round once the agent's health is known: `Ok` when it is healthy, else
    /// why not.
    pub fn health_read(&mut self, health: &Result<(), String>, now: Instant) -> Step {
        match health {
            Ok(()) => {
                if !self.healthy {
                    info!(role = %self.role, "the agent is healthy; heartbeating");
                }
                self.healthy = true;
                self.ever_healthy = true;
                self.unhealthy_since = None;
                Step::Heartbeat
            }
            Err(reason) => {
                if self.healthy {
                    warn!(%reason, "the agent is not healthy; heartbeats paused");
                }
                self.healthy = false;
                let since = *self.unhealthy_since.get_or_insert(now);
                if let Some(rule) = self.redecide {
                    if self.redeciding.is_none()
                        && now.duration_since(since) >= rule.unhealthy_limit
                    {
                        let reason = format!(
                            "the agent has not been healthy for {} (--join-timeout), since it {}: its join targets may all be dead ({reason})",
                            humantime::format_duration(rule.unhealthy_limit),
                            if self.ever_healthy { "was last healthy" } else { "started" },
                        );
                        warn!(%reason, "re-deciding this node's role: stopping the agent, leaving the registry and claiming afresh");
                        self.redeciding = Some(reason);
                    }
                }
                if self.renew_claim && now >= self.next_claim {
                    Step::RenewClaim {
                        waiting_for: reason.clone(),
                    }
                } else {
                    Step::Pause(self.unhealthy_poll())
                }
            }
        }
    }

    /// Takes in the answer to [`Step::Heartbeat`] and returns the pause before the next
    /// round.
    pub fn heartbeat_answered(&mut self, outcome: HeartbeatOutcome, now: Instant) -> Duration {
        match outcome {
            HeartbeatOutcome::Accepted {
                interval,
                registered,
                server_slot_open,
            } => {
                if server_slot_open
                    && self.redeciding.is_none()
                    && self.redecide.is_some_and(|rule| rule.may_be_server)
                {
                    let reason = "the registry says a server slot is open (live servers are fewer than the raft wants)".to_string();
                    info!(%reason, "re-deciding this node's role: stopping the agent, leaving the registry and claiming afresh");
                    self.redeciding = Some(reason);
                }
                if let Some(since) = self.failing_since.take() {
                    info!(
                        n_failed = self.failed_heartbeats,
                        failing_for = ?now.duration_since(since),
                        "the registry answers heartbeats again; back to the normal interval"
                    );
                }
                self.failed_heartbeats = 0;
                if registered {
                    info!("the registry registered this member (it did not know it, or it had expired)");
                }
                self.interval = interval;
                self.renew_claim = false;
                (self.jitter)(interval)
            }
            HeartbeatOutcome::Unreachable(error) => {
                self.failed_heartbeats += 1;
                self.failing_since.get_or_insert(now);
                let retry_in = (self.jitter)(retry_pause(self.interval));
                if self.failed_heartbeats == 1 {
                    warn!(%error, ?retry_in, "heartbeat failed; the agent keeps running, retrying soon until the registry answers");
                } else {
                    debug!(%error, ?retry_in, n_failed = self.failed_heartbeats, "heartbeat failed again");
                }
                retry_in
            }
            HeartbeatOutcome::Refused(error) => {
                // A refusal (a bad token, an invalid name) does not go away by asking again
                // soon: keep the normal pace and say so every time.
                warn!(%error, "heartbeat refused; the agent keeps running, next try in one interval");
                (self.jitter)(self.interval)
            }
            HeartbeatOutcome::WrongRaft { message, listed } => {
                self.wrong_raft(message, listed);
                (self.jitter)(self.interval)
            }
        }
    }

    /// Takes in the answer to [`Step::RenewClaim`] and returns the pause before the next
    /// round.
    pub fn claim_answered(
        &mut self,
        outcome: ClaimOutcome,
        waiting_for: &str,
        now: Instant,
    ) -> Duration {
        match outcome {
            ClaimOutcome::Answered {
                role,
                reason,
                interval,
            } => {
                self.interval = interval;
                if Some(role) != self.granted {
                    warn!(
                        granted_at_start = ?self.granted,
                        now = %role,
                        %reason,
                        "the registry now answers another role; keeping the agent as started"
                    );
                } else {
                    info!(%waiting_for, "renewed the claim while the agent starts");
                }
            }
            ClaimOutcome::Failed(error) => {
                warn!(%error, "could not renew the claim; trying again in one interval")
            }
            ClaimOutcome::WrongRaft { message, listed } => self.wrong_raft(message, listed),
        }
        self.next_claim = now + (self.jitter)(self.interval);
        self.unhealthy_poll()
    }

    fn unhealthy_poll(&self) -> Duration {
        if self.ever_healthy {
            self.interval.min(UNHEALTHY_POLL_MAX)
        } else {
            STARTING_HEALTH_POLL
        }
    }
}

/// The pause before retrying a heartbeat that failed on an unreachable or failing registry,
/// before jitter: a quarter of `interval`, at most [`HEARTBEAT_RETRY_MAX`].
pub fn retry_pause(interval: Duration) -> Duration {
    (interval / 4).min(HEARTBEAT_RETRY_MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: Duration = Duration::from_secs(1);

    fn no_jitter(d: Duration) -> Duration {
        d
    }

    fn granted_server(start: Instant) -> MemberState {
        MemberState::new(
            MemberRole::Server,
            Some(GrantedRole::Server),
            SECOND,
            start,
            no_jitter,
        )
    }

    fn starting() -> Result<(), String> {
        Err("no leader yet".to_string())
    }

    fn renew() -> Step {
        Step::RenewClaim {
            waiting_for: "no leader yet".to_string(),
        }
    }

    fn accepted(interval: Duration) -> HeartbeatOutcome {
        HeartbeatOutcome::Accepted {
            interval,
            registered: false,
            server_slot_open: false,
        }
    }

    fn claim_answer(role: GrantedRole, interval: Duration) -> ClaimOutcome {
        ClaimOutcome::Answered {
            role,
            reason: "test".to_string(),
            interval,
        }
    }

    #[test]
    fn the_claim_is_renewed_every_interval_while_the_agent_starts() {
        let t0 = Instant::now();
        let mut state = granted_server(t0);
        // (seconds since start, what the loop is told to do)
        for (at, step) in [
            (0.0, Step::Pause(STARTING_HEALTH_POLL)),
            (0.75, Step::Pause(STARTING_HEALTH_POLL)),
            (1.0, renew()),
        ] {
            let now = t0 + Duration::from_secs_f64(at);
            assert_eq!(state.health_read(&starting(), now), step, "at {at} s");
        }
        // The renewal's answer names a new interval: the next renewal comes one of those
        // later, and a starting agent is still polled at the quick pace.
        let renewed_at = t0 + SECOND;
        let pause = state.claim_answered(
            claim_answer(GrantedRole::Server, 2 * SECOND),
            "no leader yet",
            renewed_at,
        );
        assert_eq!(pause, STARTING_HEALTH_POLL);
        let step = |state: &mut MemberState, after: Duration| {
            state.health_read(&starting(), renewed_at + after)
        };
        assert_eq!(
            step(&mut state, Duration::from_millis(1999)),
            Step::Pause(STARTING_HEALTH_POLL)
        );
        assert_eq!(step(&mut state, 2 * SECOND), renew());

        // A renewal that fails, or that answers another role, is tried again one interval
        // later all the same: the agent keeps the role it was started with.
        for outcome in [
            ClaimOutcome::Failed("registry unreachable".to_string()),
            claim_answer(GrantedRole::Agent, 2 * SECOND),
        ] {
            let now = state.next_claim;
            assert_eq!(state.health_read(&starting(), now), renew());
            state.claim_answered(outcome, "no leader yet", now);
            assert_eq!(state.next_claim, now + 2 * SECOND);
        }
    }

    #[test]
    fn wrong_raft_ends_the_loop_only_for_a_raft_that_was_never_listed() {
        let t0 = Instant::now();
        // Listed before: a warning, the next try one interval later, the loop goes on.
        let mut state = MemberState::new(MemberRole::Server, None, 2 * SECOND, t0, no_jitter);
        state.health_read(&Ok(()), t0);
        let refused = |listed| HeartbeatOutcome::WrongRaft {
            message: "another raft".into(),
            listed,
        };
        assert_eq!(state.heartbeat_answered(refused(true), t0), 2 * SECOND);
        assert_eq!(state.leaving_raft(), None);
        assert_eq!(state.health_read(&Ok(()), t0 + 2 * SECOND), Step::Heartbeat);
        // Never listed: the loop is told to leave the raft.
        state.heartbeat_answered(refused(false), t0);
        assert_eq!(state.leaving_raft(), Some("another raft"));

        // The same rule for a claim renewal.
        let mut state = granted_server(t0);
        assert_eq!(state.health_read(&starting(), t0 + SECOND), renew());
        state.claim_answered(
            ClaimOutcome::WrongRaft {
                message: "another raft".into(),
                listed: false,
            },
            "no leader yet",
            t0 + SECOND,
        );
        assert_eq!(state.leaving_raft(), Some("another raft"));
    }

    #[test]
    fn a_restart_that_did_not_claim_renews_nothing() {
        let t0 = Instant::now();
        let mut state = MemberState::new(MemberRole::Server, None, SECOND, t0, no_jitter);
        for at in [0, 1, 5, 60] {
            assert_eq!(
                state.health_read(&starting(), t0 + at * SECOND),
                Step::Pause(STARTING_HEALTH_POLL),
                "at {at} s"
            );
        }
    }

    #[test]
    fn a_healthy_agent_heartbeats_every_interval_and_then_never_renews_the_claim() {
        let t0 = Instant::now();
        let mut state = granted_server(t0);
        assert_eq!(state.health_read(&Ok(()), t0), Step::Heartbeat);
        // The answer's interval sets the pace.
        assert_eq!(
            state.heartbeat_answered(accepted(3 * SECOND), t0),
            3 * SECOND
        );
        assert_eq!(state.health_read(&Ok(()), t0 + 3 * SECOND), Step::Heartbeat);
        // Unhealthy after an accepted heartbeat: nothing is sent, not even a claim renewal
        // long after it would have been due, and the health is polled every interval, at
        // most every second.
        for at in [4, 10, 60] {
            assert_eq!(
                state.health_read(&starting(), t0 + at * SECOND),
                Step::Pause(SECOND),
                "at {at} s"
            );
        }
        // Healthy again: heartbeats again.
        assert_eq!(
            state.health_read(&Ok(()), t0 + 61 * SECOND),
            Step::Heartbeat
        );
    }

    #[test]
    fn an_agent_that_was_healthy_is_polled_at_its_interval_when_that_is_under_a_second() {
        let t0 = Instant::now();
        let mut state = MemberState::new(MemberRole::Agent, None, SECOND, t0, no_jitter);
        state.health_read(&Ok(()), t0);
        state.heartbeat_answered(accepted(Duration::from_millis(600)), t0);
        assert_eq!(
            state.health_read(&starting(), t0 + SECOND),
            Step::Pause(Duration::from_millis(600))
        );
    }

    #[test]
    fn claims_are_renewed_until_the_registry_first_accepts_a_heartbeat() {
        // Healthy, but the registry is away: the claim stays the node's only hold on its
        // slot, so it is still renewed when the agent then stops being healthy.
        let t0 = Instant::now();
        let mut state = granted_server(t0);
        assert_eq!(state.health_read(&Ok(()), t0), Step::Heartbeat);
        state.heartbeat_answered(HeartbeatOutcome::Unreachable("refused".into()), t0);
        assert_eq!(state.health_read(&starting(), t0 + SECOND), renew());
    }

    #[test]
    fn a_failed_heartbeat_is_retried_in_a_quarter_interval_and_a_refused_one_in_a_whole_one() {
        // (interval, outcome, pause before the next round)
        let unreachable = || HeartbeatOutcome::Unreachable("connection refused".into());
        let refused = || HeartbeatOutcome::Refused("bad token".into());
        for (interval, outcome, pause) in [
            (4 * SECOND, unreachable(), SECOND),
            (2 * SECOND, unreachable(), Duration::from_millis(500)),
            (30 * SECOND, unreachable(), HEARTBEAT_RETRY_MAX),
            (4 * SECOND, refused(), 4 * SECOND),
            (4 * SECOND, accepted(4 * SECOND), 4 * SECOND),
        ] {
            let t0 = Instant::now();
            let mut state = MemberState::new(MemberRole::Server, None, interval, t0, no_jitter);
            state.health_read(&Ok(()), t0);
            assert_eq!(
                state.heartbeat_answered(outcome.clone(), t0),
                pause,
                "{interval:?} {outcome:?}"
            );
        }
    }

    #[test]
    fn an_outage_is_counted_from_its_first_failed_heartbeat_until_one_is_accepted() {
        let t0 = Instant::now();
        let mut state = MemberState::new(MemberRole::Server, None, 4 * SECOND, t0, no_jitter);
        for n in 0..3 {
            state.health_read(&Ok(()), t0 + n * SECOND);
            state.heartbeat_answered(
                HeartbeatOutcome::Unreachable("down".into()),
                t0 + n * SECOND,
            );
        }
        assert_eq!(state.failed_heartbeats, 3);
        assert_eq!(state.failing_since, Some(t0));
        assert_eq!(
            state.heartbeat_answered(accepted(4 * SECOND), t0 + 3 * SECOND),
            4 * SECOND
        );
        assert_eq!(state.failed_heartbeats, 0);
        assert_eq!(state.failing_since, None);
    }

    #[test]
    fn jitter_shortens_every_pause_after_a_request_but_not_the_health_polls() {
        fn halve(d: Duration) -> Duration {
            d / 2
        }
        let t0 = Instant::now();
        let mut state = MemberState::new(
            MemberRole::Server,
            Some(GrantedRole::Server),
            4 * SECOND,
            t0,
            halve,
        );
        assert_eq!(
            state.health_read(&starting(), t0),
            Step::Pause(STARTING_HEALTH_POLL)
        );
        let at = t0 + 4 * SECOND;
        assert_eq!(state.health_read(&starting(), at), renew());
        state.claim_answered(claim_answer(GrantedRole::Server, 4 * SECOND), "", at);
        assert_eq!(state.next_claim, at + 2 * SECOND);
        state.health_read(&Ok(()), at);
        assert_eq!(
            state.heartbeat_answered(HeartbeatOutcome::Unreachable("down".into()), at),
            Duration::from_millis(500)
        );
        assert_eq!(
            state.heartbeat_answered(accepted(4 * SECOND), at),
            2 * SECOND
        );
    }

    #[test]
    fn an_agent_re_decides_on_an_open_slot_or_after_the_join_timeout_unhealthy() {
        let t0 = Instant::now();
        let rule = |may_be_server| RedecideRule {
            may_be_server,
            unhealthy_limit: 10 * SECOND,
        };
        let slot_open = HeartbeatOutcome::Accepted {
            interval: SECOND,
            registered: false,
            server_slot_open: true,
        };
        let agent = |may_be_server| {
            MemberState::new(
                MemberRole::Agent,
                Some(GrantedRole::Agent),
                SECOND,
                t0,
                no_jitter,
            )
            .with_redecide(rule(may_be_server))
        };

        // An open slot: an agent that may be a server re-decides; an --agent-only one and
        // a server do not.
        let mut state = agent(true);
        state.health_read(&Ok(()), t0);
        state.heartbeat_answered(slot_open.clone(), t0);
        assert!(state
            .redeciding()
            .is_some_and(|r| r.contains("server slot is open")));
        let mut state = agent(false);
        state.health_read(&Ok(()), t0);
        state.heartbeat_answered(slot_open.clone(), t0);
        assert_eq!(state.redeciding(), None);
        let mut server = granted_server(t0).with_redecide(rule(true));
        server.health_read(&Ok(()), t0);
        server.heartbeat_answered(slot_open, t0);
        server.health_read(&starting(), t0 + 60 * SECOND);
        assert_eq!(server.redeciding(), None);

        // Never healthy since its start: re-decides at the limit, not before.
        let mut state = agent(false);
        state.health_read(&starting(), t0 + 9 * SECOND);
        assert_eq!(state.redeciding(), None);
        state.health_read(&starting(), t0 + 10 * SECOND);
        assert!(state
            .redeciding()
            .is_some_and(|r| r.contains("since it started")));

        // Healthy for a while, then not: counted from the first unhealthy reading.
        let mut state = agent(true);
        state.health_read(&Ok(()), t0 + 9 * SECOND);
        state.heartbeat_answered(accepted(SECOND), t0 + 9 * SECOND);
        state.health_read(&starting(), t0 + 12 * SECOND);
        state.health_read(&starting(), t0 + 21 * SECOND);
        assert_eq!(state.redeciding(), None);
        state.health_read(&starting(), t0 + 22 * SECOND);
        assert!(state
            .redeciding()
            .is_some_and(|r| r.contains("since it was last healthy")));
    }
}
