//! Validation of everything a client names: clusters, nodes, addresses and metadata.
//!
//! Names are DNS-label-like so that they are safe in URLs, sled keys, logs and shell
//! commands: 1 to 63 ASCII letters, digits, `-`, `_` or `.`, starting and ending with a
//! letter or a digit. `_` and `.` are allowed because Docker Compose names containers
//! `project_service_1` and people use FQDNs as node names.

use std::collections::BTreeMap;
use std::net::Ipv6Addr;

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
/// The most live members a reset may name in `force` (so that the longest list fits in the
/// default body limit; a cluster with more live members stops some before a reset).
pub const MAX_FORCED_NODES: usize = 500;
/// Most members a heartbeat's `raft_members` may list (voters, learners and dead members).
pub const MAX_RAFT_MEMBERS: usize = 32;
/// Most peer URLs one raft member may list.
pub const MAX_RAFT_MEMBER_URLS: usize = 8;
/// The largest generation on the wire: JSON numbers are exact up to 2^53 - 1.
pub const MAX_GENERATION: u64 = 9_007_199_254_740_991;

// The patterns below are the single source of truth: the validators match them, and the
// registry's OpenAPI document publishes them (a test checks the two are the same), so a client
// generated from the document accepts exactly what the registry accepts. They use only regex
// syntax that Rust, ECMAScript and Python read alike.

/// A cluster or node name: 1 to 63 ASCII letters, digits, `.`, `_` or `-`, starting and ending
/// with a letter or a digit.
pub const NAME_PATTERN: &str = "^[A-Za-z0-9]([A-Za-z0-9._-]{0,61}[A-Za-z0-9])?$";

/// `host:port`: an IPv4 address, a DNS name whose last label starts with a letter or `_`, or a
/// bracketed IPv6 address (without zone or embedded IPv4), then a port from 1 to 65535. A DNS
/// label may not have `--` as its third and fourth characters: that form is reserved for IDNA
/// (`xn--…`), and URL parsers (reqwest's among them) refuse such a label unless it is valid
/// punycode, which would leave the address unusable for joining. Found by the fuzzer.
pub const ADDRESS_PATTERN: &str = concat!(
    "^(",
    "((25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])\\.){3}(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])",
    "|([A-Za-z0-9_](?:[A-Za-z0-9_]|[A-Za-z0-9_-][A-Za-z0-9_](?:[A-Za-z0-9_-]{0,59}[A-Za-z0-9_])?|[A-Za-z0-9_-]-[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,58}[A-Za-z0-9_])?)?\\.)*[A-Za-z_](?:[A-Za-z0-9_]|[A-Za-z0-9_-][A-Za-z0-9_](?:[A-Za-z0-9_-]{0,59}[A-Za-z0-9_])?|[A-Za-z0-9_-]-[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,58}[A-Za-z0-9_])?)?",
    "|\\[(",
    "([0-9a-fA-F]{1,4}:){7}[0-9a-fA-F]{1,4}",
    "|([0-9a-fA-F]{1,4}:){1,7}:",
    "|([0-9a-fA-F]{1,4}:){1,6}:[0-9a-fA-F]{1,4}",
    "|([0-9a-fA-F]{1,4}:){1,5}(:[0-9a-fA-F]{1,4}){1,2}",
    "|([0-9a-fA-F]{1,4}:){1,4}(:[0-9a-fA-F]{1,4}){1,3}",
    "|([0-9a-fA-F]{1,4}:){1,3}(:[0-9a-fA-F]{1,4}){1,4}",
    "|([0-9a-fA-F]{1,4}:){1,2}(:[0-9a-fA-F]{1,4}){1,5}",
    "|[0-9a-fA-F]{1,4}:(:[0-9a-fA-F]{1,4}){1,6}",
    "|:((:[0-9a-fA-F]{1,4}){1,7}|:)",
    ")\\]",
    "):([1-9][0-9]{0,3}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5])$",
);

/// Text without control characters (metadata keys, the leader an agent reports).
/// No control characters: C0, DEL and C1, and the invisible ones that reorder or break the
/// text a dashboard or a log shows (bidirectional overrides, isolates and marks, line and
/// paragraph separators).
pub const NO_CONTROL_PATTERN: &str =
    "^[^\\x00-\\x1f\\x7f-\\x9f\\u061c\\u200e\\u200f\\u2028-\\u202e\\u2066-\\u2069]*$";

/// A blocking read's `wait`: a whole number and a unit.
pub const WAIT_PATTERN: &str = "^[0-9]{1,9}(ms|s|m|h)$";

fn compiled(
    cell: &'static std::sync::OnceLock<regex::Regex>,
    pattern: &str,
) -> &'static regex::Regex {
    // The patterns are constants checked by the tests, so compiling them cannot fail.
    cell.get_or_init(|| regex::Regex::new(pattern).expect("a valid constant pattern"))
}

/// Whether `s` matches [`NAME_PATTERN`].
pub fn matches_name(s: &str) -> bool {
    static RE: std::sync::OnceLock<regex::Regex> = std::sync::OnceLock::new();
    compiled(&RE, NAME_PATTERN).is_match(s)
}

/// Whether `s` matches [`ADDRESS_PATTERN`].
pub fn matches_address(s: &str) -> bool {
    static RE: std::sync::OnceLock<regex::Regex> = std::sync::OnceLock::new();
    s.len() <= MAX_ADDRESS_LEN && compiled(&RE, ADDRESS_PATTERN).is_match(s)
}

/// Whether `s` matches [`WAIT_PATTERN`].
pub fn matches_wait(s: &str) -> bool {
    static RE: std::sync::OnceLock<regex::Regex> = std::sync::OnceLock::new();
    compiled(&RE, WAIT_PATTERN).is_match(s)
}

fn has_control(s: &str) -> bool {
    s.chars().any(|c| {
        c.is_control()
            || matches!(c, '\u{061c}' | '\u{200e}' | '\u{200f}' | '\u{2028}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
    })
}

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
    debug_assert!(matches_name(name));
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
    if !address.contains(':') {
        return fail("has no port; expected host:port");
    }
    if matches_address(address) {
        return Ok(());
    }
    // Say what is wrong, as precisely as the shape allows.
    let (host, port) = if let Some(rest) = address.strip_prefix('[') {
        match rest.split_once(']') {
            None => return fail("has an unclosed '['; expected [ipv6]:port"),
            Some((host, after)) => match after.strip_prefix(':') {
                None => return fail("has no port; expected [ipv6]:port"),
                Some(port) => {
                    if host.parse::<Ipv6Addr>().is_err() {
                        return fail("has an invalid IPv6 address in brackets");
                    }
                    (host, port)
                }
            },
        }
    } else {
        match address.rsplit_once(':') {
            Some((host, _)) if host.contains(':') => {
                return fail("has an IPv6 address without brackets; expected [ipv6]:port")
            }
            Some(pair) => pair,
            None => return fail("has no port; expected host:port"),
        }
    };
    if !port.is_empty() && port.len() <= 5 && port.bytes().all(|b| b.is_ascii_digit()) {
        if let Ok(p) = port.parse::<u32>() {
            if (1..=65535).contains(&p) && !port.starts_with('0') {
                let _ = host;
                return fail("has a host that is neither an IPv4 address, a DNS name (whose last label starts with a letter) nor a supported [ipv6] form");
            }
        }
    }
    fail("has an invalid port; expected a number from 1 to 65535 without leading zeros")
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
        if key.is_empty() || key.chars().count() > MAX_METADATA_KEY_LEN {
            return fail(format!(
                "metadata key {:?} must be 1 to {MAX_METADATA_KEY_LEN} bytes",
                truncate(key)
            ));
        }
        if has_control(key) {
            return fail(format!(
                "metadata key {:?} contains a control character",
                truncate(key)
            ));
        }
        if value.chars().count() > MAX_METADATA_VALUE_LEN {
            return fail(format!(
                "metadata value of {key:?} is longer than {MAX_METADATA_VALUE_LEN} bytes"
            ));
        }
        if has_control(value) {
            return fail(format!(
                "metadata value of {:?} contains a control character",
                truncate(key)
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

/// Checks a generation: at most [`MAX_GENERATION`], so that every JSON reader reads it exactly.
pub fn validate_generation(generation: u64) -> Result<(), ValidationError> {
    if generation > MAX_GENERATION {
        return Err(ValidationError::new(
            ErrorCode::InvalidBody,
            format!("generation must be at most {MAX_GENERATION}"),
        ));
    }
    Ok(())
}

/// Checks the leader an agent reports: at most [`MAX_STATUS_STRING_LEN`] characters, no control.
pub fn validate_status_text(field: &str, text: &str) -> Result<(), ValidationError> {
    if text.chars().count() > MAX_STATUS_STRING_LEN || has_control(text) {
        return Err(ValidationError::new(
            ErrorCode::InvalidBody,
            format!("{field} must be at most {MAX_STATUS_STRING_LEN} characters without control characters"),
        ));
    }
    Ok(())
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
    fn patterns_compile_and_agree_with_the_validators() {
        for ok in ["a", "node-1", "rollcall_raft_1", "A.b"] {
            assert!(
                matches_name(ok) && validate_name(NameKind::Node, ok).is_ok(),
                "{ok}"
            );
        }
        for bad in ["", "-a", "a.", "a b", "é"] {
            assert!(
                !matches_name(bad) && validate_name(NameKind::Node, bad).is_err(),
                "{bad}"
            );
        }
        for ok in [
            "1.2.3.4:1",
            "[::1]:80",
            "[2001:db8::1]:2380",
            "etcd-1:2379",
            "_srv.example.com:53",
            "a:65535",
        ] {
            assert!(matches_address(ok), "{ok}");
        }
        for bad in [
            "999.1.1.1:1",
            "1.2.3.4:0",
            "1.2.3.4:01",
            "10.0.0.1x:1",
            "[::ffff:1.2.3.4]:1",
            "a:65536",
        ] {
            assert!(
                !matches_address(bad) && validate_address(bad).is_err(),
                "{bad}"
            );
        }
        assert!(
            matches_wait("30s")
                && matches_wait("500ms")
                && !matches_wait("1m30s")
                && !matches_wait("5 s")
        );
        assert!(regex::Regex::new(NO_CONTROL_PATTERN)
            .expect("pattern")
            .is_match("leader-1"));
    }

    #[test]
    fn control_characters_include_bidi_overrides_and_separators() {
        let pattern = regex::Regex::new(NO_CONTROL_PATTERN).expect("pattern");
        for bad in [
            "a\u{0}b",
            "a\u{1b}[31m",
            "a\r\nb",
            "a\u{202e}b",
            "a\u{2066}b",
            "a\u{2028}b",
            "a\u{200f}",
        ] {
            assert!(has_control(bad), "{bad:?}");
            assert!(!pattern.is_match(bad), "{bad:?}");
        }
        for good in ["leader-1", "10.0.0.1:8300", "zürich", "日本"] {
            assert!(!has_control(good), "{good:?}");
            assert!(pattern.is_match(good), "{good:?}");
        }
        let mut meta = BTreeMap::new();
        meta.insert("k".to_string(), "v\u{202e}".to_string());
        assert!(validate_metadata(&meta).is_err());
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
