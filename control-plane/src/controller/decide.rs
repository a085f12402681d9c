//! The decide step after the plan: from what the plan proposes and what is already in
//! flight, which actions this pass starts, in order. Pure: it takes `now` and the state it
//! needs and returns data, so every rule is table-tested without a runtime or a clock.
//!
//! The rules, in the order they apply:
//! - orphans (workers of a client never registered) are held for the orphan grace, and
//!   only reported in dry-run;
//! - a changed template recreates at most `max_recreates_per_pass` workers at a time,
//!   those in flight included, so a bad template cannot take every client down at once;
//! - a worker failed by its health checks is recreated once its backoff is due; an
//!   operator's restart recreates the workers it names unless the control plane is already
//!   creating, starting or stopping them (and, for "only failed", unless they have failed);
//! - health and operator restarts follow the plan's own actions, never a second action on
//!   one target;
//! - a deregistered client's data is removed once none of its workers exist and none of
//!   its actions is in flight;
//! - past `max_concurrent_actions` in flight nothing more starts: the next pass plans
//!   again (one follows every completed action), which keeps memory flat when thousands of
//!   clients need work at once. A target already in flight is skipped, and not counted.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use chrono::{DateTime, Utc};

use kg_shared::ClientId;

use super::executor::{Action, ActionKind};
use super::workers::{phase, Workers};
use crate::input::RestartRequest;
use crate::plan::{RecreateReason, RemoveReason};
use crate::runtime::{ObservedWorker, WorkerSpec};

/// What is in flight: per target (`Action::target`), its client and what it does.
pub type InFlight = HashMap<Arc<str>, (Arc<str>, ActionKind)>;

/// Each client's worker specs.
pub type SpecsByClient = HashMap<ClientId, Arc<[WorkerSpec]>>;

/// The limits the decide step keeps to.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_recreates_per_pass: usize,
    pub max_concurrent_actions: usize,
}

/// What the plan and the other sources propose for this pass.
#[derive(Debug, Default)]
pub struct Proposed {
    /// Removals the orphan hold let through.
    pub removals: Vec<(ObservedWorker, RemoveReason)>,
    pub recreations: Vec<(ObservedWorker, WorkerSpec, RecreateReason)>,
    pub creations: Vec<WorkerSpec>,
    /// Health restarts, then operators' restarts.
    pub restarts: Vec<Action>,
    /// Deregistered clients whose data is to be deleted.
    pub data_to_remove: Vec<String>,
}

/// The actions to start now, in order.
pub fn decide(
    proposed: Proposed,
    observed: &[ObservedWorker],
    in_flight: &InFlight,
    limits: Limits,
) -> Vec<Action> {
    let mut planned: Vec<Action> = proposed
        .removals
        .into_iter()
        .map(|(worker, reason)| Action::Remove(worker, reason))
        .collect();
    let recreating = in_flight
        .values()
        .filter(|(_, kind)| *kind == ActionKind::Recreate)
        .count();
    let mut spec_changes = 0;
    for (worker, spec, reason) in proposed.recreations {
        if reason == RecreateReason::SpecChanged {
            if spec_changes + recreating >= limits.max_recreates_per_pass.max(1) {
                continue;
            }
            spec_changes += 1;
        }
        planned.push(Action::Recreate(worker, spec, reason));
    }
    planned.extend(proposed.creations.into_iter().map(Action::Create));
    for action in proposed.restarts {
        if !planned.iter().any(|p| p.target() == action.target()) {
            planned.push(action);
        }
    }
    let with_workers: HashSet<&str> = observed.iter().map(|w| &*w.client_id).collect();
    let busy: HashSet<&str> = in_flight.values().map(|(client, _)| &**client).collect();
    for client in proposed.data_to_remove {
        if !with_workers.contains(client.as_str()) && !busy.contains(client.as_str()) {
            planned.push(Action::RemoveData(client));
        }
    }
    let mut started: HashSet<Arc<str>> = HashSet::new();
    let mut count = in_flight.len();
    let mut chosen = Vec::new();
    for action in planned {
        if count >= limits.max_concurrent_actions.max(1) {
            break;
        }
        let target = action.target();
        if in_flight.contains_key(&target) || !started.insert(target) {
            continue;
        }
        count += 1;
        chosen.push(action);
    }
    chosen
}

/// What the orphan hold decided.
#[derive(Debug, Default)]
pub struct OrphanHold {
    /// Removals to carry out now.
    pub kept: Vec<(ObservedWorker, RemoveReason)>,
    /// Every orphan seen this pass, and since when: the next pass's `since`.
    pub since: HashMap<Arc<str>, DateTime<Utc>>,
    /// Orphans seen for the first time (reported once).
    pub found: Vec<ObservedWorker>,
}

/// Holds removals of orphans (workers of a client that was never registered: left by
/// another control plane, or by a crash between spawn and record) until they have been
/// seen for `grace`, and keeps them all in dry-run. Workers of a deregistered client, and
/// every other removal, pass at once.
pub fn hold_orphans(
    removals: Vec<(ObservedWorker, RemoveReason)>,
    since: &HashMap<Arc<str>, DateTime<Utc>>,
    was_deregistered: impl Fn(&str) -> bool,
    grace: chrono::Duration,
    dry_run: bool,
    now: DateTime<Utc>,
) -> OrphanHold {
    let mut hold = OrphanHold {
        kept: Vec::with_capacity(removals.len()),
        ..OrphanHold::default()
    };
    for (worker, reason) in removals {
        let orphan = reason == RemoveReason::ClientUnknown && !was_deregistered(&worker.client_id);
        if !orphan {
            hold.kept.push((worker, reason));
            continue;
        }
        let first_seen = match since.get(&worker.name) {
            Some(first_seen) => *first_seen,
            None => {
                hold.found.push(worker.clone());
                now
            }
        };
        hold.since.insert(worker.name.clone(), first_seen);
        if !dry_run && now - first_seen >= grace {
            hold.kept.push((worker, reason));
        }
    }
    hold
}

/// Workers failed by their health checks whose backoff is due, recreated from their spec.
/// The caller clears their `unhealthy` mark: the verdict is carried out once.
pub fn health_restarts(
    observed: &[ObservedWorker],
    workers: &Workers,
    specs: &SpecsByClient,
    now: DateTime<Utc>,
) -> Vec<Action> {
    observed
        .iter()
        .filter(|worker| {
            workers.get(&worker.name).is_some_and(|record| {
                record.unhealthy
                    && record
                        .supervision
                        .as_ref()
                        .is_some_and(|s| s.next_retry_at.is_some_and(|at| now >= at))
            })
        })
        .filter_map(|worker| {
            let spec = spec_of(specs, worker)?;
            Some(Action::Recreate(
                worker.clone(),
                spec,
                RecreateReason::NotRunning,
            ))
        })
        .collect()
}

/// Operators' restart requests as recreations of the matching workers: all of a client's,
/// one role's, or only the failed ones; never a worker the control plane is creating,
/// starting or stopping. The caller starts their supervision over
/// ([`crate::supervise::Supervision::reset_by_operator`]) and forgets their last lines.
pub fn operator_restarts(
    requests: &[RestartRequest],
    observed: &[ObservedWorker],
    workers: &Workers,
    in_flight: &InFlight,
    specs: &SpecsByClient,
) -> Vec<Action> {
    let mut actions = Vec::new();
    for request in requests {
        let Some(client_specs) = specs.get(&request.client_id) else {
            continue;
        };
        let client = request.client_id.as_str();
        for worker in observed.iter().filter(|w| &*w.client_id == client) {
            if request
                .role
                .as_ref()
                .is_some_and(|role| role.as_str() != &*worker.role)
            {
                continue;
            }
            let supervision = workers
                .get(&worker.name)
                .and_then(|r| r.supervision.as_ref());
            let flying = in_flight.get(&worker.name).map(|(_, kind)| *kind);
            let current = phase(worker, supervision, flying);
            if !current.can_restart() || (request.only_failed && !current.is_failed()) {
                continue;
            }
            let Some(spec) = client_specs.iter().find(|spec| spec.name == worker.name) else {
                continue;
            };
            actions.push(Action::Recreate(
                worker.clone(),
                spec.clone(),
                RecreateReason::Requested,
            ));
        }
    }
    actions
}

/// The spec a listed worker was made from, if its client is still wanted.
fn spec_of(specs: &SpecsByClient, worker: &ObservedWorker) -> Option<WorkerSpec> {
    let client = ClientId::parse(&worker.client_id).ok()?;
    specs
        .get(&client)?
        .iter()
        .find(|spec| spec.name == worker.name)
        .cloned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::RemoveReason::{ClientStale, ClientUnknown};
    use crate::supervise::Supervision;
    use crate::test_fixtures::{exited, running, specs, t};

    fn limits(recreates: usize, concurrent: usize) -> Limits {
        Limits {
            max_recreates_per_pass: recreates,
            max_concurrent_actions: concurrent,
        }
    }

    fn targets(actions: &[Action]) -> Vec<String> {
        actions.iter().map(|a| a.target().to_string()).collect()
    }

    fn in_flight(entries: &[(&str, &str, ActionKind)]) -> InFlight {
        entries
            .iter()
            .map(|(target, client, kind)| ((*target).into(), ((*client).into(), *kind)))
            .collect()
    }

    fn specs_by_client(clients: &[&str]) -> SpecsByClient {
        clients
            .iter()
            .map(|c| (ClientId::parse(c).unwrap(), specs(c).into()))
            .collect()
    }

    /// A worker whose supervision has a retry at `t(retry_at)`, marked unhealthy or not,
    /// and given up or not.
    fn supervised(workers: &mut Workers, name: &Arc<str>, retry_at: i64, unhealthy: bool) {
        let record = workers.entry(name);
        record.unhealthy = unhealthy;
        record.supervision = Some(Supervision {
            next_retry_at: Some(t(retry_at)),
            ..Supervision::default()
        });
    }

    #[test]
    fn a_worker_failed_by_its_health_checks_is_recreated_once_its_backoff_is_due() {
        let a = specs("a");
        let observed: Vec<ObservedWorker> = a.iter().map(running).collect();
        let mut workers = Workers::default();
        supervised(&mut workers, &a[0].name, 10, true);
        // Due, but not failed by its checks (an exit's retry is the plan's): not here.
        supervised(&mut workers, &a[1].name, 10, false);
        let known = specs_by_client(&["a"]);
        let cases: [(&str, i64, &SpecsByClient, Vec<&str>); 3] = [
            ("backoff not due", 9, &known, vec![]),
            ("due", 10, &known, vec![&*a[0].name]),
            // The client left the table: nothing to recreate it from.
            ("client gone", 10, &HashMap::new(), vec![]),
        ];
        for (case, now, specs, expected) in cases {
            let chosen = health_restarts(&observed, &workers, specs, t(now));
            assert_eq!(targets(&chosen), expected, "{case}");
            assert!(chosen
                .iter()
                .all(|a| matches!(a, Action::Recreate(_, _, RecreateReason::NotRunning))));
        }
    }

    fn request(client: &str, role: Option<&str>, only_failed: bool) -> RestartRequest {
        RestartRequest {
            client_id: ClientId::parse(client).unwrap(),
            role: role.map(|r| r.parse().unwrap()),
            only_failed,
        }
    }

    #[test]
    fn an_operators_restart_names_all_one_role_or_the_failed_and_spares_workers_in_motion() {
        let a = specs("a");
        let b = specs("b");
        // a[0] has given up, a[1] runs, a[2] is being recreated; b's run.
        let observed: Vec<ObservedWorker> = vec![
            exited(&a[0], 1, 0),
            running(&a[1]),
            running(&a[2]),
            running(&b[0]),
        ];
        let mut workers = Workers::default();
        workers.supervision(&a[0].name).failed_reason = Some("gave up".into());
        let flying = in_flight(&[(&a[2].name, "a", ActionKind::Recreate)]);
        let known = specs_by_client(&["a", "b"]);
        let role = &*a[1].role;
        let cases: [(&str, RestartRequest, Vec<&str>); 4] = [
            (
                "all of a",
                request("a", None, false),
                vec![&*a[0].name, &*a[1].name],
            ),
            (
                "one role",
                request("a", Some(role), false),
                vec![&*a[1].name],
            ),
            ("only failed", request("a", None, true), vec![&*a[0].name]),
            ("unknown client", request("zz", None, false), vec![]),
        ];
        for (case, request, expected) in cases {
            let chosen = operator_restarts(&[request], &observed, &workers, &flying, &known);
            assert_eq!(targets(&chosen), expected, "{case}");
            assert!(chosen
                .iter()
                .all(|a| matches!(a, Action::Recreate(_, _, RecreateReason::Requested))));
        }
    }

    #[test]
    fn spec_changes_are_capped_per_pass_counting_those_in_flight_and_other_recreations_are_not() {
        let a = specs("a");
        let b = specs("b");
        let recreations = vec![
            (running(&a[0]), a[0].clone(), RecreateReason::SpecChanged),
            (running(&a[1]), a[1].clone(), RecreateReason::SpecChanged),
            (running(&b[0]), b[0].clone(), RecreateReason::NotRunning),
            (running(&b[1]), b[1].clone(), RecreateReason::SpecChanged),
        ];
        let cases: [(InFlight, usize, Vec<&str>); 3] = [
            // Two at a time, none in flight: the first two spec changes and the restart.
            (
                InFlight::new(),
                2,
                vec![&*a[0].name, &*a[1].name, &*b[0].name],
            ),
            // One spec change already in flight: one more.
            (
                in_flight(&[("kg-x", "x", ActionKind::Recreate)]),
                2,
                vec![&*a[0].name, &*b[0].name],
            ),
            // A cap of zero still lets one through (a cap of zero would stall for good).
            (InFlight::new(), 0, vec![&*a[0].name, &*b[0].name]),
        ];
        for (flying, cap, expected) in cases {
            let proposed = Proposed {
                recreations: recreations.clone(),
                ..Proposed::default()
            };
            let chosen = decide(proposed, &[], &flying, limits(cap, 100));
            assert_eq!(
                targets(&chosen),
                expected,
                "cap {cap}, in flight {flying:?}"
            );
        }
    }

    #[test]
    fn a_restart_never_doubles_an_action_of_the_plan_and_order_is_removals_recreations_creations_restarts(
    ) {
        let a = specs("a");
        let stale = specs("s");
        let proposed = Proposed {
            removals: vec![(running(&stale[0]), ClientStale)],
            recreations: vec![(running(&a[0]), a[0].clone(), RecreateReason::NotRunning)],
            creations: vec![a[1].clone()],
            restarts: vec![
                // The same worker the plan recreates already: dropped.
                Action::Recreate(running(&a[0]), a[0].clone(), RecreateReason::Requested),
                Action::Recreate(running(&a[2]), a[2].clone(), RecreateReason::Requested),
            ],
            data_to_remove: vec![],
        };
        let chosen = decide(proposed, &[], &InFlight::new(), limits(2, 100));
        assert_eq!(
            targets(&chosen),
            [&*stale[0].name, &*a[0].name, &*a[1].name, &*a[2].name]
        );
        assert!(matches!(
            chosen[1],
            Action::Recreate(_, _, RecreateReason::NotRunning)
        ));
    }

    #[test]
    fn data_is_removed_only_once_the_client_has_no_worker_and_no_action_in_flight() {
        let gone = specs("gone");
        let cases: [(&str, Vec<ObservedWorker>, InFlight, bool); 3] = [
            ("nothing left", vec![], InFlight::new(), true),
            (
                "a worker still listed",
                vec![running(&gone[0])],
                InFlight::new(),
                false,
            ),
            (
                "its removal in flight",
                vec![],
                in_flight(&[(&gone[1].name, "gone", ActionKind::Remove)]),
                false,
            ),
        ];
        for (case, observed, flying, removed) in cases {
            let proposed = Proposed {
                data_to_remove: vec!["gone".into()],
                ..Proposed::default()
            };
            let chosen = decide(proposed, &observed, &flying, limits(2, 100));
            assert_eq!(
                targets(&chosen) == ["data:gone"],
                removed,
                "{case}: {:?}",
                targets(&chosen)
            );
        }
    }

    #[test]
    fn nothing_starts_past_the_concurrency_limit_and_targets_in_flight_are_skipped_uncounted() {
        let a = specs("a");
        let proposed = || Proposed {
            creations: a.clone(),
            ..Proposed::default()
        };
        // Limit 2, one other action in flight: one more starts.
        let flying = in_flight(&[("kg-x", "x", ActionKind::Create)]);
        assert_eq!(
            targets(&decide(proposed(), &[], &flying, limits(2, 2))),
            [&*a[0].name]
        );
        // The first worker's own create is in flight: skipped, and the next two start.
        let flying = in_flight(&[(&a[0].name, "a", ActionKind::Create)]);
        assert_eq!(
            targets(&decide(proposed(), &[], &flying, limits(2, 3))),
            [&*a[1].name, &*a[2].name]
        );
        // Limit reached: nothing.
        let flying = in_flight(&[
            ("kg-x", "x", ActionKind::Create),
            ("kg-y", "y", ActionKind::Remove),
        ]);
        assert!(decide(proposed(), &[], &flying, limits(2, 2)).is_empty());
    }

    #[test]
    fn orphans_are_held_for_the_grace_and_only_reported_in_dry_run() {
        let orphan = running(&specs("never")[0]);
        let deregistered = running(&specs("left")[0]);
        let stale = running(&specs("stale")[0]);
        let removals = || {
            vec![
                (orphan.clone(), ClientUnknown),
                (deregistered.clone(), ClientUnknown),
                (stale.clone(), ClientStale),
            ]
        };
        let was_deregistered = |client: &str| client == "left";
        let grace = chrono::Duration::seconds(60);
        // First seen: found, held; the others pass.
        let first = hold_orphans(
            removals(),
            &HashMap::new(),
            was_deregistered,
            grace,
            false,
            t(0),
        );
        assert_eq!(first.found.len(), 1);
        assert_eq!(first.since.get(&orphan.name), Some(&t(0)));
        let kept: Vec<&str> = first.kept.iter().map(|(w, _)| &*w.name).collect();
        assert_eq!(kept, [&*deregistered.name, &*stale.name]);
        // Within the grace: still held, not found again.
        let later = hold_orphans(
            removals(),
            &first.since,
            was_deregistered,
            grace,
            false,
            t(59),
        );
        assert!(later.found.is_empty());
        assert_eq!(later.kept.len(), 2);
        // Past it: removed.
        let past = hold_orphans(
            removals(),
            &later.since,
            was_deregistered,
            grace,
            false,
            t(60),
        );
        assert_eq!(past.kept.len(), 3);
        // Dry run: never removed, still tracked.
        let dry = hold_orphans(
            removals(),
            &later.since,
            was_deregistered,
            grace,
            true,
            t(600),
        );
        assert_eq!(dry.kept.len(), 2);
        assert_eq!(dry.since.len(), 1);
        // An orphan no longer proposed for removal is forgotten.
        let gone = hold_orphans(vec![], &dry.since, was_deregistered, grace, false, t(601));
        assert!(gone.since.is_empty());
    }
}
