//! The etcd engine (etcd 3.4 and later): from a granted role to etcd's command line, and
//! etcd's health and status for the member loop.
//!
//! What goes to the registry: the member's **client** address (`host:client_port`) is its
//! `address`, the join target every other sidecar uses, because joining an etcd cluster
//! means calling a member's client API (`/v3/cluster/member/add`) and a gateway proxies to
//! client ports too. The peer port is not derived from the client port: it comes from
//! `--etcd-peer-port` (2380 by default), and the heartbeat's metadata carries both URLs
//! (`client_url`, `peer_url`) for people reading `/v1/clusters/{c}/members`, and, once
//! etcd has answered a status request, which raft it is (`etcd_cluster_id`, and for a member
//! `etcd_member_id`: [`status::raft_ids`]).
//!
//! Roles:
//! - `bootstrap`: a new one-member cluster (`--initial-cluster-state new`, token
//!   `<cluster>-<nonce>` of the raft the registry named: [`args::cluster_token`]).
//! - `server`: the member adds itself as a **learner** through a live server, starts with
//!   `--initial-cluster-state existing` and the member list that call returned, and is
//!   promoted to a voter once it has caught up ([`join`]): the health check only reports
//!   a learner ([`Health::Learner`]), and the member loop calls the promotion by name.
//! - `agent`: `etcd gateway start` to the live servers' client addresses.
//! - restart: the data directory holds `member/wal`, so etcd starts from it; the member is
//!   neither bootstrapped nor added again (its ID stays the same).
//!
//! The modules: [`args`] (command lines, pure), [`api`] (etcd's HTTP API and its wire
//! types), [`join`] (member add and promotion), [`status`] (reading the answers, pure).

pub mod api;
pub mod args;
pub mod join;
pub mod status;

use std::collections::BTreeMap;
use std::path::PathBuf;

use rollcall_protocol::{AgentStatus, MemberRole, RaftIdentity};

use self::api::EtcdApi;
use self::args::{gateway_args, member_args, url, EtcdArgs, Initial};
use self::join::EtcdJoin;
use self::status::{agent_status, parse_health, raft_ids};
use super::{dir_has_entries, AgentCommand, Health, JoinTargets, StartPlan};
use crate::config::{is_ip_literal, Settings};
use crate::exit::Exit;

#[derive(Debug)]
pub struct EtcdEngine {
    program: String,
    node: String,
    cluster: String,
    data_dir: PathBuf,
    /// The advertised host: peer and client URLs use it.
    advertise_host: String,
    /// Where etcd listens: the advertised host when it is an IP address, else every address.
    listen_host: String,
    /// Where the sidecar reaches its own etcd.
    local_host: String,
    client_port: u16,
    peer_port: u16,
    passthrough: Vec<String>,
    api: EtcdApi,
    join: EtcdJoin,
    /// etcd's cluster ID (and member ID) from its last status answer, for the heartbeat's
    /// metadata: the status is read just before each heartbeat.
    raft_ids: std::sync::Mutex<Vec<(String, String)>>,
}

impl EtcdEngine {
    pub fn new(settings: &Settings, http: reqwest::Client) -> Self {
        let ip = is_ip_literal(&settings.advertise_host);
        let api = EtcdApi::new(http);
        let peer_url = url(&settings.advertise_host, settings.etcd_peer_port);
        EtcdEngine {
            program: settings.agent_bin.clone().unwrap_or_else(|| "etcd".into()),
            node: settings.node.clone(),
            cluster: settings.cluster.clone(),
            data_dir: settings.data_dir.clone(),
            advertise_host: settings.advertise_host.clone(),
            listen_host: if ip {
                settings.advertise_host.clone()
            } else {
                "0.0.0.0".into()
            },
            local_host: if ip {
                settings.advertise_host.clone()
            } else {
                "127.0.0.1".into()
            },
            client_port: settings.advertise_port,
            peer_port: settings.etcd_peer_port,
            passthrough: settings.agent_args.clone(),
            join: EtcdJoin::new(
                api.clone(),
                settings.node.clone(),
                peer_url,
                settings.join_timeout,
            ),
            api,
            raft_ids: std::sync::Mutex::new(Vec::new()),
        }
    }

    pub fn peer_url(&self) -> String {
        url(&self.advertise_host, self.peer_port)
    }

    pub fn client_url(&self) -> String {
        url(&self.advertise_host, self.client_port)
    }

    fn local_client_url(&self) -> String {
        url(&self.local_host, self.client_port)
    }

    pub fn meta(&self) -> BTreeMap<String, String> {
        let mut meta = BTreeMap::from([
            ("client_url".to_string(), self.client_url()),
            ("peer_url".to_string(), self.peer_url()),
        ]);
        meta.extend(
            self.raft_ids
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .cloned(),
        );
        meta
    }

    /// etcd writes its raft log under `member/wal` of the data directory.
    pub fn has_raft_state(&self) -> bool {
        dir_has_entries(&self.data_dir.join("member").join("wal"))
    }

    fn args<'a>(&'a self, raft: Option<&'a RaftIdentity>) -> EtcdArgs<'a> {
        EtcdArgs {
            node: &self.node,
            cluster: &self.cluster,
            data_dir: self.data_dir.to_str().unwrap_or("."),
            advertise_host: &self.advertise_host,
            listen_host: &self.listen_host,
            client_port: self.client_port,
            peer_port: self.peer_port,
            passthrough: &self.passthrough,
            raft_nonce: raft.map(|r| r.nonce.as_str()),
        }
    }

    pub async fn prepare(
        &self,
        plan: &StartPlan,
        raft: Option<&RaftIdentity>,
        targets: &impl JoinTargets,
    ) -> Result<AgentCommand, Exit> {
        self.join.remember_join_targets(plan.join());
        let args = match plan {
            StartPlan::Bootstrap => member_args(&self.args(raft), Initial::New),
            StartPlan::Restart { .. } => member_args(&self.args(raft), Initial::FromData),
            StartPlan::Server { join } => {
                let initial_cluster = self.join.add_self_as_learner(join, targets).await?;
                member_args(&self.args(raft), Initial::Existing(&initial_cluster))
            }
            StartPlan::Agent { join } => {
                let join = if join.is_empty() {
                    self.join.wait_for_servers(targets).await?
                } else {
                    join.clone()
                };
                gateway_args(&self.args(raft), &join)
            }
        };
        Ok(AgentCommand {
            program: self.program.clone(),
            args,
            env: vec![],
            user: None,
        })
    }

    pub async fn health(&self, role: MemberRole) -> Health {
        let base = self.local_client_url();
        let body = match self.api.health(&base).await {
            Ok(body) => body,
            Err(reason) => return Health::NotRunning(reason),
        };
        if !parse_health(&body) {
            return Health::Starting(format!("etcd /health answered {}", body.trim()));
        }
        if role == MemberRole::Agent {
            return Health::Healthy;
        }
        // A member that joined as a learner heartbeats only once it is a voter, so that no
        // one is told to join through a member that cannot add them.
        match self.api.status(&base).await {
            Ok(status) if status.is_learner => Health::Learner {
                member_id: status.header.member_id,
            },
            Ok(_) => Health::Healthy,
            Err(reason) => Health::Starting(reason),
        }
    }

    /// The join's last step; see [`EtcdJoin::promote_learner`].
    pub async fn promote_learner(&self, member_id: &str) -> Result<(), String> {
        self.join.promote_learner(member_id).await
    }

    pub async fn status(&self, role: MemberRole) -> Option<AgentStatus> {
        let base = self.local_client_url();
        let status = self.api.status(&base).await.ok()?;
        *self.raft_ids.lock().unwrap_or_else(|e| e.into_inner()) = raft_ids(&status, role);
        let list = self.api.member_list(&base).await.ok();
        Some(agent_status(
            &status,
            list.as_ref().map(|l| l.members.as_slice()),
            role,
        ))
    }
}
