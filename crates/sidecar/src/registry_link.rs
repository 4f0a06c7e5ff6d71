//! This node's link to the registry: claims with retry policy, join-target look-ups,
//! heartbeats and the leave, on top of the protocol crate's one-request-per-call client.
//!
//! In this crate "registry" means only the remote registry service; [`RegistryLink`] is how
//! one node talks to it (its cluster, node name and address are fixed here once). Given
//! several registry URLs (its replicas), the protocol client fails over between them within
//! each call and logs each switch; the retry policy here sees only calls that no URL answered.
//!
//! Waiting at claim time: `503 not_ready` (startup grace, quiet period, no live server) and
//! the conflicts `409 reset_required`, `address_conflict` and `expect_conflict` are answers
//! that may change by themselves or by an operator's hand, so the claim waits as
//! `Retry-After` says and asks again, never starting an agent meanwhile. A conflict's message
//! is logged at warn level the first time and then at most every [`CONFLICT_LOG_EVERY`]. All
//! this waiting has one deadline, `--claim-wait-limit`, counted from the first answer that
//! asked to wait; then the claim ends with exit 75 and the registry's last message.

use std::collections::BTreeMap;
use std::time::Duration;

use rollcall_protocol::{
    AgentStatus, ClaimRequest, ClaimResponse, ClientError, ErrorCode, GrantedRole,
    HeartbeatRequest, HeartbeatResponse, MemberRole, RaftIdentity, RaftMember, RegistryClient,
};
use tokio::time::Instant;
use tracing::{info, warn};

use crate::config::Settings;
use crate::engine::JoinTargets;
use crate::exit::{
    exit_for_registry_error, Exit, EXIT_CLAIM_WAIT_LIMIT, EXIT_CONFIG, EXIT_INTERNAL,
    EXIT_REGISTRY_UNREACHABLE,
};

/// First pause after the registry could not be reached; it doubles up to the maximum.
pub const REGISTRY_BACKOFF_START: Duration = Duration::from_millis(200);
/// Longest pause between two attempts to reach the registry.
pub const REGISTRY_BACKOFF_MAX: Duration = Duration::from_secs(5);
/// Pause after `503 not_ready` when the registry sent no `Retry-After`.
pub const NOT_READY_DEFAULT_WAIT: Duration = Duration::from_secs(1);
/// Pause after a conflict (`reset_required`, `address_conflict`, `expect_conflict`) when the
/// registry sent no `Retry-After`: the registry's default heartbeat interval.
pub const CONFLICT_DEFAULT_WAIT: Duration = Duration::from_secs(5);
/// A conflict that goes on is logged again at most this often.
pub const CONFLICT_LOG_EVERY: Duration = Duration::from_secs(30);
/// The graceful leave on stop gets this long, so a dead registry never delays the stop.
pub const LEAVE_TIMEOUT: Duration = Duration::from_secs(2);

/// The registry as seen by one node: the protocol client plus who this node is.
#[derive(Debug, Clone)]
pub struct RegistryLink {
    client: RegistryClient,
    cluster: String,
    node: String,
    address: String,
    expect: u32,
    agent_only: bool,
    /// The raft's size as the registry last answered a claim (0: no answer yet), which wins
    /// over `--expect` for the dead-member cleanup's quorum floor.
    answered_expect: std::sync::Arc<std::sync::atomic::AtomicU32>,
}

impl RegistryLink {
    pub fn new(settings: &Settings) -> Result<RegistryLink, Exit> {
        let resolver =
            crate::dns::FreshResolver::from_system().map_err(|e| Exit::new(EXIT_CONFIG, e))?;
        // Redirects are the protocol client's to follow: only to a configured registry URL,
        // so that the token never goes anywhere else.
        let mut builder = reqwest::Client::builder()
            .timeout(settings.request_timeout)
            .connect_timeout(settings.request_timeout.min(Duration::from_secs(2)))
            .redirect(reqwest::redirect::Policy::none())
            .dns_resolver(std::sync::Arc::new(resolver));
        if let Some(path) = &settings.ca_cert {
            let pem = std::fs::read(path).map_err(|e| {
                Exit::new(
                    EXIT_CONFIG,
                    format!("cannot read --ca-cert {}: {e}", path.display()),
                )
            })?;
            let certs = rollcall_protocol::client::load_ca_bundle(&pem).map_err(|e| {
                Exit::new(EXIT_CONFIG, format!("--ca-cert {}: {e}", path.display()))
            })?;
            for cert in certs {
                builder = builder.add_root_certificate(cert);
            }
        }
        let http = builder
            .build()
            .map_err(|e| Exit::new(EXIT_INTERNAL, format!("cannot build the HTTP client: {e}")))?;
        // One call's tries of the replicas share the request timeout, so that a frozen
        // replica delays a heartbeat by less than one interval (see the protocol client).
        let client = RegistryClient::with_bases(
            settings.registry_urls.clone(),
            settings.token.clone(),
            http,
        )
        .map_err(|e| Exit::new(EXIT_CONFIG, format!("--registry: {e}")))?
        .with_request_timeout(settings.request_timeout);
        Ok(RegistryLink {
            client,
            cluster: settings.cluster.clone(),
            node: settings.node.clone(),
            address: settings.advertise_address(),
            expect: settings.expect,
            agent_only: settings.agent_only,
            answered_expect: Default::default(),
        })
    }

    /// The raft's size: the registry's last claim answer, else `--expect`.
    pub fn raft_expect(&self) -> u32 {
        match self
            .answered_expect
            .load(std::sync::atomic::Ordering::Relaxed)
        {
            0 => self.expect,
            answered => answered,
        }
    }

    pub fn client(&self) -> &RegistryClient {
        &self.client
    }

    pub fn cluster(&self) -> &str {
        &self.cluster
    }

    /// One claim: the registry answers the same role to the same node while the claim holds,
    /// so claiming again is also how the claim is renewed. `started`: the role this node's
    /// agent already runs as and its raft (a renewal while the agent starts), so that a
    /// registry that lost its data never tells it `bootstrap`.
    pub async fn claim_once(
        &self,
        started: Option<(GrantedRole, Option<RaftIdentity>)>,
    ) -> Result<ClaimResponse, ClientError> {
        let (started_as, raft) = match started {
            Some((role, raft)) => (Some(role), raft),
            None => (None, None),
        };
        let request = ClaimRequest {
            node: self.node.clone(),
            address: self.address.clone(),
            expect: self.expect,
            agent_only: self.agent_only,
            started_as,
            raft,
        };
        let answer = self.client.claim(&self.cluster, &request).await;
        if let Ok(claim) = &answer {
            self.answered_expect
                .store(claim.expect, std::sync::atomic::Ordering::Relaxed);
        }
        answer
    }

    /// Claims at start: waits out `503 not_ready` and the conflicts the registry may resolve
    /// (see the module's header), for at most `wait_limit` in all; retries an unreachable
    /// registry with backoff for at most `retry_limit`; gives up on any other refusal.
    pub async fn claim_at_start(
        &self,
        retry_limit: Duration,
        wait_limit: Duration,
    ) -> Result<ClaimResponse, Exit> {
        let mut unreachable_since: Option<Instant> = None;
        let mut backoff = REGISTRY_BACKOFF_START;
        let mut waiting = ClaimWait::new(wait_limit);
        loop {
            match self.claim_once(None).await {
                Ok(claim) => return Ok(claim),
                Err(ClientError::Api {
                    code,
                    retry_after,
                    message,
                    ..
                }) if waits(code) => {
                    let wait = waiting.next(code, &message, retry_after, Instant::now())?;
                    unreachable_since = None;
                    backoff = REGISTRY_BACKOFF_START;
                    tokio::time::sleep(wait).await;
                }
                Err(error) if error.is_transient() => {
                    let since = *unreachable_since.get_or_insert_with(Instant::now);
                    if since.elapsed() >= retry_limit {
                        return Err(Exit::new(
                            EXIT_REGISTRY_UNREACHABLE,
                            format!("the registry stayed unreachable for {retry_limit:?}: {error}"),
                        ));
                    }
                    warn!(%error, retry_in = ?backoff, "cannot reach the registry to claim a role; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(REGISTRY_BACKOFF_MAX);
                }
                Err(error) => return Err(exit_for_registry_error(&error)),
            }
        }
    }

    /// The live servers' addresses other than this node's, or `None` when the registry
    /// cannot tell right now.
    pub async fn live_server_addresses(&self) -> Option<Vec<String>> {
        match self
            .client
            .join_targets(&self.cluster, Some(MemberRole::Server))
            .await
        {
            Ok(targets) => Some(
                targets
                    .addresses
                    .into_iter()
                    .filter(|a| *a != self.address)
                    .collect(),
            ),
            Err(error) => {
                warn!(%error, "cannot read the live servers from the registry");
                None
            }
        }
    }

    /// One heartbeat; `raft` is the raft the agent belongs to, when known (the registry
    /// refuses one of another raft than the cluster's with `409 wrong_raft`);
    /// `raft_members` the raft's membership as the agent sees it.
    pub async fn heartbeat(
        &self,
        role: MemberRole,
        status: Option<AgentStatus>,
        raft_members: Option<Vec<RaftMember>>,
        meta: BTreeMap<String, String>,
        raft: Option<RaftIdentity>,
    ) -> Result<HeartbeatResponse, ClientError> {
        let request = HeartbeatRequest {
            raft_members,
            address: self.address.clone(),
            role,
            status,
            meta,
            raft,
        };
        self.client
            .heartbeat(&self.cluster, &self.node, &request)
            .await
    }

    /// Removes this node from the registry, within [`LEAVE_TIMEOUT`]; failures are logged.
    pub async fn leave(&self) {
        match tokio::time::timeout(LEAVE_TIMEOUT, self.client.leave(&self.cluster, &self.node))
            .await
        {
            Ok(Ok(())) => info!("left the registry"),
            Ok(Err(error)) => {
                warn!(%error, "could not leave the registry; the entry expires after its TTL")
            }
            Err(_) => warn!("leaving the registry timed out; the entry expires after its TTL"),
        }
    }
}

/// The engine asks the registry for fresh join targets through this.
impl JoinTargets for RegistryLink {
    async fn live_server_addresses(&self) -> Option<Vec<String>> {
        RegistryLink::live_server_addresses(self).await
    }
}

/// True for the answers a claim waits out: the registry asks to come back later, and the
/// answer may change by itself (a startup grace ends, a conflicting entry expires, a raft
/// comes back) or by an operator's hand (a reset, a fixed `expect`, a survivor forced into a
/// new raft after `raft_lost`).
pub fn waits(code: ErrorCode) -> bool {
    matches!(
        code,
        ErrorCode::NotReady
            | ErrorCode::ResetRequired
            | ErrorCode::RaftLost
            | ErrorCode::AddressConflict
            | ErrorCode::ExpectConflict
    )
}

/// The claim's waiting: since when, for how long at most, and when a conflict was last
/// logged. Plain values, so the pacing is tested without a registry.
#[derive(Debug)]
pub struct ClaimWait {
    limit: Duration,
    /// The first answer that asked to wait: the deadline counts from here.
    since: Option<Instant>,
    /// The last conflict logged at warn level, and when: the same one again is logged at
    /// most every [`CONFLICT_LOG_EVERY`].
    logged: Option<(ErrorCode, Instant)>,
}

impl ClaimWait {
    pub fn new(limit: Duration) -> ClaimWait {
        ClaimWait {
            limit,
            since: None,
            logged: None,
        }
    }

    /// The pause before claiming again after `code`, or the exit once the claim has waited
    /// `limit` in all.
    pub fn next(
        &mut self,
        code: ErrorCode,
        message: &str,
        retry_after: Option<Duration>,
        now: Instant,
    ) -> Result<Duration, Exit> {
        let since = *self.since.get_or_insert(now);
        let waited = now.duration_since(since);
        if waited >= self.limit {
            return Err(Exit::new(
                EXIT_CLAIM_WAIT_LIMIT,
                format!(
                    "the claim waited {} (--claim-wait-limit {}) and the registry still answers {code}: {message}",
                    humantime::format_duration(Duration::from_secs(waited.as_secs())),
                    humantime::format_duration(self.limit)
                ),
            ));
        }
        let default = if code == ErrorCode::NotReady {
            NOT_READY_DEFAULT_WAIT
        } else {
            CONFLICT_DEFAULT_WAIT
        };
        let wait = retry_after
            .filter(|w| !w.is_zero())
            .unwrap_or(default)
            // Never past the deadline: the last answer is asked for before it.
            .min(self.limit - waited)
            .max(Duration::from_millis(100));
        let left = humantime::format_duration(Duration::from_secs((self.limit - waited).as_secs()));
        if code == ErrorCode::NotReady {
            info!(wait = ?wait, %message, "the registry is not ready to grant roles yet; waiting as it asked");
        } else {
            let due = match self.logged {
                Some((last, at)) => last != code || now.duration_since(at) >= CONFLICT_LOG_EVERY,
                None => true,
            };
            if due {
                warn!(%code, retry_in = ?wait, gives_up_in = %left, %message, "the registry refuses this claim for now; no agent is started, asking again until it answers a role or --claim-wait-limit runs out");
                self.logged = Some((code, now));
            }
        }
        Ok(wait)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: Duration = Duration::from_secs(1);

    /// (seconds since the first answer, code, Retry-After, pause or exit code)
    type Round = (u64, ErrorCode, Option<Duration>, Result<Duration, i32>);

    #[test]
    fn conflicts_are_waited_out_as_asked_until_the_limit_then_exit_75() {
        let t0 = Instant::now();
        let mut wait = ClaimWait::new(10 * SECOND);
        let table: [Round; 6] = [
            (0, ErrorCode::NotReady, Some(2 * SECOND), Ok(2 * SECOND)),
            (2, ErrorCode::ResetRequired, Some(SECOND), Ok(SECOND)),
            (3, ErrorCode::ResetRequired, None, Ok(CONFLICT_DEFAULT_WAIT)),
            // Never past the deadline.
            (
                8,
                ErrorCode::AddressConflict,
                Some(4 * SECOND),
                Ok(2 * SECOND),
            ),
            (9, ErrorCode::NotReady, None, Ok(NOT_READY_DEFAULT_WAIT)),
            (
                10,
                ErrorCode::ExpectConflict,
                Some(SECOND),
                Err(EXIT_CLAIM_WAIT_LIMIT),
            ),
        ];
        for (at, code, retry_after, expected) in table {
            let got = wait
                .next(code, "m", retry_after, t0 + Duration::from_secs(at))
                .map_err(|e| e.code);
            assert_eq!(got, expected, "at {at} s: {code}");
        }
    }

    #[test]
    fn a_conflict_is_logged_first_then_at_most_every_30_seconds_or_when_it_changes() {
        let t0 = Instant::now();
        let mut wait = ClaimWait::new(600 * SECOND);
        let mut logged_at = vec![];
        for (at, code) in [
            (0, ErrorCode::ResetRequired),
            (5, ErrorCode::ResetRequired),
            (29, ErrorCode::ResetRequired),
            (30, ErrorCode::ResetRequired),
            (31, ErrorCode::AddressConflict),
            (35, ErrorCode::AddressConflict),
        ] {
            let before = wait.logged;
            wait.next(code, "m", Some(SECOND), t0 + Duration::from_secs(at))
                .expect("within the limit");
            if wait.logged != before {
                logged_at.push(at);
            }
        }
        assert_eq!(logged_at, [0, 30, 31]);
    }

    #[test]
    fn only_answers_that_may_change_are_waited_out() {
        for code in [
            ErrorCode::NotReady,
            ErrorCode::ResetRequired,
            ErrorCode::RaftLost,
            ErrorCode::AddressConflict,
            ErrorCode::ExpectConflict,
        ] {
            assert!(waits(code), "{code}");
        }
        for code in [
            ErrorCode::WrongRaft,
            ErrorCode::Unauthorized,
            ErrorCode::InvalidNodeName,
        ] {
            assert!(!waits(code), "{code}");
        }
    }
}
