//! Pre-serialised answers of the list endpoints (`GET /v1/clusters/{cluster}/members` and
//! `GET /members`), so that a cluster of 10,000 members is serialised a few times a second at
//! most, not once per request.
//!
//! A cached body is exact about *who* is listed: it is used only while the cluster's index is the
//! one it was built at and before the first listed member's deadline. Within that, only the
//! `age_ms` and `expires_in_ms` figures (and the freshest-first order among members renewed
//! meanwhile) move with time; a body older than [`LIST_CACHE_MAX_AGE`] is still answered while
//! one background task builds its successor (stale-while-revalidate), so no reader waits for a
//! rebuild that only refreshes ages. When the membership changed, readers do wait, and only one
//! of them builds: the others wait for its body instead of building their own (single flight).
//!
//! Each answer carries a weak ETag, `W/"{epoch}-{index}-{count}"`: the cache's epoch (drawn at
//! start, because the indexes start again with the process), the cluster's index and how many
//! members the list holds. Within one index a list can only lose members (to their deadlines:
//! a new member or a changed record moves the index), so the three name one membership. A
//! poller that sends it back in `If-None-Match` is answered `304` with no body. Weak because
//! the ages in the body move while the ETag stays: it promises the same members, not the same
//! bytes.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::time::Instant;

use axum::body::Bytes;
use rollcall_protocol::{JoinTargetsResponse, MemberRole};

use crate::membership::Membership;

/// How old a pre-serialised list may grow before a rebuild refreshes its ages. The age figures
/// of an answer lag by at most this plus the time of one rebuild.
pub const LIST_CACHE_MAX_AGE: Duration = Duration::from_millis(250);
/// Past this many cached lists the cache starts again empty, so many clusters cannot grow it
/// without bound.
const LIST_CACHE_MAX_ENTRIES: usize = 10_000;

/// Which list, of which cluster.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ListKey {
    pub cluster: String,
    pub role: Option<MemberRole>,
    pub kind: ListKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ListKind {
    /// `GET /v1/clusters/{cluster}/members`: the members with their records.
    Members,
    /// `GET /members`: the join addresses as JSON.
    JoinJson,
    /// `GET /members?format=text`: one `host:port` per line.
    JoinText,
}

/// The cache: one slot per list.
#[derive(Debug)]
pub struct ListCache {
    slots: Mutex<HashMap<ListKey, Arc<Slot>>>,
    /// Drawn at start and part of every ETag, so that an ETag of an earlier run (whose indexes
    /// may come again) never matches.
    epoch: u64,
}

impl Default for ListCache {
    fn default() -> Self {
        ListCache {
            slots: Mutex::default(),
            epoch: rand::random(),
        }
    }
}

/// One list answer.
#[derive(Debug, Clone)]
pub struct Listed {
    /// The cluster's index the body was built at.
    pub index: u64,
    /// The weak ETag of the membership the body lists (see the module's documentation).
    pub etag: String,
    pub body: Bytes,
}

impl Listed {
    /// Whether an `If-None-Match` value names this answer's membership: `*`, or one of its
    /// comma-separated ETags compared weakly (a strong form of the same tag matches too).
    pub fn matches(&self, if_none_match: &[u8]) -> bool {
        let Ok(value) = std::str::from_utf8(if_none_match) else {
            return false;
        };
        let ours = self.etag.trim_start_matches("W/");
        value
            .split(',')
            .map(str::trim)
            .any(|tag| tag == "*" || tag.trim_start_matches("W/") == ours)
    }
}

#[derive(Debug, Default)]
struct Slot {
    body: Mutex<Option<Built>>,
    /// Held by the one reader that builds after a membership change.
    build: tokio::sync::Mutex<()>,
    /// Set while a background refresh of the ages runs.
    refreshing: AtomicBool,
}

#[derive(Debug, Clone)]
struct Built {
    index: u64,
    at: Instant,
    /// The earliest deadline among the listed members: the body may not outlive it.
    valid_until: Instant,
    /// How many members the body lists.
    count: usize,
    body: Bytes,
}

enum Freshness {
    /// Exact membership, ages young enough.
    Fresh,
    /// Exact membership, ages older than [`LIST_CACHE_MAX_AGE`].
    AgesStale,
    /// Built at another index or past a listed member's deadline: must not be answered.
    Wrong,
}

impl Built {
    fn freshness(&self, index: u64, now: Instant) -> Freshness {
        if self.index != index || now >= self.valid_until {
            Freshness::Wrong
        } else if now.duration_since(self.at) >= LIST_CACHE_MAX_AGE {
            Freshness::AgesStale
        } else {
            Freshness::Fresh
        }
    }
}

impl ListCache {
    /// The list for `key`: from the cache when it is exact, otherwise built.
    pub async fn get(&self, membership: &Arc<Membership>, key: ListKey) -> Listed {
        let built = self.get_built(membership, key).await;
        Listed {
            index: built.index,
            etag: format!("W/\"{:x}-{}-{}\"", self.epoch, built.index, built.count),
            body: built.body,
        }
    }

    async fn get_built(&self, membership: &Arc<Membership>, key: ListKey) -> Built {
        let slot = self.slot(&key);
        let current = membership.cluster_index(&key.cluster);
        if let Some(cached) = slot.cached() {
            match cached.freshness(current, Instant::now()) {
                Freshness::Fresh => return cached,
                Freshness::AgesStale => {
                    if !slot.refreshing.swap(true, Ordering::AcqRel) {
                        spawn_refresh(membership.clone(), slot.clone(), key);
                    }
                    return cached;
                }
                Freshness::Wrong => {}
            }
        }
        // Single flight: whoever holds `build` builds; the others find its body on the recheck.
        let _building = slot.build.lock().await;
        let current = membership.cluster_index(&key.cluster);
        if let Some(cached) = slot.cached() {
            if !matches!(cached.freshness(current, Instant::now()), Freshness::Wrong) {
                return cached;
            }
        }
        // Serialising a large cluster takes milliseconds of CPU: keep it off the reactor.
        let job = {
            let (membership, key) = (membership.clone(), key.clone());
            tokio::task::spawn_blocking(move || build(&membership, &key))
        };
        let built = match job.await {
            Ok(built) => built,
            // Only a panic in the builder gets here; build on this thread then, so that the
            // request is still answered (and the panic, if it repeats, is reported).
            Err(_) => build(membership, &key),
        };
        slot.store(built.clone());
        built
    }

    fn slot(&self, key: &ListKey) -> Arc<Slot> {
        let mut slots = lock(&self.slots);
        if let Some(slot) = slots.get(key) {
            return slot.clone();
        }
        if slots.len() >= LIST_CACHE_MAX_ENTRIES {
            slots.clear();
        }
        slots.entry(key.clone()).or_default().clone()
    }
}

impl Slot {
    fn cached(&self) -> Option<Built> {
        lock(&self.body).clone()
    }

    /// Keeps the newer of the stored body and `built` (a slow background refresh must not
    /// replace a body built later at a newer index).
    fn store(&self, built: Built) {
        let mut body = lock(&self.body);
        let newer = match &*body {
            Some(old) => (built.index, built.at) >= (old.index, old.at),
            None => true,
        };
        if newer {
            *body = Some(built);
        }
    }
}

/// Rebuilds `slot` in the background to refresh its ages; clears `refreshing` when done, even if
/// the build panics.
fn spawn_refresh(membership: Arc<Membership>, slot: Arc<Slot>, key: ListKey) {
    struct Done(Arc<Slot>);
    impl Drop for Done {
        fn drop(&mut self) {
            self.0.refreshing.store(false, Ordering::Release);
        }
    }
    let done = Done(slot);
    tokio::task::spawn_blocking(move || {
        let built = build(&membership, &key);
        done.0.store(built);
    });
}

fn build(membership: &Membership, key: &ListKey) -> Built {
    let at = Instant::now();
    let members = membership.members(&key.cluster, key.role);
    let soonest = members
        .members
        .iter()
        .map(|m| m.expires_in_ms)
        .min()
        .unwrap_or(u64::MAX);
    let body = match key.kind {
        ListKind::Members => serialize(&members),
        ListKind::JoinText => members
            .members
            .iter()
            .flat_map(|m| [m.address.as_str(), "\n"])
            .collect::<String>()
            .into_bytes(),
        ListKind::JoinJson => serialize(&JoinTargetsResponse {
            cluster: key.cluster.clone(),
            index: members.index,
            addresses: members.members.iter().map(|m| m.address.clone()).collect(),
        }),
    };
    Built {
        index: members.index,
        at,
        valid_until: at + Duration::from_millis(soonest.min(60_000)),
        count: members.members.len(),
        body: Bytes::from(body),
    }
}

fn serialize<T: serde::Serialize>(value: &T) -> Vec<u8> {
    // The wire types serialise infallibly (no maps with non-string keys, no custom errors).
    serde_json::to_vec(value).unwrap_or_default()
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn built(index: u64, at: Instant, valid_for: Duration) -> Built {
        Built {
            index,
            at,
            valid_until: at + valid_for,
            count: 0,
            body: Bytes::from_static(b"[]"),
        }
    }

    #[test]
    fn a_body_is_answered_only_at_its_index_and_before_its_first_deadline() {
        let t0 = Instant::now();
        let b = built(7, t0, Duration::from_secs(1));
        assert!(matches!(b.freshness(7, t0), Freshness::Fresh));
        assert!(matches!(b.freshness(8, t0), Freshness::Wrong));
        assert!(matches!(
            b.freshness(7, t0 + LIST_CACHE_MAX_AGE),
            Freshness::AgesStale
        ));
        assert!(matches!(
            b.freshness(7, t0 + Duration::from_secs(1)),
            Freshness::Wrong
        ));
    }

    #[test]
    fn if_none_match_compares_weakly_and_accepts_lists_and_the_wildcard() {
        let listed = Listed {
            index: 3,
            etag: "W/\"ab-3-2\"".into(),
            body: Bytes::new(),
        };
        assert!(listed.matches(b"W/\"ab-3-2\""));
        assert!(listed.matches(b"\"ab-3-2\""));
        assert!(listed.matches(b"\"x\", W/\"ab-3-2\""));
        assert!(listed.matches(b"*"));
        assert!(!listed.matches(b"W/\"ab-3-1\""));
        assert!(!listed.matches(b"W/\"ac-3-2\""));
        assert!(!listed.matches(b""));
        assert!(!listed.matches(&[0xff, 0xfe]));
    }

    #[test]
    fn a_late_refresh_never_replaces_a_newer_body() {
        let slot = Slot::default();
        let t0 = Instant::now();
        slot.store(built(
            9,
            t0 + Duration::from_millis(5),
            Duration::from_secs(1),
        ));
        slot.store(built(
            8,
            t0 + Duration::from_millis(10),
            Duration::from_secs(1),
        ));
        assert_eq!(slot.cached().map(|b| b.index), Some(9));
        slot.store(built(
            9,
            t0 + Duration::from_millis(20),
            Duration::from_secs(1),
        ));
        assert_eq!(
            slot.cached().map(|b| b.at),
            Some(t0 + Duration::from_millis(20))
        );
    }
}
