//! The decide step after the plan: from what the plan proposes and what is already in
//! flight, which actions this pass starts, in order. Pure: it takes `now` and the state it
//! needs and returns data, so every rule is table-tested without a runtime or a clock.
//!
//! The rules, in the order they apply:
//! - orphans (workers of a client never registered) are held for the orphan grace, and
//!   only reported in dry-run;
//! - a changed template recreates at most `max_recreates_per_pass` workers at a time,
//!   those in flight included, so a bad template cannot take every client down at once;
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

use super::executor::{Action, ActionKind};
use crate::plan::{RecreateReason, RemoveReason};
use crate::runtime::{ObservedWorker, WorkerSpec};

/// What is in flight: per target (`Action::target`), its client and what it does.
pub type InFlight = HashMap<Arc<str>, (Arc<str>, ActionKind)>;

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::RemoveReason::{ClientStale, ClientUnknown};
    use crate::roles::{RoleSet, DEFAULT_IMAGE, DEFAULT_ROLES};
    use crate::runtime::RuntimeState;
    use kg_shared::ClientId;

    fn t(seconds: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_760_000_000 + seconds, 0).unwrap()
    }

    /// The three default workers of `client`.
    fn specs(client: &str) -> Vec<WorkerSpec> {
        let enabled: Vec<String> = DEFAULT_ROLES.iter().map(|r| r.to_string()).collect();
        RoleSet::builtin(&enabled, DEFAULT_IMAGE)
            .unwrap()
            .render(&ClientId::parse(client).unwrap(), &[])
    }

    fn running(spec: &WorkerSpec) -> ObservedWorker {
        ObservedWorker {
            name: spec.name.clone(),
            id: format!("id-{}", spec.name).into(),
            client_id: spec.client_id.as_str().into(),
            role: spec.role.clone(),
            spec_hash: spec.spec_hash.clone(),
            state: RuntimeState::Running { started_at: t(0) },
        }
    }

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
