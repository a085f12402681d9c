//! The control plane's own state: liveness, readiness (`/ready`) and metrics.

use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use super::ApiState;

pub(super) async fn health() -> impl IntoResponse {
    Json(json!({ "status": "ok" }))
}

pub(super) async fn ready(State(state): State<ApiState>) -> Response {
    let listing = state.status.listing();
    let body = json!({
        "ready": state.status.ready(),
        "registry_replayed": state.status.registry_replayed.load(std::sync::atomic::Ordering::Relaxed),
        "first_listing_done": state.status.first_listing_done.load(std::sync::atomic::Ordering::Relaxed),
        "runtime": state.runtime.kind(),
        "runtime_listable": listing.failing.is_none(),
        "runtime_error": listing.failing.as_ref().map(|failing| format!(
            "the runtime cannot be listed since {}: {}",
            failing.since.to_rfc3339(),
            failing.error
        )),
        "workers_as_of": listing.last_listed_at.map(|at| at.to_rfc3339()),
        "ownership": state.status.ownership(),
    });
    let code = if state.status.ready() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(body)).into_response()
}

/// OpenMetrics for scrapers that ask for it, the Prometheus text format otherwise
/// (`kg_shared::exposition` says why).
pub(super) async fn metrics(
    State(state): State<ApiState>,
    headers: axum::http::HeaderMap,
) -> impl IntoResponse {
    let accept = headers
        .get(axum::http::header::ACCEPT)
        .and_then(|value| value.to_str().ok());
    let format = kg_shared::exposition::ExpositionFormat::negotiate(accept);
    (
        [(CONTENT_TYPE, format.content_type())],
        state.metrics.encode(format),
    )
}
