//! Records a consumer cannot decode (`kg_shared::unreadable`): skipped, counted and
//! dead-lettered, on either of the attributor's consumers.

use std::time::Duration;

use chrono::Utc;
use kg_shared::topics::DLQ_NORMALIZED;
use kg_shared::unreadable::skip_unreadable;
use rdkafka::consumer::StreamConsumer;
use rdkafka::error::KafkaError;
use rdkafka::producer::{FutureProducer, FutureRecord};
use tracing::warn;

use crate::metrics::WorkerMetrics;

/// Moves `consumer` past the records it cannot decode (`kg_shared::unreadable`), counts them
/// and dead-letters each run (queued, not awaited: the attributor's copies are its only
/// other output). Returns, per run, the partition and where reading resumes.
pub(super) fn skip_and_dead_letter<C: rdkafka::consumer::ConsumerContext>(
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
