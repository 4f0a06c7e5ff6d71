//! The etcd engine (etcd 3.4 and later).
//!
//! What goes to the registry: the member's **client** address (`host:client_port`) is its
//! `address`, the join target every other sidecar uses, because joining an etcd cluster
//! means calling a member's client API (`/v3/cluster/member/add`) and a gateway proxies to
//! client ports too. The peer port is not derived from the client port: it comes from
//! `--etcd-peer-port` (2380 by default), and the heartbeat's metadata carries both URLs
//! (`client_url`, `peer_url`) for people reading `/v1/clusters/{c}/members`.
//!
//! Roles:
//! - `bootstrap`: a new one-member cluster (`--initial-cluster-state new`).
//! - `server`: the member adds itself as a **learner** through a live server, starts with
//!   `--initial-cluster-state existing` and the member list that call returned, and is
//!   promoted to a voter by the health check once it has caught up. A learner never costs
//!   the raft its quorum, which a plain add does while the new member is still starting.
//!   etcd 3.4 allows one learner at a time, so concurrent joiners take turns: "too many
//!   learner members" is a retry, not a failure.
//! - `agent`: `etcd gateway start` to the live servers' client addresses.
//! - restart: the data directory holds `member/wal`, so etcd starts from it; the member is
//!   neither bootstrapped nor added again (its ID stays the same).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use rollcall_protocol::{AgentStatus, MemberRole};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;
use tracing::{info, warn};

use super::{describe, dir_has_entries, shuffled, AgentCommand, Health, JoinTargets, StartPlan};
use crate::config::{is_ip_literal, join_host_port, Settings};
use crate::exit::{Exit, EXIT_JOIN_FAILED};

/// Pause between two rounds over the join targets.
const JOIN_RETRY_PAUSE: Duration = Duration::from_millis(500);
/// A membership call that takes longer is abandoned and the next target tried. etcd can
/// hold a member add while an earlier membership change settles; if the add went through
/// after all, the next attempt finds the unstarted member and reuses it.
const MEMBERSHIP_CALL_TIMEOUT: Duration = Duration::from_secs(2);

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
    join_timeout: Duration,
    passthrough: Vec<String>,
    http: reqwest::Client,
    /// Client URLs of voters that can promote this member once it runs as a learner: the
    /// voters the member-add answer listed, then the join targets. A learner cannot answer
    /// membership calls itself.
    voters: std::sync::Mutex<Vec<String>>,
}

impl EtcdEngine {
    pub fn new(settings: &Settings, http: reqwest::Client) -> Self {
        let ip = is_ip_literal(&settings.advertise_host);
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
            join_timeout: settings.join_timeout,
            passthrough: settings.agent_args.clone(),
            http,
            voters: std::sync::Mutex::new(Vec::new()),
        }
    }

    pub fn peer_url(&self) -> String {
        format!(
            "http://{}",
            join_host_port(&self.advertise_host, self.peer_port)
        )
    }

    pub fn client_url(&self) -> String {
        format!(
            "http://{}",
            join_host_port(&self.advertise_host, self.client_port)
        )
    }

    fn local_client_url(&self) -> String {
        format!(
            "http://{}",
            join_host_port(&self.local_host, self.client_port)
        )
    }

    pub fn meta(&self) -> BTreeMap<String, String> {
        BTreeMap::from([
            ("client_url".to_string(), self.client_url()),
            ("peer_url".to_string(), self.peer_url()),
        ])
    }

    /// etcd writes its raft log under `member/wal` of the data directory.
    pub fn has_raft_state(&self) -> bool {
        dir_has_entries(&self.data_dir.join("member").join("wal"))
    }

    fn args(&self) -> EtcdArgs<'_> {
        EtcdArgs {
            node: &self.node,
            cluster: &self.cluster,
            data_dir: self.data_dir.to_str().unwrap_or("."),
            advertise_host: &self.advertise_host,
            listen_host: &self.listen_host,
            client_port: self.client_port,
            peer_port: self.peer_port,
            passthrough: &self.passthrough,
        }
    }

    pub async fn prepare(
        &self,
        plan: &StartPlan,
        targets: &impl JoinTargets,
    ) -> Result<AgentCommand, Exit> {
        self.remember_voters(plan.join().iter().map(|t| format!("http://{t}")));
        let args = match plan {
            StartPlan::Bootstrap => member_args(&self.args(), Initial::New),
            StartPlan::Restart { .. } => member_args(&self.args(), Initial::FromData),
            StartPlan::Server { join } => {
                let initial_cluster = self.add_self_as_learner(join, targets).await?;
                member_args(&self.args(), Initial::Existing(&initial_cluster))
            }
            StartPlan::Agent { join } => {
                let join = if join.is_empty() {
                    self.wait_for_targets(targets).await?
                } else {
                    join.clone()
                };
                gateway_args(&self.args(), &join)
            }
        };
        Ok(AgentCommand {
            program: self.program.clone(),
            args,
            env: vec![],
        })
    }

    async fn wait_for_targets(&self, targets: &impl JoinTargets) -> Result<Vec<String>, Exit> {
        let deadline = Instant::now() + self.join_timeout;
        loop {
            if let Some(servers) = targets
                .live_server_addresses()
                .await
                .filter(|t| !t.is_empty())
            {
                return Ok(servers);
            }
            if Instant::now() >= deadline {
                return Err(Exit::new(
                    EXIT_JOIN_FAILED,
                    "no live etcd server to proxy to within the join timeout",
                ));
            }
            tokio::time::sleep(JOIN_RETRY_PAUSE).await;
        }
    }

    /// Adds this node as a learner through one of `join` (shuffled, retried until one
    /// answers) and returns the `--initial-cluster` value.
    async fn add_self_as_learner(
        &self,
        join: &[String],
        targets: &impl JoinTargets,
    ) -> Result<String, Exit> {
        let deadline = Instant::now() + self.join_timeout;
        let mut candidates = join.to_vec();
        loop {
            for target in shuffled(&candidates) {
                info!(target = %target, "joining the etcd cluster through this member, chosen at random among the live servers");
                match self.add_through(&target).await {
                    Ok(initial_cluster) => return Ok(initial_cluster),
                    Err(reason) => {
                        warn!(target = %target, %reason, "member add failed; trying the next join target")
                    }
                }
            }
            if Instant::now() >= deadline {
                return Err(Exit::new(
                    EXIT_JOIN_FAILED,
                    format!(
                        "no join target accepted this member within {:?}",
                        self.join_timeout
                    ),
                ));
            }
            tokio::time::sleep(JOIN_RETRY_PAUSE).await;
            // The live servers may have changed while we tried: ask again.
            if let Some(fresh) = targets
                .live_server_addresses()
                .await
                .filter(|t| !t.is_empty())
            {
                candidates = fresh;
            }
        }
    }

    async fn add_through(&self, target: &str) -> Result<String, String> {
        let base = format!("http://{target}");
        let peer_url = self.peer_url();
        let list: MemberListResponse = self
            .post(&base, "/v3/cluster/member/list", &serde_json::json!({}))
            .await?;
        if let Some(existing) = list
            .members
            .iter()
            .find(|m| m.peer_urls.contains(&peer_url))
        {
            if existing.name.is_empty() {
                info!(member_id = %existing.id, "this peer URL was added earlier but never started: reusing that member instead of adding it again");
                return Ok(initial_cluster(&list.members, &existing.id, &self.node));
            }
            // The member ran before, but this data directory holds no raft state: its log is
            // lost, so the only way back in is to replace the old member.
            warn!(member_id = %existing.id, name = %existing.name, "a member with this peer URL exists but the data directory is empty: removing it before adding this node again");
            let _: serde_json::Value = self
                .post(
                    &base,
                    "/v3/cluster/member/remove",
                    &serde_json::json!({ "ID": existing.id }),
                )
                .await?;
        }
        let added: MemberAddResponse = self
            .post(
                &base,
                "/v3/cluster/member/add",
                &MemberAddRequest {
                    peer_urls: vec![peer_url],
                    is_learner: true,
                },
            )
            .await?;
        info!(member_id = %added.member.id, via = %target, "added this node to the etcd cluster as a learner");
        self.remember_voters(
            added
                .members
                .iter()
                .filter(|m| !m.is_learner)
                .flat_map(|m| m.client_urls.iter().cloned())
                .chain(std::iter::once(base)),
        );
        Ok(initial_cluster(
            &added.members,
            &added.member.id,
            &self.node,
        ))
    }

    pub async fn health(&self, role: MemberRole) -> Health {
        let url = format!("{}/health", self.local_client_url());
        let response = match self.http.get(&url).send().await {
            Ok(r) => r,
            Err(e) => return Health::NotRunning(format!("{url}: {}", describe(&e))),
        };
        let body = response.text().await.unwrap_or_default();
        if !parse_health(&body) {
            return Health::Starting(format!("etcd /health answered {}", body.trim()));
        }
        if role == MemberRole::Agent {
            return Health::Healthy;
        }
        // A member that joined as a learner heartbeats only once it is a voter, so that no
        // one is told to join through a member that cannot add them.
        match self.local_status().await {
            Ok(status) if status.is_learner => match self.promote(&status.header.member_id).await {
                Ok(()) => Health::Healthy,
                Err(reason) => Health::Starting(reason),
            },
            Ok(_) => Health::Healthy,
            Err(reason) => Health::Starting(reason),
        }
    }

    async fn local_status(&self) -> Result<StatusResponse, String> {
        self.post(
            &self.local_client_url(),
            "/v3/maintenance/status",
            &serde_json::json!({}),
        )
        .await
    }

    /// Adds voter client URLs to try for the promotion, most recent first, without repeats.
    fn remember_voters(&self, urls: impl Iterator<Item = String>) {
        let mut voters = self
            .voters
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        for url in urls {
            voters.retain(|known| *known != url);
            voters.insert(0, url);
        }
    }

    /// Promotes this learner through any known voter; "not in sync" means "later".
    async fn promote(&self, member_id: &str) -> Result<(), String> {
        let voters = self
            .voters
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone();
        let mut last_error = "no voter known to promote this learner through".to_string();
        for url in &voters {
            let result: Result<serde_json::Value, String> = self
                .post(
                    url,
                    "/v3/cluster/member/promote",
                    &serde_json::json!({ "ID": member_id }),
                )
                .await;
            match result {
                Ok(_) => {
                    info!(%member_id, via = %url, "promoted this learner to a voting member");
                    return Ok(());
                }
                // Someone (an earlier run of this sidecar) promoted it already.
                Err(e) if e.ends_with("can only promote a learner member") => return Ok(()),
                Err(e) => last_error = format!("learner not promoted yet: {e}"),
            }
        }
        Err(last_error)
    }

    pub async fn status(&self, role: MemberRole) -> Option<AgentStatus> {
        let status = self.local_status().await.ok()?;
        let list: Option<MemberListResponse> = self
            .post(
                &self.local_client_url(),
                "/v3/cluster/member/list",
                &serde_json::json!({}),
            )
            .await
            .ok();
        Some(agent_status(
            &status,
            list.as_ref().map(|l| l.members.as_slice()),
            role,
        ))
    }

    async fn post<B: Serialize, T: serde::de::DeserializeOwned>(
        &self,
        base: &str,
        path: &str,
        body: &B,
    ) -> Result<T, String> {
        let url = format!("{}{}", base.trim_end_matches('/'), path);
        let response = self
            .http
            .post(&url)
            .timeout(MEMBERSHIP_CALL_TIMEOUT)
            .json(body)
            .send()
            .await
            .map_err(|e| format!("{url}: {}", describe(&e)))?;
        let status = response.status();
        let bytes = response.bytes().await.map_err(|e| format!("{url}: {e}"))?;
        if !status.is_success() {
            let message = serde_json::from_slice::<EtcdError>(&bytes)
                .map(|e| {
                    if e.message.is_empty() {
                        e.error
                    } else {
                        e.message
                    }
                })
                .unwrap_or_else(|_| String::from_utf8_lossy(&bytes).into_owned());
            return Err(format!("{url} answered {status}: {message}"));
        }
        serde_json::from_slice(&bytes).map_err(|e| format!("{url}: unexpected answer: {e}"))
    }
}

/// Everything etcd's command line depends on.
#[derive(Debug, Clone)]
pub struct EtcdArgs<'a> {
    pub node: &'a str,
    pub cluster: &'a str,
    pub data_dir: &'a str,
    pub advertise_host: &'a str,
    pub listen_host: &'a str,
    pub client_port: u16,
    pub peer_port: u16,
    pub passthrough: &'a [String],
}

/// How a member's cluster membership is set on its command line.
#[derive(Debug, Clone, Copy)]
pub enum Initial<'a> {
    /// A new one-member cluster.
    New,
    /// Joining the cluster whose member list is given (`name=peer_url,...`).
    Existing(&'a str),
    /// Restarting from the data directory, which knows the cluster already.
    FromData,
}

pub fn member_args(a: &EtcdArgs<'_>, initial: Initial<'_>) -> Vec<String> {
    let url = |host: &str, port: u16| format!("http://{}", join_host_port(host, port));
    let mut args = vec![
        format!("--name={}", a.node),
        format!("--data-dir={}", a.data_dir),
        format!("--listen-client-urls={}", listen_client_urls(a)),
        format!(
            "--advertise-client-urls={}",
            url(a.advertise_host, a.client_port)
        ),
        format!("--listen-peer-urls={}", url(a.listen_host, a.peer_port)),
        format!(
            "--initial-advertise-peer-urls={}",
            url(a.advertise_host, a.peer_port)
        ),
    ];
    match initial {
        Initial::New => {
            args.push(format!(
                "--initial-cluster={}={}",
                a.node,
                url(a.advertise_host, a.peer_port)
            ));
            args.push("--initial-cluster-state=new".into());
            args.push(format!("--initial-cluster-token={}", a.cluster));
        }
        Initial::Existing(members) => {
            args.push(format!("--initial-cluster={members}"));
            args.push("--initial-cluster-state=existing".into());
            args.push(format!("--initial-cluster-token={}", a.cluster));
        }
        Initial::FromData => {}
    }
    args.extend(a.passthrough.iter().cloned());
    args
}

/// Where etcd serves clients: the listen host and, when that is one specific non-loopback
/// address, also `127.0.0.1` on the same port, so that `etcdctl` inside the container works
/// without `--endpoints` (its default is `127.0.0.1:2379`). A wildcard listen host covers
/// loopback already (and a second listener on the same port would fail to bind), and a
/// loopback listen host is loopback.
pub fn listen_client_urls(a: &EtcdArgs<'_>) -> String {
    let url = |host: &str| format!("http://{}", join_host_port(host, a.client_port));
    let specific_non_loopback = a
        .listen_host
        .parse::<std::net::IpAddr>()
        .is_ok_and(|ip| !ip.is_loopback() && !ip.is_unspecified());
    if specific_non_loopback {
        format!("{},{}", url(a.listen_host), url("127.0.0.1"))
    } else {
        url(a.listen_host)
    }
}

pub fn gateway_args(a: &EtcdArgs<'_>, join: &[String]) -> Vec<String> {
    let mut args = vec![
        "gateway".to_string(),
        "start".to_string(),
        format!(
            "--listen-addr={}",
            join_host_port(a.listen_host, a.client_port)
        ),
        format!("--endpoints={}", join.join(",")),
    ];
    args.extend(a.passthrough.iter().cloned());
    args
}

/// `--initial-cluster` from a member list, naming the new member as etcdctl does.
pub fn initial_cluster(members: &[EtcdMember], new_member_id: &str, node: &str) -> String {
    let mut entries = Vec::new();
    for member in members {
        let name = if member.id == new_member_id {
            node
        } else {
            member.name.as_str()
        };
        for url in &member.peer_urls {
            entries.push(format!("{name}={url}"));
        }
    }
    entries.join(",")
}

/// `GET /health`: `{"health":"true"}` while the member has a leader and no alarm.
pub fn parse_health(body: &str) -> bool {
    #[derive(Deserialize)]
    struct HealthBody {
        health: String,
    }
    serde_json::from_str::<HealthBody>(body)
        .map(|h| h.health == "true")
        .unwrap_or(false)
}

pub fn agent_status(
    status: &StatusResponse,
    members: Option<&[EtcdMember]>,
    role: MemberRole,
) -> AgentStatus {
    let has_leader = !status.leader.is_empty() && status.leader != "0";
    // Always the leader's member name, never etcd's numeric ID: a member that has just
    // joined can see a leader ID its member list does not name yet (or names with the empty
    // name of a member that never started). Then the leader is left out for this heartbeat.
    let leader_name = members
        .filter(|_| has_leader)
        .and_then(|ms| ms.iter().find(|m| m.id == status.leader))
        .map(|m| m.name.clone())
        .filter(|name| !name.is_empty());
    AgentStatus {
        in_raft: Some(has_leader && (role == MemberRole::Agent || !status.is_learner)),
        leader: leader_name,
        peers: members.map(|ms| ms.iter().filter(|m| !m.is_learner).count() as u32),
        // Through a gateway the status is the backend's, never this node's.
        is_leader: Some(
            role == MemberRole::Server && has_leader && status.leader == status.header.member_id,
        ),
    }
}

/// One member as the v3 JSON gateway lists it (IDs are uint64 written as strings).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct EtcdMember {
    #[serde(rename = "ID", default)]
    pub id: String,
    #[serde(default)]
    pub name: String,
    #[serde(rename = "peerURLs", default)]
    pub peer_urls: Vec<String>,
    #[serde(rename = "clientURLs", default)]
    pub client_urls: Vec<String>,
    #[serde(rename = "isLearner", default)]
    pub is_learner: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct ResponseHeader {
    #[serde(default)]
    pub cluster_id: String,
    #[serde(default)]
    pub member_id: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct MemberListResponse {
    #[serde(default)]
    pub header: ResponseHeader,
    #[serde(default)]
    pub members: Vec<EtcdMember>,
}

#[derive(Debug, Serialize)]
struct MemberAddRequest {
    #[serde(rename = "peerURLs")]
    peer_urls: Vec<String>,
    #[serde(rename = "isLearner")]
    is_learner: bool,
}

#[derive(Debug, Deserialize)]
struct MemberAddResponse {
    member: EtcdMember,
    #[serde(default)]
    members: Vec<EtcdMember>,
}

/// `POST /v3/maintenance/status`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct StatusResponse {
    #[serde(default)]
    pub header: ResponseHeader,
    #[serde(default)]
    pub leader: String,
    #[serde(rename = "isLearner", default)]
    pub is_learner: bool,
}

#[derive(Debug, Deserialize)]
struct EtcdError {
    #[serde(default)]
    error: String,
    #[serde(default)]
    message: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args<'a>(passthrough: &'a [String]) -> EtcdArgs<'a> {
        EtcdArgs {
            node: "n2",
            cluster: "c",
            data_dir: "/data",
            advertise_host: "10.0.0.2",
            listen_host: "10.0.0.2",
            client_port: 2379,
            peer_port: 2380,
            passthrough,
        }
    }

    #[test]
    fn bootstrap_joins_and_restarts_have_distinct_command_lines() {
        let extra = vec!["--snapshot-count=1000".to_string()];
        let new = member_args(&args(&extra), Initial::New);
        assert!(new.contains(&"--initial-cluster=n2=http://10.0.0.2:2380".to_string()));
        assert!(new.contains(&"--initial-cluster-state=new".to_string()));
        assert_eq!(new.last(), Some(&extra[0]));

        let existing = member_args(
            &args(&[]),
            Initial::Existing("n1=http://10.0.0.1:2380,n2=http://10.0.0.2:2380"),
        );
        assert!(existing.contains(&"--initial-cluster-state=existing".to_string()));
        assert!(existing.contains(
            &"--initial-cluster=n1=http://10.0.0.1:2380,n2=http://10.0.0.2:2380".to_string()
        ));

        let restart = member_args(&args(&[]), Initial::FromData);
        assert!(!restart.iter().any(|a| a.starts_with("--initial-cluster")));
        assert!(restart.contains(&"--advertise-client-urls=http://10.0.0.2:2379".to_string()));
        for member in [&new, &existing, &restart] {
            assert!(member.contains(
                &"--listen-client-urls=http://10.0.0.2:2379,http://127.0.0.1:2379".to_string()
            ));
            assert!(member.contains(&"--listen-peer-urls=http://10.0.0.2:2380".to_string()));
        }

        let gateway = gateway_args(
            &args(&[]),
            &["10.0.0.1:2379".into(), "10.0.0.3:2379".into()],
        );
        assert_eq!(
            gateway,
            [
                "gateway",
                "start",
                "--listen-addr=10.0.0.2:2379",
                "--endpoints=10.0.0.1:2379,10.0.0.3:2379"
            ]
        );
    }

    #[test]
    fn clients_can_also_reach_etcd_on_loopback_unless_it_listens_there_already() {
        // (listen host, client port, --listen-client-urls)
        let table = [
            (
                "10.0.0.2",
                2379,
                "http://10.0.0.2:2379,http://127.0.0.1:2379",
            ),
            // Another client port: loopback on that same port.
            (
                "10.0.0.2",
                23791,
                "http://10.0.0.2:23791,http://127.0.0.1:23791",
            ),
            (
                "fd00::2",
                2379,
                "http://[fd00::2]:2379,http://127.0.0.1:2379",
            ),
            // Advertised on loopback: nothing to add.
            ("127.0.0.1", 2379, "http://127.0.0.1:2379"),
            ("127.0.0.5", 2379, "http://127.0.0.5:2379"),
            ("::1", 2379, "http://[::1]:2379"),
            // A hostname (`localhost` too) listens on every address, loopback included; a
            // second listener on 127.0.0.1 and the same port would fail to bind.
            ("0.0.0.0", 2379, "http://0.0.0.0:2379"),
        ];
        for (listen_host, client_port, expected) in table {
            let a = EtcdArgs {
                listen_host,
                client_port,
                ..args(&[])
            };
            assert_eq!(listen_client_urls(&a), expected, "{listen_host}");
            assert!(
                member_args(&a, Initial::New).contains(&format!("--listen-client-urls={expected}"))
            );
        }
    }

    #[test]
    fn initial_cluster_names_the_new_member_like_etcdctl() {
        // The answer etcd 3.4.23 gave to a learner add on this machine.
        let body = r#"{"header":{"cluster_id":"5298435163934787985","member_id":"8645782499530242234","raft_term":"2"},"member":{"ID":"1438879902281274126","peerURLs":["http://127.0.0.1:23802"],"isLearner":true},"members":[{"ID":"1438879902281274126","peerURLs":["http://127.0.0.1:23802"],"isLearner":true},{"ID":"8645782499530242234","name":"a","peerURLs":["http://127.0.0.1:23801"],"clientURLs":["http://127.0.0.1:23791"]}]}"#;
        let added: MemberAddResponse = serde_json::from_str(body).expect("parse");
        assert_eq!(
            initial_cluster(&added.members, &added.member.id, "b"),
            "b=http://127.0.0.1:23802,a=http://127.0.0.1:23801"
        );
    }

    #[test]
    fn status_reads_leader_and_voters() {
        let status: StatusResponse = serde_json::from_str(
            r#"{"header":{"cluster_id":"5298435163934787985","member_id":"8645782499530242234","revision":"1","raft_term":"2"},"version":"3.4.23","dbSize":"20480","leader":"8645782499530242234","raftIndex":"7","raftTerm":"2","raftAppliedIndex":"7","dbSizeInUse":"16384"}"#,
        )
        .expect("parse");
        let members = vec![
            EtcdMember {
                id: "8645782499530242234".into(),
                name: "a".into(),
                ..Default::default()
            },
            EtcdMember {
                id: "1438879902281274126".into(),
                name: "b".into(),
                is_learner: true,
                ..Default::default()
            },
        ];
        let s = agent_status(&status, Some(&members), MemberRole::Server);
        assert_eq!(s.leader.as_deref(), Some("a"));
        assert_eq!(s.peers, Some(1));
        assert_eq!(s.is_leader, Some(true));
        assert_eq!(s.in_raft, Some(true));
        let through_gateway = agent_status(&status, Some(&members), MemberRole::Agent);
        assert_eq!(through_gateway.is_leader, Some(false));
        assert!(parse_health(r#"{"health":"true"}"#));
        assert!(!parse_health(r#"{"health":"false"}"#));
        assert!(!parse_health("not json"));
    }

    #[test]
    fn status_leader_is_a_member_name_never_a_numeric_id() {
        // What a member that had just joined saw: a leader whose ID its member list did not
        // name yet.
        let status: StatusResponse = serde_json::from_str(
            r#"{"header":{"cluster_id":"5298435163934787985","member_id":"1438879902281274126"},"leader":"3836211933317525247","isLearner":false}"#,
        )
        .expect("parse");
        let named = |id: &str, name: &str| EtcdMember {
            id: id.into(),
            name: name.into(),
            ..Default::default()
        };
        let without_leader = vec![named("1438879902281274126", "b")];
        let unstarted_leader = vec![
            named("1438879902281274126", "b"),
            named("3836211933317525247", ""),
        ];
        let with_leader = vec![
            named("1438879902281274126", "b"),
            named("3836211933317525247", "a"),
        ];
        for (members, leader) in [
            (None, None),
            (Some(without_leader.as_slice()), None),
            (Some(unstarted_leader.as_slice()), None),
            (Some(with_leader.as_slice()), Some("a")),
        ] {
            let s = agent_status(&status, members, MemberRole::Server);
            assert_eq!(s.leader.as_deref(), leader, "members {members:?}");
            // The raft has a leader either way; only its name may be unknown.
            assert_eq!(s.in_raft, Some(true));
            assert_eq!(s.is_leader, Some(false));
        }

        // No leader at all: etcd writes "0".
        let leaderless = StatusResponse {
            leader: "0".into(),
            ..status
        };
        let s = agent_status(&leaderless, Some(&with_leader), MemberRole::Server);
        assert_eq!(s.leader, None);
        assert_eq!(s.in_raft, Some(false));
    }
}
