//! The HTTP API: health, readiness, metrics, the client table, a worker's logs, and
//! deregistration. [`router`] builds the routes without a socket so tests call it
//! directly. One concern per file: errors and the client-id extractor (`errors`), the
//! bearer token (`auth`), the control plane's own state (`status`), the client table and
//! its verbs (`clients`), what is shown of a client (`views`), a client's graph (`graph`).

mod auth;
mod clients;
mod errors;
mod graph;
mod status;
mod views;

#[cfg(test)]
mod tests;

pub use clients::{CLIENTS_PAGE_MAX, NEXT_PAGE_HEADER};
pub use errors::{ApiError, ClientPath};

use clients::{client_events, deregister, get_client, list_clients, restart, worker_logs};
use graph::{graph_stats, rca};
use status::{health, metrics, ready};

use std::sync::Arc;

use axum::routing::get;
use axum::Router;

use crate::controller::Status;
use crate::events::EventLog;
use crate::input::Input;
use crate::metrics::ControlPlaneMetrics;
use crate::publisher::Publisher;
use crate::runtime::Runtime;
use crate::table::ClientTable;
use tokio::sync::mpsc;

/// What the handlers read.
#[derive(Clone)]
pub struct ApiState {
    pub table: ClientTable,
    pub metrics: Arc<ControlPlaneMetrics>,
    pub status: Arc<Status>,
    pub runtime: Arc<dyn Runtime>,
    /// Absent in tests that do not exercise deregistration.
    pub publisher: Option<Arc<Publisher>>,
    /// Bearer token for mutating verbs; when unset they are refused.
    pub api_token: Option<String>,
    /// Lifecycle events, per client.
    pub events: EventLog,
    /// Where operator commands (restarts) go: the controller.
    pub commands: Option<mpsc::Sender<Input>>,
    /// The other control planes (`CP_OWNERSHIP=group`): where a client's owner answers.
    pub members: Option<crate::members::Members>,
}

/// All routes.
pub fn router(state: ApiState) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics))
        .route("/clients", get(list_clients))
        .route("/clients/{id}", get(get_client).delete(deregister))
        .route("/clients/{id}/workers/{role}/logs", get(worker_logs))
        .route("/clients/{id}/rca", get(rca))
        .route("/clients/{id}/events", get(client_events))
        .route("/clients/{id}/restart", axum::routing::post(restart))
        .route("/clients/{id}/graph/stats", get(graph_stats))
        .with_state(state)
}
