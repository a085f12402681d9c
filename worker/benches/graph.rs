//! Graph store benchmarks: items/s applying realistic batches of 1,000 inputs to a fresh
//! SQLite file, and RCA query latency (criterion's mean, plus p50/p99 over many queries)
//! on a graph of 100,000 episodes.
//!
//! The input is a synthetic cluster (30 nodes, 150 deployments with a ReplicaSet, 4 pods
//! and a Service each) and 100,000 episodes over about three hours: lifecycle events,
//! warnings, error log lines, and incident bursts (OOM cascades through a deployment,
//! nodes going NotReady with their pods evicted, image pull failures).
//!
//! `cargo bench -p worker --bench graph -- --warm-up-time 1 --measurement-time 5`

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use kg_shared::records::{Etype, Severity, Subject};
use worker::roles::event_normalizer::normalize::event_type_abstract;
use worker::roles::graph_builder::{
    EpisodeInput, GraphInput, GraphStore, ResourceSnapshot, SqliteGraphStore, TopologyEdge,
};

const NODES: usize = 30;
const DEPLOYMENTS: usize = 150;
const PODS_PER_DEPLOYMENT: usize = 4;
const EPISODES: usize = 100_000;
const BATCH: usize = 1_000;
const NS: &str = "shop";

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn start() -> DateTime<Utc> {
    "2025-10-28T00:00:00Z".parse().unwrap()
}

fn pod_name(d: usize, p: usize) -> String {
    format!("app{d}-5c4d-{p}")
}

fn node_of(d: usize, p: usize) -> usize {
    (d * PODS_PER_DEPLOYMENT + p) % NODES
}

fn snapshot(kind: &str, ns: Option<&str>, name: &str) -> GraphInput {
    GraphInput::ResourceUpsert(ResourceSnapshot {
        kind: kind.to_owned(),
        uid: format!("uid-{kind}-{name}"),
        namespace: ns.map(str::to_owned),
        name: name.to_owned(),
        at: Some(start() - chrono::Duration::hours(1)),
        raw: format!(
            r#"{{"op":"UPSERT","kind":"{kind}","name":"{name}","status":{{"phase":"Running"}}}}"#
        ),
    })
}

fn edge(from: String, to: String, kind: &str) -> GraphInput {
    GraphInput::EdgeUpsert(TopologyEdge {
        from,
        to,
        edge_type: kind.to_owned(),
        at: Some(start() - chrono::Duration::hours(1)),
    })
}

/// Resources and topology of the cluster.
fn state() -> Vec<GraphInput> {
    let mut out = Vec::new();
    for n in 0..NODES {
        out.push(snapshot("Node", None, &format!("node-{n}")));
    }
    for d in 0..DEPLOYMENTS {
        let (dep, rs, svc) = (format!("app{d}"), format!("app{d}-5c4d"), format!("app{d}"));
        out.push(snapshot("Deployment", Some(NS), &dep));
        out.push(snapshot("ReplicaSet", Some(NS), &rs));
        out.push(snapshot("Service", Some(NS), &svc));
        out.push(edge(
            format!("deployment:{NS}:{dep}"),
            format!("replicaset:{NS}:{rs}"),
            "CONTROLS",
        ));
        for p in 0..PODS_PER_DEPLOYMENT {
            let pod = pod_name(d, p);
            out.push(snapshot("Pod", Some(NS), &pod));
            out.push(edge(
                format!("replicaset:{NS}:{rs}"),
                format!("pod:{NS}:{pod}"),
                "CONTROLS",
            ));
            out.push(edge(
                format!("service:{NS}:{svc}"),
                format!("pod:{NS}:{pod}"),
                "SELECTS",
            ));
            out.push(edge(
                format!("pod:{NS}:{pod}"),
                format!("node:node-{}", node_of(d, p)),
                "RUNS_ON",
            ));
        }
    }
    out
}

struct Gen {
    rng: Rng,
    seq: u64,
    out: Vec<GraphInput>,
}

#[allow(clippy::too_many_arguments)] // a generator's call sites read better flat
impl Gen {
    fn episode(
        &mut self,
        at_ms: i64,
        reason: &str,
        severity: Severity,
        kind: &str,
        name: &str,
        message: &str,
        log: bool,
    ) {
        self.seq += 1;
        let jitter = self.rng.below(10_000) as i64 - 5_000;
        let event_time = DateTime::<Utc>::from_timestamp_millis(at_ms + jitter).unwrap();
        let ns = (kind != "Node").then(|| NS.to_owned());
        let subject = Subject {
            kind: Some(kind.to_owned()),
            uid: Some(format!("uid-{kind}-{name}")),
            ns,
            name: Some(name.to_owned()),
        };
        let e = EpisodeInput {
            // Real ids are hashes: they land all over the id index.
            event_id: format!(
                "{}-{:016x}",
                if log { "log" } else { "evt" },
                xxhash_rust::xxh3::xxh3_64(&self.seq.to_le_bytes())
            ),
            etype: if log { Etype::K8sLog } else { Etype::K8sEvent },
            event_time,
            severity,
            reason: Some(reason.to_owned()),
            event_type_abstract: (!log).then(|| event_type_abstract(reason)),
            message: Some(message.to_owned()),
            subject,
            count: 1,
        };
        self.out.push(if log {
            GraphInput::Log(e)
        } else {
            GraphInput::Event(e)
        });
    }

    fn pod_episode(
        &mut self,
        at_ms: i64,
        d: usize,
        p: usize,
        reason: &str,
        severity: Severity,
        message: &str,
        log: bool,
    ) {
        let pod = pod_name(d, p);
        self.episode(at_ms, reason, severity, "Pod", &pod, message, log);
    }
}

/// The episodes, in arrival order (time order with a few seconds of jitter).
#[allow(clippy::too_many_lines)] // a benchmark's steps, in order
fn episodes() -> Vec<GraphInput> {
    let mut g = Gen {
        rng: Rng(0x9e37_79b9_7f4a_7c15),
        seq: 0,
        out: Vec::with_capacity(EPISODES + 64),
    };
    let base = start().timestamp_millis();
    let step_ms = 110; // ~9 episodes/s: 100,000 in about three hours
    let mut i = 0usize;
    let mut next_burst = 2_000;
    while g.out.len() < EPISODES {
        let now = base + (i as i64) * step_ms;
        i += 1;
        if i >= next_burst {
            next_burst += 2_000;
            match g.rng.below(3) {
                0 => {
                    // OOM cascade through one deployment.
                    let d = g.rng.below(DEPLOYMENTS);
                    for p in 0..PODS_PER_DEPLOYMENT {
                        let t = now + p as i64 * 4_000;
                        g.pod_episode(
                            t,
                            d,
                            p,
                            "OOMKilled",
                            Severity::Warning,
                            "Container app was OOMKilled",
                            false,
                        );
                        g.pod_episode(
                            t + 15_000,
                            d,
                            p,
                            "CrashLoopBackOff",
                            Severity::Warning,
                            "Back-off restarting failed container",
                            false,
                        );
                        g.pod_episode(
                            t + 25_000,
                            d,
                            p,
                            "Unhealthy",
                            Severity::Warning,
                            "Readiness probe failed: 503",
                            false,
                        );
                        for k in 0..3 {
                            g.pod_episode(
                                t + 30_000 + k * 2_000,
                                d,
                                p,
                                "CONNECTION_REFUSED",
                                Severity::Error,
                                "ERROR upstream: connection refused",
                                true,
                            );
                        }
                    }
                }
                1 => {
                    // A node goes NotReady and its pods are evicted.
                    let n = g.rng.below(NODES);
                    g.episode(
                        now,
                        "NodeNotReady",
                        Severity::Info,
                        "Node",
                        &format!("node-{n}"),
                        "Node status is now: NodeNotReady",
                        false,
                    );
                    for d in 0..DEPLOYMENTS {
                        for p in 0..PODS_PER_DEPLOYMENT {
                            if node_of(d, p) == n {
                                g.pod_episode(
                                    now + 30_000,
                                    d,
                                    p,
                                    "Evicted",
                                    Severity::Warning,
                                    "The node was not ready",
                                    false,
                                );
                            }
                        }
                    }
                }
                _ => {
                    // An image pull failure.
                    let d = g.rng.below(DEPLOYMENTS);
                    let p = g.rng.below(PODS_PER_DEPLOYMENT);
                    g.pod_episode(
                        now,
                        d,
                        p,
                        "Failed",
                        Severity::Warning,
                        "Failed to pull image \"app:v2\": not found",
                        false,
                    );
                    g.pod_episode(
                        now + 10_000,
                        d,
                        p,
                        "BackOff",
                        Severity::Warning,
                        "Back-off pulling image \"app:v2\"",
                        false,
                    );
                }
            }
            continue;
        }
        let d = g.rng.below(DEPLOYMENTS);
        let p = g.rng.below(PODS_PER_DEPLOYMENT);
        match g.rng.below(20) {
            0..=11 => {
                const LIFECYCLE: [&str; 5] =
                    ["Scheduled", "Pulled", "Created", "Started", "Killing"];
                let reason = LIFECYCLE[g.rng.below(LIFECYCLE.len())];
                g.pod_episode(now, d, p, reason, Severity::Info, "lifecycle", false);
            }
            12..=16 => {
                const WARNINGS: [&str; 4] = ["BackOff", "Unhealthy", "FailedMount", "ProbeWarning"];
                let reason = WARNINGS[g.rng.below(WARNINGS.len())];
                g.pod_episode(now, d, p, reason, Severity::Warning, "warning", false);
            }
            _ => {
                const ERRORS: [&str; 3] = ["TIMEOUT", "EXCEPTION", "CONNECTION_REFUSED"];
                let reason = ERRORS[g.rng.below(ERRORS.len())];
                g.pod_episode(
                    now,
                    d,
                    p,
                    reason,
                    Severity::Error,
                    "ERROR request failed",
                    true,
                );
            }
        }
    }
    g.out.truncate(EPISODES);
    g.out
}

fn temp_file(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("kg-graph-bench-{}-{tag}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir.join("graph-bench.sqlite")
}

fn remove(path: &Path) {
    if let Some(dir) = path.parent() {
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// Applies everything in batches of [`BATCH`]; returns the graph items written.
fn build(store: &mut SqliteGraphStore, state: &[GraphInput], episodes: &[GraphInput]) -> u64 {
    let mut items = 0;
    for batch in state.chunks(BATCH).chain(episodes.chunks(BATCH)) {
        items += store.apply(batch).unwrap().graph_items();
    }
    items
}

fn bench_apply(c: &mut Criterion) {
    let state = state();
    let episodes = episodes();
    let inputs = (state.len() + episodes.len()) as u64;

    // One measured run first, for the graph-items figure and the final counts.
    let path = temp_file("apply-report");
    let mut store = SqliteGraphStore::open(&path).unwrap();
    let began = Instant::now();
    let items = build(&mut store, &state, &episodes);
    let took = began.elapsed().as_secs_f64();
    println!(
        "apply: {inputs} inputs in {took:.2} s = {:.0} inputs/s; {items} graph items = {:.0} graph items/s; {:?}",
        inputs as f64 / took,
        items as f64 / took,
        store.stats().unwrap()
    );
    drop(store);
    remove(&path);

    let mut group = c.benchmark_group("graph_store");
    group.sample_size(10);
    group.throughput(Throughput::Elements(inputs));
    group.bench_function("apply_100k_inputs_in_batches_of_1000", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for i in 0..iters {
                let path = temp_file(&format!("apply-{i}"));
                let mut store = SqliteGraphStore::open(&path).unwrap();
                let began = Instant::now();
                build(&mut store, &state, &episodes);
                total += began.elapsed();
                drop(store);
                remove(&path);
            }
            total
        })
    });
    group.finish();
}

fn bench_rca(c: &mut Criterion) {
    let state = state();
    let episodes = episodes();
    let path = temp_file("rca");
    let mut store = SqliteGraphStore::open(&path).unwrap();
    build(&mut store, &state, &episodes);
    drop(store);
    // Queries run on a freshly opened file, as after a restart.
    let store = SqliteGraphStore::open(&path).unwrap();
    let ids: Vec<String> = episodes
        .iter()
        .filter_map(|i| match i {
            GraphInput::Event(e) | GraphInput::Log(e) => Some(e.event_id.clone()),
            _ => None,
        })
        .collect();
    let mut rng = Rng(42);
    let mut samples: Vec<Duration> = Vec::with_capacity(20_000);
    let mut found = 0usize;
    for _ in 0..20_000 {
        let id = &ids[rng.below(ids.len())];
        let began = Instant::now();
        let causes = store.rca(id, 10).unwrap();
        samples.push(began.elapsed());
        found += usize::from(!causes.is_empty());
    }
    samples.sort_unstable();
    let pct = |p: f64| samples[((samples.len() as f64 * p) as usize).min(samples.len() - 1)];
    println!(
        "rca over {} episodes: p50 {:?}, p99 {:?}, max {:?} ({} of {} queries had candidates); {:?}",
        ids.len(),
        pct(0.50),
        pct(0.99),
        samples[samples.len() - 1],
        found,
        samples.len(),
        store.stats().unwrap()
    );

    let mut group = c.benchmark_group("graph_store");
    group.bench_function("rca_query_on_100k_episodes", |b| {
        let mut rng = Rng(7);
        b.iter(|| {
            let id = &ids[rng.below(ids.len())];
            store.rca(id, 10).unwrap()
        })
    });
    group.finish();
    drop(store);
    remove(&path);
}

/// `count` alerts as the alert pipeline holds them, on random pods, nodes and deployments
/// (by turns), each started at a random time within the episodes' three hours.
fn random_alerts(count: usize) -> Vec<serde_json::Map<String, serde_json::Value>> {
    let mut rng = Rng(99);
    (0..count)
        .map(|n| {
            let at = start() + chrono::Duration::seconds(rng.below(3 * 3600) as i64);
            let d = rng.below(DEPLOYMENTS);
            let p = rng.below(PODS_PER_DEPLOYMENT);
            let mut alert = serde_json::json!({
                "fingerprint": format!("fp-{n}"), "status": "firing",
                "startsAt": at.to_rfc3339(), "namespace": NS,
            });
            match n % 3 {
                0 => alert["pod"] = pod_name(d, p).into(),
                1 => alert["node"] = format!("node-{}", node_of(d, p)).into(),
                _ => alert["deployment"] = format!("app{d}").into(),
            }
            alert.as_object().unwrap().clone()
        })
        .collect()
}

/// The alert-enrichment pipeline's work at emission (the stages after its delay: the graph
/// lookups and the stamp) for alerts on random pods, nodes and deployments of the 100,000-
/// episode graph, each at a random time within it; p50/p99 over 20,000 alerts, against
/// the same stages with no graph to read (the baseline: what an emission costs without
/// lookups), both in this run.
fn bench_alert_enrichment(c: &mut Criterion) {
    use kg_shared::pipeline_template::PipelineTemplates;
    use worker::roles::pipeline::graph::GraphReader;
    use worker::roles::pipeline::Stages;

    let state = state();
    let episodes = episodes();
    let path = temp_file("alerts");
    let mut store = SqliteGraphStore::open(&path).unwrap();
    build(&mut store, &state, &episodes);
    drop(store);
    let templates = PipelineTemplates::parse(
        include_str!("../../examples/pipelines/alert-enrichment.toml"),
        Path::new("alert-enrichment.toml"),
    )
    .unwrap();
    let template = templates.get("alert-enrichment").unwrap();
    let client = kg_shared::ClientId::parse("bench").unwrap();
    let with_graph =
        Stages::new(template, client.clone()).with_graph(GraphReader::new(path.clone()));
    let without_graph =
        Stages::new(template, client).with_graph(GraphReader::new(path.with_extension("missing")));
    let alerts = random_alerts(20_000);
    let now = start() + chrono::Duration::hours(3);
    // p50, p99 and max of each kind of alert (pod, node, deployment: n % 3), and of all.
    let measure = |stages: &Stages| {
        let mut samples: Vec<Vec<Duration>> = vec![Vec::new(); 4];
        let mut found = 0usize;
        for (n, alert) in alerts.iter().enumerate() {
            let began = Instant::now();
            let out = stages.resume(alert.clone(), now).unwrap().done().unwrap();
            let took = began.elapsed();
            samples[n % 3].push(took);
            samples[3].push(took);
            found += usize::from(out["graph_status"] == "found");
        }
        let summary: Vec<String> = samples
            .iter_mut()
            .zip(["pod", "node", "deployment", "all"])
            .map(|(kind, name)| {
                kind.sort_unstable();
                let pct = |p: f64| kind[((kind.len() as f64 * p) as usize).min(kind.len() - 1)];
                format!(
                    "{name}: p50 {:?} p99 {:?} max {:?}",
                    pct(0.50),
                    pct(0.99),
                    kind[kind.len() - 1]
                )
            })
            .collect();
        (summary.join("; "), found)
    };
    let (with, found) = measure(&with_graph);
    let (without, _) = measure(&without_graph);
    println!(
        "alert enrichment at emission over {EPISODES} episodes ({found} of {} alerts found in the graph): {with}\nthe same stages without a graph (baseline): {without}",
        alerts.len(),
    );
    let mut group = c.benchmark_group("alert_enrichment");
    group.bench_function("emit_one_alert_with_graph_lookups_on_100k_episodes", |b| {
        let mut n = 0;
        b.iter(|| {
            n = (n + 1) % alerts.len();
            with_graph
                .resume(alerts[n].clone(), now)
                .unwrap()
                .done()
                .unwrap()
        })
    });
    group.finish();
    remove(&path);
}

criterion_group!(benches, bench_apply, bench_rca, bench_alert_enrichment);
criterion_main!(benches);
