//! The control plane. Modules: [`config`] (the command line), [`ingest`] (registry and
//! heartbeat consumption), [`publisher`] (dead letters, tombstones), [`table`] (the client table and its
//! one writer), [`plan`] (the pure planner), [`controller`] (the reconcile loop and the
//! executor), [`runtime`] (the `Runtime` trait, its process and fake implementations and
//! the contract suite), [`roles`] (the role set and worker specs), [`admission`] (who is
//! taken on, and when) and [`refill`] (re-reading the registry for registrations past the
//! waiting line), [`api`] (HTTP), [`metrics`], [`admin`] (the `create-topics`,
//! `list-groups` and `group-offsets` subcommands), [`dev`] (the embedded default) and
//! [`demo`] (the demo agent `dev --demo` runs).

pub use kg_shared::telemetry::{init_tracing, termination_signal};

pub mod admin;
pub mod admission;
pub mod api;
pub mod config;
pub mod controller;
pub mod demo;
pub mod dev;
pub mod events;
pub mod ingest;
pub mod input;
pub mod metrics;
pub mod plan;
pub mod publisher;
pub mod refill;
pub mod replay_order;
pub mod roles;
pub mod runtime;
pub mod supervise;
pub mod table;

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use dashmap::DashMap;
use tokio::sync::{mpsc, watch};
use tracing::{error, info};

use crate::config::{RunArgs, RuntimeKind};
use crate::controller::{Controller, ControllerSettings, Status};
use crate::ingest::IngestSettings;
use crate::metrics::ControlPlaneMetrics;
use crate::publisher::Publisher;
use crate::roles::RoleSet;
use crate::runtime::process::ProcessRuntime;
use crate::runtime::Runtime;
use crate::table::{ClientTable, TableWriter};

/// The source of "now", injected so tests control time.
pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> DateTime<Utc>;
}

/// The wall clock.
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

/// A clock that moves only when told: for tests (feature `test-support`).
#[cfg(any(test, feature = "test-support"))]
pub struct ManualClock {
    now: std::sync::Mutex<DateTime<Utc>>,
}

#[cfg(any(test, feature = "test-support"))]
impl ManualClock {
    pub fn new(start: DateTime<Utc>) -> Self {
        Self {
            now: std::sync::Mutex::new(start),
        }
    }

    pub fn advance(&self, by: chrono::Duration) {
        let mut now = self.now.lock().unwrap_or_else(|p| p.into_inner());
        *now += by;
    }
}

#[cfg(any(test, feature = "test-support"))]
impl Clock for ManualClock {
    fn now(&self) -> DateTime<Utc> {
        *self.now.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Failures that stop the control plane at start-up.
#[derive(Debug, thiserror::Error)]
pub enum ControlPlaneError {
    #[error("failed to create the data directory {path}: {source}")]
    DataDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("failed to set up the runtime: {0}")]
    Runtime(#[from] runtime::RuntimeError),
    #[error(transparent)]
    Roles(#[from] roles::RolesError),
    #[error(transparent)]
    Ingest(#[from] ingest::IngestError),
    #[error("failed to bind the API on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    /// Without ingest the controller would go on acting on a table that no longer
    /// changes, reaping every client as its heartbeats stop arriving; exiting lets the
    /// supervisor (Docker, systemd) restart it, and the restart replays what was missed.
    #[error("ingest stopped while the control plane was running: {reason}")]
    IngestStopped { reason: String },
}

/// What a running control plane exposes to an embedding caller (dev mode, tests).
pub struct Handles {
    pub table: ClientTable,
    pub status: Arc<Status>,
    pub runtime: Arc<dyn Runtime>,
    pub api_addr: SocketAddr,
}

/// The worker binary next to the running executable.
pub fn default_worker_bin() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|dir| dir.join("worker")))
        .unwrap_or_else(|| PathBuf::from("worker"))
}

/// Builds the runtime `args` asks for.
pub async fn build_runtime(args: &RunArgs) -> Result<Arc<dyn Runtime>, ControlPlaneError> {
    match args.runtime {
        RuntimeKind::Process => {
            let bin = args.worker_bin.clone().unwrap_or_else(default_worker_bin);
            Ok(Arc::new(
                ProcessRuntime::new(&args.data_dir, bin)?.with_secret_env(args.kafka.secret_env()),
            ))
        }
        RuntimeKind::Docker => {
            let settings = runtime::docker::DockerSettings {
                network: args.docker_network.clone(),
                user: args.docker_user.clone(),
                log_max_size: args.docker_log_max_size.clone(),
                log_max_files: args.docker_log_max_files,
                secret_env: args.kafka.secret_env(),
            };
            Ok(Arc::new(
                runtime::docker::DockerRuntime::connect(settings, Duration::from_secs(10)).await?,
            ))
        }
        RuntimeKind::Fake => Ok(Arc::new(runtime::fake::FakeRuntime::unrecorded())),
    }
}

/// Runs the control plane until `shutdown` resolves. `on_started` receives the handles
/// once the API is listening.
#[allow(clippy::too_many_lines)] // to be split as the controller reshape goes on (issue 13)
pub async fn run(
    args: RunArgs,
    shutdown: impl Future<Output = ()> + Send + 'static,
    on_started: impl FnOnce(&Handles),
) -> Result<(), ControlPlaneError> {
    std::fs::create_dir_all(&args.data_dir).map_err(|source| ControlPlaneError::DataDir {
        path: args.data_dir.clone(),
        source,
    })?;
    let metrics = Arc::new(ControlPlaneMetrics::new());
    let runtime = runtime::instrumented::InstrumentedRuntime::wrap(
        build_runtime(&args).await?,
        metrics.clone(),
    );
    let roles = RoleSet::load(args.roles_file.as_deref(), &args.roles, &args.worker_image)?;
    let status = Arc::new(Status::default());
    let table: ClientTable = Arc::new(DashMap::new());
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let publisher = Arc::new(Publisher::new(&args.kafka, metrics.clone())?);
    let heartbeat_timeout = Duration::from_secs(args.heartbeat_timeout_secs);

    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|source| ControlPlaneError::Bind {
            addr: args.listen,
            source,
        })?;
    let api_addr = listener
        .local_addr()
        .map_err(|source| ControlPlaneError::Bind {
            addr: args.listen,
            source,
        })?;
    write_api_addr(&args.data_dir, api_addr);
    info!(api = %api_addr, runtime = runtime.kind(), roles = ?roles.roles.iter().map(|r| r.name.as_str()).collect::<Vec<_>>(), "control plane starting");

    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = move |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };

    // The controller applies whatever is queued at once, so a short queue costs no
    // throughput; a long one held up to 10,000 decoded registrations in a flood.
    let (inputs_tx, inputs_rx) = mpsc::channel(1_024);
    let events = events::EventLog::default();
    let router = api::router(api::ApiState {
        events: events.clone(),
        commands: Some(inputs_tx.clone()),
        table: table.clone(),
        metrics: metrics.clone(),
        status: status.clone(),
        runtime: runtime.clone(),
        publisher: Some(publisher.clone()),
        api_token: args.api_token.clone(),
    });
    let api_stop = stopped(stop_rx.clone());
    let api_task = tokio::spawn(async move {
        if let Err(failure) = axum::serve(listener, router)
            .with_graceful_shutdown(api_stop)
            .await
        {
            error!(error = %failure, "api server stopped");
        }
    });

    // Re-reads of the registry for registrations past the waiting line (`refill`): one at
    // a time, so one queued request is enough.
    let (refills_tx, refills_rx) = mpsc::channel(1);
    let (refilled_tx, refilled_rx) = mpsc::channel(refill::REFILLED_QUEUE);
    tokio::spawn(refill::run_refills(
        args.kafka.clone(),
        refills_rx,
        refilled_tx,
        clock.clone(),
        stop_rx.clone(),
    ));

    let mut ingest_task = {
        let kafka = args.kafka.clone();
        let metrics = metrics.clone();
        let publisher = publisher.clone();
        let clock = clock.clone();
        let stop = stop_rx.clone();
        tokio::spawn(async move {
            let settings = IngestSettings {
                heartbeat_timeout,
                metadata_timeout: Duration::from_secs(5),
            };
            ingest::run_ingest(&kafka, settings, metrics, publisher, clock, inputs_tx, stop).await
        })
    };

    on_started(&Handles {
        table: table.clone(),
        status: status.clone(),
        runtime: runtime.clone(),
        api_addr,
    });

    let controller = Controller::new(
        runtime.clone(),
        TableWriter::new(
            table,
            chrono::Duration::from_std(heartbeat_timeout).unwrap_or(chrono::Duration::seconds(120)),
        ),
        roles,
        args.worker_base_env(),
        ControllerSettings {
            heartbeat_timeout,
            restart_delay: Duration::from_millis(args.restart_backoff_base_ms),
            reconcile_interval: Duration::from_millis(args.reconcile_interval_ms),
            max_concurrent_actions: args.max_concurrent_actions,
            action_timeout: Duration::from_secs(args.action_timeout_secs),
            stop_grace: Duration::from_secs(args.stop_grace_secs),
            shutdown_grace: Duration::from_secs(10),
            delete_data_on_deregister: args.deregistered_data == config::DeregisteredData::Delete,
            admission: admission::AdmissionSettings {
                max_clients: args.max_clients,
                max_new_per_minute: args.max_new_clients_per_minute,
                max_waiting: args.max_waiting_clients,
                allowlist: args
                    .client_allowlist
                    .iter()
                    .map(|id| id.trim().to_string())
                    .filter(|id| !id.is_empty())
                    .collect(),
            },
            orphan_grace: chrono::Duration::seconds(args.orphan_grace_secs as i64),
            orphan_dry_run: args.orphan_dry_run,
            max_recreates_per_pass: args.max_recreates_per_pass,
            event_attributor: args.event_attributor,
            attributor_env: vec![(
                "ATTRIBUTOR_WINDOW_SECS".into(),
                args.attributor_window_secs.to_string(),
            )],
            health: controller::HealthSettings {
                interval: Duration::from_secs(args.health_interval_secs),
                timeout: Duration::from_secs(args.health_timeout_secs),
                failures: args.health_failures,
                max_concurrent: args.health_max_concurrent_probes,
            },
            backoff: supervise::BackoffSettings {
                base: chrono::Duration::milliseconds(args.restart_backoff_base_ms as i64),
                cap: chrono::Duration::seconds(args.restart_backoff_max_secs as i64),
                reset_after: chrono::Duration::seconds(args.restart_reset_after_secs as i64),
                window: chrono::Duration::seconds(args.restart_window_secs as i64),
                max_restarts_in_window: args.restart_max_in_window,
                jitter: args.restart_jitter,
            },
        },
        metrics,
        status,
        clock,
        events,
    )
    .with_refills(refills_tx, refilled_rx);
    let mut ingest_ended: Option<String> = None;
    let shutdown_or_ingest_end = async {
        tokio::select! {
            _ = shutdown => {}
            joined = &mut ingest_task => {
                ingest_ended = Some(match joined {
                    Ok(Ok(())) => "it returned".to_string(),
                    Ok(Err(failure)) => failure.to_string(),
                    Err(join) if join.is_panic() => "it panicked".to_string(),
                    Err(join) => join.to_string(),
                });
            }
        }
    };
    controller.run(inputs_rx, shutdown_or_ingest_end).await;
    if args.stop_workers_on_exit {
        info!("stopping every worker (CP_STOP_WORKERS_ON_EXIT)");
        Controller::stop_all(runtime.as_ref(), Duration::from_secs(args.stop_grace_secs)).await;
    }
    let _ = stop_tx.send(true);
    if let Some(reason) = ingest_ended {
        let _ = api_task.await;
        error!(%reason, "ingest stopped; the control plane exits so that it is restarted");
        return Err(ControlPlaneError::IngestStopped { reason });
    }
    if let Ok(Err(failure)) = ingest_task.await {
        error!(error = %failure, "ingest failed while stopping");
    }
    let _ = api_task.await;
    info!("control plane stopped; workers left running");
    Ok(())
}

fn write_api_addr(data_dir: &Path, addr: SocketAddr) {
    let path = data_dir.join("api.addr");
    let tmp = path.with_extension("tmp");
    if std::fs::write(&tmp, addr.to_string()).is_ok() {
        let _ = std::fs::rename(tmp, path);
    }
}
