//! The leader's view of the raft for heartbeats (`raft_members`), and the dead-server
//! cleanup where Autopilot cannot act, as pure functions of what was read and when.
//!
//! Autopilot (`cleanup_dead_servers = true`, see `autopilot.rs`) removes failed servers
//! (Serf `failed` or `left`) and stale ones (in the raft configuration, unknown to Consul),
//! at most `(voters-1)/2` at a time and never below `min_quorum` (hashicorp/raft-autopilot,
//! `pruneDeadServers`). It cannot act:
//! - when dead-server cleanup is off in the raft's stored configuration (an operator's
//!   `consul operator autopilot set-config`, or a raft bootstrapped with it off) and the
//!   sidecar cannot change it (no `operator:write`);
//! - on Consul versions whose Autopilot does not know stale servers, where Consul's
//!   documentation of `DELETE /v1/operator/raft/peer` names the case: "a peer may be left
//!   behind in the Raft configuration even though the server is no longer present and known
//!   to the cluster";
//! - on a failed server Serf keeps as `failed` for `reconnect_timeout` (72 h by default)
//!   while Autopilot declines the removal.
//!
//! So the leader's sidecar acts as a backstop, after the same threshold and with the same
//! evidence and quorum rules as etcd's cleanup: by then Autopilot has had minutes to act
//! and has not. As Consul's documentation advises (`consul operator raft remove-peer`: "If
//! the server still shows in the output of the consul members command, it is preferable to
//! clean up by simply running consul force-leave"), a server Serf lists as `failed` gets
//! `PUT /v1/agent/force-leave/<node>?prune` (the leader then removes it from the raft);
//! any other dead server, one Serf has as `left` or does not know at all, gets
//! `DELETE /v1/operator/raft/peer?id=<raft id>`.
//!
//! Over 600 lines, half of them the table of cases: the pure decision and the cases that hold
//! a removal back are read side by side, as in etcd's `cleanup.rs`.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use rollcall_protocol::{Absence, RaftMember};

use super::api::{AutopilotHealth, RaftServer};

/// How many raft IDs' node names the watch remembers.
const MAX_REMEMBERED_NAMES: usize = 256;

/// The node name the raft configuration gives a stale server Consul no longer knows.
pub const UNKNOWN_NODE: &str = "(unknown)";

/// What the sidecar remembers between reads: when it saw itself become leader, since when
/// each server has been disconnected from it, the node name of each raft ID it has seen,
/// and its last removal.
#[derive(Debug, Default)]
pub struct Watch {
    pub leader_since: Option<Instant>,
    pub disconnected_since: HashMap<String, Instant>,
    pub names: HashMap<String, String>,
    pub last_removal: Option<Instant>,
}

/// One raft server as the leader sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerView {
    pub id: String,
    /// The node name, or the one remembered for this raft ID; empty when never known.
    pub name: String,
    pub address: String,
    pub voter: bool,
    pub leader: bool,
    /// Serf's status from Autopilot's health; empty when Autopilot does not list the server.
    pub serf_status: String,
    /// The leader's evidence: healthy by Autopilot, or alive in Serf. `None` when not known
    /// (this sidecar is not the leader's, or Autopilot's health cannot be read).
    pub connected: Option<bool>,
    /// How long it has been disconnected, counted at most from when this sidecar saw itself
    /// become leader.
    pub disconnected_for: Option<Duration>,
}

/// Updates the watch with one read of the raft configuration and Autopilot's health, and
/// gives the leader's view of each server. `is_leader`: this server leads the raft.
pub fn observe(
    watch: &mut Watch,
    servers: &[RaftServer],
    health: Option<&AutopilotHealth>,
    is_leader: bool,
    now: Instant,
) -> Vec<ServerView> {
    for server in servers {
        if !server.node.is_empty() && server.node != UNKNOWN_NODE && !server.id.is_empty() {
            if watch.names.len() >= MAX_REMEMBERED_NAMES && !watch.names.contains_key(&server.id) {
                watch.names.clear();
            }
            watch.names.insert(server.id.clone(), server.node.clone());
        }
    }
    if !is_leader {
        watch.leader_since = None;
        watch.disconnected_since.clear();
    } else {
        watch.leader_since.get_or_insert(now);
    }
    watch
        .disconnected_since
        .retain(|id, _| servers.iter().any(|s| &s.id == id));
    servers
        .iter()
        .map(|server| {
            let entry = health.and_then(|h| h.entry_for(server));
            let connected = match (is_leader, health) {
                (false, _) | (true, None) => None,
                (true, Some(_)) => Some(
                    server.leader
                        || entry.is_some_and(|e| e.leader || e.healthy || e.serf_status == "alive"),
                ),
            };
            let disconnected_for = match connected {
                Some(false) => {
                    let since = *watch
                        .disconnected_since
                        .entry(server.id.clone())
                        .or_insert(now);
                    Some(now.saturating_duration_since(since))
                }
                _ => {
                    watch.disconnected_since.remove(&server.id);
                    None
                }
            };
            let name = if server.node.is_empty() || server.node == UNKNOWN_NODE {
                watch.names.get(&server.id).cloned().unwrap_or_default()
            } else {
                server.node.clone()
            };
            ServerView {
                id: server.id.clone(),
                name,
                address: server.address.clone(),
                voter: server.voter,
                leader: server.leader,
                serf_status: entry.map(|e| e.serf_status.clone()).unwrap_or_default(),
                connected,
                disconnected_for,
            }
        })
        .collect()
}

/// The views as a heartbeat's `raft_members`: the raft ID, the node name, the server RPC
/// address as its one peer URL, a non-voter as a learner (it carries no quorum weight), and
/// the leader's evidence.
pub fn raft_members(views: &[ServerView]) -> Vec<RaftMember> {
    views
        .iter()
        .map(|v| RaftMember {
            id: v.id.clone(),
            name: v.name.clone(),
            peer_urls: if v.address.is_empty() {
                vec![]
            } else {
                vec![v.address.clone()]
            },
            learner: !v.voter,
            connected: v.connected,
            disconnected_for_ms: v
                .disconnected_for
                .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
        })
        .collect()
}

/// Everything one cleanup decision depends on.
#[derive(Debug, Clone)]
pub struct CleanupInputs<'a> {
    pub is_leader: bool,
    pub servers: &'a [ServerView],
    /// The registry's absence evidence from the last heartbeat answer.
    pub absent: &'a [Absence],
    /// `--dead-member-after`.
    pub threshold: Duration,
    /// The raft's expect: the registry's last answer, else the setting.
    pub expect: u32,
    /// Time since this sidecar's last removal.
    pub since_last_removal: Option<Duration>,
}

/// How a dead server is removed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RemovalCall {
    /// `PUT /v1/agent/force-leave/<node>?prune`: Serf still lists the server as failed.
    ForceLeavePrune { node: String },
    /// `DELETE /v1/operator/raft/peer?id=<id>`: Serf has it as left or does not know it.
    RemovePeer { id: String },
}

/// A removal with its evidence, for the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Removal {
    pub id: String,
    pub name: String,
    pub voter: bool,
    pub call: RemovalCall,
    pub disconnected_for: Duration,
    /// The registry's figure; `None` for a nameless non-voter (peer evidence only).
    pub absent_for: Option<Duration>,
    pub voters_after: usize,
    pub connected_voters_after: usize,
    pub quorum_floor: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CleanupDecision {
    /// Every server is connected (or nothing is known).
    Nothing,
    /// A server is disconnected, but not every rule holds: why, for the log.
    Hold(String),
    Remove(Removal),
}

/// Decides at most one removal. A server is removed only when all hold: this sidecar is the
/// leader's; it is not the leader; the leader has seen it disconnected (neither healthy by
/// Autopilot nor alive in Serf) for the threshold; the registry has not seen it for the
/// threshold (a server without a known name may go on peer evidence alone only if it is a
/// non-voter); after the removal the connected voters are a majority of the remaining voters
/// and at least floor(expect/2)+1; this sidecar removed nothing within the threshold.
/// Non-voters go first (as Autopilot does), then the longest disconnected.
pub fn decide(inputs: &CleanupInputs<'_>) -> CleanupDecision {
    if !inputs.is_leader {
        return CleanupDecision::Nothing;
    }
    let mut candidates: Vec<&ServerView> = inputs
        .servers
        .iter()
        .filter(|s| !s.leader && s.connected == Some(false))
        .collect();
    if candidates.is_empty() {
        return CleanupDecision::Nothing;
    }
    if let Some(since) = inputs.since_last_removal {
        if since < inputs.threshold {
            return CleanupDecision::Hold(format!(
                "this sidecar removed a server {since:?} ago; one removal per {:?}",
                inputs.threshold
            ));
        }
    }
    candidates.sort_by_key(|s| (s.voter, std::cmp::Reverse(s.disconnected_for)));
    let voters = inputs.servers.iter().filter(|s| s.voter).count();
    let connected_voters = inputs
        .servers
        .iter()
        .filter(|s| s.voter && s.connected == Some(true))
        .count();
    let quorum_floor = inputs.expect as usize / 2 + 1;
    let mut first_reason = None;
    for candidate in candidates {
        let label = if candidate.name.is_empty() {
            format!("raft server {}", candidate.id)
        } else {
            format!("{} ({})", candidate.name, candidate.id)
        };
        let disconnected_for = candidate.disconnected_for.unwrap_or_default();
        let reason = if disconnected_for < inputs.threshold {
            Some(format!(
                "{label} has been disconnected from the leader for {disconnected_for:?}, less than {:?}",
                inputs.threshold
            ))
        } else {
            None
        };
        let absent_for = inputs
            .absent
            .iter()
            .find(|a| !candidate.name.is_empty() && a.node == candidate.name)
            .map(|a| Duration::from_millis(a.absent_for_ms));
        let reason = reason.or_else(|| match (candidate.name.is_empty(), absent_for) {
            (true, _) if candidate.voter => Some(format!(
                "{label} is a voter whose node name is unknown: the registry's evidence cannot be had (remove it by hand: consul operator raft remove-peer -id={})",
                candidate.id
            )),
            (true, _) => None,
            (false, None) => Some(format!("{label} is not absent from the registry")),
            (false, Some(absent)) if absent < inputs.threshold => Some(format!(
                "{label} has been absent from the registry for {absent:?}, less than {:?}",
                inputs.threshold
            )),
            (false, Some(_)) => None,
        });
        let voters_after = voters - usize::from(candidate.voter);
        let reason = reason.or_else(|| {
            (connected_voters * 2 <= voters_after || connected_voters < quorum_floor).then(|| {
                format!(
                    "removing {label} would leave {connected_voters} connected of {voters_after} voters, not a majority of at least {quorum_floor} (floor(expect/2)+1, expect {})",
                    inputs.expect
                )
            })
        });
        if let Some(reason) = reason {
            first_reason.get_or_insert(reason);
            continue;
        }
        let call = if candidate.serf_status == "failed" && !candidate.name.is_empty() {
            RemovalCall::ForceLeavePrune {
                node: candidate.name.clone(),
            }
        } else {
            RemovalCall::RemovePeer {
                id: candidate.id.clone(),
            }
        };
        return CleanupDecision::Remove(Removal {
            id: candidate.id.clone(),
            name: candidate.name.clone(),
            voter: candidate.voter,
            call,
            disconnected_for,
            absent_for: absent_for.filter(|_| !candidate.name.is_empty()),
            voters_after,
            connected_voters_after: connected_voters,
            quorum_floor,
        });
    }
    CleanupDecision::Hold(first_reason.unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::consul::api::ServerHealth;

    const T: Duration = Duration::from_secs(300);

    fn raft(id: &str, node: &str, voter: bool, leader: bool) -> RaftServer {
        RaftServer {
            id: id.into(),
            node: node.into(),
            address: format!("10.0.0.{}:8300", &id[2..]),
            leader,
            voter,
        }
    }

    fn health(id: &str, name: &str, serf: &str, healthy: bool) -> ServerHealth {
        ServerHealth {
            id: id.into(),
            name: name.into(),
            address: format!("10.0.0.{}:8300", &id[2..]),
            serf_status: serf.into(),
            leader: false,
            voter: true,
            healthy,
            last_contact: None,
        }
    }

    fn view(
        id: &str,
        name: &str,
        voter: bool,
        serf: &str,
        connected: bool,
        gone: u64,
    ) -> ServerView {
        ServerView {
            id: id.into(),
            name: name.into(),
            address: String::new(),
            voter,
            leader: false,
            serf_status: serf.into(),
            connected: Some(connected),
            disconnected_for: (!connected).then(|| Duration::from_secs(gone)),
        }
    }

    fn leader() -> ServerView {
        ServerView {
            leader: true,
            ..view("id1", "c1", true, "alive", true, 0)
        }
    }

    fn absent(node: &str, secs: u64) -> Absence {
        Absence {
            node: node.into(),
            absent_for_ms: secs * 1000,
        }
    }

    #[test]
    fn the_watch_counts_from_leadership_and_remembers_names() {
        let start = Instant::now();
        let mut watch = Watch::default();
        let servers = [
            raft("id1", "c1", true, true),
            raft("id2", "c2", true, false),
            raft("id3", "c3", true, false),
        ];
        let autopilot = |c3: (&str, bool)| AutopilotHealth {
            healthy: c3.1,
            failure_tolerance: 0,
            servers: vec![
                ServerHealth {
                    leader: true,
                    ..health("id1", "c1", "alive", true)
                },
                health("id2", "c2", "alive", true),
                health("id3", "c3", c3.0, c3.1),
            ],
        };
        // A follower's view carries no evidence, and remembers names.
        let views = observe(&mut watch, &servers, None, false, start);
        assert!(views.iter().all(|v| v.connected.is_none()));
        assert_eq!(watch.names.get("id3").map(String::as_str), Some("c3"));

        // As leader: c3 failed in Serf and unhealthy: disconnected, counted from now.
        let failed = autopilot(("failed", false));
        let views = observe(&mut watch, &servers, Some(&failed), true, start);
        assert_eq!(views[0].connected, Some(true));
        assert_eq!(views[1].connected, Some(true));
        assert_eq!(views[2].connected, Some(false));
        assert_eq!(views[2].disconnected_for, Some(Duration::ZERO));
        let later = start + Duration::from_secs(42);
        let views = observe(&mut watch, &servers, Some(&failed), true, later);
        assert_eq!(views[2].disconnected_for, Some(Duration::from_secs(42)));
        assert_eq!(views[2].serf_status, "failed");

        // Alive in Serf but unhealthy (lagging): connected, not a dead server.
        let lagging = autopilot(("alive", false));
        let views = observe(&mut watch, &servers, Some(&lagging), true, later);
        assert_eq!(views[2].connected, Some(true));
        assert_eq!(views[2].disconnected_for, None);

        // Losing leadership forgets the watch; a stale entry keeps its remembered name.
        observe(&mut watch, &servers, None, false, later);
        assert!(watch.leader_since.is_none() && watch.disconnected_since.is_empty());
        let stale = [
            raft("id1", "c1", true, true),
            raft("id3", UNKNOWN_NODE, true, false),
        ];
        let only_leader = AutopilotHealth {
            healthy: false,
            failure_tolerance: 0,
            servers: vec![ServerHealth {
                leader: true,
                ..health("id1", "c1", "alive", true)
            }],
        };
        let views = observe(&mut watch, &stale, Some(&only_leader), true, later);
        assert_eq!(views[1].name, "c3");
        assert_eq!(views[1].connected, Some(false));
        assert_eq!(views[1].serf_status, "");

        let members = raft_members(&views);
        assert_eq!(members[1].id, "id3");
        assert_eq!(members[1].name, "c3");
        assert_eq!(members[1].peer_urls, vec!["10.0.0.3:8300".to_string()]);
        assert!(!members[1].learner);
        assert_eq!(members[1].connected, Some(false));
        assert_eq!(members[1].disconnected_for_ms, Some(0));
        assert_eq!(members[0].connected, Some(true));
        assert_eq!(members[0].disconnected_for_ms, None);
    }

    #[test]
    fn decide_table() {
        struct Row {
            what: &'static str,
            servers: Vec<ServerView>,
            absent: Vec<Absence>,
            expect: u32,
            since_last_removal: Option<u64>,
            is_leader: bool,
            expected: Result<RemovalCall, Option<&'static str>>,
        }
        let row = |what, servers, absent, expected| Row {
            what,
            servers,
            absent,
            expect: 3,
            since_last_removal: None,
            is_leader: true,
            expected,
        };
        let dead = |serf: &str, gone| view("id3", "c3", true, serf, false, gone);
        let live2 = view("id2", "c2", true, "alive", true, 0);
        let rows = vec![
            row(
                "a failed voter, gone past both thresholds: force-leave with prune",
                vec![leader(), live2.clone(), dead("failed", 301)],
                vec![absent("c3", 310)],
                Ok(RemovalCall::ForceLeavePrune { node: "c3".into() }),
            ),
            row(
                "a voter Serf has as left but still in the raft: raft peer removal",
                vec![leader(), live2.clone(), dead("left", 301)],
                vec![absent("c3", 310)],
                Ok(RemovalCall::RemovePeer { id: "id3".into() }),
            ),
            row(
                "a stale voter Serf does not know (name remembered): raft peer removal",
                vec![leader(), live2.clone(), dead("", 400)],
                vec![absent("c3", 400)],
                Ok(RemovalCall::RemovePeer { id: "id3".into() }),
            ),
            row(
                "disconnected for less than the threshold",
                vec![leader(), live2.clone(), dead("failed", 299)],
                vec![absent("c3", 310)],
                Err(Some("less than")),
            ),
            row(
                "the registry saw it within the threshold (a restart)",
                vec![leader(), live2.clone(), dead("failed", 400)],
                vec![absent("c3", 120)],
                Err(Some("absent from the registry for")),
            ),
            row(
                "the registry lists it live",
                vec![leader(), live2.clone(), dead("failed", 400)],
                vec![],
                Err(Some("not absent from the registry")),
            ),
            row(
                "a nameless voter: no registry evidence can be had",
                vec![
                    leader(),
                    live2.clone(),
                    view("id3", "", true, "", false, 900),
                ],
                vec![],
                Err(Some("remove-peer -id=id3")),
            ),
            row(
                "a nameless non-voter goes on peer evidence alone",
                vec![
                    leader(),
                    live2.clone(),
                    view("id3", "c3", true, "alive", true, 0),
                    view("id4", "", false, "", false, 301),
                ],
                vec![],
                Ok(RemovalCall::RemovePeer { id: "id4".into() }),
            ),
            row(
                "two of three gone: no connected majority, nothing removed",
                vec![
                    leader(),
                    view("id2", "c2", true, "failed", false, 900),
                    dead("failed", 900),
                ],
                vec![absent("c2", 900), absent("c3", 900)],
                Err(Some("not a majority")),
            ),
            row(
                "the leader is never removed, and connected servers are not candidates",
                vec![leader(), live2.clone()],
                vec![absent("c1", 900), absent("c2", 900)],
                Err(None),
            ),
            row(
                "non-voters go first, then the longest gone",
                vec![
                    leader(),
                    live2.clone(),
                    view("id3", "c3", true, "alive", true, 0),
                    view("id4", "c4", true, "failed", false, 900),
                    view("id5", "c5", false, "failed", false, 301),
                ],
                vec![absent("c4", 900), absent("c5", 900)],
                Ok(RemovalCall::ForceLeavePrune { node: "c5".into() }),
            ),
        ];
        let mut rows = rows;
        rows.push(Row {
            expect: 5,
            ..row(
                "expect 5: three connected voters of four after is a majority and the floor",
                vec![
                    leader(),
                    live2.clone(),
                    view("id3", "c3", true, "alive", true, 0),
                    view("id4", "c4", true, "failed", false, 900),
                    view("id5", "c5", true, "failed", false, 600),
                ],
                vec![absent("c4", 900), absent("c5", 900)],
                Ok(RemovalCall::ForceLeavePrune { node: "c4".into() }),
            )
        });
        rows.push(Row {
            expect: 5,
            ..row(
                "expect 5: two connected voters are below the floor of three",
                vec![leader(), live2.clone(), dead("failed", 900)],
                vec![absent("c3", 900)],
                Err(Some("at least 3")),
            )
        });
        rows.push(Row {
            since_last_removal: Some(100),
            ..row(
                "one removal per threshold",
                vec![leader(), live2.clone(), dead("failed", 900)],
                vec![absent("c3", 900)],
                Err(Some("one removal per")),
            )
        });
        rows.push(Row {
            since_last_removal: Some(300),
            ..row(
                "a removal a threshold ago does not hold the next",
                vec![leader(), live2.clone(), dead("failed", 900)],
                vec![absent("c3", 900)],
                Ok(RemovalCall::ForceLeavePrune { node: "c3".into() }),
            )
        });
        rows.push(Row {
            is_leader: false,
            ..row(
                "only the leader's sidecar removes",
                vec![leader(), live2.clone(), dead("failed", 900)],
                vec![absent("c3", 900)],
                Err(None),
            )
        });
        for row in rows {
            let decision = decide(&CleanupInputs {
                is_leader: row.is_leader,
                servers: &row.servers,
                absent: &row.absent,
                threshold: T,
                expect: row.expect,
                since_last_removal: row.since_last_removal.map(Duration::from_secs),
            });
            match (&row.expected, &decision) {
                (Ok(call), CleanupDecision::Remove(removal)) => {
                    assert_eq!(&removal.call, call, "{}", row.what)
                }
                (Err(None), CleanupDecision::Nothing) => {}
                (Err(Some(words)), CleanupDecision::Hold(reason)) => {
                    assert!(reason.contains(words), "{}: {reason}", row.what)
                }
                _ => panic!("{}: {decision:?}", row.what),
            }
        }
    }

    #[test]
    fn a_removal_carries_its_evidence() {
        let servers = [
            leader(),
            view("id2", "c2", true, "alive", true, 0),
            view("id3", "c3", true, "failed", false, 301),
        ];
        let absent = [absent("c3", 310)];
        let CleanupDecision::Remove(removal) = decide(&CleanupInputs {
            is_leader: true,
            servers: &servers,
            absent: &absent,
            threshold: T,
            expect: 3,
            since_last_removal: None,
        }) else {
            panic!("a removal");
        };
        assert_eq!(removal.disconnected_for, Duration::from_secs(301));
        assert_eq!(removal.absent_for, Some(Duration::from_secs(310)));
        assert_eq!(
            (
                removal.voters_after,
                removal.connected_voters_after,
                removal.quorum_floor
            ),
            (2, 2, 2)
        );
    }
}
