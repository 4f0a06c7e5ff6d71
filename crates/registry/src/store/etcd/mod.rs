//! The etcd backend: the same records as sled's, in an etcd v3 cluster the operator provides,
//! written only by the active replica of its term and fenced by its election.
//!
//! # Key layout (under `--etcd-prefix`, `/rollcall/` by default)
//!
//! | key                          | value             |
//! |------------------------------|-------------------|
//! | `members/{cluster}/{node}`   | [`MemberRecord`]  |
//! | `claims/{cluster}/{node}`    | [`ClaimRecord`]   |
//! | `grants/{cluster}`           | [`GrantRecord`]   |
//! | `history/{cluster}`          | [`HistoryRecord`] |
//! | `leader`                     | the active replica (see `replica/election.rs`), on its lease |
//!
//! # Writes
//!
//! A write is queued in memory in decision order (under the membership's lock, as with sled)
//! and returns at once. [`EtcdStore::flush`] sends everything queued as one transaction (split
//! in chunks of at most [`MAX_TXN_OPS`] operations and about [`MAX_TXN_BYTES`], each its own
//! transaction, in order) whose one comparison is the fence: the leader key's
//! `create_revision` is still the one this replica's election created. A replica that lost
//! its lease (frozen, cut off) finds the key gone or re-created by another replica, and its
//! transaction does nothing. Flushes run one at a time and each sends everything queued when
//! it starts, so that concurrent requests share transactions (group commit): writes are
//! numbered as they are queued, and a flush whose writes an earlier flush already sent
//! returns without a transaction of its own (otherwise every request queued behind a flush
//! would send a transaction of the few writes that arrived in the meantime, one after another).
//! What no request waits for (a status or metadata change) is sent within a second.
//!
//! A flush that fails, by the fence or because etcd's answer never came (the write may or may
//! not have happened), is fail-stop: the store is lost for the rest of the term, every later
//! write and flush is refused, and the replica steps down and reloads from etcd before it
//! campaigns again (`replica/mod.rs`). No decision acknowledged after the failure could have
//! depended on the failed transaction: its own flush fails too.

pub mod client;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use self::client::{Compare, EtcdClient, Op};
use super::{
    decode, encode, split_key, Backend, ClaimRecord, GrantRecord, HistoryRecord, Loaded,
    MemberRecord, Record, StoreError, StoreFuture,
};

/// etcd's default `--max-txn-ops` is 128: well below it.
pub const MAX_TXN_OPS: usize = 100;
/// etcd's default `--max-request-bytes` is 1.5 MiB: well below it.
pub const MAX_TXN_BYTES: usize = 1 << 20;
/// How often writes nobody waits for are sent.
pub const BACKGROUND_FLUSH: Duration = Duration::from_secs(1);

/// The term's fence: the leader key and the `create_revision` this replica's election gave it.
#[derive(Debug, Clone)]
pub struct Fence {
    pub key: Vec<u8>,
    pub create_revision: i64,
}

/// The etcd backend of one term.
#[derive(Debug, Clone)]
pub struct EtcdStore {
    inner: Arc<Inner>,
}

#[derive(Debug, Default)]
struct Pending {
    ops: Vec<Op>,
    /// Every write ever queued in this term, counted: the number of the last one.
    queued: u64,
}

#[derive(Debug)]
struct Inner {
    client: EtcdClient,
    prefix: Vec<u8>,
    /// `None` only for `migrate`, which writes before any replica runs.
    fence: Option<Fence>,
    /// Writes not yet sent, in decision order.
    pending: Mutex<Pending>,
    /// How many writes, counted as [`Pending::queued`] counts them, etcd holds: every write up
    /// to this one. Changed only by the flush that holds `committing`.
    committed: AtomicU64,
    /// One flush at a time, so that transactions reach etcd in decision order.
    committing: tokio::sync::Mutex<()>,
    /// Why the store is lost for the rest of the term, and whether because etcd could not be
    /// reached (rather than refused the write).
    lost: OnceLock<(String, bool)>,
    /// What was read at open, handed to the membership once.
    loaded: Mutex<Option<Loaded>>,
}

impl EtcdStore {
    /// Opens the store of one term: reads every record under `prefix` and starts the
    /// background flush. The records are read once, here; `load` hands them over.
    pub async fn open(
        client: EtcdClient,
        prefix: &str,
        fence: Option<Fence>,
    ) -> Result<EtcdStore, StoreError> {
        let prefix = prefix.as_bytes().to_vec();
        let loaded = read_all(&client, &prefix).await?;
        let inner = Arc::new(Inner {
            client,
            prefix,
            fence,
            pending: Mutex::new(Pending::default()),
            committed: AtomicU64::new(0),
            committing: tokio::sync::Mutex::new(()),
            lost: OnceLock::new(),
            loaded: Mutex::new(Some(loaded)),
        });
        tokio::spawn(background_flush(Arc::downgrade(&inner)));
        Ok(EtcdStore { inner })
    }

    /// How many writes are queued and not yet sent.
    pub fn pending(&self) -> usize {
        self.inner.pending().ops.len()
    }

    fn queue(&self, op: Op) -> Result<(), StoreError> {
        if let Some(e) = Backend::lost(self) {
            return Err(e);
        }
        let mut pending = self.inner.pending();
        pending.ops.push(op);
        pending.queued += 1;
        Ok(())
    }

    fn key(&self, tree: &str, rest: &str) -> Vec<u8> {
        let mut k = self.inner.prefix.clone();
        k.extend_from_slice(tree.as_bytes());
        k.push(b'/');
        k.extend_from_slice(rest.as_bytes());
        k
    }
}

impl Inner {
    fn pending(&self) -> std::sync::MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn lose(&self, message: String, unavailable: bool) -> StoreError {
        if self.lost.set((message.clone(), unavailable)).is_ok() {
            tracing::error!(reason = %message, "etcd storage is lost for this term: every write is refused until the replica reloads from etcd");
        }
        self.lost_error().unwrap_or(StoreError {
            message,
            disk_full: false,
            unavailable,
        })
    }

    fn lost_error(&self) -> Option<StoreError> {
        self.lost.get().map(|(message, unavailable)| StoreError {
            message: message.clone(),
            disk_full: false,
            unavailable: *unavailable,
        })
    }

    /// Sends what is queued, in a task of its own: once it has taken the queued writes, it
    /// finishes (or fails the store) even when the request that asked for it goes away (a
    /// timeout, a client that disconnected). Otherwise another request whose writes it took
    /// would find nothing queued and be answered as if they were durable.
    async fn flush(self: &Arc<Self>) -> Result<(), StoreError> {
        let inner = self.clone();
        let target = self.pending().queued;
        tokio::spawn(async move { inner.commit(target).await })
            .await
            .map_err(|e| StoreError {
                message: format!("the etcd commit task failed: {e}"),
                disk_full: false,
                unavailable: false,
            })?
    }

    /// Makes every write up to number `target` durable: returns at once when an earlier
    /// flush sent them, else sends everything queued.
    async fn commit(&self, target: u64) -> Result<(), StoreError> {
        let _one_at_a_time = self.committing.lock().await;
        if let Some(e) = self.lost_error() {
            return Err(e);
        }
        if self.committed.load(Ordering::Acquire) >= target {
            return Ok(());
        }
        let (ops, upto) = {
            let mut pending = self.pending();
            (std::mem::take(&mut pending.ops), pending.queued)
        };
        let compare: Vec<Compare> = self
            .fence
            .iter()
            .map(|f| Compare::CreateRevision(f.key.clone(), f.create_revision))
            .collect();
        for chunk in chunks(ops) {
            match self.client.txn(&compare, &chunk, &[]).await {
                Ok(outcome) if outcome.succeeded => {}
                Ok(_) => {
                    return Err(self.lose(
                        "fenced: the leader key is no longer this replica's (its lease ended; another replica may be active), so its writes were refused by etcd".into(),
                        false,
                    ))
                }
                Err(e) => {
                    let unavailable = e.is_unavailable();
                    return Err(self.lose(
                        format!("an etcd write failed and its outcome is unknown: {e}"),
                        unavailable,
                    ));
                }
            }
        }
        self.committed.store(upto, Ordering::Release);
        Ok(())
    }
}

/// Splits `ops` into transactions of at most [`MAX_TXN_OPS`] operations and about
/// [`MAX_TXN_BYTES`], in order, and keeps of each key only its last operation within a
/// transaction: etcd refuses a transaction that names a key twice, and since a transaction is
/// atomic and operations on different keys commute, its outcome is the same. After each
/// transaction, etcd holds the state of a prefix of the decisions.
fn chunks(ops: Vec<Op>) -> Vec<Vec<Op>> {
    let mut out: Vec<Vec<Op>> = Vec::new();
    let mut bytes = 0;
    for op in ops {
        let size = op.size();
        let full = out
            .last()
            .is_none_or(|c| c.len() >= MAX_TXN_OPS || bytes + size > MAX_TXN_BYTES);
        if full {
            out.push(Vec::new());
            bytes = 0;
        }
        bytes += size;
        if let Some(last) = out.last_mut() {
            last.push(op);
        }
    }
    out.into_iter().map(last_per_key).collect()
}

/// The last operation of each key, in the order of those last operations.
fn last_per_key(ops: Vec<Op>) -> Vec<Op> {
    let mut seen = std::collections::HashSet::new();
    let mut kept: Vec<Op> = ops
        .into_iter()
        .rev()
        .filter(|op| match op {
            Op::Put { key, .. } | Op::Delete { key } | Op::Get { key } => seen.insert(key.clone()),
            Op::DeletePrefix { .. } => true,
        })
        .collect();
    kept.reverse();
    kept
}

/// Sends what nobody waits for, every [`BACKGROUND_FLUSH`], until the store is dropped.
async fn background_flush(inner: Weak<Inner>) {
    loop {
        tokio::time::sleep(BACKGROUND_FLUSH).await;
        let Some(inner) = inner.upgrade() else {
            return;
        };
        if inner.lost.get().is_some() {
            return;
        }
        let queued = {
            let pending = inner.pending();
            (!pending.ops.is_empty()).then_some(pending.queued)
        };
        if let Some(target) = queued {
            let _ = inner.commit(target).await;
        }
    }
}

/// Every record under `prefix`, decoded as `load` returns them.
pub async fn read_all(client: &EtcdClient, prefix: &[u8]) -> Result<Loaded, StoreError> {
    let (kvs, _) = client.range_prefix(prefix).await.map_err(|e| StoreError {
        message: format!("cannot read the registry's records from etcd: {e}"),
        disk_full: false,
        unavailable: e.is_unavailable(),
    })?;
    let mut loaded = Loaded::default();
    for kv in kvs {
        let Some(rest) = kv.key.strip_prefix(prefix) else {
            continue;
        };
        let Ok(rest) = std::str::from_utf8(rest) else {
            skip(&kv.key, "a key that is not UTF-8", &mut loaded.n_skipped);
            continue;
        };
        let Some((tree, name)) = rest.split_once('/') else {
            // `leader` and anything else of ours that is not a record.
            continue;
        };
        match tree {
            "members" => match (split_key(name.as_bytes()), decoded::<MemberRecord>(&kv)) {
                (Some((c, n)), Some(r)) => loaded.members.push((c, n, r)),
                _ => skip(&kv.key, "a member record", &mut loaded.n_skipped),
            },
            "claims" => match (split_key(name.as_bytes()), decoded::<ClaimRecord>(&kv)) {
                (Some((c, n)), Some(r)) => loaded.claims.push((c, n, r)),
                _ => skip(&kv.key, "a claim record", &mut loaded.n_skipped),
            },
            "grants" => match decoded::<GrantRecord>(&kv) {
                Some(r) => loaded.grants.push((name.to_string(), r)),
                None => skip(&kv.key, "a grant record", &mut loaded.n_skipped),
            },
            "history" => match decoded::<HistoryRecord>(&kv) {
                Some(r) => loaded.histories.push((name.to_string(), r)),
                None => skip(&kv.key, "a history record", &mut loaded.n_skipped),
            },
            _ => {}
        }
    }
    Ok(loaded)
}

fn decoded<R: Record>(kv: &client::Kv) -> Option<R> {
    decode::<R>(&kv.value).ok()
}

fn skip(key: &[u8], what: &str, n_skipped: &mut usize) {
    tracing::warn!(key = %String::from_utf8_lossy(key), what, "skipping a record in etcd that does not decode");
    *n_skipped += 1;
}

impl Backend for EtcdStore {
    fn load(&self) -> Result<Loaded, StoreError> {
        self.inner
            .loaded
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
            .ok_or_else(|| StoreError {
                message: "an etcd store is loaded once per term".into(),
                disk_full: false,
                unavailable: false,
            })
    }
    fn put_member(
        &self,
        cluster: &str,
        node: &str,
        record: &MemberRecord,
    ) -> Result<(), StoreError> {
        self.queue(Op::Put {
            key: self.key("members", &format!("{cluster}/{node}")),
            value: encode(record),
            lease: 0,
        })
    }
    fn delete_member(&self, cluster: &str, node: &str) -> Result<(), StoreError> {
        self.queue(Op::Delete {
            key: self.key("members", &format!("{cluster}/{node}")),
        })
    }
    fn put_claim(&self, cluster: &str, node: &str, record: &ClaimRecord) -> Result<(), StoreError> {
        self.queue(Op::Put {
            key: self.key("claims", &format!("{cluster}/{node}")),
            value: encode(record),
            lease: 0,
        })
    }
    fn delete_claim(&self, cluster: &str, node: &str) -> Result<(), StoreError> {
        self.queue(Op::Delete {
            key: self.key("claims", &format!("{cluster}/{node}")),
        })
    }
    fn put_grant(&self, cluster: &str, record: &GrantRecord) -> Result<(), StoreError> {
        self.queue(Op::Put {
            key: self.key("grants", cluster),
            value: encode(record),
            lease: 0,
        })
    }
    fn put_history(&self, cluster: &str, record: &HistoryRecord) -> Result<(), StoreError> {
        self.queue(Op::Put {
            key: self.key("history", cluster),
            value: encode(record),
            lease: 0,
        })
    }
    fn delete_cluster(&self, cluster: &str) -> Result<(), StoreError> {
        self.queue(Op::Delete {
            key: self.key("grants", cluster),
        })?;
        self.queue(Op::Delete {
            key: self.key("history", cluster),
        })
    }
    fn lost(&self) -> Option<StoreError> {
        self.inner.lost_error()
    }
    fn flush(&self) -> StoreFuture<'_, ()> {
        Box::pin(self.inner.flush())
    }
    fn close(&self) -> StoreFuture<'_, ()> {
        Box::pin(self.inner.flush())
    }
    fn check(&self) -> Result<(), StoreError> {
        self.inner.lost_error().map_or(Ok(()), Err)
    }
    fn kind(&self) -> &'static str {
        "etcd"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_split_by_count_and_bytes_in_order() {
        let put = |i: usize, n: usize| Op::Put {
            key: format!("k{i}").into_bytes(),
            value: vec![b'x'; n],
            lease: 0,
        };
        let ops: Vec<Op> = (0..250).map(|i| put(i, 10)).collect();
        let sizes: Vec<usize> = chunks(ops.clone()).iter().map(Vec::len).collect();
        assert_eq!(sizes, vec![100, 100, 50]);
        assert_eq!(chunks(ops.clone()).concat(), ops);
        let big: Vec<Op> = (0..5).map(|i| put(i, 400_000)).collect();
        let sizes: Vec<usize> = chunks(big).iter().map(Vec::len).collect();
        assert_eq!(sizes, vec![1, 1, 1, 1, 1]);
        assert!(chunks(Vec::new()).is_empty());
    }

    #[test]
    fn a_key_written_twice_in_a_transaction_keeps_its_last_write() {
        let put = |k: &str, v: &str| Op::Put {
            key: k.into(),
            value: v.into(),
            lease: 0,
        };
        let delete = |k: &str| Op::Delete { key: k.into() };
        let ops = vec![
            put("a", "1"),
            put("b", "1"),
            delete("a"),
            put("c", "1"),
            put("a", "2"),
        ];
        assert_eq!(
            chunks(ops),
            vec![vec![put("b", "1"), put("c", "1"), put("a", "2")]]
        );
        let ops = vec![put("a", "1"), delete("a")];
        assert_eq!(chunks(ops), vec![vec![delete("a")]]);
    }
}
