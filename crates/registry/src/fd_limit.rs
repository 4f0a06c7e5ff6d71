//! The open-file limit, checked against `--max-connections` at start. Every connection is a
//! file descriptor; with a limit below what the connection bound needs, new clients would hang
//! in the kernel's backlog instead of being answered `503`, and `accept` would fail in a loop.

/// Descriptors the registry needs besides its connections: sled's files, the mark and copy
/// files, the listener, the runtime's own, with room to spare.
pub const FD_HEADROOM: u64 = 64;

/// Raises the soft `RLIMIT_NOFILE` to what `max_connections` needs when the hard limit allows
/// it; otherwise says what is missing, naming both numbers. Returns the limit in force.
pub fn ensure_for(max_connections: usize) -> Result<u64, String> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let need = max_connections as u64 + FD_HEADROOM;
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)
        .map_err(|e| format!("cannot read the open-file limit: {e}"))?;
    if soft >= need {
        return Ok(soft);
    }
    if hard < need {
        return Err(format!(
            "--max-connections {max_connections} needs an open-file limit of at least {need}, but this process may open at most {hard} files (ulimit -n; hard limit {hard}): raise the limit (docker run --ulimit nofile={need}) or lower --max-connections to at most {}",
            hard.saturating_sub(FD_HEADROOM)
        ));
    }
    setrlimit(Resource::RLIMIT_NOFILE, need, hard).map_err(|e| {
        format!(
            "cannot raise the open-file limit from {soft} to {need} for --max-connections {max_connections}: {e}"
        )
    })?;
    tracing::debug!(
        from = soft,
        to = need,
        "raised the open-file limit for --max-connections"
    );
    Ok(need)
}
