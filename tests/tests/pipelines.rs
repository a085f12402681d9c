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
