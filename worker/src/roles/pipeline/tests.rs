//! The stages over seed 004's example, as the shipped template file has it.

use std::path::Path;

use chrono::{DateTime, Utc};
use kg_shared::pipeline_template::PipelineTemplates;
use kg_shared::ClientId;
use serde_json::{json, Value};

use super::{Processed, Rejection, Stages, Violation};

const TEMPLATE: &str = include_str!("../../../../examples/pipelines/traffic-flatten.toml");
const SAMPLE: &str = include_str!("../../../../examples/pipelines/traffic-sample.json");

/// The stages over an input that makes one record (no split).
trait ProcessOne {
    fn process_one(&self, input: &[u8], now: DateTime<Utc>) -> Result<Processed, Rejection>;
}

impl ProcessOne for Stages {
    fn process_one(&self, input: &[u8], now: DateTime<Utc>) -> Result<Processed, Rejection> {
        let mut results = self.process(input, now);
        assert_eq!(results.len(), 1, "one input, one record");
        results.remove(0)
    }
}

fn at(rfc3339: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(rfc3339)
        .unwrap()
        .with_timezone(&Utc)
}

fn traffic() -> Stages {
    let templates = PipelineTemplates::parse(TEMPLATE, Path::new("traffic-flatten.toml")).unwrap();
    Stages::new(
        templates.get("traffic-flatten").unwrap(),
        ClientId::parse("metro-la").unwrap(),
    )
}

#[test]
fn seed_004s_reading_comes_out_flat_validated_and_stamped() {
    let Processed::Done(record) = traffic()
        .process_one(SAMPLE.as_bytes(), at("2025-10-05T07:42:44.651Z"))
        .unwrap()
    else {
        panic!("held by a pipeline without a delay")
    };
    assert_eq!(
        Value::Object(record),
        json!({
            "speed": 31.6,
            "volume": 2203,
            "highway": "I-10",
            "direction": "E",
            "lane_count": 5,
            "weather_conditions": "cloudy",
            "timestamp": "2025-10-05T07:42:44.000Z",
            "processed_at": "2025-10-05T07:42:44.651Z",
            "processor_id": "stream-processor-metro-la",
            "validation_status": "valid"
        })
    );
}

fn with(change: impl FnOnce(&mut Value)) -> Vec<u8> {
    let mut input: Value = serde_json::from_str(SAMPLE).unwrap();
    change(&mut input);
    input.to_string().into_bytes()
}

fn violation(field: &str, reason: &str) -> Violation {
    Violation {
        field: field.into(),
        reason: reason.into(),
    }
}

#[test]
fn every_layer_of_validation_reports_every_violation() {
    let now = at("2025-10-05T08:00:00Z");
    let cases: Vec<(&str, Vec<u8>, Vec<Violation>)> = vec![
        (
            "a field missing",
            with(|v| v["location"].as_object_mut().unwrap().clear()),
            vec![
                violation("highway", "missing"),
                violation("direction", "missing"),
            ],
        ),
        (
            "out of range, and of the wrong type",
            with(|v| {
                v["traffic_data"]["speed_mph"] = json!(130.5);
                v["location"]["lanes"] = json!("five");
            }),
            vec![
                violation("lane_count", "expected an integer, got a string"),
                violation("speed", "130.5 is outside 0 to 120"),
            ],
        ),
        (
            "from the future",
            with(|v| v["timestamp"] = json!("2025-10-05T09:00:00Z")),
            vec![violation(
                "timestamp",
                "2025-10-05T09:00:00+00:00 is in the future",
            )],
        ),
        (
            "over a year old, as epoch milliseconds",
            with(|v| v["timestamp"] = json!(1_600_000_000_000_i64)),
            vec![violation(
                "timestamp",
                "2020-09-13T12:26:40+00:00 is older than 31536000 s",
            )],
        ),
    ];
    for (case, input, expected) in cases {
        assert_eq!(
            traffic().process_one(&input, now),
            Err(Rejection::Invalid(expected)),
            "{case}"
        );
    }
}

#[test]
fn what_is_not_a_json_object_is_rejected_with_its_reason() {
    let now = at("2025-10-05T08:00:00Z");
    let undecodable = traffic().process_one(b"{\"speed", now).unwrap_err();
    assert_eq!(undecodable.reason_code(), "undecodable");
    let array = traffic().process_one(b"[1, 2]", now).unwrap_err();
    assert_eq!(array, Rejection::NotAnObject);
    let invalid = traffic().process_one(&with(|v| v["timestamp"] = json!(true)), now);
    assert_eq!(
        invalid.unwrap_err().to_string(),
        "failed validation: timestamp: not a timestamp (RFC 3339 or epoch milliseconds): true"
    );
}

#[test]
fn the_handler_takes_this_clients_records_through_the_stages_and_dead_letters_rejections() {
    use super::{Outcome, PipelineHandler, RecordHandler};
    let templates = PipelineTemplates::parse(TEMPLATE, Path::new("traffic-flatten.toml")).unwrap();
    let data = tempfile::tempdir().unwrap();
    let handler = PipelineHandler::new(
        templates.get("traffic-flatten").unwrap(),
        ClientId::parse("metro-la").unwrap(),
        data.path(),
    )
    .unwrap();
    assert!(handler.delay_task().is_none());
    assert_eq!(handler.input_topics(), ["traffic-raw"]);
    // A reading from the last minute passes every layer.
    let fresh = with(|v| v["timestamp"] = json!(Utc::now().timestamp_millis()));
    let handle = |key: &str, value: Option<&[u8]>| {
        handler.handle("traffic-raw", None, Some(key.as_bytes()), value)
    };
    match handle("metro-la::sensor-7", Some(&fresh)) {
        Outcome::Produce { topic, key, value } => {
            assert_eq!(
                (topic, key.as_str()),
                ("traffic-events", "metro-la::sensor-7")
            );
            let record: Value = serde_json::from_slice(&value).unwrap();
            assert_eq!(record["speed"], 31.6);
            assert_eq!(record["processor_id"], "stream-processor-metro-la");
        }
        other => panic!("not produced: {other:?}"),
    }
    assert_eq!(
        handle("elsewhere::sensor-7", Some(&fresh)),
        Outcome::Foreign
    );
    assert_eq!(
        handle("no-tenant-here", Some(&fresh)),
        Outcome::Unattributed
    );
    assert!(matches!(
        handle("metro-la::sensor-7", None),
        Outcome::DeadLetter {
            reason_code: "null_value",
            ..
        }
    ));
    let too_fast = with(|v| {
        v["timestamp"] = json!(Utc::now().timestamp_millis());
        v["traffic_data"]["speed_mph"] = json!(300);
    });
    assert_eq!(
        handle("metro-la::sensor-7", Some(&too_fast)),
        Outcome::DeadLetter {
            reason_code: "validation_failed",
            reason: "failed validation: speed: 300 is outside 0 to 120".into(),
        }
    );
}

const COOLING: &str = include_str!("../../../../examples/pipelines/server-cooling.toml");
const POWEROFF: &str = include_str!("../../../../examples/pipelines/server-poweroff-sample.json");

fn cooling(name: &str) -> super::PipelineTemplate {
    PipelineTemplates::parse(COOLING, Path::new("server-cooling.toml"))
        .unwrap()
        .get(name)
        .unwrap()
        .clone()
}

#[test]
fn seed_000s_poweroff_is_held_as_its_server_and_resumed_by_the_demise_stamp() {
    let stages = Stages::new(
        &cooling("server-cooling"),
        ClientId::parse("dc-east").unwrap(),
    );
    let now = at("2025-11-02T16:17:30Z");
    let Processed::Held { record, session } = stages.process_one(POWEROFF.as_bytes(), now).unwrap()
    else {
        panic!("not held")
    };
    assert_eq!(session, "srv-0042");
    assert_eq!(record["reason"], "decommission");
    assert!(
        !record.contains_key("processor_id"),
        "stamped before the delay"
    );
    let later = at("2025-11-04T16:17:30Z");
    let emitted = stages.resume(record, later).unwrap().done().unwrap();
    assert_eq!(emitted["processor_id"], "demise-processor-dc-east");
    assert_eq!(emitted["processed_at"], "2025-11-04T16:17:30.000Z");
    assert_eq!(emitted["validation_status"], "valid");
    // A poweroff that names no server is dead-lettered before it is held.
    assert_eq!(
        stages.process_one(br#"{"powered_off_at": "2025-11-02T16:17:27Z"}"#, now),
        Err(Rejection::Invalid(vec![violation("server_id", "missing")]))
    );
    // The repurpose pipeline takes the demise record as it comes out.
    let repurpose = Stages::new(
        &cooling("server-repurpose"),
        ClientId::parse("dc-east").unwrap(),
    );
    let Processed::Done(repurposed) = repurpose
        .process_one(&serde_json::to_vec(&emitted).unwrap(), later)
        .unwrap()
    else {
        panic!("held without a delay")
    };
    assert_eq!(repurposed["processor_id"], "repurpose-processor-dc-east");
}

#[test]
fn the_handler_holds_each_session_once_and_keeps_it_only_when_flushed() {
    use super::{Outcome, PipelineHandler, RecordHandler};
    let data = tempfile::tempdir().unwrap();
    let client = ClientId::parse("dc-east").unwrap();
    let handler =
        PipelineHandler::new(&cooling("server-cooling"), client.clone(), data.path()).unwrap();
    let task = handler.delay_task().expect("a delay task");
    let held = |key: &str, value: &[u8]| {
        handler.handle_at(
            "servers.poweroff",
            2,
            17,
            None,
            Some(key.as_bytes()),
            Some(value),
        )
    };
    assert_eq!(
        held("dc-east::srv-0042", POWEROFF.as_bytes()),
        Outcome::Absorbed
    );
    // Absorbed is not kept until the batch is flushed (before its offsets are committed).
    assert_eq!(task.store.stats().unwrap().0, 0);
    handler.flush().unwrap();
    assert_eq!(task.store.stats().unwrap().0, 1);
    // The same server again (a redelivery) is absorbed, and still one session.
    assert_eq!(
        held("dc-east::srv-0042", POWEROFF.as_bytes()),
        Outcome::Absorbed
    );
    handler.flush().unwrap();
    assert_eq!(task.store.stats().unwrap().0, 1);
    // A later poweroff of the same server replaces it: still one session, held anew.
    assert_eq!(
        handler.handle_at(
            "servers.poweroff",
            2,
            18,
            None,
            Some(b"dc-east::srv-0042"),
            Some(POWEROFF.as_bytes())
        ),
        Outcome::Absorbed
    );
    handler.flush().unwrap();
    assert_eq!(task.store.stats().unwrap().0, 1);
    let session = task
        .store
        .to_check(i64::MAX, 10, usize::MAX)
        .unwrap()
        .remove(0);
    assert_eq!(session.source_offset, 18);
    assert_eq!(
        (
            session.source_topic.as_str(),
            session.source_partition,
            session.source_offset
        ),
        ("servers.poweroff", 2, 18)
    );
    assert_eq!(session.due_ms - session.held_at_ms, 48 * 3600 * 1000);
    assert_eq!(session.next_check_ms - session.held_at_ms, 2 * 3600 * 1000);
    // A server id of the wrong shape fails validation; another tenant's is skipped.
    assert!(matches!(
        held(
            "dc-east::srv-7",
            br#"{"server_id": 7, "powered_off_at": "x"}"#
        ),
        Outcome::DeadLetter {
            reason_code: "validation_failed",
            ..
        }
    ));
    assert_eq!(
        held("elsewhere::srv-0042", POWEROFF.as_bytes()),
        Outcome::Foreign
    );
    // The store outlives the handler: a new worker finds the session.
    drop(task);
    drop(handler);
    let again = PipelineHandler::new(&cooling("server-cooling"), client, data.path()).unwrap();
    assert_eq!(again.delay_task().unwrap().store.stats().unwrap().0, 1);
}

const ALERTS: &str = include_str!("../../../../examples/pipelines/alert-enrichment.toml");
const ALERTMANAGER: &str = include_str!("../../../../examples/pipelines/alertmanager-sample.json");

fn alert_enrichment() -> super::PipelineTemplate {
    PipelineTemplates::parse(ALERTS, Path::new("alert-enrichment.toml"))
        .unwrap()
        .get("alert-enrichment")
        .unwrap()
        .clone()
}

#[test]
fn an_alertmanager_payload_is_held_as_one_session_per_alert_from_when_it_started() {
    let stages = Stages::new(&alert_enrichment(), ClientId::parse("af-9").unwrap());
    let now = at("2026-12-07T05:42:00Z");
    let results = stages.process(ALERTMANAGER.as_bytes(), now);
    assert_eq!(results.len(), 2, "{results:?}");
    let Ok(Processed::Held { record, session }) = &results[0] else {
        panic!("{results:?}")
    };
    assert_eq!(session, "a1b2c3d4e5f60718");
    assert_eq!(record["alertname"], "KubePodCrashLooping");
    assert_eq!(record["pod"], "checkout-7d9f8b6c5d-x2kq9");
    assert_eq!(record["namespace"], "shop");
    assert_eq!(record["receiver"], "kg-rca", "kept from the payload");
    assert_eq!(record["labels"]["container"], "checkout");
    assert!(!record.contains_key("alerts"));
    let Ok(Processed::Held { session, .. }) = &results[1] else {
        panic!("{results:?}")
    };
    assert_eq!(session, "0f1e2d3c4b5a6978");
    // Emitted: looked up in the graph (none here) and stamped.
    let emitted = stages.resume(record.clone(), now).unwrap().done().unwrap();
    assert_eq!(emitted["graph_status"], "unavailable");
    assert_eq!(emitted["processor_id"], "alert-enricher-af-9");
    // An alert without a fingerprint is rejected alone, named by its place.
    let mut payload: Value = serde_json::from_str(ALERTMANAGER).unwrap();
    payload["alerts"][1]
        .as_object_mut()
        .unwrap()
        .remove("fingerprint");
    let results = stages.process(&serde_json::to_vec(&payload).unwrap(), now);
    assert!(matches!(results[0], Ok(Processed::Held { .. })));
    let Err(rejection) = &results[1] else {
        panic!("{results:?}")
    };
    assert_eq!(rejection.reason_code(), "validation_failed");
    assert!(
        rejection
            .to_string()
            .starts_with("alerts[1]: failed validation: fingerprint"),
        "{rejection}"
    );
    // A payload without alerts cannot be split.
    let results = stages.process(br#"{"receiver": "kg-rca"}"#, now);
    assert!(matches!(&results[..], [Err(Rejection::Unsplittable(_))]));
}

#[test]
fn the_handler_holds_alerts_from_their_start_and_a_resolution_ends_the_hold() {
    use super::pending::SessionKind;
    use super::{Outcome, PipelineHandler, RecordHandler};
    let data = tempfile::tempdir().unwrap();
    let client = ClientId::parse("af-9").unwrap();
    let handler = PipelineHandler::new(&alert_enrichment(), client, data.path()).unwrap();
    let task = handler.delay_task().expect("a delay task");
    let offer = |offset: i64, payload: &Value| {
        handler.handle_at(
            "raw.prom.alerts",
            0,
            offset,
            None,
            Some(b"af-9::alerts"),
            Some(&serde_json::to_vec(payload).unwrap()),
        )
    };
    let mut payload: Value = serde_json::from_str(ALERTMANAGER).unwrap();
    let started = Utc::now() - chrono::Duration::minutes(2);
    for alert in payload["alerts"].as_array_mut().unwrap() {
        alert["startsAt"] = json!(started.to_rfc3339());
    }
    assert_eq!(
        offer(1, &payload),
        Outcome::Many(vec![Outcome::Absorbed, Outcome::Absorbed])
    );
    handler.flush().unwrap();
    let held = task.store.to_check(i64::MAX, 10, usize::MAX).unwrap();
    assert_eq!(held.len(), 2);
    // Counted from startsAt: due 5 minutes after it started, not after it came in.
    assert_eq!(held[0].held_at_ms, started.timestamp_millis());
    assert_eq!(
        held[0].due_ms,
        (started + chrono::Duration::minutes(5)).timestamp_millis()
    );
    // The node alert resolves within its cooling: its hold ends, nothing is emitted.
    let mut resolved = payload.clone();
    resolved["alerts"] = json!([payload["alerts"][1].clone()]);
    resolved["alerts"][0]["status"] = json!("resolved");
    assert_eq!(offer(2, &resolved), Outcome::Absorbed);
    handler.flush().unwrap();
    let rows = task.store.to_check(i64::MAX, 10, usize::MAX).unwrap();
    let kinds: Vec<(&str, SessionKind)> =
        rows.iter().map(|r| (r.session.as_str(), r.kind)).collect();
    assert!(
        kinds.contains(&("0f1e2d3c4b5a6978", SessionKind::Ended)),
        "{kinds:?}"
    );
    assert!(
        kinds.contains(&("a1b2c3d4e5f60718", SessionKind::Held)),
        "{kinds:?}"
    );
    assert_eq!(
        task.store.stats().unwrap().0,
        1,
        "a tombstone is not pending"
    );
    // A resolution of an alert not held (emitted already) passes on at once.
    let mut other = resolved.clone();
    other["alerts"][0]["fingerprint"] = json!("feedfacefeedface");
    assert_eq!(offer(3, &other), Outcome::Absorbed);
    handler.flush().unwrap();
    let passing = task
        .store
        .to_check(Utc::now().timestamp_millis(), 10, usize::MAX)
        .unwrap();
    assert!(passing
        .iter()
        .any(|r| r.session == "feedfacefeedface#end" && r.kind == SessionKind::PassOn));
}
