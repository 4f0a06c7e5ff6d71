//! Storage that lies is caught (issue 12, item 6): the real `rollcall-registry` binary on sled
//! files damaged the way disks and people damage them.
//!
//! - One flipped byte inside acknowledged records in sled's `db`, or the log cut to half: the
//!   registry exits 65 with one error line; `--accept-data-loss` starts it, says what was
//!   lost, and brings the bootstrap grant back from the copy.
//! - Twenty random flips: never a silent start with fewer members or no grant.
//! - The data directory removed under load: `/health` fails within a second or two and no
//!   durable write sent after the removal is answered 2xx.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{after_grace, TestRegistry, FAST};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rollcall_protocol::{ClaimRequest, GrantedRole, HeartbeatRequest, MemberRole};

const EXIT_DATA_LOSS: i32 = 65;
const MEMBERS: usize = 300;
const CLUSTERS: [&str; 3] = ["m0", "m1", "m2"];
const GRANT_ADDRESS: &str = "10.99.0.1:8300";

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

fn member_address(i: usize) -> String {
    format!("10.7.{}.{}:8300", i / 200, i % 200 + 1)
}

/// A data directory holding `MEMBERS` acknowledged members over three clusters and one
/// bootstrap grant (cluster `g1`, granted between the 150th and 151st member), left by a
/// registry killed with SIGKILL. Returns the directory (kept by the returned guard).
async fn acknowledged_data() -> (tempfile::TempDir, PathBuf) {
    let mut reg = TestRegistry::start_process(&[
        "--ttl",
        "10m",
        "--interval",
        "500ms",
        "--startup-grace",
        "500ms",
        "--quiet-period",
        "500ms",
    ])
    .await;
    after_grace(&reg).await;
    let c = reg.client();
    for i in 0..MEMBERS {
        if i == MEMBERS / 2 {
            let answer = c
                .claim(
                    "g1",
                    &ClaimRequest {
                        node: "first".into(),
                        address: GRANT_ADDRESS.into(),
                        expect: 3,
                        agent_only: false,
                        started_as: None,
                        raft: None,
                    },
                )
                .await
                .expect("claim");
            assert_eq!(answer.role, GrantedRole::Bootstrap);
        }
        c.heartbeat(CLUSTERS[i % 3], &format!("n{i}"), &hb(&member_address(i)))
            .await
            .expect("register");
    }
    reg.kill9();
    let keep = tempfile::tempdir().expect("tempdir");
    let pristine = keep.path().join("pristine");
    copy_dir(&reg.data_dir, &pristine);
    (keep, pristine)
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("create copy");
    for entry in std::fs::read_dir(from).expect("read dir") {
        let entry = entry.expect("entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("type").is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy file");
        }
    }
}

/// A copy of the pristine directory with `damage` done to its `db` file.
fn damaged(pristine: &Path, name: &str, damage: impl FnOnce(&mut Vec<u8>)) -> PathBuf {
    let dir = pristine.with_file_name(name);
    let _ = std::fs::remove_dir_all(&dir);
    copy_dir(pristine, &dir);
    let db = dir.join("db");
    let mut bytes = std::fs::read(&db).expect("read db");
    damage(&mut bytes);
    std::fs::write(&db, &bytes).expect("write db");
    dir
}

/// Where `needle` first occurs in `haystack`.
fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

enum Outcome {
    Exited { code: Option<i32>, stderr: String },
    Serving(Serving),
}

/// A registry process this test started; killed by pid when dropped.
struct Serving {
    child: Child,
    url: String,
    log: PathBuf,
}

impl Drop for Serving {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Serving {
    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// How many of the `MEMBERS` members are listed, and the bootstrap grant of `g1`.
    async fn contents(&self) -> (usize, Option<rollcall_protocol::BootstrapSummary>) {
        let c = rollcall_protocol::RegistryClient::new(&self.url, None).expect("client");
        let mut n = 0;
        for cluster in CLUSTERS {
            n += c
                .members(cluster, None)
                .await
                .map(|m| m.members.len())
                .unwrap_or(0);
        }
        let grant = c.cluster("g1").await.ok().and_then(|d| d.bootstrap);
        (n, grant)
    }
}

/// Starts the binary on `dir` and waits until it exits or answers `/health`.
async fn start(dir: &Path, extra: &[&str]) -> Outcome {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let log = dir.with_extension(format!("{port}.log"));
    let child = Command::new(env!("CARGO_BIN_EXE_rollcall-registry"))
        .arg("--listen")
        .arg(format!("127.0.0.1:{port}"))
        .arg("--data-dir")
        .arg(dir)
        .args(["--ttl", "10m", "--interval", "500ms"])
        .args(extra)
        .env("ROLLCALL_LOG", "info")
        .env("NO_COLOR", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::from(std::fs::File::create(&log).expect("log")))
        .spawn()
        .expect("spawn rollcall-registry");
    let mut serving = Serving {
        child,
        url: format!("http://127.0.0.1:{port}"),
        log,
    };
    let client = rollcall_protocol::RegistryClient::new(&serving.url, None).expect("client");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(Some(status)) = serving.child.try_wait() {
            let stderr = serving.log_text();
            return Outcome::Exited {
                code: status.code(),
                stderr,
            };
        }
        if client.health().await.is_ok() {
            return Outcome::Serving(serving);
        }
        assert!(
            Instant::now() < deadline,
            "neither exited nor served within 10s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The refusal: exit 65 and exactly one error line, which says so.
fn assert_refused(outcome: Outcome, what: &str) {
    match outcome {
        Outcome::Exited { code, stderr } => {
            assert_eq!(code, Some(EXIT_DATA_LOSS), "{what}: {stderr}");
            let errors: Vec<&str> = stderr.lines().filter(|l| l.contains("ERROR")).collect();
            assert_eq!(errors.len(), 1, "{what}: one error line expected: {stderr}");
            assert!(
                errors[0].contains("refusing to start") && errors[0].contains("--accept-data-loss"),
                "{what}: {}",
                errors[0]
            );
        }
        Outcome::Serving(s) => panic!("{what}: started on damaged storage: {}", s.log_text()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flipped_byte_or_a_cut_log_stops_the_registry_and_the_override_restores_the_grant() {
    let (_keep, pristine) = acknowledged_data().await;
    let db = std::fs::read(pristine.join("db")).expect("db");

    // Untouched: everything is there.
    let intact = damaged(&pristine, "intact", |_| {});
    match start(&intact, &[]).await {
        Outcome::Serving(s) => {
            let (n, grant) = s.contents().await;
            assert_eq!(n, MEMBERS);
            assert_eq!(grant.expect("grant").node, "first");
        }
        Outcome::Exited { code, stderr } => panic!("intact data refused ({code:?}): {stderr}"),
    }

    // One flipped byte inside an acknowledged record: members early, in the middle and late
    // in the log, and the grant itself.
    let mut positions = Vec::new();
    for i in [
        5,
        MEMBERS / 4,
        MEMBERS / 2 + 10,
        MEMBERS * 3 / 4,
        MEMBERS - 3,
    ] {
        let at = find(&db, member_address(i).as_bytes()).expect("member in the log");
        positions.push((format!("member {i}"), at + 3));
    }
    let at = find(&db, GRANT_ADDRESS.as_bytes()).expect("grant in the log");
    positions.push(("the grant".to_string(), at + 2));
    for (what, position) in &positions {
        let dir = damaged(&pristine, &format!("flip-{position}"), |b| {
            b[*position] ^= 0x55
        });
        assert_refused(
            start(&dir, &[]).await,
            &format!("a flip in {what} (byte {position})"),
        );
    }

    // The log cut to half.
    let half = damaged(&pristine, "half", |b| b.truncate(b.len() / 2));
    assert_refused(start(&half, &[]).await, "the log cut to half");

    // The log cut and the copy of grants and histories damaged too: refused, and said.
    let both = damaged(&pristine, "half-and-copy", |b| b.truncate(b.len() / 2));
    for name in ["rollcall-copy-a", "rollcall-copy-b"] {
        let path = both.join(name);
        let mut bytes = std::fs::read(&path).expect("copy");
        bytes[40] ^= 0x01;
        std::fs::write(&path, &bytes).expect("damage the copy");
    }
    match start(&both, &[]).await {
        Outcome::Exited { code, stderr } => {
            assert_eq!(code, Some(EXIT_DATA_LOSS), "{stderr}");
            assert!(stderr.contains("damaged too"), "{stderr}");
        }
        Outcome::Serving(s) => panic!("started with a damaged copy: {}", s.log_text()),
    }

    // The override, on the earliest flip (sled keeps almost nothing): it starts, says what
    // was lost, and the grant comes back from the copy.
    let early = pristine.with_file_name(format!("flip-{}", positions[0].1));
    let Outcome::Serving(s) = start(&early, &["--accept-data-loss"]).await else {
        panic!("--accept-data-loss did not start the registry");
    };
    let (n, grant) = s.contents().await;
    let log = s.log_text();
    assert!(n < MEMBERS, "the flip lost nothing? {n} members");
    let grant = grant.expect("the grant is restored from the copy");
    assert_eq!((grant.node.as_str(), grant.generation), ("first", 1));
    assert!(log.contains("STARTING ON DAMAGED STORAGE"), "{log}");
    assert!(log.contains("acknowledged writes are lost"), "{log}");
    assert!(
        log.contains("grants=g1"),
        "the restored grant is named: {log}"
    );
    drop(s);
    // The mark started again from what sled kept: the next start needs no override.
    let Outcome::Serving(s) = start(&early, &[]).await else {
        panic!("the second start after --accept-data-loss was refused");
    };
    assert_eq!(s.contents().await.1.expect("grant").node, "first");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_random_flips_never_start_silently_with_less() {
    let seed: u64 = std::env::var("ROLLCALL_FLIP_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(rand::random);
    eprintln!("random flips: seed {seed} (ROLLCALL_FLIP_SEED={seed} repeats them)");
    let mut rng = StdRng::seed_from_u64(seed);
    let (_keep, pristine) = acknowledged_data().await;
    let len = std::fs::metadata(pristine.join("db")).expect("db").len() as usize;
    let (mut refused, mut whole, mut other) = (0, 0, Vec::new());
    for round in 0..20 {
        let position = rng.gen_range(0..len);
        let bit = 1u8 << rng.gen_range(0..8);
        let dir = damaged(&pristine, &format!("random-{round}"), |b| {
            b[position] ^= bit
        });
        match start(&dir, &[]).await {
            Outcome::Exited {
                code: Some(EXIT_DATA_LOSS),
                ..
            } => refused += 1,
            Outcome::Exited { code, stderr } => other.push(format!(
                "byte {position}: exit {code:?}: {}",
                stderr.lines().last().unwrap_or("")
            )),
            Outcome::Serving(s) => {
                let (n, grant) = s.contents().await;
                assert!(
                    n == MEMBERS && grant.is_some(),
                    "a flip of byte {position} (seed {seed}) started silently with {n} members and grant {grant:?}"
                );
                whole += 1;
            }
        }
    }
    eprintln!(
        "random flips: {refused} refused with exit 65, {whole} started with everything, {} other: {other:?}",
        other.len()
    );
    // A flip sled itself reports stops the registry too (exit 1), which is not silent either.
    assert!(
        other.iter().all(|o| !o.contains("exit Some(0)")),
        "{other:?}"
    );
}

/// A durable write a load task sent, and whether it was acknowledged.
#[derive(Debug, Clone)]
struct Sent {
    at: Instant,
    /// A heartbeat (`true`: a new node's registration) or a claim.
    heartbeat: bool,
    node: String,
    address: String,
    acknowledged: bool,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_data_directory_removed_under_load_fails_health_and_every_durable_write() {
    let mut args = vec!["--ttl", "10m"];
    args.extend_from_slice(&FAST[2..]);
    let mut reg = TestRegistry::start_process(&args).await;
    after_grace(&reg).await;
    let seen: Arc<Mutex<Vec<Sent>>> = Arc::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut tasks = Vec::new();
    for worker in 0..4 {
        let (c, seen, stop) = (reg.client(), seen.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let mut i = 0;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                i += 1;
                let node = format!("w{worker}-{i}");
                let heartbeat = i % 3 != 0;
                let address = format!("10.4.{worker}.{}:1", i % 250);
                let at = Instant::now();
                let acknowledged = if heartbeat {
                    c.heartbeat("load", &node, &hb(&address)).await.is_ok()
                } else {
                    let request = ClaimRequest {
                        node: node.clone(),
                        address: address.clone(),
                        expect: 3,
                        agent_only: false,
                        started_as: None,
                        raft: None,
                    };
                    c.claim(&format!("c{}", i % 5), &request).await.is_ok()
                };
                seen.lock().expect("seen").push(Sent {
                    at,
                    heartbeat,
                    node,
                    address,
                    acknowledged,
                });
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(400)).await;
    std::fs::remove_dir_all(&reg.data_dir).expect("rm -rf the data directory");
    let removed = Instant::now();

    // /health fails, with the reason.
    let health_url = format!("{}/health", reg.url());
    let failing_after = loop {
        let response = reqwest::get(&health_url).await.expect("health answers");
        if response.status() == 503 {
            let body = response.text().await.expect("body");
            // `rm -rf` takes the mark file before the directory: a check that runs in between
            // finds the mark gone, one after finds the directory gone. Either is the reason.
            assert!(
                body.contains("failing")
                    && (body.contains("the data directory")
                        || body.contains("the high-water mark file")),
                "{body}"
            );
            break removed.elapsed();
        }
        assert!(
            removed.elapsed() < Duration::from_secs(2),
            "/health still ok 2s after the removal"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    tokio::time::sleep(Duration::from_millis(800)).await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    for t in tasks {
        t.await.expect("load task");
    }

    let seen = seen.lock().expect("seen").clone();
    let (before, after): (Vec<Sent>, Vec<Sent>) = seen.into_iter().partition(|w| w.at < removed);
    let n_acknowledged_before = before.iter().filter(|w| w.acknowledged).count();
    assert!(
        n_acknowledged_before > 20,
        "too little load before the removal"
    );
    assert!(
        after.len() > 20,
        "too little load after the removal: {}",
        after.len()
    );
    let acknowledged_after: Vec<&str> = after
        .iter()
        .filter(|w| w.acknowledged)
        .map(|w| w.node.as_str())
        .collect();
    assert!(
        acknowledged_after.is_empty(),
        "{} durable writes sent after the removal were answered 2xx: {acknowledged_after:?}",
        acknowledged_after.len()
    );
    // Memory alone must not turn a heartbeat into a 2xx renewal: neither a member registered
    // before the removal nor a node whose registration was refused is answered 2xx.
    let c = reg.client();
    let registered = before
        .iter()
        .find(|w| w.heartbeat && w.acknowledged)
        .expect("a registration before the removal");
    let renewal = c
        .heartbeat("load", &registered.node, &hb(&registered.address))
        .await;
    assert!(
        renewal.is_err(),
        "a renewal answered 2xx without a data directory"
    );
    let refused = after
        .iter()
        .find(|w| w.heartbeat)
        .expect("a refused registration");
    let retry = c
        .heartbeat("load", &refused.node, &hb(&refused.address))
        .await;
    assert!(
        retry.is_err(),
        "a retried registration answered 2xx without a data directory"
    );
    eprintln!(
        "removal: /health failing after {} ms; {} durable writes before ({n_acknowledged_before} acknowledged), {} after (0 acknowledged)",
        failing_after.as_millis(),
        before.len(),
        after.len()
    );

    // Restarted on the (now empty) directory: nothing acknowledged after the removal exists.
    reg.restart().await;
    let listed = reg.client().members("load", None).await.expect("members");
    let after_nodes: std::collections::HashSet<&String> = after.iter().map(|w| &w.node).collect();
    assert!(
        listed
            .members
            .iter()
            .all(|m| !after_nodes.contains(&m.node)),
        "a write refused after the removal is listed after the restart"
    );
}
