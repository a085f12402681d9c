//! One reconcile pass: list the runtime, take in what the listing shows, then (once the
//! registry has been replayed) admit waiting clients, plan, decide, and start the chosen
//! actions; and what happens when an action reports back.

use std::collections::HashSet;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tracing::{info, info_span, warn, Instrument};

use super::decide::{self, Limits, Proposed};
use super::executor::{execute, Action, ActionError, ActionReport, Operation};
use super::Controller;
use crate::events::Lifecycle;
use crate::metrics::OperationLabel;
use crate::plan::{plan, Desired, DesiredClient};
use crate::roles::RoleSet;
use crate::runtime::{ObservedWorker, RuntimeError, RuntimeState};

impl Controller {
    pub(super) async fn reconcile(
        &mut self,
        semaphore: &Arc<Semaphore>,
        actions: &mut JoinSet<ActionReport>,
    ) {
        let span = info_span!("reconcile");
        let Some(listed) = self.list().instrument(span.clone()).await else {
            return;
        };
        let _entered = span.enter();
        let now = self.clock.now();
        self.status.listed(now);
        let (observed, others) = self.split_owned(listed);
        self.note_gained(&observed);
        self.take_in(&observed, &others, now);
        self.metrics.reconciles.inc();
        if !self.registry_replayed {
            return;
        }
        self.admit_waiting(&observed, now);
        for action in self.decide(&observed, now) {
            self.spawn_action(action, semaphore, actions);
        }
    }

    /// Lists the runtime under the action timeout; a failure is reported in `/ready`.
    async fn list(&mut self) -> Option<Vec<ObservedWorker>> {
        let listed = tokio::time::timeout(self.settings.action_timeout, self.runtime.list()).await;
        let error = match listed {
            Ok(Ok(observed)) => return Some(observed),
            Ok(Err(error)) => error,
            Err(_) => RuntimeError::Timeout {
                operation: Operation::List.as_str(),
                name: "*".into(),
                after: self.settings.action_timeout,
            },
        };
        self.status
            .listing_failed(self.clock.now(), error.to_string());
        self.runtime_error(Operation::List, &error);
        None
    }

    /// What a listing tells: adoptions, exits, what runs (and is probed), each worker's
    /// view for the API, and which clients went stale.
    fn take_in(
        &mut self,
        observed: &[ObservedWorker],
        others: &[ObservedWorker],
        now: DateTime<Utc>,
    ) {
        self.note_adoptions(observed);
        self.supervise(observed, now);
        self.running = observed
            .iter()
            .filter(|w| matches!(w.state, RuntimeState::Running { .. }))
            .map(|w| (w.name.clone(), w.client_id.clone(), w.role.clone()))
            .collect();
        self.workers.listed(observed);
        let mut views = self.worker_views(observed);
        views.extend(
            others
                .iter()
                .map(|worker| super::owned::view_of_other(worker, self.policy(&worker.role))),
        );
        self.writer.set_workers(views);
        for client in self.writer.refresh_liveness(now) {
            if !self.ownership.owns(client.as_str()) {
                continue;
            }
            let detail = format!(
                "no heartbeat for {}s; reaping its workers",
                self.settings.heartbeat_timeout.as_secs()
            );
            self.lifecycle(client.as_str(), Lifecycle::ClientStale, None, detail);
        }
        self.update_gauges(observed);
    }

    /// The plan, then the decide step over it: the actions this pass starts.
    fn decide(&mut self, observed: &[ObservedWorker], now: DateTime<Utc>) -> Vec<Action> {
        let desired = self.desired(now);
        let plan = plan(&desired, observed, now);
        let hold = decide::hold_orphans(
            plan.to_remove,
            &self.workers.orphans_since(),
            |client| self.writer.was_deregistered(client),
            self.settings.orphan_grace,
            self.settings.orphan_dry_run,
            now,
        );
        for worker in &hold.found {
            warn!(event = "orphan_found", worker = %worker.name, client_id = %worker.client_id, dry_run = self.settings.orphan_dry_run, "a worker with our labels belongs to no registered client");
        }
        self.metrics.orphans.set(hold.since.len() as i64);
        self.workers.set_orphans(&hold.since);
        let mut restarts = decide::health_restarts(observed, &self.workers, &self.specs, now);
        for action in &restarts {
            self.workers
                .update(&action.target(), |record| record.unhealthy = false);
        }
        let requests = std::mem::take(&mut self.restart_requests);
        let requested = decide::operator_restarts(
            &requests,
            observed,
            &self.workers,
            &self.in_flight,
            &self.specs,
        );
        for action in &requested {
            self.workers.update(&action.target(), |record| {
                if let Some(supervision) = &mut record.supervision {
                    supervision.reset_by_operator();
                }
                record.last_lines = None;
            });
        }
        restarts.extend(requested);
        let proposed = Proposed {
            removals: hold.kept,
            recreations: plan.to_recreate,
            creations: plan.to_create,
            restarts,
            data_to_remove: self
                .data_to_remove
                .iter()
                .filter(|client| self.ownership.owns(client))
                .cloned()
                .collect(),
        };
        let limits = Limits {
            max_recreates_per_pass: self.settings.max_recreates_per_pass,
            max_concurrent_actions: self.settings.max_concurrent_actions,
        };
        decide::decide(proposed, observed, &self.in_flight, limits)
    }

    /// The admission step of a pass: waiting clients admitted now (those whose workers
    /// run first and free, then the rest in arrival order as the rate and the cap allow).
    fn admit_waiting(&mut self, observed: &[ObservedWorker], now: DateTime<Utc>) {
        if self.admission.waiting() > 0 {
            let with_workers: HashSet<&str> = observed.iter().map(|w| &*w.client_id).collect();
            let admitted = self.admission.admit_waiting(
                self.writer.table().len(),
                |client| with_workers.contains(client.as_str()),
                now,
            );
            for admitted in admitted {
                let how = if admitted.had_workers {
                    " admitted=workers_running"
                } else {
                    " admitted=in_turn"
                };
                let client = admitted.registration.client_id.clone();
                self.register_admitted(admitted.registration, admitted.at, now, how);
                if let Some(at) = admitted.last_heartbeat {
                    self.writer.heartbeat(&client, at, now);
                }
            }
        }
        self.ask_for_refill();
        self.metrics
            .admission_waiting
            .set(self.admission.waiting() as i64);
    }

    /// Starts a re-read of the registry when admission dropped registrations and the line
    /// has room again. Never waits: with a re-read queued, the marks stay for a later pass.
    fn ask_for_refill(&mut self) {
        let Some(refills) = &self.refills else {
            return;
        };
        let Some(marks) = self.admission.take_refill() else {
            return;
        };
        let from = format!("{marks:?}");
        match refills.try_send(marks) {
            Ok(()) => {
                self.metrics.admission_refills.inc();
                info!(waiting = self.admission.waiting(), %from, "reading the registry again for registrations dropped past the waiting line");
            }
            Err(failed) => self.admission.refill_done(failed.into_inner()),
        }
    }

    /// What should run: every client in the table (and the shared workers), with where
    /// each exited worker's restart stands.
    fn desired(&mut self, now: DateTime<Utc>) -> Desired {
        let mut clients = Vec::with_capacity(self.writer.table().len() + 1);
        let mut owned_clients = 0;
        // The shared workers belong to whoever owns their pseudo-client's partition.
        if let Some((client_id, specs)) = self
            .shared
            .as_ref()
            .filter(|(client_id, _)| self.ownership.owns(client_id.as_str()))
        {
            clients.push(DesiredClient {
                client_id: client_id.clone(),
                last_seen: now,
                specs: specs.clone(),
            });
        }
        for record in self.writer.table().iter() {
            if !self.ownership.owns(record.client_id.as_str()) {
                continue;
            }
            let specs = self
                .specs
                .entry(record.client_id.clone())
                .or_insert_with(|| {
                    // The roles, the default pipelines, and the requestable pipelines the
                    // latest registration asked for (refusals were reported when it came).
                    let field = crate::pipelines::field_of(record.registration.get());
                    let requests = crate::pipelines::requested(field.as_ref(), &self.pipelines);
                    let mut parts = self.role_parts.clone();
                    parts.extend(
                        requests
                            .accepted
                            .iter()
                            .filter_map(|name| self.requestable_parts.get(name).cloned()),
                    );
                    RoleSet::render_with(&record.client_id, &parts).into()
                })
                .clone();
            clients.push(DesiredClient {
                client_id: record.client_id.clone(),
                last_seen: record.last_seen(),
                specs,
            });
            owned_clients += 1;
        }
        self.metrics.owned_clients.set(owned_clients);
        Desired {
            clients,
            heartbeat_timeout: self.settings.heartbeat_timeout,
            restart_delay: chrono::Duration::from_std(self.settings.restart_delay)
                .unwrap_or(chrono::Duration::seconds(2)),
            restart_gates: self.workers.restart_gates(now),
        }
    }

    /// Hands an action to the executor: it waits for a permit, runs under the action
    /// timeout, and reports back to [`Controller::finish`].
    fn spawn_action(
        &mut self,
        action: Action,
        semaphore: &Arc<Semaphore>,
        actions: &mut JoinSet<ActionReport>,
    ) {
        let name = action.target();
        if self.in_flight.contains_key(&name) {
            return;
        }
        let client_id: Arc<str> = action.client_id().into();
        self.in_flight
            .insert(name.clone(), (client_id.clone(), action.kind()));
        let runtime = self.runtime.clone();
        let semaphore = semaphore.clone();
        let timeout = self.settings.action_timeout;
        let grace = self.settings.stop_grace;
        let span = info_span!("action", client_id = %client_id, worker = %name);
        actions.spawn(
            async move {
                let _permit = semaphore.acquire_owned().await;
                let result = execute(runtime.as_ref(), &action, timeout, grace).await;
                ActionReport {
                    name,
                    client_id,
                    result,
                }
            }
            .instrument(span),
        );
    }

    /// An action reported back: its lifecycle event, and what it changes in supervision.
    pub(super) fn finish(&mut self, report: ActionReport) {
        self.in_flight.remove(&report.name);
        let event = match report.result {
            Ok(event) => event,
            Err(ref error) => return self.runtime_error_for(&report, error),
        };
        if let Some(client) = report.name.strip_prefix("data:") {
            self.data_to_remove.remove(client);
        }
        let now = self.clock.now();
        match event {
            Lifecycle::WorkerRestarted | Lifecycle::WorkerRestartedByOperator => {
                self.workers.update(&report.name, |record| {
                    if let Some(supervision) = &mut record.supervision {
                        supervision.note_restarted(now);
                    }
                });
            }
            Lifecycle::WorkerReaped | Lifecycle::WorkerRemoved => {
                self.workers
                    .update(&report.name, |record| record.supervision = None);
            }
            _ => {}
        }
        let client = report.client_id.clone();
        self.lifecycle(&client, event, Some(&report.name), String::new());
        if event.starts_worker() {
            self.lifecycle(
                &client,
                Lifecycle::WorkerStarted,
                Some(&report.name),
                String::new(),
            );
        }
    }

    fn runtime_error(&self, operation: Operation, error: &RuntimeError) {
        self.metrics
            .runtime_errors
            .get_or_create(&OperationLabel {
                operation: operation.as_str().to_string(),
            })
            .inc();
        warn!(operation = operation.as_str(), %error, "runtime call failed");
    }

    fn runtime_error_for(&self, report: &ActionReport, error: &ActionError) {
        self.metrics
            .runtime_errors
            .get_or_create(&OperationLabel {
                operation: error.operation.as_str().to_string(),
            })
            .inc();
        warn!(operation = error.operation.as_str(), client_id = %report.client_id, worker = %report.name, error = %error.source, "worker action failed; retried on a later pass");
    }
}
