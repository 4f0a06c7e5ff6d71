//! `consul agent` command lines, as pure functions of what the registry granted and what the
//! sidecar learnt about its host at start (addresses already resolved to IPs).

use std::net::IpAddr;
use std::time::Duration;

use crate::config::CONSUL_SERF_LAN_PORT;

/// Flags the sidecar decides itself; passing them through would contradict the registry.
const RESERVED_FLAGS: &[&str] = &[
    "bootstrap",
    "bootstrap-expect",
    "server",
    "node",
    "data-dir",
];

/// Everything `consul agent`'s command line depends on.
#[derive(Debug, Clone)]
pub struct ConsulArgs<'a> {
    pub node: &'a str,
    pub data_dir: &'a str,
    /// `-config-dir`, when the directory exists or `CONSUL_LOCAL_CONFIG` was written into it.
    pub config_dir: Option<&'a str>,
    /// `-advertise`: always an IP, since Consul takes nothing else there (a name is resolved
    /// at start, or an interface's address is used).
    pub advertise_ip: Option<IpAddr>,
    /// `-bind`, from `CONSUL_BIND_INTERFACE`.
    pub bind_ip: Option<IpAddr>,
    /// `-client`, from `CONSUL_CLIENT_INTERFACE`.
    pub client_ip: Option<IpAddr>,
    pub serf_lan_port: u16,
    pub expect: u32,
    pub server: bool,
    /// `-retry-interval`: short, so that a server granted at the same instant as the one it
    /// joins tries again within seconds once that one listens, not after Consul's 30 s.
    pub retry_interval: Duration,
    pub join: &'a [String],
    /// Servers: the `autopilot` block as an HCL fragment (`-hcl`), see `autopilot.rs`.
    pub autopilot_hcl: Option<&'a str>,
    pub passthrough: &'a [String],
}

/// The arguments after the `consul` program name. Pass-through flags come last, so that
/// (as with the official image's `CMD`) they win over the sidecar's `-bind` and `-client`.
pub fn agent_args(a: &ConsulArgs<'_>) -> Vec<String> {
    let mut args = vec![
        "agent".to_string(),
        format!("-node={}", a.node),
        format!("-data-dir={}", a.data_dir),
    ];
    if let Some(dir) = a.config_dir {
        args.push(format!("-config-dir={dir}"));
    }
    if let Some(ip) = a.advertise_ip {
        args.push(format!("-advertise={ip}"));
    }
    if let Some(ip) = a.bind_ip {
        args.push(format!("-bind={ip}"));
    }
    if let Some(ip) = a.client_ip {
        args.push(format!("-client={ip}"));
    }
    if a.serf_lan_port != CONSUL_SERF_LAN_PORT {
        args.push(format!("-serf-lan-port={}", a.serf_lan_port));
    }
    args.push(format!("-retry-interval={}", go_duration(a.retry_interval)));
    if a.server {
        args.push("-server".into());
        args.push(format!("-bootstrap-expect={}", a.expect));
        if let Some(hcl) = a.autopilot_hcl {
            args.push(format!("-hcl={hcl}"));
        }
    }
    for target in a.join {
        args.push(format!("-retry-join={target}"));
    }
    args.extend(a.passthrough.iter().cloned());
    args
}

/// A duration as Go's `time.ParseDuration` reads it (`3s`, `500ms`).
pub fn go_duration(duration: Duration) -> String {
    if duration.subsec_nanos() == 0 {
        format!("{}s", duration.as_secs())
    } else if duration.subsec_nanos().is_multiple_of(1_000_000) {
        format!("{}ms", duration.as_millis())
    } else {
        format!("{}ns", duration.as_nanos())
    }
}

/// The first pass-through flag that the sidecar decides itself, if any.
pub fn reserved_flag(args: &[String]) -> Option<String> {
    args.iter().find_map(|arg| {
        let name = arg.trim_start_matches('-');
        let name = name.split('=').next().unwrap_or(name);
        (arg.starts_with('-') && RESERVED_FLAGS.contains(&name)).then(|| arg.clone())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserved_flags_are_found_in_every_spelling() {
        for (args, expected) in [
            (vec!["-ui"], None),
            (vec!["-bootstrap"], Some("-bootstrap")),
            (vec!["--bootstrap=true"], Some("--bootstrap=true")),
            (
                vec!["-ui", "-bootstrap-expect=5"],
                Some("-bootstrap-expect=5"),
            ),
            (vec!["-server"], Some("-server")),
            (vec!["-retry-join=10.0.0.9"], None),
            (vec!["-datacenter=eu"], None),
            (vec!["bootstrap"], None),
        ] {
            let args: Vec<String> = args.into_iter().map(String::from).collect();
            assert_eq!(reserved_flag(&args).as_deref(), expected, "{args:?}");
        }
    }

    #[test]
    fn durations_are_written_as_go_reads_them() {
        for (duration, expected) in [
            (Duration::from_secs(3), "3s"),
            (Duration::from_secs(30), "30s"),
            (Duration::from_millis(500), "500ms"),
            (Duration::from_millis(1500), "1500ms"),
            (Duration::from_nanos(1_000_001), "1000001ns"),
        ] {
            assert_eq!(go_duration(duration), expected);
        }
    }
}
