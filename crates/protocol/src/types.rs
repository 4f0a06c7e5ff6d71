//! The JSON bodies of the registry's HTTP API.
//!
//! Durations travel as whole milliseconds in fields ending `_ms`, so that every client can
//! read them without a duration parser. Unknown fields are refused on requests: a typo in
//! a field name is an error, not a silently ignored setting.
//!
//! Longer than most files here on purpose: it is the whole wire format, one type per body,
//! so that a reader (and a reviewer of a change to the API) finds every body in one place.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::validate::{self, NameKind, ValidationError};

/// The role a member reports in its heartbeat.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum MemberRole {
    /// A raft voter (a Consul server, an etcd member).
    Server,
    /// A non-voting client of the raft (a Consul client agent, an etcd gateway or proxy).
    Agent,
}

impl MemberRole {
    pub fn as_str(self) -> &'static str {
        match self {
            MemberRole::Server => "server",
            MemberRole::Agent => "agent",
        }
    }
}

impl std::fmt::Display for MemberRole {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The role a claim grants: what the node must start as.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum GrantedRole {
    /// Start a brand-new raft. At most one node of a cluster holds this at a time.
    Bootstrap,
    /// Start as a server and join the raft through the join targets.
    Server,
    /// Start as a client agent and join through the join targets.
    Agent,
}

impl GrantedRole {
    pub fn as_str(self) -> &'static str {
        match self {
            GrantedRole::Bootstrap => "bootstrap",
            GrantedRole::Server => "server",
            GrantedRole::Agent => "agent",
        }
    }

    /// The role the member reports in its heartbeats once it runs.
    pub fn member_role(self) -> MemberRole {
        match self {
            GrantedRole::Bootstrap | GrantedRole::Server => MemberRole::Server,
            GrantedRole::Agent => MemberRole::Agent,
        }
    }
}

impl std::fmt::Display for GrantedRole {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the agent itself says about its raft, as the sidecar read it from the agent's API.
/// Every field is optional: an agent that cannot tell leaves it out.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct AgentStatus {
    /// Whether the agent is part of a raft with a leader.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub in_raft: Option<bool>,
    /// The leader the agent sees, as the agent names it (an address or a member name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(schema_with = crate::openapi::leader_schema))]
    pub leader: Option<String>,
    /// How many raft peers (voters) the agent sees, itself included.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "crate::types::integral::option_u32"
    )]
    #[cfg_attr(feature = "openapi", schema(minimum = 0, maximum = 2147483647))]
    pub peers: Option<u32>,
    /// Whether this agent is the leader.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub is_leader: Option<bool>,
}

impl AgentStatus {
    pub fn validate(&self) -> Result<(), ValidationError> {
        if self.peers.is_some_and(|p| p > i32::MAX as u32) {
            return Err(ValidationError::new(
                crate::ErrorCode::InvalidBody,
                format!("status.peers must be at most {}", i32::MAX),
            ));
        }
        if let Some(leader) = &self.leader {
            if leader.len() > validate::MAX_STATUS_STRING_LEN
                || leader.chars().any(char::is_control)
            {
                return Err(ValidationError::new(
                    crate::ErrorCode::InvalidBody,
                    format!(
                        "status.leader must be at most {} bytes without control characters",
                        validate::MAX_STATUS_STRING_LEN
                    ),
                ));
            }
        }
        Ok(())
    }
}

/// `PUT /v1/clusters/{cluster}/members/{node}`: a heartbeat, carrying the whole record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct HeartbeatRequest {
    /// Where other members reach this one to join (`host:port`).
    #[cfg_attr(feature = "openapi", schema(schema_with = crate::openapi::address_schema))]
    pub address: String,
    pub role: MemberRole,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "crate::types::object_only"
    )]
    pub status: Option<AgentStatus>,
    #[serde(
        default,
        skip_serializing_if = "BTreeMap::is_empty",
        deserialize_with = "crate::types::unique_keys"
    )]
    #[cfg_attr(feature = "openapi", schema(schema_with = crate::openapi::metadata_schema))]
    pub meta: BTreeMap<String, String>,
    /// The raft this member belongs to, as its grant named it. Absent: unknown (a member from
    /// before identities, or an engine without one), listed but never refused for it.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "crate::types::object_only"
    )]
    pub raft: Option<RaftIdentity>,
    /// The raft's membership as this member sees it (etcd: `member list`), so that the
    /// registry, the dashboard and the leader's sidecar see members of the raft that are live
    /// nowhere. Absent: the engine cannot tell, or this member is not in a raft with a leader.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(max_items = 32))]
    pub raft_members: Option<Vec<RaftMember>>,
}

impl HeartbeatRequest {
    pub fn validate(&self) -> Result<(), ValidationError> {
        validate::validate_address(&self.address)?;
        validate::validate_metadata(&self.meta)?;
        if let Some(status) = &self.status {
            status.validate()?;
        }
        if let Some(raft) = &self.raft {
            raft.validate()?;
        }
        if let Some(members) = &self.raft_members {
            if members.len() > validate::MAX_RAFT_MEMBERS {
                return Err(ValidationError::new(
                    crate::ErrorCode::InvalidBody,
                    format!(
                        "raft_members lists at most {} members",
                        validate::MAX_RAFT_MEMBERS
                    ),
                ));
            }
            for member in members {
                member.validate()?;
            }
        }
        Ok(())
    }
}

/// One member of the raft as the reporting member lists it (etcd: one entry of
/// `member list`). `connected` and `disconnected_for_ms` are the leader's evidence for a
/// dead-member cleanup, and only the leader sets them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct RaftMember {
    /// The agent's own ID for the member (etcd: the member ID, in decimal).
    #[cfg_attr(feature = "openapi", schema(schema_with = raft_member_id_schema))]
    pub id: String,
    /// The member's name: the node name its sidecar gave it; empty for a member that was
    /// added but never started.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(schema_with = raft_member_name_schema))]
    pub name: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[cfg_attr(feature = "openapi", schema(schema_with = raft_member_urls_schema))]
    pub peer_urls: Vec<String>,
    /// A non-voting learner (etcd), not counted in the quorum.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub learner: bool,
    /// Set by the leader only: whether it has a peer connection to this member now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connected: Option<bool>,
    /// Set by the leader only: how long it has seen no peer connection to this member, counted
    /// from when it started watching (it became leader); absent while connected.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "crate::types::integral::option_generation"
    )]
    #[cfg_attr(
        feature = "openapi",
        schema(minimum = 0, maximum = 9007199254740991_i64)
    )]
    pub disconnected_for_ms: Option<u64>,
}

/// A raft member's text field in the OpenAPI document: at most `max` characters, none of the
/// control or bidirectional characters that [`RaftMember::validate`] refuses.
#[cfg(feature = "openapi")]
fn raft_member_text(max: usize, description: &str) -> utoipa::openapi::schema::Object {
    utoipa::openapi::schema::ObjectBuilder::new()
        .schema_type(utoipa::openapi::schema::Type::String)
        .pattern(Some(validate::NO_CONTROL_PATTERN))
        .max_length(Some(max))
        .description(Some(description))
        .build()
}

#[cfg(feature = "openapi")]
fn raft_member_id_schema() -> utoipa::openapi::schema::Object {
    raft_member_text(
        64,
        "The agent's own ID for the member (etcd: the member ID, in decimal).",
    )
}

#[cfg(feature = "openapi")]
fn raft_member_name_schema() -> utoipa::openapi::schema::Object {
    raft_member_text(
        validate::MAX_NAME_LEN,
        "The member's name: the node name its sidecar gave it; empty for a member that was added but never started.",
    )
}

#[cfg(feature = "openapi")]
fn raft_member_urls_schema() -> utoipa::openapi::schema::Array {
    utoipa::openapi::schema::ArrayBuilder::new()
        .items(raft_member_text(
            validate::MAX_STATUS_STRING_LEN,
            "a peer URL",
        ))
        .max_items(Some(validate::MAX_RAFT_MEMBER_URLS))
        .build()
}

impl RaftMember {
    pub fn validate(&self) -> Result<(), ValidationError> {
        // Characters, not bytes, as the OpenAPI document's maxLength counts them; the refused
        // characters are those of `NO_CONTROL_PATTERN`.
        let refused = |c: char| {
            c.is_control()
                || matches!(c, '\u{061c}' | '\u{200e}' | '\u{200f}' | '\u{2028}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
        };
        let text_ok = |s: &str, max: usize| s.chars().count() <= max && !s.chars().any(refused);
        let urls_ok = self.peer_urls.len() <= validate::MAX_RAFT_MEMBER_URLS
            && self
                .peer_urls
                .iter()
                .all(|u| text_ok(u, validate::MAX_STATUS_STRING_LEN));
        if !text_ok(&self.id, 64)
            || !text_ok(&self.name, validate::MAX_NAME_LEN)
            || !urls_ok
            || self
                .disconnected_for_ms
                .is_some_and(|ms| ms > validate::MAX_GENERATION)
        {
            return Err(ValidationError::new(
                crate::ErrorCode::InvalidBody,
                format!(
                    "a raft member has an id of at most 64 characters, a name of at most {} characters, at most {} peer URLs of at most {} characters, none with control or bidirectional characters, and disconnected_for_ms at most {}",
                    validate::MAX_NAME_LEN,
                    validate::MAX_RAFT_MEMBER_URLS,
                    validate::MAX_STATUS_STRING_LEN,
                    validate::MAX_GENERATION
                ),
            ));
        }
        Ok(())
    }
}

/// How long the registry has not seen a member of the raft: its half of the evidence for a
/// dead-member cleanup (the leader's peer connections are the other).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Absence {
    pub node: String,
    /// Time since the registry last saw the node live (a member record or a claim), counted
    /// at most from the end of the registry's startup grace.
    pub absent_for_ms: u64,
}

/// Which raft: the generation of its bootstrap grant and a random nonce the registry drew for
/// that grant. The sidecar gives the nonce to the agent (etcd's `--initial-cluster-token`), so
/// two rafts of one cluster name never share a cluster ID and refuse each other's peers.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct RaftIdentity {
    #[cfg_attr(
        feature = "openapi",
        schema(minimum = 0, maximum = 9007199254740991_i64)
    )]
    #[serde(deserialize_with = "crate::types::integral::generation")]
    pub generation: u64,
    /// 16 lowercase hexadecimal digits.
    #[cfg_attr(feature = "openapi", schema(pattern = "^[0-9a-f]{16}$"))]
    pub nonce: String,
}

impl RaftIdentity {
    pub fn validate(&self) -> Result<(), ValidationError> {
        validate::validate_generation(self.generation)?;
        let hex = self.nonce.len() == 16
            && self
                .nonce
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if !hex {
            return Err(ValidationError::new(
                crate::ErrorCode::InvalidBody,
                "raft.nonce must be 16 lowercase hexadecimal digits".to_string(),
            ));
        }
        Ok(())
    }
}

impl std::fmt::Display for RaftIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "generation {} ({})", self.generation, self.nonce)
    }
}

/// The answer to a heartbeat: how long the registry keeps the member and how often to renew.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct HeartbeatResponse {
    pub cluster: String,
    pub node: String,
    /// True when this heartbeat registered the member (it was unknown or had expired).
    pub registered: bool,
    /// The member is forgotten this long after the registry received this heartbeat.
    pub ttl_ms: u64,
    /// Send the next heartbeat within this interval.
    pub interval_ms: u64,
    /// Answered to the raft's leader only (a heartbeat whose status says `is_leader` and
    /// that lists `raft_members`), and only once the registry is past its startup grace: one
    /// entry for each named raft member that the registry does not list live. A member the
    /// registry lists live, or that is not here, is not known to be absent.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub absent: Vec<Absence>,
    /// Answered to an agent: live servers are fewer than the raft's `expect` (it grew, or a
    /// server is gone). An agent that may be a server claims again to take the slot.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub server_slot_open: bool,
    /// The raft's size as the registry knows it (a resize changes it), for the leader's
    /// cleanup, which never leaves fewer than a majority of it; absent while it is not known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expect: Option<u32>,
}

/// One live member, as the registry lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Member {
    pub node: String,
    pub address: String,
    pub role: MemberRole,
    #[serde(default)]
    pub status: AgentStatus,
    #[serde(default)]
    pub meta: BTreeMap<String, String>,
    /// Time since the registry received this member's last heartbeat.
    pub age_ms: u64,
    /// Time until the registry forgets this member unless it heartbeats.
    pub expires_in_ms: u64,
}

/// `GET /v1/clusters/{cluster}/members`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct MembersResponse {
    pub cluster: String,
    /// Changes whenever the cluster's membership changes (a member joins, leaves, expires, or
    /// changes address, role or status).
    pub index: u64,
    /// Live members only, freshest first.
    pub members: Vec<Member>,
}

/// One cluster in `GET /v1/clusters`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ClusterSummary {
    pub cluster: String,
    pub live_members: u32,
    pub live_servers: u32,
    pub live_agents: u32,
    /// The node holding the cluster's bootstrap grant, if one stands.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bootstrap_node: Option<String>,
}

/// `GET /v1/clusters`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ClustersResponse {
    pub clusters: Vec<ClusterSummary>,
}

/// `POST /v1/clusters/{cluster}/claims`: which role should this node start as?
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct ClaimRequest {
    #[cfg_attr(feature = "openapi", schema(schema_with = crate::openapi::name_schema))]
    pub node: String,
    /// Where other members will reach this node (`host:port`).
    #[cfg_attr(feature = "openapi", schema(schema_with = crate::openapi::address_schema))]
    pub address: String,
    /// How many servers the raft wants (Consul's `-bootstrap-expect`).
    #[cfg_attr(feature = "openapi", schema(schema_with = crate::openapi::expect_schema))]
    #[serde(deserialize_with = "crate::types::integral::u32")]
    pub expect: u32,
    /// Set by a node that only ever wants to be a client agent.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub agent_only: bool,
    /// The role this node's agent already runs as, when it claims again while the agent starts:
    /// a registry that lost its data never tells such a node `bootstrap`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_as: Option<GrantedRole>,
    /// The raft this node's agent already belongs to, with `started_as`.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "crate::types::object_only"
    )]
    pub raft: Option<RaftIdentity>,
}

impl ClaimRequest {
    pub fn validate(&self) -> Result<(), ValidationError> {
        validate::validate_name(NameKind::Node, &self.node)?;
        validate::validate_address(&self.address)?;
        validate::validate_expect(self.expect)?;
        if let Some(raft) = &self.raft {
            raft.validate()?;
        }
        Ok(())
    }
}

/// A join target: a live member (or a granted server that has not heartbeated yet).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct JoinTarget {
    pub node: String,
    pub address: String,
    pub role: MemberRole,
}

/// The answer to a claim.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ClaimResponse {
    pub cluster: String,
    pub node: String,
    pub role: GrantedRole,
    /// Every live server this node can join, never itself; empty for `bootstrap`.
    pub join: Vec<JoinTarget>,
    /// The `expect` this decision used.
    pub expect: u32,
    /// Why the registry chose this role, in a sentence.
    pub reason: String,
    /// The claim holds this long; renew it (claim again, or heartbeat) before it runs out.
    pub ttl_ms: u64,
    /// The heartbeat interval to use once the agent runs.
    pub interval_ms: u64,
    /// The raft to start or join: a new identity with `bootstrap`, else the cluster's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub raft: Option<RaftIdentity>,
}

/// `GET /members` in JSON.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct JoinTargetsResponse {
    pub cluster: String,
    pub index: u64,
    /// `host:port` of every live member of the requested role, freshest first.
    pub addresses: Vec<String>,
}

/// `GET /health`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct HealthResponse {
    /// `ok`, or `failing` with the reason in `storage`.
    pub status: String,
    pub storage: String,
    pub uptime_ms: u64,
    pub version: String,
    /// With `--store etcd`: this replica's role and the active one. Absent with sled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replica: Option<ReplicaHealth>,
}

/// A registry replica's role, as `/health` says it (`--store etcd`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ReplicaHealth {
    /// `active`, `standby` (it forwards to the active one), `stale` (etcd cannot be reached:
    /// reads from the last state, writes refused) or `unknown` (between terms).
    pub role: String,
    /// This replica's name (`--replica-name`).
    pub name: String,
    /// The active replica's name and URL, as this one last learnt them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active_url: Option<String>,
    /// When this replica last saw the active replica change (Unix ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_failover_unix_ms: Option<u64>,
    /// How many changes of the active replica this one has seen since it started.
    pub failovers: u64,
}

/// A claim as `GET /v1/clusters/{cluster}` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ClaimSummary {
    pub node: String,
    pub address: String,
    pub role: GrantedRole,
    pub expect: u32,
    /// Time until the claim lapses unless the node claims again or heartbeats.
    pub expires_in_ms: u64,
}

/// The cluster's current bootstrap grant: which node was allowed to start its raft.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct BootstrapSummary {
    pub node: String,
    pub address: String,
    /// How many bootstrap grants this cluster has had; it grows by one per new raft.
    pub generation: u64,
    /// Wall-clock time of the grant, in milliseconds since the Unix epoch.
    pub granted_at_unix_ms: u64,
    /// Whether the holder's claim is still live (while it is, no other node may bootstrap).
    pub live: bool,
}

/// The cluster's raft as the registry knows it: once a member heartbeated after a grant (or
/// the registry relearned it from heartbeats), only an operator's reset starts another.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RaftSummary {
    /// The generation of the grant it grew from; 0 when relearned without a grant.
    pub generation: u64,
    /// The raft's size, authoritative for the slots; absent when relearned without a grant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(minimum = 0, maximum = 2147483647))]
    pub expect: Option<u32>,
    /// When it became known, in milliseconds since the Unix epoch.
    pub known_at_unix_ms: u64,
    /// The identity's nonce, once known (see [`RaftIdentity`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nonce: Option<String>,
    /// The raft is lost: no server of it was live for `--raft-lost-after` (claims are refused
    /// `409 raft_lost` until a survivor comes back or an operator resets the cluster).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub lost: bool,
    /// How long no server of the raft has been live, while none is (counted at most from the
    /// registry's start or resumption).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub no_live_server_for_ms: Option<u64>,
}

/// The raft's membership as its leader last reported it in a heartbeat.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RaftView {
    /// The leader that reported it.
    pub reporter: String,
    /// Time since the report.
    pub age_ms: u64,
    pub members: Vec<RaftMember>,
}

/// What changed between two consecutive raft views.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum RaftChangeKind {
    /// The member appeared in the raft.
    Added,
    /// The member left the raft (it was removed, or it left).
    Removed,
    /// The learner became a voter.
    Promoted,
}

/// One change of the raft's membership, as the leader's views show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RaftChange {
    /// When the registry saw the change, in milliseconds since the Unix epoch.
    pub at_unix_ms: u64,
    pub kind: RaftChangeKind,
    /// The member's ID in the raft.
    pub id: String,
    /// The member's name (empty for a member that never started).
    pub name: String,
    /// The leader whose view showed the change.
    pub reporter: String,
}

/// An operator's last resize of the raft (kept in memory: a restart forgets it, never the size).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ResizeSummary {
    pub at_unix_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_expect: Option<u32>,
    pub expect: u32,
    pub reason: String,
}

/// An operator's reset, as the cluster's history keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ResetSummary {
    pub at_unix_ms: u64,
    pub from_generation: u64,
    pub reason: String,
    /// Live members the operator named to force it.
    pub forced: Vec<String>,
}

/// `GET /v1/clusters/{cluster}`: the members, the claims, the bootstrap grant and the raft.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ClusterDetail {
    pub summary: ClusterSummary,
    pub index: u64,
    pub members: Vec<Member>,
    pub claims: Vec<ClaimSummary>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bootstrap: Option<BootstrapSummary>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub raft: Option<RaftSummary>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_reset: Option<ResetSummary>,
    /// The raft's membership as its leader last reported it (in memory: absent after a restart
    /// until the leader heartbeats).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub raft_view: Option<RaftView>,
    /// The last changes between the leader's consecutive views, oldest first (at most 16).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub raft_changes: Vec<RaftChange>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_resize: Option<ResizeSummary>,
}

/// `POST /v1/clusters/{cluster}/reset`: forget the cluster's raft so that the next claim may
/// bootstrap a new one. A compare-and-set on the generation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct ResetRequest {
    /// The cluster's current generation (`GET /v1/clusters/{cluster}`: `raft.generation`, else
    /// `bootstrap.generation`, else 0); any other refuses the reset.
    #[cfg_attr(
        feature = "openapi",
        schema(minimum = 0, maximum = 9007199254740991_i64)
    )]
    #[serde(deserialize_with = "crate::types::integral::generation")]
    pub generation: u64,
    /// Live members or claimants to forget although they are live; the reset refuses while any
    /// live one is not named here.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[cfg_attr(feature = "openapi", schema(schema_with = crate::openapi::name_list_schema))]
    pub force: Vec<String>,
    /// Why, for the log and the dashboard.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(schema_with = crate::openapi::reason_schema))]
    pub reason: Option<String>,
}

impl ResetRequest {
    pub fn validate(&self) -> Result<(), ValidationError> {
        validate::validate_generation(self.generation)?;
        if self.force.len() > validate::MAX_FORCED_NODES {
            return Err(ValidationError::new(
                crate::ErrorCode::InvalidBody,
                format!("force names at most {} nodes", validate::MAX_FORCED_NODES),
            ));
        }
        for node in &self.force {
            validate::validate_name(NameKind::Node, node)?;
        }
        if let Some(reason) = &self.reason {
            validate::validate_status_text("reason", reason)?;
        }
        Ok(())
    }
}

/// The answer to a reset.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ResetResponse {
    pub cluster: String,
    /// The generation that was reset.
    pub from_generation: u64,
    /// The generation the next bootstrap will get.
    pub next_generation: u64,
    /// The live entries the reset forgot (those named in `force`).
    pub forgot: Vec<String>,
    pub reason: String,
}

/// `POST /v1/clusters/{cluster}/resize`: change the known raft's size (`expect`), an
/// operator's action. Growing lets new nodes, and agents already running, take the new server
/// slots; shrinking is followed by `rollcall-sidecar leave` on the members to remove. A
/// compare-and-set on the generation, like a reset.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct ResizeRequest {
    /// The new number of voters.
    #[cfg_attr(feature = "openapi", schema(schema_with = crate::openapi::expect_schema))]
    #[serde(deserialize_with = "crate::types::integral::u32")]
    pub expect: u32,
    /// The cluster's current raft generation (`GET /v1/clusters/{cluster}`: `raft.generation`);
    /// any other refuses the resize.
    #[cfg_attr(
        feature = "openapi",
        schema(minimum = 0, maximum = 9007199254740991_i64)
    )]
    #[serde(deserialize_with = "crate::types::integral::generation")]
    pub generation: u64,
    /// Why, for the log and the dashboard.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(schema_with = crate::openapi::reason_schema))]
    pub reason: Option<String>,
}

impl ResizeRequest {
    pub fn validate(&self) -> Result<(), ValidationError> {
        validate::validate_expect(self.expect)?;
        validate::validate_generation(self.generation)?;
        if let Some(reason) = &self.reason {
            validate::validate_status_text("reason", reason)?;
        }
        Ok(())
    }
}

/// The answer to a resize.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ResizeResponse {
    pub cluster: String,
    pub generation: u64,
    /// The size before; absent when the raft was relearned without one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_expect: Option<u32>,
    pub expect: u32,
    pub reason: String,
}

/// serde reads a struct from a JSON array as well as from an object; the API documents objects
/// only, so a nested struct given as an array is refused.
pub(crate) fn object_only<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: serde::de::DeserializeOwned,
{
    use serde::de::Error;
    match Option::<serde_json::Map<String, serde_json::Value>>::deserialize(d)? {
        None => Ok(None),
        Some(map) => T::deserialize(serde_json::Value::Object(map))
            .map(Some)
            .map_err(D::Error::custom),
    }
}

/// A JSON object of strings in which every key appears once: serde would otherwise keep the
/// last of two equal keys without a word, and a member's metadata would not be what it sent.
pub(crate) fn unique_keys<'de, D>(d: D) -> Result<BTreeMap<String, String>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    struct UniqueKeys;
    impl<'de> serde::de::Visitor<'de> for UniqueKeys {
        type Value = BTreeMap<String, String>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a JSON object of strings, each key once")
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(
            self,
            mut map: A,
        ) -> Result<Self::Value, A::Error> {
            let mut out = BTreeMap::new();
            while let Some((key, value)) = map.next_entry::<String, String>()? {
                if out.contains_key(&key) {
                    return Err(serde::de::Error::custom(format!(
                        "metadata key {key:?} appears more than once"
                    )));
                }
                out.insert(key, value);
            }
            Ok(out)
        }
    }
    d.deserialize_map(UniqueKeys)
}

/// JSON has one number type: `3` and `3.0` are the same integer to JSON Schema (and to the
/// OpenAPI document), so integer fields accept a number with no fractional part.
pub(crate) mod integral {
    use serde::de::{Deserializer, Error, Unexpected, Visitor};

    struct U32;

    impl Visitor<'_> for U32 {
        type Value = u32;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a whole number from 0 to 4294967295")
        }
        fn visit_u64<E: Error>(self, v: u64) -> Result<u32, E> {
            u32::try_from(v).map_err(|_| E::invalid_value(Unexpected::Unsigned(v), &self))
        }
        fn visit_i64<E: Error>(self, v: i64) -> Result<u32, E> {
            u32::try_from(v).map_err(|_| E::invalid_value(Unexpected::Signed(v), &self))
        }
        fn visit_f64<E: Error>(self, v: f64) -> Result<u32, E> {
            if v.fract() == 0.0 && (0.0..=u32::MAX as f64).contains(&v) {
                Ok(v as u32)
            } else {
                Err(E::invalid_value(Unexpected::Float(v), &self))
            }
        }
    }

    pub fn u32<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
        d.deserialize_any(U32)
    }

    /// A generation: a whole number up to 2^53 - 1 (what every JSON reader holds exactly).
    struct Generation;

    impl Visitor<'_> for Generation {
        type Value = u64;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(
                f,
                "a whole number from 0 to {}",
                crate::validate::MAX_GENERATION
            )
        }
        fn visit_u64<E: Error>(self, v: u64) -> Result<u64, E> {
            Ok(v)
        }
        fn visit_i64<E: Error>(self, v: i64) -> Result<u64, E> {
            u64::try_from(v).map_err(|_| E::invalid_value(Unexpected::Signed(v), &self))
        }
        fn visit_f64<E: Error>(self, v: f64) -> Result<u64, E> {
            let max = crate::validate::MAX_GENERATION as f64;
            if v.fract() == 0.0 && (0.0..=max).contains(&v) {
                Ok(v as u64)
            } else {
                Err(E::invalid_value(Unexpected::Float(v), &self))
            }
        }
    }

    pub fn generation<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        d.deserialize_any(Generation)
    }

    pub fn option_u32<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
        struct Opt;
        impl<'de> Visitor<'de> for Opt {
            type Value = Option<u32>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("null or a whole number")
            }
            fn visit_none<E: Error>(self) -> Result<Option<u32>, E> {
                Ok(None)
            }
            fn visit_unit<E: Error>(self) -> Result<Option<u32>, E> {
                Ok(None)
            }
            fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Option<u32>, D::Error> {
                u32(d).map(Some)
            }
        }
        d.deserialize_option(Opt)
    }

    /// A whole number up to 2^53 - 1, or null (`generation`'s range, for durations in ms).
    pub fn option_generation<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
        struct Opt;
        impl<'de> Visitor<'de> for Opt {
            type Value = Option<u64>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("null or a whole number")
            }
            fn visit_none<E: Error>(self) -> Result<Option<u64>, E> {
                Ok(None)
            }
            fn visit_unit<E: Error>(self) -> Result<Option<u64>, E> {
                Ok(None)
            }
            fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Option<u64>, D::Error> {
                generation(d).map(Some)
            }
        }
        d.deserialize_option(Opt)
    }

    #[cfg(test)]
    mod tests {
        #[test]
        fn a_raft_members_duration_may_be_an_integral_float() {
            let member = |ms: &str| {
                serde_json::from_str::<crate::RaftMember>(&format!(
                    r#"{{"id":"1","disconnected_for_ms":{ms}}}"#
                ))
                .map(|m| m.disconnected_for_ms)
            };
            assert_eq!(member("1131.0").ok(), Some(Some(1131)));
            assert_eq!(member("1131").ok(), Some(Some(1131)));
            assert_eq!(member("null").ok(), Some(None));
            assert!(member("1.5").is_err());
            assert!(member("-1").is_err());
        }

        #[derive(serde::Deserialize)]
        struct T {
            #[serde(deserialize_with = "super::u32")]
            n: u32,
        }

        #[test]
        fn integral_floats_are_integers_and_the_rest_is_refused() {
            let n = |s: &str| serde_json::from_str::<T>(s).map(|t| t.n);
            assert_eq!(n(r#"{"n":3}"#).ok(), Some(3));
            assert_eq!(n(r#"{"n":3.0}"#).ok(), Some(3));
            for bad in [
                r#"{"n":3.5}"#,
                r#"{"n":-1}"#,
                r#"{"n":4294967296}"#,
                r#"{"n":"3"}"#,
                r#"{"n":1e300}"#,
            ] {
                assert!(n(bad).is_err(), "{bad}");
            }
        }
    }
}

#[cfg(test)]
mod unique_key_tests {
    use super::*;

    #[test]
    fn a_metadata_key_given_twice_is_refused() {
        let twice = r#"{"address":"a:1","role":"server","meta":{"k":"1","k":"2"}}"#;
        let err = serde_json::from_str::<HeartbeatRequest>(twice).expect_err("duplicate key");
        assert!(err.to_string().contains("more than once"), "{err}");
        let once = r#"{"address":"a:1","role":"server","meta":{"k":"1","j":"2"}}"#;
        assert_eq!(
            serde_json::from_str::<HeartbeatRequest>(once)
                .expect("ok")
                .meta
                .len(),
            2
        );
    }
}
