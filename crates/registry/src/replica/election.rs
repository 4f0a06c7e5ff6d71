//! Which replica is active: etcd's election pattern, reduced to what one active replica needs.
//!
//! A replica campaigns by granting itself a lease and, in one transaction, creating the leader
//! key on that lease if the key does not exist (`create_revision == 0`), or reading it if it
//! does. The one whose transaction created the key is active; the key's `create_revision` (the
//! transaction's revision) is its term's fence, compared by every write of the term
//! (`store/etcd`). The others are standbys: they read the key to learn whom to forward to,
//! and campaign again as soon as it is gone.
//!
//! The active replica renews its lease every third of its TTL. It counts itself active only
//! until the send time of its last successful renewal plus the TTL granted (less a margin for
//! clock drift, [`counted`]): etcd cannot expire
//! the lease (and let a standby create the key) before that moment, since it received the
//! renewal after it was sent. A replica frozen past that moment finds, when it resumes, that
//! its clock (monotonic, running while it was stopped) is past the deadline, before any
//! renewal could tell it.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::store::etcd::client::{Compare, EtcdClient, EtcdError, Op};

/// The leader key's value: who is active and where to forward to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Leader {
    pub name: String,
    pub url: String,
}

/// What one campaign found.
#[derive(Debug, Clone)]
pub enum Campaign {
    /// This replica is active: its lease, the key's `create_revision`, the lease's deadline.
    Won {
        lease: i64,
        create_revision: i64,
        ttl: Duration,
        deadline: Instant,
    },
    /// Another replica is active (its value, and the key's `create_revision`).
    Lost {
        leader: Leader,
        create_revision: i64,
    },
}

/// One campaign for `key` with a lease of `ttl`.
pub async fn campaign(
    client: &EtcdClient,
    key: &[u8],
    me: &Leader,
    ttl: Duration,
) -> Result<Campaign, EtcdError> {
    let sent = Instant::now();
    let (lease, ttl) = client.lease_grant(ttl).await?;
    let value = serde_json::to_vec(me).unwrap_or_default();
    let outcome = client
        .txn(
            &[Compare::CreateRevision(key.to_vec(), 0)],
            &[Op::Put {
                key: key.to_vec(),
                value,
                lease,
            }],
            &[Op::Get { key: key.to_vec() }],
        )
        .await;
    let outcome = match outcome {
        Ok(o) => o,
        Err(e) => {
            let _ = client.lease_revoke(lease).await;
            return Err(e);
        }
    };
    if outcome.succeeded {
        return Ok(Campaign::Won {
            lease,
            create_revision: outcome.revision,
            ttl,
            deadline: sent + counted(ttl),
        });
    }
    // Not needed: a standby holds no lease.
    let _ = client.lease_revoke(lease).await;
    let held = outcome.got.into_iter().flatten().next();
    match held {
        Some(kv) => Ok(Campaign::Lost {
            leader: decode_leader(&kv.value),
            create_revision: kv.create_revision,
        }),
        // Gone between the compare and the read: campaign again.
        None => Err(EtcdError::Protocol(
            "the leader key vanished during the campaign".into(),
        )),
    }
}

/// The leader key's holder now, if any.
pub async fn current(client: &EtcdClient, key: &[u8]) -> Result<Option<(Leader, i64)>, EtcdError> {
    Ok(client
        .get(key)
        .await?
        .map(|kv| (decode_leader(&kv.value), kv.create_revision)))
}

/// Renews the lease; the new deadline, or why it cannot be renewed.
pub async fn renew(client: &EtcdClient, lease: i64, ttl: Duration) -> Result<Instant, Renewal> {
    let sent = Instant::now();
    match client.lease_keepalive(lease).await {
        Ok(left) if left > 0 => Ok(sent + counted(ttl)),
        Ok(_) => Err(Renewal::Expired),
        Err(e) => Err(Renewal::Unreachable(e)),
    }
}

/// Why a renewal failed.
#[derive(Debug)]
pub enum Renewal {
    /// etcd says the lease is gone: another replica may be active already.
    Expired,
    /// etcd did not answer; the lease may still hold until its deadline.
    Unreachable(EtcdError),
}

/// How much of a lease's TTL this replica counts as its own: the TTL less 2% and 100 ms, for
/// a clock that runs a little slower here than on etcd's leader.
pub fn counted(ttl: Duration) -> Duration {
    ttl.saturating_sub(ttl / 50 + Duration::from_millis(100))
}

fn decode_leader(value: &[u8]) -> Leader {
    serde_json::from_slice(value).unwrap_or_else(|_| Leader {
        name: String::from_utf8_lossy(value).into_owned(),
        url: String::new(),
    })
}
