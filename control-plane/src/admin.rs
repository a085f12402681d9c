//! Admin subcommands that production relies on (compose's topic setup, the test script,
//! operators): `create-topics`, `list-groups` and `group-offsets`.

use std::time::Duration;

use kg_shared::topic_setup::ensure_topics;
use rdkafka::consumer::Consumer;

use crate::config::{CreateTopicsArgs, GroupOffsetsArgs, ListGroupsArgs};

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("gave up creating topics after {waited:?}: {source}")]
    TopicsTimeout {
        waited: Duration,
        #[source]
        source: Box<kg_shared::kafka::KafkaSetupError>,
    },
    #[error("{0} topic difference(s) left in place (--strict)")]
    TopicDifferences(usize),
    #[error("failed to read consumer groups: {0}")]
    Groups(#[source] rdkafka::error::KafkaError),
    #[error("group {group} has no committed offsets on {topic}")]
    NoOffsets { group: String, topic: String },
}

/// `control-plane create-topics`: retries until the cluster answers or the wait runs out;
/// then prints what it created, every way an existing topic differs from the catalog, and
/// what `--fix-configs` fixed. With `--strict`, differences left in place fail the command.
pub async fn create_topics(args: CreateTopicsArgs) -> Result<(), AdminError> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(args.wait_secs);
    let report = loop {
        match ensure_topics(
            &args.kafka,
            args.replication_factor,
            Duration::from_secs(30),
            args.fix_configs,
        )
        .await
        {
            Ok(report) => break report,
            Err(error) if tokio::time::Instant::now() < deadline => {
                tracing::warn!(%error, "kafka not ready; retrying");
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
            Err(error) => {
                return Err(AdminError::TopicsTimeout {
                    waited: Duration::from_secs(args.wait_secs),
                    source: Box::new(error),
                })
            }
        }
    };
    for (topic, reason) in &report.undescribed {
        println!("warning: topic {topic}: the broker did not describe its configs ({reason}); only its partitions were compared");
    }
    for difference in &report.differences {
        let verb = if report.fixed.contains(difference) {
            "fixed"
        } else {
            "difference"
        };
        println!("{verb}: {difference}");
    }
    println!("topics ready (created now: {})", report.created.join(", "));
    let remaining = report.remaining().count();
    if remaining > 0 {
        println!("{remaining} difference(s) left in place");
        if args.strict {
            return Err(AdminError::TopicDifferences(remaining));
        }
    }
    Ok(())
}

/// `control-plane list-groups`.
pub fn list_groups(args: ListGroupsArgs) -> Result<(), AdminError> {
    let consumer: rdkafka::consumer::BaseConsumer = args
        .kafka
        .client_config()
        .create()
        .map_err(AdminError::Groups)?;
    let groups = consumer
        .fetch_group_list(None, Duration::from_secs(10))
        .map_err(AdminError::Groups)?;
    let mut names: Vec<&str> = groups.groups().iter().map(|group| group.name()).collect();
    names.sort_unstable();
    for name in names {
        println!("{name}");
    }
    Ok(())
}

/// `control-plane group-offsets`.
pub fn group_offsets(args: GroupOffsetsArgs) -> Result<(), AdminError> {
    let failed = |error: rdkafka::error::KafkaError| AdminError::Groups(error);
    let consumer: rdkafka::consumer::BaseConsumer = args
        .kafka
        .client_config()
        .set("group.id", &args.group)
        .set("enable.auto.commit", "false")
        .create()
        .map_err(failed)?;
    let metadata = consumer
        .fetch_metadata(Some(&args.topic), Duration::from_secs(10))
        .map_err(failed)?;
    let mut partitions = rdkafka::TopicPartitionList::new();
    for topic in metadata.topics() {
        for partition in topic.partitions() {
            partitions.add_partition(&args.topic, partition.id());
        }
    }
    let committed = consumer
        .committed_offsets(partitions, Duration::from_secs(10))
        .map_err(failed)?;
    let mut any = false;
    for element in committed.elements() {
        if let rdkafka::Offset::Offset(offset) = element.offset() {
            any = true;
            println!("{} {} {offset}", element.topic(), element.partition());
        }
    }
    if any {
        Ok(())
    } else {
        Err(AdminError::NoOffsets {
            group: args.group,
            topic: args.topic,
        })
    }
}
