//! The controller end to end over the fake runtime, on paused tokio time.

use std::collections::HashSet;
use std::sync::atomic::Ordering;

use kg_shared::registry::RegistryMessage;

use super::*;
use crate::roles::{DEFAULT_IMAGE, DEFAULT_ROLES};
use crate::runtime::fake::FakeRuntime;
use crate::runtime::RuntimeError;
use crate::supervise::WorkerPhase;
use crate::table::{ClientState, WorkerView};
use crate::ManualClock;
use chrono::{DateTime, Utc};
use dashmap::DashMap;
use kg_shared::registry::decode_registry;

struct Harness {
    runtime: Arc<FakeRuntime>,
    clock: Arc<ManualClock>,
    table: crate::table::ClientTable,
    events: EventLog,
    inputs: mpsc::Sender<Input>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

fn start() -> DateTime<Utc> {
    DateTime::from_timestamp(1_760_000_000, 0).unwrap()
}

fn harness() -> Harness {
    harness_with(|_| {})
}

fn harness_with(tune: impl FnOnce(&mut ControllerSettings)) -> Harness {
    let enabled: Vec<String> = DEFAULT_ROLES.iter().map(|r| r.to_string()).collect();
    harness_with_roles(RoleSet::builtin(&enabled, DEFAULT_IMAGE).unwrap(), tune)
}

fn harness_with_roles(roles: RoleSet, tune: impl FnOnce(&mut ControllerSettings)) -> Harness {
    harness_on(
        Arc::new(FakeRuntime::new()),
        roles,
        tune,
        crate::ownership::Ownership::All,
    )
}

/// A controller over `runtime` (which several may share, as control planes share a
/// Docker Engine), acting on the clients `ownership` names.
fn harness_on(
    runtime: Arc<FakeRuntime>,
    roles: RoleSet,
    tune: impl FnOnce(&mut ControllerSettings),
    ownership: crate::ownership::Ownership,
) -> Harness {
    let clock = Arc::new(ManualClock::new(start()));
    let table: crate::table::ClientTable = Arc::new(DashMap::new());
    let events = EventLog::default();
    let controller = Controller::new(
        runtime.clone(),
        TableWriter::new(table.clone(), HeartbeatTimeout::default()),
        roles,
        vec![],
        {
            let mut settings = ControllerSettings {
                heartbeat_timeout: HeartbeatTimeout::default(),
                restart_delay: Duration::from_secs(2),
                reconcile_interval: Duration::from_millis(20),
                max_concurrent_actions: 4,
                action_timeout: Duration::from_secs(5),
                stop_grace: Duration::from_secs(1),
                shutdown_grace: Duration::from_secs(1),
                delete_data_on_deregister: true,
                admission: AdmissionSettings {
                    max_clients: 100,
                    max_new_per_minute: 100,
                    allowlist: HashSet::new(),
                    max_waiting: 1000,
                },
                orphan_grace: chrono::Duration::seconds(60),
                orphan_dry_run: false,
                max_recreates_per_pass: 1,
                event_attributor: false,
                attributor_env: Vec::new(),
                health: HealthSettings {
                    interval: Duration::from_millis(50),
                    timeout: Duration::from_secs(1),
                    failures: 3,
                    max_concurrent: 16,
                },
                backoff: BackoffSettings {
                    base: chrono::Duration::seconds(10),
                    jitter: 0.0,
                    max_restarts_in_window: 3,
                    ..BackoffSettings::default()
                },
            };
            tune(&mut settings);
            settings
        },
        Arc::new(ControlPlaneMetrics::new()),
        Arc::new(Status::default()),
        clock.clone(),
        events.clone(),
    )
    .with_ownership(ownership);
    let (inputs, rx) = mpsc::channel(100);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(controller.run(rx, async {
        let _ = stopped.await;
    }));
    Harness {
        runtime,
        clock,
        table,
        events,
        inputs,
        stop: Some(stop),
        task,
    }
}

/// The next position in a test's registry: registrations arrive in the order made.
fn next_arrival() -> crate::admission::Arrival {
    static NEXT: std::sync::atomic::AtomicI64 = std::sync::atomic::AtomicI64::new(0);
    let offset = NEXT.fetch_add(1, Ordering::Relaxed);
    crate::admission::Arrival {
        timestamp_ms: start().timestamp_millis() + offset,
        partition: 0,
        offset,
    }
}

fn registration(id: &str) -> Input {
    let value = format!(r#"{{"client_id":"{id}","cluster_name":"prod-eu"}}"#);
    Input::Registry {
        message: decode_registry(Some(id.as_bytes()), Some(value.as_bytes())).unwrap(),
        at: start(),
        arrival: next_arrival(),
    }
}

/// Waits until `client`'s worker `name` is shown in `phase` (`what`, if it never is).
async fn until_phase(h: &Harness, client: &str, name: &str, phase: WorkerPhase, what: &str) {
    eventually(what, || {
        worker_state(h, client, name).is_some_and(|w| w.state == phase)
    })
    .await;
}

/// A tombstone of `id` on the registry, written at `at`.
fn tombstone(id: &str, at: DateTime<Utc>) -> Input {
    Input::Registry {
        message: RegistryMessage::Deregister(ClientId::parse(id).unwrap()),
        at,
        arrival: next_arrival(),
    }
}

async fn eventually(what: &str, check: impl Fn() -> bool) {
    let found = crate::runtime::contract::poll_until(Duration::from_secs(5), || async {
        check().then_some(())
    })
    .await;
    assert!(found.is_some(), "timed out waiting for {what}");
}

impl Harness {
    async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        let _ = self.task.await;
    }
}

#[tokio::test(start_paused = true)]
async fn nothing_is_created_before_the_registry_is_replayed() {
    let h = harness();
    h.inputs.send(registration("af-9")).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(h.runtime.calls_of("create").is_empty());
    h.inputs.send(Input::RegistryReplayed).await.unwrap();
    eventually("two workers started", || {
        h.runtime.calls_of("start").len() == 3
    })
    .await;
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_stale_client_is_reaped_and_a_tombstone_removes_a_live_one() {
    let h = harness();
    h.inputs.send(Input::RegistryReplayed).await.unwrap();
    h.inputs.send(registration("af-9")).await.unwrap();
    h.inputs.send(registration("af-10")).await.unwrap();
    eventually("four workers started", || {
        h.runtime.calls_of("start").len() == 6
    })
    .await;

    // af-10 keeps heartbeating, af-9 does not.
    h.clock.advance(chrono::Duration::seconds(100));
    h.inputs
        .send(Input::Heartbeat {
            client_id: ClientId::parse("af-10").unwrap(),
            at: h.clock.now(),
        })
        .await
        .unwrap();
    h.clock.advance(chrono::Duration::seconds(21));
    eventually("af-9's workers removed", || {
        let removed = h.runtime.calls_of("remove");
        removed.len() == 3 && removed.iter().all(|name| name.ends_with("-af-9"))
    })
    .await;
    assert_eq!(
        h.table
            .get(&ClientId::parse("af-9").unwrap())
            .unwrap()
            .state,
        ClientState::Stale
    );

    h.inputs
        .send(tombstone("af-10", h.clock.now()))
        .await
        .unwrap();
    eventually("af-10's workers removed", || {
        h.runtime.calls_of("remove").len() == 6
    })
    .await;
    // Deregistered (with the delete policy): its data goes once its workers are gone;
    // the merely stale client keeps its data.
    eventually("af-10's data removed", || {
        h.runtime.calls_of("remove_client_data") == ["af-10"]
    })
    .await;
    assert!(h.table.get(&ClientId::parse("af-10").unwrap()).is_none());
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_hanging_runtime_call_for_one_client_does_not_delay_another() {
    let h = harness();
    h.runtime.delay(
        "create",
        "kg-event-normalizer-slow",
        Duration::from_secs(30),
    );
    h.runtime
        .delay("create", "kg-log-normalizer-slow", Duration::from_secs(30));
    h.inputs.send(Input::RegistryReplayed).await.unwrap();
    h.inputs.send(registration("slow")).await.unwrap();
    h.inputs.send(registration("fast")).await.unwrap();
    eventually("the fast client's workers started", || {
        h.runtime
            .calls_of("start")
            .iter()
            .filter(|n| n.ends_with("-fast"))
            .count()
            == 3
    })
    .await;
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_failed_create_is_retried_on_a_later_pass() {
    let h = harness();
    h.runtime.fail_next(
        "create",
        "kg-event-normalizer-af-9",
        RuntimeError::Unavailable("engine busy".into()),
    );
    h.inputs.send(Input::RegistryReplayed).await.unwrap();
    h.inputs.send(registration("af-9")).await.unwrap();
    eventually("both workers started despite one failure", || {
        h.runtime.calls_of("start").len() == 3
    })
    .await;
    assert_eq!(
        h.runtime
            .calls_of("create")
            .iter()
            .filter(|n| n.starts_with("kg-event"))
            .count(),
        2
    );
    h.stop().await;
}

fn worker_state(h: &Harness, client: &str, name: &str) -> Option<WorkerView> {
    h.table
        .get(&ClientId::parse(client).unwrap())?
        .workers
        .iter()
        .find(|w| &*w.name == name)
        .cloned()
}

#[tokio::test(start_paused = true)]
#[allow(clippy::too_many_lines)] // a scenario reads best top to bottom
async fn a_crashed_worker_backs_off_then_restarts_and_gives_up_after_the_window() {
    let h = harness();
    h.inputs.send(Input::RegistryReplayed).await.unwrap();
    h.inputs.send(registration("af-9")).await.unwrap();
    let name = "kg-event-normalizer-af-9";
    eventually("workers started", || h.runtime.calls_of("start").len() == 3).await;

    // Crash 1: backing off for the base delay (10 s of the injected clock).
    h.runtime.crash(name, 1);
    eventually("backing off", || {
        worker_state(&h, "af-9", name)
            .is_some_and(|w| w.state == WorkerPhase::BackingOff && w.next_retry_at.is_some())
    })
    .await;
    let starts = h.runtime.calls_of("start").len();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        h.runtime.calls_of("start").len(),
        starts,
        "restarted before its backoff ran out"
    );
    h.clock.advance(chrono::Duration::seconds(10));
    eventually("restarted after the delay", || {
        worker_state(&h, "af-9", name)
            .is_some_and(|w| w.state == WorkerPhase::Running && w.restart_count == 1)
    })
    .await;

    // Crashes 2 and 3 back off 20 s and 40 s; the 4th is over the window's 3 restarts.
    for delay in [20, 40] {
        h.runtime.crash(name, 1);
        until_phase(
            &h,
            "af-9",
            name,
            WorkerPhase::BackingOff,
            "backing off again",
        )
        .await;
        h.clock.advance(chrono::Duration::seconds(delay - 1));
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(
            worker_state(&h, "af-9", name).unwrap().state,
            WorkerPhase::BackingOff
        );
        h.clock.advance(chrono::Duration::seconds(1));
        until_phase(&h, "af-9", name, WorkerPhase::Running, "running again").await;
    }
    h.runtime.crash(name, 3);
    eventually("given up", || {
        worker_state(&h, "af-9", name).is_some_and(|w| {
            w.state == WorkerPhase::Failed
                && w.failed_reason
                    .as_deref()
                    .is_some_and(|r| r.contains("exit code 3"))
        })
    })
    .await;
    let events: Vec<Lifecycle> = h
        .events
        .last("af-9", 100)
        .into_iter()
        .map(|e| e.event)
        .collect();
    assert!(events.contains(&Lifecycle::WorkerGaveUp), "{events:?}");
    assert!(events.contains(&Lifecycle::WorkerRestarting), "{events:?}");

    // Another client's worker kept running through all of it.
    h.inputs.send(registration("af-10")).await.unwrap();
    eventually("the other client runs", || {
        worker_state(&h, "af-10", "kg-event-normalizer-af-10")
            .is_some_and(|w| w.state == WorkerPhase::Running)
    })
    .await;

    // An operator's restart of the failed workers brings it back.
    h.inputs
        .send(Input::Restart(crate::input::RestartRequest {
            client_id: ClientId::parse("af-9").unwrap(),
            role: None,
            only_failed: true,
        }))
        .await
        .unwrap();
    eventually("restarted by the operator", || {
        worker_state(&h, "af-9", name)
            .is_some_and(|w| w.state == WorkerPhase::Running && w.failed_reason.is_none())
    })
    .await;
    // Only the failed worker was recreated.
    assert_eq!(
        h.runtime
            .calls_of("remove")
            .iter()
            .filter(|n| n.ends_with("-af-9"))
            .count(),
        4,
        "three restarts and the operator's"
    );
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn workers_of_a_never_registered_client_are_orphans_removed_after_the_grace() {
    let h = harness();
    let stray = ClientId::parse("stray").unwrap();
    for spec in RoleSet::builtin(&["event-normalizer".into()], DEFAULT_IMAGE)
        .unwrap()
        .render(&stray, &[])
    {
        h.runtime.insert_running(spec);
    }
    h.inputs.send(Input::RegistryReplayed).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        h.runtime.calls_of("remove").is_empty(),
        "removed within the grace"
    );
    h.clock.advance(chrono::Duration::seconds(60));
    eventually("the orphan removed", || {
        h.runtime.calls_of("remove") == ["kg-event-normalizer-stray"]
    })
    .await;
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_probe_round_over_many_workers_keeps_to_the_concurrency_limit() {
    let h = harness_with(|settings| settings.health.max_concurrent = 2);
    // Every probe's endpoint lookup takes a while, so unbounded probes would overlap.
    h.runtime.delay("endpoint", "*", Duration::from_millis(30));
    h.inputs.send(Input::RegistryReplayed).await.unwrap();
    let clients = ["af-1", "af-2", "af-3", "af-4"];
    for client in clients {
        h.inputs.send(registration(client)).await.unwrap();
    }
    let workers = clients.len() * DEFAULT_ROLES.len();
    eventually("every worker probed", || {
        let probed: HashSet<String> = h.runtime.calls_of("endpoint").into_iter().collect();
        probed.len() == workers
    })
    .await;
    let most = h.runtime.max_concurrent("endpoint");
    assert!(
        (1..=2).contains(&most),
        "{most} probes were in flight at once; the limit is 2"
    );
    h.stop().await;
}

// Real time: the worker's /health is a real HTTP server.
#[tokio::test]
async fn a_worker_failing_its_health_checks_is_restarted_under_its_policy() {
    // A worker whose /health says failed, as a stalled worker's does.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = axum::Router::new().route(
        "/health",
        axum::routing::get(|| async {
            (
                axum::http::StatusCode::SERVICE_UNAVAILABLE,
                axum::Json(serde_json::json!({"status": "failed", "reason": "stalled"})),
            )
        }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await });

    let h = harness();
    let name = "kg-event-normalizer-af-9";
    h.runtime.set_endpoint(name, &addr.to_string());
    h.inputs.send(Input::RegistryReplayed).await.unwrap();
    h.inputs.send(registration("af-9")).await.unwrap();
    until_phase(
        &h,
        "af-9",
        name,
        WorkerPhase::Degraded,
        "degraded after failed probes",
    )
    .await;
    eventually("marked unhealthy", || {
        h.events
            .last("af-9", 100)
            .iter()
            .any(|e| e.event == Lifecycle::WorkerUnhealthy)
    })
    .await;
    // Its backoff (10 s of the injected clock) runs out: it is recreated.
    h.clock.advance(chrono::Duration::seconds(10));
    eventually("recreated", || {
        h.runtime.calls_of("remove").iter().any(|n| n == name)
    })
    .await;
    // The other workers, healthy (no endpoint to fail), were left alone.
    assert!(h.runtime.calls_of("remove").iter().all(|n| n == name));
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_changed_template_recreates_one_worker_at_a_time() {
    let h = harness(); // max_recreates_per_pass: 1
    let client = ClientId::parse("af-9").unwrap();
    let enabled: Vec<String> = DEFAULT_ROLES.iter().map(|r| r.to_string()).collect();
    for mut spec in RoleSet::builtin(&enabled, DEFAULT_IMAGE)
        .unwrap()
        .render(&client, &[])
    {
        spec.spec_hash = "an-older-template".into();
        h.runtime.insert_running(spec);
    }
    h.runtime.delay("create", "*", Duration::from_millis(100));
    h.inputs.send(Input::RegistryReplayed).await.unwrap();
    h.inputs.send(registration("af-9")).await.unwrap();
    eventually("all three recreated", || {
        h.runtime.calls_of("start").len() == 3
    })
    .await;
    // Never two recreations at once: each remove is followed by that worker's start
    // before the next remove.
    let sequence: Vec<(&str, String)> = h
        .runtime
        .calls()
        .into_iter()
        .filter(|c| c.operation == "remove" || c.operation == "start")
        .map(|c| (c.operation, c.name))
        .collect();
    for pair in sequence.chunks(2) {
        assert_eq!(pair[0].0, "remove", "{sequence:?}");
        assert_eq!(pair[1], ("start", pair[0].1.clone()), "{sequence:?}");
    }
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn orphans_are_only_reported_in_dry_run() {
    let h = harness_with(|settings| settings.orphan_dry_run = true);
    let stray = ClientId::parse("stray").unwrap();
    for spec in RoleSet::builtin(&["event-normalizer".into()], DEFAULT_IMAGE)
        .unwrap()
        .render(&stray, &[])
    {
        h.runtime.insert_running(spec);
    }
    h.inputs.send(Input::RegistryReplayed).await.unwrap();
    h.clock.advance(chrono::Duration::seconds(3600));
    let passes = h.runtime.calls_of("list").len();
    eventually("several passes", || {
        h.runtime.calls_of("list").len() >= passes + 5
    })
    .await;
    assert!(h.runtime.calls_of("remove").is_empty());
    h.stop().await;
}

#[tokio::test(start_paused = true)]
#[allow(clippy::too_many_lines)] // a scenario reads best top to bottom, one policy after another
async fn each_policy_decides_what_an_exit_leads_to() {
    let mut roles = RoleSet::builtin(
        &[
            "event-normalizer".into(),
            "log-normalizer".into(),
            "graph-builder".into(),
        ],
        DEFAULT_IMAGE,
    )
    .unwrap();
    roles.roles[0].restart = RestartPolicy::No;
    roles.roles[1].restart = RestartPolicy::OnFailure {
        max_retries: Some(1),
    };
    roles.roles[2].restart = RestartPolicy::UnlessStopped;
    let h = harness_with_roles(roles, |_| {});
    h.inputs.send(Input::RegistryReplayed).await.unwrap();
    h.inputs.send(registration("af-9")).await.unwrap();
    eventually("three running", || h.runtime.calls_of("start").len() == 3).await;
    let (no, on_failure, unless) = (
        "kg-event-normalizer-af-9",
        "kg-log-normalizer-af-9",
        "kg-graph-builder-af-9",
    );
    h.runtime.crash(no, 1);
    h.runtime.crash(on_failure, 0);
    h.runtime.crash(unless, 0);
    eventually("verdicts", || {
        let state = |n| worker_state(&h, "af-9", n).map(|w| w.state);
        state(no) == Some(WorkerPhase::Stopped)
            && state(on_failure) == Some(WorkerPhase::Stopped)
            && state(unless) == Some(WorkerPhase::BackingOff)
    })
    .await;
    h.clock.advance(chrono::Duration::seconds(10));
    until_phase(
        &h,
        "af-9",
        unless,
        WorkerPhase::Running,
        "unless-stopped restarted",
    )
    .await;
    // on-failure:1 restarts a failure once, then gives up.
    h.runtime.clear_calls();
    h.inputs
        .send(Input::Restart(crate::input::RestartRequest {
            client_id: ClientId::parse("af-9").unwrap(),
            role: Some(kg_shared::Role::LogNormalizer),
            only_failed: false,
        }))
        .await
        .unwrap();
    until_phase(
        &h,
        "af-9",
        on_failure,
        WorkerPhase::Running,
        "restarted by the operator",
    )
    .await;
    h.runtime.crash(on_failure, 1);
    until_phase(
        &h,
        "af-9",
        on_failure,
        WorkerPhase::BackingOff,
        "backing off",
    )
    .await;
    h.clock.advance(chrono::Duration::seconds(10));
    until_phase(
        &h,
        "af-9",
        on_failure,
        WorkerPhase::Running,
        "running again",
    )
    .await;
    h.runtime.crash(on_failure, 1);
    until_phase(&h, "af-9", on_failure, WorkerPhase::Failed, "given up").await;
    assert_eq!(
        worker_state(&h, "af-9", no).unwrap().state,
        WorkerPhase::Stopped
    );
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_registration_flood_past_the_rate_waits_and_is_admitted_as_the_bucket_refills() {
    let h = harness_with(|settings| {
        settings.admission.max_new_per_minute = 2;
    });
    h.inputs.send(Input::RegistryReplayed).await.unwrap();
    for id in ["c-1", "c-2", "c-3", "c-4"] {
        h.inputs.send(registration(id)).await.unwrap();
    }
    eventually("two admitted and spawned", || {
        h.runtime.calls_of("start").len() == 6
    })
    .await;
    assert_eq!(h.table.len(), 2);
    // The other two wait, not refused, and leave no per-client trace meanwhile.
    assert!(h.events.last("c-3", 10).is_empty());
    // Half a minute refills one token: c-3 (the earlier arrival) is admitted, with no
    // new registration; another half minute, c-4.
    h.clock.advance(chrono::Duration::seconds(30));
    eventually("c-3 admitted", || h.table.len() == 3).await;
    assert!(h.table.contains_key(&ClientId::parse("c-3").unwrap()));
    h.clock.advance(chrono::Duration::seconds(30));
    eventually("c-4 admitted", || h.table.len() == 4).await;
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_client_over_the_cap_is_admitted_when_a_slot_frees() {
    let h = harness_with(|settings| {
        settings.admission.max_clients = 1;
    });
    h.inputs.send(Input::RegistryReplayed).await.unwrap();
    h.inputs.send(registration("c-1")).await.unwrap();
    h.inputs.send(registration("c-2")).await.unwrap();
    eventually("c-1 admitted", || h.table.len() == 1).await;
    h.inputs
        .send(tombstone("c-1", h.clock.now()))
        .await
        .unwrap();
    eventually("c-2 admitted in the freed slot", || {
        h.table.contains_key(&ClientId::parse("c-2").unwrap())
    })
    .await;
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_healthy_run_resets_the_backoff() {
    let h = harness_with(|settings| {
        settings.backoff.reset_after = chrono::Duration::seconds(600);
    });
    h.inputs.send(Input::RegistryReplayed).await.unwrap();
    h.inputs.send(registration("af-9")).await.unwrap();
    let name = "kg-event-normalizer-af-9";
    eventually("started", || h.runtime.calls_of("start").len() == 3).await;
    let crash_and_wait = |expected_delay: i64| {
        let h = &h;
        async move {
            h.runtime.crash(name, 1);
            eventually(
                &format!("backing off before a {expected_delay} s retry"),
                || {
                    worker_state(h, "af-9", name)
                        .is_some_and(|w| w.state == WorkerPhase::BackingOff)
                },
            )
            .await;
            let w = worker_state(h, "af-9", name).unwrap();
            let delay = (w.next_retry_at.unwrap() - h.clock.now()).num_seconds();
            assert_eq!(delay, expected_delay);
            h.clock.advance(chrono::Duration::seconds(expected_delay));
            eventually("running", || {
                worker_state(h, "af-9", name).is_some_and(|w| w.state == WorkerPhase::Running)
            })
            .await;
        }
    };
    crash_and_wait(10).await;
    crash_and_wait(20).await;
    // Ten healthy minutes (heartbeating, so the client stays live): the next failure
    // starts over at the base delay.
    h.inputs
        .send(Input::Heartbeat {
            client_id: ClientId::parse("af-9").unwrap(),
            at: h.clock.now() + chrono::Duration::seconds(601),
        })
        .await
        .unwrap();
    h.clock.advance(chrono::Duration::seconds(601));
    let passes = h.runtime.calls_of("list").len();
    eventually("a pass sees it running", || {
        h.runtime.calls_of("list").len() >= passes + 2
    })
    .await;
    crash_and_wait(10).await;
    h.stop().await;
}

/// A registration of `id` with `extra` JSON fields.
fn registration_with(id: &str, extra: &str) -> Input {
    let value = format!(r#"{{"client_id":"{id}","cluster_name":"prod-eu",{extra}}}"#);
    Input::Registry {
        message: decode_registry(Some(id.as_bytes()), Some(value.as_bytes())).unwrap(),
        at: start(),
        arrival: next_arrival(),
    }
}

/// The default roles, and a templates file of pipeline `alerts` (default), `traffic`
/// (requestable) and `internal` (neither).
fn roles_with_pipelines(dir: &std::path::Path) -> RoleSet {
    let path = dir.join("pipelines.toml");
    let pipeline = |name: &str, flags: &str| {
        format!("[[pipeline]]\nname = \"{name}\"\ninput = [\"in-{name}\"]\noutput = \"out-{name}\"\n{flags}\n[[pipeline.stage]]\nkind = \"enrich\"\nprocessor_id = \"p\"\n\n")
    };
    std::fs::write(
        &path,
        pipeline("alerts", "default = true")
            + &pipeline("traffic", "requestable = true")
            + &pipeline("internal", ""),
    )
    .unwrap();
    let enabled: Vec<String> = DEFAULT_ROLES.iter().map(|r| r.to_string()).collect();
    RoleSet::builtin(&enabled, DEFAULT_IMAGE)
        .unwrap()
        .with_pipelines(Some(&path))
        .unwrap()
}

/// The details of `client`'s `pipeline_refused` events.
fn pipeline_refusals(h: &Harness, client: &str) -> Vec<String> {
    h.events
        .last(client, 100)
        .into_iter()
        .filter(|e| e.event == crate::events::Lifecycle::PipelineRefused)
        .map(|e| e.detail)
        .collect()
}

#[tokio::test(start_paused = true)]
async fn a_registration_runs_the_requestable_pipelines_it_asks_for_and_each_refusal_is_an_event() {
    let dir = tempfile::tempdir().unwrap();
    let h = harness_with_roles(roles_with_pipelines(dir.path()), |_| {});
    let asking = || registration_with("af-9", r#""pipelines":["traffic","internal","nope"]"#);
    h.inputs.send(Input::RegistryReplayed).await.unwrap();
    h.inputs.send(asking()).await.unwrap();
    eventually(
        "the roles, the default and the requested pipeline started",
        || h.runtime.calls_of("start").len() == 5,
    )
    .await;
    let created = h.runtime.calls_of("create");
    assert!(
        created.contains(&"kg-pipeline-traffic.af-9".to_string()),
        "{created:?}"
    );
    assert!(
        created.contains(&"kg-pipeline-alerts.af-9".to_string()),
        "{created:?}"
    );
    assert!(
        !created.iter().any(|name| name.contains("internal")),
        "{created:?}"
    );
    let expected = [
        r#""internal": the templates file does not let clients ask for it (requestable = false)"#,
        r#""nope": no pipeline of that name in the templates file"#,
    ];
    assert_eq!(pipeline_refusals(&h, "af-9"), expected);

    // The same registration again (an agent restarting in a loop): nothing refused anew.
    h.inputs.send(asking()).await.unwrap();
    eventually("the repeat applied", || {
        h.table
            .get(&ClientId::parse("af-9").unwrap())
            .is_some_and(|record| record.registrations_seen == 2)
    })
    .await;
    assert_eq!(pipeline_refusals(&h, "af-9"), expected);

    // Registered again without asking: the requested pipeline's worker goes, the rest stay.
    h.inputs.send(registration("af-9")).await.unwrap();
    eventually("the requested pipeline removed", || {
        h.runtime.calls_of("remove") == ["kg-pipeline-traffic.af-9"]
    })
    .await;
    h.stop().await;
}

/// Two controllers over one runtime, as two control planes over one Docker Engine: each
/// starts only the clients of its registry partition; on a handover the old owner lets go
/// only once its action in flight is done, and the new one adopts the running workers
/// without creating or removing anything.
#[tokio::test(start_paused = true)]
#[allow(clippy::too_many_lines)] // a scenario reads best top to bottom
async fn two_controllers_share_the_clients_by_registry_partition_and_hand_them_over() {
    use crate::ownership::{partition_of, Ownership, OwnershipChange};
    let runtime = Arc::new(FakeRuntime::new());
    let roles = || {
        let enabled: Vec<String> = DEFAULT_ROLES.iter().map(|r| r.to_string()).collect();
        RoleSet::builtin(&enabled, DEFAULT_IMAGE).unwrap()
    };
    let owning = |partition: i32| {
        let mut ownership = Ownership::nothing_yet();
        ownership.assign(&[partition], 2);
        ownership
    };
    let a = harness_on(runtime.clone(), roles(), |_| {}, owning(0));
    let b = harness_on(runtime.clone(), roles(), |_| {}, owning(1));
    let clients: Vec<String> = (0..8).map(|i| format!("tenant-{i}")).collect();
    let of_a: Vec<&String> = clients.iter().filter(|c| partition_of(c, 2) == 0).collect();
    assert!(
        !of_a.is_empty() && of_a.len() < clients.len(),
        "both partitions have clients"
    );
    for h in [&a, &b] {
        h.inputs.send(Input::RegistryReplayed).await.unwrap();
        for client in &clients {
            h.inputs.send(registration(client)).await.unwrap();
        }
    }
    eventually("every client's workers started once", || {
        runtime.calls_of("start").len() == 3 * clients.len()
    })
    .await;
    // Past the orphan grace: a worker of the other's client is no orphan here.
    for h in [&a, &b] {
        h.clock.advance(chrono::Duration::seconds(61));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        runtime.calls_of("create").len(),
        3 * clients.len(),
        "no client created twice"
    );
    assert!(
        runtime.calls_of("remove").is_empty(),
        "neither reaps the other's workers"
    );
    // Each shows every client, and says which it acts on.
    assert_eq!(a.table.len(), clients.len());
    assert_eq!(b.table.len(), clients.len());

    // A's action on one of its clients is in flight when A gives partition 0 up: the
    // release waits for it.
    let slow = format!("kg-graph-builder-{}", of_a[1]);
    runtime.delay("stop", &slow, Duration::from_secs(3));
    a.inputs
        .send(Input::Restart(crate::input::RestartRequest {
            client_id: ClientId::parse(of_a[1]).unwrap(),
            role: None,
            only_failed: false,
        }))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (released_tx, released) = std::sync::mpsc::sync_channel(1);
    a.inputs
        .send(Input::Ownership(OwnershipChange::Revoked {
            partitions: vec![0],
            released: Some(released_tx),
        }))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let answered_early = released.try_recv().is_ok();
    assert!(
        !answered_early,
        "the revocation was answered while an action of a client given up was in flight"
    );
    eventually("the revocation answered", || released.try_recv().is_ok()).await;
    runtime.clear_calls();
    // As the eager protocol does it: B's own partition is revoked too, then both are
    // assigned to it.
    b.inputs
        .send(Input::Ownership(OwnershipChange::Revoked {
            partitions: vec![1],
            released: None,
        }))
        .await
        .unwrap();
    b.inputs
        .send(Input::Ownership(OwnershipChange::Assigned {
            partitions: vec![0, 1],
            count: 2,
        }))
        .await
        .unwrap();
    eventually("B adopts A's running workers", || {
        b.events
            .last(of_a[2], 10)
            .iter()
            .any(|event| event.event == Lifecycle::WorkerAdopted)
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let of_b = clients
        .iter()
        .find(|c| partition_of(c, 2) == 1)
        .expect("a client of B's own partition");
    assert!(
        !b.events
            .last(of_b, 10)
            .iter()
            .any(|event| event.event == Lifecycle::WorkerAdopted),
        "B got its own partition back: nothing of it is adopted"
    );
    let calls = runtime.calls();
    assert!(
        runtime.calls_of("create").is_empty() && runtime.calls_of("remove").is_empty(),
        "adopted as they run: {calls:?}"
    );
    a.stop().await;
    b.stop().await;
}
