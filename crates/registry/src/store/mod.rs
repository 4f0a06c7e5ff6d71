//! Durable storage of members, claims and bootstrap grants in sled. Nothing else in the
//! registry touches sled. The records' disk format lives in [`records`], the group-commit
//! flusher in [`flusher`].
//!
//! # Key layout
//!
//! Three trees, each value a JSON record with a version field `v` (see [`records`]):
//!
//! | tree      | key               | value             | written when                                   |
//! |-----------|-------------------|-------------------|------------------------------------------------|
//! | `members` | `{cluster}/{node}`| [`MemberRecord`]  | a member registers, or its record changes       |
//! | `claims`  | `{cluster}/{node}`| [`ClaimRecord`]   | a claim is granted or changes role              |
//! | `grants`  | `{cluster}`       | [`GrantRecord`]   | a bootstrap is granted (replacing the last one) |
//! | `history` | `{cluster}`       | [`HistoryRecord`] | its raft becomes known, a member leaves or expires, a reset |
//!
//! A data directory written before `history` existed has grants without a history: each such
//! grant loads as a known raft of its generation (safety first: it may have one).
//!
//! `/` cannot appear in a validated name, so a key splits back into its parts unambiguously.
//! Expiry deadlines are not stored: they are kept in memory and every stored member and claim
//! gets a fresh TTL when the registry starts, so a restart never expires anyone by itself.
//!
//! # Durability
//!
//! Writes go into sled's in-memory log; [`Store::flush`] makes them durable. A write that must
//! survive a crash before it is acknowledged (a new member, a changed address or role, a claim,
//! a leave) awaits `flush` after its write. One flusher thread serves every waiting request with
//! one blocking `sled::Db::flush` (group commit): a flush started after a write was made covers
//! it, and all writes that arrived while a flush ran share the next one. sled 0.34.7's
//! `flush_async` is not used because it deadlocks under concurrent callers. A plain renewal does
//! not write at all, and status or metadata changes are written without waiting for the disk.

mod flusher;
pub mod records;

use std::path::Path;
use std::sync::mpsc;
use std::sync::Arc;

use tokio::sync::oneshot;

pub use records::{
    decode, encode, ClaimRecord, GrantRecord, HistoryRecord, MemberRecord, RaftRecord, Record,
    ResetRecord,
};

use flusher::{run_flusher, FlushReply, FlusherStats};

/// A storage failure. `disk_full` lets the API answer 507 instead of 500.
#[derive(Debug, Clone, thiserror::Error)]
#[error("storage: {message}")]
pub struct StoreError {
    pub message: String,
    pub disk_full: bool,
}

impl From<sled::Error> for StoreError {
    fn from(e: sled::Error) -> Self {
        let disk_full = match &e {
            sled::Error::Io(io) => {
                io.raw_os_error() == Some(libc_enospc())
                    || io.kind() == std::io::ErrorKind::StorageFull
            }
            _ => false,
        };
        StoreError {
            message: e.to_string(),
            disk_full,
        }
    }
}

/// ENOSPC without a libc dependency: 28 on every Linux architecture.
const fn libc_enospc() -> i32 {
    28
}

/// Everything read back at start.
#[derive(Debug, Default)]
pub struct Loaded {
    pub members: Vec<(String, String, MemberRecord)>,
    pub claims: Vec<(String, String, ClaimRecord)>,
    pub grants: Vec<(String, GrantRecord)>,
    pub histories: Vec<(String, HistoryRecord)>,
    /// Records that could not be decoded and were skipped (logged one by one).
    pub n_skipped: usize,
}

/// The registry's storage: a cheap `Clone` around the sled database and the flusher.
#[derive(Clone)]
pub struct Store {
    db: sled::Db,
    members: sled::Tree,
    claims: sled::Tree,
    grants: sled::Tree,
    history: sled::Tree,
    flush_requests: mpsc::Sender<FlushReply>,
    flusher: Arc<FlusherStats>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").finish_non_exhaustive()
    }
}

impl Store {
    /// Opens (or creates) the store in `dir` with a page cache of `cache_bytes`.
    pub fn open(dir: &Path, cache_bytes: u64) -> Result<Store, StoreError> {
        let db = sled::Config::new()
            .path(dir)
            .cache_capacity(cache_bytes)
            // Durability comes from our own flushes; sled's periodic background flush is kept
            // as a second line for writes that do not wait (status changes, expiries).
            .flush_every_ms(Some(1000))
            .open()?;
        let members = db.open_tree("members")?;
        let claims = db.open_tree("claims")?;
        let grants = db.open_tree("grants")?;
        let history = db.open_tree("history")?;
        // sled 0.34 writes its log with `sync_file_range`, which survives a killed process but
        // not a power cut; one `fdatasync` of the log per group commit makes an acknowledged
        // write durable against both.
        let log_file = std::fs::File::open(dir.join("db")).map_err(|e| StoreError {
            message: format!("cannot open sled's log file for syncing: {e}"),
            disk_full: false,
        })?;
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
        let (tx, rx) = mpsc::channel::<FlushReply>();
        let flusher = Arc::new(FlusherStats::default());
        let thread_db = db.clone();
        let thread_stats = flusher.clone();
        std::thread::Builder::new()
            .name("rollcall-flusher".into())
            .spawn(move || run_flusher(thread_db, log_file, rx, thread_stats))
            .map_err(|e| StoreError {
                message: format!("cannot start the flusher thread: {e}"),
                disk_full: false,
            })?;
        Ok(Store {
            db,
            members,
            claims,
            grants,
            history,
            flush_requests: tx,
            flusher,
        })
    }

    /// Reads every stored record. Records that do not decode are skipped and logged.
    pub fn load(&self) -> Result<Loaded, StoreError> {
        let mut loaded = Loaded::default();
        for (key, record) in load_tree::<MemberRecord>(&self.members, &mut loaded.n_skipped)? {
            match split_key(&key) {
                Some((cluster, node)) => loaded.members.push((cluster, node, record)),
                None => skip_bad_key("members", &key, &mut loaded.n_skipped),
            }
        }
        for (key, record) in load_tree::<ClaimRecord>(&self.claims, &mut loaded.n_skipped)? {
            match split_key(&key) {
                Some((cluster, node)) => loaded.claims.push((cluster, node, record)),
                None => skip_bad_key("claims", &key, &mut loaded.n_skipped),
            }
        }
        for (key, record) in load_tree::<GrantRecord>(&self.grants, &mut loaded.n_skipped)? {
            match std::str::from_utf8(&key) {
                Ok(cluster) => loaded.grants.push((cluster.to_string(), record)),
                Err(_) => skip_bad_key("grants", &key, &mut loaded.n_skipped),
            }
        }
        for (key, record) in load_tree::<HistoryRecord>(&self.history, &mut loaded.n_skipped)? {
            match std::str::from_utf8(&key) {
                Ok(cluster) => loaded.histories.push((cluster.to_string(), record)),
                Err(_) => skip_bad_key("history", &key, &mut loaded.n_skipped),
            }
        }
        Ok(loaded)
    }

    pub fn put_member(
        &self,
        cluster: &str,
        node: &str,
        record: &MemberRecord,
    ) -> Result<(), StoreError> {
        self.members.insert(key(cluster, node), encode(record))?;
        Ok(())
    }

    pub fn delete_member(&self, cluster: &str, node: &str) -> Result<(), StoreError> {
        self.members.remove(key(cluster, node))?;
        Ok(())
    }

    pub fn put_claim(
        &self,
        cluster: &str,
        node: &str,
        record: &ClaimRecord,
    ) -> Result<(), StoreError> {
        self.claims.insert(key(cluster, node), encode(record))?;
        Ok(())
    }

    pub fn delete_claim(&self, cluster: &str, node: &str) -> Result<(), StoreError> {
        self.claims.remove(key(cluster, node))?;
        Ok(())
    }

    pub fn put_grant(&self, cluster: &str, record: &GrantRecord) -> Result<(), StoreError> {
        self.grants.insert(cluster.as_bytes(), encode(record))?;
        Ok(())
    }

    pub fn put_history(&self, cluster: &str, record: &HistoryRecord) -> Result<(), StoreError> {
        self.history.insert(cluster.as_bytes(), encode(record))?;
        Ok(())
    }

    /// Waits until every write made before this call is on disk.
    pub async fn flush(&self) -> Result<(), StoreError> {
        let (tx, rx) = oneshot::channel();
        self.flush_requests.send(tx).map_err(|_| StoreError {
            message: "the flusher thread has stopped".into(),
            disk_full: false,
        })?;
        rx.await.map_err(|_| StoreError {
            message: "the flusher thread dropped a request".into(),
            disk_full: false,
        })?
    }

    /// A final blocking flush, for shutdown.
    pub fn flush_blocking(&self) -> Result<(), StoreError> {
        self.db.flush()?;
        Ok(())
    }

    /// Whether storage answers: a read, plus the flusher's last result.
    pub fn check(&self) -> Result<(), StoreError> {
        self.db.get(b"health")?;
        if let Some(err) = self
            .flusher
            .last_error
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
        {
            return Err(StoreError {
                message: format!("last flush failed: {err}"),
                disk_full: false,
            });
        }
        Ok(())
    }
}

fn key(cluster: &str, node: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(cluster.len() + 1 + node.len());
    k.extend_from_slice(cluster.as_bytes());
    k.push(b'/');
    k.extend_from_slice(node.as_bytes());
    k
}

fn split_key(key: &[u8]) -> Option<(String, String)> {
    let s = std::str::from_utf8(key).ok()?;
    let (c, n) = s.split_once('/')?;
    Some((c.to_string(), n.to_string()))
}

/// Every record of `tree` that decodes, with its key; the others are logged and counted.
fn load_tree<R: Record>(
    tree: &sled::Tree,
    n_skipped: &mut usize,
) -> Result<Vec<(sled::IVec, R)>, StoreError> {
    let mut out = Vec::new();
    for item in tree.iter() {
        let (key, value) = item?;
        match decode::<R>(&value) {
            Ok(record) => out.push((key, record)),
            Err(why) => {
                tracing::warn!(tree = %String::from_utf8_lossy(&tree.name()), key = %String::from_utf8_lossy(&key), reason = why, "skipping a stored record that does not decode");
                *n_skipped += 1;
            }
        }
    }
    Ok(out)
}

fn skip_bad_key(tree: &str, key: &[u8], n_skipped: &mut usize) {
    tracing::warn!(tree, key = %String::from_utf8_lossy(key), "skipping a stored record whose key does not split into cluster and node");
    *n_skipped += 1;
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::time::{Duration, Instant};

    use rollcall_protocol::{AgentStatus, GrantedRole, MemberRole};

    use super::*;

    fn reopen(dir: &Path) -> Store {
        // The flusher thread lets go of the database a moment after the last `Store` is dropped.
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match Store::open(dir, 1 << 20) {
                Ok(s) => return s,
                Err(e) if Instant::now() < deadline => {
                    assert!(e.message.contains("lock"), "{e}");
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(e) => panic!("reopen: {e}"),
            }
        }
    }

    #[tokio::test]
    async fn records_survive_reopen_after_flush() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let store = Store::open(dir.path(), 1 << 20).expect("open");
            let rec = MemberRecord {
                address: "10.0.0.1:8300".into(),
                role: MemberRole::Server,
                status: AgentStatus::default(),
                meta: BTreeMap::new(),
                registered_at_unix_ms: 1,
                raft: None,
            };
            store.put_member("c1", "n1", &rec).expect("put");
            let claim = ClaimRecord {
                role: GrantedRole::Bootstrap,
                address: "10.0.0.1:8300".into(),
                expect: 3,
                granted_at_unix_ms: 1,
            };
            store.put_claim("c1", "n1", &claim).expect("put");
            let grant = GrantRecord {
                node: "n1".into(),
                address: "10.0.0.1:8300".into(),
                expect: 3,
                generation: 1,
                granted_at_unix_ms: 1,
                nonce: Some("0123456789abcdef".into()),
            };
            store.put_grant("c1", &grant).expect("put");
            store.flush().await.expect("flush");
        }
        let store = reopen(dir.path());
        let loaded = store.load().expect("load");
        assert_eq!(loaded.members.len(), 1);
        assert_eq!(loaded.members[0].0, "c1");
        assert_eq!(loaded.members[0].1, "n1");
        assert_eq!(loaded.claims[0].2.role, GrantedRole::Bootstrap);
        assert_eq!(loaded.grants[0].1.generation, 1);
        assert_eq!(loaded.n_skipped, 0);
    }

    /// A data directory written by format 1 loads, and a record that does not decode is counted
    /// and skipped rather than misread.
    #[tokio::test]
    async fn a_store_of_format_1_loads() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let store = Store::open(dir.path(), 1 << 20).expect("open");
            store
                .members
                .insert(&b"c1/n1"[..], &br#"{"v":1,"address":"10.0.0.1:8300","role":"agent","status":{},"meta":{},"registered_at_unix_ms":5}"#[..])
                .expect("insert");
            store
                .members
                .insert(&b"c1/bad"[..], &b"not json"[..])
                .expect("insert");
            store
                .grants
                .insert(&b"c1"[..], &br#"{"v":1,"node":"n1","address":"10.0.0.1:8300","expect":3,"generation":4,"granted_at_unix_ms":6}"#[..])
                .expect("insert");
            store.flush().await.expect("flush");
        }
        let loaded = reopen(dir.path()).load().expect("load");
        assert_eq!(loaded.members.len(), 1);
        assert_eq!(loaded.members[0].2.role, MemberRole::Agent);
        assert_eq!(loaded.members[0].2.registered_at_unix_ms, 5);
        assert_eq!(loaded.grants[0].1.generation, 4);
        assert_eq!(loaded.n_skipped, 1);
    }
}
