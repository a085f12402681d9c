//! Reading a role's input again from the start, for a handler whose own state was lost:
//! a graph builder whose store is empty while its consumer group has committed offsets
//! (it was recreated on a node without its client's volume, or the file was deleted)
//! would otherwise read only what comes after those offsets and keep an empty graph.
//!
//! The partitions to rewind are those of the input topics where the group has a
//! committed offset, found before the consumer subscribes (an offset fetch needs no group
//! membership). Each is assigned at its beginning the first time the group hands it over
//! (the offsets are set in the rebalance callback, so no committed offset can race a
//! seek), and again on every assignment until a commit of it lands: an assignment after
//! the rebuild has committed goes on from the commits, but one that comes before (a
//! second rebalance right after the first, as when a cut-off copy of the worker leaves
//! the group late) must not go on from the old commit, or that partition's rebuild is
//! skipped (seen on three swarm nodes: 400 of 600 episodes rebuilt).

use std::collections::HashSet;
use std::sync::Mutex;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::{Offset, TopicPartitionList};
use tracing::{info, warn};

/// The partitions still to be read from their beginning: not assigned yet, or assigned
/// from their beginning with no commit of them since.
#[derive(Debug, Default)]
pub struct Rewind {
    pending: Mutex<HashSet<(String, i32)>>,
}

impl Rewind {
    /// A commit of these offsets landed: their partitions' rebuild is under way and the
    /// commits say where it stands.
    pub fn committed(&self, offsets: &TopicPartitionList) {
        let mut pending = self
            .pending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if pending.is_empty() {
            return;
        }
        for element in offsets.elements() {
            if matches!(element.offset(), Offset::Offset(_))
                && pending.remove(&(element.topic().to_string(), element.partition()))
            {
                info!(
                    topic = element.topic(),
                    partition = element.partition(),
                    "rebuilt partition committed; later assignments go on from its commits"
                );
            }
        }
    }
}

impl Rewind {
    /// Marks the partitions of `topics` where `consumer`'s group has committed offsets.
    /// A failure to look is logged and rewinds nothing (the role starts as it would have).
    pub fn fill_from_committed<C: ConsumerContext>(
        &self,
        consumer: &impl Consumer<C>,
        topics: &[&str],
        timeout: Duration,
    ) {
        let mut all = TopicPartitionList::new();
        for topic in topics {
            match consumer.fetch_metadata(Some(topic), timeout) {
                Ok(metadata) => {
                    for found in metadata.topics() {
                        for partition in found.partitions() {
                            all.add_partition(found.name(), partition.id());
                        }
                    }
                }
                Err(error) => {
                    warn!(%error, topic, "cannot list the partitions to rebuild from; not rewinding");
                    return;
                }
            }
        }
        let committed = match consumer.committed_offsets(all, timeout) {
            Ok(committed) => committed,
            Err(error) => {
                warn!(%error, "cannot read the group's committed offsets; not rewinding");
                return;
            }
        };
        let found: HashSet<(String, i32)> = committed
            .elements()
            .iter()
            .filter(|element| matches!(element.offset(), Offset::Offset(_)))
            .map(|element| (element.topic().to_string(), element.partition()))
            .collect();
        if !found.is_empty() {
            info!(
                partitions = found.len(),
                "the store is empty but the group has committed offsets: reading those partitions again from their beginning"
            );
        }
        *self
            .pending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = found;
    }

    /// Sets each pending partition of an assignment to its beginning (it stays pending
    /// until a commit of it lands); returns how many it set.
    pub fn apply(&self, assignment: &mut TopicPartitionList) -> usize {
        let pending = self
            .pending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if pending.is_empty() {
            return 0;
        }
        let mut set = 0;
        let assigned: Vec<(String, i32)> = assignment
            .elements()
            .iter()
            .map(|element| (element.topic().to_string(), element.partition()))
            .collect();
        for key in assigned {
            if pending.contains(&key) {
                if let Err(error) =
                    assignment.set_partition_offset(&key.0, key.1, Offset::Beginning)
                {
                    warn!(%error, topic = key.0, partition = key.1, "cannot rewind");
                } else {
                    set += 1;
                }
            }
        }
        set
    }

    /// Partitions not rebuilt from yet (no commit of them since their rewind).
    pub fn pending(&self) -> usize {
        self.pending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .len()
    }
}

/// The rebalance librdkafka would do, with [`Rewind::apply`] on each assignment.
pub fn rebalance<C: ConsumerContext>(
    rewind: &Rewind,
    consumer: &BaseConsumer<C>,
    error: rdkafka::types::RDKafkaRespErr,
    partitions: &mut TopicPartitionList,
) {
    use rdkafka::consumer::RebalanceProtocol;
    use rdkafka::types::RDKafkaRespErr;
    let cooperative = matches!(
        consumer.rebalance_protocol(),
        RebalanceProtocol::Cooperative
    );
    let result = match error {
        RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
            let rewound = rewind.apply(partitions);
            if rewound > 0 {
                info!(
                    partitions = rewound,
                    "assigned from their beginning (rebuild)"
                );
            }
            if cooperative {
                consumer.incremental_assign(partitions)
            } else {
                consumer.assign(partitions)
            }
        }
        RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
            if cooperative {
                consumer.incremental_unassign(partitions)
            } else {
                consumer.unassign()
            }
        }
        other => {
            warn!(error = ?other, "rebalance failed; unassigning");
            consumer.unassign()
        }
    };
    if let Err(error) = result {
        warn!(%error, "applying the rebalance failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_pending_partition_starts_at_its_beginning_until_a_commit_of_it_lands() {
        let rewind = Rewind {
            pending: Mutex::new(HashSet::from([
                ("events.normalized".to_string(), 0),
                ("events.normalized".to_string(), 2),
            ])),
        };
        let mut first = TopicPartitionList::new();
        first.add_partition("events.normalized", 0);
        first.add_partition("events.normalized", 1);
        assert_eq!(rewind.apply(&mut first), 1);
        let offsets: Vec<(i32, Offset)> = first
            .elements()
            .iter()
            .map(|e| (e.partition(), e.offset()))
            .collect();
        assert_eq!(offsets, [(0, Offset::Beginning), (1, Offset::Invalid)]);
        assert_eq!(rewind.pending(), 2);
        // A second rebalance before any commit: partition 0 starts over again.
        let mut again = TopicPartitionList::new();
        again.add_partition("events.normalized", 0);
        assert_eq!(
            rewind.apply(&mut again),
            1,
            "no commit of 0 yet: rewound again"
        );
        let mut commit = TopicPartitionList::new();
        commit
            .add_partition_offset("events.normalized", 0, Offset::Offset(7))
            .unwrap();
        rewind.committed(&commit);
        let mut later = TopicPartitionList::new();
        later.add_partition("events.normalized", 0);
        later.add_partition("events.normalized", 2);
        assert_eq!(
            rewind.apply(&mut later),
            1,
            "partition 0 goes on from its commit; 2 starts at its beginning"
        );
        assert_eq!(rewind.pending(), 1, "2 until a commit of it lands");
    }
}
