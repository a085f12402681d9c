//! The worker binary on its own against the embedded broker: every codec the agents use,
//! both log shapes, its HTTP endpoints, and a SIGTERM drain that commits.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use kg_tests::*;
use rdkafka::producer::FutureRecord;
use serde_json::Value;

struct Worker {
    child: Child,
    addr_file: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl Worker {
    fn start(bootstrap: &str, role: &str, client: &str) -> Result<Self> {
        Self::start_with(bootstrap, role, client, &[])
    }

    /// A worker of `role` for `client`, with `env` added to its environment.
    fn start_with(bootstrap: &str, role: &str, client: &str, env: &[(&str, &str)]) -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let addr_file = dir.path().join("addr");
        let child = Command::new(&binaries().worker)
            .args(["--role", role])
            .envs(env.iter().copied())
            .env("CLIENT_ID", client)
            .env("KAFKA_BOOTSTRAP_SERVERS", bootstrap)
            .env("WORKER_LISTEN", "127.0.0.1:0")
            .env("WORKER_ADDR_FILE", &addr_file)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        Ok(Self {
            child,
            addr_file,
            _dir: dir,
        })
    }

    fn get(&self, path: &str) -> Option<String> {
        let addr = std::fs::read_to_string(&self.addr_file).ok()?;
        let (code, body) = http::blocking_get(&format!("http://{addr}{path}")).ok()?;
        (code == 200).then_some(body)
    }

    fn metric(&self, name: &str) -> Option<f64> {
        self.get("/metrics")?
            .lines()
            .find(|line| line.starts_with(name))
            .and_then(|line| line.rsplit(' ').next()?.parse().ok())
    }

    fn terminate(&mut self, within: Duration) -> Result<std::process::ExitStatus> {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )?;
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            ensure!(
                started.elapsed() < within,
                "the worker did not exit within {within:?} of SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn normalized_for(bootstrap: &str, topic: &str, client: &str) -> Vec<(String, Value)> {
    kcat_consume(bootstrap, topic)
        .unwrap_or_default()
        .into_iter()
        .filter(|(key, _)| key.starts_with(&format!("{client}::")))
        .filter_map(|(key, value)| Some((key, serde_json::from_str(&value).ok()?)))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_event_normalizer_reads_every_codec_and_drains_and_commits_on_sigterm() -> Result<()> {
    let broker = Broker::start()?;
    let b = &broker.bootstrap;
    let client = "codec-1";
    let mut worker = Worker::start(b, "event-normalizer", client)?;
    poll(
        "the worker's health endpoint",
        Duration::from_secs(20),
        || worker.get("/health"),
    )?;

    for (n, codec) in ["gzip", "snappy", "lz4", "zstd"].iter().enumerate() {
        let uid = format!("codec-{n}");
        kcat_produce(
            b,
            "raw.k8s.events",
            &format!("{client}::event::{uid}"),
            Some(&raw_event(&uid, "Killing")),
            Some(codec),
        )?;
    }
    // Another tenant's record and one with no tenant at all: neither is claimed.
    kcat_produce(
        b,
        "raw.k8s.events",
        "someone-else::event::x1",
        Some(&raw_event("x1", "Killing")),
        None,
    )?;
    kcat_produce(
        b,
        "raw.k8s.events",
        "4f1c-no-tenant",
        Some(&raw_event("x2", "Killing")),
        None,
    )?;
    let outputs = poll("four normalized events", Duration::from_secs(30), || {
        let found = normalized_for(b, "events.normalized", client);
        (found.len() >= 4).then_some(found)
    })?;
    assert_eq!(outputs.len(), 4);
    assert!(outputs
        .iter()
        .all(|(_, v)| v["event_type_abstract"] == "POD_KILLING"));
    poll("the skip counters", Duration::from_secs(10), || {
        (worker.metric("worker_records_skipped_foreign_total")? >= 1.0
            && worker.metric("worker_records_unattributed_total")? >= 1.0
            && worker.metric("worker_records_out_total")? >= 4.0)
            .then_some(())
    })?;
    let health: Value = serde_json::from_str(&worker.get("/health").context("health")?)?;
    assert_eq!(health["client_id"], client);
    assert_eq!(health["role"], "event-normalizer");

    // SIGTERM: exits 0 promptly, having committed what it produced.
    let status = worker.terminate(Duration::from_secs(8))?;
    assert!(status.success(), "exit status {status}");

    // A successor in the same group starts after the committed offsets: it produces the
    // one new record and nothing of what came before.
    let successor = Worker::start(b, "event-normalizer", client)?;
    kcat_produce(
        b,
        "raw.k8s.events",
        &format!("{client}::event::after"),
        Some(&raw_event("after", "Started")),
        None,
    )?;
    poll("the new record", Duration::from_secs(30), || {
        normalized_for(b, "events.normalized", client)
            .into_iter()
            .find(|(_, v)| v["event_type_abstract"] == "POD_STARTED")
    })?;
    poll("the successor's count", Duration::from_secs(10), || {
        successor
            .metric("worker_records_out_total")
            .filter(|n| *n >= 1.0)
    })?;
    assert_eq!(
        successor.metric("worker_records_out_total"),
        Some(1.0),
        "records were reprocessed after a clean shutdown"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_normalizer_takes_keyed_and_unkeyed_vector_records() -> Result<()> {
    let broker = Broker::start()?;
    let b = &broker.bootstrap;
    let client = "logs-1";
    let _worker = Worker::start(b, "log-normalizer", client)?;
    let vector = |message: &str, tenant: &str| {
        serde_json::json!({"message": message, "timestamp": "2025-10-28T08:31:00Z", "stream": "stderr", "client_id": tenant,
            "kubernetes": {"pod_name": "api-7d9f", "pod_namespace": "default", "pod_uid": "pod-uid-1",
                           "container_name": "api", "pod_node_name": "node-1"}})
        .to_string()
    };
    // Keyed, gzip like the log shipper.
    kcat_produce(
        b,
        "raw.k8s.logs",
        &format!("{client}::pod-uid-1"),
        Some(&vector("connection refused to db:5432", client)),
        Some("gzip"),
    )?;
    // Unkeyed Vector raw records: the tenant is in the body.
    let producer = producer(b, "lz4")?;
    for (message, tenant) in [
        (
            "Traceback (most recent call last):\n  File \"a.py\", line 1\nValueError: bad",
            client,
        ),
        ("not ours", "other-9"),
    ] {
        let payload = vector(message, tenant);
        producer
            .send(
                FutureRecord::<(), _>::to("raw.k8s.logs").payload(&payload),
                Duration::from_secs(10),
            )
            .await
            .map_err(|(error, _)| error)?;
    }
    let logs = poll("two normalized logs", Duration::from_secs(30), || {
        let found = normalized_for(b, "logs.normalized", client);
        (found.len() >= 2).then_some(found)
    })?;
    assert_eq!(logs.len(), 2);
    for (key, log) in &logs {
        assert_eq!(key, &format!("{client}::pod-uid-1"));
        assert_eq!(log["is_error"], true);
        assert_eq!(log["pod_name"], "api-7d9f");
        assert_eq!(log["etype"], "k8s.log");
        assert_eq!(log["subject"]["kind"], "Pod");
    }
    assert!(logs
        .iter()
        .any(|(_, l)| l["error_type"] == "CONNECTION_REFUSED"));
    assert!(logs.iter().any(|(_, l)| l["stack_trace"]
        .as_str()
        .is_some_and(|t| t.starts_with("Traceback"))));
    Ok(())
}

/// A file of the shipped example pipelines (`examples/pipelines/`).
fn example(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples/pipelines")
        .join(name)
}

on_both_brokers!(a_pipeline_worker_runs_the_example_template_end_to_end);

/// Seed 004's example pipeline, the shipped template file as written, run by the worker
/// binary: this client's readings come out flat and stamped, a reading that fails
/// validation is dead-lettered with every reason, another tenant's is skipped, and SIGTERM
/// drains and commits.
#[allow(clippy::too_many_lines)] // a scenario reads best top to bottom
async fn a_pipeline_worker_runs_the_example_template_end_to_end(kind: BrokerKind) -> Result<()> {
    let broker = broker_or_skip!(kind);
    let b = &broker.bootstrap;
    let client = "metro-la";
    let templates = example("traffic-flatten.toml");
    let sample: Value =
        serde_json::from_str(&std::fs::read_to_string(example("traffic-sample.json"))?)?;
    let reading = |speed: f64| {
        let mut reading = sample.clone();
        reading["traffic_data"]["speed_mph"] = speed.into();
        reading["timestamp"] = chrono::Utc::now().timestamp_millis().into();
        reading.to_string()
    };
    // A pipeline's topics are not in the catalog: the operator creates them (here, the
    // broker does on a first record) before the pipeline starts, or its consumer waits
    // for the next metadata refresh to see them.
    kcat_produce(
        b,
        "traffic-raw",
        "elsewhere::s0",
        Some(&reading(40.0)),
        None,
    )?;
    let mut worker = Worker::start_with(
        b,
        "pipeline",
        client,
        &[
            ("WORKER_PIPELINE", "traffic-flatten"),
            ("WORKER_PIPELINES_FILE", templates.to_str().context("path")?),
        ],
    )?;
    poll(
        "the pipeline worker's health endpoint",
        Duration::from_secs(20),
        || worker.get("/health"),
    )?;
    kcat_produce(
        b,
        "traffic-raw",
        "metro-la::s1",
        Some(&reading(31.6)),
        Some("zstd"),
    )?;
    kcat_produce(
        b,
        "traffic-raw",
        "metro-la::s2",
        Some(&reading(300.0)),
        None,
    )?;
    kcat_produce(
        b,
        "traffic-raw",
        "elsewhere::s1",
        Some(&reading(40.0)),
        None,
    )?;
    let outputs = poll("the flattened reading", Duration::from_secs(30), || {
        let found = normalized_for(b, "traffic-events", client);
        (!found.is_empty()).then_some(found)
    })?;
    assert_eq!(outputs.len(), 1, "{outputs:?}");
    let (key, record) = &outputs[0];
    assert_eq!(key, "metro-la::s1");
    assert_eq!(record["speed"], 31.6);
    assert_eq!(record["lane_count"], 5);
    assert_eq!(record["processor_id"], "stream-processor-metro-la");
    assert_eq!(record["validation_status"], "valid");
    let letter = poll("the dead letter", Duration::from_secs(30), || {
        kcat_consume(b, "dlq.normalized")
            .ok()?
            .into_iter()
            .filter_map(|(_, v)| serde_json::from_str::<Value>(&v).ok())
            .find(|letter| letter["source_topic"] == "traffic-raw")
    })?;
    assert_eq!(letter["reason_code"], "validation_failed");
    assert_eq!(
        letter["reason"],
        "failed validation: speed: 300 is outside 0 to 120"
    );
    poll("the skip counter", Duration::from_secs(10), || {
        (worker.metric("worker_records_skipped_foreign_total")? >= 1.0).then_some(())
    })?;
    let health: Value = serde_json::from_str(&worker.get("/health").context("health")?)?;
    assert_eq!(health["role"], "pipeline");
    let status = worker.terminate(Duration::from_secs(8))?;
    assert!(status.success(), "exit status {status}");
    Ok(())
}

on_both_brokers!(a_pipeline_worker_sigkilled_mid_stream_loses_no_record);

/// Seed 004's pipeline under a stream of 20,000 readings (1,000 every 100 ms), SIGKILLed
/// once it has taken in 3,000 of them while the rest still arrive, and started again:
/// every reading comes out, counted by key; what comes out twice (produced by the first
/// worker, its offset not yet committed) is counted and reported, never what is missing.
#[allow(clippy::too_many_lines)] // a scenario reads best top to bottom
async fn a_pipeline_worker_sigkilled_mid_stream_loses_no_record(kind: BrokerKind) -> Result<()> {
    const READINGS: usize = 20_000;
    let broker = broker_or_skip!(kind);
    let b = broker.bootstrap.clone();
    let client = "metro-sf";
    let templates = example("traffic-flatten.toml");
    let templates = templates.to_str().context("path")?;
    let sample: Value =
        serde_json::from_str(&std::fs::read_to_string(example("traffic-sample.json"))?)?;
    kcat_produce(&b, "traffic-raw", "elsewhere::s0", Some("{}"), None)?;
    kcat_produce(&b, "traffic-events", "elsewhere::s0", Some("{}"), None)?;
    let start = || {
        Worker::start_with(
            &b,
            "pipeline",
            client,
            &[
                ("WORKER_PIPELINE", "traffic-flatten"),
                ("WORKER_PIPELINES_FILE", templates),
            ],
        )
    };
    let mut first = start()?;
    poll(
        "the pipeline worker's health",
        Duration::from_secs(20),
        || first.get("/health"),
    )?;
    let stream = {
        let producer = producer(&b, "lz4")?;
        tokio::spawn(async move {
            for batch in 0..READINGS / 1_000 {
                let sends = (batch * 1_000..(batch + 1) * 1_000).map(|n| {
                    let mut reading = sample.clone();
                    reading["traffic_data"]["speed_mph"] = ((n % 100) as f64).into();
                    reading["timestamp"] = chrono::Utc::now().timestamp_millis().into();
                    let key = format!("metro-sf::s{n}");
                    let producer = &producer;
                    async move { send(producer, "traffic-raw", &key, &reading.to_string()).await }
                });
                for sent in futures::future::join_all(sends).await {
                    sent?;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            anyhow::Ok(())
        })
    };
    poll("3,000 readings taken in", Duration::from_secs(30), || {
        (first.metric("worker_records_in_total")? >= 3_000.0).then_some(())
    })?;
    first.child.kill()?;
    first.child.wait()?;
    ensure!(
        !stream.is_finished(),
        "the stream ended before the SIGKILL: the kill was not mid-stream"
    );
    stream.await??;
    let second = start()?;
    let outputs = poll("every reading out", Duration::from_secs(90), || {
        let found = normalized_for(&b, "traffic-events", client);
        let keys: std::collections::HashSet<&str> =
            found.iter().map(|(key, _)| key.as_str()).collect();
        (keys.len() >= READINGS).then_some(found)
    })?;
    let keys: std::collections::HashSet<&str> =
        outputs.iter().map(|(key, _)| key.as_str()).collect();
    let missing: Vec<String> = (0..READINGS)
        .map(|n| format!("metro-sf::s{n}"))
        .filter(|key| !keys.contains(key.as_str()))
        .collect();
    assert!(missing.is_empty(), "missing: {missing:?}");
    eprintln!(
        "{READINGS} readings, {} outputs: {} duplicates after the SIGKILL",
        outputs.len(),
        outputs.len() - keys.len()
    );
    ensure!(
        outputs
            .iter()
            .all(|(_, record)| record["processor_id"] == "stream-processor-metro-sf"),
        "an output that did not go through the stages"
    );
    drop(second);
    Ok(())
}

/// A templates file with an error stops the pipeline worker at start, saying where.
#[test]
fn a_pipeline_worker_refuses_a_broken_templates_file_naming_the_line_and_field() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("pipelines.toml");
    std::fs::write(
        &file,
        "[[pipeline]]\nname = \"p\"\ninput = [\"a\"]\noutput = \"b\"\n\n[[pipeline.stage]]\nkind = \"flatten\"\nfeilds = {}\n",
    )?;
    let output = Command::new(&binaries().worker)
        .args(["--role", "pipeline", "--pipeline", "p"])
        .env("CLIENT_ID", "metro-la")
        .env("WORKER_PIPELINES_FILE", &file)
        .env("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:1")
        .env("WORKER_LISTEN", "127.0.0.1:0")
        .output()?;
    ensure!(!output.status.success(), "the worker started");
    let stderr = String::from_utf8_lossy(&output.stderr);
    ensure!(
        stderr.contains("pipelines.toml:8:1: pipeline[0].stage[0].feilds: unknown field `feilds`"),
        "{stderr}"
    );
    Ok(())
}

on_both_brokers!(
    a_cooling_pipeline_holds_each_server_through_a_sigkill_and_emits_only_those_that_stayed_off
);

/// Seed 000's cooling flow, the shipped templates with the durations shortened (15 s hold,
/// 1 s checks): three servers power off and are held; the worker is SIGKILLed while they
/// cool and one server is powered on meanwhile; the next worker (same volume) starts only
/// once all three are overdue, so it would emit the one powered on if it checked before it
/// had read the state topic to its end. It resumes all three, emits the two that stayed
/// off, once each, diverts the one powered on, and the repurpose pipeline takes the
/// demises on.
#[allow(clippy::too_many_lines)] // a scenario reads best top to bottom
async fn a_cooling_pipeline_holds_each_server_through_a_sigkill_and_emits_only_those_that_stayed_off(
    kind: BrokerKind,
) -> Result<()> {
    let broker = broker_or_skip!(kind);
    let b = &broker.bootstrap;
    let client = "dc-east";
    let volume = tempfile::tempdir()?;
    let text = std::fs::read_to_string(example("server-cooling.toml"))?
        .replace("hold = \"48h\"", "hold = \"15s\"")
        .replace("check_every = \"2h\"", "check_every = \"1s\"");
    ensure!(text.contains("hold = \"15s\"") && text.contains("check_every = \"1s\""));
    let templates = volume.path().join("server-cooling.toml");
    std::fs::write(&templates, &text)?;
    let data = volume.path().join("data");
    let data = data.to_str().context("path")?;
    let templates = templates.to_str().context("path")?;
    let start = |pipeline: &str| {
        Worker::start_with(
            b,
            "pipeline",
            client,
            &[
                ("WORKER_PIPELINE", pipeline),
                ("WORKER_PIPELINES_FILE", templates),
                ("WORKER_DATA_DIR", data),
            ],
        )
    };
    let servers = ["srv-1", "srv-2", "srv-3"];
    let power = |server: &str, state: &str| {
        kcat_produce(
            b,
            "servers.power",
            &format!("{client}::{server}"),
            Some(&serde_json::json!({"server_id": server, "power": state}).to_string()),
            None,
        )
    };
    // The topics exist before the workers start (the operator's part; here the broker
    // makes them on a first record): another tenant's records.
    for topic in [
        "servers.poweroff",
        "servers.demise",
        "servers.cooling-violations",
    ] {
        kcat_produce(b, topic, "elsewhere::srv-0", Some("{}"), None)?;
    }
    for server in servers {
        power(server, "off")?;
    }
    let mut cooling = start("server-cooling")?;
    let _repurpose = start("server-repurpose")?;
    poll(
        "the cooling worker's health",
        Duration::from_secs(20),
        || cooling.get("/health"),
    )?;
    let powered_off = chrono::Utc::now();
    for server in servers {
        let poweroff = serde_json::json!({
            "server_id": server,
            "powered_off_at": powered_off.to_rfc3339(),
            "datacenter": "dc-east",
        });
        kcat_produce(
            b,
            "servers.poweroff",
            &format!("{client}::{server}"),
            Some(&poweroff.to_string()),
            None,
        )?;
    }
    poll("three servers cooling", Duration::from_secs(20), || {
        (cooling.metric("worker_delay_pending_sessions")? == 3.0).then_some(())
    })?;
    ensure!(
        normalized_for(b, "servers.demise", client).is_empty(),
        "emitted before the hold"
    );
    let health: Value = serde_json::from_str(&cooling.get("/health").context("health")?)?;
    assert_eq!(health["delay"]["pending_sessions"], 3, "{health}");
    assert_eq!(health["delay"]["state_caught_up"], true, "{health}");
    ensure!(health["delay"]["oldest_due"].is_string(), "{health}");
    let stages: Value = serde_json::from_str(&cooling.get("/health/stages").context("stages")?)?;
    assert_eq!(stages["pipeline"], "server-cooling");
    assert_eq!(stages["stages"][0]["kind"], "validate", "{stages}");
    assert_eq!(stages["stages"][0]["passed"], 3, "{stages}");
    ensure!(
        stages["stages"][0]["passed_per_second"].as_f64() > Some(0.0),
        "a stage that passed records has a throughput: {stages}"
    );
    assert_eq!(stages["stages"][1]["kind"], "delay", "{stages}");
    assert_eq!(stages["stages"][1]["pending_sessions"], 3, "{stages}");
    assert_eq!(stages["stages"][2]["passed"], 0, "{stages}");

    // SIGKILL while they cool; srv-2 is powered on before the next worker checks it.
    cooling.child.kill()?;
    cooling.child.wait()?;
    power("srv-2", "on")?;
    let due = powered_off + chrono::Duration::seconds(15);
    poll("every session overdue", Duration::from_secs(30), || {
        (chrono::Utc::now() > due + chrono::Duration::seconds(1)).then_some(())
    })?;
    let cooling = start("server-cooling")?;

    let demised = poll("the two demises", Duration::from_secs(40), || {
        let found = normalized_for(b, "servers.demise", client);
        (found.len() >= 2).then_some(found)
    })?;
    let diverted = poll("the violation", Duration::from_secs(20), || {
        let found = normalized_for(b, "servers.cooling-violations", client);
        (!found.is_empty()).then_some(found)
    })?;
    poll("nothing held", Duration::from_secs(20), || {
        (cooling.metric("worker_delay_pending_sessions")? == 0.0).then_some(())
    })?;
    let mut keys: Vec<&str> = demised.iter().map(|(key, _)| key.as_str()).collect();
    keys.sort_unstable();
    assert_eq!(keys, ["dc-east::srv-1", "dc-east::srv-3"], "{demised:?}");
    for (key, record) in &demised {
        assert_eq!(record["processor_id"], "demise-processor-dc-east", "{key}");
        let emitted = chrono::DateTime::parse_from_rfc3339(
            record["processed_at"].as_str().context("processed_at")?,
        )?;
        ensure!(
            emitted >= powered_off + chrono::Duration::seconds(15),
            "{key} emitted at {emitted}, before its 15 s hold from {powered_off}"
        );
    }
    assert_eq!(diverted.len(), 1, "{diverted:?}");
    assert_eq!(diverted[0].0, "dc-east::srv-2");
    assert_eq!(diverted[0].1["delay_violation"]["state"], "on");
    assert!(
        cooling
            .metric("worker_delay_violations_total")
            .unwrap_or(0.0)
            >= 1.0
    );
    let repurposed = poll("the two repurposes", Duration::from_secs(20), || {
        let found = normalized_for(b, "servers.repurpose", client);
        (found.len() >= 2).then_some(found)
    })?;
    assert!(repurposed
        .iter()
        .all(|(_, r)| r["processor_id"] == "repurpose-processor-dc-east"));
    let stages: Value = serde_json::from_str(&cooling.get("/health/stages").context("stages")?)?;
    let delay = &stages["stages"][1];
    assert_eq!(delay["released"]["emitted"], 2, "{stages}");
    assert_eq!(delay["released"]["diverted"], 1, "{stages}");
    assert_eq!(delay["violations"], 1, "{stages}");
    assert_eq!(stages["stages"][2]["passed"], 2, "{stages}");
    // Each server once: nothing is held any more, and a session is let go only after
    // what it became was acknowledged, so the topics are complete.
    assert_eq!(normalized_for(b, "servers.demise", client).len(), 2);
    assert_eq!(
        normalized_for(b, "servers.cooling-violations", client).len(),
        1
    );
    Ok(())
}

on_both_brokers!(an_alert_resolved_while_its_worker_was_down_is_not_emitted_when_it_comes_back);

/// The shipped alert-enrichment template with an 8 s cooling, its worker on its own: two
/// alerts fire and are held; the worker is SIGKILLed, one alert resolves, and the next
/// worker starts only once both are overdue. It must read the resolution waiting in its
/// input before it emits anything, so only the alert still firing comes out.
#[allow(clippy::too_many_lines)] // a scenario reads best top to bottom
async fn an_alert_resolved_while_its_worker_was_down_is_not_emitted_when_it_comes_back(
    kind: BrokerKind,
) -> Result<()> {
    let broker = broker_or_skip!(kind);
    let b = &broker.bootstrap;
    let client = "shop-us";
    let volume = tempfile::tempdir()?;
    let text = std::fs::read_to_string(example("alert-enrichment.toml"))?
        .replace("hold = \"5m\"", "hold = \"8s\"")
        .replace("check_every = \"5m\"", "check_every = \"8s\"");
    ensure!(text.contains("hold = \"8s\"") && text.contains("check_every = \"8s\""));
    let templates = volume.path().join("alert-enrichment.toml");
    std::fs::write(&templates, &text)?;
    let data = volume.path().join("data");
    let data = data.to_str().context("path")?;
    let templates = templates.to_str().context("path")?;
    let start = || {
        Worker::start_with(
            b,
            "pipeline",
            client,
            &[
                ("WORKER_PIPELINE", "alert-enrichment"),
                ("WORKER_PIPELINES_FILE", templates),
                ("WORKER_DATA_DIR", data),
            ],
        )
    };
    for topic in ["raw.prom.alerts", "alerts.raw", "alerts.enriched"] {
        kcat_produce(b, topic, "elsewhere::0", Some("{}"), None)?;
    }
    let started = chrono::DateTime::from_timestamp_millis(chrono::Utc::now().timestamp_millis())
        .context("now")?;
    let payload = |alerts: Vec<(&str, &str)>| {
        let alerts: Vec<Value> = alerts
            .into_iter()
            .map(|(fingerprint, status)| {
                serde_json::json!({
                    "status": status, "fingerprint": fingerprint, "startsAt": started.to_rfc3339(),
                    "labels": {"alertname": "KubePodNotReady", "namespace": "shop", "pod": fingerprint},
                })
            })
            .collect();
        serde_json::json!({"receiver": "kg-rca", "status": "firing", "alerts": alerts}).to_string()
    };
    let mut alerts = start()?;
    poll("the worker's health", Duration::from_secs(20), || {
        alerts.get("/health")
    })?;
    kcat_produce(
        b,
        "raw.prom.alerts",
        &format!("{client}::alertmanager"),
        Some(&payload(vec![
            ("fp-stays", "firing"),
            ("fp-resolves", "firing"),
        ])),
        Some("snappy"),
    )?;
    poll("two alerts cooling", Duration::from_secs(20), || {
        (alerts.metric("worker_delay_pending_sessions")? == 2.0).then_some(())
    })?;
    alerts.child.kill()?;
    alerts.child.wait()?;
    kcat_produce(
        b,
        "raw.prom.alerts",
        &format!("{client}::alertmanager"),
        Some(&payload(vec![("fp-resolves", "resolved")])),
        Some("snappy"),
    )?;
    let due = started + chrono::Duration::seconds(8);
    poll("both alerts overdue", Duration::from_secs(30), || {
        (chrono::Utc::now() > due + chrono::Duration::seconds(1)).then_some(())
    })?;
    let alerts = start()?;
    let emitted = poll("the alert still firing", Duration::from_secs(40), || {
        let found = normalized_for(b, "alerts.enriched", client);
        (!found.is_empty()).then_some(found)
    })?;
    poll("nothing held", Duration::from_secs(20), || {
        (alerts.metric("worker_delay_pending_sessions")? == 0.0).then_some(())
    })?;
    let fingerprints: Vec<&str> = emitted
        .iter()
        .filter_map(|(_, record)| record["fingerprint"].as_str())
        .collect();
    assert_eq!(fingerprints, ["fp-stays"], "{emitted:?}");
    let health: Value = serde_json::from_str(&alerts.get("/health").context("health")?)?;
    assert_eq!(health["delay"]["input_caught_up"], true, "{health}");
    let stages: Value = serde_json::from_str(&alerts.get("/health/stages").context("stages")?)?;
    let delay = &stages["stages"][3];
    assert_eq!(delay["kind"], "delay", "{stages}");
    assert_eq!(delay["released"]["ended"], 1, "{stages}");
    assert_eq!(delay["released"]["emitted"], 1, "{stages}");
    assert_eq!(normalized_for(b, "alerts.enriched", client).len(), 1);
    Ok(())
}

/// `control-plane dead-letters …` against broker `b`; its standard output.
fn dead_letters(b: &str, args: &[&str]) -> Result<String> {
    let output = Command::new(&binaries().control_plane)
        .arg("dead-letters")
        .args(args)
        .env("KAFKA_BOOTSTRAP_SERVERS", b)
        .output()?;
    ensure!(
        output.status.success(),
        "dead-letters {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(String::from_utf8(output.stdout)?)
}

on_both_brokers!(dead_letters_are_listed_and_replayed_once_after_the_fix);

/// Seed 004's pipeline refuses two readings over its 120 mph bound; the operator lists the
/// client's dead letters, raises the bound (the fix), and replays them: both come out
/// processed, once. A second replay sends nothing, and the list says both were replayed.
#[allow(clippy::too_many_lines)] // a scenario reads best top to bottom
async fn dead_letters_are_listed_and_replayed_once_after_the_fix(kind: BrokerKind) -> Result<()> {
    let broker = broker_or_skip!(kind);
    let b = &broker.bootstrap;
    let client = "metro-nyc";
    let volume = tempfile::tempdir()?;
    let shipped = std::fs::read_to_string(example("traffic-flatten.toml"))?;
    let templates = volume.path().join("pipelines.toml");
    std::fs::write(&templates, &shipped)?;
    let templates = templates.to_str().context("path")?.to_string();
    let start = || {
        Worker::start_with(
            b,
            "pipeline",
            client,
            &[
                ("WORKER_PIPELINE", "traffic-flatten"),
                ("WORKER_PIPELINES_FILE", templates.as_str()),
            ],
        )
    };
    for topic in ["traffic-raw", "traffic-events"] {
        kcat_produce(b, topic, "elsewhere::0", Some("{}"), None)?;
    }
    let reading = |sensor: &str, speed: f64| -> Result<()> {
        let value = serde_json::json!({
            "traffic_data": {"speed_mph": speed, "volume_vehicles_per_hour": 900},
            "location": {"highway": "I-95", "direction": "N", "lanes": 4},
            "timestamp": chrono::Utc::now().to_rfc3339(),
        });
        kcat_produce(
            b,
            "traffic-raw",
            &format!("{client}::{sensor}"),
            Some(&value.to_string()),
            None,
        )
    };
    let mut worker = start()?;
    poll("the worker's health", Duration::from_secs(20), || {
        worker.get("/health")
    })?;
    reading("s1", 300.0)?;
    reading("s2", 250.0)?;
    reading("s3", 55.0)?;
    let letters = poll("two dead letters", Duration::from_secs(30), || {
        let letters = normalized_for(b, "dlq.normalized", client);
        (letters.len() >= 2).then_some(letters)
    })?;
    assert_eq!(letters.len(), 2, "{letters:?}");
    let listed = dead_letters(b, &["list", "--client", client])?;
    let lines: Vec<&str> = listed.lines().collect();
    assert_eq!(lines.len(), 2, "{listed}");
    for line in &lines {
        let fields: Vec<&str> = line.split('\t').collect();
        assert_eq!(fields[2], client, "{line}");
        assert_eq!(fields[3], "validation_failed", "{line}");
        assert!(fields[4].starts_with("traffic-raw/"), "{line}");
        assert_eq!(fields[5], "-", "not replayed yet: {line}");
        assert!(fields[6].contains("outside 0 to 120"), "{line}");
    }
    assert!(dead_letters(b, &["list", "--client", "metro-sf"])?.is_empty());
    assert!(dead_letters(b, &["list", "--reason", "undecodable"])?.is_empty());

    // The fix: the bound raised, the worker restarted on it.
    worker.terminate(Duration::from_secs(20))?;
    std::fs::write(
        volume.path().join("pipelines.toml"),
        shipped.replace(
            "speed = { min = 0, max = 120 }",
            "speed = { min = 0, max = 400 }",
        ),
    )?;
    let worker = start()?;
    poll("the fixed worker's health", Duration::from_secs(20), || {
        worker.get("/health")
    })?;
    let replayed = dead_letters(
        b,
        &[
            "replay",
            "--client",
            client,
            "--reason",
            "validation_failed",
        ],
    )?;
    assert_eq!(
        replayed
            .lines()
            .filter(|l| l.starts_with("replayed\t"))
            .count(),
        2,
        "{replayed}"
    );
    let speeds = |records: &[(String, Value)]| {
        let mut speeds: Vec<i64> = records
            .iter()
            .filter_map(|(_, r)| r["speed"].as_f64())
            .map(|s| s as i64)
            .collect();
        speeds.sort_unstable();
        speeds
    };
    let out = poll(
        "the replayed readings processed",
        Duration::from_secs(30),
        || {
            let out = normalized_for(b, "traffic-events", client);
            (out.len() >= 3).then_some(out)
        },
    )?;
    assert_eq!(speeds(&out), [55, 250, 300], "{out:?}");

    // Again: nothing is sent twice.
    let raw_before = kcat_consume(b, "traffic-raw")?.len();
    let again = dead_letters(b, &["replay", "--client", client])?;
    assert_eq!(
        again
            .lines()
            .filter(|l| l.starts_with("replayed\t"))
            .count(),
        0,
        "{again}"
    );
    assert_eq!(
        again
            .lines()
            .filter(|l| l.ends_with("\talready replayed"))
            .count(),
        2,
        "{again}"
    );
    assert_eq!(kcat_consume(b, "traffic-raw")?.len(), raw_before);
    let listed = dead_letters(b, &["list", "--client", client])?;
    assert_eq!(
        listed
            .lines()
            .filter(|l| l.split('\t').nth(5) == Some("replayed"))
            .count(),
        2,
        "{listed}"
    );
    assert_eq!(
        speeds(&normalized_for(b, "traffic-events", client)),
        [55, 250, 300]
    );
    Ok(())
}

on_both_brokers!(records_on_the_retry_ladder_survive_a_sigkill_and_go_out_once_the_graph_is_there);

/// Seed 001's ladder on a pipeline whose graph stage retries (ladder 1 s, 15 s): with no
/// graph, five records climb it and are dead-lettered with their three attempts' reasons;
/// five more are pending when the worker is SIGKILLed, the graph builder writes the
/// client's graph meanwhile, and the next worker (same volume) delivers each of them once.
#[allow(clippy::too_many_lines)] // a scenario reads best top to bottom
async fn records_on_the_retry_ladder_survive_a_sigkill_and_go_out_once_the_graph_is_there(
    kind: BrokerKind,
) -> Result<()> {
    let broker = broker_or_skip!(kind);
    let b = &broker.bootstrap;
    let client = "ladder-1";
    let volume = tempfile::tempdir()?;
    let templates = volume.path().join("pods.toml");
    std::fs::write(
        &templates,
        r#"
[[pipeline]]
name = "pods"
input = ["pods.alerts"]
output = "pods.enriched"
retry = { delays = ["1s", "15s"] }

[[pipeline.stage]]
kind = "flatten"
fields = { pod = "labels.pod", namespace = "labels.namespace" }

[[pipeline.stage]]
kind = "validate"
required = ["pod"]

[[pipeline.stage]]
kind = "graph"
namespace = "namespace"
resources = { pod = "Pod" }
on_unavailable = "retry"
"#,
    )?;
    let data = volume.path().join("data");
    let data = data.to_str().context("path")?;
    let templates = templates.to_str().context("path")?;
    let start = || {
        Worker::start_with(
            b,
            "pipeline",
            client,
            &[
                ("WORKER_PIPELINE", "pods"),
                ("WORKER_PIPELINES_FILE", templates),
                ("WORKER_DATA_DIR", data),
            ],
        )
    };
    for topic in ["pods.alerts", "pods.enriched", "dlq.normalized"] {
        kcat_produce(b, topic, "elsewhere::0", Some("{}"), None)?;
    }
    let produce = |name: &str| {
        let value = serde_json::json!({"labels": {"pod": name, "namespace": "shop"}}).to_string();
        kcat_produce(
            b,
            "pods.alerts",
            &format!("{client}::{name}"),
            Some(&value),
            None,
        )
    };
    let mut pods = start()?;
    poll("the worker's health", Duration::from_secs(20), || {
        pods.get("/health")
    })?;

    // No graph: up the ladder and off its last rung.
    let given_up = ["a1", "a2", "a3", "a4", "a5"];
    for name in given_up {
        produce(name)?;
    }
    poll("five retries pending", Duration::from_secs(20), || {
        (pods.metric("worker_retry_pending")? == 5.0).then_some(())
    })?;
    let health: Value = serde_json::from_str(&pods.get("/health").context("health")?)?;
    assert_eq!(health["retries"]["pending"], 5, "{health}");
    ensure!(health["retries"]["next_due"].is_string(), "{health}");
    let letters = poll("five dead letters", Duration::from_secs(60), || {
        let found = normalized_for(b, "dlq.normalized", client);
        (found.len() >= 5).then_some(found)
    })?;
    let mut keys: Vec<&str> = letters.iter().map(|(key, _)| key.as_str()).collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        given_up.map(|name| format!("{client}::{name}")),
        "{letters:?}"
    );
    for (key, letter) in &letters {
        assert_eq!(
            letter["reason_code"], "retries_exhausted",
            "{key}: {letter}"
        );
        assert_eq!(letter["source_topic"], "pods.alerts", "{key}: {letter}");
        let attempts = letter["attempts"].as_array().context("attempts")?;
        assert_eq!(attempts.len(), 3, "{key}: {letter}");
        ensure!(
            attempts.iter().all(|a| a["reason"]
                .as_str()
                .unwrap_or_default()
                .contains("no graph yet")),
            "{key}: {letter}"
        );
    }
    let stages: Value = serde_json::from_str(&pods.get("/health/stages").context("stages")?)?;
    assert_eq!(stages["stages"][2]["kind"], "graph", "{stages}");
    assert_eq!(stages["stages"][2]["retried"], 15, "{stages}");
    assert_eq!(stages["retries"]["outcomes"]["exhausted"], 5, "{stages}");
    assert_eq!(stages["retries"]["pending"], 0, "{stages}");

    // Five more wait on the ladder when the worker is SIGKILLed; the graph builder writes
    // the client's graph before the next worker starts.
    let delivered = ["b1", "b2", "b3", "b4", "b5"];
    for name in delivered {
        produce(name)?;
    }
    poll("five more retries pending", Duration::from_secs(20), || {
        (pods.metric("worker_retry_pending")? == 5.0).then_some(())
    })?;
    pods.child.kill()?;
    pods.child.wait()?;
    let _graph_builder =
        Worker::start_with(b, "graph-builder", client, &[("WORKER_DATA_DIR", data)])?;
    let graph = std::path::Path::new(data).join(format!("graph-{client}.sqlite"));
    poll("the client's graph", Duration::from_secs(20), || {
        graph.exists().then_some(())
    })?;
    let pods = start()?;
    let out = poll("five records out", Duration::from_secs(40), || {
        let found = normalized_for(b, "pods.enriched", client);
        (found.len() >= 5).then_some(found)
    })?;
    poll("nothing pending", Duration::from_secs(20), || {
        (pods.metric("worker_retry_pending")? == 0.0).then_some(())
    })?;
    let mut keys: Vec<&str> = out.iter().map(|(key, _)| key.as_str()).collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        delivered.map(|name| format!("{client}::{name}")),
        "{out:?}"
    );
    for (key, record) in &out {
        assert_eq!(record["graph_status"], "not_in_graph", "{key}: {record}");
    }
    // Counted: each record once, out or dead-lettered, nothing else.
    assert_eq!(normalized_for(b, "pods.enriched", client).len(), 5);
    assert_eq!(normalized_for(b, "dlq.normalized", client).len(), 5);

    // The graph is there now: the operator replays the five given up. Their dead letters
    // carry the input as it came in (nested labels), not the flattened record the graph
    // stage was given, so the pipeline reads them again from its first stage.
    let replayed = dead_letters(
        b,
        &[
            "replay",
            "--client",
            client,
            "--reason",
            "retries_exhausted",
        ],
    )?;
    let count = |text: &str| text.lines().filter(|l| l.starts_with("replayed\t")).count();
    assert_eq!(count(&replayed), 5, "{replayed}");
    let out = poll("all ten out", Duration::from_secs(40), || {
        let found = normalized_for(b, "pods.enriched", client);
        (found.len() >= 10).then_some(found)
    })?;
    let mut keys: Vec<&str> = out.iter().map(|(key, _)| key.as_str()).collect();
    keys.sort_unstable();
    let mut all: Vec<String> = given_up
        .iter()
        .chain(&delivered)
        .map(|name| format!("{client}::{name}"))
        .collect();
    all.sort_unstable();
    assert_eq!(keys, all, "{out:?}");
    let again = dead_letters(b, &["replay", "--client", client])?;
    assert_eq!(count(&again), 0, "{again}");
    assert_eq!(
        normalized_for(b, "dlq.normalized", client).len(),
        5,
        "nothing dead-lettered again"
    );
    Ok(())
}

/// A graph builder started on an empty store while its group has committed offsets (it
/// moved to a node without its client's volume, or the file was deleted) reads its input
/// again from the start and ends with the whole graph, not an empty one; started again on
/// the store it rebuilt, it goes on from its commits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graph_builder_on_an_empty_store_rebuilds_the_graph_from_the_start() -> Result<()> {
    let broker = Broker::start()?;
    let b = &broker.bootstrap;
    let client = "rebuild-1";
    let normalizer = Worker::start(b, "event-normalizer", client)?;
    let first_volume = tempfile::tempdir()?;
    let first_dir = first_volume.path().to_string_lossy().into_owned();
    let mut builder = Worker::start_with(
        b,
        "graph-builder",
        client,
        &[("WORKER_DATA_DIR", &first_dir)],
    )?;
    let producer = producer(b, "none")?;
    let records: Vec<(String, String)> = (0..40)
        .map(|n| {
            let uid = format!("rb-{n:03}");
            (
                format!("{client}::event::{uid}"),
                raw_event(&uid, "OOMKilled"),
            )
        })
        .collect();
    send_all(&producer, "raw.k8s.events", records).await?;
    let episodes = |worker: &Worker| -> Option<u64> {
        let stats: Value = serde_json::from_str(&worker.get("/graph/stats")?).ok()?;
        stats["episodes"].as_u64()
    };
    poll(
        "40 episodes in the first store",
        Duration::from_secs(60),
        || (episodes(&builder)? == 40).then_some(()),
    )?;
    // SIGTERM: the graph builder commits what it wrote.
    ensure!(builder.terminate(Duration::from_secs(30))?.success());

    let second_volume = tempfile::tempdir()?;
    let second_dir = second_volume.path().to_string_lossy().into_owned();
    let mut moved = Worker::start_with(
        b,
        "graph-builder",
        client,
        &[("WORKER_DATA_DIR", &second_dir)],
    )?;
    poll(
        "the 40 episodes rebuilt in an empty store",
        Duration::from_secs(60),
        || (episodes(&moved)? == 40).then_some(()),
    )
    .with_context(|| format!("episodes: {:?}", episodes(&moved)))?;
    ensure!(moved.terminate(Duration::from_secs(30))?.success());

    // On the store it rebuilt, a restart reads on from the commits: one more event, one
    // more episode, and the 40 are not read again (the counter of records handled shows
    // only the new one).
    let again = Worker::start_with(
        b,
        "graph-builder",
        client,
        &[("WORKER_DATA_DIR", &second_dir)],
    )?;
    poll(
        "the restarted builder's health",
        Duration::from_secs(20),
        || again.get("/health"),
    )?;
    send_all(
        &producer,
        "raw.k8s.events",
        vec![(
            format!("{client}::event::rb-new"),
            raw_event("rb-new", "OOMKilled"),
        )],
    )
    .await?;
    poll("41 episodes", Duration::from_secs(60), || {
        (episodes(&again)? == 41).then_some(())
    })?;
    let read = again.metric("worker_records_in_total").unwrap_or(-1.0);
    ensure!(
        read < 40.0,
        "the restart on a full store read the input again ({read} records)"
    );
    drop(normalizer);
    Ok(())
}
