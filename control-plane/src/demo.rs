//! The demo agent that `dev --demo` runs: it registers a client the way the Helm chart
//! does, heartbeats on both streams, streams realistic Kubernetes events and logs, prints
//! what comes out normalized, then goes quiet so the client's workers are reaped.

use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use kg_shared::topics::{
    CLUSTER_HEARTBEAT, CLUSTER_REGISTRY, EVENTS_NORMALIZED, LOGS_NORMALIZED, RAW_K8S_EVENTS,
    RAW_K8S_LOGS,
};
use kg_shared::ClientId;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;
use serde_json::json;

use crate::controller::Status;
use crate::supervise::WorkerPhase;
use crate::table::ClientTable;

#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("failed to create a kafka client for the demo agent: {0}")]
    KafkaClient(#[from] rdkafka::error::KafkaError),
}

pub(crate) struct DemoAgent {
    pub(crate) bootstrap: String,
    pub(crate) client: ClientId,
    pub(crate) heartbeat_for: Duration,
    pub(crate) heartbeat_timeout_secs: u64,
    pub(crate) table: ClientTable,
    pub(crate) status: Arc<Status>,
    pub(crate) api: std::net::SocketAddr,
    /// Normalized event ids by reason, as the observer sees them.
    pub(crate) seen: Arc<std::sync::Mutex<std::collections::HashMap<String, String>>>,
}

fn say(line: impl AsRef<str>) {
    println!("demo: {}", line.as_ref());
    let _ = std::io::stdout().flush();
}

impl DemoAgent {
    fn producer(&self, compression: &str) -> Result<FutureProducer, rdkafka::error::KafkaError> {
        ClientConfig::new()
            .set("bootstrap.servers", &self.bootstrap)
            .set("compression.type", compression)
            .set("linger.ms", "5")
            .create()
    }

    async fn send(producer: &FutureProducer, topic: &str, key: &str, value: &serde_json::Value) {
        let payload = value.to_string();
        let _ = producer
            .send(
                FutureRecord::to(topic).key(key).payload(&payload),
                Duration::from_secs(10),
            )
            .await;
    }

    async fn wait_for(
        &self,
        what: &str,
        deadline: Duration,
        check: impl Fn(&Self) -> bool,
    ) -> bool {
        let until = tokio::time::Instant::now() + deadline;
        while tokio::time::Instant::now() < until {
            if check(self) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        say(format!("gave up waiting for {what} after {deadline:?}"));
        false
    }

    /// How many of the demo client's workers run, when every one listed does (0 while
    /// one is still starting: the summary is then printed once, complete).
    fn running_workers(&self) -> usize {
        self.table
            .get(&self.client)
            .map(|record| {
                let running = record
                    .workers
                    .iter()
                    .filter(|w| w.state == WorkerPhase::Running)
                    .count();
                if running == record.workers.len() {
                    running
                } else {
                    0
                }
            })
            .unwrap_or(0)
    }

    pub(crate) async fn run(self) -> Result<(), DemoError> {
        let plain = self.producer("none")?;
        let zstd = self.producer("zstd")?;
        let id = self.client.to_string();
        self.wait_for(
            "the control plane to be ready",
            Duration::from_secs(60),
            |agent| agent.status.ready(),
        )
        .await;

        let observer = self.observe_normalized()?;
        say(format!(
            "registering client {id} the way the Helm chart's post-install job does"
        ));
        Self::send(
            &plain,
            CLUSTER_REGISTRY,
            &id,
            &json!({"client_id": id, "cluster_name": "demo-cluster", "region": "unknown",
                    "timestamp": Utc::now().to_rfc3339(), "chart_version": "2.1.2"}),
        )
        .await;

        let heartbeats = self.heartbeat(plain, zstd, id.clone());

        if self
            .wait_for(
                "the demo client's workers",
                Duration::from_secs(60),
                |agent| agent.running_workers() >= 3,
            )
            .await
        {
            say(format!("workers running: {}", self.worker_summary()));
        }

        let events = self.producer("lz4")?;
        for (key, event) in demo_events(&id) {
            Self::send(&events, RAW_K8S_EVENTS, &key, &event).await;
        }
        for (key, log) in demo_logs(&id) {
            Self::send(&events, RAW_K8S_LOGS, &key, &log).await;
        }
        say("streamed 8 Kubernetes events and 5 log lines; normalized records follow");
        self.explain("CrashLoopBackOff").await;

        let _ = heartbeats.await;
        say(format!(
            "stopped heartbeating; the workers are reaped {}s after the last heartbeat",
            self.heartbeat_timeout_secs
        ));
        let reaped = self
            .wait_for(
                "the workers to be reaped",
                Duration::from_secs(self.heartbeat_timeout_secs + 60),
                |agent| {
                    agent
                        .table
                        .get(&agent.client)
                        .is_some_and(|record| record.workers.is_empty())
                },
            )
            .await;
        if reaped {
            say(format!("client {id} is stale and its workers are gone"));
        }
        observer.abort();
        Ok(())
    }

    /// Heartbeats as the agent does, on both heartbeat shapes it sends (a plain one and
    /// the zstd-compressed `<id>::<id>` one with metrics), every 5 s for `heartbeat_for`.
    /// The task hands the plain producer back when it stops.
    fn heartbeat(
        &self,
        plain: FutureProducer,
        zstd: FutureProducer,
        id: String,
    ) -> tokio::task::JoinHandle<FutureProducer> {
        let heartbeat_for = self.heartbeat_for;
        tokio::spawn(async move {
            let until = tokio::time::Instant::now() + heartbeat_for;
            let started = tokio::time::Instant::now();
            while tokio::time::Instant::now() < until {
                let now = Utc::now().to_rfc3339();
                Self::send(
                    &plain,
                    CLUSTER_HEARTBEAT,
                    &id,
                    &json!({"client_id": id, "timestamp": now}),
                )
                .await;
                Self::send(
                    &zstd,
                    CLUSTER_HEARTBEAT,
                    &format!("{id}::{id}"),
                    &json!({"client_id": id, "status": "healthy", "timestamp": now,
                            "metrics": {"resources_sent": 0, "uptime_seconds": started.elapsed().as_secs()}}),
                )
                .await;
                tokio::time::sleep(Duration::from_secs(5)).await;
            }
            plain
        })
    }

    /// Asks the control plane what probably caused the event with `reason`, as an operator
    /// would: `GET /clients/{id}/rca?event_id=…`.
    async fn explain(&self, reason: &str) {
        let Ok(http) = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
        else {
            return;
        };
        let until = tokio::time::Instant::now() + Duration::from_secs(30);
        while tokio::time::Instant::now() < until {
            let event_id = self
                .seen
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .get(reason)
                .cloned();
            if let Some(event_id) = event_id {
                let url = format!("http://{}/clients/{}/rca", self.api, self.client);
                let answer = http
                    .get(&url)
                    .query(&[("event_id", &event_id)])
                    .send()
                    .await;
                if let Ok(answer) = answer {
                    if let Ok(body) = answer.json::<serde_json::Value>().await {
                        if let Some(best) = body["candidates"].as_array().and_then(|c| c.first()) {
                            say(format!(
                                "GET /clients/{}/rca?event_id={event_id}: the likely root cause of {reason} is {} (confidence {:.2}, path {})",
                                self.client,
                                best["reason"].as_str().unwrap_or("?"),
                                best["confidence"].as_f64().unwrap_or(0.0),
                                best["path"].as_array().map(|p| p.iter().filter_map(|x| x.as_str()).collect::<Vec<_>>().join(" -> ")).unwrap_or_default(),
                            ));
                            return;
                        }
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        say(format!("no root cause found for {reason} within 30 s"));
    }

    fn worker_summary(&self) -> String {
        self.table
            .get(&self.client)
            .map(|record| {
                record
                    .workers
                    .iter()
                    .map(|w| format!("{} ({})", w.name, w.state))
                    .collect::<Vec<_>>()
                    .join(", ")
            })
            .unwrap_or_default()
    }

    fn observe_normalized(&self) -> Result<tokio::task::JoinHandle<()>, DemoError> {
        let consumer: StreamConsumer = ClientConfig::new()
            .set("bootstrap.servers", &self.bootstrap)
            .set("group.id", "dev-demo-observer")
            .set("auto.offset.reset", "earliest")
            .create()?;
        consumer.subscribe(&[EVENTS_NORMALIZED, LOGS_NORMALIZED])?;
        let prefix = format!("{}::", self.client);
        let seen = self.seen.clone();
        Ok(tokio::spawn(async move {
            while let Ok(message) = consumer.recv().await {
                let key = String::from_utf8_lossy(message.key().unwrap_or_default()).into_owned();
                if !key.starts_with(&prefix) {
                    continue;
                }
                let Some(value) = message
                    .payload()
                    .and_then(|p| serde_json::from_slice::<serde_json::Value>(p).ok())
                else {
                    continue;
                };
                if let (Some(reason), Some(id)) =
                    (value["reason"].as_str(), value["event_id"].as_str())
                {
                    if message.topic() == EVENTS_NORMALIZED {
                        seen.lock()
                            .unwrap_or_else(|poisoned| poisoned.into_inner())
                            .insert(reason.to_string(), id.to_string());
                    }
                }
                let line = if message.topic() == EVENTS_NORMALIZED {
                    format!(
                        "{} {:<22} {:<8} {}",
                        message.topic(),
                        value["event_type_abstract"].as_str().unwrap_or("?"),
                        value["severity"].as_str().unwrap_or("?"),
                        value["message"].as_str().unwrap_or("")
                    )
                } else {
                    format!(
                        "{}   {:<22} {:<8} {}",
                        message.topic(),
                        value["error_type"].as_str().unwrap_or("-"),
                        value["severity"].as_str().unwrap_or("?"),
                        value["message"]
                            .as_str()
                            .unwrap_or("")
                            .lines()
                            .next()
                            .unwrap_or("")
                    )
                };
                say(line);
            }
        }))
    }
}

/// A small, realistic incident: a pod is scheduled, pulls, starts, fails its probe, is
/// OOM-killed and crash-loops; its node reports memory pressure.
pub fn demo_events(client: &str) -> Vec<(String, serde_json::Value)> {
    let start = Utc::now() - chrono::Duration::seconds(90);
    let pod = json!({"kind": "Pod", "name": "checkout-7d9f", "namespace": "shop", "uid": "b1e2c3d4-0001",
                     "labels": {"app": "checkout"}});
    let steps = [
        (
            "Scheduled",
            "Normal",
            "Successfully assigned shop/checkout-7d9f to node-1",
        ),
        ("Pulling", "Normal", "Pulling image \"shop/checkout:1.4.2\""),
        (
            "Pulled",
            "Normal",
            "Successfully pulled image \"shop/checkout:1.4.2\"",
        ),
        ("Started", "Normal", "Started container checkout"),
        (
            "Unhealthy",
            "Warning",
            "Readiness probe failed: HTTP probe failed with statuscode: 503",
        ),
        (
            "OOMKilled",
            "Warning",
            "Container checkout killed: out of memory",
        ),
        (
            "BackOff",
            "Warning",
            "Back-off restarting failed container checkout",
        ),
        (
            "CrashLoopBackOff",
            "Warning",
            "Container checkout is in CrashLoopBackOff",
        ),
    ];
    steps
        .iter()
        .enumerate()
        .map(|(n, (reason, kind, message))| {
            let uid = format!("demo-evt-{n:04}");
            // Ten seconds apart, in the order they happen: causes come before effects.
            let now = (start + chrono::Duration::seconds(10 * n as i64)).to_rfc3339();
            (
                format!("{client}::event::{uid}"),
                json!({"event_id": format!("evt-{uid}"), "reason": reason, "message": message, "type": kind,
                       "metadata": {"uid": uid, "creationTimestamp": now},
                       "involvedObject": pod, "source": {"host": "node-1"},
                       "lastTimestamp": now, "count": 1}),
            )
        })
        .collect()
}

/// Log lines from the same pod, one with a Java stack trace.
pub fn demo_logs(client: &str) -> Vec<(String, serde_json::Value)> {
    let now = Utc::now().to_rfc3339();
    let lines = [
        "GET /healthz 200 1ms",
        "connection refused: payments.shop.svc:8080",
        "java.lang.OutOfMemoryError: Java heap space\n\tat com.shop.Cart.add(Cart.java:42)\n\tat com.shop.Api.handle(Api.java:17)",
        "Timeout waiting for inventory response after 5000ms",
        "order 1234 accepted",
    ];
    lines
        .iter()
        .map(|line| {
            (
                format!("{client}::b1e2c3d4-0001"),
                json!({"message": line, "timestamp": now, "stream": "stdout", "client_id": client,
                       "kubernetes": {"pod_name": "checkout-7d9f", "pod_namespace": "shop",
                                      "pod_uid": "b1e2c3d4-0001", "container_name": "checkout",
                                      "pod_node_name": "node-1"}}),
            )
        })
        .collect()
}
