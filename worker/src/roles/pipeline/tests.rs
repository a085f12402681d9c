//! The stages over seed 004's example, as the shipped template file has it.

use std::path::Path;

use chrono::{DateTime, Utc};
use kg_shared::pipeline_template::PipelineTemplates;
use kg_shared::ClientId;
use serde_json::{json, Value};

use super::{Rejection, Stages, Violation};

const TEMPLATE: &str = include_str!("../../../../examples/pipelines/traffic-flatten.toml");
const SAMPLE: &str = include_str!("../../../../examples/pipelines/traffic-sample.json");

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
    let record = traffic()
        .process(SAMPLE.as_bytes(), at("2025-10-05T07:42:44.651Z"))
        .unwrap();
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
            traffic().process(&input, now),
            Err(Rejection::Invalid(expected)),
            "{case}"
        );
    }
}

#[test]
fn what_is_not_a_json_object_is_rejected_with_its_reason() {
    let now = at("2025-10-05T08:00:00Z");
    let undecodable = traffic().process(b"{\"speed", now).unwrap_err();
    assert_eq!(undecodable.reason_code(), "undecodable");
    let array = traffic().process(b"[1, 2]", now).unwrap_err();
    assert_eq!(array, Rejection::NotAnObject);
    let invalid = traffic().process(&with(|v| v["timestamp"] = json!(true)), now);
    assert_eq!(
        invalid.unwrap_err().to_string(),
        "failed validation: timestamp: not a timestamp (RFC 3339 or epoch milliseconds): true"
    );
}

#[test]
fn the_handler_takes_this_clients_records_through_the_stages_and_dead_letters_rejections() {
    use super::{Outcome, PipelineHandler, RecordHandler};
    let templates = PipelineTemplates::parse(TEMPLATE, Path::new("traffic-flatten.toml")).unwrap();
    let handler = PipelineHandler::new(
        templates.get("traffic-flatten").unwrap(),
        ClientId::parse("metro-la").unwrap(),
    );
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
