//! The bearer token that guards the mutating verbs.

use axum::http::header::AUTHORIZATION;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;

use super::errors::error;
use super::ApiState;

/// None when the request carries the configured bearer token, else the refusal.
pub(super) fn refuse_unauthorized(
    state: &ApiState,
    headers: &HeaderMap,
    verb: &str,
) -> Option<Response> {
    let Some(expected) = state.api_token.as_deref().filter(|token| !token.is_empty()) else {
        return Some(error(
            StatusCode::FORBIDDEN,
            format!("{verb} over the API is disabled: set CP_API_TOKEN to enable it"),
        ));
    };
    let presented = headers
        .get(AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "));
    if presented.is_some_and(|token| constant_time_eq(token.as_bytes(), expected.as_bytes())) {
        None
    } else {
        Some(error(
            StatusCode::UNAUTHORIZED,
            "a valid bearer token is required",
        ))
    }
}

/// Compares without an early exit, so response timing does not reveal the token.
pub(super) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
