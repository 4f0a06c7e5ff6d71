//! Invariants shared by rollcall's fuzz targets.
//!
//! Each `check_*` function runs one validator on an arbitrary input and, when the input is
//! accepted, asserts what every other part of rollcall relies on: names are safe as URL path
//! segments and sled key parts, addresses split back into a host and a port from 1 to 65535
//! and can be put into the `http://{address}` URLs the sidecar builds. A failed assertion is
//! a crash the fuzzer reports with its input.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};

use rollcall_protocol::validate::{MAX_ADDRESS_LEN, MAX_NAME_LEN};
use rollcall_protocol::{validate_address, validate_name, ErrorCode, NameKind};

/// Runs `validate_name` for both kinds and checks an accepted name's shape.
pub fn check_name(name: &str) {
    for (kind, code) in [
        (NameKind::Cluster, ErrorCode::InvalidClusterName),
        (NameKind::Node, ErrorCode::InvalidNodeName),
    ] {
        match validate_name(kind, name) {
            Ok(()) => {
                assert!(!name.is_empty() && name.len() <= MAX_NAME_LEN, "{name:?}");
                // The store keys are `{cluster}/{node}` and split back at the first '/'.
                assert!(!name.contains('/'), "{name:?}");
                // Safe in a URL path segment, a log line and a shell word without quoting.
                assert!(
                    name.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.')),
                    "{name:?}"
                );
                assert_ne!(name, ".");
                assert_ne!(name, "..");
            }
            Err(e) => {
                assert_eq!(e.code, code, "{name:?}");
                // Messages quote at most a bounded prefix of the input.
                assert!(e.message.len() < 1024, "{name:?}: {}", e.message.len());
            }
        }
    }
}

/// Runs `validate_address` and checks that an accepted address splits sanely.
pub fn check_address(address: &str) {
    let Err(e) = validate_address(address) else {
        check_accepted_address(address);
        return;
    };
    assert_eq!(e.code, ErrorCode::InvalidAddress, "{address:?}");
    assert!(e.message.len() < 1024, "{address:?}: {}", e.message.len());
}

fn check_accepted_address(address: &str) {
    assert!(address.len() <= MAX_ADDRESS_LEN, "{address:?}");
    let (host, port) = address
        .rsplit_once(':')
        .unwrap_or_else(|| panic!("accepted address {address:?} has no ':'"));
    let port: u16 = port
        .parse()
        .unwrap_or_else(|e| panic!("accepted address {address:?} has port {port:?}: {e}"));
    assert_ne!(port, 0, "{address:?}");
    assert!(!host.is_empty(), "{address:?}");
    // Nothing that would end or extend a URL authority, or split etcd's
    // `--initial-cluster=name=http://host:port,...`.
    assert!(
        !address.bytes().any(|b| b.is_ascii_whitespace()
            || b.is_ascii_control()
            || matches!(b, b'/' | b'?' | b'#' | b'@' | b',' | b'=' | b'%' | b'\\')),
        "{address:?}"
    );
    if let Some(inner) = host.strip_prefix('[') {
        let inner = inner
            .strip_suffix(']')
            .unwrap_or_else(|| panic!("accepted address {address:?} has an unclosed '['"));
        inner
            .parse::<Ipv6Addr>()
            .unwrap_or_else(|e| panic!("accepted address {address:?}: {e}"));
        let parsed: SocketAddr = address
            .parse()
            .unwrap_or_else(|e| panic!("accepted IPv6 address {address:?}: {e}"));
        assert_eq!(parsed.port(), port);
    } else {
        assert!(!host.contains(':'), "{address:?}");
        assert!(!host.contains('[') && !host.contains(']'), "{address:?}");
        if host.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
            host.parse::<Ipv4Addr>()
                .unwrap_or_else(|e| panic!("accepted numeric host in {address:?}: {e}"));
        }
    }
    // The sidecar builds `http://{address}` for etcd; hyper and reqwest must read back the
    // same port.
    let uri: axum::http::Uri = format!("http://{address}/")
        .parse()
        .unwrap_or_else(|e| panic!("accepted address {address:?} is not a URL authority: {e}"));
    assert_eq!(uri.port_u16(), Some(port), "{address:?}");
    let url = url::Url::parse(&format!("http://{address}/"))
        .unwrap_or_else(|e| panic!("accepted address {address:?} does not parse as a URL: {e}"));
    assert_eq!(url.port_or_known_default(), Some(port), "{address:?}");
}
