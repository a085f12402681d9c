//! The worker's roles, one folder each, every folder with the same files:
//!
//! - `mod.rs` is the role: its doc comment says what it consumes and what it produces, and
//!   it holds its [`RecordHandler`], the per-record decision the generic Kafka loop
//!   ([`crate::pipeline`]) drives. The event attributor, which parks events and re-keys
//!   copies rather than deciding record by record, holds its own loop there instead.
//! - the pure part, no I/O, named for what it does: `normalize.rs` (the normalizers);
//!   `decode.rs`, `model.rs`, `scoring.rs`, `derive.rs` (the graph builder); `offsets.rs`
//!   (the attributor, whose decisions are `kg_shared::attribution`'s). Unit tests sit at
//!   the bottom of the file they pin.
//! - `tests.rs`: the role's own tests, records in as its input topics carry them (the
//!   normalizers and the graph builder; the attributor's one test is `offsets.rs`'s).
//! - one more file per further concern: the graph builder's `store.rs` and `sqlite.rs`,
//!   the attributor's `owner_index.rs`, `attribute.rs` and `unreadable.rs`.
//!
//! The roles, by folder (`--role` is the folder's name with dashes):
//! - [`event_normalizer`]: `raw.k8s.events` → `events.normalized`;
//! - [`log_normalizer`]: `raw.k8s.logs` → `logs.normalized`;
//! - [`graph_builder`]: `events.normalized`, `logs.normalized`, `state.k8s.resource` and
//!   `state.k8s.topology` → the client's graph file;
//! - [`event_attributor`]: `events.normalized`, `raw.k8s.events` and `state.k8s.resource`
//!   → `raw.k8s.events` (untagged Events copied, keyed for the client that claims them);
//! - [`pipeline`]: an operator-defined pipeline's inputs → its output, through its stages.
//!
//! Every role dead-letters what it cannot read to `dlq.normalized`. Adding a role is a
//! folder like these, a `kg_shared::Role` variant, and its place in the dispatch below
//! ([`normalizer_for`], `handler_for`), or in [`crate::run`] for a role with its own loop.
//!
//! This file is what the roles share: what each does with one input record, as a pure
//! decision ([`Outcome`]: skip it (another tenant's, or nobody's), produce a record, absorb
//! it, or dead-letter it); the key-ownership checks; the `--passthrough` ceiling; and the
//! dispatch from a [`Role`] to its handler. [`normalize_common`] is what the pure parts
//! share. Kafka stays in [`crate::pipeline`].

pub mod event_attributor;
pub mod event_normalizer;
pub mod graph_builder;
pub mod log_normalizer;
pub mod normalize_common;
pub mod pipeline;

use kg_shared::keys::{key_belongs_to, parse_key};
use kg_shared::pipeline_template::PipelineTemplate;
use kg_shared::topics::{EVENTS_NORMALIZED, LOGS_NORMALIZED};
use kg_shared::{ClientId, Role};

use self::event_normalizer::EventNormalizer;
use self::log_normalizer::LogNormalizer;
use crate::config::WorkerConfig;
use crate::WorkerError;

/// The decision for one record.
#[derive(Debug, PartialEq)]
pub enum Outcome {
    /// Keyed for another tenant: skipped on the key bytes alone.
    Foreign,
    /// No tenant can be read from it: counted, never claimed.
    Unattributed,
    /// Ours, normalized: produce `value` to `topic` under `key`.
    Produce {
        topic: &'static str,
        key: String,
        value: Vec<u8>,
    },
    /// Ours, but it cannot be normalized.
    DeadLetter {
        reason_code: &'static str,
        reason: String,
    },
    /// Ours, taken into the handler's own batch, written by [`RecordHandler::flush`].
    Absorbed,
    /// Ours, valid, and nothing to do with it (a low-signal log line for the graph).
    Ignored,
    /// Several records made of one (a pipeline's split): each of these, none of them
    /// `Many`. The input's offset is committed once all of them are acknowledged.
    Many(Vec<Outcome>),
}

/// One role's record handling.
pub trait RecordHandler: Send + Sync + 'static {
    /// The topics this role consumes.
    fn input_topics(&self) -> &'static [&'static str];
    /// Decides what to do with one record of `topic` (`timestamp_ms`: the Kafka record's
    /// timestamp, for records that carry no time of their own).
    fn handle(
        &self,
        topic: &str,
        timestamp_ms: Option<i64>,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
    ) -> Outcome;

    /// [`RecordHandler::handle`], told where the record is (a handler that keeps records
    /// for later needs their place for a dead letter then).
    fn handle_at(
        &self,
        topic: &str,
        _partition: i32,
        _offset: i64,
        timestamp_ms: Option<i64>,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
    ) -> Outcome {
        self.handle(topic, timestamp_ms, key, value)
    }

    /// Whether the role lost its state and must read its input again from the start of
    /// every partition where its group committed offsets (`crate::rewind`).
    fn rebuild_from_start(&self) -> bool {
        false
    }

    /// Writes what the batch absorbed; called before the batch's offsets are committed,
    /// and again (with the same contents) after a failure, so it must be idempotent.
    fn flush(&self) -> Result<(), FlushError> {
        Ok(())
    }
}

/// Why a handler could not write what its batch absorbed; the batch is not committed and
/// the write is tried again.
#[derive(Debug, thiserror::Error)]
pub enum FlushError {
    /// The graph builder's store refused the batch.
    #[error(transparent)]
    Store(#[from] graph_builder::StoreError),
    /// A pipeline's delay stage could not keep the sessions it held.
    #[error("holding delayed records: {0}")]
    Held(String),
}

/// The handler of a normalizer role serving `client`; None for roles with state of their
/// own (the graph builder), which `handler_for` builds.
pub fn normalizer_for(role: Role, client: ClientId) -> Option<Box<dyn RecordHandler>> {
    match role {
        Role::EventNormalizer => Some(Box::new(EventNormalizer { client })),
        Role::LogNormalizer => Some(Box::new(LogNormalizer { client })),
        Role::GraphBuilder | Role::EventAttributor | Role::Pipeline => None,
    }
}

/// The handler [`crate::run`] drives for `role` serving `client_id`, and the graph store
/// the HTTP queries read (the graph builder's; None for the others): the `--passthrough`
/// ceiling, a normalizer, or the graph builder on the client's store (its data directory
/// created first). The event attributor runs its own loop ([`event_attributor::run`]),
/// which [`crate::run`] starts before asking for a handler.
/// What a role runs: its record handler, the graph builder's store, a pipeline's delay.
pub(crate) struct RoleParts {
    pub handler: Box<dyn RecordHandler>,
    pub graph: Option<graph_builder::SharedStore>,
    /// A pipeline's delay stage, whose scheduler runs beside the loop.
    pub delay: Option<pipeline::scheduler::DelayTask>,
    /// A pipeline's retry ladder, whose scheduler runs beside the loop.
    pub retry: Option<pipeline::retry_scheduler::RetryTask>,
    /// A pipeline's stages, for its health routes.
    pub stages: Option<std::sync::Arc<pipeline::health::StagesHealth>>,
}

pub(crate) fn handler_for(
    config: &WorkerConfig,
    role: Role,
    client_id: &ClientId,
    pipeline: Option<&PipelineTemplate>,
    metrics: &std::sync::Arc<crate::metrics::WorkerMetrics>,
) -> Result<RoleParts, WorkerError> {
    let pipeline_handler = || {
        let template = pipeline.ok_or(WorkerError::NoPipeline)?;
        Ok::<_, WorkerError>(
            pipeline::PipelineHandler::new(template, client_id.clone(), &config.data_dir)?
                .with_metrics(metrics.clone()),
        )
    };
    let parts = |handler: Box<dyn RecordHandler>| RoleParts {
        handler,
        graph: None,
        delay: None,
        retry: None,
        stages: None,
    };
    Ok(match normalizer_for(role, client_id.clone()) {
        _ if config.passthrough && role == Role::Pipeline => {
            tracing::warn!("benchmark pass-through: records are forwarded unprocessed");
            parts(Box::new(pipeline_handler()?.passthrough()))
        }
        _ if config.passthrough => {
            let passthrough =
                Passthrough::for_role(role).ok_or(WorkerError::NoPassthrough(role))?;
            tracing::warn!("benchmark pass-through: records are forwarded unprocessed");
            parts(Box::new(passthrough))
        }
        Some(handler) => parts(handler),
        None if role == Role::Pipeline => {
            let handler = pipeline_handler()?;
            let delay = handler.delay_task();
            let retry = handler.retry_task();
            let name = config.pipeline.as_deref().unwrap_or_default();
            let stages = Some(std::sync::Arc::new(handler.health(name)));
            RoleParts {
                handler: Box::new(handler),
                graph: None,
                delay,
                retry,
                stages,
            }
        }
        None => {
            std::fs::create_dir_all(&config.data_dir).map_err(|source| WorkerError::DataDir {
                path: config.data_dir.clone(),
                source,
            })?;
            let store = graph_builder::open_store(&config.data_dir, client_id)?;
            RoleParts {
                handler: Box::new(graph_builder::GraphBuilder::new(
                    client_id.clone(),
                    store.clone(),
                )),
                graph: Some(store),
                delay: None,
                retry: None,
                stages: None,
            }
        }
    })
}

/// The no-op ceiling of a normalizer role or a pipeline (`--passthrough`, benchmarks only):
/// every input record goes out unchanged, key and value, to the role's (or template's)
/// output topic. Same consumer,
/// producer, batches and commits as the real role; only the processing is missing.
pub struct Passthrough {
    pub input: &'static [&'static str],
    pub output: &'static str,
}

impl Passthrough {
    /// The pass-through of a normalizer role; None for the graph builder, which writes no
    /// topic.
    pub fn for_role(role: Role) -> Option<Self> {
        let output = match role {
            Role::EventNormalizer => EVENTS_NORMALIZED,
            Role::LogNormalizer => LOGS_NORMALIZED,
            Role::GraphBuilder | Role::EventAttributor | Role::Pipeline => return None,
        };
        Some(Self {
            input: role.input_topics(),
            output,
        })
    }
}

impl RecordHandler for Passthrough {
    fn input_topics(&self) -> &'static [&'static str] {
        self.input
    }

    fn handle(
        &self,
        _topic: &str,
        _timestamp_ms: Option<i64>,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
    ) -> Outcome {
        Outcome::Produce {
            topic: self.output,
            key: String::from_utf8_lossy(key.unwrap_or_default()).into_owned(),
            value: value.unwrap_or_default().to_vec(),
        }
    }
}

/// Where a record's tenant comes from its key: ours, another's, or none at all.
pub(crate) fn key_ownership(key: Option<&[u8]>, client: &ClientId) -> Option<bool> {
    let key = key?;
    if key_belongs_to(key, client) {
        return Some(true);
    }
    parse_key(key).map(|_| false)
}

/// For roles whose tenant comes from the key alone: the outcome of a record that is not
/// this client's (another tenant's, or nobody's), or None when it is ours.
pub(crate) fn skip_unless_keyed_for(key: Option<&[u8]>, client: &ClientId) -> Option<Outcome> {
    match key_ownership(key, client) {
        None => Some(Outcome::Unattributed),
        Some(false) => Some(Outcome::Foreign),
        Some(true) => None,
    }
}

fn null_value() -> Outcome {
    Outcome::DeadLetter {
        reason_code: "null_value",
        reason: "record has a null value".into(),
    }
}
