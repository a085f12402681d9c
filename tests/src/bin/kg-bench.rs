//! Load generator for the benchmarks in docs/benchmarks.md, driven by
//! scripts/bench-worker-throughput.sh and scripts/bench-rss.sh. It only talks Kafka (and
//! reads a worker's /metrics); starting and stopping the broker, the worker and the control
//! plane is left to the scripts so that every process has one owner that cleans it up.
//!
//! ```text
//! kg-bench throughput --bootstrap B --client C [--records N] [--window W] [--max-secs S]
//!                     [--metrics-url http://…/metrics]
//! kg-bench drain      --bootstrap B --client C --worker-pid P [--rounds R] [--round-records N]
//!                     [--metrics-url http://…/metrics]
//! kg-bench agents     --bootstrap B [--clients 1000] [--prefix bench-] [--interval-secs 30]
//!                     [--duration-secs 150]
//! kg-bench clients    --api http://host:port [--prefix bench-] [--workers 2]
//! kg-bench heartbeat-ingest --bootstrap B --api http://host:port --pid P [--clients 100]
//!                     [--heartbeats 100000] [--kind valid|garbage]
//! kg-bench heartbeat-ceiling [--clients 100] [--heartbeats 1000000]
//! kg-bench event-load --bootstrap B [--clients 20] [--prefix bounce-] [--rate 20]
//!                     [--duration-secs 600]
//! kg-bench audit      --bootstrap B --produced N [--clients 20] [--prefix bounce-]
//!                     [--idle-secs 30] [--max-secs 600]
//! kg-bench corrupt-batch --bootstrap B --topic T [--partition 0] [--records 3]
//! kg-bench churn      --bootstrap B [--clients 200] [--prefix soak-] [--every-secs 30]
//!                     [--duration-secs 3600]
//! kg-bench http-get   --url http://host:port/path
//! kg-bench event      --client C
//! ```
//!
//! `throughput` produces realistic ~1.3 KB Kubernetes Events keyed `<client>::event::<uid>` to
//! raw.k8s.events while a consumer of events.normalized (assigned to every partition, no
//! group) counts the worker's outputs for the client. The producer never runs more than
//! `--window` records ahead of the outputs seen, so the embedded broker (which keeps at most
//! 5 MiB per partition) never drops input the worker has not read yet. The rate is taken
//! from the first to the last output observed.
//!
//! `drain` isolates the worker from the load generator: it stops the worker with SIGSTOP,
//! pre-produces a round (kept under the broker's per-partition limit), resumes the worker
//! with SIGCONT and times the round's outputs from first to last.
//!
//! `agents` registers `--clients` clients on cluster.registry the way the Helm chart does
//! and heartbeats every one of them on cluster.heartbeat every `--interval-secs`.
//!
//! `heartbeat-ingest` times the control plane's ingest of a preloaded burst: it registers
//! `--clients` clients and waits for them, stops the control plane (`--pid`) with SIGSTOP,
//! produces `--heartbeats` heartbeats round-robin over the clients (or as many non-JSON
//! ones with `--kind garbage`), resumes it with SIGCONT and polls its counter
//! (`cp_heartbeats_total`, or `cp_heartbeats_rejected_total`) until the whole burst is
//! counted. `heartbeat-ceiling` is the in-process ceiling beside it: decoding the same
//! records and updating a map of the latest heartbeat per client, on one thread, no Kafka.
//!
//! `clients` summarizes the control plane's `GET /clients`, `http-get` prints a body (so
//! the scripts need neither curl nor jq), `event` prints one generated event and its size.
//!
//! Every subcommand ends with one `RESULT key=value …` line for the scripts.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use kg_tests::http::blocking_get;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Message, Timestamp};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::{ClientConfig, ClientContext, Offset, TopicPartitionList};

const RAW_EVENTS: &str = "raw.k8s.events";
const EVENTS_NORMALIZED: &str = "events.normalized";

/// What `throughput` produces and counts: the event normalizer's records, or the example
/// traffic pipeline's (`examples/pipelines/traffic-flatten.toml`).
#[derive(Clone, Copy)]
enum Workload {
    Events,
    Traffic,
}

impl Workload {
    fn from(options: &Options) -> Result<Self> {
        match options.opt("workload").unwrap_or("events") {
            "events" => Ok(Workload::Events),
            "traffic" => Ok(Workload::Traffic),
            other => bail!("--workload events|traffic, not {other:?}"),
        }
    }

    fn input(self) -> &'static str {
        match self {
            Workload::Events => RAW_EVENTS,
            Workload::Traffic => "traffic-raw",
        }
    }

    fn output(self) -> &'static str {
        match self {
            Workload::Events => EVENTS_NORMALIZED,
            Workload::Traffic => "traffic-events",
        }
    }

    /// Record `n` of `client`: key and value.
    fn record(self, client: &str, n: u64) -> (String, String) {
        match self {
            Workload::Events => raw_event(client, n),
            Workload::Traffic => traffic_reading(client, n),
        }
    }
}

/// A METR-LA reading as seed 004's sensors send it, nested, with a timestamp of now (so
/// it passes the pipeline's age check) and a distinct sensor per `n`. About 250 bytes.
fn traffic_reading(client: &str, n: u64) -> (String, String) {
    const HIGHWAYS: [&str; 4] = ["I-10", "I-405", "US-101", "SR-110"];
    const WEATHER: [&str; 3] = ["clear", "cloudy", "rain"];
    let value = format!(
        r#"{{"traffic_data":{{"speed_mph":{speed:.1},"volume_vehicles_per_hour":{volume}}},"location":{{"highway":"{highway}","direction":"{direction}","lanes":{lanes}}},"weather":{{"condition":"{weather}"}},"timestamp":{now}}}"#,
        speed = 20.0 + (n % 600) as f64 / 10.0,
        volume = 500 + n % 5000,
        highway = HIGHWAYS[(n % 4) as usize],
        direction = if n.is_multiple_of(2) { "E" } else { "W" },
        lanes = 2 + n % 5,
        weather = WEATHER[(n % 3) as usize],
        now = chrono::Utc::now().timestamp_millis(),
    );
    (format!("{client}::sensor-{n}"), value)
}
const REGISTRY: &str = "cluster.registry";
const HEARTBEAT: &str = "cluster.heartbeat";

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let command = args.next().unwrap_or_default();
    let options = Options::parse(args)?;
    match command.as_str() {
        "throughput" => throughput(&options),
        "drain" => drain(&options),
        "agents" => agents(&options),
        "http-get" => {
            let (code, body) = blocking_get(options.str("url")?)?;
            print!("{body}");
            if code != 200 {
                bail!("GET {} answered {code}", options.str("url")?);
            }
            Ok(())
        }
        "clients" => clients(&options),
        "heartbeat-ingest" => heartbeat_ingest(&options),
        "churn" => churn(&options),
        "event-load" => event_load(&options),
        "corrupt-batch" => {
            // One batch of garbage zstd with valid framing (tests/src/raw_kafka.rs), to see
            // what a broker does with it.
            let base = kg_tests::raw_kafka::produce_corrupt_batch(
                options.str("bootstrap")?,
                options.str("topic")?,
                options.num("partition", 0)? as i32,
                options.num("records", 3)? as i32,
            )?;
            println!("RESULT mode=corrupt-batch base_offset={base}");
            Ok(())
        }
        "audit" => audit(&options),
        "heartbeat-ceiling" => heartbeat_ceiling(&options),
        "attribution" => attribution(&options),
        "event" => {
            // Prints one generated record, to check its shape and size.
            let (key, value) = Workload::from(&options)?.record(options.str("client")?, 0);
            println!("{key}\n{value}\n{} bytes", value.len());
            Ok(())
        }
        _ => bail!("usage: kg-bench throughput|drain|agents|event|attribution …"),
    }
}

/// `--name value` pairs.
struct Options(HashMap<String, String>);

impl Options {
    fn parse(mut args: impl Iterator<Item = String>) -> Result<Self> {
        let mut map = HashMap::new();
        while let Some(flag) = args.next() {
            let name = flag
                .strip_prefix("--")
                .with_context(|| format!("expected --name, got {flag:?}"))?;
            let value = args
                .next()
                .with_context(|| format!("--{name} needs a value"))?;
            map.insert(name.to_string(), value);
        }
        Ok(Self(map))
    }

    fn str(&self, name: &str) -> Result<&str> {
        self.0
            .get(name)
            .map(String::as_str)
            .with_context(|| format!("--{name} is required"))
    }

    fn num(&self, name: &str, default: u64) -> Result<u64> {
        match self.0.get(name) {
            Some(raw) => raw.parse().with_context(|| format!("--{name} {raw:?}")),
            None => Ok(default),
        }
    }

    fn opt(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }
}

/// A realistic kubelet Event as the exporter sends it (the shape of the normalize bench's
/// event: involved object with labels and annotations), about 1.3 KB, with a distinct uid
/// per `n`. Key: `<client>::event::<uid>`.
fn raw_event(client: &str, n: u64) -> (String, String) {
    const REASONS: [(&str, &str, &str); 8] = [
        ("Scheduled", "Normal", "Successfully assigned shop/{pod} to ip-10-0-3-17.eu-west-1.compute.internal"),
        ("Pulling", "Normal", "Pulling image \"ghcr.io/acme/checkout-api:2.14.1\""),
        ("Pulled", "Normal", "Successfully pulled image \"ghcr.io/acme/checkout-api:2.14.1\" in 1.204s (1.204s including waiting)"),
        ("Started", "Normal", "Started container checkout-api"),
        ("Unhealthy", "Warning", "Readiness probe failed: HTTP probe failed with statuscode: 503"),
        ("OOMKilled", "Warning", "Container checkout-api in pod shop/{pod} was OOMKilled: memory limit 512Mi exceeded"),
        ("BackOff", "Warning", "Back-off restarting failed container checkout-api in pod shop/{pod}"),
        ("FailedScheduling", "Warning", "0/12 nodes are available: 3 Insufficient memory, 9 node(s) didn't match Pod's node affinity/selector."),
    ];
    let (reason, kind, message) = REASONS[(n % REASONS.len() as u64) as usize];
    let uid = format!(
        "5f2c9a7e-1b3d-4c8e-{:04x}-{:012x}",
        (n >> 48) & 0xffff,
        n & 0xffff_ffff_ffff
    );
    let pod = format!("checkout-api-7d9f8b6c5d-{:05x}", n % 0xfffff);
    let message = message.replace("{pod}", &pod);
    let value = format!(
        r#"{{"event_id":"evt-{uid}","kind":"Event","apiVersion":"v1","metadata":{{"name":"{pod}.17a3f2b1c9d8e7f6","namespace":"shop","uid":"{uid}","resourceVersion":"{rv}","creationTimestamp":"2025-10-28T08:31:00Z"}},"involvedObject":{{"kind":"Pod","namespace":"shop","name":"{pod}","uid":"b1e2c3d4-e5f6-4a7b-8c9d-{pod_uid:012x}","apiVersion":"v1","resourceVersion":"48213001","fieldPath":"spec.containers{{checkout-api}}","labels":{{"app":"checkout-api","app.kubernetes.io/name":"checkout","app.kubernetes.io/instance":"checkout-prod","app.kubernetes.io/version":"2.14.1","pod-template-hash":"7d9f8b6c5d","team":"payments"}},"annotations":{{"kubectl.kubernetes.io/restartedAt":"2025-10-27T22:10:04Z","prometheus.io/scrape":"true","prometheus.io/port":"9102"}}}},"reason":"{reason}","message":"{message}","source":{{"component":"kubelet","host":"ip-10-0-3-17.eu-west-1.compute.internal"}},"firstTimestamp":"2025-10-28T08:31:00Z","lastTimestamp":"2025-10-28T08:34:12Z","count":3,"type":"{kind}","eventTime":null,"reportingComponent":"kubelet","reportingInstance":"ip-10-0-3-17.eu-west-1.compute.internal"}}"#,
        message = message.replace('"', "\\\""),
        rv = 48_213_377 + n,
        pod_uid = n % 0xfffff,
    );
    (format!("{client}::event::{uid}"), value)
}

/// Counts failed deliveries; librdkafka retries transient errors itself.
struct Deliveries {
    acked: AtomicU64,
    failed: AtomicU64,
}

impl ClientContext for Deliveries {}

impl ProducerContext for Deliveries {
    type DeliveryOpaque = ();
    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        match result {
            Ok(_) => self.acked.fetch_add(1, Ordering::Relaxed),
            Err(_) => self.failed.fetch_add(1, Ordering::Relaxed),
        };
    }
}

fn producer(bootstrap: &str, compression: &str) -> Result<ThreadedProducer<Deliveries>> {
    Ok(ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("compression.type", compression)
        .set("linger.ms", "5")
        .set("log_level", "4")
        .create_with_context(Deliveries {
            acked: AtomicU64::new(0),
            failed: AtomicU64::new(0),
        })?)
}

/// Produces one record, waiting while librdkafka's queue is full.
fn produce(
    producer: &ThreadedProducer<Deliveries>,
    topic: &str,
    key: &str,
    value: &str,
) -> Result<()> {
    let mut record = BaseRecord::to(topic).key(key).payload(value);
    loop {
        match producer.send(record) {
            Ok(()) => return Ok(()),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                record = back;
                std::thread::sleep(Duration::from_millis(1));
            }
            Err((error, _)) => bail!("produce to {topic}: {error}"),
        }
    }
}

/// What the output consumer has seen of one client's normalized events.
#[derive(Default)]
struct Seen {
    unique: HashSet<String>,
    total: u64,
    first: Option<Instant>,
    last: Option<Instant>,
    /// Kafka timestamps (CreateTime, set by the worker's producer), ms.
    first_ts: Option<i64>,
    last_ts: Option<i64>,
}

impl Seen {
    fn rate(&self) -> f64 {
        match (self.first, self.last) {
            (Some(first), Some(last)) if last > first && self.unique.len() > 1 => {
                (self.unique.len() - 1) as f64 / (last - first).as_secs_f64()
            }
            _ => 0.0,
        }
    }

    fn span_secs(&self) -> f64 {
        match (self.first, self.last) {
            (Some(first), Some(last)) => (last - first).as_secs_f64(),
            _ => 0.0,
        }
    }

    fn ts_span_secs(&self) -> f64 {
        match (self.first_ts, self.last_ts) {
            (Some(first), Some(last)) => (last - first) as f64 / 1000.0,
            _ => 0.0,
        }
    }
}

/// How many partitions `topic` has.
fn partitions_of(consumer: &BaseConsumer, topic: &str) -> Result<i32> {
    let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10))?;
    let partitions = metadata
        .topics()
        .first()
        .map(|found| found.partitions().len())
        .unwrap_or(0);
    if partitions == 0 {
        bail!("{topic} has no partitions");
    }
    Ok(partitions as i32)
}

/// Assigns `consumer` every partition of `topic`, from the beginning.
fn assign_from_beginning(consumer: &BaseConsumer, topic: &str) -> Result<()> {
    let mut list = TopicPartitionList::new();
    for partition in 0..partitions_of(consumer, topic)? {
        list.add_partition_offset(topic, partition, Offset::Beginning)?;
    }
    consumer.assign(&list)?;
    Ok(())
}

/// A consumer of every partition of events.normalized from the beginning, no group, on
/// its own thread, counting records keyed `<client>::…`.
struct OutputCounter {
    seen: Arc<Mutex<Seen>>,
    unique: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl OutputCounter {
    fn start(bootstrap: &str, client: &str) -> Result<Self> {
        Self::start_on(bootstrap, client, EVENTS_NORMALIZED)
    }

    /// Counts the outputs on `topic`.
    fn start_on(bootstrap: &str, client: &str, topic: &str) -> Result<Self> {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", bootstrap)
            .set("group.id", "kg-bench-counter")
            .set("enable.auto.commit", "false")
            // See outputs as soon as they are acknowledged: no waiting on an empty fetch
            // or behind a full local queue.
            .set("fetch.wait.max.ms", "5")
            .set("fetch.error.backoff.ms", "5")
            .set("fetch.queue.backoff.ms", "5")
            .set("log_level", "4")
            .create()?;
        assign_from_beginning(&consumer, topic)?;
        let seen = Arc::new(Mutex::new(Seen::default()));
        let unique = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let prefix = format!("{client}::").into_bytes();
        let thread = {
            let (seen, unique, stop) = (seen.clone(), unique.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let Some(result) = consumer.poll(Duration::from_millis(100)) else {
                        continue;
                    };
                    let Ok(message) = result else { continue };
                    let key = message.key().unwrap_or_default();
                    if !key.starts_with(&prefix) {
                        continue;
                    }
                    let now = Instant::now();
                    let ts = match message.timestamp() {
                        Timestamp::CreateTime(ms) | Timestamp::LogAppendTime(ms) => Some(ms),
                        Timestamp::NotAvailable => None,
                    };
                    let mut seen = seen.lock().unwrap();
                    seen.total += 1;
                    if seen
                        .unique
                        .insert(String::from_utf8_lossy(key).into_owned())
                    {
                        unique.fetch_add(1, Ordering::Relaxed);
                    }
                    seen.first.get_or_insert(now);
                    seen.last = Some(now);
                    if let Some(ts) = ts {
                        seen.first_ts = Some(seen.first_ts.map_or(ts, |f| f.min(ts)));
                        seen.last_ts = Some(seen.last_ts.map_or(ts, |l| l.max(ts)));
                    }
                }
            })
        };
        Ok(Self {
            seen,
            unique,
            stop,
            thread: Some(thread),
        })
    }

    fn unique(&self) -> u64 {
        self.unique.load(Ordering::Relaxed)
    }

    /// Waits until `target` unique outputs are seen, or nothing new for `idle`, or
    /// `deadline`. Returns whether the target was reached.
    fn wait_for(&self, target: u64, idle: Duration, deadline: Instant) -> bool {
        let mut last_count = self.unique();
        let mut last_change = Instant::now();
        loop {
            let count = self.unique();
            if count >= target {
                return true;
            }
            if count != last_count {
                last_count = count;
                last_change = Instant::now();
            }
            if last_change.elapsed() >= idle || Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for OutputCounter {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The worker's counters that explain where time goes, summed over label sets.
#[derive(Clone, Copy, Default, Debug)]
struct WorkerCounters {
    records_in: f64,
    records_out: f64,
    batches: f64,
    produce_retries: f64,
}

fn worker_counters(url: Option<&str>) -> Option<WorkerCounters> {
    let (code, body) = blocking_get(url?).ok()?;
    if code != 200 {
        return None;
    }
    let value = |name: &str| -> f64 {
        body.lines()
            .filter(|line| !line.starts_with('#'))
            .filter(|line| {
                line.split(['{', ' '])
                    .next()
                    .is_some_and(|series| series == name)
            })
            .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    Some(WorkerCounters {
        records_in: value("worker_records_in_total"),
        records_out: value("worker_records_out_total"),
        batches: value("worker_batches_total"),
        produce_retries: value("worker_produce_retries_total"),
    })
}

fn counters_summary(before: Option<WorkerCounters>, after: Option<WorkerCounters>) -> String {
    match (before, after) {
        (Some(b), Some(a)) => {
            let batches = a.batches - b.batches;
            let out = a.records_out - b.records_out;
            format!(
                "worker_in={} worker_out={} worker_batches={} avg_batch={:.0} produce_retries={}",
                a.records_in - b.records_in,
                out,
                batches,
                if batches > 0.0 { out / batches } else { 0.0 },
                a.produce_retries - b.produce_retries
            )
        }
        _ => "worker_metrics=unavailable".into(),
    }
}

/// Closed-loop load: produce while the worker consumes, at most `window` records ahead of
/// the outputs seen.
fn throughput(options: &Options) -> Result<()> {
    let bootstrap = options.str("bootstrap")?;
    let client = options.str("client")?;
    let records = options.num("records", 300_000)?;
    let window = options.num("window", 12_000)?;
    let max_secs = options.num("max-secs", 120)?;
    let metrics_url = options.opt("metrics-url");
    let workload = Workload::from(options)?;

    let counter = OutputCounter::start_on(bootstrap, client, workload.output())?;
    let producer = producer(bootstrap, "lz4")?;
    let before = worker_counters(metrics_url);
    let started = Instant::now();
    let deadline = started + Duration::from_secs(max_secs);
    let mut next_report = started + Duration::from_secs(2);
    let mut produced = 0u64;
    let mut timed_out = false;
    while produced < records {
        if Instant::now() >= deadline {
            timed_out = true;
            break;
        }
        if produced >= counter.unique() + window {
            std::thread::sleep(Duration::from_micros(500));
        } else {
            let (key, value) = workload.record(client, produced);
            produce(&producer, workload.input(), &key, &value)?;
            produced += 1;
        }
        if Instant::now() >= next_report {
            next_report += Duration::from_secs(2);
            let seen = counter.seen.lock().unwrap();
            eprintln!(
                "  t={:>5.1}s produced={produced} acked={} outputs={} rate_so_far={:.0}/s",
                started.elapsed().as_secs_f64(),
                producer.context().acked.load(Ordering::Relaxed),
                seen.unique.len(),
                seen.rate()
            );
        }
    }
    let _ = producer.flush(Duration::from_secs(30));
    let complete = !timed_out
        && counter.wait_for(
            produced,
            Duration::from_secs(15),
            deadline + Duration::from_secs(30),
        );
    let after = worker_counters(metrics_url);
    let seen = counter.seen.lock().unwrap();
    let message_bytes = workload.record(client, 0).1.len();
    println!(
        "RESULT mode=throughput records={} outputs_total={} duplicates={} complete={complete} \
         first_to_last_secs={:.3} rate={:.0} ts_span_secs={:.3} ts_rate={:.0} produced={produced} \
         delivery_failures={} wall_secs={:.1} event_bytes={message_bytes} {}",
        seen.unique.len(),
        seen.total,
        seen.total - seen.unique.len() as u64,
        seen.span_secs(),
        seen.rate(),
        seen.ts_span_secs(),
        if seen.ts_span_secs() > 0.0 {
            (seen.unique.len() as f64 - 1.0) / seen.ts_span_secs()
        } else {
            0.0
        },
        producer.context().failed.load(Ordering::Relaxed),
        started.elapsed().as_secs_f64(),
        counters_summary(before, after),
    );
    Ok(())
}

/// Rounds of: SIGSTOP the worker, pre-produce, SIGCONT, time the outputs.
#[allow(clippy::too_many_lines)] // a benchmark's steps, in order
fn drain(options: &Options) -> Result<()> {
    let bootstrap = options.str("bootstrap")?;
    let client = options.str("client")?;
    let pid = Pid::from_raw(options.str("worker-pid")?.parse().context("--worker-pid")?);
    let rounds = options.num("rounds", 5)?;
    // 20,000 × ~1.3 KB over 6 partitions ≈ 4.3 MB per partition before lz4: under the mock
    // broker's 5 MiB limit.
    let round_records = options.num("round-records", 20_000)?;
    let metrics_url = options.opt("metrics-url");

    let counter = OutputCounter::start(bootstrap, client)?;
    let producer = producer(bootstrap, "lz4")?;
    let mut produced = 0u64;
    let mut rates: Vec<f64> = Vec::new();
    let mut ts_rates: Vec<f64> = Vec::new();
    let (mut total_records, mut total_secs) = (0u64, 0f64);
    for round in 1..=rounds {
        // The previous round is fully out, so the worker is idle: read its counters, then
        // freeze it while its input is written.
        let metrics_before = worker_counters(metrics_url);
        kill(pid, Signal::SIGSTOP).context("SIGSTOP the worker")?;
        let result = (|| -> Result<()> {
            for _ in 0..round_records {
                let (key, value) = raw_event(client, produced);
                produce(&producer, RAW_EVENTS, &key, &value)?;
                produced += 1;
            }
            producer.flush(Duration::from_secs(60))?;
            Ok(())
        })();
        let round_start_total = {
            let mut seen = counter.seen.lock().unwrap();
            seen.first = None;
            seen.last = None;
            seen.first_ts = None;
            seen.last_ts = None;
            seen.unique.len() as u64
        };
        kill(pid, Signal::SIGCONT).context("SIGCONT the worker")?;
        result?;
        let complete = counter.wait_for(
            round_start_total + round_records,
            Duration::from_secs(15),
            Instant::now() + Duration::from_secs(300),
        );
        let metrics_after = worker_counters(metrics_url);
        let seen = counter.seen.lock().unwrap();
        let outputs = seen.unique.len() as u64 - round_start_total;
        let span = seen.span_secs();
        let rate = if span > 0.0 {
            (outputs.saturating_sub(1)) as f64 / span
        } else {
            0.0
        };
        let ts_span = seen.ts_span_secs();
        let ts_rate = if ts_span > 0.0 {
            (outputs.saturating_sub(1)) as f64 / ts_span
        } else {
            0.0
        };
        eprintln!(
            "  round {round}: outputs={outputs} complete={complete} first_to_last_secs={span:.3} \
             rate={rate:.0}/s ts_span_secs={ts_span:.3} ts_rate={ts_rate:.0}/s {}",
            counters_summary(metrics_before, metrics_after)
        );
        rates.push(rate);
        ts_rates.push(ts_rate);
        total_records += outputs.saturating_sub(1);
        total_secs += span;
        if !complete {
            break;
        }
    }
    let seen = counter.seen.lock().unwrap();
    let median = |values: &[f64]| {
        let mut sorted = values.to_vec();
        sorted.sort_by(|a, b| a.total_cmp(b));
        sorted.get(sorted.len() / 2).copied().unwrap_or(0.0)
    };
    let list = |values: &[f64]| {
        values
            .iter()
            .map(|r| format!("{r:.0}"))
            .collect::<Vec<_>>()
            .join(",")
    };
    println!(
        "RESULT mode=drain rounds={} round_records={round_records} records={} duplicates={} \
         rate={:.0} median_round_rate={:.0} round_rates={} median_round_ts_rate={:.0} \
         round_ts_rates={} delivery_failures={}",
        rates.len(),
        seen.unique.len(),
        seen.total - seen.unique.len() as u64,
        if total_secs > 0.0 {
            total_records as f64 / total_secs
        } else {
            0.0
        },
        median(&rates),
        list(&rates),
        median(&ts_rates),
        list(&ts_rates),
        producer.context().failed.load(Ordering::Relaxed),
    );
    Ok(())
}

/// Summarizes the control plane's `GET /clients` for the clients named `<prefix>…`: how
/// many are registered, active, and have exactly the expected number of running workers.
fn clients(options: &Options) -> Result<()> {
    let api = options.str("api")?.trim_end_matches('/');
    let prefix = options.opt("prefix").unwrap_or("bench-");
    let workers = options.num("workers", 2)? as usize;
    let (code, body) = blocking_get(&format!("{api}/clients"))?;
    if code != 200 {
        bail!("GET {api}/clients answered {code}");
    }
    let all: Vec<serde_json::Value> = serde_json::from_str(&body).context("parse /clients")?;
    let ours: Vec<&serde_json::Value> = all
        .iter()
        .filter(|c| {
            c["client_id"]
                .as_str()
                .is_some_and(|id| id.starts_with(prefix))
        })
        .collect();
    let active = ours.iter().filter(|c| c["state"] == "active").count();
    let running = |c: &serde_json::Value| {
        c["workers"]
            .as_array()
            .map_or(0, |w| w.iter().filter(|w| w["state"] == "running").count())
    };
    let full = ours
        .iter()
        .filter(|c| c["state"] == "active" && running(c) == workers)
        .count();
    let running_total: usize = ours.iter().map(|c| running(c)).sum();
    println!(
        "RESULT mode=clients registered={} active={active} active_with_{workers}_running={full} \
         running_workers={running_total} body_bytes={}",
        ours.len(),
        body.len()
    );
    Ok(())
}

/// A heartbeat as the 2.1.x chart's CronJob sends it, for client `n` of `clients`.
fn bench_heartbeat(prefix: &str, n: u64, clients: u64) -> (String, String) {
    let id = format!("{prefix}{:04}", n % clients + 1);
    let value =
        format!(r#"{{"client_id":"{id}","timestamp":"2026-11-30T10:00:00Z","status":"healthy"}}"#);
    (id, value)
}

/// The sum of every series of a Prometheus family in a text exposition.
fn metric_sum(body: &str, family: &str) -> f64 {
    body.lines()
        .filter(|line| {
            line.strip_prefix(family)
                .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
        })
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Times the control plane's ingest of a preloaded burst of heartbeats.
#[allow(clippy::too_many_lines)] // a benchmark's steps, in order
fn heartbeat_ingest(options: &Options) -> Result<()> {
    let bootstrap = options.str("bootstrap")?;
    let api = options.str("api")?.trim_end_matches('/').to_string();
    let pid = Pid::from_raw(options.num("pid", 0)? as i32);
    let clients = options.num("clients", 100)?;
    let heartbeats = options.num("heartbeats", 100_000)?;
    let garbage = options.opt("kind") == Some("garbage");
    let prefix = "ingest-";
    let family = if garbage {
        "cp_heartbeats_rejected_total"
    } else {
        "cp_heartbeats_total"
    };
    let counter = || -> Result<f64> {
        let (code, body) = blocking_get(&format!("{api}/metrics"))?;
        if code != 200 {
            bail!("GET /metrics answered {code}");
        }
        Ok(metric_sum(&body, family))
    };
    let producer = producer(bootstrap, "lz4")?;
    for n in 1..=clients {
        let id = format!("{prefix}{n:04}");
        let registration = format!(
            r#"{{"client_id":"{id}","cluster_name":"bench","timestamp":"2026-11-30T10:00:00Z"}}"#
        );
        produce(&producer, REGISTRY, &id, &registration)?;
    }
    producer.flush(Duration::from_secs(30))?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, body) = blocking_get(&format!("{api}/clients?limit=1000"))?;
        let registered = serde_json::from_str::<Vec<serde_json::Value>>(&body)
            .map(|all| {
                all.iter()
                    .filter(|c| {
                        c["client_id"]
                            .as_str()
                            .is_some_and(|id| id.starts_with(prefix))
                    })
                    .count() as u64
            })
            .unwrap_or(0);
        if registered >= clients {
            break;
        }
        if Instant::now() > deadline {
            bail!("{registered} of {clients} clients registered after 60 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let before = counter()?;
    let dead_letters = || -> Result<f64> {
        let (_, body) = blocking_get(&format!("{api}/metrics"))?;
        Ok(metric_sum(&body, "cp_dead_letters_total"))
    };
    let dead_letters_before = dead_letters()?;
    kill(pid, Signal::SIGSTOP).context("SIGSTOP the control plane")?;
    let produced = (|| -> Result<()> {
        for n in 0..heartbeats {
            let (key, value) = bench_heartbeat(prefix, n, clients);
            let value = if garbage {
                format!("not json {n}")
            } else {
                value
            };
            produce(&producer, HEARTBEAT, &key, &value)?;
        }
        producer.flush(Duration::from_secs(60))?;
        Ok(())
    })();
    kill(pid, Signal::SIGCONT).context("SIGCONT the control plane")?;
    produced?;
    let started = Instant::now();
    let target = before + heartbeats as f64;
    let mut seen = before;
    while seen < target {
        if started.elapsed() > Duration::from_secs(300) {
            bail!("{} of {heartbeats} counted after 300 s", seen - before);
        }
        std::thread::sleep(Duration::from_millis(5));
        seen = counter()?;
    }
    let secs = started.elapsed().as_secs_f64();
    // A rejection counts only once its dead letter is durable: wait for the broker to
    // have acknowledged every one (counted in the producer's delivery callback).
    let mut delivered = String::new();
    if garbage {
        let target = dead_letters_before + heartbeats as f64;
        while dead_letters()? < target {
            if started.elapsed() > Duration::from_secs(300) {
                bail!(
                    "{} of {heartbeats} dead letters acknowledged after 300 s",
                    dead_letters()? - dead_letters_before
                );
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        delivered = format!(" dead_lettered_secs={:.3}", started.elapsed().as_secs_f64());
    }
    println!(
        "RESULT mode=heartbeat-ingest kind={} heartbeats={heartbeats} clients={clients} secs={secs:.3} per_sec={:.0}{delivered}",
        if garbage { "garbage" } else { "valid" },
        heartbeats as f64 / secs
    );
    Ok(())
}

/// The in-process ceiling of heartbeat ingest: decode and keep the latest per client.
fn heartbeat_ceiling(options: &Options) -> Result<()> {
    let clients = options.num("clients", 100)?;
    let heartbeats = options.num("heartbeats", 1_000_000)?;
    let records: Vec<(String, String)> = (0..heartbeats)
        .map(|n| bench_heartbeat("ingest-", n, clients))
        .collect();
    let mut latest: HashMap<kg_shared::ClientId, chrono::DateTime<chrono::Utc>> = HashMap::new();
    let now = chrono::Utc::now();
    let started = Instant::now();
    for (key, value) in &records {
        let heartbeat =
            kg_shared::heartbeat::decode_heartbeat(Some(key.as_bytes()), Some(value.as_bytes()))
                .map_err(|error| anyhow::anyhow!("{error}"))?;
        let entry = latest.entry(heartbeat.client_id).or_insert(now);
        *entry = (*entry).max(now);
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "RESULT mode=heartbeat-ceiling heartbeats={heartbeats} clients={} secs={secs:.3} per_sec={:.0}",
        latest.len(),
        heartbeats as f64 / secs
    );
    Ok(())
}

/// Steady event load for the bounce test: `--rate` raw events per second in all, round
/// robin over the clients, each with a distinct uid, until `--duration-secs`.
fn event_load(options: &Options) -> Result<()> {
    let bootstrap = options.str("bootstrap")?;
    let clients = options.num("clients", 20)?.max(1);
    let prefix = options.opt("prefix").unwrap_or("bounce-");
    let rate = options.num("rate", 20)?.max(1);
    let duration = Duration::from_secs(options.num("duration-secs", 600)?);
    let producer = producer(bootstrap, "lz4")?;
    let started = Instant::now();
    let mut n = 0u64;
    while started.elapsed() < duration {
        let due = started + Duration::from_secs_f64(n as f64 / rate as f64);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        let client = format!("{prefix}{:04}", n % clients + 1);
        let (key, value) = raw_event(&client, n);
        produce(&producer, RAW_EVENTS, &key, &value)?;
        n += 1;
    }
    producer.flush(Duration::from_secs(60))?;
    let context = producer.context();
    println!(
        "RESULT mode=event-load produced={n} acked={} delivery_failures={}",
        context.acked.load(Ordering::Relaxed),
        context.failed.load(Ordering::Relaxed)
    );
    Ok(())
}

/// Audits what the workers wrote for `event-load`'s events: reads events.normalized from
/// the beginning (every partition, no group) until nothing new for `--idle-secs`, and
/// counts per client the distinct outputs and the repeats, against what was produced.
fn audit(options: &Options) -> Result<()> {
    let bootstrap = options.str("bootstrap")?;
    let clients = options.num("clients", 20)?.max(1);
    let prefix = options.opt("prefix").unwrap_or("bounce-");
    let produced = options.num("produced", 0)?;
    let idle = Duration::from_secs(options.num("idle-secs", 30)?);
    let deadline = Instant::now() + Duration::from_secs(options.num("max-secs", 600)?);
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "kg-bench-audit")
        .set("enable.auto.commit", "false")
        .set("log_level", "4")
        .create()?;
    assign_from_beginning(&consumer, EVENTS_NORMALIZED)?;
    let mut unique: HashMap<String, HashSet<String>> = HashMap::new();
    let mut total: HashMap<String, u64> = HashMap::new();
    let mut last_new = Instant::now();
    let expected_total = produced;
    // Read until every event is seen (or nothing new for `idle`); then on to the end the
    // topic has at that moment, so repeats written after an event's first copy count too.
    let mut ends: Option<HashMap<i32, i64>> = None;
    let mut next: HashMap<i32, i64> = HashMap::new();
    while Instant::now() < deadline {
        if ends.is_none() {
            let seen: u64 = unique.values().map(|keys| keys.len() as u64).sum();
            if seen >= expected_total || last_new.elapsed() >= idle {
                let mut found = HashMap::new();
                for partition in 0..partitions_of(&consumer, EVENTS_NORMALIZED)? {
                    let (_, high) = consumer.fetch_watermarks(
                        EVENTS_NORMALIZED,
                        partition,
                        Duration::from_secs(10),
                    )?;
                    found.insert(partition, high);
                }
                ends = Some(found);
            }
        }
        if let Some(ends) = &ends {
            if ends
                .iter()
                .all(|(partition, high)| next.get(partition).copied().unwrap_or(0) >= *high)
            {
                break;
            }
        }
        let Some(Ok(message)) = consumer.poll(Duration::from_millis(200)) else {
            continue;
        };
        next.insert(message.partition(), message.offset() + 1);
        let key = String::from_utf8_lossy(message.key().unwrap_or_default()).into_owned();
        let Some((client, _)) = key.split_once("::") else {
            continue;
        };
        if !client.starts_with(prefix) {
            continue;
        }
        *total.entry(client.to_string()).or_default() += 1;
        if unique
            .entry(client.to_string())
            .or_default()
            .insert(key.clone())
        {
            last_new = Instant::now();
        }
    }
    let mut lost = 0u64;
    let mut duplicates = 0u64;
    for c in 1..=clients {
        let client = format!("{prefix}{c:04}");
        let expected = produced / clients + u64::from(c <= produced % clients);
        let got = unique.get(&client).map_or(0, |keys| keys.len() as u64);
        let repeats = total.get(&client).copied().unwrap_or(0).saturating_sub(got);
        lost += expected.saturating_sub(got);
        duplicates += repeats;
        if got < expected {
            eprintln!("  {client}: {got} of {expected} ({} lost)", expected - got);
        }
    }
    println!("RESULT mode=audit produced={produced} lost={lost} duplicates={duplicates}");
    Ok(())
}

/// Steady churn for the soak: every `--every-secs` one client (round robin) deregisters
/// (a tombstone) and registers again a second later; every second one garbage heartbeat.
fn churn(options: &Options) -> Result<()> {
    let bootstrap = options.str("bootstrap")?;
    let clients = options.num("clients", 200)?.max(1);
    let prefix = options.opt("prefix").unwrap_or("soak-");
    let every = Duration::from_secs(options.num("every-secs", 30)?.max(2));
    let duration = Duration::from_secs(options.num("duration-secs", 3600)?);
    let producer = producer(bootstrap, "none")?;
    let started = Instant::now();
    let mut next_churn = started + every;
    let mut turn = 0u64;
    let mut churned = 0u64;
    let mut garbage = 0u64;
    while started.elapsed() < duration {
        produce(
            &producer,
            HEARTBEAT,
            "garbage",
            &format!("not json {garbage}"),
        )?;
        garbage += 1;
        if Instant::now() >= next_churn {
            let id = format!("{prefix}{:04}", turn % clients + 1);
            turn += 1;
            producer
                .send(BaseRecord::<str, str>::to(REGISTRY).key(&id))
                .map_err(|(error, _)| anyhow::anyhow!("tombstone {id}: {error}"))?;
            producer.flush(Duration::from_secs(30))?;
            std::thread::sleep(Duration::from_secs(1));
            let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
            produce(
                &producer,
                REGISTRY,
                &id,
                &format!(r#"{{"client_id":"{id}","cluster_name":"soak","timestamp":"{now}"}}"#),
            )?;
            churned += 1;
            next_churn += every;
        }
        producer.flush(Duration::from_secs(30))?;
        std::thread::sleep(Duration::from_secs(1));
    }
    println!("RESULT mode=churn churned={churned} garbage={garbage}");
    Ok(())
}

/// Registers clients like the chart and heartbeats them all every interval.
fn agents(options: &Options) -> Result<()> {
    let bootstrap = options.str("bootstrap")?;
    let clients = options.num("clients", 1000)?;
    let prefix = options.opt("prefix").unwrap_or("bench-");
    let interval = Duration::from_secs(options.num("interval-secs", 30)?);
    let duration = Duration::from_secs(options.num("duration-secs", 150)?);
    let ids: Vec<String> = (1..=clients).map(|n| format!("{prefix}{n:04}")).collect();
    let producer = producer(bootstrap, "none")?;
    let started = Instant::now();

    for id in &ids {
        let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        let registration = format!(
            r#"{{"client_id":"{id}","cluster_name":"prod-eu","region":"unknown","timestamp":"{now}","chart_version":"2.1.2"}}"#
        );
        produce(&producer, REGISTRY, id, &registration)?;
    }
    producer.flush(Duration::from_secs(30))?;
    eprintln!(
        "  registered {} clients in {:.1}s",
        ids.len(),
        started.elapsed().as_secs_f64()
    );

    let mut rounds = 0u64;
    let mut next = Instant::now();
    while started.elapsed() < duration {
        if Instant::now() >= next {
            let round_start = Instant::now();
            for id in &ids {
                let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
                produce(
                    &producer,
                    HEARTBEAT,
                    id,
                    &format!(r#"{{"client_id":"{id}","timestamp":"{now}"}}"#),
                )?;
            }
            producer.flush(Duration::from_secs(30))?;
            rounds += 1;
            eprintln!(
                "  t={:>5.1}s heartbeat round {rounds}: {} clients in {:.2}s",
                started.elapsed().as_secs_f64(),
                ids.len(),
                round_start.elapsed().as_secs_f64()
            );
            next += interval;
        }
        std::thread::sleep(
            Duration::from_millis(200).min(duration.saturating_sub(started.elapsed())),
        );
    }
    let context = producer.context();
    println!(
        "RESULT mode=agents clients={} heartbeat_rounds={rounds} acked={} delivery_failures={}",
        ids.len(),
        context.acked.load(Ordering::Relaxed),
        context.failed.load(Ordering::Relaxed)
    );
    Ok(())
}

/// `kg-bench attribution [--clients 1000] [--resources 100] [--events 200000]`: the event
/// attributor's costs without Kafka. Memory: the owner index built from
/// `<clients> × <resources>` state keys (RSS before and after, and the index alone by
/// allocation-free arithmetic is not possible, so RSS it is). Time per untagged record:
/// `attribute()` (parse the few fields, look the object up, build the new key), against
/// a baseline measured in the same run on the same records: one full `serde_json::Value`
/// parse, the least any consumer of the record pays.
fn attribution(options: &Options) -> Result<()> {
    use kg_shared::attribution::{attribute, Attribution, OwnerIndex};
    use kg_shared::exposition::ProcessSample;
    let clients = options.num("clients", 1000)? as usize;
    let resources = options.num("resources", 100)? as usize;
    let events = options.num("events", 200_000)? as usize;
    let uid =
        |client: usize, resource: usize| format!("{client:08x}-0000-4000-8000-{resource:012x}");
    let rss = || ProcessSample::read().map_or(0, |s| s.resident_memory_bytes);
    let before = rss();
    let mut index = OwnerIndex::default();
    let started = Instant::now();
    for client in 0..clients {
        let id = format!("client-{client}");
        for resource in 0..resources {
            let key = format!("{id}::pod:{}", uid(client, resource));
            let value = format!(
                r#"{{"op":"UPSERT","client_id":"{id}","kind":"Pod","uid":"{}","namespace":"default","name":"api-{resource}"}}"#,
                uid(client, resource)
            );
            index.apply_resource(Some(key.as_bytes()), Some(value.as_bytes()));
        }
    }
    let build_secs = started.elapsed().as_secs_f64();
    let after = rss();
    let records: Vec<(String, String)> = (0..events.min(20_000))
        .map(|n| {
            let (client, resource) = (n % clients, n % resources);
            let event_uid = format!("ev-{n}");
            let (_, value) = raw_event("unused", n as u64);
            // The bench event with its involved object's uid set to a reported pod's.
            let at = value
                .find("b1e2c3d4-")
                .expect("the bench event's object uid");
            let value = format!(
                "{}{}{}",
                &value[..at],
                uid(client, resource),
                &value[at + 36..]
            );
            (event_uid, value)
        })
        .collect();
    let mut attributed = 0usize;
    let started = Instant::now();
    for n in 0..events {
        let (key, value) = &records[n % records.len()];
        if let Attribution::To { .. } = attribute(&index, Some(key.as_bytes()), value.as_bytes()) {
            attributed += 1;
        }
    }
    let attribute_ns = started.elapsed().as_nanos() as f64 / events as f64;
    let started = Instant::now();
    let mut parsed = 0usize;
    for n in 0..events {
        let (_, value) = &records[n % records.len()];
        if serde_json::from_slice::<serde_json::Value>(value.as_bytes()).is_ok() {
            parsed += 1;
        }
    }
    let baseline_ns = started.elapsed().as_nanos() as f64 / events as f64;
    println!(
        "RESULT mode=attribution clients={clients} resources_per_client={resources} objects={} index_build_secs={build_secs:.3} rss_before_mib={:.1} rss_after_mib={:.1} index_rss_mib={:.1} bytes_per_object={:.0} events={events} attributed={attributed} attribute_ns_per_record={attribute_ns:.0} baseline_full_parse_ns_per_record={baseline_ns:.0} ratio_to_baseline={:.2} event_bytes={} parsed={parsed}",
        index.len(),
        before as f64 / 1048576.0,
        after as f64 / 1048576.0,
        (after - before) as f64 / 1048576.0,
        (after - before) as f64 / index.len().max(1) as f64,
        attribute_ns / baseline_ns,
        records[0].1.len(),
    );
    Ok(())
}
