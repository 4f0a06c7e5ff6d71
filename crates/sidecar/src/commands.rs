//! The one-shot subcommands: `heartbeat`, `members` and `claim`.
//!
//! Their answers go to stdout, one value a line, for scripts; everything else is logged
//! to stderr.

use std::io::Write;

use rollcall_protocol::MemberRole;
use tracing::{info, warn};

use crate::config::Settings;
use crate::engine::{Engine, Health};
use crate::exit::{
    exit_for_registry_error, Exit, EXIT_AGENT_NOT_RUNNING, EXIT_CONFIG, EXIT_INTERNAL, EXIT_OK,
};
use crate::raft_identity::IdentityStore;
use crate::registry_link::RegistryLink;

/// `heartbeat`: 0 when sent, 255 when the agent is not running or not healthy (nothing is
/// sent), 69 when the registry cannot be reached, 65 when it refuses. It reports the raft
/// the identity file in the data directory names, if any.
pub async fn heartbeat(settings: Settings, role: MemberRole) -> Result<i32, Exit> {
    let engine = Engine::new(&settings)?;
    if let Engine::Exec(exec) = &engine {
        if !exec.has_health_url() {
            return Err(Exit::new(
                EXIT_CONFIG,
                "heartbeat with the exec engine needs --health-url",
            ));
        }
    }
    let registry = RegistryLink::new(&settings)?;
    let role = engine.detect_role().await.unwrap_or(role);
    match engine.health(role).await {
        Health::Healthy => {}
        Health::Learner { .. } => {
            warn!("the agent is a learner, not a voter yet; no heartbeat sent");
            return Ok(EXIT_AGENT_NOT_RUNNING);
        }
        Health::Starting(reason) | Health::NotRunning(reason) => {
            warn!(%reason, "the agent is not running or not healthy; no heartbeat sent");
            return Ok(EXIT_AGENT_NOT_RUNNING);
        }
    }
    let status = engine.status(role).await;
    let raft = IdentityStore::load(&settings.data_dir, &settings.cluster, false).identity();
    let answer = registry
        .heartbeat(role, status, engine.meta(), raft)
        .await
        .map_err(|e| exit_for_registry_error(&e))?;
    info!(
        registered = answer.registered,
        ttl_ms = answer.ttl_ms,
        interval_ms = answer.interval_ms,
        "heartbeat sent"
    );
    Ok(EXIT_OK)
}

/// `members`: the cluster's join targets, one `host:port` a line. With `follow`, it keeps
/// going: a blocking read per round, and the list again after an empty line each time the
/// addresses change. It ends on a signal or when the registry cannot be reached.
pub async fn members(
    settings: Settings,
    role: Option<MemberRole>,
    follow: Option<std::time::Duration>,
) -> Result<i32, Exit> {
    let registry = RegistryLink::new(&settings)?;
    let targets = registry
        .client()
        .join_targets(registry.cluster(), role)
        .await
        .map_err(|e| exit_for_registry_error(&e))?;
    print_lines(targets.addresses.iter().map(String::as_str))?;
    let Some(wait) = follow else {
        return Ok(EXIT_OK);
    };
    let mut index = targets.index;
    let mut shown = targets.addresses;
    loop {
        let answer = registry
            .client()
            .watch_members(registry.cluster(), role, index, wait)
            .await
            .map_err(|e| exit_for_registry_error(&e))?;
        index = answer.index;
        let addresses: Vec<String> = answer.members.into_iter().map(|m| m.address).collect();
        if addresses != shown {
            info!(index, members = addresses.len(), "the join targets changed");
            print_lines(std::iter::once("").chain(addresses.iter().map(String::as_str)))?;
            shown = addresses;
        }
    }
}

/// `claim`: the granted role on the first line, then one join target a line. Like `run`,
/// it waits while the registry asks (`503 not_ready`, `reset_required`, the conflicts) up to
/// `--claim-wait-limit`, and retries an unreachable registry up to `--registry-retry-limit`.
pub async fn claim(settings: Settings) -> Result<i32, Exit> {
    let registry = RegistryLink::new(&settings)?;
    let claim = registry
        .claim_at_start(settings.registry_retry_limit, settings.claim_wait_limit)
        .await?;
    info!(role = %claim.role, reason = %claim.reason, "the registry granted a role");
    let lines =
        std::iter::once(claim.role.as_str()).chain(claim.join.iter().map(|t| t.address.as_str()));
    print_lines(lines)?;
    Ok(EXIT_OK)
}

fn print_lines<'a>(lines: impl Iterator<Item = &'a str>) -> Result<(), Exit> {
    let mut stdout = std::io::stdout().lock();
    for line in lines {
        writeln!(stdout, "{line}")
            .map_err(|e| Exit::new(EXIT_INTERNAL, format!("cannot write to stdout: {e}")))?;
    }
    stdout
        .flush()
        .map_err(|e| Exit::new(EXIT_INTERNAL, format!("cannot write to stdout: {e}")))
}
