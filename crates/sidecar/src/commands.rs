//! The one-shot subcommands: `heartbeat`, `members` and `claim`.
//!
//! Their answers go to stdout, one value a line, for scripts; everything else is logged
//! to stderr.

use std::io::Write;

use rollcall_protocol::{Member, MemberRole};
use tracing::{info, warn};

use crate::config::{MembersFormat, Settings};
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
        .heartbeat(
            role,
            status,
            engine.raft_members(role).await,
            engine.meta(),
            raft,
        )
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

/// `members`: the cluster's join targets, one `host:port` a line, or with
/// [`MembersFormat::Tsv`] one member a line ([`tsv_line`]). With `follow`, it keeps going:
/// a blocking read per round, and the list again after an empty line each time what it
/// prints changes. It ends on a signal or when the registry cannot be reached.
pub async fn members(
    settings: Settings,
    role: Option<MemberRole>,
    format: MembersFormat,
    follow: Option<std::time::Duration>,
) -> Result<i32, Exit> {
    let registry = RegistryLink::new(&settings)?;
    let client = registry.client();
    let cluster = registry.cluster();
    let (mut index, mut shown) = match format {
        MembersFormat::Addresses => {
            let targets = client
                .join_targets(cluster, role)
                .await
                .map_err(|e| exit_for_registry_error(&e))?;
            (targets.index, targets.addresses)
        }
        MembersFormat::Tsv => {
            let answer = client
                .members(cluster, role)
                .await
                .map_err(|e| exit_for_registry_error(&e))?;
            (answer.index, member_lines(format, &answer.members))
        }
    };
    print_lines(shown.iter().map(String::as_str))?;
    let Some(wait) = follow else {
        return Ok(EXIT_OK);
    };
    loop {
        let answer = client
            .watch_members(cluster, role, index, wait)
            .await
            .map_err(|e| exit_for_registry_error(&e))?;
        index = answer.index;
        let lines = member_lines(format, &answer.members);
        if lines != shown {
            info!(index, members = lines.len(), "the members listed changed");
            print_lines(std::iter::once("").chain(lines.iter().map(String::as_str)))?;
            shown = lines;
        }
    }
}

/// What `members` prints for these members, one line each.
fn member_lines(format: MembersFormat, members: &[Member]) -> Vec<String> {
    match format {
        MembersFormat::Addresses => members.iter().map(|m| m.address.clone()).collect(),
        MembersFormat::Tsv => members.iter().map(tsv_line).collect(),
    }
}

/// One member for scripts, tab-separated: node, address, role, in_raft, is_leader, leader.
/// A status field the agent did not report is empty. Names and addresses are validated by
/// the registry, but the leader is the agent's own word: a tab or a line break in it would
/// shift the columns, so each becomes a space.
pub fn tsv_line(member: &Member) -> String {
    let status = &member.status;
    let known = |flag: Option<bool>| flag.map(|b| b.to_string()).unwrap_or_default();
    let fields = [
        member.node.clone(),
        member.address.clone(),
        member.role.as_str().to_string(),
        known(status.in_raft),
        known(status.is_leader),
        status.leader.clone().unwrap_or_default(),
    ];
    fields
        .map(|field| field.replace(['\t', '\n', '\r'], " "))
        .join("\t")
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

pub(crate) fn print_lines<'a>(lines: impl Iterator<Item = &'a str>) -> Result<(), Exit> {
    let mut stdout = std::io::stdout().lock();
    for line in lines {
        writeln!(stdout, "{line}")
            .map_err(|e| Exit::new(EXIT_INTERNAL, format!("cannot write to stdout: {e}")))?;
    }
    stdout
        .flush()
        .map_err(|e| Exit::new(EXIT_INTERNAL, format!("cannot write to stdout: {e}")))
}

#[cfg(test)]
mod tests {
    use rollcall_protocol::AgentStatus;

    use super::*;

    fn member(status: AgentStatus) -> Member {
        Member {
            node: "node-1".into(),
            address: "10.0.0.1:2379".into(),
            role: MemberRole::Server,
            status,
            meta: Default::default(),
            age_ms: 10,
            expires_in_ms: 14_990,
        }
    }

    #[test]
    fn tsv_lines_give_six_fields_and_leave_what_the_agent_did_not_say_empty() {
        let leading = AgentStatus {
            in_raft: Some(true),
            leader: Some("node-1".into()),
            peers: Some(3),
            is_leader: Some(true),
        };
        for (status, line) in [
            (leading, "node-1\t10.0.0.1:2379\tserver\ttrue\ttrue\tnode-1"),
            (
                AgentStatus::default(),
                "node-1\t10.0.0.1:2379\tserver\t\t\t",
            ),
            (
                AgentStatus {
                    in_raft: Some(false),
                    leader: Some("a\tb\nc".into()),
                    ..AgentStatus::default()
                },
                "node-1\t10.0.0.1:2379\tserver\tfalse\t\ta b c",
            ),
        ] {
            let printed = tsv_line(&member(status));
            assert_eq!(printed, line);
            assert_eq!(printed.split('\t').count(), 6);
        }
    }

    #[test]
    fn the_addresses_format_prints_the_join_address_alone() {
        let members = [member(AgentStatus::default())];
        assert_eq!(
            member_lines(MembersFormat::Addresses, &members),
            ["10.0.0.1:2379"]
        );
    }
}
