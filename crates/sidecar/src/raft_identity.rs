//! The raft this node's agent belongs to, kept in a small file of the data directory
//! (`rollcall-raft.json`) so that it outlives the sidecar: what the registry's claim answer
//! named (the generation of the raft's grant and the random nonce drawn for it), and whether
//! the registry ever listed this node in that raft (accepted one of its heartbeats).
//!
//! The file is written before the agent starts (and before etcd writes anything), so that
//! a restart from data reports the same raft; heartbeats and claim renewals carry it. A
//! registry of an older version names no raft: then there is no file and nothing is reported
//! (the registry counts such members as unknown, listed and never refused).
//!
//! Why `listed` matters: a raft that was ever listed is never stopped on the registry's word
//! (the registry being down or wrong never stops a running agent), while a member of a raft
//! that was never listed and that the registry refuses as another raft's moves its data
//! aside and claims afresh (see [`move_data_aside`]).
//!
//! Once the member is first healthy, the file also records the agent's own IDs for it
//! ([`MemberIds`]: etcd's cluster ID and member ID), so that a restart from this data can
//! ask a live member of the same etcd cluster whether this member is still in the raft
//! (one removed meanwhile moves its data aside and claims afresh; see `run`).

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use rollcall_protocol::RaftIdentity;
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::exit::{Exit, EXIT_INTERNAL};

/// The file's name inside the data directory.
pub const IDENTITY_FILE: &str = "rollcall-raft.json";

/// The file's content.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdentityRecord {
    /// The cluster the raft belongs to (a data directory moved to another cluster's node is
    /// not that cluster's raft).
    pub cluster: String,
    pub generation: u64,
    pub nonce: String,
    /// The registry accepted a heartbeat of this member in this raft at least once.
    #[serde(default)]
    pub listed: bool,
    /// The agent's IDs for this member, once it was healthy (etcd only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub member_ids: Option<MemberIds>,
}

/// Which member of which agent cluster this data directory holds, in the agent's own IDs
/// (etcd: decimal, as its JSON API writes them).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberIds {
    pub cluster_id: String,
    pub member_id: String,
}

impl IdentityRecord {
    pub fn identity(&self) -> RaftIdentity {
        RaftIdentity {
            generation: self.generation,
            nonce: self.nonce.clone(),
        }
    }
}

/// This node's raft identity: the file and what was last read from or written to it.
#[derive(Debug)]
pub struct IdentityStore {
    path: PathBuf,
    cluster: String,
    /// Whether the data directory may be created to hold the file: yes for etcd and Consul,
    /// which create it anyway; not for exec, whose command owns its directory (without one
    /// the identity is kept in memory only, and reported all the same).
    create_data_dir: bool,
    current: Mutex<Option<IdentityRecord>>,
}

impl IdentityStore {
    /// Reads `<data_dir>/rollcall-raft.json`. A missing file is no identity; an unreadable
    /// one, or one of another cluster, is logged and ignored (reported as unknown, which the
    /// registry never refuses).
    pub fn load(data_dir: &Path, cluster: &str, create_data_dir: bool) -> IdentityStore {
        let path = data_dir.join(IDENTITY_FILE);
        let current = match std::fs::read(&path) {
            Ok(bytes) => match serde_json::from_slice::<IdentityRecord>(&bytes) {
                Ok(record) if record.cluster == cluster => Some(record),
                Ok(record) => {
                    warn!(path = %path.display(), file_cluster = %record.cluster, "the raft identity file names another cluster; ignoring it");
                    None
                }
                Err(error) => {
                    warn!(path = %path.display(), %error, "cannot parse the raft identity file; ignoring it");
                    None
                }
            },
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => None,
            Err(error) => {
                warn!(path = %path.display(), %error, "cannot read the raft identity file; ignoring it");
                None
            }
        };
        IdentityStore {
            path,
            cluster: cluster.to_string(),
            create_data_dir,
            current: Mutex::new(current),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<IdentityRecord>> {
        self.current.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn record(&self) -> Option<IdentityRecord> {
        self.lock().clone()
    }

    /// The identity heartbeats and renewals report, if known.
    pub fn identity(&self) -> Option<RaftIdentity> {
        self.lock().as_ref().map(IdentityRecord::identity)
    }

    /// True once the registry accepted a heartbeat of this member in this raft.
    pub fn listed(&self) -> bool {
        self.lock().as_ref().is_some_and(|r| r.listed)
    }

    /// Records the raft a claim answer named (not listed yet), before the agent starts; with
    /// `None` (a registry that names no raft) any earlier file is removed, so that nothing
    /// stale is reported.
    pub fn claimed(&self, raft: Option<&RaftIdentity>) -> Result<(), Exit> {
        let record = raft.map(|raft| IdentityRecord {
            cluster: self.cluster.clone(),
            generation: raft.generation,
            nonce: raft.nonce.clone(),
            listed: false,
            member_ids: None,
        });
        match &record {
            Some(record) => self.write(record)?,
            None => match std::fs::remove_file(&self.path) {
                Ok(()) => {
                    info!(path = %self.path.display(), "the registry named no raft; removed the old raft identity file")
                }
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
                Err(error) => {
                    return Err(Exit::new(
                        EXIT_INTERNAL,
                        format!("cannot remove {}: {error}", self.path.display()),
                    ))
                }
            },
        }
        *self.lock() = record;
        Ok(())
    }

    /// Notes that the registry listed this member; written once. A failure to write is only
    /// logged: the agent runs either way, and the next accepted heartbeat tries again.
    pub fn mark_listed(&self) {
        let mut current = self.lock();
        let Some(record) = current.as_mut().filter(|r| !r.listed) else {
            return;
        };
        let mut listed = record.clone();
        listed.listed = true;
        match self.write(&listed) {
            Ok(()) => {
                info!(generation = listed.generation, nonce = %listed.nonce, "the registry listed this member in its raft (recorded in the raft identity file)");
                *record = listed;
            }
            Err(error) => warn!(%error, "cannot record that the registry listed this member"),
        }
    }

    /// Records the agent's IDs for this member (when they are new). Like
    /// [`IdentityStore::mark_listed`], a failure to write is only logged; without a record
    /// (a registry that names no raft) there is nothing to add them to.
    pub fn record_member(&self, ids: &MemberIds) {
        let mut current = self.lock();
        let Some(record) = current
            .as_mut()
            .filter(|r| r.member_ids.as_ref() != Some(ids))
        else {
            return;
        };
        let mut updated = record.clone();
        updated.member_ids = Some(ids.clone());
        match self.write(&updated) {
            Ok(()) => {
                info!(cluster_id = %ids.cluster_id, member_id = %ids.member_id, "recorded this member's IDs in the raft identity file");
                *record = updated;
            }
            Err(error) => warn!(%error, "cannot record this member's IDs"),
        }
    }

    /// Writes `record` to a temporary file, syncs it and renames it over the file, so that a
    /// crash leaves the old file or the new one, never half of one.
    fn write(&self, record: &IdentityRecord) -> Result<(), Exit> {
        let fail = |what: &str, error: std::io::Error| {
            Exit::new(
                EXIT_INTERNAL,
                format!("cannot {what} {}: {error}", self.path.display()),
            )
        };
        if let Some(dir) = self.path.parent() {
            if !self.create_data_dir && !dir.is_dir() {
                info!(data_dir = %dir.display(), "no data directory: the raft's identity is kept in memory only");
                return Ok(());
            }
            create_data_dir(dir).map_err(|e| fail("create the directory of", e))?;
        }
        let tmp = self.path.with_extension("json.tmp");
        let bytes = serde_json::to_vec_pretty(record).expect("a plain struct serialises");
        let mut file = std::fs::File::create(&tmp).map_err(|e| fail("create", e))?;
        file.write_all(&bytes)
            .and_then(|()| file.write_all(b"\n"))
            .and_then(|()| file.sync_all())
            .map_err(|e| fail("write", e))?;
        std::fs::rename(&tmp, &self.path).map_err(|e| fail("replace", e))?;
        if let Some(dir) = self.path.parent() {
            if let Ok(dir) = std::fs::File::open(dir) {
                let _ = dir.sync_all();
            }
        }
        Ok(())
    }
}

/// Creates the data directory (and its parents) if needed, readable by its owner only, as
/// etcd wants its data directory.
pub fn create_data_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt as _;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

/// Renames the data directory to a sibling `<data-dir>.wrong-raft-<unix seconds>` (nothing
/// is deleted) and returns the new path. An empty directory is left in its place when the
/// data directory is a mount point (a volume cannot be renamed): then its entries are moved.
pub fn move_data_aside(data_dir: &Path) -> std::io::Result<PathBuf> {
    move_data_aside_as(data_dir, "wrong-raft")
}

/// [`move_data_aside`] with another word in the new name (`<data-dir>.<label>-<unix
/// seconds>`), saying why it was moved: `left` after `rollcall-sidecar leave`.
pub fn move_data_aside_as(data_dir: &Path, label: &str) -> std::io::Result<PathBuf> {
    let seconds = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default();
    let mut name = data_dir.as_os_str().to_owned();
    name.push(format!(".{label}-{seconds}"));
    let aside = PathBuf::from(name);
    match std::fs::rename(data_dir, &aside) {
        Ok(()) => Ok(aside),
        // EBUSY (a mount point) or EXDEV: keep the directory, move what it holds into a
        // directory inside it, which the next claim's agent never reads.
        Err(error)
            if matches!(
                error.raw_os_error(),
                Some(libc::EBUSY) | Some(libc::EXDEV) | Some(libc::EPERM)
            ) =>
        {
            move_entries_inside(data_dir, &format!("{label}-{seconds}"))
        }
        Err(error) => Err(error),
    }
}

/// Moves every entry of `data_dir` into a new directory `name` inside it, for a data
/// directory that cannot be renamed (a volume's mount point; a directory of an overlay's
/// lower layer, which overlayfs refuses to rename with EXDEV).
fn move_entries_inside(data_dir: &Path, name: &str) -> std::io::Result<PathBuf> {
    let inside = data_dir.join(name);
    create_data_dir(&inside)?;
    for entry in std::fs::read_dir(data_dir)? {
        let entry = entry?;
        if entry.path() == inside {
            continue;
        }
        std::fs::rename(entry.path(), inside.join(entry.file_name()))?;
    }
    Ok(inside)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raft(nonce: &str) -> RaftIdentity {
        RaftIdentity {
            generation: 2,
            nonce: nonce.to_string(),
        }
    }

    #[test]
    fn a_claimed_identity_is_written_then_listed_and_read_back_after_a_restart() {
        let temp = tempfile::tempdir().expect("tempdir");
        let data = temp.path().join("data");
        let store = IdentityStore::load(&data, "c", true);
        assert_eq!(store.identity(), None);
        store
            .claimed(Some(&raft("0123456789abcdef")))
            .expect("write");
        assert!(!store.listed());
        let again = IdentityStore::load(&data, "c", true);
        assert_eq!(again.identity(), Some(raft("0123456789abcdef")));
        assert!(!again.listed());
        again.mark_listed();
        let ids = MemberIds {
            cluster_id: "14035389283528514985".into(),
            member_id: "10276657743932975437".into(),
        };
        again.record_member(&ids);
        let third = IdentityStore::load(&data, "c", true);
        assert!(third.listed());
        assert_eq!(third.record().and_then(|r| r.member_ids), Some(ids));
        // Another cluster's file is not this cluster's raft.
        assert_eq!(IdentityStore::load(&data, "other", true).identity(), None);
        // A registry that names no raft: the old file goes.
        third.claimed(None).expect("remove");
        assert!(!data.join(IDENTITY_FILE).exists());
        assert_eq!(IdentityStore::load(&data, "c", true).identity(), None);
    }

    #[test]
    fn without_leave_to_create_the_data_directory_the_identity_lives_in_memory() {
        let temp = tempfile::tempdir().expect("tempdir");
        let data = temp.path().join("absent");
        let store = IdentityStore::load(&data, "c", false);
        store
            .claimed(Some(&raft("0123456789abcdef")))
            .expect("kept in memory");
        store.mark_listed();
        assert!(!data.exists());
        assert_eq!(store.identity(), Some(raft("0123456789abcdef")));
        assert!(store.listed());
    }

    #[test]
    fn a_directory_that_cannot_be_renamed_keeps_its_place_and_its_entries_move_inside() {
        let temp = tempfile::tempdir().expect("tempdir");
        let data = temp.path().join("data");
        std::fs::create_dir_all(data.join("member/wal")).expect("mkdir");
        std::fs::write(data.join(IDENTITY_FILE), b"{}").expect("write");
        let inside = move_entries_inside(&data, "wrong-raft-1").expect("move");
        assert_eq!(inside, data.join("wrong-raft-1"));
        let left: Vec<_> = std::fs::read_dir(&data)
            .expect("read")
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(left, ["wrong-raft-1"]);
        assert!(inside.join("member/wal").is_dir());
        assert!(inside.join(IDENTITY_FILE).is_file());
    }

    #[test]
    fn moving_data_aside_renames_the_directory_and_deletes_nothing() {
        let temp = tempfile::tempdir().expect("tempdir");
        let data = temp.path().join("data");
        std::fs::create_dir_all(data.join("member/wal")).expect("mkdir");
        std::fs::write(data.join("member/wal/0.wal"), b"log").expect("write");
        let aside = move_data_aside(&data).expect("move");
        assert!(!data.exists());
        assert!(aside
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with("data.wrong-raft-")));
        assert_eq!(
            std::fs::read(aside.join("member/wal/0.wal")).expect("kept"),
            b"log"
        );
    }
}
