//! Validation of everything a client names: clusters, nodes, addresses and metadata.
//!
//! Names are DNS-label-like so that they are safe in URLs, sled keys, logs and shell
//! commands: 1 to 63 ASCII letters, digits, `-`, `_` or `.`, starting and ending with a
//! letter or a digit. `_` and `.` are allowed because Docker Compose names containers
//! `project_service_1` and people use FQDNs as node names.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, Ipv6Addr};

use crate::error::ErrorCode;

/// Longest cluster or node name.
pub const MAX_NAME_LEN: usize = 63;
/// Longest `host:port` address, the longest DNS name plus a port.
pub const MAX_ADDRESS_LEN: usize = 253 + 6;
/// Most metadata entries on one member.
pub const MAX_METADATA_ENTRIES: usize = 16;
/// Longest metadata key.
pub const MAX_METADATA_KEY_LEN: usize = 63;
/// Longest metadata value.
pub const MAX_METADATA_VALUE_LEN: usize = 256;
/// Largest raft a claim may ask for. Consul and etcd advise 3 or 5 servers; 7 is the most
/// either documents, and a bound keeps a typo from reserving thousands of server slots.
pub const MAX_EXPECT: u32 = 7;
/// Longest string in an agent's status (the leader it reports).
pub const MAX_STATUS_STRING_LEN: usize = 259;

/// Why a value was refused, with the error code the registry answers with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ValidationError {
    pub code: ErrorCode,
    pub message: String,
}

impl ValidationError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ValidationError {
            code,
            message: message.into(),
        }
    }
}

/// What a name is for, so that an error says which name was wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameKind {
    Cluster,
    Node,
}

impl NameKind {
    fn code(self) -> ErrorCode {
        match self {
            NameKind::Cluster => ErrorCode::InvalidClusterName,
            NameKind::Node => ErrorCode::InvalidNodeName,
        }
    }
    fn label(self) -> &'static str {
        match self {
            NameKind::Cluster => "cluster name",
            NameKind::Node => "node name",
        }
    }
}

/// Checks a cluster or node name.
pub fn validate_name(kind: NameKind, name: &str) -> Result<(), ValidationError> {
    let fail = |why: String| {
        Err(ValidationError::new(
            kind.code(),
            format!("{} {:?} {}", kind.label(), truncate(name), why),
        ))
    };
    if name.is_empty() {
        return fail("is empty".into());
    }
    if name.len() > MAX_NAME_LEN {
        return fail(format!("is longer than {MAX_NAME_LEN} characters"));
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
    {
        return fail(format!(
            "contains {bad:?}; use ASCII letters, digits, '-', '_' or '.'"
        ));
    }
    let bytes = name.as_bytes();
    if !bytes[0].is_ascii_alphanumeric() || !bytes[bytes.len() - 1].is_ascii_alphanumeric() {
        return fail("must start and end with a letter or a digit".into());
    }
    Ok(())
}

/// Checks a `host:port` address: an IPv4 address, a bracketed IPv6 address or a DNS name,
/// then a port from 1 to 65535.
pub fn validate_address(address: &str) -> Result<(), ValidationError> {
    let fail = |why: &str| {
        Err(ValidationError::new(
            ErrorCode::InvalidAddress,
            format!("address {:?} {why}", truncate(address)),
        ))
    };
    if address.is_empty() {
        return fail("is empty; expected host:port");
    }
    if address.len() > MAX_ADDRESS_LEN {
        return fail("is too long");
    }
    let (host, port) = if let Some(rest) = address.strip_prefix('[') {
        let Some((host, after)) = rest.split_once(']') else {
            return fail("has an unclosed '['; expected [ipv6]:port");
        };
        let Some(port) = after.strip_prefix(':') else {
            return fail("has no port; expected [ipv6]:port");
        };
        if host.parse::<Ipv6Addr>().is_err() {
            return fail("has an invalid IPv6 address in brackets");
        }
        (host, port)
    } else {
        let Some((host, port)) = address.rsplit_once(':') else {
            return fail("has no port; expected host:port");
        };
        if host.contains(':') {
            return fail("has an IPv6 address without brackets; expected [ipv6]:port");
        }
        if !valid_host(host) {
            return fail("has an invalid host; expected an IPv4 address or a DNS name");
        }
        (host, port)
    };
    let _ = host;
    if port.is_empty() || port.len() > 5 || !port.bytes().all(|b| b.is_ascii_digit()) {
        return fail("has an invalid port; expected a number from 1 to 65535");
    }
    match port.parse::<u32>() {
        Ok(p) if (1..=65535).contains(&p) => Ok(()),
        _ => fail("has a port outside 1 to 65535"),
    }
}

/// An IPv4 address or a DNS name (labels of letters, digits, '-' and '_', 1 to 63 long).
fn valid_host(host: &str) -> bool {
    if host.is_empty() || host.len() > 253 {
        return false;
    }
    if host.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return host.parse::<Ipv4Addr>().is_ok();
    }
    host.split('.').all(|label| {
        !label.is_empty()
            && label.len() <= 63
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            && !label.starts_with('-')
            && !label.ends_with('-')
    })
}

/// Checks a member's metadata map against its bounds.
pub fn validate_metadata(meta: &BTreeMap<String, String>) -> Result<(), ValidationError> {
    let fail = |why: String| Err(ValidationError::new(ErrorCode::InvalidMetadata, why));
    if meta.len() > MAX_METADATA_ENTRIES {
        return fail(format!(
            "metadata has {} entries; at most {MAX_METADATA_ENTRIES} are allowed",
            meta.len()
        ));
    }
    for (key, value) in meta {
        if key.is_empty() || key.len() > MAX_METADATA_KEY_LEN {
            return fail(format!(
                "metadata key {:?} must be 1 to {MAX_METADATA_KEY_LEN} bytes",
                truncate(key)
            ));
        }
        if key.chars().any(|c| c.is_control()) {
            return fail(format!(
                "metadata key {:?} contains a control character",
                truncate(key)
            ));
        }
        if value.len() > MAX_METADATA_VALUE_LEN {
            return fail(format!(
                "metadata value of {key:?} is longer than {MAX_METADATA_VALUE_LEN} bytes"
            ));
        }
    }
    Ok(())
}

/// Checks `expect`, the number of servers a raft wants.
pub fn validate_expect(expect: u32) -> Result<(), ValidationError> {
    if (1..=MAX_EXPECT).contains(&expect) {
        Ok(())
    } else {
        Err(ValidationError::new(
            ErrorCode::InvalidExpect,
            format!("expect is {expect}; it must be from 1 to {MAX_EXPECT}"),
        ))
    }
}

/// Keeps error messages short when the input is huge.
fn truncate(s: &str) -> String {
    const SHOWN: usize = 80;
    if s.len() <= SHOWN {
        s.to_string()
    } else {
        let mut end = SHOWN;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        format!("{}...", &s[..end])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_accept_docker_style_and_reject_the_rest() {
        for ok in [
            "a",
            "default",
            "rollcall_raft_1",
            "node-1.example.com",
            "A1",
            &"x".repeat(63),
        ] {
            assert!(validate_name(NameKind::Node, ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "-a",
            "a-",
            ".a",
            "a b",
            "a/b",
            "ä",
            "a\n",
            &"x".repeat(64),
            "_a",
        ] {
            let err = validate_name(NameKind::Cluster, bad).expect_err(bad);
            assert_eq!(err.code, ErrorCode::InvalidClusterName);
        }
    }

    #[test]
    fn addresses_need_a_host_and_a_valid_port() {
        for ok in [
            "10.0.0.1:8300",
            "[::1]:2380",
            "consul-1:8301",
            "node.example.com:1",
            "a:65535",
        ] {
            assert!(validate_address(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "10.0.0.1",
            "10.0.0.1:",
            "10.0.0.1:0",
            "10.0.0.1:65536",
            "10.0.0.1:-1",
            ":80",
            "::1:80",
            "[::1]",
            "[zz]:80",
            "999.1.1.1:80",
            "host name:80",
            "-host:80",
            "a:+80",
            "a:0080000",
        ] {
            let err = validate_address(bad).expect_err(bad);
            assert_eq!(err.code, ErrorCode::InvalidAddress, "{bad}");
        }
    }

    #[test]
    fn metadata_is_bounded() {
        let mut meta = BTreeMap::new();
        meta.insert("dc".to_string(), "eu-1".to_string());
        assert!(validate_metadata(&meta).is_ok());
        meta.insert(String::new(), "x".into());
        assert!(validate_metadata(&meta).is_err());
        let too_many: BTreeMap<_, _> = (0..17).map(|i| (format!("k{i}"), String::new())).collect();
        assert!(validate_metadata(&too_many).is_err());
    }

    #[test]
    fn expect_is_bounded() {
        assert!(validate_expect(0).is_err());
        assert!(validate_expect(1).is_ok());
        assert!(validate_expect(MAX_EXPECT).is_ok());
        assert!(validate_expect(MAX_EXPECT + 1).is_err());
    }
}
