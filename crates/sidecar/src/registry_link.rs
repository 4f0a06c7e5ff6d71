//! This node's link to the registry: claims with retry policy, join-target look-ups,
//! heartbeats and the leave, on top of the protocol crate's one-request-per-call client.
//!
//! In this crate "registry" means only the remote registry service; [`RegistryLink`] is how
//! one node talks to it (its cluster, node name and address are fixed here once).

use std::collections::BTreeMap;
use std::time::Duration;

use rollcall_protocol::{
    AgentStatus, ClaimRequest, ClaimResponse, ClientError, ErrorCode, HeartbeatRequest,
    HeartbeatResponse, MemberRole, RegistryClient,
};
use tokio::time::Instant;
use tracing::{info, warn};

use crate::config::Settings;
use crate::engine::JoinTargets;
use crate::exit::{
    exit_for_registry_error, Exit, EXIT_CONFIG, EXIT_INTERNAL, EXIT_REGISTRY_UNREACHABLE,
};

/// First pause after the registry could not be reached; it doubles up to the maximum.
pub const REGISTRY_BACKOFF_START: Duration = Duration::from_millis(200);
/// Longest pause between two attempts to reach the registry.
pub const REGISTRY_BACKOFF_MAX: Duration = Duration::from_secs(5);
/// Pause after `503 not_ready` when the registry sent no `Retry-After`.
pub const NOT_READY_DEFAULT_WAIT: Duration = Duration::from_secs(1);
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
}

impl RegistryLink {
    pub fn new(settings: &Settings) -> Result<RegistryLink, Exit> {
        let mut builder = reqwest::Client::builder()
            .timeout(settings.request_timeout)
            .connect_timeout(settings.request_timeout.min(Duration::from_secs(2)));
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
        Ok(RegistryLink {
            client: RegistryClient::with_http_client(
                settings.registry_url.clone(),
                settings.token.clone(),
                http,
            ),
            cluster: settings.cluster.clone(),
            node: settings.node.clone(),
            address: settings.advertise_address(),
            expect: settings.expect,
            agent_only: settings.agent_only,
        })
    }

    pub fn client(&self) -> &RegistryClient {
        &self.client
    }

    pub fn cluster(&self) -> &str {
        &self.cluster
    }

    /// One claim: the registry answers the same role to the same node while the claim holds,
    /// so claiming again is also how the claim is renewed.
    pub async fn claim_once(&self) -> Result<ClaimResponse, ClientError> {
        let request = ClaimRequest {
            node: self.node.clone(),
            address: self.address.clone(),
            expect: self.expect,
            agent_only: self.agent_only,
            started_as: None,
            raft: None,
        };
        self.client.claim(&self.cluster, &request).await
    }

    /// Claims at start: waits out `503 not_ready` (the registry's startup grace), retries an
    /// unreachable registry with backoff for at most `retry_limit`, and gives up on a refusal.
    pub async fn claim_at_start(&self, retry_limit: Duration) -> Result<ClaimResponse, Exit> {
        let mut unreachable_since: Option<Instant> = None;
        let mut backoff = REGISTRY_BACKOFF_START;
        loop {
            match self.claim_once().await {
                Ok(claim) => return Ok(claim),
                Err(ClientError::Api {
                    code: ErrorCode::NotReady,
                    retry_after,
                    message,
                    ..
                }) => {
                    let wait = retry_after
                        .filter(|w| !w.is_zero())
                        .unwrap_or(NOT_READY_DEFAULT_WAIT);
                    info!(wait = ?wait, %message, "the registry is not ready to grant roles yet; waiting as it asked");
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

    pub async fn heartbeat(
        &self,
        role: MemberRole,
        status: Option<AgentStatus>,
        meta: BTreeMap<String, String>,
    ) -> Result<HeartbeatResponse, ClientError> {
        let request = HeartbeatRequest {
            address: self.address.clone(),
            role,
            status,
            meta,
            raft: None,
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
