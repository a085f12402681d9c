//! Ingest: reads `cluster.registry` from the beginning (it is the durable desired state)
//! and `cluster.heartbeat` from "now minus the heartbeat timeout" (so a restart recovers
//! liveness instead of guessing), decodes every record tolerantly, and hands valid ones to
//! the controller as [`Input`]s. Records that cannot be used are counted, logged with their
//! reason, and dead-lettered to `dlq.raw`.
//!
//! Time of an event: while replaying what was on the topic when the control plane started,
//! the record's Kafka timestamp (capped at now); after that, the time it was received, so
//! an agent whose clock is off is still live while it heartbeats.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use kg_shared::dlq::DeadLetter;
use kg_shared::heartbeat::decode_heartbeat;
use kg_shared::kafka::KafkaArgs;
use kg_shared::log_limit::{LogLimiter, LogVerdict};
use kg_shared::registry::decode_registry;
use kg_shared::topics::{CLUSTER_HEARTBEAT, CLUSTER_REGISTRY};
use kg_shared::unreadable::{is_unreadable, UnreadableRun};
use rdkafka::consumer::{Consumer, ConsumerContext, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::statistics::Statistics;
use rdkafka::ClientContext;
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::{mpsc, watch};
use tracing::{debug, info, warn};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;

use crate::admission::Arrival;
use crate::input::Input;
use crate::liveness::HeartbeatTimeout;
use crate::metrics::{ControlPlaneMetrics, ReasonLabel, TopicReasonLabel};
use crate::publisher::Publisher;
use crate::replay_order::HeldHeartbeats;
use crate::Clock;

#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("failed to create the ingest consumer: {0}")]
    Consumer(#[source] KafkaError),
    #[error("failed to assign the ingest partitions: {0}")]
    Assign(#[source] KafkaError),
    #[error("failed to create the kafka producer: {0}")]
    Producer(#[source] KafkaError),
    #[error("failed to deregister {client}: {reason}")]
    Tombstone { client: String, reason: String },
}

/// Settings of the ingest loop.
pub struct IngestSettings {
    pub heartbeat_timeout: HeartbeatTimeout,
    pub metadata_timeout: Duration,
}

/// A partition of one of the two topics ingest reads, by the topic's static name.
type TopicPartition = (&'static str, i32);

/// Per partition, the high watermark when ingest started: offsets below it are replay.
type Watermarks = HashMap<TopicPartition, i64>;

/// Partitions still to be read up to the high watermark they had at start.
type Pending = HashMap<TopicPartition, i64>;

/// Per partition, the next offset ingest expects to read: where it starts, then one past
/// the last record handed to it. A partition stalled on records that cannot be read sits
/// here, which is where the probe looks.
type NextOffsets = HashMap<TopicPartition, i64>;

/// The longest one pass of probes for unreadable records may hold ingest's loop. Long
/// enough for a binary search over a large run (about 20 probes of tens of milliseconds
/// each); a shutdown does not wait for it (the pass asks the stop flag between probes).
const PROBE_PASS_BUDGET: Duration = Duration::from_secs(10);

/// librdkafka repeats the decoding error of a stalled partition on every fetch retry;
/// probing once per this interval is enough.
const PROBE_INTERVAL: Duration = Duration::from_secs(1);

/// Feeds librdkafka's periodic statistics into `cp_ingest_consumer_lag`, per partition.
pub struct IngestContext {
    metrics: Arc<ControlPlaneMetrics>,
}

impl ClientContext for IngestContext {
    fn stats(&self, statistics: Statistics) {
        for (topic, stats) in &statistics.topics {
            for partition in stats.partitions.values() {
                // librdkafka's own consumer_lag counts from committed or stored offsets,
                // and ingest (assigned partitions, nothing committed) has neither: count
                // from the last record handed to ingest, or, before any, from the fetch
                // position. -1 is librdkafka's "unassigned" partition and "not known".
                let position = if partition.app_offset >= 0 {
                    partition.app_offset
                } else {
                    partition.next_offset
                };
                if partition.partition < 0 || position < 0 || partition.hi_offset < 0 {
                    continue;
                }
                let lag = (partition.hi_offset - position).max(0);
                self.metrics
                    .ingest_consumer_lag
                    .get_or_create(&crate::metrics::PartitionLabel {
                        topic: topic.clone(),
                        partition: partition.partition.to_string(),
                    })
                    .set(lag);
            }
        }
    }
}

impl ConsumerContext for IngestContext {}

type IngestConsumer = StreamConsumer<IngestContext>;

/// Runs until `stop` turns true.
pub async fn run_ingest(
    kafka: &KafkaArgs,
    settings: IngestSettings,
    metrics: Arc<ControlPlaneMetrics>,
    publisher: Arc<Publisher>,
    clock: Arc<dyn Clock>,
    inputs: mpsc::Sender<Input>,
    stop: watch::Receiver<bool>,
) -> Result<(), IngestError> {
    // The blocking probe pass asks `stopped` between broker calls; the loop awaits
    // `shutdown`. Both read the same flag.
    let stopped = || *stop.borrow();
    let shutdown = stop_signal(stop.clone());
    tokio::pin!(shutdown);
    let consumer = ingest_consumer(kafka, &metrics)?;

    let Some((start_watermarks, mut pending, mut next_offsets)) =
        assign_when_ready(&consumer, &settings, clock.as_ref(), &mut shutdown).await
    else {
        return Ok(());
    };
    info!(partitions_to_replay = pending.len(), "ingest started");
    let mut replay = ReplayProgress::new(&pending);
    let mut progress = tokio::time::interval(Duration::from_millis(250));
    let mut last_probe: Option<Instant> = None;
    // A flood of bad records is counted, not logged line by line.
    let mut log_limit = LogLimiter::default();
    loop {
        if !replay.announce(&pending, &inputs).await {
            return Ok(());
        }
        let message = tokio::select! {
            biased;
            _ = &mut shutdown => {
                // Bounded: a broker that is down must not hold the shutdown.
                tokio::task::block_in_place(|| publisher.flush(Duration::from_secs(3)));
                return Ok(());
            }
            _ = progress.tick(), if !replay.announced => {
                // Compaction and deletion can leave the last offsets empty, so watermarks
                // are also compared with the consumer's position.
                retire_by_position(&consumer, &mut pending);
                continue;
            }
            received = consumer.recv() => received,
        };
        let message = match message {
            Ok(message) => message,
            Err(error) => {
                let skipped = Skipper {
                    consumer: &consumer,
                    kafka,
                    settings: &settings,
                    stopped: &stopped,
                }
                .skip(&error, &mut last_probe, &mut next_offsets);
                let Some((why, runs)) = skipped else {
                    continue;
                };
                for run in runs {
                    run_skipped(&run, why, &error, clock.now(), &metrics, &publisher).await;
                    retire(
                        &mut pending,
                        (topic_name(&run.topic), run.partition),
                        run.resume_at,
                    );
                }
                continue;
            }
        };
        let now = clock.now();
        let topic = topic_name(message.topic());
        let key = (topic, message.partition());
        next_offsets.insert(key, message.offset() + 1);
        let at = applies_at(&message, &start_watermarks, now);
        retire(&mut pending, key, message.offset() + 1);
        let input = if topic == CLUSTER_REGISTRY {
            registry_input(&message, at, now, &metrics, &publisher, &mut log_limit).await
        } else {
            heartbeat_input(&message, at, now, &metrics, &publisher, &mut log_limit).await
        };
        let Some(input) = input.and_then(|input| replay.pass(input)) else {
            continue;
        };
        if inputs.send(input).await.is_err() {
            return Ok(());
        }
    }
}

/// Resolves once `stop` turns true.
async fn stop_signal(mut stop: watch::Receiver<bool>) {
    let _ = stop.wait_for(|stop| *stop).await;
}

/// Ingest's consumer: offsets stored by hand, and small prefetch queues.
fn ingest_consumer(
    kafka: &KafkaArgs,
    metrics: &Arc<ControlPlaneMetrics>,
) -> Result<IngestConsumer, IngestError> {
    kafka
        .client_config()
        .set("group.id", "kg-control-plane")
        .set("statistics.interval.ms", "5000")
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        // An offset the broker no longer has (deleted by retention, or by the embedded
        // broker's 5 MiB per partition) is an error ingest handles itself, never a jump to
        // the end: the registry is the durable desired state, and nothing may make ingest
        // skip what it has not handled. It moves to the first offset left and
        // dead-letters the range it never saw (`skip_deleted`).
        .set("auto.offset.reset", "error")
        // librdkafka prefetches up to 64 MiB per partition by default; ingest handles each
        // record in microseconds, so a small queue keeps memory flat. But once the queue
        // holds queued.min.messages, librdkafka waits fetch.queue.backoff.ms (1 s by
        // default) before fetching again: with 1,000 messages that capped ingest at about
        // 1,000 heartbeats per partition per second. A larger count, bounded by the bytes,
        // and a short backoff let a burst through (docs/benchmarks.md, "Heartbeat ingest").
        // 256 KiB a partition rather than 1 MiB: the same ingest rate, and under a flood of
        // 100,000 registrations this and the controller's shorter input queue took the
        // peak from 36-50 MiB to 28-30 MiB (docs/benchmarks.md, "Admission flood").
        .set("queued.max.messages.kbytes", "256")
        .set("queued.min.messages", "100000")
        .set("fetch.queue.backoff.ms", "10")
        .create_with_context(IngestContext {
            metrics: metrics.clone(),
        })
        .map_err(IngestError::Consumer)
}

/// Waits until the registry and heartbeat topics exist and are assigned; None if asked
/// to stop first. The topics may not exist yet (a real cluster whose topic setup has not
/// run): ingest waits for them rather than failing, so start order does not matter.
async fn assign_when_ready(
    consumer: &IngestConsumer,
    settings: &IngestSettings,
    clock: &dyn Clock,
    shutdown: &mut (impl std::future::Future<Output = ()> + Unpin),
) -> Option<(Watermarks, Pending, NextOffsets)> {
    loop {
        // Metadata and watermark look-ups block for up to their timeout; keep them off the
        // async threads so the API stays responsive while Kafka is unreachable.
        let attempt =
            tokio::task::block_in_place(|| assign_partitions(consumer, settings, clock.now()));
        match attempt {
            Ok(started) => return Some(started),
            Err(reason) => {
                warn!(%reason, "waiting for the registry and heartbeat topics");
                tokio::select! {
                    _ = &mut *shutdown => return None,
                    _ = tokio::time::sleep(Duration::from_secs(2)) => {}
                }
            }
        }
    }
}

/// When a record counts as heard: during the replay, when it was produced (never in the
/// future); after it, now.
fn applies_at(
    message: &BorrowedMessage<'_>,
    start_watermarks: &Watermarks,
    now: DateTime<Utc>,
) -> DateTime<Utc> {
    let key = (topic_name(message.topic()), message.partition());
    let replaying = start_watermarks
        .get(&key)
        .is_some_and(|high| message.offset() < *high);
    if !replaying {
        return now;
    }
    message
        .timestamp()
        .to_millis()
        .and_then(DateTime::from_timestamp_millis)
        .map_or(now, |produced| produced.min(now))
}

/// What ingest needs to move past records it cannot read.
struct Skipper<'a> {
    consumer: &'a IngestConsumer,
    kafka: &'a KafkaArgs,
    settings: &'a IngestSettings,
    stopped: &'a dyn Fn() -> bool,
}

impl Skipper<'_> {
    /// After a consumer error: the runs of records skipped and why, or None when the
    /// error skips nothing (or a probe for unreadable records ran too recently).
    fn skip(
        &self,
        error: &KafkaError,
        last_probe: &mut Option<Instant>,
        next_offsets: &mut NextOffsets,
    ) -> Option<(Skipped, Vec<UnreadableRun>)> {
        if is_unreadable(error) {
            if last_probe.is_some_and(|at| at.elapsed() < PROBE_INTERVAL) {
                return None;
            }
            *last_probe = Some(Instant::now());
            warn!(%error, "ingest cannot decode records; looking for the stalled partition");
            let runs = tokio::task::block_in_place(|| {
                skip_unreadable(self.consumer, self.kafka, self.stopped, next_offsets)
            });
            Some((Skipped::Unreadable, runs))
        } else if matches!(
            error,
            KafkaError::MessageConsumption(RDKafkaErrorCode::AutoOffsetReset)
        ) {
            warn!(%error, "a partition's next offset is gone from the broker; moving to the first one left");
            let gaps = tokio::task::block_in_place(|| {
                skip_deleted(self.consumer, self.settings, self.stopped, next_offsets)
            });
            Some((Skipped::DeletedBeforeRead, gaps))
        } else {
            warn!(%error, "ingest consumer error");
            None
        }
    }
}

/// How far the replay has got: the registry applied, and the end announced; and the
/// heartbeats that wait for the whole registry (`crate::replay_order` says why).
struct ReplayProgress {
    registry: bool,
    announced: bool,
    held: HeldHeartbeats,
}

impl ReplayProgress {
    fn new(pending: &Pending) -> Self {
        Self {
            registry: !registry_pending(pending),
            announced: false,
            held: HeldHeartbeats::default(),
        }
    }

    /// Tells the controller what the replay has reached: once the registry is applied,
    /// the heartbeats held meanwhile; once every partition is, the end of the replay.
    /// False once the controller is gone.
    async fn announce(&mut self, pending: &Pending, inputs: &mpsc::Sender<Input>) -> bool {
        if !self.registry && !registry_pending(pending) {
            self.registry = true;
            debug!(
                clients = self.held.len(),
                "registry replayed; releasing the heartbeats read meanwhile"
            );
            for input in self.held.release() {
                if inputs.send(input).await.is_err() {
                    return false;
                }
            }
        }
        // The controller mutates nothing until this: the whole registry, and the
        // heartbeats of the last timeout, or a restarted control plane would see
        // registered clients without their recent heartbeats and reap live clients'
        // workers.
        if !self.announced && pending.is_empty() {
            self.announced = true;
            info!("registry and recent heartbeats replayed");
            if inputs.send(Input::RegistryReplayed).await.is_err() {
                return false;
            }
        }
        true
    }

    /// The input to send now: a heartbeat read while the registry is still being
    /// replayed is held instead.
    fn pass(&mut self, input: Input) -> Option<Input> {
        match input {
            Input::Heartbeat { client_id, at } if !self.registry => {
                self.held.hold(client_id, at);
                None
            }
            input => Some(input),
        }
    }
}

/// A partition read up to `next` (the next offset to read) is replayed once that reaches
/// the high watermark it had at start-up.
fn retire(pending: &mut Pending, key: TopicPartition, next: i64) {
    if pending.get(&key).is_some_and(|high| next >= *high) {
        pending.remove(&key);
    }
}

/// Whether a registry partition is still being replayed.
fn registry_pending(pending: &Pending) -> bool {
    pending.keys().any(|(topic, _)| *topic == CLUSTER_REGISTRY)
}

/// The topic's static name (ingest reads only these two).
fn topic_name(topic: &str) -> &'static str {
    if topic == CLUSTER_REGISTRY {
        CLUSTER_REGISTRY
    } else {
        CLUSTER_HEARTBEAT
    }
}

/// Moves past the records ingest cannot decode (`kg_shared::unreadable`), probing each
/// partition from where ingest stands in it, which also covers partitions it has not
/// read from yet (heartbeats start at an offset looked up by time). Blocking.
fn skip_unreadable(
    consumer: &IngestConsumer,
    kafka: &KafkaArgs,
    stopped: &dyn Fn() -> bool,
    next_offsets: &mut NextOffsets,
) -> Vec<UnreadableRun> {
    let runs = kg_shared::unreadable::skip_unreadable(
        consumer,
        &kafka.client_config(),
        PROBE_PASS_BUDGET,
        stopped,
        |topic, partition| next_offsets.get(&(topic_name(topic), partition)).copied(),
    );
    for run in &runs {
        next_offsets.insert((topic_name(&run.topic), run.partition), run.resume_at);
    }
    runs
}

/// Partitions whose next offset the broker no longer has (librdkafka stops fetching them
/// with `auto.offset.reset=error`): each moves to the first offset left, and the range it
/// never saw is returned. Such a partition cannot be sought (librdkafka: "erroneous
/// state"), so the whole assignment is made again from where ingest stands in every
/// partition: nothing handled is read twice, nothing unread is passed over. Blocking.
fn skip_deleted(
    consumer: &IngestConsumer,
    settings: &IngestSettings,
    stopped: &dyn Fn() -> bool,
    next_offsets: &mut NextOffsets,
) -> Vec<UnreadableRun> {
    let mut gaps = Vec::new();
    for ((topic, partition), next) in next_offsets.iter() {
        // Each look-up may wait its whole timeout with the broker gone: a shutdown does
        // not wait for the rest (the next start finds the same gaps).
        if stopped() {
            return Vec::new();
        }
        match consumer.fetch_watermarks(topic, *partition, settings.metadata_timeout) {
            Ok((low, _)) if *next < low => gaps.push(UnreadableRun {
                topic: topic.to_string(),
                partition: *partition,
                first: *next,
                resume_at: low,
            }),
            Ok(_) => {}
            Err(error) => warn!(%error, topic, partition, "watermarks after an offset reset"),
        }
    }
    if gaps.is_empty() {
        return gaps;
    }
    let mut assignment = TopicPartitionList::new();
    for ((topic, partition), next) in next_offsets.iter() {
        let resume = gaps
            .iter()
            .find(|gap| gap.topic == *topic && gap.partition == *partition)
            .map_or(*next, |gap| gap.resume_at);
        if let Err(error) =
            assignment.add_partition_offset(topic, *partition, Offset::Offset(resume))
        {
            warn!(%error, topic, partition, "building the assignment after an offset reset");
            return Vec::new();
        }
    }
    if let Err(error) = consumer.assign(&assignment) {
        warn!(%error, "assigning again after an offset reset failed");
        return Vec::new();
    }
    for gap in &gaps {
        next_offsets.insert((topic_name(&gap.topic), gap.partition), gap.resume_at);
    }
    gaps
}

/// Why ingest moved past offsets without handling records there.
#[derive(Debug, Clone, Copy)]
enum Skipped {
    /// The records there cannot be decoded (a corrupt batch).
    Unreadable,
    /// The broker deleted them before ingest read them.
    DeletedBeforeRead,
}

impl Skipped {
    fn reason_code(self) -> &'static str {
        match self {
            Skipped::Unreadable => "unreadable",
            Skipped::DeletedBeforeRead => "deleted_before_read",
        }
    }

    fn explain(self) -> &'static str {
        match self {
            Skipped::Unreadable => "cannot be decoded",
            Skipped::DeletedBeforeRead => "were deleted by the broker before they were read",
        }
    }
}

/// Counts, logs and dead-letters one run of offsets ingest moved past.
async fn run_skipped(
    run: &UnreadableRun,
    why: Skipped,
    error: &KafkaError,
    now: DateTime<Utc>,
    metrics: &Arc<ControlPlaneMetrics>,
    publisher: &Publisher,
) {
    let skipped = run.resume_at - run.first;
    metrics
        .ingest_offsets_skipped
        .get_or_create(&TopicReasonLabel {
            topic: run.topic.clone(),
            reason: why.reason_code().to_string(),
        })
        .inc_by(skipped.max(0) as u64);
    let reason = format!(
        "offsets {}..={} of {}/{} {} ({error}); skipped",
        run.first,
        run.last(),
        run.topic,
        run.partition,
        why.explain(),
    );
    warn!(
        topic = %run.topic,
        partition = run.partition,
        first = run.first,
        last = run.last(),
        reason = why.reason_code(),
        "moving past offsets with no record to handle"
    );
    let letter = DeadLetter::skipped_run(
        why.reason_code(),
        reason,
        &run.topic,
        run.partition,
        run.first,
        run.last(),
        now,
    );
    publisher.dead_letter_in_background(&letter, metrics).await;
}

/// Why ingest could not assign itself the registry and heartbeat partitions yet (it
/// retries: the topics may not exist yet).
#[derive(Debug, thiserror::Error)]
enum AssignError {
    #[error("metadata of {topic}: {source}")]
    Metadata {
        topic: &'static str,
        #[source]
        source: KafkaError,
    },
    #[error("topic {topic} has no partitions (does it exist?)")]
    NoPartitions { topic: &'static str },
    #[error("watermarks of {topic}/{partition}: {source}")]
    Watermarks {
        topic: &'static str,
        partition: i32,
        #[source]
        source: KafkaError,
    },
    /// A start offset librdkafka refuses to add to the assignment.
    #[error(transparent)]
    Offset(KafkaError),
    #[error("assign: {0}")]
    Assign(#[source] KafkaError),
}

fn assign_partitions(
    consumer: &IngestConsumer,
    settings: &IngestSettings,
    now: DateTime<Utc>,
) -> Result<(Watermarks, Pending, NextOffsets), AssignError> {
    let mut watermarks = Watermarks::new();
    let mut pending = Pending::new();
    let mut next_offsets = NextOffsets::new();
    let mut assignment = TopicPartitionList::new();
    let mut heartbeat_by_time = TopicPartitionList::new();
    let mut lows: HashMap<TopicPartition, i64> = HashMap::new();
    let since = settings.heartbeat_timeout.horizon(now);
    for topic in [CLUSTER_REGISTRY, CLUSTER_HEARTBEAT] {
        for partition in partitions_of(consumer, topic, settings.metadata_timeout)? {
            let (low, high) = consumer
                .fetch_watermarks(topic, partition, settings.metadata_timeout)
                .map_err(|source| AssignError::Watermarks {
                    topic,
                    partition,
                    source,
                })?;
            watermarks.insert((topic, partition), high);
            lows.insert((topic, partition), low);
            if topic == CLUSTER_REGISTRY {
                // An emptied partition (low = high > 0) has nothing to wait for: no record
                // would ever arrive to retire it.
                if low < high {
                    pending.insert((CLUSTER_REGISTRY, partition), high);
                }
                next_offsets.insert((CLUSTER_REGISTRY, partition), low);
                assignment
                    .add_partition_offset(topic, partition, Offset::Beginning)
                    .map_err(AssignError::Offset)?;
            } else {
                heartbeat_by_time
                    .add_partition_offset(
                        topic,
                        partition,
                        Offset::Offset(since.timestamp_millis()),
                    )
                    .map_err(AssignError::Offset)?;
            }
        }
    }
    let (by_time, epoch) =
        heartbeat_offsets_by_time(consumer, &heartbeat_by_time, settings.metadata_timeout)?;
    for element in heartbeat_by_time.elements() {
        let lookup = |list: &Option<TopicPartitionList>| {
            list.as_ref()
                .and_then(|found| found.find_partition(element.topic(), element.partition()))
                .map(|found| found.offset())
        };
        let key = (CLUSTER_HEARTBEAT, element.partition());
        let high = watermarks.get(&key).copied().unwrap_or(0);
        let low = lows.get(&key).copied().unwrap_or(0);
        let offset = heartbeat_replay_start(lookup(&by_time), lookup(&epoch), low, high);
        debug!(
            partition = element.partition(),
            by_time = ?lookup(&by_time),
            from_epoch = ?lookup(&epoch),
            low,
            high,
            start = ?offset,
            "heartbeat replay start"
        );
        if offset == Offset::Beginning {
            info!(
                partition = element.partition(),
                "the broker cannot look heartbeat offsets up by time; reading them from the beginning"
            );
        }
        let replay_from = match offset {
            Offset::Offset(from) => Some(from.max(low)),
            Offset::Beginning => Some(low),
            _ => None,
        };
        if replay_from.is_some_and(|from| from < high) {
            pending.insert(key, high);
        }
        next_offsets.insert(key, replay_from.unwrap_or(high));
        assignment
            .add_partition_offset(element.topic(), element.partition(), offset)
            .map_err(AssignError::Offset)?;
    }
    consumer.assign(&assignment).map_err(AssignError::Assign)?;
    Ok((watermarks, pending, next_offsets))
}

/// The topic's partitions; none is an error (the topic does not exist yet).
fn partitions_of(
    consumer: &IngestConsumer,
    topic: &'static str,
    timeout: Duration,
) -> Result<Vec<i32>, AssignError> {
    let metadata = consumer
        .fetch_metadata(Some(topic), timeout)
        .map_err(|source| AssignError::Metadata { topic, source })?;
    let partitions: Vec<i32> = metadata
        .topics()
        .iter()
        .filter(|t| t.name() == topic && t.error().is_none())
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    if partitions.is_empty() {
        return Err(AssignError::NoPartitions { topic });
    }
    Ok(partitions)
}

/// The heartbeat partitions' offsets at the replay horizon (`heartbeat_by_time`), and,
/// where that answer was the end of the log, at the epoch: what
/// [`heartbeat_replay_start`] decides from.
fn heartbeat_offsets_by_time(
    consumer: &IngestConsumer,
    heartbeat_by_time: &TopicPartitionList,
    timeout: Duration,
) -> Result<(Option<TopicPartitionList>, Option<TopicPartitionList>), AssignError> {
    // Where the broker cannot look offsets up by time, reading the heartbeats from the
    // beginning is correct too (old ones are simply stale), only slower.
    let by_time = consumer
        .offsets_for_times(heartbeat_by_time.clone(), timeout)
        .ok();
    // "Nothing that recent" and "cannot look up by time" both come back as the end of
    // the log (librdkafka's mock broker answers every time query so). Asking again from
    // the epoch tells them apart: a broker that can look up answers a non-empty
    // partition's first offset.
    let mut from_epoch = TopicPartitionList::new();
    for element in heartbeat_by_time.elements() {
        let answered_end = by_time
            .as_ref()
            .and_then(|found| found.find_partition(element.topic(), element.partition()))
            .is_some_and(|found| found.offset() == Offset::End);
        if answered_end {
            from_epoch
                .add_partition_offset(element.topic(), element.partition(), Offset::Offset(0))
                .map_err(AssignError::Offset)?;
        }
    }
    let epoch = if from_epoch.count() > 0 {
        consumer.offsets_for_times(from_epoch, timeout).ok()
    } else {
        None
    };
    Ok((by_time, epoch))
}

/// Where a heartbeat partition is read from: the first offset at or after "now minus the
/// timeout" (`by_time`), checked against the answer for the epoch (`from_epoch`, asked
/// only when `by_time` was the end) so a broker that cannot look up by time is read from
/// the beginning instead of from the end, which would lose every recent heartbeat.
fn heartbeat_replay_start(
    by_time: Option<Offset>,
    from_epoch: Option<Offset>,
    low_watermark: i64,
    high_watermark: i64,
) -> Offset {
    if low_watermark >= high_watermark {
        // Empty (never written, or every record deleted): only new heartbeats matter.
        return Offset::End;
    }
    match by_time {
        Some(Offset::Offset(offset)) => Offset::Offset(offset),
        // Nothing that recent, provided the broker can look up at all: it answers the
        // epoch with an offset.
        Some(Offset::End) => match from_epoch {
            Some(Offset::Offset(_)) => Offset::End,
            _ => Offset::Beginning,
        },
        _ => Offset::Beginning,
    }
}

fn retire_by_position(consumer: &IngestConsumer, pending: &mut Pending) {
    if pending.is_empty() {
        return;
    }
    if let Ok(position) = consumer.position() {
        for topic in [CLUSTER_REGISTRY, CLUSTER_HEARTBEAT] {
            for element in position.elements_for_topic(topic) {
                if let Offset::Offset(next) = element.offset() {
                    let key = (topic, element.partition());
                    if pending.get(&key).is_some_and(|high| next >= *high) {
                        debug!(
                            topic,
                            partition = element.partition(),
                            next,
                            "replayed up to the start's high watermark (by position)"
                        );
                        pending.remove(&key);
                    }
                }
            }
        }
    }
}

async fn registry_input(
    message: &BorrowedMessage<'_>,
    at: DateTime<Utc>,
    now: DateTime<Utc>,
    metrics: &Arc<ControlPlaneMetrics>,
    publisher: &Publisher,
    log_limit: &mut LogLimiter,
) -> Option<Input> {
    match decode_registry(message.key(), message.payload()) {
        Ok(decoded) => Some(Input::Registry {
            message: decoded,
            at,
            arrival: Arrival {
                timestamp_ms: message
                    .timestamp()
                    .to_millis()
                    .unwrap_or_else(|| now.timestamp_millis()),
                partition: message.partition(),
                offset: message.offset(),
            },
        }),
        Err(error) => {
            let rejected = Rejected {
                reason_code: error.reason_code(),
                reason: error.to_string(),
                invalid_client_id: error.invalid_client_id(),
            };
            reject(
                message,
                rejected,
                &metrics.registry_rejected,
                now,
                metrics,
                publisher,
                log_limit,
            )
            .await;
            None
        }
    }
}

async fn heartbeat_input(
    message: &BorrowedMessage<'_>,
    at: DateTime<Utc>,
    now: DateTime<Utc>,
    metrics: &Arc<ControlPlaneMetrics>,
    publisher: &Publisher,
    log_limit: &mut LogLimiter,
) -> Option<Input> {
    match decode_heartbeat(message.key(), message.payload()) {
        Ok(heartbeat) => Some(Input::Heartbeat {
            client_id: heartbeat.client_id,
            at,
        }),
        Err(error) => {
            let rejected = Rejected {
                reason_code: error.reason_code(),
                reason: error.to_string(),
                invalid_client_id: error.invalid_client_id(),
            };
            reject(
                message,
                rejected,
                &metrics.heartbeats_rejected,
                now,
                metrics,
                publisher,
                log_limit,
            )
            .await;
            None
        }
    }
}

/// Why a registry or heartbeat record was not used.
struct Rejected {
    reason_code: &'static str,
    reason: String,
    invalid_client_id: bool,
}

/// Counts, logs (a bounded number of lines per reason) and dead-letters a record that
/// cannot be used.
#[allow(clippy::too_many_arguments)]
async fn reject(
    message: &BorrowedMessage<'_>,
    rejected: Rejected,
    counter: &Family<ReasonLabel, Counter>,
    now: DateTime<Utc>,
    metrics: &Arc<ControlPlaneMetrics>,
    publisher: &Publisher,
    log_limit: &mut LogLimiter,
) {
    counter
        .get_or_create(&ReasonLabel {
            reason: rejected.reason_code.to_string(),
        })
        .inc();
    if rejected.invalid_client_id {
        metrics.invalid_client_ids.inc();
    }
    if let LogVerdict::Log { suppressed } = log_limit.check(rejected.reason_code, Instant::now()) {
        warn!(
            topic = message.topic(),
            reason = rejected.reason_code,
            error = %rejected.reason,
            partition = message.partition(),
            offset = message.offset(),
            suppressed_since_last = suppressed,
            "skipping record"
        );
    }
    dead_letter(
        message,
        rejected.reason_code,
        &rejected.reason,
        now,
        metrics,
        publisher,
    )
    .await;
}

async fn dead_letter(
    message: &BorrowedMessage<'_>,
    reason_code: &str,
    reason: &str,
    now: DateTime<Utc>,
    metrics: &Arc<ControlPlaneMetrics>,
    publisher: &Publisher,
) {
    let letter = DeadLetter::new(
        reason_code,
        reason,
        message.topic(),
        message.partition(),
        message.offset(),
        message.key(),
        message.payload(),
        None,
        now,
    );
    publisher.dead_letter_in_background(&letter, metrics).await;
    debug!(reason_code, "dead letter queued");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heartbeats_are_read_from_the_offset_the_broker_found_by_time() {
        assert_eq!(
            heartbeat_replay_start(Some(Offset::Offset(42)), None, 10, 50),
            Offset::Offset(42)
        );
    }

    #[test]
    fn a_broker_that_finds_nothing_recent_but_can_look_up_means_the_end() {
        assert_eq!(
            heartbeat_replay_start(Some(Offset::End), Some(Offset::Offset(10)), 10, 50),
            Offset::End
        );
    }

    #[test]
    fn a_broker_that_answers_the_end_even_for_the_epoch_cannot_look_up_so_read_everything() {
        // librdkafka's mock broker: every time query comes back as the end of the log.
        assert_eq!(
            heartbeat_replay_start(Some(Offset::End), Some(Offset::End), 0, 50),
            Offset::Beginning
        );
        assert_eq!(
            heartbeat_replay_start(Some(Offset::End), None, 0, 50),
            Offset::Beginning
        );
    }

    #[test]
    fn a_failed_look_up_reads_everything() {
        assert_eq!(heartbeat_replay_start(None, None, 0, 50), Offset::Beginning);
    }

    #[test]
    fn an_empty_partition_is_read_from_the_end_whatever_the_broker_answered() {
        assert_eq!(heartbeat_replay_start(None, None, 0, 0), Offset::End);
        assert_eq!(
            heartbeat_replay_start(Some(Offset::End), Some(Offset::End), 30, 30),
            Offset::End
        );
    }
}
