//! The agent's Prometheus metrics, labelled with its client id.

use kg_shared::exposition::{render, ExpositionFormat};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TopicLabel {
    pub topic: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WatchErrorLabel {
    pub kind: String,
    pub reason: String,
}

pub struct AgentMetrics {
    registry: Registry,
    /// Records acknowledged by Kafka, by topic (tombstones included).
    pub records_sent: Family<TopicLabel, Counter>,
    /// Deliveries that failed and were retried.
    pub send_retries: Counter,
    /// Watch events received, by kind.
    pub watch_events: Family<KindLabel, Counter>,
    /// Watch errors, by kind and reason (`forbidden`, `gone`, `unreachable`, `other`).
    pub watch_errors: Family<WatchErrorLabel, Counter>,
    /// 1 while the service account lacks permission to list or watch a kind.
    pub watch_forbidden: Family<KindLabel, Gauge>,
    /// 1 once a kind's initial list has completed.
    pub watch_synced: Family<KindLabel, Gauge>,
    /// Objects remembered per kind (what the de-duplication keeps).
    pub tracked_objects: Family<KindLabel, Gauge>,
    pub registrations: Counter,
    pub heartbeats: Counter,
}

impl AgentMetrics {
    pub fn new(client_id: &str) -> Self {
        let mut registry = Registry::with_prefix_and_labels(
            "agent",
            [("client_id".into(), client_id.to_string().into())].into_iter(),
        );
        let metrics = Self {
            records_sent: Family::default(),
            send_retries: Counter::default(),
            watch_events: Family::default(),
            watch_errors: Family::default(),
            watch_forbidden: Family::default(),
            watch_synced: Family::default(),
            tracked_objects: Family::default(),
            registrations: Counter::default(),
            heartbeats: Counter::default(),
            registry: Registry::default(),
        };
        registry.register(
            "records_sent",
            "Records acknowledged by Kafka, by topic (tombstones included)",
            metrics.records_sent.clone(),
        );
        registry.register(
            "send_retries",
            "Deliveries to Kafka that failed and were retried",
            metrics.send_retries.clone(),
        );
        registry.register(
            "watch_events",
            "Watch events received from the Kubernetes API, by kind",
            metrics.watch_events.clone(),
        );
        registry.register(
            "watch_errors",
            "Errors listing or watching a kind, by reason",
            metrics.watch_errors.clone(),
        );
        registry.register(
            "watch_forbidden",
            "1 while the service account may not list or watch the kind (RBAC)",
            metrics.watch_forbidden.clone(),
        );
        registry.register(
            "watch_synced",
            "1 once the kind's initial list has completed",
            metrics.watch_synced.clone(),
        );
        registry.register(
            "tracked_objects",
            "Objects remembered per kind for de-duplication",
            metrics.tracked_objects.clone(),
        );
        registry.register(
            "registrations",
            "Registrations acknowledged by Kafka",
            metrics.registrations.clone(),
        );
        registry.register(
            "heartbeats",
            "Heartbeats acknowledged by Kafka",
            metrics.heartbeats.clone(),
        );
        let mut metrics = metrics;
        metrics.registry = registry;
        metrics
    }

    pub fn render(&self, format: ExpositionFormat) -> String {
        render(&self.registry, "kg-rca-agent", format)
    }

    pub fn sent(&self, topic: &str) -> u64 {
        self.records_sent
            .get_or_create(&TopicLabel {
                topic: topic.to_string(),
            })
            .get()
    }
}
