//! The Consul engine, by tables: the `consul agent` command line for every role, and the
//! status read from Consul's documented HTTP API answers (tests/fixtures/consul), as pure
//! functions and through a stand-in for Consul's API (tests/common/consul.rs). No Consul
//! binary can be had where these run: nothing here elects a leader.

mod common;

use std::net::IpAddr;
use std::time::Duration;

use clap::Parser;
use common::consul::FakeConsul;
use common::TestRegistry;
use rollcall_protocol::{Absence, AgentStatus, GrantedRole, MemberRole};
use rollcall_sidecar::config::{Cli, Settings, DEFAULT_CONSUL_RETRY_INTERVAL};
use rollcall_sidecar::engine::consul::{
    agent_args, agent_status, autopilot_hcl, autopilot_settings, parse_agent_self, parse_autopilot,
    parse_autopilot_health, parse_leader, parse_raft_configuration, CleanupDecision,
    CleanupOutcome, ConsulArgs, RaftServer, RemovalCall,
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

fn settings_for(registry: &str, node: &str, flags: &[&str], passthrough: &[&str]) -> Settings {
    let mut argv = vec!["rollcall-sidecar", "--registry", registry, "--node", node];
    if !flags.contains(&"--consul-config-dir") {
        // Nothing in these tests may depend on a /consul/config on the machine.
        argv.extend([
            "--consul-config-dir",
            "/nonexistent/rollcall-test/consul-config",
        ]);
    }
    argv.extend_from_slice(flags);
    argv.push("claim");
    let cli = Cli::try_parse_from(argv).expect("parse");
    Settings::from_args(&cli.common, strings(passthrough), None, None).expect("settings")
}

fn settings(flags: &[&str], passthrough: &[&str]) -> Settings {
    settings_for("http://127.0.0.1:9", "c1", flags, passthrough)
}

fn ip(text: &str) -> IpAddr {
    text.parse().expect("ip")
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
        config_dir: None,
        advertise_ip: Some(ip("10.0.0.1")),
        bind_ip: None,
        client_ip: None,
        serf_lan_port: 8301,
        expect: 3,
        server: true,
        retry_interval: Duration::from_secs(3),
        join: &none,
        autopilot_hcl: None,
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
                "-retry-interval=3s",
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
                "-retry-interval=3s",
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
                "-retry-interval=3s",
                "-retry-join=10.0.0.2:8301",
                "-retry-join=10.0.0.3:8301",
            ],
        },
        Row {
            what:
                "the official image's conventions: -config-dir, -bind and -client from interfaces",
            args: ConsulArgs {
                config_dir: Some("/consul/config"),
                advertise_ip: Some(ip("172.18.0.3")),
                bind_ip: Some(ip("172.18.0.3")),
                client_ip: Some(ip("127.0.0.1")),
                expect: 5,
                retry_interval: Duration::from_millis(500),
                ..base.clone()
            },
            expected: &[
                "agent",
                "-node=c1",
                "-data-dir=/consul/data",
                "-config-dir=/consul/config",
                "-advertise=172.18.0.3",
                "-bind=172.18.0.3",
                "-client=127.0.0.1",
                "-retry-interval=500ms",
                "-server",
                "-bootstrap-expect=5",
            ],
        },
        Row {
            what: "a server gets the autopilot block as -hcl; pass-through flags still come last",
            args: ConsulArgs {
                autopilot_hcl: Some("autopilot {\n  min_quorum = 2\n}"),
                passthrough: &extra,
                ..base.clone()
            },
            expected: &[
                "agent",
                "-node=c1",
                "-data-dir=/consul/data",
                "-advertise=10.0.0.1",
                "-retry-interval=3s",
                "-server",
                "-bootstrap-expect=3",
                "-hcl=autopilot {\n  min_quorum = 2\n}",
                "-ui",
                "-client=0.0.0.0",
            ],
        },
        Row {
            what: "a client agent never gets the autopilot block",
            args: ConsulArgs {
                server: false,
                autopilot_hcl: Some("autopilot {}"),
                ..base.clone()
            },
            expected: &[
                "agent",
                "-node=c1",
                "-data-dir=/consul/data",
                "-advertise=10.0.0.1",
                "-retry-interval=3s",
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
                "-retry-interval=3s",
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
    // The registry's default interval (5 s) until a claim's answer says otherwise.
    let hcl = format!(
        "-hcl={}",
        autopilot_hcl(&autopilot_settings(3, Duration::from_secs(5)))
    );
    for (plan, expected) in [
        (
            StartPlan::Bootstrap,
            vec![
                "agent",
                "-node=c1",
                &data,
                "-advertise=10.0.0.1",
                "-retry-interval=3s",
                "-server",
                "-bootstrap-expect=3",
                &hcl,
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
                "-retry-interval=3s",
                "-server",
                "-bootstrap-expect=3",
                &hcl,
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
                "-retry-interval=3s",
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
                "-retry-interval=3s",
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
    assert!(command.args.contains(&hcl), "{:?}", command.args);
}

/// Three servers claim at the same instant from the real registry; each gets the short
/// `-retry-interval`, so a joiner that tried the bootstrap server before its Consul listened
/// tries again within seconds, not after Consul's default 30 s. There is no Consul here to
/// elect a leader: that the three then form a raft within seconds is not checked.
#[tokio::test]
async fn three_servers_claimed_at_the_same_instant_get_the_short_retry_interval() {
    let temp = tempfile::tempdir().expect("tempdir");
    let registry = TestRegistry::start(0, &temp.path().join("registry"), temp.path(), &[]).await;
    let url = registry.url();
    let claims = ["s1", "s2", "s3"].map(|node| {
        let address = format!("10.0.0.{}", &node[1..]);
        let data_dir = temp.path().join(node);
        let settings = settings_for(
            &url,
            node,
            &[
                "--cluster",
                "consul-same-instant",
                "--engine",
                "consul",
                "--advertise",
                &address,
                "--data-dir",
                data_dir.to_str().expect("utf-8"),
            ],
            &[],
        );
        async move {
            let link = RegistryLink::new(&settings).expect("link");
            let claim = link
                .claim_at_start(Duration::from_secs(10), Duration::from_secs(20))
                .await
                .expect("claim");
            let plan = match claim.role {
                GrantedRole::Bootstrap => StartPlan::Bootstrap,
                GrantedRole::Server => StartPlan::Server {
                    join: claim.join.iter().map(|t| t.address.clone()).collect(),
                },
                GrantedRole::Agent => StartPlan::Agent {
                    join: claim.join.iter().map(|t| t.address.clone()).collect(),
                },
            };
            let engine = Engine::new(&settings).expect("engine");
            let command = engine.prepare(&plan, None, &link).await.expect("command");
            (node, claim.role, command.args)
        }
    });
    let [a, b, c] = claims;
    let (a, b, c) = tokio::join!(a, b, c);
    let results = [a, b, c];
    let bootstraps = results
        .iter()
        .filter(|(_, role, _)| *role == GrantedRole::Bootstrap)
        .count();
    assert_eq!(bootstraps, 1, "one bootstrap: {results:?}");
    assert_eq!(DEFAULT_CONSUL_RETRY_INTERVAL, Duration::from_secs(3));
    for (node, role, args) in &results {
        assert_ne!(*role, GrantedRole::Agent, "{node} is a server: {args:?}");
        assert!(
            args.contains(&"-retry-interval=3s".to_string()),
            "{node} ({role}): {args:?}"
        );
        assert!(
            args.iter().any(|a| a.starts_with("-advertise=10.0.0.")),
            "{args:?}"
        );
    }
}

#[tokio::test]
async fn the_retry_interval_can_be_overridden() {
    let settings = settings(
        &[
            "--engine",
            "consul",
            "--advertise",
            "10.0.0.1",
            "--consul-retry-interval",
            "1500ms",
        ],
        &[],
    );
    let engine = Engine::new(&settings).expect("engine");
    let registry = RegistryLink::new(&settings).expect("registry client");
    let command = engine
        .prepare(&StartPlan::Bootstrap, None, &registry)
        .await
        .expect("command");
    assert!(command.args.contains(&"-retry-interval=1500ms".to_string()));
}

/// `-advertise` always carries an IP: a host name is resolved once at start (here
/// `localhost`, from /etc/hosts), and an advertise interface gives its IPv4 address (here
/// `lo`, present on every Linux host).
#[tokio::test]
async fn advertise_is_always_an_ip_from_a_name_or_an_interface() {
    for (what, flags, expected) in [
        (
            "a name resolved at start",
            vec!["--advertise", "localhost"],
            "-advertise=127.0.0.1",
        ),
        (
            "an interface's address",
            vec![
                "--advertise",
                "consul-1",
                "--consul-advertise-interface",
                "lo",
            ],
            "-advertise=127.0.0.1",
        ),
        (
            "an IP as it is",
            vec!["--advertise", "10.9.8.7"],
            "-advertise=10.9.8.7",
        ),
    ] {
        let mut all = vec!["--engine", "consul"];
        all.extend(flags);
        let settings = settings(&all, &[]);
        let engine = Engine::new(&settings).expect("engine");
        let registry = RegistryLink::new(&settings).expect("registry client");
        let command = engine
            .prepare(&StartPlan::Bootstrap, None, &registry)
            .await
            .expect(what);
        assert!(
            command.args.contains(&expected.to_string()),
            "{what}: {:?}",
            command.args
        );
    }

    // A name that cannot resolve is a configuration error, said at start.
    let unresolvable = settings(
        &["--engine", "consul", "--advertise", "no-such-host.invalid"],
        &[],
    );
    let engine = Engine::new(&unresolvable).expect("engine");
    let registry = RegistryLink::new(&unresolvable).expect("registry client");
    let error = engine
        .prepare(&StartPlan::Bootstrap, None, &registry)
        .await
        .expect_err("unresolvable");
    assert_eq!(error.code, EXIT_CONFIG);
    // An interface that does not exist, too.
    let error = Engine::new(&settings(
        &[
            "--engine",
            "consul",
            "--advertise",
            "10.0.0.1",
            "--consul-bind-interface",
            "no-such-if0",
        ],
        &[],
    ))
    .expect_err("no such interface");
    assert_eq!(error.code, EXIT_CONFIG);
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
        servers: Option<&'static str>,
        agent_self: &'static str,
        expected: AgentStatus,
    }
    let rows = [
        Row {
            what: "the documented agent, leader in the raft configuration",
            leader: "status_leader.json",
            servers: Some("raft_configuration.json"),
            agent_self: "agent_self_documented.json",
            expected: AgentStatus {
                in_raft: Some(true),
                leader: Some("10.1.10.12:8300".into()),
                peers: Some(3),
                is_leader: Some(true),
            },
        },
        Row {
            what: "a follower and voter, by the autopilot health",
            leader: "status_leader.json",
            servers: Some("autopilot_health.json"),
            agent_self: "agent_self_follower_with_stats.json",
            expected: AgentStatus {
                in_raft: Some(true),
                leader: Some("10.1.10.12:8300".into()),
                peers: Some(3),
                is_leader: Some(false),
            },
        },
        Row {
            what: "a non-voter in the raft configuration: not in the raft, not counted",
            leader: "status_leader.json",
            servers: Some("raft_configuration_non_voter.json"),
            agent_self: "agent_self_follower_with_stats.json",
            expected: AgentStatus {
                in_raft: Some(false),
                leader: Some("10.1.10.12:8300".into()),
                peers: Some(2),
                is_leader: Some(false),
            },
        },
        Row {
            what: "a non-voter in the autopilot health",
            leader: "status_leader.json",
            servers: Some("autopilot_health_non_voter.json"),
            agent_self: "agent_self_follower_with_stats.json",
            expected: AgentStatus {
                in_raft: Some(false),
                leader: Some("10.1.10.12:8300".into()),
                peers: Some(1),
                is_leader: Some(false),
            },
        },
        Row {
            what: "no leader elected yet",
            leader: "status_leader_none.json",
            servers: Some("raft_configuration.json"),
            agent_self: "agent_self_follower_with_stats.json",
            expected: AgentStatus {
                in_raft: Some(false),
                leader: None,
                peers: Some(3),
                is_leader: Some(false),
            },
        },
        Row {
            what:
                "a server without the server list (no operator:read): voters unknown, not guessed",
            leader: "status_leader.json",
            servers: None,
            agent_self: "agent_self_follower_with_stats.json",
            expected: AgentStatus {
                in_raft: None,
                leader: Some("10.1.10.12:8300".into()),
                peers: None,
                is_leader: Some(false),
            },
        },
        Row {
            what: "a client agent is never the leader, and is in service with a leader",
            leader: "status_leader.json",
            servers: None,
            agent_self: "agent_self_client.json",
            expected: AgentStatus {
                in_raft: Some(true),
                leader: Some("10.1.10.12:8300".into()),
                peers: None,
                is_leader: Some(false),
            },
        },
    ];
    for row in rows {
        let leader = parse_leader(&fixture(row.leader)).expect("leader");
        let servers = row.servers.map(|name| {
            let body = fixture(name);
            if name.starts_with("autopilot") {
                parse_autopilot_health(&body).expect("autopilot health")
            } else {
                parse_raft_configuration(&body).expect("raft configuration")
            }
        });
        let agent = parse_agent_self(&fixture(row.agent_self)).expect("agent self");
        let status = agent_status(leader.as_deref(), servers.as_deref(), Some(&agent));
        assert_eq!(status, row.expected, "{}", row.what);
    }
}

#[test]
fn operator_answers_are_parsed_alike() {
    let from_raft = parse_raft_configuration(&fixture("raft_configuration_non_voter.json"))
        .expect("raft configuration");
    assert_eq!(
        from_raft[2],
        RaftServer {
            id: "5e1b7a3c-2d4f-4c1e-9b8a-1f2e3d4c5b6a".into(),
            node: "consul-2".into(),
            address: "10.1.10.11:8300".into(),
            leader: false,
            voter: false,
        }
    );
    let from_autopilot =
        parse_autopilot_health(&fixture("autopilot_health.json")).expect("autopilot health");
    assert_eq!(from_autopilot.len(), 3);
    assert!(from_autopilot[0].leader && from_autopilot[0].voter);
    assert_eq!(from_autopilot[0].node, "foobar");
    for (what, result) in [
        (
            "raft configuration as a list",
            parse_raft_configuration("[]"),
        ),
        (
            "autopilot health without Servers",
            parse_autopilot_health(r#"{"Healthy":true}"#),
        ),
        (
            "an ACL refusal body",
            parse_raft_configuration(&fixture("acl_permission_denied.txt")),
        ),
    ] {
        assert!(result.is_err(), "{what}");
    }
}

#[test]
fn agent_self_fields_and_malformed_answers() {
    let documented = parse_agent_self(&fixture("agent_self_documented.json")).expect("agent self");
    assert_eq!(documented.node_name, "foobar");
    assert!(documented.server);
    assert_eq!(documented.rpc_address.as_deref(), Some("10.1.10.12:8300"));
    assert_eq!(documented.stats_leader, None);
    assert_eq!(documented.acl_enabled, None);
    let client = parse_agent_self(&fixture("agent_self_client.json")).expect("agent self");
    assert!(!client.server);
    assert_eq!(client.rpc_address, None);
    assert_eq!(client.acl_enabled, Some(false));
    let with_acl =
        parse_agent_self(&fixture("agent_self_follower_acl_enabled.json")).expect("agent self");
    assert_eq!(with_acl.acl_enabled, Some(true));
    assert_eq!(with_acl.rpc_address.as_deref(), Some("10.1.10.11:8300"));

    for (what, result) in [
        ("leader as a number", parse_leader("8300").map(|_| ())),
        ("leader as HTML", parse_leader("<html>").map(|_| ())),
        (
            "agent/self without Config",
            parse_agent_self(r#"{"Member":{}}"#).map(|_| ()),
        ),
        (
            "an ACL refusal body",
            parse_agent_self(&fixture("acl_permission_denied.txt")).map(|_| ()),
        ),
    ] {
        assert!(result.is_err(), "{what}");
    }
    assert_eq!(parse_leader(&fixture("status_leader_none.json")), Ok(None));
}

fn consul_settings(api: &str, token: Option<&str>) -> Settings {
    let mut flags = vec![
        "--engine",
        "consul",
        "--advertise",
        "10.1.10.11",
        "--consul-http",
        api,
    ];
    if let Some(token) = token {
        flags.extend(["--consul-http-token", token]);
    }
    settings(&flags, &[])
}

/// With ACLs on, the token goes with every call to the agent's API; without it, Consul
/// answers 403 where a permission is needed and the status says only what the
/// token-free `/v1/status/leader` tells.
#[tokio::test]
async fn the_acl_token_goes_with_every_call() {
    const TOKEN: &str = "b1gs33cr3t";
    let answers = [
        ("/v1/status/leader", 200, fixture("status_leader.json")),
        (
            "/v1/agent/self",
            200,
            fixture("agent_self_follower_acl_enabled.json"),
        ),
        (
            "/v1/operator/raft/configuration",
            200,
            fixture("raft_configuration_non_voter.json"),
        ),
    ];
    let consul = FakeConsul::start(&answers, Some(TOKEN)).await;

    let engine = Engine::new(&consul_settings(&consul.url, Some(TOKEN))).expect("engine");
    assert!(
        !format!("{engine:?}").contains(TOKEN),
        "the token never reaches a log"
    );
    assert!(matches!(
        engine.health(MemberRole::Server).await,
        rollcall_sidecar::engine::Health::Healthy
    ));
    assert_eq!(engine.detect_role().await, Some(MemberRole::Server));
    let status = engine.status(MemberRole::Server).await.expect("status");
    assert_eq!(
        status,
        AgentStatus {
            in_raft: Some(false),
            leader: Some("10.1.10.12:8300".into()),
            peers: Some(2),
            is_leader: Some(false),
        },
        "a non-voter, reported as not in the raft"
    );
    let calls = consul.calls();
    assert!(calls.len() >= 5, "{calls:?}");
    for call in &calls {
        assert_eq!(call.token.as_deref(), Some(TOKEN), "{call:?}");
    }

    // Without the token: agent/self and the operator endpoints are refused.
    let engine = Engine::new(&consul_settings(&consul.url, None)).expect("engine");
    assert_eq!(engine.detect_role().await, None);
    let status = engine.status(MemberRole::Server).await.expect("status");
    assert_eq!(
        status,
        AgentStatus {
            in_raft: None,
            leader: Some("10.1.10.12:8300".into()),
            peers: None,
            is_leader: None,
        }
    );
}

/// When the raft configuration is refused or fails, Autopilot's health is read instead,
/// also when it answers 429 (Consul's answer while the cluster is unhealthy, with the same
/// body).
#[tokio::test]
async fn autopilot_health_is_read_when_the_raft_configuration_fails() {
    let answers = [
        ("/v1/status/leader", 200, fixture("status_leader.json")),
        (
            "/v1/agent/self",
            200,
            fixture("agent_self_follower_with_stats.json"),
        ),
        (
            "/v1/operator/raft/configuration",
            500,
            "No cluster leader".to_string(),
        ),
        (
            "/v1/operator/autopilot/health",
            429,
            fixture("autopilot_health_non_voter.json"),
        ),
    ];
    let consul = FakeConsul::start(&answers, None).await;
    let engine = Engine::new(&consul_settings(&consul.url, None)).expect("engine");
    let status = engine.status(MemberRole::Server).await.expect("status");
    assert_eq!(status.in_raft, Some(false));
    assert_eq!(status.peers, Some(1));
    let paths: Vec<String> = consul.calls().into_iter().map(|c| c.path).collect();
    assert!(
        paths.contains(&"/v1/operator/autopilot/health".to_string()),
        "{paths:?}"
    );
}

/// With `CONSUL_CLIENT_INTERFACE`, Consul's API listens on that interface's address only, so
/// the sidecar reads it there unless `--consul-http` says otherwise.
#[test]
fn the_api_is_read_on_the_client_interface() {
    for (flags, expected) in [
        (vec![], "http://127.0.0.1:8500"),
        (
            vec!["--consul-client-interface", "lo"],
            "http://127.0.0.1:8500",
        ),
        (
            vec![
                "--consul-client-interface",
                "lo",
                "--consul-http",
                "http://10.0.0.1:9500",
            ],
            "http://10.0.0.1:9500",
        ),
    ] {
        let mut all = vec!["--engine", "consul", "--advertise", "10.0.0.1"];
        all.extend(flags.iter());
        let Engine::Consul(engine) = Engine::new(&settings(&all, &[])).expect("engine") else {
            panic!("a consul engine");
        };
        assert_eq!(engine.api_base(), expected, "{flags:?}");
    }
}

/// `CONSUL_LOCAL_CONFIG` that is not JSON is refused at start with exit 64, before Consul
/// would refuse it with a less clear line; JSON lands in `local.json` and `-config-dir` is
/// passed.
#[tokio::test]
async fn local_config_is_written_before_consul_starts_or_refused() {
    let temp = tempfile::tempdir().expect("tempdir");
    let config_dir = temp.path().join("config");
    let config = config_dir.to_str().expect("utf-8");
    for (local_config, accepted) in [
        (r#"{"datacenter":"eu"}"#, true),
        ("datacenter = \"eu\"", false),
    ] {
        let settings = settings(
            &[
                "--engine",
                "consul",
                "--advertise",
                "10.0.0.1",
                "--consul-config-dir",
                config,
                "--consul-local-config",
                local_config,
            ],
            &[],
        );
        let engine = Engine::new(&settings).expect("engine");
        let registry = RegistryLink::new(&settings).expect("registry client");
        let result = engine.prepare(&StartPlan::Bootstrap, None, &registry).await;
        if accepted {
            let command = result.expect("command");
            assert!(
                command.args.contains(&format!("-config-dir={config}")),
                "{command:?}"
            );
            assert_eq!(
                std::fs::read_to_string(config_dir.join("local.json")).expect("local.json"),
                local_config
            );
        } else {
            assert_eq!(result.expect_err("not JSON").code, EXIT_CONFIG);
        }
    }
}

/// The leader's answers: this agent is `foobar`, the raft's leader (documented samples).
fn leader_answers(configuration: &str, health: (u16, &str)) -> Vec<(&'static str, u16, String)> {
    vec![
        ("/v1/status/leader", 200, fixture("status_leader.json")),
        ("/v1/agent/self", 200, fixture("agent_self_documented.json")),
        (
            "/v1/operator/raft/configuration",
            200,
            fixture(configuration),
        ),
        ("/v1/operator/autopilot/health", health.0, fixture(health.1)),
        (
            "/v1/operator/autopilot/configuration",
            200,
            fixture("autopilot_configuration.json"),
        ),
        (
            "PUT /v1/operator/autopilot/configuration",
            200,
            "true".to_string(),
        ),
        ("PUT /v1/agent/force-leave/consul-3", 200, String::new()),
        ("DELETE /v1/operator/raft/peer", 200, String::new()),
    ]
}

fn consul_engine(url: &str) -> Engine {
    Engine::new(&consul_settings(url, None)).expect("engine")
}

#[test]
fn autopilot_health_is_parsed_with_failure_tolerance_and_serf_status() {
    let health = parse_autopilot(&fixture("autopilot_health_one_failed.json")).expect("parsed");
    assert!(!health.healthy);
    assert_eq!(health.failure_tolerance, 0);
    assert_eq!(health.servers.len(), 3);
    let dead = &health.servers[2];
    assert_eq!(dead.id, "0f2d6c77-5b1e-4f3a-8c9d-7e6f5a4b3c2d");
    assert_eq!(dead.name, "consul-3");
    assert_eq!(dead.serf_status, "failed");
    assert!(!dead.healthy && dead.voter && !dead.leader);
    let all = parse_autopilot(&fixture("autopilot_health.json")).expect("parsed");
    assert!(all.healthy && all.failure_tolerance == 1);
    assert!(all
        .servers
        .iter()
        .all(|s| s.healthy && s.serf_status == "alive"));
    let stale =
        parse_raft_configuration(&fixture("raft_configuration_stale.json")).expect("parsed");
    assert_eq!(stale[2].node, "(unknown)");
    assert_eq!(stale[2].id, "0f2d6c77-5b1e-4f3a-8c9d-7e6f5a4b3c2d");
}

/// The leader reports the raft configuration with its evidence from Autopilot's health (429:
/// the raft is not healthy); a follower reports the same members without evidence.
#[tokio::test]
async fn heartbeats_carry_the_raft_members_with_the_leaders_evidence() {
    let consul = FakeConsul::start(
        &leader_answers(
            "raft_configuration.json",
            (429, "autopilot_health_one_failed.json"),
        ),
        None,
    )
    .await;
    let engine = consul_engine(&consul.url);
    assert_eq!(engine.raft_members(MemberRole::Agent).await, None);
    let members = engine
        .raft_members(MemberRole::Server)
        .await
        .expect("members");
    let names: Vec<&str> = members.iter().map(|m| m.name.as_str()).collect();
    assert_eq!(names, ["foobar", "consul-2", "consul-3"]);
    assert_eq!(members[0].id, "e349749b-3303-3ddf-959c-b5885a0e1f6e");
    assert_eq!(members[0].peer_urls, ["10.1.10.12:8300"]);
    assert_eq!(
        members.iter().map(|m| m.connected).collect::<Vec<_>>(),
        [Some(true), Some(true), Some(false)]
    );
    assert_eq!(members[2].disconnected_for_ms, Some(0), "counted from now");
    assert!(members.iter().all(|m| !m.learner));
    for member in &members {
        member.validate().expect("valid on the wire");
    }
    // Autopilot's failure tolerance and health go into status: the raft still has a leader.
    let status = engine.status(MemberRole::Server).await.expect("status");
    assert_eq!(status.is_leader, Some(true));
    assert_eq!(status.peers, Some(3));

    // A follower: the same members, no evidence.
    let follower = FakeConsul::start(
        &[
            ("/v1/status/leader", 200, fixture("status_leader.json")),
            (
                "/v1/agent/self",
                200,
                fixture("agent_self_follower_with_stats.json"),
            ),
            (
                "/v1/operator/raft/configuration",
                200,
                fixture("raft_configuration_non_voter.json"),
            ),
        ],
        None,
    )
    .await;
    let members = consul_engine(&follower.url)
        .raft_members(MemberRole::Server)
        .await
        .expect("members");
    assert_eq!(members.len(), 3);
    assert!(members.iter().all(|m| m.connected.is_none()));
    assert!(members[2].learner, "a non-voter carries no quorum weight");
}

/// A server Autopilot counts unhealthy (no contact with the leader within the threshold)
/// is not healthy for the sidecar: it sends no heartbeat until it is.
#[tokio::test]
async fn a_server_autopilot_counts_unhealthy_is_not_healthy() {
    let answers = |health: &str| {
        vec![
            ("/v1/status/leader", 200, fixture("status_leader.json")),
            (
                "/v1/agent/self",
                200,
                fixture("agent_self_follower_with_stats.json"),
            ),
            ("/v1/operator/autopilot/health", 429, fixture(health)),
        ]
    };
    let consul =
        FakeConsul::start(&answers("autopilot_health_follower_unhealthy.json"), None).await;
    match consul_engine(&consul.url).health(MemberRole::Server).await {
        rollcall_sidecar::engine::Health::Starting(reason) => {
            assert!(reason.contains("3.2s"), "{reason}")
        }
        other => panic!("{other:?}"),
    }
    let consul = FakeConsul::start(&answers("autopilot_health_one_failed.json"), None).await;
    assert!(matches!(
        consul_engine(&consul.url).health(MemberRole::Server).await,
        rollcall_sidecar::engine::Health::Healthy
    ));
}

fn calls_of(consul: &FakeConsul, method: &str) -> Vec<(String, Option<String>, String)> {
    consul
        .calls()
        .into_iter()
        .filter(|c| c.method == method)
        .map(|c| (c.path, c.query, c.body))
        .collect()
}

/// The leader's first pass brings the stored Autopilot configuration (Consul's defaults, as
/// documented) to the sidecar's values with a check-and-set, keeping the fields it does not
/// own; later passes do not write again.
#[tokio::test]
async fn the_leader_writes_the_autopilot_configuration_once() {
    let consul = FakeConsul::start(
        &leader_answers("raft_configuration.json", (200, "autopilot_health.json")),
        None,
    )
    .await;
    let engine = consul_engine(&consul.url);
    engine.set_registry_interval(Duration::from_secs(1));
    for _ in 0..2 {
        let outcome = engine
            .consul_cleanup(&[], 3, Duration::from_secs(300))
            .await
            .expect("consul");
        assert_eq!(outcome, CleanupOutcome::Decided(CleanupDecision::Nothing));
    }
    let puts = calls_of(&consul, "PUT");
    assert_eq!(puts.len(), 1, "{puts:?}");
    let (path, query, body) = &puts[0];
    assert_eq!(path, "/v1/operator/autopilot/configuration");
    assert_eq!(query.as_deref(), Some("cas=4"));
    let body: serde_json::Value = serde_json::from_str(body).expect("json");
    assert_eq!(body["CleanupDeadServers"], true);
    assert_eq!(body["LastContactThreshold"], "200ms");
    assert_eq!(body["ServerStabilizationTime"], "2s");
    assert_eq!(body["MinQuorum"], 2);
    assert_eq!(body["MaxTrailingLogs"], 250, "kept as read");
    assert!(calls_of(&consul, "DELETE").is_empty());

    // A follower's sidecar never writes.
    let follower = FakeConsul::start(
        &[
            ("/v1/status/leader", 200, fixture("status_leader.json")),
            (
                "/v1/agent/self",
                200,
                fixture("agent_self_follower_with_stats.json"),
            ),
            (
                "/v1/operator/raft/configuration",
                200,
                fixture("raft_configuration.json"),
            ),
        ],
        None,
    )
    .await;
    let outcome = consul_engine(&follower.url)
        .consul_cleanup(&[], 3, Duration::from_millis(1))
        .await;
    assert_eq!(outcome, Some(CleanupOutcome::NotLeader));
    assert!(calls_of(&follower, "PUT").is_empty());
}

/// A failed server past both thresholds: force-leave with prune, as Consul's documentation
/// advises while Serf still lists the server; only once both the leader's watch and the
/// registry's absence have reached the threshold.
#[tokio::test]
async fn a_failed_server_autopilot_left_is_force_left_with_prune() {
    let consul = FakeConsul::start(
        &leader_answers(
            "raft_configuration.json",
            (429, "autopilot_health_one_failed.json"),
        ),
        None,
    )
    .await;
    let engine = consul_engine(&consul.url);
    let threshold = Duration::from_millis(300);
    let gone = [Absence {
        node: "consul-3".into(),
        absent_for_ms: 10_000,
    }];
    // First pass: the leader's watch starts now.
    let outcome = engine
        .consul_cleanup(&gone, 3, threshold)
        .await
        .expect("consul");
    assert!(
        matches!(&outcome, CleanupOutcome::Decided(CleanupDecision::Hold(r)) if r.contains("disconnected from the leader")),
        "{outcome:?}"
    );
    tokio::time::sleep(threshold + Duration::from_millis(50)).await;
    // The registry saw it recently (a restart): held.
    let recent = [Absence {
        node: "consul-3".into(),
        absent_for_ms: 100,
    }];
    let outcome = engine
        .consul_cleanup(&recent, 3, threshold)
        .await
        .expect("consul");
    assert!(
        matches!(&outcome, CleanupOutcome::Decided(CleanupDecision::Hold(r)) if r.contains("absent from the registry")),
        "{outcome:?}"
    );
    assert!(!calls_of(&consul, "PUT")
        .iter()
        .any(|(p, ..)| p.starts_with("/v1/agent/force-leave")));
    // Both thresholds passed.
    let outcome = engine
        .consul_cleanup(&gone, 3, threshold)
        .await
        .expect("consul");
    let CleanupOutcome::Decided(CleanupDecision::Remove(removal)) = outcome else {
        panic!("{outcome:?}");
    };
    assert_eq!(
        removal.call,
        RemovalCall::ForceLeavePrune {
            node: "consul-3".into()
        }
    );
    assert_eq!(removal.voters_after, 2);
    let force_leaves: Vec<_> = calls_of(&consul, "PUT")
        .into_iter()
        .filter(|(p, ..)| p.starts_with("/v1/agent/force-leave"))
        .collect();
    assert_eq!(force_leaves.len(), 1);
    assert_eq!(force_leaves[0].0, "/v1/agent/force-leave/consul-3");
    assert_eq!(force_leaves[0].1.as_deref(), Some("prune"));
    // One removal per threshold.
    let outcome = engine
        .consul_cleanup(&gone, 3, threshold)
        .await
        .expect("consul");
    assert!(
        matches!(&outcome, CleanupOutcome::Decided(CleanupDecision::Hold(r)) if r.contains("one removal per")),
        "{outcome:?}"
    );
}

/// A stale server (in the raft configuration as `(unknown)`, no longer in Autopilot's
/// health): removed from the raft by its ID, under its remembered name's registry evidence.
#[tokio::test]
async fn a_stale_raft_peer_is_removed_by_id() {
    let consul = FakeConsul::start(
        &leader_answers(
            "raft_configuration_stale.json",
            (429, "autopilot_health_stale.json"),
        ),
        None,
    )
    .await;
    let engine = consul_engine(&consul.url);
    let threshold = Duration::from_millis(200);
    // Nobody remembers the stale server's name: a voter without registry evidence stays.
    engine.consul_cleanup(&[], 3, threshold).await;
    tokio::time::sleep(threshold + Duration::from_millis(50)).await;
    let outcome = engine
        .consul_cleanup(&[], 3, threshold)
        .await
        .expect("consul");
    assert!(
        matches!(&outcome, CleanupOutcome::Decided(CleanupDecision::Hold(r)) if r.contains("remove-peer -id=0f2d6c77")),
        "{outcome:?}"
    );
    assert!(calls_of(&consul, "DELETE").is_empty());

    // A sidecar that saw the server under its name while it lived goes on the registry's
    // evidence for that name.
    let consul = FakeConsul::start(
        &leader_answers("raft_configuration.json", (200, "autopilot_health.json")),
        None,
    )
    .await;
    let engine = consul_engine(&consul.url);
    engine
        .raft_members(MemberRole::Server)
        .await
        .expect("members");
    consul.set_answer(
        "/v1/operator/raft/configuration",
        200,
        fixture("raft_configuration_stale.json"),
    );
    consul.set_answer(
        "/v1/operator/autopilot/health",
        429,
        fixture("autopilot_health_stale.json"),
    );
    let members = engine
        .raft_members(MemberRole::Server)
        .await
        .expect("members");
    assert_eq!(members[2].name, "consul-3", "remembered");
    assert_eq!(members[2].connected, Some(false));
    tokio::time::sleep(threshold + Duration::from_millis(50)).await;
    let gone = [Absence {
        node: "consul-3".into(),
        absent_for_ms: 10_000,
    }];
    let outcome = engine
        .consul_cleanup(&gone, 3, threshold)
        .await
        .expect("consul");
    let CleanupOutcome::Decided(CleanupDecision::Remove(removal)) = outcome else {
        panic!("{outcome:?}");
    };
    assert_eq!(
        removal.call,
        RemovalCall::RemovePeer {
            id: "0f2d6c77-5b1e-4f3a-8c9d-7e6f5a4b3c2d".into()
        }
    );
    let deletes = calls_of(&consul, "DELETE");
    assert_eq!(deletes.len(), 1, "{deletes:?}");
    assert_eq!(deletes[0].0, "/v1/operator/raft/peer");
    assert_eq!(
        deletes[0].1.as_deref(),
        Some("id=0f2d6c77-5b1e-4f3a-8c9d-7e6f5a4b3c2d")
    );
}

/// With `CONSUL_LOCAL_CONFIG` setting `autopilot`, the operator's settings win: no `-hcl`,
/// no write to the stored configuration.
#[tokio::test]
async fn an_operators_autopilot_block_is_left_alone() {
    let consul = FakeConsul::start(
        &leader_answers("raft_configuration.json", (200, "autopilot_health.json")),
        None,
    )
    .await;
    let temp = tempfile::tempdir().expect("tempdir");
    let config = temp.path().join("config");
    let settings = settings(
        &[
            "--engine",
            "consul",
            "--advertise",
            "10.1.10.11",
            "--consul-http",
            &consul.url,
            "--consul-config-dir",
            config.to_str().expect("utf-8"),
            "--consul-local-config",
            r#"{"autopilot":{"min_quorum":5}}"#,
        ],
        &[],
    );
    let engine = Engine::new(&settings).expect("engine");
    let registry = RegistryLink::new(&settings).expect("registry client");
    let command = engine
        .prepare(&StartPlan::Bootstrap, None, &registry)
        .await
        .expect("command");
    assert!(
        !command.args.iter().any(|a| a.starts_with("-hcl")),
        "{:?}",
        command.args
    );
    engine
        .consul_cleanup(&[], 3, Duration::from_secs(300))
        .await;
    assert!(calls_of(&consul, "PUT").is_empty());
}
