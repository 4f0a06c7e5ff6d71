//! Durable storage of members, claims and bootstrap grants in sled. Nothing else in the
//! registry touches sled.
//!
//! # Key layout
//!
//! Three trees, each value a JSON record with a version field `v`:
//!
//! | tree      | key               | value             | written when                                   |
//! |-----------|-------------------|-------------------|------------------------------------------------|
//! | `members` | `{cluster}/{node}`| [`MemberRecord`]  | a member registers, or its record changes       |
//! | `claims`  | `{cluster}/{node}`| [`ClaimRecord`]   | a claim is granted or changes role              |
//! | `grants`  | `{cluster}`       | [`GrantRecord`]   | a bootstrap is granted (replacing the last one) |
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

use std::path::Path;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rollcall_protocol::{AgentStatus, GrantedRole, MemberRole};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use tokio::sync::oneshot;

/// Version of the stored records. A record with another version is skipped at load with a
/// warning instead of being misread.
const RECORD_VERSION: u32 = 1;

/// A member as stored: everything its last heartbeat said, without the expiry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemberRecord {
    pub v: u32,
    pub address: String,
    pub role: MemberRole,
    #[serde(default)]
    pub status: AgentStatus,
    #[serde(default)]
    pub meta: BTreeMap<String, String>,
    /// Wall-clock time of the first registration, for people reading the record.
    pub registered_at_unix_ms: u64,
}

/// A granted claim as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClaimRecord {
    pub v: u32,
    pub role: GrantedRole,
    pub address: String,
    pub expect: u32,
    pub granted_at_unix_ms: u64,
}

/// The last bootstrap grant of a cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrantRecord {
    pub v: u32,
    pub node: String,
    pub address: String,
    pub expect: u32,
    /// 1 for the cluster's first raft, then one more for each new raft.
    pub generation: u64,
    pub granted_at_unix_ms: u64,
}

impl MemberRecord {
    pub fn new(
        address: String,
        role: MemberRole,
        status: AgentStatus,
        meta: BTreeMap<String, String>,
        registered_at_unix_ms: u64,
    ) -> Self {
        MemberRecord {
            v: RECORD_VERSION,
            address,
            role,
            status,
            meta,
            registered_at_unix_ms,
        }
    }
}

impl ClaimRecord {
    pub fn new(role: GrantedRole, address: String, expect: u32, granted_at_unix_ms: u64) -> Self {
        ClaimRecord {
            v: RECORD_VERSION,
            role,
            address,
            expect,
            granted_at_unix_ms,
        }
    }
}

impl GrantRecord {
    pub fn new(
        node: String,
        address: String,
        expect: u32,
        generation: u64,
        granted_at_unix_ms: u64,
    ) -> Self {
        GrantRecord {
            v: RECORD_VERSION,
            node,
            address,
            expect,
            generation,
            granted_at_unix_ms,
        }
    }
}

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
    /// Records that could not be decoded and were skipped (logged one by one).
    pub n_skipped: usize,
}

type FlushReply = oneshot::Sender<Result<(), StoreError>>;

/// The registry's storage: a cheap `Clone` around the sled database and the flusher.
#[derive(Clone)]
pub struct Store {
    db: sled::Db,
    members: sled::Tree,
    claims: sled::Tree,
    grants: sled::Tree,
    flush_requests: mpsc::Sender<FlushReply>,
    flusher: Arc<FlusherStats>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").finish_non_exhaustive()
    }
}

/// What the flusher last did, for `/health`.
#[derive(Debug, Default)]
pub struct FlusherStats {
    last_error: std::sync::Mutex<Option<String>>,
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
            flush_requests: tx,
            flusher,
        })
    }

    /// Reads every stored record. Records that do not decode are skipped and logged.
    pub fn load(&self) -> Result<Loaded, StoreError> {
        let mut loaded = Loaded::default();
        for item in self.members.iter() {
            let (key, value) = item?;
            match (split_key(&key), decode::<MemberRecord>(&value)) {
                (Some((c, n)), Ok(rec)) => loaded.members.push((c, n, rec)),
                (_, res) => {
                    skip("members", &key, res.err());
                    loaded.n_skipped += 1;
                }
            }
        }
        for item in self.claims.iter() {
            let (key, value) = item?;
            match (split_key(&key), decode::<ClaimRecord>(&value)) {
                (Some((c, n)), Ok(rec)) => loaded.claims.push((c, n, rec)),
                (_, res) => {
                    skip("claims", &key, res.err());
                    loaded.n_skipped += 1;
                }
            }
        }
        for item in self.grants.iter() {
            let (key, value) = item?;
            let cluster = std::str::from_utf8(&key).ok().map(str::to_string);
            match (cluster, decode::<GrantRecord>(&value)) {
                (Some(c), Ok(rec)) => loaded.grants.push((c, rec)),
                (_, res) => {
                    skip("grants", &key, res.err());
                    loaded.n_skipped += 1;
                }
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

/// The group-commit loop: wait for one request, take every other waiting one, flush once,
/// answer them all. Ends when every `Store` clone is gone.
fn run_flusher(
    db: sled::Db,
    log_file: std::fs::File,
    requests: mpsc::Receiver<FlushReply>,
    stats: Arc<FlusherStats>,
) {
    while let Ok(first) = requests.recv() {
        let mut batch = vec![first];
        batch.extend(requests.try_iter());
        let started = Instant::now();
        let result = db
            .flush()
            .map(|_| ())
            .map_err(StoreError::from)
            .and_then(|()| {
                log_file
                    .sync_data()
                    .map_err(|e| StoreError::from(sled::Error::Io(e)))
            });
        let took = started.elapsed();
        metrics::histogram!("rollcall_storage_flush_seconds").record(took.as_secs_f64());
        metrics::histogram!("rollcall_storage_flush_batch_size").record(batch.len() as f64);
        if took > Duration::from_millis(200) {
            tracing::warn!(
                took_ms = took.as_millis() as u64,
                batch = batch.len(),
                "slow storage flush"
            );
        }
        *stats.last_error.lock().unwrap_or_else(|e| e.into_inner()) =
            result.as_ref().err().map(|e| e.message.clone());
        if let Err(e) = &result {
            tracing::error!(error = %e.message, batch = batch.len(), "storage flush failed; the writes waiting on it are refused");
        }
        for reply in batch {
            let _ = reply.send(result.clone());
        }
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

fn encode<T: Serialize>(record: &T) -> Vec<u8> {
    // Serialising these plain structs cannot fail: no maps with non-string keys, no floats.
    serde_json::to_vec(record).unwrap_or_default()
}

/// Decodes a stored record, refusing other versions. Public for the fuzz targets.
pub fn decode<T: for<'de> Deserialize<'de> + Versioned>(bytes: &[u8]) -> Result<T, String> {
    let record: T = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
    if record.version() != RECORD_VERSION {
        return Err(format!(
            "record version {} is not {RECORD_VERSION}",
            record.version()
        ));
    }
    Ok(record)
}

/// Records carry their format version.
pub trait Versioned {
    fn version(&self) -> u32;
}
impl Versioned for MemberRecord {
    fn version(&self) -> u32 {
        self.v
    }
}
impl Versioned for ClaimRecord {
    fn version(&self) -> u32 {
        self.v
    }
}
impl Versioned for GrantRecord {
    fn version(&self) -> u32 {
        self.v
    }
}

fn skip(tree: &str, key: &[u8], why: Option<String>) {
    tracing::warn!(tree, key = %String::from_utf8_lossy(key), reason = why.unwrap_or_else(|| "bad key".into()), "skipping a stored record that does not decode");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn records_survive_reopen_after_flush() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let store = Store::open(dir.path(), 1 << 20).expect("open");
            let rec = MemberRecord::new(
                "10.0.0.1:8300".into(),
                MemberRole::Server,
                AgentStatus::default(),
                BTreeMap::new(),
                1,
            );
            store.put_member("c1", "n1", &rec).expect("put");
            store
                .put_claim(
                    "c1",
                    "n1",
                    &ClaimRecord::new(GrantedRole::Bootstrap, "10.0.0.1:8300".into(), 3, 1),
                )
                .expect("put");
            store
                .put_grant(
                    "c1",
                    &GrantRecord::new("n1".into(), "10.0.0.1:8300".into(), 3, 1, 1),
                )
                .expect("put");
            store.flush().await.expect("flush");
        }
        // The flusher thread lets go of the database a moment after the last `Store` is dropped.
        let deadline = Instant::now() + Duration::from_secs(5);
        let store = loop {
            match Store::open(dir.path(), 1 << 20) {
                Ok(s) => break s,
                Err(e) if Instant::now() < deadline => {
                    assert!(e.message.contains("lock"), "{e}");
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(e) => panic!("reopen: {e}"),
            }
        };
        let loaded = store.load().expect("load");
        assert_eq!(loaded.members.len(), 1);
        assert_eq!(loaded.members[0].0, "c1");
        assert_eq!(loaded.members[0].1, "n1");
        assert_eq!(loaded.claims[0].2.role, GrantedRole::Bootstrap);
        assert_eq!(loaded.grants[0].1.generation, 1);
        assert_eq!(loaded.n_skipped, 0);
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
