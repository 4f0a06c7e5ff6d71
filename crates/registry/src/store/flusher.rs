//! The group-commit flusher: one thread that makes sled's log durable for every request waiting
//! on it, with one commit per batch: the commit's number into sled, one `flush` and one
//! `fdatasync` of sled's log, the copy of grants and histories when it changed, the high-water
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
    pub(super) lost: Arc<OnceLock<String>>,
}

impl Committer {
    /// One commit. Everything written to sled before this call is durable when it returns `Ok`,
    /// and the mark says so.
    pub(super) fn commit(&mut self) -> Result<Mark, StoreError> {
        let mut mark = Mark {
            commit: self.last.commit + 1,
            writes: self.writes.load(Ordering::SeqCst),
            copy_commit: self.last.copy_commit,
        };
        // Taken even if this commit fails: a number is never used twice.
        self.last = mark;
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
pub(super) fn lose(lost: &OnceLock<String>, message: String) -> StoreError {
    if lost.set(message.clone()).is_ok() {
        tracing::error!(reason = %message, "storage is lost: from now on every write is refused and /health fails; restart the registry on a data directory");
    }
    StoreError {
        message,
        disk_full: false,
        unavailable: false,
    }
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
    while let Ok(first) = requests.recv() {
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
