//! The API's one error answer, and the validated client id every client route takes.

use std::collections::HashMap;

use axum::extract::{FromRequestParts, Path};
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use kg_shared::ClientId;
use serde_json::json;

/// The API's one error answer: a status and `{"error": "<message>"}`.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }

    pub(super) fn not_registered(id: &ClientId) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            format!("client {id} is not registered"),
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(json!({ "error": self.message }))).into_response()
    }
}

impl From<kg_shared::InvalidClientId> for ApiError {
    fn from(invalid: kg_shared::InvalidClientId) -> Self {
        Self::new(StatusCode::BAD_REQUEST, invalid.to_string())
    }
}

pub(super) fn error(status: StatusCode, message: impl Into<String>) -> Response {
    ApiError::new(status, message).into_response()
}

/// The `{id}` of a client route, validated: an invalid id is answered 400 before any
/// handler runs, so none of them can reach the table or the runtime with it.
pub struct ClientPath(pub ClientId);

impl<S: Send + Sync> FromRequestParts<S> for ClientPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let Path(params) = Path::<HashMap<String, String>>::from_request_parts(parts, state)
            .await
            .map_err(|rejection| ApiError::new(StatusCode::BAD_REQUEST, rejection.body_text()))?;
        let id = params
            .get("id")
            .ok_or_else(|| ApiError::new(StatusCode::BAD_REQUEST, "no client id in the path"))?;
        Ok(ClientPath(ClientId::parse(id)?))
    }
}
