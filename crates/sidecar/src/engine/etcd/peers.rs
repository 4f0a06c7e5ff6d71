//! The raft's membership as this member reports it in heartbeats (`raft_members`), and, on
//! the leader, its evidence of which members are gone: etcd's own peer-connection gauge.
//!
//! etcd 3.4 exports one line per peer in `/metrics`:
//! `etcd_network_active_peers{Local="<hex id>",Remote="<hex id>"} 1` while a peer connection
//! is up, `0` once it is down (checked on this machine: a killed member's line drops to 0
//! within 200 ms; `tests/fixtures/etcd`). A member that never connected (a learner added but
//! never started) has no line at all, and a member removed from the raft keeps its line at 0:
//! so only the current member list's IDs are read, and a missing line is "not connected".
//! Member IDs are decimal in the JSON API and hexadecimal, without leading zeros (Go's
//! `strconv.FormatUint(id, 16)`), in metrics.
//!
//! How long a member has been disconnected is counted by [`PeerWatch`] from the first
//! observation of it disconnected while this sidecar saw its member lead: the watch starts
//! again each time this member becomes leader, so that absence is counted from the moment
//! the raft regained a leader (a staggered full restart never looks like a dead member).

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use rollcall_protocol::validate::MAX_RAFT_MEMBERS;
use rollcall_protocol::RaftMember;
use tokio::time::Instant;

use super::api::EtcdMember;

/// The gauge etcd 3.4 exports per peer connection.
const ACTIVE_PEERS_METRIC: &str = "etcd_network_active_peers";

/// etcd's decimal member ID as its metrics write it, or `None` when it is not a number.
pub fn member_id_hex(decimal: &str) -> Option<String> {
    decimal.parse::<u64>().ok().map(|id| format!("{id:x}"))
}

/// The peers `local_hex` has a connection to right now, by hexadecimal ID (true: the gauge
/// is above zero), from the text of etcd's `/metrics`. Other lines are ignored, and so is a
/// line of another local member (there is none in practice; one etcd exports its own).
pub fn active_peers(metrics: &str, local_hex: &str) -> BTreeMap<String, bool> {
    let mut peers = BTreeMap::new();
    for line in metrics.lines() {
        let Some(rest) = line.strip_prefix(ACTIVE_PEERS_METRIC) else {
            continue;
        };
        let Some((labels, value)) = rest.strip_prefix('{').and_then(|rest| rest.split_once('}'))
        else {
            continue;
        };
        let label = |name: &str| {
            labels.split(',').find_map(|pair| {
                let (key, value) = pair.trim().split_once('=')?;
                (key == name).then(|| value.trim_matches('"').to_string())
            })
        };
        let (Some(local), Some(remote)) = (label("Local"), label("Remote")) else {
            continue;
        };
        let Ok(value) = value.trim().parse::<f64>() else {
            continue;
        };
        if local == local_hex {
            peers.insert(remote, value > 0.0);
        }
    }
    peers
}

/// The member list as heartbeats carry it, without the leader's evidence.
pub fn raft_members(members: &[EtcdMember]) -> Vec<RaftMember> {
    members
        .iter()
        .map(|m| RaftMember {
            id: m.id.clone(),
            name: m.name.clone(),
            peer_urls: m.peer_urls.clone(),
            learner: m.is_learner,
            connected: None,
            disconnected_for_ms: None,
        })
        .collect()
}

/// What a heartbeat may carry of `members`: all of them when the registry accepts them (at
/// most [`MAX_RAFT_MEMBERS`], each valid), else nothing rather than a heartbeat refused.
pub fn reportable(members: &[RaftMember]) -> Option<Vec<RaftMember>> {
    (members.len() <= MAX_RAFT_MEMBERS && members.iter().all(|m| m.validate().is_ok()))
        .then(|| members.to_vec())
}

/// The leader's watch over its peer connections: since when it leads, and since when it has
/// seen each member disconnected. Plain values and an injected clock, tested by tables.
#[derive(Debug, Default)]
pub struct PeerWatch {
    /// The first observation of each member (by decimal ID) disconnected since this member
    /// last became leader ([`PeerWatch::not_leading`] empties it): no count of disconnection
    /// starts before the raft regained this leader.
    disconnected_since: HashMap<String, Instant>,
}

impl PeerWatch {
    /// Notes that this member does not lead: the watch starts afresh when it leads again.
    pub fn not_leading(&mut self) {
        self.disconnected_since.clear();
    }

    /// Takes in one observation while this member (`self_id`) leads and returns `members`
    /// with the leader's evidence: `connected`, and while not connected how long it has not
    /// been, counted from the first observation of it disconnected since leading. `peers`
    /// is [`active_peers`]' answer; `None` when `/metrics` could not be read, in which case
    /// nothing is claimed about anyone.
    pub fn observe(
        &mut self,
        self_id: &str,
        members: &[RaftMember],
        peers: Option<&BTreeMap<String, bool>>,
        now: Instant,
    ) -> Vec<RaftMember> {
        let Some(peers) = peers else {
            return members.to_vec();
        };
        self.disconnected_since
            .retain(|id, _| members.iter().any(|m| m.id == *id));
        members
            .iter()
            .map(|member| {
                let mut member = member.clone();
                if member.id == self_id {
                    member.connected = Some(true);
                    return member;
                }
                let connected = member_id_hex(&member.id)
                    .and_then(|hex| peers.get(&hex).copied())
                    .unwrap_or(false);
                member.connected = Some(connected);
                if connected {
                    self.disconnected_since.remove(&member.id);
                } else {
                    let since = *self
                        .disconnected_since
                        .entry(member.id.clone())
                        .or_insert(now);
                    member.disconnected_for_ms = Some(millis(now.duration_since(since)));
                }
                member
            })
            .collect()
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::etcd::api::MemberListResponse;

    /// Captured from etcd 3.4.23 on this machine (tests/fixtures/etcd/README.md): leader
    /// `a` (2b6d7f19fe480be8) of `a`, `b` (db4470c9ef363739), `c` (9175fe412f827d6f).
    const ALL_CONNECTED: &str =
        include_str!("../../../tests/fixtures/etcd/metrics-leader-all-connected.txt");
    /// The same leader 4 s after `c` was killed with SIGKILL.
    const ONE_PEER_KILLED: &str =
        include_str!("../../../tests/fixtures/etcd/metrics-leader-one-peer-killed.txt");
    /// `c` running again and a learner (6ab2ca3c20f10921) added but never started.
    const UNSTARTED_LEARNER: &str =
        include_str!("../../../tests/fixtures/etcd/metrics-leader-unstarted-learner.txt");
    const MEMBER_LIST: &str =
        include_str!("../../../tests/fixtures/etcd/member-list-unstarted-learner.json");
    const LEADER_ID: &str = "3129297065709407208";
    const LEADER_HEX: &str = "2b6d7f19fe480be8";

    fn fixture_members() -> Vec<RaftMember> {
        let list: MemberListResponse = serde_json::from_str(MEMBER_LIST).expect("member list");
        raft_members(&list.members)
    }

    #[test]
    fn member_ids_are_decimal_in_the_api_and_hexadecimal_in_metrics() {
        for (decimal, hex) in [
            ("3129297065709407208", Some("2b6d7f19fe480be8")),
            ("10481563263698107759", Some("9175fe412f827d6f")),
            ("15799877405326587705", Some("db4470c9ef363739")),
            ("7688429873474373921", Some("6ab2ca3c20f10921")),
            // No leading zeros, as Go's FormatUint writes it.
            ("255", Some("ff")),
            ("not a number", None),
        ] {
            assert_eq!(member_id_hex(decimal).as_deref(), hex, "{decimal}");
        }
    }

    #[test]
    fn the_active_peers_gauge_is_read_from_captured_metrics() {
        let connected = |pairs: &[(&str, bool)]| -> BTreeMap<String, bool> {
            pairs.iter().map(|(id, c)| (id.to_string(), *c)).collect()
        };
        // (captured metrics, what the leader's connections are)
        for (metrics, expected) in [
            (
                ALL_CONNECTED,
                connected(&[("9175fe412f827d6f", true), ("db4470c9ef363739", true)]),
            ),
            (
                ONE_PEER_KILLED,
                connected(&[("9175fe412f827d6f", false), ("db4470c9ef363739", true)]),
            ),
            // The learner that never started has no line at all.
            (
                UNSTARTED_LEARNER,
                connected(&[("9175fe412f827d6f", true), ("db4470c9ef363739", true)]),
            ),
            ("", connected(&[])),
        ] {
            assert_eq!(active_peers(metrics, LEADER_HEX), expected);
        }
        // Another member's lines, and lines that only look alike, are not this member's.
        let text = "etcd_network_active_peers{Local=\"aa\",Remote=\"bb\"} 1\n\
                    etcd_network_active_peers_total{Local=\"cc\",Remote=\"bb\"} 1\n\
                    etcd_network_active_peers{Local=\"cc\",Remote=\"dd\"} nonsense\n\
                    # etcd_network_active_peers{Local=\"cc\",Remote=\"ee\"} 1\n\
                    etcd_network_active_peers{Remote=\"ff\",Local=\"cc\"} 1";
        assert_eq!(active_peers(text, "cc"), connected(&[("ff", true)]));
    }

    /// A member's name, `connected`, `disconnected_for_ms`.
    type Evidence = (&'static str, Option<bool>, Option<u64>);

    #[test]
    fn the_leader_counts_disconnection_from_its_first_sight_of_it_since_it_leads() {
        let members = fixture_members();
        let t0 = Instant::now();
        let mut watch = PeerWatch::default();
        let evidence = |watch: &mut PeerWatch, metrics: &str, at: u64| {
            let peers = active_peers(metrics, LEADER_HEX);
            watch
                .observe(
                    LEADER_ID,
                    &members,
                    Some(&peers),
                    t0 + Duration::from_secs(at),
                )
                .into_iter()
                .map(|m| (m.name, m.connected, m.disconnected_for_ms))
                .collect::<Vec<_>>()
        };
        // (seconds since t0, metrics, (name, connected, disconnected for ms) of each member)
        let table: [(u64, &str, [Evidence; 4]); 4] = [
            (
                0,
                UNSTARTED_LEARNER,
                [
                    ("a", Some(true), None),
                    ("", Some(false), Some(0)),
                    ("c", Some(true), None),
                    ("b", Some(true), None),
                ],
            ),
            (
                5,
                ONE_PEER_KILLED,
                [
                    ("a", Some(true), None),
                    ("", Some(false), Some(5000)),
                    ("c", Some(false), Some(0)),
                    ("b", Some(true), None),
                ],
            ),
            (
                9,
                ONE_PEER_KILLED,
                [
                    ("a", Some(true), None),
                    ("", Some(false), Some(9000)),
                    ("c", Some(false), Some(4000)),
                    ("b", Some(true), None),
                ],
            ),
            // `c` is back: its count ends; gone again, it starts from zero.
            (
                10,
                ALL_CONNECTED,
                [
                    ("a", Some(true), None),
                    ("", Some(false), Some(10000)),
                    ("c", Some(true), None),
                    ("b", Some(true), None),
                ],
            ),
        ];
        for (at, metrics, expected) in table {
            let expected: Vec<_> = expected
                .iter()
                .map(|(n, c, d)| (n.to_string(), *c, *d))
                .collect();
            assert_eq!(evidence(&mut watch, metrics, at), expected, "at {at} s");
        }
        // Leadership lost and regained: every count starts again.
        watch.not_leading();
        let again = evidence(&mut watch, ONE_PEER_KILLED, 60);
        assert_eq!(again[1].2, Some(0));
        assert_eq!(again[2].2, Some(0));
        // Unreadable metrics: no evidence either way.
        let unknown = watch.observe(LEADER_ID, &members, None, t0 + Duration::from_secs(61));
        assert!(unknown.iter().all(|m| m.connected.is_none()));
    }

    #[test]
    fn a_heartbeat_carries_the_member_list_only_when_the_registry_accepts_it() {
        let members = fixture_members();
        assert_eq!(reportable(&members).map(|m| m.len()), Some(4));
        let too_many: Vec<RaftMember> = (0..=MAX_RAFT_MEMBERS)
            .map(|i| RaftMember {
                id: i.to_string(),
                ..members[0].clone()
            })
            .collect();
        assert_eq!(reportable(&too_many), None);
        let bad_name = RaftMember {
            name: "a\nb".into(),
            ..members[0].clone()
        };
        assert_eq!(reportable(&[bad_name]), None);
    }
}
