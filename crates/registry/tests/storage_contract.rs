//! The storage contract (`store/mod.rs`), run against both backends: sled in a temp dir and a
//! real etcd on loopback. Each case opens a store, writes through the same `Store` interface,
//! and reopens it (sled: the same directory; etcd: a new term's store on the same prefix) to
//! see what survived. Then what only etcd has: the fence.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::etcd::EtcdCluster;
use rollcall_protocol::{AgentStatus, GrantedRole, MemberRole};
use rollcall_registry::store::etcd::client::{EtcdClient, EtcdOptions, Op};
use rollcall_registry::store::etcd::{EtcdStore, Fence};
use rollcall_registry::store::{
    ClaimRecord, GrantRecord, HistoryRecord, Loaded, MemberRecord, RaftRecord, Store,
};

/// How a case opens its store again.
enum Backend {
    Sled(tempfile::TempDir),
    Etcd(EtcdClient, String),
}

impl Backend {
    async fn open(&self) -> Store {
        match self {
            Backend::Sled(dir) => {
                // The flusher thread lets go of the database a moment after the last clone.
                for _ in 0..500 {
                    match Store::open(dir.path(), 1 << 20) {
                        Ok(s) => return s,
                        Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
                    }
                }
                panic!("sled did not reopen")
            }
            Backend::Etcd(client, prefix) => Store::new(
                EtcdStore::open(client.clone(), prefix, None)
                    .await
                    .expect("open etcd store"),
            ),
        }
    }
}

fn member(address: &str) -> MemberRecord {
    MemberRecord {
        address: address.into(),
        role: MemberRole::Server,
        status: AgentStatus::default(),
        meta: BTreeMap::from([("zone".to_string(), "a".to_string())]),
        registered_at_unix_ms: 1,
        raft: None,
    }
}

fn claim(role: GrantedRole) -> ClaimRecord {
    ClaimRecord {
        role,
        address: "n1:2380".into(),
        expect: 3,
        granted_at_unix_ms: 2,
    }
}

fn grant(generation: u64) -> GrantRecord {
    GrantRecord {
        node: "n1".into(),
        address: "n1:2380".into(),
        expect: 3,
        generation,
        granted_at_unix_ms: 3,
        nonce: Some("0123456789abcdef".into()),
    }
}

fn history(generation: u64) -> HistoryRecord {
    HistoryRecord {
        raft: Some(RaftRecord {
            generation,
            expect: Some(3),
            known_at_unix_ms: 4,
            nonce: Some("0123456789abcdef".into()),
        }),
        last_generation: generation,
        last_seen_unix_ms: Some(5),
        last_reset: None,
    }
}

fn sorted(mut loaded: Loaded) -> Loaded {
    loaded
        .members
        .sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
    loaded
        .claims
        .sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
    loaded.grants.sort_by(|a, b| a.0.cmp(&b.0));
    loaded.histories.sort_by(|a, b| a.0.cmp(&b.0));
    loaded
}

/// The contract's cases, in order, on one backend.
async fn contract(backend: Backend) {
    // Flushed writes survive a reopen, and read back as written.
    let store = backend.open().await;
    assert!(store.load().expect("load").members.is_empty());
    store
        .put_member("c1", "n1", &member("n1:2380"))
        .expect("put");
    store
        .put_member("c1", "n2", &member("n2:2380"))
        .expect("put");
    store
        .put_claim("c1", "n1", &claim(GrantedRole::Bootstrap))
        .expect("put");
    store.put_grant("c1", &grant(1)).expect("put");
    store.put_history("c1", &history(1)).expect("put");
    store.put_grant("c2", &grant(7)).expect("put");
    store.put_history("c2", &history(7)).expect("put");
    store.flush().await.expect("flush");
    drop(store);
    let store = backend.open().await;
    let loaded = sorted(store.load().expect("load"));
    assert_eq!(
        loaded.members,
        vec![
            ("c1".into(), "n1".into(), member("n1:2380")),
            ("c1".into(), "n2".into(), member("n2:2380")),
        ]
    );
    assert_eq!(
        loaded.claims,
        vec![("c1".into(), "n1".into(), claim(GrantedRole::Bootstrap))]
    );
    assert_eq!(
        loaded.grants,
        vec![("c1".into(), grant(1)), ("c2".into(), grant(7))]
    );
    assert_eq!(loaded.histories.len(), 2);
    assert_eq!(loaded.n_skipped, 0);

    // Deletes and overwrites in decision order: the last word wins; a cluster's grant and
    // history go together.
    store.delete_member("c1", "n2").expect("delete");
    store
        .put_member("c1", "n1", &member("n1-new:2380"))
        .expect("put");
    store.delete_claim("c1", "n1").expect("delete");
    store
        .put_claim("c1", "n1", &claim(GrantedRole::Server))
        .expect("put");
    store.delete_cluster("c2").expect("delete");
    store.flush().await.expect("flush");
    drop(store);
    let store = backend.open().await;
    let loaded = sorted(store.load().expect("load"));
    assert_eq!(
        loaded.members,
        vec![("c1".into(), "n1".into(), member("n1-new:2380"))]
    );
    assert_eq!(
        loaded.claims,
        vec![("c1".into(), "n1".into(), claim(GrantedRole::Server))]
    );
    assert_eq!(loaded.grants, vec![("c1".into(), grant(1))]);
    assert_eq!(loaded.histories, vec![("c1".into(), history(1))]);

    // A write nobody flushes is durable within about a second all the same.
    store
        .put_member("c3", "n9", &member("n9:2380"))
        .expect("put");
    tokio::time::sleep(Duration::from_millis(2500)).await;
    drop(store);
    let store = backend.open().await;
    let loaded = store.load().expect("load");
    assert!(
        loaded
            .members
            .iter()
            .any(|(c, n, _)| c == "c3" && n == "n9"),
        "an unflushed write did not reach storage within 2.5 s"
    );
    assert!(store.lost().is_none());
    assert!(store.check().is_ok());
}

#[tokio::test]
async fn the_sled_backend_keeps_the_contract() {
    contract(Backend::Sled(tempfile::tempdir().expect("tempdir"))).await;
}

#[tokio::test]
async fn the_etcd_backend_keeps_the_contract() {
    let etcd = EtcdCluster::start(1).await;
    let client = client(&etcd.endpoints());
    contract(Backend::Etcd(client, "/contract/".into())).await;
}

fn client(endpoints: &str) -> EtcdClient {
    EtcdClient::new(&EtcdOptions {
        endpoints: endpoints.split(',').map(str::to_string).collect(),
        request_timeout: Duration::from_secs(2),
        ..Default::default()
    })
    .expect("etcd client")
}

/// A term's writes are fenced by its election: once the leader key was re-created by another
/// replica's election, the old term's flush fails, changes nothing in etcd, and every later
/// write of that term is refused (fail-stop); a new term's store reads what was there.
#[tokio::test]
async fn a_term_whose_leader_key_was_taken_writes_nothing() {
    let etcd = EtcdCluster::start(1).await;
    let client = client(&etcd.endpoints());
    let leader = b"/fence/leader".to_vec();
    let create = |value: &str| {
        let client = client.clone();
        let leader = leader.clone();
        let value = value.as_bytes().to_vec();
        async move {
            let outcome = client
                .txn(
                    &[],
                    &[Op::Put {
                        key: leader,
                        value,
                        lease: 0,
                    }],
                    &[],
                )
                .await
                .expect("put the leader key");
            outcome.revision
        }
    };
    let first = create("r1").await;
    let old_term = Store::new(
        EtcdStore::open(
            client.clone(),
            "/fence/",
            Some(Fence {
                key: leader.clone(),
                create_revision: first,
            }),
        )
        .await
        .expect("open"),
    );
    old_term.put_grant("c1", &grant(1)).expect("put");
    old_term.flush().await.expect("the term's own write");

    // r1's lease ends; r2's election deletes nothing but creates the key anew.
    client
        .txn(
            &[],
            &[Op::Delete {
                key: leader.clone(),
            }],
            &[],
        )
        .await
        .expect("delete");
    let second = create("r2").await;
    assert!(second > first);

    old_term.put_grant("c1", &grant(2)).expect("queued");
    old_term
        .put_member("c1", "late", &member("late:2380"))
        .expect("queued");
    let refused = old_term.flush().await.expect_err("a fenced flush fails");
    assert!(refused.message.contains("fenced"), "{}", refused.message);
    assert!(old_term.lost().is_some());
    assert!(
        old_term.put_grant("c1", &grant(3)).is_err(),
        "a write after a failed flush is refused"
    );
    assert!(old_term.check().is_err());

    let now = EtcdStore::open(client.clone(), "/fence/", None)
        .await
        .expect("open");
    let loaded = rollcall_registry::store::Backend::load(&now).expect("load");
    assert_eq!(loaded.grants, vec![("c1".to_string(), grant(1))]);
    assert!(loaded.members.is_empty(), "{:?}", loaded.members);
}

/// `rollcall-registry migrate` copies a sled data directory into etcd: a replica started on the
/// prefix then knows the cluster's grant and raft; a second copy onto the same prefix is
/// refused with exit 1 and changes nothing.
#[tokio::test]
async fn migrate_copies_a_sled_directory_into_etcd_once() {
    let etcd = EtcdCluster::start(1).await;
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let sled = Store::open(dir.path(), 1 << 20).expect("sled");
        sled.put_member("c1", "n1", &member("n1:2380"))
            .expect("put");
        sled.put_claim("c1", "n1", &claim(GrantedRole::Bootstrap))
            .expect("put");
        sled.put_grant("c1", &grant(4)).expect("put");
        sled.put_history("c1", &history(4)).expect("put");
        sled.close().await.expect("close");
    }
    // The flusher thread lets go of the database a moment after the last clone.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let migrate = || {
        std::process::Command::new(env!("CARGO_BIN_EXE_rollcall-registry"))
            .arg("migrate")
            .arg("--data-dir")
            .arg(dir.path())
            .arg("--etcd-endpoints")
            .arg(etcd.endpoints())
            .arg("--etcd-prefix")
            .arg("/migrated")
            .output()
            .expect("run migrate")
    };
    let first = migrate();
    let stdout = String::from_utf8_lossy(&first.stdout);
    assert!(
        first.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&first.stderr)
    );
    assert!(
        stdout.contains("copied 1 member(s), 1 claim(s), 1 grant(s) and 1 history record(s)"),
        "{stdout}"
    );
    let second = migrate();
    assert_eq!(second.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&second.stderr).contains("already holds"),
        "{}",
        String::from_utf8_lossy(&second.stderr)
    );

    let replica = common::TestRegistry::start_process(&[
        "--store",
        "etcd",
        "--etcd-endpoints",
        &etcd.endpoints(),
        "--etcd-prefix",
        "/migrated/",
        "--lease-ttl",
        "3s",
    ])
    .await;
    let detail = common::eventually(Duration::from_secs(10), || async {
        replica.client().cluster("c1").await.ok()
    })
    .await
    .expect("the migrated cluster");
    assert_eq!(detail.raft.as_ref().map(|r| r.generation), Some(4));
    assert_eq!(detail.bootstrap.as_ref().map(|b| b.generation), Some(4));
}
