//! A delay stage whose holds are ended by input records (`end_when`: an alert's
//! resolution) must not emit a session before it has read the input that was there when
//! the worker started. A worker that starts after a session's due time (it was down, or
//! restarting) would otherwise emit the session at once, while the record that ended it
//! waits, unread, in the input.
//!
//! So the scheduler waits until the pipeline's consumer group has committed, in every
//! partition of its inputs, the end offset the partition had at start: every record that
//! was there has then been taken in (and an ending record has ended its session in the
//! store, which is synced before the commit). Committed offsets are read with a consumer
//! of the same group that never joins it (an offset fetch needs no membership).

use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use tokio::sync::watch;
use tracing::{info, warn};

use super::state::CatchUp;

/// An input partition and the end offset it had at start.
type PartitionEnd = (String, i32, i64);

/// How long one Kafka request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// How often the committed offsets are looked at.
const LOOK_EVERY: Duration = Duration::from_millis(250);

/// Where the input is read from: the pipeline's group, and whether a group that never
/// committed starts at the end (`auto.offset.reset = latest`: what came before is never
/// read, so not waited for).
#[derive(Debug, Clone)]
pub struct InputGroup {
    pub group: String,
    pub topics: Vec<String>,
    pub from_latest: bool,
}

/// Sets `read` caught up once the group has committed, in each partition of its topics,
/// the end it had when this was called; returns then, or at shutdown. The Kafka calls
/// block: the wait runs on a thread of its own.
pub async fn await_start_end(
    config: ClientConfig,
    input: InputGroup,
    read: Arc<CatchUp>,
    shutdown: watch::Receiver<bool>,
) {
    let waited = tokio::task::spawn_blocking(move || wait(&config, &input, &read, &shutdown));
    if let Err(error) = waited.await {
        warn!(%error, "the wait for the input to be read ended early; held sessions keep waiting");
    }
}

fn wait(
    config: &ClientConfig,
    input: &InputGroup,
    read: &CatchUp,
    shutdown: &watch::Receiver<bool>,
) {
    let stopped = || *shutdown.borrow();
    let consumer: BaseConsumer = loop {
        let created = config
            .clone()
            .set("group.id", &input.group)
            .set("enable.auto.commit", "false")
            .create();
        match created {
            Ok(consumer) => break consumer,
            Err(error) => {
                warn!(%error, "cannot create the input's offset reader; held sessions wait")
            }
        }
        if stopped() {
            return;
        }
        std::thread::sleep(LOOK_EVERY);
    };
    let mut ends: Option<Vec<PartitionEnd>> = None;
    while !stopped() {
        match look(&consumer, input, ends.clone()) {
            Ok((found, true)) => {
                info!(
                    partitions = found.len(),
                    "the input is read to where it ended at start; held sessions may be emitted"
                );
                read.set_caught_up(true);
                return;
            }
            Ok((found, false)) => ends = Some(found),
            Err(error) => {
                warn!(%error, "cannot tell how far the input is read; held sessions wait")
            }
        }
        std::thread::sleep(LOOK_EVERY);
    }
}

/// The partitions' end offsets at start (found now if not `known`), and whether the group
/// has committed each of them.
fn look(
    consumer: &BaseConsumer,
    input: &InputGroup,
    known: Option<Vec<PartitionEnd>>,
) -> Result<(Vec<PartitionEnd>, bool), KafkaError> {
    let ends = match known {
        Some(ends) => ends,
        None => start_ends(consumer, &input.topics)?,
    };
    if ends.is_empty() {
        return Ok((ends, true));
    }
    let mut wanted = TopicPartitionList::new();
    for (topic, partition, _) in &ends {
        wanted.add_partition(topic, *partition);
    }
    let committed = consumer.committed_offsets(wanted, REQUEST_TIMEOUT)?;
    let mut done = true;
    for (topic, partition, end) in &ends {
        let at = match committed
            .find_partition(topic, *partition)
            .map(|p| p.offset())
        {
            Some(Offset::Offset(at)) => Some(at),
            _ => None,
        };
        if at.is_some_and(|at| at >= *end) {
            continue;
        }
        // Not there yet: unless nothing up to the end is left to read (retention deleted
        // it), or the group starts, or restarts past deleted offsets, at the end.
        let (low, _) = consumer.fetch_watermarks(topic, *partition, REQUEST_TIMEOUT)?;
        let starts_at_end = input.from_latest && at.is_none_or(|at| at < low);
        if low >= *end || starts_at_end {
            continue;
        }
        done = false;
    }
    Ok((ends, done))
}

/// Each input partition holding records, with its end offset now. A topic that does not
/// exist (the optional `raw.prom.alerts`) has none.
fn start_ends(consumer: &BaseConsumer, topics: &[String]) -> Result<Vec<PartitionEnd>, KafkaError> {
    let mut ends = Vec::new();
    for topic in topics {
        let metadata = consumer.fetch_metadata(Some(topic), REQUEST_TIMEOUT)?;
        for found in metadata.topics() {
            match found.error() {
                None => {}
                // A topic that does not exist has nothing to read (the optional
                // raw.prom.alerts); any other error is asked again.
                Some(RDKafkaRespErr::RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART) => continue,
                Some(error) => {
                    return Err(KafkaError::MetadataFetch(RDKafkaErrorCode::from(error)))
                }
            }
            for partition in found.partitions() {
                let (low, high) =
                    consumer.fetch_watermarks(topic, partition.id(), REQUEST_TIMEOUT)?;
                if high > low {
                    ends.push((topic.clone(), partition.id(), high));
                }
            }
        }
    }
    Ok(ends)
}
