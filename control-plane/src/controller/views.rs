//! What the API and the metrics show of a listing: each worker's view (its phase, restarts,
//! why it stopped) and the gauges of workers and clients by state.

use std::collections::HashMap;
use std::sync::Arc;

use tracing::warn;

use super::Controller;
use crate::metrics::StateLabel;
use crate::runtime::ObservedWorker;
use crate::table::{ClientState, WorkerView};

impl Controller {
    /// Each worker as the API shows it; a shown phase that cannot follow the last one is
    /// reported (another actor touching our workers, or a bug), not refused.
    pub(super) fn worker_views(
        &mut self,
        observed: &[ObservedWorker],
    ) -> Vec<(Arc<str>, WorkerView)> {
        observed
            .iter()
            .map(|worker| {
                let in_flight = self.in_flight.get(&worker.name).map(|(_, kind)| *kind);
                let policy = self.policy(&worker.role);
                let record = self.workers.entry(&worker.name);
                let phase = record.shown_phase(worker, in_flight);
                let view = record.view(worker, phase, policy);
                if let Some(unexpected) = self.workers.show(&worker.name, phase) {
                    warn!(worker = %worker.name, from = unexpected.from.as_str(), to = unexpected.to.as_str(), "unexpected worker state transition");
                    self.metrics.lifecycle("unexpected_transition");
                }
                (worker.client_id.clone(), view)
            })
            .collect()
    }

    pub(super) fn update_gauges(&self, observed: &[ObservedWorker]) {
        let mut by_state: HashMap<&str, i64> = HashMap::new();
        for state in ["created", "running", "exited"] {
            by_state.insert(state, 0);
        }
        for worker in observed {
            *by_state.entry(worker.state.label()).or_default() += 1;
        }
        for (state, count) in by_state {
            self.metrics
                .workers
                .get_or_create(&StateLabel {
                    state: state.to_string(),
                })
                .set(count);
        }
        let (mut active, mut stale) = (0, 0);
        for record in self.writer.table().iter() {
            match record.state {
                ClientState::Active => active += 1,
                ClientState::Stale => stale += 1,
            }
        }
        for (state, count) in [("active", active), ("stale", stale)] {
            self.metrics
                .clients
                .get_or_create(&StateLabel {
                    state: state.to_string(),
                })
                .set(count);
        }
    }
}
