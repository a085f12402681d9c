//! `create-topics` against a real cluster: creates the project's topics with their
//! partitions, retention and cleanup policy, and for topics that already exist compares
//! what the broker has with what the catalog says, reporting every difference.
//!
//! What is fixed, and only when asked (`--fix-configs`): topic configs other than
//! `cleanup.policy`. Never fixed automatically:
//! - the partition count: adding partitions re-maps keys to partitions, which breaks the
//!   per-client ordering of `cluster.registry` and the per-key compaction of the state
//!   topics, and Kafka cannot remove partitions at all;
//! - `cleanup.policy`: switching a topic to `compact` makes Kafka refuse keyless records and
//!   its cleaner choke on the ones already there; switching away from `compact` lets
//!   retention delete registrations. Both need an operator's look at the data first.
//!
//! Fixing uses the (non-incremental) AlterConfigs request, which resets every config it is
//! not given; so the request carries the topic's current dynamic configs as well, and only
//! the differing values change.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::time::Duration;

use rdkafka::admin::{
    AdminClient, AdminOptions, AlterConfig, ConfigSource, NewTopic, ResourceSpecifier,
    TopicReplication,
};
use rdkafka::client::DefaultClientContext;
use rdkafka::types::RDKafkaErrorCode;

use crate::kafka::{KafkaArgs, KafkaSetupError};
use crate::topics::{TopicSpec, ALL_TOPICS};

/// How an existing topic differs from the catalog.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TopicDifference {
    Partitions {
        topic: String,
        expected: i32,
        actual: i32,
    },
    Config {
        topic: String,
        key: String,
        expected: String,
        /// None when the broker did not report the config at all.
        actual: Option<String>,
    },
}

impl TopicDifference {
    pub fn topic(&self) -> &str {
        match self {
            Self::Partitions { topic, .. } | Self::Config { topic, .. } => topic,
        }
    }

    /// Whether `--fix-configs` changes it (see the module's documentation for why the
    /// others are left to an operator).
    pub fn fixable(&self) -> bool {
        matches!(self, Self::Config { key, .. } if key != "cleanup.policy")
    }
}

impl fmt::Display for TopicDifference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Partitions {
                topic,
                expected,
                actual,
            } => write!(
                f,
                "topic {topic}: {actual} partitions, expected {expected} (not changed: adding \
                 partitions re-maps keys and Kafka cannot remove any; recreate the topic or \
                 add them by hand if that is intended)"
            ),
            Self::Config {
                topic,
                key,
                expected,
                actual,
            } => {
                let actual = actual.as_deref().unwrap_or("(not reported)");
                write!(f, "topic {topic}: {key} = {actual}, expected {expected}")?;
                if self.fixable() {
                    write!(f, " (--fix-configs sets it)")
                } else {
                    write!(
                        f,
                        " (not changed: check that every record has a key before changing a \
                         topic's cleanup policy, then use kafka-configs)"
                    )
                }
            }
        }
    }
}

/// What `create-topics` did and found.
#[derive(Debug, Default)]
pub struct TopicsReport {
    pub created: Vec<String>,
    /// Differences of topics that already existed, as found (before any fix).
    pub differences: Vec<TopicDifference>,
    /// Differences that `--fix-configs` fixed.
    pub fixed: Vec<TopicDifference>,
    /// Topics whose configs the broker would not describe, with its answer.
    pub undescribed: Vec<(String, String)>,
}

impl TopicsReport {
    /// Differences still in place after the fixes.
    pub fn remaining(&self) -> impl Iterator<Item = &TopicDifference> {
        self.differences
            .iter()
            .filter(|difference| !self.fixed.contains(difference))
    }
}

/// What the broker said of an existing topic's configs: every reported value, and the
/// topic-level (dynamic) ones, which a fix must carry over.
#[derive(Debug, Default)]
struct DescribedConfigs {
    all: HashMap<String, String>,
    dynamic: BTreeMap<String, String>,
}

/// Compares one existing topic with its catalog entry: partition count and every config
/// the catalog sets. Values are compared as Kafka normalises them (`cleanup.policy`'s
/// parts in any order).
pub fn diff_topic(
    spec: &TopicSpec,
    actual_partitions: i32,
    actual_configs: &HashMap<String, String>,
) -> Vec<TopicDifference> {
    let mut differences = Vec::new();
    if actual_partitions != spec.partitions {
        differences.push(TopicDifference::Partitions {
            topic: spec.name.to_string(),
            expected: spec.partitions,
            actual: actual_partitions,
        });
    }
    for (key, expected) in spec.kafka_configs() {
        let actual = actual_configs.get(key);
        if actual.is_some_and(|actual| same_config_value(key, actual, &expected)) {
            continue;
        }
        differences.push(TopicDifference::Config {
            topic: spec.name.to_string(),
            key: key.to_string(),
            expected,
            actual: actual.cloned(),
        });
    }
    differences
}

fn same_config_value(key: &str, actual: &str, expected: &str) -> bool {
    if key == "cleanup.policy" {
        let parts = |value: &str| {
            let mut parts: Vec<String> = value
                .split(',')
                .map(|part| part.trim().to_ascii_lowercase())
                .filter(|part| !part.is_empty())
                .collect();
            parts.sort();
            parts
        };
        return parts(actual) == parts(expected);
    }
    actual.trim() == expected.trim()
}

/// Creates the project's topics; compares the ones that exist; with `fix_configs`, sets
/// their fixable configs.
#[allow(clippy::too_many_lines)] // one linear sequence; to be split when it next changes
pub async fn ensure_topics(
    kafka: &KafkaArgs,
    replication_factor: i32,
    timeout: Duration,
    fix_configs: bool,
) -> Result<TopicsReport, KafkaSetupError> {
    let admin: AdminClient<DefaultClientContext> =
        kafka
            .client_config()
            .create()
            .map_err(|source| KafkaSetupError::AdminClient {
                bootstrap: kafka.bootstrap_servers.clone(),
                source,
            })?;
    let options = AdminOptions::new().operation_timeout(Some(timeout));
    let configs: Vec<Vec<(&'static str, String)>> =
        ALL_TOPICS.iter().map(TopicSpec::kafka_configs).collect();
    let new_topics: Vec<NewTopic<'_>> = ALL_TOPICS
        .iter()
        .zip(&configs)
        .map(|(spec, config)| {
            config.iter().fold(
                NewTopic::new(
                    spec.name,
                    spec.partitions,
                    TopicReplication::Fixed(replication_factor),
                ),
                |topic, (key, value)| topic.set(key, value),
            )
        })
        .collect();
    let results = admin
        .create_topics(new_topics.iter(), &options)
        .await
        .map_err(|source| KafkaSetupError::CreateTopic {
            topic: "*".into(),
            reason: source.to_string(),
        })?;
    let mut report = TopicsReport::default();
    let mut existing = Vec::new();
    for result in results {
        match result {
            Ok(topic) => report.created.push(topic),
            Err((topic, RDKafkaErrorCode::TopicAlreadyExists)) => existing.push(topic),
            Err((topic, code)) => {
                return Err(KafkaSetupError::CreateTopic {
                    topic,
                    reason: code.to_string(),
                })
            }
        }
    }
    if existing.is_empty() {
        return Ok(report);
    }

    let metadata = admin
        .inner()
        .fetch_metadata(None, timeout)
        .map_err(|source| KafkaSetupError::CreateTopic {
            topic: "*".into(),
            reason: format!("metadata: {source}"),
        })?;
    let partitions: HashMap<&str, i32> = metadata
        .topics()
        .iter()
        .map(|topic| (topic.name(), topic.partitions().len() as i32))
        .collect();
    let specifiers: Vec<ResourceSpecifier<'_>> = existing
        .iter()
        .map(|topic| ResourceSpecifier::Topic(topic.as_str()))
        .collect();
    let described = admin
        .describe_configs(specifiers.iter(), &options)
        .await
        .map_err(|source| KafkaSetupError::CreateTopic {
            topic: "*".into(),
            reason: format!("describe configs: {source}"),
        })?;
    // Per topic: every reported config, and the dynamic (topic-level) ones to carry over
    // into a fix.
    let mut current: HashMap<String, DescribedConfigs> = HashMap::new();
    for (topic, answer) in existing.iter().zip(described) {
        match answer {
            Ok(resource) => {
                let mut all = HashMap::new();
                let mut dynamic = BTreeMap::new();
                for entry in resource.entries {
                    let Some(value) = entry.value else { continue };
                    if entry.source == ConfigSource::DynamicTopic && !entry.is_sensitive {
                        dynamic.insert(entry.name.clone(), value.clone());
                    }
                    all.insert(entry.name, value);
                }
                current.insert(topic.clone(), DescribedConfigs { all, dynamic });
            }
            Err(code) => report.undescribed.push((topic.clone(), code.to_string())),
        }
    }
    for spec in ALL_TOPICS
        .iter()
        .filter(|spec| existing.iter().any(|t| t == spec.name))
    {
        let actual_partitions = partitions.get(spec.name).copied().unwrap_or(0);
        match current.get(spec.name) {
            Some(described) => {
                report
                    .differences
                    .extend(diff_topic(spec, actual_partitions, &described.all))
            }
            // Configs unknown: still compare the partitions.
            None => report.differences.extend(
                diff_topic(spec, actual_partitions, &HashMap::new())
                    .into_iter()
                    .filter(|difference| matches!(difference, TopicDifference::Partitions { .. })),
            ),
        }
    }
    if fix_configs {
        fix(&admin, &options, &mut report, &current).await?;
    }
    Ok(report)
}

async fn fix(
    admin: &AdminClient<DefaultClientContext>,
    options: &AdminOptions,
    report: &mut TopicsReport,
    current: &HashMap<String, DescribedConfigs>,
) -> Result<(), KafkaSetupError> {
    let mut desired: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    let mut fixing: Vec<TopicDifference> = Vec::new();
    for difference in report.differences.iter().filter(|d| d.fixable()) {
        if let TopicDifference::Config {
            topic,
            key,
            expected,
            ..
        } = difference
        {
            let configs = desired.entry(topic.clone()).or_insert_with(|| {
                current
                    .get(topic)
                    .map(|described| described.dynamic.clone())
                    .unwrap_or_default()
            });
            configs.insert(key.clone(), expected.clone());
            fixing.push(difference.clone());
        }
    }
    if desired.is_empty() {
        return Ok(());
    }
    let alters: Vec<AlterConfig<'_>> = desired
        .iter()
        .map(|(topic, configs)| {
            configs.iter().fold(
                AlterConfig::new(ResourceSpecifier::Topic(topic)),
                |alter, (key, value)| alter.set(key, value),
            )
        })
        .collect();
    let results = admin
        .alter_configs(alters.iter(), options)
        .await
        .map_err(|source| KafkaSetupError::CreateTopic {
            topic: "*".into(),
            reason: format!("alter configs: {source}"),
        })?;
    for result in results {
        match result {
            Ok(resource) => {
                let topic = match resource {
                    rdkafka::admin::OwnedResourceSpecifier::Topic(topic) => topic,
                    other => format!("{other:?}"),
                };
                report.fixed.extend(
                    fixing
                        .iter()
                        .filter(|difference| difference.topic() == topic)
                        .cloned(),
                );
            }
            Err((resource, code)) => {
                return Err(KafkaSetupError::CreateTopic {
                    topic: format!("{resource:?}"),
                    reason: format!("alter configs: {code}"),
                })
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topics::{CLUSTER_HEARTBEAT, CLUSTER_REGISTRY};

    fn spec(name: &str) -> &'static TopicSpec {
        ALL_TOPICS.iter().find(|spec| spec.name == name).unwrap()
    }

    fn configs(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn a_topic_as_the_catalog_says_has_no_difference() {
        let registry = spec(CLUSTER_REGISTRY);
        assert_eq!(
            diff_topic(
                registry,
                3,
                &configs(&[("cleanup.policy", "compact"), ("retention.ms", "-1")])
            ),
            vec![]
        );
    }

    #[test]
    fn every_difference_is_reported_with_what_is_and_what_should_be() {
        let heartbeat = spec(CLUSTER_HEARTBEAT);
        let differences = diff_topic(
            heartbeat,
            1,
            &configs(&[("cleanup.policy", "compact"), ("retention.ms", "1000")]),
        );
        assert_eq!(
            differences,
            vec![
                TopicDifference::Partitions {
                    topic: CLUSTER_HEARTBEAT.into(),
                    expected: 3,
                    actual: 1
                },
                TopicDifference::Config {
                    topic: CLUSTER_HEARTBEAT.into(),
                    key: "cleanup.policy".into(),
                    expected: "delete".into(),
                    actual: Some("compact".into())
                },
                TopicDifference::Config {
                    topic: CLUSTER_HEARTBEAT.into(),
                    key: "retention.ms".into(),
                    expected: "3600000".into(),
                    actual: Some("1000".into())
                },
            ]
        );
        let fixable: Vec<bool> = differences.iter().map(TopicDifference::fixable).collect();
        assert_eq!(fixable, [false, false, true]);
        assert!(differences[0]
            .to_string()
            .contains("1 partitions, expected 3"));
        assert!(differences[2]
            .to_string()
            .contains("retention.ms = 1000, expected 3600000 (--fix-configs sets it)"));
    }

    #[test]
    fn a_config_the_broker_does_not_report_is_a_difference() {
        let differences = diff_topic(spec(CLUSTER_HEARTBEAT), 3, &configs(&[]));
        assert_eq!(differences.len(), 2);
        assert!(differences[0].to_string().contains("(not reported)"));
    }

    #[test]
    fn cleanup_policy_parts_compare_in_any_order() {
        assert!(same_config_value(
            "cleanup.policy",
            "delete, compact",
            "compact,delete"
        ));
        assert!(!same_config_value("cleanup.policy", "delete", "compact"));
    }
}
