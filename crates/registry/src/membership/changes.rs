//! Who is woken by a change. Two kinds of followers:
//!
//! - The event stream (`/v1/events`, which the dashboard follows) wants every change and
//!   decision of every cluster: one `watch` channel carrying `State::events`.
//! - A blocking read watches one cluster's index: it is woken only when that cluster's index
//!   moves, so that a change in one cluster costs nothing to the watchers of the others. One
//!   `watch` channel per cluster that has a watcher, carrying the cluster's index; the first
//!   watcher creates it, the last one removes it, so there are at most as many channels as
//!   watchers (itself bounded by `--max-watchers`).
//!
//! `publish` (under the state lock) compares each watched cluster's channel with the cluster's
//! index, but only when the global index moved since it last looked: a renewal or a decision
//! that changes no membership costs one comparison. This relies on an invariant of the state:
//! a cluster's index only ever changes to a new value of the global index (`bump_index`).
//!
//! Locks: the state's, then the channels' map, never the other way round.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::watch;

use super::state::State;

type Channels = Arc<Mutex<HashMap<String, watch::Sender<u64>>>>;

/// The channels changes are published on.
#[derive(Debug)]
pub(super) struct Changes {
    /// Every change or decision, in any cluster: `State::events`.
    all: watch::Sender<u64>,
    /// One channel per watched cluster, carrying its index.
    by_cluster: Channels,
    /// The global index when the watched clusters were last compared: no cluster's index can
    /// have moved while it stays the same. Written only under the state lock.
    compared_at_index: AtomicU64,
    /// The last `events` sent on `all`: a renewal changes nothing, and then [`Changes::wake_all`]
    /// returns without taking the channel's write lock.
    sent_events: AtomicU64,
}

/// A blocking read's subscription to one cluster's index. Dropping it removes the cluster's
/// channel when it was the last one watching.
#[derive(Debug)]
pub struct ClusterWatch {
    cluster: String,
    /// Always `Some` until dropped; taken under the map's lock so that the count of receivers
    /// the last watcher sees is exact.
    receiver: Option<watch::Receiver<u64>>,
    channels: Channels,
}

fn lock(channels: &Channels) -> MutexGuard<'_, HashMap<String, watch::Sender<u64>>> {
    // Nothing panics while holding it; a poisoned map is still a valid map.
    channels.lock().unwrap_or_else(|e| e.into_inner())
}

impl Changes {
    pub fn new() -> Changes {
        Changes {
            all: watch::channel(0).0,
            by_cluster: Arc::default(),
            compared_at_index: AtomicU64::new(0),
            sent_events: AtomicU64::new(0),
        }
    }

    /// Wakes the watchers of every cluster whose index moved. Called under the state lock, so
    /// that what a channel carries is the state's own value.
    pub fn wake_clusters(&self, st: &State) {
        if self.compared_at_index.load(Ordering::Relaxed) == st.index {
            return;
        }
        self.compared_at_index.store(st.index, Ordering::Relaxed);
        for (cluster, sender) in lock(&self.by_cluster).iter() {
            let index = st.clusters.get(cluster.as_str()).map_or(0, |c| c.index);
            sender.send_if_modified(|seen| {
                let moved = *seen != index;
                *seen = index;
                moved
            });
        }
    }

    /// Wakes every follower of all changes, when `events` is new to them.
    pub fn wake_all(&self, events: u64) {
        if self.sent_events.swap(events, Ordering::Relaxed) == events {
            return;
        }
        self.all.send_if_modified(|seen| {
            let changed = *seen != events;
            *seen = events;
            changed
        });
    }

    /// A receiver of every change or decision.
    pub fn subscribe_all(&self) -> watch::Receiver<u64> {
        self.all.subscribe()
    }

    /// A watch of `cluster`, whose index is `index` now. Called under the state lock, so that
    /// a new channel starts from the state's own value.
    pub fn watch_cluster(&self, cluster: &str, index: u64) -> ClusterWatch {
        let receiver = lock(&self.by_cluster)
            .entry(cluster.to_string())
            .or_insert_with(|| watch::channel(index).0)
            .subscribe();
        ClusterWatch {
            cluster: cluster.to_string(),
            receiver: Some(receiver),
            channels: self.by_cluster.clone(),
        }
    }

    /// How many clusters have a channel now.
    #[cfg(test)]
    pub fn watched_clusters(&self) -> usize {
        lock(&self.by_cluster).len()
    }
}

impl ClusterWatch {
    /// Resolves when the cluster's index moves. `false` if it can never move again (the
    /// channel is gone, which does not happen while a watch holds it).
    pub async fn changed(&mut self) -> bool {
        match self.receiver.as_mut() {
            Some(receiver) => receiver.changed().await.is_ok(),
            None => false,
        }
    }
}

impl Drop for ClusterWatch {
    fn drop(&mut self) {
        let mut channels = lock(&self.channels);
        drop(self.receiver.take());
        if channels
            .get(&self.cluster)
            .is_some_and(|sender| sender.receiver_count() == 0)
        {
            channels.remove(&self.cluster);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::time::Instant;

    use super::*;

    fn state_with(indexes: &[(&str, u64)]) -> State {
        let mut st = State::new(Duration::from_secs(15), Instant::now());
        for (cluster, index) in indexes {
            st.clusters.entry(Arc::from(*cluster)).or_default().index = *index;
            st.index = st.index.max(*index);
        }
        st
    }

    #[tokio::test]
    async fn a_change_wakes_only_the_watchers_of_its_cluster() {
        let changes = Changes::new();
        let mut st = state_with(&[("a", 1), ("b", 2)]);
        changes.wake_clusters(&st);
        let mut watch_a = changes.watch_cluster("a", 1);
        let mut watch_b = changes.watch_cluster("b", 2);
        st.index = 3;
        st.clusters.get_mut("a").expect("a").index = 3;
        changes.wake_clusters(&st);
        let woken = |w: &mut ClusterWatch| {
            w.receiver
                .as_mut()
                .expect("receiver")
                .has_changed()
                .expect("open")
        };
        assert!(woken(&mut watch_a));
        assert!(!woken(&mut watch_b));
        assert!(watch_a.changed().await);
    }

    #[test]
    fn the_last_watcher_of_a_cluster_removes_its_channel() {
        let changes = Changes::new();
        let first = changes.watch_cluster("a", 0);
        let second = changes.watch_cluster("a", 0);
        let other = changes.watch_cluster("b", 0);
        assert_eq!(changes.watched_clusters(), 2);
        drop(first);
        assert_eq!(changes.watched_clusters(), 2, "a is still watched");
        drop(second);
        drop(other);
        assert_eq!(changes.watched_clusters(), 0);
    }
}
