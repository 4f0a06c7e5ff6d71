//! The write protocol on a real store in a temp dir, with a paused clock: expiry, renewal and
//! the claim rules as `Membership` applies them. Real time is not the point here; the binary's
//! own tests (`tests/`) cover the same paths over HTTP with real clocks.

use std::collections::BTreeMap;
use std::time::Duration;

use rollcall_protocol::{ClaimRequest, GrantedRole, HeartbeatRequest, MemberRole};

use super::*;

const TTL: Duration = Duration::from_secs(10);

fn timing() -> Timing {
    Timing {
        ttl: TTL,
        interval: Duration::from_secs(2),
        startup_grace: Duration::from_secs(4),
        quiet_period: Duration::from_secs(10),
        rebootstrap_after: None,
    }
}

fn open(dir: &tempfile::TempDir) -> Membership {
    let store = Store::open(dir.path(), 1 << 20).expect("open store");
    let limits = Limits {
        max_clusters: 10,
        max_members_per_cluster: 10,
    };
    Membership::open(store, timing(), limits).expect("open membership")
}

fn heartbeat(role: MemberRole, address: &str) -> HeartbeatRequest {
    HeartbeatRequest {
        address: address.to_string(),
        role,
        status: None,
        meta: BTreeMap::new(),
        raft: None,
    }
}

fn claim_request(node: &str) -> ClaimRequest {
    ClaimRequest {
        node: node.to_string(),
        address: format!("{node}:8300"),
        expect: 3,
        agent_only: false,
        started_as: None,
        raft: None,
    }
}

/// Moves the paused clock on as the sweeper would see it: a tick every 250 ms. (Advancing
/// it further at once is what a frozen process looks like, and `observe` would say so.)
async fn pass(m: &Membership, d: Duration) {
    let tick = Duration::from_millis(250);
    let mut left = d;
    while left > Duration::ZERO {
        let step = left.min(tick);
        tokio::time::advance(step).await;
        m.expire_due();
        left -= step;
    }
}

fn role_of(m: &Membership, node: &str) -> Result<GrantedRole, Duration> {
    match m.claim("c1", &claim_request(node)) {
        Ok((answer, _)) => Ok(answer.role),
        Err(RefusedError::NotReady { retry_after, .. }) => Err(retry_after),
        Err(e) => panic!("{e}"),
    }
}

#[tokio::test(start_paused = true)]
async fn a_member_expires_one_ttl_after_its_last_heartbeat() {
    let dir = tempfile::tempdir().expect("tempdir");
    let m = open(&dir);
    let (answer, durability) = m
        .heartbeat("c1", "n1", heartbeat(MemberRole::Server, "n1:8300"))
        .expect("heartbeat");
    assert!(answer.registered);
    assert_eq!(durability, Durability::FlushBeforeAnswer);
    pass(&m, TTL - Duration::from_millis(1)).await;
    assert_eq!(m.expire_due(), 0);
    assert!(m.member("c1", "n1").is_some());
    tokio::time::advance(Duration::from_millis(1)).await;
    // Reads filter by deadline even before the sweep has run.
    assert!(m.member("c1", "n1").is_none());
    assert_eq!(m.expire_due(), 1);
    assert_eq!(m.members("c1", None).members.len(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_renewal_moves_the_deadline_and_writes_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let m = open(&dir);
    let hb = || heartbeat(MemberRole::Server, "n1:8300");
    let _ = m.heartbeat("c1", "n1", hb()).expect("register");
    let index = m.cluster_index("c1");
    for _ in 0..5 {
        pass(&m, TTL / 2).await;
        let (answer, durability) = m.heartbeat("c1", "n1", hb()).expect("renew");
        assert!(!answer.registered);
        assert_eq!(durability, Durability::NoWait);
        assert_eq!(m.expire_due(), 0);
    }
    assert_eq!(
        m.cluster_index("c1"),
        index,
        "a renewal is no membership change"
    );
    let member = m.member("c1", "n1").expect("still live");
    assert_eq!(member.expires_in_ms, TTL.as_millis() as u64);
}

#[tokio::test(start_paused = true)]
async fn heartbeats_are_durable_for_address_and_role_changes_only() {
    let dir = tempfile::tempdir().expect("tempdir");
    let m = open(&dir);
    let _ = m
        .heartbeat("c1", "n1", heartbeat(MemberRole::Server, "n1:8300"))
        .expect("register");
    let mut with_meta = heartbeat(MemberRole::Server, "n1:8300");
    with_meta.meta.insert("zone".into(), "a".into());
    let (_, durability) = m.heartbeat("c1", "n1", with_meta).expect("meta");
    assert_eq!(durability, Durability::NoWait);
    let (_, durability) = m
        .heartbeat("c1", "n1", heartbeat(MemberRole::Server, "n1:8301"))
        .expect("address");
    assert_eq!(durability, Durability::FlushBeforeAnswer);
    assert_eq!(m.member("c1", "n1").expect("live").address, "n1:8301");
}

#[tokio::test(start_paused = true)]
async fn the_quiet_period_counts_from_the_last_leave() {
    let dir = tempfile::tempdir().expect("tempdir");
    let m = open(&dir);
    // Within the startup grace nobody without a claim is answered.
    assert_eq!(role_of(&m, "n1"), Err(Duration::from_secs(4)));
    pass(&m, Duration::from_secs(4)).await;
    assert_eq!(role_of(&m, "n1"), Ok(GrantedRole::Bootstrap));
    assert_eq!(role_of(&m, "n2"), Ok(GrantedRole::Server));
    // Both leave; the cluster was last seen at the second leave.
    pass(&m, Duration::from_secs(1)).await;
    let _ = m.leave("c1", "n1").expect("leave");
    let _ = m.leave("c1", "n2").expect("leave");
    assert_eq!(role_of(&m, "n3"), Err(TTL));
    pass(&m, TTL - Duration::from_secs(1)).await;
    assert_eq!(role_of(&m, "n3"), Err(Duration::from_secs(1)));
    pass(&m, Duration::from_secs(1)).await;
    assert_eq!(role_of(&m, "n3"), Ok(GrantedRole::Bootstrap));
    let detail = m.cluster_detail("c1").expect("known");
    assert_eq!(detail.bootstrap.map(|b| b.generation), Some(2));
}

#[tokio::test(start_paused = true)]
async fn a_reopened_store_gives_every_entry_a_fresh_ttl() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let m = open(&dir);
        let _ = m
            .heartbeat("c1", "n1", heartbeat(MemberRole::Server, "n1:8300"))
            .expect("register");
        m.store().flush().await.expect("flush");
    }
    tokio::time::advance(TTL * 3).await;
    // The flusher thread lets go of sled a moment after the last Store is dropped.
    let m = loop {
        match Store::open(dir.path(), 1 << 20) {
            Ok(store) => {
                let limits = Limits {
                    max_clusters: 10,
                    max_members_per_cluster: 10,
                };
                break Membership::open(store, timing(), limits).expect("open");
            }
            Err(_) => std::thread::sleep(Duration::from_millis(10)),
        }
    };
    let member = m.member("c1", "n1").expect("loaded");
    assert_eq!(member.expires_in_ms, TTL.as_millis() as u64);
    // The stored member holds a server slot, so nobody may bootstrap beside it.
    pass(&m, Duration::from_secs(4)).await;
    assert_eq!(role_of(&m, "n2"), Ok(GrantedRole::Server));
}
