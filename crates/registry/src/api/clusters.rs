//! Cluster routes: every cluster the registry knows, one cluster in detail, and the
//! operator's reset and resize of a cluster.

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use rollcall_protocol::validate::NameKind;
use rollcall_protocol::{
    validate_name, ClusterDetail, ClustersResponse, ResetRequest, ResetResponse, ResizeRequest,
    ResizeResponse,
};

use super::error::{ApiError, ReadAllError, ReadOneError, ResetError, ResizeError};
use super::extract::{ApiJson, ApiPath, ClusterPath, OperatorAllowed};
use super::{index_header, wait_durable, AppState};

#[utoipa::path(
    get,
    path = "/v1/clusters/{cluster}",
    tag = "clusters",
    summary = "Members, live claims, the bootstrap grant, the known raft (and whether it is lost) and the leader's view of it, of one cluster",
    params(ClusterPath),
    responses(
        (status = 200, description = "the cluster", body = ClusterDetail,
            headers(("x-rollcall-index" = u64, description = "the cluster's membership index"))),
        ReadOneError
    )
)]
pub(super) async fn cluster_detail(
    State(state): State<AppState>,
    ApiPath(ClusterPath { cluster }): ApiPath<ClusterPath>,
) -> Result<Response, ReadOneError> {
    validate_name(NameKind::Cluster, &cluster)?;
    match state.membership.cluster_detail(&cluster) {
        Some(d) => Ok((index_header(d.index), Json(d)).into_response()),
        None => {
            Err(ApiError::NotFound(format!("the registry knows no cluster {cluster:?}")).into())
        }
    }
}

#[utoipa::path(
    get,
    path = "/v1/clusters",
    tag = "clusters",
    summary = "Every cluster the registry knows",
    responses(
        (status = 200, description = "the clusters", body = ClustersResponse),
        ReadAllError
    )
)]
pub(super) async fn clusters(
    State(state): State<AppState>,
) -> Result<Json<ClustersResponse>, ReadAllError> {
    Ok(Json(ClustersResponse {
        clusters: state.membership.clusters(),
    }))
}

#[utoipa::path(
    post,
    path = "/v1/clusters/{cluster}/reset",
    tag = "clusters",
    summary = "An operator's reset: forget the cluster's raft so that the next claim may bootstrap a new one",
    params(ClusterPath),
    request_body = ResetRequest,
    security((), ("bearer" = [])),
    responses(
        (status = 200, description = "the raft is forgotten; the next bootstrap gets next_generation", body = ResetResponse),
        ResetError
    )
)]
#[tracing::instrument(level = "debug", skip_all, fields(cluster = %path.cluster))]
pub(super) async fn reset(
    State(state): State<AppState>,
    ApiPath(path): ApiPath<ClusterPath>,
    _allowed: OperatorAllowed,
    ApiJson(body): ApiJson<ResetRequest>,
) -> Result<Json<ResetResponse>, ResetError> {
    validate_name(NameKind::Cluster, &path.cluster)?;
    body.validate()?;
    let (response, durability) = state.membership.reset(&path.cluster, &body)?;
    wait_durable(&state, durability).await?;
    Ok(Json(response))
}

#[utoipa::path(
    post,
    path = "/v1/clusters/{cluster}/resize",
    tag = "clusters",
    summary = "An operator's resize: change the known raft's size (expect), so that the server slots follow",
    params(ClusterPath),
    request_body = ResizeRequest,
    security((), ("bearer" = [])),
    responses(
        (status = 200, description = "the raft's size is changed and stored", body = ResizeResponse),
        ResizeError
    )
)]
#[tracing::instrument(level = "debug", skip_all, fields(cluster = %path.cluster))]
pub(super) async fn resize(
    State(state): State<AppState>,
    ApiPath(path): ApiPath<ClusterPath>,
    _allowed: OperatorAllowed,
    ApiJson(body): ApiJson<ResizeRequest>,
) -> Result<Json<ResizeResponse>, ResizeError> {
    validate_name(NameKind::Cluster, &path.cluster)?;
    body.validate()?;
    let (response, durability) = state.membership.resize(&path.cluster, &body)?;
    wait_durable(&state, durability).await?;
    Ok(Json(response))
}
