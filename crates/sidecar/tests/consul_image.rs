//! The Consul image's start-up conventions, without a Consul binary: the sidecar (root, as
//! PID 1 is in the image) starts a stand-in agent, a shell script that records who it runs
//! as and with which arguments, and proves it can write its data directory. Checked: a
//! root-owned data directory ends up the agent user's, `CONSUL_LOCAL_CONFIG` lands in the
//! config directory as `local.json`, `CONSUL_BIND_INTERFACE` / `CONSUL_CLIENT_INTERFACE`
//! become `-bind` / `-client` with the interface's address, and the agent runs as that user
//! while the sidecar stays its parent. Once with the Consul engine (the stand-in given as
//! `--agent-bin`, so the real Consul command line is built), once with the `exec` engine.
//!
//! Changing owners and users needs root. These tests run as root on the machines they were
//! written on; elsewhere they print why they were skipped, and under `CI=true` they fail
//! instead, so that a CI run never passes them silently.

mod common;

use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::Path;
use std::time::Duration;

use common::*;
use nix::sys::signal::Signal;
use rollcall_sidecar::engine::agent_user::find_user;

/// The unprivileged user the agent runs as here (every Debian and Alpine has it).
const AGENT_USER: &str = "nobody";

/// True when the test can run; otherwise says why it is skipped (or fails under CI).
fn running_as_root(test: &str) -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    let reason = format!(
        "{test}: SKIPPED: needs root to give the data directory to {AGENT_USER:?} and start the agent as it (uid {})",
        nix::unistd::geteuid()
    );
    assert!(std::env::var("CI").as_deref() != Ok("true"), "{reason}");
    eprintln!("{reason}");
    false
}

fn agent_uid() -> u32 {
    let passwd = std::fs::read_to_string("/etc/passwd").expect("/etc/passwd");
    find_user(&passwd, AGENT_USER)
        .expect("nobody in /etc/passwd")
        .uid
}

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

/// A directory tree the agent's user can reach: the temp dir, a root-owned data directory
/// (as a volume Docker creates), and an output directory anyone may write.
struct Layout {
    _temp: tempfile::TempDir,
    root: std::path::PathBuf,
    data: std::path::PathBuf,
    out: std::path::PathBuf,
}

fn layout() -> Layout {
    let temp = tempfile::tempdir().expect("tempdir");
    let root = temp.path().to_path_buf();
    chmod(&root, 0o755);
    let data = root.join("data");
    std::fs::create_dir(&data).expect("mkdir data");
    chmod(&data, 0o755);
    assert_eq!(
        std::fs::metadata(&data).expect("stat").uid(),
        0,
        "root-owned"
    );
    let out = root.join("out");
    std::fs::create_dir(&out).expect("mkdir out");
    chmod(&out, 0o777);
    Layout {
        _temp: temp,
        root,
        data,
        out,
    }
}

/// The stand-in agent: records its uid and arguments, writes into `$1` (the data directory
/// given as `-data-dir=`, or `STANDIN_DATA_DIR`), then waits and exits 1 on SIGTERM, as a
/// Consul server does ("Graceful shutdown disabled").
fn write_stand_in(layout: &Layout) -> std::path::PathBuf {
    let script = layout.root.join("fake-consul");
    std::fs::write(
        &script,
        format!(
            r#"#!/bin/sh
out={out}
printf '%s\n' "$@" > "$out/args"
id -u > "$out/uid"
data="$STANDIN_DATA_DIR"
for arg in "$@"; do
    case "$arg" in -data-dir=*) data="${{arg#-data-dir=}}" ;; esac
done
if touch "$data/written-by-agent"; then echo yes > "$out/wrote"; else echo no > "$out/wrote"; fi
touch "$out/done"
trap 'echo "==> Caught signal: terminated"; echo "==> Graceful shutdown disabled. Exiting"; exit 1' TERM
while true; do sleep 0.1; done
"#,
            out = layout.out.display()
        ),
    )
    .expect("write the stand-in");
    chmod(&script, 0o755);
    script
}

async fn wait_done(layout: &Layout, sidecar: &ProcessGuard) {
    let done = layout.out.join("done");
    let log = sidecar.log.display().to_string();
    poll_until(
        Duration::from_secs(20),
        &format!("the stand-in agent to start (sidecar log: {log})"),
        || {
            let found = done.exists();
            async move { found.then_some(()) }
        },
    )
    .await;
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .trim()
        .to_string()
}

#[tokio::test]
async fn the_consul_image_conventions_with_a_stand_in_agent() {
    if !running_as_root("the_consul_image_conventions_with_a_stand_in_agent") {
        return;
    }
    let layout = layout();
    let script = write_stand_in(&layout);
    let config = layout.root.join("config");
    let registry = TestRegistry::start(0, &layout.root.join("registry"), &layout.root, &[]).await;
    let mut command = sidecar(&registry.url(), "consul-image", "c1");
    command
        .args(["--engine", "consul", "--expect", "1"])
        .args(["--advertise", &format!("127.0.0.1:{}", free_port())])
        .args(["--agent-bin", script.to_str().expect("utf-8")])
        .args(["--agent-user", AGENT_USER])
        .args(["--data-dir", layout.data.to_str().expect("utf-8")])
        .args(["--consul-config-dir", config.to_str().expect("utf-8")])
        // Nothing answers here: the stand-in has no API, and none is needed for this test.
        .args([
            "--consul-http",
            &format!("http://127.0.0.1:{}", free_port()),
        ])
        .env(
            "CONSUL_LOCAL_CONFIG",
            r#"{"datacenter":"eu","log_level":"debug"}"#,
        )
        .env("CONSUL_BIND_INTERFACE", "lo")
        .env("CONSUL_CLIENT_INTERFACE", "lo")
        .args(["run", "--", "-ui"]);
    let mut sidecar = ProcessGuard::spawn("c1", command, layout.root.join("c1.log"));
    wait_done(&layout, &sidecar).await;

    let uid = agent_uid();
    assert_eq!(
        read(&layout.out.join("uid")),
        uid.to_string(),
        "runs as {AGENT_USER}"
    );
    assert_eq!(
        std::fs::metadata(&layout.data).expect("stat").uid(),
        uid,
        "the root-owned data directory was given to the agent's user"
    );
    assert_eq!(
        read(&layout.out.join("wrote")),
        "yes",
        "the agent wrote its data directory"
    );
    assert_eq!(
        read(&config.join("local.json")),
        r#"{"datacenter":"eu","log_level":"debug"}"#,
        "CONSUL_LOCAL_CONFIG in the config directory"
    );
    assert_eq!(std::fs::metadata(&config).expect("stat").uid(), uid);
    let args: Vec<String> = read(&layout.out.join("args"))
        .lines()
        .map(str::to_string)
        .collect();
    for expected in [
        "agent".to_string(),
        format!("-data-dir={}", layout.data.display()),
        format!("-config-dir={}", config.display()),
        "-advertise=127.0.0.1".to_string(),
        "-bind=127.0.0.1".to_string(),
        "-client=127.0.0.1".to_string(),
        "-retry-interval=3s".to_string(),
        "-server".to_string(),
        "-bootstrap-expect=1".to_string(),
        "-ui".to_string(),
    ] {
        assert!(args.contains(&expected), "{expected} in {args:?}");
    }
    // The sidecar stays the agent's parent (PID 1 in the image) and passes on its code.
    assert!(
        !sidecar.descendants().is_empty(),
        "the agent is the sidecar's child"
    );
    sidecar.signal(Signal::SIGTERM);
    let status = sidecar.wait_exit(Duration::from_secs(10)).await;
    assert_eq!(
        status.code(),
        Some(1),
        "a Consul server exits 1 on SIGTERM, not 143"
    );
}

#[tokio::test]
async fn the_exec_engine_runs_its_agent_as_the_agent_user_with_its_data_directory() {
    if !running_as_root("the_exec_engine_runs_its_agent_as_the_agent_user_with_its_data_directory")
    {
        return;
    }
    let layout = layout();
    let script = write_stand_in(&layout);
    let registry = TestRegistry::start(0, &layout.root.join("registry"), &layout.root, &[]).await;
    let mut command = exec_sidecar(
        &registry.url(),
        "exec-user",
        "e1",
        &[
            "--agent-user",
            AGENT_USER,
            "--data-dir",
            layout.data.to_str().expect("utf-8"),
        ],
    );
    command.env("STANDIN_DATA_DIR", &layout.data).args([
        "run",
        "--",
        script.to_str().expect("utf-8"),
    ]);
    let mut sidecar = ProcessGuard::spawn("e1", command, layout.root.join("e1.log"));
    wait_done(&layout, &sidecar).await;
    let uid = agent_uid();
    assert_eq!(read(&layout.out.join("uid")), uid.to_string());
    assert_eq!(std::fs::metadata(&layout.data).expect("stat").uid(), uid);
    assert_eq!(read(&layout.out.join("wrote")), "yes");
    sidecar.signal(Signal::SIGTERM);
    assert_eq!(
        sidecar.wait_exit(Duration::from_secs(10)).await.code(),
        Some(1)
    );
}
