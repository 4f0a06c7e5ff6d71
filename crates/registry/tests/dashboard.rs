//! The dashboard in a real browser: headless Chromium (Debian's `chromium`, installed by
//! `test.sh`) loads the page, sees the members of two clusters, then sees a new member appear
//! without a reload. The screenshot is kept in `target/test-artifacts/dashboard.png`.

mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use common::TestRegistry;
use headless_chrome::protocol::cdp::Page::CaptureScreenshotFormatOption;
use headless_chrome::{Browser, LaunchOptions};
use rollcall_protocol::{AgentStatus, HeartbeatRequest, MemberRole};

fn chromium() -> PathBuf {
    for candidate in [
        "/usr/bin/chromium",
        "/usr/bin/chromium-browser",
        "/usr/bin/google-chrome",
    ] {
        if std::path::Path::new(candidate).exists() {
            return candidate.into();
        }
    }
    panic!("no Chromium found: `bash test.sh` installs Debian's `chromium` package");
}

fn hb(address: &str, role: MemberRole, leader: bool) -> HeartbeatRequest {
    HeartbeatRequest {
        address: address.into(),
        role,
        status: Some(AgentStatus {
            in_raft: Some(true),
            leader: Some("10.1.0.1:2380".into()),
            peers: Some(3),
            is_leader: Some(leader),
        }),
        meta: BTreeMap::new(),
        raft: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_shows_members_and_follows_changes_without_a_reload() {
    let reg = TestRegistry::start(&["--ttl", "60s", "--interval", "5s"]).await;
    let c = reg.client();
    c.heartbeat(
        "payments",
        "pay-1",
        &hb("10.1.0.1:2380", MemberRole::Server, true),
    )
    .await
    .expect("register");
    c.heartbeat(
        "payments",
        "pay-2",
        &hb("10.1.0.2:2380", MemberRole::Server, false),
    )
    .await
    .expect("register");
    c.heartbeat(
        "payments",
        "pay-3",
        &hb("10.1.0.3:2380", MemberRole::Server, false),
    )
    .await
    .expect("register");
    c.heartbeat(
        "search",
        "search-1",
        &hb("10.2.0.1:8301", MemberRole::Server, true),
    )
    .await
    .expect("register");
    c.heartbeat(
        "search",
        "search-agent",
        &hb("10.2.0.9:8301", MemberRole::Agent, false),
    )
    .await
    .expect("register");

    let url = reg.url();
    let (browser_ready_tx, browser_ready_rx) = tokio::sync::oneshot::channel::<()>();
    let (registered_tx, registered_rx) = std::sync::mpsc::channel::<()>();
    let browser_thread = std::thread::spawn(move || -> Result<Vec<u8>, String> {
        let options = LaunchOptions::default_builder()
            .path(Some(chromium()))
            .sandbox(false)
            .window_size(Some((1100, 820)))
            .idle_browser_timeout(Duration::from_secs(60))
            .build()
            .map_err(|e| e.to_string())?;
        let browser = Browser::new(options).map_err(|e| format!("launch Chromium: {e}"))?;
        let tab = browser.new_tab().map_err(|e| e.to_string())?;
        tab.navigate_to(&url).map_err(|e| e.to_string())?;
        tab.wait_until_navigated().map_err(|e| e.to_string())?;
        for node in ["pay-1", "pay-2", "pay-3", "search-1", "search-agent"] {
            tab.wait_for_element(&format!("tr[data-node='{node}']"))
                .map_err(|e| format!("{node} is not shown: {e}"))?;
        }
        let text = tab
            .find_element("main")
            .and_then(|m| m.get_inner_text())
            .map_err(|e| e.to_string())?;
        for expected in ["payments", "search", "10.1.0.2:2380", "leader", "3 servers"] {
            if !text.contains(expected) {
                return Err(format!("the page does not show {expected:?}:\n{text}"));
            }
        }
        // A marker that a reload would wipe out.
        tab.evaluate("window.__rollcallMarker = 'no reload'", false)
            .map_err(|e| e.to_string())?;
        let _ = browser_ready_tx.send(());
        registered_rx
            .recv_timeout(Duration::from_secs(20))
            .map_err(|e| e.to_string())?;
        tab.wait_for_element_with_custom_timeout("tr[data-node='pay-4']", Duration::from_secs(5))
            .map_err(|e| format!("the new member did not appear within 5s: {e}"))?;
        let marker = tab
            .evaluate("window.__rollcallMarker", false)
            .map_err(|e| e.to_string())?;
        if marker.value != Some(serde_json::json!("no reload")) {
            return Err(format!(
                "the page was reloaded: marker is {:?}",
                marker.value
            ));
        }
        tab.capture_screenshot(CaptureScreenshotFormatOption::Png, None, None, true)
            .map_err(|e| e.to_string())
    });

    browser_ready_rx
        .await
        .expect("the browser loaded the dashboard");
    c.heartbeat(
        "payments",
        "pay-4",
        &hb("10.1.0.4:2380", MemberRole::Server, false),
    )
    .await
    .expect("register pay-4");
    registered_tx.send(()).expect("browser thread waits");
    let png = tokio::task::spawn_blocking(move || browser_thread.join())
        .await
        .expect("join")
        .expect("browser thread")
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(png.starts_with(b"\x89PNG"), "a PNG screenshot");
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/test-artifacts");
    std::fs::create_dir_all(&dir).expect("artifact dir");
    std::fs::write(dir.join("dashboard.png"), &png).expect("write screenshot");
}

#[tokio::test]
async fn dashboard_has_an_empty_state_that_says_what_to_run() {
    let reg = TestRegistry::start(&[]).await;
    let html = reg.get_text("/").await;
    assert!(html.contains("No cluster has registered yet"));
    assert!(html.contains("bash start.sh"));
    assert!(html.contains("name=\"viewport\""), "readable on a phone");
}

/// The dashboard runs only its own script and cannot be framed or sniffed; the
/// Chromium test above shows it still follows changes under that policy.
#[tokio::test]
async fn dashboard_pages_carry_a_content_security_policy() {
    let reg = TestRegistry::start(&[]).await;
    for path in ["/", "/dashboard/live"] {
        let answer = reqwest::get(format!("{}{path}", reg.url()))
            .await
            .expect("GET");
        let header = |name: &str| {
            answer
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_string()
        };
        let csp = header("content-security-policy");
        assert!(csp.contains("script-src 'self'"), "{path}: {csp}");
        assert!(
            !csp.contains("unsafe-inline'; script")
                && !csp.contains("script-src 'self' 'unsafe-inline'"),
            "{path}: {csp}"
        );
        assert!(csp.contains("frame-ancestors 'none'"), "{path}: {csp}");
        assert_eq!(header("x-content-type-options"), "nosniff", "{path}");
        assert_eq!(header("referrer-policy"), "no-referrer", "{path}");
    }
    let html = reg.get_text("/").await;
    assert!(!html.contains("<script>"), "no inline script");
    assert!(html.contains(r#"<script src="/dashboard.js">"#));
    let script = reqwest::get(format!("{}/dashboard.js", reg.url()))
        .await
        .expect("GET");
    assert!(script.status().is_success());
}
