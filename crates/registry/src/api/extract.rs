//! Extractors whose every rejection is an [`ApiError`] with a stable code, and the path
//! parameters of the routes (the same structs document the paths in the OpenAPI document).

use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::{header, HeaderMap, StatusCode};
use axum::Json;
use rollcall_protocol::openapi::name_schema;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use utoipa::IntoParams;

use super::error::ApiError;
use super::AppState;

/// `Path<T>` whose rejections are [`ApiError`]s.
#[derive(Debug, FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(ApiError))]
pub struct ApiPath<T>(pub T);

/// `Query<T>` whose rejections are [`ApiError`]s.
#[derive(Debug, FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(ApiError))]
pub struct ApiQuery<T>(pub T);

/// `{cluster}` in a path.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct ClusterPath {
    #[param(schema_with = name_schema)]
    pub cluster: String,
}

/// `{cluster}` and `{node}` in a path.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct MemberPath {
    #[param(schema_with = name_schema)]
    pub cluster: String,
    #[param(schema_with = name_schema)]
    pub node: String,
}

/// A write the token allows: the registry-wide token or the token of the cluster in the path.
/// An extractor, so that it runs before the body is read: a client without a token is told
/// 401 whatever its body, and its body is never parsed.
#[derive(Debug)]
pub struct WriteAllowed;

impl FromRequestParts<AppState> for WriteAllowed {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let params = axum::extract::RawPathParams::from_request_parts(parts, state)
            .await
            .map_err(|e| ApiError::InvalidBody(format!("bad path: {}", e.body_text())))?;
        let cluster = params
            .iter()
            .find(|(name, _)| *name == "cluster")
            .map(|(_, value)| value.to_string())
            .unwrap_or_default();
        super::authorize(state, &cluster, &parts.headers)?;
        Ok(WriteAllowed)
    }
}

/// An operator's action: the registry-wide token (see [`super::authorize_operator`]).
#[derive(Debug)]
pub struct OperatorAllowed;

impl FromRequestParts<AppState> for OperatorAllowed {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        super::authorize_operator(state, &parts.headers)?;
        Ok(OperatorAllowed)
    }
}

/// `Json<T>` whose rejections are [`ApiError`]s. Hand-written rather than derived: it also
/// refuses a body that is not a JSON object before serde reads it.
#[derive(Debug)]
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        if !json_content_type(req.headers()) {
            return Err(ApiError::UnsupportedMediaType(
                "the body must be JSON with Content-Type: application/json".into(),
            ));
        }
        let bytes = axum::body::Bytes::from_request(req, state)
            .await
            .map_err(|e| {
                if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                    crate::telemetry::limit_refused(crate::telemetry::Limit::MaxBodyBytes);
                    ApiError::BodyTooLarge("the body is larger than the registry accepts".into())
                } else {
                    ApiError::InvalidBody(e.body_text())
                }
            })?;
        // serde reads a struct from a JSON array too (by position); every request body of this
        // API is an object, so anything else is refused before it gets that far.
        if bytes.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
            return Err(ApiError::InvalidBody(
                "the body must be a JSON object".into(),
            ));
        }
        // axum's `Json` parses through serde_path_to_error, so that a refusal names the field
        // at fault; a body that parses needs no path, so it is parsed without that wrapper
        // (every renewal), and only a refused one again with it, for the message.
        if let Ok(value) = serde_json::from_slice(&bytes) {
            return Ok(ApiJson(value));
        }
        Json::<T>::from_bytes(&bytes)
            .map(|Json(v)| ApiJson(v))
            .map_err(|rejection| ApiError::InvalidBody(rejection.body_text()))
    }
}

/// `application/json`, or any `application/*+json`, as axum's `Json` accepts.
fn json_content_type(headers: &HeaderMap) -> bool {
    let Some(value) = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let essence = value
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
}
