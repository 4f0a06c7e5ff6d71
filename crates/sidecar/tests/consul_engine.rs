//! The Consul engine, by tables: the `consul agent` command line for every role, and the
//! status read from Consul's documented HTTP API answers (tests/fixtures/consul).

use clap::Parser;
use rollcall_protocol::AgentStatus;
use rollcall_sidecar::config::{Cli, Settings};
use rollcall_sidecar::engine::consul::{
    agent_args, agent_status, parse_agent_self, parse_leader, parse_peers, ConsulArgs,
};
use rollcall_sidecar::engine::{Engine, StartPlan};
use rollcall_sidecar::exit::EXIT_CONFIG;
use rollcall_sidecar::registry_link::RegistryLink;

fn fixture(name: &str) -> String {
    let path = format!(
        "{}/tests/fixtures/consul/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

fn settings(flags: &[&str], passthrough: &[&str]) -> Settings {
    let mut argv = vec![
        "rollcall-sidecar",
        "--registry",
        "http://127.0.0.1:9",
        "--node",
        "c1",
    ];
    argv.extend_from_slice(flags);
    argv.push("claim");
    let cli = Cli::try_parse_from(argv).expect("parse");
    Settings::from_args(&cli.common, strings(passthrough), None, None).expect("settings")
}

#[test]
fn agent_args_table() {
    let join = strings(&["10.0.0.2:8301", "10.0.0.3:8301"]);
    let none: Vec<String> = vec![];
    let extra = strings(&["-ui", "-client=0.0.0.0"]);
    struct Row<'a> {
        what: &'a str,
        args: ConsulArgs<'a>,
        expected: &'a [&'a str],
    }
    let base = ConsulArgs {
        node: "c1",
        data_dir: "/consul/data",
        advertise_host: "10.0.0.1",
        serf_lan_port: 8301,
        expect: 3,
        server: true,
        join: &none,
        passthrough: &none,
    };
    let rows = [
        Row {
            what: "bootstrap: the first server, nothing to join yet",
            args: base.clone(),
            expected: &[
                "agent",
                "-node=c1",
                "-data-dir=/consul/data",
                "-advertise=10.0.0.1",
                "-server",
                "-bootstrap-expect=3",
            ],
        },
        Row {
            what: "server: one -retry-join per live server",
            args: ConsulArgs {
                join: &join,
                ..base.clone()
            },
            expected: &[
                "agent",
                "-node=c1",
                "-data-dir=/consul/data",
                "-advertise=10.0.0.1",
                "-server",
                "-bootstrap-expect=3",
                "-retry-join=10.0.0.2:8301",
                "-retry-join=10.0.0.3:8301",
            ],
        },
        Row {
            what: "agent: no -server, no -bootstrap-expect",
            args: ConsulArgs {
                server: false,
                join: &join,
                ..base.clone()
            },
            expected: &[
                "agent",
                "-node=c1",
                "-data-dir=/consul/data",
                "-advertise=10.0.0.1",
                "-retry-join=10.0.0.2:8301",
                "-retry-join=10.0.0.3:8301",
            ],
        },
        Row {
            what: "a DNS name is not passed to -advertise, which takes an IP",
            args: ConsulArgs {
                advertise_host: "consul-1",
                expect: 5,
                ..base.clone()
            },
            expected: &[
                "agent",
                "-node=c1",
                "-data-dir=/consul/data",
                "-server",
                "-bootstrap-expect=5",
            ],
        },
        Row {
            what: "a non-default Serf LAN port, and pass-through flags last",
            args: ConsulArgs {
                serf_lan_port: 9301,
                server: false,
                passthrough: &extra,
                ..base.clone()
            },
            expected: &[
                "agent",
                "-node=c1",
                "-data-dir=/consul/data",
                "-advertise=10.0.0.1",
                "-serf-lan-port=9301",
                "-ui",
                "-client=0.0.0.0",
            ],
        },
    ];
    for row in rows {
        let args = agent_args(&row.args);
        assert_eq!(args, strings(row.expected), "{}", row.what);
        assert!(
            !args
                .iter()
                .any(|a| a == "-bootstrap" || a.starts_with("-bootstrap=")),
            "-bootstrap is never mixed with -bootstrap-expect: {}",
            row.what
        );
    }
}

#[tokio::test]
async fn granted_roles_become_consul_command_lines() {
    let temp = tempfile::tempdir().expect("tempdir");
    let data_dir = temp.path().to_str().expect("utf-8 path");
    let settings = settings(
        &[
            "--engine",
            "consul",
            "--advertise",
            "10.0.0.1",
            "--data-dir",
            data_dir,
        ],
        &["-ui"],
    );
    let engine = Engine::new(&settings).expect("engine");
    let registry = RegistryLink::new(&settings).expect("registry client");
    let join = strings(&["10.0.0.2:8301"]);
    let data = format!("-data-dir={data_dir}");
    for (plan, expected) in [
        (
            StartPlan::Bootstrap,
            vec![
                "agent",
                "-node=c1",
                &data,
                "-advertise=10.0.0.1",
                "-server",
                "-bootstrap-expect=3",
                "-ui",
            ],
        ),
        (
            StartPlan::Server { join: join.clone() },
            vec![
                "agent",
                "-node=c1",
                &data,
                "-advertise=10.0.0.1",
                "-server",
                "-bootstrap-expect=3",
                "-retry-join=10.0.0.2:8301",
                "-ui",
            ],
        ),
        (
            StartPlan::Agent { join: join.clone() },
            vec![
                "agent",
                "-node=c1",
                &data,
                "-advertise=10.0.0.1",
                "-retry-join=10.0.0.2:8301",
                "-ui",
            ],
        ),
        // No raft/ directory: a restarted client agent stays a client.
        (
            StartPlan::Restart { join: join.clone() },
            vec![
                "agent",
                "-node=c1",
                &data,
                "-advertise=10.0.0.1",
                "-retry-join=10.0.0.2:8301",
                "-ui",
            ],
        ),
    ] {
        let command = engine
            .prepare(&plan, None, &registry)
            .await
            .expect("command");
        assert_eq!(command.program, "consul");
        assert_eq!(command.args, strings(&expected), "{plan:?}");
    }

    // With raft state, the node restarts as a server and is never asked to bootstrap.
    std::fs::create_dir_all(temp.path().join("raft")).expect("mkdir");
    std::fs::write(temp.path().join("raft/raft.db"), b"").expect("write");
    assert!(engine.has_raft_state());
    let command = engine
        .prepare(&StartPlan::Restart { join }, None, &registry)
        .await
        .expect("command");
    assert!(command.args.contains(&"-server".to_string()));
    assert!(command.args.contains(&"-bootstrap-expect=3".to_string()));
}

#[test]
fn pass_through_flags_that_the_registry_decides_are_refused() {
    for flag in [
        "-bootstrap",
        "-bootstrap-expect=1",
        "--server",
        "-node=other",
        "-data-dir=/x",
    ] {
        let settings = settings(&["--engine", "consul", "--advertise", "10.0.0.1"], &[flag]);
        let error = Engine::new(&settings).expect_err(flag);
        assert_eq!(error.code, EXIT_CONFIG, "{flag}");
    }
}

#[test]
fn status_table_from_documented_answers() {
    struct Row {
        what: &'static str,
        leader: &'static str,
        peers: &'static str,
        agent_self: &'static str,
        expected: AgentStatus,
    }
    let rows = [
        Row {
            what: "the documented sample: the agent is the server at the leader's address",
            leader: "status_leader.json",
            peers: "status_peers.json",
            agent_self: "agent_self_documented.json",
            expected: AgentStatus {
                in_raft: Some(true),
                leader: Some("10.1.10.12:8300".into()),
                peers: Some(3),
                is_leader: Some(true),
            },
        },
        Row {
            what: "a follower, told by Stats.consul.leader",
            leader: "status_leader.json",
            peers: "status_peers.json",
            agent_self: "agent_self_follower_with_stats.json",
            expected: AgentStatus {
                in_raft: Some(true),
                leader: Some("10.1.10.12:8300".into()),
                peers: Some(3),
                is_leader: Some(false),
            },
        },
        Row {
            what: "no leader elected yet",
            leader: "status_leader_none.json",
            peers: "status_peers.json",
            agent_self: "agent_self_follower_with_stats.json",
            expected: AgentStatus {
                in_raft: Some(false),
                leader: None,
                peers: Some(3),
                is_leader: Some(false),
            },
        },
        Row {
            what: "a client agent is never the leader",
            leader: "status_leader.json",
            peers: "status_peers.json",
            agent_self: "agent_self_client.json",
            expected: AgentStatus {
                in_raft: Some(true),
                leader: Some("10.1.10.12:8300".into()),
                peers: Some(3),
                is_leader: Some(false),
            },
        },
    ];
    for row in rows {
        let leader = parse_leader(&fixture(row.leader)).expect("leader");
        let peers = parse_peers(&fixture(row.peers)).expect("peers");
        let agent = parse_agent_self(&fixture(row.agent_self)).expect("agent self");
        let status = agent_status(leader.as_deref(), Some(&peers), Some(&agent));
        assert_eq!(status, row.expected, "{}", row.what);
    }
}

#[test]
fn a_server_that_is_not_a_voter_yet_is_not_in_the_raft() {
    let agent =
        parse_agent_self(&fixture("agent_self_follower_with_stats.json")).expect("agent self");
    assert_eq!(agent.rpc_address.as_deref(), Some("10.1.10.11:8300"));
    let peers = strings(&["10.1.10.12:8300", "10.1.10.10:8300"]);
    let status = agent_status(Some("10.1.10.12:8300"), Some(&peers), Some(&agent));
    assert_eq!(status.in_raft, Some(false));
    assert_eq!(status.peers, Some(2));
}

#[test]
fn agent_self_fields_and_malformed_answers() {
    let documented = parse_agent_self(&fixture("agent_self_documented.json")).expect("agent self");
    assert_eq!(documented.node_name, "foobar");
    assert!(documented.server);
    assert_eq!(documented.rpc_address.as_deref(), Some("10.1.10.12:8300"));
    assert_eq!(documented.stats_leader, None);
    let client = parse_agent_self(&fixture("agent_self_client.json")).expect("agent self");
    assert!(!client.server);
    assert_eq!(client.rpc_address, None);

    for (what, result) in [
        ("leader as a number", parse_leader("8300").map(|_| ())),
        ("leader as HTML", parse_leader("<html>").map(|_| ())),
        ("peers as an object", parse_peers(r#"{"a":1}"#).map(|_| ())),
        (
            "agent/self without Config",
            parse_agent_self(r#"{"Member":{}}"#).map(|_| ()),
        ),
    ] {
        assert!(result.is_err(), "{what}");
    }
    assert_eq!(parse_leader(&fixture("status_leader_none.json")), Ok(None));
}
