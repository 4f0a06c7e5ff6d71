//! Leaving the raft for good: the `rollcall-sidecar leave` subcommand, and what `run` does
//! about it at its start and its end.
//!
//! `leave` runs inside the member's container (`docker exec <node> rollcall-sidecar leave`),
//! with the same environment as `run`. In order:
//! 1. decide from the raft whether this member may leave ([`crate::engine::etcd::leave`]):
//!    refused with exit 77 when the remaining voters would have no healthy majority;
//! 2. write `<data-dir>/rollcall-left` ([`LEFT_MARKER`]), before anything changes, so that
//!    a `run` that sees its etcd exit from here on exits 0;
//! 3. remove this member through another voter (on failure the marker goes again: nothing
//!    changed);
//! 4. leave the registry;
//! 5. send SIGTERM to the running sidecar, found by the pid file `run` writes
//!    (`<data-dir>/rollcall-sidecar.pid`, [`PID_FILE`]). A pid file rather than PID 1: it
//!    names the sidecar also where it is not PID 1 (under `docker run --init`, or outside a
//!    container, as in the tests), and it is checked against `/proc/<pid>/cmdline` so that a
//!    stale file never signals another process. Without one, PID 1 is signalled when it is a
//!    `rollcall-sidecar`.
//!
//! The running sidecar stops its agent and leaves the registry as on any SIGTERM, and exits
//! 0 instead of the agent's code because the marker is there ([`exit_code_after_run`]). It
//! never claims again in that run. A later start that finds the marker moves the data
//! directory aside (nothing is deleted, [`crate::raft_identity::move_data_aside_as`]) and so
//! joins as a new member ([`before_run`]).
//!
//! `docker stop` (SIGTERM alone) is not a leave: it means "stop for now", and the member stays
//! in the raft; the dead-member cleanup removes one that never comes back.

use std::path::{Path, PathBuf};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tracing::{info, warn};

use crate::config::{EngineKind, Settings};
use crate::engine::Engine;
use crate::exit::{Exit, EXIT_CONFIG, EXIT_INTERNAL, EXIT_OK};
use crate::raft_identity::{create_data_dir, move_data_aside_as};
use crate::registry_link::RegistryLink;

/// Written to the data directory by `leave` before the member is removed.
pub const LEFT_MARKER: &str = "rollcall-left";
/// Written to the data directory by `run` (etcd): the sidecar's pid, for `leave`.
pub const PID_FILE: &str = "rollcall-sidecar.pid";

/// `leave`: 0 once the member is removed, the registry left and the running sidecar told to
/// stop; 77 when refused (nothing changed); 255 when this member's etcd does not answer; 64
/// for another engine than etcd.
pub async fn leave(settings: Settings) -> Result<i32, Exit> {
    if settings.engine != EngineKind::Etcd {
        return Err(Exit::new(
            EXIT_CONFIG,
            "leave is for the etcd engine (a Consul server leaves with `consul leave`)",
        ));
    }
    let engine = Engine::new(&settings)?;
    let Engine::Etcd(etcd) = &engine else {
        return Err(Exit::new(EXIT_INTERNAL, "the etcd engine was not built"));
    };
    let registry = RegistryLink::new(&settings)?;
    let marker = settings.data_dir.join(LEFT_MARKER);
    // A gateway (no raft state) has no member to remove: it only leaves the registry.
    let plan = if engine.has_raft_state() {
        Some(etcd.plan_leave().await?)
    } else {
        info!("this node runs no raft member (an etcd gateway): leaving the registry only");
        None
    };
    write_marker(&marker)?;
    if let Some(plan) = &plan {
        if let Err(exit) = etcd.remove_self(plan).await {
            let _ = std::fs::remove_file(&marker);
            return Err(exit);
        }
    }
    registry.leave().await;
    match running_sidecar(&settings.data_dir) {
        Some(pid) => match kill(Pid::from_raw(pid), Signal::SIGTERM) {
            Ok(()) => {
                info!(pid, "sent SIGTERM to the running sidecar: it stops its agent and exits 0")
            }
            Err(error) => {
                warn!(pid, %error, "cannot signal the running sidecar; stop the container")
            }
        },
        None => warn!("no running rollcall-sidecar found (no valid pid file, and PID 1 is not one); stop the container"),
    }
    Ok(EXIT_OK)
}

/// `force-new-cluster`: writes the request for the next start and stops the running sidecar
/// (SIGTERM: etcd stops cleanly, so no applied write is lost), which exits; the container's
/// restart policy starts it again, forced. 0 once asked; 64 without etcd raft state here.
pub fn request_force_new_cluster(settings: Settings) -> Result<i32, Exit> {
    use crate::engine::etcd::force;
    if settings.engine != EngineKind::Etcd
        || !crate::engine::dir_has_entries(&settings.data_dir.join("member").join("wal"))
    {
        return Err(Exit::new(
            EXIT_CONFIG,
            format!(
                "force-new-cluster needs the etcd engine and a member's raft state in {}",
                settings.data_dir.display()
            ),
        ));
    }
    let request = force::request_path(&settings.data_dir);
    std::fs::write(&request, "force a new cluster at the next start\n").map_err(|e| {
        Exit::new(
            EXIT_INTERNAL,
            format!("cannot write {}: {e}; nothing changed", request.display()),
        )
    })?;
    info!(request = %request.display(), "the next start forces a new one-member raft from this member's data");
    match running_sidecar(&settings.data_dir) {
        Some(pid) => match kill(Pid::from_raw(pid), Signal::SIGTERM) {
            Ok(()) => info!(pid, "sent SIGTERM to the running sidecar: its container's restart policy starts it again, forced (or: docker start <node>)"),
            Err(error) => warn!(pid, %error, "cannot signal the running sidecar; restart the container"),
        },
        None => warn!("no running rollcall-sidecar found: start the node, and it forces a new cluster"),
    }
    Ok(EXIT_OK)
}

fn write_marker(marker: &Path) -> Result<(), Exit> {
    let seconds = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default();
    std::fs::write(marker, format!("left the raft at unix time {seconds}\n")).map_err(|e| {
        Exit::new(
            EXIT_INTERNAL,
            format!("cannot write {}: {e}; nothing changed", marker.display()),
        )
    })
}

/// The pid of the `run` sidecar of this data directory: the pid file's, else PID 1, when
/// that process is a `rollcall-sidecar`.
pub(crate) fn running_sidecar(data_dir: &Path) -> Option<i32> {
    let from_file = std::fs::read_to_string(data_dir.join(PID_FILE))
        .ok()
        .and_then(|text| text.trim().parse::<i32>().ok());
    from_file
        .into_iter()
        .chain(std::iter::once(1))
        .find(|pid| is_sidecar(*pid))
}

/// True when `/proc/<pid>/cmdline` starts with a `rollcall-sidecar` binary.
fn is_sidecar(pid: i32) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .ok()
        .and_then(|cmdline| {
            let program = cmdline.split(|b| *b == 0).next()?.to_vec();
            let program = PathBuf::from(String::from_utf8(program).ok()?);
            Some(program.file_name()? == "rollcall-sidecar")
        })
        .unwrap_or(false)
}

/// Before `run` starts anything: a data directory this member left (`rollcall-left`) moves
/// aside, so that the start claims afresh and joins as a new member; `--force-new-cluster`
/// is checked ([`crate::engine::etcd::force::check_at_start`]); an etcd sidecar writes its
/// pid file for `leave`.
pub fn before_run(settings: &Settings) -> Result<(), Exit> {
    let marker = settings.data_dir.join(LEFT_MARKER);
    if marker.exists() {
        let aside = move_data_aside_as(&settings.data_dir, "left").map_err(|e| {
            Exit::new(
                EXIT_INTERNAL,
                format!(
                    "this member left its raft, but its data directory {} could not be moved aside: {e}",
                    settings.data_dir.display()
                ),
            )
        })?;
        warn!(data_dir = %settings.data_dir.display(), moved_to = %aside.display(), "this member left its raft (rollcall-sidecar leave): its data directory was moved aside (nothing deleted); claiming afresh to join as a new member");
    }
    crate::engine::etcd::force::check_at_start(settings)?;
    if settings.engine == EngineKind::Etcd {
        let path = settings.data_dir.join(PID_FILE);
        create_data_dir(&settings.data_dir)
            .and_then(|()| std::fs::write(&path, format!("{}\n", std::process::id())))
            .map_err(|e| {
                Exit::new(
                    EXIT_INTERNAL,
                    format!("cannot write the pid file {}: {e}", path.display()),
                )
            })?;
    }
    Ok(())
}

/// `run`'s exit code: 0 when this member left its raft during the run (the marker was moved
/// aside at the start, so one that is there now was written by `leave` since), else the
/// agent's `code`.
pub fn exit_code_after_run(settings: &Settings, code: i32) -> i32 {
    if code != EXIT_OK && settings.data_dir.join(LEFT_MARKER).exists() {
        info!(
            agent_code = code,
            "this member left its raft (rollcall-sidecar leave): exiting 0"
        );
        return EXIT_OK;
    }
    code
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_rollcall_sidecar_is_ever_signalled() {
        // This test process is not a sidecar, and a pid that does not exist is no one.
        assert!(!is_sidecar(std::process::id() as i32));
        assert!(!is_sidecar(i32::MAX));
        let temp = tempfile::tempdir().expect("tempdir");
        std::fs::write(
            temp.path().join(PID_FILE),
            format!("{}\n", std::process::id()),
        )
        .expect("write");
        // (PID 1 of the machine running the tests is not a sidecar either.)
        assert_eq!(running_sidecar(temp.path()), None);
    }
}
