//! `control-plane create-topics` against a broker with real topic semantics (noida-db): it creates
//! the catalog's topics, is idempotent, reports every way an existing topic differs from
//! the catalog, fixes configs only with `--fix-configs` (keeping the topic's other
//! settings), and fails with `--strict` while differences remain.

use std::collections::HashMap;
use std::process::Command;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use kg_tests::*;
use rdkafka::admin::{
    AdminClient, AdminOptions, AlterConfig, NewTopic, ResourceSpecifier, TopicReplication,
};
use rdkafka::client::DefaultClientContext;
use rdkafka::ClientConfig;

fn admin(bootstrap: &str) -> Result<AdminClient<DefaultClientContext>> {
    Ok(ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()?)
}

async fn topic_configs(bootstrap: &str, topic: &str) -> Result<HashMap<String, String>> {
    let described = admin(bootstrap)?
        .describe_configs(
            [&ResourceSpecifier::Topic(topic)],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
        )
        .await?;
    let resource = described
        .into_iter()
        .next()
        .context("no answer")?
        .map_err(|code| anyhow::anyhow!("describe {topic}: {code}"))?;
    Ok(resource
        .entries
        .into_iter()
        .filter_map(|entry| Some((entry.name, entry.value?)))
        .collect())
}

/// `create-topics` with `args`: exit success and standard output.
fn create_topics_with(bootstrap: &str, args: &[&str]) -> Result<(bool, String)> {
    let output = Command::new(&binaries().control_plane)
        .arg("create-topics")
        .args(args)
        .env("KAFKA_BOOTSTRAP_SERVERS", bootstrap)
        .env("KAFKA_WAIT_SECS", "30")
        .env("RUST_LOG", "warn")
        .output()?;
    Ok((
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
    ))
}

/// On noida-db only: the embedded broker (librdkafka's mock cluster) does not answer the
/// admin API's CreateTopics (a request times out), so it creates the catalog itself at
/// start and `create-topics` is for real clusters (README, "The embedded default").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_topics_is_idempotent_and_finds_nothing_to_report_on_its_own_topics() -> Result<()> {
    // The harness's first `create-topics` made the catalog.
    let broker = broker_or_skip!(BrokerKind::NoidaDb);
    let (ok, out) = create_topics_with(&broker.bootstrap, &["--strict"])?;
    ensure!(ok, "a second create-topics failed:\n{out}");
    ensure!(
        out.contains("topics ready (created now: )"),
        "created something again:\n{out}"
    );
    ensure!(!out.contains("difference"), "reported differences:\n{out}");
    // A broker that describes configs: no warning that it could not.
    ensure!(!out.contains("warning"), "{out}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_topics_reports_every_difference_and_fixes_configs_only_when_asked() -> Result<()> {
    let broker = broker_or_skip!(BrokerKind::NoidaDb);
    let b = broker.bootstrap.as_str();
    let admin = admin(b)?;
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    // An operator's earlier hand: the heartbeat topic made with 1 partition, compacted,
    // 1 s retention and a larger message limit of its own; the logs topic's retention
    // changed afterwards.
    admin
        .delete_topics(&["cluster.heartbeat"], &options)
        .await?
        .into_iter()
        .collect::<Result<Vec<_>, _>>()
        .map_err(|(topic, code)| anyhow::anyhow!("delete {topic}: {code}"))?;
    poll("the heartbeat topic gone", Duration::from_secs(10), || {
        let consumer: rdkafka::consumer::BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", b)
            .create()
            .ok()?;
        let metadata =
            rdkafka::consumer::Consumer::fetch_metadata(&consumer, None, Duration::from_secs(5))
                .ok()?;
        (!metadata
            .topics()
            .iter()
            .any(|t| t.name() == "cluster.heartbeat"))
        .then_some(())
    })?;
    let heartbeat = NewTopic::new("cluster.heartbeat", 1, TopicReplication::Fixed(1))
        .set("cleanup.policy", "compact")
        .set("retention.ms", "1000")
        .set("max.message.bytes", "2000000");
    admin
        .create_topics([&heartbeat], &options)
        .await?
        .into_iter()
        .collect::<Result<Vec<_>, _>>()
        .map_err(|(topic, code)| anyhow::anyhow!("create {topic}: {code}"))?;
    let logs =
        AlterConfig::new(ResourceSpecifier::Topic("raw.k8s.logs")).set("retention.ms", "5000");
    admin.alter_configs([&logs], &options).await?;

    // Reported, nothing changed.
    let (ok, out) = create_topics_with(b, &[])?;
    ensure!(ok, "create-topics failed:\n{out}");
    for expected in [
        "difference: topic cluster.heartbeat: 1 partitions, expected 3",
        "difference: topic cluster.heartbeat: cleanup.policy = compact, expected delete (not changed",
        "difference: topic cluster.heartbeat: retention.ms = 1000, expected 3600000 (--fix-configs sets it)",
        "difference: topic raw.k8s.logs: retention.ms = 5000, expected 259200000 (--fix-configs sets it)",
        "4 difference(s) left in place",
    ] {
        ensure!(out.contains(expected), "missing {expected:?} in:\n{out}");
    }
    ensure!(
        topic_configs(b, "cluster.heartbeat").await?["retention.ms"] == "1000",
        "a plain run changed a config"
    );
    let (strict_ok, _) = create_topics_with(b, &["--strict"])?;
    ensure!(!strict_ok, "--strict passed with differences in place");

    // Fixed: the configs that are safe to change, and nothing else of the topic's.
    let (ok, out) = create_topics_with(b, &["--fix-configs"])?;
    ensure!(ok, "create-topics --fix-configs failed:\n{out}");
    ensure!(
        out.contains("fixed: topic cluster.heartbeat: retention.ms = 1000, expected 3600000")
            && out.contains("fixed: topic raw.k8s.logs: retention.ms = 5000, expected 259200000")
            && out.contains("2 difference(s) left in place"),
        "{out}"
    );
    let heartbeat = topic_configs(b, "cluster.heartbeat").await?;
    ensure!(heartbeat["retention.ms"] == "3600000", "{heartbeat:?}");
    ensure!(
        heartbeat["cleanup.policy"] == "compact",
        "the cleanup policy was changed"
    );
    ensure!(
        heartbeat["max.message.bytes"] == "2000000",
        "the fix reset the topic's own max.message.bytes: {heartbeat:?}"
    );
    ensure!(topic_configs(b, "raw.k8s.logs").await?["retention.ms"] == "259200000");

    // What is left is what only an operator may change.
    let (ok, out) = create_topics_with(b, &[])?;
    ensure!(ok);
    ensure!(
        out.lines().filter(|l| l.starts_with("difference:")).count() == 2,
        "{out}"
    );
    Ok(())
}
