//! The event normalizer's tests: Events as `raw.k8s.events` carries them, through
//! [`normalize_event`], to what `events.normalized` carries. They pin the decisions listed
//! in `normalize.rs`.

use kg_shared::records::{EventTypeAbstract, NormalizedEvent, Severity, Subject};
use kg_shared::ClientId;
use proptest::prelude::*;
use xxhash_rust::xxh3::Xxh3;

use super::normalize::*;
use crate::roles::normalize_common::{to_json, NormalizeError};

/// The example of protocol.md, key `test-client-001::event::test-123`.
const PROTOCOL_EXAMPLE: &str = r#"{"event_id":"evt-test-123","reason":"OOMKilled","message":"Container killed: out of memory","type":"Warning",
 "metadata":{"uid":"test-123","creationTimestamp":"2025-10-28T08:31:00Z"},
 "involvedObject":{"kind":"Pod","name":"api-7d9f","namespace":"default","uid":"b1e2…"},
 "source":{"host":"node-1"},"lastTimestamp":"2025-10-28T08:31:00Z","count":3}"#;

/// The original system's test event.
const ORIGINAL_TEST_EVENT: &str = r#"{
        "metadata": {"uid": "orig-uid-1", "namespace": "default", "creationTimestamp": "2025-10-28T08:00:00Z"},
        "reason": "OOMKilled",
        "message": "Container test-container in pod test-pod was OOMKilled",
        "type": "Warning",
        "involvedObject": {"kind": "Pod", "name": "test-pod", "namespace": "default"},
        "source": {"component": "kubelet", "host": "worker-1"},
        "firstTimestamp": "2025-10-28T08:00:00Z",
        "lastTimestamp": "2025-10-28T08:00:05Z",
        "count": 1
    }"#;

fn client() -> ClientId {
    ClientId::parse("test-client-001").unwrap()
}

fn normalize(raw: &str) -> Result<NormalizedEvent, NormalizeError> {
    normalize_event(&client(), raw.as_bytes())
}

fn with(base: &str, edit: impl FnOnce(&mut serde_json::Value)) -> String {
    let mut v: serde_json::Value = serde_json::from_str(base).unwrap();
    edit(&mut v);
    v.to_string()
}

#[test]
fn oom_killed_event_maps_to_memory_oom() {
    let e = normalize(PROTOCOL_EXAMPLE).unwrap();
    assert_eq!(e.event_type_abstract, EventTypeAbstract::MemoryOom);
    assert_eq!(e.reason.as_deref(), Some("OOMKilled"));
    assert_eq!(
        e.message.as_deref(),
        Some("Container killed: out of memory")
    );
    assert_eq!(e.severity, Severity::Warning);
    let orig = normalize(ORIGINAL_TEST_EVENT).unwrap();
    assert_eq!(orig.event_type_abstract, EventTypeAbstract::MemoryOom);
    assert_eq!(orig.pod_name.as_deref(), Some("test-pod"));
}

#[test]
fn protocol_example_fills_both_field_sets() {
    let e = normalize(PROTOCOL_EXAMPLE).unwrap();
    assert_eq!(e.client_id, client());
    assert_eq!(e.raw_event_id, "evt-test-123");
    assert_eq!(e.namespace.as_deref(), Some("default"));
    assert_eq!(e.pod_name.as_deref(), Some("api-7d9f"));
    assert_eq!(e.node.as_deref(), Some("node-1"));
    assert_eq!(e.service, None);
    assert_eq!(e.involved_object_kind.as_deref(), Some("Pod"));
    assert_eq!(e.involved_object_name.as_deref(), Some("api-7d9f"));
    assert_eq!(e.count, Some(3));
    let t = "2025-10-28T08:31:00Z".parse().unwrap();
    assert_eq!(e.timestamp, Some(t));
    assert_eq!(e.event_time, Some(t));
    assert_eq!(e.etype, kg_shared::records::Etype::K8sEvent);
    assert_eq!(
        e.subject,
        Subject {
            kind: Some("Pod".into()),
            uid: Some("b1e2…".into()),
            ns: Some("default".into()),
            name: Some("api-7d9f".into()),
        }
    );
    assert_eq!(e.output_key(), format!("test-client-001::{}", e.event_id));

    let json: serde_json::Value = serde_json::from_slice(&to_json(&e)).unwrap();
    assert_eq!(json["etype"], "k8s.event");
    assert_eq!(json["severity"], "WARNING");
    assert_eq!(json["event_type_abstract"], "MEMORY_OOM");
    assert_eq!(json["timestamp"], "2025-10-28T08:31:00Z");
    assert_eq!(json["event_time"], "2025-10-28T08:31:00Z");
    assert_eq!(json["subject"]["uid"], "b1e2…");
    assert_eq!(json["client_id"], "test-client-001");
}

#[test]
fn event_id_recipe_is_pinned() {
    // Changing this value splits stored events from their repeats: don't.
    let e = normalize(PROTOCOL_EXAMPLE).unwrap();
    let mut h = Xxh3::new();
    h.update(&8u64.to_le_bytes());
    h.update(b"test-123");
    h.update(b"T");
    h.update(&1_761_640_260i64.to_le_bytes());
    h.update(&0u32.to_le_bytes());
    assert_eq!(e.event_id, format!("evt-{:016x}", h.digest()));
    assert_eq!(e.event_id, "evt-668cc78ddec9f057");
}

#[test]
fn repeats_of_one_event_collapse_to_one_event_id() {
    let first = normalize(ORIGINAL_TEST_EVENT).unwrap();
    let repeat = normalize(&with(ORIGINAL_TEST_EVENT, |v| {
        v["count"] = 7.into();
        v["lastTimestamp"] = "2025-10-28T08:09:00Z".into();
        v["message"] = "Container test-container in pod test-pod was OOMKilled again".into();
    }))
    .unwrap();
    assert_eq!(first.event_id, repeat.event_id);
    assert_ne!(first.timestamp, repeat.timestamp);
    // The creation time's spelling does not matter, only its instant.
    let respelled = normalize(&with(ORIGINAL_TEST_EVENT, |v| {
        v["metadata"]["creationTimestamp"] = "2025-10-28T10:00:00+02:00".into();
    }))
    .unwrap();
    assert_eq!(first.event_id, respelled.event_id);
}

#[test]
fn distinct_events_get_distinct_event_ids() {
    let a = normalize(ORIGINAL_TEST_EVENT).unwrap();
    let other_uid = normalize(&with(ORIGINAL_TEST_EVENT, |v| {
        v["metadata"]["uid"] = "orig-uid-2".into();
    }))
    .unwrap();
    let other_creation = normalize(&with(ORIGINAL_TEST_EVENT, |v| {
        v["metadata"]["creationTimestamp"] = "2025-10-28T08:00:01Z".into();
    }))
    .unwrap();
    assert_ne!(a.event_id, other_uid.event_id);
    assert_ne!(a.event_id, other_creation.event_id);
    assert!(a.event_id.starts_with("evt-") && a.event_id.len() == 20);
}

#[test]
fn raw_event_id_falls_back_to_the_uid() {
    let e = normalize(ORIGINAL_TEST_EVENT).unwrap();
    assert_eq!(e.raw_event_id, "orig-uid-1");
}

#[test]
fn event_id_alone_identifies_an_event_without_uid() {
    let e = normalize(&with(PROTOCOL_EXAMPLE, |v| {
        v["metadata"].as_object_mut().unwrap().remove("uid");
    }))
    .unwrap();
    assert_eq!(e.raw_event_id, "evt-test-123");
    assert!(e.event_id.starts_with("evt-"));
}

#[test]
fn event_without_uid_or_event_id_is_rejected() {
    let raw = with(ORIGINAL_TEST_EVENT, |v| {
        v["metadata"]["uid"] = "".into();
    });
    let err = normalize(&raw).unwrap_err();
    assert_eq!(err.reason_code(), "missing_field");
    assert!(err.to_string().contains("metadata.uid"), "{err}");
}

#[test]
fn event_without_reason_and_message_is_rejected() {
    let raw = with(PROTOCOL_EXAMPLE, |v| {
        let o = v.as_object_mut().unwrap();
        o.remove("reason");
        o.insert("message".into(), serde_json::Value::Null);
    });
    let err = normalize(&raw).unwrap_err();
    assert_eq!(err.reason_code(), "missing_field");
    assert_eq!(err.to_string(), "record is missing both reason and message");
}

#[test]
fn event_with_only_a_message_is_custom() {
    let e = normalize(&with(PROTOCOL_EXAMPLE, |v| {
        v.as_object_mut().unwrap().remove("reason");
    }))
    .unwrap();
    assert_eq!(e.reason, None);
    assert_eq!(e.event_type_abstract, EventTypeAbstract::Custom);
}

#[test]
fn malformed_inputs_are_rejected_with_their_reason() {
    for (raw, code) in [
        ("", "empty"),
        ("{not json", "not_json"),
        ("[1,2,3]", "not_an_object"),
        ("\"OOMKilled\"", "not_an_object"),
        (
            r#"{"reason": 5, "metadata": {"uid": "x"}}"#,
            "invalid_shape",
        ),
        (r#"{"reason": "X", "metadata": "uid"}"#, "invalid_shape"),
    ] {
        let err = normalize(raw).unwrap_err();
        assert_eq!(err.reason_code(), code, "{raw}: {err}");
    }
}

#[test]
fn body_naming_another_tenant_is_rejected() {
    let raw = with(PROTOCOL_EXAMPLE, |v| v["client_id"] = "af-9".into());
    assert_eq!(
        normalize(&raw).unwrap_err().reason_code(),
        "tenant_mismatch"
    );
    let own = with(PROTOCOL_EXAMPLE, |v| {
        v["client_id"] = "test-client-001".into()
    });
    assert!(normalize(&own).is_ok());
}

#[test]
fn pod_name_only_set_for_pod_objects() {
    let deployment = normalize(&with(PROTOCOL_EXAMPLE, |v| {
        v["involvedObject"]["kind"] = "Deployment".into();
    }))
    .unwrap();
    assert_eq!(deployment.pod_name, None);
    assert_eq!(deployment.involved_object_name.as_deref(), Some("api-7d9f"));
    assert_eq!(deployment.subject.kind.as_deref(), Some("Deployment"));
    let pod = normalize(PROTOCOL_EXAMPLE).unwrap();
    assert_eq!(pod.pod_name.as_deref(), Some("api-7d9f"));
    let json: serde_json::Value = serde_json::from_slice(&to_json(&deployment)).unwrap();
    assert!(json.get("pod_name").is_none());
}

#[test]
fn missing_involved_object_leaves_its_fields_absent() {
    let e = normalize(&with(ORIGINAL_TEST_EVENT, |v| {
        v.as_object_mut().unwrap().remove("involvedObject");
    }))
    .unwrap();
    assert_eq!(e.pod_name, None);
    assert_eq!(e.involved_object_kind, None);
    assert_eq!(e.involved_object_name, None);
    assert_eq!(e.subject.kind, None);
    // The Event's own namespace stands in.
    assert_eq!(e.namespace.as_deref(), Some("default"));
    assert_eq!(e.subject.ns.as_deref(), Some("default"));

    let partial = normalize(&with(ORIGINAL_TEST_EVENT, |v| {
        v["involvedObject"] = serde_json::json!({"name": "x"});
    }))
    .unwrap();
    assert_eq!(partial.involved_object_name.as_deref(), Some("x"));
    assert_eq!(partial.pod_name, None);
}

#[test]
fn time_prefers_last_then_event_then_first_then_creation() {
    let base = serde_json::json!({
        "reason": "Started", "metadata": {"uid": "u", "creationTimestamp": "2025-01-01T00:00:04Z"},
        "lastTimestamp": "2025-01-01T00:00:01Z", "eventTime": "2025-01-01T00:00:02.123456Z",
        "firstTimestamp": "2025-01-01T00:00:03Z"
    })
    .to_string();
    let time = |raw: &str| normalize(raw).unwrap().timestamp.map(|t| t.to_rfc3339());
    assert_eq!(time(&base).as_deref(), Some("2025-01-01T00:00:01+00:00"));
    let no_last = with(&base, |v| v["lastTimestamp"] = serde_json::Value::Null);
    assert_eq!(
        time(&no_last).as_deref(),
        Some("2025-01-01T00:00:02.123456+00:00")
    );
    let no_event = with(&no_last, |v| v["eventTime"] = "0001-01-01T00:00:00Z".into());
    assert_eq!(
        time(&no_event).as_deref(),
        Some("2025-01-01T00:00:03+00:00")
    );
    let no_first = with(&no_event, |v| v["firstTimestamp"] = "".into());
    assert_eq!(
        time(&no_first).as_deref(),
        Some("2025-01-01T00:00:04+00:00")
    );
    let none = with(&no_first, |v| {
        v["metadata"]["creationTimestamp"] = "soon".into()
    });
    assert_eq!(time(&none), None);
    let e = normalize(&none).unwrap();
    assert_eq!(e.event_time, None);
    let json: serde_json::Value = serde_json::from_slice(&to_json(&e)).unwrap();
    assert!(json.get("timestamp").is_none() && json.get("event_time").is_none());
}

#[test]
fn severity_follows_the_event_type() {
    assert_eq!(event_severity(Some("Normal")), Severity::Info);
    assert_eq!(event_severity(Some("Warning")), Severity::Warning);
    assert_eq!(event_severity(Some("Error")), Severity::Error);
    assert_eq!(event_severity(Some("Critical")), Severity::Fatal);
    assert_eq!(event_severity(Some("Strange")), Severity::Info);
    assert_eq!(event_severity(None), Severity::Info);
    let normal = normalize(&with(PROTOCOL_EXAMPLE, |v| v["type"] = "Normal".into()));
    assert_eq!(normal.unwrap().severity, Severity::Info);
}

#[test]
fn service_comes_from_a_service_object_or_app_labels() {
    let svc = normalize(&with(PROTOCOL_EXAMPLE, |v| {
        v["reason"] = "FailedDiscovery".into();
        v["involvedObject"]["kind"] = "Service".into();
        v["involvedObject"]["name"] = "checkout".into();
    }))
    .unwrap();
    assert_eq!(svc.service.as_deref(), Some("checkout"));
    assert_eq!(
        svc.event_type_abstract,
        EventTypeAbstract::ServiceDiscoveryFailed
    );

    let labelled = |labels: serde_json::Value| {
        normalize(&with(PROTOCOL_EXAMPLE, |v| {
            v["involvedObject"]["labels"] = labels
        }))
        .unwrap()
        .service
    };
    assert_eq!(
        labelled(serde_json::json!({"app": "api", "app.kubernetes.io/name": "api-svc"})),
        Some("api-svc".into())
    );
    assert_eq!(
        labelled(serde_json::json!({"app": "api"})),
        Some("api".into())
    );
    assert_eq!(
        labelled(serde_json::json!({"k8s-app": "kube-dns"})),
        Some("kube-dns".into())
    );
    assert_eq!(labelled(serde_json::json!({"tier": "web"})), None);
}

#[test]
fn node_comes_from_source_host_or_a_node_object() {
    let e = normalize(&with(PROTOCOL_EXAMPLE, |v| {
        v.as_object_mut().unwrap().remove("source");
        v["reason"] = "NodeNotReady".into();
        v["involvedObject"] = serde_json::json!({"kind": "Node", "name": "node-7"});
    }))
    .unwrap();
    assert_eq!(e.node.as_deref(), Some("node-7"));
    assert_eq!(e.namespace, None);
    assert_eq!(e.event_type_abstract, EventTypeAbstract::NodeNotReady);
}

#[test]
fn events_k8s_io_spellings_are_read() {
    let raw = serde_json::json!({
        "metadata": {"uid": "u-1", "namespace": "ns", "creationTimestamp": "2025-01-01T00:00:00Z"},
        "reason": "BackOff", "note": "Back-off restarting failed container",
        "regarding": {"kind": "Pod", "name": "p", "namespace": "ns", "uid": "pu"},
        "deprecatedSource": {"host": "n1"}, "deprecatedCount": 4, "type": "Warning"
    })
    .to_string();
    let e = normalize(&raw).unwrap();
    assert_eq!(
        e.message.as_deref(),
        Some("Back-off restarting failed container")
    );
    assert_eq!(e.pod_name.as_deref(), Some("p"));
    assert_eq!(e.node.as_deref(), Some("n1"));
    assert_eq!(e.count, Some(4));
    assert_eq!(e.event_type_abstract, EventTypeAbstract::PodBackoff);
}

#[test]
fn odd_counts_read_as_absent_or_parsed() {
    let count = |c: serde_json::Value| {
        normalize(&with(PROTOCOL_EXAMPLE, |v| v["count"] = c))
            .unwrap()
            .count
    };
    assert_eq!(count("5".into()), Some(5));
    assert_eq!(count((-1).into()), None);
    assert_eq!(count(serde_json::json!({"n": 1})), None);
    assert_eq!(count(serde_json::Value::Null), None);
}

#[test]
fn escaped_strings_are_unescaped() {
    let e = normalize(&with(PROTOCOL_EXAMPLE, |v| {
        v["message"] = "line one\nline \"two\"".into();
    }))
    .unwrap();
    assert_eq!(e.message.as_deref(), Some("line one\nline \"two\""));
}

#[test]
fn every_exact_reason_maps_as_the_protocol_says() {
    let expected = [
        ("Pulling", "POD_IMAGE_PULL"),
        ("Pulled", "POD_IMAGE_PULLED"),
        ("Created", "POD_CREATED"),
        ("Started", "POD_STARTED"),
        ("Killing", "POD_KILLING"),
        ("Failed", "POD_FAILED"),
        ("BackOff", "POD_BACKOFF"),
        ("CrashLoopBackOff", "POD_CRASH_LOOP"),
        ("OOMKilled", "MEMORY_OOM"),
        ("Evicted", "POD_EVICTED"),
        ("FailedScheduling", "SCHEDULING_FAILED"),
        ("FailedMount", "VOLUME_MOUNT_FAILED"),
        ("FailedCreatePodSandBox", "NETWORK_SETUP_FAILED"),
        ("NetworkNotReady", "NETWORK_NOT_READY"),
        ("Unhealthy", "HEALTH_CHECK_FAILED"),
        ("ProbeWarning", "PROBE_WARNING"),
        ("NodeNotReady", "NODE_NOT_READY"),
        ("NodeReady", "NODE_READY"),
        ("RegisteredNode", "NODE_REGISTERED"),
        ("FailedDiscovery", "SERVICE_DISCOVERY_FAILED"),
        ("UpdatedEndpoints", "ENDPOINTS_UPDATED"),
    ];
    assert_eq!(expected.len(), REASON_TABLE.len());
    for (reason, label) in expected {
        assert_eq!(event_type_abstract(reason).as_str(), label, "{reason}");
        // And through the whole pipeline.
        let e = normalize(&with(PROTOCOL_EXAMPLE, |v| v["reason"] = reason.into())).unwrap();
        assert_eq!(e.event_type_abstract.as_str(), label, "{reason}");
    }
}

#[test]
fn substring_rules_apply_in_their_listed_order() {
    for (reason, label) in [
        ("SystemOOM", "MEMORY_OOM"),
        ("ContainerOutOfMemory", "MEMORY_OOM"),
        ("outofmemorykill", "MEMORY_OOM"),
        ("CPUThrottlingHigh", "CPU_HIGH"),
        ("HighCpuUsage", "CPU_HIGH"),
        ("FreeDiskSpaceFailed", "DISK_ISSUE"),
        ("FailedAttachVolume", "DISK_ISSUE"),
        ("NetworkUnavailable", "NETWORK_ISSUE"),
        ("ConnectionLost", "NETWORK_ISSUE"),
        ("ProbeTimeout", "TIMEOUT"),
        ("AppCrashed", "POD_CRASH_LOOP"),
        // Earlier rules win: OOM before CPU, CPU before Disk, Disk before Network,
        // Network before Timeout, Timeout before Crash.
        ("OOMWithHighCPU", "MEMORY_OOM"),
        ("CPUDiskPressure", "CPU_HIGH"),
        ("VolumeNetworkError", "DISK_ISSUE"),
        ("ConnectionTimeout", "NETWORK_ISSUE"),
        ("CrashTimeout", "TIMEOUT"),
        // Exact matches beat substrings: "NetworkNotReady" is not just "Network".
        ("NetworkNotReady", "NETWORK_NOT_READY"),
        // "OOM" is matched case-sensitively.
        ("ZoomedOut", "CUSTOM"),
        ("ScalingReplicaSet", "CUSTOM"),
        ("", "CUSTOM"),
    ] {
        assert_eq!(event_type_abstract(reason).as_str(), label, "{reason}");
    }
}

fn arb_json(depth: u32) -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(Into::into),
        any::<i64>().prop_map(Into::into),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Into::into),
        ".{0,20}".prop_map(Into::into),
        "(2025-10-28T08:31:00Z|0001-01-01T00:00:00Z|Pod|Node|Service|Warning|OOMKilled)"
            .prop_map(Into::into),
    ];
    leaf.prop_recursive(depth, 64, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Into::into),
            prop::collection::btree_map(key(), inner, 0..8)
                .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
}

fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "event_id",
            "client_id",
            "reason",
            "message",
            "type",
            "metadata",
            "uid",
            "creationTimestamp",
            "namespace",
            "involvedObject",
            "regarding",
            "kind",
            "name",
            "labels",
            "app",
            "source",
            "host",
            "eventTime",
            "firstTimestamp",
            "lastTimestamp",
            "count",
            "note",
        ])
        .prop_map(String::from),
        "[a-z]{1,8}",
    ]
}

proptest! {
    #[test]
    fn normalize_event_never_panics_on_arbitrary_bytes(raw in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = normalize_event(&client(), &raw);
    }

    #[test]
    fn normalize_event_never_panics_on_arbitrary_objects(
        obj in prop::collection::btree_map(key(), arb_json(3), 0..12)
    ) {
        let raw = serde_json::Value::Object(obj.into_iter().collect()).to_string();
        if let Ok(e) = normalize_event(&client(), raw.as_bytes()) {
            prop_assert!(e.event_id.starts_with("evt-") && e.event_id.len() == 20);
            prop_assert!(e.reason.is_some() || e.message.is_some());
            let _ = to_json(&e);
        }
    }
}
