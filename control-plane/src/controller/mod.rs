//! The controller: the one task that writes the client table. Its loop gathers inputs,
//! decides, and hands actions to the executor; results come back as inputs:
//!
//! - `apply` (ingest's inputs, re-read registrations, operators' restarts) changes the
//!   table and what is wanted;
//! - `reconcile` lists the runtime, plans (`crate::plan`), and runs the pure decide step
//!   (`decide`) over the plan and what this module knows per worker (`workers`);
//! - the executor (`executor`) runs the chosen actions concurrently, bounded by a
//!   semaphore and each runtime call under a timeout, and reports back here, so a slow
//!   client never holds up the loop or another client; a worker with an action in flight
//!   is left out of the next plans;
//! - probes (`probing`) and listings feed supervision (`observe`).
//!
//! Nothing is created, adopted or removed before the registry has been replayed and the
//! runtime listed once: until then the control plane does not know what should run.

mod apply;
mod decide;
mod executor;
mod health;
mod observe;
mod owned;
mod reconcile;
mod status;
mod views;
mod workers;

#[cfg(test)]
mod tests;

pub use executor::{execute, Action, ActionError, ActionKind, ActionReport, Operation};
pub use health::HealthSettings;
pub use status::{Listing, ListingFailure, Status};

use std::collections::{HashMap, HashSet, VecDeque};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use kg_shared::log_limit::LogLimiter;
use kg_shared::ClientId;
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinSet;
use tokio::time::{sleep_until, Instant};
use tracing::{info, warn};

use crate::admission::{Admission, AdmissionSettings, RefillMarks};
use crate::events::{EventLog, Lifecycle, LifecycleEvent};
use crate::input::{Input, RestartRequest};
use crate::liveness::HeartbeatTimeout;
use crate::metrics::ControlPlaneMetrics;
use crate::roles::RoleSet;
use crate::runtime::{Runtime, SharedRoleParts, WorkerSpec};
use crate::supervise::{BackoffSettings, RestartPolicy};
use crate::table::TableWriter;
use crate::Clock;
use decide::{InFlight, SpecsByClient};
use health::ProbeReport;
use workers::Workers;

/// Tuning of the controller.
#[derive(Debug, Clone)]
pub struct ControllerSettings {
    pub heartbeat_timeout: HeartbeatTimeout,
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

/// What a given-up worker last wrote, read in the background.
type LastLines = (Arc<str>, String);

/// The controller and its state.
pub struct Controller {
    runtime: Arc<dyn Runtime>,
    writer: TableWriter,
    settings: ControllerSettings,
    metrics: Arc<ControlPlaneMetrics>,
    status: Arc<Status>,
    clock: Arc<dyn Clock>,
    events: EventLog,
    /// Each client's worker specs, rendered once.
    specs: SpecsByClient,
    /// The shared workers' pseudo-client and specs, when enabled: always desired, never
    /// stale, never in the client table.
    shared: Option<(ClientId, Arc<[WorkerSpec]>)>,
    /// Each role's environment, shared by all specs.
    role_parts: Vec<SharedRoleParts>,
    /// The operator's pipeline templates, for what registrations ask for.
    pipelines: Vec<kg_shared::pipeline_template::PipelineTemplate>,
    /// The part of each pipeline a registration may ask for, by name.
    requestable_parts: HashMap<String, SharedRoleParts>,
    /// Restart policy by role.
    policies: HashMap<String, RestartPolicy>,
    /// What is remembered per worker: supervision, health, phase shown, orphan hold.
    workers: Workers,
    /// Targets with an action in flight: the client each belongs to, and what is done.
    in_flight: InFlight,
    /// Whether a listing has succeeded before: the first one's running workers are adopted.
    listed_before: bool,
    admission: Admission,
    /// Where re-reads of the registry are asked for (`crate::refill`), when one runs.
    refills: Option<mpsc::Sender<RefillMarks>>,
    /// What the re-reads bring back, on a channel of their own: a small one, so a re-read
    /// of a large registry holds a few hundred records in memory, not the inputs' 10,000.
    refilled: Option<mpsc::Receiver<Input>>,
    /// Registrations not admitted yet are logged boundedly, by reason.
    admission_log: LogLimiter,
    /// Running workers (name, client, role) as of the last listing: what is probed.
    running: Vec<(Arc<str>, Arc<str>, Arc<str>)>,
    /// Workers (name, client, role) still to be probed in the current round.
    probe_queue: VecDeque<(Arc<str>, Arc<str>, Arc<str>)>,
    http: reqwest::Client,
    /// Operators' restart requests, carried out on the next pass.
    restart_requests: Vec<RestartRequest>,
    /// Background reads of given-up workers' last lines report here.
    last_lines: (mpsc::Sender<LastLines>, Option<mpsc::Receiver<LastLines>>),
    registry_replayed: bool,
    /// Deregistered clients whose data is deleted once their workers are gone.
    data_to_remove: HashSet<String>,
    /// The clients this controller acts on (`crate::ownership`).
    ownership: crate::ownership::Ownership,
    /// Revocations to answer once no action on a client given up is in flight.
    releasing: Vec<std::sync::mpsc::SyncSender<()>>,
    /// What was owned before the group's last rebalance began (its revocation, or its
    /// assignment when nothing was revoked), until the listing after the assignment adopts
    /// the running workers of the clients gained.
    gained_from: Option<crate::ownership::Ownership>,
    /// A revocation came and its assignment has not yet: nothing is adopted meanwhile.
    awaiting_assignment: bool,
}

/// After an input or a finished action, the next pass comes this soon: inputs arriving
/// together are planned for once.
const SOON: Duration = Duration::from_millis(20);

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
        let requestable_parts = roles.requestable_parts(&base_env);
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
            .map(|role| (role.name.to_string(), role.restart))
            .collect();
        let (lines_tx, lines_rx) = mpsc::channel(64);
        Self {
            runtime,
            writer,
            settings,
            metrics,
            status,
            clock,
            events,
            specs: shared.iter().cloned().collect(),
            shared,
            role_parts,
            pipelines: roles.pipelines.clone(),
            requestable_parts,
            policies,
            workers: Workers::default(),
            in_flight: InFlight::new(),
            listed_before: false,
            admission,
            refills: None,
            refilled: None,
            admission_log: LogLimiter::default(),
            running: Vec::new(),
            probe_queue: VecDeque::new(),
            http: reqwest::Client::new(),
            restart_requests: Vec::new(),
            last_lines: (lines_tx, Some(lines_rx)),
            registry_replayed: false,
            data_to_remove: HashSet::new(),
            ownership: crate::ownership::Ownership::All,
            releasing: Vec::new(),
            gained_from: None,
            awaiting_assignment: false,
        }
    }

    /// Acts only on the clients `ownership` names (one of several control planes; it
    /// changes as the group's inputs say). Without it, on every client.
    pub fn with_ownership(mut self, ownership: crate::ownership::Ownership) -> Self {
        self.status.set_ownership(&ownership);
        self.metrics.owned_partitions.set(ownership.owned_count());
        self.ownership = ownership;
        self
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
        let mut probes: JoinSet<ProbeReport> = JoinSet::new();
        let mut next_reconcile = Instant::now();
        let mut inputs_open = true;
        let mut refilled = self.refilled.take();
        let mut last_lines = self.last_lines.1.take();
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
                    self.release_if_quiet();
                    next_reconcile = next_reconcile.min(Instant::now() + SOON);
                }
                Some((name, lines)) = async { last_lines.as_mut()?.recv().await } => {
                    self.workers.entry(&name).last_lines = Some(lines);
                }
                input = inputs.recv(), if inputs_open => match input {
                    Some(input) => {
                        self.apply(input);
                        // Apply whatever else is queued before planning once for all of it.
                        while let Ok(more) = inputs.try_recv() {
                            self.apply(more);
                        }
                        next_reconcile = next_reconcile.min(Instant::now() + SOON);
                    }
                    None => inputs_open = false,
                },
                input = async { refilled.as_mut()?.recv().await }, if refilled.is_some() => match input {
                    Some(input) => {
                        self.apply(input);
                        next_reconcile = next_reconcile.min(Instant::now() + SOON);
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
        self.drain(actions).await;
    }

    /// Shutdown: actions already started are waited for, up to the shutdown grace, so a
    /// worker is not left half-created; what is still running after it is abandoned (the
    /// next instance adopts or recreates it).
    async fn drain(&mut self, mut actions: JoinSet<ActionReport>) {
        info!(in_flight = actions.len(), "controller stopping");
        let deadline = Instant::now() + self.settings.shutdown_grace;
        while !actions.is_empty() {
            match tokio::time::timeout_at(deadline, actions.join_next()).await {
                Ok(Some(Ok(report))) => {
                    self.finish(report);
                    self.release_if_quiet();
                }
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
        // Stopped: nothing more is started, so whatever was revoked meanwhile is let go.
        for released in self.releasing.drain(..) {
            let _ = released.send(());
        }
    }

    /// Emits a lifecycle event of `client` (and `worker`) now.
    fn lifecycle(
        &mut self,
        client: &str,
        event: Lifecycle,
        worker: Option<&Arc<str>>,
        detail: String,
    ) {
        let event = LifecycleEvent {
            at: self.clock.now(),
            event,
            worker: worker.cloned(),
            detail,
        };
        event.emit(client, &self.events, &self.metrics);
    }

    /// The restart policy of `role`.
    fn policy(&self, role: &str) -> RestartPolicy {
        self.policies
            .get(role)
            .copied()
            .unwrap_or(RestartPolicy::Always)
    }

    /// Stops and removes every worker: for `dev`, whose broker dies with it.
    pub async fn stop_all(runtime: &dyn Runtime, grace: Duration) {
        executor::stop_all(runtime, grace).await;
    }
}
