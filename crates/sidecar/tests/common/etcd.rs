//! etcd for the sidecar's tests: the nodes a sidecar runs, and a small client of etcd's v3
//! JSON gateway to check what they formed.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::{json, Value};

use super::{free_port, sidecar, unique, ProcessGuard};

/// One etcd node run by a sidecar.
#[derive(Debug)]
pub struct EtcdNode {
    pub name: String,
    pub client_port: u16,
    pub peer_port: u16,
    pub data_dir: PathBuf,
}

impl EtcdNode {
    /// Nodes named `names`, with their data directories under `base`.
    pub fn named(names: &[&str], base: &Path) -> Vec<EtcdNode> {
        names.iter().map(|n| EtcdNode::new(n, base)).collect()
    }

    pub fn new(name: &str, base: &Path) -> EtcdNode {
        EtcdNode {
            name: name.to_string(),
            client_port: free_port(),
            peer_port: free_port(),
            data_dir: base.join(name),
        }
    }

    /// A node with explicit ports and data directory: the same node restarted at another
    /// address (new ports, same data), or a node that must keep its ports.
    pub fn at(name: &str, data_dir: PathBuf, client_port: u16, peer_port: u16) -> EtcdNode {
        EtcdNode {
            name: name.to_string(),
            client_port,
            peer_port,
            data_dir,
        }
    }

    pub fn client_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    pub fn peer_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.peer_port)
    }

    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.client_port)
    }

    /// The `rollcall-sidecar run --engine etcd` command for this node.
    pub fn sidecar_command(&self, registry_url: &str, cluster: &str, expect: u32) -> Command {
        self.sidecar_command_with(registry_url, cluster, expect, &[])
    }

    /// [`EtcdNode::sidecar_command`] with `extra` flags (none of those it sets already).
    pub fn sidecar_command_with(
        &self,
        registry_url: &str,
        cluster: &str,
        expect: u32,
        extra: &[&str],
    ) -> Command {
        let mut command = self.sidecar_environment(registry_url, cluster, expect);
        command.args(extra);
        command
            .args([
                "--stop-timeout",
                "5s",
                "--registry-retry-limit",
                "20s",
                "--join-timeout",
                "60s",
            ])
            .arg("run");
        command
    }

    /// `rollcall-sidecar` with the flags this node's `run` has (who it is, where, its data),
    /// for another subcommand (`leave`) to add its own and its name.
    pub fn sidecar_environment(&self, registry_url: &str, cluster: &str, expect: u32) -> Command {
        let mut command = sidecar(registry_url, cluster, &self.name);
        command
            .args(["--advertise", &self.address()])
            .args(["--etcd-peer-port", &self.peer_port.to_string()])
            .args(["--engine", "etcd", "--expect", &expect.to_string()])
            .arg("--data-dir")
            .arg(&self.data_dir);
        command
    }

    pub fn start_sidecar(
        &self,
        registry_url: &str,
        cluster: &str,
        expect: u32,
        logs: &Path,
    ) -> ProcessGuard {
        self.start_sidecar_with(registry_url, cluster, expect, logs, &[])
    }

    /// A sidecar for each of `nodes`, all at once, with the default flags.
    pub fn start_sidecars(
        nodes: &[EtcdNode],
        registry_url: &str,
        cluster: &str,
        expect: u32,
        logs: &Path,
    ) -> Vec<ProcessGuard> {
        nodes
            .iter()
            .map(|n| n.start_sidecar(registry_url, cluster, expect, logs))
            .collect()
    }

    /// [`EtcdNode::start_sidecar`] with `extra` flags.
    pub fn start_sidecar_with(
        &self,
        registry_url: &str,
        cluster: &str,
        expect: u32,
        logs: &Path,
        extra: &[&str],
    ) -> ProcessGuard {
        ProcessGuard::spawn(
            &format!("sidecar {}", self.name),
            self.sidecar_command_with(registry_url, cluster, expect, extra),
            unique(logs.join(format!("sidecar-{}.log", self.name))),
        )
    }
}

/// A small client for etcd's v3 JSON gateway.
#[derive(Debug, Clone)]
pub struct Etcd {
    http: reqwest::Client,
}

impl Default for Etcd {
    fn default() -> Self {
        Etcd {
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(3))
                .no_proxy()
                .build()
                .expect("http client"),
        }
    }
}

impl Etcd {
    pub async fn post(&self, base: &str, path: &str, body: Value) -> Option<Value> {
        let response = self
            .http
            .post(format!("{base}{path}"))
            .json(&body)
            .send()
            .await
            .ok()?;
        if !response.status().is_success() {
            return None;
        }
        response.json().await.ok()
    }

    pub async fn healthy(&self, base: &str) -> bool {
        match self.http.get(format!("{base}/health")).send().await {
            Ok(r) => r
                .json::<Value>()
                .await
                .map(|v| v["health"] == "true")
                .unwrap_or(false),
            Err(_) => false,
        }
    }

    /// (cluster ID, this member's ID, the leader's ID).
    pub async fn status(&self, base: &str) -> Option<(String, String, String)> {
        let v = self.post(base, "/v3/maintenance/status", json!({})).await?;
        Some((
            v["header"]["cluster_id"].as_str()?.to_string(),
            v["header"]["member_id"].as_str()?.to_string(),
            v["leader"].as_str()?.to_string(),
        ))
    }

    /// (ID, name, is learner) of every member, sorted by name.
    pub async fn members(&self, base: &str) -> Option<Vec<(String, String, bool)>> {
        let v = self
            .post(base, "/v3/cluster/member/list", json!({}))
            .await?;
        let mut members: Vec<(String, String, bool)> = v["members"]
            .as_array()?
            .iter()
            .map(|m| {
                (
                    m["ID"].as_str().unwrap_or_default().to_string(),
                    m["name"].as_str().unwrap_or_default().to_string(),
                    m["isLearner"].as_bool().unwrap_or(false),
                )
            })
            .collect();
        members.sort_by(|a, b| a.1.cmp(&b.1));
        Some(members)
    }

    /// Every member with its peer URLs, sorted by name.
    pub async fn member_list(&self, base: &str) -> Option<Vec<ListedMember>> {
        let v = self
            .post(base, "/v3/cluster/member/list", json!({}))
            .await?;
        let mut members: Vec<ListedMember> = v["members"]
            .as_array()?
            .iter()
            .map(|m| ListedMember {
                id: m["ID"].as_str().unwrap_or_default().to_string(),
                name: m["name"].as_str().unwrap_or_default().to_string(),
                peer_urls: m["peerURLs"]
                    .as_array()
                    .map(|urls| {
                        urls.iter()
                            .filter_map(|u| u.as_str().map(String::from))
                            .collect()
                    })
                    .unwrap_or_default(),
                learner: m["isLearner"].as_bool().unwrap_or(false),
            })
            .collect();
        members.sort_by(|a, b| a.name.cmp(&b.name));
        Some(members)
    }

    /// The members' names, sorted (a member added and never started has an empty name).
    pub async fn member_names(&self, base: &str) -> Option<Vec<String>> {
        let members = self.members(base).await?;
        Some(members.into_iter().map(|(_, name, _)| name).collect())
    }

    pub async fn put(&self, base: &str, key: &str, value: &str) -> bool {
        self.post(
            base,
            "/v3/kv/put",
            json!({ "key": b64_encode(key.as_bytes()), "value": b64_encode(value.as_bytes()) }),
        )
        .await
        .is_some()
    }

    /// A linearizable read.
    pub async fn get(&self, base: &str, key: &str) -> Option<String> {
        let v = self
            .post(
                base,
                "/v3/kv/range",
                json!({ "key": b64_encode(key.as_bytes()) }),
            )
            .await?;
        let value = v["kvs"].as_array()?.first()?["value"].as_str()?;
        String::from_utf8(b64_decode(value)?).ok()
    }
}

/// One member as etcd's member list shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedMember {
    /// Decimal, as the JSON gateway writes it.
    pub id: String,
    pub name: String,
    pub peer_urls: Vec<String>,
    pub learner: bool,
}

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Standard base64, as etcd's JSON gateway encodes keys and values.
pub fn b64_encode(bytes: &[u8]) -> String {
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(B64[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

pub fn b64_decode(text: &str) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    let digits: Vec<u32> = text
        .bytes()
        .filter(|b| *b != b'=')
        .map(|b| B64.iter().position(|c| *c == b).map(|p| p as u32))
        .collect::<Option<_>>()?;
    for chunk in digits.chunks(4) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, d)| n | d << (18 - 6 * i));
        for i in 0..chunk.len().saturating_sub(1) {
            out.push((n >> (16 - 8 * i) & 255) as u8);
        }
    }
    Some(out)
}
