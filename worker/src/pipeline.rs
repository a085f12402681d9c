//! The consume → handle → produce → commit loop, at-least-once: a batch's offsets are
//! committed only after every record it produced (normalized or dead-lettered) has been
//! acknowledged by the broker. A failed delivery is retried, never skipped, so a crash or
//! SIGKILL at any point redelivers at most the uncommitted batch.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use kg_shared::dlq::DeadLetter;
use kg_shared::kafka::KafkaArgs;
use kg_shared::topics::DLQ_NORMALIZED;
use kg_shared::unreadable::{is_unreadable, skip_unreadable, UnreadableRun};
use kg_shared::ClientId;
use rdkafka::consumer::{CommitMode, Consumer, ConsumerContext, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};
use rdkafka::statistics::Statistics;
use rdkafka::{ClientConfig, ClientContext, Offset, TopicPartitionList};
use tokio::time::{sleep, sleep_until, Instant};
use tracing::{debug, error, info, warn};

use crate::metrics::WorkerMetrics;
use crate::roles::{Outcome, RecordHandler};

/// Failures that stop the pipeline.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error("failed to create the kafka consumer for group {group}: {source}")]
    Consumer {
        group: String,
        #[source]
        source: KafkaError,
    },
    #[error("failed to create the kafka producer: {0}")]
    Producer(#[source] KafkaError),
    #[error("failed to subscribe to {topics:?}: {source}")]
    Subscribe {
        topics: Vec<String>,
        #[source]
        source: KafkaError,
    },
}

/// Tuning of the loop.
#[derive(Debug, Clone)]
pub struct PipelineSettings {
    pub group_id: String,
    /// Static group membership (`group.instance.id`): the worker's name, one per client
    /// and role. A replacement (after SIGKILL, an OOM kill, a restart) takes the dead
    /// member's place at once instead of waiting out its session timeout, and a second
    /// copy of the same worker fences the first (docs/architecture.md, "Consumer groups").
    pub group_instance_id: Option<String>,
    pub batch_max_records: usize,
    pub batch_linger: Duration,
    pub shutdown_grace: Duration,
    pub consumer_queue_kbytes: u64,
    pub producer_queue_kbytes: u64,
    pub auto_offset_reset: String,
    pub session_timeout_ms: u64,
    pub fetch_queue_backoff_ms: u64,
}

impl PipelineSettings {
    /// The loop's settings from the worker's configuration, for `group_id` with the static
    /// member id `instance_id`.
    pub fn from_config(
        config: &crate::config::WorkerConfig,
        group_id: String,
        instance_id: String,
    ) -> Self {
        Self {
            group_id,
            group_instance_id: Some(instance_id),
            batch_max_records: config.batch_max_records.max(1),
            batch_linger: Duration::from_millis(config.batch_linger_ms),
            shutdown_grace: Duration::from_secs(config.shutdown_grace_secs),
            consumer_queue_kbytes: config.consumer_queue_kbytes,
            producer_queue_kbytes: config.producer_queue_kbytes,
            auto_offset_reset: config.auto_offset_reset.clone(),
            session_timeout_ms: config.session_timeout_ms,
            fetch_queue_backoff_ms: config.fetch_queue_backoff_ms,
        }
    }
}

/// Feeds librdkafka's periodic statistics into the lag gauge.
pub struct LagReporter {
    metrics: Arc<WorkerMetrics>,
    /// Partitions to assign from their beginning (a handler rebuilding lost state).
    rewind: Arc<crate::rewind::Rewind>,
}

impl ClientContext for LagReporter {
    fn stats(&self, statistics: Statistics) {
        let mut lag = 0;
        for (topic, stats) in &statistics.topics {
            // -1 is librdkafka's "unassigned" partition and its "lag not known yet".
            for partition in stats.partitions.values() {
                if partition.partition < 0 || partition.consumer_lag < 0 {
                    continue;
                }
                lag += partition.consumer_lag;
                self.metrics
                    .partition_lag
                    .get_or_create(&crate::metrics::PartitionLabel {
                        topic: topic.clone(),
                        partition: partition.partition.to_string(),
                    })
                    .set(partition.consumer_lag);
            }
        }
        self.metrics.consumer_lag.set(lag);
    }
}

impl ConsumerContext for LagReporter {
    fn rebalance(
        &self,
        consumer: &rdkafka::consumer::BaseConsumer<Self>,
        error: rdkafka::types::RDKafkaRespErr,
        partitions: &mut TopicPartitionList,
    ) {
        crate::rewind::rebalance(&self.rewind, consumer, error, partitions);
    }

    fn commit_callback(
        &self,
        result: rdkafka::error::KafkaResult<()>,
        offsets: &TopicPartitionList,
    ) {
        if result.is_ok() {
            self.rewind.committed(offsets);
        }
    }
}

/// A record to produce, kept whole so it can be produced again if delivery fails.
#[derive(Debug)]
struct Outgoing {
    topic: &'static str,
    key: String,
    value: Vec<u8>,
    /// The reason, when this record is a dead letter.
    dead_letter: Option<String>,
    /// The input record it came from: what a dead letter names when Kafka refuses the
    /// record for good.
    source: Source,
}

/// One produced record still waiting for its acknowledgement.
struct Pending {
    record: Outgoing,
    delivery: DeliveryFuture,
}

/// Where an input record was read.
#[derive(Debug, Clone, Copy)]
struct Source {
    topic: &'static str,
    partition: i32,
    offset: i64,
}

/// The largest record a worker produces. librdkafka's `message.max.bytes` is set just above
/// it and brokers take 1 MB by default: a normalized record past this (a raw event with a
/// megabyte of message) is dead-lettered instead of being refused for ever.
pub const MAX_OUTPUT_BYTES: usize = 900 * 1024;

/// Produce errors that no retry can cure: the record itself is what the broker refuses.
pub(crate) fn is_permanent(error: &KafkaError) -> bool {
    matches!(
        error.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::MessageSizeTooLarge
                | RDKafkaErrorCode::InvalidMessageSize
                | RDKafkaErrorCode::InvalidMessage
                | RDKafkaErrorCode::InvalidRecord
                | RDKafkaErrorCode::MessageBatchTooLarge
                | RDKafkaErrorCode::InvalidRequiredAcks
        )
    )
}

/// Runs until `shutdown` resolves, then finishes the batch in hand within the grace
/// period, commits, and returns.
#[allow(clippy::too_many_lines)] // one linear sequence; to be split when it next changes
pub async fn run_pipeline(
    kafka: &KafkaArgs,
    settings: &PipelineSettings,
    client: &ClientId,
    handler: &dyn RecordHandler,
    metrics: Arc<WorkerMetrics>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), PipelineError> {
    let consumer = create_consumer(kafka, settings, metrics.clone())?;
    let producer = create_producer(kafka, settings)?;
    let topics: Vec<&str> = handler.input_topics().to_vec();
    if handler.rebuild_from_start() {
        let rewind = consumer.context().rewind.clone();
        tokio::task::block_in_place(|| {
            rewind.fill_from_committed(&consumer, &topics, Duration::from_secs(10));
        });
    }
    consumer
        .subscribe(&topics)
        .map_err(|source| PipelineError::Subscribe {
            topics: topics.iter().map(|t| t.to_string()).collect(),
            source,
        })?;
    info!(group = %settings.group_id, ?topics, "consuming");

    tokio::pin!(shutdown);
    let mut shutdown_deadline: Option<Instant> = None;
    let mut uncommitted: HashMap<(String, i32), i64> = HashMap::new();
    loop {
        let first = tokio::select! {
            biased;
            _ = &mut shutdown, if shutdown_deadline.is_none() => {
                shutdown_deadline = Some(Instant::now() + settings.shutdown_grace);
                break;
            }
            received = consumer.recv() => received,
        };
        let batch_started = std::time::Instant::now();
        let mut batch_offsets: HashMap<(String, i32), i64> = HashMap::new();
        let mut pending: Vec<Pending> = Vec::new();
        match first {
            Ok(message) => {
                handle_message(
                    &message,
                    client,
                    handler,
                    &producer,
                    &metrics,
                    &mut batch_offsets,
                    &mut pending,
                )
                .await
            }
            Err(error) if is_unreadable(&error) => {
                // Every earlier batch is committed: where the consumer stands in each
                // partition is where a stall would be.
                warn!(%error, "cannot decode input records; looking for the stalled partition");
                let runs = tokio::task::block_in_place(|| {
                    skip_unreadable(
                        &consumer,
                        &kafka.client_config(),
                        settings.shutdown_grace,
                        &|| false,
                        |_, _| None,
                    )
                });
                for run in runs {
                    let skipped = (run.resume_at - run.first).max(0) as u64;
                    metrics.unreadable_skipped.inc_by(skipped);
                    dead_letter_run(
                        &run,
                        &error,
                        client,
                        handler,
                        &producer,
                        &mut pending,
                        &metrics,
                    )
                    .await;
                    // Kafka's committed offset is the next to read: resume_at.
                    batch_offsets.insert((run.topic.clone(), run.partition), run.last());
                }
                if batch_offsets.is_empty() {
                    sleep(Duration::from_millis(200)).await;
                    continue;
                }
            }
            Err(error) => {
                warn!(%error, "kafka consumer error");
                sleep(Duration::from_millis(200)).await;
                continue;
            }
        }
        let linger_until = Instant::now() + settings.batch_linger;
        let mut stop_after_batch = false;
        let mut handled = 1;
        while handled < settings.batch_max_records {
            let next = tokio::select! {
                biased;
                _ = &mut shutdown => { stop_after_batch = true; break; }
                _ = sleep_until(linger_until) => break,
                received = consumer.recv() => received,
            };
            match next {
                Ok(message) => {
                    handled += 1;
                    handle_message(
                        &message,
                        client,
                        handler,
                        &producer,
                        &metrics,
                        &mut batch_offsets,
                        &mut pending,
                    )
                    .await
                }
                Err(error) => {
                    warn!(%error, "kafka consumer error");
                    break;
                }
            }
        }
        if stop_after_batch {
            shutdown_deadline = Some(Instant::now() + settings.shutdown_grace);
        }
        let flushed = flush_with_retry(handler, &metrics, shutdown_deadline).await;
        let delivered =
            flushed && await_deliveries(&producer, pending, &metrics, shutdown_deadline).await;
        if !delivered {
            // Only reachable once the shutdown grace ran out: leave this batch uncommitted
            // so it is redelivered to the next worker.
            warn!("shutdown grace ran out before every record was acknowledged; batch left uncommitted");
            break;
        }
        for (partition, offset) in batch_offsets {
            uncommitted.insert(partition, offset);
        }
        commit(&consumer, &uncommitted, CommitMode::Async, &metrics);
        metrics.batches.inc();
        metrics
            .batch_duration
            .observe(batch_started.elapsed().as_secs_f64());
        metrics.last_progress_ms.store(
            Utc::now().timestamp_millis(),
            std::sync::atomic::Ordering::Relaxed,
        );
        if stop_after_batch {
            break;
        }
    }
    let remaining = shutdown_deadline
        .map(|deadline| deadline.saturating_duration_since(Instant::now()))
        .unwrap_or(Duration::from_secs(1))
        .max(Duration::from_millis(500));
    let _ = rdkafka::producer::Producer::flush(&producer, remaining / 2);
    // The final commit and the consumer's close (leaving the group) block until the broker
    // answers; with the broker gone they would block forever. Both run on a thread of their
    // own, waited for until the grace runs out: what is not committed is redelivered.
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let closer_metrics = metrics.clone();
    std::thread::spawn(move || {
        if !uncommitted.is_empty() {
            commit(&consumer, &uncommitted, CommitMode::Sync, &closer_metrics);
        }
        drop(consumer);
        let _ = done_tx.send(());
    });
    let waited = tokio::task::spawn_blocking(move || done_rx.recv_timeout(remaining)).await;
    if !matches!(waited, Ok(Ok(()))) {
        warn!(?remaining, "the final commit or the group leave did not finish within the grace; exiting without it");
    }
    info!("pipeline stopped");
    Ok(())
}

async fn handle_message(
    message: &BorrowedMessage<'_>,
    client: &ClientId,
    handler: &dyn RecordHandler,
    producer: &FutureProducer,
    metrics: &WorkerMetrics,
    batch_offsets: &mut HashMap<(String, i32), i64>,
    pending: &mut Vec<Pending>,
) {
    metrics.records_in.inc();
    batch_offsets.insert(
        (message.topic().to_string(), message.partition()),
        message.offset(),
    );
    let outcome = handler.handle_at(
        message.topic(),
        message.partition(),
        message.offset(),
        message.timestamp().to_millis(),
        message.key(),
        message.payload(),
    );
    let outcomes = match outcome {
        Outcome::Many(outcomes) => outcomes,
        one => vec![one],
    };
    for outcome in outcomes {
        apply(
            message, client, handler, producer, metrics, pending, outcome,
        )
        .await;
    }
}

/// Acts on one outcome of an input record.
#[allow(clippy::too_many_arguments)]
async fn apply(
    message: &BorrowedMessage<'_>,
    client: &ClientId,
    handler: &dyn RecordHandler,
    producer: &FutureProducer,
    metrics: &WorkerMetrics,
    pending: &mut Vec<Pending>,
    outcome: Outcome,
) {
    match outcome {
        Outcome::Many(_) => {
            // Handlers never nest them; counted as a dead letter rather than lost.
            dead_letter(
                message,
                client,
                handler,
                producer,
                pending,
                metrics,
                "nested_outcomes",
                "the handler returned nested outcomes",
            )
            .await;
        }
        Outcome::Foreign => {
            metrics.skipped_foreign.inc();
        }
        Outcome::Unattributed => {
            metrics.unattributed.inc();
        }
        Outcome::Absorbed | Outcome::Ignored => {}
        Outcome::Produce { value, .. } if value.len() > MAX_OUTPUT_BYTES => {
            let reason = format!(
                "the output record would be {} bytes, more than the {MAX_OUTPUT_BYTES} a record may have",
                value.len()
            );
            warn!(offset = message.offset(), partition = message.partition(), %reason, "dead-lettering an input whose output is too large");
            dead_letter(
                message,
                client,
                handler,
                producer,
                pending,
                metrics,
                "output_too_large",
                &reason,
            )
            .await;
        }
        Outcome::Produce { topic, key, value } => {
            let record = Outgoing {
                topic,
                key,
                value,
                dead_letter: None,
                source: source(message, handler),
            };
            enqueue_or_replace(producer, pending, metrics, record).await;
        }
        Outcome::DeadLetter {
            reason_code,
            reason,
        } => {
            debug!(reason_code, %reason, offset = message.offset(), "dead-lettering record");
            dead_letter(
                message,
                client,
                handler,
                producer,
                pending,
                metrics,
                reason_code,
                &reason,
            )
            .await;
        }
    }
}

/// The record's coordinates, its topic named by the handler's own (static) topic name, so
/// that remembering it costs no allocation per record.
fn source(message: &BorrowedMessage<'_>, handler: &dyn RecordHandler) -> Source {
    Source {
        topic: handler
            .input_topics()
            .iter()
            .find(|topic| **topic == message.topic())
            .copied()
            .unwrap_or("unknown"),
        partition: message.partition(),
        offset: message.offset(),
    }
}

/// Queues the dead letter of an input record (its start, size and digest when large).
#[allow(clippy::too_many_arguments)]
async fn dead_letter(
    message: &BorrowedMessage<'_>,
    client: &ClientId,
    handler: &dyn RecordHandler,
    producer: &FutureProducer,
    pending: &mut Vec<Pending>,
    metrics: &WorkerMetrics,
    reason_code: &'static str,
    reason: &str,
) {
    let letter = DeadLetter::new(
        reason_code,
        reason,
        message.topic(),
        message.partition(),
        message.offset(),
        message.key(),
        message.payload(),
        Some(client),
        Utc::now(),
    );
    let key = String::from_utf8_lossy(message.key().unwrap_or_default()).into_owned();
    let record = Outgoing {
        topic: DLQ_NORMALIZED,
        key,
        value: letter.to_json(),
        dead_letter: Some(reason_code.to_string()),
        source: source(message, handler),
    };
    enqueue_or_replace(producer, pending, metrics, record).await;
}

/// Queues the dead letter that stands for a run of input records that could not be read.
#[allow(clippy::too_many_arguments)]
async fn dead_letter_run(
    run: &UnreadableRun,
    error: &KafkaError,
    client: &ClientId,
    handler: &dyn RecordHandler,
    producer: &FutureProducer,
    pending: &mut Vec<Pending>,
    metrics: &WorkerMetrics,
) {
    let mut letter = run.dead_letter(error, Utc::now());
    letter.client_id = Some(client.as_str().to_owned());
    let record = Outgoing {
        topic: DLQ_NORMALIZED,
        key: format!("{client}::unreadable::{}:{}", run.topic, run.partition),
        value: letter.to_json(),
        dead_letter: Some("unreadable".to_string()),
        source: Source {
            topic: handler
                .input_topics()
                .iter()
                .find(|topic| **topic == run.topic)
                .copied()
                .unwrap_or("unknown"),
            partition: run.partition,
            offset: run.first,
        },
    };
    enqueue_or_replace(producer, pending, metrics, record).await;
}

/// Lets the handler write what it absorbed, retrying with backoff: a batch is never
/// committed before its writes succeed. Returns false only when the shutdown deadline
/// passes first.
async fn flush_with_retry(
    handler: &dyn RecordHandler,
    metrics: &WorkerMetrics,
    deadline: Option<Instant>,
) -> bool {
    let mut backoff = Duration::from_millis(100);
    loop {
        match handler.flush() {
            Ok(()) => return true,
            Err(reason) => {
                metrics.flush_failures.inc();
                warn!(%reason, "writing the batch failed; retrying");
            }
        }
        if deadline.is_some_and(|deadline| Instant::now() + backoff >= deadline) {
            return false;
        }
        sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

/// A record the producer refuses for good ([`is_permanent`]), handed back with the refusal.
#[derive(Debug, thiserror::Error)]
#[error("the producer refuses a record for {}: {error}", record.topic)]
struct Refused {
    #[source]
    error: KafkaError,
    record: Outgoing,
}

/// Hands a record to the producer. When librdkafka's queue is full, waits for the oldest
/// outstanding delivery before trying again rather than growing memory without bound.
/// An error no retry can cure ([`is_permanent`]) is not retried: the record comes back
/// with it.
async fn enqueue(
    producer: &FutureProducer,
    pending: &mut Vec<Pending>,
    record: Outgoing,
) -> Result<(), Refused> {
    loop {
        let sent = FutureRecord::to(record.topic)
            .key(&record.key)
            .payload(&record.value);
        match producer.send_result(sent) {
            Ok(delivery) => {
                pending.push(Pending { record, delivery });
                return Ok(());
            }
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                // Poll until librdkafka has room; deliveries are awaited later in order.
                sleep(Duration::from_millis(2)).await;
            }
            Err((error, _)) if is_permanent(&error) => {
                warn!(%error, topic = record.topic, offset = record.source.offset, "the producer refuses this record; not retrying");
                return Err(Refused { error, record });
            }
            Err((error, _)) => {
                warn!(%error, topic = record.topic, "failed to enqueue record; retrying");
                sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Awaits every delivery of a batch, producing failed ones again with backoff. Returns
/// false only when `deadline` (set once shutdown began) passes first.
async fn await_deliveries(
    producer: &FutureProducer,
    pending: Vec<Pending>,
    metrics: &WorkerMetrics,
    deadline: Option<Instant>,
) -> bool {
    let mut queue = pending;
    let mut backoff = Duration::from_millis(100);
    while !queue.is_empty() {
        let mut failed = Vec::new();
        for Pending { record, delivery } in queue {
            let outcome = match deadline {
                Some(deadline) => match tokio::time::timeout_at(deadline, delivery).await {
                    Ok(outcome) => outcome,
                    Err(_) => return false,
                },
                None => delivery.await,
            };
            match outcome {
                Ok(Ok(_)) => {
                    match &record.dead_letter {
                        Some(reason) => {
                            metrics.dlq_total.inc();
                            metrics
                                .dlq
                                .get_or_create(&crate::metrics::ReasonLabel {
                                    reason: reason.clone(),
                                })
                                .inc()
                        }
                        None => metrics.records_out.inc(),
                    };
                }
                Ok(Err((error, _))) if is_permanent(&error) => {
                    failed.extend(replacement(metrics, record, &error));
                }
                Ok(Err((error, _))) => {
                    warn!(%error, topic = record.topic, "delivery failed; producing again");
                    failed.push(record);
                }
                Err(_canceled) => failed.push(record),
            }
        }
        if failed.is_empty() {
            return true;
        }
        if deadline.is_some_and(|deadline| Instant::now() >= deadline) {
            return false;
        }
        sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
        let mut retried = Vec::with_capacity(failed.len());
        for record in failed {
            metrics.produce_retries.inc();
            enqueue_or_replace(producer, &mut retried, metrics, record).await;
        }
        queue = retried;
    }
    true
}

/// Enqueues a record; one Kafka refuses for good is replaced by its dead letter
/// ([`replacement`]), and a refused dead letter is counted as lost.
async fn enqueue_or_replace(
    producer: &FutureProducer,
    pending: &mut Vec<Pending>,
    metrics: &WorkerMetrics,
    record: Outgoing,
) {
    let Err(Refused { error, record }) = enqueue(producer, pending, record).await else {
        return;
    };
    let Some(letter) = replacement(metrics, record, &error) else {
        return;
    };
    if let Err(Refused { error, record }) = enqueue(producer, pending, letter).await {
        replacement(metrics, record, &error);
    }
}

/// What takes the place of a record Kafka refuses for good: for an output, a dead letter
/// naming the input it came from and carrying the start of the refused output with its
/// size and digest; for a dead letter, nothing (it is counted as lost and logged: there is
/// nothing left to send in its place).
fn replacement(metrics: &WorkerMetrics, refused: Outgoing, error: &KafkaError) -> Option<Outgoing> {
    if refused.dead_letter.is_some() {
        metrics.records_lost.inc();
        error!(%error, topic = refused.topic, source_offset = refused.source.offset, "a dead letter was refused for good; the record is only in this log");
        return None;
    }
    let letter = DeadLetter::new(
        "output_refused",
        format!(
            "Kafka refused the output record on {} for good: {error}",
            refused.topic
        ),
        refused.source.topic,
        refused.source.partition,
        refused.source.offset,
        Some(refused.key.as_bytes()),
        Some(&refused.value),
        None,
        Utc::now(),
    );
    warn!(%error, topic = refused.topic, source_offset = refused.source.offset, "output refused for good; dead-lettering its input");
    Some(Outgoing {
        topic: DLQ_NORMALIZED,
        key: refused.key,
        value: letter.to_json(),
        dead_letter: Some("output_refused".to_string()),
        source: refused.source,
    })
}

fn commit(
    consumer: &StreamConsumer<LagReporter>,
    offsets: &HashMap<(String, i32), i64>,
    mode: CommitMode,
    metrics: &WorkerMetrics,
) {
    let mut list = TopicPartitionList::new();
    for ((topic, partition), offset) in offsets {
        // Kafka's committed offset is the next one to read.
        if let Err(error) = list.add_partition_offset(topic, *partition, Offset::Offset(offset + 1))
        {
            warn!(%error, "failed to build the commit list");
        }
    }
    if let Err(error) = consumer.commit(&list, mode) {
        metrics.commits_failed.inc();
        warn!(%error, "offset commit failed; the batch may be redelivered");
    }
}

pub(crate) fn create_consumer(
    kafka: &KafkaArgs,
    settings: &PipelineSettings,
    metrics: Arc<WorkerMetrics>,
) -> Result<StreamConsumer<LagReporter>, PipelineError> {
    let mut config = kafka.client_config();
    if let Some(instance) = &settings.group_instance_id {
        config.set("group.instance.id", instance);
    }
    config
        .set("group.id", &settings.group_id)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", &settings.auto_offset_reset)
        .set(
            "queued.max.messages.kbytes",
            settings.consumer_queue_kbytes.to_string(),
        )
        .set("queued.min.messages", "1000")
        .set("fetch.max.bytes", "4194304")
        // librdkafka waits this long before fetching again once its local queue is full;
        // the default (1 s) caps a worker at one queue-full per partition per second.
        .set(
            "fetch.queue.backoff.ms",
            settings.fetch_queue_backoff_ms.to_string(),
        )
        .set("statistics.interval.ms", "5000")
        .set(
            "session.timeout.ms",
            settings.session_timeout_ms.to_string(),
        )
        .set(
            "heartbeat.interval.ms",
            (settings.session_timeout_ms / 3).max(100).to_string(),
        )
        .create_with_context(LagReporter {
            metrics,
            rewind: Arc::default(),
        })
        .map_err(|source| PipelineError::Consumer {
            group: settings.group_id.clone(),
            source,
        })
}

pub(crate) fn create_producer(
    kafka: &KafkaArgs,
    settings: &PipelineSettings,
) -> Result<FutureProducer, PipelineError> {
    producer_config(kafka, settings)
        .create()
        .map_err(PipelineError::Producer)
}

/// The producer's settings: idempotent, lz4, and records up to [`MAX_OUTPUT_BYTES`].
pub(crate) fn producer_config(kafka: &KafkaArgs, settings: &PipelineSettings) -> ClientConfig {
    let mut config = kafka.client_config();
    config
        .set("compression.type", "lz4")
        .set("linger.ms", "5")
        .set("enable.idempotence", "true")
        .set(
            "queue.buffering.max.kbytes",
            settings.producer_queue_kbytes.to_string(),
        )
        .set("queue.buffering.max.messages", "100000")
        // Just above MAX_OUTPUT_BYTES (plus framing); brokers take 1 MB by default.
        .set(
            "message.max.bytes",
            (MAX_OUTPUT_BYTES + 64 * 1024).to_string(),
        );
    config
}
