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
use kg_shared::health::{HealthAnswer, HealthStatus};
use kg_shared::Role;
use serde_json::json;

use crate::metrics::WorkerMetrics;
use crate::roles::graph_builder::{GraphStore, SharedStore};
use crate::roles::pipeline::health::StagesHealth;

/// What the handlers read.
#[derive(Clone)]
pub struct HttpState {
    pub client_id: String,
    pub role: Role,
    pub metrics: Arc<WorkerMetrics>,
    /// The graph builder's store; None for the normalizers.
    pub graph: Option<SharedStore>,
    pub health: HealthThresholds,
    pub dlq_window: Arc<std::sync::Mutex<DlqWindow>>,
    /// A pipeline's stages; None for the other roles.
    pub stages: Option<Arc<StagesHealth>>,
}

/// When `/health` says degraded or failed.
#[derive(Clone, Copy, Debug)]
pub struct HealthThresholds {
    pub degraded_lag: i64,
    pub stall_secs: u64,
    /// Degraded when more than this fraction of the records read in the last minute were
    /// dead-lettered (judged once at least 100 were read).
    pub degraded_dlq_ratio: f64,
}

/// Counters as of the start of the current DLQ-rate window.
#[derive(Debug)]
pub struct DlqWindow {
    started: std::time::Instant,
    records_in: u64,
    dead_letters: u64,
}

impl Default for DlqWindow {
    fn default() -> Self {
        Self {
            started: std::time::Instant::now(),
            records_in: 0,
            dead_letters: 0,
        }
    }
}

/// The routes, without a socket, so tests can call them directly.
pub fn router(state: HttpState) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/health/stages", get(stages))
        .route("/metrics", get(metrics))
        .route("/graph/rca", get(rca))
        .route("/graph/stats", get(stats))
        .route("/graph/incidents", get(incidents))
        .route("/graph/incidents/{id}", get(incident_events))
        .with_state(state)
}

/// The share of records dead-lettered since the window started; the window restarts
/// every minute.
fn dlq_ratio(state: &HttpState) -> Option<f64> {
    let records_in = state.metrics.records_in.get();
    let dead_letters = state.metrics.dlq_total.get();
    let mut window = state
        .dlq_window
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let read = records_in.saturating_sub(window.records_in);
    let ratio = (read >= 100)
        .then(|| dead_letters.saturating_sub(window.dead_letters) as f64 / read as f64);
    if window.started.elapsed() >= std::time::Duration::from_secs(60) {
        *window = DlqWindow {
            started: std::time::Instant::now(),
            records_in,
            dead_letters,
        };
    }
    ratio
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
            HealthStatus::Failed,
            format!("{lag} records waiting and nothing committed for {idle_secs}s"),
        )
    } else if lag > state.health.degraded_lag {
        (
            StatusCode::OK,
            HealthStatus::Degraded,
            format!("lagging by {lag} records"),
        )
    } else if let Some(ratio) =
        dlq_ratio(&state).filter(|ratio| *ratio > state.health.degraded_dlq_ratio)
    {
        (
            StatusCode::OK,
            HealthStatus::Degraded,
            format!("{:.0}% of recent records dead-lettered", ratio * 100.0),
        )
    } else if let Some(trouble) = state.stages.as_ref().and_then(|stages| stages.trouble()) {
        (StatusCode::OK, HealthStatus::Degraded, trouble)
    } else {
        (StatusCode::OK, HealthStatus::Healthy, String::new())
    };
    let answer = HealthAnswer {
        delay: state
            .stages
            .as_ref()
            .and_then(|stages| stages.delay_summary(&state.metrics)),
        client_id: state.client_id.clone(),
        consumer_lag: lag,
        reason,
        records_in: state.metrics.records_in.get(),
        records_out: state.metrics.records_out.get(),
        retries: state
            .stages
            .as_ref()
            .and_then(|stages| stages.retry_summary(&state.metrics)),
        role: state.role,
        status,
    };
    (code, Json(answer)).into_response()
}

/// A pipeline's stages, each with its state and counts (404 for the other roles).
async fn stages(State(state): State<HttpState>) -> Response {
    match &state.stages {
        Some(stages) => Json(stages.report(&state.metrics)).into_response(),
        None => (
            StatusCode::NOT_FOUND,
            Json(json!({"error": "only a pipeline worker has stages"})),
        )
            .into_response(),
    }
}

/// OpenMetrics for scrapers that ask for it, the Prometheus text format otherwise
/// (`kg_shared::exposition` says why).
async fn metrics(
    State(state): State<HttpState>,
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
    read: impl FnOnce(&dyn GraphStore) -> Result<T, crate::roles::graph_builder::StoreError>
        + Send
        + 'static,
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

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt;

    fn state(metrics: Arc<WorkerMetrics>) -> HttpState {
        HttpState {
            client_id: "af-9".into(),
            role: Role::EventNormalizer,
            metrics,
            graph: None,
            health: HealthThresholds {
                degraded_lag: 1000,
                stall_secs: 300,
                degraded_dlq_ratio: 0.1,
            },
            dlq_window: Default::default(),
            stages: None,
        }
    }

    async fn health_of(state: HttpState) -> (StatusCode, serde_json::Value) {
        let response = router(state)
            .oneshot(Request::get("/health").body(Body::empty()).unwrap())
            .await
            .unwrap();
        let status = response.status();
        let body = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .unwrap();
        (status, serde_json::from_slice(&body).unwrap())
    }

    #[tokio::test]
    async fn health_is_tri_state() {
        let metrics = Arc::new(WorkerMetrics::new("af-9", "event-normalizer"));
        assert_eq!(
            health_of(state(metrics.clone())).await.1["status"],
            "healthy"
        );

        metrics.consumer_lag.set(5000);
        assert_eq!(
            health_of(state(metrics.clone())).await.1["status"],
            "degraded"
        );

        // Records waiting and nothing committed for longer than the stall bound.
        let long_ago = chrono::Utc::now().timestamp_millis() - 301_000;
        metrics
            .last_progress_ms
            .store(long_ago, std::sync::atomic::Ordering::Relaxed);
        let (status, body) = health_of(state(metrics.clone())).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(body["status"], "failed");
    }

    #[tokio::test]
    async fn a_high_dead_letter_rate_is_degraded() {
        let metrics = Arc::new(WorkerMetrics::new("af-9", "event-normalizer"));
        metrics.records_in.inc_by(200);
        metrics.dlq_total.inc_by(50);
        let (_, body) = health_of(state(metrics)).await;
        assert_eq!(body["status"], "degraded", "{body}");
    }
}
