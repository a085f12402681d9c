//! Reading the registry again for registrations admission dropped past its waiting line.
//!
//! The waiting line is bounded (`CP_MAX_WAITING_CLIENTS`); a registration that arrives
//! while it is full is not kept in memory, but the registry (the durable desired state)
//! still holds it. Admission marks, per partition, the first offset it dropped; once the
//! line has drained to half, the controller sends those marks here, and this reads the
//! registry from them up to the high watermark it finds when it starts, handing every
//! decodable record to the controller as [`Input::Refilled`]. The controller lets such a
//! record touch only the waiting line (`Admission::defer_refilled`,
//! `Admission::withdraw_refilled`): ingest has already applied that stretch of the
//! registry to the table.
//!
//! One re-read at a time, with its own short-lived consumer (nothing committed). Records
//! that cannot be read were dead-lettered by ingest when it passed them; the re-read steps
//! over them with the same probe. When the broker stops answering, or the control plane
//! stops, the re-read ends and reports where it stopped, which becomes the next one's mark.

use std::sync::Arc;
use std::time::Duration;

use chrono::DateTime;
use kg_shared::kafka::KafkaArgs;
use kg_shared::registry::decode_registry;
use kg_shared::topics::CLUSTER_REGISTRY;
use kg_shared::unreadable::{is_unreadable, skip_unreadable};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use tokio::sync::{mpsc, watch};
use tracing::{info, warn};

use crate::admission::{Arrival, RefillMarks};
use crate::input::Input;
use crate::Clock;

/// How many records a re-read may have handed over and the controller not yet applied:
/// a re-read of 100,000 registrations must not hold them all in memory at once.
pub const REFILLED_QUEUE: usize = 128;

/// A re-read that has received nothing for this long ends, and reports where it stopped.
const IDLE_LIMIT: Duration = Duration::from_secs(30);

/// After a re-read that could not start (the broker unreachable), how long until the
/// next one may.
const RETRY_AFTER: Duration = Duration::from_secs(5);

/// How long a watermark look-up may take.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(5);

/// The longest one probe pass over records that cannot be read may take.
const PROBE_BUDGET: Duration = Duration::from_secs(5);

/// Why a re-read could not start; its marks are kept for the next.
#[derive(Debug, thiserror::Error)]
enum RefillError {
    #[error("consumer: {0}")]
    Consumer(#[source] KafkaError),
    /// Of the registry's `partition`.
    #[error("watermarks of partition {partition}: {source}")]
    Watermarks {
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

/// Starts the re-read task; what it is asked on, and what it brings back. Re-reads run one
/// at a time, so one queued request is enough.
pub fn spawn(
    kafka: KafkaArgs,
    clock: Arc<dyn Clock>,
    stop: watch::Receiver<bool>,
) -> (mpsc::Sender<RefillMarks>, mpsc::Receiver<Input>) {
    let (refills_tx, refills_rx) = mpsc::channel(1);
    let (refilled_tx, refilled_rx) = mpsc::channel(REFILLED_QUEUE);
    tokio::spawn(run_refills(kafka, refills_rx, refilled_tx, clock, stop));
    (refills_tx, refilled_rx)
}

/// Serves re-read requests until `stop` turns true or the controller goes away.
pub async fn run_refills(
    kafka: KafkaArgs,
    mut requests: mpsc::Receiver<RefillMarks>,
    inputs: mpsc::Sender<Input>,
    clock: Arc<dyn Clock>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let marks = tokio::select! {
            _ = stop.wait_for(|stop| *stop) => return,
            marks = requests.recv() => match marks {
                Some(marks) => marks,
                None => return,
            },
        };
        let unfinished = match read_again(&kafka, &marks, &inputs, clock.as_ref(), &stop).await {
            Ok(unfinished) => unfinished,
            Err(reason) => {
                warn!(%reason, retry_in_secs = RETRY_AFTER.as_secs(), "the registry could not be read again; the marks are kept for the next try");
                // Not at once: the controller asks again as soon as this one is done.
                tokio::select! {
                    _ = stop.wait_for(|stop| *stop) => return,
                    _ = tokio::time::sleep(RETRY_AFTER) => {}
                }
                marks
            }
        };
        if inputs.send(Input::RefillDone { unfinished }).await.is_err() {
            return;
        }
    }
}

/// Reads `cluster.registry` from `marks` to the high watermarks found now; returns where
/// it stopped in partitions it did not finish.
async fn read_again(
    kafka: &KafkaArgs,
    marks: &RefillMarks,
    inputs: &mpsc::Sender<Input>,
    clock: &dyn Clock,
    stop: &watch::Receiver<bool>,
) -> Result<RefillMarks, RefillError> {
    let config = kafka.client_config();
    let consumer = refill_consumer(&config)?;
    let (mut next, ends) = assign_from(&consumer, marks)?;
    info!(partitions = next.len(), from = ?next, to = ?ends, "reading the registry again");
    if next.is_empty() {
        return Ok(RefillMarks::new());
    }
    let stopped = || *stop.borrow();
    let mut registrations = 0u64;
    while !next.is_empty() {
        if stopped() {
            return Ok(next);
        }
        let received = match tokio::time::timeout(IDLE_LIMIT, consumer.recv()).await {
            Ok(received) => received,
            Err(_) => {
                warn!(
                    partitions = next.len(),
                    "the registry re-read received nothing for {}s; stopping it",
                    IDLE_LIMIT.as_secs()
                );
                return Ok(next);
            }
        };
        let message = match received {
            Ok(message) => message,
            Err(error) if is_unreadable(&error) => {
                let runs = tokio::task::block_in_place(|| {
                    skip_unreadable(
                        &consumer,
                        &config,
                        PROBE_BUDGET,
                        &stopped,
                        |_, partition| next.get(&partition).copied(),
                    )
                });
                for run in runs {
                    advance(&mut next, &ends, run.partition, run.resume_at);
                }
                continue;
            }
            Err(error) => {
                warn!(%error, "registry re-read consumer error");
                continue;
            }
        };
        let partition = message.partition();
        let offset = message.offset();
        if !next.contains_key(&partition) {
            continue;
        }
        advance(&mut next, &ends, partition, offset + 1);
        let Some(input) = refilled(&message, clock) else {
            continue;
        };
        registrations += 1;
        if inputs.send(input).await.is_err() {
            return Ok(next);
        }
    }
    info!(records = registrations, "registry read again");
    Ok(RefillMarks::new())
}

/// The re-read's own consumer: assigned, never committing, fetching small.
fn refill_consumer(config: &ClientConfig) -> Result<StreamConsumer, RefillError> {
    config
        .clone()
        .set("group.id", "kg-control-plane-refill")
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        // Records deleted since they were dropped are gone from the registry too: start at
        // the first one left.
        .set("auto.offset.reset", "earliest")
        // Small fetches and a small prefetch: a re-read is not urgent, and the control
        // plane's memory bound (40 MB under 100,000 registrations held back) includes it.
        .set("queued.max.messages.kbytes", "64")
        // librdkafka refuses a fetch.max.bytes below message.max.bytes (1,000,000).
        .set("fetch.max.bytes", "1048576")
        .set("max.partition.fetch.bytes", "65536")
        .set("fetch.queue.backoff.ms", "10")
        .create()
        .map_err(RefillError::Consumer)
}

/// Per partition in `marks`: where to read from (the mark, or the first offset left) and
/// the end (the high watermark now); partitions with nothing in between are left out.
/// Assigns `consumer` to read them.
fn assign_from(
    consumer: &StreamConsumer,
    marks: &RefillMarks,
) -> Result<(RefillMarks, RefillMarks), RefillError> {
    let mut next = RefillMarks::new();
    let mut ends = RefillMarks::new();
    let mut assignment = TopicPartitionList::new();
    for (&partition, &mark) in marks {
        let (low, high) = tokio::task::block_in_place(|| {
            consumer.fetch_watermarks(CLUSTER_REGISTRY, partition, LOOKUP_TIMEOUT)
        })
        .map_err(|source| RefillError::Watermarks { partition, source })?;
        let from = mark.max(low);
        if from >= high {
            continue;
        }
        next.insert(partition, from);
        ends.insert(partition, high);
        assignment
            .add_partition_offset(CLUSTER_REGISTRY, partition, Offset::Offset(from))
            .map_err(RefillError::Offset)?;
    }
    if !next.is_empty() {
        consumer.assign(&assignment).map_err(RefillError::Assign)?;
    }
    Ok((next, ends))
}

/// A registry record read again, as the controller's input. `None` for one that cannot
/// be decoded: ingest dead-lettered it when it read it.
fn refilled(message: &BorrowedMessage<'_>, clock: &dyn Clock) -> Option<Input> {
    let decoded = decode_registry(message.key(), message.payload()).ok()?;
    let now = clock.now();
    let timestamp_ms = message.timestamp().to_millis();
    let at = timestamp_ms
        .and_then(DateTime::from_timestamp_millis)
        .map_or(now, |produced| produced.min(now));
    Some(Input::Refilled {
        message: decoded,
        at,
        arrival: Arrival {
            timestamp_ms: timestamp_ms.unwrap_or_else(|| now.timestamp_millis()),
            partition: message.partition(),
            offset: message.offset(),
        },
    })
}

/// Moves a partition's next offset on, and drops the partition once it reaches its end.
fn advance(next: &mut RefillMarks, ends: &RefillMarks, partition: i32, to: i64) {
    let Some(current) = next.get_mut(&partition) else {
        return;
    };
    *current = (*current).max(to);
    if ends.get(&partition).is_some_and(|end| *current >= *end) {
        next.remove(&partition);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_partition_is_done_once_it_reaches_the_end_found_at_the_start() {
        let ends = RefillMarks::from([(0, 10), (1, 5)]);
        let mut next = RefillMarks::from([(0, 3), (1, 4)]);
        advance(&mut next, &ends, 0, 7);
        advance(&mut next, &ends, 1, 5);
        assert_eq!(next, RefillMarks::from([(0, 7)]));
        // Never backwards (a repeated record), and past the end (compaction) ends it too.
        advance(&mut next, &ends, 0, 4);
        assert_eq!(next, RefillMarks::from([(0, 7)]));
        advance(&mut next, &ends, 0, 12);
        assert!(next.is_empty());
    }
}
