//! etcd's command lines: a member's (new, joining or restarting) and a gateway's, as pure
//! functions of [`EtcdArgs`], tested by tables.

use crate::config::join_host_port;

/// An etcd URL: `http://host:port`, an IPv6 host in brackets.
pub fn url(host: &str, port: u16) -> String {
    format!("http://{}", join_host_port(host, port))
}

/// Everything etcd's command line depends on.
#[derive(Debug, Clone)]
pub struct EtcdArgs<'a> {
    pub node: &'a str,
    pub cluster: &'a str,
    pub data_dir: &'a str,
    pub advertise_host: &'a str,
    /// The host of the peer URL this member advertises (`--etcd-peer-host`, else the
    /// advertised host).
    pub peer_host: &'a str,
    pub listen_host: &'a str,
    pub client_port: u16,
    pub peer_port: u16,
    pub passthrough: &'a [String],
    /// The nonce of the raft the registry named, when it named one.
    pub raft_nonce: Option<&'a str>,
}

/// `--initial-cluster-token`: `<cluster>-<nonce>` when the registry named the raft, so that
/// two rafts under one cluster name get different cluster IDs and etcd itself refuses peer
/// traffic between them; the cluster name alone when it named none (a registry of an older
/// version), as before.
pub fn cluster_token(cluster: &str, raft_nonce: Option<&str>) -> String {
    match raft_nonce {
        Some(nonce) => format!("{cluster}-{nonce}"),
        None => cluster.to_string(),
    }
}

/// How a member's cluster membership is set on its command line.
#[derive(Debug, Clone, Copy)]
pub enum Initial<'a> {
    /// A new one-member cluster.
    New,
    /// Joining the cluster whose member list is given (`name=peer_url,...`).
    Existing(&'a str),
    /// Restarting from the data directory, which knows the cluster already.
    FromData,
    /// Restarting from the data directory as a new one-member raft that keeps the data
    /// (etcd's `--force-new-cluster`): quorum-loss recovery on a survivor.
    FromDataForcingNewCluster,
}

pub fn member_args(a: &EtcdArgs<'_>, initial: Initial<'_>) -> Vec<String> {
    let mut args = vec![
        format!("--name={}", a.node),
        format!("--data-dir={}", a.data_dir),
        format!("--listen-client-urls={}", listen_client_urls(a)),
        format!(
            "--advertise-client-urls={}",
            url(a.advertise_host, a.client_port)
        ),
        format!("--listen-peer-urls={}", url(a.listen_host, a.peer_port)),
        format!(
            "--initial-advertise-peer-urls={}",
            url(a.peer_host, a.peer_port)
        ),
    ];
    match initial {
        Initial::New => {
            args.push(format!(
                "--initial-cluster={}={}",
                a.node,
                url(a.peer_host, a.peer_port)
            ));
            args.push("--initial-cluster-state=new".into());
            args.push(format!(
                "--initial-cluster-token={}",
                cluster_token(a.cluster, a.raft_nonce)
            ));
        }
        Initial::Existing(members) => {
            args.push(format!("--initial-cluster={members}"));
            args.push("--initial-cluster-state=existing".into());
            args.push(format!(
                "--initial-cluster-token={}",
                cluster_token(a.cluster, a.raft_nonce)
            ));
        }
        Initial::FromData => {}
        Initial::FromDataForcingNewCluster => args.push("--force-new-cluster".into()),
    }
    args.extend(a.passthrough.iter().cloned());
    args
}

/// Where etcd serves clients: the listen host and, when that is one specific non-loopback
/// address, also `127.0.0.1` on the same port, so that `etcdctl` inside the container works
/// without `--endpoints` (its default is `127.0.0.1:2379`). A wildcard listen host covers
/// loopback already (and a second listener on the same port would fail to bind), and a
/// loopback listen host is loopback.
pub fn listen_client_urls(a: &EtcdArgs<'_>) -> String {
    let client_url = |host: &str| url(host, a.client_port);
    let specific_non_loopback = a
        .listen_host
        .parse::<std::net::IpAddr>()
        .is_ok_and(|ip| !ip.is_loopback() && !ip.is_unspecified());
    if specific_non_loopback {
        format!("{},{}", client_url(a.listen_host), client_url("127.0.0.1"))
    } else {
        client_url(a.listen_host)
    }
}

pub fn gateway_args(a: &EtcdArgs<'_>, join: &[String]) -> Vec<String> {
    let mut args = vec![
        "gateway".to_string(),
        "start".to_string(),
        format!(
            "--listen-addr={}",
            join_host_port(a.listen_host, a.client_port)
        ),
        format!("--endpoints={}", join.join(",")),
    ];
    args.extend(a.passthrough.iter().cloned());
    args
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args<'a>(passthrough: &'a [String]) -> EtcdArgs<'a> {
        EtcdArgs {
            node: "n2",
            cluster: "c",
            data_dir: "/data",
            advertise_host: "10.0.0.2",
            peer_host: "10.0.0.2",
            listen_host: "10.0.0.2",
            client_port: 2379,
            peer_port: 2380,
            passthrough,
            raft_nonce: None,
        }
    }

    #[test]
    fn the_cluster_token_names_the_raft_when_the_registry_named_one() {
        let with = EtcdArgs {
            raft_nonce: Some("00ff00ff00ff00ff"),
            ..args(&[])
        };
        // (initial state, registry named a raft, token)
        for (initial, named, token) in [
            (
                Initial::New,
                true,
                "--initial-cluster-token=c-00ff00ff00ff00ff",
            ),
            (Initial::New, false, "--initial-cluster-token=c"),
            (
                Initial::Existing("n1=http://10.0.0.1:2380"),
                true,
                "--initial-cluster-token=c-00ff00ff00ff00ff",
            ),
            (
                Initial::Existing("n1=http://10.0.0.1:2380"),
                false,
                "--initial-cluster-token=c",
            ),
        ] {
            let a = if named { with.clone() } else { args(&[]) };
            assert!(
                member_args(&a, initial).contains(&token.to_string()),
                "{initial:?} {named}"
            );
        }
        assert!(!member_args(&with, Initial::FromData)
            .iter()
            .any(|a| a.starts_with("--initial-cluster-token")));
    }

    #[test]
    fn bootstrap_joins_and_restarts_have_distinct_command_lines() {
        let extra = vec!["--snapshot-count=1000".to_string()];
        let new = member_args(&args(&extra), Initial::New);
        assert!(new.contains(&"--initial-cluster=n2=http://10.0.0.2:2380".to_string()));
        assert!(new.contains(&"--initial-cluster-state=new".to_string()));
        assert_eq!(new.last(), Some(&extra[0]));

        let existing = member_args(
            &args(&[]),
            Initial::Existing("n1=http://10.0.0.1:2380,n2=http://10.0.0.2:2380"),
        );
        assert!(existing.contains(&"--initial-cluster-state=existing".to_string()));
        assert!(existing.contains(
            &"--initial-cluster=n1=http://10.0.0.1:2380,n2=http://10.0.0.2:2380".to_string()
        ));

        let restart = member_args(&args(&[]), Initial::FromData);
        assert!(!restart.iter().any(|a| a.starts_with("--initial-cluster")));
        assert!(!restart.contains(&"--force-new-cluster".to_string()));
        let forced = member_args(&args(&extra), Initial::FromDataForcingNewCluster);
        assert!(!forced.iter().any(|a| a.starts_with("--initial-cluster")));
        // Before the pass-through flags, like every flag the sidecar decides.
        assert_eq!(
            &forced[forced.len() - 2..],
            ["--force-new-cluster".to_string(), extra[0].clone()]
        );
        assert!(restart.contains(&"--advertise-client-urls=http://10.0.0.2:2379".to_string()));
        for member in [&new, &existing, &restart] {
            assert!(member.contains(
                &"--listen-client-urls=http://10.0.0.2:2379,http://127.0.0.1:2379".to_string()
            ));
            assert!(member.contains(&"--listen-peer-urls=http://10.0.0.2:2380".to_string()));
        }

        let gateway = gateway_args(
            &args(&[]),
            &["10.0.0.1:2379".into(), "10.0.0.3:2379".into()],
        );
        assert_eq!(
            gateway,
            [
                "gateway",
                "start",
                "--listen-addr=10.0.0.2:2379",
                "--endpoints=10.0.0.1:2379,10.0.0.3:2379"
            ]
        );
    }

    #[test]
    fn a_peer_host_names_the_advertised_peer_url_while_etcd_listens_on_the_address() {
        let named = EtcdArgs {
            peer_host: "5c1d0e2f9a7b",
            ..args(&[])
        };
        let new = member_args(&named, Initial::New);
        for expected in [
            "--initial-advertise-peer-urls=http://5c1d0e2f9a7b:2380",
            "--initial-cluster=n2=http://5c1d0e2f9a7b:2380",
            "--listen-peer-urls=http://10.0.0.2:2380",
            "--advertise-client-urls=http://10.0.0.2:2379",
        ] {
            assert!(new.contains(&expected.to_string()), "{expected} in {new:?}");
        }
    }

    #[test]
    fn clients_can_also_reach_etcd_on_loopback_unless_it_listens_there_already() {
        // (listen host, client port, --listen-client-urls)
        let table = [
            (
                "10.0.0.2",
                2379,
                "http://10.0.0.2:2379,http://127.0.0.1:2379",
            ),
            // Another client port: loopback on that same port.
            (
                "10.0.0.2",
                23791,
                "http://10.0.0.2:23791,http://127.0.0.1:23791",
            ),
            (
                "fd00::2",
                2379,
                "http://[fd00::2]:2379,http://127.0.0.1:2379",
            ),
            // Advertised on loopback: nothing to add.
            ("127.0.0.1", 2379, "http://127.0.0.1:2379"),
            ("127.0.0.5", 2379, "http://127.0.0.5:2379"),
            ("::1", 2379, "http://[::1]:2379"),
            // A hostname (`localhost` too) listens on every address, loopback included; a
            // second listener on 127.0.0.1 and the same port would fail to bind.
            ("0.0.0.0", 2379, "http://0.0.0.0:2379"),
        ];
        for (listen_host, client_port, expected) in table {
            let a = EtcdArgs {
                listen_host,
                client_port,
                ..args(&[])
            };
            assert_eq!(listen_client_urls(&a), expected, "{listen_host}");
            assert!(
                member_args(&a, Initial::New).contains(&format!("--listen-client-urls={expected}"))
            );
        }
    }
}
