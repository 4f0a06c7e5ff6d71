//! Heartbeats against a registry that goes away: a failed heartbeat is retried after a
//! quarter of the interval rather than a whole one, so a registry restarted on an empty data
//! directory lists the member again well within one interval of coming back.

mod common;

use std::time::{Duration, Instant};

use common::*;

const CLUSTER: &str = "retry";
/// Long enough that a retry one whole interval later (the old behaviour) cannot pass for a
/// quick one; short enough that the registry's startup grace keeps the test quick.
const RETRY_TEST_INTERVAL: Duration = Duration::from_secs(2);
const RETRY_TEST_TIMING: &[&str] = &[
    "--ttl",
    "6s",
    "--interval",
    "2s",
    "--startup-grace",
    "2s",
    "--quiet-period",
    "2s",
];
/// A retry comes a quarter of the interval after a failure, at most.
const RETRY_AFTER_FAILURE: Duration = Duration::from_millis(500);
/// Request time, the registry's answer and the poll's 100 ms granularity.
const SCHEDULING_MARGIN: Duration = Duration::from_millis(300);

#[tokio::test]
async fn a_failed_heartbeat_is_retried_within_a_quarter_interval_not_a_whole_one() {
    let temp = tempfile::tempdir().expect("tempdir");
    let logs = temp.path();
    let mut registry = TestRegistry::start_with_timing(
        0,
        &temp.path().join("registry-a"),
        logs,
        RETRY_TEST_TIMING,
        &[],
    )
    .await;
    let mut command = exec_sidecar(&registry.url(), CLUSTER, "steady", &[]);
    command.arg("run").args(run_script("exec sleep 600"));
    let sidecar = ProcessGuard::spawn("steady", command, logs.join("steady.log"));
    poll_until(Duration::from_secs(15), "the node in the registry", || {
        registry.listing(CLUSTER, "steady")
    })
    .await;

    // The registry dies. Restart it (empty) the moment the sidecar reports a failed
    // heartbeat: a retry one interval later would then come 1.6 to 2 s after the restart.
    registry.kill();
    poll_until(
        RETRY_TEST_INTERVAL + Duration::from_secs(2),
        "a failed heartbeat in the sidecar's log",
        || {
            let sidecar = &sidecar;
            async move {
                sidecar
                    .log_text()
                    .contains("heartbeat failed")
                    .then_some(())
            }
        },
    )
    .await;
    let port = registry.port;
    drop(registry);
    let registry = TestRegistry::start_with_timing(
        port,
        &temp.path().join("registry-b"),
        logs,
        RETRY_TEST_TIMING,
        &[],
    )
    .await;
    let restarted = Instant::now();
    poll_until(
        RETRY_TEST_INTERVAL,
        "the empty registry to relearn the member",
        || registry.listing(CLUSTER, "steady"),
    )
    .await;
    let relisted_after = restarted.elapsed();
    eprintln!(
        "MEASURED empty registry relisted the member {relisted_after:?} after it came back (interval {RETRY_TEST_INTERVAL:?})"
    );
    assert!(
        relisted_after <= RETRY_AFTER_FAILURE + SCHEDULING_MARGIN,
        "relisted after {relisted_after:?}"
    );

    // Back at the normal pace, and the log says so once.
    poll_until(
        Duration::from_secs(2),
        "the sidecar to log that heartbeats succeed again",
        || {
            let sidecar = &sidecar;
            async move {
                sidecar
                    .log_text()
                    .contains("back to the normal interval")
                    .then_some(())
            }
        },
    )
    .await;
    // The log goes to a file, not a terminal: no colour escape codes in it.
    assert!(
        !sidecar.log_text().contains('\u{1b}'),
        "ANSI escape codes in a log that is not a terminal"
    );
}
