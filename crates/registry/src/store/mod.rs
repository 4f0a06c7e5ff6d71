//! Durable storage of members, claims, bootstrap grants and cluster histories: one interface,
//! [`Backend`], and two implementations chosen with `--store`:
//!
//! - [`sled_backend`]: the embedded default, one data directory on one machine.
//! - [`etcd`]: an etcd v3 cluster the operator provides, shared by several registry replicas of
//!   which one is active (see `replica.rs`); every write of a term is fenced by its election.
//!
//! Nothing else in the registry touches either. The records' format lives in [`records`]; it is
//! the same in both backends (a JSON record with a version field `v`), so that
//! `rollcall-registry migrate` copies records as they are.
//!
//! # The contract (`tests/storage_contract.rs` runs it against both)
//!
//! - Writes (`put_*`, `delete_*`) are made under the membership's lock in decision order and
//!   return at once; [`Store::flush`] returns once every write made before the call is durable.
//!   A write that must survive a crash before it is acknowledged (a new member, a changed
//!   address or role, a claim, a grant, a leave) awaits `flush`; status or metadata changes
//!   are made durable by the next flush, or within about a second by the backend itself.
//! - A failed flush is fail-stop: [`Store::lost`] says why from then on, every later write is
//!   refused, and nothing acknowledged depended on what the failed flush held.
//! - [`Store::load`] returns every record that decodes; records that do not are logged,
//!   counted and skipped.
//! - Expiry deadlines are not stored: every stored member and claim gets a fresh TTL when it is
//!   loaded, so that a restart (or a failover) never expires anyone by itself.
//! - `/` cannot appear in a validated name, so a `{cluster}/{node}` key splits back into its
//!   parts unambiguously.
//!
//! A cluster's grant and history are deleted when it frees its slot (nothing live, no raft, no
//! grant: see `membership/state.rs`), and a reset cluster's when a new one needs its record.

pub mod etcd;
mod flusher;
pub mod integrity;
pub mod records;
pub mod sled_backend;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

pub use records::{
    decode, encode, ClaimRecord, GrantRecord, HistoryRecord, MemberRecord, RaftRecord, Record,
    ResetRecord,
};
pub use sled_backend::SledStore;

/// A storage failure. `disk_full` lets the API answer 507 instead of 500.
#[derive(Debug, Clone, thiserror::Error)]
#[error("storage: {message}")]
pub struct StoreError {
    pub message: String,
    pub disk_full: bool,
    /// The storage could not be reached (etcd without quorum or unreachable), as opposed to
    /// refusing or failing: the API answers `503 store_unavailable`, and a replica's term
    /// ends as stale rather than lost.
    pub unavailable: bool,
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
            unavailable: false,
        }
    }
}

/// ENOSPC without a libc dependency: 28 on every Linux architecture.
const fn libc_enospc() -> i32 {
    28
}

/// sled lost writes that were acknowledged (or it cannot be told), and the store was not told
/// to accept that. `main` exits with its own code on it.
#[derive(Debug, Clone, thiserror::Error)]
#[error("refusing to start: {0}; start with --accept-data-loss to run on what is left")]
pub struct DataLossRefused(pub String);

/// Why [`Store::open_checked`] did not open the store.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error(transparent)]
    Storage(#[from] StoreError),
    #[error(transparent)]
    DataLoss(#[from] DataLossRefused),
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

/// A future a backend returns from its async methods (the trait is used as a trait object).
pub type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send + 'a>>;

/// What a storage backend does; the contract is in the module's documentation.
pub trait Backend: Send + Sync + std::fmt::Debug + 'static {
    /// Every stored record that decodes.
    fn load(&self) -> Result<Loaded, StoreError>;
    fn put_member(
        &self,
        cluster: &str,
        node: &str,
        record: &MemberRecord,
    ) -> Result<(), StoreError>;
    fn delete_member(&self, cluster: &str, node: &str) -> Result<(), StoreError>;
    fn put_claim(&self, cluster: &str, node: &str, record: &ClaimRecord) -> Result<(), StoreError>;
    fn delete_claim(&self, cluster: &str, node: &str) -> Result<(), StoreError>;
    fn put_grant(&self, cluster: &str, record: &GrantRecord) -> Result<(), StoreError>;
    fn put_history(&self, cluster: &str, record: &HistoryRecord) -> Result<(), StoreError>;
    /// Forgets a cluster's grant and history.
    fn delete_cluster(&self, cluster: &str) -> Result<(), StoreError>;
    /// Why storage is lost for good, if it is: every write is refused from then on.
    fn lost(&self) -> Option<StoreError>;
    /// Waits until every write made before this call is durable.
    fn flush(&self) -> StoreFuture<'_, ()>;
    /// The last flush at shutdown.
    fn close(&self) -> StoreFuture<'_, ()>;
    /// Whether storage answers, for `/health` and the sweeper.
    fn check(&self) -> Result<(), StoreError>;
    /// The backend's name for logs and `/health`: `sled` or `etcd`.
    fn kind(&self) -> &'static str;
}

/// The registry's storage: a cheap `Clone` around one backend.
#[derive(Clone, Debug)]
pub struct Store(Arc<dyn Backend>);

impl Store {
    /// Opens (or creates) a sled store in `dir` (see [`SledStore::open`]).
    pub fn open(dir: &std::path::Path, cache_bytes: u64) -> Result<Store, StoreError> {
        SledStore::open(dir, cache_bytes).map(Store::new)
    }

    pub fn new(backend: impl Backend) -> Store {
        Store(Arc::new(backend))
    }

    pub fn load(&self) -> Result<Loaded, StoreError> {
        self.0.load()
    }
    pub fn put_member(
        &self,
        cluster: &str,
        node: &str,
        record: &MemberRecord,
    ) -> Result<(), StoreError> {
        self.0.put_member(cluster, node, record)
    }
    pub fn delete_member(&self, cluster: &str, node: &str) -> Result<(), StoreError> {
        self.0.delete_member(cluster, node)
    }
    pub fn put_claim(
        &self,
        cluster: &str,
        node: &str,
        record: &ClaimRecord,
    ) -> Result<(), StoreError> {
        self.0.put_claim(cluster, node, record)
    }
    pub fn delete_claim(&self, cluster: &str, node: &str) -> Result<(), StoreError> {
        self.0.delete_claim(cluster, node)
    }
    pub fn put_grant(&self, cluster: &str, record: &GrantRecord) -> Result<(), StoreError> {
        self.0.put_grant(cluster, record)
    }
    pub fn put_history(&self, cluster: &str, record: &HistoryRecord) -> Result<(), StoreError> {
        self.0.put_history(cluster, record)
    }
    pub fn delete_cluster(&self, cluster: &str) -> Result<(), StoreError> {
        self.0.delete_cluster(cluster)
    }
    pub fn lost(&self) -> Option<StoreError> {
        self.0.lost()
    }
    pub async fn flush(&self) -> Result<(), StoreError> {
        self.0.flush().await
    }
    pub async fn close(&self) -> Result<(), StoreError> {
        self.0.close().await
    }
    pub fn check(&self) -> Result<(), StoreError> {
        self.0.check()
    }
    pub fn kind(&self) -> &'static str {
        self.0.kind()
    }
}

/// `{cluster}/{node}`: the key of a member or claim in either backend.
pub(crate) fn key(cluster: &str, node: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(cluster.len() + 1 + node.len());
    k.extend_from_slice(cluster.as_bytes());
    k.push(b'/');
    k.extend_from_slice(node.as_bytes());
    k
}

pub(crate) fn split_key(key: &[u8]) -> Option<(String, String)> {
    let s = std::str::from_utf8(key).ok()?;
    let (c, n) = s.split_once('/')?;
    Some((c.to_string(), n.to_string()))
}
