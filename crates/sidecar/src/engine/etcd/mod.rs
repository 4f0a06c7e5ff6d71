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
//!   neither bootstrapped nor added again (its ID stays the same). Before it starts, a live
//!   server tells whether it was removed meanwhile or must change its peer URL ([`restart`]).
//!   With `--force-new-cluster`, once per data directory, as a new one-member raft
//!   ([`force`]).
//!
//! Heartbeats of a member carry the raft's member list (`raft_members`); the leader's add its
//! peer-connection evidence ([`peers`]), and after each accepted heartbeat the leader's
//! sidecar removes a member that is gone for good ([`cleanup`]). `rollcall-sidecar leave`
//! removes this member itself ([`leave`]).
//!
//! The modules: [`args`] (command lines, pure), [`api`] (etcd's HTTP API and its wire
//! types), [`join`] (member add and promotion), [`status`] (reading the answers, pure),
//! [`restart`] (a restart's membership check), [`peers`], [`cleanup`], [`leave`] and
//! [`force`].

pub mod api;
pub mod args;
pub mod cleanup;
pub mod force;
pub mod join;
pub mod leave;
pub mod peers;
pub mod restart;
pub mod restore;
pub mod status;

use std::collections::BTreeMap;
use std::path::PathBuf;

use rollcall_protocol::{AgentStatus, HeartbeatResponse, MemberRole, RaftIdentity, RaftMember};
use tokio::time::Instant;

use self::api::EtcdApi;
use self::args::{cluster_token, gateway_args, member_args, url, EtcdArgs, Initial};
use self::cleanup::DeadMemberCleanup;
use self::join::EtcdJoin;
use self::peers::{active_peers, member_id_hex, raft_members, reportable, PeerWatch};
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
    /// The host of the advertised peer URL: `--etcd-peer-host`, else the advertised host. A
    /// name that stays when the address changes (a container's host name) keeps the peer URL
    /// the raft knows valid across a restart of every member at new addresses.
    peer_host: String,
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
    /// This run has confirmed its member's IDs and peer URL ([`restart`]): once per run.
    own_member_confirmed: std::sync::atomic::AtomicBool,
    /// What the member sees of its raft, for heartbeats and the cleanup (boxed: the engine
    /// enum's variants stay of a size).
    raft: Box<RaftWatch>,
    /// `--restore-snapshot`: a `bootstrap` grant starts the new raft from this snapshot
    /// ([`restore`]).
    restore_snapshot: Option<PathBuf>,
    /// `--force-new-cluster` was asked for: a restart from data that was not forced before
    /// forces a new raft ([`force`]).
    force_new_cluster: bool,
    /// This run started etcd forcing a new raft, and the marker is not written yet: it is
    /// once etcd answers as a member with a leader.
    forced_unconfirmed: std::sync::atomic::AtomicBool,
}

/// The raft as this member sees it, and the leader's cleanup.
#[derive(Debug)]
struct RaftWatch {
    /// The raft as the last status read saw it, for the heartbeat's `raft_members` and the
    /// cleanup after it; `None` when it could not be read.
    view: std::sync::Mutex<Option<RaftView>>,
    /// The leader's count of how long each member has had no peer connection.
    peer_watch: std::sync::Mutex<PeerWatch>,
    cleanup: DeadMemberCleanup,
}

/// The raft as this member saw it at its last status read.
#[derive(Debug, Clone)]
struct RaftView {
    self_id: String,
    is_leader: bool,
    /// The member list; on the leader with its peer-connection evidence.
    members: Vec<RaftMember>,
}

impl EtcdEngine {
    pub fn new(settings: &Settings, http: reqwest::Client) -> Self {
        let ip = is_ip_literal(&settings.advertise_host);
        let api = EtcdApi::new(http);
        let peer_host = settings
            .etcd_peer_host
            .clone()
            .unwrap_or_else(|| settings.advertise_host.clone());
        let peer_url = url(&peer_host, settings.etcd_peer_port);
        EtcdEngine {
            program: settings.agent_bin.clone().unwrap_or_else(|| "etcd".into()),
            node: settings.node.clone(),
            cluster: settings.cluster.clone(),
            data_dir: settings.data_dir.clone(),
            advertise_host: settings.advertise_host.clone(),
            peer_host,
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
                settings.dead_member_after,
                settings.expect,
            ),
            raft: Box::new(RaftWatch {
                view: std::sync::Mutex::new(None),
                peer_watch: std::sync::Mutex::new(PeerWatch::default()),
                cleanup: DeadMemberCleanup::new(api.clone(), settings.dead_member_after),
            }),
            api,
            raft_ids: std::sync::Mutex::new(Vec::new()),
            own_member_confirmed: std::sync::atomic::AtomicBool::new(false),
            force_new_cluster: settings.force_new_cluster,
            restore_snapshot: settings.restore_snapshot.clone(),
            forced_unconfirmed: std::sync::atomic::AtomicBool::new(false),
        }
    }

    pub fn peer_url(&self) -> String {
        url(&self.peer_host, self.peer_port)
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
            peer_host: &self.peer_host,
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
        if let (Some(snapshot), StartPlan::Server { .. } | StartPlan::Agent { .. }) =
            (&self.restore_snapshot, plan)
        {
            tracing::warn!(snapshot = %snapshot.display(), role = plan.name(), "--restore-snapshot is ignored: this node was not granted bootstrap, so a raft exists and it joins that raft's data");
        }
        let args = match plan {
            StartPlan::Bootstrap => match &self.restore_snapshot {
                Some(snapshot) => {
                    let token = cluster_token(&self.cluster, raft.map(|r| r.nonce.as_str()));
                    let peer_url = self.peer_url();
                    let restore = restore::Restore {
                        snapshot,
                        data_dir: &self.data_dir,
                        node: &self.node,
                        peer_url: &peer_url,
                        cluster_token: &token,
                    };
                    restore::restore("etcdctl", &restore).await?;
                    member_args(&self.args(raft), Initial::FromData)
                }
                None => member_args(&self.args(raft), Initial::New),
            },
            StartPlan::Restart { .. } if force::pending(self.force_new_cluster, &self.data_dir) => {
                self.forced_unconfirmed
                    .store(true, std::sync::atomic::Ordering::Relaxed);
                member_args(&self.args(raft), Initial::FromDataForcingNewCluster)
            }
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

    /// The `expect` the registry's claim answer used, for the join's room check.
    pub fn use_claimed_expect(&self, expect: u32) {
        self.join.use_expect(expect);
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
        *self.raft.view.lock().unwrap_or_else(|e| e.into_inner()) = None;
        let base = self.local_client_url();
        let status = self.api.status(&base).await.ok()?;
        *self.raft_ids.lock().unwrap_or_else(|e| e.into_inner()) = raft_ids(&status, role);
        let list = self.api.member_list(&base).await.ok();
        let agent_status = agent_status(&status, list.as_ref().map(|l| l.members.as_slice()), role);
        // Through a gateway the answers are a backend's: only a member reports the raft.
        if let (MemberRole::Server, Some(list), Some(true)) = (role, &list, agent_status.in_raft) {
            let self_id = status.header.member_id.clone();
            let is_leader = agent_status.is_leader == Some(true);
            let members = self
                .observe_peers(&base, &self_id, is_leader, &list.members)
                .await;
            *self.raft.view.lock().unwrap_or_else(|e| e.into_inner()) = Some(RaftView {
                self_id,
                is_leader,
                members,
            });
            if self
                .forced_unconfirmed
                .swap(false, std::sync::atomic::Ordering::Relaxed)
            {
                force::confirm(&self.data_dir);
            }
        }
        Some(agent_status)
    }

    /// The member list with, on the leader, its peer-connection evidence from `/metrics`.
    async fn observe_peers(
        &self,
        base: &str,
        self_id: &str,
        is_leader: bool,
        members: &[api::EtcdMember],
    ) -> Vec<RaftMember> {
        let members = raft_members(members);
        if !is_leader {
            self.raft
                .peer_watch
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .not_leading();
            return members;
        }
        let peers = match (self.api.metrics(base).await, member_id_hex(self_id)) {
            (Ok(text), Some(local)) => Some(active_peers(&text, &local)),
            (Err(reason), _) => {
                tracing::warn!(%reason, "cannot read etcd's /metrics: no peer evidence in this heartbeat");
                None
            }
            (Ok(_), None) => None,
        };
        self.raft
            .peer_watch
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .observe(self_id, &members, peers.as_ref(), Instant::now())
    }

    /// The raft's members as the last status read saw them, for the heartbeat; `None` when
    /// this member is not in a raft with a leader, or the list does not fit a heartbeat.
    pub fn raft_members(&self) -> Option<Vec<RaftMember>> {
        let view = self.raft.view.lock().unwrap_or_else(|e| e.into_inner());
        view.as_ref().and_then(|view| reportable(&view.members))
    }

    /// After a heartbeat the registry accepted: the leader's dead-member cleanup, with the
    /// registry's `absent` list and `expect` (its last answer, else `--expect`).
    pub async fn after_heartbeat(&self, answer: &HeartbeatResponse, expect: u32) {
        let view = self
            .raft
            .view
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let Some(view) = view.filter(|v| v.is_leader) else {
            return;
        };
        self.raft
            .cleanup
            .after_heartbeat(
                &self.local_client_url(),
                &view.self_id,
                &view.members,
                &answer.absent,
                expect,
                crate::member_loop::interval_from_ms(answer.interval_ms),
            )
            .await;
    }
}
