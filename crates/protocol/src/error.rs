//! Stable error codes and the JSON error body every non-2xx response carries.
//!
//! A code is part of the API: clients match on it, so a code is never renamed or reused.
//! The message is for people and may change.

use serde::{Deserialize, Serialize};

/// The body of every error response: `{"code": "...", "message": "..."}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ErrorBody {
    pub code: ErrorCode,
    pub message: String,
}

/// Every error the registry can answer with. The wire form is the snake_case name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// A cluster name in the path or query is not a valid name (400).
    InvalidClusterName,
    /// A node name in the path or body is not a valid name (400).
    InvalidNodeName,
    /// An address is not `host:port` with a valid host and a port from 1 to 65535 (400).
    InvalidAddress,
    /// The metadata map has too many entries, or a key or value is too long (400).
    InvalidMetadata,
    /// `expect` is outside the allowed range (400).
    InvalidExpect,
    /// The body is not JSON of the expected shape (400), or not JSON at all (415 for a wrong content type).
    InvalidBody,
    /// A query parameter has a value the endpoint does not accept (400).
    InvalidQuery,
    /// The body is larger than the registry accepts (413).
    BodyTooLarge,
    /// The request needs a bearer token and carried none, or one the registry does not know (401).
    Unauthorized,
    /// The token is valid but not for this cluster (403).
    Forbidden,
    /// No such member, or no such route (404).
    NotFound,
    /// The method is not allowed on this route (405).
    MethodNotAllowed,
    /// A bound was reached: members per cluster, clusters per registry (429 or 507).
    LimitExceeded,
    /// The registry cannot answer a claim safely yet; retry after `Retry-After` seconds (503).
    NotReady,
    /// The node's name is live at another address; retry once that entry leaves or expires,
    /// at most `Retry-After` seconds (409).
    AddressConflict,
    /// Claims disagree on `expect` before the raft is known; fix the setting (409).
    ExpectConflict,
    /// The cluster already had a raft: a new one needs an operator's reset, which the message
    /// names (409). The claimant waits: the raft may come back.
    ResetRequired,
    /// The heartbeat or claim reports another raft than the cluster's (409): it is not listed.
    WrongRaft,
    /// The cluster's raft is lost: no server has been live for `--raft-lost-after` (409). The
    /// message names the recovery (a survivor restarted with `--force-new-cluster`) and the
    /// reset that starts the next generation. The claimant waits: the raft may come back.
    RaftLost,
    /// A reset named another generation than the cluster's current one; nothing changed (409).
    GenerationMismatch,
    /// A reset found live members it was not told to force; nothing changed (409).
    MembersLive,
    /// The storage failed; nothing was acknowledged (500 or 507).
    StorageError,
    /// The request took longer than the registry allows (408).
    Timeout,
    /// This registry replica is a standby and no active replica can be reached to forward to
    /// (during a failover, at most about the lease TTL); retry after `Retry-After` (503).
    NoActiveReplica,
    /// The registry's etcd has no quorum (or cannot be reached): reads are served from the
    /// last state, marked stale, and durable writes are refused until etcd is back (503).
    StoreUnavailable,
    /// Anything else that went wrong inside the registry; the log has the cause (500).
    Internal,
}

impl ErrorCode {
    /// The code as it appears on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidClusterName => "invalid_cluster_name",
            ErrorCode::InvalidNodeName => "invalid_node_name",
            ErrorCode::InvalidAddress => "invalid_address",
            ErrorCode::InvalidMetadata => "invalid_metadata",
            ErrorCode::InvalidExpect => "invalid_expect",
            ErrorCode::InvalidBody => "invalid_body",
            ErrorCode::InvalidQuery => "invalid_query",
            ErrorCode::BodyTooLarge => "body_too_large",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::NotFound => "not_found",
            ErrorCode::MethodNotAllowed => "method_not_allowed",
            ErrorCode::LimitExceeded => "limit_exceeded",
            ErrorCode::NotReady => "not_ready",
            ErrorCode::AddressConflict => "address_conflict",
            ErrorCode::ExpectConflict => "expect_conflict",
            ErrorCode::ResetRequired => "reset_required",
            ErrorCode::WrongRaft => "wrong_raft",
            ErrorCode::RaftLost => "raft_lost",
            ErrorCode::GenerationMismatch => "generation_mismatch",
            ErrorCode::MembersLive => "members_live",
            ErrorCode::StorageError => "storage_error",
            ErrorCode::Timeout => "timeout",
            ErrorCode::NoActiveReplica => "no_active_replica",
            ErrorCode::StoreUnavailable => "store_unavailable",
            ErrorCode::Internal => "internal",
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_code_wire_form_matches_as_str() {
        for code in [
            ErrorCode::InvalidClusterName,
            ErrorCode::InvalidNodeName,
            ErrorCode::InvalidAddress,
            ErrorCode::InvalidMetadata,
            ErrorCode::InvalidExpect,
            ErrorCode::InvalidBody,
            ErrorCode::InvalidQuery,
            ErrorCode::BodyTooLarge,
            ErrorCode::Unauthorized,
            ErrorCode::Forbidden,
            ErrorCode::NotFound,
            ErrorCode::MethodNotAllowed,
            ErrorCode::LimitExceeded,
            ErrorCode::NotReady,
            ErrorCode::AddressConflict,
            ErrorCode::ExpectConflict,
            ErrorCode::ResetRequired,
            ErrorCode::WrongRaft,
            ErrorCode::RaftLost,
            ErrorCode::GenerationMismatch,
            ErrorCode::MembersLive,
            ErrorCode::NoActiveReplica,
            ErrorCode::StoreUnavailable,
            ErrorCode::StorageError,
            ErrorCode::Timeout,
            ErrorCode::Internal,
        ] {
            let json = serde_json::to_string(&code).expect("serialise");
            assert_eq!(json, format!("\"{}\"", code.as_str()));
        }
    }
}
