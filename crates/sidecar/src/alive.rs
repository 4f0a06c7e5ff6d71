//! `rollcall-sidecar alive`: the liveness check for an orchestrator (a Swarm or Compose
//! healthcheck, a Kubernetes liveness probe). It says whether this container's sidecar runs
//! and whether its agent, once started, answers its API at all: any HTTP answer counts, so a
//! member whose raft has lost its quorum (etcd's `/health` answers 503 then) stays alive, and
//! the orchestrator does not kill a raft that is trying to recover. A sidecar that has not
//! started its agent yet (it is claiming, or waiting out a conflict with its own deadline and
//! exit code) is alive too.
//!
//! Exit 0 alive, 1 not (the healthcheck convention), with one line saying why.

use std::time::Duration;

use crate::config::{EngineKind, Settings};
use crate::exit::Exit;

/// How long the agent has to answer.
const ANSWER_WITHIN: Duration = Duration::from_secs(2);

pub async fn alive(settings: Settings) -> Result<i32, Exit> {
    let verdict = check(&settings).await;
    let (code, line) = match verdict {
        Ok(why) => (0, format!("alive: {why}")),
        Err(why) => (1, format!("not alive: {why}")),
    };
    crate::commands::print_lines(std::iter::once(line.as_str()))?;
    Ok(code)
}

async fn check(settings: &Settings) -> Result<String, String> {
    let Some(sidecar) = crate::leave::running_sidecar(&settings.data_dir) else {
        return Err("no rollcall-sidecar process runs in this container".into());
    };
    let children = children_of(sidecar);
    if children.is_empty() && settings.engine != EngineKind::Exec {
        return Ok(format!(
            "the sidecar (pid {sidecar}) runs and has not started its agent yet"
        ));
    }
    let url = match settings.engine {
        EngineKind::Etcd => format!(
            "http://{}/version",
            crate::config::join_host_port(&settings.advertise_host, settings.advertise_port)
        ),
        EngineKind::Consul => format!("{}/v1/agent/self", settings.consul_http),
        EngineKind::Exec => {
            return Ok(format!(
                "the sidecar (pid {sidecar}) runs with {} child process(es)",
                children.len()
            ))
        }
    };
    let client = reqwest::Client::builder()
        .timeout(ANSWER_WITHIN)
        .build()
        .map_err(|e| format!("cannot build an HTTP client: {e}"))?;
    let mut request = client.get(&url);
    if let Some(token) = &settings.consul_http_token {
        request = request.header("X-Consul-Token", token);
    }
    match request.send().await {
        Ok(answer) => Ok(format!(
            "the sidecar (pid {sidecar}) runs and its agent answered {url} with {}",
            answer.status().as_u16()
        )),
        Err(e) => Err(format!(
            "the sidecar (pid {sidecar}) runs but its agent (pid {}) did not answer {url} within {}: {e}",
            children[0],
            humantime::format_duration(ANSWER_WITHIN)
        )),
    }
}

/// The pids whose parent is `pid`, from /proc (the agent, and anything else the sidecar
/// started).
fn children_of(pid: i32) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|child| parent_of(*child) == Some(pid))
        .collect()
}

/// The parent pid in `/proc/<pid>/stat` (the fourth field, after the command name, which
/// may hold spaces and ends at the last `)`).
fn parent_of(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_whitespace().nth(1)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_is_a_child_of_its_parent() {
        let me = std::process::id() as i32;
        let parent = parent_of(me).expect("a parent");
        assert!(children_of(parent).contains(&me));
    }
}
