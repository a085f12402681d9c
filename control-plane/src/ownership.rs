//! Which clients this control plane acts on, when several share them (`CP_OWNERSHIP=group`).
//!
//! Every control plane reads the whole registry and every heartbeat (ingest is unchanged),
//! so each one's table, and its API, knows every client. Acting (creating, restarting,
//! adopting, reaping workers, deleting a client's data) is what is shared out: the control
//! planes form a consumer group on `cluster.registry`, and a client belongs to whoever is
//! assigned the registry partition its id maps to ([`partition_of`]: librdkafka's
//! default partitioner over the id, so a registration keyed by the client id, as agents
//! send it, lands in the partition whose owner acts on it). The partition is computed from
//! the id, not read from where a record landed: registry keys are not reliable
//! (`../shared/docs/protocol.md`: the 2.1.x split fragment is keyed `{"client_id"`), and a
//! worker whose client left the table still has an owner, the one that reaps it.
//!
//! The handover is the group's own: on a rebalance every member's revocation runs before
//! any new assignment is handed out (the eager protocol), and the revocation here waits
//! until the controller has stopped acting on those clients ([`OwnershipChange::Revoked`]
//! carries the signal it answers once no action of theirs is in flight). A control plane
//! that is killed never acts again; one cut off from Kafka has its assignment declared
//! lost by librdkafka after the session timeout, which revokes it the same way, while the
//! group hands the partitions on after the same timeout.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use kg_shared::kafka::KafkaArgs;
use kg_shared::topics::CLUSTER_REGISTRY;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::KafkaError;
use rdkafka::{ClientContext, TopicPartitionList};
use serde::Serialize;
use tokio::sync::{mpsc, watch};
use tracing::{error, info, warn};

use crate::input::Input;
use crate::metrics::ControlPlaneMetrics;

/// The registry partition a client's id maps to: librdkafka's default ("consistent_random")
/// partitioner for a keyed record, CRC-32 of the key modulo the partition count, so the
/// partition an agent's registration keyed by its client id lands in.
pub fn partition_of(client_id: &str, partitions: i32) -> i32 {
    if partitions <= 0 {
        return 0;
    }
    (crc32(client_id.as_bytes()) % partitions as u32) as i32
}

/// CRC-32 (IEEE 802.3, reflected, as zlib and librdkafka's `rd_crc32`).
fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for byte in bytes {
        crc ^= u32::from(*byte);
        for _ in 0..8 {
            let mask = (crc & 1).wrapping_neg();
            crc = (crc >> 1) ^ (0xEDB8_8320 & mask);
        }
    }
    !crc
}

/// The clients this control plane acts on.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(tag = "mode", rename_all = "snake_case")]
pub enum Ownership {
    /// The only control plane: every client.
    #[default]
    All,
    /// One of several: the clients of the registry partitions the group assigned to it,
    /// out of `count`. None before the first assignment.
    Partitions { owned: BTreeSet<i32>, count: i32 },
}

impl Ownership {
    /// A member of the group before its first assignment: nothing.
    pub fn nothing_yet() -> Self {
        Ownership::Partitions {
            owned: BTreeSet::new(),
            count: 0,
        }
    }

    pub fn owns(&self, client_id: &str) -> bool {
        match self {
            Ownership::All => true,
            Ownership::Partitions { owned, count } => {
                *count > 0 && owned.contains(&partition_of(client_id, *count))
            }
        }
    }

    /// Gives up `partitions`.
    pub fn revoke(&mut self, partitions: &[i32]) {
        if let Ownership::Partitions { owned, .. } = self {
            for partition in partitions {
                owned.remove(partition);
            }
        }
    }

    /// Takes `partitions` of a registry with `count` partitions.
    pub fn assign(&mut self, partitions: &[i32], count: i32) {
        if let Ownership::Partitions {
            owned,
            count: known,
        } = self
        {
            // The assignment names partitions the metadata may not show yet (partitions
            // just added): the count is at least one past the highest assigned.
            // Partitions are never taken away from a topic: a count lower than one seen
            // before is stale metadata, and using it would map clients to partitions
            // another control plane owns under the right count.
            let highest = partitions.iter().copied().max().unwrap_or(-1);
            *known = count.max(highest + 1).max(*known);
            owned.extend(partitions.iter().copied());
        }
    }

    /// How many registry partitions are this control plane's (all of them: -1).
    pub fn owned_count(&self) -> i64 {
        match self {
            Ownership::All => -1,
            Ownership::Partitions { owned, .. } => owned.len() as i64,
        }
    }
}

/// What the group told this control plane, for the controller to apply.
#[derive(Debug, Clone)]
pub enum OwnershipChange {
    /// These partitions are no longer ours. `released` is answered once no action on their
    /// clients is in flight; the group's rebalance waits for it.
    Revoked {
        partitions: Vec<i32>,
        released: Option<std::sync::mpsc::SyncSender<()>>,
    },
    /// These partitions are ours now, of a registry of `count` partitions.
    Assigned { partitions: Vec<i32>, count: i32 },
}

/// Settings of the ownership group.
#[derive(Debug, Clone)]
pub struct GroupSettings {
    pub group_id: String,
    /// After this long without a heartbeat from a control plane, the group hands its
    /// partitions on (and librdkafka declares them lost on that control plane's side).
    pub session_timeout: Duration,
    /// The longest a revocation waits for the controller's in-flight actions on the
    /// clients it gives up (the longest action: a recreation's stop, remove, create and
    /// start); past it the handover goes on (logged).
    pub release_timeout: Duration,
}

impl GroupSettings {
    /// The group's rebalance timeout (`max.poll.interval.ms`): longer than a revocation
    /// may block, or the group would drop this member while it lets go.
    fn rebalance_timeout(&self) -> Duration {
        (self.release_timeout + Duration::from_secs(30)).max(self.session_timeout)
    }
}

/// The group member's context: turns rebalances into [`OwnershipChange`]s.
struct GroupContext {
    inputs: mpsc::Sender<Input>,
    release_timeout: Duration,
    /// The registry's partition count as last read.
    count: AtomicI32,
    metrics: Arc<ControlPlaneMetrics>,
}

impl ClientContext for GroupContext {}

impl GroupContext {
    fn count_change(&self, kind: &str) {
        self.metrics
            .ownership_changes
            .get_or_create(&crate::metrics::ReasonLabel {
                reason: kind.into(),
            })
            .inc();
    }
}

impl ConsumerContext for GroupContext {
    fn pre_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let Rebalance::Revoke(list) = rebalance else {
            return;
        };
        let partitions = registry_partitions(list);
        if partitions.is_empty() {
            return;
        }
        self.count_change("revoked");
        let (released, wait) = std::sync::mpsc::sync_channel(1);
        let change = OwnershipChange::Revoked {
            partitions: partitions.clone(),
            released: Some(released),
        };
        if self.inputs.blocking_send(Input::Ownership(change)).is_err() {
            // The controller is gone: nothing acts on these clients any more.
            return;
        }
        match wait.recv_timeout(self.release_timeout) {
            Ok(()) => info!(
                ?partitions,
                "registry partitions given up; their clients' actions finished"
            ),
            Err(_) => {
                warn!(?partitions, timeout = ?self.release_timeout, "registry partitions given up while actions on their clients were still in flight")
            }
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let Rebalance::Assign(list) = rebalance else {
            return;
        };
        let partitions = registry_partitions(list);
        if partitions.is_empty() {
            return;
        }
        if let Ok(count) = registry_partition_count(consumer, Duration::from_secs(5)) {
            self.count.store(count, Ordering::Relaxed);
        }
        self.count_change("assigned");
        info!(
            ?partitions,
            "registry partitions assigned; acting on their clients"
        );
        let change = OwnershipChange::Assigned {
            partitions,
            count: self.count.load(Ordering::Relaxed),
        };
        let _ = self.inputs.blocking_send(Input::Ownership(change));
    }
}

fn registry_partitions(list: &TopicPartitionList) -> Vec<i32> {
    list.elements()
        .iter()
        .filter(|element| element.topic() == CLUSTER_REGISTRY)
        .map(|element| element.partition())
        .collect()
}

fn registry_partition_count<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    timeout: Duration,
) -> Result<i32, String> {
    let metadata = consumer
        .fetch_metadata(Some(CLUSTER_REGISTRY), timeout)
        .map_err(|error| error.to_string())?;
    let count = metadata
        .topics()
        .iter()
        .filter(|topic| topic.name() == CLUSTER_REGISTRY && topic.error().is_none())
        .map(|topic| topic.partitions().len() as i32)
        .next()
        .unwrap_or(0);
    if count == 0 {
        return Err(format!(
            "{CLUSTER_REGISTRY} has no partitions (does it exist?)"
        ));
    }
    Ok(count)
}

/// Failures of the ownership group.
#[derive(Debug, thiserror::Error)]
pub enum OwnershipError {
    #[error("failed to create the ownership group's consumer: {0}")]
    Consumer(#[source] KafkaError),
    #[error("failed to join the ownership group: {0}")]
    Subscribe(#[source] KafkaError),
}

/// Joins the group once `replayed` turns true (a control plane that has not read the
/// registry yet must not take clients it cannot act on), and stays in it until `stop`.
/// Runs on a thread of its own: the revocation blocks its caller until the controller has
/// let go, and librdkafka calls it from the thread that polls.
pub fn spawn_group(
    kafka: &KafkaArgs,
    settings: GroupSettings,
    inputs: mpsc::Sender<Input>,
    replayed: impl Fn() -> bool + Send + 'static,
    stop: watch::Receiver<bool>,
    metrics: Arc<ControlPlaneMetrics>,
) -> Result<std::thread::JoinHandle<()>, OwnershipError> {
    let consumer: BaseConsumer<GroupContext> = kafka
        .client_config()
        .set("group.id", &settings.group_id)
        .set(
            "session.timeout.ms",
            settings.session_timeout.as_millis().to_string(),
        )
        // Survivors learn of a rebalance from a heartbeat's answer: at most a second
        // apart, the handover after a member's session timeout waits little more.
        .set(
            "heartbeat.interval.ms",
            (settings.session_timeout.as_millis() / 4)
                .clamp(100, 1000)
                .to_string(),
        )
        // The records are not what this member is for: it reads none it would act on
        // (ingest reads the registry), commits nothing, and starts at the end.
        .set(
            "max.poll.interval.ms",
            settings.rebalance_timeout().as_millis().to_string(),
        )
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "latest")
        .set("queued.max.messages.kbytes", "64")
        .set("partition.assignment.strategy", "range")
        .create_with_context(GroupContext {
            inputs,
            release_timeout: settings.release_timeout,
            count: AtomicI32::new(0),
            metrics,
        })
        .map_err(OwnershipError::Consumer)?;
    let handle = std::thread::Builder::new()
        .name("ownership".into())
        .spawn(move || run_member(consumer, replayed, stop))
        .expect("spawning a thread");
    Ok(handle)
}

fn run_member(
    consumer: BaseConsumer<GroupContext>,
    replayed: impl Fn() -> bool,
    stop: watch::Receiver<bool>,
) {
    // Wait for the replay, and for the registry's partition count.
    loop {
        if *stop.borrow() {
            return;
        }
        if replayed() {
            match registry_partition_count(&consumer, Duration::from_secs(5)) {
                Ok(count) => {
                    consumer.context().count.store(count, Ordering::Relaxed);
                    break;
                }
                Err(reason) => warn!(%reason, "the ownership group waits for the registry"),
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    while let Err(error) = consumer.subscribe(&[CLUSTER_REGISTRY]) {
        error!(%error, "failed to join the ownership group; this control plane acts on no client until it has; retrying");
        if *stop.borrow() {
            return;
        }
        std::thread::sleep(Duration::from_secs(2));
    }
    info!("joined the ownership group");
    while !*stop.borrow() {
        // Polling serves the group's heartbeats and rebalances; records are dropped.
        if let Some(Err(error)) = consumer.poll(Duration::from_millis(200)) {
            warn!(%error, "ownership group");
        }
    }
    // Leaving: the revocation runs (the controller is gone by now, so it returns at
    // once) and the group hands the partitions on without waiting for a session timeout.
    consumer.unsubscribe();
    let _ = consumer.poll(Duration::from_millis(100));
    info!("left the ownership group");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_partition_is_librdkafkas_crc32_of_the_client_id() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
        assert_eq!(crc32(b""), 0);
        for count in [1, 3, 6, 12] {
            for client in ["af-9", "c1", "tenant-0042"] {
                let partition = partition_of(client, count);
                assert!((0..count).contains(&partition));
                assert_eq!(partition, (crc32(client.as_bytes()) % count as u32) as i32);
            }
        }
    }

    #[test]
    fn a_control_plane_owns_the_clients_of_its_partitions_only() {
        let mut ownership = Ownership::nothing_yet();
        assert!(
            !ownership.owns("af-9"),
            "nothing before the first assignment"
        );
        let mine = partition_of("af-9", 3);
        ownership.assign(&[mine], 3);
        assert!(ownership.owns("af-9"));
        let other = (0..100)
            .map(|i| format!("c{i}"))
            .find(|c| partition_of(c, 3) != mine)
            .expect("a client of another partition");
        assert!(!ownership.owns(&other));
        ownership.revoke(&[mine]);
        assert!(!ownership.owns("af-9"));
        assert!(Ownership::All.owns(&other));
    }

    #[test]
    fn an_assignment_past_the_known_count_widens_it() {
        let mut ownership = Ownership::nothing_yet();
        ownership.assign(&[0, 5], 3);
        assert_eq!(
            ownership,
            Ownership::Partitions {
                owned: [0, 5].into_iter().collect(),
                count: 6
            }
        );
    }
}
