//! The control plane's Prometheus metrics, one registry, exposed at `/metrics`.

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
pub struct EventLabel {
    pub event: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OperationLabel {
    pub operation: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TopicReasonLabel {
    pub topic: String,
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabel {
    pub state: String,
}

/// Every metric of the control plane.
pub struct ControlPlaneMetrics {
    registry: Registry,
    pub registrations: Counter,
    pub deregistrations: Counter,
    pub heartbeats: Counter,
    pub heartbeats_unknown_client: Counter,
    pub registry_rejected: Family<ReasonLabel, Counter>,
    pub heartbeats_rejected: Family<ReasonLabel, Counter>,
    pub invalid_client_ids: Counter,
    pub dead_letters: Counter,
    /// Dead letters Kafka did not take (the skipped record is then only in the log).
    pub dead_letters_failed: Counter,
    pub lifecycle_events: Family<EventLabel, Counter>,
    pub runtime_errors: Family<OperationLabel, Counter>,
    pub reconciles: Counter,
    pub clients: Family<StateLabel, Gauge>,
    pub workers: Family<StateLabel, Gauge>,
    pub admission_refused: Family<ReasonLabel, Counter>,
    /// Pipelines a registration asked for that will not run, by reason.
    pub pipeline_requests_refused: Family<ReasonLabel, Counter>,
    /// Registrations of clients not admitted yet that were put in (or repeated in) the
    /// waiting room, or not kept because it was full.
    pub admission_deferred: Family<ReasonLabel, Counter>,
    pub admission_waiting: Gauge,
    /// Re-reads of the registry for registrations dropped past the waiting line.
    pub admission_refills: Counter,
    /// Registrations dropped from a full line for one that arrived earlier.
    pub admission_displaced: Counter,
    pub orphans: Gauge,
    /// Registry partitions this control plane acts for (-1: all, it is the only one).
    pub owned_partitions: Gauge,
    /// Clients this control plane acts on.
    pub owned_clients: Gauge,
    /// Ownership changes from the group, by kind (assigned, revoked).
    pub ownership_changes: Family<ReasonLabel, Counter>,
    pub reconcile_duration: Histogram,
    pub runtime_call_duration: Family<OperationLabel, Histogram, fn() -> Histogram>,
    pub ingest_consumer_lag: Family<PartitionLabel, Gauge>,
    /// Offsets ingest moved past without a record to handle: `unreadable` (corrupt
    /// batches) or `deleted_before_read` (the broker dropped them first).
    pub ingest_offsets_skipped: Family<TopicReasonLabel, Counter>,
}

impl Default for ControlPlaneMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl ControlPlaneMetrics {
    #[allow(clippy::too_many_lines)] // one registration per metric, in one list
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("cp");
        let metrics = Self {
            registry: Registry::default(),
            registrations: Counter::default(),
            deregistrations: Counter::default(),
            heartbeats: Counter::default(),
            heartbeats_unknown_client: Counter::default(),
            registry_rejected: Family::default(),
            heartbeats_rejected: Family::default(),
            invalid_client_ids: Counter::default(),
            dead_letters: Counter::default(),
            dead_letters_failed: Counter::default(),
            lifecycle_events: Family::default(),
            runtime_errors: Family::default(),
            reconciles: Counter::default(),
            clients: Family::default(),
            workers: Family::default(),
            admission_refused: Family::default(),
            pipeline_requests_refused: Family::default(),
            admission_deferred: Family::default(),
            admission_waiting: Gauge::default(),
            admission_refills: Counter::default(),
            admission_displaced: Counter::default(),
            orphans: Gauge::default(),
            owned_partitions: Gauge::default(),
            owned_clients: Gauge::default(),
            ownership_changes: Family::default(),
            reconcile_duration: latency_histogram(),
            runtime_call_duration: Family::new_with_constructor(latency_histogram),
            ingest_consumer_lag: Family::default(),
            ingest_offsets_skipped: Family::default(),
        };
        registry.register(
            "registrations",
            "Registrations applied (repeats included)",
            metrics.registrations.clone(),
        );
        registry.register(
            "deregistrations",
            "Deregistrations (tombstones) applied",
            metrics.deregistrations.clone(),
        );
        registry.register(
            "heartbeats",
            "Heartbeats accepted",
            metrics.heartbeats.clone(),
        );
        registry.register(
            "heartbeats_unknown_client",
            "Heartbeats from clients that are not registered",
            metrics.heartbeats_unknown_client.clone(),
        );
        registry.register(
            "registry_rejected",
            "cluster.registry records skipped, by reason",
            metrics.registry_rejected.clone(),
        );
        registry.register(
            "heartbeats_rejected",
            "cluster.heartbeat records skipped, by reason",
            metrics.heartbeats_rejected.clone(),
        );
        registry.register(
            "invalid_client_ids",
            "Records naming a client id that is not a lowercase DNS label",
            metrics.invalid_client_ids.clone(),
        );
        registry.register(
            "ingest_offsets_skipped",
            "Offsets of cluster.registry and cluster.heartbeat moved past with no record to handle, by topic and reason: unreadable (corrupt batches) or deleted_before_read (the broker dropped them first); each run is dead-lettered",
            metrics.ingest_offsets_skipped.clone(),
        );
        registry.register(
            "dead_letters",
            "Records sent to dlq.raw",
            metrics.dead_letters.clone(),
        );
        registry.register(
            "dead_letters_failed",
            "Dead letters Kafka did not acknowledge (the skipped record is in the log only)",
            metrics.dead_letters_failed.clone(),
        );
        registry.register(
            "lifecycle_events",
            "Lifecycle events (worker_spawned, worker_exited, client_stale, ...)",
            metrics.lifecycle_events.clone(),
        );
        registry.register(
            "runtime_errors",
            "Runtime calls that failed, by operation",
            metrics.runtime_errors.clone(),
        );
        registry.register(
            "reconciles",
            "Reconcile passes completed",
            metrics.reconciles.clone(),
        );
        registry.register(
            "clients",
            "Registered clients by state",
            metrics.clients.clone(),
        );
        registry.register(
            "workers",
            "Managed workers by runtime state",
            metrics.workers.clone(),
        );
        registry.register(
            "admission_refused",
            "Registrations refused for good, by reason (not_allowed, reserved_id)",
            metrics.admission_refused.clone(),
        );
        registry.register(
            "pipeline_requests_refused",
            "Pipelines a registration asked for that will not run, by reason (unknown, not_requestable, not_a_list, too_many)",
            metrics.pipeline_requests_refused.clone(),
        );
        registry.register(
            "admission_deferred",
            "Registrations of clients not admitted yet: waiting (new in the line), waiting_again (a repeat), waiting_full (not kept: the waiting room is full; the registry is read again for it), refilled (back in the line from such a re-read)",
            metrics.admission_deferred.clone(),
        );
        registry.register(
            "admission_waiting",
            "Registrations waiting for the admission rate or a free client slot",
            metrics.admission_waiting.clone(),
        );
        registry.register(
            "admission_refills",
            "Re-reads of the registry for registrations not kept because the waiting room was full",
            metrics.admission_refills.clone(),
        );
        registry.register(
            "admission_displaced",
            "Registrations dropped from a full waiting room for one that arrived earlier (read again from the registry later)",
            metrics.admission_displaced.clone(),
        );
        registry.register(
            "owned_partitions",
            "Registry partitions whose clients this control plane acts on (-1: all, CP_OWNERSHIP=all)",
            metrics.owned_partitions.clone(),
        );
        registry.register(
            "owned_clients",
            "Registered clients this control plane acts on",
            metrics.owned_clients.clone(),
        );
        registry.register(
            "ownership_changes",
            "Registry partitions assigned to or revoked from this control plane by the ownership group, by kind",
            metrics.ownership_changes.clone(),
        );
        registry.register(
            "orphans",
            "Workers carrying our labels that no registered client owns",
            metrics.orphans.clone(),
        );
        registry.register_with_unit(
            "reconcile_duration",
            "Time one reconcile pass takes (gather, decide, dispatch)",
            Unit::Seconds,
            metrics.reconcile_duration.clone(),
        );
        registry.register_with_unit(
            "runtime_call_duration",
            "Latency of runtime calls, by operation, failed ones included",
            Unit::Seconds,
            metrics.runtime_call_duration.clone(),
        );
        registry.register(
            "ingest_consumer_lag",
            "Records behind the end of cluster.registry and cluster.heartbeat, per partition",
            metrics.ingest_consumer_lag.clone(),
        );
        Self {
            registry,
            ..metrics
        }
    }

    /// Counts one lifecycle event.
    pub fn lifecycle(&self, event: &str) {
        self.lifecycle_events
            .get_or_create(&EventLabel {
                event: event.to_string(),
            })
            .inc();
    }

    /// Every metric, with the process metrics and build info, in `format`.
    pub fn encode(&self, format: ExpositionFormat) -> String {
        render(&self.registry, "control-plane", format)
    }
}
