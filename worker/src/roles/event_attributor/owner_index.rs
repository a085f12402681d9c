//! The owner index at start: `state.k8s.resource`, read from the beginning of every
//! partition up to the end it has when the attributor starts, before any event is looked
//! at. (After that the role's loop keeps reading it: `mod.rs`.)

use std::collections::HashMap;
use std::time::Duration;

use kg_shared::attribution::OwnerIndex;
use kg_shared::topics::STATE_K8S_RESOURCE;
use kg_shared::unreadable::is_unreadable;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::producer::FutureProducer;
use rdkafka::{Offset, TopicPartitionList};
use tracing::warn;

use super::unreadable::skip_and_dead_letter;
use crate::metrics::WorkerMetrics;
use crate::WorkerError;

/// Reads `state.k8s.resource` from the beginning up to the end it has now.
pub(super) async fn build_index(
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
