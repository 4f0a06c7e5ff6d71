//! rollcall-registry: the bootstrap instance of a raft.
//!
//! Members heartbeat to it (`PUT /v1/clusters/{cluster}/members/{node}`), it keeps them in
//! sled with an expiry, serves their join addresses (`GET /members`) and decides who may start
//! a raft (`POST /v1/clusters/{cluster}/claims`). The modules, from the wire inwards:
//! [`api`] (HTTP), [`auth`] (tokens), [`membership`] (the state, the write protocol and the claim rules),
//! [`store`] (sled), and [`watchers`] (the bound on blocking reads and event streams). [`run`]
//! wires them together with the expiry sweeper and shutdown.

pub mod api;
pub mod auth;
pub mod config;
pub mod dashboard;
pub mod fd_limit;
pub mod lists;
pub mod membership;
pub mod migrate;
pub mod replica;
pub mod serve;
pub mod store;
pub mod telemetry;
pub mod watchers;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;

use crate::api::{AppState, HttpLimits};
use crate::config::Config;
use crate::membership::Membership;
use crate::serve::ServeOptions;
use crate::store::{OpenError, SledStore, Store};

/// How often the sweeper looks for expired members. Reads filter by deadline anyway, so this
/// only bounds how late an expiry is logged and how long a dead entry occupies memory.
pub const SWEEP_INTERVAL: Duration = Duration::from_millis(250);

/// Opens the store and loads the registry's state.
pub fn open_membership(config: &Config) -> anyhow::Result<Arc<Membership>> {
    std::fs::create_dir_all(&config.data_dir).with_context(|| {
        format!(
            "cannot create the data directory {}",
            config.data_dir.display()
        )
    })?;
    let store = match SledStore::open_checked(
        &config.data_dir,
        config.cache_bytes,
        config.accept_data_loss,
    ) {
        Ok(store) => Store::new(store),
        // Kept as the error itself, so that `main` finds it and exits with its code.
        Err(OpenError::DataLoss(refused)) => return Err(refused.into()),
        Err(OpenError::Storage(e)) => {
            return Err(e)
                .with_context(|| format!("cannot open the store in {}", config.data_dir.display()))
        }
    };
    let membership = Membership::open(store, config.timing, config.limits)
        .context("cannot load the stored state")?;
    Ok(Arc::new(membership))
}

/// Serves the registry on `listener` until `shutdown` completes, then drains in-flight
/// requests for at most `config.shutdown_timeout` and flushes storage last. With
/// `--store etcd` the registry is one replica of several ([`replica`]).
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let tls = match &config.tls {
        Some((cert, key)) => Some(serve::load_tls(cert, key)?),
        None => None,
    };
    crate::telemetry::prometheus();
    crate::telemetry::register_limits();
    let _upkeep = crate::telemetry::spawn_upkeep(crate::telemetry::UPKEEP_INTERVAL);
    let local = listener
        .local_addr()
        .context("listener has no local address")?;
    let options = ServeOptions {
        max_connections: config.max_connections,
        header_read_timeout: config.header_read_timeout,
        idle_timeout: config.idle_timeout,
        max_streams_per_connection: config.max_streams_per_connection,
        drain_timeout: config.shutdown_timeout,
        tls,
    };
    let stop_streams = tokio_util::sync::CancellationToken::new();
    let scheme = if options.tls.is_some() {
        "https"
    } else {
        "http"
    };
    if let Some(etcd) = config.etcd.clone() {
        let client = crate::store::etcd::client::EtcdClient::new(&etcd.options)
            .map_err(anyhow::Error::msg)?;
        let replica = replica::Replica::new(replica::ReplicaOptions {
            client,
            prefix: etcd.prefix.clone(),
            lease_ttl: etcd.lease_ttl,
            me: replica::election::Leader {
                name: etcd.replica_name.clone(),
                url: etcd.advertise_url.clone(),
            },
            max_body_bytes: config.max_body_bytes,
            forward_timeout: config.max_watch_wait + config.request_timeout,
        })?;
        tracing::info!(
            listen = %local,
            store = "etcd",
            etcd = %etcd.options.endpoints.join(","),
            prefix = %etcd.prefix,
            replica = %etcd.replica_name,
            advertise = %etcd.advertise_url,
            lease_ttl = %humantime::format_duration(etcd.lease_ttl),
            ttl = %humantime::format_duration(config.timing.ttl),
            interval = %humantime::format_duration(config.timing.interval),
            scheme,
            writes = if config.tokens.is_open() { "open (no token configured)" } else { "need a bearer token" },
            "rollcall-registry serving as a replica: campaigning to be the active one"
        );
        let term_config = config.clone();
        let term_replica = replica.clone();
        let term_stop = stop_streams.clone();
        let builder = replica::TermBuilder {
            timing: config.timing,
            limits: config.limits,
            router: Box::new(move |membership| {
                term_router(
                    &term_config,
                    membership,
                    Some(term_replica.clone()),
                    term_stop.clone(),
                )
            }),
        };
        let stop_terms = tokio_util::sync::CancellationToken::new();
        let terms = tokio::spawn(replica::run_terms(
            replica.clone(),
            builder,
            stop_terms.clone(),
        ));
        let dispatch_replica = replica.clone();
        let app = axum::Router::new().fallback(move |request: axum::extract::Request| {
            dispatch_replica.clone().dispatch(request)
        });
        serve::serve(listener, app, options, async move {
            shutdown.await;
            stop_streams.cancel();
        })
        .await;
        stop_terms.cancel();
        let _ = terms.await;
        tracing::info!("bye");
        return Ok(());
    }

    let membership = open_membership(&config)?;
    let app = term_router(&config, membership.clone(), None, stop_streams.clone());
    tracing::info!(
        listen = %local,
        data_dir = %config.data_dir.display(),
        ttl = %humantime::format_duration(config.timing.ttl),
        interval = %humantime::format_duration(config.timing.interval),
        startup_grace = %humantime::format_duration(config.timing.startup_grace),
        quiet_period = %humantime::format_duration(config.timing.quiet_period),
        scheme,
        writes = if config.tokens.is_open() { "open (no token configured)" } else { "need a bearer token" },
        "rollcall-registry serving"
    );

    let sweeper_membership = membership.clone();
    let sweeper = tokio::spawn(async move {
        let mut tick = tokio::time::interval(SWEEP_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            sweeper_membership.expire_due();
            // Notices a removed data directory even when nothing writes or asks `/health`.
            let _ = sweeper_membership.store().check();
        }
    });

    serve::serve(listener, app, options, async move {
        shutdown.await;
        // Long polls and event streams end now, so that they do not hold the drain open.
        stop_streams.cancel();
    })
    .await;
    sweeper.abort();
    membership
        .store()
        .close()
        .await
        .context("final storage flush failed")?;
    tracing::info!("storage flushed; bye");
    Ok(())
}

/// The routes of one membership (the registry's, or one term's of a replica).
fn term_router(
    config: &Config,
    membership: Arc<Membership>,
    replica: Option<Arc<replica::Replica>>,
    stop_streams: tokio_util::sync::CancellationToken,
) -> axum::Router {
    let state = AppState::new(api::Shared {
        membership: membership.clone(),
        tokens: Arc::new(config.tokens.clone()),
        shutdown: stop_streams,
        max_watch_wait: config.max_watch_wait,
        lists: Default::default(),
        dashboard: Default::default(),
        watchers: watchers::Watchers::new(config.max_watchers),
        replica,
    });
    api::router(
        state,
        HttpLimits {
            max_body_bytes: config.max_body_bytes,
            request_timeout: config.request_timeout,
        },
    )
}

/// Resolves on ctrl-c or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = ctrl_c => tracing::info!("ctrl-c received"),
        _ = terminate => tracing::info!("SIGTERM received"),
    }
}
