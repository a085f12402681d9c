//! Records that cannot be read at all (issue "Hardening", findings 1 and 2): a corrupt
//! compressed batch (valid framing, garbage zstd, produced raw) on each topic we consume,
//! and a registration larger than the embedded broker keeps per partition. Before the
//! fixes, the batch stalled its partition for good (librdkafka fetches it again and again)
//! and the large registration made ingest reset to the end of the registry. Now the
//! consumer moves past exactly the unreadable run, dead-letters what it skipped (topic,
//! partition, offset range, reason) and counts it; nothing is read from the end.
//!
//! noida-db 0.2.3 stores such a batch as sent too (kcat: "Decompression (codec 0x4) of
//! message at 0 of 64 bytes failed"), so the heartbeat and event cases run on both
//! brokers; a real Kafka broker would refuse it at produce time.

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use kg_tests::raw_kafka::produce_corrupt_batch;
use kg_tests::*;
use serde_json::Value;

/// The dead letter on `topic` whose reason code is `unreadable` for `source_topic`.
fn unreadable_letter(bootstrap: &str, topic: &str, source_topic: &str) -> Result<Value> {
    poll(
        "the dead letter of the skipped run",
        Duration::from_secs(30),
        || {
            kcat_consume(bootstrap, topic)
                .ok()?
                .into_iter()
                .filter_map(|(_, v)| serde_json::from_str::<Value>(&v).ok())
                .find(|v| v["reason_code"] == "unreadable" && v["source_topic"] == source_topic)
        },
    )
}

fn heartbeat(client: &str) -> String {
    let now = chrono::Utc::now().to_rfc3339();
    format!(r#"{{"client_id":"{client}","timestamp":"{now}"}}"#)
}

on_both_brokers!(
    a_corrupt_batch_on_the_heartbeat_topic_is_skipped_and_the_heartbeats_behind_it_count
);
async fn a_corrupt_batch_on_the_heartbeat_topic_is_skipped_and_the_heartbeats_behind_it_count(
    kind: BrokerKind,
) -> Result<()> {
    let broker = broker_or_skip!(kind);
    let plane = ControlPlane::start(&broker, ControlPlaneOptions::default())?;
    let client = "corrupt-hb-001";
    register_with_chart(&broker.bootstrap, client)?;
    // Registered first: ingest reads the two topics in whatever order the broker serves
    // them, and a heartbeat read before its client's registration counts as unknown.
    poll("the client registered", Duration::from_secs(30), || {
        plane.client(client)
    })
    .with_context(|| plane.log_tail())?;
    let producer = producer(&broker.bootstrap, "none")?;
    let (partition, _) = send_to(
        &producer,
        "cluster.heartbeat",
        None,
        client,
        &heartbeat(client),
    )
    .await?;
    poll("the first heartbeat", Duration::from_secs(30), || {
        (plane.metric("cp_heartbeats_total") >= 1.0).then_some(())
    })
    .with_context(|| plane.log_tail())?;

    let base = produce_corrupt_batch(&broker.bootstrap, "cluster.heartbeat", partition, 5)?;
    // Behind it, on the same partition: heartbeats that must still count.
    for _ in 0..3 {
        send_to(
            &producer,
            "cluster.heartbeat",
            Some(partition),
            client,
            &heartbeat(client),
        )
        .await?;
    }
    poll(
        "the heartbeats behind the corrupt batch",
        Duration::from_secs(30),
        || (plane.metric("cp_heartbeats_total") >= 4.0).then_some(()),
    )
    .with_context(|| plane.log_tail())?;
    ensure!(
        plane.metric(
            "cp_ingest_offsets_skipped_total{topic=\"cluster.heartbeat\",reason=\"unreadable\"}"
        ) == 5.0,
        "skipped: {}",
        plane.metric(
            "cp_ingest_offsets_skipped_total{topic=\"cluster.heartbeat\",reason=\"unreadable\"}"
        )
    );
    let letter = unreadable_letter(&broker.bootstrap, "dlq.raw", "cluster.heartbeat")?;
    ensure!(letter["source_partition"] == partition, "{letter}");
    ensure!(letter["source_offset"] == base, "{letter}");
    ensure!(letter["source_last_offset"] == base + 4, "{letter}");
    ensure!(
        plane.client(client).is_some_and(|c| c["state"] == "active"),
        "{:?}",
        plane.client(client)
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_with_a_corrupt_batch_in_the_registry_becomes_ready_and_applies_what_follows(
) -> Result<()> {
    let broker = Broker::start()?;
    let producer = producer(&broker.bootstrap, "none")?;
    let (partition, _) = send_to(
        &producer,
        "cluster.registry",
        None,
        "before-001",
        &chart_registration("before-001"),
    )
    .await?;
    let base = produce_corrupt_batch(&broker.bootstrap, "cluster.registry", partition, 3)?;
    send_to(
        &producer,
        "cluster.registry",
        Some(partition),
        "after-001",
        &chart_registration("after-001"),
    )
    .await?;
    // Starting waits for /ready: the replay must get past the batch.
    let plane = ControlPlane::start(&broker, ControlPlaneOptions::default())?;
    poll(
        "both registrations applied",
        Duration::from_secs(30),
        || {
            (plane.client("before-001").is_some() && plane.client("after-001").is_some())
                .then_some(())
        },
    )
    .with_context(|| plane.log_tail())?;
    ensure!(
        plane.metric(
            "cp_ingest_offsets_skipped_total{topic=\"cluster.registry\",reason=\"unreadable\"}"
        ) == 3.0,
        "{}",
        plane.log_tail()
    );
    let letter = unreadable_letter(&broker.bootstrap, "dlq.raw", "cluster.registry")?;
    ensure!(letter["source_offset"] == base, "{letter}");
    ensure!(letter["source_last_offset"] == base + 2, "{letter}");
    Ok(())
}

on_both_brokers!(a_corrupt_batch_on_raw_events_is_skipped_by_the_event_normalizer);
async fn a_corrupt_batch_on_raw_events_is_skipped_by_the_event_normalizer(
    kind: BrokerKind,
) -> Result<()> {
    let broker = broker_or_skip!(kind);
    let plane = ControlPlane::start(&broker, ControlPlaneOptions::default())?;
    let client = "corrupt-ev-001";
    register_with_chart(&broker.bootstrap, client)?;
    let heartbeats = Heartbeater::start(&broker.bootstrap, client, Duration::from_secs(2))?;
    poll("the client's workers", Duration::from_secs(60), || {
        (plane.running_workers(client).len() == 3).then_some(())
    })
    .with_context(|| plane.log_tail())?;
    let producer = producer(&broker.bootstrap, "lz4")?;
    let key = format!("{client}::event::first");
    let (partition, _) = send_to(
        &producer,
        "raw.k8s.events",
        None,
        &key,
        &raw_event("first-uid", "BackOff"),
    )
    .await?;
    let base = produce_corrupt_batch(&broker.bootstrap, "raw.k8s.events", partition, 4)?;
    for n in 0..20 {
        send_to(
            &producer,
            "raw.k8s.events",
            Some(partition),
            &format!("{client}::event::after-{n}"),
            &raw_event(&format!("after-{n}"), "BackOff"),
        )
        .await?;
    }
    let worker = format!("kg-event-normalizer-{client}");
    poll(
        "the 20 events behind the corrupt batch normalized",
        Duration::from_secs(60),
        || {
            let out = kcat_consume(&broker.bootstrap, "events.normalized").ok()?;
            let after = (0..20)
                .filter(|n| out.iter().any(|(_, v)| v.contains(&format!("after-{n}\""))))
                .count();
            (after == 20).then_some(())
        },
    )
    .with_context(|| plane.worker_log(&worker))?;
    let letter = unreadable_letter(&broker.bootstrap, "dlq.normalized", "raw.k8s.events")?;
    ensure!(letter["source_partition"] == partition, "{letter}");
    ensure!(letter["source_offset"] == base, "{letter}");
    ensure!(letter["source_last_offset"] == base + 3, "{letter}");
    ensure!(letter["client_id"] == client, "{letter}");
    heartbeats.stop().await;
    Ok(())
}

/// The keys still on one partition, by kcat (an independent reader).
fn keys_on(bootstrap: &str, topic: &str, partition: i32) -> Result<Vec<String>> {
    let output = std::process::Command::new("kcat")
        .args([
            "-b",
            bootstrap,
            "-C",
            "-t",
            topic,
            "-p",
            &partition.to_string(),
        ])
        .args(["-o", "beginning", "-e", "-q", "-f", "%k\\n"])
        .output()
        .context("run kcat")?;
    ensure!(
        output.status.success(),
        "kcat: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(str::to_string)
        .collect())
}

/// The embedded broker keeps at most 5 MiB per partition: a 6 MiB registration pushes
/// everything before it out, and itself and the next record with it (seen with kcat: the
/// partition's start moves past both). Ingest, frozen meanwhile so the order is certain,
/// finds its next offset gone: librdkafka's default reset went to the end and lost every
/// registration the broker still had behind the gap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[allow(clippy::too_many_lines)] // a scenario reads best top to bottom
async fn offsets_the_broker_dropped_before_ingest_read_them_never_make_it_skip_to_the_end(
) -> Result<()> {
    let broker = Broker::start()?;
    let mut plane = ControlPlane::start(&broker, ControlPlaneOptions::default())?;
    let producer: rdkafka::producer::FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &broker.bootstrap)
        .set("message.max.bytes", "10000000")
        .create()?;
    let (partition, _) = send_to(
        &producer,
        "cluster.registry",
        None,
        "first-001",
        &chart_registration("first-001"),
    )
    .await?;
    poll("the first registration", Duration::from_secs(30), || {
        plane.client("first-001")
    })?;

    plane.signal(nix::sys::signal::Signal::SIGSTOP)?;
    let padding = "x".repeat(6 * 1024 * 1024);
    let big = format!(r#"{{"client_id":"big-001","cluster_name":"big","padding":"{padding}"}}"#);
    let sent = async {
        let (_, big_offset) = send_to(
            &producer,
            "cluster.registry",
            Some(partition),
            "big-001",
            &big,
        )
        .await?;
        for n in 1..=3 {
            let id = format!("after-00{n}");
            send_to(
                &producer,
                "cluster.registry",
                Some(partition),
                &id,
                &chart_registration(&id),
            )
            .await?;
        }
        anyhow::Ok(big_offset)
    }
    .await;
    plane.signal(nix::sys::signal::Signal::SIGCONT)?;
    let big_offset = sent?;
    let kept = keys_on(&broker.bootstrap, "cluster.registry", partition)?;
    ensure!(
        !kept.is_empty() && kept.iter().all(|key| key.starts_with("after-")),
        "the broker kept {kept:?}: not the case this test is about"
    );

    poll(
        "every registration the broker kept behind the gap",
        Duration::from_secs(30),
        || {
            kept.iter()
                .all(|id| plane.client(id).is_some())
                .then_some(())
        },
    )
    .with_context(|| plane.log_tail())?;
    let letter = poll(
        "the dead letter of the gap",
        Duration::from_secs(30),
        || {
            kcat_consume(&broker.bootstrap, "dlq.raw")
                .ok()?
                .into_iter()
                .filter_map(|(_, v)| serde_json::from_str::<Value>(&v).ok())
                .find(|v| v["reason_code"] == "deleted_before_read")
        },
    )?;
    ensure!(letter["source_topic"] == "cluster.registry", "{letter}");
    ensure!(letter["source_partition"] == partition, "{letter}");
    ensure!(letter["source_offset"] == big_offset, "{letter}");
    let last = letter["source_last_offset"]
        .as_i64()
        .context("no last offset")?;
    ensure!(last >= big_offset && last < big_offset + 4, "{letter}");
    ensure!(
        plane.metric(
            "cp_ingest_offsets_skipped_total{topic=\"cluster.registry\",reason=\"deleted_before_read\"}"
        ) == (last - big_offset + 1) as f64,
        "{}",
        plane.log_tail()
    );

    // A restart replays what the broker still has and becomes ready.
    plane.terminate(Duration::from_secs(15))?;
    plane.spawn()?;
    poll(
        "the registrations after a restart",
        Duration::from_secs(30),
        || {
            kept.iter()
                .all(|id| plane.client(id).is_some())
                .then_some(())
        },
    )
    .with_context(|| plane.log_tail())?;
    Ok(())
}
