//! The worker's Prometheus metrics. Counters are cheap atomics so the hot path can bump
//! them per record.

pub use kg_shared::exposition::PartitionLabel;
use kg_shared::exposition::{latency_histogram, render, ExpositionFormat};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    pub outcome: String,
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
    /// Dead letters Kafka refused for good: the record is in the worker's log only.
    pub records_lost: Counter,
    /// Input offsets skipped because the records there could not be decoded at all.
    pub unreadable_skipped: Counter,
    pub commits_failed: Counter,
    pub consumer_lag: Gauge,
    pub partition_lag: Family<PartitionLabel, Gauge>,
    pub batch_duration: Histogram,
    pub batches: Counter,
    /// When the last batch was committed (or the worker started), ms since the epoch.
    pub last_progress_ms: std::sync::atomic::AtomicI64,
    pub flush_failures: Counter,
    /// The event attributor's owner index: objects known (0 for the other roles).
    pub attributor_objects: Gauge,
    /// The event attributor's events waiting for their objects (0 for the other roles).
    pub attributor_parked: Gauge,
    /// The event attributor's objects claimed by two or more clients (0 for the others).
    pub attributor_contested: Gauge,
    /// A pipeline's delay stage: sessions held now.
    pub delay_pending: Gauge,
    /// A pipeline's delay stage: the earliest due time held, seconds since the epoch (0:
    /// nothing held).
    pub delay_oldest_due: Gauge,
    /// A pipeline's delay stage: checks that found a session's state out of `hold_while`.
    pub delay_violations: Counter,
    /// A pipeline's delay stage: sessions let go, by what became of them.
    pub delay_released: Family<OutcomeLabel, Counter>,
    /// A pipeline's delay stage: from a session's due time to its output's acknowledgement.
    pub delay_lateness: Histogram,
    /// A pipeline's retry ladder: records waiting for their next attempt.
    pub retry_pending: Gauge,
    /// A pipeline's retry ladder: the earliest next attempt, seconds since the epoch (0:
    /// none pending).
    pub retry_next_due: Gauge,
    /// A pipeline's retry ladder: records by what became of them (scheduled, delivered,
    /// held, dead_lettered, exhausted).
    pub retries: Family<OutcomeLabel, Counter>,
    /// A pipeline's retry ladder: from an attempt's due time to when it was made and what
    /// it became acknowledged.
    pub retry_lateness: Histogram,
}

impl WorkerMetrics {
    /// Counts `count` records of the retry ladder that became `outcome`.
    pub fn count_retries(&self, outcome: &str, count: usize) {
        if count > 0 {
            self.retries
                .get_or_create(&OutcomeLabel {
                    outcome: outcome.into(),
                })
                .inc_by(count as u64);
        }
    }

    #[allow(clippy::too_many_lines)] // one registration per metric, in one list
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
            records_lost: Counter::default(),
            unreadable_skipped: Counter::default(),
            commits_failed: Counter::default(),
            consumer_lag: Gauge::default(),
            partition_lag: Family::default(),
            batch_duration: latency_histogram(),
            batches: Counter::default(),
            last_progress_ms: std::sync::atomic::AtomicI64::new(
                chrono::Utc::now().timestamp_millis(),
            ),
            flush_failures: Counter::default(),
            attributor_objects: Gauge::default(),
            attributor_parked: Gauge::default(),
            attributor_contested: Gauge::default(),
            delay_pending: Gauge::default(),
            delay_oldest_due: Gauge::default(),
            delay_violations: Counter::default(),
            delay_released: Family::default(),
            delay_lateness: latency_histogram(),
            retry_pending: Gauge::default(),
            retry_next_due: Gauge::default(),
            retries: Family::default(),
            retry_lateness: latency_histogram(),
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
            "records_lost",
            "Dead letters Kafka refused for good (the record is in the log only)",
            metrics.records_lost.clone(),
        );
        registry.register(
            "records_unreadable_skipped",
            "Input offsets skipped because the records there could not be decoded (corrupt batches); each run is dead-lettered",
            metrics.unreadable_skipped.clone(),
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
        registry.register(
            "partition_lag",
            "Records behind the end of an assigned input partition",
            metrics.partition_lag.clone(),
        );
        registry.register_with_unit(
            "batch_duration",
            "Time from a batch's first record to its offsets being committed (handling, output, acknowledgements)",
            Unit::Seconds,
            metrics.batch_duration.clone(),
        );
        registry.register("batches", "Batches committed", metrics.batches.clone());
        registry.register(
            "flush_failures",
            "Batch writes (graph store) that failed and were retried",
            metrics.flush_failures.clone(),
        );
        if role == "event-attributor" {
            registry.register(
                "attributor_index_objects",
                "Objects in the owner index built from state.k8s.resource",
                metrics.attributor_objects.clone(),
            );
            registry.register(
                "attributor_parked",
                "Untagged events waiting for their involved object to be reported",
                metrics.attributor_parked.clone(),
            );
            registry.register(
                "attributor_contested_objects",
                "Objects two or more clients reported; no event is attributed through them",
                metrics.attributor_contested.clone(),
            );
        }
        if role == "pipeline" {
            registry.register(
                "delay_pending_sessions",
                "Sessions the delay stage holds (kept in the client's volume)",
                metrics.delay_pending.clone(),
            );
            registry.register(
                "delay_oldest_due_timestamp_seconds",
                "The earliest due time of a held session, seconds since the epoch (0: none held)",
                metrics.delay_oldest_due.clone(),
            );
            registry.register(
                "delay_violations",
                "Checks that found a held session's state out of its hold_while values",
                metrics.delay_violations.clone(),
            );
            registry.register(
                "delay_released",
                "Held sessions let go once what they became was acknowledged, by outcome (emitted, diverted, dropped, dead_lettered)",
                metrics.delay_released.clone(),
            );
            registry.register_with_unit(
                "delay_emit_lateness",
                "From a held session's due time to the acknowledgement of its output",
                Unit::Seconds,
                metrics.delay_lateness.clone(),
            );
            registry.register(
                "retry_pending",
                "Records on the retry ladder waiting for their next attempt (kept in the client's volume)",
                metrics.retry_pending.clone(),
            );
            registry.register(
                "retry_next_due_timestamp_seconds",
                "The earliest next attempt of a record on the retry ladder, seconds since the epoch (0: none)",
                metrics.retry_next_due.clone(),
            );
            registry.register(
                "retries",
                "Records on the retry ladder by what became of them (scheduled, delivered, held, dead_lettered, exhausted)",
                metrics.retries.clone(),
            );
            registry.register_with_unit(
                "retry_lateness",
                "From a retry's due time to its attempt's outcome acknowledged",
                Unit::Seconds,
                metrics.retry_lateness.clone(),
            );
        }
        Self {
            registry,
            ..metrics
        }
    }

    /// Every metric, with the process metrics and build info, in `format`.
    pub fn encode(&self, format: ExpositionFormat) -> String {
        render(&self.registry, "worker", format)
    }
}
