//! Throughput of the pure normalizers: parse → map → serialize, one record per iteration.
//!
//! `cargo bench -p worker --bench normalize -- --warm-up-time 1 --measurement-time 5`
//! The target is at least 250,000 events/s on one core for the ~1 KB Event below.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use kg_shared::ClientId;
use worker::roles::event_normalizer::normalize::normalize_event;
use worker::roles::log_normalizer::normalize::normalize_log;
use worker::roles::normalize_common::to_json;

/// A realistic kubelet Event as the exporter sends it, with the involved object's labels
/// and annotations: about 1 KB.
const EVENT: &str = r#"{"event_id":"evt-5f2c9a7e-1b3d-4c8e-9f0a-2d6b8e4c1a73","kind":"Event","apiVersion":"v1","metadata":{"name":"checkout-api-7d9f8b6c5d-x2k4p.17a3f2b1c9d8e7f6","namespace":"shop","uid":"5f2c9a7e-1b3d-4c8e-9f0a-2d6b8e4c1a73","resourceVersion":"48213377","creationTimestamp":"2025-10-28T08:31:00Z"},"involvedObject":{"kind":"Pod","namespace":"shop","name":"checkout-api-7d9f8b6c5d-x2k4p","uid":"b1e2c3d4-e5f6-4a7b-8c9d-0e1f2a3b4c5d","apiVersion":"v1","resourceVersion":"48213001","fieldPath":"spec.containers{checkout-api}","labels":{"app":"checkout-api","app.kubernetes.io/name":"checkout","app.kubernetes.io/instance":"checkout-prod","app.kubernetes.io/version":"2.14.1","pod-template-hash":"7d9f8b6c5d","team":"payments"},"annotations":{"kubectl.kubernetes.io/restartedAt":"2025-10-27T22:10:04Z","prometheus.io/scrape":"true","prometheus.io/port":"9102"}},"reason":"OOMKilled","message":"Container checkout-api in pod shop/checkout-api-7d9f8b6c5d-x2k4p was OOMKilled: memory limit 512Mi exceeded","source":{"component":"kubelet","host":"ip-10-0-3-17.eu-west-1.compute.internal"},"firstTimestamp":"2025-10-28T08:31:00Z","lastTimestamp":"2025-10-28T08:34:12Z","count":3,"type":"Warning","eventTime":null,"reportingComponent":"kubelet","reportingInstance":"ip-10-0-3-17.eu-west-1.compute.internal"}"#;

/// Vector's raw `kubernetes_logs` event for one error line.
const LOG: &str = r#"{"file":"/var/log/pods/shop_checkout-api-7d9f8b6c5d-x2k4p_b1e2c3d4-e5f6-4a7b-8c9d-0e1f2a3b4c5d/checkout-api/0.log","kubernetes":{"container_id":"containerd://8c1f0e7d6b5a","container_image":"ghcr.io/acme/checkout-api:2.14.1","container_name":"checkout-api","namespace_labels":{"kubernetes.io/metadata.name":"shop"},"pod_ip":"10.0.3.45","pod_labels":{"app":"checkout-api","pod-template-hash":"7d9f8b6c5d"},"pod_name":"checkout-api-7d9f8b6c5d-x2k4p","pod_namespace":"shop","pod_node_name":"ip-10-0-3-17.eu-west-1.compute.internal","pod_owner":"ReplicaSet/checkout-api-7d9f8b6c5d","pod_uid":"b1e2c3d4-e5f6-4a7b-8c9d-0e1f2a3b4c5d"},"message":"2025-10-28T08:31:02.114Z WARN  [http-nio-8080-exec-7] c.a.checkout.PaymentClient - payment gateway call failed after 3 retries: dial tcp 10.0.7.12:443: connect: connection refused","source_type":"kubernetes_logs","stream":"stderr","timestamp":"2025-10-28T08:31:02.114532871Z"}"#;

fn bench(c: &mut Criterion) {
    let client = ClientId::parse("af-9").expect("valid client id");
    assert!(EVENT.len() >= 1000, "the event is {} bytes", EVENT.len());
    normalize_event(&client, EVENT.as_bytes()).expect("the bench event normalizes");
    normalize_log(&client, LOG.as_bytes()).expect("the bench log normalizes");

    let mut group = c.benchmark_group("normalize");
    group.throughput(Throughput::Elements(1));
    group.bench_function("event_parse_map_serialize", |b| {
        b.iter(|| {
            let e = normalize_event(&client, black_box(EVENT.as_bytes())).unwrap();
            black_box(to_json(&e))
        })
    });
    group.bench_function("event_parse_map", |b| {
        b.iter(|| normalize_event(&client, black_box(EVENT.as_bytes())).unwrap())
    });
    group.bench_function("log_parse_map_serialize", |b| {
        b.iter(|| {
            let l = normalize_log(&client, black_box(LOG.as_bytes())).unwrap();
            black_box(to_json(&l))
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
