//! The per-client worker: one binary, `--role` chooses the job, `CLIENT_ID` the tenant.
//! Modules: [`config`] (flags and environment), [`roles`] (one folder per role: what it
//! consumes and produces, its per-record decision and its pure transforms),
//! [`pipeline`] (the at-least-once Kafka loop), [`http`] (`/health`, `/metrics`),
//! [`metrics`].

pub mod config;
pub mod http;
pub mod metrics;
pub mod pipeline;
pub mod rewind;
pub mod roles;

use std::future::Future;
use std::sync::Arc;

use kg_shared::{pipeline_template, Role};
use tracing::info;

use crate::config::WorkerConfig;
use crate::metrics::WorkerMetrics;
use crate::pipeline::{PipelineError, PipelineSettings};

/// Failures that end a worker.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("failed to bind the http server on {addr}: {source}")]
    Bind {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("failed to write the bound address to {path}: {source}")]
    AddrFile {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Pipeline(#[from] PipelineError),
    #[error("failed to create the data directory {path}: {source}")]
    DataDir {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("a pipeline scheduler stopped (the delay's or the retry ladder's): {0}")]
    DelayStopped(String),
    #[error("failed to open the delay stage's store: {0}")]
    Pending(#[from] roles::pipeline::pending::PendingError),
    #[error("failed to open the retry ladder's store: {0}")]
    Retries(#[from] roles::pipeline::retries::RetryStoreError),
    #[error("failed to open the graph store: {0}")]
    Store(#[from] roles::graph_builder::StoreError),
    #[error("failed to build the owner index from state.k8s.resource: {0}")]
    OwnerIndex(#[source] rdkafka::error::KafkaError),
    #[error("CLIENT_ID is required for the {} role", .0.as_str())]
    NoClientId(Role),
    #[error("--passthrough is for the normalizer roles, not {}", .0.as_str())]
    NoPassthrough(Role),
    #[error("the pipeline role needs --pipeline (WORKER_PIPELINE) and the templates: --pipelines-file (WORKER_PIPELINES_FILE) or WORKER_PIPELINES_TOML")]
    NoPipeline,
    #[error("the pipeline templates file is refused: {0}")]
    Templates(#[from] kg_shared::pipeline_template::TemplateError),
    #[error("no pipeline {name:?} in {}", file.display())]
    UnknownPipeline {
        name: String,
        file: std::path::PathBuf,
    },
}

/// The template a pipeline worker runs, read (and checked) once at start; None for the
/// other roles. Read once so the start-up topic check and the stages see the same file.
pub fn pipeline_template(
    config: &WorkerConfig,
) -> Result<Option<pipeline_template::PipelineTemplate>, WorkerError> {
    if config.role != Role::Pipeline {
        return Ok(None);
    }
    roles::pipeline::template_of(config).map(Some)
}

/// The topics the worker consumes: its role's, or a pipeline's template's.
pub fn input_topics(
    config: &WorkerConfig,
    pipeline: Option<&pipeline_template::PipelineTemplate>,
) -> Vec<String> {
    match pipeline {
        Some(template) => template.input.clone(),
        None => config
            .role
            .input_topics()
            .iter()
            .map(|t| t.to_string())
            .collect(),
    }
}

/// Runs the worker until `shutdown` resolves and the pipeline has drained and committed.
pub async fn run(
    config: WorkerConfig,
    pipeline: Option<pipeline_template::PipelineTemplate>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), WorkerError> {
    let role = config.role;
    if role == Role::EventAttributor {
        return roles::event_attributor::run(config, shutdown).await;
    }
    let client_id = config
        .client_id
        .clone()
        .ok_or(WorkerError::NoClientId(role))?;
    let metrics = Arc::new(WorkerMetrics::new(client_id.as_str(), role.as_str()));
    let parts = roles::handler_for(&config, role, &client_id, pipeline.as_ref(), &metrics)?;

    let (stop_http, server, bound) = serve_http(
        &config,
        client_id.as_str(),
        role,
        metrics.clone(),
        parts.graph,
        parts.stages,
    )
    .await?;
    info!(client_id = %client_id, role = role.as_str(), http = %bound, "worker started");

    let (group, instance) = match (role, &config.pipeline) {
        (Role::Pipeline, Some(name)) => (
            pipeline_template::consumer_group(name, &client_id),
            pipeline_template::worker_name(name, &client_id),
        ),
        _ => (
            role.consumer_group(&client_id),
            format!("kg-{}-{}", role.as_str(), client_id),
        ),
    };
    let settings = PipelineSettings::from_config(&config, group, instance);
    let (stop_delay, stopped) = tokio::sync::watch::channel(false);
    let delay = start_delay(
        &config,
        &settings,
        parts.delay,
        metrics.clone(),
        stopped.clone(),
    )?;
    let retry = start_retries(&config, &settings, parts.retry, metrics.clone(), stopped)?;
    // A scheduler that stops on its own (the delay's state reader ended, or one panicked)
    // would leave the loop holding records nobody emits: the worker stops, and exits with
    // an error so that its supervisor restarts it.
    let (schedulers, mut scheduler_failure) = watch_schedulers(delay, retry);
    let failure = Arc::new(std::sync::Mutex::new(None::<String>));
    let noted = failure.clone();
    let shutdown = async move {
        tokio::select! {
            _ = shutdown => {}
            Some(reason) = scheduler_failure.recv() => {
                tracing::error!(%reason, "stopping the worker");
                if let Ok(mut failure) = noted.lock() {
                    *failure = Some(reason);
                }
            }
        }
    };
    let result = pipeline::run_pipeline(
        &config.kafka,
        &settings,
        &client_id,
        parts.handler.as_ref(),
        metrics,
        shutdown,
    )
    .await;
    // The scheduler finishes the pass in hand, briefly: what it emitted and was
    // acknowledged is released, the rest stays held for the next start.
    let _ = stop_delay.send(true);
    let finishing = futures::future::join_all(schedulers);
    let _ = tokio::time::timeout(std::time::Duration::from_secs(2), finishing).await;
    let _ = stop_http.send(());
    let _ = server.await;
    if let Some(reason) = failure.lock().ok().and_then(|mut f| f.take()) {
        return Err(WorkerError::DelayStopped(reason));
    }
    info!("worker stopped");
    Ok(result?)
}

/// A running delay scheduler: ends with an error when it stopped on its own.
type DelayScheduler =
    tokio::task::JoinHandle<Result<(), roles::pipeline::scheduler::SchedulerStopped>>;

/// Watches the schedulers beside the loop: each handle ends when its scheduler has; the
/// receiver hears why one stopped on its own.
fn watch_schedulers(
    delay: Option<DelayScheduler>,
    retry: Option<tokio::task::JoinHandle<()>>,
) -> (
    Vec<tokio::task::JoinHandle<()>>,
    tokio::sync::mpsc::Receiver<String>,
) {
    let (failed, failure) = tokio::sync::mpsc::channel(2);
    let mut watchers = Vec::new();
    if let Some(scheduler) = delay {
        let failed = failed.clone();
        watchers.push(tokio::spawn(async move {
            let reason = match scheduler.await {
                Ok(Ok(())) => return,
                Ok(Err(stopped)) => stopped.to_string(),
                Err(join) => format!("the delay stage's scheduler failed: {join}"),
            };
            let _ = failed.send(reason).await;
        }));
    }
    if let Some(scheduler) = retry {
        watchers.push(tokio::spawn(async move {
            if let Err(join) = scheduler.await {
                let reason = format!("the retry ladder's scheduler failed: {join}");
                let _ = failed.send(reason).await;
            }
        }));
    }
    (watchers, failure)
}

/// A producer of a scheduler's own, which gives up on a record after 30 s (the default is
/// 5 minutes), so that one unreachable topic does not hold a whole pass.
fn scheduler_producer(
    config: &WorkerConfig,
    settings: &PipelineSettings,
) -> Result<rdkafka::producer::FutureProducer, WorkerError> {
    Ok(pipeline::producer_config(&config.kafka, settings)
        .set("message.timeout.ms", "30000")
        .create()
        .map_err(pipeline::PipelineError::Producer)?)
}

/// Starts a pipeline's retry scheduler, with a producer of its own, until `stopped`.
fn start_retries(
    config: &WorkerConfig,
    settings: &PipelineSettings,
    retry: Option<roles::pipeline::retry_scheduler::RetryTask>,
    metrics: Arc<WorkerMetrics>,
    stopped: tokio::sync::watch::Receiver<bool>,
) -> Result<Option<tokio::task::JoinHandle<()>>, WorkerError> {
    let Some(retry) = retry else {
        return Ok(None);
    };
    let producer = scheduler_producer(config, settings)?;
    Ok(Some(tokio::spawn(roles::pipeline::retry_scheduler::run(
        retry, producer, metrics, stopped,
    ))))
}

/// Starts a pipeline's delay scheduler, with a producer of its own, until `stopped`.
fn start_delay(
    config: &WorkerConfig,
    settings: &PipelineSettings,
    delay: Option<roles::pipeline::scheduler::DelayTask>,
    metrics: Arc<WorkerMetrics>,
    stopped: tokio::sync::watch::Receiver<bool>,
) -> Result<Option<DelayScheduler>, WorkerError> {
    let Some(delay) = delay else {
        return Ok(None);
    };
    let producer = scheduler_producer(config, settings)?;
    let input = roles::pipeline::input_read::InputGroup {
        group: settings.group_id.clone(),
        topics: delay.input_topics.clone(),
        // librdkafka's spellings of "start at the end".
        from_latest: matches!(
            settings.auto_offset_reset.as_str(),
            "latest" | "largest" | "end"
        ),
    };
    let task = tokio::spawn(roles::pipeline::scheduler::run(
        delay,
        config.kafka.client_config(),
        producer,
        metrics,
        input,
        stopped,
    ));
    Ok(Some(task))
}

/// Binds the worker's HTTP server (health, metrics, graph queries), writes its address
/// where the supervisor asked, and serves until the returned sender fires.
pub(crate) async fn serve_http(
    config: &WorkerConfig,
    client_label: &str,
    role: Role,
    metrics: Arc<WorkerMetrics>,
    graph: Option<roles::graph_builder::SharedStore>,
    stages: Option<Arc<roles::pipeline::health::StagesHealth>>,
) -> Result<
    (
        tokio::sync::oneshot::Sender<()>,
        tokio::task::JoinHandle<()>,
        std::net::SocketAddr,
    ),
    WorkerError,
> {
    let (listener, bound) =
        http::bind(config.listen)
            .await
            .map_err(|source| WorkerError::Bind {
                addr: config.listen,
                source,
            })?;
    if let Some(path) = &config.addr_file {
        write_atomically(path, bound.to_string().as_bytes()).map_err(|source| {
            WorkerError::AddrFile {
                path: path.clone(),
                source,
            }
        })?;
    }
    let router = http::router(http::HttpState {
        client_id: client_label.to_string(),
        role,
        metrics,
        graph,
        health: http::HealthThresholds {
            degraded_lag: config.degraded_lag,
            stall_secs: config.stall_secs,
            degraded_dlq_ratio: config.degraded_dlq_ratio,
        },
        dlq_window: Default::default(),
        stages,
    });
    let (stop_http, http_stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        let _ = axum::serve(listener, router)
            .with_graceful_shutdown(async {
                let _ = http_stopped.await;
            })
            .await;
    });
    Ok((stop_http, server, bound))
}

/// Writes via a temporary file and a rename so a reader never sees a half-written file.
pub fn write_atomically(path: &std::path::Path, contents: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, contents)?;
    std::fs::rename(tmp, path)
}
