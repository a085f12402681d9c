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
        let dir = tempfile::tempdir()?;
        let addr_file = dir.path().join("addr");
        let child = Command::new(&binaries().worker)
            .args(["--role", role])
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
