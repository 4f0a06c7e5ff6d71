//! What the Consul engine learns from its host once, at start, before the command line is
//! built: interface addresses (`CONSUL_BIND_INTERFACE`, `CONSUL_CLIENT_INTERFACE`, the
//! advertise interface), the advertised host's IP, and the official image's config
//! directory conventions (`-config-dir`, `CONSUL_LOCAL_CONFIG` as `local.json`).
//!
//! The decisions are pure functions of what was read (`interface_ipv4`, `advertise_ip`);
//! the reads around them are thin.

use std::net::IpAddr;
use std::path::Path;

/// Every interface's addresses, as `getifaddrs` lists them: `(interface name, address)`.
pub fn host_interfaces() -> Vec<(String, IpAddr)> {
    let Ok(addresses) = nix::ifaddrs::getifaddrs() else {
        return Vec::new();
    };
    addresses
        .filter_map(|entry| {
            let address = entry.address?;
            let ip = if let Some(v4) = address.as_sockaddr_in() {
                IpAddr::V4(v4.ip())
            } else {
                IpAddr::V6(address.as_sockaddr_in6()?.ip())
            };
            Some((entry.interface_name, ip))
        })
        .collect()
}

/// The first IPv4 address of `interface`, as the official image's entrypoint takes it
/// (`ip -o -4 addr list $IF | head -n1`). An interface without one is an error, as there.
pub fn interface_ipv4(interfaces: &[(String, IpAddr)], interface: &str) -> Result<IpAddr, String> {
    interfaces
        .iter()
        .find(|(name, ip)| name == interface && ip.is_ipv4())
        .map(|(_, ip)| *ip)
        .ok_or_else(|| {
            let known: Vec<&str> = interfaces.iter().map(|(name, _)| name.as_str()).collect();
            format!("interface {interface:?} has no IPv4 address (interfaces with addresses: {known:?})")
        })
}

/// Where `-advertise`'s IP came from, for the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdvertiseSource {
    /// `--advertise` was already an IP.
    Literal,
    /// `--consul-advertise-interface`'s address.
    Interface(String),
    /// The advertised host name, resolved once at start.
    Resolved(String),
}

/// Picks `-advertise`'s IP: an advertise interface's address when one is named, else the
/// advertised host when it is an IP, else one of the addresses the name resolved to
/// (`resolved`, looked up only in that case): a non-loopback IPv4 first, as Consul prefers
/// IPv4 itself.
pub fn advertise_ip(
    host: &str,
    interface: Option<&str>,
    interfaces: &[(String, IpAddr)],
    resolved: Option<Result<Vec<IpAddr>, String>>,
) -> Result<(IpAddr, AdvertiseSource), String> {
    if let Some(interface) = interface {
        let ip = interface_ipv4(interfaces, interface)?;
        return Ok((ip, AdvertiseSource::Interface(interface.to_string())));
    }
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok((ip, AdvertiseSource::Literal));
    }
    let addresses = resolved
        .unwrap_or_else(|| Err("it was not looked up".into()))
        .map_err(|e| format!("the advertised host {host:?} does not resolve: {e}"))?;
    let rank = |ip: &IpAddr| (ip.is_loopback(), !ip.is_ipv4());
    addresses
        .iter()
        .min_by_key(|ip| rank(ip))
        .map(|ip| (*ip, AdvertiseSource::Resolved(host.to_string())))
        .ok_or_else(|| format!("the advertised host {host:?} resolves to no address"))
}

/// Resolves `host` through /etc/hosts and DNS (hickory, as reqwest does: the static
/// binary's getaddrinfo cannot load NSS modules in Alpine).
pub async fn resolve_host(host: &str) -> Result<Vec<IpAddr>, String> {
    let resolver = hickory_resolver::Resolver::builder_tokio()
        .map_err(|e| format!("cannot read the resolver configuration: {e}"))?
        .build();
    let lookup = resolver.lookup_ip(host).await.map_err(|e| e.to_string())?;
    Ok(lookup.iter().collect())
}

/// Whether to pass `-config-dir`, and what to write first: `CONSUL_LOCAL_CONFIG` goes to
/// `local.json` in the config directory (created when missing), as the official image's
/// entrypoint writes it; without it, the directory is passed only when it exists, so that a
/// Consul outside the image does not fail on a missing `/consul/config`.
pub fn config_dir_wanted(config_dir: &Path, local_config: Option<&str>) -> bool {
    local_config.is_some() || config_dir.is_dir()
}

/// Checks that `CONSUL_LOCAL_CONFIG` is JSON (Consul would refuse it at start with a less
/// clear line) and writes it to `<config_dir>/local.json`.
pub fn write_local_config(config_dir: &Path, local_config: &str) -> Result<(), String> {
    serde_json::from_str::<serde_json::Value>(local_config)
        .map_err(|e| format!("CONSUL_LOCAL_CONFIG is not JSON: {e}"))?;
    std::fs::create_dir_all(config_dir)
        .map_err(|e| format!("cannot create {}: {e}", config_dir.display()))?;
    let path = config_dir.join("local.json");
    std::fs::write(&path, local_config).map_err(|e| format!("cannot write {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn interfaces() -> Vec<(String, IpAddr)> {
        [
            ("lo", "127.0.0.1"),
            ("lo", "::1"),
            ("eth0", "fe80::1"),
            ("eth0", "172.18.0.3"),
            ("eth1", "10.5.0.7"),
            ("eth2", "fd00::7"),
        ]
        .iter()
        .map(|(name, ip)| (name.to_string(), ip.parse().expect("ip")))
        .collect()
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("ip")
    }

    #[test]
    fn an_interface_gives_its_first_ipv4_address() {
        let interfaces = interfaces();
        assert_eq!(interface_ipv4(&interfaces, "eth0"), Ok(ip("172.18.0.3")));
        assert_eq!(interface_ipv4(&interfaces, "eth1"), Ok(ip("10.5.0.7")));
        assert!(interface_ipv4(&interfaces, "eth2").is_err(), "IPv6 only");
        assert!(interface_ipv4(&interfaces, "eth9").is_err(), "absent");
    }

    #[test]
    fn advertise_ip_table() {
        let interfaces = interfaces();
        let resolved = |ips: &[&str]| Some(Ok(ips.iter().map(|i| ip(i)).collect()));
        for (what, host, interface, lookup, expected) in [
            (
                "an IP is passed as it is",
                "10.0.0.1",
                None,
                None,
                Ok((ip("10.0.0.1"), AdvertiseSource::Literal)),
            ),
            (
                "a name is resolved, and its IPv4 address preferred",
                "consul-1",
                None,
                resolved(&["fd00::1", "172.18.0.4"]),
                Ok((
                    ip("172.18.0.4"),
                    AdvertiseSource::Resolved("consul-1".into()),
                )),
            ),
            (
                "a loopback address only when there is nothing else",
                "consul-1",
                None,
                resolved(&["127.0.1.1", "10.0.0.5"]),
                Ok((ip("10.0.0.5"), AdvertiseSource::Resolved("consul-1".into()))),
            ),
            (
                "a named interface wins over the host",
                "consul-1",
                Some("eth1"),
                None,
                Ok((ip("10.5.0.7"), AdvertiseSource::Interface("eth1".into()))),
            ),
            (
                "a named interface wins over an IP, too",
                "10.0.0.1",
                Some("eth0"),
                None,
                Ok((ip("172.18.0.3"), AdvertiseSource::Interface("eth0".into()))),
            ),
        ] {
            assert_eq!(
                advertise_ip(host, interface, &interfaces, lookup),
                expected,
                "{what}"
            );
        }
        for (what, host, interface, lookup) in [
            (
                "a name that does not resolve",
                "nowhere",
                None,
                Some(Err("NXDOMAIN".to_string())),
            ),
            (
                "a name that resolves to nothing",
                "empty",
                None,
                Some(Ok(vec![])),
            ),
            ("an interface without IPv4", "consul-1", Some("eth2"), None),
        ] {
            assert!(
                advertise_ip(host, interface, &interfaces, lookup).is_err(),
                "{what}"
            );
        }
    }

    #[test]
    fn local_config_must_be_json_and_lands_in_local_json() {
        let temp = tempfile::tempdir().expect("tempdir");
        let dir = temp.path().join("config");
        assert!(
            !config_dir_wanted(&dir, None),
            "absent and nothing to write"
        );
        assert!(config_dir_wanted(&dir, Some("{}")));
        assert!(write_local_config(&dir, "datacenter = \"eu\"").is_err());
        write_local_config(&dir, r#"{"datacenter":"eu"}"#).expect("written");
        assert_eq!(
            std::fs::read_to_string(dir.join("local.json")).expect("read"),
            r#"{"datacenter":"eu"}"#
        );
        assert!(config_dir_wanted(&dir, None), "exists now");
    }
}
