//! `/health`, `/ready` and `/metrics`, like the workers'.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use axum::extract::State;
use axum::http::header::{ACCEPT, CONTENT_TYPE};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use kg_shared::exposition::ExpositionFormat;
use serde_json::{json, Map, Value};

use crate::metrics::AgentMetrics;
use crate::watch::WatchBoard;

#[derive(Clone)]
pub struct HttpState {
    pub client_id: String,
    pub metrics: Arc<AgentMetrics>,
    pub board: Arc<WatchBoard>,
    pub registered: Arc<AtomicBool>,
}

pub fn router(state: HttpState) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics))
        .with_state(state)
}

/// Always 200 while the process serves: a failing watch or Kafka outage is not cured by a
/// restart, so it is reported (`degraded`), not fatal to the liveness probe.
async fn health(State(state): State<HttpState>) -> Json<Value> {
    let now = Instant::now();
    let mut watches = Map::new();
    for (name, watch) in state.board.snapshot() {
        watches.insert(
            name,
            json!({
                "synced": watch.synced,
                "failure": watch.current_failure(now),
            }),
        );
    }
    let status = if state.board.degraded() {
        "degraded"
    } else {
        "healthy"
    };
    Json(json!({
        "status": status,
        "client_id": state.client_id,
        "registered": state.registered.load(Ordering::Relaxed),
        "watches": watches,
    }))
}

/// 200 once the registration was acknowledged.
async fn ready(State(state): State<HttpState>) -> Response {
    if state.registered.load(Ordering::Relaxed) {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not registered yet\n").into_response()
    }
}

async fn metrics(State(state): State<HttpState>, headers: HeaderMap) -> Response {
    let format = ExpositionFormat::negotiate(headers.get(ACCEPT).and_then(|v| v.to_str().ok()));
    (
        [(CONTENT_TYPE, format.content_type())],
        state.metrics.render(format),
    )
        .into_response()
}
