//! The planner: a pure function from what should run (registered clients, their liveness
//! and their workers' specs), what runs (the runtime's listing) and the time, to the actions
//! that close the gap. No I/O, no clock: everything it needs is passed in, so it is tested
//! with tables and properties.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use chrono::{DateTime, Duration, Utc};
use kg_shared::ClientId;

use crate::liveness::HeartbeatTimeout;
use crate::runtime::{ObservedWorker, RuntimeState, WorkerSpec};

/// One registered client as the planner sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct DesiredClient {
    pub client_id: ClientId,
    /// The later of the last registration and the last heartbeat.
    pub last_seen: DateTime<Utc>,
    /// The workers it should have while it is live.
    /// Shared with the controller's cache: a pass clones no spec it does not act on.
    pub specs: std::sync::Arc<[WorkerSpec]>,
}

/// Everything that should be.
#[derive(Debug, Clone, PartialEq)]
pub struct Desired {
    pub clients: Vec<DesiredClient>,
    /// A client not seen for this long is stale and its workers go.
    pub heartbeat_timeout: HeartbeatTimeout,
    /// An exited worker that supervision has not judged yet is started again once it has
    /// been down this long.
    pub restart_delay: Duration,
    /// Supervision's verdict on exited workers, by name.
    pub restart_gates: HashMap<std::sync::Arc<str>, RestartGate>,
}

/// Supervision's verdict on an exited worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestartGate {
    /// Its backoff has run out: start it again.
    Due,
    /// Backing off.
    NotYet,
    /// Its policy leaves it stopped, or it was given up as failed.
    Never,
}

/// Why a worker is recreated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecreateReason {
    /// Its spec hash differs from the configured one.
    SpecChanged,
    /// It exited (or never started) and its client is live.
    NotRunning,
    /// An operator asked for it.
    Requested,
}

/// Why a worker is removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RemoveReason {
    /// Its client stopped heartbeating.
    ClientStale,
    /// Its client is not registered (deregistered, or never was).
    ClientUnknown,
    /// Its role is no longer in the role set.
    RoleRemoved,
}

/// The actions of one reconcile pass.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Plan {
    pub to_create: Vec<WorkerSpec>,
    pub to_recreate: Vec<(ObservedWorker, WorkerSpec, RecreateReason)>,
    pub to_remove: Vec<(ObservedWorker, RemoveReason)>,
    /// Registered clients that are past their heartbeat deadline.
    pub stale_clients: Vec<ClientId>,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.to_create.is_empty() && self.to_recreate.is_empty() && self.to_remove.is_empty()
    }
}

/// Computes the actions that make `observed` match `desired` at `now`.
pub fn plan(desired: &Desired, observed: &[ObservedWorker], now: DateTime<Utc>) -> Plan {
    let mut result = Plan::default();
    let mut wanted: BTreeMap<&str, &WorkerSpec> = BTreeMap::new();
    let mut stale: BTreeSet<&str> = BTreeSet::new();
    let mut registered: BTreeSet<&str> = BTreeSet::new();
    for client in &desired.clients {
        registered.insert(client.client_id.as_str());
        if desired.heartbeat_timeout.is_live(client.last_seen, now) {
            for spec in client.specs.iter() {
                wanted.insert(&*spec.name, spec);
            }
        } else {
            stale.insert(client.client_id.as_str());
            result.stale_clients.push(client.client_id.clone());
        }
    }

    let mut seen: BTreeSet<&str> = BTreeSet::new();
    for worker in observed {
        match wanted.get(&*worker.name) {
            Some(spec) if spec.client_id.as_str() == &*worker.client_id => {
                seen.insert(&*spec.name);
                if worker.spec_hash != spec.spec_hash {
                    result.to_recreate.push((
                        worker.clone(),
                        (*spec).clone(),
                        RecreateReason::SpecChanged,
                    ));
                } else if needs_restart(
                    &worker.state,
                    desired.restart_gates.get(&*worker.name).copied(),
                    now,
                    desired.restart_delay,
                ) {
                    result.to_recreate.push((
                        worker.clone(),
                        (*spec).clone(),
                        RecreateReason::NotRunning,
                    ));
                }
            }
            _ => {
                let reason = if stale.contains(&*worker.client_id) {
                    RemoveReason::ClientStale
                } else if registered.contains(&*worker.client_id) {
                    RemoveReason::RoleRemoved
                } else {
                    RemoveReason::ClientUnknown
                };
                result.to_remove.push((worker.clone(), reason));
            }
        }
    }
    for (name, spec) in wanted {
        if !seen.contains(name) {
            result.to_create.push(spec.clone());
        }
    }
    result
}

fn needs_restart(
    state: &RuntimeState,
    gate: Option<RestartGate>,
    now: DateTime<Utc>,
    delay: Duration,
) -> bool {
    match (state, gate) {
        (RuntimeState::Running { .. }, _) => false,
        (RuntimeState::Created, _) => true,
        (RuntimeState::Exited { .. }, Some(gate)) => gate == RestartGate::Due,
        (RuntimeState::Exited { exited_at, .. }, None) => now - *exited_at >= delay,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_fixtures::{default_roles as roles, running, t};
    use proptest::prelude::*;
    use std::sync::Arc;

    fn client(id: &str, last_seen: i64) -> DesiredClient {
        let client_id = ClientId::parse(id).unwrap();
        DesiredClient {
            specs: roles().render(&client_id, &[]).into(),
            client_id,
            last_seen: t(last_seen),
        }
    }

    fn desired(clients: Vec<DesiredClient>) -> Desired {
        Desired {
            clients,
            heartbeat_timeout: HeartbeatTimeout::default(),
            restart_delay: Duration::seconds(2),
            restart_gates: HashMap::new(),
        }
    }

    fn names(specs: &[WorkerSpec]) -> Vec<&str> {
        specs.iter().map(|s| &*s.name).collect()
    }

    #[test]
    fn plan_creates_every_role_for_a_newly_registered_client() {
        let plan = plan(&desired(vec![client("af-9", 0)]), &[], t(1));
        assert_eq!(
            names(&plan.to_create),
            [
                "kg-event-normalizer-af-9",
                "kg-graph-builder-af-9",
                "kg-log-normalizer-af-9"
            ]
        );
        assert!(plan.to_remove.is_empty() && plan.to_recreate.is_empty());
    }

    #[test]
    fn plan_adopts_running_workers_that_match_their_spec() {
        let wanted = client("af-9", 0);
        let observed: Vec<_> = wanted.specs.iter().map(running).collect();
        assert!(plan(&desired(vec![wanted]), &observed, t(10)).is_empty());
    }

    #[test]
    fn plan_removes_workers_of_a_stale_client_at_the_deadline_not_before() {
        let wanted = client("af-9", 0);
        let observed: Vec<_> = wanted.specs.iter().map(running).collect();
        let d = desired(vec![wanted]);
        assert!(plan(&d, &observed, t(119)).is_empty());
        let at_deadline = plan(&d, &observed, t(120));
        assert_eq!(at_deadline.to_remove.len(), 3);
        assert!(at_deadline
            .to_remove
            .iter()
            .all(|(_, reason)| *reason == RemoveReason::ClientStale));
        assert_eq!(
            at_deadline.stale_clients,
            [ClientId::parse("af-9").unwrap()]
        );
    }

    #[test]
    fn plan_removes_workers_of_deregistered_client() {
        let gone = client("af-9", 0);
        let observed: Vec<_> = gone.specs.iter().map(running).collect();
        let plan = plan(&desired(vec![]), &observed, t(1));
        assert_eq!(plan.to_remove.len(), 3);
        assert!(plan
            .to_remove
            .iter()
            .all(|(_, reason)| *reason == RemoveReason::ClientUnknown));
    }

    #[test]
    fn plan_recreates_a_worker_whose_spec_changed() {
        let wanted = client("af-9", 0);
        let mut observed: Vec<_> = wanted.specs.iter().map(running).collect();
        observed[0].spec_hash = "old".into();
        let plan = plan(&desired(vec![wanted]), &observed, t(1));
        assert_eq!(plan.to_recreate.len(), 1);
        assert_eq!(plan.to_recreate[0].2, RecreateReason::SpecChanged);
    }

    #[test]
    fn plan_restarts_an_exited_worker_only_after_the_restart_delay() {
        let wanted = client("af-9", 0);
        let mut observed: Vec<_> = wanted.specs.iter().map(running).collect();
        observed[1].state = RuntimeState::Exited {
            exit_code: Some(137),
            exited_at: t(10),
            oom_killed: false,
        };
        let d = desired(vec![wanted]);
        assert!(plan(&d, &observed, t(11)).is_empty());
        let later = plan(&d, &observed, t(12));
        assert_eq!(later.to_recreate.len(), 1);
        assert_eq!(later.to_recreate[0].2, RecreateReason::NotRunning);
    }

    #[test]
    fn plan_follows_supervision_for_exited_workers() {
        let wanted = client("af-9", 0);
        let mut observed: Vec<_> = wanted.specs.iter().map(running).collect();
        for worker in observed.iter_mut() {
            worker.state = RuntimeState::Exited {
                exit_code: Some(1),
                exited_at: t(0),
                oom_killed: false,
            };
        }
        let mut d = desired(vec![wanted]);
        let gates = [RestartGate::Due, RestartGate::NotYet, RestartGate::Never];
        for (worker, gate) in observed.iter().zip(gates) {
            d.restart_gates.insert(worker.name.clone(), gate);
        }
        let plan = plan(&d, &observed, t(100));
        assert_eq!(plan.to_recreate.len(), 1);
        assert_eq!(plan.to_recreate[0].0.name, observed[0].name);
    }

    #[test]
    fn plan_removes_workers_of_a_role_no_longer_configured() {
        let mut wanted = client("af-9", 0);
        let observed: Vec<_> = wanted.specs.iter().map(running).collect();
        wanted.specs = wanted.specs[..1].to_vec().into();
        let plan = plan(&desired(vec![wanted]), &observed, t(1));
        assert_eq!(plan.to_remove.len(), 2);
        assert_eq!(plan.to_remove[0].1, RemoveReason::RoleRemoved);
    }

    #[test]
    fn plan_never_creates_for_a_stale_client() {
        let plan = plan(&desired(vec![client("af-9", 0)]), &[], t(500));
        assert!(plan.to_create.is_empty());
        assert_eq!(plan.stale_clients.len(), 1);
    }

    #[test]
    fn one_clients_workers_never_satisfy_another_client() {
        // A worker whose name matches but whose label says another client is not adopted.
        let wanted = client("af-9", 0);
        let mut impostor = running(&wanted.specs[0]);
        impostor.client_id = "other".into();
        let plan = plan(&desired(vec![wanted]), &[impostor], t(1));
        assert_eq!(plan.to_remove.len(), 1);
        assert_eq!(plan.to_create.len(), 3);
    }

    fn arb_state() -> impl Strategy<Value = RuntimeState> {
        prop_oneof![
            Just(RuntimeState::Created),
            (0i64..300).prop_map(|s| RuntimeState::Running { started_at: t(s) }),
            (0i64..300, proptest::option::of(0i32..256)).prop_map(|(s, code)| {
                RuntimeState::Exited {
                    exit_code: code,
                    exited_at: t(s),
                    oom_killed: false,
                }
            }),
        ]
    }

    proptest! {
        /// After applying a plan, every live client has exactly one worker per role, and no
        /// stale or unknown client keeps any.
        #[test]
        fn applying_a_plan_converges(
            clients in proptest::collection::btree_map("[a-z][a-z0-9]{0,5}", 0i64..400, 0..6),
            observed_clients in proptest::collection::vec(("[a-z][a-z0-9]{0,5}", 0usize..2, arb_state(), any::<bool>()), 0..12),
            now in 0i64..400,
        ) {
            let desired = desired(clients.iter().map(|(id, seen)| client(id, *seen)).collect());
            let set = roles();
            let mut observed: BTreeMap<Arc<str>, ObservedWorker> = BTreeMap::new();
            for (id, role, state, same_hash) in observed_clients {
                let spec = &set.render(&ClientId::parse(&id).unwrap(), &[])[role];
                let mut worker = running(spec);
                worker.state = state;
                if !same_hash { worker.spec_hash = "stale".into(); }
                observed.insert(worker.name.clone(), worker);
            }
            let observed: Vec<_> = observed.into_values().collect();
            let plan = plan(&desired, &observed, t(now));

            // Apply it the way the executor does.
            let mut after: BTreeMap<Arc<str>, Arc<str>> = observed.iter().map(|w| (w.name.clone(), w.spec_hash.clone())).collect();
            for (worker, _) in &plan.to_remove { after.remove(&worker.name); }
            for (worker, spec, _) in &plan.to_recreate { after.remove(&worker.name); after.insert(spec.name.clone(), spec.spec_hash.clone()); }
            for spec in &plan.to_create {
                prop_assert!(!after.contains_key(&spec.name), "create of an existing name {}", spec.name);
                after.insert(spec.name.clone(), spec.spec_hash.clone());
            }
            let mut expected = BTreeMap::new();
            for c in &desired.clients {
                if desired.heartbeat_timeout.is_live(c.last_seen, t(now)) {
                    for spec in c.specs.iter() { expected.insert(spec.name.clone(), spec.spec_hash.clone()); }
                }
            }
            prop_assert_eq!(after, expected);
        }
    }
}
