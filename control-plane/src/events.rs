//! The last lifecycle events of each client, readable from the API
//! (`GET /clients/{id}/events`). The controller is the only writer; the log is bounded per
//! client so a crash-looping worker cannot grow it without limit.

use std::collections::VecDeque;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use dashmap::DashMap;
use serde::Serialize;
use tracing::info;

use crate::metrics::ControlPlaneMetrics;

/// Events kept per client.
pub const EVENTS_PER_CLIENT: usize = 100;

/// A lifecycle event's kind. Serialized (and labelled in `cp_lifecycle_events_total`) in
/// snake case: `worker_spawned`, `client_stale`, …
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Lifecycle {
    /// A client was admitted and put in the table.
    ClientRegistered,
    /// A tombstone removed a client.
    ClientDeregistered,
    /// A stale client heartbeated again.
    ClientRevived,
    /// No heartbeat within the timeout: the client's workers are reaped.
    ClientStale,
    /// A deregistered client's durable data was deleted.
    ClientDataRemoved,
    /// A worker was created and started.
    WorkerSpawned,
    /// A worker is running (after a spawn, a restart or a recreation).
    WorkerStarted,
    /// A worker exited on its own.
    WorkerExited,
    /// A worker is restarted after its backoff.
    WorkerRestarting,
    /// A worker exited and its policy keeps it stopped.
    WorkerStopped,
    /// A worker exited too often in its window: no more restarts.
    WorkerGaveUp,
    /// A worker failed its health checks.
    WorkerUnhealthy,
    /// A worker found running at start-up, started by an earlier instance.
    WorkerAdopted,
    /// A worker was recreated because its spec changed.
    WorkerRecreated,
    /// A worker that was not running was recreated.
    WorkerRestarted,
    /// A worker was recreated at an operator's request.
    WorkerRestartedByOperator,
    /// A stale client's worker was removed.
    WorkerReaped,
    /// A worker of an unknown client or a removed role was removed.
    WorkerRemoved,
    /// A pipeline the client's registration asked for will not run (the detail says
    /// which and why).
    PipelineRefused,
}

impl Lifecycle {
    /// The event's name, as the API, the log and the metric label show it.
    pub fn as_str(self) -> &'static str {
        match self {
            Lifecycle::ClientRegistered => "client_registered",
            Lifecycle::ClientDeregistered => "client_deregistered",
            Lifecycle::ClientRevived => "client_revived",
            Lifecycle::ClientStale => "client_stale",
            Lifecycle::ClientDataRemoved => "client_data_removed",
            Lifecycle::WorkerSpawned => "worker_spawned",
            Lifecycle::WorkerStarted => "worker_started",
            Lifecycle::WorkerExited => "worker_exited",
            Lifecycle::WorkerRestarting => "worker_restarting",
            Lifecycle::WorkerStopped => "worker_stopped",
            Lifecycle::WorkerGaveUp => "worker_gave_up",
            Lifecycle::WorkerUnhealthy => "worker_unhealthy",
            Lifecycle::WorkerAdopted => "worker_adopted",
            Lifecycle::WorkerRecreated => "worker_recreated",
            Lifecycle::WorkerRestarted => "worker_restarted",
            Lifecycle::WorkerRestartedByOperator => "worker_restarted_by_operator",
            Lifecycle::WorkerReaped => "worker_reaped",
            Lifecycle::WorkerRemoved => "worker_removed",
            Lifecycle::PipelineRefused => "pipeline_refused",
        }
    }

    /// Whether the event leaves the worker running (a `worker_started` follows it).
    pub fn starts_worker(self) -> bool {
        matches!(
            self,
            Lifecycle::WorkerSpawned
                | Lifecycle::WorkerRestarted
                | Lifecycle::WorkerRestartedByOperator
                | Lifecycle::WorkerRecreated
        )
    }
}

impl std::fmt::Display for Lifecycle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One lifecycle event. Kept small (a static name, a shared worker name): a client has
/// several from its registration alone, and the control plane holds them for every client.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LifecycleEvent {
    pub at: DateTime<Utc>,
    pub event: Lifecycle,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub worker: Option<Arc<str>>,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub detail: String,
}

impl LifecycleEvent {
    /// Emits the event: counted in `cp_lifecycle_events_total`, logged, and recorded in
    /// the client's log. The one way a lifecycle event happens, so the three never differ.
    pub fn emit(self, client: &str, log: &EventLog, metrics: &ControlPlaneMetrics) {
        metrics.lifecycle(self.event.as_str());
        info!(event = self.event.as_str(), client_id = %client, worker = self.worker.as_deref().unwrap_or(""), detail = %self.detail, "lifecycle event");
        log.record(client, self);
    }
}

/// Per-client ring buffers.
#[derive(Clone, Default)]
pub struct EventLog {
    by_client: Arc<DashMap<String, VecDeque<LifecycleEvent>>>,
}

impl EventLog {
    pub fn record(&self, client: &str, event: LifecycleEvent) {
        let mut events = self.by_client.entry(client.to_string()).or_default();
        if events.len() >= EVENTS_PER_CLIENT {
            events.pop_front();
        }
        events.push_back(event);
    }

    /// The client's last `limit` events, oldest first.
    pub fn last(&self, client: &str, limit: usize) -> Vec<LifecycleEvent> {
        self.by_client
            .get(client)
            .map(|events| {
                let skip = events.len().saturating_sub(limit);
                events.iter().skip(skip).cloned().collect()
            })
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_log_keeps_only_the_last_events_of_each_client() {
        let log = EventLog::default();
        for n in 0..(EVENTS_PER_CLIENT + 5) {
            log.record(
                "af-9",
                LifecycleEvent {
                    at: Utc::now(),
                    event: Lifecycle::WorkerSpawned,
                    worker: None,
                    detail: format!("e{n}"),
                },
            );
        }
        let all = log.last("af-9", 1000);
        assert_eq!(all.len(), EVENTS_PER_CLIENT);
        assert_eq!(all[0].detail, "e5");
        assert_eq!(log.last("af-9", 2).len(), 2);
        assert!(log.last("other", 10).is_empty());
    }

    #[test]
    fn an_emitted_event_is_counted_and_recorded() {
        let (log, metrics) = (EventLog::default(), ControlPlaneMetrics::new());
        let event = LifecycleEvent {
            at: Utc::now(),
            event: Lifecycle::WorkerGaveUp,
            worker: Some("kg-log-normalizer-af-9".into()),
            detail: "too many restarts".into(),
        };
        event.clone().emit("af-9", &log, &metrics);
        assert_eq!(log.last("af-9", 10), [event]);
        let exposed = metrics.encode(kg_shared::exposition::ExpositionFormat::PrometheusText);
        assert!(
            exposed.contains(r#"cp_lifecycle_events_total{event="worker_gave_up"} 1"#),
            "{exposed}"
        );
    }
}
