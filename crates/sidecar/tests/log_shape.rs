//! Both binaries log JSON of one shape (they share `rollcall-logging`): an operator's log
//! shipper reads the registry's lines and the sidecar's with one mapping.

mod common;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

/// The first JSON line a binary wrote to stderr, as an object.
fn first_json_line(mut command: Command) -> serde_json::Map<String, serde_json::Value> {
    let output = command
        .env("ROLLCALL_LOG", "info")
        .output()
        .expect("run the binary");
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    let line = stderr
        .lines()
        .find(|line| line.starts_with('{'))
        .unwrap_or_else(|| panic!("no JSON line in: {stderr}"));
    match serde_json::from_str(line) {
        Ok(serde_json::Value::Object(object)) => object,
        _ => panic!("not a JSON object: {line}"),
    }
}

#[test]
fn the_registry_and_the_sidecar_write_json_logs_of_one_shape() {
    let temp = tempfile::tempdir().expect("tempdir");
    // The registry fails to listen on a taken port; the sidecar fails to reach a registry.
    let taken = TcpListener::bind("127.0.0.1:0").expect("bind");
    let taken_address = taken.local_addr().expect("address").to_string();
    let mut registry = Command::new(registry_bin());
    registry
        .args(["--log-format", "json", "--listen", &taken_address])
        .arg("--data-dir")
        .arg(temp.path().join("registry"));
    let mut sidecar = Command::new(sidecar_bin());
    sidecar
        .args(["--log-format", "json", "--registry"])
        .arg(format!("http://127.0.0.1:{}", free_port()))
        .args(["--node", "n1", "members"]);

    for (binary, line) in [
        ("registry", first_json_line(registry)),
        ("sidecar", first_json_line(sidecar)),
    ] {
        for key in ["timestamp", "level", "message", "target", "error"] {
            assert!(line.contains_key(key), "{binary}: no {key:?} in {line:?}");
        }
        assert!(
            !line.contains_key("fields"),
            "{binary}: fields are at the top level, not nested: {line:?}"
        );
        assert_eq!(line["level"], "ERROR", "{binary}: {line:?}");
    }
}

/// The registry binary, next to this test's target directory (built with cargo when missing).
fn registry_bin() -> PathBuf {
    // target/debug/deps/<test> -> target/debug/rollcall-registry
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    let bin = dir.join("rollcall-registry");
    if !bin.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .args(["build", "-p", "rollcall-registry"])
            .status()
            .expect("run cargo build -p rollcall-registry");
        assert!(status.success(), "cargo build -p rollcall-registry failed");
    }
    bin
}
