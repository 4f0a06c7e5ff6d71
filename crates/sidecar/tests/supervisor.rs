//! The sidecar as a supervisor, with small shell scripts as agents through the `exec`
//! engine: signals, exit codes, the stop timeout, orphan reaping, and the one-shot
//! subcommands' exit codes, all against the real registry.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use nix::sys::signal::Signal;

async fn wait_listed(registry: &TestRegistry, cluster: &str, node: &str) {
    poll_until(Duration::from_secs(15), "the node in the registry", || {
        registry.listing(cluster, node)
    })
    .await;
}

fn start(
    registry: &TestRegistry,
    cluster: &str,
    node: &str,
    flags: &[&str],
    script: &str,
    logs: &Path,
) -> ProcessGuard {
    let mut command = exec_sidecar(&registry.url(), cluster, node, flags);
    command.arg("run").args(run_script(script));
    ProcessGuard::spawn(node, command, logs.join(format!("{node}.log")))
}

#[tokio::test]
async fn sigterm_stops_the_agent_leaves_the_registry_and_exits_with_the_agents_code() {
    let temp = tempfile::tempdir().expect("tempdir");
    let registry = TestRegistry::start(0, &temp.path().join("registry"), temp.path(), &[]).await;
    let mut sidecar = start(
        &registry,
        "exec-term",
        "polite",
        &[],
        r#"trap 'exit 42' TERM; while true; do sleep 0.1; done"#,
        temp.path(),
    );
    wait_listed(&registry, "exec-term", "polite").await;
    let agent = sidecar.descendants();
    sidecar.signal(Signal::SIGTERM);
    let status = sidecar.wait_exit(Duration::from_secs(5)).await;
    assert_eq!(status.code(), Some(42));
    let members = registry.members("exec-term").await.expect("members");
    assert!(members.members.is_empty(), "left the registry: {members:?}");
    for pid in agent {
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "agent {pid} is gone"
        );
    }
}

#[tokio::test]
async fn an_agent_that_ignores_sigterm_is_killed_after_the_stop_timeout() {
    let temp = tempfile::tempdir().expect("tempdir");
    let registry = TestRegistry::start(0, &temp.path().join("registry"), temp.path(), &[]).await;
    let mut sidecar = start(
        &registry,
        "exec-stubborn",
        "stubborn",
        &["--stop-timeout", "1s"],
        r#"trap '' TERM; while true; do sleep 0.1; done"#,
        temp.path(),
    );
    wait_listed(&registry, "exec-stubborn", "stubborn").await;
    let stopped = Instant::now();
    sidecar.signal(Signal::SIGTERM);
    let status = sidecar.wait_exit(Duration::from_secs(6)).await;
    let took = stopped.elapsed();
    assert_eq!(status.code(), Some(128 + 9), "killed with SIGKILL");
    assert!(
        took >= Duration::from_secs(1) && took < Duration::from_secs(4),
        "took {took:?}"
    );
    assert!(sidecar.log_text().contains("did not stop in time"));
}

#[tokio::test]
async fn the_agents_own_exit_code_passes_through_and_sighup_is_forwarded() {
    let temp = tempfile::tempdir().expect("tempdir");
    let registry = TestRegistry::start(0, &temp.path().join("registry"), temp.path(), &[]).await;
    let marker = temp.path().join("got-hup");
    let script = format!(
        r#"trap 'touch {}' HUP; trap 'exit 0' TERM; while true; do sleep 0.1; done"#,
        marker.display()
    );
    let mut sidecar = start(&registry, "exec-hup", "hup", &[], &script, temp.path());
    wait_listed(&registry, "exec-hup", "hup").await;
    sidecar.signal(Signal::SIGHUP);
    poll_until(Duration::from_secs(5), "the agent to get SIGHUP", || {
        let marker = marker.clone();
        async move { marker.exists().then_some(()) }
    })
    .await;
    assert!(
        registry
            .members("exec-hup")
            .await
            .expect("members")
            .members
            .len()
            == 1,
        "SIGHUP does not stop"
    );
    sidecar.signal(Signal::SIGTERM);
    assert_eq!(
        sidecar.wait_exit(Duration::from_secs(5)).await.code(),
        Some(0)
    );

    let mut crashing = start(
        &registry,
        "exec-crash",
        "crash",
        &[],
        "sleep 0.5; exit 3",
        temp.path(),
    );
    assert_eq!(
        crashing.wait_exit(Duration::from_secs(10)).await.code(),
        Some(3)
    );
}

#[tokio::test]
async fn orphans_of_the_agent_are_reaped_by_the_sidecar() {
    let temp = tempfile::tempdir().expect("tempdir");
    let registry = TestRegistry::start(0, &temp.path().join("registry"), temp.path(), &[]).await;
    // The subshell exits at once, orphaning its `sleep 1`, which the sidecar inherits as a
    // subreaper (as PID 1 it would inherit it anyway) and must reap when it exits.
    let sidecar = start(
        &registry,
        "exec-orphan",
        "orphan",
        &[],
        r#"(sleep 1 &); trap 'exit 0' TERM; while true; do sleep 0.1; done"#,
        temp.path(),
    );
    let sidecar_pid = sidecar.pid();
    let orphan = poll_until(
        Duration::from_secs(5),
        "the orphan to be handed to the sidecar",
        || async move {
            direct_children(sidecar_pid).into_iter().find(|pid| {
                std::fs::read_to_string(format!("/proc/{pid}/cmdline"))
                    .is_ok_and(|c| c.starts_with("sleep\u{0}1\u{0}"))
            })
        },
    )
    .await;
    poll_until(
        Duration::from_secs(5),
        "the orphan to be reaped, not left a zombie",
        || async move { (!Path::new(&format!("/proc/{orphan}")).exists()).then_some(()) },
    )
    .await;
}

fn direct_children(pid: i32) -> Vec<i32> {
    descendants_of(pid)
        .into_iter()
        .filter(|child| {
            std::fs::read_to_string(format!("/proc/{child}/stat"))
                .ok()
                .and_then(|stat| {
                    stat.rsplit_once(')')
                        .and_then(|(_, r)| r.split_whitespace().nth(1)?.parse::<i32>().ok())
                })
                == Some(pid)
        })
        .collect()
}

#[tokio::test]
async fn unreachable_registry_at_start_exits_69_after_the_retry_limit() {
    let temp = tempfile::tempdir().expect("tempdir");
    let nowhere = format!("http://127.0.0.1:{}", free_port());
    let mut command = exec_sidecar(
        &nowhere,
        "exec-nowhere",
        "lonely",
        &["--registry-retry-limit", "1s"],
    );
    command.arg("run").args(run_script("sleep 30"));
    let started = Instant::now();
    let mut sidecar = ProcessGuard::spawn("lonely", command, temp.path().join("lonely.log"));
    let status = sidecar.wait_exit(Duration::from_secs(10)).await;
    assert_eq!(status.code(), Some(69));
    assert!(started.elapsed() >= Duration::from_secs(1));
    assert!(
        sidecar.log_text().contains("cannot reach the registry"),
        "retries are logged"
    );
}

#[tokio::test]
async fn one_shot_commands_print_answers_and_exit_with_documented_codes() {
    let temp = tempfile::tempdir().expect("tempdir");
    let registry = TestRegistry::start(0, &temp.path().join("registry"), temp.path(), &[]).await;
    let health_url = format!("{}/health", registry.url());

    // heartbeat: the agent (here: anything answering 2xx at --health-url) is healthy: sent.
    let status = exec_sidecar(
        &registry.url(),
        "one-shot",
        "hb",
        &["--health-url", &health_url],
    )
    .arg("heartbeat")
    .status()
    .expect("run heartbeat");
    assert_eq!(status.code(), Some(0));
    let members = registry.members("one-shot").await.expect("members");
    assert_eq!(members.members.len(), 1);

    // heartbeat: no agent answers: 255 and nothing sent.
    let dead_agent = format!("http://127.0.0.1:{}/health", free_port());
    let status = exec_sidecar(
        &registry.url(),
        "one-shot",
        "hb-dead",
        &["--health-url", &dead_agent],
    )
    .arg("heartbeat")
    .status()
    .expect("run heartbeat");
    assert_eq!(status.code(), Some(255));
    assert_eq!(
        registry
            .members("one-shot")
            .await
            .expect("members")
            .members
            .len(),
        1
    );

    // heartbeat: the agent is fine but the registry cannot be reached: 69.
    let nowhere = format!("http://127.0.0.1:{}", free_port());
    let status = exec_sidecar(&nowhere, "one-shot", "hb", &["--health-url", &health_url])
        .arg("heartbeat")
        .status()
        .expect("run heartbeat");
    assert_eq!(status.code(), Some(69));

    // members: one join target a line.
    let output = exec_sidecar(&registry.url(), "one-shot", "reader", &[])
        .arg("members")
        .output()
        .expect("run members");
    assert_eq!(output.status.code(), Some(0));
    let hb_address = registry.members("one-shot").await.expect("members").members[0]
        .address
        .clone();
    assert_eq!(
        String::from_utf8_lossy(&output.stdout),
        format!("{hb_address}\n")
    );

    // members --format tsv: one member a line for scripts; the exec agent reports no raft
    // status, so those three fields are empty. It needs no address of its own: a machine
    // with no address for its hostname in /etc/hosts runs it too.
    let output = std::process::Command::new(sidecar_bin())
        .args(["--registry", &registry.url(), "--cluster", "one-shot"])
        .args(["--node", "reader", "members", "--format", "tsv"])
        .env_remove("ROLLCALL_ADVERTISE")
        .output()
        .expect("run members --format tsv");
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&output.stdout),
        format!("hb\t{hb_address}\tserver\t\t\t\n")
    );

    // claim: the role first, then the join targets. The registry's startup grace is over
    // by now (the heartbeats above came after /health answered).
    let output = poll_until(
        Duration::from_secs(5),
        "a claim outside the startup grace",
        || {
            let url = registry.url();
            async move {
                let output = exec_sidecar(&url, "one-shot", "claimer", &[])
                    .arg("claim")
                    .output()
                    .ok()?;
                (output.status.code() == Some(0)).then_some(output)
            }
        },
    )
    .await;
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let lines: Vec<&str> = stdout.lines().collect();
    // expect=1 and one live server (hb, reported as a server): the claimer is an agent.
    assert_eq!(lines, vec!["agent", hb_address.as_str()], "{stdout}");

    // A bad flag is a configuration error: 64.
    let status = exec_sidecar(&registry.url(), "bad cluster name", "x", &[])
        .arg("members")
        .status()
        .expect("run members");
    assert_eq!(status.code(), Some(64));
}
