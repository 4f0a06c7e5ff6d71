//! The storage format: the records the registry keeps in sled, and their explicit conversion
//! from and to the registry's own types.
//!
//! The stored types are private to this module and have their own role and status types, so a
//! change to a wire type (`rollcall_protocol`) can never change the disk format by accident: it
//! has to be made here, with a new [`RECORD_VERSION`] and a conversion of the old one. Each value
//! is a JSON object with a version field `v`; `tests::records_of_format_1_still_load` pins the
//! bytes that format 1 wrote.
//!
//! Long on purpose: the whole disk format (every stored type and its conversions) is read and
//! reviewed as one thing.

use std::collections::BTreeMap;

use rollcall_protocol::{AgentStatus, GrantedRole, MemberRole, RaftIdentity};
use serde::{Deserialize, Serialize};

/// Version of the stored records. A record with another version is refused by [`decode`] (and
/// skipped at load with a warning) instead of being misread.
pub const RECORD_VERSION: u32 = 1;

/// A member as the registry keeps it: everything its last heartbeat said, without the expiry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberRecord {
    pub address: String,
    pub role: MemberRole,
    pub status: AgentStatus,
    pub meta: BTreeMap<String, String>,
    /// Wall-clock time of the first registration, for people reading the record.
    pub registered_at_unix_ms: u64,
    /// The raft the member reported, if it reported one.
    pub raft: Option<RaftIdentity>,
}

/// A granted claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimRecord {
    pub role: GrantedRole,
    pub address: String,
    pub expect: u32,
    pub granted_at_unix_ms: u64,
}

/// The last bootstrap grant of a cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrantRecord {
    pub node: String,
    pub address: String,
    pub expect: u32,
    /// 1 for the cluster's first raft, then one more for each new raft.
    pub generation: u64,
    pub granted_at_unix_ms: u64,
    /// The random half of the new raft's identity (16 hex digits); absent in grants of format
    /// 1 written before identities.
    pub nonce: Option<String>,
}

impl GrantRecord {
    /// The identity of the raft this grant starts, when the grant has a nonce.
    pub fn identity(&self) -> Option<RaftIdentity> {
        self.nonce.as_ref().map(|nonce| RaftIdentity {
            generation: self.generation,
            nonce: nonce.clone(),
        })
    }
}

/// What a cluster has been through: the raft the registry knows it has, the highest generation
/// it ever had, when a member was last seen, and the last reset. Decisive for the claim rules,
/// so it survives restarts.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HistoryRecord {
    /// The cluster's known raft, if any.
    pub raft: Option<RaftRecord>,
    /// The highest generation the cluster ever had; the next bootstrap gets one more.
    pub last_generation: u64,
    /// When an entry of the cluster was last live (wall clock), for the quiet period and
    /// `--rebootstrap-after` across restarts.
    pub last_seen_unix_ms: Option<u64>,
    /// The operator's last reset, for people.
    pub last_reset: Option<ResetRecord>,
}

/// A known raft.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RaftRecord {
    pub generation: u64,
    pub expect: Option<u32>,
    pub known_at_unix_ms: u64,
    /// The identity's nonce, once the registry knows it (from the grant, or relearned from a
    /// member's heartbeat).
    pub nonce: Option<String>,
}

impl RaftRecord {
    pub fn identity(&self) -> Option<RaftIdentity> {
        self.nonce.as_ref().map(|nonce| RaftIdentity {
            generation: self.generation,
            nonce: nonce.clone(),
        })
    }
}

/// An operator's reset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResetRecord {
    pub at_unix_ms: u64,
    pub from_generation: u64,
    pub reason: String,
    /// Live members the operator named to force the reset.
    pub forced: Vec<String>,
}

/// A record type with a stored form.
pub trait Record: Sized {
    #[doc(hidden)]
    type Stored: Serialize + for<'de> Deserialize<'de>;
    #[doc(hidden)]
    fn to_stored(&self) -> Self::Stored;
    #[doc(hidden)]
    fn from_stored(stored: Self::Stored) -> Result<Self, String>;
}

/// The bytes stored for `record`.
pub fn encode<R: Record>(record: &R) -> Vec<u8> {
    // Serialising these plain structs cannot fail: no maps with non-string keys, no floats.
    serde_json::to_vec(&record.to_stored()).unwrap_or_default()
}

/// Decodes a stored record, refusing other versions. Public for the fuzz targets.
pub fn decode<R: Record>(bytes: &[u8]) -> Result<R, String> {
    let stored: R::Stored = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
    R::from_stored(stored)
}

fn check_version(v: u32) -> Result<(), String> {
    if v == RECORD_VERSION {
        Ok(())
    } else {
        Err(format!("record version {v} is not {RECORD_VERSION}"))
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum StoredMemberRole {
    Server,
    Agent,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum StoredGrantedRole {
    Bootstrap,
    Server,
    Agent,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StoredStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    in_raft: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    leader: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    peers: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    is_leader: Option<bool>,
}

#[doc(hidden)]
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoredMember {
    v: u32,
    address: String,
    role: StoredMemberRole,
    #[serde(default)]
    status: StoredStatus,
    #[serde(default)]
    meta: BTreeMap<String, String>,
    registered_at_unix_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    raft: Option<StoredIdentity>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StoredIdentity {
    generation: u64,
    nonce: String,
}

#[doc(hidden)]
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoredClaim {
    v: u32,
    role: StoredGrantedRole,
    address: String,
    expect: u32,
    granted_at_unix_ms: u64,
}

#[doc(hidden)]
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoredGrant {
    v: u32,
    node: String,
    address: String,
    expect: u32,
    generation: u64,
    granted_at_unix_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    nonce: Option<String>,
}

impl From<MemberRole> for StoredMemberRole {
    fn from(role: MemberRole) -> Self {
        match role {
            MemberRole::Server => StoredMemberRole::Server,
            MemberRole::Agent => StoredMemberRole::Agent,
        }
    }
}

impl From<StoredMemberRole> for MemberRole {
    fn from(role: StoredMemberRole) -> Self {
        match role {
            StoredMemberRole::Server => MemberRole::Server,
            StoredMemberRole::Agent => MemberRole::Agent,
        }
    }
}

impl From<GrantedRole> for StoredGrantedRole {
    fn from(role: GrantedRole) -> Self {
        match role {
            GrantedRole::Bootstrap => StoredGrantedRole::Bootstrap,
            GrantedRole::Server => StoredGrantedRole::Server,
            GrantedRole::Agent => StoredGrantedRole::Agent,
        }
    }
}

impl From<StoredGrantedRole> for GrantedRole {
    fn from(role: StoredGrantedRole) -> Self {
        match role {
            StoredGrantedRole::Bootstrap => GrantedRole::Bootstrap,
            StoredGrantedRole::Server => GrantedRole::Server,
            StoredGrantedRole::Agent => GrantedRole::Agent,
        }
    }
}

impl From<&AgentStatus> for StoredStatus {
    fn from(s: &AgentStatus) -> Self {
        StoredStatus {
            in_raft: s.in_raft,
            leader: s.leader.clone(),
            peers: s.peers,
            is_leader: s.is_leader,
        }
    }
}

impl From<StoredStatus> for AgentStatus {
    fn from(s: StoredStatus) -> Self {
        AgentStatus {
            in_raft: s.in_raft,
            leader: s.leader,
            peers: s.peers,
            is_leader: s.is_leader,
        }
    }
}

impl Record for MemberRecord {
    type Stored = StoredMember;

    fn to_stored(&self) -> StoredMember {
        StoredMember {
            v: RECORD_VERSION,
            address: self.address.clone(),
            role: self.role.into(),
            status: (&self.status).into(),
            meta: self.meta.clone(),
            registered_at_unix_ms: self.registered_at_unix_ms,
            raft: self.raft.as_ref().map(|r| StoredIdentity {
                generation: r.generation,
                nonce: r.nonce.clone(),
            }),
        }
    }

    fn from_stored(s: StoredMember) -> Result<Self, String> {
        check_version(s.v)?;
        Ok(MemberRecord {
            address: s.address,
            role: s.role.into(),
            status: s.status.into(),
            meta: s.meta,
            registered_at_unix_ms: s.registered_at_unix_ms,
            raft: s.raft.map(|r| RaftIdentity {
                generation: r.generation,
                nonce: r.nonce,
            }),
        })
    }
}

impl Record for ClaimRecord {
    type Stored = StoredClaim;

    fn to_stored(&self) -> StoredClaim {
        StoredClaim {
            v: RECORD_VERSION,
            role: self.role.into(),
            address: self.address.clone(),
            expect: self.expect,
            granted_at_unix_ms: self.granted_at_unix_ms,
        }
    }

    fn from_stored(s: StoredClaim) -> Result<Self, String> {
        check_version(s.v)?;
        Ok(ClaimRecord {
            role: s.role.into(),
            address: s.address,
            expect: s.expect,
            granted_at_unix_ms: s.granted_at_unix_ms,
        })
    }
}

impl Record for GrantRecord {
    type Stored = StoredGrant;

    fn to_stored(&self) -> StoredGrant {
        StoredGrant {
            v: RECORD_VERSION,
            node: self.node.clone(),
            address: self.address.clone(),
            expect: self.expect,
            generation: self.generation,
            granted_at_unix_ms: self.granted_at_unix_ms,
            nonce: self.nonce.clone(),
        }
    }

    fn from_stored(s: StoredGrant) -> Result<Self, String> {
        check_version(s.v)?;
        Ok(GrantRecord {
            node: s.node,
            address: s.address,
            expect: s.expect,
            generation: s.generation,
            granted_at_unix_ms: s.granted_at_unix_ms,
            nonce: s.nonce,
        })
    }
}

#[doc(hidden)]
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoredHistory {
    v: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    raft: Option<StoredRaft>,
    last_generation: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    last_seen_unix_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    last_reset: Option<StoredReset>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StoredRaft {
    generation: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    expect: Option<u32>,
    known_at_unix_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    nonce: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StoredReset {
    at_unix_ms: u64,
    from_generation: u64,
    reason: String,
    #[serde(default)]
    forced: Vec<String>,
}

impl Record for HistoryRecord {
    type Stored = StoredHistory;

    fn to_stored(&self) -> StoredHistory {
        StoredHistory {
            v: RECORD_VERSION,
            raft: self.raft.as_ref().map(|r| StoredRaft {
                generation: r.generation,
                expect: r.expect,
                known_at_unix_ms: r.known_at_unix_ms,
                nonce: r.nonce.clone(),
            }),
            last_generation: self.last_generation,
            last_seen_unix_ms: self.last_seen_unix_ms,
            last_reset: self.last_reset.as_ref().map(|r| StoredReset {
                at_unix_ms: r.at_unix_ms,
                from_generation: r.from_generation,
                reason: r.reason.clone(),
                forced: r.forced.clone(),
            }),
        }
    }

    fn from_stored(s: StoredHistory) -> Result<Self, String> {
        check_version(s.v)?;
        Ok(HistoryRecord {
            raft: s.raft.map(|r| RaftRecord {
                generation: r.generation,
                expect: r.expect,
                known_at_unix_ms: r.known_at_unix_ms,
                nonce: r.nonce,
            }),
            last_generation: s.last_generation,
            last_seen_unix_ms: s.last_seen_unix_ms,
            last_reset: s.last_reset.map(|r| ResetRecord {
                at_unix_ms: r.at_unix_ms,
                from_generation: r.from_generation,
                reason: r.reason,
                forced: r.forced,
            }),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Byte for byte what format 1 wrote (serde's field order of the first release), so that a
    /// change to the protocol's types or to the records above cannot silently stop old data
    /// from loading.
    const MEMBER_V1: &[u8] = br#"{"v":1,"address":"10.0.0.1:8300","role":"server","status":{"in_raft":true,"leader":"n1","peers":3,"is_leader":false},"meta":{"zone":"a"},"registered_at_unix_ms":1700000000000}"#;
    const CLAIM_V1: &[u8] = br#"{"v":1,"role":"bootstrap","address":"10.0.0.1:8300","expect":3,"granted_at_unix_ms":1700000000001}"#;
    const GRANT_V1: &[u8] = br#"{"v":1,"node":"n1","address":"10.0.0.1:8300","expect":3,"generation":2,"granted_at_unix_ms":1700000000002}"#;

    #[test]
    fn records_of_format_1_still_load() {
        let member: MemberRecord = decode(MEMBER_V1).expect("member");
        assert_eq!(member.role, MemberRole::Server);
        assert_eq!(member.status.peers, Some(3));
        assert_eq!(member.status.leader.as_deref(), Some("n1"));
        assert_eq!(member.meta.get("zone").map(String::as_str), Some("a"));
        let claim: ClaimRecord = decode(CLAIM_V1).expect("claim");
        assert_eq!(claim.role, GrantedRole::Bootstrap);
        assert_eq!(claim.expect, 3);
        let grant: GrantRecord = decode(GRANT_V1).expect("grant");
        assert_eq!(grant.generation, 2);
        assert_eq!(grant.node, "n1");
    }

    #[test]
    fn format_1_is_written_as_it_was() {
        let member: MemberRecord = decode(MEMBER_V1).expect("member");
        assert_eq!(encode(&member), MEMBER_V1);
        let claim: ClaimRecord = decode(CLAIM_V1).expect("claim");
        assert_eq!(encode(&claim), CLAIM_V1);
        let grant: GrantRecord = decode(GRANT_V1).expect("grant");
        assert_eq!(encode(&grant), GRANT_V1);
    }

    #[test]
    fn a_history_round_trips() {
        let history = HistoryRecord {
            raft: Some(RaftRecord {
                generation: 2,
                expect: Some(3),
                known_at_unix_ms: 7,
                nonce: Some("00ff00ff00ff00ff".into()),
            }),
            last_generation: 2,
            last_seen_unix_ms: Some(9),
            last_reset: Some(ResetRecord {
                at_unix_ms: 5,
                from_generation: 1,
                reason: "lost".into(),
                forced: vec!["a".into()],
            }),
        };
        assert_eq!(decode::<HistoryRecord>(&encode(&history)), Ok(history));
        let empty = HistoryRecord::default();
        assert_eq!(decode::<HistoryRecord>(&encode(&empty)), Ok(empty));
    }

    #[test]
    fn decode_refuses_garbage_and_other_versions() {
        assert!(decode::<MemberRecord>(b"").is_err());
        assert!(decode::<MemberRecord>(
            b"{\"v\":2,\"address\":\"a:1\",\"role\":\"server\",\"registered_at_unix_ms\":0}"
        )
        .is_err());
        assert!(decode::<MemberRecord>(
            b"{\"v\":1,\"address\":\"a:1\",\"role\":\"server\",\"registered_at_unix_ms\":0}"
        )
        .is_ok());
    }
}
