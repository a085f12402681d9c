//! The delay stage's emissions, beside the worker's consuming loop: wakes at the earliest
//! next check (at most a second away, since the loop keeps holding new sessions), checks
//! each session whose time has come against the latest state of its key, and emits,
//! diverts, drops or re-schedules it as `delay::decide` says. A session leaves the store
//! only after what it became is acknowledged by Kafka, so a crash at any point emits it
//! again rather than never (at-least-once, like the rest of the pipeline). What Kafka
//! refuses for good (too large, invalid) goes to the dead-letter topic instead, so no
//! session is stuck; what fails for a while is tried again a second later.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::future::join_all;
use kg_shared::dlq::DeadLetter;
use kg_shared::pipeline_template::Delay;
use kg_shared::topics::DLQ_NORMALIZED;
use rdkafka::error::KafkaError;
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use serde_json::{json, Value};
use tokio::sync::watch;
use tracing::{info, warn};

use super::delay::{decide, Step};
use super::input_read::{await_start_end, InputGroup};
use super::pending::{HeldSession, PendingError, PendingStore, SessionKind, SessionVersion};
use super::retries::{PendingRetry, RetryStore};
use super::state::{follow, CatchUp, StateView};
use super::{Processed, Record, Stages};
use crate::metrics::{OutcomeLabel, ReasonLabel, WorkerMetrics};
use crate::pipeline::{is_permanent, MAX_OUTPUT_BYTES};
use kg_shared::dlq::Attempt;
use kg_shared::pipeline_template::RetryLadder;

/// Sessions checked per pass, at most; and at most this many bytes of their records, so
/// a pass of large records stays small in memory.
const CHECK_BATCH: usize = 10_000;
const CHECK_BATCH_BYTES: usize = 16 * 1024 * 1024;
/// The longest the scheduler sleeps: the loop may hold a session due sooner meanwhile.
const MAX_WAIT: Duration = Duration::from_secs(1);
/// How long a session whose emission failed for now waits before it is tried again.
const RETRY_AFTER: chrono::Duration = chrono::Duration::seconds(1);

/// Everything the scheduler needs from the pipeline's handler.
pub struct DelayTask {
    pub delay: Delay,
    pub stages: Stages,
    pub store: Arc<PendingStore>,
    /// Filled by the state topic's reader, which `run` starts when the delay has a check.
    pub view: Arc<StateView>,
    /// Whether the input has been read to where it ended at start, which `run` waits for
    /// when input records may end holds (`end_when`).
    pub input_read: Arc<CatchUp>,
    pub input_topics: Vec<String>,
    pub output: String,
    /// The retry ladder, when a stage after the delay may retry: an emission whose stage
    /// fails for a while goes up it, and the session is let go as gone on.
    pub retries: Option<(Arc<RetryStore>, RetryLadder)>,
}

/// Why the scheduler stopped before it was asked to.
#[derive(Debug, thiserror::Error)]
pub enum SchedulerStopped {
    #[error("the delay stage's state topic reader stopped")]
    StateReader,
}

/// What a checked session becomes.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Release {
    Emitted,
    /// Sent up the retry ladder by a stage after the delay: gone on, like an emission.
    Retrying,
    Diverted,
    Dropped,
    DeadLettered(&'static str),
}

impl Release {
    fn label(self) -> &'static str {
        match self {
            Release::Emitted => "emitted",
            Release::Retrying => "retrying",
            Release::Diverted => "diverted",
            Release::Dropped => "dropped",
            Release::DeadLettered(_) => "dead_lettered",
        }
    }
}

/// What one pass decided.
#[derive(Default)]
struct Pass {
    /// Sessions to look at again, and when (ms).
    rechecks: Vec<(SessionVersion, i64)>,
    /// Violating sessions with nowhere to divert them.
    dropped: Vec<HeldSession>,
    /// Tombstones of ended sessions and markers of released ones whose time is up:
    /// deleted, not counted again.
    expired: Vec<HeldSession>,
    sends: Vec<Send>,
    /// Sessions a stage after the delay failed for a while: up the retry ladder.
    retries: Vec<(HeldSession, PendingRetry)>,
}

/// A record a session becomes, to be acknowledged before the session is let go.
struct Send {
    held: HeldSession,
    release: Release,
    topic: String,
    value: Vec<u8>,
}

/// Runs until `shutdown` turns true; an error when it stopped on its own (its state
/// reader ended), which the worker treats as fatal so that its supervisor restarts it.
/// `input` names the pipeline's consumer group, whose progress the scheduler waits on
/// when input records may end holds.
pub async fn run(
    task: DelayTask,
    kafka: rdkafka::ClientConfig,
    producer: FutureProducer,
    metrics: Arc<WorkerMetrics>,
    input: InputGroup,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), SchedulerStopped> {
    if !task.input_read.is_caught_up() {
        tokio::spawn(await_start_end(
            kafka.clone(),
            input,
            task.input_read.clone(),
            shutdown.clone(),
        ));
    }
    let reader = task.delay.check.as_ref().map(|check| {
        tokio::spawn(follow(
            kafka,
            check.topic.clone(),
            task.delay.clone(),
            task.stages.client().clone(),
            task.view.clone(),
            shutdown.clone(),
        ))
    });
    info!(hold = ?task.delay.hold, check_every = ?task.delay.check_every, "delay stage running");
    loop {
        task.report(&metrics);
        // Until the state topic has been read to its end a check could pass on an old
        // state, and until the input has been read to where it ended at start a session
        // could be emitted that a record in it ends: wait, without spinning on sessions
        // that are already due.
        let ready = task.view.is_caught_up() && task.input_read.is_caught_up();
        let wait = if ready {
            match blocking(|| task.store.next_check()) {
                Ok(Some(next)) => Duration::from_millis(
                    (next - Utc::now().timestamp_millis()).clamp(0, MAX_WAIT.as_millis() as i64)
                        as u64,
                ),
                _ => MAX_WAIT,
            }
        } else {
            MAX_WAIT
        };
        tokio::select! {
            _ = shutdown.changed() => return Ok(()),
            _ = tokio::time::sleep(wait) => {}
        }
        if *shutdown.borrow() {
            return Ok(());
        }
        if reader.as_ref().is_some_and(|reader| reader.is_finished()) {
            return Err(SchedulerStopped::StateReader);
        }
        if !(task.view.is_caught_up() && task.input_read.is_caught_up()) {
            continue;
        }
        if let Err(error) = task.pass(&producer, &metrics, Utc::now()).await {
            warn!(%error, "delay stage pass failed; retrying");
            tokio::time::sleep(MAX_WAIT).await;
        }
    }
}

/// SQLite calls (and the stages' graph reads) block: off the runtime's async threads.
pub(super) fn blocking<T>(work: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(work)
}

/// Sets a store's pending gauges from its `stats()`: how many, and the earliest due time
/// (ms) as seconds since the epoch (0: none).
pub(super) fn report_pending<E>(
    stats: Result<(u64, Option<i64>), E>,
    pending: &prometheus_client::metrics::gauge::Gauge,
    earliest_due: &prometheus_client::metrics::gauge::Gauge,
) {
    if let Ok((count, due)) = stats {
        pending.set(count as i64);
        earliest_due.set(due.map_or(0, |ms| ms.div_euclid(1000)));
    }
}

impl DelayTask {
    /// Sets the pending gauges from the store.
    fn report(&self, metrics: &WorkerMetrics) {
        let stats = blocking(|| self.store.stats());
        report_pending(stats, &metrics.delay_pending, &metrics.delay_oldest_due);
    }

    /// One pass over the sessions whose next check is at or before `now`.
    pub async fn pass(
        &self,
        producer: &FutureProducer,
        metrics: &WorkerMetrics,
        now: DateTime<Utc>,
    ) -> Result<(), PendingError> {
        let sessions = blocking(|| {
            self.store
                .to_check(now.timestamp_millis(), CHECK_BATCH, CHECK_BATCH_BYTES)
        })?;
        let Pass {
            mut rechecks,
            dropped,
            expired,
            sends,
            retries,
        } = blocking(|| self.check(sessions, now));
        // Each session let go, and whether it went to the output (only that leaves a
        // marker, or lets a resolution that ended it meanwhile pass on).
        let mut released: Vec<(SessionVersion, bool)> =
            expired.iter().map(|held| (held.version(), false)).collect();
        self.send_up_the_ladder(retries, metrics, now, &mut released, &mut rechecks);
        for held in dropped {
            self.count(metrics, Release::Dropped, &held);
            released.push((held.version(), false));
        }
        let (delivered, failed) = deliver(producer, sends).await;
        // Refused for good: to the dead-letter topic instead, once.
        let letters: Vec<Send> = failed
            .into_iter()
            .filter_map(|(send, error)| {
                if is_permanent(&error) && !matches!(send.release, Release::DeadLettered(_)) {
                    Some(self.refused(send, &error, now))
                } else {
                    warn!(session = %send.held.session, topic = %send.topic, %error, "emitting a held session failed; it stays held and is tried again");
                    rechecks.push((send.held.version(), (now + RETRY_AFTER).timestamp_millis()));
                    None
                }
            })
            .collect();
        let (lettered, failed) = deliver(producer, letters).await;
        for (send, error) in failed {
            warn!(session = %send.held.session, %error, "dead-lettering a held session failed; it stays held and is tried again");
            rechecks.push((send.held.version(), (now + RETRY_AFTER).timestamp_millis()));
        }
        for send in delivered.into_iter().chain(lettered) {
            self.count(metrics, send.release, &send.held);
            released.push((send.held.version(), send.release == Release::Emitted));
        }
        blocking(|| {
            self.store.recheck(&rechecks)?;
            self.store.release(&released, now.timestamp_millis())
        })?;
        self.report(metrics);
        Ok(())
    }

    /// Writes the retries of sessions a stage after the delay failed for a while (synced),
    /// and lets those sessions go as gone on; on failure they are checked again shortly.
    fn send_up_the_ladder(
        &self,
        retries: Vec<(HeldSession, PendingRetry)>,
        metrics: &WorkerMetrics,
        now: DateTime<Utc>,
        released: &mut Vec<(SessionVersion, bool)>,
        rechecks: &mut Vec<(SessionVersion, i64)>,
    ) {
        if retries.is_empty() {
            return;
        }
        let rows: Vec<PendingRetry> = retries.iter().map(|(_, retry)| retry.clone()).collect();
        let written = match &self.retries {
            Some((store, _)) => blocking(|| store.add(&rows)).map_err(|error| error.to_string()),
            None => Err("the pipeline has no store for retries".into()),
        };
        match written {
            Ok(added) => {
                metrics.count_retries("scheduled", added);
                for (held, _) in retries {
                    self.count(metrics, Release::Retrying, &held);
                    released.push((held.version(), true));
                }
            }
            Err(error) => {
                warn!(%error, "sending held sessions up the retry ladder failed; they stay held and are tried again");
                for (held, _) in retries {
                    rechecks.push((held.version(), (now + RETRY_AFTER).timestamp_millis()));
                }
            }
        }
    }

    /// Counts a session let go, once what it became was acknowledged.
    fn count(&self, metrics: &WorkerMetrics, release: Release, held: &HeldSession) {
        metrics
            .delay_released
            .get_or_create(&OutcomeLabel {
                outcome: release.label().into(),
            })
            .inc();
        match release {
            Release::Emitted => {
                metrics.records_out.inc();
                let late_ms = Utc::now().timestamp_millis() - held.due_ms;
                metrics
                    .delay_lateness
                    .observe(late_ms.max(0) as f64 / 1000.0);
            }
            Release::Retrying => {}
            Release::Diverted | Release::Dropped => {
                metrics.delay_violations.inc();
            }
            Release::DeadLettered(reason) => {
                metrics.dlq_total.inc();
                metrics
                    .dlq
                    .get_or_create(&ReasonLabel {
                        reason: reason.into(),
                    })
                    .inc();
            }
        }
    }

    /// Each session's check: what to send, drop or look at again. Runs the stages after the
    /// delay on what is emitted (a graph stage reads SQLite): off the async threads.
    fn check(&self, sessions: Vec<HeldSession>, now: DateTime<Utc>) -> Pass {
        let mut pass = Pass::default();
        for held in sessions {
            match held.kind {
                SessionKind::Held => {}
                SessionKind::Ended | SessionKind::Released => {
                    pass.expired.push(held);
                    continue;
                }
                SessionKind::PassOn => {
                    self.emit(held, now, &mut pass);
                    continue;
                }
            }
            let due = DateTime::from_timestamp_millis(held.due_ms).unwrap_or(now);
            let state = self
                .delay
                .check
                .as_ref()
                .and_then(|_| self.view.get(&held.session));
            match decide(&self.delay, due, state.as_ref(), now) {
                Step::Recheck { next_check } => {
                    pass.rechecks
                        .push((held.version(), next_check.timestamp_millis()));
                }
                Step::Violated { state } => {
                    let divert = self
                        .delay
                        .check
                        .as_ref()
                        .and_then(|check| check.divert_violations_to.clone());
                    info!(session = %held.session, %state, diverted_to = ?divert, "held session violated its check");
                    match divert {
                        Some(topic) => {
                            let value = self.violation_record(&held, &state, now);
                            pass.sends.push(self.bounded(
                                held,
                                Release::Diverted,
                                topic,
                                value,
                                now,
                            ));
                        }
                        None => pass.dropped.push(held),
                    }
                }
                Step::Emit => self.emit(held, now, &mut pass),
            }
        }
        pass
    }

    /// The send, or its dead letter when the record is too large for Kafka.
    fn bounded(
        &self,
        held: HeldSession,
        release: Release,
        topic: String,
        value: Vec<u8>,
        now: DateTime<Utc>,
    ) -> Send {
        if value.len() <= MAX_OUTPUT_BYTES {
            return Send {
                held,
                release,
                topic,
                value,
            };
        }
        let reason = format!(
            "the output record would be {} bytes, more than the {MAX_OUTPUT_BYTES} a record may have",
            value.len()
        );
        self.dead_letter(held, "output_too_large", reason, now)
    }

    /// The dead letter of a send Kafka refused for good.
    fn refused(&self, send: Send, error: &KafkaError, now: DateTime<Utc>) -> Send {
        let reason = format!(
            "Kafka refused the output record on {} for good: {error}",
            send.topic
        );
        self.dead_letter(send.held, "output_refused", reason, now)
    }

    fn dead_letter(
        &self,
        held: HeldSession,
        reason_code: &'static str,
        reason: String,
        now: DateTime<Utc>,
    ) -> Send {
        let letter = DeadLetter::new(
            reason_code,
            reason,
            &held.source_topic,
            held.source_partition,
            held.source_offset,
            Some(held.kafka_key.as_bytes()),
            // What came in, for a replay; what the stages made of it if that was too large.
            Some(held.original.as_deref().unwrap_or(&held.record)),
            Some(self.stages.client()),
            now,
        );
        Send {
            value: letter.to_json(),
            release: Release::DeadLettered(reason_code),
            topic: DLQ_NORMALIZED.to_string(),
            held,
        }
    }

    /// A due session through the stages after the delay: to the output; if one of them
    /// rejects it, to the dead-letter topic; if one fails for a while, up the retry ladder.
    fn emit(&self, held: HeldSession, now: DateTime<Utc>, pass: &mut Pass) {
        let record: Record = serde_json::from_slice(&held.record).unwrap_or_default();
        match self.stages.resume(record, now) {
            Ok(Processed::Done(record) | Processed::Held { record, .. }) => {
                let value = serde_json::to_vec(&record).unwrap_or_default();
                let output = self.output.clone();
                pass.sends
                    .push(self.bounded(held, Release::Emitted, output, value, now));
            }
            Ok(Processed::Retry {
                record,
                stage,
                reason,
            }) => {
                let wait = self
                    .retries
                    .as_ref()
                    .and_then(|(_, ladder)| ladder.wait_after(1))
                    .unwrap_or_default();
                let retry = PendingRetry {
                    id: PendingRetry::id_of_session(
                        &held.source_topic,
                        held.source_partition,
                        held.source_offset,
                        &held.session,
                    ),
                    kafka_key: held.kafka_key.clone(),
                    record: serde_json::to_vec(&record).unwrap_or_default(),
                    stage,
                    attempts: vec![Attempt { at: now, reason }],
                    source_topic: held.source_topic.clone(),
                    source_partition: held.source_partition,
                    source_offset: held.source_offset,
                    due_ms: now.timestamp_millis() + wait.as_millis() as i64,
                    original: held.original.clone(),
                };
                pass.retries.push((held, retry));
            }
            Err(rejection) => pass.sends.push(self.dead_letter(
                held,
                rejection.reason_code(),
                rejection.to_string(),
                now,
            )),
        }
    }

    /// The held record, with what its check found, for the divert topic.
    fn violation_record(&self, held: &HeldSession, state: &Value, now: DateTime<Utc>) -> Vec<u8> {
        let mut record: Record = serde_json::from_slice(&held.record).unwrap_or_default();
        let field = self
            .delay
            .check
            .as_ref()
            .map(|check| check.field.clone())
            .unwrap_or_default();
        record.insert(
            "delay_violation".into(),
            json!({
                "field": field,
                "state": state,
                "held_at_ms": held.held_at_ms,
                "checked_at": now.to_rfc3339(),
            }),
        );
        serde_json::to_vec(&record).unwrap_or_default()
    }
}

/// A record a scheduler produces: where, keyed how, what.
pub(super) trait Outgoing {
    fn topic(&self) -> &str;
    fn key(&self) -> &str;
    fn value(&self) -> &[u8];
}

impl Outgoing for Send {
    fn topic(&self) -> &str {
        &self.topic
    }
    fn key(&self) -> &str {
        &self.held.kafka_key
    }
    fn value(&self) -> &[u8] {
        &self.value
    }
}

/// Enqueues a record without waiting for Kafka: its delivery, or why it could not be
/// enqueued (librdkafka's queue full).
pub(super) fn enqueue<T: Outgoing>(
    producer: &FutureProducer,
    send: &T,
) -> Result<DeliveryFuture, KafkaError> {
    producer
        .send_result(
            FutureRecord::to(send.topic())
                .key(send.key())
                .payload(send.value()),
        )
        .map_err(|(error, _)| error)
}

/// Waits for each enqueued record's acknowledgement (the schedulers' producer gives up on
/// a record after 30 s): the acknowledged, and the failed with their errors.
pub(super) async fn acknowledged<T>(
    enqueued: Vec<(T, Result<DeliveryFuture, KafkaError>)>,
) -> (Vec<T>, Vec<(T, KafkaError)>) {
    let mut delivered = Vec::new();
    let mut failed = Vec::new();
    for (send, delivery) in enqueued {
        let result = match delivery {
            Ok(delivery) => match delivery.await {
                Ok(Ok(_)) => Ok(()),
                Ok(Err((error, _))) => Err(error),
                Err(_) => Err(KafkaError::Canceled),
            },
            Err(error) => Err(error),
        };
        match result {
            Ok(()) => delivered.push(send),
            Err(error) => failed.push((send, error)),
        }
    }
    (delivered, failed)
}

/// Sends each record and waits for every acknowledgement (the schedulers' producer gives
/// up on a record after 30 s): the acknowledged, and the failed with their errors.
pub(super) async fn deliver<T: Outgoing>(
    producer: &FutureProducer,
    sends: Vec<T>,
) -> (Vec<T>, Vec<(T, KafkaError)>) {
    let deliveries = join_all(sends.iter().map(|send| {
        producer.send(
            FutureRecord::to(send.topic())
                .key(send.key())
                .payload(send.value()),
            Timeout::After(Duration::from_secs(30)),
        )
    }))
    .await;
    let mut delivered = Vec::new();
    let mut failed = Vec::new();
    for (send, delivery) in sends.into_iter().zip(deliveries) {
        match delivery {
            Ok(_) => delivered.push(send),
            Err((error, _)) => failed.push((send, error)),
        }
    }
    (delivered, failed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::roles::pipeline::PipelineHandler;
    use kg_shared::pipeline_template::PipelineTemplates;
    use kg_shared::ClientId;
    use rdkafka::ClientConfig;

    const COOLING: &str = include_str!("../../../../examples/pipelines/server-cooling.toml");

    fn held(server: &str, due_ms: i64, record: Vec<u8>) -> HeldSession {
        HeldSession {
            session: server.into(),
            kafka_key: format!("dc-east::{server}"),
            record,
            original: None,
            source_topic: "servers.poweroff".into(),
            source_partition: 0,
            source_offset: 1,
            held_at_ms: due_ms - 1000,
            due_ms,
            next_check_ms: due_ms,
            kind: SessionKind::Held,
        }
    }

    /// The cooling example's delay task, a broker and a producer to it.
    struct Cooling {
        broker: kg_shared::kafka::EmbeddedBroker,
        producer: FutureProducer,
        client: ClientId,
        task: DelayTask,
        _data: tempfile::TempDir,
    }

    fn cooling() -> Cooling {
        let broker = kg_shared::kafka::EmbeddedBroker::start(1).unwrap();
        let producer: FutureProducer = ClientConfig::new()
            .set("bootstrap.servers", broker.bootstrap_servers())
            .set("message.timeout.ms", "2000")
            .create()
            .unwrap();
        let templates =
            PipelineTemplates::parse(COOLING, std::path::Path::new("server-cooling.toml")).unwrap();
        let client = ClientId::parse("dc-east").unwrap();
        let data = tempfile::tempdir().unwrap();
        let handler = PipelineHandler::new(
            templates.get("server-cooling").unwrap(),
            client.clone(),
            data.path(),
        )
        .unwrap();
        let task = handler.delay_task().unwrap();
        Cooling {
            broker,
            producer,
            client,
            task,
            _data: data,
        }
    }

    fn released(metrics: &WorkerMetrics, outcome: &str) -> u64 {
        metrics
            .delay_released
            .get_or_create(&OutcomeLabel {
                outcome: outcome.into(),
            })
            .get()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_pass_lets_a_session_go_only_once_kafka_acknowledged_what_it_became() {
        let Cooling {
            broker,
            producer,
            client,
            task,
            _data,
        } = cooling();
        for (server, power) in [("srv-1", "off"), ("srv-2", "on"), ("srv-3", "off")] {
            let state = json!({"server_id": server, "power": power}).to_string();
            task.view.apply(
                &task.delay,
                &client,
                Some(format!("dc-east::{server}").as_bytes()),
                Some(state.as_bytes()),
            );
        }
        task.view.set_caught_up(true);
        let now = Utc::now();
        let past = now.timestamp_millis() - 500;
        let record = |server: &str| json!({"server_id": server}).to_string().into_bytes();
        let huge = json!({"server_id": "srv-3", "notes": "x".repeat(MAX_OUTPUT_BYTES)});
        task.store
            .hold(&[
                held("srv-1", past, record("srv-1")),
                held("srv-2", past, record("srv-2")),
                held("srv-3", past, huge.to_string().into_bytes()),
                held("srv-4", now.timestamp_millis() + 60_000, record("srv-4")),
            ])
            .unwrap();
        let metrics = WorkerMetrics::new("dc-east", "pipeline");
        task.pass(&producer, &metrics, now).await.unwrap();
        // srv-1 stayed off: emitted; srv-2 is on: diverted; srv-3's output is too large for
        // Kafka: dead-lettered; srv-4 is not due and its next check is due first.
        assert_eq!(released(&metrics, "emitted"), 1);
        assert_eq!(released(&metrics, "diverted"), 1);
        assert_eq!(released(&metrics, "dead_lettered"), 1);
        assert_eq!(metrics.delay_violations.get(), 1);
        assert_eq!(metrics.dlq_total.get(), 1);
        assert_eq!(metrics.records_out.get(), 1);
        let left = task.store.to_check(i64::MAX, 10, usize::MAX).unwrap();
        assert_eq!(left.len(), 1, "{left:?}");
        assert_eq!(left[0].session, "srv-4");

        // Kafka unreachable: a due session stays held and is tried again a second later.
        task.store
            .hold(&[held("srv-5", past, record("srv-5"))])
            .unwrap();
        task.view.apply(
            &task.delay,
            &client,
            Some(b"dc-east::srv-5"),
            Some(br#"{"server_id": "srv-5", "power": "off"}"#),
        );
        broker.broker_down(1).unwrap();
        task.pass(&producer, &metrics, now).await.unwrap();
        let srv5 = task
            .store
            .to_check(i64::MAX, 10, usize::MAX)
            .unwrap()
            .into_iter()
            .find(|s| s.session == "srv-5")
            .expect("srv-5 is still held");
        assert_eq!(srv5.next_check_ms, (now + RETRY_AFTER).timestamp_millis());
        assert_eq!(released(&metrics, "emitted"), 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_resolution_passing_on_is_emitted_unchecked_and_a_tombstone_goes_unemitted() {
        let Cooling {
            broker: _broker,
            producer,
            client,
            task,
            _data,
        } = cooling();
        // srv-1's state says "on": a held session would be a violation, but a record
        // passing on is not checked.
        task.view.apply(
            &task.delay,
            &client,
            Some(b"dc-east::srv-1"),
            Some(br#"{"server_id": "srv-1", "power": "on"}"#),
        );
        task.view.set_caught_up(true);
        let now = Utc::now();
        let past = now.timestamp_millis() - 500;
        let record = |server: &str| json!({"server_id": server}).to_string().into_bytes();
        // srv-1's resolution ends nothing (passes on); srv-2's ends its held session.
        task.store
            .hold(&[
                HeldSession {
                    kind: SessionKind::Ended,
                    ..held("srv-1", past, record("srv-1"))
                },
                held("srv-2", past, record("srv-2")),
                HeldSession {
                    kind: SessionKind::Ended,
                    source_offset: 2,
                    ..held("srv-2", past, record("srv-2"))
                },
            ])
            .unwrap();
        let metrics = WorkerMetrics::new("dc-east", "pipeline");
        task.pass(&producer, &metrics, now).await.unwrap();
        assert_eq!(released(&metrics, "emitted"), 1);
        assert_eq!(metrics.delay_violations.get(), 0);
        assert_eq!(metrics.records_out.get(), 1);
        assert!(task
            .store
            .to_check(i64::MAX, 10, usize::MAX)
            .unwrap()
            .is_empty());
    }
}
