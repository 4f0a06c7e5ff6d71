//! The OpenAPI 3.1 document of the JSON API (`/openapi.json`), generated from the handlers'
//! annotations and the wire types. Each route's error responses come from its handler's error
//! type (`error.rs`); `tests/openapi.rs` diffs the document against a golden copy.

use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use rollcall_protocol::ErrorBody;

use super::members::JoinFormat;
use super::{claims, clusters, members, operations};

/// The document's root.
#[derive(utoipa::OpenApi)]
#[openapi(
    info(title = "rollcall registry", description = "The bootstrap registry of raft clusters: heartbeats, join targets and race-free mode determination."),
    paths(
        members::heartbeat, members::leave, members::get_member, members::list_members,
        clusters::cluster_detail, clusters::clusters, clusters::reset, clusters::resize,
        claims::claim,
        members::join_targets,
        operations::health, operations::metrics_text
    ),
    components(schemas(JoinFormat, ErrorBody)),
    modifiers(&BearerAuth),
    tags(
        (name = "members", description = "Heartbeats, leaves and join targets"),
        (name = "claims", description = "Which node may start a raft"),
        (name = "clusters", description = "What the registry knows"),
        (name = "operations", description = "Health and metrics")
    )
)]
#[derive(Debug)]
pub struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// `ApiDoc` as JSON, built once.
pub fn openapi_document() -> &'static str {
    static DOC: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DOC.get_or_init(|| {
        use utoipa::OpenApi;
        let mut doc = ApiDoc::openapi();
        doc.info.version = env!("CARGO_PKG_VERSION").to_string();
        doc.to_pretty_json().unwrap_or_else(|_| "{}".to_string())
    })
}

pub(super) async fn openapi_json() -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        openapi_document(),
    )
        .into_response()
}
