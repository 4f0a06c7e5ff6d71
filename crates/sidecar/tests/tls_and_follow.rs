//! The sidecar against a registry that serves HTTPS (it must verify the certificate), and
//! `members --follow` riding the registry's blocking reads.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
use rollcall_protocol::{HeartbeatRequest, MemberRole, RegistryClient};

/// A CA and a server certificate for 127.0.0.1 signed by it, written as PEM files.
fn write_ca_and_server_cert(
    dir: &Path,
    name: &str,
) -> (std::path::PathBuf, std::path::PathBuf, std::path::PathBuf) {
    let ca_key = KeyPair::generate().expect("ca key");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).expect("ca cert");
    let key = KeyPair::generate().expect("server key");
    let params = CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
        .expect("params");
    let cert = params.signed_by(&key, &ca, &ca_key).expect("server cert");
    let ca_path = dir.join(format!("{name}-ca.pem"));
    let cert_path = dir.join(format!("{name}-cert.pem"));
    let key_path = dir.join(format!("{name}-key.pem"));
    std::fs::write(&ca_path, ca.pem()).expect("write ca");
    std::fs::write(&cert_path, cert.pem()).expect("write cert");
    std::fs::write(&key_path, key.serialize_pem()).expect("write key");
    (ca_path, cert_path, key_path)
}

fn members_command(url: &str, cluster: &str, extra: &[&str]) -> Command {
    let mut command = sidecar(url, cluster, "probe");
    command
        .args(["--advertise", "127.0.0.1:1"])
        .arg("members")
        .args(extra);
    command
}

fn hb(address: &str) -> HeartbeatRequest {
    HeartbeatRequest {
        raft_members: None,
        address: address.into(),
        role: MemberRole::Server,
        status: None,
        meta: BTreeMap::new(),
        raft: None,
    }
}

#[tokio::test]
async fn the_sidecar_verifies_the_registrys_tls_certificate() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (ca, cert, key) = write_ca_and_server_cert(dir.path(), "registry");
    let (other_ca, _, _) = write_ca_and_server_cert(dir.path(), "stranger");
    let tls = [
        "--tls-cert",
        cert.to_str().expect("UTF-8 path"),
        "--tls-key",
        key.to_str().expect("UTF-8 path"),
    ];
    let args: Vec<&str> = REGISTRY_TIMING.iter().copied().chain(tls).collect();
    let registry = TestRegistry::serve(0, &dir.path().join("data"), dir.path(), &args);
    let port = registry.port;
    let url = format!("https://127.0.0.1:{port}");
    let pem = std::fs::read(&ca).expect("read ca");
    let mut builder = reqwest::Client::builder();
    for c in rollcall_protocol::client::load_ca_bundle(&pem).expect("ca bundle") {
        builder = builder.add_root_certificate(c);
    }
    let trusted =
        RegistryClient::with_http_client(url.clone(), None, builder.build().expect("client"));
    poll_until(
        Duration::from_secs(10),
        "the HTTPS registry's /health",
        || {
            let trusted = trusted.clone();
            async move { trusted.health().await.ok() }
        },
    )
    .await;
    trusted
        .heartbeat("tls", "n1", &hb("10.0.0.1:2379"))
        .await
        .expect("heartbeat over TLS");

    // The sidecar with the CA: verified, answered.
    let out = members_command(&url, "tls", &[])
        .arg("--ca-cert")
        .arg(&ca)
        .output()
        .expect("run sidecar");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "10.0.0.1:2379\n");

    // Without it, or with another CA, the certificate is not trusted: unreachable (69).
    for extra in [
        vec![],
        vec!["--ca-cert".to_string(), other_ca.display().to_string()],
    ] {
        let mut command = members_command(&url, "tls", &[]);
        command.args(&extra);
        let out = command.output().expect("run sidecar");
        assert_eq!(
            out.status.code(),
            Some(69),
            "{extra:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // Plain HTTP to the HTTPS port gets no answer either.
    let plain = RegistryClient::new(format!("http://127.0.0.1:{port}"), None).expect("client");
    assert!(plain.health().await.is_err());
}

#[tokio::test]
async fn members_follow_prints_the_new_targets_within_a_second_of_a_change() {
    let dir = tempfile::tempdir().expect("tempdir");
    let registry = TestRegistry::start(0, &dir.path().join("data"), dir.path(), &[]).await;
    registry
        .client
        .heartbeat("follow", "n1", &hb("10.0.0.1:2379"))
        .await
        .expect("register");
    let log = dir.path().join("follow.log");
    let follower = ProcessGuard::spawn(
        "members --follow",
        members_command(&registry.url(), "follow", &["--follow", "--wait", "30s"]),
        log,
    );
    poll_until(Duration::from_secs(10), "the first list", || async {
        follower
            .log_text()
            .lines()
            .any(|l| l == "10.0.0.1:2379")
            .then_some(())
    })
    .await;
    // Let the follower settle into its blocking read.
    tokio::time::sleep(Duration::from_millis(300)).await;
    registry
        .client
        .heartbeat("follow", "n2", &hb("10.0.0.2:2379"))
        .await
        .expect("register n2");
    let changed = Instant::now();
    poll_until(Duration::from_secs(5), "the new target", || async {
        follower
            .log_text()
            .lines()
            .any(|l| l == "10.0.0.2:2379")
            .then_some(())
    })
    .await;
    let took = changed.elapsed();
    assert!(
        took < Duration::from_secs(1),
        "the change was printed after {took:?}"
    );
}
