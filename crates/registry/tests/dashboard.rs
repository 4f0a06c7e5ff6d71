//! The dashboard in a real browser: headless Chromium (Debian's `chromium`, installed by
//! `test.sh`) loads the page, sees the members of two clusters, then sees a new member appear
//! without a reload. The screenshot is kept in `target/test-artifacts/dashboard.png`.
//!
//! The page's bounds (issue 14): a cluster lists at most 100 members, with the total and a link
//! to its JSON; the page's size does not grow with a cluster; the page is rendered from a
//! snapshot that owns its data, taken in one short hold of the registry's lock.

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
        raft_members: None,
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

/// Registers `n_servers` servers (the first one the leader) named `z-server-N` and `n_agents`
/// agents named `a-agent-NNNN` in `cluster`: agents sort first by name, so a page that lists by
/// name alone would show no server.
async fn register_many(reg: &TestRegistry, cluster: &str, n_servers: usize, n_agents: usize) {
    use futures_util::StreamExt;
    let client = reg.client();
    let servers = (1..=n_servers).map(|i| {
        (
            format!("z-server-{i}"),
            hb(&format!("10.9.0.{i}:2380"), MemberRole::Server, i == 1),
        )
    });
    let agents = (0..n_agents).map(|i| {
        (
            format!("a-agent-{i:04}"),
            hb(
                &format!("10.8.{}.{}:8301", i / 250, i % 250 + 1),
                MemberRole::Agent,
                false,
            ),
        )
    });
    let all: Vec<(String, HeartbeatRequest)> = servers.chain(agents).collect();
    futures_util::stream::iter(all)
        .map(|(node, request)| {
            let client = client.clone();
            async move {
                client
                    .heartbeat(cluster, &node, &request)
                    .await
                    .unwrap_or_else(|e| panic!("register {node}: {e}"))
            }
        })
        .buffer_unordered(32)
        .collect::<Vec<_>>()
        .await;
}

fn member_rows(html: &str) -> usize {
    html.matches("<tr data-node=").count()
}

/// With 300 members and a cap of 100, both the page and its live part list 100 rows (the
/// leader and the servers among them, although every agent's name sorts before theirs), say
/// there are 300 and link to the JSON that lists them all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_lists_at_most_100_members_of_a_cluster_with_the_total_and_a_link() {
    assert_eq!(rollcall_registry::dashboard::MAX_MEMBERS_SHOWN, 100);
    let reg = TestRegistry::start(&["--ttl", "60s", "--interval", "5s"]).await;
    register_many(&reg, "big", 3, 297).await;
    for path in ["/", "/dashboard/live"] {
        let html = reg.get_text(path).await;
        assert_eq!(member_rows(&html), 100, "{path}");
        assert!(html.contains("Showing 100 of 300 live members"), "{path}");
        assert!(
            html.contains(r#"<a href="/v1/clusters/big/members">"#),
            "{path}: a link to the cluster's JSON"
        );
        let leader = html
            .find(r#"data-node="z-server-1""#)
            .expect("the leader is listed");
        let server = html
            .find(r#"data-node="z-server-3""#)
            .expect("servers are listed");
        let agent = html
            .find(r#"data-node="a-agent-0000""#)
            .expect("then agents");
        assert!(
            leader < server && server < agent,
            "{path}: leader, servers, agents"
        );
        assert!(
            !html.contains(r#"data-node="a-agent-0097""#),
            "{path}: the 98th agent by name is past the cap"
        );
    }
    let listed = reg
        .client()
        .members("big", None)
        .await
        .expect("the JSON lists every member");
    assert_eq!(listed.members.len(), 300);
}

/// The page's size does not grow with the cluster: with 2,000 members it stays under 128 KiB
/// (listing them all made it 511 KB; one 10,000-member cluster made it 4.4 MB).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_page_stays_under_a_fixed_size_with_2000_members() {
    let reg = TestRegistry::start(&["--ttl", "60s", "--interval", "5s"]).await;
    register_many(&reg, "huge", 5, 1_995).await;
    for path in ["/", "/dashboard/live"] {
        let html = reg.get_text(path).await;
        assert!(
            html.len() < 128 * 1024,
            "{path} is {} bytes with 2,000 members",
            html.len()
        );
        assert!(html.contains("Showing 100 of 2000 live members"), "{path}");
    }
}

/// The page is rendered from a snapshot that owns its data: the registry's lock is not held
/// while the HTML is built, so a heartbeat taken between the snapshot and the render succeeds
/// (with the lock held across the render, it would deadlock on this thread), and the render
/// shows the membership as it was at the snapshot.
#[tokio::test]
async fn dashboard_renders_from_a_snapshot_that_holds_no_lock() {
    use rollcall_registry::dashboard::{render_live, render_page, BOUNDS};
    use rollcall_registry::membership::DashboardSnapshot;

    fn owns_its_data<T: Send + 'static>(_: &T) {}

    let temp = tempfile::tempdir().expect("tempdir");
    let membership = open_membership(&temp);
    let (_, _durability) = membership
        .heartbeat(
            "payments",
            "pay-1",
            hb("10.1.0.1:2380", MemberRole::Server, true),
        )
        .expect("register pay-1");

    let snapshot: DashboardSnapshot = membership.dashboard_snapshot(BOUNDS);
    owns_its_data(&snapshot);
    let (_, _durability) = membership
        .heartbeat(
            "payments",
            "pay-2",
            hb("10.1.0.2:2380", MemberRole::Server, false),
        )
        .expect("a heartbeat while a snapshot is out");
    let html = render_page(&snapshot).into_string();
    assert!(html.contains(r#"data-node="pay-1""#));
    assert!(
        !html.contains(r#"data-node="pay-2""#),
        "the render shows the snapshot, not the state after it"
    );
    let now = render_live(&membership.dashboard_snapshot(BOUNDS)).into_string();
    assert!(now.contains(r#"data-node="pay-2""#));
}

/// The registry's membership in `temp`, in this process, with the default configuration: for
/// tests that take the dashboard's snapshot themselves.
fn open_membership(
    temp: &tempfile::TempDir,
) -> std::sync::Arc<rollcall_registry::membership::Membership> {
    use clap::Parser;
    let data_dir = temp.path().join("data").display().to_string();
    let config = rollcall_registry::config::Cli::try_parse_from([
        "rollcall-registry",
        "--data-dir",
        &data_dir,
    ])
    .expect("arguments")
    .serve
    .validate()
    .expect("config");
    rollcall_registry::open_membership(&config).expect("open")
}

/// The bounds hold together: at most so many clusters (the largest first, the rest counted),
/// so many members of each, and so many rows on the whole page, however the rows fall.
#[tokio::test]
async fn dashboard_snapshot_keeps_within_its_cluster_member_and_row_bounds() {
    use rollcall_registry::membership::DashboardBounds;

    let temp = tempfile::tempdir().expect("tempdir");
    let membership = open_membership(&temp);
    // Cluster c4 has 4 members, c3 has 5, c2 has 6, c1 has 7: largest first is c1, c2, c3.
    for (cluster, n) in [("c4", 4), ("c3", 5), ("c2", 6), ("c1", 7)] {
        for i in 0..n {
            let (_, _durability) = membership
                .heartbeat(
                    cluster,
                    &format!("{cluster}-n{i}"),
                    hb(&format!("10.0.0.{}:8301", i + 1), MemberRole::Agent, false),
                )
                .expect("register");
        }
    }
    let snapshot = membership.dashboard_snapshot(DashboardBounds {
        clusters: 3,
        members_per_cluster: 4,
        rows: 6,
    });
    assert_eq!(snapshot.clusters_total, 4);
    let shown: Vec<(&str, usize, usize)> = snapshot
        .clusters
        .iter()
        .map(|c| (c.summary.cluster.as_str(), c.members.len(), c.members_total))
        .collect();
    assert_eq!(shown, [("c1", 4, 7), ("c2", 2, 6), ("c3", 0, 5)]);
    let first: Vec<&str> = snapshot.clusters[0]
        .members
        .iter()
        .map(|m| m.node.as_str())
        .collect();
    assert_eq!(
        first,
        ["c1-n0", "c1-n1", "c1-n2", "c1-n3"],
        "agents by name"
    );
    let html = rollcall_registry::dashboard::render_live(&snapshot).into_string();
    assert!(html.contains("Showing 0 of 5 live members"));
    assert!(html.contains("and 1 more clusters"));
}
