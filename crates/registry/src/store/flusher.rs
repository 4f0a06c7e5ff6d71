//! The group-commit flusher: one thread that makes sled's log durable for every request waiting
//! on it, with one commit per batch: the writes queued since the last commit applied to sled in
//! the order they were made, the commit's number into sled, one `flush` and one `fdatasync` of
//! sled's log, the copy of grants and histories when it changed, the high-water
//! mark (see [`super::integrity`]), and a check that the data directory is still the one the
//! store opened.
//!
//! Durations here are measured on `std::time::Instant` on purpose: they time the disk, which a
//! paused test clock must not hide, and no decision depends on them.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::integrity::{CopyFiles, Decisive, Mark, MarkFile, Place};
use super::StoreError;

/// How a waiting request is answered.
pub(super) type FlushReply = oneshot::Sender<Result<(), StoreError>>;

/// The key of the commit number in sled's `meta` tree.
pub(super) const COMMIT_KEY: &[u8] = b"commit";

/// A commit is made at least this often while writes are queued, even if nobody waits on one:
/// a status change (answered without waiting) reaches the disk within it.
pub(super) const QUEUED_WRITES_MAX_AGE: Duration = Duration::from_secs(1);

/// Which of the store's trees a queued write goes to.
#[derive(Debug, Clone, Copy)]
pub(super) enum TreeName {
    Members,
    Claims,
    Grants,
    History,
}

/// One write the registry made, not yet applied to sled.
#[derive(Debug)]
pub(super) struct Queued {
    pub(super) tree: TreeName,
    pub(super) key: Vec<u8>,
    /// `None` removes the key.
    pub(super) value: Option<Vec<u8>>,
}

/// The trees queued writes are applied to.
#[derive(Debug)]
pub(super) struct Trees {
    pub(super) members: sled::Tree,
    pub(super) claims: sled::Tree,
    pub(super) grants: sled::Tree,
    pub(super) history: sled::Tree,
}

/// What the flusher last did, for `/health`.
#[derive(Debug, Default)]
pub(super) struct FlusherStats {
    /// The error of the last flush, or `None` when it succeeded.
    pub(super) last_error: std::sync::Mutex<Option<String>>,
}

/// The copy of grants and histories as the store's writes left it, and whether the file on
/// disk is behind it.
#[derive(Debug, Default)]
pub(super) struct CopyState {
    pub(super) decisive: Decisive,
    /// A decisive change is not in the file yet: the next commit rewrites it.
    pub(super) dirty: bool,
}

/// Everything one commit touches. Behind a mutex: the flusher thread commits, and so does
/// [`super::Store::flush_blocking`] at shutdown.
#[derive(Debug)]
pub(super) struct Committer {
    /// The writes made since the last commit took them, in the order they were made.
    pub(super) queue: Arc<Mutex<Vec<Queued>>>,
    pub(super) trees: Trees,
    pub(super) db: sled::Db,
    pub(super) meta: sled::Tree,
    /// sled's log, for the `fdatasync` sled 0.34 does not do itself.
    pub(super) log_file: std::fs::File,
    pub(super) mark_file: MarkFile,
    pub(super) copy_files: CopyFiles,
    pub(super) place: Place,
    /// The last commit made (durable or not: numbers are never reused).
    pub(super) last: Mark,
    /// The store's write counter.
    pub(super) writes: Arc<AtomicU64>,
    pub(super) copy: Arc<Mutex<CopyState>>,
    /// Set, for good, when the data directory is found removed or replaced.
    pub(super) lost: Arc<OnceLock<StoreError>>,
}

impl Committer {
    /// One commit. Everything written to sled before this call is durable when it returns `Ok`,
    /// and the mark says so.
    pub(super) fn commit(&mut self) -> Result<Mark, StoreError> {
        if let Some(lost) = self.lost.get() {
            return Err(lost.clone());
        }
        let mut mark = Mark {
            commit: self.last.commit + 1,
            // Read before the queue is taken: every write counted is in it (`enqueue`).
            writes: self.writes.load(Ordering::SeqCst),
            copy_commit: self.last.copy_commit,
        };
        // Taken even if this commit fails: a number is never used twice.
        self.last = mark;
        self.apply_queue()?;
        // After every write this commit covers in sled's log: a sled that recovers this
        // number recovered those writes.
        self.meta.insert(COMMIT_KEY, mark.to_meta())?;
        let copy = {
            let mut state = self.copy.lock().unwrap_or_else(|e| e.into_inner());
            std::mem::take(&mut state.dirty).then(|| state.decisive.clone())
        };
        let result = self.make_durable(&mut mark, copy.as_ref());
        if result.is_err() && copy.is_some() {
            self.copy.lock().unwrap_or_else(|e| e.into_inner()).dirty = true;
        }
        self.last = mark;
        result.map(|()| mark)
    }

    /// Whether writes wait in the queue.
    pub(super) fn has_queued(&self) -> bool {
        !self
            .queue
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_empty()
    }

    /// Applies the queued writes to sled in the order they were made. Fail-stop: a write sled
    /// refuses here was already decided and applied in the registry's memory, which disk no
    /// longer matches, so storage is lost for good (every later write refused, `/health`
    /// failing) and the registry's memory is only made whole again by a restart, which loads
    /// what sled holds. Nobody waiting on this commit or a later one is acknowledged.
    pub(super) fn apply_queue(&mut self) -> Result<(), StoreError> {
        let queued = std::mem::take(&mut *self.queue.lock().unwrap_or_else(|e| e.into_inner()));
        let n = queued.len();
        for (i, q) in queued.into_iter().enumerate() {
            let tree = match q.tree {
                TreeName::Members => &self.trees.members,
                TreeName::Claims => &self.trees.claims,
                TreeName::Grants => &self.trees.grants,
                TreeName::History => &self.trees.history,
            };
            let result = match q.value {
                Some(value) => tree.insert(q.key, value).map(|_| ()),
                None => tree.remove(q.key).map(|_| ()),
            };
            if let Err(e) = result {
                let e = StoreError::from(e);
                return Err(lose_with(
                    &self.lost,
                    StoreError {
                        message: format!(
                            "sled refused a queued write ({} of {n} left unapplied): {}; the registry's memory holds changes its disk does not, so every write is refused until a restart reloads what the disk holds",
                            n - i,
                            e.message
                        ),
                        // A full disk stays a 507 for as long as writes are refused.
                        ..e
                    },
                ));
            }
        }
        Ok(())
    }

    fn make_durable(&mut self, mark: &mut Mark, copy: Option<&Decisive>) -> Result<(), StoreError> {
        self.db.flush()?;
        self.log_file
            .sync_data()
            .map_err(|e| io_error("fdatasync of sled's log", e))?;
        if let Some(decisive) = copy {
            self.copy_files
                .write(decisive, mark.commit)
                .map_err(|e| io_error("writing the copy of grants and histories", e))?;
            mark.copy_commit = mark.commit;
        }
        self.mark_file
            .write(*mark)
            .map_err(|e| io_error("writing the high-water mark", e))?;
        // Last: a directory removed while this commit ran leaves its writes on unlinked files.
        self.place
            .check()
            .map_err(|message| lose(&self.lost, message))
    }
}

/// Records that storage is lost for good (the first reason stays) and says so.
pub(super) fn lose(lost: &OnceLock<StoreError>, message: String) -> StoreError {
    lose_with(
        lost,
        StoreError {
            message,
            disk_full: false,
            unavailable: false,
        },
    )
}

/// [`lose`] with the error as it is, so that a full disk keeps answering 507.
pub(super) fn lose_with(lost: &OnceLock<StoreError>, error: StoreError) -> StoreError {
    if lost.set(error.clone()).is_ok() {
        tracing::error!(reason = %error.message, "storage is lost: from now on every write is refused and /health fails; restart the registry on a data directory (with free space)");
    }
    error
}

/// An I/O error as a `StoreError`, 507 when the disk is full.
pub(super) fn io_error(what: &str, e: std::io::Error) -> StoreError {
    let inner = StoreError::from(sled::Error::Io(e));
    StoreError {
        message: format!("{what}: {}", inner.message),
        disk_full: inner.disk_full,
        unavailable: false,
    }
}

/// The group-commit loop: wait for one request, take every other waiting one, commit once,
/// answer them all. Ends when every `Store` clone is gone.
pub(super) fn run_flusher(
    committer: Arc<Mutex<Committer>>,
    requests: mpsc::Receiver<FlushReply>,
    stats: Arc<FlusherStats>,
) {
    loop {
        let first = match requests.recv_timeout(QUEUED_WRITES_MAX_AGE) {
            Ok(first) => first,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                // Nobody waits, but writes that were answered at once must reach the disk too.
                let mut committer = committer.lock().unwrap_or_else(|e| e.into_inner());
                if committer.has_queued() {
                    let result = committer.commit();
                    if let Err(e) = &result {
                        tracing::error!(error = %e.message, "the periodic commit of queued writes failed");
                    }
                    *stats.last_error.lock().unwrap_or_else(|e| e.into_inner()) =
                        result.err().map(|e| e.message);
                }
                continue;
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        };
        let mut batch = vec![first];
        batch.extend(requests.try_iter());
        let started = Instant::now();
        let result = committer
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .commit()
            .map(|_| ());
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
