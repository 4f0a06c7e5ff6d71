//! The claim route: mode determination (the rules are `membership/rules.rs`).

use axum::extract::State;
use axum::Json;
use rollcall_protocol::validate::NameKind;
use rollcall_protocol::{validate_name, ClaimRequest, ClaimResponse};

use super::error::ClaimError;
use super::extract::{ApiJson, ApiPath, ClusterPath, WriteAllowed};
use super::{wait_durable, AppState};

#[utoipa::path(
    post,
    path = "/v1/clusters/{cluster}/claims",
    tag = "claims",
    summary = "Mode determination: the role a node must start as, and its join targets",
    params(ClusterPath),
    request_body = ClaimRequest,
    security((), ("bearer" = [])),
    responses(
        (status = 200, description = "the role and the join targets", body = ClaimResponse),
        ClaimError
    )
)]
#[tracing::instrument(level = "debug", skip_all, fields(cluster = %path.cluster))]
pub(super) async fn claim(
    State(state): State<AppState>,
    ApiPath(path): ApiPath<ClusterPath>,
    _allowed: WriteAllowed,
    ApiJson(body): ApiJson<ClaimRequest>,
) -> Result<Json<ClaimResponse>, ClaimError> {
    validate_name(NameKind::Cluster, &path.cluster)?;
    body.validate()?;
    let (response, durability) = state.membership.claim(&path.cluster, &body)?;
    wait_durable(&state, durability).await?;
    Ok(Json(response))
}
