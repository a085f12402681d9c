//! The production runtime: one container per worker through the Docker Engine API
//! (bollard). Containers are named `kg-<role>-<client id>` and owned by labels
//! (`kg.managed-by`, `kg.client-id`, `kg.role`, `kg.spec-hash`); listing filters on
//! `kg.managed-by` on the server side and never matches names. Docker's 404 and 409 become
//! [`RuntimeError::NotFound`] and [`RuntimeError::Conflict`] here, so nothing above sees
//! HTTP codes.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bollard::errors::Error as DockerError;
use bollard::models::{
    ContainerCreateBody, ContainerSummaryStateEnum, HostConfig, HostConfigLogConfig,
};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, InspectContainerOptions, ListContainersOptionsBuilder,
    LogsOptionsBuilder, RemoveContainerOptionsBuilder, StartContainerOptions,
    StopContainerOptionsBuilder,
};
use bollard::Docker;
use chrono::{DateTime, Utc};
use futures::StreamExt;

use super::{ObservedWorker, Runtime, RuntimeError, RuntimeState, WorkerSpec};

/// The value of `kg.managed-by` on every container this control plane owns.
pub const MANAGED_BY: &str = "kg-control-plane";
pub const LABEL_MANAGED_BY: &str = "kg.managed-by";
pub const LABEL_CLIENT_ID: &str = "kg.client-id";
pub const LABEL_ROLE: &str = "kg.role";
pub const LABEL_SPEC_HASH: &str = "kg.spec-hash";
/// On the host network: the port the worker's HTTP server was given.
pub const LABEL_HTTP_PORT: &str = "kg.http-port";
/// Where a worker keeps durable data inside its container.
pub(super) const DATA_MOUNT: &str = "/data";

/// The named volume holding a client's durable data (its graph store).
pub fn data_volume(client_id: &str) -> String {
    format!("kg-data-{client_id}")
}

/// How containers are run.
#[derive(Debug, Clone)]
pub struct DockerSettings {
    /// `host`, or the name of a network where Kafka is reachable by name.
    pub network: String,
    /// `uid:gid` the worker runs as: never root.
    pub user: String,
    /// json-file rotation: size of one file and how many are kept.
    pub log_max_size: String,
    pub log_max_files: u32,
    /// Secrets (the Kafka SASL password): each is written into the container as a file
    /// readable by the worker's user only, and the worker is told the file's path
    /// (`KAFKA_SASL_PASSWORD_FILE`), so `docker inspect` never shows the secret.
    pub secret_env: Vec<(String, String)>,
}

/// Where secrets are put inside a worker's container.
const SECRETS_DIR: &str = "run/secrets";

/// The file a secret variable becomes, and the variable that names it.
pub(super) fn secret_file(variable: &str) -> (String, String) {
    let file = variable.to_ascii_lowercase().replace('_', "-");
    (format!("{SECRETS_DIR}/{file}"), format!("{variable}_FILE"))
}

/// A tar archive of the secret files, owned by `user` (`uid:gid`) and readable by it only.
fn secrets_archive(secret_env: &[(String, String)], user: &str) -> std::io::Result<Vec<u8>> {
    let mut ids = user.split(':').map(|id| id.parse::<u64>().unwrap_or(10001));
    let uid = ids.next().unwrap_or(10001);
    let gid = ids.next().unwrap_or(uid);
    let mut archive = tar::Builder::new(Vec::new());
    for (dir, mode) in [("run", 0o755), (SECRETS_DIR, 0o500)] {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::Directory);
        header.set_mode(mode);
        header.set_uid(uid);
        header.set_gid(gid);
        header.set_size(0);
        archive.append_data(&mut header, format!("{dir}/"), std::io::empty())?;
    }
    for (variable, value) in secret_env {
        let (path, _) = secret_file(variable);
        let mut header = tar::Header::new_gnu();
        header.set_mode(0o400);
        header.set_uid(uid);
        header.set_gid(gid);
        header.set_size(value.len() as u64);
        archive.append_data(&mut header, path, value.as_bytes())?;
    }
    archive.into_inner()
}

/// Runs workers as Docker containers.
pub struct DockerRuntime {
    docker: Docker,
    settings: DockerSettings,
}

impl DockerRuntime {
    /// Connects with the local defaults (`DOCKER_HOST`, else the Unix socket) and checks
    /// the engine answers.
    pub async fn connect(
        settings: DockerSettings,
        timeout: Duration,
    ) -> Result<Self, RuntimeError> {
        let docker = Docker::connect_with_local_defaults().map_err(|error| {
            RuntimeError::Unavailable(format!("cannot reach the docker engine: {error}"))
        })?;
        match tokio::time::timeout(timeout, docker.ping()).await {
            Ok(Ok(_)) => Ok(Self { docker, settings }),
            Ok(Err(error)) => Err(RuntimeError::Unavailable(format!(
                "the docker engine did not answer a ping: {error} (is the socket mounted and readable?)"
            ))),
            Err(_) => Err(RuntimeError::Unavailable(format!(
                "the docker engine did not answer a ping within {timeout:?}"
            ))),
        }
    }

    fn container_body(&self, spec: &WorkerSpec) -> ContainerCreateBody {
        let mut env: Vec<String> = spec.full_env().map(|(k, v)| format!("{k}={v}")).collect();
        let mut labels = HashMap::from([
            (LABEL_MANAGED_BY.to_string(), MANAGED_BY.to_string()),
            (LABEL_CLIENT_ID.to_string(), spec.client_id.to_string()),
            (LABEL_ROLE.to_string(), spec.role.to_string()),
            (LABEL_SPEC_HASH.to_string(), spec.spec_hash.to_string()),
        ]);
        // On the host network every worker shares the host's ports, so each gets a free
        // one, recorded in a label; on a bridge network each has its own address and the
        // fixed port.
        if self.settings.network == "host" {
            let port = free_port().unwrap_or(0);
            env.push(format!("WORKER_LISTEN=127.0.0.1:{port}"));
            labels.insert(LABEL_HTTP_PORT.to_string(), port.to_string());
        } else {
            env.push("WORKER_LISTEN=0.0.0.0:9000".to_string());
        }
        env.push(format!("WORKER_DATA_DIR={DATA_MOUNT}"));
        for (variable, _) in &self.settings.secret_env {
            let (path, file_variable) = secret_file(variable);
            env.push(format!("{file_variable}=/{path}"));
        }
        let log_config = HostConfigLogConfig {
            typ: Some("json-file".into()),
            config: Some(HashMap::from([
                ("max-size".to_string(), self.settings.log_max_size.clone()),
                (
                    "max-file".to_string(),
                    self.settings.log_max_files.to_string(),
                ),
            ])),
        };
        let host_config = HostConfig {
            memory: spec.memory_limit_mb.map(|mb| (mb * 1024 * 1024) as i64),
            nano_cpus: spec.cpu_limit.map(|cpus| (cpus * 1e9) as i64),
            network_mode: Some(self.settings.network.clone()),
            binds: Some(vec![format!(
                "{}:{DATA_MOUNT}",
                data_volume(spec.client_id.as_str())
            )]),
            log_config: Some(log_config),
            init: Some(true),
            cap_drop: Some(vec!["ALL".into()]),
            security_opt: Some(vec!["no-new-privileges".into()]),
            pids_limit: Some(256),
            ..Default::default()
        };
        ContainerCreateBody {
            image: Some(spec.image.to_string()),
            cmd: Some(spec.args.to_vec()),
            env: Some(env),
            user: Some(self.settings.user.clone()),
            labels: Some(labels),
            stop_signal: Some("SIGTERM".into()),
            host_config: Some(host_config),
            ..Default::default()
        }
    }
}

/// A port nobody listens on right now. Another process may take it before the worker
/// binds it; the worker then fails to start and is started again with a new port.
pub(super) fn free_port() -> Option<u16> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .ok()
}

/// Docker's answers as typed runtime errors.
pub(super) fn map_error(operation: &'static str, name: &str, error: DockerError) -> RuntimeError {
    match error {
        DockerError::DockerResponseServerError {
            status_code: 404,
            message,
        } if operation == "create" => RuntimeError::Failed {
            operation,
            name: name.to_string(),
            reason: format!("{message} (build the worker image with scripts/build-images.sh)"),
        },
        DockerError::DockerResponseServerError {
            status_code: 404, ..
        } => RuntimeError::NotFound(name.to_string()),
        DockerError::DockerResponseServerError {
            status_code: 409, ..
        } => RuntimeError::Conflict(name.to_string()),
        DockerError::DockerResponseServerError {
            status_code,
            message,
        } => RuntimeError::Failed {
            operation,
            name: name.to_string(),
            reason: format!("docker answered {status_code}: {message}"),
        },
        other => RuntimeError::Unavailable(format!("{operation} {name}: {other}")),
    }
}

/// The server-side filter that lists only what this control plane manages.
pub(super) fn managed_filter() -> HashMap<String, Vec<String>> {
    HashMap::from([(
        "label".to_string(),
        vec![format!("{LABEL_MANAGED_BY}={MANAGED_BY}")],
    )])
}

/// A log stream of worker `name` as one string.
pub(super) async fn collect_logs(
    name: &str,
    mut stream: impl futures::Stream<Item = Result<bollard::container::LogOutput, DockerError>> + Unpin,
) -> Result<String, RuntimeError> {
    let mut out = String::new();
    while let Some(chunk) = stream.next().await {
        match chunk {
            Ok(output) => out.push_str(&output.to_string()),
            Err(error) => return Err(map_error("logs", name, error)),
        }
    }
    Ok(out)
}

/// Names go into URLs; refuse anything that is not one of ours.
pub(super) fn checked(name: &str) -> Result<&str, RuntimeError> {
    if super::is_worker_name(name) {
        Ok(name)
    } else {
        Err(RuntimeError::NotFound(name.to_string()))
    }
}

/// One of our labels, empty when missing.
pub(super) fn label(labels: &HashMap<String, String>, key: &str) -> Arc<str> {
    labels
        .get(key)
        .map_or_else(|| Arc::from(""), |value| value.as_str().into())
}

pub(super) fn parse_time(raw: Option<&str>) -> Option<DateTime<Utc>> {
    raw.and_then(|raw| DateTime::parse_from_rfc3339(raw).ok())
        .map(|time| time.with_timezone(&Utc))
        // Docker reports a never-finished container as year 1.
        .filter(|time| time.timestamp() > 0)
}

#[async_trait]
impl Runtime for DockerRuntime {
    fn kind(&self) -> &'static str {
        "docker"
    }

    async fn list(&self) -> Result<Vec<ObservedWorker>, RuntimeError> {
        let filters = managed_filter();
        let options = ListContainersOptionsBuilder::default()
            .all(true)
            .filters(&filters)
            .build();
        let summaries = self
            .docker
            .list_containers(Some(options))
            .await
            .map_err(|error| map_error("list", "*", error))?;
        let mut workers = Vec::with_capacity(summaries.len());
        for summary in summaries {
            let labels = summary.labels.unwrap_or_default();
            let name = summary
                .names
                .unwrap_or_default()
                .first()
                .map(|n| n.trim_start_matches('/').to_string())
                .unwrap_or_default();
            let id = summary.id.unwrap_or_default();
            let created = summary
                .created
                .and_then(|seconds| DateTime::from_timestamp(seconds, 0))
                .unwrap_or_else(Utc::now);
            let state = match summary.state {
                Some(ContainerSummaryStateEnum::RUNNING)
                | Some(ContainerSummaryStateEnum::RESTARTING) => RuntimeState::Running {
                    started_at: created,
                },
                Some(ContainerSummaryStateEnum::CREATED) => RuntimeState::Created,
                // Exited, dead, paused, removing: only the few that are down are inspected
                // for their exit code and time.
                _ => match self.inspect(&name).await {
                    Ok(worker) => worker.state,
                    Err(RuntimeError::NotFound(_)) => continue,
                    Err(error) => return Err(error),
                },
            };
            workers.push(ObservedWorker {
                name: name.into(),
                id: id.into(),
                client_id: label(&labels, LABEL_CLIENT_ID),
                role: label(&labels, LABEL_ROLE),
                spec_hash: label(&labels, LABEL_SPEC_HASH),
                state,
            });
        }
        workers.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(workers)
    }

    async fn create(&self, spec: &WorkerSpec) -> Result<ObservedWorker, RuntimeError> {
        let name = checked(&spec.name)?;
        let options = CreateContainerOptionsBuilder::default().name(name).build();
        let created = self
            .docker
            .create_container(Some(options), self.container_body(spec))
            .await
            .map_err(|error| map_error("create", name, error))?;
        if !self.settings.secret_env.is_empty() {
            // Into the created container's file system, before it ever starts.
            let archive = secrets_archive(&self.settings.secret_env, &self.settings.user).map_err(
                |error| RuntimeError::Failed {
                    operation: "create",
                    name: name.to_string(),
                    reason: format!("packing the secrets: {error}"),
                },
            )?;
            let options = bollard::query_parameters::UploadToContainerOptions {
                path: "/".into(),
                ..Default::default()
            };
            if let Err(error) = self
                .docker
                .upload_to_container(name, Some(options), bollard::body_full(archive.into()))
                .await
            {
                let _ = self
                    .docker
                    .remove_container(
                        name,
                        None::<bollard::query_parameters::RemoveContainerOptions>,
                    )
                    .await;
                return Err(map_error("create", name, error));
            }
        }
        Ok(ObservedWorker {
            name: spec.name.clone(),
            id: created.id.into(),
            client_id: spec.client_id.as_str().into(),
            role: spec.role.clone(),
            spec_hash: spec.spec_hash.clone(),
            state: RuntimeState::Created,
        })
    }

    async fn start(&self, name: &str) -> Result<(), RuntimeError> {
        let name = checked(name)?;
        match self
            .docker
            .start_container(name, None::<StartContainerOptions>)
            .await
        {
            Ok(()) => Ok(()),
            // 304: already running.
            Err(DockerError::DockerResponseServerError {
                status_code: 304, ..
            }) => Ok(()),
            Err(error) => Err(map_error("start", name, error)),
        }
    }

    async fn stop(&self, name: &str, grace: Duration) -> Result<(), RuntimeError> {
        let name = checked(name)?;
        let options = StopContainerOptionsBuilder::default()
            .t(grace.as_secs().min(i32::MAX as u64) as i32)
            .build();
        match self.docker.stop_container(name, Some(options)).await {
            Ok(()) => Ok(()),
            // 304: already stopped.
            Err(DockerError::DockerResponseServerError {
                status_code: 304, ..
            }) => Ok(()),
            Err(error) => Err(map_error("stop", name, error)),
        }
    }

    async fn remove(&self, name: &str) -> Result<(), RuntimeError> {
        let name = checked(name)?;
        let options = RemoveContainerOptionsBuilder::default()
            .force(false)
            .v(true)
            .build();
        self.docker
            .remove_container(name, Some(options))
            .await
            .map_err(|error| map_error("remove", name, error))
    }

    async fn inspect(&self, name: &str) -> Result<ObservedWorker, RuntimeError> {
        let name = checked(name)?;
        let inspected = self
            .docker
            .inspect_container(name, None::<InspectContainerOptions>)
            .await
            .map_err(|error| map_error("inspect", name, error))?;
        let labels = inspected
            .config
            .as_ref()
            .and_then(|config| config.labels.clone())
            .unwrap_or_default();
        if labels.get(LABEL_MANAGED_BY).map(String::as_str) != Some(MANAGED_BY) {
            // Someone else's container with a name like ours is not ours to report.
            return Err(RuntimeError::NotFound(name.to_string()));
        }
        let container_state = inspected.state.unwrap_or_default();
        let state = if container_state.running.unwrap_or(false) {
            RuntimeState::Running {
                started_at: parse_time(container_state.started_at.as_deref())
                    .unwrap_or_else(Utc::now),
            }
        } else if parse_time(container_state.started_at.as_deref()).is_none() {
            RuntimeState::Created
        } else {
            RuntimeState::Exited {
                exit_code: container_state.exit_code.map(|code| code as i32),
                exited_at: parse_time(container_state.finished_at.as_deref())
                    .unwrap_or_else(Utc::now),
                oom_killed: container_state.oom_killed.unwrap_or(false),
            }
        };
        Ok(ObservedWorker {
            name: name.into(),
            id: inspected.id.unwrap_or_default().into(),
            client_id: label(&labels, LABEL_CLIENT_ID),
            role: label(&labels, LABEL_ROLE),
            spec_hash: label(&labels, LABEL_SPEC_HASH),
            state,
        })
    }

    async fn logs(&self, name: &str, tail: usize) -> Result<String, RuntimeError> {
        let name = checked(name)?;
        // Confirms the container exists and is ours before streaming.
        self.inspect(name).await?;
        let options = LogsOptionsBuilder::default()
            .stdout(true)
            .stderr(true)
            .tail(&tail.to_string())
            .build();
        collect_logs(name, self.docker.logs(name, Some(options))).await
    }

    async fn endpoint(&self, name: &str) -> Result<Option<String>, RuntimeError> {
        let name = checked(name)?;
        let inspected = self
            .docker
            .inspect_container(name, None::<InspectContainerOptions>)
            .await
            .map_err(|error| map_error("inspect", name, error))?;
        if !inspected
            .state
            .as_ref()
            .and_then(|state| state.running)
            .unwrap_or(false)
        {
            return Ok(None);
        }
        if self.settings.network == "host" {
            return Ok(inspected
                .config
                .and_then(|config| config.labels)
                .and_then(|labels| labels.get(LABEL_HTTP_PORT).cloned())
                .map(|port| format!("127.0.0.1:{port}")));
        }
        Ok(inspected
            .network_settings
            .and_then(|settings| settings.networks)
            .and_then(|networks| networks.get(&self.settings.network).cloned())
            .and_then(|endpoint| endpoint.ip_address)
            .filter(|ip| !ip.is_empty())
            .map(|ip| format!("{ip}:9000")))
    }

    async fn remove_client_data(&self, client_id: &str) -> Result<(), RuntimeError> {
        let volume = data_volume(checked(client_id)?);
        match self
            .docker
            .remove_volume(
                &volume,
                None::<bollard::query_parameters::RemoveVolumeOptions>,
            )
            .await
        {
            Ok(()) => Ok(()),
            Err(DockerError::DockerResponseServerError {
                status_code: 404, ..
            }) => Ok(()),
            Err(error) => Err(map_error("remove_client_data", &volume, error)),
        }
    }
}
