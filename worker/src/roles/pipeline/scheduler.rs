//! The delay stage's emissions, beside the worker's consuming loop: wakes at the earliest
//! next check (at most a second away, since the loop keeps holding new sessions), checks
//! each session whose time has come against the latest state of its key, and emits,
//! diverts, drops or re-schedules it as `delay::decide` says. A session leaves the store
//! only after what it became is acknowledged by Kafka, so a crash at any point emits it
//! again rather than never (at-least-once, like the rest of the pipeline).

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::future::join_all;
use kg_shared::dlq::DeadLetter;
use kg_shared::pipeline_template::Delay;
use kg_shared::topics::DLQ_NORMALIZED;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use serde_json::{json, Value};
use tokio::sync::watch;
use tracing::{info, warn};

use super::delay::{decide, Step};
use super::pending::{HeldSession, PendingError, PendingStore};
use super::state::{follow, StateView};
use super::{Record, Stages};
use crate::metrics::{OutcomeLabel, WorkerMetrics};

/// Sessions checked per pass.
const CHECK_BATCH: usize = 1000;
/// The longest the scheduler sleeps: the loop may hold a session due sooner meanwhile.
const MAX_WAIT: Duration = Duration::from_secs(1);
/// How long a session whose emission Kafka refused waits before it is tried again.
const RETRY_AFTER: chrono::Duration = chrono::Duration::seconds(1);

/// Everything the scheduler needs from the pipeline's handler.
pub struct DelayTask {
    pub delay: Delay,
    pub stages: Stages,
    pub store: Arc<PendingStore>,
    /// Filled by the state topic's reader, which `run` starts when the delay has a check.
    pub view: Arc<StateView>,
    pub output: String,
}

/// What a checked session becomes.
enum Release {
    Emitted,
    Diverted,
    DeadLettered,
}

impl Release {
    fn label(&self) -> &'static str {
        match self {
            Release::Emitted => "emitted",
            Release::Diverted => "diverted",
            Release::DeadLettered => "dead_lettered",
        }
    }
}

/// What one pass decided.
#[derive(Default)]
struct Pass {
    /// Sessions to look at again, and when (ms).
    rechecks: Vec<(String, i64)>,
    /// Violating sessions with nowhere to divert them.
    dropped: Vec<String>,
    sends: Vec<Send>,
}

/// A record a session becomes, to be acknowledged before the session is let go.
struct Send {
    session: String,
    release: Release,
    topic: String,
    key: String,
    value: Vec<u8>,
}

fn count_release(metrics: &WorkerMetrics, outcome: &str) {
    metrics
        .delay_released
        .get_or_create(&OutcomeLabel {
            outcome: outcome.into(),
        })
        .inc();
}

/// Runs until `shutdown` turns true. `kafka` configures the state topic's reader.
pub async fn run(
    task: DelayTask,
    kafka: rdkafka::ClientConfig,
    producer: FutureProducer,
    metrics: Arc<WorkerMetrics>,
    mut shutdown: watch::Receiver<bool>,
) {
    if let Some(check) = &task.delay.check {
        tokio::spawn(follow(
            kafka,
            check.topic.clone(),
            task.delay.clone(),
            task.stages.client().clone(),
            task.view.clone(),
            shutdown.clone(),
        ));
    }
    let view = task.view.clone();
    info!(hold = ?task.delay.hold, check_every = ?task.delay.check_every, "delay stage running");
    loop {
        task.report(&metrics);
        let wait = match task.store.next_check() {
            Ok(Some(next)) => Duration::from_millis(
                (next - Utc::now().timestamp_millis()).clamp(0, MAX_WAIT.as_millis() as i64) as u64,
            ),
            _ => MAX_WAIT,
        };
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = tokio::time::sleep(wait) => {}
        }
        if *shutdown.borrow() {
            return;
        }
        // Until the state topic has been read to its end, a check could pass on an old state.
        if !view.is_caught_up() {
            continue;
        }
        if let Err(error) = task.pass(&view, &producer, &metrics, Utc::now()).await {
            warn!(%error, "delay stage pass failed; retrying");
            tokio::time::sleep(MAX_WAIT).await;
        }
    }
}

impl DelayTask {
    /// Sets the pending gauges from the store.
    fn report(&self, metrics: &WorkerMetrics) {
        if let Ok((count, oldest_due)) = self.store.stats() {
            metrics.delay_pending.set(count as i64);
            metrics
                .delay_oldest_due
                .set(oldest_due.map_or(0, |ms| ms.div_euclid(1000)));
        }
    }

    /// One pass over the sessions whose next check is at or before `now`.
    pub async fn pass(
        &self,
        view: &StateView,
        producer: &FutureProducer,
        metrics: &WorkerMetrics,
        now: DateTime<Utc>,
    ) -> Result<(), PendingError> {
        let sessions = self.store.to_check(now.timestamp_millis(), CHECK_BATCH)?;
        let Pass {
            mut rechecks,
            dropped,
            sends,
        } = self.check(sessions, view, metrics, now);
        let deliveries = join_all(sends.iter().map(|send| {
            producer.send(
                FutureRecord::to(&send.topic)
                    .key(&send.key)
                    .payload(&send.value),
                Timeout::After(Duration::from_secs(30)),
            )
        }))
        .await;
        let mut released = Vec::new();
        for (send, delivery) in sends.into_iter().zip(deliveries) {
            match delivery {
                Ok(_) => {
                    count_release(metrics, send.release.label());
                    if matches!(send.release, Release::Emitted) {
                        metrics.records_out.inc();
                    }
                    released.push(send.session);
                }
                Err((error, _)) => {
                    warn!(session = %send.session, topic = %send.topic, %error, "emitting a held session failed; it stays held and is tried again");
                    rechecks.push((send.session, (now + RETRY_AFTER).timestamp_millis()));
                }
            }
        }
        for _ in &dropped {
            count_release(metrics, "dropped");
        }
        released.extend(dropped);
        self.store.recheck(&rechecks)?;
        self.store.release(&released)?;
        self.report(metrics);
        Ok(())
    }

    /// Each session's check: what to send, drop or look at again.
    fn check(
        &self,
        sessions: Vec<HeldSession>,
        view: &StateView,
        metrics: &WorkerMetrics,
        now: DateTime<Utc>,
    ) -> Pass {
        let mut pass = Pass::default();
        for held in sessions {
            let due = DateTime::from_timestamp_millis(held.due_ms).unwrap_or(now);
            let state = self
                .delay
                .check
                .as_ref()
                .and_then(|_| view.get(&held.session));
            match decide(&self.delay, due, state.as_ref(), now) {
                Step::Recheck { next_check } => {
                    pass.rechecks
                        .push((held.session, next_check.timestamp_millis()));
                }
                Step::Violated { state } => {
                    metrics.delay_violations.inc();
                    let divert = self
                        .delay
                        .check
                        .as_ref()
                        .and_then(|check| check.divert_violations_to.clone());
                    warn!(session = %held.session, %state, diverted_to = ?divert, "held session violated its check");
                    match divert {
                        Some(topic) => pass.sends.push(Send {
                            value: self.violation_record(&held, &state, now),
                            release: Release::Diverted,
                            topic,
                            key: held.kafka_key,
                            session: held.session,
                        }),
                        None => pass.dropped.push(held.session),
                    }
                }
                Step::Emit => {
                    let (release, topic, value) = self.emission(&held, now);
                    pass.sends.push(Send {
                        session: held.session,
                        release,
                        topic,
                        key: held.kafka_key,
                        value,
                    });
                }
            }
        }
        pass
    }

    /// A due session through the stages after the delay: to the output, or, if one of
    /// them rejects it, to the dead-letter topic.
    fn emission(&self, held: &HeldSession, now: DateTime<Utc>) -> (Release, String, Vec<u8>) {
        let record: Record = serde_json::from_slice(&held.record).unwrap_or_default();
        match self.stages.resume(record, now) {
            Ok(record) => (
                Release::Emitted,
                self.output.clone(),
                serde_json::to_vec(&record).unwrap_or_default(),
            ),
            Err(rejection) => {
                let letter = DeadLetter::new(
                    rejection.reason_code(),
                    rejection.to_string(),
                    &held.source_topic,
                    held.source_partition,
                    held.source_offset,
                    Some(held.kafka_key.as_bytes()),
                    Some(&held.record),
                    Some(self.stages.client()),
                    now,
                );
                (
                    Release::DeadLettered,
                    DLQ_NORMALIZED.to_string(),
                    letter.to_json(),
                )
            }
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
