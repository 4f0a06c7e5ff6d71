//! Member routes: heartbeats, leaves, one member, the member list (a blocking read) and the
//! join addresses of `/members`.

use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::Json;
use rollcall_protocol::openapi::name_schema;
use rollcall_protocol::validate::NameKind;
use rollcall_protocol::{
    validate_name, HeartbeatRequest, HeartbeatResponse, JoinTargetsResponse, Member, MemberRole,
    MembersResponse, DEFAULT_CLUSTER,
};
use serde::Deserialize;
use utoipa::IntoParams;

use super::error::{
    ApiError, HeartbeatError, LeaveError, ListQueryError, ListStreamingError, ReadOneError,
};
use super::extract::{ApiJson, ApiPath, ApiQuery, ClusterPath, MemberPath, WriteAllowed};
use super::{list_response, wait_durable, AppState, DEFAULT_WATCH_WAIT};
use crate::lists::{ListKey, ListKind};

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(super) struct MembersQuery {
    /// Only members of this role.
    role: Option<MemberRole>,
    /// Blocking read: return when the cluster's index differs from this one.
    #[param(minimum = 0, maximum = 9223372036854775807_i64)]
    index: Option<u64>,
    /// How long a blocking read may wait, like `30s` (default 5m; longer waits are cut to the
    /// registry's `--max-watch-wait`).
    #[param(schema_with = wait_schema)]
    wait: Option<String>,
}

fn wait_schema() -> utoipa::openapi::schema::Object {
    utoipa::openapi::schema::ObjectBuilder::new()
        .schema_type(utoipa::openapi::schema::Type::String)
        .pattern(Some(rollcall_protocol::validate::WAIT_PATTERN))
        .description(Some("a whole number and a unit: ms, s, m or h"))
        .build()
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(super) struct JoinQuery {
    /// The cluster (default `default`).
    #[param(schema_with = name_schema)]
    cluster: Option<String>,
    /// Only members of this role.
    role: Option<MemberRole>,
    /// `json` (default) or `text`, one host:port per line.
    format: Option<JoinFormat>,
}

#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub(super) enum JoinFormat {
    Json,
    Text,
}

#[utoipa::path(
    put,
    path = "/v1/clusters/{cluster}/members/{node}",
    tag = "members",
    summary = "Heartbeat: register or renew a member",
    params(MemberPath),
    request_body = HeartbeatRequest,
    security((), ("bearer" = [])),
    responses(
        (status = 200, description = "registered or renewed", body = HeartbeatResponse),
        HeartbeatError
    )
)]
#[tracing::instrument(level = "debug", skip_all, fields(cluster = %path.cluster, node = %path.node))]
pub(super) async fn heartbeat(
    State(state): State<AppState>,
    ApiPath(path): ApiPath<MemberPath>,
    _allowed: WriteAllowed,
    ApiJson(body): ApiJson<HeartbeatRequest>,
) -> Result<Json<HeartbeatResponse>, HeartbeatError> {
    validate_name(NameKind::Cluster, &path.cluster)?;
    validate_name(NameKind::Node, &path.node)?;
    body.validate()?;
    let (response, durability) = state
        .membership
        .heartbeat(&path.cluster, &path.node, body)?;
    wait_durable(&state, durability).await?;
    Ok(Json(response))
}

#[utoipa::path(
    delete,
    path = "/v1/clusters/{cluster}/members/{node}",
    tag = "members",
    summary = "Leave: forget a member and release its claim",
    params(MemberPath),
    security((), ("bearer" = [])),
    responses(
        (status = 204, description = "the member left"),
        LeaveError
    )
)]
#[tracing::instrument(level = "debug", skip_all, fields(cluster = %path.cluster, node = %path.node))]
pub(super) async fn leave(
    State(state): State<AppState>,
    ApiPath(path): ApiPath<MemberPath>,
    _allowed: WriteAllowed,
) -> Result<StatusCode, LeaveError> {
    validate_name(NameKind::Cluster, &path.cluster)?;
    validate_name(NameKind::Node, &path.node)?;
    let durability = state.membership.leave(&path.cluster, &path.node)?;
    wait_durable(&state, durability).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(
    get,
    path = "/v1/clusters/{cluster}/members/{node}",
    tag = "members",
    summary = "One live member",
    params(MemberPath),
    responses(
        (status = 200, description = "the member", body = Member),
        ReadOneError
    )
)]
pub(super) async fn get_member(
    State(state): State<AppState>,
    ApiPath(MemberPath { cluster, node }): ApiPath<MemberPath>,
) -> Result<Json<Member>, ReadOneError> {
    validate_name(NameKind::Cluster, &cluster)?;
    validate_name(NameKind::Node, &node)?;
    match state.membership.member(&cluster, &node) {
        Some(m) => Ok(Json(m)),
        None => Err(ApiError::NotFound(format!(
            "{node:?} is not a live member of cluster {cluster:?}"
        ))
        .into()),
    }
}

#[utoipa::path(
    get,
    path = "/v1/clusters/{cluster}/members",
    tag = "members",
    summary = "Live members, freshest first; a blocking read with `index` and `wait`",
    params(ClusterPath, MembersQuery,
        ("If-None-Match" = Option<String>, Header, description = "an ETag of an earlier answer: 304 while the members are the same")),
    responses(
        (status = 200, description = "the live members", body = MembersResponse,
            headers(("x-rollcall-index" = u64, description = "the cluster's membership index"),
                ("etag" = String, description = "weak: names the listed members, not the ages"))),
        (status = 304, description = "`If-None-Match` names the same members: no body",
            headers(("x-rollcall-index" = u64), ("etag" = String))),
        ListStreamingError
    )
)]
pub(super) async fn list_members(
    State(state): State<AppState>,
    ApiPath(ClusterPath { cluster }): ApiPath<ClusterPath>,
    ApiQuery(query): ApiQuery<MembersQuery>,
    headers: HeaderMap,
) -> Result<Response, ListStreamingError> {
    validate_name(NameKind::Cluster, &cluster)?;
    let wait = match query.wait.as_deref() {
        None => DEFAULT_WATCH_WAIT,
        Some(w) if !rollcall_protocol::validate::matches_wait(w) => {
            return Err(ApiError::InvalidQuery(format!(
                "wait {w:?} is not a whole number and a unit (ms, s, m or h), like 30s"
            ))
            .into())
        }
        // Like Consul, a longer wait than allowed is cut to the maximum rather than refused.
        Some(w) => humantime::parse_duration(w)
            .map_err(|e| ApiError::InvalidQuery(format!("wait {w:?}: {e}")))?,
    }
    .min(state.max_watch_wait);
    if query.index.is_some_and(|i| i > i64::MAX as u64) {
        return Err(ApiError::InvalidQuery(format!("index must be at most {}", i64::MAX)).into());
    }
    if let Some(index) = query.index {
        wait_for_change(&state, &cluster, index, wait).await?;
    }
    let key = ListKey {
        cluster,
        role: query.role,
        kind: ListKind::Members,
    };
    let listed = state.lists.get(&state.membership, key).await;
    Ok(list_response(listed, "application/json", &headers))
}

/// Blocks until `cluster`'s index differs from `index`, `wait` passes, or shutdown begins.
/// A read whose index is already stale answers at once and takes no watcher's slot; one that
/// waits holds a slot of `--max-watchers` until it returns (or is dropped with its client),
/// and is refused `429` when none is free. The watch is taken with the index it compares, so
/// a change after that look still wakes it; only a change of this cluster does.
async fn wait_for_change(
    state: &AppState,
    cluster: &str,
    index: u64,
    wait: Duration,
) -> Result<(), ApiError> {
    if state.membership.cluster_index(cluster) != index {
        return Ok(());
    }
    let _slot = state.watchers.admit()?;
    let (mut watch, mut current) = state.membership.watch_cluster(cluster);
    let deadline = tokio::time::Instant::now() + wait;
    while current == index {
        tokio::select! {
            changed = watch.changed() => {
                if !changed {
                    break;
                }
                crate::watchers::count_wakeup();
                current = state.membership.cluster_index(cluster);
            }
            _ = tokio::time::sleep_until(deadline) => break,
            _ = state.shutdown.cancelled() => break,
        }
    }
    Ok(())
}

#[utoipa::path(
    get,
    path = "/members",
    tag = "members",
    summary = "Join addresses of a cluster, as JSON or (format=text) one host:port per line",
    params(JoinQuery,
        ("If-None-Match" = Option<String>, Header, description = "an ETag of an earlier answer: 304 while the members are the same")),
    responses(
        (status = 200, description = "the addresses", content(
            (JoinTargetsResponse = "application/json"),
            (String = "text/plain")
        ), headers(("x-rollcall-index" = u64, description = "the cluster's membership index"),
            ("etag" = String, description = "weak: names the listed addresses' members"))),
        (status = 304, description = "`If-None-Match` names the same members: no body",
            headers(("x-rollcall-index" = u64), ("etag" = String))),
        ListQueryError
    )
)]
pub(super) async fn join_targets(
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<JoinQuery>,
    headers: HeaderMap,
) -> Result<Response, ListQueryError> {
    let cluster = query.cluster.unwrap_or_else(|| DEFAULT_CLUSTER.to_string());
    validate_name(NameKind::Cluster, &cluster)?;
    let format = query.format.unwrap_or(JoinFormat::Json);
    let (kind, content_type) = match format {
        JoinFormat::Json => (ListKind::JoinJson, "application/json"),
        JoinFormat::Text => (ListKind::JoinText, "text/plain; charset=utf-8"),
    };
    let key = ListKey {
        cluster,
        role: query.role,
        kind,
    };
    let listed = state.lists.get(&state.membership, key).await;
    Ok(list_response(listed, content_type, &headers))
}
