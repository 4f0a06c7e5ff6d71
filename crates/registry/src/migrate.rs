//! `rollcall-registry migrate`: a sled data directory's records copied into etcd, for moving a
//! registry to `--store etcd`. The records are copied as they are (both backends store the
//! same JSON records). The copy is refused when the prefix already holds anything, and each of
//! its transactions is fenced on the absence of a leader key, so that a replica that starts on
//! the prefix meanwhile makes the copy fail rather than mix with it.

use std::path::Path;

use anyhow::Context as _;

use crate::store::etcd::client::{EtcdClient, EtcdOptions};
use crate::store::etcd::{read_all, EtcdStore, Fence};
use crate::store::{Backend, SledStore};

/// What was copied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Copied {
    pub members: usize,
    pub claims: usize,
    pub grants: usize,
    pub histories: usize,
}

/// Copies `data_dir`'s records into etcd under `prefix`, then reads them back and compares.
pub async fn migrate(
    data_dir: &Path,
    options: &EtcdOptions,
    prefix: &str,
) -> anyhow::Result<Copied> {
    // Refuses a sled that lost acknowledged writes, as the registry itself does.
    let sled = SledStore::open_checked(data_dir, 64 << 20, false)
        .map_err(|e| match e {
            crate::store::OpenError::DataLoss(refused) => anyhow::Error::new(refused),
            crate::store::OpenError::Storage(e) => anyhow::Error::new(e),
        })
        .with_context(|| format!("cannot open the sled data directory {}", data_dir.display()))?;
    let loaded = SledStore::load(&sled)?;
    let client = EtcdClient::new(options).map_err(anyhow::Error::msg)?;
    let (existing, _) = client
        .range_prefix(prefix.as_bytes())
        .await
        .context("cannot read etcd")?;
    if !existing.is_empty() {
        anyhow::bail!(
            "etcd already holds {} key(s) under {prefix}: nothing was copied. Use another --etcd-prefix, or remove them first (etcdctl del --prefix {prefix}) if they are not a registry's",
            existing.len()
        );
    }
    let leader = format!("{prefix}leader").into_bytes();
    let store = EtcdStore::open(
        client.clone(),
        prefix,
        Some(Fence {
            key: leader,
            create_revision: 0,
        }),
    )
    .await?;
    for (cluster, node, record) in &loaded.members {
        store.put_member(cluster, node, record)?;
    }
    for (cluster, node, record) in &loaded.claims {
        store.put_claim(cluster, node, record)?;
    }
    for (cluster, record) in &loaded.grants {
        store.put_grant(cluster, record)?;
    }
    for (cluster, record) in &loaded.histories {
        store.put_history(cluster, record)?;
    }
    Backend::flush(&store)
        .await
        .context("copying into etcd failed (a replica may have started on the prefix)")?;
    let copied = Copied {
        members: loaded.members.len(),
        claims: loaded.claims.len(),
        grants: loaded.grants.len(),
        histories: loaded.histories.len(),
    };
    let back = read_all(&client, prefix.as_bytes()).await?;
    let read = Copied {
        members: back.members.len(),
        claims: back.claims.len(),
        grants: back.grants.len(),
        histories: back.histories.len(),
    };
    if read != copied {
        anyhow::bail!("etcd holds {read:?} after copying {copied:?}");
    }
    Ok(copied)
}
