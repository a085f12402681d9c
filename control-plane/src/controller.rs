//! The controller: the one task that writes the client table. It applies ingest's inputs,
//! and on every reconcile pass lists the runtime, plans, and hands the plan's actions to
//! the executor. Actions run concurrently (bounded by a semaphore, each runtime call under
//! a timeout) and report back here, so a slow client never holds up the loop or another
//! client, and a worker with an action in flight is left out of the next plans.
//!
//! Nothing is created, adopted or removed before the registry has been replayed and the
//! runtime listed once: until then the control plane does not know what should run.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use kg_shared::registry::RegistryMessage;
use kg_shared::ClientId;
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinSet;
use tokio::time::{sleep_until, Instant};
use tracing::{info, info_span, warn, Instrument};

use crate::ingest::Input;
use crate::metrics::{ControlPlaneMetrics, OperationLabel, StateLabel};
use crate::plan::{plan, Desired, DesiredClient, RecreateReason, RemoveReason};
use crate::roles::RoleSet;
use crate::runtime::{ObservedWorker, Runtime, RuntimeError, RuntimeState, WorkerSpec};
use crate::table::{Applied, ClientState, TableWriter};
use crate::Clock;

/// Readiness, as `/ready` reports it.
#[derive(Debug, Default)]
pub struct Status {
    pub registry_replayed: AtomicBool,
    pub first_listing_done: AtomicBool,
}

impl Status {
    pub fn ready(&self) -> bool {
        self.registry_replayed.load(Ordering::Relaxed)
            && self.first_listing_done.load(Ordering::Relaxed)
    }
}

/// Tuning of the controller.
#[derive(Debug, Clone)]
pub struct ControllerSettings {
    pub heartbeat_timeout: Duration,
    pub restart_delay: Duration,
    pub reconcile_interval: Duration,
    pub max_concurrent_actions: usize,
    pub action_timeout: Duration,
    pub stop_grace: Duration,
    /// How long shutdown waits for actions already started.
    pub shutdown_grace: Duration,
    /// Delete a deregistered client's durable data once its workers are gone.
    pub delete_data_on_deregister: bool,
}

/// One unit of work for the executor.
#[derive(Debug, Clone)]
pub enum Action {
    Create(WorkerSpec),
    Recreate(ObservedWorker, WorkerSpec, RecreateReason),
    Remove(ObservedWorker, RemoveReason),
    /// Deletes a deregistered client's durable data; planned only once none of its
    /// workers exist.
    RemoveData(String),
}

impl Action {
    /// What the action works on: a worker name, or `data:<client>` for data removal.
    fn target(&self) -> String {
        match self {
            Action::Create(spec) => spec.name.clone(),
            Action::Recreate(worker, _, _) | Action::Remove(worker, _) => worker.name.clone(),
            Action::RemoveData(client) => format!("data:{client}"),
        }
    }

    fn client_id(&self) -> &str {
        match self {
            Action::Create(spec) => spec.client_id.as_str(),
            Action::Recreate(worker, _, _) | Action::Remove(worker, _) => &worker.client_id,
            Action::RemoveData(client) => client,
        }
    }
}

struct ActionReport {
    name: String,
    client_id: String,
    result: Result<&'static str, (&'static str, RuntimeError)>,
}

/// The controller and its state.
pub struct Controller {
    runtime: Arc<dyn Runtime>,
    writer: TableWriter,
    roles: RoleSet,
    base_env: Vec<(String, String)>,
    settings: ControllerSettings,
    metrics: Arc<ControlPlaneMetrics>,
    status: Arc<Status>,
    clock: Arc<dyn Clock>,
    specs: HashMap<ClientId, Vec<WorkerSpec>>,
    /// Targets with an action in flight, and the client each belongs to.
    in_flight: HashMap<String, String>,
    last_states: HashMap<String, &'static str>,
    registry_replayed: bool,
    /// Deregistered clients whose data is deleted once their workers are gone.
    data_to_remove: HashSet<String>,
}

impl Controller {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        runtime: Arc<dyn Runtime>,
        writer: TableWriter,
        roles: RoleSet,
        base_env: Vec<(String, String)>,
        settings: ControllerSettings,
        metrics: Arc<ControlPlaneMetrics>,
        status: Arc<Status>,
        clock: Arc<dyn Clock>,
    ) -> Self {
        Self {
            runtime,
            writer,
            roles,
            base_env,
            settings,
            metrics,
            status,
            clock,
            specs: HashMap::new(),
            in_flight: HashMap::new(),
            last_states: HashMap::new(),
            registry_replayed: false,
            data_to_remove: HashSet::new(),
        }
    }

    /// Runs until `shutdown` resolves, then waits (bounded) for started actions.
    pub async fn run(
        mut self,
        mut inputs: mpsc::Receiver<Input>,
        shutdown: impl Future<Output = ()>,
    ) {
        tokio::pin!(shutdown);
        let semaphore = Arc::new(Semaphore::new(self.settings.max_concurrent_actions.max(1)));
        let mut actions: JoinSet<ActionReport> = JoinSet::new();
        let mut next_reconcile = Instant::now();
        let mut inputs_open = true;
        loop {
            tokio::select! {
                biased;
                _ = &mut shutdown => break,
                Some(joined) = actions.join_next(), if !actions.is_empty() => {
                    if let Ok(report) = joined {
                        self.finish(report);
                    }
                    next_reconcile = next_reconcile.min(Instant::now() + Duration::from_millis(20));
                }
                input = inputs.recv(), if inputs_open => match input {
                    Some(input) => {
                        self.apply(input);
                        // Apply whatever else is queued before planning once for all of it.
                        while let Ok(more) = inputs.try_recv() {
                            self.apply(more);
                        }
                        next_reconcile = next_reconcile.min(Instant::now() + Duration::from_millis(20));
                    }
                    None => inputs_open = false,
                },
                _ = sleep_until(next_reconcile) => {
                    self.reconcile(&semaphore, &mut actions).await;
                    next_reconcile = Instant::now() + self.settings.reconcile_interval;
                }
            }
        }
        info!(in_flight = actions.len(), "controller stopping");
        let deadline = Instant::now() + self.settings.shutdown_grace;
        while !actions.is_empty() {
            match tokio::time::timeout_at(deadline, actions.join_next()).await {
                Ok(Some(Ok(report))) => self.finish(report),
                Ok(_) => {}
                Err(_) => {
                    warn!(
                        abandoned = actions.len(),
                        "shutdown grace ran out with actions in flight"
                    );
                    break;
                }
            }
        }
    }

    /// Applies one input to the table.
    pub fn apply(&mut self, input: Input) {
        let now = self.clock.now();
        match input {
            Input::RegistryReplayed => {
                self.registry_replayed = true;
                self.status.registry_replayed.store(true, Ordering::Relaxed);
            }
            Input::Registry {
                message: RegistryMessage::Register(registration),
                at,
            } => {
                let client = registration.client_id.clone();
                let split = registration.recovered_from_split;
                match self.writer.register(registration, at, now) {
                    Applied::Registered { first_time } => {
                        self.metrics.registrations.inc();
                        self.data_to_remove.remove(client.as_str());
                        if first_time {
                            self.metrics.lifecycle("client_registered");
                            info!(event = "client_registered", client_id = %client, recovered_from_split = split, "client registered");
                        } else {
                            info!(event = "client_reregistered", client_id = %client, recovered_from_split = split, "registration repeated");
                        }
                    }
                    Applied::Superseded => {
                        info!(client_id = %client, "registration older than the latest registry event; ignored");
                    }
                    _ => {}
                }
            }
            Input::Registry {
                message: RegistryMessage::Deregister(client),
                at,
            } => match self.writer.deregister(&client, at) {
                Applied::Deregistered => {
                    self.metrics.deregistrations.inc();
                    self.metrics.lifecycle("client_deregistered");
                    self.specs.remove(&client);
                    if self.settings.delete_data_on_deregister {
                        self.data_to_remove.insert(client.to_string());
                    }
                    info!(event = "client_deregistered", client_id = %client, "client deregistered");
                }
                Applied::Superseded => {
                    info!(client_id = %client, "tombstone older than the latest registration; ignored");
                }
                _ => {}
            },
            Input::Heartbeat { client_id, at } => {
                match self.writer.heartbeat(&client_id, at, now) {
                    Applied::Heartbeat { revived } => {
                        self.metrics.heartbeats.inc();
                        if revived {
                            self.metrics.lifecycle("client_revived");
                            info!(event = "client_revived", client_id = %client_id, "heartbeat from a stale client");
                        }
                    }
                    Applied::UnknownClientHeartbeat => {
                        // Counted, not logged: an unregistered agent heartbeats forever.
                        self.metrics.heartbeats_unknown_client.inc();
                    }
                    _ => {}
                }
            }
        }
    }

    async fn reconcile(&mut self, semaphore: &Arc<Semaphore>, actions: &mut JoinSet<ActionReport>) {
        let span = info_span!("reconcile");
        let listed = tokio::time::timeout(self.settings.action_timeout, self.runtime.list())
            .instrument(span.clone())
            .await;
        let observed = match listed {
            Ok(Ok(observed)) => observed,
            Ok(Err(error)) => {
                self.runtime_error("list", &error);
                return;
            }
            Err(_) => {
                self.runtime_error(
                    "list",
                    &RuntimeError::Timeout {
                        operation: "list",
                        name: "*".into(),
                        after: self.settings.action_timeout,
                    },
                );
                return;
            }
        };
        let _entered = span.enter();
        let now = self.clock.now();
        self.status
            .first_listing_done
            .store(true, Ordering::Relaxed);
        self.note_exits(&observed);
        self.writer.set_workers(&observed);
        for client in self.writer.refresh_liveness(now) {
            self.metrics.lifecycle("client_stale");
            info!(event = "client_stale", client_id = %client, timeout_secs = self.settings.heartbeat_timeout.as_secs(), "no heartbeat within the timeout; reaping its workers");
        }
        self.update_gauges(&observed);
        self.metrics.reconciles.inc();
        if !self.registry_replayed {
            return;
        }

        let desired = self.desired();
        let plan = plan(&desired, &observed, now);
        let mut planned: Vec<Action> = Vec::new();
        planned.extend(
            plan.to_remove
                .into_iter()
                .map(|(w, r)| Action::Remove(w, r)),
        );
        planned.extend(
            plan.to_recreate
                .into_iter()
                .map(|(w, s, r)| Action::Recreate(w, s, r)),
        );
        planned.extend(plan.to_create.into_iter().map(Action::Create));
        let with_workers: HashSet<&str> = observed.iter().map(|w| w.client_id.as_str()).collect();
        let busy: HashSet<&str> = self.in_flight.values().map(String::as_str).collect();
        for client in &self.data_to_remove {
            if !with_workers.contains(client.as_str()) && !busy.contains(client.as_str()) {
                planned.push(Action::RemoveData(client.clone()));
            }
        }
        for action in planned {
            let name = action.target();
            if self.in_flight.contains_key(&name) {
                continue;
            }
            self.in_flight
                .insert(name.clone(), action.client_id().to_string());
            let runtime = self.runtime.clone();
            let semaphore = semaphore.clone();
            let timeout = self.settings.action_timeout;
            let grace = self.settings.stop_grace;
            let client_id = action.client_id().to_string();
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
    }

    fn desired(&mut self) -> Desired {
        let mut clients = Vec::with_capacity(self.writer.table().len());
        for record in self.writer.table().iter() {
            let specs = self
                .specs
                .entry(record.client_id.clone())
                .or_insert_with(|| self.roles.render(&record.client_id, &self.base_env))
                .clone();
            clients.push(DesiredClient {
                client_id: record.client_id.clone(),
                last_seen: record.last_seen(),
                specs,
            });
        }
        Desired {
            clients,
            heartbeat_timeout: chrono::Duration::from_std(self.settings.heartbeat_timeout)
                .unwrap_or(chrono::Duration::seconds(120)),
            restart_delay: chrono::Duration::from_std(self.settings.restart_delay)
                .unwrap_or(chrono::Duration::seconds(2)),
        }
    }

    fn finish(&mut self, report: ActionReport) {
        self.in_flight.remove(&report.name);
        match report.result {
            Ok(event) => {
                if let Some(client) = report.name.strip_prefix("data:") {
                    self.data_to_remove.remove(client);
                }
                self.metrics.lifecycle(event);
                info!(event, client_id = %report.client_id, worker = %report.name, "worker action done");
            }
            Err((operation, ref error)) => self.runtime_error_for(operation, &report, error),
        }
    }

    fn note_exits(&mut self, observed: &[ObservedWorker]) {
        let mut current = HashMap::with_capacity(observed.len());
        for worker in observed {
            let label = worker.state.label();
            let previous = self.last_states.get(&worker.name).copied();
            if label == "exited" && previous == Some("running") {
                let exit_code = match worker.state {
                    RuntimeState::Exited { exit_code, .. } => exit_code,
                    _ => None,
                };
                self.metrics.lifecycle("worker_exited");
                warn!(event = "worker_exited", client_id = %worker.client_id, worker = %worker.name, ?exit_code, "worker exited");
            }
            if previous.is_none() && label == "running" && self.last_states.is_empty() {
                self.metrics.lifecycle("worker_adopted");
                info!(event = "worker_adopted", client_id = %worker.client_id, worker = %worker.name, id = %worker.id, "found a running worker at start-up");
            }
            current.insert(worker.name.clone(), label);
        }
        // An empty map would make the next listing look like start-up again.
        if current.is_empty() {
            current.insert(String::new(), "none");
        }
        self.last_states = current;
    }

    fn update_gauges(&self, observed: &[ObservedWorker]) {
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

    fn runtime_error(&self, operation: &'static str, error: &RuntimeError) {
        self.metrics
            .runtime_errors
            .get_or_create(&OperationLabel {
                operation: operation.to_string(),
            })
            .inc();
        warn!(operation, %error, "runtime call failed");
    }

    fn runtime_error_for(
        &self,
        operation: &'static str,
        report: &ActionReport,
        error: &RuntimeError,
    ) {
        self.metrics
            .runtime_errors
            .get_or_create(&OperationLabel {
                operation: operation.to_string(),
            })
            .inc();
        warn!(operation, client_id = %report.client_id, worker = %report.name, %error, "worker action failed; retried on a later pass");
    }

    /// Stops and removes every worker: for `dev`, whose broker dies with it.
    pub async fn stop_all(runtime: &dyn Runtime, grace: Duration) {
        let Ok(workers) = runtime.list().await else {
            return;
        };
        let stops = workers.iter().map(|worker| async move {
            let _ = runtime.stop(&worker.name, grace).await;
            let _ = runtime.remove(&worker.name).await;
        });
        futures::future::join_all(stops).await;
    }
}

async fn call<T>(
    operation: &'static str,
    timeout: Duration,
    future: impl Future<Output = Result<T, RuntimeError>>,
) -> Result<T, (&'static str, RuntimeError)> {
    match tokio::time::timeout(timeout, future).await {
        Ok(result) => result.map_err(|error| (operation, error)),
        Err(_) => Err((
            operation,
            RuntimeError::Timeout {
                operation,
                name: String::new(),
                after: timeout,
            },
        )),
    }
}

fn tolerate_not_found(
    result: Result<(), (&'static str, RuntimeError)>,
) -> Result<(), (&'static str, RuntimeError)> {
    match result {
        Err((_, RuntimeError::NotFound(_))) => Ok(()),
        other => other,
    }
}

/// Carries out one action; returns the lifecycle event it amounts to.
pub async fn execute(
    runtime: &dyn Runtime,
    action: &Action,
    timeout: Duration,
    stop_grace: Duration,
) -> Result<&'static str, (&'static str, RuntimeError)> {
    // A stop may legitimately take its whole grace period.
    let stop_timeout = timeout + stop_grace;
    match action {
        Action::Create(spec) => {
            match call("create", timeout, runtime.create(spec)).await {
                Ok(_) => {}
                // Created by an earlier pass whose report was lost: start what is there.
                Err((_, RuntimeError::Conflict(_))) => {}
                Err(error) => return Err(error),
            }
            call("start", timeout, runtime.start(&spec.name)).await?;
            Ok("worker_spawned")
        }
        Action::Recreate(worker, spec, reason) => {
            tolerate_not_found(
                call("stop", stop_timeout, runtime.stop(&worker.name, stop_grace)).await,
            )?;
            tolerate_not_found(call("remove", timeout, runtime.remove(&worker.name)).await)?;
            call("create", timeout, runtime.create(spec)).await?;
            call("start", timeout, runtime.start(&spec.name)).await?;
            Ok(match reason {
                RecreateReason::SpecChanged => "worker_recreated",
                RecreateReason::NotRunning => "worker_restarted",
            })
        }
        Action::RemoveData(client) => {
            call(
                "remove_client_data",
                timeout,
                runtime.remove_client_data(client),
            )
            .await?;
            Ok("client_data_removed")
        }
        Action::Remove(worker, reason) => {
            tolerate_not_found(
                call("stop", stop_timeout, runtime.stop(&worker.name, stop_grace)).await,
            )?;
            tolerate_not_found(call("remove", timeout, runtime.remove(&worker.name)).await)?;
            Ok(match reason {
                RemoveReason::ClientStale => "worker_reaped",
                RemoveReason::ClientUnknown | RemoveReason::RoleRemoved => "worker_removed",
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::roles::{DEFAULT_IMAGE, DEFAULT_ROLES};
    use crate::runtime::fake::FakeRuntime;
    use crate::ManualClock;
    use chrono::{DateTime, Utc};
    use dashmap::DashMap;
    use kg_shared::registry::decode_registry;

    struct Harness {
        runtime: Arc<FakeRuntime>,
        clock: Arc<ManualClock>,
        table: crate::table::ClientTable,
        inputs: mpsc::Sender<Input>,
        stop: Option<tokio::sync::oneshot::Sender<()>>,
        task: tokio::task::JoinHandle<()>,
    }

    fn start() -> DateTime<Utc> {
        DateTime::from_timestamp(1_760_000_000, 0).unwrap()
    }

    fn harness() -> Harness {
        let runtime = Arc::new(FakeRuntime::new());
        let clock = Arc::new(ManualClock::new(start()));
        let table: crate::table::ClientTable = Arc::new(DashMap::new());
        let enabled: Vec<String> = DEFAULT_ROLES.iter().map(|r| r.to_string()).collect();
        let controller = Controller::new(
            runtime.clone(),
            TableWriter::new(table.clone(), chrono::Duration::seconds(120)),
            RoleSet::builtin(&enabled, DEFAULT_IMAGE).unwrap(),
            vec![],
            ControllerSettings {
                heartbeat_timeout: Duration::from_secs(120),
                restart_delay: Duration::from_secs(2),
                reconcile_interval: Duration::from_millis(20),
                max_concurrent_actions: 4,
                action_timeout: Duration::from_secs(5),
                stop_grace: Duration::from_secs(1),
                shutdown_grace: Duration::from_secs(1),
                delete_data_on_deregister: true,
            },
            Arc::new(ControlPlaneMetrics::new()),
            Arc::new(Status::default()),
            clock.clone(),
        );
        let (inputs, rx) = mpsc::channel(100);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(controller.run(rx, async {
            let _ = stopped.await;
        }));
        Harness {
            runtime,
            clock,
            table,
            inputs,
            stop: Some(stop),
            task,
        }
    }

    fn registration(id: &str) -> Input {
        let value = format!(r#"{{"client_id":"{id}","cluster_name":"prod-eu"}}"#);
        Input::Registry {
            message: decode_registry(Some(id.as_bytes()), Some(value.as_bytes())).unwrap(),
            at: start(),
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

    #[tokio::test]
    async fn nothing_is_created_before_the_registry_is_replayed() {
        let h = harness();
        h.inputs.send(registration("af-9")).await.unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(h.runtime.calls_of("create").is_empty());
        h.inputs.send(Input::RegistryReplayed).await.unwrap();
        eventually("two workers started", || {
            h.runtime.calls_of("start").len() == 2
        })
        .await;
        h.stop().await;
    }

    #[tokio::test]
    async fn a_stale_client_is_reaped_and_a_tombstone_removes_a_live_one() {
        let h = harness();
        h.inputs.send(Input::RegistryReplayed).await.unwrap();
        h.inputs.send(registration("af-9")).await.unwrap();
        h.inputs.send(registration("af-10")).await.unwrap();
        eventually("four workers started", || {
            h.runtime.calls_of("start").len() == 4
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
            removed.len() == 2 && removed.iter().all(|name| name.ends_with("-af-9"))
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
            .send(Input::Registry {
                message: RegistryMessage::Deregister(ClientId::parse("af-10").unwrap()),
                at: h.clock.now(),
            })
            .await
            .unwrap();
        eventually("af-10's workers removed", || {
            h.runtime.calls_of("remove").len() == 4
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

    #[tokio::test]
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
                == 2
        })
        .await;
        h.stop().await;
    }

    #[tokio::test]
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
            h.runtime.calls_of("start").len() == 2
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
}
