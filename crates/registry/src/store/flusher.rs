//! The group-commit flusher: one thread that makes sled's log durable for every request waiting
//! on it, with one `flush` and one `fdatasync` per batch.
//!
//! Durations here are measured on `std::time::Instant` on purpose: they time the disk, which a
//! paused test clock must not hide, and no decision depends on them.

use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::StoreError;

/// How a waiting request is answered.
pub(super) type FlushReply = oneshot::Sender<Result<(), StoreError>>;

/// What the flusher last did, for `/health`.
#[derive(Debug, Default)]
pub(super) struct FlusherStats {
    /// The error of the last flush, or `None` when it succeeded.
    pub(super) last_error: std::sync::Mutex<Option<String>>,
}

/// The group-commit loop: wait for one request, take every other waiting one, flush once,
/// answer them all. Ends when every `Store` clone is gone.
pub(super) fn run_flusher(
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
