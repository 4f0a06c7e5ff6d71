//! Cluster routes: every cluster the registry knows, and one cluster in detail.

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use rollcall_protocol::validate::NameKind;
use rollcall_protocol::{validate_name, ClusterDetail, ClustersResponse};

use super::error::{ApiError, ReadAllError, ReadOneError};
use super::extract::{ApiPath, ClusterPath};
use super::{index_header, AppState};

#[utoipa::path(
    get,
    path = "/v1/clusters/{cluster}",
    tag = "clusters",
    summary = "Members, live claims and the bootstrap grant of one cluster",
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
