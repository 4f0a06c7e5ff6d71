//! Registry replicas on etcd (`--store etcd`): one is active, the others are standbys that
//! forward every request to it, so that any replica can be given to clients.
//!
//! Each replica runs [`run_terms`]: it campaigns ([`election`]); when it wins, it opens the
//! etcd store of its term (fenced by the election, see `store/etcd`), loads every record into
//! a new [`Membership`] (the startup grace counts from here, as for a restarted registry) and
//! serves with it; when it loses, it forwards to the winner ([`forward`]) and campaigns again
//! as soon as the leader key is gone. A term ends when its lease cannot be renewed before its
//! deadline, when etcd says the lease is gone, or when a write of the term fails (the fence,
//! or an outcome etcd never confirmed): the replica steps down, drops the term's state, and
//! reloads it from etcd before it can be active again. It says so in its log.
//!
//! While etcd cannot be reached at all, a replica that was active serves reads from its last
//! state, marked with the `rollcall-stale: true` header, and refuses writes with 503
//! `store_unavailable`; standbys forward to it. A request that reaches a replica with no
//! active one to go to is answered 503 `no_active_replica`.
//!
//! What a request meets is decided per request by [`Replica::dispatch`], from [`Mode`].
//!
//! Over 500 lines on purpose: a term's whole life (campaign, load, renewals, sweep, step-down)
//! and what each mode answers are read in one place; the election's own calls are in
//! `election.rs`, the forwarding in `forward.rs`.

pub mod election;
pub mod forward;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::Request;
use axum::http::{HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;
use rollcall_protocol::{ErrorBody, ErrorCode, ReplicaHealth};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use crate::membership::{Limits, Membership, Timing};
use crate::store::etcd::client::EtcdClient;
use crate::store::etcd::{EtcdStore, Fence};
use crate::store::Store;
use election::{Campaign, Leader, Renewal};

/// How often an active replica retries a renewal etcd did not answer, and a replica retries a
/// campaign.
pub const POLL: Duration = Duration::from_millis(250);
/// How often a standby reads the leader key: a failover waits at most this after etcd removed
/// the key (etcd itself looks for expired leases every 500 ms).
pub const FOLLOW_POLL: Duration = Duration::from_millis(100);

/// How a replica reaches etcd and presents itself to the others.
#[derive(Debug, Clone)]
pub struct ReplicaOptions {
    pub client: EtcdClient,
    /// The prefix of every key (`--etcd-prefix`).
    pub prefix: String,
    /// The lease TTL asked for (`--lease-ttl`); etcd may grant more.
    pub lease_ttl: Duration,
    /// This replica's name and the URL the others forward to.
    pub me: Leader,
    pub max_body_bytes: usize,
    /// How long a forwarded request may take: the longest blocking read, plus a margin. An
    /// event stream forwarded by a standby ends then too (its client reconnects).
    pub forward_timeout: Duration,
}

/// What this replica is now.
#[derive(Clone, Debug, Default)]
pub enum Mode {
    /// Nothing known yet, or between terms.
    #[default]
    Unknown,
    /// Active until the term's deadline (its lease's), serving with the term's router.
    Active { term: Arc<Term> },
    /// Another replica is active.
    Standby { leader: Leader },
    /// etcd cannot be reached: the last term serves reads, marked stale.
    Stale { term: Arc<Term> },
}

/// One term of this replica as the active one.
#[derive(Debug)]
pub struct Term {
    pub router: Router,
    pub membership: Arc<Membership>,
    lease: Arc<LeaseState>,
}

/// The term's lease as its renewals leave it.
#[derive(Debug)]
struct LeaseState {
    /// Until when the lease is this replica's, by its own clock; moved on by each renewal.
    deadline: Mutex<Instant>,
    /// Set by the renewal task when etcd says the lease is gone.
    gone: AtomicBool,
}

impl Term {
    pub fn deadline(&self) -> Instant {
        *self
            .lease
            .deadline
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// Whether this term may still answer as the active replica.
    pub fn holds(&self) -> bool {
        Instant::now() < self.deadline() && !self.lease.gone.load(Ordering::Relaxed)
    }
}

/// What `/health`, the dashboard and `/metrics` say about replicas.
#[derive(Debug, Default, Clone)]
pub struct ReplicaFacts {
    pub active: Option<Leader>,
    pub became_active_unix_ms: Option<u64>,
    pub last_failover_unix_ms: Option<u64>,
    pub failovers: u64,
    pub last_step_down: Option<String>,
}

/// The replica's shared state: its mode, what it knows of the others, how it forwards.
pub struct Replica {
    options: ReplicaOptions,
    mode: RwLock<Mode>,
    facts: RwLock<ReplicaFacts>,
    forward_http: reqwest::Client,
}

impl std::fmt::Debug for Replica {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replica")
            .field("me", &self.options.me)
            .finish_non_exhaustive()
    }
}

impl Replica {
    pub fn new(options: ReplicaOptions) -> anyhow::Result<Arc<Replica>> {
        // A frozen or cut-off active replica must not hold forwarded requests for ever.
        let forward_http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(2))
            .timeout(options.forward_timeout)
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        Ok(Arc::new(Replica {
            options,
            mode: RwLock::new(Mode::Unknown),
            facts: RwLock::new(ReplicaFacts::default()),
            forward_http,
        }))
    }

    pub fn me(&self) -> &Leader {
        &self.options.me
    }

    fn mode(&self) -> Mode {
        self.mode.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn set_mode(&self, mode: Mode) {
        let role = match &mode {
            Mode::Active { .. } => 1.0,
            _ => 0.0,
        };
        metrics::gauge!("rollcall_replica_active").set(role);
        *self.mode.write().unwrap_or_else(|e| e.into_inner()) = mode;
    }

    pub fn facts(&self) -> ReplicaFacts {
        self.facts.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn update_facts(&self, f: impl FnOnce(&mut ReplicaFacts)) {
        f(&mut self.facts.write().unwrap_or_else(|e| e.into_inner()));
    }

    /// This replica's role and what it knows of the active one, for `/health`.
    pub fn health(&self) -> ReplicaHealth {
        let facts = self.facts();
        let role = match self.mode() {
            Mode::Active { term } if term.holds() => "active",
            Mode::Active { .. } | Mode::Unknown => "unknown",
            Mode::Standby { .. } => "standby",
            Mode::Stale { .. } => "stale",
        };
        ReplicaHealth {
            role: role.into(),
            name: self.options.me.name.clone(),
            active: facts.active.as_ref().map(|l| l.name.clone()),
            active_url: facts.active.as_ref().map(|l| l.url.clone()),
            last_failover_unix_ms: facts.last_failover_unix_ms,
            failovers: facts.failovers,
        }
    }

    /// Answers one request as the mode says: the term's router when active (reads only, marked
    /// stale, when etcd cannot be reached), forwarded when a standby, 503 otherwise. `/health`
    /// and `/metrics` are always this replica's own.
    pub async fn dispatch(self: Arc<Self>, request: Request) -> Response {
        let path = request.uri().path();
        let own = path == "/health" || path == "/metrics";
        let forwarded = request.headers().contains_key(forward::FORWARDED_BY);
        match self.mode() {
            Mode::Active { term } if term.holds() => {
                let mut response = serve(&term.router, request).await;
                self.sign(&mut response);
                response
            }
            Mode::Stale { term } => {
                let reads = [Method::GET, Method::HEAD].contains(request.method());
                if !reads && !own {
                    return unavailable(
                        ErrorCode::StoreUnavailable,
                        "the registry's etcd cannot be reached (no quorum, or no endpoint answers): durable writes are refused until it is back; reads are served from the last state, marked stale",
                    );
                }
                let mut response = serve(&term.router, request).await;
                self.sign(&mut response);
                response
                    .headers_mut()
                    .insert("rollcall-stale", HeaderValue::from_static("true"));
                response
            }
            Mode::Standby { leader } if !own && !forwarded && leader != self.options.me => {
                forward::forward(
                    &self.forward_http,
                    &leader.url,
                    &self.options.me.name,
                    self.options.max_body_bytes,
                    request,
                )
                .await
            }
            _ if own => own_route(&self, request).await,
            _ => unavailable(
                ErrorCode::NoActiveReplica,
                "no registry replica is active right now (a failover is under way: a standby takes over within the lease TTL); retry",
            ),
        }
    }
}

impl Replica {
    /// Names the replica whose state answered, in [`ANSWERED_BY`].
    fn sign(&self, response: &mut Response) {
        if let Ok(v) = HeaderValue::from_str(&self.options.me.name) {
            response.headers_mut().insert(ANSWERED_BY, v);
        }
    }
}

/// The header that names the replica whose state answered a request (forwarded answers keep
/// the active replica's).
pub const ANSWERED_BY: &str = "rollcall-replica";

async fn serve(router: &Router, request: Request) -> Response {
    match router.clone().oneshot(request).await {
        Ok(r) => r,
        Err(e) => match e {},
    }
}

/// `/health` and `/metrics` of a replica that has no term to answer them.
async fn own_route(replica: &Replica, request: Request) -> Response {
    if request.uri().path() == "/metrics" {
        return match crate::telemetry::render_global() {
            Some(text) => (
                [(
                    axum::http::header::CONTENT_TYPE,
                    HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
                )],
                text,
            )
                .into_response(),
            None => StatusCode::NOT_FOUND.into_response(),
        };
    }
    let body = rollcall_protocol::HealthResponse {
        status: "ok".into(),
        storage: "etcd".into(),
        uptime_ms: 0,
        version: env!("CARGO_PKG_VERSION").into(),
        replica: Some(replica.health()),
    };
    (StatusCode::OK, axum::Json(body)).into_response()
}

/// A 503 with a stable code and `Retry-After: 1`.
pub fn unavailable(code: ErrorCode, message: &str) -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        [(
            axum::http::header::RETRY_AFTER,
            HeaderValue::from_static("1"),
        )],
        axum::Json(ErrorBody {
            code,
            message: message.into(),
        }),
    )
        .into_response()
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// What [`run_terms`] needs to build a term.
pub struct TermBuilder {
    pub timing: Timing,
    pub limits: Limits,
    /// The router of a term, given its membership.
    pub router: Box<dyn Fn(Arc<Membership>) -> Router + Send + Sync>,
}

impl std::fmt::Debug for TermBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TermBuilder")
            .field("timing", &self.timing)
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

/// Campaigns, serves terms and follows the active replica until `stop` is cancelled; then
/// ends the term (its last writes sent, its lease revoked so that a standby takes over at
/// once).
pub async fn run_terms(replica: Arc<Replica>, builder: TermBuilder, stop: CancellationToken) {
    let o = replica.options.clone();
    let key = format!("{}leader", o.prefix).into_bytes();
    let mut last_active: Option<Leader> = None;
    // The lease of a term that ended while etcd did not answer: revoked as soon as etcd
    // answers, so that the leader key it holds does not keep everyone standing by until it
    // expires (a new etcd leader renews every lease when it is elected).
    let mut stale_lease: Option<i64> = None;
    while !stop.is_cancelled() {
        if let Some(lease) = stale_lease {
            if o.client.lease_revoke(lease).await.is_ok() {
                tracing::info!(
                    "etcd answers again: revoked the lease of the term that ended while it did not"
                );
                stale_lease = None;
            }
        }
        let campaign = tokio::select! {
            c = election::campaign(&o.client, &key, &o.me, o.lease_ttl) => c,
            _ = stop.cancelled() => break,
        };
        match campaign {
            Ok(Campaign::Won {
                lease,
                create_revision,
                ttl,
                deadline,
            }) => {
                // Renewed from the grant on, while the state loads.
                let lease_state = Arc::new(LeaseState {
                    deadline: Mutex::new(deadline),
                    gone: AtomicBool::new(false),
                });
                let renewals = tokio::spawn(renew_lease(
                    o.client.clone(),
                    lease,
                    ttl,
                    Arc::downgrade(&lease_state),
                ));
                let fence = Fence {
                    key: key.clone(),
                    create_revision,
                };
                let store = match EtcdStore::open(o.client.clone(), &o.prefix, Some(fence)).await {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::warn!(error = %e, "won the election but cannot load the state from etcd; giving the lease back");
                        renewals.abort();
                        let _ = o.client.lease_revoke(lease).await;
                        tokio::time::sleep(POLL).await;
                        continue;
                    }
                };
                let membership = match Membership::open(
                    Store::new(store),
                    builder.timing,
                    builder.limits,
                ) {
                    Ok(m) => Arc::new(m),
                    Err(e) => {
                        tracing::error!(error = %e, "cannot build the state from etcd's records; giving the lease back");
                        let _ = o.client.lease_revoke(lease).await;
                        tokio::time::sleep(POLL).await;
                        continue;
                    }
                };
                let term = Arc::new(Term {
                    router: (builder.router)(membership.clone()),
                    membership,
                    lease: lease_state,
                });
                let failover = last_active.as_ref().is_some_and(|l| l.name != o.me.name);
                replica.update_facts(|f| {
                    f.active = Some(o.me.clone());
                    f.became_active_unix_ms = Some(unix_ms());
                    if failover {
                        f.failovers += 1;
                        f.last_failover_unix_ms = Some(unix_ms());
                    }
                });
                if failover {
                    metrics::counter!("rollcall_replica_failovers_total").increment(1);
                }
                tracing::info!(
                    replica = %o.me.name,
                    term = create_revision,
                    lease_ttl = %humantime::format_duration(ttl),
                    previous = last_active.as_ref().map_or("none known", |l| l.name.as_str()),
                    "this replica is active: it won the election and loaded the state from etcd (the startup grace starts now)"
                );
                last_active = Some(o.me.clone());
                replica.set_mode(Mode::Active { term: term.clone() });
                let end = hold(&term, ttl, &stop).await;
                renewals.abort();
                match &end {
                    TermEnd::Stopped => {
                        let _ = term.membership.store().close().await;
                        let _ = o.client.lease_revoke(lease).await;
                        tracing::info!("stopping: the term's writes are sent and its lease revoked, so that a standby takes over at once");
                        replica.set_mode(Mode::Unknown);
                        return;
                    }
                    TermEnd::Unreachable(why) => {
                        tracing::error!(reason = %why, "stepping down: the lease could not be renewed before its deadline; serving reads from the last state (marked stale) until etcd answers; the state is reloaded from etcd before this replica is active again");
                        replica.set_mode(Mode::Stale { term: term.clone() });
                        stale_lease = Some(lease);
                    }
                    TermEnd::Lost(why) => {
                        tracing::error!(reason = %why, "stepping down: discarding this term's state in memory; it is reloaded from etcd before this replica campaigns again");
                        replica.set_mode(Mode::Unknown);
                        let _ = o.client.lease_revoke(lease).await;
                    }
                }
                replica.update_facts(|f| {
                    f.last_step_down = Some(match &end {
                        TermEnd::Unreachable(w) | TermEnd::Lost(w) => w.clone(),
                        TermEnd::Stopped => String::new(),
                    });
                });
            }
            Ok(Campaign::Lost { leader, .. }) => {
                if last_active.as_ref() != Some(&leader) {
                    tracing::info!(active = %leader.name, url = %leader.url, "this replica is a standby: it forwards every request to the active one");
                }
                let failover = last_active.as_ref().is_some_and(|l| l.name != leader.name);
                replica.update_facts(|f| {
                    f.active = Some(leader.clone());
                    if failover {
                        f.last_failover_unix_ms = Some(unix_ms());
                        f.failovers += 1;
                    }
                });
                last_active = Some(leader.clone());
                replica.set_mode(Mode::Standby {
                    leader: leader.clone(),
                });
                follow(&o.client, &key, &leader, &stop).await;
            }
            Err(e) => {
                // Keep forwarding to the last known active replica, or serving stale reads.
                tracing::warn!(error = %e, "cannot campaign: etcd does not answer; trying again");
                tokio::select! {
                    _ = tokio::time::sleep(POLL * 4) => {}
                    _ = stop.cancelled() => break,
                }
            }
        }
    }
}

/// Why a term ended.
enum TermEnd {
    Stopped,
    /// etcd did not answer before the lease's deadline.
    Unreachable(String),
    /// The lease is gone or a write of the term failed.
    Lost(String),
}

/// Sweeps the membership until the term ends: its deadline passes (the renewals, in their
/// own task, could not move it), etcd says its lease is gone, or its store is lost (a write
/// etcd refused or never confirmed). Never waits on etcd itself, so that a slow etcd cannot
/// stop the sweeps (a gap in them would read as a freeze).
async fn hold(term: &Term, ttl: Duration, stop: &CancellationToken) -> TermEnd {
    let mut sweep = tokio::time::interval(crate::SWEEP_INTERVAL);
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return TermEnd::Stopped,
            _ = sweep.tick() => {}
        }
        if let Some(e) = term.membership.store().lost() {
            return if e.unavailable {
                TermEnd::Unreachable(e.message)
            } else {
                TermEnd::Lost(e.message)
            };
        }
        if term.lease.gone.load(Ordering::Relaxed) {
            return TermEnd::Lost("etcd says the lease is gone".into());
        }
        if Instant::now() >= term.deadline() {
            return TermEnd::Unreachable(format!(
                "the lease's deadline passed: not renewed within {} (etcd unreachable, or this process was frozen)",
                humantime::format_duration(ttl)
            ));
        }
        term.membership.expire_due();
    }
}

/// Renews the term's lease every third of its TTL from its grant, moving the term's deadline
/// on each success, and retrying every [`POLL`] when etcd does not answer; ends when etcd
/// says the lease is gone, or with the term.
async fn renew_lease(
    client: EtcdClient,
    lease: i64,
    ttl: Duration,
    state: std::sync::Weak<LeaseState>,
) {
    let mut next = Instant::now() + ttl / 3;
    loop {
        tokio::time::sleep_until(next).await;
        if state.strong_count() == 0 {
            return;
        }
        match election::renew(&client, lease, ttl).await {
            Ok(deadline) => {
                let Some(s) = state.upgrade() else { return };
                let mut d = s.deadline.lock().unwrap_or_else(|e| e.into_inner());
                *d = (*d).max(deadline);
                next = Instant::now() + ttl / 3;
            }
            Err(Renewal::Expired) => {
                if let Some(s) = state.upgrade() {
                    s.gone.store(true, Ordering::Relaxed);
                }
                return;
            }
            Err(Renewal::Unreachable(e)) => {
                tracing::warn!(error = %e, "cannot renew the lease; retrying until its deadline");
                next = Instant::now() + POLL;
            }
        }
    }
}

/// Waits until the leader key no longer names `leader` (gone or re-created), reading it every
/// [`FOLLOW_POLL`]; etcd not answering is waited out the same way.
async fn follow(client: &EtcdClient, key: &[u8], leader: &Leader, stop: &CancellationToken) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(FOLLOW_POLL) => {}
            _ = stop.cancelled() => return,
        }
        match election::current(client, key).await {
            Ok(Some((now, _))) if &now == leader => {}
            Ok(_) => return,
            Err(_) => {}
        }
    }
}
