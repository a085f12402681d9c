//! Supervision against real workers (the process runtime): a worker that crashes on start
//! backs off and ends `failed` with its reason; a broker outage leaves every worker running
//! and consuming again afterwards with no lost record.

use std::collections::HashSet;
use std::time::Duration;

use anyhow::{Context, Result};
use kg_tests::*;
use serde_json::Value;

fn worker(plane: &ControlPlane, client: &str, name: &str) -> Option<Value> {
    plane.client(client)?["workers"]
        .as_array()?
        .iter()
        .find(|w| w["name"] == name)
        .cloned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_crashes_on_start_backs_off_and_ends_failed_with_its_reason() -> Result<()> {
    let broker = Broker::start()?;
    let roles = tempfile::NamedTempFile::new()?;
    std::fs::write(
        roles.path(),
        "[[role]]\nname = \"event-normalizer\"\nrestart = \"always\"\nenv = { WORKER_BATCH_MAX_RECORDS = \"not-a-number\" }\n",
    )?;
    let env = |k: &str, v: &str| (k.to_string(), v.to_string());
    let plane = ControlPlane::start(
        &broker,
        ControlPlaneOptions {
            extra_env: vec![
                env("CP_ROLES_FILE", &roles.path().display().to_string()),
                env("CP_RESTART_BACKOFF_BASE_MS", "200"),
                env("CP_RESTART_MAX_IN_WINDOW", "3"),
                env("CP_RESTART_WINDOW_SECS", "120"),
            ],
            ..Default::default()
        },
    )?;
    let client = "crashy-1";
    let name = "kg-event-normalizer-crashy-1";
    register_with_chart(&broker.bootstrap, client)?;

    let backing_off = poll("the worker backing off", Duration::from_secs(30), || {
        worker(&plane, client, name).filter(|w| w["state"] == "backing-off")
    })
    .with_context(|| plane.log_tail())?;
    assert!(backing_off["next_retry_at"].is_string(), "{backing_off}");
    assert_eq!(backing_off["last_exit_reason"], "exit code 2");

    let failed = poll("the worker given up", Duration::from_secs(60), || {
        worker(&plane, client, name)
            .filter(|w| w["state"] == "failed" && w["last_lines"].is_string())
    })
    .with_context(|| plane.log_tail())?;
    assert_eq!(failed["restart_count"], 3, "{failed}");
    let reason = failed["failed_reason"].as_str().context("failed_reason")?;
    assert!(reason.contains("exit code 2"), "{reason}");
    let lines = failed["last_lines"].as_str().context("last_lines")?;
    assert!(
        lines.contains("not-a-number"),
        "the last lines name the bad setting: {lines}"
    );

    // It stays failed: no further restarts.
    plane.wait_reconcile_passes(3)?;
    assert_eq!(
        worker(&plane, client, name).context("worker")?["restart_count"],
        3
    );

    let (_, events) = plane.get(&format!("/clients/{client}/events?limit=100"))?;
    let events: Vec<Value> = serde_json::from_str(&events)?;
    let kinds: Vec<&str> = events.iter().filter_map(|e| e["event"].as_str()).collect();
    for expected in [
        "worker_spawned",
        "worker_exited",
        "worker_restarting",
        "worker_restarted",
        "worker_gave_up",
    ] {
        assert!(kinds.contains(&expected), "missing {expected}: {kinds:?}");
    }

    // An operator's restart of the failed worker is accepted and clears the give-up.
    let (code, _) = http::request(
        "POST",
        &format!("{}/clients/{client}/restart?only_failed=true", plane.api),
        Some("test-token"),
    )?;
    assert_eq!(code, 202);
    poll("the give-up cleared", Duration::from_secs(30), || {
        worker(&plane, client, name).filter(|w| w["state"] != "failed")
    })?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_outage_leaves_every_worker_running_and_loses_no_record() -> Result<()> {
    let mut broker = Broker::start()?;
    let plane = ControlPlane::start(&broker, ControlPlaneOptions::default())?;
    let client = "outage-1";
    register_with_chart(&broker.bootstrap, client)?;
    let heartbeats = Heartbeater::start(&broker.bootstrap, client, Duration::from_secs(1))?;
    let before = poll("the workers", Duration::from_secs(30), || {
        let workers = plane.running_workers(client);
        (workers.len() == 3).then_some(workers)
    })?;

    let observer = consumer(&broker.bootstrap, &["events.normalized"])?;
    let producer = producer(&broker.bootstrap, "lz4")?;
    let batch = |range: std::ops::Range<usize>| {
        range
            .map(|n| {
                let uid = format!("o{n:05}");
                (format!("{client}::event::{uid}"), raw_event(&uid, "Pulled"))
            })
            .collect::<Vec<_>>()
    };
    send_all(&producer, "raw.k8s.events", batch(0..300)).await?;
    let prefix = format!("{client}::");
    let mut seen: HashSet<String> = HashSet::new();
    let note = |key: &str, value: &str, seen: &mut HashSet<String>| {
        if key.starts_with(&prefix) {
            if let Some(id) = serde_json::from_str::<Value>(value)
                .ok()
                .and_then(|v| v["raw_event_id"].as_str().map(str::to_string))
            {
                seen.insert(id);
            }
        }
    };
    consume_until(&observer, Duration::from_secs(60), |_, key, value| {
        note(key, value, &mut seen);
        seen.len() >= 300
    })
    .await?;

    // The outage: the only broker goes down for a while, then comes back.
    broker.command("down 1")?;
    tokio::time::sleep(Duration::from_secs(8)).await; // the outage's length, not a wait for anything
    broker.command("up 1")?;
    send_all(&producer, "raw.k8s.events", batch(300..600)).await?;
    consume_until(&observer, Duration::from_secs(120), |_, key, value| {
        note(key, value, &mut seen);
        seen.len() >= 600
    })
    .await
    .with_context(|| format!("saw {} of 600\n{}", seen.len(), plane.log_tail()))?;
    assert_eq!(seen.len(), 600);
    assert_eq!(
        plane.running_workers(client),
        before,
        "a worker was restarted by the outage"
    );
    heartbeats.stop().await;
    Ok(())
}
