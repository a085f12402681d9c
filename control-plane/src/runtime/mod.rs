//! Where workers run. The [`Runtime`] trait is what the executor calls; implementations:
//! [`process::ProcessRuntime`] (child processes of the `worker` binary, the embedded
//! default), [`docker::DockerRuntime`] (containers through the Docker Engine API, for
//! production on one host), [`swarm::SwarmRuntime`] (one Docker Swarm service per
//! worker, for several hosts) and [`fake::FakeRuntime`] (records calls, injects failures,
//! for tests). Every implementation passes the one contract suite in [`contract`].

#[cfg(any(test, feature = "test-support"))]
pub mod contract;
pub mod docker;
pub mod fake;
pub mod instrumented;
pub mod process;
mod process_marks;
pub mod swarm;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use kg_shared::ClientId;
use serde::{Deserialize, Serialize};

/// One role's part of every worker spec, shared by all clients' workers of that role.
#[derive(Debug, Clone)]
pub struct SharedRoleParts {
    pub role: Arc<str>,
    /// Which one of the role's workers a client has, for the one role with several per
    /// client: a pipeline's name, in the worker's name `kg-pipeline-<name>.<client>`.
    pub instance: Option<Arc<str>>,
    pub image: Arc<str>,
    pub args: Arc<[String]>,
    pub env: Arc<BTreeMap<String, String>>,
    pub memory_limit_mb: Option<u64>,
    pub cpu_limit: Option<f64>,
    /// Placement constraints (swarm runtime; the others run on one host and ignore them).
    pub placement: Arc<[String]>,
}

/// Everything needed to run one worker; its hash decides whether a running worker still
/// matches the configuration.
///
/// Strings are `Arc<str>` here and in [`ObservedWorker`]: the controller keeps several
/// maps keyed by worker name and rebuilds its views on every pass, and with thousands of
/// workers, sharing one allocation per name (and one per role for role, image and
/// arguments) is what keeps its memory flat.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkerSpec {
    /// `kg-<role>-<client id>`: unique, and what operators type in `docker logs`.
    pub name: Arc<str>,
    pub client_id: ClientId,
    pub role: Arc<str>,
    /// Container image; ignored by the process runtime.
    pub image: Arc<str>,
    /// Arguments after the binary (`--role <role>` and the role's extra arguments).
    pub args: Arc<[String]>,
    /// The role's environment, shared by every client's worker of that role (memory stays
    /// flat with thousands of clients); [`WorkerSpec::full_env`] adds the client's own.
    pub env: Arc<BTreeMap<String, String>>,
    pub memory_limit_mb: Option<u64>,
    pub cpu_limit: Option<f64>,
    /// Swarm placement constraints (`node.labels.kg-workers==true`) from the role's
    /// template; the single-host runtimes ignore them.
    #[serde(default)]
    pub placement: Arc<[String]>,
    /// Hash of everything above except the name, hex.
    pub spec_hash: Arc<str>,
}

impl WorkerSpec {
    /// Builds `client_id`'s spec of a role and computes its hash.
    pub fn new(client_id: ClientId, parts: &SharedRoleParts) -> Self {
        let mut spec = Self {
            name: match &parts.instance {
                Some(pipeline) => {
                    kg_shared::pipeline_template::worker_name(pipeline, &client_id).into()
                }
                None => worker_name(&parts.role, &client_id).into(),
            },
            client_id,
            role: parts.role.clone(),
            image: parts.image.clone(),
            args: parts.args.clone(),
            env: parts.env.clone(),
            memory_limit_mb: parts.memory_limit_mb,
            cpu_limit: parts.cpu_limit,
            placement: parts.placement.clone(),
            spec_hash: Arc::from(""),
        };
        spec.spec_hash = spec.compute_hash();
        spec
    }

    /// Everything the worker's environment holds: the role's, then `CLIENT_ID` and
    /// `WORKER_ROLE`.
    pub fn full_env(&self) -> impl Iterator<Item = (&str, &str)> {
        self.env
            .iter()
            .filter(|(key, _)| key.as_str() != "CLIENT_ID" && key.as_str() != "WORKER_ROLE")
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .chain([
                ("CLIENT_ID", self.client_id.as_str()),
                ("WORKER_ROLE", &*self.role),
            ])
    }

    fn compute_hash(&self) -> Arc<str> {
        // serde_json over BTreeMap is canonical (sorted keys), so equal specs hash equal.
        let mut canonical = serde_json::json!({
            "client_id": self.client_id,
            "role": self.role,
            "image": self.image,
            "args": self.args,
            "env": self.env,
            "memory_limit_mb": self.memory_limit_mb,
            "cpu_limit": self.cpu_limit,
        });
        // Only when set: workers made before placement existed keep their hash, so an
        // upgrade does not recreate them.
        if !self.placement.is_empty() {
            canonical["placement"] = serde_json::json!(self.placement);
        }
        format!(
            "{:016x}",
            xxhash_rust::xxh3::xxh3_64(canonical.to_string().as_bytes())
        )
        .into()
    }
}

/// `kg-<role>-<client id>`.
/// Whether `name` can be one of our workers' names, checked before it goes into a URL
/// (Docker) or a path (the process runtime): lowercase letters, digits, '-' and the '.'
/// of pipeline workers' names, starting with a letter or digit and never `..`, so it can
/// neither leave a directory nor change a URL's meaning.
pub fn is_worker_name(name: &str) -> bool {
    name.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && !name.contains("..")
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
}

pub fn worker_name(role: &str, client_id: &ClientId) -> String {
    format!("kg-{role}-{client_id}")
}

/// What a runtime reports about one worker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum RuntimeState {
    /// Created, never started.
    Created,
    Running {
        started_at: DateTime<Utc>,
    },
    Exited {
        /// None when the exit status could not be observed (the process was not our
        /// child, or it was killed by a signal).
        exit_code: Option<i32>,
        exited_at: DateTime<Utc>,
        /// The kernel killed it for exceeding its memory limit (Docker reports this).
        #[serde(default)]
        oom_killed: bool,
    },
}

impl RuntimeState {
    /// The short word the API shows.
    pub fn label(&self) -> &'static str {
        match self {
            RuntimeState::Created => "created",
            RuntimeState::Running { .. } => "running",
            RuntimeState::Exited { .. } => "exited",
        }
    }
}

/// One worker as listed by a runtime, identified by its labels, never by parsing its name.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ObservedWorker {
    pub name: Arc<str>,
    /// The runtime's own id (container id, or `<name>@<pid>` for processes).
    pub id: Arc<str>,
    pub client_id: Arc<str>,
    pub role: Arc<str>,
    pub spec_hash: Arc<str>,
    pub state: RuntimeState,
}

/// Runtime failures, typed so the planner and executor never see transport details.
#[derive(Debug, Clone, thiserror::Error, PartialEq)]
pub enum RuntimeError {
    #[error("worker {0} not found")]
    NotFound(String),
    #[error("worker {0} already exists or is in a conflicting state")]
    Conflict(String),
    #[error("{operation} of {name} timed out after {after:?}")]
    Timeout {
        operation: &'static str,
        name: String,
        after: Duration,
    },
    #[error("failed to {operation} {name}: {reason}")]
    Failed {
        operation: &'static str,
        name: String,
        reason: String,
    },
    #[error("runtime unavailable: {0}")]
    Unavailable(String),
}

/// The operations the control plane needs from wherever workers run. Semantics follow
/// Docker's: `create` then `start`; `stop` is idempotent on a stopped worker; `remove`
/// refuses a running worker with [`RuntimeError::Conflict`].
#[async_trait]
pub trait Runtime: Send + Sync + 'static {
    /// A short name for logs and metrics ("process", "docker", "fake").
    fn kind(&self) -> &'static str;
    /// Every worker this control plane manages, running or not.
    async fn list(&self) -> Result<Vec<ObservedWorker>, RuntimeError>;
    /// Creates (does not start) a worker. Conflict if the name is taken.
    async fn create(&self, spec: &WorkerSpec) -> Result<ObservedWorker, RuntimeError>;
    /// Starts a created or exited worker; a running one is left alone.
    async fn start(&self, name: &str) -> Result<(), RuntimeError>;
    /// Asks the worker to stop (SIGTERM), kills it after `grace`.
    async fn stop(&self, name: &str, grace: Duration) -> Result<(), RuntimeError>;
    /// Deletes a stopped worker and its bookkeeping.
    async fn remove(&self, name: &str) -> Result<(), RuntimeError>;
    /// One worker's current state.
    async fn inspect(&self, name: &str) -> Result<ObservedWorker, RuntimeError>;
    /// The last `tail` lines of the worker's output.
    async fn logs(&self, name: &str, tail: usize) -> Result<String, RuntimeError>;
    /// `host:port` of the worker's HTTP server (health, metrics, graph queries), when it
    /// is known.
    async fn endpoint(&self, name: &str) -> Result<Option<String>, RuntimeError>;
    /// Deletes a client's durable data (the graph store). Called only after all of the
    /// client's workers are removed.
    async fn remove_client_data(&self, client_id: &str) -> Result<(), RuntimeError>;
}

#[cfg(test)]
mod tests {
    use super::is_worker_name;

    #[test]
    fn worker_names_go_into_urls_and_paths_only_when_they_cannot_escape() {
        for (name, ok) in [
            ("kg-event-normalizer-af-9", true),
            ("kg-pipeline-traffic-flatten.metro-la", true),
            ("", false),
            ("..", false),
            ("kg-a..b", false),
            (".hidden", false),
            ("-flag", false),
            ("kg/evil", false),
            ("KG-upper", false),
            ("kg-a%2e", false),
        ] {
            assert_eq!(is_worker_name(name), ok, "{name:?}");
        }
    }
}
