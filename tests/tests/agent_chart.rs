//! From the rendered Helm chart to a root-cause answer: `helm template` renders
//! charts/kg-rca-agent with its e2e values; the agent runs with exactly the arguments and
//! environment the rendered Deployment gives its container (Secret references resolved
//! from the rendered Secret), plus the two things a pod has and this host lacks: a
//! Kubernetes API (the fake API server, through `KUBECONFIG` instead of the in-cluster
//! service account) and a port of its own (`LISTEN_ADDR`). The control plane starts the
//! client's workers on its registration, they consume what the agent produced, and the
//! graph answers the root-cause query; the pipeline the values ask for (`client.pipelines`)
//! runs too. Then the pre-delete hook Job's command, run the same way, deregisters the
//! client and the control plane reaps its workers.

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use base64::Engine;
use kg_tests::fake_kube::FakeKube;
use kg_tests::*;
use serde_json::{json, Value};

const CLIENT: &str = "e2e-chart-001";
const CHART: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../charts/kg-rca-agent");

/// The chart rendered as `helm install kg …` would, as JSON documents.
fn render(helm: &std::path::Path, bootstrap: &str) -> Result<Vec<Value>> {
    let output = Command::new(helm)
        .args([
            "template",
            "kg",
            CHART,
            "--namespace",
            "observability",
            "-f",
        ])
        .arg(format!("{CHART}/ci/e2e-values.yaml"))
        .args(["--set", &format!("client.kafka.brokers={bootstrap}")])
        // The client asks for a pipeline the operator made requestable (below).
        .args(["--set", "client.pipelines={traffic-flatten}"])
        .output()
        .context("run helm template")?;
    ensure!(
        output.status.success(),
        "helm template failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = String::from_utf8(output.stdout)?;
    let mut documents = Vec::new();
    for document in serde_yaml::Deserializer::from_str(&text) {
        let value: Value = serde::Deserialize::deserialize(document)?;
        if !value.is_null() {
            documents.push(value);
        }
    }
    Ok(documents)
}

/// A container's environment as the kubelet would give it: literal values, Secret and
/// ConfigMap keys from the rendered objects, the downward API's fields faked.
fn container_env(container: &Value, documents: &[Value]) -> Result<Vec<(String, String)>> {
    let find = |kind: &str, name: &str| {
        documents
            .iter()
            .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
    };
    let mut env = Vec::new();
    for entry in container["env"].as_array().into_iter().flatten() {
        let name = entry["name"].as_str().context("env name")?.to_string();
        let value = if let Some(value) = entry.get("value") {
            value.as_str().unwrap_or_default().to_string()
        } else if let Some(secret) = entry.pointer("/valueFrom/secretKeyRef") {
            let object = find("Secret", secret["name"].as_str().unwrap_or_default())
                .with_context(|| format!("{name}: Secret {} not rendered", secret["name"]))?;
            let key = secret["key"].as_str().unwrap_or_default();
            if let Some(text) = object["stringData"][key].as_str() {
                text.to_string()
            } else {
                let encoded = object["data"][key].as_str().context("secret key")?;
                String::from_utf8(base64::engine::general_purpose::STANDARD.decode(encoded)?)?
            }
        } else if let Some(map) = entry.pointer("/valueFrom/configMapKeyRef") {
            let object = find("ConfigMap", map["name"].as_str().unwrap_or_default())
                .context("ConfigMap not rendered")?;
            object["data"][map["key"].as_str().unwrap_or_default()]
                .as_str()
                .unwrap_or_default()
                .to_string()
        } else if entry.pointer("/valueFrom/fieldRef").is_some() {
            "fake-field".to_string()
        } else {
            bail!("{name}: an env source this test does not know: {entry}");
        };
        env.push((name, value));
    }
    Ok(env)
}

fn args(container: &Value) -> Vec<String> {
    container["args"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|a| a.as_str().map(str::to_string))
        .collect()
}

/// An OOM-killed pod that then crash-loops, as Kubernetes reports it.
fn seed(kube: &FakeKube) -> String {
    kube.apply(json!({"kind": "Node", "metadata": {"name": "node-1"},
        "status": {"conditions": [{"type": "Ready", "status": "True"}]}}));
    let pod = kube.apply(json!({"kind": "Pod", "metadata": {"name": "checkout-5c4d-x", "namespace": "shop"},
        "spec": {"nodeName": "node-1", "containers": [{"name": "checkout", "image": "shop/checkout:3"}]},
        "status": {"phase": "Running", "containerStatuses": [{"name": "checkout", "image": "shop/checkout:3", "imageID": "",
            "ready": false, "restartCount": 3, "state": {"waiting": {"reason": "CrashLoopBackOff"}}}]}}));
    let pod_uid = pod["metadata"]["uid"].as_str().unwrap().to_string();
    let now = chrono::Utc::now();
    let at = |seconds_ago: i64| {
        (now - chrono::Duration::seconds(seconds_ago))
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    };
    let event = |name: &str, reason: &str, message: &str, seconds_ago: i64| {
        kube.apply(json!({"kind": "Event", "metadata": {"name": name, "namespace": "shop"},
            "involvedObject": {"kind": "Pod", "name": "checkout-5c4d-x", "namespace": "shop", "uid": pod_uid},
            "reason": reason, "message": message, "type": "Warning", "source": {"host": "node-1"},
            "count": 1, "firstTimestamp": at(seconds_ago), "lastTimestamp": at(seconds_ago)}))
    };
    event(
        "checkout-5c4d-x.oom",
        "OOMKilled",
        "Container checkout was OOM-killed",
        90,
    );
    let backoff = event(
        "checkout-5c4d-x.backoff",
        "BackOff",
        "Back-off restarting failed container",
        30,
    );
    backoff["metadata"]["uid"].as_str().unwrap().to_string()
}

#[test]
#[allow(clippy::too_many_lines)] // a scenario reads best top to bottom
fn the_rendered_chart_runs_the_agent_into_a_root_cause_answer_and_its_hook_deregisters(
) -> Result<()> {
    let Some(helm) = require_tool("helm", helm_binary(), "run scripts/install-test-tools.sh")?
    else {
        return Ok(());
    };
    let broker = Broker::start()?;
    // The operator's templates: seed 004's example, which clients may ask for.
    let templates = tempfile::NamedTempFile::new()?;
    std::fs::write(
        templates.path(),
        std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../examples/pipelines/traffic-flatten.toml"
        ))?
        .replace(
            "output = \"traffic-events\"\n",
            "output = \"traffic-events\"\nrequestable = true\n",
        ),
    )?;
    kcat_produce(
        &broker.bootstrap,
        "traffic-raw",
        "setup::0",
        Some("{}"),
        None,
    )?;
    let plane = ControlPlane::start(
        &broker,
        ControlPlaneOptions {
            heartbeat_timeout_secs: 20,
            extra_env: vec![(
                "CP_PIPELINES_FILE".into(),
                templates.path().display().to_string(),
            )],
            ..ControlPlaneOptions::default()
        },
    )?;
    let kube = FakeKube::start_new()?;
    let backoff_uid = seed(&kube);
    let documents = render(&helm, &broker.bootstrap)?;

    // The agent, as the Deployment runs it.
    let deployment = documents
        .iter()
        .find(|d| {
            d["kind"] == "Deployment"
                && d["spec"]["template"]["metadata"]["labels"]["component"] == "agent"
        })
        .context("no agent Deployment rendered")?;
    let container = &deployment["spec"]["template"]["spec"]["containers"][0];
    let env = container_env(container, &documents)?;
    let env_map: BTreeMap<_, _> = env.iter().cloned().collect();
    ensure!(
        env_map.get("CLIENT_ID").map(String::as_str) == Some(CLIENT),
        "{env_map:?}"
    );
    ensure!(
        env_map.get("KAFKA_BOOTSTRAP_SERVERS") == Some(&broker.bootstrap),
        "{env_map:?}"
    );
    ensure!(
        env_map.get("PIPELINES").map(String::as_str) == Some("traffic-flatten"),
        "{env_map:?}"
    );
    let mut pod_env = env.clone();
    pod_env.push(("KUBECONFIG".into(), kube.kubeconfig().display().to_string()));
    pod_env.push(("LISTEN_ADDR".into(), format!("127.0.0.1:{}", free_port()?)));
    let agent = Agent::start(&pod_env, &args(container))?;
    let agent_log = || agent.log();
    let result = (|| -> Result<()> {
        // Registered by the agent alone: the control plane starts the client's workers,
        // and the pipeline the chart's values asked for.
        poll("the client's workers", Duration::from_secs(90), || {
            let running = plane.running_workers(CLIENT);
            (running.len() == 4
                && running
                    .iter()
                    .any(|(name, _)| name == &format!("kg-pipeline-traffic-flatten.{CLIENT}")))
            .then_some(())
        })
        .with_context(|| format!("{}\n{}", agent_log(), plane.log_tail()))?;
        let client = plane.client(CLIENT).context("client")?;
        ensure!(client["state"] == "active", "{client}");
        // The workers normalize the agent's Events; the graph ranks the OOM kill first.
        let backoff_id = poll(
            "the BackOff event normalized",
            Duration::from_secs(90),
            || {
                kcat_consume(&broker.bootstrap, "events.normalized")
                    .ok()?
                    .into_iter()
                    .filter(|(key, _)| key.starts_with(&format!("{CLIENT}::")))
                    .filter_map(|(_, value)| serde_json::from_str::<Value>(&value).ok())
                    .find(|v| v["raw_event_id"] == backoff_uid.as_str())
                    .and_then(|v| v["event_id"].as_str().map(str::to_string))
            },
        )
        .with_context(|| format!("{}\n{}", agent_log(), plane.log_tail()))?;
        let candidates = poll("the root-cause answer", Duration::from_secs(90), || {
            plane.rca(CLIENT, &backoff_id)
        })
        .with_context(|| plane.log_tail())?;
        ensure!(
            candidates[0]["reason"] == "OOMKilled",
            "candidates: {candidates:#?}"
        );
        Ok(())
    })();
    drop(agent);
    result?;

    // `helm uninstall`: the pre-delete hook Job's container, run the same way.
    let job = documents
        .iter()
        .find(|d| {
            d["kind"] == "Job"
                && d["metadata"]["annotations"]["helm.sh/hook"]
                    .as_str()
                    .is_some_and(|hooks| hooks.contains("pre-delete"))
        })
        .context("no pre-delete hook Job rendered")?;
    let container = &job["spec"]["template"]["spec"]["containers"][0];
    let mut hook = Agent::start(&container_env(container, &documents)?, &args(container))?;
    ensure!(hook.wait()?.success(), "the hook failed: {}", hook.log());
    poll(
        "the client deregistered and its workers reaped",
        Duration::from_secs(60),
        || {
            (plane.client(CLIENT).is_none() && plane.running_workers(CLIENT).is_empty())
                .then_some(())
        },
    )
    .with_context(|| plane.log_tail())?;
    Ok(())
}
