//! etcd's v3 JSON gateway as the sidecar calls it: one method per call, and the wire types of
//! the answers. Nothing here decides anything; the join and the health check do.

use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::engine::describe;

/// A membership call that takes longer is abandoned and the next target tried. etcd can
/// hold a member add while an earlier membership change settles; if the add went through
/// after all, the next attempt finds the unstarted member and reuses it.
const MEMBERSHIP_CALL_TIMEOUT: Duration = Duration::from_secs(2);

/// A client of any etcd member's API; every call names the member's client URL (`base`).
/// Errors are one line each, ready for a log or a [`crate::engine::Health`] reason.
#[derive(Debug, Clone)]
pub struct EtcdApi {
    http: reqwest::Client,
}

impl EtcdApi {
    pub fn new(http: reqwest::Client) -> Self {
        EtcdApi { http }
    }

    /// `GET /health`: the body as text, or an error when the member does not answer at all.
    pub async fn health(&self, base: &str) -> Result<String, String> {
        let url = format!("{base}/health");
        let response = self
            .http
            .get(&url)
            .send()
            .await
            .map_err(|e| format!("{url}: {}", describe(&e)))?;
        Ok(response.text().await.unwrap_or_default())
    }

    /// `POST /v3/maintenance/status`: the member's own view (its ID, the leader, learner or
    /// not).
    pub async fn status(&self, base: &str) -> Result<StatusResponse, String> {
        self.post(base, "/v3/maintenance/status", &serde_json::json!({}))
            .await
    }

    pub async fn member_list(&self, base: &str) -> Result<MemberListResponse, String> {
        self.post(base, "/v3/cluster/member/list", &serde_json::json!({}))
            .await
    }

    /// Adds a learner with `peer_url`; the answer names it and lists every member.
    pub async fn add_learner(
        &self,
        base: &str,
        peer_url: String,
    ) -> Result<MemberAddResponse, String> {
        let request = MemberAddRequest {
            peer_urls: vec![peer_url],
            is_learner: true,
        };
        self.post(base, "/v3/cluster/member/add", &request).await
    }

    pub async fn remove_member(&self, base: &str, member_id: &str) -> Result<(), String> {
        self.post_ignoring_answer(base, "/v3/cluster/member/remove", member_id)
            .await
    }

    /// Promotes a learner to a voter; etcd refuses while the learner is not in sync.
    pub async fn promote_member(&self, base: &str, member_id: &str) -> Result<(), String> {
        self.post_ignoring_answer(base, "/v3/cluster/member/promote", member_id)
            .await
    }

    /// `member update`: sets the peer URLs of member `member_id` (a member that restarted at
    /// another address).
    pub async fn update_peer_urls(
        &self,
        base: &str,
        member_id: &str,
        peer_urls: Vec<String>,
    ) -> Result<(), String> {
        let _: serde_json::Value = self
            .post(
                base,
                "/v3/cluster/member/update",
                &serde_json::json!({ "ID": member_id, "peerURLs": peer_urls }),
            )
            .await?;
        Ok(())
    }

    /// `GET /metrics`: the Prometheus text, for the leader's peer connections
    /// ([`super::peers::active_peers`]).
    pub async fn metrics(&self, base: &str) -> Result<String, String> {
        let url = format!("{}/metrics", base.trim_end_matches('/'));
        let response = self
            .http
            .get(&url)
            .send()
            .await
            .map_err(|e| format!("{url}: {}", describe(&e)))?;
        if !response.status().is_success() {
            return Err(format!("{url} answered {}", response.status()));
        }
        response
            .text()
            .await
            .map_err(|e| format!("{url}: {}", describe(&e)))
    }

    async fn post_ignoring_answer(
        &self,
        base: &str,
        path: &str,
        member_id: &str,
    ) -> Result<(), String> {
        let _: serde_json::Value = self
            .post(base, path, &serde_json::json!({ "ID": member_id }))
            .await?;
        Ok(())
    }

    async fn post<B: Serialize, T: DeserializeOwned>(
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
pub struct MemberAddResponse {
    /// The member just added.
    pub member: EtcdMember,
    /// Every member, the new one included.
    #[serde(default)]
    pub members: Vec<EtcdMember>,
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
