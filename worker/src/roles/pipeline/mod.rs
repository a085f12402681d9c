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
pub mod graph;
pub mod health;
pub mod input_read;
pub mod pending;
pub mod retries;
pub mod retry_scheduler;
pub mod scheduler;
mod split;
pub mod state;
mod validate;

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use kg_shared::pipeline_template::{
    Delay, OnUnavailable, PipelineTemplate, PipelineTemplates, RetryLadder, Stage,
};
use kg_shared::ClientId;
use serde_json::{Map, Value};

use self::pending::{HeldSession, PendingStore, SessionKind};
use self::retries::{PendingRetry, RetryStore};
use super::{null_value, skip_unless_keyed_for, FlushError, Outcome, RecordHandler};
use crate::config::WorkerConfig;
use crate::metrics::{OutcomeLabel, WorkerMetrics};
use crate::WorkerError;
use kg_shared::dlq::Attempt;

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
    /// The split stage's field is not a list of objects, or too long a list.
    #[error("cannot split: {0}")]
    Unsplittable(String),
    /// One of the records a split made was rejected (its index in the list).
    #[error("{field}[{index}]: {rejection}")]
    Element {
        field: String,
        index: usize,
        rejection: Box<Rejection>,
    },
}

impl Rejection {
    /// The dead letter's reason code.
    pub fn reason_code(&self) -> &'static str {
        match self {
            Rejection::Undecodable(_) => "undecodable",
            Rejection::NotAnObject => "not_an_object",
            Rejection::Invalid(_) => "validation_failed",
            Rejection::NoSession(_) => "no_session",
            Rejection::Unsplittable(_) => "unsplittable",
            Rejection::Element { rejection, .. } => rejection.reason_code(),
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
    /// The client's graph, read by a graph stage (None: the record goes on marked
    /// unavailable).
    graph: Option<Arc<graph::GraphReader>>,
}

/// Records a stage let through, rejected, and sent up the retry ladder, for
/// `/health/stages`.
#[derive(Debug, Default)]
pub struct StageCounter {
    pub passed: AtomicU64,
    pub rejected: AtomicU64,
    pub retried: AtomicU64,
}

impl Stages {
    pub fn new(template: &PipelineTemplate, client: ClientId) -> Self {
        Self {
            stages: template.stages.clone(),
            client,
            counters: Arc::new(template.stages.iter().map(|_| Default::default()).collect()),
            graph: None,
        }
    }

    /// Reads the client's graph (the graph builder's store, on the same volume) for the
    /// graph stage.
    pub fn with_graph(mut self, reader: graph::GraphReader) -> Self {
        self.graph = Some(Arc::new(reader));
        self
    }

    /// Each stage with its counters, in order.
    pub fn each(&self) -> impl Iterator<Item = (&Stage, &StageCounter)> {
        self.stages.iter().zip(self.counters.iter())
    }

    /// Runs the stages over one input record, at `now`, up to a delay stage if there is one:
    /// what became of it, one result per record a split made of it (else one).
    pub fn process(&self, input: &[u8], now: DateTime<Utc>) -> Vec<Result<Processed, Rejection>> {
        let record = match serde_json::from_slice(input) {
            Ok(Value::Object(record)) => record,
            Ok(_) => return vec![Err(Rejection::NotAnObject)],
            Err(error) => return vec![Err(Rejection::Undecodable(error.to_string()))],
        };
        let mut results = Vec::with_capacity(1);
        self.run_from(record, 0, now, &mut results);
        results
    }

    /// Runs the stages after the delay over a record the delay held, at `now`: done, or
    /// to be retried (never held again: one delay stage at most).
    pub fn resume(&self, record: Record, now: DateTime<Utc>) -> Result<Processed, Rejection> {
        let after = self.delay_index().map_or(self.stages.len(), |at| at + 1);
        let mut results = Vec::with_capacity(1);
        self.run_from(record, after, now, &mut results);
        // No split after a delay (the template refuses one), so one result.
        match results.pop() {
            Some(Ok(Processed::Held { record, .. })) => Ok(Processed::Done(record)),
            Some(result) => result,
            None => Err(Rejection::Unsplittable("nothing left to emit".into())),
        }
    }

    /// Runs the stages from `stage` (the one that failed for a while) over a record on the
    /// retry ladder, at `now`: what became of it, as [`Stages::process`] says.
    pub fn retry_at(
        &self,
        record: Record,
        stage: usize,
        now: DateTime<Utc>,
    ) -> Vec<Result<Processed, Rejection>> {
        let mut results = Vec::with_capacity(1);
        self.run_from(record, stage.min(self.stages.len()), now, &mut results);
        results
    }

    /// Whether a stage may send records up the retry ladder.
    pub fn retries(&self) -> bool {
        self.stages.iter().any(
            |s| matches!(s, Stage::Graph(graph) if graph.on_unavailable == OnUnavailable::Retry),
        )
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

    /// Runs the stages from `from` over `record`, pushing what became of it (of each
    /// record a split made) onto `results`.
    fn run_from(
        &self,
        mut record: Record,
        from: usize,
        now: DateTime<Utc>,
        results: &mut Vec<Result<Processed, Rejection>>,
    ) {
        let mut validated = self.stages[..from]
            .iter()
            .any(|s| matches!(s, Stage::Validate(_)));
        for (at, (stage, counter)) in self.stages[from..]
            .iter()
            .zip(&self.counters[from..])
            .enumerate()
        {
            let passed = match stage {
                Stage::Split(spec) => match split::split(record, spec) {
                    Ok(elements) => {
                        counter.passed.fetch_add(1, Ordering::Relaxed);
                        for (index, element) in elements.into_iter().enumerate() {
                            let before = results.len();
                            self.run_from(element, from + at + 1, now, results);
                            for result in &mut results[before..] {
                                if let Err(rejection) = result {
                                    *rejection = Rejection::Element {
                                        field: spec.field.clone(),
                                        index,
                                        rejection: Box::new(rejection.clone()),
                                    };
                                }
                            }
                        }
                        return;
                    }
                    Err(rejection) => {
                        counter.rejected.fetch_add(1, Ordering::Relaxed);
                        results.push(Err(rejection));
                        return;
                    }
                },
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
                Stage::Graph(spec) => {
                    if let Err(reason) = self.look_up(&mut record, spec, counter, now) {
                        return results.push(Ok(Processed::retry(record, from + at, reason)));
                    }
                    Ok(())
                }
                Stage::Delay(spec) => match delay::session_of(spec, &record) {
                    Some(session) => {
                        counter.passed.fetch_add(1, Ordering::Relaxed);
                        results.push(Ok(Processed::Held { record, session }));
                        return;
                    }
                    None => Err(Rejection::NoSession(spec.key.clone())),
                },
            };
            match passed {
                Ok(()) => counter.passed.fetch_add(1, Ordering::Relaxed),
                Err(rejection) => {
                    counter.rejected.fetch_add(1, Ordering::Relaxed);
                    results.push(Err(rejection));
                    return;
                }
            };
        }
        results.push(Ok(Processed::Done(record)));
    }
}

impl Stages {
    /// The graph stage: adds its lookups' fields to `record`; when the graph cannot be
    /// read, marks the record so, or says why to retry it (`on_unavailable`).
    fn look_up(
        &self,
        record: &mut Record,
        spec: &kg_shared::pipeline_template::GraphLookup,
        counter: &StageCounter,
        now: DateTime<Utc>,
    ) -> Result<(), String> {
        let fields = match &self.graph {
            Some(reader) => reader.fields(record, spec, now),
            None => Err("the pipeline has no graph reader".to_string()),
        };
        match (fields, spec.on_unavailable) {
            (Ok(fields), _) => record.extend(fields),
            (Err(reason), OnUnavailable::Emit) => graph::mark_unavailable(record, reason),
            (Err(reason), OnUnavailable::Retry) => {
                counter.retried.fetch_add(1, Ordering::Relaxed);
                return Err(format!("graph stage: {reason}"));
            }
        }
        Ok(())
    }
}

/// What the stages made of a record.
#[derive(Debug, Clone, PartialEq)]
pub enum Processed {
    /// Through every stage: sink it.
    Done(Record),
    /// Held by the delay stage, as session `session`.
    Held { record: Record, session: String },
    /// Stage `stage` failed for a while (`reason`): try it again from there, up the
    /// pipeline's retry ladder; `record` is what that stage was given.
    Retry {
        record: Record,
        stage: usize,
        reason: String,
    },
}

impl Processed {
    fn retry(record: Record, stage: usize, reason: String) -> Self {
        Processed::Retry {
            record,
            stage,
            reason,
        }
    }

    /// The record, if it went through every stage.
    pub fn done(self) -> Option<Record> {
        match self {
            Processed::Done(record) => Some(record),
            Processed::Held { .. } | Processed::Retry { .. } => None,
        }
    }
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
    /// The retry ladder's pending records, when a stage may retry.
    retrying: Option<Retrying>,
}

/// The retry ladder's store, and the retries this batch brought, written by `flush`
/// before the batch's offsets are committed.
struct Retrying {
    ladder: RetryLadder,
    store: Arc<RetryStore>,
    batch: Mutex<Vec<PendingRetry>>,
    metrics: Option<Arc<WorkerMetrics>>,
}

/// A delay stage's store, and the sessions this batch brought, written by `flush` before
/// the batch's offsets are committed.
struct Held {
    delay: Delay,
    store: Arc<PendingStore>,
    /// The latest state of each session, which the scheduler's reader fills.
    view: Arc<state::StateView>,
    /// Whether the input has been read to where it ended at start (see `input_read.rs`).
    input_read: Arc<state::CatchUp>,
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
                let mut store = PendingStore::open(&pending::store_path(data_dir, &template.name))?;
                if delay.hold_from.is_some() {
                    store = store.keeping_markers();
                }
                let view = match delay.check {
                    Some(_) => state::StateView::default(),
                    None => state::StateView::without_topic(),
                };
                let input_read = match delay.end_when {
                    Some(_) => state::CatchUp::waiting(),
                    None => state::CatchUp::done(),
                };
                Some(Held {
                    delay,
                    view: Arc::new(view),
                    input_read: Arc::new(input_read),
                    metrics: None,
                    store: Arc::new(store),
                    batch: Mutex::new(Vec::new()),
                })
            }
        };
        let mut stages = Stages::new(template, client.clone());
        if template.stages.iter().any(|s| matches!(s, Stage::Graph(_))) {
            let store = crate::roles::graph_builder::store_path(data_dir, &client);
            stages = stages.with_graph(graph::GraphReader::new(store));
        }
        let retrying = if stages.retries() {
            std::fs::create_dir_all(data_dir).map_err(|source| WorkerError::DataDir {
                path: data_dir.to_path_buf(),
                source,
            })?;
            let store = RetryStore::open(&retries::store_path(data_dir, &template.name))?;
            Some(Retrying {
                ladder: template.retry.clone(),
                store: Arc::new(store),
                batch: Mutex::new(Vec::new()),
                metrics: None,
            })
        } else {
            None
        };
        Ok(Self {
            stages,
            input: Box::leak(input.into_boxed_slice()),
            output: Box::leak(template.output.clone().into_boxed_str()),
            held,
            retrying,
        })
    }

    /// Counts what the delay stage does in `metrics`.
    pub fn with_metrics(mut self, metrics: Arc<WorkerMetrics>) -> Self {
        if let Some(held) = &mut self.held {
            held.metrics = Some(metrics.clone());
        }
        if let Some(retrying) = &mut self.retrying {
            retrying.metrics = Some(metrics);
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
            input_read: held.input_read.clone(),
            input_topics: self.input.iter().map(ToString::to_string).collect(),
            output: self.output.to_string(),
            retries: self
                .retrying
                .as_ref()
                .map(|retrying| (retrying.store.clone(), retrying.ladder.clone())),
        })
    }

    /// What the retry scheduler needs to attempt again what this handler sent up the
    /// ladder; None when no stage retries.
    pub fn retry_task(&self) -> Option<retry_scheduler::RetryTask> {
        let retrying = self.retrying.as_ref()?;
        Some(retry_scheduler::RetryTask {
            ladder: retrying.ladder.clone(),
            stages: self.stages.clone(),
            store: retrying.store.clone(),
            output: self.output.to_string(),
            holding: self.held.as_ref().map(|held| retry_scheduler::Holding {
                delay: held.delay.clone(),
                store: held.store.clone(),
            }),
        })
    }

    /// What `/health/stages` and the delay part of `/health` read.
    pub fn health(&self, pipeline: &str) -> health::StagesHealth {
        health::StagesHealth {
            pipeline: pipeline.to_string(),
            stages: self.stages.clone(),
            throughput: Arc::default(),
            delay: self.held.as_ref().map(|held| health::DelayParts {
                store: held.store.clone(),
                view: held.view.clone(),
                input_read: held.input_read.clone(),
            }),
            retries: self
                .retrying
                .as_ref()
                .map(|retrying| (retrying.store.clone(), retrying.ladder.clone())),
        }
    }
}

impl PipelineHandler {
    /// What to do with record `element` of those the stages made of an input record.
    fn outcome(
        &self,
        element: usize,
        result: Result<Processed, Rejection>,
        kafka_key: &str,
        input: &Input<'_>,
        now: DateTime<Utc>,
    ) -> Outcome {
        let Input {
            topic,
            partition,
            offset,
            original,
        } = *input;
        match result {
            Ok(Processed::Retry {
                record,
                stage,
                reason,
            }) => {
                let Some(retrying) = &self.retrying else {
                    // A handler is built with its ladder's store; unreachable otherwise.
                    return Outcome::DeadLetter {
                        reason_code: "no_retry_store",
                        reason: format!("{reason}; and the pipeline has no store for retries"),
                    };
                };
                let Some(wait) = retrying.ladder.wait_after(1) else {
                    return Outcome::DeadLetter {
                        reason_code: "retries_exhausted",
                        reason,
                    };
                };
                let retry = PendingRetry {
                    id: PendingRetry::id_of_element(topic, partition, offset, element),
                    kafka_key: kafka_key.to_string(),
                    record: serde_json::to_vec(&record).unwrap_or_default(),
                    stage,
                    attempts: vec![Attempt { at: now, reason }],
                    source_topic: topic.to_string(),
                    source_partition: partition,
                    source_offset: offset,
                    due_ms: now.timestamp_millis() + wait.as_millis() as i64,
                    original: original.map(<[u8]>::to_vec),
                };
                match retrying.batch.lock() {
                    Ok(mut batch) => {
                        batch.push(retry);
                        Outcome::Absorbed
                    }
                    Err(_) => Outcome::DeadLetter {
                        reason_code: "no_retry_store",
                        reason: "the retry ladder's batch lock is poisoned".into(),
                    },
                }
            }
            Ok(Processed::Done(record)) => Outcome::Produce {
                topic: self.output,
                key: kafka_key.to_string(),
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
                let session = held_session(&held.delay, record, session, kafka_key, input, now);
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
}

/// Where a record came from, and the input record as it was read: what a dead letter
/// carries, so that a replay puts back what came in, not what the stages made of it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Input<'a> {
    pub topic: &'a str,
    pub partition: i32,
    pub offset: i64,
    /// None when larger than a dead letter keeps whole (a replay could not use it).
    pub original: Option<&'a [u8]>,
}

impl<'a> Input<'a> {
    pub fn new(topic: &'a str, partition: i32, offset: i64, value: &'a [u8]) -> Self {
        Self {
            topic,
            partition,
            offset,
            original: (value.len() <= kg_shared::dlq::ORIGINAL_LIMIT).then_some(value),
        }
    }
}

/// The row of a record the delay stage holds as `session`, from `input` keyed
/// `kafka_key`, at `now`.
pub(crate) fn held_session(
    delay: &Delay,
    record: Record,
    session: String,
    kafka_key: &str,
    input: &Input<'_>,
    now: DateTime<Utc>,
) -> HeldSession {
    let held_at = delay::held_from(delay, &record, now);
    let (due, first_check) = delay::schedule(delay, held_at);
    let kind = if delay::ends_hold(delay, &record) {
        SessionKind::Ended
    } else {
        SessionKind::Held
    };
    // An ending record with nothing to end passes on at once.
    let (due_ms, next_check_ms) = if kind == SessionKind::Ended {
        (now.timestamp_millis(), now.timestamp_millis())
    } else {
        (due.timestamp_millis(), first_check.timestamp_millis())
    };
    HeldSession {
        session,
        kafka_key: kafka_key.to_string(),
        record: serde_json::to_vec(&record).unwrap_or_default(),
        original: input.original.map(<[u8]>::to_vec),
        source_topic: input.topic.to_string(),
        source_partition: input.partition,
        source_offset: input.offset,
        held_at_ms: held_at.timestamp_millis(),
        due_ms,
        next_check_ms,
        kind,
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
        let source = Input::new(topic, partition, offset, value);
        let mut outcomes: Vec<Outcome> = self
            .stages
            .process(value, now)
            .into_iter()
            .enumerate()
            .map(|(element, result)| self.outcome(element, result, &kafka_key, &source, now))
            .collect();
        match outcomes.len() {
            // A split of an empty list: nothing to do.
            0 => Outcome::Ignored,
            1 => outcomes.remove(0),
            _ => Outcome::Many(outcomes),
        }
    }

    /// Writes (and syncs) the retries and the sessions this batch held; kept for the next
    /// try on failure.
    fn flush(&self) -> Result<(), FlushError> {
        if let Some(retrying) = &self.retrying {
            let Ok(mut batch) = retrying.batch.lock() else {
                return Err(FlushError::Held(
                    "the retry ladder's batch lock is poisoned".into(),
                ));
            };
            if !batch.is_empty() {
                // The fsync blocks: off the runtime's async threads.
                let added = tokio::task::block_in_place(|| retrying.store.add(&batch))
                    .map_err(|error| FlushError::Held(error.to_string()))?;
                batch.clear();
                if let Some(metrics) = &retrying.metrics {
                    metrics.count_retries("scheduled", added);
                }
            }
        }
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
        if let Some(metrics) = &held.metrics {
            for (outcome, count) in [
                ("superseded", holding.replaced),
                ("ended", holding.ended),
                ("repeat", holding.repeats),
            ] {
                if count > 0 {
                    metrics
                        .delay_released
                        .get_or_create(&OutcomeLabel {
                            outcome: outcome.into(),
                        })
                        .inc_by(count as u64);
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
