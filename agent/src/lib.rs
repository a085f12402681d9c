//! The kg-rca agent: runs in a client's Kubernetes cluster, registers the cluster with the
//! control plane, heartbeats, and streams Kubernetes Events, resource state and topology
//! to Kafka, in the shapes `protocol.md` gives. One process replaces the 2.1.x chart's
//! event exporter, state watcher, registration job, heartbeat CronJob and
//! deregistration job.
//!
//! - [`config`]: flags and environment; [`messages`]: registration and heartbeat shapes;
//! - [`resources`]: object → snapshot and edges; [`tracker`]: what to send (de-duplication);
//! - [`watch`]: the kube-rs watchers; [`sink`]: delivery to Kafka; [`http`]: health, metrics.

pub mod config;
pub mod http;
pub mod messages;
pub mod metrics;
pub mod resources;
pub mod sink;
pub mod tracker;
pub mod watch;

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use chrono::Utc;
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Endpoints, Event as KubeEvent, Node, Pod, Service};
use kg_shared::client_id::ClientId;
use kube::Api;
use tokio::task::JoinSet;

use crate::config::{CommonArgs, RunArgs};
use crate::messages::{AgentStatus, HeartbeatCounters, Watches};
use crate::metrics::AgentMetrics;
use crate::resources::{Kind, Observe};
use crate::sink::{Sink, Topics};
use crate::watch::{WatchBoard, WatchContext};

/// `deregister`: sends the tombstone that removes the client, waits for Kafka to
/// acknowledge it (within the delivery deadline), and returns.
pub async fn deregister(common: &CommonArgs, client: &ClientId) -> anyhow::Result<()> {
    let metrics = Arc::new(AgentMetrics::new(client.as_str()));
    let sink = Sink::new(&common.kafka, metrics)?;
    sink.send(
        &common.topic_registry,
        client.as_str(),
        None,
        Some(common.delivery_deadline),
    )
    .await
    .with_context(|| format!("deregistering client {client}"))?;
    sink.flush(Duration::from_secs(5));
    tracing::info!(client_id = %client, topic = %common.topic_registry, "deregistered (tombstone acknowledged)");
    Ok(())
}

/// `run`: registers, heartbeats and streams until `shutdown` resolves.
#[allow(clippy::too_many_lines)] // one linear sequence; to be split when it next changes
pub async fn run(
    common: CommonArgs,
    run: RunArgs,
    client: ClientId,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let started = Instant::now();
    let namespaces = run.namespaces()?;
    let metrics = Arc::new(AgentMetrics::new(client.as_str()));
    let sink = Sink::new(&common.kafka, metrics.clone())?;
    let kube = kube::Client::try_default().await.context(
        "cannot configure the Kubernetes client (in a cluster: the pod's service account; \
         elsewhere: KUBECONFIG)",
    )?;
    let board = Arc::new(WatchBoard::default());
    let registered = Arc::new(AtomicBool::new(false));
    let cluster = run
        .cluster_name
        .clone()
        .filter(|name| !name.trim().is_empty())
        .unwrap_or_else(|| client.to_string());
    let topics = Topics {
        registry: common.topic_registry.clone(),
        heartbeat: run.topic_heartbeat.clone(),
        events: run.topic_events.clone(),
        resource: run.topic_resource.clone(),
        topology: run.topic_topology.clone(),
    };
    tracing::info!(
        client_id = %client,
        cluster = %cluster,
        kafka = %common.kafka_summary(),
        namespaces = ?namespaces,
        heartbeat_interval = ?run.heartbeat_interval,
        "agent starting"
    );

    let mut tasks = JoinSet::new();
    let listener = tokio::net::TcpListener::bind(run.listen_addr)
        .await
        .with_context(|| format!("binding {}", run.listen_addr))?;
    let router = http::router(http::HttpState {
        client_id: client.to_string(),
        metrics: metrics.clone(),
        board: board.clone(),
        registered: registered.clone(),
    });
    tasks.spawn(async move {
        if let Err(error) = axum::serve(listener, router).await {
            tracing::error!(%error, "HTTP server stopped");
        }
    });

    let watches = Watches {
        events: run.watch_events,
        resources: if run.watch_resources {
            Kind::ALL.iter().map(|kind| kind.as_str()).collect()
        } else {
            Vec::new()
        },
        namespaces: namespaces.clone(),
    };
    // Registration first, then heartbeats; the watches start at once (their records wait
    // in the producer like any other while Kafka is unreachable).
    {
        let sink = sink.clone();
        let client = client.clone();
        let metrics = metrics.clone();
        let board = board.clone();
        let registered = registered.clone();
        let topics = topics.clone();
        let run = run.clone();
        let cluster = cluster.clone();
        tasks.spawn(async move {
            let (key, value) = messages::registration(
                &client,
                Some(&cluster),
                run.chart_version.as_deref(),
                &watches,
                &messages::requested_pipelines(&run.pipelines),
                Utc::now(),
            );
            // No deadline: an agent that cannot register has nothing better to do.
            let _ = sink.send(&topics.registry, &key, Some(&value), None).await;
            metrics.registrations.inc();
            registered.store(true, Ordering::Relaxed);
            tracing::info!(client_id = %client, topic = %topics.registry, "registered");
            if !run.heartbeat_enabled {
                tracing::warn!("heartbeats are disabled (heartbeat.enabled=false): the control plane will reap this client's workers");
                return;
            }
            let mut ticker = tokio::time::interval(run.heartbeat_interval);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticker.tick().await;
                let status = if board.degraded() {
                    AgentStatus::Degraded
                } else {
                    AgentStatus::Healthy
                };
                let counters = HeartbeatCounters {
                    events_sent: metrics.sent(&topics.events),
                    resources_sent: metrics.sent(&topics.resource),
                    edges_sent: metrics.sent(&topics.topology),
                    uptime_seconds: started.elapsed().as_secs(),
                };
                let (key, value) = messages::heartbeat(&client, status, counters, Utc::now());
                // A heartbeat older than one interval is worth nothing: the next one replaces it.
                match sink
                    .send(&topics.heartbeat, &key, Some(&value), Some(run.heartbeat_interval))
                    .await
                {
                    Ok(()) => {
                        metrics.heartbeats.inc();
                    }
                    Err(error) => tracing::warn!(%error, "heartbeat not delivered"),
                }
            }
        });
    }

    let ctx = Arc::new(WatchContext {
        client: client.clone(),
        cluster,
        sink: sink.clone(),
        topics,
        metrics,
        board,
        watch_timeout_secs: run.watch_timeout_secs,
    });
    let scopes: Vec<Option<String>> = if namespaces.is_empty() {
        vec![None]
    } else {
        namespaces.into_iter().map(Some).collect()
    };
    if run.watch_events {
        for scope in &scopes {
            let api: Api<KubeEvent> = scoped_api(&kube, scope.as_deref());
            tasks.spawn(watch::watch_events(api, scope.clone(), ctx.clone()));
        }
    }
    if run.watch_resources {
        // Nodes are cluster-scoped: one watch whatever the namespaces.
        tasks.spawn(watch::watch_resources::<Node>(
            Api::all(kube.clone()),
            None,
            ctx.clone(),
        ));
        for scope in &scopes {
            spawn_namespaced::<Pod>(&mut tasks, &kube, scope, &ctx);
            spawn_namespaced::<Service>(&mut tasks, &kube, scope, &ctx);
            spawn_namespaced::<Endpoints>(&mut tasks, &kube, scope, &ctx);
            spawn_namespaced::<Deployment>(&mut tasks, &kube, scope, &ctx);
            spawn_namespaced::<ReplicaSet>(&mut tasks, &kube, scope, &ctx);
            spawn_namespaced::<StatefulSet>(&mut tasks, &kube, scope, &ctx);
            spawn_namespaced::<DaemonSet>(&mut tasks, &kube, scope, &ctx);
            spawn_namespaced::<Job>(&mut tasks, &kube, scope, &ctx);
        }
    }

    tokio::select! {
        _ = shutdown => tracing::info!("termination signal; stopping"),
        Some(result) = tasks.join_next() => {
            // Every task loops forever; one that ends is a bug worth a restart.
            anyhow::bail!("an agent task ended unexpectedly: {result:?}");
        }
    }
    tasks.abort_all();
    sink.flush(Duration::from_secs(5));
    Ok(())
}

fn scoped_api<K>(kube: &kube::Client, namespace: Option<&str>) -> Api<K>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
    <K as kube::Resource>::DynamicType: Default,
{
    match namespace {
        Some(ns) => Api::namespaced(kube.clone(), ns),
        None => Api::all(kube.clone()),
    }
}

fn spawn_namespaced<K>(
    tasks: &mut JoinSet<()>,
    kube: &kube::Client,
    scope: &Option<String>,
    ctx: &Arc<WatchContext>,
) where
    K: Observe
        + kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
    <K as kube::Resource>::DynamicType: Default,
{
    let api: Api<K> = scoped_api(kube, scope.as_deref());
    tasks.spawn(watch::watch_resources::<K>(api, scope.clone(), ctx.clone()));
}
