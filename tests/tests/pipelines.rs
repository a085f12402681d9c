//! Pipelines run by the control plane (issue 14): every registered client gets a worker of
//! each default pipeline of `CP_PIPELINES_FILE`, `kg-pipeline-<name>.<client>`, supervised
//! like every worker, which carries its own template and processes the client's records;
//! a tombstone removes it with the client's other workers.

use std::time::Duration;

use anyhow::{Context, Result};
use kg_tests::*;
use serde_json::Value;

/// Seed 004's example templates file, as shipped.
fn example() -> Result<String> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples/pipelines/traffic-flatten.toml");
    Ok(std::fs::read_to_string(path)?)
}

/// A control plane with the templates file `text` (kept as long as the returned file),
/// once the example's input topic exists.
fn plane_with_templates(
    broker: &Broker,
    text: &str,
) -> Result<(ControlPlane, tempfile::NamedTempFile)> {
    let templates = tempfile::NamedTempFile::new()?;
    std::fs::write(templates.path(), text)?;
    // Not catalog topics: created (by a record of nobody's) before any pipeline starts.
    kcat_produce(
        &broker.bootstrap,
        "traffic-raw",
        "setup::0",
        Some("{}"),
        None,
    )?;
    let plane = ControlPlane::start(
        broker,
        ControlPlaneOptions {
            extra_env: vec![(
                "CP_PIPELINES_FILE".into(),
                templates.path().display().to_string(),
            )],
            ..Default::default()
        },
    )?;
    Ok((plane, templates))
}

on_both_brokers!(a_registered_client_gets_its_default_pipelines_which_process_its_records);

async fn a_registered_client_gets_its_default_pipelines_which_process_its_records(
    kind: BrokerKind,
) -> Result<()> {
    let broker = broker_or_skip!(kind);
    let b = &broker.bootstrap;
    let text = example()?.replace(
        "output = \"traffic-events\"\n",
        "output = \"traffic-events\"\ndefault = true\n",
    );
    let (plane, _templates) = plane_with_templates(&broker, &text)?;
    let client = "metro-la";
    let pipeline = "kg-pipeline-traffic-flatten.metro-la";
    register_with_chart(b, client)?;
    poll("the client's four workers", Duration::from_secs(60), || {
        let running = plane.running_workers(client);
        (running.len() == 4 && running.iter().any(|(name, _)| name == pipeline)).then_some(())
    })
    .with_context(|| plane.log_tail())?;

    let reading = serde_json::json!({
        "traffic_data": {"speed_mph": 55.5, "volume_vehicles_per_hour": 900},
        "location": {"highway": "I-405", "direction": "N", "lanes": 6},
        "weather": {"condition": "clear"},
        "timestamp": chrono::Utc::now().timestamp_millis(),
    });
    kcat_produce(
        b,
        "traffic-raw",
        "metro-la::s1",
        Some(&reading.to_string()),
        None,
    )?;
    let record = poll("the pipeline's output", Duration::from_secs(60), || {
        kcat_consume(b, "traffic-events")
            .ok()?
            .into_iter()
            .find(|(key, _)| key == "metro-la::s1")
            .and_then(|(_, value)| serde_json::from_str::<Value>(&value).ok())
    })
    .with_context(|| plane.worker_log(pipeline))?;
    assert_eq!(record["speed"], 55.5);
    assert_eq!(record["highway"], "I-405");
    assert_eq!(record["processor_id"], "stream-processor-metro-la");

    // The chart's pre-delete tombstone removes the pipeline with the other workers.
    kcat_produce(b, "cluster.registry", client, None, None)?;
    poll("the client deregistered", Duration::from_secs(30), || {
        plane.client(client).is_none().then_some(())
    })
    .with_context(|| plane.log_tail())?;
    poll("every worker removed", Duration::from_secs(60), || {
        plane.worker_dirs().is_empty().then_some(())
    })
    .with_context(|| plane.log_tail())?;
    Ok(())
}

on_both_brokers!(
    a_registration_gets_the_requestable_pipelines_it_asks_for_and_a_reason_for_the_rest
);

/// A pipeline marked `requestable` runs for a client whose registration asks for it; a
/// name the operator did not allow, or does not define, is refused with a lifecycle event
/// saying why and never runs; registering again without asking removes it.
#[allow(clippy::too_many_lines)] // a scenario reads best top to bottom
async fn a_registration_gets_the_requestable_pipelines_it_asks_for_and_a_reason_for_the_rest(
    kind: BrokerKind,
) -> Result<()> {
    let broker = broker_or_skip!(kind);
    let b = &broker.bootstrap;
    let text = example()?;
    let (plane, _templates) = plane_with_templates(
        &broker,
        &(text.replace(
            "output = \"traffic-events\"\n",
            "output = \"traffic-events\"\nrequestable = true\n",
        ) + &text
            .replace("name = \"traffic-flatten\"", "name = \"traffic-internal\"")
            .replace(
                "output = \"traffic-events\"",
                "output = \"traffic-internal\"",
            )),
    )?;
    let client = "metro-sf";
    let register = |pipelines: Option<&str>| {
        let mut registration: Value = serde_json::from_str(&chart_registration(client))?;
        if let Some(pipelines) = pipelines {
            registration["pipelines"] = serde_json::from_str(pipelines)?;
        }
        kcat_produce(
            b,
            "cluster.registry",
            client,
            Some(&registration.to_string()),
            None,
        )
    };
    register(Some(
        r#"["traffic-flatten", "traffic-internal", "no-such"]"#,
    ))?;
    let pipeline = "kg-pipeline-traffic-flatten.metro-sf";
    poll(
        "the roles and the requested pipeline",
        Duration::from_secs(60),
        || {
            let running = plane.running_workers(client);
            (running.len() == 4 && running.iter().any(|(name, _)| name == pipeline)).then_some(())
        },
    )
    .with_context(|| plane.log_tail())?;
    let (_, body) = plane.get(&format!("/clients/{client}/events"))?;
    let events: Value = serde_json::from_str(&body)?;
    let refused: Vec<&str> = events
        .as_array()
        .or_else(|| events["events"].as_array())
        .context("events")?
        .iter()
        .filter(|e| e["event"] == "pipeline_refused")
        .filter_map(|e| e["detail"].as_str())
        .collect();
    assert_eq!(
        refused,
        [
            r#""traffic-internal": the templates file does not let clients ask for it (requestable = false)"#,
            r#""no-such": no pipeline of that name in the templates file"#
        ],
        "{body}"
    );
    assert_eq!(
        plane.metric(r#"cp_pipeline_requests_refused_total{reason="not_requestable"}"#),
        1.0
    );
    assert!(!plane
        .worker_dirs()
        .iter()
        .any(|name| name.contains("traffic-internal")));

    register(None)?;
    poll(
        "the requested pipeline removed",
        Duration::from_secs(60),
        || {
            let dirs = plane.worker_dirs();
            (dirs.len() == 3 && !dirs.iter().any(|name| name == pipeline)).then_some(())
        },
    )
    .with_context(|| plane.log_tail())?;
    Ok(())
}

/// One alert of an Alertmanager webhook payload, as Alertmanager writes it.
fn alert(
    fingerprint: &str,
    labels: Value,
    status: &str,
    starts_at: chrono::DateTime<chrono::Utc>,
) -> Value {
    let ends_at = if status == "resolved" {
        chrono::Utc::now().to_rfc3339()
    } else {
        "0001-01-01T00:00:00Z".to_string()
    };
    serde_json::json!({
        "status": status, "labels": labels,
        "annotations": {"summary": format!("{} fired", labels["alertname"])},
        "startsAt": starts_at.to_rfc3339(), "endsAt": ends_at,
        "generatorURL": "http://prometheus:9090/graph", "fingerprint": fingerprint,
    })
}

/// A webhook payload of `alerts`.
fn alertmanager_payload(alerts: &[Value]) -> String {
    serde_json::json!({
        "receiver": "kg-rca", "status": "firing", "alerts": alerts,
        "groupLabels": {}, "commonLabels": {}, "commonAnnotations": {},
        "externalURL": "http://alertmanager:9093", "version": "4",
        "groupKey": "{}:{}", "truncatedAlerts": 0,
    })
    .to_string()
}

/// `client`'s enriched alerts so far, as (fingerprint, status, record).
fn enriched(bootstrap: &str, client: &str) -> Vec<(String, String, Value)> {
    kcat_consume(bootstrap, "alerts.enriched")
        .unwrap_or_default()
        .into_iter()
        .filter(|(key, _)| key.starts_with(&format!("{client}::")))
        .filter_map(|(_, value)| {
            let record: Value = serde_json::from_str(&value).ok()?;
            Some((
                record["fingerprint"].as_str()?.to_string(),
                record["status"].as_str()?.to_string(),
                record,
            ))
        })
        .collect()
}

/// A worker's metric `name` with the label `label` (`outcome="ended"`; empty: any), from
/// its own `/metrics`.
fn worker_metric(plane: &ControlPlane, worker: &str, name: &str, label: &str) -> Option<f64> {
    let addr = plane.worker_addr(worker)?;
    let (_, body) = http::blocking_get(&format!("http://{addr}/metrics")).ok()?;
    body.lines()
        .find(|line| {
            line.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(['{', ' ']) && rest.contains(label))
        })
        .and_then(|line| line.rsplit(' ').next()?.parse().ok())
}

on_both_brokers!(
    alert_enrichment_emits_firing_alerts_enriched_from_the_graph_and_none_that_resolved_while_cooling
);

/// The shipped alert-enrichment template, its cooling shortened to 12 s, run by the control
/// plane beside the client's graph builder: the demo incident fills the graph; checkout's
/// pod and node-1 start firing (one snappy payload on the 2.1.x agents' `raw.prom.alerts`);
/// the pipeline worker is SIGKILLed while both cool, and node-1 resolves meanwhile; a later
/// alert on `alerts.raw` marks the time by which both would have been emitted. Checkout's
/// alert comes out once, after its cooling, with its own and its neighbours' events, its
/// error log and its blast radius; node-1's never does; Alertmanager's repeat of
/// checkout's alert is turned away; checkout's later resolution goes on at once.
#[allow(clippy::too_many_lines)] // a scenario reads best top to bottom
async fn alert_enrichment_emits_firing_alerts_enriched_from_the_graph_and_none_that_resolved_while_cooling(
    kind: BrokerKind,
) -> Result<()> {
    let broker = broker_or_skip!(kind);
    let b = &broker.bootstrap;
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples/pipelines/alert-enrichment.toml");
    let text = std::fs::read_to_string(path)?
        .replace("hold = \"5m\"", "hold = \"12s\"")
        .replace("check_every = \"5m\"", "check_every = \"12s\"");
    anyhow::ensure!(text.contains("hold = \"12s\"") && text.contains("check_every = \"12s\""));
    // Not a catalog topic: the 2.1.x agents' receiver makes it.
    kcat_produce(b, "raw.prom.alerts", "setup::0", Some("{}"), None)?;
    let (plane, _templates) = plane_with_templates(&broker, &text)?;
    let client = "shop-eu";
    let pipeline = "kg-pipeline-alert-enrichment.shop-eu";
    register_with_chart(b, client)?;
    poll("the client's four workers", Duration::from_secs(60), || {
        let running = plane.running_workers(client);
        (running.len() == 4 && running.iter().any(|(name, _)| name == pipeline)).then_some(())
    })
    .with_context(|| plane.log_tail())?;

    // The incident, ten minutes ago, into the graph (five events and one error log).
    let incident = chrono::Utc::now() - chrono::Duration::minutes(10);
    incident::replay_scenario_from(b, client, incident).await?;
    poll("the incident in the graph", Duration::from_secs(90), || {
        let (code, body) = plane.get(&format!("/clients/{client}/graph/stats")).ok()?;
        let stats: Value = serde_json::from_str(&body).ok()?;
        (code == 200 && stats["episodes"].as_u64()? >= 6).then_some(())
    })
    .with_context(|| plane.log_tail())?;

    // Alertmanager's times are to the nanosecond; the hold counts in milliseconds.
    let started = chrono::DateTime::from_timestamp_millis(chrono::Utc::now().timestamp_millis())
        .context("now")?;
    let checkout = serde_json::json!({"alertname": "KubePodCrashLooping", "namespace": "shop",
                                      "pod": "checkout-abc-1", "severity": "warning"});
    let node = serde_json::json!({"alertname": "KubeNodeNotReady", "node": "node-1", "severity": "critical"});
    let alerts_key = format!("{client}::alertmanager");
    kcat_produce(
        b,
        "raw.prom.alerts",
        &alerts_key,
        Some(&alertmanager_payload(&[
            alert("fp-checkout", checkout.clone(), "firing", started),
            alert("fp-node-1", node.clone(), "firing", started),
        ])),
        Some("snappy"),
    )?;
    poll("both alerts cooling", Duration::from_secs(30), || {
        (worker_metric(&plane, pipeline, "worker_delay_pending_sessions", "")? == 2.0).then_some(())
    })
    .with_context(|| plane.worker_log(pipeline))?;

    // SIGKILL while they cool; node-1 resolves before the next worker has started.
    let pid = plane.worker_pid(pipeline).context("the pipeline's pid")?;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )?;
    kcat_produce(
        b,
        "raw.prom.alerts",
        &alerts_key,
        Some(&alertmanager_payload(&[alert(
            "fp-node-1",
            node,
            "resolved",
            started,
        )])),
        Some("snappy"),
    )?;
    poll("the pipeline restarted", Duration::from_secs(60), || {
        let again = plane.worker_pid(pipeline)?;
        (again != pid
            && plane
                .running_workers(client)
                .iter()
                .any(|(n, _)| n == pipeline))
        .then_some(())
    })
    .with_context(|| plane.log_tail())?;
    // Due after both: once it is out, both of theirs would be.
    let marker = serde_json::json!({"alertname": "KubeDeploymentReplicasMismatch", "namespace": "shop",
                                    "deployment": "checkout"});
    kcat_produce(
        b,
        "alerts.raw",
        &alerts_key,
        Some(&alertmanager_payload(&[alert(
            "fp-marker",
            marker,
            "firing",
            chrono::Utc::now(),
        )])),
        None,
    )?;
    let out = poll("the marker alert", Duration::from_secs(90), || {
        let out = enriched(b, client);
        out.iter()
            .any(|(fp, _, _)| fp == "fp-marker")
            .then_some(out)
    })
    .with_context(|| plane.worker_log(pipeline))?;
    let mut fingerprints: Vec<&str> = out.iter().map(|(fp, _, _)| fp.as_str()).collect();
    fingerprints.sort_unstable();
    assert_eq!(fingerprints, ["fp-checkout", "fp-marker"], "{out:#?}");

    let (_, status, record) = out.iter().find(|(fp, _, _)| fp == "fp-checkout").unwrap();
    assert_eq!(status, "firing");
    assert_eq!(record["alertname"], "KubePodCrashLooping");
    assert_eq!(record["receiver"], "kg-rca");
    assert_eq!(record["processor_id"], "alert-enricher-shop-eu");
    let emitted = chrono::DateTime::parse_from_rfc3339(
        record["processed_at"].as_str().context("processed_at")?,
    )?;
    anyhow::ensure!(
        emitted >= started + chrono::Duration::seconds(12),
        "emitted at {emitted}, within its 12 s cooling from {started}"
    );
    assert_eq!(record["graph_status"], "found", "{record:#}");
    assert_eq!(
        record["graph_resources"],
        serde_json::json!(["pod:shop:checkout-abc-1"])
    );
    let reasons: Vec<&str> = record["related_events"]
        .as_array()
        .context("related_events")?
        .iter()
        .filter_map(|e| e["reason"].as_str())
        .collect();
    for reason in ["OOMKilled", "CrashLoopBackOff", "Unhealthy"] {
        assert!(
            reasons.contains(&reason),
            "{reason} missing from {reasons:?}"
        );
    }
    assert!(
        !reasons.contains(&"Evicted"),
        "web-1 is no neighbour: {reasons:?}"
    );
    assert_eq!(
        record["error_logs"].as_array().map(Vec::len),
        Some(1),
        "{record:#}"
    );
    let radius: Vec<&str> = record["blast_radius"]
        .as_array()
        .context("blast_radius")?
        .iter()
        .filter_map(|r| r["resource"].as_str())
        .collect();
    for dependent in [
        "replicaset:shop:checkout-abc",
        "service:shop:checkout",
        "deployment:shop:checkout",
    ] {
        assert!(
            radius.contains(&dependent),
            "{dependent} missing from {radius:?}"
        );
    }
    assert_eq!(
        worker_metric(
            &plane,
            pipeline,
            "worker_delay_released_total",
            "outcome=\"ended\""
        ),
        Some(1.0),
        "node-1's hold ended by its resolution"
    );

    // Alertmanager re-sends checkout's firing alert (its group changed): not news, dropped.
    kcat_produce(
        b,
        "raw.prom.alerts",
        &alerts_key,
        Some(&alertmanager_payload(&[alert(
            "fp-checkout",
            checkout.clone(),
            "firing",
            started,
        )])),
        Some("snappy"),
    )?;
    poll("the repeat turned away", Duration::from_secs(30), || {
        (worker_metric(
            &plane,
            pipeline,
            "worker_delay_released_total",
            "outcome=\"repeat\"",
        )? == 1.0)
            .then_some(())
    })
    .with_context(|| plane.worker_log(pipeline))?;
    // Checkout recovers: an alert already emitted, so its resolution goes on at once.
    kcat_produce(
        b,
        "raw.prom.alerts",
        &alerts_key,
        Some(&alertmanager_payload(&[alert(
            "fp-checkout",
            checkout,
            "resolved",
            started,
        )])),
        Some("snappy"),
    )?;
    let out = poll("checkout's resolution", Duration::from_secs(30), || {
        let out = enriched(b, client);
        out.iter()
            .any(|(fp, status, _)| fp == "fp-checkout" && status == "resolved")
            .then_some(out)
    })
    .with_context(|| plane.worker_log(pipeline))?;
    let mut seen: Vec<(&str, &str)> = out
        .iter()
        .map(|(fp, s, _)| (fp.as_str(), s.as_str()))
        .collect();
    seen.sort_unstable();
    assert_eq!(
        seen,
        [
            ("fp-checkout", "firing"),
            ("fp-checkout", "resolved"),
            ("fp-marker", "firing")
        ],
        "each once, and nothing of node-1"
    );
    Ok(())
}

/// A control plane given no templates file runs the built-in alert enrichment for every
/// client, beside its three workers, even while the optional `raw.prom.alerts` (written only
/// by 2.1.x agents) does not exist; and an alert on `alerts.raw` comes out enriched (its
/// cooling is the shipped five minutes, so it is a resolution, which is not held).
async fn the_built_in_alert_enrichment_runs_for_every_client() -> Result<()> {
    let broker = Broker::start()?;
    let b = &broker.bootstrap;
    let plane = ControlPlane::start(
        &broker,
        ControlPlaneOptions {
            built_in_pipelines: true,
            ..Default::default()
        },
    )?;
    let client = "shop-ap";
    let pipeline = "kg-pipeline-alert-enrichment.shop-ap";
    register_with_chart(b, client)?;
    poll("the client's four workers", Duration::from_secs(60), || {
        let running = plane.running_workers(client);
        (running.len() == 4 && running.iter().any(|(name, _)| name == pipeline)).then_some(())
    })
    .with_context(|| plane.log_tail())?;
    let resolved = alert(
        "fp-1",
        serde_json::json!({"alertname": "KubeJobFailed", "namespace": "batch", "job_name": "nightly"}),
        "resolved",
        chrono::Utc::now() - chrono::Duration::minutes(30),
    );
    kcat_produce(
        b,
        "alerts.raw",
        &format!("{client}::alertmanager"),
        Some(&alertmanager_payload(&[resolved])),
        None,
    )?;
    let out = poll("the enriched resolution", Duration::from_secs(60), || {
        let out = enriched(b, client);
        (!out.is_empty()).then_some(out)
    })
    .with_context(|| plane.worker_log(pipeline))?;
    assert_eq!(out.len(), 1, "{out:#?}");
    assert_eq!((out[0].0.as_str(), out[0].1.as_str()), ("fp-1", "resolved"));
    // The graph (empty, no events were sent) does not know the job: said, not held back.
    assert_eq!(out[0].2["graph_status"], "not_in_graph", "{:#}", out[0].2);
    assert_eq!(out[0].2["job_name"], "nightly");
    assert!(
        plane
            .running_workers(client)
            .iter()
            .any(|(name, _)| name == pipeline),
        "the pipeline keeps running without raw.prom.alerts"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_built_in_alert_enrichment_runs_for_every_client_on_the_embedded_broker() -> Result<()>
{
    the_built_in_alert_enrichment_runs_for_every_client().await
}
