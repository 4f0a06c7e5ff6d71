//! `--force-new-cluster`: quorum-loss recovery on a survivor that keeps its data. etcd's own
//! `--force-new-cluster` restarts the member as a one-member raft with its data (it commits
//! a configuration that removes every other member). Once per data directory: the marker
//! `rollcall-forced-new-cluster` is written there once etcd answers as a member with a
//! leader, and later starts with the flag still set (a Compose file keeps its environment)
//! ignore it with a warning, so that members that joined the new raft since are never cut
//! off again.

use std::path::{Path, PathBuf};

use tracing::{info, warn};

use crate::config::{EngineKind, Settings};
use crate::engine::dir_has_entries;
use crate::exit::{Exit, EXIT_CONFIG};

/// The marker's name in the data directory.
pub const FORCED_MARKER: &str = "rollcall-forced-new-cluster";
/// A request to force a new cluster at the next start, written by `rollcall-sidecar
/// force-new-cluster` inside a running container (whose environment cannot change): the next
/// start forces once, whatever the flag and an older marker say, and removes the request.
pub const REQUEST_MARKER: &str = "rollcall-force-new-cluster";

pub fn request_path(data_dir: &Path) -> PathBuf {
    data_dir.join(REQUEST_MARKER)
}

/// Asked for: by the flag, or by a request file in the data directory.
fn asked(settings: &Settings) -> bool {
    settings.force_new_cluster || request_path(&settings.data_dir).exists()
}

pub fn marker_path(data_dir: &Path) -> PathBuf {
    data_dir.join(FORCED_MARKER)
}

/// Checked before `run` starts anything: the flag needs the etcd engine and raft state in
/// the data directory (exit 64 otherwise); a data directory that was forced already is
/// logged here, and its flag is then ignored.
pub fn check_at_start(settings: &Settings) -> Result<(), Exit> {
    if !asked(settings) {
        return Ok(());
    }
    let has_raft_state = dir_has_entries(&settings.data_dir.join("member").join("wal"));
    if settings.engine != EngineKind::Etcd {
        return Err(Exit::new(
            EXIT_CONFIG,
            "--force-new-cluster (ROLLCALL_FORCE_NEW_CLUSTER) is for the etcd engine",
        ));
    }
    if !has_raft_state {
        return Err(Exit::new(
            EXIT_CONFIG,
            format!(
                "--force-new-cluster (ROLLCALL_FORCE_NEW_CLUSTER) needs a survivor's raft state in the data directory, and {} holds none",
                settings.data_dir.display()
            ),
        ));
    }
    if marker_path(&settings.data_dir).exists() && !request_path(&settings.data_dir).exists() {
        warn!(marker = %marker_path(&settings.data_dir).display(), "--force-new-cluster is set, but this data directory was forced into a new raft before: ignoring the flag (unset ROLLCALL_FORCE_NEW_CLUSTER)");
    } else {
        warn!(data_dir = %settings.data_dir.display(), "--force-new-cluster: restarting this member as a new one-member raft that keeps its data; every other member is removed from it");
    }
    Ok(())
}

/// True when a request file asks for it, or when the flag is set (`asked`) and this data
/// directory was not forced before.
pub fn pending(asked: bool, data_dir: &Path) -> bool {
    request_path(data_dir).exists() || (asked && !marker_path(data_dir).exists())
}

/// Writes the marker once etcd runs as the new raft's member, and removes the request it
/// served; a failure is logged (the next start would force again, which a one-member raft
/// survives).
pub fn confirm(data_dir: &Path) {
    if let Err(error) = std::fs::remove_file(request_path(data_dir)) {
        if error.kind() != std::io::ErrorKind::NotFound {
            warn!(request = %request_path(data_dir).display(), %error, "cannot remove the force-new-cluster request: the next start forces again");
        }
    }
    let path = marker_path(data_dir);
    let seconds = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default();
    match std::fs::write(
        &path,
        format!("forced a new cluster at unix time {seconds}\n"),
    ) {
        Ok(()) => {
            info!(marker = %path.display(), "etcd runs as a new one-member raft with its data; later starts ignore --force-new-cluster")
        }
        Err(error) => {
            warn!(marker = %path.display(), %error, "cannot write the force-new-cluster marker")
        }
    }
}
