//! The last lifecycle events of each client, readable from the API
//! (`GET /clients/{id}/events`). The controller is the only writer; the log is bounded per
//! client so a crash-looping worker cannot grow it without limit.

use std::collections::VecDeque;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use dashmap::DashMap;
use serde::Serialize;

/// Events kept per client.
pub const EVENTS_PER_CLIENT: usize = 100;

/// One lifecycle event. Kept small (a static name, a shared worker name): a client has
/// several from its registration alone, and the control plane holds them for every client.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LifecycleEvent {
    pub at: DateTime<Utc>,
    /// `worker_spawned`, `worker_exited`, `worker_restarting`, `worker_gave_up`, …
    pub event: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub worker: Option<Arc<str>>,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub detail: String,
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
                    event: "worker_spawned",
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
}
