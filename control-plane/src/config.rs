//! The command line: one typed tree, every flag also an environment variable, because
//! compose files and scripts drive the control plane through the environment.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use kg_shared::kafka::KafkaArgs;

use crate::liveness::HeartbeatTimeout;
pub use kg_shared::telemetry::LogFormat;

#[derive(Debug, clap::Parser)]
#[command(
    name = "control-plane",
    version,
    about = "Runs an isolated set of workers for every registered client"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// The main job: watch registrations and heartbeats, run every client's workers.
    Run(RunArgs),
    /// The embedded default in one command: embedded broker, control plane with the
    /// process runtime, API; `--demo` also plays an agent.
    Dev(DevArgs),
    /// Runs the embedded broker (librdkafka's mock cluster) in the foreground with the
    /// project's topics; prints `bootstrap=<host:port>` first. Reads `down <id>` and
    /// `up <id>` lines on standard input to take a broker down and up.
    EmbeddedBroker(BrokerArgs),
    /// Creates the project's topics on a real Kafka cluster (idempotent).
    CreateTopics(CreateTopicsArgs),
    /// Prints the consumer groups the cluster knows, one per line (for scripts and
    /// operators: kcat cannot list groups).
    ListGroups(ListGroupsArgs),
    /// Prints a consumer group's committed offsets on a topic (`topic partition offset`
    /// lines); exits non-zero when it has none. Works on the embedded broker, which does
    /// not answer group listings.
    GroupOffsets(GroupOffsetsArgs),
    /// Lists the dead letters (by client, reason, time), or replays chosen ones to their
    /// source topics once what made them fail is fixed (each once: docs/operations.md).
    DeadLetters(DeadLettersArgs),
}

/// Where workers run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum RuntimeKind {
    /// Child processes of the `worker` binary (no Docker needed).
    Process,
    /// Containers through the Docker Engine API.
    Docker,
    /// One Docker Swarm service per worker, through a swarm manager's API (several hosts).
    Swarm,
    /// In-memory workers that do nothing: for benchmarks and demos of the control plane
    /// alone.
    Fake,
}

/// What happens to a client's durable data (its graph) when it is deregistered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DeregisteredData {
    /// Keep it: a client that registers again finds its graph.
    Keep,
    /// Delete it once the client's workers are gone.
    Delete,
}

#[derive(Debug, Clone, clap::Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub kafka: KafkaArgs,

    /// Address of the HTTP API. Port 0 picks a free port (written to <data dir>/api.addr).
    #[arg(long, env = "CP_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,

    /// Where workers run.
    #[arg(long, env = "CP_RUNTIME", value_enum, default_value = "process")]
    pub runtime: RuntimeKind,

    /// State directory: the process runtime's worker records and logs, the API address.
    #[arg(long, env = "CP_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,

    /// A client with no heartbeat (or registration) for this long is stale: its workers
    /// are stopped and removed.
    #[arg(
        long = "heartbeat-timeout-secs",
        env = "CP_HEARTBEAT_TIMEOUT_SECS",
        default_value_t = HeartbeatTimeout::default()
    )]
    pub heartbeat_timeout: HeartbeatTimeout,

    /// How often the controller lists the runtime and reconciles when nothing happens
    /// (at least 50 ms).
    #[arg(long, env = "CP_RECONCILE_INTERVAL_MS", default_value_t = 1000, value_parser = clap::value_parser!(u64).range(50..))]
    pub reconcile_interval_ms: u64,

    /// Runtime actions (create, start, stop, remove) in flight at once.
    #[arg(long, env = "CP_MAX_CONCURRENT_ACTIONS", default_value_t = 8, value_parser = at_least_one_usize())]
    pub max_concurrent_actions: usize,

    /// Timeout of one runtime call.
    #[arg(long, env = "CP_ACTION_TIMEOUT_SECS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..))]
    pub action_timeout_secs: u64,

    /// How long a worker gets to drain after SIGTERM before it is killed.
    #[arg(long, env = "CP_STOP_GRACE_SECS", default_value_t = 10)]
    pub stop_grace_secs: u64,

    /// Restart backoff: the first delay; doubled for each consecutive failure.
    #[arg(long, env = "CP_RESTART_BACKOFF_BASE_MS", default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..))]
    pub restart_backoff_base_ms: u64,

    /// Restart backoff: the longest delay.
    #[arg(long, env = "CP_RESTART_BACKOFF_MAX_SECS", default_value_t = 300, value_parser = clap::value_parser!(u64).range(1..))]
    pub restart_backoff_max_secs: u64,

    /// A worker running this long is healthy again: its backoff starts over.
    #[arg(long, env = "CP_RESTART_RESET_AFTER_SECS", default_value_t = 600)]
    pub restart_reset_after_secs: u64,

    /// The window in which restarts are counted…
    #[arg(long, env = "CP_RESTART_WINDOW_SECS", default_value_t = 900)]
    pub restart_window_secs: u64,

    /// …and how many it may hold before the worker is given up as failed.
    #[arg(long, env = "CP_RESTART_MAX_IN_WINDOW", default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..))]
    pub restart_max_in_window: u32,

    /// ± this fraction of each delay, so workers that failed together retry apart (0 to 1).
    #[arg(long, env = "CP_RESTART_JITTER", default_value_t = 0.2, value_parser = fraction)]
    pub restart_jitter: f64,

    /// Roles every client gets, comma separated (ignored when a roles file is given).
    #[arg(
        long,
        env = "CP_ROLES",
        value_delimiter = ',',
        default_value = "event-normalizer,log-normalizer,graph-builder"
    )]
    pub roles: Vec<String>,

    /// TOML file with the role templates (args, env, limits per role); replaces the
    /// built-in set. See docs/operations.md.
    #[arg(long, env = "CP_ROLES_FILE")]
    pub roles_file: Option<PathBuf>,

    /// TOML file with the pipeline templates (docs/pipelines.md): every client gets a
    /// worker of each pipeline marked `default`. Refused at start-up, with the line and
    /// field, if it has an error. Without it, the built-in templates: alert enrichment for
    /// every client (examples/pipelines/alert-enrichment.toml); an empty file runs none.
    #[arg(long, env = "CP_PIPELINES_FILE")]
    pub pipelines_file: Option<PathBuf>,

    /// Worker image (Docker runtime).
    #[arg(long, env = "CP_WORKER_IMAGE", default_value = "kg-worker:latest")]
    pub worker_image: String,

    /// Docker runtime: `host`, or the name of a network where Kafka is reachable by name.
    #[arg(long, env = "CP_DOCKER_NETWORK", default_value = "bridge")]
    pub docker_network: String,

    /// Docker runtime: the `uid:gid` workers run as (never root).
    #[arg(long, env = "CP_DOCKER_USER", default_value = "10001:10001")]
    pub docker_user: String,

    /// Docker runtime: size of one json-file log before rotation.
    #[arg(long, env = "CP_DOCKER_LOG_MAX_SIZE", default_value = "10m")]
    pub docker_log_max_size: String,

    /// Docker runtime: rotated log files kept per container.
    #[arg(long, env = "CP_DOCKER_LOG_MAX_FILES", default_value_t = 3)]
    pub docker_log_max_files: u32,

    /// Swarm runtime: `host` (each worker gets a port on its node), or an attachable
    /// overlay network where Kafka is reachable by name (services use DNS round robin:
    /// there is no routing mesh here).
    #[arg(long, env = "CP_SWARM_NETWORK", default_value = "host")]
    pub swarm_network: String,

    /// Swarm runtime on `host` networking: the address workers' HTTP servers bind.
    /// `0.0.0.0` so a control plane on another node reaches them; `127.0.0.1` keeps them
    /// on their node (one-node swarms).
    #[arg(long, env = "CP_SWARM_WORKER_BIND", default_value = "0.0.0.0")]
    pub swarm_worker_bind: String,

    /// Swarm runtime: placement constraints every worker gets, comma-separated
    /// (`node.labels.kg-workers==true`); a role's own follow (roles file, `placement`).
    #[arg(long, env = "CP_SWARM_CONSTRAINTS", value_delimiter = ',')]
    pub swarm_constraints: Vec<String>,

    /// The `worker` binary (process runtime). Defaults to `worker` next to this binary.
    #[arg(long, env = "CP_WORKER_BIN")]
    pub worker_bin: Option<PathBuf>,

    /// A deregistered client's durable data (its graph store): kept, or deleted once its
    /// workers are gone. Stale clients always keep theirs.
    #[arg(long, env = "CP_DEREGISTERED_DATA", value_enum, default_value = "keep")]
    pub deregistered_data: DeregisteredData,

    /// Admission: the most clients this control plane runs workers for.
    #[arg(long, env = "CP_MAX_CLIENTS", default_value_t = 5000)]
    pub max_clients: usize,

    /// Admission: new clients admitted per minute (a burst of as many is allowed). Clients
    /// past it wait and are admitted in arrival order as the rate allows; at start-up,
    /// clients whose workers are running are admitted without counting against it.
    #[arg(long, env = "CP_MAX_NEW_CLIENTS_PER_MINUTE", default_value_t = 600, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_new_clients_per_minute: u32,

    /// Admission: the most registrations kept waiting for the rate or a free slot (each a
    /// few hundred bytes). Past it a registration is counted and not kept; the registry
    /// still holds it, and is read again for it once the line has drained to half. At
    /// least 1: with no line, nobody could ever be admitted.
    #[arg(long, env = "CP_MAX_WAITING_CLIENTS", default_value_t = 10_000, value_parser = at_least_one_usize())]
    pub max_waiting_clients: usize,

    /// Admission: when set, only these client ids (comma separated) are admitted.
    #[arg(long, env = "CP_CLIENT_ALLOWLIST", value_delimiter = ',')]
    pub client_allowlist: Vec<String>,

    /// Workers carrying our labels whose client was never registered are removed after
    /// this long (a deregistered client's are removed at once).
    #[arg(long, env = "CP_ORPHAN_GRACE_SECS", default_value_t = 60)]
    pub orphan_grace_secs: u64,

    /// Only report orphans (log and `cp_orphans`), never remove them.
    #[arg(long, env = "CP_ORPHAN_DRY_RUN")]
    pub orphan_dry_run: bool,

    /// Run the shared event attributor (`kg-event-attributor-shared`), which gives the
    /// 2.1.x agents' untagged Kubernetes events to the client that owns their object
    /// (docs/architecture.md, "Attributing untagged agent events"). The client id `shared`
    /// is then reserved. `false` turns it off.
    #[arg(
        long,
        env = "CP_EVENT_ATTRIBUTOR",
        default_value_t = true,
        action = clap::ArgAction::Set
    )]
    pub event_attributor: bool,

    /// How long the attributor keeps an untagged event waiting for its object to be
    /// reported before counting it as unattributed (passed on as ATTRIBUTOR_WINDOW_SECS).
    #[arg(long, env = "CP_ATTRIBUTOR_WINDOW_SECS", default_value_t = 600)]
    pub attributor_window_secs: u64,

    /// At most this many workers are recreated per pass after a role template changed.
    #[arg(long, env = "CP_MAX_RECREATES_PER_PASS", default_value_t = 2, value_parser = at_least_one_usize())]
    pub max_recreates_per_pass: usize,

    /// On SIGTERM/SIGINT also stop and remove every worker (by default they keep running:
    /// they do not need the control plane to process).
    #[arg(long, env = "CP_STOP_WORKERS_ON_EXIT")]
    pub stop_workers_on_exit: bool,

    /// How often every running worker's `/health` is probed (0 disables probing).
    #[arg(long, env = "CP_HEALTH_INTERVAL_SECS", default_value_t = 15)]
    pub health_interval_secs: u64,

    /// Timeout of one health probe.
    #[arg(long, env = "CP_HEALTH_TIMEOUT_SECS", default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..))]
    pub health_timeout_secs: u64,

    /// Consecutive failed probes after which a worker is restarted under its policy.
    #[arg(long, env = "CP_HEALTH_FAILURES", default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    pub health_failures: u32,

    /// Health probes in flight at once; a round over many workers works through them this
    /// many at a time.
    #[arg(long, env = "CP_HEALTH_MAX_CONCURRENT_PROBES", default_value_t = 16, value_parser = at_least_one_usize())]
    pub health_max_concurrent_probes: usize,

    /// Bearer token for mutating API verbs (DELETE /clients/{id}); unset refuses them.
    #[arg(long, env = "CP_API_TOKEN", hide_env_values = true)]
    pub api_token: Option<String>,

    /// Which clients this control plane acts on: `all` (it is the only one) or `group`
    /// (several share the clients: those of the registry partitions the ownership group
    /// assigns to it; docs/operations.md, "Several control planes").
    #[arg(long, env = "CP_OWNERSHIP", value_enum, default_value = "all")]
    pub ownership: OwnershipKind,

    /// The URL other control planes send a client's restart to when this one owns it
    /// (CP_OWNERSHIP=group); by default `http://<the API's address>` (the host's name
    /// when it listens on every address).
    #[arg(long, env = "CP_ADVERTISE_URL")]
    pub advertise_url: Option<String>,

    /// The control planes' consumer group on `cluster.registry` (CP_OWNERSHIP=group).
    #[arg(long, env = "CP_OWNERSHIP_GROUP", default_value = "kg-control-planes")]
    pub ownership_group: String,

    /// How long the ownership group waits for a silent control plane before handing its
    /// clients to the others (Kafka's group.min/max.session.timeout.ms bound it: 6-1800 s
    /// by default).
    #[arg(long, env = "CP_OWNERSHIP_SESSION_TIMEOUT_SECS", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=1800))]
    pub ownership_session_timeout_secs: u64,

    /// Log line format, of the control plane and of every worker it starts.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,
}

impl RunArgs {
    /// The environment every worker gets before its role's own: the Kafka settings, so
    /// workers connect as the control plane does, and the log settings, so one
    /// `LOG_FORMAT=json` (and one `RUST_LOG`) covers every process in both runtimes.
    pub fn worker_base_env(&self) -> Vec<(String, String)> {
        let mut env = self.kafka.to_env();
        let format = match self.log_format {
            LogFormat::Json => "json",
            LogFormat::Text => "text",
        };
        env.push(("LOG_FORMAT".into(), format.into()));
        if let Ok(filter) = std::env::var("RUST_LOG") {
            env.push(("RUST_LOG".into(), filter));
        }
        env
    }
}

/// Which clients a control plane acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OwnershipKind {
    /// Every client: the only control plane.
    All,
    /// Those of the registry partitions the control planes' consumer group assigns.
    Group,
}

#[derive(Debug, Clone, clap::Args)]
pub struct DevArgs {
    #[command(flatten)]
    pub run: RunArgs,

    /// Also play an agent: register a demo client, heartbeat, stream events and logs,
    /// then stop heartbeating so its workers are reaped.
    #[arg(long, env = "CP_DEV_DEMO")]
    pub demo: bool,

    /// The demo client's id.
    #[arg(long, env = "CP_DEV_DEMO_CLIENT", default_value = "demo-001")]
    pub demo_client: String,

    /// How long the demo agent heartbeats before it goes quiet.
    #[arg(long, env = "CP_DEV_DEMO_HEARTBEAT_SECS", default_value_t = 30)]
    pub demo_heartbeat_secs: u64,

    /// Exit once the demo client's workers have been reaped (for scripted runs).
    #[arg(long, env = "CP_DEV_EXIT_AFTER_DEMO")]
    pub exit_after_demo: bool,
}

#[derive(Debug, Clone, clap::Args)]
pub struct BrokerArgs {
    /// Number of brokers in the embedded cluster.
    #[arg(long, env = "EMBEDDED_BROKERS", default_value_t = 1, value_parser = clap::value_parser!(i32).range(1..))]
    pub brokers: i32,

    /// Kafka's `group.initial.rebalance.delay.ms` for the embedded cluster. 0 by default, as
    /// in the compose stack's Kafka: Kafka's own default (3000) delays every new client's
    /// first record by 3 s.
    #[arg(
        long,
        env = "EMBEDDED_GROUP_INITIAL_REBALANCE_DELAY_MS",
        default_value_t = 0
    )]
    pub group_initial_rebalance_delay_ms: u64,
}

#[derive(Debug, Clone, clap::Args)]
pub struct ListGroupsArgs {
    #[command(flatten)]
    pub kafka: KafkaArgs,
}

#[derive(Debug, Clone, clap::Args)]
pub struct DeadLettersArgs {
    #[command(flatten)]
    pub kafka: KafkaArgs,

    #[command(subcommand)]
    pub action: DeadLettersAction,
}

#[derive(Debug, Clone, clap::Subcommand)]
pub enum DeadLettersAction {
    /// One line per dead letter: where it is (`topic/partition/offset`, the key of its
    /// replay marker), when it failed, the client, the reason code, where it came from,
    /// whether it was replayed, and the reason.
    List(DeadLettersFilterArgs),
    /// Produces each chosen dead letter's original to its source topic under its key, and
    /// marks it replayed in `dlq.replayed`; what a marker names is skipped.
    Replay(DeadLettersFilterArgs),
}

/// Which dead letters: every one that matches all the filters given.
#[derive(Debug, Clone, clap::Args)]
pub struct DeadLettersFilterArgs {
    /// Only this client's.
    #[arg(long, env = "DLQ_CLIENT")]
    pub client: Option<String>,

    /// Only those with this reason code (`validation_failed`, `undecodable`, …).
    #[arg(long, env = "DLQ_REASON")]
    pub reason: Option<String>,

    /// Only those that failed at or after this time (RFC 3339).
    #[arg(long, env = "DLQ_SINCE")]
    pub since: Option<chrono::DateTime<chrono::Utc>>,

    /// Only those that failed before this time (RFC 3339).
    #[arg(long, env = "DLQ_UNTIL")]
    pub until: Option<chrono::DateTime<chrono::Utc>>,

    /// The dead-letter topics read.
    #[arg(
        long,
        env = "DLQ_TOPICS",
        value_delimiter = ',',
        default_value = "dlq.normalized,dlq.raw"
    )]
    pub topics: Vec<String>,
}

impl DeadLettersFilterArgs {
    pub fn filter(&self) -> crate::dead_letters::Filter {
        crate::dead_letters::Filter {
            client: self.client.clone(),
            reason: self.reason.clone(),
            since: self.since,
            until: self.until,
        }
    }
}

#[derive(Debug, Clone, clap::Args)]
pub struct GroupOffsetsArgs {
    #[command(flatten)]
    pub kafka: KafkaArgs,

    /// The consumer group.
    #[arg(long, env = "KAFKA_GROUP")]
    pub group: String,

    /// The topic whose committed offsets are read.
    #[arg(long, env = "KAFKA_TOPIC")]
    pub topic: String,
}

#[derive(Debug, Clone, clap::Args)]
pub struct CreateTopicsArgs {
    #[command(flatten)]
    pub kafka: KafkaArgs,

    /// Replication factor of the created topics.
    #[arg(long, env = "KAFKA_REPLICATION_FACTOR", default_value_t = 1)]
    pub replication_factor: i32,

    /// How long to keep retrying while the cluster is not reachable yet.
    #[arg(long, env = "KAFKA_WAIT_SECS", default_value_t = 120)]
    pub wait_secs: u64,

    /// Set the configs of existing topics that differ from the catalog (all but
    /// `cleanup.policy`; partition counts are only reported).
    #[arg(long, env = "KAFKA_FIX_TOPIC_CONFIGS")]
    pub fix_configs: bool,

    /// Fail (exit 1) when an existing topic still differs from the catalog.
    #[arg(long, env = "KAFKA_TOPICS_STRICT")]
    pub strict: bool,
}

/// Counts and limits that are meaningless at zero are refused by the parser, not clamped
/// silently: an operator who sets one to 0 learns so at start-up.
fn at_least_one_usize() -> clap::builder::RangedU64ValueParser<usize> {
    clap::builder::RangedU64ValueParser::<usize>::new().range(1..)
}

/// A fraction from 0 to 1.
fn fraction(value: &str) -> Result<f64, String> {
    let parsed: f64 = value
        .parse()
        .map_err(|error| format!("not a number: {error}"))?;
    if (0.0..=1.0).contains(&parsed) {
        Ok(parsed)
    } else {
        Err(format!("{parsed} is not between 0 and 1"))
    }
}

impl RunArgs {
    /// The controller's tuning, from the flags.
    pub fn controller_settings(&self) -> crate::controller::ControllerSettings {
        crate::controller::ControllerSettings {
            heartbeat_timeout: self.heartbeat_timeout,
            restart_delay: Duration::from_millis(self.restart_backoff_base_ms),
            reconcile_interval: Duration::from_millis(self.reconcile_interval_ms),
            max_concurrent_actions: self.max_concurrent_actions,
            action_timeout: Duration::from_secs(self.action_timeout_secs),
            stop_grace: Duration::from_secs(self.stop_grace_secs),
            shutdown_grace: Duration::from_secs(10),
            delete_data_on_deregister: self.deregistered_data == DeregisteredData::Delete,
            admission: crate::admission::AdmissionSettings {
                max_clients: self.max_clients,
                max_new_per_minute: self.max_new_clients_per_minute,
                max_waiting: self.max_waiting_clients,
                allowlist: self
                    .client_allowlist
                    .iter()
                    .map(|id| id.trim().to_string())
                    .filter(|id| !id.is_empty())
                    .collect(),
            },
            orphan_grace: chrono::Duration::seconds(self.orphan_grace_secs as i64),
            orphan_dry_run: self.orphan_dry_run,
            max_recreates_per_pass: self.max_recreates_per_pass,
            event_attributor: self.event_attributor,
            attributor_env: vec![(
                "ATTRIBUTOR_WINDOW_SECS".into(),
                self.attributor_window_secs.to_string(),
            )],
            health: crate::controller::HealthSettings {
                interval: Duration::from_secs(self.health_interval_secs),
                timeout: Duration::from_secs(self.health_timeout_secs),
                failures: self.health_failures,
                max_concurrent: self.health_max_concurrent_probes,
            },
            backoff: crate::supervise::BackoffSettings {
                base: chrono::Duration::milliseconds(self.restart_backoff_base_ms as i64),
                cap: chrono::Duration::seconds(self.restart_backoff_max_secs as i64),
                reset_after: chrono::Duration::seconds(self.restart_reset_after_secs as i64),
                window: chrono::Duration::seconds(self.restart_window_secs as i64),
                max_restarts_in_window: self.restart_max_in_window,
                jitter: self.restart_jitter,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    fn run_args(flags: &[&str]) -> Result<RunArgs, clap::Error> {
        let argv = ["control-plane", "run"].iter().chain(flags);
        match Cli::try_parse_from(argv)?.command {
            Command::Run(args) => Ok(args),
            other => panic!("parsed {other:?}"),
        }
    }

    #[test]
    fn the_defaults_parse_and_are_the_documented_ones() {
        let args = run_args(&[]).unwrap();
        assert_eq!(args.heartbeat_timeout.as_secs(), 120);
        assert_eq!(args.reconcile_interval_ms, 1000);
        assert_eq!(args.max_clients, 5000);
        assert_eq!(args.max_new_clients_per_minute, 600);
        assert_eq!(args.max_waiting_clients, 10_000);
        assert_eq!(args.restart_jitter, 0.2);
        assert_eq!(args.runtime, RuntimeKind::Process);
        let default_roles: Vec<String> = crate::roles::DEFAULT_ROLES
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(args.roles, default_roles);
    }

    #[test]
    fn out_of_range_values_are_refused_not_clamped() {
        for flags in [
            ["--heartbeat-timeout-secs", "0"],
            ["--heartbeat-timeout-secs", "31536001"],
            ["--reconcile-interval-ms", "10"],
            ["--max-concurrent-actions", "0"],
            ["--action-timeout-secs", "0"],
            ["--restart-backoff-base-ms", "0"],
            ["--restart-backoff-max-secs", "0"],
            ["--restart-max-in-window", "0"],
            ["--restart-jitter", "1.5"],
            ["--max-new-clients-per-minute", "0"],
            ["--max-waiting-clients", "0"],
            ["--max-recreates-per-pass", "0"],
            ["--health-timeout-secs", "0"],
            ["--health-failures", "0"],
            ["--health-max-concurrent-probes", "0"],
        ] {
            let error = run_args(&flags).expect_err(&format!("{flags:?} accepted"));
            assert_eq!(
                error.kind(),
                clap::error::ErrorKind::ValueValidation,
                "{flags:?}: {error}"
            );
        }
        let negative = run_args(&["--restart-jitter=-0.1"]).unwrap_err();
        assert_eq!(negative.kind(), clap::error::ErrorKind::ValueValidation);
        // The edges are accepted.
        let args = run_args(&[
            "--reconcile-interval-ms",
            "50",
            "--restart-jitter",
            "1",
            "--max-waiting-clients",
            "1",
        ])
        .unwrap();
        assert_eq!(args.reconcile_interval_ms, 50);
        assert_eq!(args.restart_jitter, 1.0);
        assert_eq!(args.max_waiting_clients, 1);
    }

    #[test]
    fn an_unknown_runtime_is_refused() {
        let error = run_args(&["--runtime", "kubernetes"]).unwrap_err();
        assert_eq!(error.kind(), clap::error::ErrorKind::InvalidValue);
    }
}
