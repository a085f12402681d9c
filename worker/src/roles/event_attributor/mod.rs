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
//!
//! Files, one concern each: `owner_index.rs` reads `state.k8s.resource` into the owner
//! index at start; `attribute.rs` decides what becomes of one untagged event (copied to its
//! client, parked, or left unattributed) and produces its copy; `offsets.rs` keeps what may
//! be committed; `unreadable.rs` moves a consumer past records it cannot decode. This file
//! is the role's loop: what it consumes, what it produces, and when it commits.

mod attribute;
mod offsets;
mod owner_index;
mod unreadable;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use futures::stream::{FuturesUnordered, StreamExt};
use kg_shared::attribution::{resource_key_uid, OwnerIndex, Parked, ResourceChange};
use kg_shared::keys::parse_key;
use kg_shared::topics::STATE_K8S_RESOURCE;
use kg_shared::unreadable::is_unreadable;
use kg_shared::Role;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use tracing::{info, warn};

use self::attribute::{decide, delivered, unattributed, Delivery};
use self::offsets::OffsetTracker;
use self::owner_index::build_index;
use self::unreadable::skip_and_dead_letter;
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

/// Runs until `shutdown` resolves, then waits (bounded) for copies in flight and commits.
#[allow(clippy::too_many_lines)] // one linear sequence; to be split when it next changes
pub async fn run(
    config: WorkerConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), WorkerError> {
    let role = Role::EventAttributor;
    let metrics = Arc::new(WorkerMetrics::new("", role.as_str()));
    let (stop_http, server, bound) =
        serve_http(&config, "", role, metrics.clone(), None, None).await?;
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
