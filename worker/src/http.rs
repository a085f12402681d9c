//! The worker's own HTTP server: `/health` for supervisors and `/metrics` for Prometheus.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;

use crate::metrics::WorkerMetrics;

/// What the handlers read.
#[derive(Clone)]
pub struct HttpState {
    pub client_id: String,
    pub role: &'static str,
    pub metrics: Arc<WorkerMetrics>,
}

/// The routes, without a socket, so tests can call them directly.
pub fn router(state: HttpState) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .with_state(state)
}

async fn health(State(state): State<HttpState>) -> impl IntoResponse {
    Json(json!({
        "status": "healthy",
        "client_id": state.client_id,
        "role": state.role,
        "records_in": state.metrics.records_in.get(),
        "records_out": state.metrics.records_out.get(),
        "consumer_lag": state.metrics.consumer_lag.get(),
    }))
}

async fn metrics(State(state): State<HttpState>) -> impl IntoResponse {
    (
        [(CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        state.metrics.encode(),
    )
}

/// Binds `listen` and returns the listener with the address actually bound.
pub async fn bind(listen: SocketAddr) -> std::io::Result<(tokio::net::TcpListener, SocketAddr)> {
    let listener = tokio::net::TcpListener::bind(listen).await?;
    let local = listener.local_addr()?;
    Ok((listener, local))
}
