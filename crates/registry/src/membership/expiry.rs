//! The expiry index: every node entry filed under a deadline, so that expiring costs in
//! proportion to what expires, not to how many members there are.
//!
//! The index is lazy. An entry is filed once, under the deadline it had then; a renewal moves
//! only the entry's own deadline and touches no index (a renewal is the hot path). When the
//! filed deadline comes, [`ExpiryIndex::pop_due`] hands the entry out, and the caller either
//! expires it or, when it was renewed meanwhile, files it again under its real deadline.

use std::collections::BTreeMap;
use std::sync::Arc;

use tokio::time::Instant;

/// Where an entry is filed: its key in the index. The sequence number keeps two entries with
/// the same deadline apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Filed {
    deadline: Instant,
    seq: u64,
}

/// Node entries by the deadline they were filed under.
#[derive(Debug, Default)]
pub struct ExpiryIndex {
    /// `(deadline, seq)` -> `(cluster, node)`: the names the state's maps are keyed by,
    /// shared, so that filing an entry allocates nothing but the index's own slot.
    filed: BTreeMap<Filed, (Arc<str>, Arc<str>)>,
    /// The last sequence number handed out.
    seq: u64,
}

impl ExpiryIndex {
    /// Files `cluster/node` under `deadline`.
    pub fn file(&mut self, cluster: &Arc<str>, node: &Arc<str>, deadline: Instant) -> Filed {
        self.seq += 1;
        let filed = Filed {
            deadline,
            seq: self.seq,
        };
        self.filed
            .insert(filed, (Arc::clone(cluster), Arc::clone(node)));
        filed
    }

    /// Removes an entry that leaves before its deadline.
    pub fn remove(&mut self, filed: Filed) {
        self.filed.remove(&filed);
    }

    /// Takes out the earliest entry filed at or before `now`, if any. The caller owns it from
    /// then on: it expires it, or files it again.
    pub fn pop_due(&mut self, now: Instant) -> Option<(Arc<str>, Arc<str>)> {
        let entry = self.filed.first_entry()?;
        if entry.key().deadline > now {
            return None;
        }
        Some(entry.remove())
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.filed.len()
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.filed.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn name(s: &str) -> Arc<str> {
        Arc::from(s)
    }

    #[test]
    fn pops_in_deadline_order_and_only_when_due() {
        let t0 = Instant::now();
        let mut index = ExpiryIndex::default();
        index.file(&name("c"), &name("late"), t0 + Duration::from_secs(2));
        index.file(&name("c"), &name("early"), t0 + Duration::from_secs(1));
        index.file(&name("c"), &name("tie"), t0 + Duration::from_secs(1));
        assert_eq!(index.pop_due(t0), None);
        let due = |index: &mut ExpiryIndex, at| index.pop_due(at).map(|(_, n)| n.to_string());
        let at1 = t0 + Duration::from_secs(1);
        assert_eq!(due(&mut index, at1).as_deref(), Some("early"));
        assert_eq!(due(&mut index, at1).as_deref(), Some("tie"));
        assert_eq!(due(&mut index, at1), None);
        assert_eq!(index.len(), 1);
        assert_eq!(
            due(&mut index, t0 + Duration::from_secs(3)).as_deref(),
            Some("late")
        );
        assert!(index.is_empty());
    }

    #[test]
    fn a_removed_entry_never_comes_due() {
        let t0 = Instant::now();
        let mut index = ExpiryIndex::default();
        let filed = index.file(&name("c"), &name("n"), t0);
        index.remove(filed);
        assert_eq!(index.pop_due(t0 + Duration::from_secs(1)), None);
    }
}
