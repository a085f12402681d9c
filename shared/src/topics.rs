//! The topic catalog: the thirteen topics the project creates itself (rather than leaving
//! them to broker auto-creation), with the partitions, retention and cleanup policy the
//! protocol documents, plus the names of topics that deployed agents or the original
//! services use but that the project treats as optional.

/// Client registrations; a null value deregisters.
pub const CLUSTER_REGISTRY: &str = "cluster.registry";
/// Client liveness.
pub const CLUSTER_HEARTBEAT: &str = "cluster.heartbeat";
/// Raw Kubernetes Event objects.
pub const RAW_K8S_EVENTS: &str = "raw.k8s.events";
/// Raw container log records.
pub const RAW_K8S_LOGS: &str = "raw.k8s.logs";
/// Normalized events.
pub const EVENTS_NORMALIZED: &str = "events.normalized";
/// Normalized log records.
pub const LOGS_NORMALIZED: &str = "logs.normalized";
/// Resource snapshots.
pub const STATE_K8S_RESOURCE: &str = "state.k8s.resource";
/// Edges between resources.
pub const STATE_K8S_TOPOLOGY: &str = "state.k8s.topology";
/// Prometheus scrape targets.
pub const STATE_PROM_TARGETS: &str = "state.prom.targets";
/// Raw Alertmanager alerts.
pub const ALERTS_RAW: &str = "alerts.raw";
/// Alerts with related events, logs and blast radius.
pub const ALERTS_ENRICHED: &str = "alerts.enriched";
/// Records that failed normalization, with the reason.
pub const DLQ_NORMALIZED: &str = "dlq.normalized";
/// Raw records that could not be processed at all.
pub const DLQ_RAW: &str = "dlq.raw";

/// Written by deployed agents; not created by the project.
pub const RAW_PROM_ALERTS: &str = "raw.prom.alerts";
/// Read by the original graph builder; not created by the project.
pub const STATE_PROM_RULES: &str = "state.prom.rules";
/// Read by the original graph builder; not created by the project.
pub const GRAPH_COMMANDS: &str = "graph.commands";

/// Topics that may or may not exist; consumers must cope with both.
pub const OPTIONAL_TOPICS: [&str; 3] = [RAW_PROM_ALERTS, STATE_PROM_RULES, GRAPH_COMMANDS];

const HOUR_MS: i64 = 60 * 60 * 1000;
const DAY_MS: i64 = 24 * HOUR_MS;

/// A topic's `cleanup.policy`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CleanupPolicy {
    /// Old segments are deleted after the retention time.
    Delete,
    /// Only the latest record per key is kept.
    Compact,
}

impl CleanupPolicy {
    /// The value of Kafka's `cleanup.policy`.
    pub fn as_str(self) -> &'static str {
        match self {
            CleanupPolicy::Delete => "delete",
            CleanupPolicy::Compact => "compact",
        }
    }
}

/// One topic the project creates.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TopicSpec {
    /// The topic name.
    pub name: &'static str,
    /// How many partitions it is created with.
    pub partitions: i32,
    /// How long records are kept; `None` means forever.
    pub retention_ms: Option<i64>,
    /// Delete or compact.
    pub cleanup: CleanupPolicy,
    /// What the topic carries, for humans.
    pub carries: &'static str,
}

impl TopicSpec {
    /// The topic-level configs to create the topic with: `cleanup.policy` and
    /// `retention.ms` (`-1` for forever).
    ///
    /// On a compacted topic Kafka does not delete by age, so a finite `retention.ms` there
    /// only records the documented intent; it is still set so that an operator switching
    /// the policy to `compact,delete` gets the documented retention.
    pub fn kafka_configs(&self) -> Vec<(&'static str, String)> {
        vec![
            ("cleanup.policy", self.cleanup.as_str().to_owned()),
            ("retention.ms", self.retention_ms.unwrap_or(-1).to_string()),
        ]
    }
}

/// Every topic the project creates, in the protocol's order.
pub const ALL_TOPICS: [TopicSpec; 13] = [
    TopicSpec {
        name: CLUSTER_REGISTRY,
        partitions: 3,
        retention_ms: None,
        cleanup: CleanupPolicy::Compact,
        carries: "client registrations; a null value (tombstone) deregisters",
    },
    TopicSpec {
        name: CLUSTER_HEARTBEAT,
        partitions: 3,
        retention_ms: Some(HOUR_MS),
        cleanup: CleanupPolicy::Delete,
        carries: "client liveness",
    },
    TopicSpec {
        name: RAW_K8S_EVENTS,
        partitions: 6,
        retention_ms: Some(7 * DAY_MS),
        cleanup: CleanupPolicy::Delete,
        carries: "raw Kubernetes Event objects",
    },
    TopicSpec {
        name: RAW_K8S_LOGS,
        partitions: 6,
        retention_ms: Some(3 * DAY_MS),
        cleanup: CleanupPolicy::Delete,
        carries: "raw container log records",
    },
    TopicSpec {
        name: EVENTS_NORMALIZED,
        partitions: 6,
        retention_ms: Some(7 * DAY_MS),
        cleanup: CleanupPolicy::Delete,
        carries: "normalized events",
    },
    TopicSpec {
        name: LOGS_NORMALIZED,
        partitions: 6,
        retention_ms: Some(3 * DAY_MS),
        cleanup: CleanupPolicy::Delete,
        carries: "normalized log records",
    },
    TopicSpec {
        name: STATE_K8S_RESOURCE,
        partitions: 6,
        retention_ms: Some(30 * DAY_MS),
        cleanup: CleanupPolicy::Compact,
        carries: "resource snapshots; null or op DELETE removes",
    },
    TopicSpec {
        name: STATE_K8S_TOPOLOGY,
        partitions: 3,
        retention_ms: Some(30 * DAY_MS),
        cleanup: CleanupPolicy::Compact,
        carries: "edges between resources",
    },
    TopicSpec {
        name: STATE_PROM_TARGETS,
        partitions: 3,
        retention_ms: None,
        cleanup: CleanupPolicy::Compact,
        carries: "Prometheus scrape targets",
    },
    TopicSpec {
        name: ALERTS_RAW,
        partitions: 3,
        retention_ms: Some(7 * DAY_MS),
        cleanup: CleanupPolicy::Delete,
        carries: "raw Alertmanager alerts",
    },
    TopicSpec {
        name: ALERTS_ENRICHED,
        partitions: 3,
        retention_ms: Some(7 * DAY_MS),
        cleanup: CleanupPolicy::Delete,
        carries: "alerts with related events, logs and blast radius",
    },
    TopicSpec {
        name: DLQ_NORMALIZED,
        partitions: 3,
        retention_ms: Some(7 * DAY_MS),
        cleanup: CleanupPolicy::Delete,
        carries: "records that failed normalization, with the reason",
    },
    TopicSpec {
        name: DLQ_RAW,
        partitions: 3,
        retention_ms: Some(7 * DAY_MS),
        cleanup: CleanupPolicy::Delete,
        carries: "raw records that could not be processed at all",
    },
];

/// The spec of a topic the project creates, by name.
pub fn topic_spec(name: &str) -> Option<&'static TopicSpec> {
    ALL_TOPICS.iter().find(|t| t.name == name)
}

/// Whether `name` is one of the created or the optional topics.
pub fn is_known_topic(name: &str) -> bool {
    topic_spec(name).is_some() || OPTIONAL_TOPICS.contains(&name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn catalog_holds_thirteen_distinct_topics() {
        let mut names: Vec<_> = ALL_TOPICS.iter().map(|t| t.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), 13);
        for optional in OPTIONAL_TOPICS {
            assert!(topic_spec(optional).is_none());
            assert!(is_known_topic(optional));
        }
    }

    #[test]
    fn registry_is_compacted_and_kept_forever() {
        let spec = topic_spec(CLUSTER_REGISTRY).unwrap();
        assert_eq!(spec.partitions, 3);
        assert_eq!(
            spec.kafka_configs(),
            vec![
                ("cleanup.policy", "compact".to_string()),
                ("retention.ms", "-1".to_string())
            ]
        );
    }

    #[test]
    fn heartbeat_is_deleted_after_an_hour() {
        let spec = topic_spec(CLUSTER_HEARTBEAT).unwrap();
        assert_eq!(spec.cleanup, CleanupPolicy::Delete);
        assert_eq!(
            spec.kafka_configs()[1],
            ("retention.ms", "3600000".to_string())
        );
    }

    #[test]
    fn partitions_follow_the_protocol_table() {
        let six = [
            RAW_K8S_EVENTS,
            RAW_K8S_LOGS,
            EVENTS_NORMALIZED,
            LOGS_NORMALIZED,
            STATE_K8S_RESOURCE,
        ];
        for t in &ALL_TOPICS {
            let expected = if six.contains(&t.name) { 6 } else { 3 };
            assert_eq!(t.partitions, expected, "{}", t.name);
        }
    }

    #[test]
    fn state_topics_are_compacted_and_prom_targets_keep_the_latest_forever() {
        for name in [STATE_K8S_RESOURCE, STATE_K8S_TOPOLOGY] {
            let spec = topic_spec(name).unwrap();
            assert_eq!(spec.cleanup, CleanupPolicy::Compact);
            assert_eq!(spec.retention_ms, Some(30 * DAY_MS));
        }
        let targets = topic_spec(STATE_PROM_TARGETS).unwrap();
        assert_eq!(
            (targets.cleanup, targets.retention_ms),
            (CleanupPolicy::Compact, None)
        );
        assert_eq!(
            topic_spec(RAW_K8S_LOGS).unwrap().retention_ms,
            Some(259_200_000)
        );
    }
}
