//! The loop that keeps this node known to the registry while `run` supervises the agent.
//!
//! Until the agent is first healthy, the loop renews the node's claim every interval (so
//! the registry keeps its server slot, and lists it as a join target, while the agent is
//! still joining) and polls the agent's health quickly. Once the agent is healthy it sends
//! heartbeats carrying the agent's status, at the registry's interval minus up to 20%
//! jitter. When the agent is not healthy, nothing is sent. A heartbeat that fails because
//! the registry is unreachable or answers 5xx is retried after a quarter of the interval (at
//! most [`HEARTBEAT_RETRY_MAX`], less jitter), so that a registry restarted on an empty data
//! directory lists every healthy member again within one interval of coming back; the first
//! heartbeat that succeeds returns the loop to the normal interval. The registry being down
//! never touches the agent.

use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use rollcall_protocol::{GrantedRole, MemberRole};
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::engine::{Engine, Health};
use crate::registry_link::RegistryLink;

/// Heartbeat interval until the registry has named one (a restart that did not claim).
pub const FALLBACK_HEARTBEAT_INTERVAL: Duration = Duration::from_secs(5);
/// How often the health of a starting agent is polled, so the first heartbeat is prompt.
pub const STARTING_HEALTH_POLL: Duration = Duration::from_millis(250);
/// Most of the interval a heartbeat may come early, to spread a fleet's heartbeats.
pub const HEARTBEAT_JITTER: f64 = 0.2;
/// Longest pause before a heartbeat that failed on an unreachable or failing registry is
/// tried again. A retry one whole interval later could land after the interval in which a
/// restarted registry must relearn its members.
pub const HEARTBEAT_RETRY_MAX: Duration = Duration::from_secs(1);

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
}

impl MemberLoop {
    /// Runs until `stop` turns true.
    pub async fn run(self, mut stop: watch::Receiver<bool>) {
        let mut interval = self.interval;
        let mut renew_claim = self.granted.is_some();
        let mut next_claim = Instant::now() + interval;
        let mut ever_healthy = false;
        let mut healthy = false;
        // Heartbeats that failed in a row, and when the first of them failed, so that a
        // registry outage is logged once when it starts and once when it ends.
        let mut failed_heartbeats: u32 = 0;
        let mut failing_since: Option<Instant> = None;
        loop {
            let wait = match self.agent_health().await {
                Ok(()) => {
                    if !healthy {
                        info!(role = %self.role, "the agent is healthy; heartbeating");
                    }
                    healthy = true;
                    ever_healthy = true;
                    let status = self.engine.status(self.role).await;
                    match self
                        .registry
                        .heartbeat(self.role, status, self.engine.meta())
                        .await
                    {
                        Ok(answer) => {
                            if let Some(since) = failing_since.take() {
                                info!(
                                    n_failed = failed_heartbeats,
                                    failing_for = ?since.elapsed(),
                                    "the registry answers heartbeats again; back to the normal interval"
                                );
                            }
                            failed_heartbeats = 0;
                            if answer.registered {
                                info!("the registry registered this member (it did not know it, or it had expired)");
                            }
                            interval = Duration::from_millis(answer.interval_ms.max(1));
                            renew_claim = false;
                            jittered(interval)
                        }
                        Err(error) if error.is_transient() => {
                            failed_heartbeats += 1;
                            failing_since.get_or_insert_with(Instant::now);
                            let retry_in = heartbeat_retry_after(interval);
                            if failed_heartbeats == 1 {
                                warn!(%error, ?retry_in, "heartbeat failed; the agent keeps running, retrying soon until the registry answers");
                            } else {
                                debug!(%error, ?retry_in, n_failed = failed_heartbeats, "heartbeat failed again");
                            }
                            retry_in
                        }
                        Err(error) => {
                            // A refusal (a bad token, an invalid name) does not go away by
                            // asking again soon: keep the normal pace and say so every time.
                            warn!(%error, "heartbeat refused; the agent keeps running, next try in one interval");
                            jittered(interval)
                        }
                    }
                }
                Err(reason) => {
                    if healthy {
                        warn!(%reason, "the agent is not healthy; heartbeats paused");
                    }
                    healthy = false;
                    if renew_claim && Instant::now() >= next_claim {
                        self.renew_claim(&mut interval, &reason).await;
                        next_claim = Instant::now() + jittered(interval);
                    }
                    if ever_healthy {
                        interval.min(Duration::from_secs(1))
                    } else {
                        STARTING_HEALTH_POLL
                    }
                }
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = stop.wait_for(|stop| *stop) => return,
            }
        }
    }

    /// `Ok` while the agent is healthy, else why not. Where a join added the member as a
    /// learner, this is where the join ends: the learner is promoted to a voter (etcd
    /// refuses until it has caught up, so this is tried again each round until it works).
    async fn agent_health(&self) -> Result<(), String> {
        match self.engine.health(self.role).await {
            Health::Healthy => Ok(()),
            Health::Learner { member_id } => self.engine.promote_learner(&member_id).await,
            Health::Starting(reason) | Health::NotRunning(reason) => Err(reason),
        }
    }

    async fn renew_claim(&self, interval: &mut Duration, waiting_for: &str) {
        match self.registry.claim_once().await {
            Ok(claim) => {
                *interval = Duration::from_millis(claim.interval_ms.max(1));
                if Some(claim.role) != self.granted {
                    warn!(
                        granted_at_start = ?self.granted,
                        now = %claim.role,
                        reason = %claim.reason,
                        "the registry now answers another role; keeping the agent as started"
                    );
                } else {
                    info!(%waiting_for, "renewed the claim while the agent starts");
                }
            }
            Err(error) => warn!(%error, "could not renew the claim; trying again in one interval"),
        }
    }
}

/// The pause before retrying a heartbeat that failed on an unreachable or failing registry:
/// a quarter of `interval`, at most [`HEARTBEAT_RETRY_MAX`], less jitter so that a fleet's
/// retries do not arrive together when the registry comes back.
pub fn heartbeat_retry_after(interval: Duration) -> Duration {
    jittered((interval / 4).min(HEARTBEAT_RETRY_MAX))
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
}
