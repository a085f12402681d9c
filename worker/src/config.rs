//! The worker's configuration: one typed tree parsed by clap, every flag also an
//! environment variable because the control plane starts workers through the environment.

use std::net::SocketAddr;
use std::path::PathBuf;

use kg_shared::kafka::KafkaArgs;
use kg_shared::telemetry::LogFormat;
use kg_shared::{ClientId, Role};

/// Everything a worker needs to run.
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "worker",
    version,
    about = "Per-client worker: normalizes one client's records"
)]
pub struct WorkerConfig {
    /// The job of this worker.
    #[arg(long, env = "WORKER_ROLE", value_enum)]
    pub role: Role,

    /// The client (tenant) this worker serves; a lowercase DNS label. Every role but the
    /// shared event attributor needs one.
    #[arg(long, env = "CLIENT_ID", value_parser = parse_client_id)]
    pub client_id: Option<ClientId>,

    /// The pipeline this worker runs (`--role pipeline` only): a name in the templates file.
    #[arg(long, env = "WORKER_PIPELINE")]
    pub pipeline: Option<String>,

    /// The pipeline templates file (`--role pipeline` only; docs/pipelines.md).
    #[arg(long, env = "WORKER_PIPELINES_FILE")]
    pub pipelines_file: Option<PathBuf>,

    /// The templates as text, instead of a file: what the control plane passes, so a
    /// worker in a container needs no file of the host's.
    #[arg(long, env = "WORKER_PIPELINES_TOML", hide_env_values = true)]
    pub pipelines_toml: Option<String>,

    #[command(flatten)]
    pub kafka: KafkaArgs,

    /// Address of the worker's /health and /metrics server. Port 0 picks a free port.
    #[arg(long, env = "WORKER_LISTEN", default_value = "0.0.0.0:9000")]
    pub listen: SocketAddr,

    /// Where the worker keeps state (the graph builder's store, one file per client).
    #[arg(long, env = "WORKER_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,

    /// When set, the bound HTTP address is written to this file once the server is up, so a
    /// supervisor that asked for port 0 can find it.
    #[arg(long, env = "WORKER_ADDR_FILE")]
    pub addr_file: Option<PathBuf>,

    /// Most records handled per batch; a batch's offsets are committed once all its
    /// outputs are acknowledged.
    #[arg(long, env = "WORKER_BATCH_MAX_RECORDS", default_value_t = 2000)]
    pub batch_max_records: usize,

    /// How long a batch waits for more records after its first one.
    #[arg(long, env = "WORKER_BATCH_LINGER_MS", default_value_t = 20)]
    pub batch_linger_ms: u64,

    /// Bound on draining and committing after SIGTERM.
    #[arg(long, env = "WORKER_SHUTDOWN_GRACE_SECS", default_value_t = 10)]
    pub shutdown_grace_secs: u64,

    /// librdkafka's prefetch queue per partition (queued.max.messages.kbytes); small keeps an
    /// idle worker small.
    #[arg(long, env = "WORKER_CONSUMER_QUEUE_KBYTES", default_value_t = 1024)]
    pub consumer_queue_kbytes: u64,

    /// librdkafka's producer queue (queue.buffering.max.kbytes).
    #[arg(long, env = "WORKER_PRODUCER_QUEUE_KBYTES", default_value_t = 8192)]
    pub producer_queue_kbytes: u64,

    /// Consumer group session timeout: how long a crashed worker's partitions stay
    /// unassigned before its successor gets them.
    #[arg(long, env = "WORKER_SESSION_TIMEOUT_MS", default_value_t = 10_000)]
    pub session_timeout_ms: u64,

    /// How long librdkafka waits to fetch again once its prefetch queue is full
    /// (fetch.queue.backoff.ms).
    #[arg(long, env = "WORKER_FETCH_QUEUE_BACKOFF_MS", default_value_t = 10)]
    pub fetch_queue_backoff_ms: u64,

    /// `/health` reports `degraded` beyond this consumer lag (records).
    #[arg(long, env = "WORKER_DEGRADED_LAG", default_value_t = 100_000)]
    pub degraded_lag: i64,

    /// `/health` reports `degraded` when more than this fraction of the records read in the
    /// last minute went to the dead-letter topic.
    #[arg(long, env = "WORKER_DEGRADED_DLQ_RATIO", default_value_t = 0.1)]
    pub degraded_dlq_ratio: f64,

    /// `/health` reports `failed` (503) when records wait and nothing was committed for
    /// this long.
    #[arg(long, env = "WORKER_STALL_SECS", default_value_t = 300)]
    pub stall_secs: u64,

    /// Where a new consumer group starts: earliest (no record is missed) or latest.
    #[arg(long, env = "WORKER_AUTO_OFFSET_RESET", default_value = "earliest")]
    pub auto_offset_reset: String,

    /// Log line format.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,

    /// Event attributor: how long an untagged event waits for its involved object to be
    /// reported before it is counted as unattributed.
    #[arg(long, env = "ATTRIBUTOR_WINDOW_SECS", default_value_t = 600)]
    pub attributor_window_secs: u64,

    /// Event attributor: most events waiting at once; past it the oldest is unattributed.
    #[arg(long, env = "ATTRIBUTOR_MAX_PARKED", default_value_t = 100_000)]
    pub attributor_max_parked: usize,

    /// Benchmarks only: forward the role's input records unchanged (same key and value)
    /// to its output topic, with the same consumer, producer and batch loop and no
    /// processing, which measures the ceiling the normalizer is compared with
    /// (docs/benchmarks.md). Refused for the graph builder.
    #[arg(long, env = "WORKER_PASSTHROUGH", hide = true)]
    pub passthrough: bool,
}

fn parse_client_id(raw: &str) -> Result<ClientId, String> {
    ClientId::parse(raw).map_err(|error| error.to_string())
}
