//! What the controller learns about workers it did not act on: adoptions on the first
//! listing, exits (each fed to the worker's supervision and its restart policy), and the
//! health probes' verdicts. A failed health verdict counts as a crash.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use tokio::task::JoinSet;

use super::health::{probe, ProbeReport};
use super::Controller;
use crate::events::Lifecycle;
use crate::runtime::{ObservedWorker, RuntimeState};
use crate::supervise::{ExitDecision, ExitInfo, RestartPolicy};

impl Controller {
    /// Running workers found by the first listing were started by an earlier instance.
    pub(super) fn note_adoptions(&mut self, observed: &[ObservedWorker]) {
        if std::mem::replace(&mut self.listed_before, true) {
            return;
        }
        for worker in observed {
            if matches!(worker.state, RuntimeState::Running { .. }) {
                let detail = format!("id {}", worker.id);
                self.lifecycle(
                    &worker.client_id,
                    Lifecycle::WorkerAdopted,
                    Some(&worker.name),
                    detail,
                );
            }
        }
    }

    /// Feeds the listing to each worker's supervision: running time (for the reset) and
    /// new exits (for the policy's decision).
    pub(super) fn supervise(&mut self, observed: &[ObservedWorker], now: DateTime<Utc>) {
        for worker in observed {
            match &worker.state {
                // Only a worker that has exited before has anything to supervise while it
                // runs (its backoff reset); supervision per healthy worker would cost
                // memory per client for nothing.
                RuntimeState::Running { .. } => {
                    let backoff = &self.settings.backoff;
                    self.workers.update(&worker.name, |record| {
                        if let Some(supervision) = &mut record.supervision {
                            supervision.observe_running(now, backoff);
                        }
                    });
                }
                RuntimeState::Exited {
                    exit_code,
                    exited_at,
                    oom_killed,
                } => {
                    let seen = self
                        .workers
                        .get(&worker.name)
                        .and_then(|record| record.supervision.as_ref()?.last_exit.as_ref())
                        .is_some_and(|exit| exit.at == *exited_at);
                    if !seen {
                        let exit = ExitInfo::new(*exit_code, *oom_killed, *exited_at);
                        self.observe_exit(
                            &worker.name,
                            &worker.client_id,
                            &worker.role,
                            exit,
                            Lifecycle::WorkerExited,
                            now,
                        );
                    }
                }
                RuntimeState::Created => {}
            }
        }
    }

    /// A worker exited, or failed its health checks (`event`): its policy decides what
    /// follows, and each step is a lifecycle event.
    fn observe_exit(
        &mut self,
        name: &Arc<str>,
        client: &Arc<str>,
        role: &str,
        exit: ExitInfo,
        event: Lifecycle,
        now: DateTime<Utc>,
    ) -> ExitDecision {
        let policy: RestartPolicy = self.policy(role);
        let reason = exit.reason.clone();
        let backoff = self.settings.backoff.clone();
        let decision = self
            .workers
            .supervision(name)
            .observe_exit(name, exit, policy, &backoff, now);
        self.lifecycle(client, event, Some(name), reason);
        match &decision {
            ExitDecision::RestartAt(at) => {
                let detail = format!("next retry at {} ({policy})", at.to_rfc3339());
                self.lifecycle(client, Lifecycle::WorkerRestarting, Some(name), detail);
            }
            ExitDecision::Stay => {
                // A failed health check leaves a running worker as it is; only an exit is
                // left stopped by its policy.
                if event == Lifecycle::WorkerExited {
                    let detail = format!("left stopped by policy {policy}");
                    self.lifecycle(client, Lifecycle::WorkerStopped, Some(name), detail);
                }
            }
            ExitDecision::GiveUp(reason) => {
                self.lifecycle(client, Lifecycle::WorkerGaveUp, Some(name), reason.clone());
                self.fetch_last_lines(name);
            }
        }
        decision
    }

    /// Queues every running worker for a probe, unless the previous round is still being
    /// worked through (then that round simply runs on).
    pub(super) fn queue_probe_round(&mut self) {
        if self.probe_queue.is_empty() {
            self.probe_queue.extend(self.running.iter().cloned());
        }
    }

    /// Starts queued probes up to the concurrency limit, skipping workers that are being
    /// probed or acted on already.
    pub(super) fn spawn_probes(&mut self, probes: &mut JoinSet<ProbeReport>) {
        while probes.len() < self.settings.health.max_concurrent.max(1) {
            let Some((name, client, role)) = self.probe_queue.pop_front() else {
                break;
            };
            let probing = self.workers.get(&name).is_some_and(|r| r.probing);
            if probing || self.in_flight.contains_key(&name) {
                continue;
            }
            self.workers.entry(&name).probing = true;
            let runtime = self.runtime.clone();
            let http = self.http.clone();
            let timeout = self.settings.health.timeout;
            probes.spawn(async move {
                let probe = probe(runtime.as_ref(), &http, &name, timeout).await;
                ProbeReport {
                    name,
                    client,
                    role,
                    probe,
                }
            });
        }
    }

    /// Counts a probe's verdict; enough consecutive failures count as a crash.
    pub(super) fn on_probe(&mut self, report: ProbeReport) {
        self.workers
            .update(&report.name, |record| record.probing = false);
        let Some(probe) = report.probe else {
            return;
        };
        let threshold = self.settings.health.failures.max(1);
        let failed = self
            .workers
            .entry(&report.name)
            .health
            .count(probe, threshold);
        let Some(detail) = failed else {
            return;
        };
        let now = self.clock.now();
        let mut exit = ExitInfo::new(None, false, now);
        exit.reason = format!("health check failed {threshold} times: {detail}");
        let decision = self.observe_exit(
            &report.name,
            &report.client,
            &report.role,
            exit,
            Lifecycle::WorkerUnhealthy,
            now,
        );
        if matches!(decision, ExitDecision::RestartAt(_)) {
            self.workers.entry(&report.name).unhealthy = true;
        }
    }

    /// Keeps the last lines a given-up worker wrote, for the API: the answer to "why?".
    /// Read in the background; the lines come back on the controller's own channel.
    fn fetch_last_lines(&mut self, name: &Arc<str>) {
        let runtime = self.runtime.clone();
        let name = name.clone();
        let timeout = self.settings.action_timeout;
        let lines = self.last_lines.0.clone();
        tokio::spawn(async move {
            if let Ok(Ok(text)) = tokio::time::timeout(timeout, runtime.logs(&name, 20)).await {
                let _ = lines.send((name, text)).await;
            }
        });
    }
}
