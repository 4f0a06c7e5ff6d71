//! `--restore-snapshot`: the next generation of a lost raft starts from an `etcdctl snapshot
//! save` of the old one. Only the node granted `bootstrap` uses it: before etcd starts, the
//! snapshot is restored (`etcdctl snapshot restore`) into its data directory as a one-member
//! cluster with this node's name, peer URL and the new raft's cluster token, and etcd then
//! starts from that data; the other nodes join it as usual. A grant other than `bootstrap`
//! means a raft exists, which a snapshot must never overwrite: the flag is ignored there, with
//! a warning. A data directory with raft state restarts from it and never restores.
//!
//! etcd refuses to restore into an existing directory, and the data directory may be a
//! volume's root (which cannot be replaced): the restore goes to a directory inside it, whose
//! `member` directory is then moved up, on the same file system.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use tracing::info;

use crate::exit::{Exit, EXIT_INTERNAL};

/// The directory inside the data directory that `etcdctl snapshot restore` writes to.
const RESTORE_DIR: &str = "rollcall-restore";

/// What a restore needs: the snapshot and how the new member is named.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Restore<'a> {
    pub snapshot: &'a Path,
    pub data_dir: &'a Path,
    pub node: &'a str,
    pub peer_url: &'a str,
    pub cluster_token: &'a str,
}

/// `etcdctl snapshot restore`'s arguments for `r`, writing to `target`.
pub fn restore_args(r: &Restore<'_>, target: &Path) -> Vec<String> {
    vec![
        "snapshot".into(),
        "restore".into(),
        r.snapshot.display().to_string(),
        format!("--data-dir={}", target.display()),
        format!("--name={}", r.node),
        format!("--initial-cluster={}={}", r.node, r.peer_url),
        format!("--initial-cluster-token={}", r.cluster_token),
        format!("--initial-advertise-peer-urls={}", r.peer_url),
    ]
}

/// Restores the snapshot into the data directory with `etcdctl` (`program`), so that etcd
/// starts from it as a restart would.
pub async fn restore(program: &str, r: &Restore<'_>) -> Result<(), Exit> {
    let target: PathBuf = r.data_dir.join(RESTORE_DIR);
    let fail = |what: String| {
        Exit::new(
            EXIT_INTERNAL,
            format!(
                "cannot restore the snapshot {} into {}: {what}",
                r.snapshot.display(),
                r.data_dir.display()
            ),
        )
    };
    // Left over from a restore that was interrupted: it never became the data.
    if target.exists() {
        std::fs::remove_dir_all(&target).map_err(|e| fail(format!("{}: {e}", target.display())))?;
    }
    let args = restore_args(r, &target);
    info!(snapshot = %r.snapshot.display(), node = r.node, peer_url = r.peer_url, cluster_token = r.cluster_token, "restoring the snapshot as the first member of the new raft (etcdctl snapshot restore)");
    let output = tokio::process::Command::new(program)
        .args(&args)
        .env("ETCDCTL_API", "3")
        .stdin(Stdio::null())
        .output()
        .await
        .map_err(|e| fail(format!("cannot run {program}: {e}")))?;
    if !output.status.success() {
        return Err(fail(format!(
            "{program} {} exited with {}: {}",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        )));
    }
    let member = target.join("member");
    std::fs::rename(&member, r.data_dir.join("member"))
        .map_err(|e| fail(format!("moving {} into place: {e}", member.display())))?;
    std::fs::remove_dir_all(&target).map_err(|e| fail(format!("{}: {e}", target.display())))?;
    info!(data_dir = %r.data_dir.display(), "snapshot restored; etcd starts from it");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_restore_names_this_member_and_the_new_rafts_token() {
        let r = Restore {
            snapshot: Path::new("/backup/snap.db"),
            data_dir: Path::new("/var/lib/etcd"),
            node: "n1",
            peer_url: "http://n1:2380",
            cluster_token: "c-00ff00ff00ff00ff",
        };
        assert_eq!(
            restore_args(&r, Path::new("/var/lib/etcd/rollcall-restore")),
            [
                "snapshot",
                "restore",
                "/backup/snap.db",
                "--data-dir=/var/lib/etcd/rollcall-restore",
                "--name=n1",
                "--initial-cluster=n1=http://n1:2380",
                "--initial-cluster-token=c-00ff00ff00ff00ff",
                "--initial-advertise-peer-urls=http://n1:2380",
            ]
        );
    }
}
