//! The shared event attributor (`--role event-attributor`): gives the deployed agents'
//! untagged raw Events to the one client that reported their involved object
//! (docs/architecture.md, "Attributing untagged agent events"; the decisions are
//! `kg_shared::attribution`'s).
//!
//! Two consumers: one reads `state.k8s.resource` from the beginning of every partition
//! (no group, nothing committed) into the owner index, and is read up to the end it had at
//! start before any event is looked at; the other reads `events.normalized` and
//! `raw.k8s.events` in the group `event-attributor`. An untagged raw Event whose object one
//! client claims is produced again, unchanged, to `raw.k8s.events` keyed
//! `<client>::event::<uid>`, where that client's event normalizer takes it.
//!
//! At-least-once: per partition, offsets are committed only up to the oldest record that is
//! still parked (waiting for its object) or whose copy is not acknowledged yet. After a
//! crash the index is rebuilt and those records are read again; a copy produced twice is
//! one event downstream (its normalized id is a hash of the Event's uid and time).

use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use futures::stream::{FuturesUnordered, StreamExt};
use kg_shared::attribution::{
    attribute, resource_key_uid, Attribution, OwnerIndex, Parked, ResourceChange,
};
use kg_shared::keys::parse_key;
use kg_shared::topics::{DLQ_NORMALIZED, RAW_K8S_EVENTS, STATE_K8S_RESOURCE};
use kg_shared::unreadable::{is_unreadable, skip_unreadable};
use kg_shared::Role;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::producer::future_producer::OwnedDeliveryResult;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use tracing::{info, warn};

use crate::config::WorkerConfig;
use crate::metrics::WorkerMetrics;
use crate::pipeline::{self, PipelineSettings};
use crate::{serve_http, WorkerError};

/// The consumer group and static member id of the one attributor.
pub const GROUP: &str = "event-attributor";
const INSTANCE: &str = "kg-event-attributor";

/// One untagged event waiting for its object.
#[derive(Debug)]
struct Waiting {
    topic: String,
    partition: i32,
    offset: i64,
    key: Option<Vec<u8>>,
    value: Vec<u8>,
}

type Partition = (String, i32);

/// Per input partition: offsets read but not finished (parked, or their copy in flight),
/// and where the next read starts; the commit position is the oldest unfinished offset.
#[derive(Debug, Default)]
struct OffsetTracker {
    partitions: HashMap<Partition, Progress>,
}

#[derive(Debug, Default)]
struct Progress {
    unfinished: BTreeSet<i64>,
    next: i64,
    committed: i64,
}

impl OffsetTracker {
    fn read(&mut self, partition: &Partition, offset: i64) {
        let progress = self.partitions.entry(partition.clone()).or_default();
        progress.unfinished.insert(offset);
        progress.next = progress.next.max(offset + 1);
    }

    fn finished(&mut self, partition: &Partition, offset: i64) {
        if let Some(progress) = self.partitions.get_mut(partition) {
            progress.unfinished.remove(&offset);
        }
    }

    /// Positions that moved since the last call.
    fn advance_commits(&mut self) -> Vec<(Partition, i64)> {
        let mut moved = Vec::new();
        for (partition, progress) in &mut self.partitions {
            let position = progress
                .unfinished
                .first()
                .copied()
                .unwrap_or(progress.next);
            if position > progress.committed {
                progress.committed = position;
                moved.push((partition.clone(), position));
            }
        }
        moved
    }
}

type Delivery = Pin<Box<dyn Future<Output = (Waiting, OwnedDeliveryResult)> + Send>>;

/// Runs until `shutdown` resolves, then waits (bounded) for copies in flight and commits.
#[allow(clippy::too_many_lines)] // one linear sequence; to be split when it next changes
pub async fn run(
    config: WorkerConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), WorkerError> {
    let role = Role::EventAttributor;
    let metrics = Arc::new(WorkerMetrics::new("", role.as_str()));
    let (stop_http, server, bound) = serve_http(&config, "", role, metrics.clone(), None).await?;
    info!(role = role.as_str(), http = %bound, "worker started");

    let settings = PipelineSettings::from_config(&config, GROUP.into(), INSTANCE.into());
    let producer = pipeline::create_producer(&config.kafka, &settings)?;
    let state: StreamConsumer = config
        .kafka
        .client_config()
        .set("group.id", "event-attributor-index")
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("fetch.queue.backoff.ms", "10")
        .create()
        .map_err(|source| pipeline::PipelineError::Consumer {
            group: "event-attributor-index".into(),
            source,
        })?;
    let mut index = OwnerIndex::default();
    tokio::pin!(shutdown);
    let connection = config.kafka.client_config();
    let built = tokio::select! {
        _ = &mut shutdown => None,
        built = build_index(&state, &mut index, &metrics, &connection, &producer) => Some(built),
    };
    let Some(built) = built else {
        let _ = stop_http.send(());
        let _ = server.await;
        return Ok(());
    };
    built?;
    info!(
        objects = index.len(),
        contested = index.contested(),
        "owner index built"
    );

    let events = pipeline::create_consumer(&config.kafka, &settings, metrics.clone())?;
    let topics = role.input_topics();
    events
        .subscribe(topics)
        .map_err(|source| pipeline::PipelineError::Subscribe {
            topics: topics.iter().map(|t| t.to_string()).collect(),
            source,
        })?;
    let mut parked: Parked<Waiting> = Parked::new(
        chrono::Duration::seconds(config.attributor_window_secs as i64),
        config.attributor_max_parked.max(1),
    );
    let mut tracker = OffsetTracker::default();
    let mut deliveries: FuturesUnordered<Delivery> = FuturesUnordered::new();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            received = state.recv() => match received {
                Ok(message) => {
                    let change = index.apply_resource(message.key(), message.payload());
                    if let (ResourceChange::Claimed { .. }, Some((_, uid))) =
                        (change, message.key().and_then(resource_key_uid))
                    {
                        for waiting in parked.take(uid) {
                            decide(&index, waiting, &producer, &mut parked, &mut tracker, &mut deliveries, &metrics);
                        }
                    }
                    set_gauges(&metrics, &index, &parked);
                }
                Err(error) if is_unreadable(&error) => {
                    skip_and_dead_letter(&state, &connection, &error, &producer, &metrics);
                }
                Err(error) => warn!(%error, topic = STATE_K8S_RESOURCE, "kafka consumer error"),
            },
            received = events.recv() => match received {
                Ok(message) => {
                    metrics.records_in.inc();
                    let waiting = Waiting {
                        topic: message.topic().to_string(),
                        partition: message.partition(),
                        offset: message.offset(),
                        key: message.key().map(<[u8]>::to_vec),
                        value: message.payload().unwrap_or_default().to_vec(),
                    };
                    tracker.read(&(waiting.topic.clone(), waiting.partition), waiting.offset);
                    if message.key().and_then(parse_key).is_some() {
                        // Tagged: a client's own worker reads it by its key.
                        metrics.skipped_foreign.inc();
                        tracker.finished(&(waiting.topic, waiting.partition), waiting.offset);
                        continue;
                    }
                    decide(&index, waiting, &producer, &mut parked, &mut tracker, &mut deliveries, &metrics);
                    set_gauges(&metrics, &index, &parked);
                }
                Err(error) if is_unreadable(&error) => {
                    skip_and_dead_letter(&events, &connection, &error, &producer, &metrics);
                }
                Err(error) => warn!(%error, "kafka consumer error"),
            },
            Some((waiting, result)) = deliveries.next(), if !deliveries.is_empty() => {
                delivered(waiting, result, &producer, &mut tracker, &mut deliveries, &metrics);
            }
            _ = tick.tick() => {
                for expired in parked.expire(Utc::now()) {
                    unattributed(expired, "its object was not reported within the window", &mut tracker, &metrics);
                }
                set_gauges(&metrics, &index, &parked);
                commit(&events, &mut tracker, CommitMode::Async, &metrics);
            }
        }
    }
    // Copies in flight get the grace period; what is not acknowledged by then stays
    // uncommitted and is read again by the next attributor.
    let grace = tokio::time::sleep(settings.shutdown_grace);
    tokio::pin!(grace);
    while !deliveries.is_empty() {
        tokio::select! {
            _ = &mut grace => break,
            Some((waiting, result)) = deliveries.next() => {
                delivered(waiting, result, &producer, &mut tracker, &mut deliveries, &metrics);
            }
        }
    }
    commit(&events, &mut tracker, CommitMode::Sync, &metrics);
    let _ = stop_http.send(());
    let _ = server.await;
    info!("worker stopped");
    Ok(())
}

/// Reads `state.k8s.resource` from the beginning up to the end it has now.
async fn build_index(
    state: &StreamConsumer,
    index: &mut OwnerIndex,
    metrics: &WorkerMetrics,
    connection: &rdkafka::ClientConfig,
    producer: &FutureProducer,
) -> Result<(), WorkerError> {
    let timeout = Duration::from_secs(10);
    let ends = tokio::task::block_in_place(|| -> Result<HashMap<i32, i64>, KafkaError> {
        let metadata = state.fetch_metadata(Some(STATE_K8S_RESOURCE), timeout)?;
        let mut ends = HashMap::new();
        for topic in metadata
            .topics()
            .iter()
            .filter(|t| t.name() == STATE_K8S_RESOURCE)
        {
            for partition in topic.partitions() {
                let (low, high) =
                    state.fetch_watermarks(STATE_K8S_RESOURCE, partition.id(), timeout)?;
                ends.insert(partition.id(), if high > low { high } else { -1 });
            }
        }
        Ok(ends)
    })
    .map_err(WorkerError::OwnerIndex)?;
    let mut assignment = TopicPartitionList::new();
    for partition in ends.keys() {
        assignment
            .add_partition_offset(STATE_K8S_RESOURCE, *partition, Offset::Beginning)
            .map_err(WorkerError::OwnerIndex)?;
    }
    state.assign(&assignment).map_err(WorkerError::OwnerIndex)?;
    let mut remaining: HashMap<i32, i64> = ends.into_iter().filter(|(_, end)| *end > 0).collect();
    while !remaining.is_empty() {
        match state.recv().await {
            Ok(message) => {
                index.apply_resource(message.key(), message.payload());
                if remaining
                    .get(&message.partition())
                    .is_some_and(|end| message.offset() + 1 >= *end)
                {
                    remaining.remove(&message.partition());
                }
            }
            Err(error) if is_unreadable(&error) => {
                for (partition, resume_at) in
                    skip_and_dead_letter(state, connection, &error, producer, metrics)
                {
                    if remaining
                        .get(&partition)
                        .is_some_and(|end| resume_at >= *end)
                    {
                        remaining.remove(&partition);
                    }
                }
            }
            Err(error) => warn!(%error, topic = STATE_K8S_RESOURCE, "kafka consumer error"),
        }
    }
    metrics.attributor_objects.set(index.len() as i64);
    Ok(())
}

/// Moves `consumer` past the records it cannot decode (`kg_shared::unreadable`), counts them
/// and dead-letters each run (queued, not awaited: the attributor's copies are its only
/// other output). Returns, per run, the partition and where reading resumes.
fn skip_and_dead_letter<C: rdkafka::consumer::ConsumerContext>(
    consumer: &StreamConsumer<C>,
    connection: &rdkafka::ClientConfig,
    error: &KafkaError,
    producer: &FutureProducer,
    metrics: &WorkerMetrics,
) -> Vec<(i32, i64)> {
    warn!(%error, "cannot decode input records; looking for the stalled partition");
    let runs = tokio::task::block_in_place(|| {
        skip_unreadable(
            consumer,
            connection,
            Duration::from_secs(5),
            &|| false,
            |_, _| None,
        )
    });
    runs.iter()
        .map(|run| {
            metrics
                .unreadable_skipped
                .inc_by((run.resume_at - run.first).max(0) as u64);
            let letter = run.dead_letter(error, Utc::now());
            let key = format!("unreadable::{}:{}", run.topic, run.partition);
            let value = letter.to_json();
            match producer.send_result(FutureRecord::to(DLQ_NORMALIZED).key(&key).payload(&value)) {
                Ok(_) => {
                    metrics.dlq_total.inc();
                    metrics
                        .dlq
                        .get_or_create(&crate::metrics::ReasonLabel {
                            reason: "unreadable".into(),
                        })
                        .inc();
                }
                Err((error, _)) => {
                    metrics.records_lost.inc();
                    warn!(%error, "dead letter of an unreadable run not queued");
                }
            }
            (run.partition, run.resume_at)
        })
        .collect()
}

/// Attributes, parks or counts one untagged event.
#[allow(clippy::too_many_arguments)]
fn decide(
    index: &OwnerIndex,
    waiting: Waiting,
    producer: &FutureProducer,
    parked: &mut Parked<Waiting>,
    tracker: &mut OffsetTracker,
    deliveries: &mut FuturesUnordered<Delivery>,
    metrics: &WorkerMetrics,
) {
    let Some(value) = (!waiting.value.is_empty()).then_some(waiting.value.as_slice()) else {
        return unattributed(waiting, "no value", tracker, metrics);
    };
    match attribute(index, waiting.key.as_deref(), value) {
        Attribution::To { key, .. } => send(producer, key, waiting, deliveries),
        Attribution::Wait { involved_uid } => {
            if let Some(evicted) = parked.park(&involved_uid, waiting, Utc::now()) {
                unattributed(
                    evicted,
                    "too many events waiting for their objects",
                    tracker,
                    metrics,
                );
            }
        }
        Attribution::AlreadyNormalized => {
            tracker.finished(&(waiting.topic, waiting.partition), waiting.offset);
        }
        Attribution::Contested => unattributed(
            waiting,
            "its object is claimed by several clients",
            tracker,
            metrics,
        ),
        Attribution::NoObjectUid => {
            unattributed(waiting, "its involved object has no uid", tracker, metrics)
        }
        Attribution::NotAnEvent => {
            unattributed(waiting, "not a Kubernetes Event", tracker, metrics)
        }
    }
}

fn unattributed(
    waiting: Waiting,
    reason: &'static str,
    tracker: &mut OffsetTracker,
    metrics: &WorkerMetrics,
) {
    metrics.unattributed.inc();
    tracing::debug!(topic = %waiting.topic, partition = waiting.partition, offset = waiting.offset, reason, "event left unattributed");
    tracker.finished(&(waiting.topic, waiting.partition), waiting.offset);
}

fn send(
    producer: &FutureProducer,
    key: String,
    waiting: Waiting,
    deliveries: &mut FuturesUnordered<Delivery>,
) {
    let producer = producer.clone();
    deliveries.push(Box::pin(async move {
        let record = FutureRecord::to(RAW_K8S_EVENTS)
            .key(key.as_bytes())
            .payload(waiting.value.as_slice());
        let result = producer.send(record, Duration::from_secs(30)).await;
        // The copy's key replaces the original's: a retry produces the same copy.
        (
            Waiting {
                key: Some(key.into_bytes()),
                ..waiting
            },
            result,
        )
    }));
}

/// An acknowledged copy finishes its input record; a failed one is produced again.
fn delivered(
    waiting: Waiting,
    result: OwnedDeliveryResult,
    producer: &FutureProducer,
    tracker: &mut OffsetTracker,
    deliveries: &mut FuturesUnordered<Delivery>,
    metrics: &WorkerMetrics,
) {
    match result {
        Ok(_) => {
            metrics.records_out.inc();
            tracker.finished(&(waiting.topic.clone(), waiting.partition), waiting.offset);
        }
        Err((error, _)) => {
            warn!(%error, "a re-keyed event was not acknowledged; producing it again");
            metrics.produce_retries.inc();
            let key =
                String::from_utf8_lossy(waiting.key.as_deref().unwrap_or_default()).into_owned();
            send(producer, key, waiting, deliveries);
        }
    }
}

fn commit(
    consumer: &StreamConsumer<pipeline::LagReporter>,
    tracker: &mut OffsetTracker,
    mode: CommitMode,
    metrics: &WorkerMetrics,
) {
    let moved = tracker.advance_commits();
    if moved.is_empty() {
        return;
    }
    let mut list = TopicPartitionList::new();
    for ((topic, partition), position) in moved {
        let _ = list.add_partition_offset(&topic, partition, Offset::Offset(position));
    }
    if let Err(error) = consumer.commit(&list, mode) {
        warn!(%error, "offset commit failed; records after the last commit may be read again");
        metrics.commits_failed.inc();
    } else {
        metrics.batches.inc();
        metrics.last_progress_ms.store(
            Utc::now().timestamp_millis(),
            std::sync::atomic::Ordering::Relaxed,
        );
    }
}

fn set_gauges(metrics: &WorkerMetrics, index: &OwnerIndex, parked: &Parked<Waiting>) {
    metrics.attributor_objects.set(index.len() as i64);
    metrics.attributor_parked.set(parked.len() as i64);
    metrics.attributor_contested.set(index.contested() as i64);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commits_stop_at_the_oldest_unfinished_record() {
        let mut tracker = OffsetTracker::default();
        let p = ("raw.k8s.events".to_string(), 0);
        for offset in 0..5 {
            tracker.read(&p, offset);
        }
        tracker.finished(&p, 0);
        tracker.finished(&p, 1);
        tracker.finished(&p, 3);
        // 2 is parked: nothing past it may be committed.
        assert_eq!(tracker.advance_commits(), vec![(p.clone(), 2)]);
        assert_eq!(tracker.advance_commits(), vec![]);
        tracker.finished(&p, 2);
        tracker.finished(&p, 4);
        assert_eq!(tracker.advance_commits(), vec![(p.clone(), 5)]);
    }
}
