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
pub mod dead_letters;
pub mod demo;
pub mod dev;
pub mod events;
pub mod ingest;
pub mod input;
pub mod liveness;
pub mod members;
pub mod metrics;
pub mod ownership;
pub mod pipelines;
pub mod plan;
pub mod publisher;
pub mod refill;
pub mod replay_order;
pub mod roles;
pub mod runtime;
pub mod supervise;
pub mod table;
#[cfg(test)]
mod test_fixtures;

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
use crate::controller::{Controller, Status};
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
    #[error("the pipeline templates file is refused: {0}")]
    Pipelines(#[from] kg_shared::pipeline_template::TemplateError),
    #[error(transparent)]
    Ingest(#[from] ingest::IngestError),
    #[error(transparent)]
    Ownership(#[from] ownership::OwnershipError),
    #[error("the settings do not go together: {0}")]
    Settings(&'static str),
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
        RuntimeKind::Swarm => {
            let settings = runtime::swarm::SwarmSettings {
                network: args.swarm_network.clone(),
                worker_bind: args.swarm_worker_bind.clone(),
                user: args.docker_user.clone(),
                log_max_size: args.docker_log_max_size.clone(),
                log_max_files: args.docker_log_max_files,
                constraints: args.swarm_constraints.clone(),
                secret_env: args.kafka.secret_env(),
            };
            Ok(Arc::new(
                runtime::swarm::SwarmRuntime::connect(settings, Duration::from_secs(10)).await?,
            ))
        }
        RuntimeKind::Fake => Ok(Arc::new(runtime::fake::FakeRuntime::unrecorded())),
    }
}

/// Runs the control plane until `shutdown` resolves. `on_started` receives the handles
/// once the API is listening.
pub async fn run(
    args: RunArgs,
    shutdown: impl Future<Output = ()> + Send + 'static,
    on_started: impl FnOnce(&Handles),
) -> Result<(), ControlPlaneError> {
    create_data_dir(&args.data_dir)?;
    let metrics = Arc::new(ControlPlaneMetrics::new());
    let runtime = runtime::instrumented::InstrumentedRuntime::wrap(
        build_runtime(&args).await?,
        metrics.clone(),
    );
    let roles = RoleSet::load(args.roles_file.as_deref(), &args.roles, &args.worker_image)?
        .with_pipelines(args.pipelines_file.as_deref())?;
    let status = Arc::new(Status::default());
    let table: ClientTable = Arc::new(DashMap::new());
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let publisher = Arc::new(Publisher::new(&args.kafka, metrics.clone())?);
    let heartbeat_timeout = args.heartbeat_timeout;

    let (listener, api_addr) = bind_api(args.listen).await?;
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
    let sharing = Sharing::start(&args, api_addr, &inputs_tx, &status, &metrics, &stop_rx)?;
    let router = api::router(api::ApiState {
        members: sharing.members.clone(),
        events: events.clone(),
        commands: Some(inputs_tx.clone()),
        table: table.clone(),
        metrics: metrics.clone(),
        status: status.clone(),
        runtime: runtime.clone(),
        publisher: Some(publisher.clone()),
        api_token: args.api_token.clone(),
    });
    let api_task = tokio::spawn(serve_api(listener, router, stopped(stop_rx.clone())));

    let (refills_tx, refilled_rx) =
        refill::spawn(args.kafka.clone(), clock.clone(), stop_rx.clone());

    let mut ingest_task = spawn_ingest(
        &args,
        (metrics.clone(), publisher.clone(), clock.clone()),
        inputs_tx,
        stop_rx.clone(),
    );

    on_started(&Handles {
        table: table.clone(),
        status: status.clone(),
        runtime: runtime.clone(),
        api_addr,
    });

    let controller = Controller::new(
        runtime.clone(),
        TableWriter::new(table, heartbeat_timeout),
        roles,
        args.worker_base_env(),
        args.controller_settings(),
        metrics,
        status,
        clock,
        events,
    )
    .with_refills(refills_tx, refilled_rx)
    .with_ownership(sharing.ownership.clone());
    let mut ingest_ended: Option<String> = None;
    let shutdown_or_ingest_end = async {
        tokio::select! {
            _ = shutdown => {}
            joined = &mut ingest_task => ingest_ended = Some(why_ingest_ended(joined)),
        }
    };
    controller.run(inputs_rx, shutdown_or_ingest_end).await;
    if args.stop_workers_on_exit {
        info!("stopping every worker (CP_STOP_WORKERS_ON_EXIT)");
        Controller::stop_all(runtime.as_ref(), Duration::from_secs(args.stop_grace_secs)).await;
    }
    let _ = stop_tx.send(true);
    sharing.leave().await;
    stop_tasks(api_task, ingest_task, ingest_ended).await
}

/// Ingest's task (`crate::ingest`), feeding the controller's inputs until `stop`.
fn spawn_ingest(
    args: &RunArgs,
    (metrics, publisher, clock): (Arc<ControlPlaneMetrics>, Arc<Publisher>, Arc<dyn Clock>),
    inputs: mpsc::Sender<input::Input>,
    stop: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<Result<(), ingest::IngestError>> {
    let settings = IngestSettings {
        heartbeat_timeout: args.heartbeat_timeout,
        metadata_timeout: Duration::from_secs(5),
    };
    let kafka = args.kafka.clone();
    tokio::spawn(async move {
        ingest::run_ingest(&kafka, settings, metrics, publisher, clock, inputs, stop).await
    })
}

/// Where other control planes reach this one's API: the operator's URL, else the bound
/// address (with the host's name in place of an unspecified address).
fn advertised_url(configured: Option<&str>, bound: SocketAddr) -> String {
    if let Some(url) = configured {
        return url.trim_end_matches('/').to_string();
    }
    if bound.ip().is_unspecified() {
        let host = nix::unistd::gethostname()
            .ok()
            .and_then(|name| name.into_string().ok())
            .unwrap_or_else(|| "localhost".into());
        return format!("http://{host}:{}", bound.port());
    }
    format!("http://{bound}")
}

/// With `CP_OWNERSHIP=group`, what sharing the clients takes: the member of the control
/// planes' group (a thread: see `crate::ownership`), which joins once the registry has
/// been replayed, and the announcements of where each control plane answers
/// (`crate::members`); else nothing, and every client is this control plane's.
struct Sharing {
    /// The controller's ownership until the group says otherwise.
    ownership: ownership::Ownership,
    members: Option<members::Members>,
    member: Option<std::thread::JoinHandle<()>>,
    announcing: Option<tokio::task::JoinHandle<()>>,
}

impl Sharing {
    fn start(
        args: &RunArgs,
        api_addr: SocketAddr,
        inputs: &mpsc::Sender<input::Input>,
        status: &Arc<Status>,
        metrics: &Arc<ControlPlaneMetrics>,
        stop: &watch::Receiver<bool>,
    ) -> Result<Self, ControlPlaneError> {
        if args.ownership == config::OwnershipKind::Group && args.stop_workers_on_exit {
            // It would stop every worker of the shared runtime, other control planes' too.
            return Err(ControlPlaneError::Settings(
                "CP_STOP_WORKERS_ON_EXIT cannot be used with CP_OWNERSHIP=group",
            ));
        }
        if args.ownership != config::OwnershipKind::Group {
            return Ok(Self {
                ownership: ownership::Ownership::All,
                members: None,
                member: None,
                announcing: None,
            });
        }
        let settings = ownership::GroupSettings {
            group_id: args.ownership_group.clone(),
            session_timeout: Duration::from_secs(args.ownership_session_timeout_secs),
            // A recreation is four runtime calls, each under the action timeout, and a
            // stop's grace.
            release_timeout: Duration::from_secs(
                4 * args.action_timeout_secs + args.stop_grace_secs + 10,
            ),
        };
        let replayed = {
            let status = status.clone();
            move || {
                status
                    .registry_replayed
                    .load(std::sync::atomic::Ordering::Relaxed)
            }
        };
        let member = ownership::spawn_group(
            &args.kafka,
            settings,
            inputs.clone(),
            replayed,
            stop.clone(),
            metrics.clone(),
        )?;
        // Named by its address, so a restarted control plane replaces its own
        // announcement (the topic is compacted) instead of adding one.
        let api = advertised_url(args.advertise_url.as_deref(), api_addr);
        let members = members::Members::new(&api);
        let announcing = tokio::spawn(members::run(
            args.kafka.clone(),
            members.clone(),
            api,
            status.clone(),
            stop.clone(),
        ));
        Ok(Self {
            ownership: ownership::Ownership::nothing_yet(),
            members: Some(members),
            member: Some(member),
            announcing: Some(announcing),
        })
    }

    /// Once stopped: the member leaves the group, which hands this control plane's
    /// clients on at once, and its announcement is withdrawn.
    async fn leave(self) {
        if let Some(member) = self.member {
            // Bounded: leaving may wait on a broker that is gone.
            let joined = tokio::task::spawn_blocking(move || member.join());
            if tokio::time::timeout(Duration::from_secs(10), joined)
                .await
                .is_err()
            {
                tracing::warn!("the ownership group's member did not leave within 10 s");
            }
        }
        if let Some(announcing) = self.announcing {
            let _ = announcing.await;
        }
    }
}

/// After the controller: the API and ingest are stopped (they have been told), and a run
/// ended by ingest is an error, so that the control plane is restarted.
async fn stop_tasks(
    api_task: tokio::task::JoinHandle<()>,
    ingest_task: tokio::task::JoinHandle<Result<(), ingest::IngestError>>,
    ingest_ended: Option<String>,
) -> Result<(), ControlPlaneError> {
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

fn create_data_dir(path: &Path) -> Result<(), ControlPlaneError> {
    std::fs::create_dir_all(path).map_err(|source| ControlPlaneError::DataDir {
        path: path.to_path_buf(),
        source,
    })
}

/// Why ingest's task ended before shutdown: the control plane exits with it.
fn why_ingest_ended(
    joined: Result<Result<(), ingest::IngestError>, tokio::task::JoinError>,
) -> String {
    match joined {
        Ok(Ok(())) => "it returned".to_string(),
        Ok(Err(failure)) => failure.to_string(),
        Err(join) if join.is_panic() => "it panicked".to_string(),
        Err(join) => join.to_string(),
    }
}

/// Binds the API's listener; the address it got (the port may be chosen by the system).
async fn bind_api(
    listen: SocketAddr,
) -> Result<(tokio::net::TcpListener, SocketAddr), ControlPlaneError> {
    let bind_failed = |source| ControlPlaneError::Bind {
        addr: listen,
        source,
    };
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(bind_failed)?;
    let addr = listener.local_addr().map_err(bind_failed)?;
    Ok((listener, addr))
}

/// Serves the API until `stop` resolves; in-flight requests finish first.
async fn serve_api(
    listener: tokio::net::TcpListener,
    router: axum::Router,
    stop: impl Future<Output = ()> + Send + 'static,
) {
    if let Err(failure) = axum::serve(listener, router)
        .with_graceful_shutdown(stop)
        .await
    {
        error!(error = %failure, "api server stopped");
    }
}

fn write_api_addr(data_dir: &Path, addr: SocketAddr) {
    let path = data_dir.join("api.addr");
    let tmp = path.with_extension("tmp");
    if std::fs::write(&tmp, addr.to_string()).is_ok() {
        let _ = std::fs::rename(tmp, path);
    }
}
