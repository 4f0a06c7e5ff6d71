//! What etcd's answers say about this member: whether `/health` is true, and the raft
//! status a heartbeat carries. Pure functions of the answers, tested on captured ones.

use rollcall_protocol::{AgentStatus, MemberRole};
use serde::Deserialize;

use super::api::{EtcdMember, StatusResponse};

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

/// What the heartbeat's metadata says about which etcd raft this is: `etcd_cluster_id`
/// always (two rafts under one cluster name have two), and for a member `etcd_member_id`
/// (through a gateway the answer is a backend's, never this node's, so an agent has none).
pub fn raft_ids(status: &StatusResponse, role: MemberRole) -> Vec<(String, String)> {
    let mut ids = vec![(
        "etcd_cluster_id".to_string(),
        status.header.cluster_id.clone(),
    )];
    if role == MemberRole::Server {
        ids.push((
            "etcd_member_id".to_string(),
            status.header.member_id.clone(),
        ));
    }
    ids.retain(|(_, id)| !id.is_empty());
    ids
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_metadata_names_the_etcd_cluster_and_a_member_its_own_id() {
        let status: StatusResponse = serde_json::from_str(
            r#"{"header":{"cluster_id":"14035389283528514985","member_id":"10276657743932975437"},"leader":"10276657743932975437"}"#,
        )
        .expect("status");
        assert_eq!(
            raft_ids(&status, MemberRole::Server),
            [
                (
                    "etcd_cluster_id".to_string(),
                    "14035389283528514985".to_string()
                ),
                (
                    "etcd_member_id".to_string(),
                    "10276657743932975437".to_string()
                ),
            ]
        );
        assert_eq!(
            raft_ids(&status, MemberRole::Agent),
            [(
                "etcd_cluster_id".to_string(),
                "14035389283528514985".to_string()
            )]
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
