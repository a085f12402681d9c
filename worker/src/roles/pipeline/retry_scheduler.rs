//! The retry ladder's attempts, beside the worker's consuming loop (which never waits for
//! them: a record sent up the ladder is absorbed, and its input offset committed once the
//! retry is synced in the store). Wakes at the earliest due retry (at most a second away,
//! since the loop keeps adding retries), runs each due record through the stages again
//! from the one that failed, and carries out what became of it: sent to the output, held
//! by a later delay stage, dead-lettered, or, failing again, moved up the ladder; after
//! the last rung it is dead-lettered with every attempt's reason (`retries_exhausted`).
//! A retry leaves the store only once what it became is acknowledged (or synced, for a
//! hold), so a crash at any point attempts it again rather than never.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use kg_shared::dlq::{Attempt, DeadLetter};
use kg_shared::pipeline_template::{Delay, RetryLadder};
use kg_shared::topics::DLQ_NORMALIZED;
use rdkafka::error::KafkaError;
use rdkafka::producer::{DeliveryFuture, FutureProducer};
use tokio::sync::watch;
use tracing::{debug, info, warn};

use super::pending::{HeldSession, PendingStore};
use super::retries::{PendingRetry, RetryStore, RetryStoreError};
use super::scheduler::{acknowledged, blocking, deliver, enqueue, report_pending, Outgoing};
use super::{held_session, Input, Processed, Record, Stages};
use crate::metrics::{ReasonLabel, WorkerMetrics};
use crate::pipeline::{is_permanent, MAX_OUTPUT_BYTES};

/// Retries attempted per pass, at most; and at most this many bytes of their records.
const PASS_BATCH: usize = 10_000;
const PASS_BATCH_BYTES: usize = 16 * 1024 * 1024;
/// Retries attempted before their records are handed to Kafka, within a pass.
const ENQUEUE_CHUNK: usize = 1_000;
/// The longest the scheduler sleeps: the loop may add a retry due sooner meanwhile.
const MAX_WAIT: Duration = Duration::from_secs(1);
/// How long a retry whose outcome Kafka did not take for now waits before it is tried
/// again (a broker away, not the stage: the ladder does not move).
const KAFKA_RETRY_AFTER: chrono::Duration = chrono::Duration::seconds(1);

/// Everything the retry scheduler needs from the pipeline's handler.
pub struct RetryTask {
    pub ladder: RetryLadder,
    pub stages: Stages,
    pub store: Arc<RetryStore>,
    pub output: String,
    /// The delay stage after the failed one, if the pipeline has one: a record that gets
    /// through is held there.
    pub holding: Option<Holding>,
}

/// A delay stage's decisions and store, for records that reach it from the ladder.
pub struct Holding {
    pub delay: Delay,
    pub store: Arc<PendingStore>,
}

/// What an attempt's record became, as Kafka is asked to take it.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Became {
    Delivered,
    DeadLettered(&'static str),
}

/// One record to produce for a retry (its index in the pass).
struct Out {
    retry: usize,
    became: Became,
    topic: String,
    key: String,
    value: Vec<u8>,
}

impl Outgoing for Out {
    fn topic(&self) -> &str {
        &self.topic
    }
    fn key(&self) -> &str {
        &self.key
    }
    fn value(&self) -> &[u8] {
        &self.value
    }
}

/// What one attempt of one retry decided.
#[derive(Default)]
struct Attempted {
    outs: Vec<Out>,
    holds: Vec<HeldSession>,
    /// Retries to write: this one up a rung, or (when the stages made several records of
    /// it) those of them that failed again.
    again: Vec<PendingRetry>,
}

/// Runs until `shutdown` turns true. A pass that fails (the store, Kafka) is logged and
/// tried again: nothing is lost, the retries stay where they were.
pub async fn run(
    task: RetryTask,
    producer: FutureProducer,
    metrics: Arc<WorkerMetrics>,
    mut shutdown: watch::Receiver<bool>,
) {
    info!(ladder = ?task.ladder.delays, "retry ladder running");
    // The previous pass's settlement, written while the next pass runs.
    let mut settling: Option<Settling> = None;
    loop {
        task.report(&metrics);
        let wait = match (&settling, blocking(|| task.store.next_due())) {
            (Some(_), _) => Duration::ZERO,
            (None, Ok(Some(next))) => Duration::from_millis(
                (next - Utc::now().timestamp_millis()).clamp(0, MAX_WAIT.as_millis() as i64) as u64,
            ),
            (None, _) => MAX_WAIT,
        };
        tokio::select! {
            _ = shutdown.changed() => {}
            _ = tokio::time::sleep(wait) => {}
        }
        if *shutdown.borrow() {
            finish(settling).await;
            return;
        }
        let started = task
            .start_pass(&producer, &metrics, Utc::now(), settling.as_ref())
            .await;
        finish(settling.take()).await;
        match started {
            Ok(next) => settling = next,
            Err(error) => {
                warn!(%error, "retry pass failed; trying again");
                tokio::time::sleep(MAX_WAIT).await;
            }
        }
    }
}

/// A pass's settlement (what went out removed, what failed again moved up its rung),
/// written on a blocking thread while the next pass is attempted.
pub struct Settling {
    /// The pass's retries, which the next pass leaves out until this is written.
    ids: HashSet<String>,
    /// The last of them in the order retries are taken, `(due_ms, id)`: the next pass
    /// reads from after it.
    last: (i64, String),
    write: tokio::task::JoinHandle<Result<(), RetryStoreError>>,
}

impl Settling {
    async fn written(self) -> Result<(), RetryStoreError> {
        self.write
            .await
            .unwrap_or_else(|join| Err(RetryStoreError::Stopped(join.to_string())))
    }
}

/// Waits for a settlement; one that failed leaves its retries where they were, attempted
/// again (at-least-once).
async fn finish(settling: Option<Settling>) {
    if let Some(settling) = settling {
        if let Err(error) = settling.written().await {
            warn!(%error, "settling a retry pass failed; its retries are attempted again");
        }
    }
}

impl RetryTask {
    /// Sets the pending gauges from the store.
    fn report(&self, metrics: &WorkerMetrics) {
        let stats = blocking(|| self.store.stats());
        report_pending(stats, &metrics.retry_pending, &metrics.retry_next_due);
    }

    /// One pass over the retries due at or before `now`, settled when it returns.
    pub async fn pass(
        &self,
        producer: &FutureProducer,
        metrics: &WorkerMetrics,
        now: DateTime<Utc>,
    ) -> Result<(), RetryStoreError> {
        match self.start_pass(producer, metrics, now, None).await? {
            Some(settling) => settling.written().await,
            None => Ok(()),
        }
    }

    /// One pass over the retries due at or before `now`, but those of `previous` (whose
    /// settlement may not be written yet): attempted, their records acknowledged, and
    /// their settlement started; None when none was due.
    async fn start_pass(
        &self,
        producer: &FutureProducer,
        metrics: &WorkerMetrics,
        now: DateTime<Utc>,
        previous: Option<&Settling>,
    ) -> Result<Option<Settling>, RetryStoreError> {
        let began = std::time::Instant::now();
        let due = self.select(now, previous)?;
        if due.is_empty() {
            return Ok(None);
        }
        let selected = began.elapsed();
        // Attempted a chunk at a time, each chunk's records enqueued before the next is
        // attempted, so that Kafka takes them while the stages run.
        let mut enqueued = Vec::new();
        let mut plans = Vec::with_capacity(due.len());
        for chunk in due.chunks(ENQUEUE_CHUNK) {
            let attempts: Vec<Attempted> =
                blocking(|| chunk.iter().map(|retry| self.attempt(retry, now)).collect());
            for mut attempted in attempts {
                for mut out in attempted.outs.drain(..) {
                    out.retry = plans.len();
                    let delivery = enqueue(producer, &out);
                    enqueued.push((out, delivery));
                }
                plans.push(attempted);
            }
        }
        let attempted = began.elapsed();
        let (acked, mut unsettled) = self.produce(producer, &due, enqueued, now).await;
        self.hold(&plans, &mut unsettled);
        let acked_at = Utc::now();
        let produced = began.elapsed();
        let mut done = Vec::new();
        let mut pending = Vec::new();
        for (index, (retry, plan)) in due.iter().zip(plans).enumerate() {
            if unsettled[index] {
                // Kafka or the store, not the stage: the same rung, a second later.
                pending.push(PendingRetry {
                    due_ms: (now + KAFKA_RETRY_AFTER).timestamp_millis(),
                    ..retry.clone()
                });
                continue;
            }
            done.push(retry.id.clone());
            metrics.count_retries("held", plan.holds.len());
            metrics.count_retries("scheduled", plan.again.len());
            pending.extend(plan.again);
            let late_ms = acked_at.timestamp_millis() - retry.due_ms;
            metrics
                .retry_lateness
                .observe(late_ms.max(0) as f64 / 1000.0);
        }
        self.forget_given_up(&due, &acked, &unsettled);
        count(metrics, acked.iter().filter(|out| !unsettled[out.retry]));
        debug!(
            retries = due.len(),
            select_ms = selected.as_millis() as u64,
            attempt_and_enqueue_ms = (attempted - selected).as_millis() as u64,
            acked_ms = (produced - attempted).as_millis() as u64,
            "retry pass"
        );
        let store = self.store.clone();
        let write = tokio::task::spawn_blocking(move || store.settle(&done, &pending));
        let last = due
            .last()
            .map(|retry| (retry.due_ms, retry.id.clone()))
            .unwrap_or_default();
        Ok(Some(Settling {
            ids: due.into_iter().map(|retry| retry.id).collect(),
            last,
            write,
        }))
    }

    /// The retries a pass takes at `now`: from after the previous pass (whose rows, the
    /// first due, may not be settled yet: read past without reading them), and, when that
    /// does not fill the pass, from the start too, leaving out the previous pass's and
    /// those already taken: a retry due before the previous pass's last (one moved a
    /// second on after a Kafka failure, one whose settlement failed) waits at most until a
    /// pass is not full, never for good.
    fn select(
        &self,
        now: DateTime<Utc>,
        previous: Option<&Settling>,
    ) -> Result<Vec<PendingRetry>, RetryStoreError> {
        let now_ms = now.timestamp_millis();
        let Some(previous) = previous else {
            return blocking(|| {
                self.store
                    .due_except(now_ms, PASS_BATCH, PASS_BATCH_BYTES, None, &HashSet::new())
            });
        };
        let after = Some((previous.last.0, previous.last.1.as_str()));
        let mut due = blocking(|| {
            self.store
                .due_except(now_ms, PASS_BATCH, PASS_BATCH_BYTES, after, &previous.ids)
        })?;
        if due.len() < PASS_BATCH {
            let mut leave_out = previous.ids.clone();
            leave_out.extend(due.iter().map(|retry| retry.id.clone()));
            let more = blocking(|| {
                self.store.due_except(
                    now_ms,
                    PASS_BATCH - due.len(),
                    PASS_BATCH_BYTES,
                    None,
                    &leave_out,
                )
            })?;
            due.extend(more);
            // In the order retries are taken, so that the next pass reads from after the
            // last of them.
            due.sort_by(|a, b| (a.due_ms, &a.id).cmp(&(b.due_ms, &b.id)));
        }
        Ok(due)
    }

    /// Produces the pass's records and waits for Kafka: the acknowledged, and for each
    /// retry whether Kafka did not take all of its records, for now. A record Kafka
    /// refuses for good is dead-lettered instead.
    async fn produce(
        &self,
        producer: &FutureProducer,
        due: &[PendingRetry],
        enqueued: Vec<(Out, Result<DeliveryFuture, KafkaError>)>,
        now: DateTime<Utc>,
    ) -> (Vec<Out>, Vec<bool>) {
        let mut unsettled = vec![false; due.len()];
        let (mut delivered, failed) = acknowledged(enqueued).await;
        let letters: Vec<Out> = failed
            .into_iter()
            .filter_map(|(out, error)| {
                if is_permanent(&error) && out.became == Became::Delivered {
                    Some(self.refused(&due[out.retry], out, &error, now))
                } else {
                    warn!(retry = %due[out.retry].id, topic = %out.topic, %error, "producing a retry's outcome failed; it is attempted again");
                    unsettled[out.retry] = true;
                    None
                }
            })
            .collect();
        let (lettered, failed) = deliver(producer, letters).await;
        for (out, error) in failed {
            warn!(retry = %due[out.retry].id, %error, "dead-lettering a retry failed; it is attempted again");
            unsettled[out.retry] = true;
        }
        delivered.extend(lettered);
        (delivered, unsettled)
    }

    /// The delay's sessions whose retries were given up (dead-lettered after the last
    /// rung): their markers go, so that Alertmanager's next re-send of the alert, never
    /// emitted, is held and emitted again rather than dropped as a repeat for a day.
    fn forget_given_up(&self, due: &[PendingRetry], acked: &[Out], unsettled: &[bool]) {
        let Some(holding) = &self.holding else {
            return;
        };
        let sessions: Vec<String> = acked
            .iter()
            .filter(|out| {
                out.became == Became::DeadLettered("retries_exhausted") && !unsettled[out.retry]
            })
            .filter_map(|out| due[out.retry].session().map(str::to_string))
            .collect();
        if let Err(error) = blocking(|| holding.store.forget_markers(&sessions)) {
            // The markers expire within a day; until then the alert's re-sends are repeats.
            warn!(%error, "forgetting the markers of sessions given up failed");
        }
    }

    /// Holds what got through to a later delay stage (synced) before the retries that
    /// became them are removed; a crash between the two holds them again, which the store
    /// takes as a redelivery. On failure those retries stay unsettled.
    fn hold(&self, plans: &[Attempted], unsettled: &mut [bool]) {
        let holds: Vec<HeldSession> = plans
            .iter()
            .enumerate()
            .filter(|(index, _)| !unsettled[*index])
            .flat_map(|(_, plan)| plan.holds.iter().cloned())
            .collect();
        let (false, Some(holding)) = (holds.is_empty(), &self.holding) else {
            return;
        };
        if let Err(error) = blocking(|| holding.store.hold(&holds)) {
            warn!(%error, "holding records from the retry ladder failed; they are attempted again");
            for (index, plan) in plans.iter().enumerate() {
                unsettled[index] |= !plan.holds.is_empty();
            }
        }
    }

    /// Runs `retry` through the stages again, from the one that failed, at `now`.
    fn attempt(&self, retry: &PendingRetry, now: DateTime<Utc>) -> Attempted {
        let mut attempted = Attempted::default();
        let record: Record = match serde_json::from_slice(&retry.record) {
            Ok(record) => record,
            Err(error) => {
                // Written by this worker from a record; kept rather than lost if it is not.
                attempted.outs.push(self.dead_letter(
                    retry,
                    "undecodable",
                    format!("the retry's record cannot be read back: {error}"),
                    &retry.record,
                    retry.attempts.clone(),
                    now,
                ));
                return attempted;
            }
        };
        let results = self.stages.retry_at(record, retry.stage, now);
        let several = results.len() > 1;
        for (element, result) in results.into_iter().enumerate() {
            match result {
                Ok(Processed::Done(record)) => {
                    let value = serde_json::to_vec(&record).unwrap_or_default();
                    attempted
                        .outs
                        .push(self.output_or_letter(retry, value, now));
                }
                Ok(Processed::Held { record, session }) => match &self.holding {
                    Some(holding) => attempted.holds.push(held_session(
                        &holding.delay,
                        record,
                        session,
                        &retry.kafka_key,
                        &Input {
                            topic: &retry.source_topic,
                            partition: retry.source_partition,
                            offset: retry.source_offset,
                            original: retry.original.as_deref(),
                        },
                        now,
                    )),
                    None => attempted.outs.push(self.dead_letter(
                        retry,
                        "no_delay_store",
                        "the pipeline holds records but has no store for them".into(),
                        &retry.record,
                        retry.attempts.clone(),
                        now,
                    )),
                },
                Ok(Processed::Retry {
                    record,
                    stage,
                    reason,
                }) => {
                    let id = if several {
                        format!("{}.{element}", retry.id)
                    } else {
                        retry.id.clone()
                    };
                    match self.climb(retry, id, (record, stage, reason), now) {
                        Ok(again) => attempted.again.push(again),
                        Err(letter) => attempted.outs.push(letter),
                    }
                }
                Err(rejection) => attempted.outs.push(self.dead_letter(
                    retry,
                    rejection.reason_code(),
                    rejection.to_string(),
                    &retry.record,
                    retry.attempts.clone(),
                    now,
                )),
            }
        }
        attempted
    }

    /// A record that failed again at `stage` for `reason`: up the next rung, as retry `id`,
    /// or past the last one, to the dead-letter topic with every attempt's reason.
    fn climb(
        &self,
        retry: &PendingRetry,
        id: String,
        (record, stage, reason): (Record, usize, String),
        now: DateTime<Utc>,
    ) -> Result<PendingRetry, Out> {
        let mut attempts = retry.attempts.clone();
        attempts.push(Attempt { at: now, reason });
        let value = serde_json::to_vec(&record).unwrap_or_default();
        let failures = u32::try_from(attempts.len()).unwrap_or(u32::MAX);
        if let Some(wait) = self.ladder.wait_after(failures) {
            return Ok(PendingRetry {
                id,
                record: value,
                stage,
                attempts,
                due_ms: now.timestamp_millis() + wait.as_millis() as i64,
                ..retry.clone()
            });
        }
        let reason = format!(
            "{} attempts failed and the retry ladder's last rung passed; the last: {}",
            attempts.len(),
            attempts.last().map_or("", |a| a.reason.as_str())
        );
        Err(self.dead_letter(retry, "retries_exhausted", reason, &value, attempts, now))
    }

    /// The output record, or its dead letter when it is too large for Kafka.
    fn output_or_letter(&self, retry: &PendingRetry, value: Vec<u8>, now: DateTime<Utc>) -> Out {
        if value.len() <= MAX_OUTPUT_BYTES {
            return Out {
                retry: 0,
                became: Became::Delivered,
                topic: self.output.clone(),
                key: retry.kafka_key.clone(),
                value,
            };
        }
        let reason = format!(
            "the output record would be {} bytes, more than the {MAX_OUTPUT_BYTES} a record may have",
            value.len()
        );
        let attempts = retry.attempts.clone();
        self.dead_letter(retry, "output_too_large", reason, &value, attempts, now)
    }

    /// The dead letter of an output Kafka refused for good.
    fn refused(
        &self,
        retry: &PendingRetry,
        out: Out,
        error: &KafkaError,
        now: DateTime<Utc>,
    ) -> Out {
        let reason = format!(
            "Kafka refused the output record on {} for good: {error}",
            out.topic
        );
        let mut letter = self.dead_letter(
            retry,
            "output_refused",
            reason,
            &out.value,
            retry.attempts.clone(),
            now,
        );
        letter.retry = out.retry;
        letter
    }

    fn dead_letter(
        &self,
        retry: &PendingRetry,
        reason_code: &'static str,
        reason: String,
        record: &[u8],
        attempts: Vec<Attempt>,
        now: DateTime<Utc>,
    ) -> Out {
        let letter = DeadLetter::new(
            reason_code,
            reason,
            &retry.source_topic,
            retry.source_partition,
            retry.source_offset,
            Some(retry.kafka_key.as_bytes()),
            // What came in, for a replay; what the stages made of it if that was too large.
            Some(retry.original.as_deref().unwrap_or(record)),
            Some(self.stages.client()),
            now,
        )
        .with_attempts(attempts);
        Out {
            retry: 0,
            became: Became::DeadLettered(reason_code),
            topic: DLQ_NORMALIZED.to_string(),
            key: retry.kafka_key.clone(),
            value: letter.to_json(),
        }
    }
}

/// Counts what the acknowledged records of settled retries became.
fn count<'a>(metrics: &WorkerMetrics, acked: impl Iterator<Item = &'a Out>) {
    for out in acked {
        match out.became {
            Became::Delivered => {
                metrics.records_out.inc();
                metrics.count_retries("delivered", 1);
            }
            Became::DeadLettered(reason) => {
                metrics.dlq_total.inc();
                metrics
                    .dlq
                    .get_or_create(&ReasonLabel {
                        reason: reason.into(),
                    })
                    .inc();
                let outcome = if reason == "retries_exhausted" {
                    "exhausted"
                } else {
                    "dead_lettered"
                };
                metrics.count_retries(outcome, 1);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::roles::pipeline::PipelineHandler;
    use crate::roles::{Outcome, RecordHandler};
    use kg_shared::pipeline_template::PipelineTemplates;
    use kg_shared::ClientId;
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::{ClientConfig, Message};
    use serde_json::{json, Value};

    /// A pipeline whose graph stage retries, on a ladder of 1 and 2 minutes.
    const RETRYING: &str = r#"
[[pipeline]]
name = "pods"
input = ["alerts.raw"]
output = "alerts.enriched"
retry = { delays = ["1m", "2m"] }

[[pipeline.stage]]
kind = "validate"
required = ["pod"]

[[pipeline.stage]]
kind = "graph"
namespace = "namespace"
resources = { pod = "Pod" }
on_unavailable = "retry"
"#;

    /// An embedded broker, and a producer to it that gives up on a record after 5 s.
    fn broker_and_producer() -> (kg_shared::kafka::EmbeddedBroker, FutureProducer) {
        let broker = kg_shared::kafka::EmbeddedBroker::start(1).unwrap();
        let producer = ClientConfig::new()
            .set("bootstrap.servers", broker.bootstrap_servers())
            .set("message.timeout.ms", "5000")
            .create()
            .unwrap();
        (broker, producer)
    }

    struct Retrying {
        broker: kg_shared::kafka::EmbeddedBroker,
        producer: FutureProducer,
        handler: PipelineHandler,
        task: RetryTask,
        data: tempfile::TempDir,
    }

    fn retrying() -> Retrying {
        let (broker, producer) = broker_and_producer();
        let templates = PipelineTemplates::parse(RETRYING, std::path::Path::new("t.toml")).unwrap();
        let data = tempfile::tempdir().unwrap();
        let handler = PipelineHandler::new(
            templates.get("pods").unwrap(),
            ClientId::parse("af-9").unwrap(),
            data.path(),
        )
        .unwrap();
        let task = handler.retry_task().expect("a stage retries");
        Retrying {
            broker,
            producer,
            handler,
            task,
            data,
        }
    }

    /// Every record of `topic` on `bootstrap`, as JSON, read until `count` are there (or
    /// 10 s passed).
    fn read(bootstrap: &str, topic: &str, count: usize) -> Vec<Value> {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", bootstrap)
            .set("group.id", "retry-test-reader")
            .set("auto.offset.reset", "earliest")
            .create()
            .unwrap();
        consumer.subscribe(&[topic]).unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let mut records = Vec::new();
        while records.len() < count && std::time::Instant::now() < deadline {
            if let Some(Ok(message)) = consumer.poll(Duration::from_millis(200)) {
                records.push(serde_json::from_slice(message.payload().unwrap()).unwrap());
            }
        }
        records
    }

    fn retries(metrics: &WorkerMetrics, outcome: &str) -> u64 {
        metrics
            .retries
            .get_or_create(&crate::metrics::OutcomeLabel {
                outcome: outcome.into(),
            })
            .get()
    }

    fn alert(handler: &PipelineHandler, offset: i64) -> Outcome {
        let value = json!({"pod": "checkout-1", "namespace": "shop"}).to_string();
        handler.handle_at(
            "alerts.raw",
            0,
            offset,
            None,
            Some(b"af-9::a1"),
            Some(value.as_bytes()),
        )
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_record_whose_graph_stays_away_climbs_the_ladder_then_is_dead_lettered_with_every_attempt(
    ) {
        let Retrying {
            broker,
            producer,
            handler,
            task,
            data: _data,
        } = retrying();
        let metrics = WorkerMetrics::new("af-9", "pipeline");
        let start = Utc::now();
        assert!(matches!(alert(&handler, 5), Outcome::Absorbed));
        // Not in the store until the batch is flushed (before its offsets are committed),
        // and once only, however often its input is redelivered.
        assert_eq!(task.store.stats().unwrap().0, 0);
        handler.flush().unwrap();
        assert!(matches!(alert(&handler, 5), Outcome::Absorbed));
        handler.flush().unwrap();
        let (pending, due) = task.store.stats().unwrap();
        assert_eq!(pending, 1);
        let first_due = due.unwrap();
        assert!((first_due - start.timestamp_millis() - 60_000).abs() < 5_000);

        // Before its time: nothing. At it: the graph is still missing, up a rung (2 min).
        let at = |ms: i64| DateTime::from_timestamp_millis(ms).unwrap();
        task.pass(&producer, &metrics, at(first_due - 1))
            .await
            .unwrap();
        assert_eq!(task.store.stats().unwrap(), (1, Some(first_due)));
        task.pass(&producer, &metrics, at(first_due)).await.unwrap();
        let second_due = first_due + 120_000;
        assert_eq!(task.store.stats().unwrap(), (1, Some(second_due)));
        // Past the last rung: dead-lettered with all three attempts' reasons.
        task.pass(&producer, &metrics, at(second_due))
            .await
            .unwrap();
        assert_eq!(task.store.stats().unwrap(), (0, None));
        assert_eq!(retries(&metrics, "exhausted"), 1);
        assert_eq!(metrics.dlq_total.get(), 1);
        let letters = read(&broker.bootstrap_servers(), DLQ_NORMALIZED, 1);
        assert_eq!(letters.len(), 1, "{letters:?}");
        let letter: DeadLetter = serde_json::from_value(letters[0].clone()).unwrap();
        assert_eq!(letter.reason_code, "retries_exhausted");
        assert_eq!(letter.source_topic, "alerts.raw");
        assert_eq!(letter.source_offset, 5);
        assert_eq!(letter.key.as_deref(), Some("af-9::a1"));
        assert_eq!(letter.attempts.len(), 3, "{letter:?}");
        assert!(letter
            .attempts
            .iter()
            .all(|a| a.reason.contains("no graph yet")));
        assert_eq!(letter.attempts[1].at, at(first_due));
        assert_eq!(letter.attempts[2].at, at(second_due));
        // The input as it came in, for a replay after the fix.
        assert_eq!(
            letter.original.as_deref(),
            Some(
                json!({"pod": "checkout-1", "namespace": "shop"})
                    .to_string()
                    .as_str()
            )
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_record_is_delivered_enriched_on_the_first_attempt_after_its_graph_appears() {
        let Retrying {
            broker,
            producer,
            handler,
            task,
            data,
        } = retrying();
        let metrics = WorkerMetrics::new("af-9", "pipeline");
        assert!(matches!(alert(&handler, 9), Outcome::Absorbed));
        assert!(matches!(alert(&handler, 10), Outcome::Absorbed));
        handler.flush().unwrap();
        // Both due within the same second or so.
        let due = task.store.stats().unwrap().1.unwrap() + 1_000;
        // The graph builder writes the client's graph meanwhile.
        let client = ClientId::parse("af-9").unwrap();
        crate::roles::graph_builder::open_store(data.path(), &client).unwrap();

        // Kafka away: the retries stay on their rung and are attempted a second later.
        broker.broker_down(1).unwrap();
        let at = DateTime::from_timestamp_millis(due).unwrap();
        task.pass(&producer, &metrics, at).await.unwrap();
        let left = task.store.due(i64::MAX, 10, usize::MAX).unwrap();
        assert_eq!(left.len(), 2);
        for retry in &left {
            assert_eq!(retry.due_ms, (at + KAFKA_RETRY_AFTER).timestamp_millis());
            assert_eq!(
                retry.attempts.len(),
                1,
                "Kafka's failure is not the stage's"
            );
        }
        assert_eq!(retries(&metrics, "delivered"), 0);

        broker.broker_up(1).unwrap();
        task.pass(&producer, &metrics, at + KAFKA_RETRY_AFTER)
            .await
            .unwrap();
        assert_eq!(task.store.stats().unwrap(), (0, None));
        assert_eq!(retries(&metrics, "delivered"), 2);
        assert_eq!(metrics.records_out.get(), 2);
        let out = read(&broker.bootstrap_servers(), "alerts.enriched", 2);
        assert_eq!(out.len(), 2);
        for record in out {
            assert_eq!(record["pod"], "checkout-1");
            assert_eq!(record["graph_status"], "not_in_graph");
        }
    }

    const ALERTS: &str = include_str!("../../../../examples/pipelines/alert-enrichment.toml");

    /// The shipped alert-enrichment template, its graph stage told to retry (and its ladder
    /// `ladder`, if given), for client af-9.
    struct AlertPipeline {
        broker: kg_shared::kafka::EmbeddedBroker,
        producer: FutureProducer,
        handler: PipelineHandler,
        delay: crate::roles::pipeline::scheduler::DelayTask,
        retry: RetryTask,
        data: tempfile::TempDir,
    }

    fn alert_pipeline(ladder: Option<&str>) -> AlertPipeline {
        let (broker, producer) = broker_and_producer();
        let mut text = ALERTS.replace(
            "max_blast_radius = 100\n",
            "max_blast_radius = 100\non_unavailable = \"retry\"\n",
        );
        assert_ne!(text, ALERTS);
        if let Some(ladder) = ladder {
            text = text.replace("default = true\n", &format!("default = true\n{ladder}\n"));
        }
        let templates = PipelineTemplates::parse(&text, std::path::Path::new("a.toml")).unwrap();
        let data = tempfile::tempdir().unwrap();
        let handler = PipelineHandler::new(
            templates.get("alert-enrichment").unwrap(),
            ClientId::parse("af-9").unwrap(),
            data.path(),
        )
        .unwrap();
        let (delay, retry) = (handler.delay_task().unwrap(), handler.retry_task().unwrap());
        AlertPipeline {
            broker,
            producer,
            handler,
            delay,
            retry,
            data,
        }
    }

    /// Alertmanager's payload of alert f1 on checkout-1, firing since 10 minutes ago (its
    /// 5-minute cooling over).
    fn firing() -> String {
        let started = (Utc::now() - chrono::Duration::minutes(10)).to_rfc3339();
        json!({"alerts": [{"status": "firing", "fingerprint": "f1", "startsAt": started,
            "labels": {"alertname": "PodCrashLooping", "pod": "checkout-1", "namespace": "shop"}}]})
        .to_string()
    }

    fn send(handler: &PipelineHandler, payload: &str, offset: i64) -> Outcome {
        handler.handle_at(
            "alerts.raw",
            0,
            offset,
            None,
            Some(b"af-9::am"),
            Some(payload.as_bytes()),
        )
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_alert_whose_graph_is_away_when_it_is_emitted_goes_up_the_ladder_once() {
        let AlertPipeline {
            broker,
            producer,
            handler,
            delay,
            retry,
            data,
        } = alert_pipeline(None);
        let client = ClientId::parse("af-9").unwrap();
        let metrics = WorkerMetrics::new("af-9", "pipeline");
        let payload = firing();
        let send = |offset: i64| send(&handler, &payload, offset);
        assert!(matches!(send(1), Outcome::Absorbed));
        handler.flush().unwrap();
        // Its cooling is over (it started 10 minutes ago): emitted, but the graph is away.
        let now = Utc::now();
        delay.pass(&producer, &metrics, now).await.unwrap();
        assert_eq!(delay.store.stats().unwrap().0, 0, "let go of the delay");
        let pending = retry.store.due(i64::MAX, 10, usize::MAX).unwrap();
        assert_eq!(pending.len(), 1, "{pending:?}");
        assert_eq!(pending[0].id, "alerts.raw/0/1#s:f1");
        // The Alertmanager payload as it came in, kept for a dead letter a replay can use.
        assert_eq!(pending[0].original.as_deref(), Some(payload.as_bytes()));
        assert_eq!(
            pending[0].due_ms,
            (now + chrono::Duration::minutes(5)).timestamp_millis()
        );
        assert_eq!(metrics.records_out.get(), 0);
        // Alertmanager repeats the firing alert: it went on (up the ladder), so it is a
        // repeat, not a new hold.
        assert!(matches!(send(2), Outcome::Absorbed));
        handler.flush().unwrap();
        assert_eq!(delay.store.stats().unwrap().0, 0);

        crate::roles::graph_builder::open_store(data.path(), &client).unwrap();
        let due = DateTime::from_timestamp_millis(pending[0].due_ms).unwrap();
        retry.pass(&producer, &metrics, due).await.unwrap();
        assert_eq!(retry.store.stats().unwrap(), (0, None));
        let out = read(&broker.bootstrap_servers(), "alerts.enriched", 1);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0]["fingerprint"], "f1");
        assert_eq!(out[0]["graph_status"], "not_in_graph");
        assert_eq!(out[0]["processor_id"], "alert-enricher-af-9");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_alert_given_up_on_the_ladder_is_held_again_when_alertmanager_repeats_it() {
        let AlertPipeline {
            broker,
            producer,
            handler,
            delay,
            retry,
            data: _data,
        } = alert_pipeline(Some(r#"retry = { delays = ["1m"] }"#));
        let metrics = WorkerMetrics::new("af-9", "pipeline");
        let payload = firing();
        assert!(matches!(send(&handler, &payload, 1), Outcome::Absorbed));
        handler.flush().unwrap();
        let now = Utc::now();
        delay.pass(&producer, &metrics, now).await.unwrap();
        // Up its one rung and off it: no graph all along.
        let due = now + chrono::Duration::minutes(1);
        retry.pass(&producer, &metrics, due).await.unwrap();
        assert_eq!(retry.store.stats().unwrap(), (0, None));
        let letters = read(&broker.bootstrap_servers(), DLQ_NORMALIZED, 1);
        assert_eq!(letters.len(), 1);
        assert_eq!(letters[0]["reason_code"], "retries_exhausted");
        assert_eq!(letters[0]["attempts"].as_array().map(Vec::len), Some(2));
        assert_eq!(letters[0]["original"], payload.as_str());
        // It never went out, so Alertmanager's re-send is held again, not a repeat.
        assert!(matches!(send(&handler, &payload, 2), Outcome::Absorbed));
        handler.flush().unwrap();
        assert_eq!(delay.store.stats().unwrap().0, 1, "held again");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_retry_due_before_the_previous_passs_last_is_taken_by_the_next_pass() {
        let Retrying {
            broker: _broker,
            task,
            data: _data,
            ..
        } = retrying();
        let retry = |id: &str, due_ms: i64| PendingRetry {
            id: id.into(),
            kafka_key: "af-9::a".into(),
            record: b"{}".to_vec(),
            original: None,
            stage: 1,
            attempts: Vec::new(),
            source_topic: "alerts.raw".into(),
            source_partition: 0,
            source_offset: 1,
            due_ms,
        };
        // "b" is the previous pass's, still being settled; "a", due before it, was moved
        // there since (a Kafka failure's second); "c" is due after it.
        task.store
            .add(&[retry("a", 1_000), retry("b", 2_000), retry("c", 3_000)])
            .unwrap();
        let previous = Settling {
            ids: ["b".to_string()].into(),
            last: (2_000, "b".into()),
            write: tokio::task::spawn_blocking(|| Ok(())),
        };
        let now = DateTime::from_timestamp_millis(5_000).unwrap();
        let taken = task.select(now, Some(&previous)).unwrap();
        let ids: Vec<&str> = taken.iter().map(|r| r.id.as_str()).collect();
        assert_eq!(ids, ["a", "c"]);
    }
}
