//! Table tests of [`decide`]: every rule, every refusal, and the order in which they apply.
//! No sockets, no sleeps: the inputs are the whole story.
//!
//! Long on purpose: one table case per situation, each a few lines, read as a whole.

use std::time::Duration;

use rollcall_protocol::GrantedRole::{self, Agent, Bootstrap, Server};

use super::*;

const S: Duration = Duration::from_secs(1);

/// A claim after the startup grace, in a cluster where nothing is live and nothing was ever seen.
fn base() -> ClaimInputs<'static> {
    ClaimInputs {
        cluster: "c1",
        node: "n1",
        expect: 3,
        agent_only: false,
        own_claim: None,
        others: Others::default(),
        uptime: 60 * S,
        startup_grace: 10 * S,
        last_seen_ago: None,
        quiet_period: 15 * S,
        interval: 5 * S,
        last_generation: None,
        own_address: None,
        address: "n1:8300",
        own_expires_in: 10 * S,
        other_expects: &[],
        raft: None,
        grant: None,
        rebootstrap_after: None,
        started_as: None,
        reported_raft: None,
        cluster_raft: None,
        two_rafts: None,
        no_live_server_for: None,
        raft_lost_after: 300 * S,
        live_names: &[],
        servers_returned_ago: None,
        ttl: 15 * S,
    }
}

/// The known raft, `back` of whose servers heartbeated again `ago` after none was live.
fn returning(back: usize, ago: Duration) -> ClaimInputs<'static> {
    ClaimInputs {
        raft: Some(&KNOWN),
        grant: Some(GRANT),
        last_generation: Some(1),
        last_seen_ago: Some(ago),
        others: others(back, back, back),
        servers_returned_ago: Some(ago),
        ..base()
    }
}

static OURS: std::sync::LazyLock<RaftIdentity> = std::sync::LazyLock::new(|| RaftIdentity {
    generation: 1,
    nonce: "0123456789abcdef".into(),
});
static THEIRS: std::sync::LazyLock<RaftIdentity> = std::sync::LazyLock::new(|| RaftIdentity {
    generation: 1,
    nonce: "fedcba9876543210".into(),
});

/// A raft of generation 1 and size 3, known since the grant to n0.
static KNOWN: KnownRaft = KnownRaft {
    generation: 1,
    expect: Some(3),
    known_at_unix_ms: 1_700_000_000_000,
};

const GRANT: GrantFacts<'static> = GrantFacts {
    node: "n0",
    generation: 1,
    granted_at_unix_ms: 1_700_000_000_000,
};

fn others(any: usize, members: usize, servers: usize) -> Others {
    Others {
        any,
        members,
        servers,
        disconnected: 0,
        unlisted_voters: 0,
    }
}

/// A known raft whose servers were all gone for `gone`, with `live` other entries (agents).
fn lost(gone: Duration, live: usize) -> ClaimInputs<'static> {
    ClaimInputs {
        raft: Some(&KNOWN),
        grant: Some(GRANT),
        last_generation: Some(1),
        last_seen_ago: Some(gone),
        others: others(live, live, 0),
        no_live_server_for: Some(gone),
        ..base()
    }
}

/// What a case expects: the rule that decides and the role it grants (`None`: deferred).
struct Case {
    name: &'static str,
    inputs: ClaimInputs<'static>,
    rule: Rule,
    role: Option<GrantedRole>,
}

fn cases() -> Vec<Case> {
    let b = base;
    vec![
        Case {
            name: "empty cluster, first raft",
            inputs: b(),
            rule: Rule::Bootstrap,
            role: Some(Bootstrap),
        },
        Case {
            name: "bootstrap holder claims again while alone",
            inputs: ClaimInputs {
                own_claim: Some(Bootstrap),
                ..b()
            },
            rule: Rule::SameAnswer,
            role: Some(Bootstrap),
        },
        Case {
            name: "bootstrap holder claims again once others heartbeat",
            inputs: ClaimInputs {
                own_claim: Some(Bootstrap),
                others: others(2, 2, 2),
                ..b()
            },
            rule: Rule::HolderJoins,
            role: Some(Server),
        },
        Case {
            name: "bootstrap holder with others that only claim (not heartbeating) keeps its grant",
            inputs: ClaimInputs {
                own_claim: Some(Bootstrap),
                others: others(2, 0, 2),
                ..b()
            },
            rule: Rule::SameAnswer,
            role: Some(Bootstrap),
        },
        Case {
            name: "a server claim is answered the same, even inside the startup grace",
            inputs: ClaimInputs {
                own_claim: Some(Server),
                uptime: S,
                others: others(3, 3, 3),
                ..b()
            },
            rule: Rule::SameAnswer,
            role: Some(Server),
        },
        Case {
            name: "an agent claim is answered the same",
            inputs: ClaimInputs {
                own_claim: Some(Agent),
                ..b()
            },
            rule: Rule::SameAnswer,
            role: Some(Agent),
        },
        Case {
            name: "no claim inside the startup grace",
            inputs: ClaimInputs { uptime: S, ..b() },
            rule: Rule::StartupGrace,
            role: None,
        },
        Case {
            name: "agent-only inside the startup grace still waits",
            inputs: ClaimInputs {
                uptime: S,
                agent_only: true,
                ..b()
            },
            rule: Rule::StartupGrace,
            role: None,
        },
        Case {
            name: "agent-only in an empty cluster",
            inputs: ClaimInputs {
                agent_only: true,
                ..b()
            },
            rule: Rule::AgentOnly,
            role: Some(Agent),
        },
        Case {
            name: "agent-only with free server slots",
            inputs: ClaimInputs {
                agent_only: true,
                others: others(1, 1, 1),
                ..b()
            },
            rule: Rule::AgentOnly,
            role: Some(Agent),
        },
        Case {
            name: "servers fill expect",
            inputs: ClaimInputs {
                others: others(3, 3, 3),
                ..b()
            },
            rule: Rule::SlotsFull,
            role: Some(Agent),
        },
        Case {
            name: "more servers than expect",
            inputs: ClaimInputs {
                expect: 1,
                others: others(2, 2, 2),
                ..b()
            },
            rule: Rule::SlotsFull,
            role: Some(Agent),
        },
        Case {
            name: "one live server of three",
            inputs: ClaimInputs {
                others: others(1, 0, 1),
                ..b()
            },
            rule: Rule::TakeSlot,
            role: Some(Server),
        },
        Case {
            name: "two live servers of three, agents beside them",
            inputs: ClaimInputs {
                others: others(5, 5, 2),
                ..b()
            },
            rule: Rule::TakeSlot,
            role: Some(Server),
        },
        Case {
            name: "two live servers, the third in the raft (the leader says) but not heartbeating",
            inputs: ClaimInputs {
                raft: Some(&KNOWN),
                others: Others {
                    unlisted_voters: 1,
                    ..others(2, 2, 2)
                },
                ..b()
            },
            rule: Rule::SlotsFull,
            role: Some(Agent),
        },
        Case {
            name: "a returning raft whose leader reports the missing server connected",
            inputs: ClaimInputs {
                others: Others {
                    unlisted_voters: 1,
                    ..others(2, 2, 2)
                },
                ..returning(2, 2 * S)
            },
            rule: Rule::SlotsFull,
            role: Some(Agent),
        },
        Case {
            name: "a paused raft comes back: two of three servers relisted within a TTL",
            inputs: returning(2, 2 * S),
            rule: Rule::RaftReturning,
            role: None,
        },
        Case {
            name: "a paused raft comes back whole: its servers fill expect at once",
            inputs: returning(3, 2 * S),
            rule: Rule::SlotsFull,
            role: Some(Agent),
        },
        Case {
            name: "a returned raft still misses a server one TTL after the first came back",
            inputs: returning(2, 15 * S),
            rule: Rule::TakeSlot,
            role: Some(Server),
        },
        Case {
            name: "a node that held its claim through the return keeps its answer",
            inputs: ClaimInputs {
                own_claim: Some(Server),
                ..returning(2, 2 * S)
            },
            rule: Rule::SameAnswer,
            role: Some(Server),
        },
        Case {
            name: "a restarting member of the returning raft keeps its role",
            inputs: ClaimInputs {
                started_as: Some(Server),
                reported_raft: Some(&OURS),
                ..returning(2, 2 * S)
            },
            rule: Rule::AlreadyStarted,
            role: Some(Server),
        },
        Case {
            name: "only agents live: a raft may run",
            inputs: ClaimInputs {
                others: others(2, 2, 0),
                ..b()
            },
            rule: Rule::NoLiveServer,
            role: None,
        },
        Case {
            name: "only an agent claim live",
            inputs: ClaimInputs {
                others: others(1, 0, 0),
                ..b()
            },
            rule: Rule::NoLiveServer,
            role: None,
        },
        Case {
            name: "a grant whose raft never became known, last seen within the quiet period",
            inputs: ClaimInputs {
                last_seen_ago: Some(3 * S),
                last_generation: Some(1),
                ..b()
            },
            rule: Rule::QuietPeriod,
            role: None,
        },
        Case {
            name: "a grant whose raft never became known, quiet period over: granted again",
            inputs: ClaimInputs {
                last_seen_ago: Some(15 * S),
                last_generation: Some(1),
                ..b()
            },
            rule: Rule::Bootstrap,
            role: Some(Bootstrap),
        },
        Case {
            name: "live servers decide before the quiet period matters",
            inputs: ClaimInputs {
                last_seen_ago: Some(S),
                others: others(1, 1, 1),
                ..b()
            },
            rule: Rule::TakeSlot,
            role: Some(Server),
        },
        Case {
            name: "the name is live at another address",
            inputs: ClaimInputs {
                own_address: Some("n1:9999"),
                own_claim: Some(Server),
                ..b()
            },
            rule: Rule::AddressConflict,
            role: None,
        },
        Case {
            name: "the name is live at the same address",
            inputs: ClaimInputs {
                own_address: Some("n1:8300"),
                own_claim: Some(Server),
                ..b()
            },
            rule: Rule::SameAnswer,
            role: Some(Server),
        },
        Case {
            name: "a live claim asked another expect before the raft is known",
            inputs: ClaimInputs {
                other_expects: &[5],
                others: others(1, 0, 1),
                ..b()
            },
            rule: Rule::ExpectConflict,
            role: None,
        },
        Case {
            name: "claims agree on expect",
            inputs: ClaimInputs {
                other_expects: &[3],
                others: others(1, 0, 1),
                ..b()
            },
            rule: Rule::TakeSlot,
            role: Some(Server),
        },
        Case {
            name: "once the raft is known its size counts, not the claim's",
            inputs: ClaimInputs {
                expect: 7,
                raft: Some(&KNOWN),
                others: others(3, 3, 3),
                ..b()
            },
            rule: Rule::SlotsFull,
            role: Some(Agent),
        },
        Case {
            name: "a known raft with free slots takes a server, whatever the claim's expect",
            inputs: ClaimInputs {
                expect: 1,
                raft: Some(&KNOWN),
                others: others(2, 2, 2),
                ..b()
            },
            rule: Rule::TakeSlot,
            role: Some(Server),
        },
        Case {
            name: "a known raft's size wins over a conflicting claim's expect",
            inputs: ClaimInputs {
                expect: 5,
                raft: Some(&KNOWN),
                other_expects: &[3],
                others: others(1, 1, 1),
                ..b()
            },
            rule: Rule::TakeSlot,
            role: Some(Server),
        },
        Case {
            name: "a known raft gone quiet is never bootstrapped again on the registry's word",
            inputs: ClaimInputs {
                raft: Some(&KNOWN),
                grant: Some(GRANT),
                last_generation: Some(1),
                last_seen_ago: Some(3600 * S),
                ..b()
            },
            rule: Rule::ResetRequired,
            role: None,
        },
        Case {
            name: "a known raft never seen by this registry needs a reset too",
            inputs: ClaimInputs {
                raft: Some(&KNOWN),
                last_generation: Some(1),
                ..b()
            },
            rule: Rule::ResetRequired,
            role: None,
        },
        Case {
            name: "a known raft within --rebootstrap-after",
            inputs: ClaimInputs {
                raft: Some(&KNOWN),
                last_generation: Some(1),
                last_seen_ago: Some(59 * S),
                rebootstrap_after: Some(60 * S),
                ..b()
            },
            rule: Rule::ResetRequired,
            role: None,
        },
        Case {
            name: "two rafts reported the name while the registry relearned it",
            inputs: ClaimInputs {
                two_rafts: Some((&OURS, &THEIRS)),
                cluster_raft: Some(&OURS),
                ..b()
            },
            rule: Rule::TwoRafts,
            role: None,
        },
        Case {
            name: "a claimant reporting another raft",
            inputs: ClaimInputs {
                reported_raft: Some(&THEIRS),
                cluster_raft: Some(&OURS),
                started_as: Some(Server),
                ..b()
            },
            rule: Rule::WrongRaft,
            role: None,
        },
        Case {
            name: "a claimant reporting the cluster's raft keeps its role",
            inputs: ClaimInputs {
                reported_raft: Some(&OURS),
                cluster_raft: Some(&OURS),
                started_as: Some(Server),
                others: others(2, 2, 2),
                ..b()
            },
            rule: Rule::AlreadyStarted,
            role: Some(Server),
        },
        Case {
            name:
                "a registry that lost its data, inside its grace: a started server stays a server",
            inputs: ClaimInputs {
                uptime: S,
                started_as: Some(Server),
                ..b()
            },
            rule: Rule::AlreadyStarted,
            role: Some(Server),
        },
        Case {
            name: "a started bootstrap holder the registry forgot stays a server of its raft",
            inputs: ClaimInputs {
                started_as: Some(Bootstrap),
                ..b()
            },
            rule: Rule::AlreadyStarted,
            role: Some(Server),
        },
        Case {
            name: "a started agent stays an agent",
            inputs: ClaimInputs {
                started_as: Some(Agent),
                ..b()
            },
            rule: Rule::AlreadyStarted,
            role: Some(Agent),
        },
        Case {
            name: "three live servers, one the leader reports disconnected: its slot is free",
            inputs: ClaimInputs {
                raft: Some(&KNOWN),
                others: Others {
                    any: 3,
                    members: 3,
                    servers: 2,
                    disconnected: 1,
                    unlisted_voters: 0,
                },
                ..b()
            },
            rule: Rule::TakeSlot,
            role: Some(Server),
        },
        Case {
            name: "live agents wait on a raft whose servers are gone past --raft-lost-after",
            inputs: lost(300 * S, 2),
            rule: Rule::RaftLost,
            role: None,
        },
        Case {
            name: "live agents, servers gone less than --raft-lost-after: the raft may come back",
            inputs: lost(299 * S, 2),
            rule: Rule::NoLiveServer,
            role: None,
        },
        Case {
            name:
                "nothing live, servers gone past --raft-lost-after: lost, not only reset-required",
            inputs: lost(300 * S, 0),
            rule: Rule::RaftLost,
            role: None,
        },
        Case {
            name: "nothing live, servers gone less than --raft-lost-after",
            inputs: lost(299 * S, 0),
            rule: Rule::ResetRequired,
            role: None,
        },
        Case {
            name: "a lost raft past --rebootstrap-after with nothing live: that rule's new raft",
            inputs: ClaimInputs {
                rebootstrap_after: Some(600 * S),
                ..lost(600 * S, 0)
            },
            rule: Rule::RebootstrapAfter,
            role: Some(Bootstrap),
        },
        Case {
            name: "a lost raft with live agents, even past --rebootstrap-after: still lost",
            inputs: ClaimInputs {
                rebootstrap_after: Some(600 * S),
                ..lost(600 * S, 1)
            },
            rule: Rule::RaftLost,
            role: None,
        },
        Case {
            name: "a member restarting from its data is never refused raft-lost",
            inputs: ClaimInputs {
                started_as: Some(Server),
                ..lost(3600 * S, 2)
            },
            rule: Rule::AlreadyStarted,
            role: Some(Server),
        },
        Case {
            name: "an agent-only node is an agent even of a lost raft",
            inputs: ClaimInputs {
                agent_only: true,
                ..lost(3600 * S, 2)
            },
            rule: Rule::AgentOnly,
            role: Some(Agent),
        },
        Case {
            name: "a known raft gone longer than --rebootstrap-after",
            inputs: ClaimInputs {
                raft: Some(&KNOWN),
                last_generation: Some(1),
                last_seen_ago: Some(60 * S),
                rebootstrap_after: Some(60 * S),
                ..b()
            },
            rule: Rule::RebootstrapAfter,
            role: Some(Bootstrap),
        },
    ]
}

#[test]
fn every_case_is_decided_by_its_rule() {
    for case in cases() {
        let decision = decide(&case.inputs);
        assert_eq!(decision.rule(), case.rule, "{}: {decision:?}", case.name);
        let role = match &decision {
            Decision::Grant { role, .. } => Some(*role),
            Decision::Defer { .. } | Decision::Refuse { .. } => None,
        };
        assert_eq!(role, case.role, "{}: {decision:?}", case.name);
    }
}

#[test]
fn every_rule_has_a_case() {
    let cases = cases();
    for rule in Rule::ALL {
        assert!(
            cases.iter().any(|c| c.rule == rule),
            "no table case is decided by rule {rule}"
        );
    }
}

#[test]
fn rule_ids_are_unique() {
    let mut ids: Vec<&str> = Rule::ALL.iter().map(|r| r.id()).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), Rule::ALL.len());
}

#[test]
fn bootstrap_generations_count_up_and_saturate() {
    let generation = |last| match decide(&ClaimInputs {
        last_generation: last,
        ..base()
    }) {
        Decision::Grant { generation, .. } => generation,
        other => panic!("{other:?}"),
    };
    assert_eq!(generation(None), Some(1));
    assert_eq!(generation(Some(1)), Some(2));
    assert_eq!(generation(Some(u64::MAX)), Some(u64::MAX));
}

#[test]
fn only_a_new_bootstrap_carries_a_generation() {
    for case in cases() {
        if let Decision::Grant {
            rule, generation, ..
        } = decide(&case.inputs)
        {
            let new_raft = matches!(rule, Rule::Bootstrap | Rule::RebootstrapAfter);
            assert_eq!(generation.is_some(), new_raft, "{}", case.name);
        }
    }
}

#[test]
fn refusals_say_how_long_to_wait() {
    let wait = |inputs: ClaimInputs<'static>| match decide(&inputs) {
        Decision::Defer { retry_after, .. } | Decision::Refuse { retry_after, .. } => retry_after,
        other => panic!("{other:?}"),
    };
    // The rest of the grace, the rest of the quiet period, one interval otherwise.
    assert_eq!(
        wait(ClaimInputs {
            uptime: 4 * S,
            ..base()
        }),
        6 * S
    );
    assert_eq!(
        wait(ClaimInputs {
            last_seen_ago: Some(5 * S),
            ..base()
        }),
        10 * S
    );
    assert_eq!(
        wait(ClaimInputs {
            others: others(1, 1, 0),
            ..base()
        }),
        5 * S
    );
}

#[test]
fn reasons_name_the_node_and_the_figures() {
    match decide(&ClaimInputs {
        others: others(2, 2, 2),
        ..base()
    }) {
        Decision::Grant { reason, .. } => {
            assert!(
                reason.contains("n1") && reason.contains("2 of expect=3"),
                "{reason}"
            )
        }
        other => panic!("{other:?}"),
    }
    match decide(&ClaimInputs {
        last_seen_ago: Some(3 * S),
        ..base()
    }) {
        Decision::Defer { message, .. } => {
            assert!(
                message.contains("3s ago") && message.contains("15s"),
                "{message}"
            )
        }
        other => panic!("{other:?}"),
    }
}

/// README.md lists the rules once, each tagged `[rule `id`]`: every id there is a rule, and
/// every rule is there, in the order `decide` tries them.
#[test]
fn readme_lists_every_rule_by_its_id_in_order() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md"))
        .expect("read README.md");
    let tagged: Vec<&str> = readme
        .split("[rule `")
        .skip(1)
        .filter_map(|rest| rest.split_once("`]").map(|(id, _)| id))
        .collect();
    let ids: Vec<&str> = Rule::ALL.iter().map(|r| r.id()).collect();
    assert_eq!(
        tagged, ids,
        "README.md's rule list and rules::Rule::ALL differ"
    );
}

#[test]
fn a_lost_raft_names_both_ways_forward() {
    let agents = ["a1".to_string(), "a2".to_string()];
    let inputs = ClaimInputs {
        live_names: &agents,
        ..lost(400 * S, 2)
    };
    match decide(&inputs) {
        Decision::Refuse {
            rule: Rule::RaftLost,
            conflict: Conflict::RaftLost,
            message,
            retry_after,
        } => {
            assert_eq!(retry_after, 5 * S);
            for needle in [
                "ROLLCALL_FORCE_NEW_CLUSTER=1",
                "rollcall-registry reset c1 --generation 1 --force a1,a2",
                "6m 40s",
                "--raft-lost-after 5m",
            ] {
                assert!(message.contains(needle), "{needle:?} not in {message}");
            }
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_freed_slot_says_whose_place_it_is() {
    let inputs = ClaimInputs {
        raft: Some(&KNOWN),
        others: Others {
            any: 3,
            members: 3,
            servers: 2,
            disconnected: 1,
            unlisted_voters: 0,
        },
        ..base()
    };
    match decide(&inputs) {
        Decision::Grant { reason, .. } => {
            assert!(reason.contains("reports disconnected"), "{reason}")
        }
        other => panic!("{other:?}"),
    }
}
