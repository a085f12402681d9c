//! Delivery to Kafka. At least once: a record is retried until Kafka acknowledges it, and
//! the watch that produced it waits meanwhile, so an unreachable Kafka slows the agent
//! down but loses nothing (the API server's watch simply resumes from the last version
//! the agent acknowledged).

use std::sync::Arc;
use std::time::Duration;

use kg_shared::kafka::KafkaArgs;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::util::Timeout;

use crate::metrics::{AgentMetrics, TopicLabel};

/// The topics the agent writes to.
#[derive(Debug, Clone)]
pub struct Topics {
    pub registry: String,
    pub heartbeat: String,
    pub events: String,
    pub resource: String,
    pub topology: String,
}

/// A producer with the agent's delivery policy.
#[derive(Clone)]
pub struct Sink {
    producer: FutureProducer,
    metrics: Arc<AgentMetrics>,
}

/// A delivery that did not happen before its deadline.
#[derive(Debug, thiserror::Error)]
#[error("Kafka did not acknowledge a record on {topic} within {waited:?}: {last_error}")]
pub struct DeliveryTimeout {
    pub topic: String,
    pub waited: Duration,
    pub last_error: String,
}

impl Sink {
    pub fn new(kafka: &KafkaArgs, metrics: Arc<AgentMetrics>) -> anyhow::Result<Self> {
        let producer: FutureProducer = kafka
            .client_config()
            .set("client.id", "kg-rca-agent")
            // Idempotent: a retried record is written once, in order.
            .set("enable.idempotence", "true")
            .set("compression.type", "lz4")
            .set("linger.ms", "20")
            // A delivery attempt gives up after this; `send` retries it, so a Kafka outage
            // stalls the agent rather than losing records.
            .set("message.timeout.ms", "30000")
            .create()?;
        Ok(Self { producer, metrics })
    }

    /// Sends one record, retrying until it is acknowledged or `deadline` (if any) passes.
    pub async fn send(
        &self,
        topic: &str,
        key: &str,
        value: Option<&[u8]>,
        deadline: Option<Duration>,
    ) -> Result<(), DeliveryTimeout> {
        let started = tokio::time::Instant::now();
        let mut backoff = Duration::from_millis(200);
        loop {
            let mut record: FutureRecord<'_, str, [u8]> = FutureRecord::to(topic).key(key);
            if let Some(value) = value {
                record = record.payload(value);
            }
            let remaining = deadline.map(|d| d.saturating_sub(started.elapsed()));
            let queue_timeout = remaining.unwrap_or(Duration::from_secs(30));
            let error = match self
                .producer
                .send(record, Timeout::After(queue_timeout))
                .await
            {
                Ok(_) => {
                    self.metrics
                        .records_sent
                        .get_or_create(&TopicLabel {
                            topic: topic.to_string(),
                        })
                        .inc();
                    return Ok(());
                }
                Err((error, _)) => error,
            };
            self.metrics.send_retries.inc();
            if let Some(deadline) = deadline {
                if started.elapsed() + backoff >= deadline {
                    return Err(DeliveryTimeout {
                        topic: topic.to_string(),
                        waited: started.elapsed(),
                        last_error: error.to_string(),
                    });
                }
            }
            tracing::warn!(topic, key, %error, retry_in_ms = backoff.as_millis() as u64, "delivery failed; retrying");
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(10));
        }
    }

    /// Waits for everything queued to be acknowledged.
    pub fn flush(&self, timeout: Duration) {
        let _ = self.producer.flush(Timeout::After(timeout));
    }
}
