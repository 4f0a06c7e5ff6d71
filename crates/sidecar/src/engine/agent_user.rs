//! The user the agent runs as (`--agent-user`), while the sidecar stays PID 1 as root.
//!
//! The official Consul image starts as root, chowns its data and config directories to
//! `consul` when their owner differs (a bind mount, a volume Docker created as root), and
//! drops to `consul` with `su-exec`. The sidecar does the same for every engine: before the
//! agent starts, it creates the data directory when missing and gives it (only the
//! directory itself, as the official entrypoint does) to the agent's user, then spawns the
//! agent with that uid and gid (`std` also clears the supplementary groups when root sets a
//! uid). The user is read from /etc/passwd directly: the static binary cannot load NSS.

use std::os::unix::fs::MetadataExt as _;
use std::path::Path;

use tracing::info;

use super::AgentCommand;
use crate::config::Settings;
use crate::exit::{Exit, EXIT_CONFIG, EXIT_INTERNAL};

/// With `--agent-user`: gives the data directory to that user and has `command` run as it.
/// Without: `command` unchanged.
pub fn run_as_agent_user(
    settings: &Settings,
    mut command: AgentCommand,
) -> Result<AgentCommand, Exit> {
    let Some(user) = &settings.agent_user else {
        return Ok(command);
    };
    let user = lookup(user)?;
    give_dir_to(&settings.data_dir, &user)?;
    if let Some(home) = &user.home {
        command.env.push(("HOME".into(), home.clone()));
    }
    command.env.push(("USER".into(), user.name.clone()));
    command.user = Some(user);
    Ok(command)
}

/// Who the agent runs as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentUser {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    /// The home directory /etc/passwd gives, set as `HOME` for the agent (as `su-exec` does).
    pub home: Option<String>,
}

/// Finds `user` (a name, or a numeric uid) in the text of /etc/passwd. A numeric uid that
/// the file does not list runs with the same number as its gid.
pub fn find_user(passwd: &str, user: &str) -> Option<AgentUser> {
    let numeric: Option<u32> = user.parse().ok();
    let listed = passwd.lines().find_map(|line| {
        let fields: Vec<&str> = line.split(':').collect();
        let [name, _, uid, gid, _, home, ..] = fields.as_slice() else {
            return None;
        };
        let uid: u32 = uid.parse().ok()?;
        let gid: u32 = gid.parse().ok()?;
        (*name == user || numeric == Some(uid)).then(|| AgentUser {
            name: name.to_string(),
            uid,
            gid,
            home: Some(home.to_string()).filter(|h| !h.is_empty()),
        })
    });
    listed.or_else(|| {
        numeric.map(|uid| AgentUser {
            name: uid.to_string(),
            uid,
            gid: uid,
            home: None,
        })
    })
}

/// Reads `--agent-user` against /etc/passwd and checks that the sidecar can become it.
pub fn lookup(user: &str) -> Result<AgentUser, Exit> {
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    let found = find_user(&passwd, user).ok_or_else(|| {
        Exit::new(
            EXIT_CONFIG,
            format!("--agent-user {user:?} (ROLLCALL_AGENT_USER) is not in /etc/passwd"),
        )
    })?;
    let euid = nix::unistd::geteuid().as_raw();
    if euid != 0 && euid != found.uid {
        return Err(Exit::new(
            EXIT_CONFIG,
            format!(
                "--agent-user {user:?} needs the sidecar to run as root to switch to it (it runs as uid {euid})"
            ),
        ));
    }
    Ok(found)
}

/// Creates `dir` when missing and gives it to `user` when its owner differs, as the
/// official Consul entrypoint does. Returns whether it changed the owner.
pub fn give_dir_to(dir: &Path, user: &AgentUser) -> Result<bool, Exit> {
    std::fs::create_dir_all(dir).map_err(|e| {
        Exit::new(
            EXIT_INTERNAL,
            format!("cannot create {}: {e}", dir.display()),
        )
    })?;
    let metadata = std::fs::metadata(dir)
        .map_err(|e| Exit::new(EXIT_INTERNAL, format!("cannot read {}: {e}", dir.display())))?;
    if metadata.uid() == user.uid {
        return Ok(false);
    }
    nix::unistd::chown(
        dir,
        Some(nix::unistd::Uid::from_raw(user.uid)),
        Some(nix::unistd::Gid::from_raw(user.gid)),
    )
    .map_err(|e| {
        Exit::new(
            EXIT_INTERNAL,
            format!(
                "cannot give {} to the agent's user {}: {e}",
                dir.display(),
                user.name
            ),
        )
    })?;
    info!(
        dir = %dir.display(),
        user = %user.name,
        uid = user.uid,
        previous_uid = metadata.uid(),
        "gave the directory to the agent's user, as the official Consul image does"
    );
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\n\
                          consul:x:100:1000:Linux User,,,:/home/consul:/sbin/nologin\n\
                          broken line\n\
                          nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n";

    #[test]
    fn users_are_found_by_name_or_uid() {
        let consul = AgentUser {
            name: "consul".into(),
            uid: 100,
            gid: 1000,
            home: Some("/home/consul".into()),
        };
        assert_eq!(find_user(PASSWD, "consul"), Some(consul.clone()));
        assert_eq!(find_user(PASSWD, "100"), Some(consul));
        assert_eq!(
            find_user(PASSWD, "4242"),
            Some(AgentUser {
                name: "4242".into(),
                uid: 4242,
                gid: 4242,
                home: None
            })
        );
        assert_eq!(find_user(PASSWD, "vault"), None);
        assert_eq!(find_user(PASSWD, "nobody").map(|u| u.uid), Some(65534));
    }
}
