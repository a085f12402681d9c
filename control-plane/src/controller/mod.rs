//! The controller: the one task that writes the client table. It applies ingest's inputs,
//! and on every reconcile pass lists the runtime, plans, and hands the plan's actions to
//! the executor. Actions run concurrently (bounded by a semaphore, each runtime call under
//! a timeout) and report back here, so a slow client never holds up the loop or another
//! client, and a worker with an action in flight is left out of the next plans.
//!
//! Nothing is created, adopted or removed before the registry has been replayed and the
//! runtime listed once: until then the control plane does not know what should run.

mod decide;
mod executor;
mod health;

pub use executor::{execute, Action, ActionError, ActionKind, ActionReport, Operation};
pub use health::HealthSettings;
use health::{probe, HealthRecord, ProbeReport};

use std::collections::{HashMap, HashSet, VecDeque};
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use kg_shared::log_limit::{LogLimiter, LogVerdict};
use kg_shared::registry::{Registration, RegistryMessage};
use kg_shared::ClientId;
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinSet;
use tokio::time::{sleep_until, Instant};
use tracing::{info, info_span, warn, Instrument};

use crate::admission::{Admission, AdmissionSettings, Deferral, RefillMarks};
use crate::events::{EventLog, Lifecycle, LifecycleEvent};

use crate::input::{Input, RestartRequest};
use crate::metrics::{ControlPlaneMetrics, OperationLabel, StateLabel};
use crate::plan::RestartGate;
use crate::plan::{plan, Desired, DesiredClient, RecreateReason};
use crate::roles::RoleSet;
use crate::runtime::{
    ObservedWorker, Runtime, RuntimeError, RuntimeState, SharedRoleParts, WorkerSpec,
};
use crate::supervise::{
    BackoffSettings, ExitDecision, ExitInfo, RestartPolicy, Supervision, WorkerPhase,
};
use crate::table::WorkerView;
use crate::table::{Applied, ClientState, TableWriter};
use crate::Clock;
use chrono::{DateTime, Utc};
use dashmap::DashMap;

/// Readiness, as `/ready` reports it, and how current the workers the API shows are.
#[derive(Debug, Default)]
pub struct Status {
    pub registry_replayed: AtomicBool,
    pub first_listing_done: AtomicBool,
    listing: std::sync::Mutex<Listing>,
}

/// The runtime's listings: when the last one succeeded, and since when and why they fail.
#[derive(Debug, Default, Clone)]
pub struct Listing {
    pub last_listed_at: Option<DateTime<Utc>>,
    pub failing: Option<ListingFailure>,
}

/// The runtime cannot be listed: what the controller knows of the workers is as of
/// [`Listing::last_listed_at`].
#[derive(Debug, Clone, PartialEq)]
pub struct ListingFailure {
    pub since: DateTime<Utc>,
    pub error: String,
}

impl Status {
    /// Ready: the registry replayed, the runtime listed once, and listable now.
    pub fn ready(&self) -> bool {
        self.registry_replayed.load(Ordering::Relaxed)
            && self.first_listing_done.load(Ordering::Relaxed)
            && self.listing().failing.is_none()
    }

    pub fn listing(&self) -> Listing {
        self.listing
            .lock()
            .map(|listing| listing.clone())
            .unwrap_or_default()
    }

    /// A listing succeeded at `now`.
    pub fn listed(&self, now: DateTime<Utc>) {
        if let Ok(mut listing) = self.listing.lock() {
            listing.last_listed_at = Some(now);
            listing.failing = None;
        }
        self.first_listing_done.store(true, Ordering::Relaxed);
    }

    /// A listing failed at `now`; the first failure of a run is when it started.
    pub fn listing_failed(&self, now: DateTime<Utc>, error: String) {
        if let Ok(mut listing) = self.listing.lock() {
            let since = listing
                .failing
                .as_ref()
                .map_or(now, |failing| failing.since);
            listing.failing = Some(ListingFailure { since, error });
        }
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
    /// Restart backoff, window and give-up.
    pub backoff: BackoffSettings,
    pub admission: AdmissionSettings,
    /// Never-registered clients' workers are removed after this long…
    pub orphan_grace: chrono::Duration,
    /// …unless only reporting.
    pub orphan_dry_run: bool,
    /// Spec-change recreations per pass.
    pub max_recreates_per_pass: usize,
    pub health: HealthSettings,
    /// Whether the shared event attributor runs (under the pseudo-client `shared`).
    pub event_attributor: bool,
    /// The attributor's own settings, added to the workers' base environment.
    pub attributor_env: Vec<(String, String)>,
}

/// The controller and its state.
pub struct Controller {
    runtime: Arc<dyn Runtime>,
    writer: TableWriter,
    settings: ControllerSettings,
    metrics: Arc<ControlPlaneMetrics>,
    status: Arc<Status>,
    clock: Arc<dyn Clock>,
    specs: HashMap<ClientId, Arc<[WorkerSpec]>>,
    /// The shared workers' pseudo-client and specs, when enabled: always desired, never
    /// stale, never in the client table.
    shared: Option<(ClientId, Arc<[WorkerSpec]>)>,
    /// Each role's environment, shared by all specs.
    role_parts: Vec<SharedRoleParts>,
    /// Targets with an action in flight: the client each belongs to, and what is done.
    in_flight: HashMap<Arc<str>, (Arc<str>, ActionKind)>,
    last_states: HashMap<Arc<str>, &'static str>,
    /// Per worker (client and role): restarts, backoff, give-up.
    supervision: HashMap<Arc<str>, Supervision>,
    /// Restart policy by role.
    policies: HashMap<String, RestartPolicy>,
    events: EventLog,
    admission: Admission,
    /// Where re-reads of the registry are asked for (`crate::refill`), when one runs.
    refills: Option<mpsc::Sender<RefillMarks>>,
    /// What the re-reads bring back, on a channel of their own: a small one, so a re-read
    /// of a large registry holds a few hundred records in memory, not the inputs' 10,000.
    refilled: Option<mpsc::Receiver<Input>>,
    /// Registrations not admitted yet are logged boundedly, by reason.
    admission_log: LogLimiter,
    /// Workers of never-registered clients, and when each was first seen.
    orphans_since: HashMap<Arc<str>, DateTime<Utc>>,
    /// Per running worker: consecutive failed probes, and whether it reports degraded.
    health: HashMap<Arc<str>, HealthRecord>,
    /// Workers failed by their health checks, restarted when their backoff is due.
    unhealthy: HashSet<Arc<str>>,
    /// Running workers (name, client, role) as of the last listing: what is probed.
    running: Vec<(Arc<str>, Arc<str>, Arc<str>)>,
    probing: HashSet<Arc<str>>,
    /// Workers (name, client, role) still to be probed in the current round.
    probe_queue: VecDeque<(Arc<str>, Arc<str>, Arc<str>)>,
    http: reqwest::Client,
    /// Each worker's phase as last shown, to report transitions the controller does not make.
    last_phases: std::sync::Mutex<HashMap<Arc<str>, WorkerPhase>>,
    /// Operators' restart requests, carried out on the next pass.
    restart_requests: Vec<RestartRequest>,
    /// The last lines of given-up workers, filled in by background log reads.
    last_lines: Arc<DashMap<String, String>>,
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
        events: EventLog,
    ) -> Self {
        let admission = Admission::new(settings.admission.clone());
        let role_parts = roles.shared_parts(&base_env);
        let shared = settings.event_attributor.then(|| {
            let client = ClientId::parse(crate::roles::SHARED_CLIENT).expect("a valid id");
            let env: Vec<(String, String)> = base_env
                .iter()
                .chain(&settings.attributor_env)
                .cloned()
                .collect();
            let specs: Arc<[WorkerSpec]> =
                RoleSet::render_with(&client, &[roles.attributor_parts(&env)]).into();
            (client, specs)
        });
        let policies = roles
            .roles
            .iter()
            .map(|role| (role.name.clone(), role.restart))
            .collect();
        Self {
            runtime,
            writer,
            settings,
            metrics,
            status,
            clock,
            specs: shared.iter().cloned().collect(),
            shared,
            role_parts,
            in_flight: HashMap::new(),
            last_states: HashMap::new(),
            supervision: HashMap::new(),
            policies,
            events,
            last_lines: Arc::new(DashMap::new()),
            restart_requests: Vec::new(),
            last_phases: std::sync::Mutex::new(HashMap::new()),
            health: HashMap::new(),
            unhealthy: HashSet::new(),
            running: Vec::new(),
            probing: HashSet::new(),
            probe_queue: VecDeque::new(),
            http: reqwest::Client::new(),
            admission,
            refills: None,
            refilled: None,
            admission_log: LogLimiter::default(),
            orphans_since: HashMap::new(),
            registry_replayed: false,
            data_to_remove: HashSet::new(),
        }
    }

    /// Registrations dropped past the waiting line are read again from the registry by
    /// whoever receives on `refills` (`crate::refill::run_refills`). Without it they wait
    /// for the next restart's replay.
    pub fn with_refills(
        mut self,
        refills: mpsc::Sender<RefillMarks>,
        refilled: mpsc::Receiver<Input>,
    ) -> Self {
        self.refills = Some(refills);
        self.refilled = Some(refilled);
        self
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
        let mut refilled = self.refilled.take();
        let mut probes: JoinSet<ProbeReport> = JoinSet::new();
        let probing = !self.settings.health.interval.is_zero();
        let mut next_probe = Instant::now() + self.settings.health.interval;
        loop {
            tokio::select! {
                biased;
                _ = &mut shutdown => break,
                Some(joined) = probes.join_next(), if !probes.is_empty() => {
                    if let Ok(report) = joined {
                        self.on_probe(report);
                    }
                    self.spawn_probes(&mut probes);
                }
                _ = sleep_until(next_probe), if probing => {
                    self.queue_probe_round();
                    self.spawn_probes(&mut probes);
                    next_probe = Instant::now() + self.settings.health.interval;
                }
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
                input = async { refilled.as_mut()?.recv().await }, if refilled.is_some() => match input {
                    Some(input) => {
                        self.apply(input);
                        next_reconcile = next_reconcile.min(Instant::now() + Duration::from_millis(20));
                    }
                    None => refilled = None,
                },
                _ = sleep_until(next_reconcile) => {
                    let started = std::time::Instant::now();
                    self.reconcile(&semaphore, &mut actions).await;
                    self.metrics
                        .reconcile_duration
                        .observe(started.elapsed().as_secs_f64());
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
    #[allow(clippy::too_many_lines)] // to be split as the controller reshape goes on (issue 13)
    pub fn apply(&mut self, input: Input) {
        let now = self.clock.now();
        match input {
            Input::Restart(request) => {
                self.restart_requests.push(request);
            }
            Input::RegistryReplayed => {
                self.registry_replayed = true;
                self.status.registry_replayed.store(true, Ordering::Relaxed);
            }
            Input::Refilled {
                message: RegistryMessage::Register(registration),
                at,
                arrival,
            } => {
                // Ingest applied this stretch of the registry already: a client it put in
                // the table, or deregistered after this record (a tombstone ingest read
                // while the re-read was still behind it), is not brought back.
                let client = &registration.client_id;
                if self.writer.contains(client)
                    || self.writer.is_superseded(client, at)
                    || self.is_shared(client)
                {
                    return;
                }
                let deferral = self.admission.defer_refilled(&registration, at, arrival);
                if let Some(Ok(Deferral::Waiting {
                    again: false,
                    displaced,
                })) = deferral
                {
                    if displaced {
                        self.metrics.admission_displaced.inc();
                    }
                    self.metrics
                        .admission_deferred
                        .get_or_create(&crate::metrics::ReasonLabel {
                            reason: "refilled".into(),
                        })
                        .inc();
                }
            }
            Input::Refilled {
                message: RegistryMessage::Deregister(client),
                ..
            } => {
                self.admission.withdraw_refilled(&client);
            }
            Input::RefillDone { unfinished } => {
                if !unfinished.is_empty() {
                    warn!(
                        partitions = unfinished.len(),
                        "the registry re-read stopped early; it resumes from where it stopped"
                    );
                }
                self.admission.refill_done(unfinished);
            }
            Input::Registry {
                message: RegistryMessage::Register(registration),
                at,
                arrival,
            } => {
                let client = registration.client_id.clone();
                if self.is_shared(&client) {
                    self.metrics
                        .admission_refused
                        .get_or_create(&crate::metrics::ReasonLabel {
                            reason: "reserved_id".into(),
                        })
                        .inc();
                    warn!(client_id = %client, "registration refused: the id is reserved for the shared workers");
                    return;
                }
                if self.writer.contains(&client) {
                    self.register_admitted(registration, at, now, "");
                    return;
                }
                // Not admitted yet: it waits for its turn (`admission`), decided once per
                // reconcile pass. Counted, and logged boundedly: a flood of distinct ids
                // must not grow the log or the per-client event lists.
                let deferral = self.admission.defer(&registration, at, arrival);
                if let Ok(Deferral::Waiting {
                    displaced: true, ..
                }) = deferral
                {
                    self.metrics.admission_displaced.inc();
                }
                let (counter, reason) = match deferral {
                    Err(refusal) => (&self.metrics.admission_refused, refusal.reason_code()),
                    Ok(Deferral::Waiting { again: true, .. }) => {
                        (&self.metrics.admission_deferred, "waiting_again")
                    }
                    Ok(deferral) => (&self.metrics.admission_deferred, deferral.reason_code()),
                };
                counter
                    .get_or_create(&crate::metrics::ReasonLabel {
                        reason: reason.into(),
                    })
                    .inc();
                if let LogVerdict::Log { suppressed } =
                    self.admission_log.check(reason, std::time::Instant::now())
                {
                    info!(client_id = %client, reason, suppressed_since_last = suppressed, "registration not admitted yet");
                }
            }
            Input::Registry {
                message: RegistryMessage::Deregister(client),
                at,
                ..
            } => match self.writer.deregister(&client, at) {
                _ if self.admission.withdraw(&client) => {
                    info!(client_id = %client, "deregistered while waiting for admission");
                }
                Applied::Deregistered => {
                    self.metrics.deregistrations.inc();
                    self.lifecycle(
                        client.as_str(),
                        Lifecycle::ClientDeregistered,
                        None,
                        String::new(),
                    );
                    self.specs.remove(&client);
                    if self.settings.delete_data_on_deregister {
                        self.data_to_remove.insert(client.to_string());
                    }
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
                        // During the replay a registration older than the timeout is
                        // provisionally stale until its replayed heartbeats arrive; that
                        // is no revival, and nothing was reaped.
                        if revived && self.registry_replayed {
                            self.lifecycle(
                                client_id.as_str(),
                                Lifecycle::ClientRevived,
                                None,
                                "heartbeat from a stale client".into(),
                            );
                        }
                    }
                    // A client waiting for admission: its liveness goes in with it.
                    Applied::UnknownClientHeartbeat if self.admission.heartbeat(&client_id, at) => {
                        self.metrics.heartbeats.inc();
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

    /// Whether `client` is the shared workers' reserved id.
    fn is_shared(&self, client: &ClientId) -> bool {
        self.shared
            .as_ref()
            .is_some_and(|(shared, _)| shared == client)
    }

    /// Puts an admitted client's registration in the table (or applies a repeat of one
    /// already there).
    fn register_admitted(
        &mut self,
        registration: Registration,
        at: DateTime<Utc>,
        now: DateTime<Utc>,
        how: &str,
    ) {
        let client = registration.client_id.clone();
        let split = registration.recovered_from_split;
        match self.writer.register(registration, at, now) {
            Applied::Registered { first_time } => {
                self.metrics.registrations.inc();
                self.data_to_remove.remove(client.as_str());
                if first_time {
                    self.lifecycle(
                        client.as_str(),
                        Lifecycle::ClientRegistered,
                        None,
                        format!("recovered_from_split={split}{how}"),
                    );
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

    #[allow(clippy::too_many_lines)] // to be split as the controller reshape goes on (issue 13)
    async fn reconcile(&mut self, semaphore: &Arc<Semaphore>, actions: &mut JoinSet<ActionReport>) {
        let span = info_span!("reconcile");
        let listed = tokio::time::timeout(self.settings.action_timeout, self.runtime.list())
            .instrument(span.clone())
            .await;
        let observed = match listed {
            Ok(Ok(observed)) => observed,
            Ok(Err(error)) => {
                self.status
                    .listing_failed(self.clock.now(), error.to_string());
                self.runtime_error(Operation::List, &error);
                return;
            }
            Err(_) => {
                let error = RuntimeError::Timeout {
                    operation: Operation::List.as_str(),
                    name: "*".into(),
                    after: self.settings.action_timeout,
                };
                self.status
                    .listing_failed(self.clock.now(), error.to_string());
                self.runtime_error(Operation::List, &error);
                return;
            }
        };
        let _entered = span.enter();
        let now = self.clock.now();
        self.status.listed(now);
        self.note_adoptions(&observed);
        self.supervise(&observed, now);
        self.running = observed
            .iter()
            .filter(|w| matches!(w.state, RuntimeState::Running { .. }))
            .map(|w| (w.name.clone(), w.client_id.clone(), w.role.clone()))
            .collect();
        let running: HashSet<&str> = self.running.iter().map(|(n, _, _)| &**n).collect();
        self.health.retain(|name, _| running.contains(&**name));
        let views = self.worker_views(&observed);
        self.writer.set_workers(views);
        for client in self.writer.refresh_liveness(now) {
            let detail = format!(
                "no heartbeat for {}s; reaping its workers",
                self.settings.heartbeat_timeout.as_secs()
            );
            self.lifecycle(client.as_str(), Lifecycle::ClientStale, None, detail);
        }
        self.update_gauges(&observed);
        self.metrics.reconciles.inc();
        if !self.registry_replayed {
            return;
        }
        self.admit_waiting(&observed, now);

        let desired = self.desired();
        let plan = plan(&desired, &observed, now);
        let hold = decide::hold_orphans(
            plan.to_remove,
            &self.orphans_since,
            |client| self.writer.was_deregistered(client),
            self.settings.orphan_grace,
            self.settings.orphan_dry_run,
            now,
        );
        for worker in &hold.found {
            warn!(event = "orphan_found", worker = %worker.name, client_id = %worker.client_id, dry_run = self.settings.orphan_dry_run, "a worker with our labels belongs to no registered client");
        }
        self.metrics.orphans.set(hold.since.len() as i64);
        self.orphans_since = hold.since;
        let mut restarts = self.unhealthy_restarts(&observed, now);
        restarts.extend(self.requested_restarts(&observed));
        let proposed = decide::Proposed {
            removals: hold.kept,
            recreations: plan.to_recreate,
            creations: plan.to_create,
            restarts,
            data_to_remove: self.data_to_remove.iter().cloned().collect(),
        };
        let limits = decide::Limits {
            max_recreates_per_pass: self.settings.max_recreates_per_pass,
            max_concurrent_actions: self.settings.max_concurrent_actions,
        };
        for action in decide::decide(proposed, &observed, &self.in_flight, limits) {
            self.spawn_action(action, semaphore, actions);
        }
    }

    fn spawn_action(
        &mut self,
        action: Action,
        semaphore: &Arc<Semaphore>,
        actions: &mut JoinSet<ActionReport>,
    ) {
        {
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
    }

    fn desired(&mut self) -> Desired {
        let mut clients = Vec::with_capacity(self.writer.table().len() + 1);
        if let Some((client_id, specs)) = &self.shared {
            clients.push(DesiredClient {
                client_id: client_id.clone(),
                last_seen: self.clock.now(),
                specs: specs.clone(),
            });
        }
        for record in self.writer.table().iter() {
            let specs = self
                .specs
                .entry(record.client_id.clone())
                .or_insert_with(|| RoleSet::render_with(&record.client_id, &self.role_parts).into())
                .clone();
            clients.push(DesiredClient {
                client_id: record.client_id.clone(),
                last_seen: record.last_seen(),
                specs,
            });
        }
        let now = self.clock.now();
        let restart_gates = self
            .supervision
            .iter()
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
            .collect();
        Desired {
            clients,
            heartbeat_timeout: chrono::Duration::from_std(self.settings.heartbeat_timeout)
                .unwrap_or(chrono::Duration::seconds(120)),
            restart_delay: chrono::Duration::from_std(self.settings.restart_delay)
                .unwrap_or(chrono::Duration::seconds(2)),
            restart_gates,
        }
    }

    fn finish(&mut self, report: ActionReport) {
        self.in_flight.remove(&report.name);
        match report.result {
            Ok(event) => {
                if let Some(client) = report.name.strip_prefix("data:") {
                    self.data_to_remove.remove(client);
                }
                let now = self.clock.now();
                match event {
                    Lifecycle::WorkerRestarted | Lifecycle::WorkerRestartedByOperator => {
                        if let Some(supervision) = self.supervision.get_mut(&report.name) {
                            supervision.note_restarted(now);
                        }
                    }
                    Lifecycle::WorkerReaped | Lifecycle::WorkerRemoved => {
                        self.supervision.remove(&report.name);
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
            Err(ref error) => self.runtime_error_for(&report, error),
        }
    }

    /// Records, logs and counts a lifecycle event.
    fn lifecycle(
        &mut self,
        client: &str,
        event: Lifecycle,
        worker: Option<&Arc<str>>,
        detail: String,
    ) {
        self.metrics.lifecycle(event.as_str());
        info!(event = event.as_str(), client_id = %client, worker = worker.map_or("", |w| &**w), %detail, "lifecycle event");
        self.events.record(
            client,
            LifecycleEvent {
                at: self.clock.now(),
                event,
                worker: worker.cloned(),
                detail,
            },
        );
    }

    /// Running workers found by the first listing were started by an earlier instance.
    fn note_adoptions(&mut self, observed: &[ObservedWorker]) {
        let first_listing = self.last_states.is_empty();
        let mut current = HashMap::with_capacity(observed.len());
        for worker in observed {
            let label = worker.state.label();
            if first_listing && label == "running" {
                let detail = format!("id {}", worker.id);
                self.lifecycle(
                    &worker.client_id,
                    Lifecycle::WorkerAdopted,
                    Some(&worker.name),
                    detail,
                );
            }
            current.insert(worker.name.clone(), label);
        }
        // An empty map would make the next listing look like start-up again.
        if current.is_empty() {
            current.insert(Arc::from(""), "none");
        }
        self.last_states = current;
    }

    /// Feeds the listing to each worker's supervision: running time (for the reset) and
    /// new exits (for the policy's decision).
    fn supervise(&mut self, observed: &[ObservedWorker], now: DateTime<Utc>) {
        for worker in observed {
            match &worker.state {
                // Only a worker that has exited before has anything to supervise while it
                // runs (its backoff reset); a map entry per healthy worker would cost
                // memory per client for nothing.
                RuntimeState::Running { .. } => {
                    if let Some(supervision) = self.supervision.get_mut(&worker.name) {
                        supervision.observe_running(now, &self.settings.backoff);
                    }
                }
                RuntimeState::Exited {
                    exit_code,
                    exited_at,
                    oom_killed,
                } => {
                    let supervision = self.supervision.entry(worker.name.clone()).or_default();
                    if supervision
                        .last_exit
                        .as_ref()
                        .is_some_and(|exit| exit.at == *exited_at)
                    {
                        continue;
                    }
                    let policy = self
                        .policies
                        .get(&*worker.role)
                        .copied()
                        .unwrap_or(RestartPolicy::Always);
                    let exit = ExitInfo::new(*exit_code, *oom_killed, *exited_at);
                    let reason = exit.reason.clone();
                    let decision = supervision.observe_exit(
                        &worker.name,
                        exit,
                        policy,
                        &self.settings.backoff,
                        now,
                    );
                    let (client, name) = (worker.client_id.clone(), worker.name.clone());
                    self.lifecycle(&client, Lifecycle::WorkerExited, Some(&name), reason);
                    match decision {
                        ExitDecision::RestartAt(at) => {
                            let detail = format!("next retry at {} ({policy})", at.to_rfc3339());
                            self.lifecycle(
                                &client,
                                Lifecycle::WorkerRestarting,
                                Some(&name),
                                detail,
                            );
                        }
                        ExitDecision::Stay => {
                            let detail = format!("left stopped by policy {policy}");
                            self.lifecycle(&client, Lifecycle::WorkerStopped, Some(&name), detail);
                        }
                        ExitDecision::GiveUp(reason) => {
                            self.lifecycle(&client, Lifecycle::WorkerGaveUp, Some(&name), reason);
                            self.fetch_last_lines(&name);
                        }
                    }
                }
                RuntimeState::Created => {}
            }
        }
    }

    /// Queues every running worker for a probe, unless the previous round is still being
    /// worked through (then that round simply runs on).
    fn queue_probe_round(&mut self) {
        if self.probe_queue.is_empty() {
            self.probe_queue.extend(self.running.iter().cloned());
        }
    }

    /// Starts queued probes up to the concurrency limit, skipping workers that are being
    /// probed or acted on already.
    fn spawn_probes(&mut self, probes: &mut JoinSet<ProbeReport>) {
        while probes.len() < self.settings.health.max_concurrent.max(1) {
            let Some((name, client, role)) = self.probe_queue.pop_front() else {
                break;
            };
            if self.probing.contains(&name) || self.in_flight.contains_key(&name) {
                continue;
            }
            self.probing.insert(name.clone());
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
    fn on_probe(&mut self, report: ProbeReport) {
        self.probing.remove(&report.name);
        let Some(probe) = report.probe else {
            return;
        };
        let threshold = self.settings.health.failures.max(1);
        let failed = self
            .health
            .entry(report.name.clone())
            .or_default()
            .count(probe, threshold);
        let Some(detail) = failed else {
            return;
        };
        let now = self.clock.now();
        let policy = self
            .policies
            .get(&*report.role)
            .copied()
            .unwrap_or(RestartPolicy::Always);
        let mut exit = ExitInfo::new(None, false, now);
        exit.reason = format!("health check failed {threshold} times: {detail}");
        let reason = exit.reason.clone();
        let decision = self
            .supervision
            .entry(report.name.clone())
            .or_default()
            .observe_exit(&report.name, exit, policy, &self.settings.backoff, now);
        self.lifecycle(
            &report.client,
            Lifecycle::WorkerUnhealthy,
            Some(&report.name),
            reason,
        );
        match decision {
            ExitDecision::RestartAt(at) => {
                self.unhealthy.insert(report.name.clone());
                let detail = format!("next retry at {} ({policy})", at.to_rfc3339());
                self.lifecycle(
                    &report.client,
                    Lifecycle::WorkerRestarting,
                    Some(&report.name),
                    detail,
                );
            }
            ExitDecision::GiveUp(reason) => {
                self.lifecycle(
                    &report.client,
                    Lifecycle::WorkerGaveUp,
                    Some(&report.name),
                    reason,
                );
                self.fetch_last_lines(&report.name);
            }
            ExitDecision::Stay => {}
        }
    }

    /// Recreates workers failed by their health checks once their backoff is due.
    fn unhealthy_restarts(
        &mut self,
        observed: &[ObservedWorker],
        now: DateTime<Utc>,
    ) -> Vec<Action> {
        let mut actions = Vec::new();
        for worker in observed {
            let due = self
                .supervision
                .get(&worker.name)
                .is_some_and(|s| s.next_retry_at.is_some_and(|at| now >= at));
            if !due || !self.unhealthy.contains(&worker.name) {
                continue;
            }
            let spec = ClientId::parse(&worker.client_id)
                .ok()
                .and_then(|client| self.specs.get(&client).cloned())
                .and_then(|specs| specs.iter().find(|s| s.name == worker.name).cloned());
            if let Some(spec) = spec {
                self.unhealthy.remove(&worker.name);
                actions.push(Action::Recreate(
                    worker.clone(),
                    spec,
                    RecreateReason::NotRunning,
                ));
            }
        }
        actions
    }

    /// Turns operators' restart requests into recreations of the matching workers, whose
    /// supervision starts over.
    fn requested_restarts(&mut self, observed: &[ObservedWorker]) -> Vec<Action> {
        let requests = std::mem::take(&mut self.restart_requests);
        let mut actions = Vec::new();
        for request in requests {
            let Some(specs) = self.specs.get(&request.client_id).cloned() else {
                continue;
            };
            let client = request.client_id.as_str();
            for worker in observed.iter().filter(|w| &*w.client_id == client) {
                if request
                    .role
                    .as_ref()
                    .is_some_and(|role| **role != *worker.role)
                {
                    continue;
                }
                let supervision = self.supervision.get(&worker.name);
                let in_flight = self.in_flight.get(&worker.name).map(|(_, kind)| *kind);
                let current = phase(worker, supervision, in_flight);
                if !current.can_restart() || (request.only_failed && !current.is_failed()) {
                    continue;
                }
                let Some(spec) = specs.iter().find(|spec| spec.name == worker.name) else {
                    continue;
                };
                if let Some(supervision) = self.supervision.get_mut(&worker.name) {
                    supervision.reset_by_operator();
                }
                self.last_lines.remove(&*worker.name);
                actions.push(Action::Recreate(
                    worker.clone(),
                    spec.clone(),
                    RecreateReason::Requested,
                ));
            }
        }
        actions
    }

    /// Keeps the last lines a given-up worker wrote, for the API: the answer to "why?".
    fn fetch_last_lines(&mut self, name: &str) {
        let runtime = self.runtime.clone();
        let name = name.to_string();
        let timeout = self.settings.action_timeout;
        let lines = self.last_lines.clone();
        tokio::spawn(async move {
            if let Ok(Ok(text)) = tokio::time::timeout(timeout, runtime.logs(&name, 20)).await {
                lines.insert(name, text);
            }
        });
    }

    /// Each worker as the API shows it.
    fn worker_views(&self, observed: &[ObservedWorker]) -> Vec<(Arc<str>, WorkerView)> {
        let views = observed
            .iter()
            .map(|worker| {
                let supervision = self.supervision.get(&worker.name);
                let in_flight = self.in_flight.get(&worker.name).map(|(_, kind)| *kind);
                let mut phase = phase(worker, supervision, in_flight);
                let unwell = self
                    .health
                    .get(&worker.name)
                    .is_some_and(|record| record.failures > 0 || record.degraded)
                    || self.unhealthy.contains(&worker.name);
                if phase == WorkerPhase::Running && unwell {
                    phase = WorkerPhase::Degraded;
                }
                let previous = self
                    .last_phases
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner())
                    .insert(worker.name.clone(), phase);
                if let Some(previous) = previous.filter(|p| !p.can_become(phase)) {
                    warn!(worker = %worker.name, from = previous.as_str(), to = phase.as_str(), "unexpected worker state transition");
                    self.metrics.lifecycle("unexpected_transition");
                }
                let exit_code = match &worker.state {
                    RuntimeState::Exited { exit_code, .. } => *exit_code,
                    _ => None,
                };
                let view = WorkerView {
                    role: worker.role.clone(),
                    name: worker.name.clone(),
                    id: worker.id.clone(),
                    state: phase,
                    exit_code,
                    restart_policy: self
                        .policies
                        .get(&*worker.role)
                        .copied()
                        .unwrap_or(RestartPolicy::Always),
                    restart_count: supervision.map_or(0, |s| s.restart_count),
                    last_exit_reason: supervision
                        .and_then(|s| s.last_exit.as_ref())
                        .map(|exit| exit.reason.clone()),
                    next_retry_at: supervision.and_then(|s| s.next_retry_at),
                    failed_reason: supervision.and_then(|s| s.failed_reason.clone()),
                    last_lines: self.last_lines.get(&*worker.name).map(|l| l.value().clone()),
                };
                (worker.client_id.clone(), view)
            })
            .collect();
        // Forget workers that are gone, so the map stays the size of the listing.
        let listed: HashSet<&str> = observed.iter().map(|w| &*w.name).collect();
        self.last_phases
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .retain(|name, _| listed.contains(&**name));
        views
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

    /// Stops and removes every worker: for `dev`, whose broker dies with it.
    pub async fn stop_all(runtime: &dyn Runtime, grace: Duration) {
        executor::stop_all(runtime, grace).await;
    }
}

/// The phase of a listed worker, from the runtime's state, supervision and any action in
/// flight.
fn phase(
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
        let runtime = Arc::new(FakeRuntime::new());
        let clock = Arc::new(ManualClock::new(start()));
        let table: crate::table::ClientTable = Arc::new(DashMap::new());
        let events = EventLog::default();
        let controller = Controller::new(
            runtime.clone(),
            TableWriter::new(table.clone(), chrono::Duration::seconds(120)),
            roles,
            vec![],
            {
                let mut settings = ControllerSettings {
                    heartbeat_timeout: Duration::from_secs(120),
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
            .send(Input::Registry {
                message: RegistryMessage::Deregister(ClientId::parse("af-10").unwrap()),
                at: h.clock.now(),
                arrival: next_arrival(),
            })
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
    #[allow(clippy::too_many_lines)] // to be split as the controller reshape goes on (issue 13)
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
            eventually("backing off again", || {
                worker_state(&h, "af-9", name).is_some_and(|w| w.state == WorkerPhase::BackingOff)
            })
            .await;
            h.clock.advance(chrono::Duration::seconds(delay - 1));
            tokio::time::sleep(Duration::from_millis(100)).await;
            assert_eq!(
                worker_state(&h, "af-9", name).unwrap().state,
                WorkerPhase::BackingOff
            );
            h.clock.advance(chrono::Duration::seconds(1));
            eventually("running again", || {
                worker_state(&h, "af-9", name).is_some_and(|w| w.state == WorkerPhase::Running)
            })
            .await;
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
        eventually("degraded after failed probes", || {
            worker_state(&h, "af-9", name).is_some_and(|w| w.state == WorkerPhase::Degraded)
        })
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
        eventually("unless-stopped restarted", || {
            worker_state(&h, "af-9", unless).is_some_and(|w| w.state == WorkerPhase::Running)
        })
        .await;
        // on-failure:1 restarts a failure once, then gives up.
        h.runtime.clear_calls();
        h.inputs
            .send(Input::Restart(crate::input::RestartRequest {
                client_id: ClientId::parse("af-9").unwrap(),
                role: Some("log-normalizer".into()),
                only_failed: false,
            }))
            .await
            .unwrap();
        eventually("restarted by the operator", || {
            worker_state(&h, "af-9", on_failure).is_some_and(|w| w.state == WorkerPhase::Running)
        })
        .await;
        h.runtime.crash(on_failure, 1);
        eventually("backing off", || {
            worker_state(&h, "af-9", on_failure).is_some_and(|w| w.state == WorkerPhase::BackingOff)
        })
        .await;
        h.clock.advance(chrono::Duration::seconds(10));
        eventually("running again", || {
            worker_state(&h, "af-9", on_failure).is_some_and(|w| w.state == WorkerPhase::Running)
        })
        .await;
        h.runtime.crash(on_failure, 1);
        eventually("given up", || {
            worker_state(&h, "af-9", on_failure).is_some_and(|w| w.state == WorkerPhase::Failed)
        })
        .await;
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
            .send(Input::Registry {
                message: RegistryMessage::Deregister(ClientId::parse("c-1").unwrap()),
                at: h.clock.now(),
                arrival: next_arrival(),
            })
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
}
