//! What becomes of one untagged event: copied, unchanged, to `raw.k8s.events` keyed for the
//! one client that claims its object; parked until its object is reported; or counted and
//! left unattributed. An acknowledged copy finishes its input record; a failed one is
//! produced again.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use chrono::Utc;
use futures::stream::FuturesUnordered;
use kg_shared::attribution::{attribute, Attribution, OwnerIndex, Parked};
use kg_shared::topics::RAW_K8S_EVENTS;
use rdkafka::producer::future_producer::OwnedDeliveryResult;
use rdkafka::producer::{FutureProducer, FutureRecord};
use tracing::warn;

use super::offsets::OffsetTracker;
use super::Waiting;
use crate::metrics::WorkerMetrics;

pub(super) type Delivery = Pin<Box<dyn Future<Output = (Waiting, OwnedDeliveryResult)> + Send>>;

/// Attributes, parks or counts one untagged event.
#[allow(clippy::too_many_arguments)]
pub(super) fn decide(
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

pub(super) fn unattributed(
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
pub(super) fn delivered(
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
