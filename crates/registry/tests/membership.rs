//! Heartbeats, listing, leaving, expiry and restarts, against the real binary.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::{eventually, TestRegistry, FAST};
use rollcall_protocol::{AgentStatus, HeartbeatRequest, MemberRole};

fn hb(address: &str, role: MemberRole) -> HeartbeatRequest {
    HeartbeatRequest {
        raft_members: None,
        address: address.into(),
        role,
        status: None,
        meta: BTreeMap::new(),
        raft: None,
    }
}

/// Heartbeats `node` as a server every `every` until the returned task is aborted.
fn keep_renewing(
    c: &rollcall_protocol::RegistryClient,
    cluster: &'static str,
    node: &'static str,
    address: &'static str,
    every: Duration,
) -> tokio::task::JoinHandle<()> {
    let c = c.clone();
    tokio::spawn(async move {
        loop {
            let _ = c
                .heartbeat(cluster, node, &hb(address, MemberRole::Server))
                .await;
            tokio::time::sleep(every).await;
        }
    })
}

#[tokio::test]
async fn register_renew_list_and_leave() {
    let reg = TestRegistry::start(FAST).await;
    let c = reg.client();

    let first = c
        .heartbeat("web", "n1", &hb("10.0.0.1:8301", MemberRole::Server))
        .await
        .expect("register");
    assert!(first.registered);
    assert_eq!(first.ttl_ms, 2000);
    assert_eq!(first.interval_ms, 500);
    let again = c
        .heartbeat("web", "n1", &hb("10.0.0.1:8301", MemberRole::Server))
        .await
        .expect("renew");
    assert!(!again.registered, "a renewal is not a registration");

    let mut with_status = hb("10.0.0.2:8301", MemberRole::Agent);
    with_status.status = Some(AgentStatus {
        in_raft: Some(true),
        leader: Some("10.0.0.1:8300".into()),
        peers: Some(3),
        is_leader: Some(false),
    });
    with_status.meta.insert("dc".into(), "eu-1".into());
    c.heartbeat("web", "n2", &with_status)
        .await
        .expect("register n2");

    let list = c.members("web", None).await.expect("list");
    let names: Vec<_> = list.members.iter().map(|m| m.node.as_str()).collect();
    assert_eq!(names, ["n2", "n1"], "freshest first");
    let n2 = &list.members[0];
    assert_eq!(n2.status.peers, Some(3));
    assert_eq!(n2.meta.get("dc").map(String::as_str), Some("eu-1"));
    assert!(
        n2.expires_in_ms > 1500 && n2.expires_in_ms <= 2000,
        "{}",
        n2.expires_in_ms
    );

    let servers = c
        .members("web", Some(MemberRole::Server))
        .await
        .expect("servers");
    assert_eq!(servers.members.len(), 1);
    assert_eq!(servers.members[0].node, "n1");

    let targets = c.join_targets("web", None).await.expect("join targets");
    assert_eq!(targets.addresses, ["10.0.0.2:8301", "10.0.0.1:8301"]);
    let text = reg
        .get_text("/members?cluster=web&format=text&role=server")
        .await;
    assert_eq!(text, "10.0.0.1:8301\n");

    let clusters = c.clusters().await.expect("clusters");
    assert_eq!(clusters.clusters.len(), 1);
    assert_eq!(
        (
            clusters.clusters[0].live_servers,
            clusters.clusters[0].live_agents
        ),
        (1, 1)
    );

    c.leave("web", "n1").await.expect("leave");
    let list = c.members("web", None).await.expect("list");
    assert_eq!(list.members.len(), 1);
    assert_eq!(list.members[0].node, "n2");
    // Leaving twice is not an error for the client; the registry answers 404 the second time.
    c.leave("web", "n1").await.expect("second leave");
}

#[tokio::test]
async fn index_moves_only_when_membership_changes() {
    let reg = TestRegistry::start(FAST).await;
    let c = reg.client();
    c.heartbeat("a", "n1", &hb("10.0.0.1:1", MemberRole::Server))
        .await
        .expect("register");
    let i1 = c.members("a", None).await.expect("list").index;
    c.heartbeat("a", "n1", &hb("10.0.0.1:1", MemberRole::Server))
        .await
        .expect("renew");
    let i2 = c.members("a", None).await.expect("list").index;
    assert_eq!(i1, i2, "a plain renewal does not change the index");
    c.heartbeat("a", "n1", &hb("10.0.0.9:1", MemberRole::Server))
        .await
        .expect("move");
    let i3 = c.members("a", None).await.expect("list").index;
    assert!(i3 > i2, "an address change moves the index");
}

#[tokio::test]
async fn member_expires_within_ttl_plus_one_second() {
    let reg = TestRegistry::start(FAST).await;
    let c = reg.client();
    c.heartbeat("exp", "gone", &hb("10.0.0.1:1", MemberRole::Server))
        .await
        .expect("register");
    let sent = Instant::now();
    c.heartbeat("exp", "stays", &hb("10.0.0.2:1", MemberRole::Server))
        .await
        .expect("register");
    let stays = keep_renewing(&c, "exp", "stays", "10.0.0.2:1", Duration::from_millis(250));
    let gone_after = eventually(Duration::from_secs(4), || {
        let c = c.clone();
        async move {
            let list = c.members("exp", None).await.ok()?;
            (!list.members.iter().any(|m| m.node == "gone")).then(Instant::now)
        }
    })
    .await
    .expect("the silent member never expired");
    let took = gone_after - sent;
    assert!(
        took >= Duration::from_millis(1900),
        "expired early, after {took:?}"
    );
    assert!(
        took <= Duration::from_secs(3),
        "expired after {took:?}, more than TTL + 1s"
    );
    let list = c.members("exp", None).await.expect("list");
    assert!(
        list.members.iter().any(|m| m.node == "stays"),
        "the heartbeating member must stay"
    );
    stays.abort();
}

#[tokio::test]
async fn restart_keeps_members_and_gives_them_a_fresh_ttl() {
    let mut reg = TestRegistry::start_process(&[
        "--ttl",
        "4s",
        "--interval",
        "1s",
        "--startup-grace",
        "1s",
        "--quiet-period",
        "1s",
    ])
    .await;
    let c = reg.client();
    for i in 0..20 {
        c.heartbeat(
            "keep",
            &format!("n{i}"),
            &hb(&format!("10.0.0.{i}:8300"), MemberRole::Server),
        )
        .await
        .expect("register");
    }
    // Let most of the TTL run out before the crash: a restart must not expire them.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    reg.kill9();
    reg.restart().await;
    let c = reg.client();
    let list = c.members("keep", None).await.expect("list");
    assert_eq!(
        list.members.len(),
        20,
        "every acknowledged registration survives SIGKILL"
    );
    for m in &list.members {
        assert!(
            m.expires_in_ms > 3000,
            "{} got {}ms instead of a fresh TTL",
            m.node,
            m.expires_in_ms
        );
    }
}

#[tokio::test]
async fn sigterm_drains_flushes_and_exits_zero() {
    let mut reg = TestRegistry::start_process(FAST).await;
    let c = reg.client();
    c.heartbeat("t", "n1", &hb("10.0.0.1:1", MemberRole::Server))
        .await
        .expect("register");
    let status = reg.terminate();
    assert!(status.success(), "exit status {status:?}");
    reg.restart().await;
    assert_eq!(
        reg.client()
            .members("t", None)
            .await
            .expect("list")
            .members
            .len(),
        1
    );
}

/// The pre-serialised lists: a change is seen by every reader at once (even fifty readers racing
/// the rebuild), and the ages are refreshed in the background without a change.
#[tokio::test]
async fn cached_lists_follow_changes_at_once_and_refresh_ages() {
    let reg = TestRegistry::start(FAST).await;
    let c = reg.client();
    c.heartbeat("cache", "n1", &hb("10.0.1.1:8301", MemberRole::Server))
        .await
        .expect("register n1");
    let first = c.members("cache", None).await.expect("list");
    assert_eq!(first.members.len(), 1);

    // A registration changes the index: no reader may get the old body afterwards.
    c.heartbeat("cache", "n2", &hb("10.0.1.2:8301", MemberRole::Server))
        .await
        .expect("register n2");
    let readers: Vec<_> = (0..50)
        .map(|_| {
            let c = c.clone();
            tokio::spawn(async move { c.members("cache", None).await.expect("list") })
        })
        .collect();
    for r in readers {
        let list = r.await.expect("reader");
        assert_eq!(
            list.members.len(),
            2,
            "a reader got the list from before n2"
        );
        assert!(list.index > first.index);
    }
    let text = reg.get_text("/members?cluster=cache&format=text").await;
    assert_eq!(text.lines().count(), 2, "{text:?}");

    // Without any change the ages still move: a body older than 250 ms is rebuilt behind the
    // readers' backs, so within a second of polling the age shows the time that passed.
    let index = c.members("cache", None).await.expect("list").index;
    tokio::time::sleep(Duration::from_millis(600)).await;
    let aged = eventually(Duration::from_secs(1), || async {
        let list = c.members("cache", None).await.expect("list");
        assert_eq!(list.index, index, "nothing changed membership");
        let n1 = list.members.iter().find(|m| m.node == "n1")?.age_ms;
        (n1 >= 500).then_some(n1)
    })
    .await;
    assert!(aged.is_some(), "the cached list's ages never moved");
}

/// Conditional lists: `If-None-Match` with the ETag of an earlier answer is answered `304`
/// with no body while the same members are listed, and the whole list once they change (a
/// registration, or a member passing its deadline with no write at all), or once the registry
/// restarted (its indexes start again, its ETags do not repeat).
#[tokio::test]
async fn lists_answer_304_while_their_members_are_the_same() {
    let mut reg = TestRegistry::start_process(FAST).await;
    let c = reg.client();
    c.heartbeat("etag", "n1", &hb("10.0.2.1:8301", MemberRole::Server))
        .await
        .expect("register n1");
    let http = reqwest::Client::new();
    let base = reg.url();
    let get = |path: &'static str, etag: Option<String>| {
        let (http, url) = (http.clone(), format!("{base}{path}"));
        async move {
            let mut request = http.get(url);
            if let Some(etag) = etag {
                request = request.header("if-none-match", etag);
            }
            let response = request.send().await.expect("list");
            let status = response.status().as_u16();
            let etag = response
                .headers()
                .get("etag")
                .map(|v| v.to_str().expect("ascii etag").to_string());
            let body = response.text().await.expect("body");
            (status, etag, body)
        }
    };
    for path in [
        "/v1/clusters/etag/members",
        "/members?cluster=etag",
        "/members?cluster=etag&format=text",
    ] {
        let (status, etag, body) = get(path, None).await;
        assert_eq!(status, 200, "{path}");
        let etag = etag.expect("an ETag");
        assert!(etag.starts_with("W/\""), "{etag}");
        assert!(body.contains("10.0.2.1"), "{body}");
        let (status, again, body) = get(path, Some(etag.clone())).await;
        assert_eq!((status, body.as_str()), (304, ""), "{path}: unchanged");
        assert_eq!(again.as_deref(), Some(etag.as_str()));
        let (status, _, body) = get(path, Some("W/\"other\"".into())).await;
        assert_eq!(status, 200, "{path}: another ETag");
        assert!(body.contains("10.0.2.1"));
    }

    // A renewal changes nothing listed: still 304.
    let (_, etag, _) = get("/v1/clusters/etag/members", None).await;
    c.heartbeat("etag", "n1", &hb("10.0.2.1:8301", MemberRole::Server))
        .await
        .expect("renew n1");
    let (status, _, _) = get("/v1/clusters/etag/members", etag.clone()).await;
    assert_eq!(status, 304, "a renewal changes no member listed");

    // A registration: the whole list.
    c.heartbeat("etag", "n2", &hb("10.0.2.2:8301", MemberRole::Server))
        .await
        .expect("register n2");
    let (status, two, body) = get("/v1/clusters/etag/members", etag).await;
    assert_eq!(status, 200, "a new member changes the list");
    assert!(body.contains("10.0.2.2"), "{body}");

    // n2 renewed and n1 not: once n1 is past its deadline (TTL 2 s) the list changes, whether
    // or not the sweep has written anything yet.
    let renewing = keep_renewing(
        &c,
        "etag",
        "n2",
        "10.0.2.2:8301",
        Duration::from_millis(200),
    );
    let changed = eventually(Duration::from_secs(5), || {
        let etag = two.clone();
        let get = &get;
        async move {
            let (status, _, body) = get("/v1/clusters/etag/members", etag).await;
            (status == 200 && !body.contains("10.0.2.1")).then_some(())
        }
    })
    .await;
    renewing.abort();
    assert!(changed.is_some(), "n1's expiry never changed the answer");

    // A restart: the ETag of the last run matches nothing.
    let (_, before, _) = get("/members?cluster=etag", None).await;
    reg.restart().await;
    let (status, after, _) = get("/members?cluster=etag", before.clone()).await;
    assert_eq!(status, 200, "an ETag of the last run matched");
    assert_ne!(after, before);
}
