//! Every bound of the registry, hit on purpose: each answers with a clear error, never a
//! crash or a silently dropped write, and the registry keeps serving.

mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::TestRegistry;
use rollcall_protocol::{ClientError, ErrorCode, HeartbeatRequest, MemberRole};

fn hb(address: &str) -> HeartbeatRequest {
    HeartbeatRequest {
        raft_members: None,
        address: address.into(),
        role: MemberRole::Server,
        status: None,
        meta: BTreeMap::new(),
        raft: None,
    }
}

fn status_and_code(e: ClientError) -> (u16, ErrorCode) {
    match e {
        ClientError::Api { status, code, .. } => (status, code),
        other => panic!("expected an API error, got {other:?}"),
    }
}

#[tokio::test]
async fn members_per_cluster_are_bounded() {
    let reg = TestRegistry::start(&[
        "--ttl",
        "60s",
        "--interval",
        "1s",
        "--max-members-per-cluster",
        "3",
    ])
    .await;
    let c = reg.client();
    for i in 0..3 {
        c.heartbeat("full", &format!("n{i}"), &hb(&format!("10.0.0.{i}:1")))
            .await
            .expect("under the bound");
    }
    let err = c
        .heartbeat("full", "n3", &hb("10.0.0.3:1"))
        .await
        .expect_err("over the bound");
    assert_eq!(status_and_code(err), (429, ErrorCode::LimitExceeded));
    assert_eq!(reg.limit_refusals("max-members-per-cluster").await, 1);
    // Known members still renew, and other clusters are not affected.
    c.heartbeat("full", "n0", &hb("10.0.0.0:1"))
        .await
        .expect("renewal of a known member");
    c.heartbeat("other", "n3", &hb("10.0.0.3:1"))
        .await
        .expect("another cluster");
    let list = c.members("full", None).await.expect("list");
    assert_eq!(list.members.len(), 3);
    assert!(
        !list.members.iter().any(|m| m.node == "n3"),
        "the refused member was not stored"
    );
}

#[tokio::test]
async fn clusters_per_registry_are_bounded() {
    let reg =
        TestRegistry::start(&["--ttl", "60s", "--interval", "1s", "--max-clusters", "2"]).await;
    let c = reg.client();
    c.heartbeat("a", "n", &hb("10.0.0.1:1"))
        .await
        .expect("first cluster");
    c.heartbeat("b", "n", &hb("10.0.0.1:1"))
        .await
        .expect("second cluster");
    let err = c
        .heartbeat("c", "n", &hb("10.0.0.1:1"))
        .await
        .expect_err("third cluster");
    assert_eq!(status_and_code(err), (429, ErrorCode::LimitExceeded));
    assert_eq!(c.clusters().await.expect("clusters").clusters.len(), 2);
    // A heartbeat makes its cluster's raft known, so these clusters count against
    // --max-bootstrapped-clusters, which follows --max-clusters unless set (clusters with only
    // live claims and no raft are counted by --max-clusters: tests/cluster_slots.rs).
    assert_eq!(reg.limit_refusals("max-bootstrapped-clusters").await, 1);
    assert_eq!(
        reg.limit_refusals("max-members").await,
        0,
        "every limit is listed"
    );
}

#[tokio::test]
async fn connections_over_the_limit_get_503_and_the_rest_are_served() {
    let reg =
        TestRegistry::start(&["--max-connections", "4", "--header-read-timeout", "30s"]).await;
    let addr = format!("127.0.0.1:{}", reg.port);
    // Four idle connections take every slot.
    let mut held: Vec<TcpStream> = (0..4)
        .map(|_| TcpStream::connect(&addr).expect("connect"))
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    let mut extra = TcpStream::connect(&addr).expect("connect");
    extra
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let mut answer = String::new();
    let _ = extra.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 503"), "got {answer:?}");
    assert!(answer.contains("limit_exceeded"), "got {answer:?}");
    // One slot freed: a request is served again. Not /health, which the reserve beyond the
    // limit answers anyway (tests/connections.rs).
    drop(held.pop());
    let ok = common::eventually(Duration::from_secs(5), || async {
        reg.client().clusters().await.ok()
    })
    .await;
    assert!(ok.is_some(), "a freed slot serves requests again");
    // Every slot freed before /metrics is read, so that its request finds one at once.
    held.clear();
    let refused = common::eventually(Duration::from_secs(5), || async {
        reg.client().clusters().await.ok()?;
        Some(reg.limit_refusals("max-connections").await)
    })
    .await;
    assert!(refused.is_some_and(|n| n >= 1), "counted: {refused:?}");
}

#[tokio::test]
async fn a_slow_client_is_cut_off_and_cannot_hold_the_server() {
    let reg = TestRegistry::start(&["--header-read-timeout", "1s"]).await;
    let mut slow = TcpStream::connect(format!("127.0.0.1:{}", reg.port)).expect("connect");
    slow.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n")
        .expect("partial headers");
    slow.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let started = Instant::now();
    // Meanwhile everyone else is served.
    for _ in 0..5 {
        reg.client()
            .health()
            .await
            .expect("served while a slow client dawdles");
    }
    let mut buf = Vec::new();
    let _ = slow.read_to_end(&mut buf);
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(5),
        "the slow client was held for {took:?}"
    );
    assert!(
        !String::from_utf8_lossy(&buf).contains("200 OK"),
        "the slow request must not be served"
    );
}

#[tokio::test]
async fn a_request_whose_body_never_arrives_times_out_with_408() {
    let reg =
        TestRegistry::start(&["--request-timeout", "1s", "--header-read-timeout", "10s"]).await;
    let mut slow = TcpStream::connect(format!("127.0.0.1:{}", reg.port)).expect("connect");
    slow.write_all(
        b"PUT /v1/clusters/t/members/n1 HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 60\r\n\r\n{\"address\":",
    )
    .expect("headers and part of the body");
    slow.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut buf = [0u8; 512];
    let n = slow.read(&mut buf).expect("an answer");
    let answer = String::from_utf8_lossy(&buf[..n]);
    assert!(answer.starts_with("HTTP/1.1 408"), "got {answer:?}");
    assert!(answer.contains("\"timeout\""), "got {answer:?}");
    assert_eq!(reg.limit_refusals("request-timeout").await, 1);
    assert!(
        reg.client()
            .members("t", None)
            .await
            .expect("list")
            .members
            .is_empty(),
        "nothing was stored"
    );
}

#[tokio::test]
async fn tokens_never_reach_the_log() {
    let reg = TestRegistry::start_logged(
        &[
            "--ttl",
            "60s",
            "--interval",
            "1s",
            "--token",
            "root-token-123",
            "--cluster-token",
            "blue=blue-token-456",
        ],
        "debug",
    )
    .await;
    let blue = reg.client_with_token("blue-token-456");
    blue.heartbeat("blue", "n1", &hb("10.0.0.1:1"))
        .await
        .expect("write");
    let _ = blue.heartbeat("green", "n1", &hb("10.0.0.1:1")).await;
    let _ = reg
        .client_with_token("wrong-token-789")
        .heartbeat("blue", "n2", &hb("10.0.0.2:1"))
        .await;
    reg.client_with_token("root-token-123")
        .heartbeat("green", "n1", &hb("10.0.0.1:1"))
        .await
        .expect("write");
    let log = reg.log_text();
    assert!(
        log.contains("member registered"),
        "the log was captured: {log}"
    );
    for secret in ["root-token-123", "blue-token-456", "wrong-token-789"] {
        assert!(!log.contains(secret), "{secret} appears in the log");
    }
}

/// The data directory on a 3 MiB tmpfs fills up: the writes that cannot be stored are refused
/// with 507 and the registry keeps serving reads. Needs root (to mount), as CI and `test.sh` run.
#[tokio::test]
async fn a_full_disk_refuses_writes_and_keeps_serving_reads() {
    let mount = tempfile::tempdir().expect("mount point");
    let status = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=3m", "tmpfs"])
        .arg(mount.path())
        .status()
        .expect("run mount");
    assert!(
        status.success(),
        "mounting a tmpfs needs root; run the tests as test.sh does"
    );
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount")
                .arg("-l")
                .arg(&self.0)
                .status();
        }
    }
    let _unmount = Unmount(mount.path().to_path_buf());
    let data = mount.path().join("data");
    let reg = TestRegistry::start_on(
        &data,
        &[
            "--ttl",
            "10m",
            "--interval",
            "1s",
            "--max-members-per-cluster",
            "1000000",
        ],
    )
    .await;
    let c = reg.client();
    let padding = "p".repeat(250);
    let mut acknowledged = 0usize;
    let mut refusal = None;
    for i in 0..200_000 {
        let mut req = hb(&format!(
            "10.{}.{}.{}:8300",
            i / 65536 % 256,
            i / 256 % 256,
            i % 256
        ));
        for k in 0..16 {
            req.meta.insert(format!("k{k}"), padding.clone());
        }
        match c.heartbeat("fill", &format!("node-{i}"), &req).await {
            Ok(_) => acknowledged += 1,
            Err(e) => {
                refusal = Some(e);
                break;
            }
        }
    }
    let refusal = refusal.expect("the disk never filled up");
    match &refusal {
        ClientError::Api {
            status: 507,
            code: ErrorCode::StorageError,
            ..
        } => {}
        other => panic!("expected 507 storage_error, got {other:?}"),
    }
    assert!(acknowledged > 100, "only {acknowledged} writes fit");
    // Reads still work, and every acknowledged member is listed.
    let list = c.members("fill", None).await.expect("reads are served");
    assert!(
        list.members.len() >= acknowledged,
        "{} listed, {acknowledged} acknowledged",
        list.members.len()
    );
    let again = c
        .heartbeat("fill", "one-more", &hb("10.9.9.9:1"))
        .await
        .expect_err("still full");
    assert!(
        matches!(again, ClientError::Api { status: 507, .. }),
        "{again:?}"
    );
    drop(reg);
}

/// An open-file limit below what `--max-connections` needs is refused at start, naming both
/// numbers (it was not noticed: new clients hung and the log filled with accept errors); one
/// the hard limit allows is raised.
#[test]
fn an_open_file_limit_below_max_connections_is_refused_at_start() {
    let temp = tempfile::tempdir().expect("tempdir");
    // A port that is taken, so that a registry that passes the check stops at once.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let taken = taken.local_addr().expect("address").to_string();
    let run = |max_connections: &str| {
        std::process::Command::new("sh")
            .arg("-c")
            // A hard limit of 200 for this shell and what it execs.
            .arg("ulimit -Sn 100 && ulimit -Hn 200 && exec \"$0\" \"$@\"")
            .arg(env!("CARGO_BIN_EXE_rollcall-registry"))
            .args(["--listen", &taken, "--data-dir"])
            .arg(temp.path().join("data"))
            .args(["--max-connections", max_connections])
            .output()
            .expect("run the registry")
    };
    let refused = run("4096");
    assert_eq!(refused.status.code(), Some(64), "{refused:?}");
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(said.contains("4160") && said.contains("200"), "{said}");
    // 120 connections need 184 files: the soft limit of 100 is raised within the hard 200,
    // and the registry goes on to start (and then stops: its port is taken).
    let raised = run("120");
    let said = String::from_utf8_lossy(&raised.stderr);
    assert_ne!(raised.status.code(), Some(64), "{said}");
    assert!(!said.contains("open-file limit"), "{said}");
}
