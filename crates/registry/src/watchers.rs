//! The bound on watchers (`--max-watchers`): blocking reads that wait and event streams, each
//! of which holds a task, a receiver and a response in memory for as long as it lasts. The
//! bound is one semaphore for the whole process, so it counts the same way whatever carries
//! the watcher: HTTP/1 connections (one watcher each), HTTP/2 streams (many per connection)
//! or TLS. A watcher holds a [`WatcherPermit`] for its whole life; dropping it (the wait ends,
//! the stream ends, the client goes away and the handler is dropped) frees the slot.
//!
//! Metrics: `rollcall_watchers` (a gauge, the watchers open now) and
//! `rollcall_watch_wakeups_total` (each time a blocking read was woken by a change of its
//! cluster, counted by the handler); both are listed at 0 from start.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::api::ApiError;
use crate::telemetry::{limit_refused, Limit};

/// What a refused watcher is told to wait before it tries again. Slots free as other watchers'
/// waits end or their clients go; a few seconds keeps a refused client from spinning without
/// leaving a dashboard or a `members --follow` waiting long.
pub const WATCHER_RETRY_AFTER: Duration = Duration::from_secs(5);

/// The watchers' slots, shared by every connection.
#[derive(Debug, Clone)]
pub struct Watchers {
    /// One permit per watcher that may be open at once.
    permits: Arc<Semaphore>,
    /// `--max-watchers`, for the refusal's message.
    max: usize,
}

/// One watcher's slot, given back when it is dropped.
#[derive(Debug)]
pub struct WatcherPermit {
    _permit: OwnedSemaphorePermit,
}

impl Watchers {
    /// `max` slots. Lists the watchers' metrics at 0, so call it after the recorder is
    /// installed.
    pub fn new(max: usize) -> Watchers {
        metrics::gauge!("rollcall_watchers").set(0.0);
        metrics::counter!("rollcall_watch_wakeups_total").increment(0);
        Watchers {
            // The config bounds `max` far below `Semaphore::MAX_PERMITS`.
            permits: Arc::new(Semaphore::new(max.min(Semaphore::MAX_PERMITS))),
            max,
        }
    }

    /// A slot for one more watcher, or `429 limit_exceeded` with `Retry-After` when every
    /// slot is taken (counted as a refusal of `max-watchers`). Never waits.
    pub fn admit(&self) -> Result<WatcherPermit, ApiError> {
        match self.permits.clone().try_acquire_owned() {
            Ok(permit) => {
                metrics::gauge!("rollcall_watchers").increment(1.0);
                Ok(WatcherPermit { _permit: permit })
            }
            Err(_) => {
                limit_refused(Limit::MaxWatchers);
                Err(ApiError::LimitExceededRetry {
                    message: format!(
                        "the registry serves its limit of {} watchers (--max-watchers: blocking reads and event streams, over all connections); retry after {} s, read without `index` for an answer at once, or raise --max-watchers",
                        self.max,
                        WATCHER_RETRY_AFTER.as_secs()
                    ),
                    retry_after: WATCHER_RETRY_AFTER,
                })
            }
        }
    }
}

impl Drop for WatcherPermit {
    fn drop(&mut self) {
        metrics::gauge!("rollcall_watchers").decrement(1.0);
    }
}

/// Counts one wake-up of a blocking read by a change of the cluster it watches.
pub fn count_wakeup() {
    metrics::counter!("rollcall_watch_wakeups_total").increment(1);
}
