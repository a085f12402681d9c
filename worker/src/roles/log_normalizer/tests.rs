//! The log normalizer's tests: log records as `raw.k8s.logs` (and the log shipper) carry
//! them, through [`normalize_log`], to what `logs.normalized` carries. They pin the
//! decisions listed in `normalize.rs`.

use kg_shared::records::{
    ErrorType, Etype, NormalizedLog, Severity, Subject, MAX_LOG_MESSAGE_CHARS,
    MAX_STACK_TRACE_CHARS,
};
use kg_shared::ClientId;
use proptest::prelude::*;
use serde_json::json;
use xxhash_rust::xxh3::Xxh3;

use super::normalize::*;
use crate::roles::normalize_common::{to_json, NormalizeError};

fn client() -> ClientId {
    ClientId::parse("test-client-001").unwrap()
}

fn normalize(v: &serde_json::Value) -> Result<NormalizedLog, NormalizeError> {
    normalize_log(&client(), v.to_string().as_bytes())
}

/// Vector's raw `kubernetes_logs` event.
fn vector_raw(message: &str) -> serde_json::Value {
    json!({
        "file": "/var/log/pods/default_api-7d9f_b1e2/api/0.log",
        "kubernetes": {
            "container_id": "containerd://abc",
            "container_image": "ghcr.io/acme/api:1.2.3",
            "container_name": "api",
            "namespace_labels": {"kubernetes.io/metadata.name": "default"},
            "pod_ip": "10.0.0.12",
            "pod_labels": {"app": "api", "pod-template-hash": "7d9f"},
            "pod_name": "api-7d9f",
            "pod_namespace": "default",
            "pod_node_name": "node-1",
            "pod_owner": "ReplicaSet/api-7d9f",
            "pod_uid": "b1e2"
        },
        "message": message,
        "source_type": "kubernetes_logs",
        "stream": "stderr",
        "timestamp": "2025-10-28T08:31:00.123456789Z"
    })
}

/// The log shipper's keyed record: the raw event plus its flat fields.
fn shipper_keyed(message: &str) -> serde_json::Value {
    let mut v = vector_raw(message);
    let o = v.as_object_mut().unwrap();
    o.insert("client_id".into(), "test-client-001".into());
    o.insert("event_time".into(), "2025-10-28T08:31:00.123456789Z".into());
    o.insert("etype".into(), "k8s.log".into());
    o.insert(
        "subject".into(),
        json!({"kind": "Pod", "uid": "b1e2", "ns": "default", "name": "api-7d9f"}),
    );
    o.insert("pod_uid".into(), "b1e2".into());
    o.insert("pod_namespace".into(), "default".into());
    o.insert("pod_name".into(), "api-7d9f".into());
    v
}

const JAVA_TRACE: &str = "2025-10-28 08:31:00 ERROR Request failed\n\
    java.lang.IllegalStateException: boom\n\
    \tat com.acme.api.Handler.handle(Handler.java:42)\n\
    \tat com.acme.api.Server.run(Server.java:7)\n\
    Caused by: java.io.IOException: disk gone\n\
    \tat com.acme.io.Disk.read(Disk.java:3)\n\
    \t... 2 more\n";

const PYTHON_TRACE: &str = "Unhandled error in worker\n\
    Traceback (most recent call last):\n  \
      File \"/app/main.py\", line 10, in <module>\n    \
        main()\n  \
      File \"/app/main.py\", line 6, in main\n    \
        raise ValueError(\"bad\")\n\
    ValueError: bad";

#[test]
fn vector_raw_event_is_normalized() {
    let l = normalize(&vector_raw("GET /health 200")).unwrap();
    assert_eq!(l.client_id, client());
    assert_eq!(l.namespace.as_deref(), Some("default"));
    assert_eq!(l.pod_name.as_deref(), Some("api-7d9f"));
    assert_eq!(l.pod_uid.as_deref(), Some("b1e2"));
    assert_eq!(l.container_name.as_deref(), Some("api"));
    assert_eq!(l.node.as_deref(), Some("node-1"));
    assert_eq!(l.message, "GET /health 200");
    assert_eq!(l.severity, Severity::Info);
    assert!(!l.is_error);
    assert_eq!(l.error_type, None);
    assert_eq!(l.stack_trace, None);
    assert_eq!(l.etype, Etype::K8sLog);
    let t = "2025-10-28T08:31:00.123456789Z".parse().unwrap();
    assert_eq!((l.timestamp, l.event_time), (Some(t), Some(t)));
    assert_eq!(
        l.subject,
        Subject {
            kind: Some("Pod".into()),
            uid: Some("b1e2".into()),
            ns: Some("default".into()),
            name: Some("api-7d9f".into()),
        }
    );
    assert!(l.log_id.starts_with("log-") && l.log_id.len() == 20);
    let json: serde_json::Value = serde_json::from_slice(&to_json(&l)).unwrap();
    assert_eq!(json["etype"], "k8s.log");
    assert_eq!(json["timestamp"], "2025-10-28T08:31:00.123456789Z");
    assert_eq!(json["is_error"], false);
}

#[test]
fn shipper_keyed_record_gives_the_same_record_as_the_raw_event() {
    let raw = normalize(&vector_raw("connection refused by db")).unwrap();
    let keyed = normalize(&shipper_keyed("connection refused by db")).unwrap();
    assert_eq!(raw, keyed);
}

#[test]
fn flat_and_subject_fields_serve_when_kubernetes_is_absent() {
    let flat = normalize(&json!({
        "message": "hello", "timestamp": "2025-10-28T08:31:00Z",
        "pod_uid": "u1", "pod_namespace": "ns1", "pod_name": "p1"
    }))
    .unwrap();
    assert_eq!(flat.pod_uid.as_deref(), Some("u1"));
    assert_eq!(flat.namespace.as_deref(), Some("ns1"));
    assert_eq!(flat.subject.name.as_deref(), Some("p1"));
    let subject_only = normalize(&json!({
        "message": "hello", "event_time": "2025-10-28T08:31:00Z",
        "subject": {"kind": "Pod", "uid": "u2", "ns": "ns2", "name": "p2"}
    }))
    .unwrap();
    assert_eq!(subject_only.pod_uid.as_deref(), Some("u2"));
    assert_eq!(subject_only.namespace.as_deref(), Some("ns2"));
    assert_eq!(subject_only.pod_name.as_deref(), Some("p2"));
    assert!(
        subject_only.timestamp.is_some(),
        "event_time stands in for timestamp"
    );
}

#[test]
fn log_id_is_stable_and_depends_on_each_input() {
    let base = normalize(&vector_raw("x")).unwrap().log_id;
    assert_eq!(normalize(&vector_raw("x")).unwrap().log_id, base);
    assert_eq!(normalize(&shipper_keyed("x")).unwrap().log_id, base);
    let mut other_pod = vector_raw("x");
    other_pod["kubernetes"]["pod_uid"] = "b1e3".into();
    let mut other_container = vector_raw("x");
    other_container["kubernetes"]["container_name"] = "sidecar".into();
    let mut other_time = vector_raw("x");
    other_time["timestamp"] = "2025-10-28T08:31:00.123456788Z".into();
    let mut same_instant = vector_raw("x");
    same_instant["timestamp"] = "2025-10-28T09:31:00.123456789+01:00".into();
    for changed in [other_pod, other_container, other_time, vector_raw("y")] {
        assert_ne!(normalize(&changed).unwrap().log_id, base);
    }
    assert_eq!(normalize(&same_instant).unwrap().log_id, base);
}

#[test]
fn log_id_recipe_is_pinned() {
    // Changing this value gives re-shipped lines new ids: don't.
    let l = normalize(&vector_raw("x")).unwrap();
    let mut h = Xxh3::new();
    h.update(&4u64.to_le_bytes());
    h.update(b"b1e2");
    h.update(&3u64.to_le_bytes());
    h.update(b"api");
    h.update(b"T");
    h.update(&1_761_640_260i64.to_le_bytes());
    h.update(&123_456_789u32.to_le_bytes());
    h.update(&1u64.to_le_bytes());
    h.update(b"x");
    assert_eq!(l.log_id, format!("log-{:016x}", h.digest()));
    assert_eq!(l.log_id, "log-603c045a20ea95d1");
}

#[test]
fn connection_refused_line_is_an_error() {
    let l = normalize(&vector_raw(
        "dial tcp 10.0.0.5:5432: connect: connection refused",
    ))
    .unwrap();
    assert!(l.is_error);
    assert_eq!(l.error_type, Some(ErrorType::ConnectionRefused));
    assert_eq!(l.severity, Severity::Error);
}

#[test]
fn each_pattern_names_its_error_type() {
    for (line, expected) in [
        ("NullPointerException thrown", ErrorType::Exception),
        ("ERROR: disk full", ErrorType::Error),
        ("Fatal: cannot start", ErrorType::Fatal),
        ("goroutine panic: nil map", ErrorType::Panic),
        ("request TIMEOUT after 30s", ErrorType::Timeout),
        ("Connection Refused", ErrorType::ConnectionRefused),
        ("runtime: out of memory", ErrorType::OutOfMemory),
        ("null pointer dereference", ErrorType::NullPointer),
        ("Failed to pull image", ErrorType::FailedTo),
        ("cannot connect to redis", ErrorType::CannotConnect),
    ] {
        assert_eq!(detect_error(line), Some(expected), "{line}");
    }
    assert_eq!(detect_error("all good"), None);
    assert_eq!(detect_error(""), None);
}

#[test]
fn first_pattern_in_list_order_wins_not_first_in_line() {
    // "timeout" comes first in the line, "error" first in the list.
    assert_eq!(
        detect_error("timeout while handling error"),
        Some(ErrorType::Error)
    );
    assert_eq!(
        detect_error("failed to connect: connection refused"),
        Some(ErrorType::ConnectionRefused)
    );
    assert_eq!(detect_error("panic: fatal error"), Some(ErrorType::Error));
    assert_eq!(detect_error("ExceptionError"), Some(ErrorType::Exception));
    assert_eq!(detect_error("écrit: Erreur fatale"), Some(ErrorType::Fatal));
}

#[test]
fn fatal_and_panic_lines_are_fatal() {
    for line in [
        "FATAL: shutting down",
        "panic: runtime error: index out of range",
    ] {
        let l = normalize(&vector_raw(line)).unwrap();
        // "runtime error" matches "error" first, but the severity follows the type.
        assert!(l.is_error, "{line}");
    }
    let fatal = normalize(&vector_raw("FATAL: shutting down")).unwrap();
    assert_eq!(
        (fatal.severity, fatal.error_type),
        (Severity::Fatal, Some(ErrorType::Fatal))
    );
    let panic = normalize(&vector_raw("panic: nil map")).unwrap();
    assert_eq!(
        (panic.severity, panic.error_type),
        (Severity::Fatal, Some(ErrorType::Panic))
    );
}

#[test]
fn explicit_level_decides_severity_and_is_error() {
    let mut info = vector_raw("retrying after timeout");
    info["level"] = "info".into();
    let l = normalize(&info).unwrap();
    assert_eq!(
        (l.severity, l.is_error, l.error_type),
        (Severity::Info, false, None)
    );

    let mut err = vector_raw("request could not be served");
    err["severity"] = "ERROR".into();
    let l = normalize(&err).unwrap();
    assert_eq!(
        (l.severity, l.is_error, l.error_type),
        (Severity::Error, true, Some(ErrorType::Error))
    );

    let mut crit = vector_raw("request timeout");
    crit["level"] = "critical".into();
    let l = normalize(&crit).unwrap();
    assert_eq!(
        (l.severity, l.is_error, l.error_type),
        (Severity::Fatal, true, Some(ErrorType::Timeout))
    );

    let mut unknown = vector_raw("an error");
    unknown["level"] = 30.into();
    let l = normalize(&unknown).unwrap();
    assert_eq!(
        (l.severity, l.error_type),
        (Severity::Error, Some(ErrorType::Error))
    );
}

#[test]
fn level_inside_a_json_line_is_respected() {
    let line = r#"{"level":"warn","msg":"slow query, error budget at 80%"}"#;
    let l = normalize(&vector_raw(line)).unwrap();
    assert_eq!((l.severity, l.is_error), (Severity::Warning, false));
    assert_eq!(l.message, line);
    let broken = normalize(&vector_raw(r#"{"level":"warn", error"#)).unwrap();
    assert_eq!(broken.severity, Severity::Error);
}

#[test]
fn stderr_alone_is_not_an_error() {
    let l = normalize(&vector_raw("listening on :8080")).unwrap();
    assert!(!l.is_error);
    assert_eq!(l.severity, Severity::Info);
}

#[test]
fn java_stack_trace_is_captured() {
    let l = normalize(&vector_raw(JAVA_TRACE)).unwrap();
    let trace = l.stack_trace.unwrap();
    assert!(trace.starts_with("java.lang.IllegalStateException: boom\n\tat com.acme"));
    assert!(trace.contains("Caused by: java.io.IOException: disk gone"));
    assert!(trace.ends_with("\t... 2 more"));
    assert_eq!(l.error_type, Some(ErrorType::Exception));
    assert!(l.is_error);
}

#[test]
fn java_trace_led_by_caused_by_or_a_bare_frame_is_captured() {
    assert_eq!(
        find_stack_trace("wrapper failed\nCaused by: java.io.IOException: x"),
        Some("wrapper failed\nCaused by: java.io.IOException: x")
    );
    assert_eq!(
        find_stack_trace("\tat com.acme.Foo.bar(Foo.java:1)"),
        Some("\tat com.acme.Foo.bar(Foo.java:1)")
    );
    assert_eq!(
        find_stack_trace("first\nsecond: boom\n    at com.acme.Foo.bar(Foo.java:1)\n"),
        Some("second: boom\n    at com.acme.Foo.bar(Foo.java:1)")
    );
}

#[test]
fn python_stack_trace_is_captured() {
    let l = normalize(&vector_raw(PYTHON_TRACE)).unwrap();
    let trace = l.stack_trace.unwrap();
    assert!(trace.starts_with("Traceback (most recent call last):\n  File"));
    assert!(trace.ends_with("ValueError: bad"));
    assert_eq!(l.error_type, Some(ErrorType::Error));
}

#[test]
fn prose_with_at_is_not_a_stack_trace() {
    for line in [
        "meet at noon",
        "scaled to 3 replicas\n  at least 2 ready",
        "at com.acme.Foo.bar(Foo.java:1) without indent\nnext",
        "no trace here",
    ] {
        assert_eq!(find_stack_trace(line), None, "{line:?}");
    }
}

#[test]
fn long_stack_traces_are_cut() {
    let mut msg = String::from("java.lang.RuntimeException: deep\n");
    for i in 0..2000 {
        msg.push_str(&format!("\tat com.acme.Deep.f{i}(Deep.java:{i})\n"));
    }
    let trace = find_stack_trace(&msg).unwrap();
    assert_eq!(trace.chars().count(), MAX_STACK_TRACE_CHARS);
}

#[test]
fn long_messages_are_cut_to_a_thousand_characters() {
    let long = "é".repeat(1500);
    let l = normalize(&vector_raw(&long)).unwrap();
    assert_eq!(l.message.chars().count(), MAX_LOG_MESSAGE_CHARS);
    assert_eq!(l.message, "é".repeat(1000));
    // The id covers the whole message.
    let other = normalize(&vector_raw(&format!("{}x", "é".repeat(1499)))).unwrap();
    assert_eq!(other.message, l.message);
    assert_ne!(other.log_id, l.log_id);
}

#[test]
fn error_after_the_cut_is_still_detected() {
    let msg = format!("{} connection refused", "a".repeat(2000));
    let l = normalize(&vector_raw(&msg)).unwrap();
    assert_eq!(l.error_type, Some(ErrorType::ConnectionRefused));
}

#[test]
fn structured_message_is_kept_as_json_text() {
    let mut v = vector_raw("");
    v["message"] = json!({"msg": "hi", "n": 1});
    let l = normalize(&v).unwrap();
    assert_eq!(l.message, r#"{"msg":"hi","n":1}"#);
    v["message"] = 42.into();
    assert_eq!(normalize(&v).unwrap().message, "42");
}

#[test]
fn empty_message_is_kept_but_a_missing_one_is_rejected() {
    assert_eq!(normalize(&vector_raw("")).unwrap().message, "");
    let mut v = vector_raw("");
    v.as_object_mut().unwrap().remove("message");
    let err = normalize(&v).unwrap_err();
    assert_eq!(err.reason_code(), "missing_field");
    assert_eq!(err.to_string(), "record is missing message");
    v["message"] = serde_json::Value::Null;
    assert_eq!(normalize(&v).unwrap_err().reason_code(), "missing_field");
}

#[test]
fn malformed_records_are_rejected_with_their_reason() {
    for (raw, code) in [
        (&b""[..], "empty"),
        (b"GET /health 200", "not_json"),
        (b"[\"message\"]", "not_an_object"),
        (br#"{"message":"x","kubernetes":"pod"}"#, "invalid_shape"),
        (br#"{"message":"x","pod_name":7}"#, "invalid_shape"),
    ] {
        let err = normalize_log(&client(), raw).unwrap_err();
        assert_eq!(err.reason_code(), code, "{}", String::from_utf8_lossy(raw));
    }
}

#[test]
fn body_naming_another_tenant_is_rejected() {
    let mut v = shipper_keyed("x");
    v["client_id"] = "af-9".into();
    assert_eq!(normalize(&v).unwrap_err().reason_code(), "tenant_mismatch");
}

#[test]
fn missing_time_is_absent() {
    let mut v = vector_raw("x");
    v["timestamp"] = "not a time".into();
    let l = normalize(&v).unwrap();
    assert_eq!(l.timestamp, None);
    assert_eq!(l.event_time, None);
}

#[test]
fn tenant_is_read_from_the_body() {
    let keyed = shipper_keyed("x").to_string();
    assert_eq!(log_tenant_from_body(keyed.as_bytes()), Some(client()));
    let raw = vector_raw("x").to_string();
    assert_eq!(log_tenant_from_body(raw.as_bytes()), None);
    for body in [
        &br#"{"client_id":"AF-9"}"#[..],
        br#"{"client_id":7}"#,
        br#"{"client_id":"af-9""#,
        br#"["client_id","af-9"]"#,
        br#"{"message":"\"client_id\""}"#,
        b"",
    ] {
        assert_eq!(
            log_tenant_from_body(body),
            None,
            "{}",
            String::from_utf8_lossy(body)
        );
    }
    assert_eq!(
        log_tenant_from_body(br#"{"a":{"client_id":"x"},"client_id":"af-9"}"#),
        Some(ClientId::parse("af-9").unwrap())
    );
}

fn arb_json(depth: u32) -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(Into::into),
        any::<i64>().prop_map(Into::into),
        ".{0,40}".prop_map(Into::into),
        "(error|Traceback \\(most recent call last\\):|\n\tat a.B(C)|Caused by: x|2025-10-28T08:31:00Z|test-client-001)"
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
            "message",
            "timestamp",
            "event_time",
            "client_id",
            "pod_uid",
            "pod_namespace",
            "pod_name",
            "container_name",
            "node",
            "subject",
            "kubernetes",
            "level",
            "severity",
            "uid",
            "ns",
            "name",
            "pod_node_name",
        ])
        .prop_map(String::from),
        "[a-z_]{1,8}",
    ]
}

proptest! {
    #[test]
    fn normalize_log_never_panics_on_arbitrary_bytes(raw in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = normalize_log(&client(), &raw);
        let _ = log_tenant_from_body(&raw);
    }

    #[test]
    fn normalize_log_never_panics_on_arbitrary_objects(
        obj in prop::collection::btree_map(key(), arb_json(3), 0..12)
    ) {
        let raw = serde_json::Value::Object(obj.into_iter().collect()).to_string();
        if let Ok(l) = normalize_log(&client(), raw.as_bytes()) {
            prop_assert!(l.message.chars().count() <= MAX_LOG_MESSAGE_CHARS);
            prop_assert_eq!(l.is_error, l.error_type.is_some());
            let _ = to_json(&l);
        }
        let _ = log_tenant_from_body(raw.as_bytes());
    }

    #[test]
    fn message_cut_keeps_at_most_a_thousand_chars_of_valid_utf8(msg in "\\PC{0,1500}") {
        let l = normalize_log(&client(), json!({"message": msg}).to_string().as_bytes()).unwrap();
        prop_assert!(l.message.chars().count() <= MAX_LOG_MESSAGE_CHARS);
        prop_assert!(msg.starts_with(&l.message));
        prop_assert!(std::str::from_utf8(l.message.as_bytes()).is_ok());
        if msg.chars().count() <= MAX_LOG_MESSAGE_CHARS {
            prop_assert_eq!(&l.message, &msg);
        }
    }

    #[test]
    fn stack_trace_search_never_panics(msg in "(\\PC|\n|\t| at |Caused by:|\\(){0,200}") {
        if let Some(trace) = find_stack_trace(&msg) {
            prop_assert!(msg.contains(trace));
        }
        let _ = detect_error(&msg);
    }
}
