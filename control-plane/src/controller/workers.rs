//! What the controller keeps per worker: one record, keyed by the worker's name, instead
//! of a map per concern kept in step by hand. Each field keeps the lifetime it had as a
//! map of its own (supervision until the worker is reaped or removed, health while it
//! runs, the last shown phase while it is listed, …); a record whose fields are all empty
//! is dropped, so the map stays the size of what is worth remembering.
//!
//! What is in flight is not here: it is the executor's ledger ([`super::decide::InFlight`]),
//! keyed by action target, and a target is a worker or a client's data.

use std::collections::HashMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};

use super::executor::ActionKind;
use super::health::HealthRecord;
use crate::plan::RestartGate;
use crate::runtime::{ObservedWorker, RuntimeState};
use crate::supervise::{RestartPolicy, Supervision, WorkerPhase};
use crate::table::WorkerView;

/// Everything the controller remembers of one worker.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct WorkerRecord {
    /// Restarts, backoff and give-up: from its first exit (or failed health verdict) until
    /// it is reaped or removed. A worker that never exited has none, so a healthy fleet
    /// costs no supervision state.
    pub supervision: Option<Supervision>,
    /// Consecutive failed probes and whether it reports degraded: while it runs.
    pub health: HealthRecord,
    /// Failed by its health checks: recreated once its backoff is due.
    pub unhealthy: bool,
    /// A probe of it is in flight.
    pub probing: bool,
    /// Its phase as last shown, to report transitions the controller does not make.
    pub last_phase: Option<WorkerPhase>,
    /// A worker of a never-registered client: when it was first seen.
    pub orphan_since: Option<DateTime<Utc>>,
    /// What it last wrote, read once it was given up: the answer to "why?".
    pub last_lines: Option<String>,
}

impl WorkerRecord {
    /// Nothing left worth remembering.
    fn is_empty(&self) -> bool {
        *self == WorkerRecord::default()
    }

    /// The phase of a listed worker, from the runtime's state, its supervision and any
    /// action in flight.
    pub fn phase(&self, worker: &ObservedWorker, in_flight: Option<ActionKind>) -> WorkerPhase {
        phase(worker, self.supervision.as_ref(), in_flight)
    }

    /// The phase the API shows: a running worker that is unwell is degraded.
    pub fn shown_phase(
        &self,
        worker: &ObservedWorker,
        in_flight: Option<ActionKind>,
    ) -> WorkerPhase {
        match self.phase(worker, in_flight) {
            WorkerPhase::Running if self.unwell() => WorkerPhase::Degraded,
            phase => phase,
        }
    }

    /// Whether it is running but unwell: failing probes, degraded, or failed by its checks.
    fn unwell(&self) -> bool {
        self.health.failures > 0 || self.health.degraded || self.unhealthy
    }

    /// The worker as the API shows it, in `phase`.
    pub fn view(
        &self,
        worker: &ObservedWorker,
        phase: WorkerPhase,
        policy: RestartPolicy,
    ) -> WorkerView {
        let supervision = self.supervision.as_ref();
        let exit_code = match &worker.state {
            RuntimeState::Exited { exit_code, .. } => *exit_code,
            _ => None,
        };
        WorkerView {
            role: worker.role.clone(),
            name: worker.name.clone(),
            id: worker.id.clone(),
            state: phase,
            exit_code,
            restart_policy: policy,
            restart_count: supervision.map_or(0, |s| s.restart_count),
            last_exit_reason: supervision
                .and_then(|s| s.last_exit.as_ref())
                .map(|exit| exit.reason.clone()),
            next_retry_at: supervision.and_then(|s| s.next_retry_at),
            failed_reason: supervision.and_then(|s| s.failed_reason.clone()),
            last_lines: self.last_lines.clone(),
        }
    }
}

/// The phase of a listed worker, from the runtime's state, supervision and any action in
/// flight.
pub fn phase(
    worker: &ObservedWorker,
    supervision: Option<&Supervision>,
    in_flight: Option<ActionKind>,
) -> WorkerPhase {
    match (in_flight, &worker.state) {
        (Some(ActionKind::Remove), _) => WorkerPhase::Stopping,
        (Some(_), RuntimeState::Running { .. }) => WorkerPhase::Stopping,
        (Some(_), _) => WorkerPhase::Starting,
        (None, RuntimeState::Running { .. }) => WorkerPhase::Running,
        (None, RuntimeState::Created) => WorkerPhase::Starting,
        (None, RuntimeState::Exited { .. }) => match supervision {
            Some(s) if s.failed_reason.is_some() => WorkerPhase::Failed,
            Some(s) if s.next_retry_at.is_some() => WorkerPhase::BackingOff,
            Some(s) if s.stopped => WorkerPhase::Stopped,
            _ => WorkerPhase::BackingOff,
        },
    }
}

/// A shown phase that the previous one cannot become: reported, not refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnexpectedTransition {
    pub from: WorkerPhase,
    pub to: WorkerPhase,
}

/// The records of every worker worth remembering, by name.
#[derive(Debug, Default)]
pub struct Workers {
    records: HashMap<Arc<str>, WorkerRecord>,
}

impl Workers {
    pub fn get(&self, name: &str) -> Option<&WorkerRecord> {
        self.records.get(name)
    }

    /// The record of `name`, made empty if there was none.
    pub fn entry(&mut self, name: &Arc<str>) -> &mut WorkerRecord {
        self.records.entry(name.clone()).or_default()
    }

    /// Changes the record of `name` if there is one; an empty result is dropped.
    pub fn update(&mut self, name: &str, change: impl FnOnce(&mut WorkerRecord)) {
        if let Some(record) = self.records.get_mut(name) {
            change(record);
            if record.is_empty() {
                self.records.remove(name);
            }
        }
    }

    /// The supervision of `name`, started if it had none.
    pub fn supervision(&mut self, name: &Arc<str>) -> &mut Supervision {
        self.entry(name)
            .supervision
            .get_or_insert_with(Supervision::default)
    }

    /// Records the phase `name` is shown in now; the previous one, if it cannot become it.
    pub fn show(&mut self, name: &Arc<str>, phase: WorkerPhase) -> Option<UnexpectedTransition> {
        let previous = self.entry(name).last_phase.replace(phase)?;
        (!previous.can_become(phase)).then_some(UnexpectedTransition {
            from: previous,
            to: phase,
        })
    }

    /// After a listing: health is kept only for running workers and the shown phase only
    /// for listed ones, so neither grows past the listing.
    pub fn listed(&mut self, observed: &[ObservedWorker]) {
        let listed: HashMap<&str, bool> = observed
            .iter()
            .map(|w| (&*w.name, matches!(w.state, RuntimeState::Running { .. })))
            .collect();
        self.retain(|name, record| match listed.get(name) {
            Some(true) => {}
            Some(false) => record.health = HealthRecord::default(),
            None => {
                record.health = HealthRecord::default();
                record.last_phase = None;
            }
        });
    }

    /// The orphans of this pass and since when each was seen: the rest are orphans no more.
    pub fn set_orphans(&mut self, since: &HashMap<Arc<str>, DateTime<Utc>>) {
        self.retain(|name, record| record.orphan_since = since.get(name).copied());
        for (name, first_seen) in since {
            self.entry(name).orphan_since = Some(*first_seen);
        }
    }

    /// Orphans seen so far, and since when: what the orphan hold starts from.
    pub fn orphans_since(&self) -> HashMap<Arc<str>, DateTime<Utc>> {
        self.records
            .iter()
            .filter_map(|(name, record)| Some((name.clone(), record.orphan_since?)))
            .collect()
    }

    /// Where each exited worker's restart stands, for the plan.
    pub fn restart_gates(&self, now: DateTime<Utc>) -> HashMap<Arc<str>, RestartGate> {
        self.records
            .iter()
            .filter_map(|(name, record)| Some((name, record.supervision.as_ref()?)))
            .filter(|(_, s)| s.last_exit.is_some() && s.running_since.is_none())
            .map(|(name, s)| {
                let gate = if s.restart_due(now) {
                    RestartGate::Due
                } else if s.next_retry_at.is_some() {
                    RestartGate::NotYet
                } else {
                    RestartGate::Never
                };
                (name.clone(), gate)
            })
            .collect()
    }

    /// Changes every record, then drops the empty ones.
    fn retain(&mut self, mut change: impl FnMut(&str, &mut WorkerRecord)) {
        self.records.retain(|name, record| {
            change(name, record);
            !record.is_empty()
        });
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.records.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::supervise::ExitInfo;

    fn t(seconds: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_760_000_000 + seconds, 0).unwrap()
    }

    fn worker(name: &str, state: RuntimeState) -> ObservedWorker {
        ObservedWorker {
            name: name.into(),
            id: format!("id-{name}").into(),
            client_id: "acme".into(),
            role: "event-normalizer".into(),
            spec_hash: "h".into(),
            state,
        }
    }

    fn exited() -> RuntimeState {
        RuntimeState::Exited {
            exit_code: Some(1),
            exited_at: t(0),
            oom_killed: false,
        }
    }

    #[test]
    fn each_field_keeps_its_own_lifetime_and_empty_records_go() {
        let mut workers = Workers::default();
        let (a, b, c): (Arc<str>, Arc<str>, Arc<str>) = ("a".into(), "b".into(), "c".into());
        workers.entry(&a).health.failures = 2;
        workers.entry(&a).last_phase = Some(WorkerPhase::Running);
        workers.supervision(&b).last_exit = Some(ExitInfo::new(Some(1), false, t(0)));
        workers.entry(&c).last_phase = Some(WorkerPhase::Running);
        // a has exited (health forgotten, phase kept); b and c are no longer listed.
        workers.listed(&[worker("a", exited())]);
        let a_record = workers.get("a").unwrap();
        assert_eq!(a_record.health, HealthRecord::default());
        assert_eq!(a_record.last_phase, Some(WorkerPhase::Running));
        // Supervision outlives the listing; a record with nothing left goes.
        assert!(workers.get("b").unwrap().supervision.is_some());
        assert!(workers.get("c").is_none());
        workers.update("b", |record| record.supervision = None);
        assert!(workers.get("b").is_none());
        assert_eq!(workers.len(), 1);
    }

    #[test]
    fn orphans_are_replaced_by_each_pass() {
        let mut workers = Workers::default();
        let (a, b): (Arc<str>, Arc<str>) = ("a".into(), "b".into());
        workers.set_orphans(&HashMap::from([(a.clone(), t(0)), (b.clone(), t(5))]));
        assert_eq!(workers.orphans_since().len(), 2);
        workers.set_orphans(&HashMap::from([(b.clone(), t(5))]));
        assert_eq!(workers.orphans_since(), HashMap::from([(b, t(5))]));
        assert!(workers.get("a").is_none());
    }

    #[test]
    fn a_shown_phase_that_cannot_follow_the_last_is_reported() {
        let mut workers = Workers::default();
        let a: Arc<str> = "a".into();
        assert_eq!(workers.show(&a, WorkerPhase::Running), None);
        assert_eq!(workers.show(&a, WorkerPhase::BackingOff), None);
        assert_eq!(
            workers.show(&a, WorkerPhase::Creating),
            Some(UnexpectedTransition {
                from: WorkerPhase::BackingOff,
                to: WorkerPhase::Creating
            })
        );
    }

    #[test]
    fn the_phase_comes_from_the_action_in_flight_then_the_runtime_then_supervision() {
        let running = worker("a", RuntimeState::Running { started_at: t(0) });
        let stopped = worker("a", exited());
        let given_up = Supervision {
            failed_reason: Some("too many restarts".into()),
            ..Supervision::default()
        };
        let left = Supervision {
            stopped: true,
            ..Supervision::default()
        };
        let cases = [
            (
                &running,
                None,
                Some(ActionKind::Remove),
                WorkerPhase::Stopping,
            ),
            (
                &running,
                None,
                Some(ActionKind::Recreate),
                WorkerPhase::Stopping,
            ),
            (
                &stopped,
                None,
                Some(ActionKind::Recreate),
                WorkerPhase::Starting,
            ),
            (&running, None, None, WorkerPhase::Running),
            (&stopped, Some(&given_up), None, WorkerPhase::Failed),
            (&stopped, Some(&left), None, WorkerPhase::Stopped),
            (&stopped, None, None, WorkerPhase::BackingOff),
        ];
        for (worker, supervision, in_flight, expected) in cases {
            assert_eq!(phase(worker, supervision, in_flight), expected);
        }
    }

    #[test]
    fn running_but_failing_probes_or_failed_by_them_is_unwell() {
        let mut record = WorkerRecord::default();
        assert!(!record.unwell());
        record.health.degraded = true;
        assert!(record.unwell());
        record = WorkerRecord {
            unhealthy: true,
            ..WorkerRecord::default()
        };
        assert!(record.unwell());
    }
}
