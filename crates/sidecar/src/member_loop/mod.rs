//! The loop that keeps this node known to the registry while `run` supervises the agent.
//!
//! Until the agent is first healthy, the loop renews the node's claim every interval (so
//! the registry keeps its server slot, and lists it as a join target, while the agent is
//! still joining) and polls the agent's health quickly. Strictly, renewal ends with the
//! first heartbeat the registry accepts: a healthy agent whose heartbeats cannot reach the
//! registry has only its claim to hold its slot. Once the agent is healthy it sends
//! heartbeats carrying the agent's status, at the registry's interval minus up to 20%
//! jitter. When the agent is not healthy, nothing is sent. A heartbeat that fails because
//! the registry is unreachable or answers 5xx is retried after a quarter of the interval (at
//! most [`HEARTBEAT_RETRY_MAX`], less jitter), so that a registry restarted on an empty data
//! directory lists every healthy member again within one interval of coming back; the first
//! heartbeat that succeeds returns the loop to the normal interval. The registry being down
//! never touches the agent.
//!
//! Heartbeats and renewals carry the raft this member belongs to (its identity file, see
//! [`crate::raft_identity`]); renewals also say the role the agent was started as, so that a
//! registry that lost its data never tells it `bootstrap`. The first heartbeat the registry
//! accepts is recorded in the identity file (`listed`). A refusal as another raft's ends the
//! loop only when this member was never listed ([`LoopEnd::WrongRaft`]). An agent whose
//! server slot opens, or that stays unhealthy for the join timeout, ends the loop to
//! re-decide its role ([`LoopEnd::Redecide`]).
//!
//! The first time a server is healthy, before its first heartbeat, the engine confirms its
//! own member ([`Engine::confirm_own_member`]: etcd corrects a peer URL that changed with
//! the address) and the member's IDs go to the identity file, so that a restart from this
//! data can tell whether the member was removed from its raft meanwhile.
//!
//! This file does the I/O of each round (read the health, promote a learner, send, sleep
//! or stop); what to do is decided by the state machine in [`state`].

pub mod state;

use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use rollcall_protocol::{ClientError, ErrorCode, GrantedRole, MemberRole};
use tokio::sync::watch;
use tokio::time::Instant;

pub use self::state::RedecideRule;
use self::state::{retry_pause, ClaimOutcome, HeartbeatOutcome, MemberState, Step};
pub use self::state::{HEARTBEAT_RETRY_MAX, STARTING_HEALTH_POLL};
use crate::engine::{Engine, Health};
use crate::raft_identity::IdentityStore;
use crate::registry_link::RegistryLink;

/// Heartbeat interval until the registry has named one (a restart that did not claim).
pub const FALLBACK_HEARTBEAT_INTERVAL: Duration = Duration::from_secs(5);
/// Most of the interval a heartbeat may come early, to spread a fleet's heartbeats.
pub const HEARTBEAT_JITTER: f64 = 0.2;

/// What the loop needs to know about how the node started.
#[derive(Debug, Clone)]
pub struct MemberLoop {
    pub engine: Arc<Engine>,
    pub registry: Arc<RegistryLink>,
    pub role: MemberRole,
    /// The role the start-up claim granted; `None` for a restart that did not claim, in
    /// which case there is no claim to renew.
    pub granted: Option<GrantedRole>,
    pub interval: Duration,
    /// The raft the agent belongs to, reported with heartbeats and renewals.
    pub identity: Arc<IdentityStore>,
    /// When an agent re-decides its role (ignored for a server).
    pub redecide: RedecideRule,
    /// `--dead-member-after`: the leader's cleanup threshold.
    pub dead_member_after: Duration,
}

/// Why the loop ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LoopEnd {
    /// `stop` turned true.
    Stopped,
    /// The registry refused this member as another raft's and never listed it: the agent
    /// must stop and its data move aside. The registry's message.
    WrongRaft(String),
    /// The agent must give up its role and claim afresh (a server slot opened, or it stayed
    /// unhealthy for the join timeout): why.
    Redecide(String),
}

impl MemberLoop {
    /// Runs until `stop` turns true, or until this member must leave its raft.
    pub async fn run(self, mut stop: watch::Receiver<bool>) -> LoopEnd {
        let mut state = MemberState::new(
            self.role,
            self.granted,
            self.interval,
            Instant::now(),
            jittered,
        )
        .with_redecide(self.redecide);
        loop {
            let health = self.agent_health().await;
            let pause = match state.health_read(&health, Instant::now()) {
                Step::Heartbeat => {
                    let outcome = self.heartbeat().await;
                    state.heartbeat_answered(outcome, Instant::now())
                }
                Step::RenewClaim { waiting_for } => {
                    let outcome = self.renew_claim().await;
                    state.claim_answered(outcome, &waiting_for, Instant::now())
                }
                Step::Pause(pause) => pause,
            };
            if let Some(message) = state.leaving_raft() {
                return LoopEnd::WrongRaft(message.to_string());
            }
            if let Some(reason) = state.redeciding() {
                return LoopEnd::Redecide(reason.to_string());
            }
            if !pause_unless_stopped(pause, &mut stop).await {
                return LoopEnd::Stopped;
            }
        }
    }

    /// `Ok` while the agent is healthy, else why not. Where a join added the member as a
    /// learner, this is where the join ends: the learner is promoted to a voter (etcd
    /// refuses until it has caught up, so this is tried again each round until it works).
    async fn agent_health(&self) -> Result<(), String> {
        match self.engine.health(self.role).await {
            Health::Healthy => {
                if self.role == MemberRole::Server {
                    if let Some(ids) = self.engine.confirm_own_member().await {
                        self.identity.record_member(&ids);
                    }
                }
                Ok(())
            }
            Health::Learner { member_id } => self.engine.promote_learner(&member_id).await,
            Health::Starting(reason) | Health::NotRunning(reason) => Err(reason),
        }
    }

    async fn heartbeat(&self) -> HeartbeatOutcome {
        let status = self.engine.status(self.role).await;
        match self
            .registry
            .heartbeat(
                self.role,
                status,
                self.engine.raft_members(self.role).await,
                self.engine.meta(),
                self.identity.identity(),
            )
            .await
        {
            Ok(answer) => {
                self.identity.mark_listed();
                // The leader's dead-member cleanup, on this answer's evidence.
                let expect = answer.expect.unwrap_or_else(|| self.registry.raft_expect());
                self.engine
                    .after_heartbeat(&answer, expect, self.dead_member_after)
                    .await;
                HeartbeatOutcome::Accepted {
                    interval: interval_from_ms(answer.interval_ms),
                    registered: answer.registered,
                    server_slot_open: answer.server_slot_open,
                }
            }
            Err(ClientError::Api {
                code: ErrorCode::WrongRaft,
                message,
                ..
            }) => HeartbeatOutcome::WrongRaft {
                message,
                listed: self.identity.listed(),
            },
            Err(error) if error.is_transient() => HeartbeatOutcome::Unreachable(error.to_string()),
            Err(error) => HeartbeatOutcome::Refused(error.to_string()),
        }
    }

    /// Claiming again is how a claim is renewed: the registry answers the same role to the
    /// same node while its claim holds. The renewal says the agent already runs (as the role
    /// it was granted, in its raft).
    async fn renew_claim(&self) -> ClaimOutcome {
        let started = self.granted.map(|role| (role, self.identity.identity()));
        match self.registry.claim_once(started).await {
            Ok(claim) => ClaimOutcome::Answered {
                role: claim.role,
                reason: claim.reason,
                interval: interval_from_ms(claim.interval_ms),
            },
            Err(ClientError::Api {
                code: ErrorCode::WrongRaft,
                message,
                ..
            }) => ClaimOutcome::WrongRaft {
                message,
                listed: self.identity.listed(),
            },
            Err(error) => ClaimOutcome::Failed(error.to_string()),
        }
    }
}

/// Sleeps for `pause`; false when `stop` turned true first (or already was).
async fn pause_unless_stopped(pause: Duration, stop: &mut watch::Receiver<bool>) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(pause) => true,
        _ = stop.wait_for(|stop| *stop) => false,
    }
}

/// The registry's interval in milliseconds as a pause, never zero.
pub fn interval_from_ms(ms: u64) -> Duration {
    Duration::from_millis(ms.max(1))
}

/// The pause before retrying a heartbeat that failed on an unreachable or failing registry:
/// a quarter of `interval`, at most [`HEARTBEAT_RETRY_MAX`], less jitter so that a fleet's
/// retries do not arrive together when the registry comes back. This is the pause
/// [`MemberState`] answers after such a failure with the loop's jitter, [`jittered`].
pub fn heartbeat_retry_after(interval: Duration) -> Duration {
    jittered(retry_pause(interval))
}

/// `interval` less up to [`HEARTBEAT_JITTER`] of it.
pub fn jittered(interval: Duration) -> Duration {
    interval.mul_f64(1.0 - rand::thread_rng().gen_range(0.0..HEARTBEAT_JITTER))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_never_delays_past_the_interval() {
        for _ in 0..1000 {
            let d = jittered(Duration::from_secs(1));
            assert!(
                d <= Duration::from_secs(1) && d >= Duration::from_millis(800),
                "{d:?}"
            );
        }
    }

    #[test]
    fn a_failed_heartbeat_is_retried_within_a_quarter_interval_and_at_most_one_second() {
        for (interval, longest) in [
            (Duration::from_secs(5), Duration::from_secs(1)),
            (Duration::from_secs(30), Duration::from_secs(1)),
            (Duration::from_secs(2), Duration::from_millis(500)),
            (Duration::from_secs(1), Duration::from_millis(250)),
        ] {
            for _ in 0..1000 {
                let retry = heartbeat_retry_after(interval);
                assert!(
                    retry <= longest && retry >= longest.mul_f64(1.0 - HEARTBEAT_JITTER),
                    "interval {interval:?}: retry after {retry:?}"
                );
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_loop_waits_out_its_pause_unless_stopped_and_then_stops_at_once() {
        let (stop, mut stop_receiver) = watch::channel(false);
        // Not stopped: the whole pause passes (the paused clock jumps ahead).
        let started = Instant::now();
        assert!(pause_unless_stopped(Duration::from_secs(5), &mut stop_receiver).await);
        assert!(started.elapsed() >= Duration::from_secs(5));

        // Stopped one second into a minute's pause: the loop ends then, not a minute later.
        let stopper = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(1)).await;
            stop.send(true).expect("the loop listens");
            stop
        });
        let started = Instant::now();
        assert!(!pause_unless_stopped(Duration::from_secs(60), &mut stop_receiver).await);
        assert!(started.elapsed() < Duration::from_secs(2));

        // Once stopped, any later pause ends at once.
        let _stop = stopper.await.expect("stopper");
        let started = Instant::now();
        assert!(!pause_unless_stopped(Duration::from_secs(60), &mut stop_receiver).await);
        assert_eq!(started.elapsed(), Duration::ZERO);
    }
}
