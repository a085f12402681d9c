//! Deployed agents' Kubernetes events reach their own client's graph, and only it: the
//! 2.1.x chart's shapes (the colon-split registration, zstd state records keyed
//! `<client>::pod:<uid>`, gzip raw Events keyed by their uid alone on `events.normalized`)
//! through the shared event attributor, the clients' own normalizers and graph builders,
//! on both brokers. The control plane runs the attributor (`CP_EVENT_ATTRIBUTOR=true`).

use std::collections::HashSet;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use kg_tests::*;
use serde_json::Value;

const POD_A: &str = "a0000000-0000-4000-8000-00000000000a";
const POD_B: &str = "b0000000-0000-4000-8000-00000000000b";
const POD_LATE: &str = "c0000000-0000-4000-8000-00000000000c";
const POD_NEVER: &str = "d0000000-0000-4000-8000-00000000000d";
const POD_BOTH: &str = "e0000000-0000-4000-8000-00000000000e";

/// The control plane's shared event attributor (`CP_EVENT_ATTRIBUTOR=true`).
const ATTRIBUTOR: &str = "kg-event-attributor-shared";

fn attributor_metric(plane: &ControlPlane, series: &str) -> Option<f64> {
    let addr = plane.worker_addr(ATTRIBUTOR)?;
    let (_, body) = http::blocking_get(&format!("http://{addr}/metrics")).ok()?;
    body.lines()
        .find(|line| line.starts_with(series))
        .and_then(|line| line.rsplit(' ').next()?.parse().ok())
}

/// The state watcher's record of a pod, as protocol.md shows it.
fn pod_state(client: &str, uid: &str) -> String {
    format!(
        r#"{{"op":"UPSERT","at":"2025-10-28T08:30:00Z","client_id":"{client}","cluster":"{client}","kind":"Pod","uid":"{uid}","namespace":"default","name":"api-7d9f","labels":{{}},"ownerRefs":[],"node":"node-1","status":{{"phase":"Running","restartCount":0}}}}"#
    )
}

/// The 2.1.x exporter's raw Event (no tenant anywhere in it).
fn chart_event(event_uid: &str, object_uid: &str, reason: &str, at: &str) -> String {
    format!(
        r#"{{"reason":"{reason}","message":"{reason} on api-7d9f","type":"Warning","metadata":{{"uid":"{event_uid}","creationTimestamp":"{at}"}},"involvedObject":{{"kind":"Pod","name":"api-7d9f","namespace":"default","uid":"{object_uid}"}},"source":{{"host":"node-1"}},"firstTimestamp":"{at}","lastTimestamp":"{at}","count":1}}"#
    )
}

fn send_state(bootstrap: &str, client: &str, uid: &str) -> Result<()> {
    kcat_produce(
        bootstrap,
        "state.k8s.resource",
        &format!("{client}::pod:{uid}"),
        Some(&pod_state(client, uid)),
        Some("zstd"),
    )
}

fn send_event(
    bootstrap: &str,
    event_uid: &str,
    object_uid: &str,
    reason: &str,
    at: &str,
) -> Result<()> {
    kcat_produce(
        bootstrap,
        "events.normalized",
        event_uid,
        Some(&chart_event(event_uid, object_uid, reason, at)),
        Some("gzip"),
    )
}

/// Normalized records by client: (client, raw event uid, event id, reason).
fn normalized(bootstrap: &str) -> Vec<(String, String, String, String)> {
    kcat_consume(bootstrap, "events.normalized")
        .unwrap_or_default()
        .into_iter()
        .filter_map(|(key, value)| {
            let (client, _) = key.split_once("::")?;
            let value: Value = serde_json::from_str(&value).ok()?;
            let event_id = value["event_id"].as_str()?.to_string();
            let raw = value["raw_event_id"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            let reason = value["reason"].as_str().unwrap_or_default().to_string();
            value["event_type_abstract"].as_str()?;
            Some((client.to_string(), raw, event_id, reason))
        })
        .collect()
}

fn running(plane: &ControlPlane, client: &str) -> Option<()> {
    (plane.running_workers(client).len() == 3).then_some(())
}

on_both_brokers!(chart_events_keyed_by_uid_reach_the_graph_of_the_client_that_owns_their_object);
#[allow(clippy::too_many_lines)] // a scenario reads best top to bottom
async fn chart_events_keyed_by_uid_reach_the_graph_of_the_client_that_owns_their_object(
    kind: BrokerKind,
) -> Result<()> {
    let broker = broker_or_skip!(kind);
    let b = broker.bootstrap.as_str();
    let plane = ControlPlane::start(
        &broker,
        ControlPlaneOptions {
            event_attributor: true,
            extra_env: vec![("CP_ATTRIBUTOR_WINDOW_SECS".into(), "4".into())],
            ..ControlPlaneOptions::default()
        },
    )?;
    // One client registers as the chart does, the other with the chart's colon-split
    // message (its `kcat -K:` splits the JSON at the first colon).
    register_with_chart(b, "af-9")?;
    kcat_produce(
        b,
        "cluster.registry",
        r#"{"client_id""#,
        Some(r#""bz-1","cluster_name":"bz-1","version":"2.1.1"}"#),
        None,
    )?;
    for client in ["af-9", "bz-1"] {
        poll("the client's workers", Duration::from_secs(60), || {
            running(&plane, client)
        })
        .with_context(|| plane.log_tail())?;
    }
    // Look-alike pods: same namespace and name in both clusters, different uids.
    send_state(b, "af-9", POD_A)?;
    send_state(b, "bz-1", POD_B)?;
    // A uid both clients report (which real clusters never do): nothing goes through it.
    send_state(b, "af-9", POD_BOTH)?;
    send_state(b, "bz-1", POD_BOTH)?;
    let attributor_log = || plane.worker_log(ATTRIBUTOR);
    poll("the owner index", Duration::from_secs(30), || {
        (attributor_metric(&plane, "worker_attributor_index_objects")? >= 3.0).then_some(())
    })
    .with_context(attributor_log)?;
    poll(
        "the uid both clients report counted as contested",
        Duration::from_secs(30),
        || (attributor_metric(&plane, "worker_attributor_contested_objects")? == 1.0).then_some(()),
    )
    .with_context(attributor_log)?;

    send_event(b, "ev-oom", POD_A, "OOMKilled", "2025-10-28T08:31:00Z")?;
    send_event(b, "ev-backoff", POD_A, "BackOff", "2025-10-28T08:31:30Z")?;
    send_event(b, "ev-other", POD_B, "BackOff", "2025-10-28T08:31:30Z")?;
    // Where the chart's rawTopic is set, the same Event also comes on raw.k8s.events.
    kcat_produce(
        b,
        "raw.k8s.events",
        "ev-raw-topic",
        Some(&chart_event(
            "ev-raw-topic",
            POD_B,
            "Unhealthy",
            "2025-10-28T08:31:40Z",
        )),
        Some("gzip"),
    )?;
    send_event(
        b,
        "ev-contested",
        POD_BOTH,
        "BackOff",
        "2025-10-28T08:31:50Z",
    )?;
    // Before its resource: it waits, survives an attributor crash while it waits, and is
    // attributed when the resource arrives.
    send_event(b, "ev-late", POD_LATE, "BackOff", "2025-10-28T08:32:00Z")?;
    // Its resource never arrives: unattributed once the window (4 s) has passed.
    send_event(b, "ev-never", POD_NEVER, "BackOff", "2025-10-28T08:32:00Z")?;
    poll("the early events parked", Duration::from_secs(30), || {
        (attributor_metric(&plane, "worker_attributor_parked")? >= 2.0).then_some(())
    })
    .with_context(attributor_log)?;
    // SIGKILL while they wait; the control plane starts it again.
    let pid = plane.worker_pid(ATTRIBUTOR).context("attributor pid")?;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )?;
    poll("the attributor restarted", Duration::from_secs(60), || {
        plane.worker_pid(ATTRIBUTOR).filter(|new| *new != pid)
    })
    .with_context(|| plane.log_tail())?;
    poll(
        "the restarted attributor's index",
        Duration::from_secs(60),
        || (attributor_metric(&plane, "worker_attributor_index_objects")? >= 3.0).then_some(()),
    )
    .with_context(attributor_log)?;
    send_state(b, "af-9", POD_LATE)?;

    let expected: HashSet<(String, String)> = [
        ("af-9", "ev-oom"),
        ("af-9", "ev-backoff"),
        ("bz-1", "ev-other"),
        ("bz-1", "ev-raw-topic"),
        ("af-9", "ev-late"),
    ]
    .iter()
    .map(|(c, e)| (c.to_string(), e.to_string()))
    .collect();
    let records = poll(
        "every attributable event normalized",
        Duration::from_secs(90),
        || {
            let records = normalized(b);
            let seen: HashSet<(String, String)> = records
                .iter()
                .map(|(c, raw, _, _)| (c.clone(), raw.clone()))
                .collect();
            expected.is_subset(&seen).then_some(records)
        },
    )
    .with_context(|| format!("{}\n{}", attributor_log(), plane.log_tail()))?;
    // None mis-attributed: every normalized record names a client that owns its object,
    // and the one whose object nobody reported is nowhere.
    for (client, raw, _, _) in &records {
        ensure!(
            expected.contains(&(client.clone(), raw.clone())),
            "{raw} was attributed to {client}"
        );
    }
    poll(
        "the unreported event counted as unattributed",
        Duration::from_secs(30),
        || (attributor_metric(&plane, "worker_records_unattributed_total")? >= 1.0).then_some(()),
    )
    .with_context(attributor_log)?;
    ensure!(
        !normalized(b)
            .iter()
            .any(|(_, raw, _, _)| raw == "ev-never" || raw == "ev-contested"),
        "an event whose object nobody, or two clients, reported was attributed"
    );

    // The graph ranks the crash's cause: OOMKilled first for the BackOff.
    let backoff = records
        .iter()
        .find(|(client, raw, _, _)| client == "af-9" && raw == "ev-backoff")
        .map(|(_, _, id, _)| id.clone())
        .context("backoff id")?;
    let candidates = poll("the root-cause answer", Duration::from_secs(60), || {
        plane.rca("af-9", &backoff)
    })
    .with_context(|| plane.log_tail())?;
    ensure!(
        candidates[0]["reason"] == "OOMKilled",
        "first candidate: {candidates:#?}"
    );
    // The shared worker is no client: the API lists the two clients only, and a
    // registration of its id is refused.
    let (_, clients) = plane.get("/clients")?;
    ensure!(!clients.contains("\"shared\""), "{clients}");
    register_with_chart(b, "shared")?;
    plane.wait_reconcile_passes(3)?;
    ensure!(
        plane.client("shared").is_none(),
        "the reserved id was registered"
    );
    Ok(())
}

/// Records the attributor cannot decode (a corrupt compressed batch, produced raw) stall
/// neither its index nor its events: on `state.k8s.resource` before it starts (the index
/// must still be built, with the pod behind the batch) and on `events.normalized` (the
/// event behind the batch must still be attributed). Each run is dead-lettered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[allow(clippy::too_many_lines)] // a scenario reads best top to bottom
async fn corrupt_batches_on_the_attributors_inputs_are_skipped() -> Result<()> {
    let broker = Broker::start()?;
    let b = broker.bootstrap.as_str();
    let producer = producer(b, "none")?;
    let pod_key = format!("af-9::pod:{POD_A}");
    let (state_partition, _) = send_to(
        &producer,
        "state.k8s.resource",
        None,
        &pod_key,
        &pod_state("af-9", POD_B),
    )
    .await?;
    kg_tests::raw_kafka::produce_corrupt_batch(b, "state.k8s.resource", state_partition, 3)?;
    send_to(
        &producer,
        "state.k8s.resource",
        Some(state_partition),
        &pod_key,
        &pod_state("af-9", POD_A),
    )
    .await?;
    let plane = ControlPlane::start(
        &broker,
        ControlPlaneOptions {
            event_attributor: true,
            ..ControlPlaneOptions::default()
        },
    )?;
    register_with_chart(b, "af-9")?;
    poll("the client's workers", Duration::from_secs(60), || {
        running(&plane, "af-9")
    })
    .with_context(|| plane.log_tail())?;
    poll(
        "the owner index past the batch",
        Duration::from_secs(60),
        || (attributor_metric(&plane, "worker_attributor_index_objects")? >= 1.0).then_some(()),
    )
    .with_context(|| plane.worker_log(ATTRIBUTOR))?;

    let (event_partition, _) = send_to(
        &producer,
        "events.normalized",
        None,
        "ev-before",
        &chart_event("ev-before", POD_A, "BackOff", "2025-10-28T08:31:00Z"),
    )
    .await?;
    kg_tests::raw_kafka::produce_corrupt_batch(b, "events.normalized", event_partition, 2)?;
    send_to(
        &producer,
        "events.normalized",
        Some(event_partition),
        "ev-after",
        &chart_event("ev-after", POD_A, "OOMKilled", "2025-10-28T08:32:00Z"),
    )
    .await?;
    // Both copies normalized by the client's own normalizer (its counter: kcat itself
    // stops at the corrupt batch of events.normalized, so the topic is not read here).
    let normalizer = plane.worker_addr("kg-event-normalizer-af-9");
    poll(
        "the events on both sides of the batch attributed and normalized",
        Duration::from_secs(60),
        || {
            let (_, body) =
                http::blocking_get(&format!("http://{}/metrics", normalizer.as_ref()?)).ok()?;
            let out: f64 = body
                .lines()
                .find(|line| line.starts_with("worker_records_out_total"))?
                .rsplit(' ')
                .next()?
                .parse()
                .ok()?;
            (out >= 2.0 && attributor_metric(&plane, "worker_records_out_total")? >= 2.0)
                .then_some(())
        },
    )
    .with_context(|| plane.worker_log(ATTRIBUTOR))?;
    let letters: Vec<Value> = poll("both dead letters", Duration::from_secs(30), || {
        let letters: Vec<Value> = kcat_consume(b, "dlq.normalized")
            .ok()?
            .into_iter()
            .filter_map(|(_, v)| serde_json::from_str::<Value>(&v).ok())
            .filter(|v| v["reason_code"] == "unreadable")
            .collect();
        (letters.len() >= 2).then_some(letters)
    })?;
    for topic in ["state.k8s.resource", "events.normalized"] {
        ensure!(
            letters.iter().any(|l| l["source_topic"] == topic),
            "no dead letter for {topic}: {letters:?}"
        );
    }
    Ok(())
}
