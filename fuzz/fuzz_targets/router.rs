//! The registry's real axum router, in-process, with sled in a temporary directory: arbitrary
//! methods, paths, queries, tokens and bodies never get a 5xx other than `503 not_ready`, every
//! error (4xx or 5xx) is a JSON `{code, message}`, and every request finishes.
//!
//! The input is structured (`arbitrary`) so that the fuzzer reaches the handlers instead of
//! spending its time on URI syntax: routes, names, bodies and tokens are picked from shapes
//! the API knows, each with a raw escape hatch.

#![no_main]

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use arbitrary::Arbitrary;
use axum::body::Body;
use axum::http::{header, HeaderValue, Method, Request, StatusCode};
use axum::Router;
use http_body_util::BodyExt;
use libfuzzer_sys::fuzz_target;
use rollcall_registry::api::{router, AppState, HttpLimits};
use rollcall_registry::auth::{Secret, Tokens};
use rollcall_registry::membership::{Limits, Membership, Timing};
use rollcall_registry::store::Store;
use tower::ServiceExt;

const REGISTRY_TOKEN: &str = "fuzz-registry-token";
const CLUSTER_TOKEN: &str = "fuzz-cluster-token";
/// The cluster `CLUSTER_TOKEN` may write to.
const TOKEN_CLUSTER: &str = "c1";
/// A request that takes longer than this is a hang, which the fuzzer reports.
const HANG: Duration = Duration::from_secs(20);

struct Harness {
    runtime: tokio::runtime::Runtime,
    app: Router,
    /// Keeps the sled directory alive for the whole run.
    _data_dir: tempfile::TempDir,
}

fn harness() -> &'static Harness {
    static HARNESS: OnceLock<Harness> = OnceLock::new();
    HARNESS.get_or_init(|| {
        // tmpfs when there is one: the durable writes' fsyncs cost nothing there.
        let base = if std::path::Path::new("/dev/shm").is_dir() {
            std::path::PathBuf::from("/dev/shm")
        } else {
            std::env::temp_dir()
        };
        let data_dir = tempfile::Builder::new()
            .prefix("rollcall-fuzz-router-")
            .tempdir_in(base)
            .expect("temporary data directory");
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime");
        let app = runtime.block_on(async {
            let store = Store::open(data_dir.path(), 8 << 20).expect("open sled");
            let timing = Timing {
                ttl: Duration::from_secs(15),
                interval: Duration::from_secs(5),
                // Decide claims at once, so the fuzzer reaches the claim rules.
                startup_grace: Duration::ZERO,
                quiet_period: Duration::ZERO,
                rebootstrap_after: None,
            };
            // Small bounds, so the fuzzer reaches the 429s.
            let limits = Limits {
                max_clusters: 32,
                max_members_per_cluster: 16,
            };
            let membership = Membership::open(store, timing, limits).expect("open membership");
            rollcall_registry::telemetry::prometheus();
            let tokens = Tokens {
                registry: Some(Secret::new(REGISTRY_TOKEN.into())),
                clusters: HashMap::from([(
                    TOKEN_CLUSTER.to_string(),
                    Secret::new(CLUSTER_TOKEN.into()),
                )]),
            };
            let state = AppState {
                membership: Arc::new(membership),
                tokens: Arc::new(tokens),
                shutdown: tokio_util::sync::CancellationToken::new(),
                // Blocking reads (`?index=N`) are fuzzed too, cut to a few milliseconds.
                max_watch_wait: Duration::from_millis(5),
                lists: Default::default(),
                dashboard: Default::default(),
                watchers: rollcall_registry::watchers::Watchers::new(64),
            };
            router(
                state,
                HttpLimits {
                    max_body_bytes: 4096,
                    request_timeout: Duration::from_secs(10),
                },
            )
        });
        Harness {
            runtime,
            app,
            _data_dir: data_dir,
        }
    })
}

#[derive(Arbitrary, Debug)]
enum Name {
    Known(u8),
    Raw(String),
}

impl Name {
    fn render(&self) -> String {
        const KNOWN: &[&str] = &["default", "c1", "c2", "n1", "n-2", "a.b_c", "x", "-bad", ""];
        match self {
            Name::Known(i) => KNOWN[usize::from(*i) % KNOWN.len()].to_string(),
            Name::Raw(s) => s.clone(),
        }
    }
}

#[derive(Arbitrary, Debug)]
enum Route {
    Member(Name, Name),
    Members(Name),
    Claims(Name),
    Cluster(Name),
    Clusters,
    JoinTargets,
    Health,
    Dashboard,
    DashboardLive,
    Metrics,
    OpenApi,
    Events,
    Raw(String),
}

impl Route {
    fn render(&self) -> String {
        match self {
            Route::Member(c, n) => format!("/v1/clusters/{}/members/{}", c.render(), n.render()),
            Route::Members(c) => format!("/v1/clusters/{}/members", c.render()),
            Route::Claims(c) => format!("/v1/clusters/{}/claims", c.render()),
            Route::Cluster(c) => format!("/v1/clusters/{}", c.render()),
            Route::Clusters => "/v1/clusters".into(),
            Route::JoinTargets => "/members".into(),
            Route::Health => "/health".into(),
            Route::Dashboard => "/".into(),
            Route::DashboardLive => "/dashboard/live".into(),
            Route::Metrics => "/metrics".into(),
            Route::OpenApi => "/openapi.json".into(),
            Route::Events => "/v1/events".into(),
            Route::Raw(s) => s.clone(),
        }
    }
}

#[derive(Arbitrary, Debug)]
enum Verb {
    Get,
    Put,
    Post,
    Delete,
    Head,
    Patch,
    Options,
    Raw(String),
}

#[derive(Arbitrary, Debug)]
enum Auth {
    None,
    Registry,
    Cluster,
    Raw(String),
}

#[derive(Arbitrary, Debug)]
enum ContentType {
    Json,
    Absent,
    Raw(String),
}

#[derive(Arbitrary, Debug)]
enum Payload {
    Heartbeat {
        address: Address,
        server: bool,
        leader: Option<String>,
        meta: Vec<(String, String)>,
    },
    Claim {
        node: Name,
        address: Address,
        expect: u32,
        agent_only: bool,
        started_as: None,
        raft: None,
    },
    Raw(Vec<u8>),
}

#[derive(Arbitrary, Debug)]
enum Address {
    Known(u8, u16),
    Raw(String),
}

impl Address {
    fn render(&self) -> String {
        const HOSTS: &[&str] = &["10.0.0.1", "[::1]", "node-1", "a.example.com", "", "::1"];
        match self {
            Address::Known(h, port) => format!("{}:{port}", HOSTS[usize::from(*h) % HOSTS.len()]),
            Address::Raw(s) => s.clone(),
        }
    }
}

impl Payload {
    fn render(&self) -> Vec<u8> {
        let value = match self {
            Payload::Heartbeat {
                address,
                server,
                leader,
                meta,
                raft: None,
            } => {
                let mut v = serde_json::json!({
                    "address": address.render(),
                    "role": if *server { "server" } else { "agent" },
                    "meta": meta.iter().cloned().collect::<HashMap<_, _>>(),
                });
                if let Some(leader) = leader {
                    v["status"] = serde_json::json!({ "leader": leader, "in_raft": true });
                }
                v
            }
            Payload::Claim {
                node,
                address,
                expect,
                agent_only,
            } => serde_json::json!({
                "node": node.render(),
                "address": address.render(),
                "expect": expect % 10,
                "agent_only": agent_only,
            }),
            Payload::Raw(bytes) => return bytes.clone(),
        };
        serde_json::to_vec(&value).expect("json encodes")
    }
}

#[derive(Arbitrary, Debug)]
struct Input {
    verb: Verb,
    route: Route,
    query: String,
    auth: Auth,
    content_type: ContentType,
    body: Payload,
}

fn build(input: &Input) -> Option<Request<Body>> {
    let method = match &input.verb {
        Verb::Get => Method::GET,
        Verb::Put => Method::PUT,
        Verb::Post => Method::POST,
        Verb::Delete => Method::DELETE,
        Verb::Head => Method::HEAD,
        Verb::Patch => Method::PATCH,
        Verb::Options => Method::OPTIONS,
        Verb::Raw(s) => Method::from_bytes(s.as_bytes()).ok()?,
    };
    let mut uri = input.route.render();
    if !input.query.is_empty() {
        uri.push('?');
        uri.push_str(&input.query);
    }
    let mut request = Request::builder().method(method).uri(uri);
    match &input.auth {
        Auth::None => {}
        Auth::Registry => {
            request = request.header(header::AUTHORIZATION, format!("Bearer {REGISTRY_TOKEN}"))
        }
        Auth::Cluster => {
            request = request.header(header::AUTHORIZATION, format!("Bearer {CLUSTER_TOKEN}"))
        }
        Auth::Raw(s) => {
            request = request.header(header::AUTHORIZATION, HeaderValue::from_str(s).ok()?)
        }
    }
    match &input.content_type {
        ContentType::Json => request = request.header(header::CONTENT_TYPE, "application/json"),
        ContentType::Absent => {}
        ContentType::Raw(s) => {
            request = request.header(header::CONTENT_TYPE, HeaderValue::from_str(s).ok()?)
        }
    }
    request.body(Body::from(input.body.render())).ok()
}

fuzz_target!(|input: Input| {
    let Some(request) = build(&input) else {
        return;
    };
    let is_head = request.method() == Method::HEAD;
    let h = harness();
    h.runtime.block_on(async {
        let response = tokio::time::timeout(HANG, h.app.clone().oneshot(request))
            .await
            .unwrap_or_else(|_| panic!("no answer within {HANG:?} to {input:?}"))
            .expect("the router is infallible");
        let status = response.status();
        assert!(
            !status.is_server_error() || status == StatusCode::SERVICE_UNAVAILABLE,
            "{status} for {input:?}"
        );
        let content_type = response
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        // An event stream never ends by design.
        if content_type.starts_with("text/event-stream") {
            assert_eq!(status, StatusCode::OK);
            return;
        }
        let body = tokio::time::timeout(HANG, response.into_body().collect())
            .await
            .unwrap_or_else(|_| panic!("the body did not end within {HANG:?} for {input:?}"))
            .expect("the body reads")
            .to_bytes();
        if is_head {
            return;
        }
        if status.is_client_error() || status.is_server_error() {
            assert!(
                content_type.starts_with("application/json"),
                "{status} with content-type {content_type:?} for {input:?}"
            );
            let error: serde_json::Value = serde_json::from_slice(&body).unwrap_or_else(|e| {
                panic!("{status} body is not JSON ({e}): {body:?} for {input:?}")
            });
            assert!(
                error["code"].is_string(),
                "{status} body {error} for {input:?}"
            );
            assert!(
                error["message"].is_string(),
                "{status} body {error} for {input:?}"
            );
        } else if content_type.starts_with("application/json") {
            serde_json::from_slice::<serde_json::Value>(&body).unwrap_or_else(|e| {
                panic!("{status} JSON body does not parse ({e}): {body:?} for {input:?}")
            });
        }
    });
});
