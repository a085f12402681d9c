//! The graph builder end to end: a realistic incident replayed through the real
//! normalizers, graph builder, control plane and embedded broker, answered by the control
//! plane's RCA endpoint; two clients sharing the topics; and a graph builder killed
//! mid-stream ending with the same graph as an uninterrupted one.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::{Context, Result};
use kg_tests::incident::*;
use kg_tests::*;
use serde_json::{json, Value};

/// Normalized event ids of `client`'s scenario events, by raw uid.
fn normalized_ids(bootstrap: &str, client: &str) -> Option<HashMap<String, String>> {
    let mut ids = HashMap::new();
    for (key, value) in kcat_consume(bootstrap, "events.normalized").ok()? {
        if !key.starts_with(&format!("{client}::")) {
            continue;
        }
        let value: Value = serde_json::from_str(&value).ok()?;
        let raw = value["raw_event_id"]
            .as_str()?
            .trim_start_matches("evt-")
            .to_string();
        ids.insert(raw, value["event_id"].as_str()?.to_string());
    }
    (ids.len() >= EVENTS.len()).then_some(ids)
}

fn rca(plane: &ControlPlane, client: &str, event_id: &str) -> Option<Vec<Value>> {
    plane.rca(client, event_id)
}

fn stats(plane: &ControlPlane, client: &str) -> Option<Value> {
    let (code, body) = plane.get(&format!("/clients/{client}/graph/stats")).ok()?;
    (code == 200)
        .then(|| serde_json::from_str(&body).ok())
        .flatten()
}

/// Stats once the graph holds `episodes` episodes and stops changing.
fn settled_stats(plane: &ControlPlane, client: &str, episodes: u64) -> Result<Value> {
    let mut last: Option<Value> = None;
    poll(
        &format!("{client}'s graph to settle at {episodes} episodes"),
        Duration::from_secs(90),
        || {
            let now = stats(plane, client)?;
            let settled = now["episodes"].as_u64() == Some(episodes) && last.as_ref() == Some(&now);
            last = Some(now.clone());
            settled.then_some(now)
        },
    )
    .with_context(|| format!("last stats: {last:?}\n{}", plane.log_tail()))
}

fn register(bootstrap: &str, client: &str) -> Result<()> {
    register_with_chart(bootstrap, client)
}

fn graph_builder_running(plane: &ControlPlane, client: &str) -> Option<()> {
    plane
        .running_workers(client)
        .iter()
        .any(|(name, _)| name == &format!("kg-graph-builder-{client}"))
        .then_some(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_graph_ranks_the_true_root_cause_first_for_each_symptom() -> Result<()> {
    let broker = Broker::start()?;
    let plane = ControlPlane::start(&broker, ControlPlaneOptions::default())?;
    let client = "shop-1";
    register(&broker.bootstrap, client)?;
    poll("the graph builder", Duration::from_secs(30), || {
        graph_builder_running(&plane, client)
    })?;
    replay_scenario(&broker.bootstrap, client).await?;
    let ids = poll("the normalized scenario", Duration::from_secs(30), || {
        normalized_ids(&broker.bootstrap, client)
    })?;
    // Every episode in (the five events and the error log line) before asking.
    settled_stats(&plane, client, EVENTS.len() as u64 + 1)?;

    // The expected answers: symptom → the true root cause, ranked first.
    let expected = [
        ("e-evicted", "NodeNotReady", "node:node-1"),
        ("e-crash", "OOMKilled", "pod:shop:checkout-abc-1"),
        ("e-probe", "OOMKilled", "pod:shop:checkout-abc-1"),
    ];
    for (symptom, cause, subject) in expected {
        let candidates = poll(
            &format!("RCA of {symptom}"),
            Duration::from_secs(60),
            || {
                rca(&plane, client, &ids[symptom])
                    .filter(|c| c.iter().any(|x| x["reason"] == cause))
            },
        )
        .with_context(|| plane.log_tail())?;
        assert_eq!(candidates[0]["reason"], cause, "{symptom}: {candidates:#?}");
        // On the cause's own resource. (The OOMKilled event and the OutOfMemoryError log
        // line are one cause seen twice; the graph keeps the latest of a reason per
        // resource as the candidate.)
        assert_eq!(
            candidates[0]["subject"], subject,
            "{symptom}: {candidates:#?}"
        );
        let confidence = candidates[0]["confidence"].as_f64().context("confidence")?;
        assert!(
            confidence > 0.5 && confidence <= 1.0,
            "{symptom}: confidence {confidence}"
        );
        assert!(candidates[0]["path"]
            .as_array()
            .is_some_and(|p| !p.is_empty()));
    }
    // node-1's trouble never explains checkout's symptoms: it runs on node-2.
    let crash = rca(&plane, client, &ids["e-crash"]).context("crash candidates")?;
    assert!(
        crash.iter().all(|c| c["reason"] != "NodeNotReady"),
        "{crash:#?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_clients_sharing_the_topics_never_see_each_others_nodes() -> Result<()> {
    let broker = Broker::start()?;
    let plane = ControlPlane::start(&broker, ControlPlaneOptions::default())?;
    let (a, b) = ("tenant-a", "tenant-b");
    register(&broker.bootstrap, a)?;
    register(&broker.bootstrap, b)?;
    poll("both graph builders", Duration::from_secs(30), || {
        graph_builder_running(&plane, a).and(graph_builder_running(&plane, b))
    })?;
    replay_scenario(&broker.bootstrap, a).await?;
    replay_scenario(&broker.bootstrap, b).await?;
    // b has one more pod and event than a; and records with no tenant at all, which the
    // deployed exporter writes straight to events.normalized keyed by uid alone.
    let producer = producer(&broker.bootstrap, "none")?;
    send(&producer, "state.k8s.resource", &format!("{b}::Pod:uid-extra"),
        &json!({"op": "UPSERT", "kind": "Pod", "uid": "uid-extra", "namespace": NS, "name": "extra-1", "at": at(0)}).to_string()).await?;
    send(
        &producer,
        "raw.k8s.events",
        &format!("{b}::event::e-extra"),
        &raw_k8s_event(&(
            "e-extra",
            "FailedMount",
            "Warning",
            "Pod",
            "extra-1",
            "uid-extra",
            50,
            "MountVolume.SetUp failed",
        )),
    )
    .await?;
    send(&producer, "events.normalized", "uid-untagged", &json!({"event_id": "evt-untagged", "reason": "OOMKilled",
        "event_time": at(10), "severity": "WARNING", "involved_object_kind": "Pod", "involved_object_name": "ghost", "namespace": NS}).to_string()).await?;
    send(&producer, "state.k8s.resource", "Pod:uid-ghost",
        &json!({"op": "UPSERT", "kind": "Pod", "uid": "uid-ghost", "namespace": NS, "name": "ghost"}).to_string()).await?;

    let scenario_episodes = EVENTS.len() as u64 + 1; // the events and the error log line
    let stats_a = settled_stats(&plane, a, scenario_episodes)?;
    let stats_b = settled_stats(&plane, b, scenario_episodes + 1)?;
    assert_eq!(
        stats_b["resources"].as_u64(),
        stats_a["resources"].as_u64().map(|n| n + 1),
        "a: {stats_a}, b: {stats_b}"
    );
    assert_eq!(stats_a["resources"], 7, "a: {stats_a}");
    // Each client's RCA answers only with its own events.
    let ids_a = normalized_ids(&broker.bootstrap, a).context("a's ids")?;
    let candidates = rca(&plane, a, &ids_a["e-crash"]).context("a's candidates")?;
    assert!(
        candidates.iter().all(|c| c["reason"] != "FailedMount"),
        "{candidates:#?}"
    );
    // The untagged records were counted by the graph builders, never claimed.
    let unattributed = std::fs::read_to_string(
        plane
            .data_dir
            .join("workers/kg-graph-builder-tenant-a/addr"),
    )
    .ok()
    .and_then(|addr| http::blocking_get(&format!("http://{addr}/metrics")).ok())
    .map(|(_, body)| body)
    .unwrap_or_default();
    assert!(
        unattributed
            .lines()
            .any(|l| l.starts_with("worker_records_unattributed_total") && !l.ends_with(" 0")),
        "{unattributed}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graph_builder_killed_mid_stream_ends_with_the_same_graph() -> Result<()> {
    let broker = Broker::start()?;
    let plane = ControlPlane::start(&broker, ControlPlaneOptions::default())?;
    let (steady, killed) = ("steady-1", "killed-1");
    register(&broker.bootstrap, steady)?;
    register(&broker.bootstrap, killed)?;
    poll("both graph builders", Duration::from_secs(30), || {
        graph_builder_running(&plane, steady).and(graph_builder_running(&plane, killed))
    })?;
    let first_pid = plane
        .worker_pid(&format!("kg-graph-builder-{killed}"))
        .context("pid")?;

    // The same stream for both clients: the scenario, then many more episodes on the
    // checkout pods, long enough to kill one graph builder in the middle of it.
    let producer = producer(&broker.bootstrap, "lz4")?;
    let extra = 1500;
    for client in [steady, killed] {
        replay_scenario(&broker.bootstrap, client).await?;
    }
    let burst = |client: &str, range: std::ops::Range<i64>| {
        range
            .map(|n| {
                let uid = format!("burst-{n:05}");
                let reason = ["BackOff", "Unhealthy", "Killing", "FailedMount"][(n % 4) as usize];
                let event = json!({"event_id": format!("evt-{uid}"), "reason": reason, "message": "burst", "type": "Warning",
                    "metadata": {"uid": uid, "creationTimestamp": at(120 + n)},
                    "involvedObject": {"kind": "Pod", "name": "checkout-abc-1", "namespace": NS, "uid": "uid-checkout-1"},
                    "source": {"host": "node-2"}, "lastTimestamp": at(120 + n), "count": 1});
                (format!("{client}::event::{uid}"), event.to_string())
            })
            .collect::<Vec<_>>()
    };
    send_all(&producer, "raw.k8s.events", burst(steady, 0..extra)).await?;
    send_all(&producer, "raw.k8s.events", burst(killed, 0..extra / 2)).await?;
    poll(
        "the graph builder to be mid-stream",
        Duration::from_secs(60),
        || {
            let episodes = stats(&plane, killed)?["episodes"].as_u64()?;
            (episodes > 10).then_some(())
        },
    )?;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(first_pid),
        nix::sys::signal::Signal::SIGKILL,
    )?;
    send_all(&producer, "raw.k8s.events", burst(killed, extra / 2..extra)).await?;
    poll(
        "the restarted graph builder",
        Duration::from_secs(30),
        || {
            plane
                .worker_pid(&format!("kg-graph-builder-{killed}"))
                .filter(|pid| *pid != first_pid)
        },
    )?;

    let episodes = EVENTS.len() as u64 + 1 + extra as u64;
    let uninterrupted = settled_stats(&plane, steady, episodes)?;
    let after_kill = settled_stats(&plane, killed, episodes)?;
    assert_eq!(uninterrupted, after_kill);
    assert!(
        uninterrupted["potential_cause_edges"].as_u64() > Some(0),
        "{uninterrupted}"
    );
    Ok(())
}
