//! Workers as Docker Swarm services (`CP_RUNTIME=swarm`): one replicated service per
//! worker, through the Engine's services, tasks and nodes API (bollard). The decisions,
//! and why (docs/architecture.md, "The swarm runtime"):
//!
//! - **Restarts are the control plane's.** Every service has `RestartPolicy.Condition =
//!   none`: a task that exits stays exited, [`Runtime::list`] reports it, and the
//!   controller's supervision (backoff, crash loops, `failed`) restarts it as on the other
//!   runtimes. Swarm still moves tasks off a drained or lost node; that is placement, not
//!   a restart.
//! - **States from replicas and tasks.** `create` makes a service of 0 replicas (created,
//!   never started); `start` sets 1 replica, or forces a new task when the last one
//!   exited; `stop` sets 0 replicas with the grace period and waits until the task is
//!   gone; the stop's time is kept in a label, since swarm deletes a task scaled away.
//!   [`worker_state`] is that reading, pure.
//! - **The image by id** (`sha256:…`), resolved from the tag on this engine at create: by
//!   tag, every task start first tries a registry, and there is none. Other nodes get the
//!   image with `docker save | docker load`; an id is the same everywhere.
//! - **No routing mesh.** On `host` networking each worker gets a port (label
//!   `kg.http-port`) and its endpoint is its task's node address; on an overlay network
//!   the service uses `endpoint_mode: dnsrr` and is reached by its name.
//! - **Service names** cannot hold the `.` of pipeline workers' names nor exceed 63
//!   characters, so a service's name is derived ([`service_name`]) and the worker's own
//!   name is in the label `kg.worker`.
//! - **Secrets** are swarm secrets, named by a hash of their value and mounted as the same
//!   files the Docker runtime writes (`/run/secrets/…`), readable by the worker's user only.
//! - **Volumes are node-local** (`kg-data-<client>` on the node the task runs on);
//!   [`Runtime::remove_client_data`] removes this node's.

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use bollard::errors::Error as DockerError;
use bollard::models::{
    EndpointSpec, EndpointSpecModeEnum, Limit, Mount, MountType, NetworkAttachmentConfig,
    SecretSpec, ServiceSpec, ServiceSpecMode, ServiceSpecModeReplicated, Task, TaskSpec,
    TaskSpecContainerSpec, TaskSpecContainerSpecFile, TaskSpecContainerSpecPrivileges,
    TaskSpecContainerSpecSecrets, TaskSpecLogDriver, TaskSpecPlacement, TaskSpecResources,
    TaskSpecRestartPolicy, TaskSpecRestartPolicyConditionEnum, TaskState,
};
use bollard::query_parameters::{
    InspectServiceOptions, ListSecretsOptionsBuilder, ListServicesOptionsBuilder,
    ListTasksOptionsBuilder, LogsOptionsBuilder, UpdateServiceOptions,
};
use bollard::Docker;
use chrono::{DateTime, Utc};

use super::docker::{
    checked, collect_logs, data_volume, free_port, label, managed_filter, map_error, parse_time,
    secret_file, DATA_MOUNT, LABEL_CLIENT_ID, LABEL_HTTP_PORT, LABEL_MANAGED_BY, LABEL_ROLE,
    LABEL_SPEC_HASH, MANAGED_BY,
};
use super::{ObservedWorker, Runtime, RuntimeError, RuntimeState, WorkerSpec};

/// The worker's name, which its service's name may not be.
pub const LABEL_WORKER: &str = "kg.worker";
/// When `stop` scaled the service to 0 (RFC 3339): a stopped worker's exit time.
pub const LABEL_STOPPED_AT: &str = "kg.stopped-at";
/// Swarm's limit on a service name (a DNS label).
const SERVICE_NAME_MAX: usize = 63;
/// How long `remove` waits for swarm's task reaper before giving up for this pass.
const REAPER_WAIT: Duration = Duration::from_secs(15);
/// How long a task may wait for a node before its worker counts as exited: a task no
/// node can take (a constraint nothing meets, an image missing everywhere) stays pending
/// forever, and supervision must see it to back off and, in the end, give up.
pub const PLACEMENT_DEADLINE: chrono::Duration = chrono::Duration::seconds(60);

/// How services are run.
#[derive(Debug, Clone)]
pub struct SwarmSettings {
    /// `host`, or an overlay network (attachable, where Kafka is reachable by name).
    pub network: String,
    /// On `host` networking, the address workers' HTTP servers bind: `0.0.0.0` when the
    /// control plane reaches workers on other nodes, `127.0.0.1` on one node.
    pub worker_bind: String,
    /// `uid:gid` the worker runs as: never root.
    pub user: String,
    pub log_max_size: String,
    pub log_max_files: u32,
    /// Placement constraints every worker gets (`node.labels.kg-workers==true`), before
    /// its role's own.
    pub constraints: Vec<String>,
    /// Secrets (the Kafka SASL password), as swarm secrets mounted as files.
    pub secret_env: Vec<(String, String)>,
}

/// A swarm secret a worker mounts: the variable it stands for and the swarm's names.
#[derive(Debug, Clone)]
struct SecretRef {
    variable: String,
    id: String,
    name: String,
}

/// Runs workers as swarm services; this engine must be a swarm manager.
pub struct SwarmRuntime {
    docker: Docker,
    settings: SwarmSettings,
    secrets: Vec<SecretRef>,
}

/// The service name of worker `name`: the name itself with `.` as `_` when it fits,
/// else its first 45 characters, `__` and a hash of the whole (a `__` no natural name
/// has, so the two forms never meet).
pub fn service_name(worker: &str) -> String {
    let natural = worker.replace('.', "_");
    if natural.len() <= SERVICE_NAME_MAX {
        return natural;
    }
    let hash = xxhash_rust::xxh3::xxh3_64(worker.as_bytes());
    format!("{}__{hash:016x}", &natural[..SERVICE_NAME_MAX - 18])
}

/// One task as [`worker_state`] reads it.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskView {
    pub state: TaskState,
    pub created_at: Option<DateTime<Utc>>,
    /// When it reached `state`.
    pub at: Option<DateTime<Utc>>,
    pub exit_code: Option<i64>,
    pub container_id: Option<String>,
    pub node_id: Option<String>,
    /// When the task itself last changed (its desired state, say); stable while it does
    /// not, unlike its status, which a lost node no longer reports.
    pub updated_at: Option<DateTime<Utc>>,
    /// What the orchestrator wants of it (running; shutdown once let go).
    pub desired: Option<TaskState>,
    /// Its node is down (or gone): whatever it last reported is all there will be.
    pub node_lost: bool,
}

impl TaskView {
    fn from_task(task: &Task) -> Option<Self> {
        let status = task.status.as_ref()?;
        Some(Self {
            state: status.state?,
            created_at: parse_time(task.created_at.as_deref()),
            at: parse_time(status.timestamp.as_deref()),
            exit_code: status
                .container_status
                .as_ref()
                .and_then(|container| container.exit_code),
            container_id: status
                .container_status
                .as_ref()
                .and_then(|container| container.container_id.clone())
                .filter(|id| !id.is_empty()),
            node_id: task.node_id.clone().filter(|id| !id.is_empty()),
            updated_at: parse_time(task.updated_at.as_deref()),
            desired: task.desired_state,
            node_lost: false,
        })
    }

    /// Done: it will never run again (swarm makes a new task instead).
    fn terminal(&self) -> bool {
        matches!(
            self.state,
            TaskState::COMPLETE
                | TaskState::SHUTDOWN
                | TaskState::FAILED
                | TaskState::REJECTED
                | TaskState::REMOVE
                | TaskState::ORPHANED
        )
    }
}

/// What a service's replicas, stop label and tasks say about its worker at `now`:
/// - a task that is not done (running, or on its way: the orchestrator has accepted it)
///   makes the worker running, from when the task runs (or was made), unless it has
///   waited for a node longer than [`PLACEMENT_DEADLINE`] (then it exited, then), or its
///   node is lost and the orchestrator has let it go (then it exited when it was let
///   go: with restarts ours, swarm makes no new task for it, and a copy may still run on
///   the lost node until it returns);
/// - else 0 replicas: exited at the stop label's time when `stop` set it, never started
///   otherwise;
/// - else the newest task's exit (its code, when the container reported one), or, when
///   the orchestrator has not made the task yet, running from the service's update.
pub fn worker_state(
    replicas: u64,
    stopped_at: Option<DateTime<Utc>>,
    updated_at: DateTime<Utc>,
    tasks: &[TaskView],
    now: DateTime<Utc>,
) -> RuntimeState {
    let newest = |live: bool| {
        tasks
            .iter()
            .filter(|task| task.terminal() != live)
            .max_by_key(|task| task.created_at)
    };
    if let Some(task) = newest(true) {
        let unplaced = matches!(
            task.state,
            TaskState::NEW | TaskState::ALLOCATED | TaskState::PENDING
        );
        let made = task.created_at.unwrap_or(updated_at);
        let let_go = !matches!(
            task.desired,
            Some(TaskState::RUNNING | TaskState::READY | TaskState::NEW) | None
        );
        if task.node_lost && let_go {
            return RuntimeState::Exited {
                exit_code: None,
                exited_at: task.updated_at.or(task.at).unwrap_or(made),
                oom_killed: false,
            };
        }
        if unplaced && now - made >= PLACEMENT_DEADLINE {
            return RuntimeState::Exited {
                exit_code: None,
                exited_at: made + PLACEMENT_DEADLINE,
                oom_killed: false,
            };
        }
        let started_at = if task.state == TaskState::RUNNING {
            task.at
        } else {
            task.created_at
        };
        return RuntimeState::Running {
            started_at: started_at.unwrap_or(updated_at),
        };
    }
    let exit_code = |task: &TaskView| {
        task.exit_code
            .filter(|code| *code >= 0)
            .map(|code| code as i32)
    };
    if replicas == 0 {
        return match stopped_at {
            Some(at) => RuntimeState::Exited {
                exit_code: newest(false)
                    .filter(|task| task.at.is_some_and(|exit| exit >= at))
                    .and_then(exit_code),
                exited_at: at,
                oom_killed: false,
            },
            None => RuntimeState::Created,
        };
    }
    match newest(false) {
        Some(task) => RuntimeState::Exited {
            exit_code: exit_code(task),
            exited_at: task.at.or(task.created_at).unwrap_or(updated_at),
            oom_killed: false,
        },
        None => RuntimeState::Running {
            started_at: updated_at,
        },
    }
}

fn not_ours(name: &str) -> RuntimeError {
    RuntimeError::NotFound(name.to_string())
}

/// A service of ours, read.
struct ServiceView {
    id: String,
    version: u64,
    spec: ServiceSpec,
    updated_at: DateTime<Utc>,
}

impl ServiceView {
    fn from_service(service: bollard::models::Service) -> Self {
        Self {
            id: service.id.unwrap_or_default(),
            version: service.version.and_then(|v| v.index).unwrap_or(0),
            updated_at: parse_time(service.updated_at.as_deref()).unwrap_or_else(Utc::now),
            spec: service.spec.unwrap_or_default(),
        }
    }

    fn labels(&self) -> HashMap<String, String> {
        self.spec.labels.clone().unwrap_or_default()
    }

    fn replicas(&self) -> u64 {
        self.spec
            .mode
            .as_ref()
            .and_then(|mode| mode.replicated.as_ref())
            .and_then(|replicated| replicated.replicas)
            .unwrap_or(0)
            .try_into()
            .unwrap_or(0)
    }

    fn stopped_at(&self) -> Option<DateTime<Utc>> {
        parse_time(self.labels().get(LABEL_STOPPED_AT).map(String::as_str))
    }

    fn worker(&self, tasks: &[TaskView]) -> ObservedWorker {
        let labels = self.labels();
        ObservedWorker {
            name: label(&labels, LABEL_WORKER),
            id: self.id.as_str().into(),
            client_id: label(&labels, LABEL_CLIENT_ID),
            role: label(&labels, LABEL_ROLE),
            spec_hash: label(&labels, LABEL_SPEC_HASH),
            state: worker_state(
                self.replicas(),
                self.stopped_at(),
                self.updated_at,
                tasks,
                Utc::now(),
            ),
        }
    }
}

impl SwarmRuntime {
    /// Connects with the local defaults, checks this engine manages a swarm, and makes
    /// the secrets' swarm secrets.
    pub async fn connect(settings: SwarmSettings, timeout: Duration) -> Result<Self, RuntimeError> {
        let docker = Docker::connect_with_local_defaults().map_err(|error| {
            RuntimeError::Unavailable(format!("cannot reach the docker engine: {error}"))
        })?;
        let info = tokio::time::timeout(timeout, docker.info())
            .await
            .map_err(|_| {
                RuntimeError::Unavailable(format!(
                    "the docker engine did not answer within {timeout:?}"
                ))
            })?
            .map_err(|error| {
                RuntimeError::Unavailable(format!("the docker engine did not answer: {error}"))
            })?;
        let manager = info
            .swarm
            .as_ref()
            .and_then(|swarm| swarm.control_available)
            .unwrap_or(false);
        if !manager {
            return Err(RuntimeError::Unavailable(
                "this docker engine is not a swarm manager (docker swarm init, or point \
                 DOCKER_HOST at a manager)"
                    .to_string(),
            ));
        }
        let mut runtime = Self {
            docker,
            settings,
            secrets: Vec::new(),
        };
        runtime.secrets = runtime.ensure_secrets().await?;
        Ok(runtime)
    }

    /// One swarm secret per secret variable, named `kg-<file>-<hash of the value>`
    /// (secrets cannot change; a new value is a new secret).
    async fn ensure_secrets(&self) -> Result<Vec<SecretRef>, RuntimeError> {
        let mut refs = Vec::new();
        for (variable, value) in &self.settings.secret_env {
            let (path, _) = secret_file(variable);
            let file = path.rsplit('/').next().unwrap_or(&path).to_string();
            let hash = xxhash_rust::xxh3::xxh3_64(value.as_bytes());
            let name = format!("kg-{file}-{:012x}", hash >> 16);
            let filters = HashMap::from([("name".to_string(), vec![name.clone()])]);
            let existing = self
                .docker
                .list_secrets(Some(
                    ListSecretsOptionsBuilder::default()
                        .filters(&filters)
                        .build(),
                ))
                .await
                .map_err(|error| map_error("create", &name, error))?
                .into_iter()
                .find(|secret| {
                    secret.spec.as_ref().and_then(|spec| spec.name.as_deref()) == Some(&name)
                })
                .and_then(|secret| secret.id);
            let id = match existing {
                Some(id) => id,
                None => {
                    use base64::Engine as _;
                    let spec = SecretSpec {
                        name: Some(name.clone()),
                        labels: Some(HashMap::from([(
                            LABEL_MANAGED_BY.to_string(),
                            MANAGED_BY.to_string(),
                        )])),
                        data: Some(base64::engine::general_purpose::STANDARD.encode(value)),
                        ..Default::default()
                    };
                    self.docker
                        .create_secret(spec)
                        .await
                        .map_err(|error| map_error("create", &name, error))?
                        .id
                }
            };
            refs.push(SecretRef {
                variable: variable.clone(),
                id,
                name,
            });
        }
        Ok(refs)
    }

    fn service_spec(&self, spec: &WorkerSpec, image_id: &str) -> ServiceSpec {
        let mut env: Vec<String> = spec.full_env().map(|(k, v)| format!("{k}={v}")).collect();
        let mut labels = HashMap::from([
            (LABEL_MANAGED_BY.to_string(), MANAGED_BY.to_string()),
            (LABEL_WORKER.to_string(), spec.name.to_string()),
            (LABEL_CLIENT_ID.to_string(), spec.client_id.to_string()),
            (LABEL_ROLE.to_string(), spec.role.to_string()),
            (LABEL_SPEC_HASH.to_string(), spec.spec_hash.to_string()),
        ]);
        let host = self.settings.network == "host";
        if host {
            let port = free_port().unwrap_or(0);
            env.push(format!(
                "WORKER_LISTEN={}:{port}",
                self.settings.worker_bind
            ));
            labels.insert(LABEL_HTTP_PORT.to_string(), port.to_string());
        } else {
            env.push("WORKER_LISTEN=0.0.0.0:9000".to_string());
        }
        env.push(format!("WORKER_DATA_DIR={DATA_MOUNT}"));
        let container = self.container_spec(spec, image_id, &labels, env);
        ServiceSpec {
            name: Some(service_name(&spec.name)),
            labels: Some(labels),
            mode: Some(ServiceSpecMode {
                replicated: Some(ServiceSpecModeReplicated { replicas: Some(0) }),
                ..Default::default()
            }),
            task_template: Some(self.task_spec(spec, container)),
            endpoint_spec: (!host).then(|| EndpointSpec {
                mode: Some(EndpointSpecModeEnum::DNSRR),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// The task's container: the worker's image (by id), arguments, environment (with the
    /// secrets' file paths), user, data volume and hardening.
    fn container_spec(
        &self,
        spec: &WorkerSpec,
        image_id: &str,
        labels: &HashMap<String, String>,
        mut env: Vec<String>,
    ) -> TaskSpecContainerSpec {
        let (uid, gid) = self
            .settings
            .user
            .split_once(':')
            .unwrap_or((&self.settings.user, &self.settings.user));
        let secrets = self
            .secrets
            .iter()
            .map(|secret| {
                let (path, file_variable) = secret_file(&secret.variable);
                env.push(format!("{file_variable}=/{path}"));
                TaskSpecContainerSpecSecrets {
                    file: Some(TaskSpecContainerSpecFile {
                        name: path.rsplit('/').next().map(str::to_string),
                        uid: Some(uid.to_string()),
                        gid: Some(gid.to_string()),
                        mode: Some(0o400),
                    }),
                    secret_id: Some(secret.id.clone()),
                    secret_name: Some(secret.name.clone()),
                }
            })
            .collect();
        // The task's container carries the worker's labels but not `kg.managed-by`: a
        // Docker-runtime control plane on the same engine lists containers by that label,
        // and would take swarm's containers for its own orphans.
        let mut container_labels = labels.clone();
        container_labels.remove(LABEL_MANAGED_BY);
        TaskSpecContainerSpec {
            image: Some(image_id.to_string()),
            labels: Some(container_labels),
            args: Some(spec.args.to_vec()),
            env: Some(env),
            user: Some(self.settings.user.clone()),
            init: Some(true),
            capability_drop: Some(vec!["ALL".into()]),
            privileges: Some(TaskSpecContainerSpecPrivileges {
                no_new_privileges: Some(true),
                ..Default::default()
            }),
            stop_signal: Some("SIGTERM".into()),
            mounts: Some(vec![Mount {
                typ: Some(MountType::VOLUME),
                source: Some(data_volume(spec.client_id.as_str())),
                target: Some(DATA_MOUNT.to_string()),
                ..Default::default()
            }]),
            secrets: Some(secrets),
            ..Default::default()
        }
    }

    /// Limits, placement, network and logs; restarts left to the control plane.
    fn task_spec(&self, spec: &WorkerSpec, container: TaskSpecContainerSpec) -> TaskSpec {
        let constraints: Vec<String> = self
            .settings
            .constraints
            .iter()
            .chain(spec.placement.iter())
            .cloned()
            .collect();
        TaskSpec {
            container_spec: Some(container),
            resources: Some(TaskSpecResources {
                limits: Some(Limit {
                    memory_bytes: spec.memory_limit_mb.map(|mb| (mb * 1024 * 1024) as i64),
                    nano_cpus: spec.cpu_limit.map(|cpus| (cpus * 1e9) as i64),
                    pids: Some(256),
                }),
                ..Default::default()
            }),
            restart_policy: Some(TaskSpecRestartPolicy {
                condition: Some(TaskSpecRestartPolicyConditionEnum::NONE),
                ..Default::default()
            }),
            placement: Some(TaskSpecPlacement {
                constraints: Some(constraints),
                ..Default::default()
            }),
            networks: Some(vec![NetworkAttachmentConfig {
                target: Some(self.settings.network.clone()),
                ..Default::default()
            }]),
            log_driver: Some(TaskSpecLogDriver {
                name: Some("json-file".into()),
                options: Some(HashMap::from([
                    ("max-size".to_string(), self.settings.log_max_size.clone()),
                    (
                        "max-file".to_string(),
                        self.settings.log_max_files.to_string(),
                    ),
                ])),
            }),
            ..Default::default()
        }
    }

    /// Worker `name`'s service, if it is one of ours.
    async fn service(&self, name: &str) -> Result<ServiceView, RuntimeError> {
        let name = checked(name)?;
        let service = self
            .docker
            .inspect_service(&service_name(name), None::<InspectServiceOptions>)
            .await
            .map_err(|error| map_error("inspect", name, error))?;
        let view = ServiceView::from_service(service);
        let labels = view.labels();
        if labels.get(LABEL_MANAGED_BY).map(String::as_str) != Some(MANAGED_BY)
            || labels.get(LABEL_WORKER).map(String::as_str) != Some(name)
        {
            return Err(not_ours(name));
        }
        Ok(view)
    }

    /// The tasks swarm still keeps of `services` (all of ours when `None`), by service id.
    async fn tasks(
        &self,
        service: Option<&str>,
    ) -> Result<HashMap<String, Vec<TaskView>>, RuntimeError> {
        let mut filters = HashMap::new();
        if let Some(service) = service {
            filters.insert("service".to_string(), vec![service.to_string()]);
        }
        let tasks = self
            .docker
            .list_tasks(Some(
                ListTasksOptionsBuilder::default().filters(&filters).build(),
            ))
            .await
            .map_err(|error| map_error("list", service.unwrap_or("*"), error))?;
        let mut views: Vec<(String, TaskView)> = tasks
            .iter()
            .filter_map(|task| Some((task.service_id.clone()?, TaskView::from_task(task)?)))
            .collect();
        // Only a task the orchestrator let go while it still looked alive needs its node's
        // state (a drained node's tasks are stopping; a lost node's never report again).
        if views
            .iter()
            .any(|(_, task)| !task.terminal() && task.desired != Some(TaskState::RUNNING))
        {
            let ready = self.ready_nodes().await?;
            for (_, task) in &mut views {
                task.node_lost = task
                    .node_id
                    .as_ref()
                    .is_some_and(|node| !ready.contains(node));
            }
        }
        let mut by_service: HashMap<String, Vec<TaskView>> = HashMap::new();
        for (service, view) in views {
            by_service.entry(service).or_default().push(view);
        }
        Ok(by_service)
    }

    /// The ids of the swarm's nodes that are up.
    async fn ready_nodes(&self) -> Result<std::collections::HashSet<String>, RuntimeError> {
        Ok(self
            .docker
            .list_nodes(None::<bollard::query_parameters::ListNodesOptions>)
            .await
            .map_err(|error| map_error("list", "nodes", error))?
            .into_iter()
            .filter(|node| {
                node.status.as_ref().and_then(|status| status.state)
                    == Some(bollard::models::NodeState::READY)
            })
            .filter_map(|node| node.id)
            .collect())
    }

    /// Whether the exited container of a task on this node was killed for its memory.
    async fn oom_killed(&self, tasks: &[TaskView]) -> bool {
        let Some(container) = tasks
            .iter()
            .filter(|task| task.terminal())
            .max_by_key(|task| task.created_at)
            .and_then(|task| task.container_id.clone())
        else {
            return false;
        };
        self.docker
            .inspect_container(&container, None)
            .await
            .ok()
            .and_then(|inspected| inspected.state?.oom_killed)
            .unwrap_or(false)
    }

    async fn observe(&self, service: &ServiceView, tasks: &[TaskView]) -> ObservedWorker {
        let mut worker = service.worker(tasks);
        if let RuntimeState::Exited { oom_killed, .. } = &mut worker.state {
            *oom_killed = self.oom_killed(tasks).await;
        }
        worker
    }

    /// Applies `change` to the service's spec at its current version; once more at the
    /// next version when another update came first.
    async fn update(
        &self,
        name: &str,
        operation: &'static str,
        change: impl Fn(&mut ServiceSpec),
    ) -> Result<(), RuntimeError> {
        let mut attempt = 0;
        loop {
            let service = self.service(name).await?;
            let mut spec = service.spec.clone();
            change(&mut spec);
            let options = UpdateServiceOptions {
                version: service.version.try_into().unwrap_or(i32::MAX),
                registry_auth_from: "spec".to_string(),
                rollback: None,
            };
            match self
                .docker
                .update_service(&service_name(name), spec, options, None)
                .await
            {
                Ok(_) => return Ok(()),
                Err(DockerError::DockerResponseServerError { message, .. })
                    if attempt == 0 && message.contains("out of sequence") =>
                {
                    attempt += 1;
                }
                Err(error) => return Err(map_error(operation, name, error)),
            }
        }
    }
}

fn set_replicas(spec: &mut ServiceSpec, replicas: i64) {
    spec.mode = Some(ServiceSpecMode {
        replicated: Some(ServiceSpecModeReplicated {
            replicas: Some(replicas),
        }),
        ..Default::default()
    });
}

#[async_trait]
impl Runtime for SwarmRuntime {
    fn kind(&self) -> &'static str {
        "swarm"
    }

    async fn list(&self) -> Result<Vec<ObservedWorker>, RuntimeError> {
        let filters = managed_filter();
        let services = self
            .docker
            .list_services(Some(
                ListServicesOptionsBuilder::default()
                    .filters(&filters)
                    .build(),
            ))
            .await
            .map_err(|error| map_error("list", "*", error))?;
        let tasks = self.tasks(None).await?;
        let mut workers = Vec::with_capacity(services.len());
        for service in services {
            let view = ServiceView::from_service(service);
            if !view.labels().contains_key(LABEL_WORKER) {
                continue;
            }
            let service_tasks = tasks.get(&view.id).map(Vec::as_slice).unwrap_or_default();
            workers.push(self.observe(&view, service_tasks).await);
        }
        workers.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(workers)
    }

    async fn create(&self, spec: &WorkerSpec) -> Result<ObservedWorker, RuntimeError> {
        let name = checked(&spec.name)?;
        let image = self
            .docker
            .inspect_image(&spec.image)
            .await
            .map_err(|error| match error {
                DockerError::DockerResponseServerError {
                    status_code: 404, ..
                } => RuntimeError::Failed {
                    operation: "create",
                    name: name.to_string(),
                    reason: format!(
                        "image {} is not on this engine (build it with scripts/build-images.sh; \
                         other nodes get it with docker save | docker load)",
                        spec.image
                    ),
                },
                other => map_error("create", name, other),
            })?;
        let image_id = image.id.unwrap_or_else(|| spec.image.to_string());
        let created = self
            .docker
            .create_service(self.service_spec(spec, &image_id), None)
            .await
            .map_err(|error| map_error("create", name, error))?;
        Ok(ObservedWorker {
            name: spec.name.clone(),
            id: created.id.unwrap_or_default().into(),
            client_id: spec.client_id.as_str().into(),
            role: spec.role.clone(),
            spec_hash: spec.spec_hash.clone(),
            state: RuntimeState::Created,
        })
    }

    async fn start(&self, name: &str) -> Result<(), RuntimeError> {
        let worker = self.inspect(name).await?;
        match worker.state {
            RuntimeState::Running { .. } => Ok(()),
            RuntimeState::Created | RuntimeState::Exited { .. } => {
                self.update(name, "start", |spec| {
                    let replicas = spec
                        .mode
                        .as_ref()
                        .and_then(|mode| mode.replicated.as_ref()?.replicas)
                        .unwrap_or(0);
                    if replicas == 0 {
                        set_replicas(spec, 1);
                    } else if let Some(template) = spec.task_template.as_mut() {
                        // One replica whose task exited: a new task.
                        template.force_update = Some(template.force_update.unwrap_or(0) + 1);
                    }
                    if let Some(labels) = spec.labels.as_mut() {
                        labels.remove(LABEL_STOPPED_AT);
                    }
                })
                .await
            }
        }
    }

    async fn stop(&self, name: &str, grace: Duration) -> Result<(), RuntimeError> {
        // A worker that is not running has nothing to stop (its exit is already what
        // `list` shows); an update would only cost a call on every restart.
        if !matches!(
            self.inspect(name).await?.state,
            RuntimeState::Running { .. }
        ) {
            return Ok(());
        }
        let service = self.service(name).await?;
        if service.replicas() > 0 {
            let grace_ns = i64::try_from(grace.as_nanos()).unwrap_or(i64::MAX);
            let at = Utc::now().to_rfc3339();
            self.update(name, "stop", |spec| {
                set_replicas(spec, 0);
                if let Some(container) = spec
                    .task_template
                    .as_mut()
                    .and_then(|template| template.container_spec.as_mut())
                {
                    container.stop_grace_period = Some(grace_ns);
                }
                spec.labels
                    .get_or_insert_with(HashMap::new)
                    .insert(LABEL_STOPPED_AT.to_string(), at.clone());
            })
            .await?;
        }
        // Like `docker stop`, return once it is down: swarm stops the task (SIGTERM, then
        // SIGKILL after the grace) in the background.
        let until = tokio::time::Instant::now() + grace + Duration::from_secs(10);
        loop {
            let worker = self.inspect(name).await?;
            if !matches!(worker.state, RuntimeState::Running { .. }) {
                return Ok(());
            }
            if tokio::time::Instant::now() >= until {
                return Err(RuntimeError::Timeout {
                    operation: "stop",
                    name: name.to_string(),
                    after: grace + Duration::from_secs(10),
                });
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn remove(&self, name: &str) -> Result<(), RuntimeError> {
        let worker = self.inspect(name).await?;
        if matches!(worker.state, RuntimeState::Running { .. }) {
            return Err(RuntimeError::Conflict(name.to_string()));
        }
        // Engine 20.10's manager panics, and the whole daemon with it, when a service is
        // deleted while the task reaper is deleting one of its tasks (swarmkit reads the
        // task again inside the batch and dereferences it unchecked; fixed upstream since).
        // A task scaled away by `stop` is reaped shortly after it is down, so the service
        // goes only once no task of it is waiting to be reaped.
        let service = self.service(name).await?;
        let until = tokio::time::Instant::now() + REAPER_WAIT;
        loop {
            let tasks = self.tasks(Some(&service.id)).await?;
            let reaping = tasks
                .get(&service.id)
                .into_iter()
                .flatten()
                .any(|task| task.desired == Some(TaskState::REMOVE));
            if !reaping {
                break;
            }
            if tokio::time::Instant::now() >= until {
                return Err(RuntimeError::Timeout {
                    operation: "remove",
                    name: name.to_string(),
                    after: REAPER_WAIT,
                });
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        self.docker
            .delete_service(&service_name(name))
            .await
            .map_err(|error| map_error("remove", name, error))
    }

    async fn inspect(&self, name: &str) -> Result<ObservedWorker, RuntimeError> {
        let service = self.service(name).await?;
        let tasks = self.tasks(Some(&service.id)).await?;
        let service_tasks = tasks
            .get(&service.id)
            .map(Vec::as_slice)
            .unwrap_or_default();
        Ok(self.observe(&service, service_tasks).await)
    }

    async fn logs(&self, name: &str, tail: usize) -> Result<String, RuntimeError> {
        let service = self.service(name).await?;
        let options = LogsOptionsBuilder::default()
            .stdout(true)
            .stderr(true)
            .tail(&tail.to_string())
            .build();
        collect_logs(name, self.docker.service_logs(&service.id, Some(options))).await
    }

    async fn endpoint(&self, name: &str) -> Result<Option<String>, RuntimeError> {
        let service = self.service(name).await?;
        if self.settings.network != "host" {
            // dnsrr: the service's name resolves to its task on the overlay network.
            return Ok(Some(format!("{}:9000", service_name(name))));
        }
        let tasks = self.tasks(Some(&service.id)).await?;
        let Some(node) = tasks
            .get(&service.id)
            .into_iter()
            .flatten()
            .filter(|task| task.state == TaskState::RUNNING)
            .max_by_key(|task| task.created_at)
            .and_then(|task| task.node_id.clone())
        else {
            return Ok(None);
        };
        let Some(port) = service.labels().get(LABEL_HTTP_PORT).cloned() else {
            return Ok(None);
        };
        let address = self
            .docker
            .inspect_node(&node)
            .await
            .map_err(|error| map_error("inspect", name, error))?
            .status
            .and_then(|status| status.addr)
            .filter(|addr| !addr.is_empty() && addr != "0.0.0.0");
        Ok(address.map(|address| format!("{address}:{port}")))
    }

    async fn remove_client_data(&self, client_id: &str) -> Result<(), RuntimeError> {
        let volume = data_volume(checked(client_id)?);
        // Swarm removes a deleted service's containers in the background; until it has,
        // the volume is in use (409).
        let until = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            match self
                .docker
                .remove_volume(
                    &volume,
                    None::<bollard::query_parameters::RemoveVolumeOptions>,
                )
                .await
            {
                Ok(()) => return Ok(()),
                Err(DockerError::DockerResponseServerError {
                    status_code: 404, ..
                }) => return Ok(()),
                Err(DockerError::DockerResponseServerError {
                    status_code: 409, ..
                }) if tokio::time::Instant::now() < until => {
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                Err(error) => return Err(map_error("remove_client_data", &volume, error)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seconds: i64) -> Option<DateTime<Utc>> {
        DateTime::from_timestamp(1_800_000_000 + seconds, 0)
    }

    fn now() -> DateTime<Utc> {
        at(100).unwrap()
    }

    fn task(state: TaskState, created: i64, changed: i64, exit_code: Option<i64>) -> TaskView {
        TaskView {
            state,
            created_at: at(created),
            at: at(changed),
            exit_code,
            container_id: None,
            node_id: None,
            updated_at: at(changed),
            desired: Some(TaskState::RUNNING),
            node_lost: false,
        }
    }

    #[test]
    fn a_service_never_scaled_up_is_created_and_one_scaled_down_by_stop_exited_then() {
        let updated = at(0).unwrap();
        assert_eq!(
            worker_state(0, None, updated, &[], now()),
            RuntimeState::Created
        );
        assert_eq!(
            worker_state(
                0,
                at(50),
                updated,
                &[task(TaskState::FAILED, 1, 10, Some(3))],
                now()
            ),
            RuntimeState::Exited {
                exit_code: None,
                exited_at: at(50).unwrap(),
                oom_killed: false
            },
            "an exit before the stop is not the stop's"
        );
    }

    #[test]
    fn a_task_on_its_way_or_running_makes_the_worker_running_even_while_it_is_stopped() {
        let updated = at(0).unwrap();
        let old = task(TaskState::FAILED, 1, 5, Some(3));
        assert_eq!(
            worker_state(
                1,
                None,
                updated,
                &[old.clone(), task(TaskState::PREPARING, 7, 7, None)],
                now()
            ),
            RuntimeState::Running {
                started_at: at(7).unwrap()
            }
        );
        assert_eq!(
            worker_state(
                0,
                at(30),
                updated,
                &[old, task(TaskState::RUNNING, 7, 9, Some(-1))],
                now()
            ),
            RuntimeState::Running {
                started_at: at(9).unwrap()
            },
            "scaled to 0 but its task not down yet"
        );
    }

    #[test]
    fn with_one_replica_and_no_live_task_the_newest_exit_is_the_workers() {
        let updated = at(0).unwrap();
        assert_eq!(
            worker_state(
                1,
                None,
                updated,
                &[
                    task(TaskState::COMPLETE, 9, 20, Some(0)),
                    task(TaskState::FAILED, 1, 5, Some(3)),
                    task(TaskState::REJECTED, 3, 4, None),
                ],
                now()
            ),
            RuntimeState::Exited {
                exit_code: Some(0),
                exited_at: at(20).unwrap(),
                oom_killed: false
            }
        );
        assert_eq!(
            worker_state(
                1,
                None,
                updated,
                &[task(TaskState::SHUTDOWN, 1, 5, Some(-1))],
                now()
            ),
            RuntimeState::Exited {
                exit_code: None,
                exited_at: at(5).unwrap(),
                oom_killed: false
            },
            "swarm's -1 is no exit code"
        );
        assert_eq!(
            worker_state(1, None, updated, &[], now()),
            RuntimeState::Running {
                started_at: updated
            },
            "scaled up, its task not made yet"
        );
    }

    #[test]
    fn a_task_let_go_on_a_lost_node_is_an_exit_but_on_a_node_that_is_up_it_is_stopping() {
        let updated = at(0).unwrap();
        let mut task = task(TaskState::RUNNING, 1, 2, None);
        task.desired = Some(TaskState::SHUTDOWN);
        task.updated_at = at(40);
        assert!(
            matches!(
                worker_state(1, None, updated, &[task.clone()], now()),
                RuntimeState::Running { .. }
            ),
            "a drained node's task is stopping, and will say when it has"
        );
        task.node_lost = true;
        assert_eq!(
            worker_state(1, None, updated, &[task.clone()], now()),
            RuntimeState::Exited {
                exit_code: None,
                exited_at: at(40).unwrap(),
                oom_killed: false
            },
            "exited when it was let go, the same time on every listing"
        );
        task.desired = Some(TaskState::RUNNING);
        assert!(
            matches!(
                worker_state(1, None, updated, &[task], now()),
                RuntimeState::Running { .. }
            ),
            "a node just lost, before the orchestrator lets its tasks go"
        );
    }

    #[test]
    fn a_task_no_node_takes_is_an_exit_once_it_has_waited_past_the_deadline() {
        let updated = at(0).unwrap();
        let waiting = [task(TaskState::PENDING, 50, 50, None)];
        assert!(matches!(
            worker_state(1, None, updated, &waiting, now()),
            RuntimeState::Running { .. }
        ));
        let later = at(50).unwrap() + PLACEMENT_DEADLINE;
        assert_eq!(
            worker_state(1, None, updated, &waiting, later),
            RuntimeState::Exited {
                exit_code: None,
                exited_at: later,
                oom_killed: false
            }
        );
        let preparing = [task(TaskState::PREPARING, 0, 1, None)];
        assert!(
            matches!(
                worker_state(1, None, updated, &preparing, later),
                RuntimeState::Running { .. }
            ),
            "a task on a node (pulling, preparing) is not waiting for one"
        );
    }

    #[test]
    fn service_names_are_valid_dns_labels_and_never_meet() {
        assert_eq!(
            service_name("kg-graph-builder-af-9"),
            "kg-graph-builder-af-9"
        );
        assert_eq!(
            service_name("kg-pipeline-alert-enrichment.af-9"),
            "kg-pipeline-alert-enrichment_af-9"
        );
        let long_client = "c".repeat(63);
        let a = service_name(&format!("kg-event-normalizer-{long_client}"));
        let b = service_name(&format!("kg-log-normalizer-{long_client}"));
        assert_eq!(a.len(), 63);
        assert!(a.contains("__"));
        assert_ne!(a, b);
        assert!(a
            .bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-' || c == b'_'));
    }
}
