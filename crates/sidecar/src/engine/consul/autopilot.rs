//! Autopilot settings that fit the registry's timing, as pure functions: the `autopilot`
//! block given to every server at start, and the change that brings a raft's stored
//! Autopilot configuration to the same values.
//!
//! Consul reads the agent configuration's `autopilot` block only when the datacenter is
//! bootstrapped; afterwards the configuration lives in the raft and changes only through
//! `PUT /v1/operator/autopilot/configuration` (Consul's bootstrap configuration reference and
//! its Autopilot HTTP API). So both are done: every server starts with the block (whichever
//! server bootstraps seeds it), and the leader's sidecar compares the stored configuration
//! with these values and writes the difference with `?cas=<ModifyIndex>`.
//!
//! - `cleanup_dead_servers = true`: Autopilot removes failed and stale servers itself; the
//!   sidecar's own cleanup (`cleanup.rs`) is only the backstop for what it cannot remove.
//! - `min_quorum = floor(expect/2)+1`: Autopilot never prunes below a majority of the raft
//!   the registry was asked for, the same floor as the sidecar's cleanup.
//! - `server_stabilization_time = 2 x interval` (at least 1 s): a new server is promoted to
//!   voter after two registry intervals of health, so the registry sees it in the raft by the
//!   second heartbeat after it became stable. With the registry's default 5 s interval this is
//!   Consul's own default, 10 s.
//! - `last_contact_threshold = interval / 5`, kept within [200 ms, 1 s]: never tighter than
//!   Consul's default (200 ms), and at most a fifth of an interval, so that a server that lost
//!   the leader is reported unhealthy in the next heartbeat, not one interval later.
//!
//! `max_trailing_logs` is not timing and keeps Consul's default (250).

use std::time::Duration;

use serde_json::Value;

use super::args::go_duration;

/// Consul's own default `last_contact_threshold`: the floor.
pub const MIN_LAST_CONTACT_THRESHOLD: Duration = Duration::from_millis(200);
/// The ceiling of `last_contact_threshold`.
pub const MAX_LAST_CONTACT_THRESHOLD: Duration = Duration::from_secs(1);
/// The floor of `server_stabilization_time` (for sub-second test intervals).
pub const MIN_SERVER_STABILIZATION_TIME: Duration = Duration::from_secs(1);

/// The Autopilot settings the sidecar owns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AutopilotSettings {
    pub cleanup_dead_servers: bool,
    pub last_contact_threshold: Duration,
    pub server_stabilization_time: Duration,
    pub min_quorum: u32,
}

/// The settings for a raft of `expect` servers whose members heartbeat every `interval`.
pub fn autopilot_settings(expect: u32, interval: Duration) -> AutopilotSettings {
    AutopilotSettings {
        cleanup_dead_servers: true,
        last_contact_threshold: (interval / 5)
            .clamp(MIN_LAST_CONTACT_THRESHOLD, MAX_LAST_CONTACT_THRESHOLD),
        server_stabilization_time: (interval * 2).max(MIN_SERVER_STABILIZATION_TIME),
        min_quorum: expect / 2 + 1,
    }
}

/// The `autopilot` block as an HCL fragment for `consul agent -hcl=...`.
pub fn autopilot_hcl(settings: &AutopilotSettings) -> String {
    format!(
        "autopilot {{\n  cleanup_dead_servers = {}\n  last_contact_threshold = \"{}\"\n  server_stabilization_time = \"{}\"\n  min_quorum = {}\n}}",
        settings.cleanup_dead_servers,
        go_duration(settings.last_contact_threshold),
        go_duration(settings.server_stabilization_time),
        settings.min_quorum
    )
}

/// True when `CONSUL_LOCAL_CONFIG` sets Autopilot itself: the operator's choice then wins,
/// and the sidecar neither passes its block nor changes the stored configuration.
pub fn local_config_sets_autopilot(local_config: Option<&str>) -> bool {
    local_config
        .and_then(|c| serde_json::from_str::<Value>(c).ok())
        .is_some_and(|v| v.get("autopilot").is_some())
}

/// Reads a Go duration as Consul prints it (`200ms`, `10s`, `1m30s`, `27.291304ms`).
pub fn parse_go_duration(text: &str) -> Option<Duration> {
    let text = text.trim();
    if text == "0" {
        return Some(Duration::ZERO);
    }
    let mut rest = text;
    let mut total = 0f64;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let number_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let number: f64 = rest[..number_end].parse().ok()?;
        rest = &rest[number_end..];
        let unit_end = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let seconds = match &rest[..unit_end] {
            "ns" => 1e-9,
            "us" | "µs" | "μs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return None,
        };
        rest = &rest[unit_end..];
        total += number * seconds;
    }
    Duration::try_from_secs_f64(total).ok()
}

/// The body and `cas` index of the `PUT /v1/operator/autopilot/configuration` that brings
/// the stored configuration (`GET`'s answer) to `wanted`, or `None` when it already holds
/// it. Every other field is sent back as it was read: the `PUT` replaces the whole
/// configuration, and a field left out would be reset to its zero value.
pub fn autopilot_update(
    stored: &str,
    wanted: &AutopilotSettings,
) -> Result<Option<(Value, u64)>, String> {
    let mut config: Value = serde_json::from_str(stored).map_err(|e| {
        format!("/v1/operator/autopilot/configuration has an unexpected shape: {e}")
    })?;
    let object = config
        .as_object_mut()
        .ok_or("/v1/operator/autopilot/configuration is not an object")?;
    let index = object
        .get("ModifyIndex")
        .and_then(Value::as_u64)
        .ok_or("/v1/operator/autopilot/configuration has no ModifyIndex")?;
    let duration = |key: &str| {
        object
            .get(key)
            .and_then(Value::as_str)
            .and_then(parse_go_duration)
    };
    let holds = object.get("CleanupDeadServers").and_then(Value::as_bool)
        == Some(wanted.cleanup_dead_servers)
        && duration("LastContactThreshold") == Some(wanted.last_contact_threshold)
        && duration("ServerStabilizationTime") == Some(wanted.server_stabilization_time)
        && object.get("MinQuorum").and_then(Value::as_u64) == Some(u64::from(wanted.min_quorum));
    if holds {
        return Ok(None);
    }
    object.insert(
        "CleanupDeadServers".into(),
        Value::Bool(wanted.cleanup_dead_servers),
    );
    object.insert(
        "LastContactThreshold".into(),
        Value::String(go_duration(wanted.last_contact_threshold)),
    );
    object.insert(
        "ServerStabilizationTime".into(),
        Value::String(go_duration(wanted.server_stabilization_time)),
    );
    object.insert("MinQuorum".into(), Value::from(wanted.min_quorum));
    Ok(Some((config, index)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_follow_the_registry_timing() {
        let ms = Duration::from_millis;
        let s = Duration::from_secs;
        for (expect, interval, threshold, stabilization, min_quorum) in [
            // The registry's default interval: Consul's own stabilization time.
            (3, s(5), ms(1000), s(10), 2),
            (5, s(5), ms(1000), s(10), 3),
            (1, s(5), ms(1000), s(10), 1),
            (4, s(5), ms(1000), s(10), 3),
            (7, s(5), ms(1000), s(10), 4),
            // Short test timing: never below Consul's 200 ms, never below 1 s to stabilize.
            (3, s(1), ms(200), s(2), 2),
            (3, ms(300), ms(200), s(1), 2),
            (3, s(2), ms(400), s(4), 2),
            // Long intervals: the contact threshold stays at 1 s.
            (3, s(30), ms(1000), s(60), 2),
        ] {
            let settings = autopilot_settings(expect, interval);
            assert_eq!(
                settings,
                AutopilotSettings {
                    cleanup_dead_servers: true,
                    last_contact_threshold: threshold,
                    server_stabilization_time: stabilization,
                    min_quorum,
                },
                "expect {expect}, interval {interval:?}"
            );
            assert!(
                settings.server_stabilization_time <= (interval * 2).max(s(1)),
                "at most two intervals"
            );
        }
    }

    #[test]
    fn the_block_is_hcl_with_go_durations() {
        assert_eq!(
            autopilot_hcl(&autopilot_settings(3, Duration::from_secs(5))),
            "autopilot {\n  cleanup_dead_servers = true\n  last_contact_threshold = \"1s\"\n  server_stabilization_time = \"10s\"\n  min_quorum = 2\n}"
        );
        assert!(
            autopilot_hcl(&autopilot_settings(3, Duration::from_secs(1)))
                .contains("last_contact_threshold = \"200ms\"")
        );
    }

    #[test]
    fn go_durations_are_read() {
        for (text, expected) in [
            ("0s", Some(Duration::ZERO)),
            ("0", Some(Duration::ZERO)),
            ("200ms", Some(Duration::from_millis(200))),
            ("10s", Some(Duration::from_secs(10))),
            ("1m30s", Some(Duration::from_secs(90))),
            ("1h0m0s", Some(Duration::from_secs(3600))),
            ("1.5s", Some(Duration::from_millis(1500))),
            ("", None),
            ("10", None),
            ("ten seconds", None),
        ] {
            assert_eq!(parse_go_duration(text), expected, "{text:?}");
        }
        let contact = parse_go_duration("27.291304ms").expect("parsed");
        assert!(contact > Duration::from_millis(27) && contact < Duration::from_millis(28));
    }

    #[test]
    fn local_config_with_autopilot_is_the_operators_choice() {
        for (config, expected) in [
            (None, false),
            (Some(r#"{"datacenter":"eu"}"#), false),
            (Some(r#"{"autopilot":{"min_quorum":5}}"#), true),
            (Some("not json"), false),
        ] {
            assert_eq!(local_config_sets_autopilot(config), expected, "{config:?}");
        }
    }
}
