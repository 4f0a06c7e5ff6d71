//! The sidecar's exit codes, one place for the numbers the README documents.
//!
//! `run` exits with the agent's own code, or 128 + the signal that ended the agent, like a
//! shell. The codes below are the sidecar's own; they follow sysexits.h where one fits, so
//! that an agent's usual codes (0, 1, 2) never look like a sidecar failure.

/// The heartbeat was sent, or the command printed its answer.
pub const EXIT_OK: i32 = 0;
/// A flag or environment variable is invalid (sysexits `EX_USAGE`).
pub const EXIT_CONFIG: i32 = 64;
/// The registry refused the request: bad token, bad name, limit reached (`EX_DATAERR`).
pub const EXIT_REGISTRY_REFUSED: i32 = 65;
/// The registry could not be reached (at start of `run`: within `--registry-retry-limit`)
/// (`EX_UNAVAILABLE`).
pub const EXIT_REGISTRY_UNREACHABLE: i32 = 69;
/// The sidecar itself failed (`EX_SOFTWARE`); the log has the cause.
pub const EXIT_INTERNAL: i32 = 70;
/// No join target answered within `--join-timeout` (`EX_TEMPFAIL`).
pub const EXIT_JOIN_FAILED: i32 = 75;
/// The claim waited `--claim-wait-limit` and the registry still asked it to wait (a
/// `reset_required`, `address_conflict`, `expect_conflict` or `not_ready` answer): temporary,
/// so the container's restart policy asks again (`EX_TEMPFAIL`, as for a failed join).
pub const EXIT_CLAIM_WAIT_LIMIT: i32 = 75;
/// The registry refused this member as another raft's (`wrong_raft`) and the registry never
/// listed it in its own: the agent was stopped and the data directory moved aside, so the
/// next start claims afresh. Not a sysexits code: the next free one after `EX_TEMPFAIL`,
/// distinct so that an operator sees this happened.
pub const EXIT_WRONG_RAFT: i32 = 76;
/// `leave` was refused, and nothing changed: removing this member would leave the remaining
/// voters without a healthy majority (or it is the last voter), or no voter accepted the
/// removal. Not a sysexits code: the next free one after [`EXIT_WRONG_RAFT`].
pub const EXIT_LEAVE_REFUSED: i32 = 77;
/// The agent binary exists but could not be executed (as a shell reports it).
pub const EXIT_AGENT_NOT_EXECUTABLE: i32 = 126;
/// The agent binary was not found (as a shell reports it).
pub const EXIT_AGENT_NOT_FOUND: i32 = 127;
/// Added to the signal number when a signal ended the agent (or stopped `run` before the
/// agent started).
pub const EXIT_SIGNAL_BASE: i32 = 128;
/// `heartbeat`: the agent is not running or not healthy, so nothing was sent.
pub const EXIT_AGENT_NOT_RUNNING: i32 = 255;

/// An error that ends the sidecar with a documented exit code.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct Exit {
    pub code: i32,
    pub message: String,
}

impl Exit {
    pub fn new(code: i32, message: impl Into<String>) -> Self {
        Exit {
            code,
            message: message.into(),
        }
    }
}

/// Maps a registry client error to the exit code a one-shot command ends with.
pub fn exit_for_registry_error(error: &rollcall_protocol::ClientError) -> Exit {
    let code = if error.is_transient() {
        EXIT_REGISTRY_UNREACHABLE
    } else {
        EXIT_REGISTRY_REFUSED
    };
    Exit::new(code, error.to_string())
}
