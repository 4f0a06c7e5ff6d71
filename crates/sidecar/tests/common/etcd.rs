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
    pub fn new(name: &str, base: &Path) -> EtcdNode {
        EtcdNode {
            name: name.to_string(),
            client_port: free_port(),
            peer_port: free_port(),
            data_dir: base.join(name),
        }
    }

    pub fn client_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.client_port)
    }

    /// The `rollcall-sidecar run --engine etcd` command for this node.
    pub fn sidecar_command(&self, registry_url: &str, cluster: &str, expect: u32) -> Command {
        let mut command = sidecar(registry_url, cluster, &self.name);
        command
            .args(["--advertise", &self.address()])
            .args(["--etcd-peer-port", &self.peer_port.to_string()])
            .args(["--engine", "etcd", "--expect", &expect.to_string()])
            .arg("--data-dir")
            .arg(&self.data_dir)
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

    pub fn start_sidecar(
        &self,
        registry_url: &str,
        cluster: &str,
        expect: u32,
        logs: &Path,
    ) -> ProcessGuard {
        ProcessGuard::spawn(
            &format!("sidecar {}", self.name),
            self.sidecar_command(registry_url, cluster, expect),
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
