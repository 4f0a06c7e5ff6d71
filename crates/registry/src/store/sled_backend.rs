//! The embedded backend: members, claims and bootstrap grants in sled, in one data directory.
//! The group-commit flusher lives in [`super::flusher`], what catches a sled that lost
//! acknowledged writes (the high-water mark, the copy of grants and histories, the data
//! directory's identity) in [`super::integrity`].
//!
//! # Key layout
//!
//! Four trees of records, each value a JSON record with a version field `v` (see
//! [`super::records`]), and one of the store's own:
//!
//! | tree      | key               | value             | written when                                   |
//! |-----------|-------------------|-------------------|------------------------------------------------|
//! | `members` | `{cluster}/{node}`| [`MemberRecord`]  | a member registers, or its record changes       |
//! | `claims`  | `{cluster}/{node}`| [`ClaimRecord`]   | a claim is granted or changes role              |
//! | `grants`  | `{cluster}`       | [`GrantRecord`]   | a bootstrap is granted (replacing the last one) |
//! | `history` | `{cluster}`       | [`HistoryRecord`] | its raft becomes known, a member leaves or expires, a reset |
//! | `meta`    | `commit`          | commit number and write count (binary, as a slot of the mark file) | by every group commit, after the writes it covers |
//!
//! Next to sled's files in the data directory: `rollcall-mark` (the high-water mark: the last
//! commit made durable) and `rollcall-copy-a` and `-b` (every grant and history, checksummed,
//! written in turn), both described in [`super::integrity`].
//!
//! A data directory written before `history` existed has grants without a history: each such
//! grant loads as a known raft of its generation (safety first: it may have one).
//!
//! # Durability
//!
//! A write (`put_*`, `delete_*`) is encoded and queued, in the order the registry decided it,
//! and returns: sled itself is never touched under the membership's lock, so a sled insert
//! that pages a node in from disk, or waits for sled's own IO buffers, delays the flusher and
//! not every request behind the lock. [`SledStore::flush`] makes the queue durable. One flusher
//! thread serves every waiting request with one commit (group commit): the queued writes
//! applied to sled in order, the commit's number into `meta`, one blocking `sled::Db::flush`,
//! an `fdatasync` of sled's log, the copy when a grant or history changed, the mark, and a
//! check that the data directory is still the one opened. A commit started after a write was
//! made covers it, and all writes that arrived while a commit ran share the next one. With
//! writes queued and nobody waiting, the flusher commits within a second anyway.
//!
//! Fail-stop: sled refusing a queued write marks storage lost for good (the registry's memory
//! already holds the change); every later write is refused and `/health` fails until a restart
//! reloads memory from what the disk holds. Nobody waiting on that commit is acknowledged.
//!
//! At start ([`SledStore::open_checked`]) sled's commit number is compared with the mark: below
//! it, sled lost acknowledged writes and the store refuses to open ([`DataLossRefused`]) unless
//! told to accept the loss. Grants and histories the copy holds ahead of sled are written back.
//! sled 0.34.7's `flush_async` is not used because it deadlocks under concurrent callers.
//!
//! Long on purpose: the backend's whole interface and the order of its opening checks are read
//! in one place; about a fifth of the file is its tests.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, OnceLock};

use tokio::sync::oneshot;

use super::flusher::{
    io_error, lose, run_flusher, Committer, CopyState, FlushReply, FlusherStats, Queued, TreeName,
    Trees, COMMIT_KEY,
};
use super::integrity::{
    grant_is_ahead, history_changes_decisively, history_is_ahead, judge, read_copy, read_mark,
    CopyFiles, CopyRead, Decisive, Mark, MarkFile, MarkRead, Place, StartFacts, Verdict,
};
use super::{
    decode, encode, key, split_key, ClaimRecord, DataLossRefused, GrantRecord, HistoryRecord,
    Loaded, MemberRecord, OpenError, Record, StoreError,
};

#[derive(Clone)]
pub struct SledStore {
    db: sled::Db,
    members: sled::Tree,
    claims: sled::Tree,
    grants: sled::Tree,
    history: sled::Tree,
    /// Writes made and not yet applied to sled: the flusher applies them, in order, as the
    /// first step of its next commit (see the module's documentation).
    queue: Arc<Mutex<Vec<Queued>>>,
    flush_requests: mpsc::Sender<FlushReply>,
    flusher: Arc<FlusherStats>,
    /// The commit the flusher thread and the final flush share.
    committer: Arc<Mutex<Committer>>,
    /// Counts every write, for the mark (how many writes a loss took at least).
    writes: Arc<AtomicU64>,
    /// The copy of grants and histories as the writes left it.
    copy: Arc<Mutex<CopyState>>,
    /// The data directory and mark file as opened, for `/health`.
    place: Place,
    /// Set for good when the data directory or the mark file is found removed or replaced:
    /// nothing written from then on can reach the disk, so every write is refused.
    lost: Arc<OnceLock<StoreError>>,
}

impl std::fmt::Debug for SledStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SledStore").finish_non_exhaustive()
    }
}

impl SledStore {
    /// Opens (or creates) the store in `dir` with a page cache of `cache_bytes`, refusing a
    /// sled that lost acknowledged writes.
    pub fn open(dir: &Path, cache_bytes: u64) -> Result<SledStore, StoreError> {
        SledStore::open_checked(dir, cache_bytes, false).map_err(|e| match e {
            OpenError::Storage(e) => e,
            OpenError::DataLoss(e) => StoreError {
                message: e.to_string(),
                disk_full: false,
                unavailable: false,
            },
        })
    }

    /// Opens (or creates) the store in `dir`, checks sled against the high-water mark and the
    /// copy of grants and histories (see [`integrity`]), restores what the copy holds that
    /// sled lost, and starts the flusher. With `accept_data_loss`, a sled that lost
    /// acknowledged writes is used anyway (said loudly in the log) and the mark starts again
    /// from it.
    pub fn open_checked(
        dir: &Path,
        cache_bytes: u64,
        accept_data_loss: bool,
    ) -> Result<SledStore, OpenError> {
        let db = sled::Config::new()
            .path(dir)
            .cache_capacity(cache_bytes)
            // Durability comes from our own commits: every write reaches sled through one (the
            // flusher applies the queue, then flushes), within a second even when nobody
            // waits. sled's own periodic flush is left on; it finds nothing a commit left.
            .flush_every_ms(Some(1000))
            .open()
            .map_err(StoreError::from)?;
        let members = db.open_tree("members").map_err(StoreError::from)?;
        let claims = db.open_tree("claims").map_err(StoreError::from)?;
        let grants = db.open_tree("grants").map_err(StoreError::from)?;
        let history = db.open_tree("history").map_err(StoreError::from)?;
        let meta = db.open_tree("meta").map_err(StoreError::from)?;
        // sled 0.34 writes its log with `sync_file_range`, which survives a killed process but
        // not a power cut; one `fdatasync` of the log per group commit makes an acknowledged
        // write durable against both.
        let log_file = std::fs::File::open(dir.join("db")).map_err(|e| StoreError {
            message: format!("cannot open sled's log file for syncing: {e}"),
            disk_full: false,
            unavailable: false,
        })?;
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }

        let sled_mark = meta
            .get(COMMIT_KEY)
            .map_err(StoreError::from)?
            .and_then(|v| Mark::from_meta(&v));
        let sled_has_records = [&members, &claims, &grants, &history]
            .iter()
            .any(|t| !t.is_empty());
        let mark = read_mark(dir);
        let copy = read_copy(dir, &mark);
        let verdict = judge(&StartFacts {
            sled_mark,
            sled_has_records,
            mark: mark.clone(),
        });
        let copy_trouble = match &copy {
            CopyRead::Damaged(why) => Some(why.clone()),
            _ => None,
        };
        match &verdict {
            Verdict::Fresh => {
                tracing::info!(data_dir = %dir.display(), "new data directory: the high-water mark starts now")
            }
            Verdict::Upgrade => {
                tracing::warn!(data_dir = %dir.display(), "sled holds records but no commit number and there is no high-water mark: data written by an earlier version, taken as it is; the mark and the copy of grants and histories start now")
            }
            Verdict::Intact { sled, mark } => tracing::debug!(
                sled_commit = sled.commit,
                mark_commit = mark.commit,
                "sled holds every commit the high-water mark says was durable"
            ),
            Verdict::Loss(reason) => {
                let copy_said = match &copy {
                    CopyRead::Valid { .. } => "",
                    CopyRead::Missing => {
                        "; there is no copy of grants and histories to restore them from"
                    }
                    CopyRead::Damaged(_) => "; the copy of grants and histories is damaged too",
                };
                if !accept_data_loss {
                    return Err(DataLossRefused(format!("{reason}{copy_said}")).into());
                }
                tracing::error!(data_dir = %dir.display(), "STARTING ON DAMAGED STORAGE (--accept-data-loss): {reason}{copy_said}. Members and claims written after what sled kept are gone until their nodes heartbeat or claim again; grants and histories are restored from the copy where it has them");
            }
        }
        if let Some(why) = &copy_trouble {
            // Here sled agrees with itself (a loss was refused or accepted above).
            tracing::warn!(data_dir = %dir.display(), reason = %why, "the copy of grants and histories cannot be used; sled holds every acknowledged commit, so the copy is written again from sled");
        }

        let writes = Arc::new(AtomicU64::new(0));
        let mut decisive = Decisive::default();
        for (key, record) in load_tree::<GrantRecord>(&grants, &mut 0)? {
            decisive
                .grants
                .insert(String::from_utf8_lossy(&key).into_owned(), record);
        }
        for (key, record) in load_tree::<HistoryRecord>(&history, &mut 0)? {
            decisive
                .histories
                .insert(String::from_utf8_lossy(&key).into_owned(), record);
        }
        let (newest_copy, newest_copy_commit) = match &copy {
            CopyRead::Valid {
                decisive: kept,
                commit,
                slot,
            } => {
                restore_from_copy(kept, &mut decisive, &grants, &history, &writes)?;
                (Some(*slot), *commit)
            }
            _ => (None, 0),
        };

        let last = [
            sled_mark,
            match mark {
                MarkRead::Valid(m) => Some(m),
                _ => None,
            },
        ]
        .into_iter()
        .flatten()
        .max()
        .unwrap_or_default();
        writes.store(last.writes, Ordering::SeqCst);
        // Created with what sled holds (true of it whatever happened), then the first commit
        // below moves it past every number used before.
        let mark_file = MarkFile::create(
            dir,
            Mark {
                copy_commit: newest_copy_commit,
                ..sled_mark.unwrap_or_default()
            },
        )
        .map_err(|e| io_error("creating the high-water mark file", e))?;
        let copy_files = CopyFiles::open(dir, newest_copy)
            .map_err(|e| io_error("opening the copy of grants and histories", e))?;
        let place = Place::new(dir, &mark_file.path)
            .map_err(|e| io_error("reading the data directory's identity", e))?;
        let copy = Arc::new(Mutex::new(CopyState {
            decisive,
            dirty: true,
        }));
        let lost = Arc::new(OnceLock::new());
        let queue = Arc::new(Mutex::new(Vec::new()));
        let mut committer = Committer {
            lost: lost.clone(),
            queue: queue.clone(),
            trees: Trees {
                members: members.clone(),
                claims: claims.clone(),
                grants: grants.clone(),
                history: history.clone(),
            },
            db: db.clone(),
            meta,
            log_file,
            mark_file,
            copy_files,
            place: place.clone(),
            last,
            writes: writes.clone(),
            copy: copy.clone(),
        };
        let first = committer.commit()?;
        tracing::info!(
            commit = first.commit,
            writes = first.writes,
            "high-water mark written"
        );

        let (tx, rx) = mpsc::channel::<FlushReply>();
        let flusher = Arc::new(FlusherStats::default());
        let committer = Arc::new(Mutex::new(committer));
        let thread_committer = committer.clone();
        let thread_stats = flusher.clone();
        std::thread::Builder::new()
            .name("rollcall-flusher".into())
            .spawn(move || run_flusher(thread_committer, rx, thread_stats))
            .map_err(|e| StoreError {
                message: format!("cannot start the flusher thread: {e}"),
                disk_full: false,
                unavailable: false,
            })?;
        Ok(SledStore {
            db,
            members,
            claims,
            grants,
            history,
            queue,
            flush_requests: tx,
            flusher,
            committer,
            writes,
            copy,
            place,
            lost,
        })
    }

    /// Reads every stored record. Records that do not decode are skipped and logged.
    pub fn load(&self) -> Result<Loaded, StoreError> {
        // Writes still queued are part of what the store holds.
        self.committer
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .apply_queue()?;
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
        self.refuse_when_lost()?;
        self.enqueue(TreeName::Members, key(cluster, node), Some(encode(record)));
        Ok(())
    }

    pub fn delete_member(&self, cluster: &str, node: &str) -> Result<(), StoreError> {
        self.refuse_when_lost()?;
        self.enqueue(TreeName::Members, key(cluster, node), None);
        Ok(())
    }

    pub fn put_claim(
        &self,
        cluster: &str,
        node: &str,
        record: &ClaimRecord,
    ) -> Result<(), StoreError> {
        self.refuse_when_lost()?;
        self.enqueue(TreeName::Claims, key(cluster, node), Some(encode(record)));
        Ok(())
    }

    pub fn delete_claim(&self, cluster: &str, node: &str) -> Result<(), StoreError> {
        self.refuse_when_lost()?;
        self.enqueue(TreeName::Claims, key(cluster, node), None);
        Ok(())
    }

    /// Stores a grant, and marks the copy for the next commit when it changed.
    pub fn put_grant(&self, cluster: &str, record: &GrantRecord) -> Result<(), StoreError> {
        self.refuse_when_lost()?;
        self.enqueue(TreeName::Grants, cluster.into(), Some(encode(record)));
        let mut copy = self.copy.lock().unwrap_or_else(|e| e.into_inner());
        if copy.decisive.grants.get(cluster) != Some(record) {
            copy.decisive
                .grants
                .insert(cluster.to_string(), record.clone());
            copy.dirty = true;
        }
        Ok(())
    }

    /// Stores a history, and marks the copy for the next commit when more than its last-seen
    /// time changed.
    pub fn put_history(&self, cluster: &str, record: &HistoryRecord) -> Result<(), StoreError> {
        self.refuse_when_lost()?;
        self.enqueue(TreeName::History, cluster.into(), Some(encode(record)));
        let mut copy = self.copy.lock().unwrap_or_else(|e| e.into_inner());
        let decisive = history_changes_decisively(copy.decisive.histories.get(cluster), record);
        copy.decisive
            .histories
            .insert(cluster.to_string(), record.clone());
        copy.dirty |= decisive;
        Ok(())
    }

    /// Forgets a cluster's grant and history: it frees its slot (see `State::forget_cluster`).
    /// The copy forgets them too, so that a restart does not write them back.
    pub fn delete_cluster(&self, cluster: &str) -> Result<(), StoreError> {
        self.refuse_when_lost()?;
        self.enqueue(TreeName::Grants, cluster.into(), None);
        self.enqueue(TreeName::History, cluster.into(), None);
        let mut copy = self.copy.lock().unwrap_or_else(|e| e.into_inner());
        let had_grant = copy.decisive.grants.remove(cluster).is_some();
        let had_history = copy.decisive.histories.remove(cluster).is_some();
        copy.dirty |= had_grant || had_history;
        Ok(())
    }

    /// Why storage is lost for good, if it is (see [`Store::check`]).
    pub fn lost(&self) -> Option<StoreError> {
        self.lost.get().cloned()
    }

    fn refuse_when_lost(&self) -> Result<(), StoreError> {
        self.lost().map_or(Ok(()), Err)
    }

    /// Queues one write for the flusher's next commit (`None`: a removal), and counts it
    /// after it is queued, so that a commit that reads the count finds at least that many
    /// writes in the queue.
    fn enqueue(&self, tree: TreeName, key: Vec<u8>, value: Option<Vec<u8>>) {
        self.queue
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Queued { tree, key, value });
        self.writes.fetch_add(1, Ordering::Relaxed);
    }

    /// Waits until every write made before this call is on disk.
    pub async fn flush(&self) -> Result<(), StoreError> {
        let (tx, rx) = oneshot::channel();
        self.flush_requests.send(tx).map_err(|_| StoreError {
            message: "the flusher thread has stopped".into(),
            disk_full: false,
            unavailable: false,
        })?;
        rx.await.map_err(|_| StoreError {
            message: "the flusher thread dropped a request".into(),
            disk_full: false,
            unavailable: false,
        })?
    }

    /// A final blocking commit, for shutdown.
    pub fn flush_blocking(&self) -> Result<(), StoreError> {
        self.committer
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .commit()
            .map(|_| ())
    }

    /// Whether storage answers: a read, the data directory and mark file still being the ones
    /// opened at start, plus the flusher's last result.
    pub fn check(&self) -> Result<(), StoreError> {
        self.refuse_when_lost()?;
        self.db.get(b"health")?;
        self.place
            .check()
            .map_err(|message| lose(&self.lost, message))?;
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
                unavailable: false,
            });
        }
        Ok(())
    }
}

impl super::Backend for SledStore {
    fn load(&self) -> Result<Loaded, StoreError> {
        SledStore::load(self)
    }
    fn put_member(
        &self,
        cluster: &str,
        node: &str,
        record: &MemberRecord,
    ) -> Result<(), StoreError> {
        SledStore::put_member(self, cluster, node, record)
    }
    fn delete_member(&self, cluster: &str, node: &str) -> Result<(), StoreError> {
        SledStore::delete_member(self, cluster, node)
    }
    fn put_claim(&self, cluster: &str, node: &str, record: &ClaimRecord) -> Result<(), StoreError> {
        SledStore::put_claim(self, cluster, node, record)
    }
    fn delete_claim(&self, cluster: &str, node: &str) -> Result<(), StoreError> {
        SledStore::delete_claim(self, cluster, node)
    }
    fn put_grant(&self, cluster: &str, record: &GrantRecord) -> Result<(), StoreError> {
        SledStore::put_grant(self, cluster, record)
    }
    fn put_history(&self, cluster: &str, record: &HistoryRecord) -> Result<(), StoreError> {
        SledStore::put_history(self, cluster, record)
    }
    fn delete_cluster(&self, cluster: &str) -> Result<(), StoreError> {
        SledStore::delete_cluster(self, cluster)
    }
    fn lost(&self) -> Option<StoreError> {
        SledStore::lost(self)
    }
    fn flush(&self) -> super::StoreFuture<'_, ()> {
        Box::pin(SledStore::flush(self))
    }
    fn close(&self) -> super::StoreFuture<'_, ()> {
        let store = self.clone();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || store.flush_blocking())
                .await
                .map_err(|e| StoreError {
                    message: format!("the final flush did not finish: {e}"),
                    disk_full: false,
                    unavailable: false,
                })?
        })
    }
    fn check(&self) -> Result<(), StoreError> {
        SledStore::check(self)
    }
    fn kind(&self) -> &'static str {
        "sled"
    }
}

/// Writes back into sled every grant and history the copy holds ahead of sled's (see
/// [`integrity::grant_is_ahead`]), and says which clusters it restored.
fn restore_from_copy(
    kept: &Decisive,
    decisive: &mut Decisive,
    grants: &sled::Tree,
    history: &sled::Tree,
    writes: &AtomicU64,
) -> Result<(), StoreError> {
    let mut restored_grants = Vec::new();
    for (cluster, grant) in &kept.grants {
        if grant_is_ahead(grant, decisive.grants.get(cluster)) {
            grants.insert(cluster.as_bytes(), encode(grant))?;
            writes.fetch_add(1, Ordering::Relaxed);
            decisive.grants.insert(cluster.clone(), grant.clone());
            restored_grants.push(cluster.as_str());
        }
    }
    let mut restored_histories = Vec::new();
    for (cluster, kept_history) in &kept.histories {
        let in_sled = decisive.histories.get(cluster);
        if history_is_ahead(kept_history, in_sled) {
            let mut record = kept_history.clone();
            record.last_seen_unix_ms = record
                .last_seen_unix_ms
                .max(in_sled.and_then(|h| h.last_seen_unix_ms));
            history.insert(cluster.as_bytes(), encode(&record))?;
            writes.fetch_add(1, Ordering::Relaxed);
            decisive.histories.insert(cluster.clone(), record);
            restored_histories.push(cluster.as_str());
        }
    }
    if !restored_grants.is_empty() || !restored_histories.is_empty() {
        tracing::warn!(
            grants = %restored_grants.join(","),
            histories = %restored_histories.join(","),
            "sled lacked bootstrap grants or cluster histories that its copy holds: restored {} grants and {} histories from the copy",
            restored_grants.len(),
            restored_histories.len()
        );
    }
    Ok(())
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
    use crate::store::integrity;

    fn reopen(dir: &Path) -> SledStore {
        // The flusher thread lets go of the database a moment after the last `Store` is dropped.
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match SledStore::open(dir, 1 << 20) {
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
            let store = SledStore::open(dir.path(), 1 << 20).expect("open");
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
            let store = SledStore::open(dir.path(), 1 << 20).expect("open");
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

    fn grant(generation: u64) -> GrantRecord {
        GrantRecord {
            node: "n1".into(),
            address: "10.0.0.1:8300".into(),
            expect: 3,
            generation,
            granted_at_unix_ms: 1,
            nonce: None,
        }
    }

    /// A data directory of an earlier version (sled records, no `meta`, no mark) opens as it
    /// is and gets a mark; sled without the mark file afterwards is a loss.
    #[tokio::test]
    async fn an_earlier_versions_directory_is_an_upgrade_and_a_lost_mark_is_not() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let db = sled::open(dir.path()).expect("sled");
            db.open_tree("grants")
                .expect("tree")
                .insert(&b"c1"[..], encode(&grant(2)))
                .expect("insert");
            db.flush().expect("flush");
        }
        {
            let store = reopen(dir.path());
            assert_eq!(store.load().expect("load").grants[0].1.generation, 2);
            assert!(matches!(
                integrity::read_mark(dir.path()),
                MarkRead::Valid(_)
            ));
        }
        std::fs::remove_file(dir.path().join(integrity::MARK_FILE)).expect("rm mark");
        let refused = loop {
            match SledStore::open_checked(dir.path(), 1 << 20, false) {
                Err(OpenError::DataLoss(e)) => break e,
                Err(OpenError::Storage(e)) if e.message.contains("lock") => {
                    std::thread::sleep(std::time::Duration::from_millis(10))
                }
                other => panic!("a missing mark was not refused: {other:?}"),
            }
        };
        assert!(refused.0.contains("missing"), "{refused}");
    }

    /// A damaged copy next to an intact sled is written again from sled; a grant sled lacks is
    /// written back from the copy.
    #[tokio::test]
    async fn the_copy_is_repaired_from_sled_and_restores_what_sled_lacks() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let store = SledStore::open(dir.path(), 1 << 20).expect("open");
            store.put_grant("c1", &grant(1)).expect("put");
            store.flush().await.expect("flush");
        }
        for name in integrity::COPY_FILES {
            let copy_path = dir.path().join(name);
            let mut bytes = std::fs::read(&copy_path).expect("copy");
            bytes[30] ^= 0x20;
            std::fs::write(&copy_path, &bytes).expect("damage the copy");
        }
        {
            let store = reopen(dir.path());
            assert_eq!(store.load().expect("load").grants.len(), 1);
            let mark = integrity::read_mark(dir.path());
            assert!(matches!(
                integrity::read_copy(dir.path(), &mark),
                CopyRead::Valid { .. }
            ));
            // sled forgets the grant without a loss of commits (as a non-prefix damage would).
            store.grants.remove(&b"c1"[..]).expect("remove");
            store.flush().await.expect("flush");
        }
        let store = reopen(dir.path());
        let loaded = store.load().expect("load");
        assert_eq!(loaded.grants.len(), 1, "the grant was not restored");
        assert_eq!(loaded.grants[0].1, grant(1));
    }
}
