//! What operators' own tools read: `/metrics` bodies that `promtool check metrics` accepts
//! (the control plane's, every worker role's and the agent's), the exposition format negotiated by the
//! `Accept` header, and logs that are JSON on every line of every process when
//! `LOG_FORMAT=json` (process runtime here; the Docker runtime in `docker_runtime.rs`).

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use kg_tests::http::request_with_headers;
use kg_tests::*;

const ROLES: [&str; 3] = ["event-normalizer", "log-normalizer", "graph-builder"];

/// What Prometheus 2.x sends when it scrapes.
const PROMETHEUS_ACCEPT: &str = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";

fn promtool() -> Option<()> {
    Command::new("promtool")
        .arg("--version")
        .output()
        .ok()
        .filter(|output| output.status.success())
        .map(|_| ())
}

/// `promtool check metrics` on `body`: its exit status and everything it said.
fn promtool_check(body: &str) -> Result<(bool, String)> {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("run promtool")?;
    child
        .stdin
        .take()
        .context("promtool stdin")?
        .write_all(body.as_bytes())?;
    let output = child.wait_with_output()?;
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    Ok((output.status.success() && said.trim().is_empty(), said))
}

fn all_running(plane: &ControlPlane, client: &str) -> Option<()> {
    (plane.running_workers(client).len() == ROLES.len()).then_some(())
}

/// One `/metrics` endpoint checked both ways: the text format for `curl` and promtool,
/// OpenMetrics for a Prometheus scrape; `must_have` are series the body must carry.
fn check_endpoint(what: &str, base: &str, must_have: &[&str]) -> Result<()> {
    let url = format!("{base}/metrics");
    let text = request_with_headers("GET", &url, &[])?;
    ensure!(text.code == 200, "{what}: /metrics answered {}", text.code);
    ensure!(
        text.header("content-type") == Some("text/plain; version=0.0.4; charset=utf-8"),
        "{what}: content type {:?}",
        text.header("content-type")
    );
    let (clean, said) = promtool_check(&text.body)?;
    ensure!(
        clean,
        "{what}: promtool check metrics said:\n{said}\n--- body ---\n{}",
        text.body
    );
    for series in must_have {
        ensure!(
            text.body.lines().any(|line| line.starts_with(series)),
            "{what}: no {series} in\n{}",
            text.body
        );
    }

    let openmetrics = request_with_headers("GET", &url, &[("Accept", PROMETHEUS_ACCEPT)])?;
    ensure!(
        openmetrics.header("content-type")
            == Some("application/openmetrics-text; version=1.0.0; charset=utf-8"),
        "{what}: a Prometheus scrape got {:?}",
        openmetrics.header("content-type")
    );
    ensure!(
        openmetrics.body.ends_with("# EOF\n"),
        "{what}: the OpenMetrics body does not end with # EOF"
    );
    // The same series, in the other format: a counter's family is named without _total.
    ensure!(
        openmetrics
            .body
            .contains("# TYPE process_cpu_seconds counter\nprocess_cpu_seconds_total "),
        "{what}: OpenMetrics counters are not in OpenMetrics form"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[allow(clippy::too_many_lines)] // a scenario reads best top to bottom
async fn promtool_accepts_the_metrics_of_the_control_plane_and_of_every_worker_role() -> Result<()>
{
    if require_tool("promtool", promtool(), "run scripts/install-test-tools.sh")?.is_none() {
        return Ok(());
    }
    let broker = Broker::start()?;
    let plane = ControlPlane::start(&broker, ControlPlaneOptions::default())?;
    let client = "metrics-1";
    register_with_chart(&broker.bootstrap, client)?;
    let heartbeats = Heartbeater::start(&broker.bootstrap, client, Duration::from_millis(500))?;
    poll("all three workers running", Duration::from_secs(30), || {
        all_running(&plane, client)
    })
    .with_context(|| plane.log_tail())?;
    // Every family a scrape must show has had something to count: a record through the
    // event normalizer (batch latency, partition lag), reconcile passes and runtime calls.
    kcat_produce(
        &broker.bootstrap,
        "raw.k8s.events",
        &format!("{client}::event::m-1"),
        Some(&raw_event("m-1", "OOMKilled")),
        None,
    )?;
    poll(
        "a batch through the event normalizer",
        Duration::from_secs(30),
        || {
            let addr = plane.worker_addr(&format!("kg-event-normalizer-{client}"))?;
            let (_, body) = http::blocking_get(&format!("http://{addr}/metrics")).ok()?;
            body.lines()
                .any(|line| {
                    line.starts_with("worker_batch_duration_seconds_count") && !line.ends_with(" 0")
                })
                .then_some(())
        },
    )?;
    plane.wait_reconcile_passes(2)?;

    check_endpoint(
        "control plane",
        &plane.api,
        &[
            "cp_reconcile_duration_seconds_bucket",
            "cp_runtime_call_duration_seconds_bucket{",
            "process_resident_memory_bytes ",
            "process_open_fds ",
            "process_cpu_seconds_total ",
            "kg_build_info{binary=\"control-plane\"",
        ],
    )?;
    // The ingest consumer's lag per partition arrives with librdkafka's statistics (every 5 s).
    poll(
        "the ingest consumer's lag per partition",
        Duration::from_secs(20),
        || {
            let (_, body) = plane.get("/metrics").ok()?;
            body.contains("cp_ingest_consumer_lag{topic=\"cluster.heartbeat\",partition=\"0\"}")
                .then_some(())
        },
    )?;
    for role in ROLES {
        let name = format!("kg-{role}-{client}");
        let addr = plane.worker_addr(&name).context("worker address")?;
        check_endpoint(
            &name,
            &format!("http://{addr}"),
            &[
                "worker_batch_duration_seconds_bucket",
                "worker_records_in_total",
                "process_resident_memory_bytes",
                "kg_build_info{",
            ],
        )?;
    }
    let addr = plane
        .worker_addr(&format!("kg-event-normalizer-{client}"))
        .context("address")?;
    poll(
        "the event normalizer's lag per partition",
        Duration::from_secs(20),
        || {
            let (_, body) = http::blocking_get(&format!("http://{addr}/metrics")).ok()?;
            body.contains("worker_partition_lag{").then_some(())
        },
    )?;
    heartbeats.stop().await;
    Ok(())
}

/// Every line of `text` that is not valid JSON, with its number.
fn non_json_lines(text: &str) -> Vec<(usize, String)> {
    text.lines()
        .enumerate()
        .filter(|(_, line)| serde_json::from_str::<serde_json::Value>(line).is_err())
        .map(|(n, line)| (n + 1, line.to_string()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[allow(clippy::too_many_lines)] // a scenario reads best top to bottom
async fn with_log_format_json_every_line_of_every_process_is_json() -> Result<()> {
    let broker = Broker::start()?;
    let mut plane = ControlPlane::start(
        &broker,
        ControlPlaneOptions {
            extra_env: vec![("LOG_FORMAT".into(), "json".into())],
            ..ControlPlaneOptions::default()
        },
    )?;
    let client = "json-logs-1";
    register_with_chart(&broker.bootstrap, client)?;
    let heartbeats = Heartbeater::start(&broker.bootstrap, client, Duration::from_millis(500))?;
    poll("all three workers running", Duration::from_secs(30), || {
        all_running(&plane, client)
    })
    .with_context(|| plane.log_tail())?;
    // Records, a dead letter and a worker's restart make the workers say more than hello.
    kcat_produce(
        &broker.bootstrap,
        "raw.k8s.events",
        &format!("{client}::event::bad"),
        Some("{not json"),
        None,
    )?;
    poll("the dead letter", Duration::from_secs(30), || {
        kcat_consume(&broker.bootstrap, "dlq.normalized")
            .ok()?
            .iter()
            .any(|(key, _)| key == &format!("{client}::event::bad"))
            .then_some(())
    })?;
    let names: Vec<String> = ROLES
        .iter()
        .map(|role| format!("kg-{role}-{client}"))
        .collect();
    for name in &names {
        poll("the worker's first lines", Duration::from_secs(10), || {
            plane
                .worker_log(name)
                .contains("worker started")
                .then_some(())
        })?;
    }
    // Their shutdown lines too: SIGTERM each worker (the control plane starts it again,
    // appending to the same log) and wait for its last line.
    for name in &names {
        let pid = plane.worker_pid(name).context("worker pid")?;
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGTERM,
        )?;
        poll(
            "the worker's shutdown line",
            Duration::from_secs(30),
            || {
                plane
                    .worker_log(name)
                    .contains("worker stopped")
                    .then_some(())
            },
        )
        .with_context(|| plane.worker_log(name))?;
    }
    let logs: Vec<(String, String)> = names
        .iter()
        .map(|name| (name.clone(), plane.worker_log(name)))
        .collect();
    heartbeats.stop().await;
    plane.kill();
    let control_plane_log = plane.log();
    ensure!(
        control_plane_log.lines().count() > 5,
        "the control plane logged almost nothing"
    );
    let mut problems = Vec::new();
    for (name, text) in
        std::iter::once(("control-plane".to_string(), control_plane_log)).chain(logs)
    {
        for (line, content) in non_json_lines(&text) {
            problems.push(format!("{name}:{line}: {content}"));
        }
    }
    ensure!(
        problems.is_empty(),
        "lines that are not JSON:\n{}",
        problems.join("\n")
    );
    Ok(())
}

#[test]
fn promtool_accepts_the_agents_metrics() -> Result<()> {
    if require_tool("promtool", promtool(), "run scripts/install-test-tools.sh")?.is_none() {
        return Ok(());
    }
    let broker = Broker::start()?;
    let kube = kg_tests::fake_kube::FakeKube::start_new()?;
    kube.apply(serde_json::json!({"kind": "Node", "metadata": {"name": "node-1"}}));
    let listen = format!("127.0.0.1:{}", free_port()?);
    let env: Vec<(String, String)> = [
        ("CLIENT_ID", "metrics-001".to_string()),
        ("KAFKA_BOOTSTRAP_SERVERS", broker.bootstrap.clone()),
        ("KUBECONFIG", kube.kubeconfig().display().to_string()),
        ("LISTEN_ADDR", listen.clone()),
        ("HEARTBEAT_INTERVAL", "1s".to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let agent = Agent::start(&env, &["run"])?;
    // Once it has registered, heartbeated and sent the node, every family has samples.
    poll("the agent's first records", Duration::from_secs(30), || {
        (agent.metric("agent_heartbeats_total")? >= 1.0
            && agent.metric("agent_watch_synced{")? >= 1.0)
            .then_some(())
    })
    .with_context(|| agent.log())?;
    check_endpoint(
        "kg-rca-agent",
        &format!("http://{listen}"),
        &[
            "agent_records_sent_total{",
            "agent_registrations_total",
            "agent_watch_synced{",
            "kg_build_info{",
            "process_resident_memory_bytes",
        ],
    )
}
