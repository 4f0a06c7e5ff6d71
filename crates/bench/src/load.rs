//! The load driver: `conns` connections, each running one request at a time, either as fast as
//! the server answers (closed loop, to find throughput) or on a fixed schedule (open loop, for
//! latency).
//!
//! # Coordinated omission
//!
//! In the fixed-rate mode every connection has its own schedule (`rate / conns` requests a
//! second, staggered across connections, as `wrk2` does). A request's latency is measured from
//! the time it was *meant* to be sent, so a server that stalls is charged for every request
//! that queued behind the stall, not only for the one that saw it. One refinement: when a
//! connection was idle (its previous answer came before the next intended send time), the
//! request is timed from its actual send instead, so the timer's millisecond granularity is not
//! charged to the server. A connection that is behind schedule is always timed from the
//! intended time.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hdrhistogram::Histogram;
use tokio::time::Instant;

use crate::systems::{Conn, Op};

/// How requests are paced.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Pace {
    /// Each connection sends its next request as soon as the last one is answered.
    Closed,
    /// The connections together send `rate` requests a second on a fixed schedule.
    FixedRate(f64),
}

/// Produces the operation for request number `seq` of connection `conn`.
pub type OpSource = Arc<dyn Fn(usize, u64) -> Op + Send + Sync>;

/// What one run measured.
#[derive(Debug)]
pub struct LoadResult {
    pub ops: u64,
    pub errors: u64,
    pub elapsed: Duration,
    /// Latency in microseconds (from the intended send time in the fixed-rate mode).
    pub latency_us: Histogram<u64>,
    pub first_error: Option<String>,
    /// Registrations that were acknowledged, with their lease (when `record_acks` was set).
    pub acked: Vec<(Op, i64)>,
}

impl LoadResult {
    pub fn throughput(&self) -> f64 {
        self.ops as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    pub fn percentile_ms(&self, q: f64) -> f64 {
        self.latency_us.value_at_quantile(q) as f64 / 1000.0
    }
}

/// How a run ends and what it keeps.
#[derive(Debug, Clone, Copy)]
pub struct RunOptions {
    pub pace: Pace,
    pub duration: Duration,
    /// Stop after this many operations in all (the duration still applies).
    pub max_ops: Option<u64>,
    /// A connection stops at its first error (used to detect a killed server).
    pub stop_on_error: bool,
    /// Keep every acknowledged operation and its answer's lease.
    pub record_acks: bool,
}

fn new_histogram() -> Histogram<u64> {
    // 1 µs to 100 s at three significant digits; the bounds are constants, so this cannot fail.
    Histogram::new_with_bounds(1, 100_000_000, 3).unwrap_or_else(|_| {
        Histogram::new(3).unwrap_or_else(|_| unreachable!("3 significant digits is valid"))
    })
}

/// Runs `source` over `conns` until `options` say stop. An optional `stop` flag ends it early.
pub async fn run(
    conns: Vec<Conn>,
    source: OpSource,
    options: RunOptions,
    stop: Option<Arc<AtomicBool>>,
) -> LoadResult {
    let n_conns = conns.len().max(1);
    let started = Instant::now();
    let end = started + options.duration;
    let issued = Arc::new(AtomicU64::new(0));
    let acked = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Vec::with_capacity(n_conns);
    for (worker, mut conn) in conns.into_iter().enumerate() {
        let source = source.clone();
        let issued = issued.clone();
        let acked = acked.clone();
        let stop = stop.clone();
        tasks.push(tokio::spawn(async move {
            let mut hist = new_histogram();
            let (mut ops, mut errors, mut first_error) = (0u64, 0u64, None::<String>);
            let interval = match options.pace {
                Pace::Closed => None,
                Pace::FixedRate(rate) => {
                    Some(Duration::from_secs_f64(n_conns as f64 / rate.max(1e-3)))
                }
            };
            // Stagger the schedules so the connections do not all fire at once.
            let mut intended =
                started + interval.unwrap_or_default() * worker as u32 / n_conns as u32;
            let mut previous_done = started;
            let mut my_acks = Vec::new();
            for seq in 0u64.. {
                if stop.as_ref().is_some_and(|s| s.load(Ordering::Relaxed)) {
                    break;
                }
                if let Some(max) = options.max_ops {
                    if issued.fetch_add(1, Ordering::Relaxed) >= max {
                        break;
                    }
                }
                let op = source(worker, seq);
                let timed_from = match interval {
                    None => {
                        if Instant::now() >= end {
                            break;
                        }
                        Instant::now()
                    }
                    Some(interval) => {
                        if intended >= end {
                            break;
                        }
                        wait_until(intended, interval, n_conns).await;
                        let from = if previous_done <= intended {
                            Instant::now()
                        } else {
                            intended
                        };
                        intended += interval;
                        from
                    }
                };
                let result = conn.execute(&op, false).await;
                let done = Instant::now();
                previous_done = done;
                match result {
                    Ok(answer) => {
                        ops += 1;
                        let us = done.duration_since(timed_from).as_micros() as u64;
                        let _ = hist.record(us.clamp(1, 100_000_000));
                        if options.record_acks {
                            my_acks.push((op, answer.lease));
                        }
                    }
                    Err(e) => {
                        errors += 1;
                        if first_error.is_none() {
                            first_error = Some(format!("{e:#}"));
                        }
                        if options.stop_on_error {
                            break;
                        }
                        // Do not spin on a broken connection.
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                }
            }
            if options.record_acks {
                acked
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .extend(my_acks);
            }
            (hist, ops, errors, first_error)
        }));
    }
    let mut result = LoadResult {
        ops: 0,
        errors: 0,
        elapsed: Duration::ZERO,
        latency_us: new_histogram(),
        first_error: None,
        acked: Vec::new(),
    };
    for task in tasks {
        match task.await {
            Ok((hist, ops, errors, first_error)) => {
                let _ = result.latency_us.add(&hist);
                result.ops += ops;
                result.errors += errors;
                if result.first_error.is_none() {
                    result.first_error = first_error;
                }
            }
            Err(e) => {
                result.errors += 1;
                result.first_error.get_or_insert_with(|| e.to_string());
            }
        }
    }
    result.elapsed = started.elapsed();
    result.acked = std::mem::take(&mut *acked.lock().unwrap_or_else(|e| e.into_inner()));
    result
}

/// Waits for the intended send time. Tokio's timer has millisecond resolution, so a single
/// connection with a sub-2ms interval polls instead (it is the only task then, and the cost is
/// one client thread); many connections sleep.
async fn wait_until(intended: Instant, interval: Duration, n_conns: usize) {
    if Instant::now() >= intended {
        return;
    }
    if n_conns == 1 && interval < Duration::from_millis(2) {
        while Instant::now() < intended {
            tokio::task::yield_now().await;
        }
    } else {
        tokio::time::sleep_until(intended).await;
    }
}
