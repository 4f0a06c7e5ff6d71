//! The `exec` engine: runs any command given after `--` and tells it its role through the
//! environment, for agents rollcall has no engine for (and for testing the supervisor with
//! a small script instead of a raft).
//!
//! The command sees `ROLLCALL_GRANTED_ROLE` (`bootstrap`, `server`, `agent` or `restart`),
//! `ROLLCALL_JOIN_TARGETS` (comma-separated `host:port`), `ROLLCALL_NODE_NAME` and
//! `ROLLCALL_ADVERTISE_ADDRESS`, and when the registry named the raft, `ROLLCALL_RAFT_GENERATION`
//! and `ROLLCALL_RAFT_NONCE` (the command may use them as etcd uses its cluster token). It is
//! healthy while `--health-url` answers 2xx, or, without
//! one, while the process runs. It has no raft state the sidecar can recognise, and
//! reports no raft status.

use rollcall_protocol::RaftIdentity;

use super::{describe, AgentCommand, Health, StartPlan};
use crate::config::Settings;
use crate::exit::{Exit, EXIT_CONFIG};

#[derive(Debug)]
pub struct ExecEngine {
    command: Vec<String>,
    node: String,
    advertise: String,
    health_url: Option<String>,
    http: reqwest::Client,
}

impl ExecEngine {
    pub fn new(settings: &Settings, http: reqwest::Client) -> Self {
        ExecEngine {
            command: settings.agent_args.clone(),
            node: settings.node.clone(),
            advertise: settings.advertise_address(),
            health_url: settings.health_url.clone(),
            http,
        }
    }

    pub fn command(
        &self,
        plan: &StartPlan,
        raft: Option<&RaftIdentity>,
    ) -> Result<AgentCommand, Exit> {
        let (program, args) = self.command.split_first().ok_or_else(|| {
            Exit::new(
                EXIT_CONFIG,
                "the exec engine needs the agent command after `--`",
            )
        })?;
        let mut env = vec![
            ("ROLLCALL_GRANTED_ROLE".into(), plan.name().into()),
            ("ROLLCALL_JOIN_TARGETS".into(), plan.join().join(",")),
            ("ROLLCALL_NODE_NAME".into(), self.node.clone()),
            ("ROLLCALL_ADVERTISE_ADDRESS".into(), self.advertise.clone()),
        ];
        if let Some(raft) = raft {
            env.push((
                "ROLLCALL_RAFT_GENERATION".into(),
                raft.generation.to_string(),
            ));
            env.push(("ROLLCALL_RAFT_NONCE".into(), raft.nonce.clone()));
        }
        Ok(AgentCommand {
            program: program.clone(),
            args: args.to_vec(),
            env,
            user: None,
        })
    }

    /// Only called while the process runs (by `run`), or by `heartbeat`, which needs a URL.
    pub async fn health(&self) -> Health {
        let Some(url) = &self.health_url else {
            return Health::Healthy;
        };
        match self.http.get(url).send().await {
            Err(e) => Health::NotRunning(format!("{url}: {}", describe(&e))),
            Ok(r) if r.status().is_success() => Health::Healthy,
            Ok(r) => Health::Starting(format!("{url} answered {}", r.status())),
        }
    }

    pub fn has_health_url(&self) -> bool {
        self.health_url.is_some()
    }
}
