//! The clients this controller acts on (`crate::ownership`): what a change of ownership
//! does, and the cut of a listing down to the workers of owned clients. Every other step
//! (supervision, probes, the plan, orphans, data removal) sees only that cut, so a worker
//! of a client another control plane owns is never restarted, adopted or reaped here.

use std::sync::Arc;

use tracing::info;

use super::Controller;
use crate::events::Lifecycle;
use crate::ownership::{Ownership, OwnershipChange};
use crate::runtime::{ObservedWorker, RuntimeState};
use crate::supervise::{RestartPolicy, WorkerPhase};
use crate::table::WorkerView;

impl Controller {
    /// Applies what the group said. A revocation stops every new action on those clients
    /// at once (the next plan leaves them out) and is answered once none is in flight.
    pub(super) fn apply_ownership(&mut self, change: OwnershipChange) {
        // With the eager protocol every rebalance revokes all, then assigns: what was
        // owned before the revocation (or before the assignment, when nothing was
        // revoked) is what a client gained is measured against, or every worker would
        // count as adopted on every rebalance.
        if self.gained_from.is_none() {
            self.gained_from = Some(self.ownership.clone());
        }
        match change {
            OwnershipChange::Revoked {
                partitions,
                released,
            } => {
                self.awaiting_assignment = true;
                self.ownership.revoke(&partitions);
                info!(?partitions, ownership = ?self.ownership, "registry partitions revoked");
                self.releasing.extend(released);
                self.release_if_quiet();
            }
            OwnershipChange::Assigned { partitions, count } => {
                self.awaiting_assignment = false;
                self.ownership.assign(&partitions, count);
                info!(?partitions, count, ownership = ?self.ownership, "registry partitions assigned");
            }
        }
        self.status.set_ownership(&self.ownership);
        self.metrics
            .owned_partitions
            .set(self.ownership.owned_count());
    }

    /// Answers the revocations waiting for in-flight actions on clients no longer owned,
    /// once there is none.
    pub(super) fn release_if_quiet(&mut self) {
        if self.releasing.is_empty() {
            return;
        }
        let busy = self
            .in_flight
            .values()
            .any(|(client, _)| !self.ownership.owns(client));
        if busy {
            return;
        }
        for released in self.releasing.drain(..) {
            let _ = released.send(());
        }
    }

    /// A listing cut in two: the workers of the clients this control plane acts on, and
    /// the others (shown by the API, never acted on).
    pub(super) fn split_owned(
        &self,
        listed: Vec<ObservedWorker>,
    ) -> (Vec<ObservedWorker>, Vec<ObservedWorker>) {
        if self.ownership == Ownership::All {
            return (listed, Vec::new());
        }
        listed
            .into_iter()
            .partition(|worker| self.ownership.owns(&worker.client_id))
    }

    /// After partitions were assigned: the running workers of the clients gained are
    /// adopted as they are (nothing is recreated; the plan keeps a worker whose spec
    /// matches), and each adoption is a lifecycle event, as on a restart.
    pub(super) fn note_gained(&mut self, owned: &[ObservedWorker]) {
        if self.awaiting_assignment {
            return;
        }
        let Some(before) = self.gained_from.take() else {
            return;
        };
        let adopted: Vec<(Arc<str>, Arc<str>, Arc<str>)> = owned
            .iter()
            .filter(|worker| matches!(worker.state, RuntimeState::Running { .. }))
            .filter(|worker| !before.owns(&worker.client_id))
            .map(|worker| {
                (
                    worker.client_id.clone(),
                    worker.name.clone(),
                    worker.id.clone(),
                )
            })
            .collect();
        if !adopted.is_empty() {
            info!(
                workers = adopted.len(),
                "adopting the running workers of the clients gained"
            );
        }
        for (client, name, id) in adopted {
            self.lifecycle(
                &client,
                Lifecycle::WorkerAdopted,
                Some(&name),
                format!("id {id}; its client's registry partition was assigned here"),
            );
        }
    }
}

/// How the API shows a worker another control plane acts on: what the runtime says of
/// it; its supervision (restarts, backoff) is the owner's.
pub(super) fn view_of_other(
    worker: &ObservedWorker,
    restart_policy: RestartPolicy,
) -> (Arc<str>, WorkerView) {
    let (state, exit_code) = match &worker.state {
        RuntimeState::Created => (WorkerPhase::Starting, None),
        RuntimeState::Running { .. } => (WorkerPhase::Running, None),
        RuntimeState::Exited { exit_code, .. } => (WorkerPhase::Stopped, *exit_code),
    };
    let view = WorkerView {
        role: worker.role.clone(),
        name: worker.name.clone(),
        id: worker.id.clone(),
        state,
        exit_code,
        restart_policy,
        restart_count: 0,
        last_exit_reason: None,
        next_retry_at: None,
        failed_reason: None,
        last_lines: None,
    };
    (worker.client_id.clone(), view)
}
