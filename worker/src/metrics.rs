//! The worker's Prometheus metrics. Counters are cheap atomics so the hot path can bump
//! them per record.

use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: String,
}

/// Every metric a worker exports, labelled with its client and role.
pub struct WorkerMetrics {
    registry: Registry,
    pub records_in: Counter,
    pub records_out: Counter,
    pub skipped_foreign: Counter,
    pub unattributed: Counter,
    pub dlq: Family<ReasonLabel, Counter>,
    /// All dead letters, whatever the reason (for the health check's DLQ rate).
    pub dlq_total: Counter,
    pub produce_retries: Counter,
    pub commits_failed: Counter,
    pub consumer_lag: Gauge,
    pub batches: Counter,
    /// When the last batch was committed (or the worker started), ms since the epoch.
    pub last_progress_ms: std::sync::atomic::AtomicI64,
    pub flush_failures: Counter,
}

impl WorkerMetrics {
    pub fn new(client_id: &str, role: &str) -> Self {
        let mut registry = Registry::with_prefix_and_labels(
            "worker",
            [
                ("client_id".into(), client_id.to_string().into()),
                ("role".into(), role.to_string().into()),
            ]
            .into_iter(),
        );
        let metrics = Self {
            records_in: Counter::default(),
            records_out: Counter::default(),
            skipped_foreign: Counter::default(),
            unattributed: Counter::default(),
            dlq: Family::default(),
            dlq_total: Counter::default(),
            produce_retries: Counter::default(),
            commits_failed: Counter::default(),
            consumer_lag: Gauge::default(),
            batches: Counter::default(),
            last_progress_ms: std::sync::atomic::AtomicI64::new(
                chrono::Utc::now().timestamp_millis(),
            ),
            flush_failures: Counter::default(),
            registry: Registry::default(),
        };
        registry.register(
            "records_in",
            "Records read from the input topic",
            metrics.records_in.clone(),
        );
        registry.register(
            "records_out",
            "Normalized records produced and acknowledged",
            metrics.records_out.clone(),
        );
        registry.register(
            "records_skipped_foreign",
            "Records of other tenants skipped by key",
            metrics.skipped_foreign.clone(),
        );
        registry.register(
            "records_unattributed",
            "Records with no tenant, never claimed",
            metrics.unattributed.clone(),
        );
        registry.register(
            "records_dlq",
            "Records sent to the dead-letter topic, by reason",
            metrics.dlq.clone(),
        );
        registry.register(
            "produce_retries",
            "Produce attempts retried after a delivery failure",
            metrics.produce_retries.clone(),
        );
        registry.register(
            "commits_failed",
            "Offset commits that failed (the batch is redelivered later)",
            metrics.commits_failed.clone(),
        );
        registry.register(
            "consumer_lag",
            "Records behind the end of the input topic, summed over assigned partitions",
            metrics.consumer_lag.clone(),
        );
        registry.register("batches", "Batches committed", metrics.batches.clone());
        registry.register(
            "flush_failures",
            "Batch writes (graph store) that failed and were retried",
            metrics.flush_failures.clone(),
        );
        Self {
            registry,
            ..metrics
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}
