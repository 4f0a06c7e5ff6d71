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
        raft_lost_after: Duration::from_secs(300),
    }
}

fn open(dir: &tempfile::TempDir) -> Membership {
    let store = Store::open(dir.path(), 1 << 20).expect("open store");
    let limits = Limits {
        max_clusters: 10,
        max_members_per_cluster: 10,
        max_bootstrapped_clusters: 10,
        max_members: 10_000,
        max_metadata_bytes: 1 << 20,
    };
    Membership::open(store, timing(), limits).expect("open membership")
}

fn heartbeat(role: MemberRole, address: &str) -> HeartbeatRequest {
    HeartbeatRequest {
        raft_members: None,
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
                    max_bootstrapped_clusters: 10,
                    max_members: 10_000,
                    max_metadata_bytes: 1 << 20,
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

/// A leader's heartbeat listing the raft's members by name (id `i-<name>`), `down` among them
/// reported disconnected for [`DOWN_FOR`] (two intervals).
fn leader_heartbeat(address: &str, names: &[&str], down: &[&str]) -> HeartbeatRequest {
    leader_heartbeat_down_for(address, names, down, DOWN_FOR)
}

const DOWN_FOR: Duration = Duration::from_secs(4);

fn leader_heartbeat_down_for(
    address: &str,
    names: &[&str],
    down: &[&str],
    down_for: Duration,
) -> HeartbeatRequest {
    let mut hb = heartbeat(MemberRole::Server, address);
    hb.status = Some(rollcall_protocol::AgentStatus {
        is_leader: Some(true),
        ..Default::default()
    });
    hb.raft_members = Some(
        names
            .iter()
            .map(|name| rollcall_protocol::RaftMember {
                id: format!("i-{name}"),
                name: name.to_string(),
                peer_urls: Vec::new(),
                learner: false,
                connected: Some(!down.contains(name)),
                disconnected_for_ms: down.contains(name).then_some(down_for.as_millis() as u64),
            })
            .collect(),
    );
    hb
}

fn absences(answer: &rollcall_protocol::HeartbeatResponse) -> BTreeMap<String, u64> {
    answer
        .absent
        .iter()
        .map(|a| (a.node.clone(), a.absent_for_ms))
        .collect()
}

/// Grace 4 s, TTL 10 s. n3 is last seen at 0 s (inside the grace), n5 at 6 s, n4 never: at 17 s
/// n3 and n4 are absent since the grace ended (13 s), n5 since it was last seen (11 s); the
/// live n2, the reporter n1 and a nameless member never are; inside the grace nobody is.
#[tokio::test(start_paused = true)]
async fn absence_counts_from_the_later_of_last_seen_and_the_grace_end() {
    let dir = tempfile::tempdir().expect("tempdir");
    let m = open(&dir);
    let raft = ["n1", "n2", "n3", "n4", "n5", ""];
    let leader = || leader_heartbeat("n1:8300", &raft, &[]);
    for node in ["n2", "n3", "n5"] {
        let _ = m
            .heartbeat(
                "c1",
                node,
                heartbeat(MemberRole::Server, &format!("{node}:8300")),
            )
            .expect("register");
    }
    let (answer, _) = m.heartbeat("c1", "n1", leader()).expect("leader");
    assert!(answer.absent.is_empty(), "inside the grace: {answer:?}");
    for second in 1..=17u64 {
        pass(&m, Duration::from_secs(1)).await;
        if second % 2 == 0 {
            let _ = m
                .heartbeat("c1", "n2", heartbeat(MemberRole::Server, "n2:8300"))
                .expect("n2");
        }
        if second <= 6 && second % 2 == 0 {
            let _ = m
                .heartbeat("c1", "n5", heartbeat(MemberRole::Server, "n5:8300"))
                .expect("n5");
        }
        if second < 17 {
            let _ = m.heartbeat("c1", "n1", leader()).expect("leader");
        }
    }
    let (answer, _) = m.heartbeat("c1", "n1", leader()).expect("leader");
    let expected: BTreeMap<String, u64> = [("n3", 13_000), ("n4", 13_000), ("n5", 11_000)]
        .into_iter()
        .map(|(n, ms)| (n.to_string(), ms))
        .collect();
    assert_eq!(absences(&answer), expected);
    // Another member's list is not a view, and is answered with nothing.
    let mut follower = leader_heartbeat("n2:8300", &raft, &[]);
    follower.status = None;
    let (answer, _) = m.heartbeat("c1", "n2", follower).expect("n2");
    assert!(answer.absent.is_empty());
}

/// The leader reports n3 disconnected: its slot is free for a new node, and an agent is told
/// a slot is open; once the report is older than a TTL, the slot is n3's again.
#[tokio::test(start_paused = true)]
async fn a_server_the_leader_reports_disconnected_holds_no_slot() {
    let dir = tempfile::tempdir().expect("tempdir");
    let m = open(&dir);
    pass(&m, Duration::from_secs(4)).await;
    assert_eq!(role_of(&m, "n1"), Ok(GrantedRole::Bootstrap));
    assert_eq!(role_of(&m, "n2"), Ok(GrantedRole::Server));
    assert_eq!(role_of(&m, "n3"), Ok(GrantedRole::Server));
    let raft = ["n1", "n2", "n3"];
    let _ = m
        .heartbeat("c1", "n1", leader_heartbeat("n1:8300", &raft, &[]))
        .expect("leader");
    let agent = || heartbeat(MemberRole::Agent, "a1:8300");
    let (answer, _) = m.heartbeat("c1", "a1", agent()).expect("agent");
    assert!(!answer.server_slot_open);
    assert_eq!(role_of(&m, "n4"), Ok(GrantedRole::Agent));
    let _ = m.leave("c1", "n4").expect("leave");
    let _ = m
        .heartbeat("c1", "n1", leader_heartbeat("n1:8300", &raft, &["n3"]))
        .expect("leader");
    // A new node takes n3's place; a running agent keeps its gateway until the raft has room
    // (the leader removed n3).
    let (answer, _) = m.heartbeat("c1", "a1", agent()).expect("agent");
    assert!(!answer.server_slot_open);
    assert_eq!(role_of(&m, "n4"), Ok(GrantedRole::Server));
    let _ = m.leave("c1", "n4").expect("leave");
    // The report ages past a TTL while everyone renews: n3 holds its slot again.
    for _ in 0..6 {
        pass(&m, Duration::from_secs(2)).await;
        for node in ["n1", "n2", "n3"] {
            let _ = m.claim("c1", &claim_request(node)).expect("renew");
        }
        let _ = m.heartbeat("c1", "a1", agent()).expect("agent");
    }
    let (answer, _) = m.heartbeat("c1", "a1", agent()).expect("agent");
    assert!(!answer.server_slot_open);
    assert_eq!(role_of(&m, "n5"), Ok(GrantedRole::Agent));
    let changes = m.cluster_detail("c1").expect("known").raft_changes;
    assert!(changes.is_empty(), "no member left the raft: {changes:?}");
}

/// n3 heartbeats at 0 s and is gone after; at 5 s the leader reports it disconnected for 4 s
/// (since 1 s): its slot is free. Then n3 heartbeats (a task replaced at a new address, back in
/// the raft before the leader's next view): its own word is fresher, and a new node is an
/// agent, not a server waiting for a cleanup that will not come.
#[tokio::test(start_paused = true)]
async fn a_server_that_heartbeats_after_its_disconnection_began_keeps_its_slot() {
    let dir = tempfile::tempdir().expect("tempdir");
    let m = open(&dir);
    pass(&m, Duration::from_secs(4)).await;
    for node in ["n1", "n2", "n3"] {
        let _ = role_of(&m, node);
    }
    let raft = ["n1", "n2", "n3"];
    let beat = |node: &str, address: &str| {
        let _ = m
            .heartbeat("c1", node, heartbeat(MemberRole::Server, address))
            .expect("server heartbeat");
    };
    beat("n2", "n2:8300");
    beat("n3", "n3:8300");
    pass(&m, Duration::from_secs(5)).await;
    beat("n2", "n2:8300");
    let _ = m
        .heartbeat("c1", "n1", leader_heartbeat("n1:8300", &raft, &["n3"]))
        .expect("leader");
    assert_eq!(
        role_of(&m, "n4"),
        Ok(GrantedRole::Server),
        "n3 reported gone since after its last heartbeat"
    );
    let _ = m.leave("c1", "n4").expect("leave");
    pass(&m, Duration::from_millis(100)).await;
    beat("n3", "n3-new:8300");
    assert_eq!(
        role_of(&m, "n4"),
        Ok(GrantedRole::Agent),
        "n3 heartbeated since the report"
    );
}

/// A server that heartbeated after its disconnection began keeps its slot, however long the
/// leader reports it gone: the leader's peer connection to a replaced task flaps while its
/// name resolves again, but the task itself is back.
#[tokio::test(start_paused = true)]
async fn a_server_that_heartbeated_during_its_disconnection_keeps_its_slot() {
    let dir = tempfile::tempdir().expect("tempdir");
    let m = open(&dir);
    pass(&m, Duration::from_secs(4)).await;
    for node in ["n1", "n2", "n3"] {
        let _ = role_of(&m, node);
    }
    let raft = ["n1", "n2", "n3"];
    pass(&m, Duration::from_secs(2)).await;
    for node in ["n2", "n3"] {
        let _ = m
            .heartbeat(
                "c1",
                node,
                heartbeat(MemberRole::Server, &format!("{node}:8300")),
            )
            .expect("server heartbeat");
    }
    pass(&m, Duration::from_millis(100)).await;
    // Disconnected for 4 s: since before n3's heartbeat 0.1 s ago.
    let _ = m
        .heartbeat("c1", "n1", leader_heartbeat("n1:8300", &raft, &["n3"]))
        .expect("leader");
    assert_eq!(role_of(&m, "n4"), Ok(GrantedRole::Agent));
}

/// The leader reports n3 disconnected for less than an interval (one observation of a flap):
/// n3, silent for 5 s but within its TTL, keeps its slot until the disconnection lasts.
#[tokio::test(start_paused = true)]
async fn a_disconnection_shorter_than_an_interval_frees_no_slot() {
    let dir = tempfile::tempdir().expect("tempdir");
    let m = open(&dir);
    pass(&m, Duration::from_secs(4)).await;
    for node in ["n1", "n2", "n3"] {
        let _ = role_of(&m, node);
    }
    let raft = ["n1", "n2", "n3"];
    for node in ["n2", "n3"] {
        let _ = m
            .heartbeat(
                "c1",
                node,
                heartbeat(MemberRole::Server, &format!("{node}:8300")),
            )
            .expect("server heartbeat");
    }
    pass(&m, Duration::from_secs(5)).await;
    let short =
        |ms| leader_heartbeat_down_for("n1:8300", &raft, &["n3"], Duration::from_millis(ms));
    let _ = m.heartbeat("c1", "n1", short(0)).expect("leader");
    assert_eq!(role_of(&m, "n4"), Ok(GrantedRole::Agent), "just seen gone");
    let _ = m.leave("c1", "n4").expect("leave");
    let _ = m.heartbeat("c1", "n1", short(1_999)).expect("leader");
    assert_eq!(role_of(&m, "n4"), Ok(GrantedRole::Agent), "gone 1.999 s");
    let _ = m.leave("c1", "n4").expect("leave");
    let _ = m.heartbeat("c1", "n1", short(2_000)).expect("leader");
    assert_eq!(
        role_of(&m, "n4"),
        Ok(GrantedRole::Server),
        "gone an interval"
    );
}
