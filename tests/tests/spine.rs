//! The spine, end to end: the real control plane and workers, driven with kcat and rdkafka
//! the way deployed agents drive them. The scenarios that matter run on both brokers of the
//! test suite (`on_both_brokers!`): the embedded default and noida-db.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use kg_tests::*;
use serde_json::Value;

const EVENT_NORMALIZER: &str = "kg-event-normalizer";
const LOG_NORMALIZER: &str = "kg-log-normalizer";
const GRAPH_BUILDER: &str = "kg-graph-builder";
const ALERT_ENRICHMENT: &str = "kg-pipeline-alert-enrichment";

/// The client's workers when exactly one per default role runs, sorted by name.
fn all_running(plane: &ControlPlane, client: &str) -> Option<Vec<(String, String)>> {
    let workers = plane.running_workers(client);
    let names: Vec<&str> = workers.iter().map(|(name, _)| name.as_str()).collect();
    (names
        == [
            format!("{EVENT_NORMALIZER}-{client}"),
            format!("{GRAPH_BUILDER}-{client}"),
            format!("{LOG_NORMALIZER}-{client}"),
        ])
    .then_some(workers)
}

fn find_normalized(bootstrap: &str, client: &str, raw_uid: &str) -> Option<(String, Value)> {
    kcat_consume(bootstrap, "events.normalized")
        .ok()?
        .into_iter()
        .filter(|(key, _)| key.starts_with(&format!("{client}::")))
        .filter_map(|(key, value)| Some((key, serde_json::from_str::<Value>(&value).ok()?)))
        .find(|(_, value)| {
            value["raw_event_id"] == format!("evt-{raw_uid}") || value["raw_event_id"] == raw_uid
        })
}

on_both_brokers!(
    chart_registration_runs_workers_that_normalize_then_stale_reregister_and_tombstone_work
);
#[allow(clippy::too_many_lines)] // a scenario reads best top to bottom
async fn chart_registration_runs_workers_that_normalize_then_stale_reregister_and_tombstone_work(
    kind: BrokerKind,
) -> Result<()> {
    let broker = broker_or_skip!(kind);
    let timeout_secs = 6;
    let plane = ControlPlane::start(
        &broker,
        ControlPlaneOptions {
            heartbeat_timeout_secs: timeout_secs,
            ..Default::default()
        },
    )?;
    let client = "af-9";

    // The chart's exact registration, produced by an independent client.
    register_with_chart(&broker.bootstrap, client)?;
    let heartbeats = Heartbeater::start(&broker.bootstrap, client, Duration::from_millis(500))?;
    let workers = poll("all three workers running", Duration::from_secs(30), || {
        all_running(&plane, client)
    })
    .with_context(|| plane.log_tail())?;
    assert_eq!(workers.len(), 3);
    let record = plane.client(client).context("client record")?;
    assert_eq!(record["state"], "active");
    assert_eq!(record["registration"]["cluster_name"], "prod-eu");
    assert_eq!(record["registration"]["chart_version"], "2.1.2");
    poll(
        "a heartbeat to be recorded",
        Duration::from_secs(10),
        || {
            plane
                .client(client)
                .filter(|r| !r["last_heartbeat"].is_null())
        },
    )?;

    // A raw event keyed <id>::event::<uid> comes out normalized under <id>::<event_id>.
    kcat_produce(
        &broker.bootstrap,
        "raw.k8s.events",
        &format!("{client}::event::test-123"),
        Some(&raw_event("test-123", "OOMKilled")),
        None,
    )?;
    let (key, event) = poll("the normalized event", Duration::from_secs(30), || {
        find_normalized(&broker.bootstrap, client, "test-123")
    })
    .with_context(|| plane.worker_log(&format!("{EVENT_NORMALIZER}-{client}")))?;
    let event_id = event["event_id"].as_str().context("event_id")?;
    assert_eq!(key, format!("{client}::{event_id}"));
    assert_eq!(event["reason"], "OOMKilled");
    assert_eq!(event["event_type_abstract"], "MEMORY_OOM");
    assert_eq!(event["severity"], "WARNING");
    assert_eq!(event["namespace"], "default");
    assert_eq!(event["pod_name"], "api-7d9f");
    assert_eq!(event["node"], "node-1");
    assert_eq!(event["involved_object_kind"], "Pod");
    assert_eq!(event["etype"], "k8s.event");
    assert_eq!(event["subject"]["name"], "api-7d9f");
    assert_eq!(event["client_id"], client);

    // Heartbeats stop: the workers are gone within the timeout plus 5 seconds.
    let last_heartbeat = heartbeats.stop().await;
    poll(
        "the workers to be reaped",
        Duration::from_secs(timeout_secs + 5),
        || {
            plane
                .client(client)
                .filter(|r| r["workers"].as_array().is_some_and(Vec::is_empty))
        },
    )
    .with_context(|| plane.log_tail())?;
    let reaped_after = last_heartbeat.elapsed();
    ensure!(
        reaped_after <= Duration::from_secs(timeout_secs + 5),
        "reaped after {reaped_after:?}"
    );
    assert_eq!(
        plane.client(client).context("still registered")?["state"],
        "stale"
    );
    assert!(
        plane.worker_dirs().is_empty(),
        "worker records left: {:?}",
        plane.worker_dirs()
    );

    // A new registration brings them back.
    register_with_chart(&broker.bootstrap, client)?;
    poll(
        "workers back after re-registration",
        Duration::from_secs(30),
        || all_running(&plane, client),
    )
    .with_context(|| plane.log_tail())?;

    // The chart's pre-delete tombstone removes them at once.
    let tombstoned = Instant::now();
    kcat_produce(&broker.bootstrap, "cluster.registry", client, None, None)?;
    poll(
        "the client to be deregistered",
        Duration::from_secs(10),
        || plane.client(client).is_none().then_some(()),
    )?;
    poll("the workers to be removed", Duration::from_secs(15), || {
        plane.worker_dirs().is_empty().then_some(())
    })
    .with_context(|| plane.log_tail())?;
    ensure!(
        tombstoned.elapsed() < Duration::from_secs(timeout_secs),
        "tombstone waited for the stale timeout"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[allow(clippy::too_many_lines)] // a scenario reads best top to bottom
async fn agent_quirks_are_handled_as_the_protocol_says() -> Result<()> {
    let broker = Broker::start()?;
    let plane = ControlPlane::start(&broker, ControlPlaneOptions::default())?;
    let b = &broker.bootstrap;

    // The chart 2.1.1+ colon-split registration.
    kcat_produce(
        b,
        "cluster.registry",
        r#"{"client_id""#,
        Some(r#""af-7","cluster_name":"af-7","version":"2.1.1"}"#),
        None,
    )?;
    poll(
        "the colon-split client's workers",
        Duration::from_secs(30),
        || all_running(&plane, "af-7"),
    )
    .with_context(|| plane.log_tail())?;

    // A duplicate registration updates metadata and never creates a second set.
    register_with_chart(b, "af-8")?;
    let first = poll("af-8's workers", Duration::from_secs(30), || {
        all_running(&plane, "af-8")
    })?;
    kcat_produce(
        b,
        "cluster.registry",
        "af-8",
        Some(r#"{"client_id":"af-8","cluster_name":"renamed","chart_version":"2.1.3"}"#),
        None,
    )?;
    poll("the repeat to be applied", Duration::from_secs(10), || {
        plane
            .client("af-8")
            .filter(|r| r["registration"]["cluster_name"] == "renamed")
    })?;
    let record = plane.client("af-8").context("af-8")?;
    assert_eq!(record["registrations_seen"], 2);
    // Give the controller a few passes to do anything wrong before comparing.
    plane.wait_reconcile_passes(3)?;
    assert_eq!(
        all_running(&plane, "af-8"),
        Some(first),
        "workers changed after a repeated registration"
    );
    assert_eq!(plane.worker_dirs().len(), 6);

    // A zstd heartbeat keyed <id>::<id>, produced by kcat, counts as that client's.
    let before = plane.client("af-8").context("af-8")?["last_heartbeat"].clone();
    kcat_produce(
        b,
        "cluster.heartbeat",
        "af-8::af-8",
        Some(
            r#"{"client_id":"af-8","metrics":{"resources_sent":0,"uptime_seconds":120},"status":"healthy","timestamp":"2025-10-28T08:31:30Z"}"#,
        ),
        Some("zstd"),
    )?;
    poll("the zstd heartbeat", Duration::from_secs(10), || {
        plane
            .client("af-8")
            .filter(|r| !r["last_heartbeat"].is_null() && r["last_heartbeat"] != before)
    })?;

    // An invalid client id and a non-JSON value are skipped with a reason, counted, and
    // dead-lettered; neither reaches the runtime.
    kcat_produce(
        b,
        "cluster.registry",
        "Bad_Client",
        Some(r#"{"client_id":"Bad_Client!","cluster_name":"x"}"#),
        None,
    )?;
    kcat_produce(
        b,
        "cluster.registry",
        "garbage",
        Some("this is not json"),
        None,
    )?;
    kcat_produce(
        b,
        "cluster.registry",
        "trailing",
        Some(r#"{"client_id":"trail-1"} extra"#),
        None,
    )?;
    poll("the rejects to be counted", Duration::from_secs(10), || {
        (plane.metric("cp_invalid_client_ids_total") >= 1.0
            && plane.metric(r#"cp_registry_rejected_total{reason="not_json"}"#) >= 1.0
            && plane.metric(r#"cp_registry_rejected_total{reason="trailing_data"}"#) >= 1.0)
            .then_some(())
    })
    .with_context(|| {
        plane
            .get("/metrics")
            .map(|(_, body)| body)
            .unwrap_or_default()
    })?;
    let letters = poll("three dead letters", Duration::from_secs(10), || {
        let letters = kcat_consume(b, "dlq.raw").ok()?;
        (letters.len() >= 3).then_some(letters)
    })?;
    let reasons: HashSet<String> = letters
        .iter()
        .filter_map(|(_, v)| serde_json::from_str::<Value>(v).ok())
        .map(|v| {
            assert_eq!(v["source_topic"], "cluster.registry");
            assert!(v["source_offset"].is_i64());
            v["reason_code"].as_str().unwrap_or_default().to_string()
        })
        .collect();
    assert!(
        reasons.contains("invalid_client_id")
            && reasons.contains("not_json")
            && reasons.contains("trailing_data"),
        "{reasons:?}"
    );
    let (code, clients) = plane.get("/clients")?;
    assert_eq!(code, 200);
    let ids: Vec<String> = serde_json::from_str::<Vec<Value>>(&clients)?
        .iter()
        .map(|c| c["client_id"].as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(ids, ["af-7", "af-8"]);
    assert!(plane
        .worker_dirs()
        .iter()
        .all(|d| d.ends_with("af-7") || d.ends_with("af-8")));

    // A heartbeat from a client that never registered is counted, not stored.
    kcat_produce(
        b,
        "cluster.heartbeat",
        "ghost",
        Some(r#"{"client_id":"ghost","timestamp":"2025-10-28T08:31:00Z"}"#),
        None,
    )?;
    poll(
        "the unknown heartbeat to be counted",
        Duration::from_secs(10),
        || (plane.metric("cp_heartbeats_unknown_client_total") >= 1.0).then_some(()),
    )?;
    assert!(plane.client("ghost").is_none());

    // Deregistration over the API needs the token, and is durable (a tombstone).
    let url = format!("{}/clients/af-7", plane.api);
    assert_eq!(http::request("DELETE", &url, None)?.0, 401);
    assert_eq!(http::request("DELETE", &url, Some("test-token"))?.0, 202);
    poll("af-7 to be gone", Duration::from_secs(15), || {
        (plane.client("af-7").is_none() && plane.worker_dirs().iter().all(|d| !d.ends_with("af-7")))
            .then_some(())
    })?;
    let tombstones = kcat_consume(b, "cluster.registry")?;
    assert!(
        tombstones.iter().any(|(k, v)| k == "af-7" && v.is_empty()),
        "no tombstone on the registry"
    );
    Ok(())
}

on_both_brokers!(a_poison_record_is_dead_lettered_and_the_worker_keeps_going);
async fn a_poison_record_is_dead_lettered_and_the_worker_keeps_going(
    kind: BrokerKind,
) -> Result<()> {
    let broker = broker_or_skip!(kind);
    let plane = ControlPlane::start(&broker, ControlPlaneOptions::default())?;
    let client = "poison-1";
    register_with_chart(&broker.bootstrap, client)?;
    let before = poll("workers", Duration::from_secs(30), || {
        all_running(&plane, client)
    })
    .with_context(|| plane.log_tail())?;

    kcat_produce(
        &broker.bootstrap,
        "raw.k8s.events",
        &format!("{client}::event::bad"),
        Some("{not json at all"),
        None,
    )?;
    kcat_produce(
        &broker.bootstrap,
        "raw.k8s.events",
        &format!("{client}::event::good-1"),
        Some(&raw_event("good-1", "BackOff")),
        None,
    )?;
    let letter = poll("the dead letter", Duration::from_secs(30), || {
        kcat_consume(&broker.bootstrap, "dlq.normalized")
            .ok()?
            .into_iter()
            .filter_map(|(_, v)| serde_json::from_str::<Value>(&v).ok())
            .find(|v| v["key"] == format!("{client}::event::bad"))
    })?;
    assert_eq!(letter["original"], "{not json at all");
    assert_eq!(letter["source_topic"], "raw.k8s.events");
    assert!(letter["source_partition"].is_i64() && letter["source_offset"].is_i64());
    assert!(!letter["reason"].as_str().unwrap_or_default().is_empty());
    let (_, good) = poll(
        "the next good record normalized",
        Duration::from_secs(30),
        || find_normalized(&broker.bootstrap, client, "good-1"),
    )?;
    assert_eq!(good["event_type_abstract"], "POD_BACKOFF");
    assert_eq!(
        all_running(&plane, client),
        Some(before),
        "the worker restarted"
    );
    Ok(())
}

on_both_brokers!(a_worker_killed_with_sigkill_loses_no_record);
async fn a_worker_killed_with_sigkill_loses_no_record(kind: BrokerKind) -> Result<()> {
    let broker = broker_or_skip!(kind);
    let plane = ControlPlane::start(&broker, ControlPlaneOptions::default())?;
    let client = "nolose-1";
    let foreign = "other-2";
    register_with_chart(&broker.bootstrap, client)?;
    poll("workers", Duration::from_secs(30), || {
        all_running(&plane, client)
    })?;
    let worker = format!("{EVENT_NORMALIZER}-{client}");
    let first_pid = plane.worker_pid(&worker).context("pid")?;

    // The observer runs while we produce: the embedded broker silently drops old data
    // past 5 MiB a partition, so the count must not depend on reading it back later.
    let observer = consumer(&broker.bootstrap, &["events.normalized"])?;
    let total = 4000;
    let producer = producer(&broker.bootstrap, "lz4")?;
    let prefix = format!("{client}::");
    let mut seen: HashSet<String> = HashSet::new();
    let batch = |range: std::ops::Range<usize>| {
        let mut records = Vec::new();
        for n in range {
            let uid = format!("u{n:05}");
            records.push((format!("{client}::event::{uid}"), raw_event(&uid, "Pulled")));
            // Records of another tenant are interleaved and must be skipped.
            if n % 4 == 0 {
                records.push((
                    format!("{foreign}::event::{uid}"),
                    raw_event(&uid, "Pulled"),
                ));
            }
        }
        records
    };
    send_all(&producer, "raw.k8s.events", batch(0..total / 2)).await?;
    // Kill it once it has made progress, mid-stream.
    poll(
        "some output before the kill",
        Duration::from_secs(30),
        || {
            (!kcat_consume(&broker.bootstrap, "events.normalized")
                .ok()?
                .is_empty())
            .then_some(())
        },
    )?;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(first_pid),
        nix::sys::signal::Signal::SIGKILL,
    )?;
    send_all(&producer, "raw.k8s.events", batch(total / 2..total)).await?;
    consume_until(&observer, Duration::from_secs(90), |_, key, value| {
        if let Some(raw) = key
            .strip_prefix(&prefix)
            .and(serde_json::from_str::<Value>(value).ok())
        {
            if let Some(id) = raw["raw_event_id"].as_str() {
                seen.insert(id.to_string());
            }
        }
        seen.len() >= total
    })
    .await
    .with_context(|| format!("saw {} of {total}\n{}", seen.len(), plane.log_tail()))?;
    assert_eq!(seen.len(), total);
    let second_pid = poll("the restarted worker", Duration::from_secs(30), || {
        plane.worker_pid(&worker).filter(|pid| *pid != first_pid)
    })?;
    assert_ne!(first_pid, second_pid);
    assert!(plane.metric(r#"cp_lifecycle_events_total{event="worker_restarted"}"#) >= 1.0);
    Ok(())
}

on_both_brokers!(a_restarted_control_plane_adopts_the_running_workers);
async fn a_restarted_control_plane_adopts_the_running_workers(kind: BrokerKind) -> Result<()> {
    let broker = broker_or_skip!(kind);
    let mut plane = ControlPlane::start(&broker, ControlPlaneOptions::default())?;
    let client = "adopt-1";
    register_with_chart(&broker.bootstrap, client)?;
    let heartbeats = Heartbeater::start(&broker.bootstrap, client, Duration::from_secs(1))?;
    let before = poll("workers", Duration::from_secs(30), || {
        all_running(&plane, client)
    })
    .with_context(|| plane.log_tail())?;

    plane.kill();
    plane.spawn()?;
    let after = poll("workers listed again", Duration::from_secs(30), || {
        all_running(&plane, client)
    })
    .with_context(|| plane.log_tail())?;
    assert_eq!(before, after, "workers were replaced instead of adopted");
    plane.wait_reconcile_passes(3)?;
    assert_eq!(all_running(&plane, client), Some(before));
    assert_eq!(plane.worker_dirs().len(), 3);
    assert!(plane.metric(r#"cp_lifecycle_events_total{event="worker_adopted"}"#) >= 3.0);
    heartbeats.stop().await;
    Ok(())
}

on_both_brokers!(a_restarted_control_plane_adopts_the_running_pipeline_worker);
/// A pipeline's worker is adopted like the roles' workers: the built-in alert enrichment
/// keeps its process (same pid, still alive) and its id across the control plane's SIGKILL
/// and restart.
async fn a_restarted_control_plane_adopts_the_running_pipeline_worker(
    kind: BrokerKind,
) -> Result<()> {
    let broker = broker_or_skip!(kind);
    let mut plane = ControlPlane::start(
        &broker,
        ControlPlaneOptions {
            built_in_pipelines: true,
            ..ControlPlaneOptions::default()
        },
    )?;
    let client = "adopt-pipeline-1";
    let pipeline = format!("{ALERT_ENRICHMENT}.{client}");
    let four_running = |plane: &ControlPlane| {
        let workers = plane.running_workers(client);
        (workers.len() == 4 && workers.iter().any(|(name, _)| *name == pipeline)).then_some(workers)
    };
    register_with_chart(&broker.bootstrap, client)?;
    let heartbeats = Heartbeater::start(&broker.bootstrap, client, Duration::from_secs(1))?;
    let before = poll("the client's four workers", Duration::from_secs(60), || {
        four_running(&plane)
    })
    .with_context(|| plane.log_tail())?;
    let pid = plane
        .worker_pid(&pipeline)
        .context("the pipeline worker's pid")?;

    plane.kill();
    plane.spawn()?;
    let after = poll("workers listed again", Duration::from_secs(30), || {
        four_running(&plane)
    })
    .with_context(|| plane.log_tail())?;
    assert_eq!(before, after, "workers were replaced instead of adopted");
    plane.wait_reconcile_passes(3)?;
    assert_eq!(four_running(&plane), Some(before));
    assert_eq!(
        plane.worker_pid(&pipeline),
        Some(pid),
        "the pipeline worker was restarted\n{}",
        plane.log_tail()
    );
    ensure!(
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok(),
        "the pipeline worker's process {pid} is gone"
    );
    assert!(plane.metric(r#"cp_lifecycle_events_total{event="worker_adopted"}"#) >= 4.0);
    heartbeats.stop().await;
    Ok(())
}

on_both_brokers!(
    a_restarted_control_plane_keeps_a_live_client_registered_longer_ago_than_the_timeout
);
/// A restart must not take a live client for a stale one: its registration is older than
/// the heartbeat timeout, so only the heartbeats it sent before the restart show it is
/// live, and the first reconcile pass must already have read them.
async fn a_restarted_control_plane_keeps_a_live_client_registered_longer_ago_than_the_timeout(
    kind: BrokerKind,
) -> Result<()> {
    let broker = broker_or_skip!(kind);
    let timeout_secs = 3;
    let mut plane = ControlPlane::start(
        &broker,
        ControlPlaneOptions {
            heartbeat_timeout_secs: timeout_secs,
            ..ControlPlaneOptions::default()
        },
    )?;
    let client = "long-lived-1";
    register_with_chart(&broker.bootstrap, client)?;
    let heartbeats = Heartbeater::start(&broker.bootstrap, client, Duration::from_millis(500))?;
    let before = poll("workers", Duration::from_secs(30), || {
        all_running(&plane, client)
    })
    .with_context(|| plane.log_tail())?;
    // What is waited for here is time itself: the registration must age past the timeout.
    poll(
        "the registration to be older than the heartbeat timeout",
        Duration::from_secs(30),
        || {
            let record = plane.client(client)?;
            let registered: chrono::DateTime<chrono::Utc> =
                record["registered_at"].as_str()?.parse().ok()?;
            let age = chrono::Utc::now() - registered;
            (age > chrono::Duration::seconds(timeout_secs as i64 + 1)).then_some(())
        },
    )?;

    plane.kill();
    plane.spawn()?;
    plane.wait_reconcile_passes(3)?;
    let reaped = plane.metric(r#"cp_lifecycle_events_total{event="worker_reaped"}"#);
    ensure!(
        reaped == 0.0,
        "a restart reaped {reaped} workers of a live client\n{}",
        plane.log_tail()
    );
    // Nor took it for stale in between: a revival would say it had been.
    let revived = plane.metric(r#"cp_lifecycle_events_total{event="client_revived"}"#);
    ensure!(
        revived == 0.0,
        "a restart revived a live client\n{}",
        plane.log_tail()
    );
    assert_eq!(all_running(&plane, client), Some(before));
    assert_eq!(plane.client(client).unwrap()["state"], "active");
    heartbeats.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_process_runtime_passes_the_runtime_contract() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let runtime = control_plane_runtime(dir.path())?;
    control_plane::runtime::contract::run_contract(
        &runtime,
        "contract-1",
        "unused",
        Duration::from_secs(15),
    )
    .await
    .map_err(anyhow::Error::from)
}

fn control_plane_runtime(
    dir: &std::path::Path,
) -> Result<control_plane::runtime::process::ProcessRuntime> {
    Ok(control_plane::runtime::process::ProcessRuntime::new(
        dir,
        binaries().worker.clone(),
    )?)
}
