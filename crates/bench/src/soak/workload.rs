//! The well-behaved side of the soak: members heartbeating at a fixed rate (one in ten changes
//! its status, which wakes watchers), timed from the moment each heartbeat was due so that a
//! stall is charged to every heartbeat behind it; and the dashboard's readers.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hdrhistogram::Histogram;
use hyper::Method;
use rollcall_protocol::{AgentStatus, HeartbeatRequest, MemberRole};
use tokio::time::{Instant, MissedTickBehavior};

use super::tally::Tally;
use crate::systems::HttpConn;

/// The heartbeat workload's figures for one phase.
#[derive(Debug)]
pub struct Heartbeats {
    pub sent: u64,
    pub latency_us: Histogram<u64>,
    /// Connections the workload had to open again (the registry closed one under it).
    pub reconnects: u64,
}

impl Heartbeats {
    pub fn p_ms(&self, q: f64) -> f64 {
        self.latency_us.value_at_quantile(q) as f64 / 1000.0
    }
}

/// The body of member `i`'s heartbeat; `flip` chooses which of two leaders it reports.
pub fn heartbeat_body(i: usize, flip: Option<bool>) -> String {
    let heartbeat = HeartbeatRequest {
        raft_members: None,
        address: format!("10.{}.{}.{}:8300", (i >> 16) & 255, (i >> 8) & 255, i & 255),
        role: MemberRole::Server,
        status: flip.map(|f| AgentStatus {
            in_raft: Some(true),
            leader: Some(if f { "n0" } else { "n1" }.into()),
            ..AgentStatus::default()
        }),
        meta: BTreeMap::new(),
        raft: None,
    };
    serde_json::to_string(&heartbeat).unwrap_or_default()
}

/// Sends heartbeats of `members` members of `cluster` at `rate` a second over `conns`
/// connections until `stop`, recording into `tally` as class `heartbeat`.
pub async fn heartbeats(
    addr: SocketAddr,
    cluster: &'static str,
    members: usize,
    rate: f64,
    conns: usize,
    stop: Arc<AtomicBool>,
    tally: Arc<Tally>,
) -> Heartbeats {
    let histogram = Arc::new(Mutex::new(new_histogram()));
    let counts = Arc::new(Mutex::new((0u64, 0u64)));
    let period = Duration::from_secs_f64(conns as f64 / rate);
    let mut tasks = Vec::new();
    for c in 0..conns {
        let (stop, tally, histogram, counts) = (
            stop.clone(),
            tally.clone(),
            histogram.clone(),
            counts.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut conn: Option<HttpConn> = None;
            let start = Instant::now() + period.mul_f64(c as f64 / conns as f64);
            let mut ticks = tokio::time::interval_at(start, period);
            ticks.set_missed_tick_behavior(MissedTickBehavior::Burst);
            let mut seq: usize = 0;
            while !stop.load(Ordering::Relaxed) {
                let due = ticks.tick().await;
                let member = (c + seq * conns) % members;
                let flip = seq.is_multiple_of(10).then_some(seq.is_multiple_of(20));
                seq += 1;
                if conn.is_none() {
                    match HttpConn::connect(addr).await {
                        Ok(new) => {
                            conn = Some(new);
                            lock(&counts).1 += 1;
                        }
                        Err(_) => {
                            tally.transport_error("heartbeat");
                            continue;
                        }
                    }
                }
                let Some(http) = conn.as_mut() else { continue };
                let path = format!("/v1/clusters/{cluster}/members/m{member}");
                match http
                    .request(Method::PUT, &path, Some(heartbeat_body(member, flip)))
                    .await
                {
                    Ok((status, body)) => {
                        tally.answer("heartbeat", status.as_u16(), &body);
                        let us = due.elapsed().as_micros() as u64;
                        lock(&histogram).record(us.max(1)).ok();
                        lock(&counts).0 += 1;
                    }
                    Err(_) => {
                        tally.transport_error("heartbeat");
                        conn = None;
                    }
                }
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let (sent, opened) = *lock(&counts);
    let latency_us = lock(&histogram).clone();
    Heartbeats {
        sent,
        latency_us,
        reconnects: opened.saturating_sub(conns as u64),
    }
}

/// `readers` clients loading the dashboard's page back to back until `stop`; returns how many
/// pages they loaded and the largest page's size.
pub async fn dashboard_readers(
    addr: SocketAddr,
    readers: usize,
    stop: Arc<AtomicBool>,
    tally: Arc<Tally>,
) -> (u64, usize) {
    let mut tasks = Vec::new();
    for _ in 0..readers {
        let (stop, tally) = (stop.clone(), tally.clone());
        tasks.push(tokio::spawn(async move {
            let (mut pages, mut largest) = (0u64, 0usize);
            let mut conn: Option<HttpConn> = None;
            while !stop.load(Ordering::Relaxed) {
                if conn.is_none() {
                    conn = HttpConn::connect(addr).await.ok();
                }
                let Some(http) = conn.as_mut() else {
                    tally.transport_error("dashboard");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                };
                match http.request(Method::GET, "/", None).await {
                    Ok((status, body)) => {
                        tally.answer("dashboard", status.as_u16(), &body);
                        pages += 1;
                        largest = largest.max(body.len());
                    }
                    Err(_) => {
                        tally.transport_error("dashboard");
                        conn = None;
                    }
                }
            }
            (pages, largest)
        }));
    }
    let mut total = (0, 0);
    for t in tasks {
        if let Ok((pages, largest)) = t.await {
            total = (total.0 + pages, total.1.max(largest));
        }
    }
    total
}

pub fn new_histogram() -> Histogram<u64> {
    // 1 µs to 100 s, three significant digits: the constructor cannot fail with these bounds.
    Histogram::new_with_bounds(1, 100_000_000, 3).expect("valid histogram bounds")
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
