//! The worker's own HTTP server: `/health` for supervisors and `/metrics` for Prometheus.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::header::CONTENT_TYPE;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::response::Response;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;

use crate::graph::GraphStore;
use crate::graph_builder::SharedStore;
use crate::metrics::WorkerMetrics;

/// What the handlers read.
#[derive(Clone)]
pub struct HttpState {
    pub client_id: String,
    pub role: &'static str,
    pub metrics: Arc<WorkerMetrics>,
    /// The graph builder's store; None for the normalizers.
    pub graph: Option<SharedStore>,
    pub health: HealthThresholds,
}

/// When `/health` says degraded or failed.
#[derive(Clone, Copy, Debug)]
pub struct HealthThresholds {
    pub degraded_lag: i64,
    pub stall_secs: u64,
}

/// The routes, without a socket, so tests can call them directly.
pub fn router(state: HttpState) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .route("/graph/rca", get(rca))
        .route("/graph/stats", get(stats))
        .route("/graph/incidents", get(incidents))
        .route("/graph/incidents/{id}", get(incident_events))
        .with_state(state)
}

/// Tri-state health, for the control plane's probes: `healthy`; `degraded` (200) when the
/// worker lags by more than `degraded_lag` records; `failed` (503) when it has records to
/// read but committed nothing for `stall_secs`.
async fn health(State(state): State<HttpState>) -> Response {
    let lag = state.metrics.consumer_lag.get();
    let last = state
        .metrics
        .last_progress_ms
        .load(std::sync::atomic::Ordering::Relaxed);
    let idle_secs = (chrono::Utc::now().timestamp_millis() - last).max(0) / 1000;
    let (code, status, reason) = if lag > 0 && idle_secs as u64 >= state.health.stall_secs {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "failed",
            format!("{lag} records waiting and nothing committed for {idle_secs}s"),
        )
    } else if lag > state.health.degraded_lag {
        (
            StatusCode::OK,
            "degraded",
            format!("lagging by {lag} records"),
        )
    } else {
        (StatusCode::OK, "healthy", String::new())
    };
    (
        code,
        Json(json!({
            "status": status,
            "reason": reason,
            "client_id": state.client_id,
            "role": state.role,
            "records_in": state.metrics.records_in.get(),
            "records_out": state.metrics.records_out.get(),
            "consumer_lag": lag,
        })),
    )
        .into_response()
}

async fn metrics(State(state): State<HttpState>) -> impl IntoResponse {
    (
        [(CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        state.metrics.encode(),
    )
}

#[derive(serde::Deserialize)]
struct RcaQuery {
    event_id: String,
    limit: Option<usize>,
}

fn json_error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(json!({ "error": message.into() }))).into_response()
}

/// Runs a read on the store off the async threads: SQLite calls block.
async fn with_store<T: serde::Serialize + Send + 'static>(
    state: &HttpState,
    read: impl FnOnce(&dyn GraphStore) -> Result<T, crate::graph::StoreError> + Send + 'static,
) -> Response {
    let Some(store) = state.graph.clone() else {
        return json_error(StatusCode::NOT_FOUND, "this worker keeps no graph");
    };
    let result = tokio::task::spawn_blocking(move || {
        let store = store
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        read(store.as_ref())
    })
    .await;
    match result {
        Ok(Ok(value)) => Json(value).into_response(),
        Ok(Err(error)) => json_error(StatusCode::INTERNAL_SERVER_ERROR, error.to_string()),
        Err(error) => json_error(StatusCode::INTERNAL_SERVER_ERROR, error.to_string()),
    }
}

async fn rca(State(state): State<HttpState>, Query(query): Query<RcaQuery>) -> Response {
    let limit = query.limit.unwrap_or(10).clamp(1, 100);
    let event_id = query.event_id;
    with_store(&state, move |store| {
        let candidates = store.rca(&event_id, limit)?;
        Ok(json!({ "event_id": event_id, "candidates": candidates }))
    })
    .await
}

async fn stats(State(state): State<HttpState>) -> Response {
    with_store(&state, |store| store.stats()).await
}

async fn incidents(State(state): State<HttpState>) -> Response {
    with_store(&state, |store| store.incidents()).await
}

async fn incident_events(State(state): State<HttpState>, Path(id): Path<String>) -> Response {
    with_store(&state, move |store| store.incident_events(&id)).await
}

/// Binds `listen` and returns the listener with the address actually bound.
pub async fn bind(listen: SocketAddr) -> std::io::Result<(tokio::net::TcpListener, SocketAddr)> {
    let listener = tokio::net::TcpListener::bind(listen).await?;
    let local = listener.local_addr()?;
    Ok((listener, local))
}
