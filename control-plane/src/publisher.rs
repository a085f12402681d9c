//! The control plane's producer: dead letters (ingest's rejected and skipped records) and
//! tombstones asked for over the API.
//!
//! A dead letter is queued and never awaited: its delivery is counted in librdkafka's
//! delivery callback, on the producer's own thread. A flood of bad records is then
//! rejected as fast as it is read, with no task, future or channel per rejection, and the
//! valid records behind it are not delayed by one round trip per bad one
//! (`docs/benchmarks.md`, "Heartbeat ingest"). A tombstone is awaited: the API answers
//! only once it is durable.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kg_shared::dlq::DeadLetter;
use kg_shared::kafka::KafkaArgs;
use kg_shared::log_limit::{LogLimiter, LogVerdict};
use kg_shared::topics::{CLUSTER_REGISTRY, DLQ_RAW};
use kg_shared::ClientId;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::DeliveryResult;
use rdkafka::producer::{BaseRecord, Producer, ProducerContext, ThreadedProducer};
use rdkafka::util::Timeout;
use rdkafka::ClientContext;
use tokio::sync::oneshot;
use tracing::warn;

use crate::ingest::IngestError;
use crate::metrics::ControlPlaneMetrics;

/// What a produced record was, so its delivery report reaches the right place.
pub enum Delivery {
    /// Counted, and logged boundedly when it failed.
    DeadLetter,
    /// Handed back to the API call waiting for it.
    Tombstone(oneshot::Sender<Result<(), KafkaError>>),
}

/// Receives the producer's delivery reports.
pub struct PublisherContext {
    metrics: Arc<ControlPlaneMetrics>,
    /// With the broker gone, every queued dead letter fails: counted, not logged each.
    failures_log: Mutex<LogLimiter>,
}

impl ClientContext for PublisherContext {}

impl ProducerContext for PublisherContext {
    type DeliveryOpaque = Box<Delivery>;

    fn delivery(&self, result: &DeliveryResult<'_>, delivery: Box<Delivery>) {
        match *delivery {
            Delivery::DeadLetter => match result {
                Ok(_) => {
                    self.metrics.dead_letters.inc();
                }
                Err((error, _)) => {
                    self.metrics.dead_letters_failed.inc();
                    let verdict = self
                        .failures_log
                        .lock()
                        .map(|mut log| log.check("dead_letter_failed", Instant::now()));
                    if let Ok(LogVerdict::Log { suppressed }) = verdict {
                        warn!(%error, suppressed_since_last = suppressed, "failed to dead-letter a skipped record");
                    }
                }
            },
            Delivery::Tombstone(reply) => {
                let _ = reply.send(result.as_ref().map(|_| ()).map_err(|(e, _)| e.clone()));
            }
        }
    }
}

/// How long a dead letter waits for room in a full producer queue, per attempt, and how
/// many attempts: back-pressure, bounded so shutdown stays prompt.
const QUEUE_FULL_WAIT: Duration = Duration::from_millis(200);
const QUEUE_FULL_ATTEMPTS: u32 = 5;

/// How long a tombstone waits for room in a full producer queue.
const TOMBSTONE_QUEUE_WAIT: Duration = Duration::from_secs(30);

/// The control plane's producer.
pub struct Publisher {
    producer: ThreadedProducer<PublisherContext>,
}

impl Publisher {
    pub fn new(kafka: &KafkaArgs, metrics: Arc<ControlPlaneMetrics>) -> Result<Self, IngestError> {
        let producer = kafka
            .client_config()
            // lz4 rather than zstd: a dead letter keeps the original record, and in a flood
            // compressing them is most of the producer's work; lz4 costs a fraction of it.
            .set("compression.type", "lz4")
            .set("enable.idempotence", "true")
            .set("linger.ms", "5")
            // Dead letters and tombstones are few; a small queue keeps the idle footprint small.
            .set("queue.buffering.max.kbytes", "4096")
            .create_with_context(PublisherContext {
                metrics,
                failures_log: Mutex::new(LogLimiter::default()),
            })
            .map_err(IngestError::Producer)?;
        Ok(Self { producer })
    }

    /// Queues a dead letter; its delivery is counted when the broker acknowledges it. Only
    /// when the producer's queue is full does this wait (`QUEUE_FULL_WAIT`, at most
    /// `QUEUE_FULL_ATTEMPTS` times).
    pub async fn dead_letter_in_background(
        &self,
        letter: &DeadLetter,
        metrics: &ControlPlaneMetrics,
    ) {
        let value = letter.to_json();
        let key = letter.key.clone().unwrap_or_default();
        let mut attempts = 0;
        loop {
            let record = BaseRecord::with_opaque_to(DLQ_RAW, Box::new(Delivery::DeadLetter))
                .key(&key)
                .payload(&value);
            match self.producer.send(record) {
                Ok(()) => return,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _))
                    if attempts < QUEUE_FULL_ATTEMPTS =>
                {
                    attempts += 1;
                    tokio::time::sleep(QUEUE_FULL_WAIT).await;
                }
                Err((error, _)) => {
                    metrics.dead_letters_failed.inc();
                    warn!(%error, "failed to queue a dead letter");
                    return;
                }
            }
        }
    }

    /// Waits, at most `timeout`, for queued dead letters and tombstones to be delivered:
    /// dropping the producer would discard them.
    pub fn flush(&self, timeout: Duration) {
        if let Err(error) = self.producer.flush(Timeout::After(timeout)) {
            warn!(%error, "undelivered dead letters at shutdown");
        }
    }

    /// Deregisters durably: a tombstone on `cluster.registry`, which ingest then applies
    /// like the chart's pre-delete hook. Returns once the broker has it.
    pub async fn tombstone(&self, client: &ClientId) -> Result<(), IngestError> {
        let failed = |error: KafkaError| IngestError::Tombstone {
            client: client.to_string(),
            reason: error.to_string(),
        };
        let deadline = tokio::time::Instant::now() + TOMBSTONE_QUEUE_WAIT;
        let delivered = loop {
            let (reply, delivered) = oneshot::channel();
            let record: BaseRecord<'_, str, [u8], Box<Delivery>> =
                BaseRecord::with_opaque_to(CLUSTER_REGISTRY, Box::new(Delivery::Tombstone(reply)))
                    .key(client.as_str());
            match self.producer.send(record) {
                Ok(()) => break delivered,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _))
                    if tokio::time::Instant::now() < deadline =>
                {
                    tokio::time::sleep(QUEUE_FULL_WAIT).await;
                }
                Err((error, _)) => return Err(failed(error)),
            }
        };
        match delivered.await {
            Ok(result) => result.map_err(failed),
            Err(_) => Err(failed(KafkaError::Canceled)),
        }
    }
}
