//! The pipeline role (`--role pipeline --pipeline NAME --pipelines-file FILE`, one per
//! pipeline and client): consumes the template's input topics and produces its output
//! topic, each record of this client (keyed `<client>::…`, key kept) through the
//! template's stages (`kg_shared::pipeline_template`); a record a stage rejects goes to
//! `dlq.normalized` with the reason, never retried (the same input would fail the same
//! way). Kafka is `crate::pipeline`'s at-least-once loop, as for the normalizers.
//!
//! A pipeline with a delay stage holds each record there (in the client's volume, synced
//! before its offset is committed) and emits it later through the stages after the delay;
//! that part runs beside the loop, in `scheduler.rs`.
//!
//! Files: this one is the role ([`PipelineHandler`], and [`Stages`], bytes in, a record, a
//! held record or a rejection out); `flatten.rs`, `validate.rs` and `enrich.rs` are the
//! stages, pure, one concern each; `delay.rs` the delay's decisions (pure), `pending.rs`
//! its held sessions, `state.rs` its state topic, `scheduler.rs` its emissions; `tests.rs`
//! runs the shipped example templates.

mod delay;
mod enrich;
mod flatten;
pub mod health;
pub mod pending;
pub mod scheduler;
pub mod state;
mod validate;

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use kg_shared::pipeline_template::{Delay, PipelineTemplate, PipelineTemplates, Stage};
use kg_shared::ClientId;
use serde_json::{Map, Value};

use self::pending::{HeldSession, PendingStore};
use super::{null_value, skip_unless_keyed_for, FlushError, Outcome, RecordHandler};
use crate::config::WorkerConfig;
use crate::metrics::{OutcomeLabel, WorkerMetrics};
use crate::WorkerError;

pub use validate::Violation;

/// A record between stages: a flat JSON object.
pub type Record = Map<String, Value>;

/// Why a record leaves the pipeline without reaching the sink. Each is permanent: the
/// same input would fail the same way, so it goes to the dead-letter topic, not a retry.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Rejection {
    #[error("not JSON: {0}")]
    Undecodable(String),
    #[error("not a JSON object")]
    NotAnObject,
    #[error("failed validation: {}", describe(.0))]
    Invalid(Vec<Violation>),
    /// A delay stage cannot tell which session the record belongs to.
    #[error("no session: the delay stage's key field {0:?} is missing, empty or not a scalar")]
    NoSession(String),
}

impl Rejection {
    /// The dead letter's reason code.
    pub fn reason_code(&self) -> &'static str {
        match self {
            Rejection::Undecodable(_) => "undecodable",
            Rejection::NotAnObject => "not_an_object",
            Rejection::Invalid(_) => "validation_failed",
            Rejection::NoSession(_) => "no_session",
        }
    }
}

fn describe(violations: &[Violation]) -> String {
    violations
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// One pipeline's stages, for one client. Clones share the per-stage counters.
#[derive(Debug, Clone)]
pub struct Stages {
    stages: Vec<Stage>,
    client: ClientId,
    counters: Arc<Vec<StageCounter>>,
}

/// Records a stage let through and records it rejected, for `/health/stages`.
#[derive(Debug, Default)]
pub struct StageCounter {
    pub passed: AtomicU64,
    pub rejected: AtomicU64,
}

impl Stages {
    pub fn new(template: &PipelineTemplate, client: ClientId) -> Self {
        Self {
            stages: template.stages.clone(),
            client,
            counters: Arc::new(template.stages.iter().map(|_| Default::default()).collect()),
        }
    }

    /// Each stage with its counters, in order.
    pub fn each(&self) -> impl Iterator<Item = (&Stage, &StageCounter)> {
        self.stages.iter().zip(self.counters.iter())
    }

    /// Runs the stages over one input record, at `now`, up to a delay stage if there is one.
    pub fn process(&self, input: &[u8], now: DateTime<Utc>) -> Result<Processed, Rejection> {
        let value: Value = serde_json::from_slice(input)
            .map_err(|error| Rejection::Undecodable(error.to_string()))?;
        let Value::Object(record) = value else {
            return Err(Rejection::NotAnObject);
        };
        self.run_from(record, 0, now)
    }

    /// Runs the stages after the delay over a record the delay held, at `now`.
    pub fn resume(&self, record: Record, now: DateTime<Utc>) -> Result<Record, Rejection> {
        let after = self.delay_index().map_or(self.stages.len(), |at| at + 1);
        match self.run_from(record, after, now)? {
            Processed::Done(record) => Ok(record),
            // One delay stage at most (the template refuses a second).
            Processed::Held { record, .. } => Ok(record),
        }
    }

    /// Where the delay stage is, if the pipeline has one.
    pub fn delay_index(&self) -> Option<usize> {
        self.stages
            .iter()
            .position(|s| matches!(s, Stage::Delay(_)))
    }

    pub fn client(&self) -> &ClientId {
        &self.client
    }

    fn run_from(
        &self,
        mut record: Record,
        from: usize,
        now: DateTime<Utc>,
    ) -> Result<Processed, Rejection> {
        let mut validated = self.stages[..from]
            .iter()
            .any(|s| matches!(s, Stage::Validate(_)));
        for (stage, counter) in self.stages[from..].iter().zip(&self.counters[from..]) {
            let passed = match stage {
                Stage::Flatten(spec) => {
                    record = flatten::flatten(&record, spec);
                    Ok(())
                }
                Stage::Validate(spec) => {
                    let violations = validate::validate(&record, spec, now);
                    validated = violations.is_empty();
                    if validated {
                        Ok(())
                    } else {
                        Err(Rejection::Invalid(violations))
                    }
                }
                Stage::Enrich(spec) => {
                    enrich::enrich(&mut record, spec, &self.client, now, validated);
                    Ok(())
                }
                Stage::Delay(spec) => match delay::session_of(spec, &record) {
                    Some(session) => {
                        counter.passed.fetch_add(1, Ordering::Relaxed);
                        return Ok(Processed::Held { record, session });
                    }
                    None => Err(Rejection::NoSession(spec.key.clone())),
                },
            };
            match passed {
                Ok(()) => counter.passed.fetch_add(1, Ordering::Relaxed),
                Err(rejection) => {
                    counter.rejected.fetch_add(1, Ordering::Relaxed);
                    return Err(rejection);
                }
            };
        }
        Ok(Processed::Done(record))
    }
}

/// What the stages made of a record.
#[derive(Debug, Clone, PartialEq)]
pub enum Processed {
    /// Through every stage: sink it.
    Done(Record),
    /// Held by the delay stage, as session `session`.
    Held { record: Record, session: String },
}

/// The template of the pipeline `config` names (`--pipeline`), from its templates file.
pub fn template_of(config: &WorkerConfig) -> Result<PipelineTemplate, WorkerError> {
    let Some(name) = &config.pipeline else {
        return Err(WorkerError::NoPipeline);
    };
    let (templates, file) = match (&config.pipelines_toml, &config.pipelines_file) {
        (Some(text), _) => {
            let file = std::path::PathBuf::from("WORKER_PIPELINES_TOML");
            (PipelineTemplates::parse(text, &file)?, file)
        }
        (None, Some(file)) => (PipelineTemplates::load(file)?, file.clone()),
        (None, None) => return Err(WorkerError::NoPipeline),
    };
    templates
        .pipelines
        .into_iter()
        .find(|template| template.name == *name)
        .ok_or_else(|| WorkerError::UnknownPipeline {
            name: name.clone(),
            file,
        })
}

/// One pipeline for one client: the record handler the at-least-once loop drives.
pub struct PipelineHandler {
    stages: Stages,
    input: &'static [&'static str],
    output: &'static str,
    /// The delay stage's held sessions, when the pipeline has one.
    held: Option<Held>,
}

/// A delay stage's store, and the sessions this batch brought, written by `flush` before
/// the batch's offsets are committed.
struct Held {
    delay: Delay,
    store: Arc<PendingStore>,
    /// The latest state of each session, which the scheduler's reader fills.
    view: Arc<state::StateView>,
    batch: Mutex<Vec<HeldSession>>,
    /// Where superseded sessions are counted (a worker's metrics; none in unit tests).
    metrics: Option<Arc<WorkerMetrics>>,
}

impl PipelineHandler {
    /// The handler of `template` for `client`; a delay stage's sessions are kept under
    /// `data_dir` (the client's volume).
    pub fn new(
        template: &PipelineTemplate,
        client: ClientId,
        data_dir: &Path,
    ) -> Result<Self, WorkerError> {
        // The loop asks for `'static` topic names (the built-in roles' are constants);
        // a pipeline's are read once at start and live as long as the process, so they
        // are leaked once, not per record.
        let input: Vec<&'static str> = template
            .input
            .iter()
            .map(|topic| &*Box::leak(topic.clone().into_boxed_str()))
            .collect();
        let held = match template.stages.iter().find_map(|stage| match stage {
            Stage::Delay(delay) => Some(delay.clone()),
            _ => None,
        }) {
            None => None,
            Some(delay) => {
                std::fs::create_dir_all(data_dir).map_err(|source| WorkerError::DataDir {
                    path: data_dir.to_path_buf(),
                    source,
                })?;
                let store = PendingStore::open(&pending::store_path(data_dir, &template.name))?;
                let view = match delay.check {
                    Some(_) => state::StateView::default(),
                    None => state::StateView::without_topic(),
                };
                Some(Held {
                    delay,
                    view: Arc::new(view),
                    metrics: None,
                    store: Arc::new(store),
                    batch: Mutex::new(Vec::new()),
                })
            }
        };
        Ok(Self {
            stages: Stages::new(template, client),
            input: Box::leak(input.into_boxed_slice()),
            output: Box::leak(template.output.clone().into_boxed_str()),
            held,
        })
    }

    /// Counts what the delay stage does in `metrics`.
    pub fn with_metrics(mut self, metrics: Arc<WorkerMetrics>) -> Self {
        if let Some(held) = &mut self.held {
            held.metrics = Some(metrics);
        }
        self
    }

    /// The no-op ceiling on this pipeline's topics (`--passthrough`, benchmarks only).
    pub fn passthrough(&self) -> super::Passthrough {
        super::Passthrough {
            input: self.input,
            output: self.output,
        }
    }

    /// What the delay's scheduler needs to emit what this handler holds; None without a
    /// delay stage.
    pub fn delay_task(&self) -> Option<scheduler::DelayTask> {
        let held = self.held.as_ref()?;
        Some(scheduler::DelayTask {
            delay: held.delay.clone(),
            stages: self.stages.clone(),
            store: held.store.clone(),
            view: held.view.clone(),
            output: self.output.to_string(),
        })
    }

    /// What `/health/stages` and the delay part of `/health` read.
    pub fn health(&self, pipeline: &str) -> health::StagesHealth {
        health::StagesHealth {
            pipeline: pipeline.to_string(),
            stages: self.stages.clone(),
            delay: self
                .held
                .as_ref()
                .map(|held| (held.store.clone(), held.view.clone())),
        }
    }
}

impl RecordHandler for PipelineHandler {
    fn input_topics(&self) -> &'static [&'static str] {
        self.input
    }

    fn handle(
        &self,
        topic: &str,
        timestamp_ms: Option<i64>,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
    ) -> Outcome {
        self.handle_at(topic, -1, -1, timestamp_ms, key, value)
    }

    fn handle_at(
        &self,
        topic: &str,
        partition: i32,
        offset: i64,
        _timestamp_ms: Option<i64>,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
    ) -> Outcome {
        if let Some(skipped) = skip_unless_keyed_for(key, &self.stages.client) {
            return skipped;
        }
        let Some(value) = value else {
            return null_value();
        };
        let now = Utc::now();
        let kafka_key = String::from_utf8_lossy(key.unwrap_or_default()).into_owned();
        match self.stages.process(value, now) {
            Ok(Processed::Done(record)) => Outcome::Produce {
                topic: self.output,
                key: kafka_key,
                value: serde_json::to_vec(&record).unwrap_or_default(),
            },
            Ok(Processed::Held { record, session }) => {
                let Some(held) = &self.held else {
                    // A handler is built with its delay's store; unreachable otherwise.
                    return Outcome::DeadLetter {
                        reason_code: "no_delay_store",
                        reason: "the pipeline holds records but has no store for them".into(),
                    };
                };
                let (due, first_check) = delay::schedule(&held.delay, now);
                let session = HeldSession {
                    session,
                    kafka_key,
                    record: serde_json::to_vec(&record).unwrap_or_default(),
                    source_topic: topic.to_string(),
                    source_partition: partition,
                    source_offset: offset,
                    held_at_ms: now.timestamp_millis(),
                    due_ms: due.timestamp_millis(),
                    next_check_ms: first_check.timestamp_millis(),
                };
                match held.batch.lock() {
                    Ok(mut batch) => {
                        batch.push(session);
                        Outcome::Absorbed
                    }
                    Err(_) => Outcome::DeadLetter {
                        reason_code: "no_delay_store",
                        reason: "the delay stage's batch lock is poisoned".into(),
                    },
                }
            }
            Err(rejection) => Outcome::DeadLetter {
                reason_code: rejection.reason_code(),
                reason: rejection.to_string(),
            },
        }
    }

    /// Writes (and syncs) the sessions this batch held; kept for the next try on failure.
    fn flush(&self) -> Result<(), FlushError> {
        let Some(held) = &self.held else {
            return Ok(());
        };
        let Ok(mut batch) = held.batch.lock() else {
            return Err(FlushError::Held(
                "the delay stage's batch lock is poisoned".into(),
            ));
        };
        if batch.is_empty() {
            return Ok(());
        }
        // The fsync blocks: off the runtime's async threads.
        let holding = tokio::task::block_in_place(|| held.store.hold(&batch))
            .map_err(|error| FlushError::Held(error.to_string()))?;
        batch.clear();
        if let (Some(metrics), replaced @ 1..) = (&held.metrics, holding.replaced) {
            metrics
                .delay_released
                .get_or_create(&OutcomeLabel {
                    outcome: "superseded".into(),
                })
                .inc_by(replaced as u64);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
