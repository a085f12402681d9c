//! The agent's own messages to the control plane: one registration (on start, so on every
//! install and upgrade), heartbeats, and the deregistration tombstone. Pure functions of
//! their inputs and `now`, so their exact shape is unit-tested.

use chrono::{DateTime, SecondsFormat, Utc};
use kg_shared::client_id::ClientId;
use serde::Serialize;

/// The agent's version, sent with every registration and heartbeat.
pub const AGENT_VERSION: &str = env!("CARGO_PKG_VERSION");

/// What the agent streams, announced in its registration so operators can see it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Watches {
    pub events: bool,
    /// Resource kinds whose state and topology are streamed.
    pub resources: Vec<&'static str>,
    /// Namespaces watched; empty means all.
    pub namespaces: Vec<String>,
}

/// A registration: one JSON object keyed by the client id (never the 2.1.x chart's
/// colon-split line).
#[derive(Debug, Clone, Serialize)]
pub struct Registration<'a> {
    pub client_id: &'a str,
    pub cluster_name: &'a str,
    pub agent_version: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub chart_version: Option<&'a str>,
    pub timestamp: String,
    pub watches: &'a Watches,
    /// Pipelines asked for beyond the control plane's defaults; absent when none.
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    pub pipelines: &'a [String],
}

/// The counters a heartbeat carries.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
pub struct HeartbeatCounters {
    pub events_sent: u64,
    pub resources_sent: u64,
    pub edges_sent: u64,
    pub uptime_seconds: u64,
}

/// Whether the agent is doing all it was asked to.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum AgentStatus {
    Healthy,
    /// Some watch is failing (a missing RBAC permission, an unreachable API server).
    Degraded,
}

#[derive(Debug, Clone, Serialize)]
struct Heartbeat<'a> {
    client_id: &'a str,
    timestamp: String,
    status: AgentStatus,
    agent_version: &'static str,
    metrics: HeartbeatCounters,
}

fn timestamp(now: DateTime<Utc>) -> String {
    now.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// The pipeline names as configured (`PIPELINES=a,b`), trimmed, empty ones dropped (an
/// empty `PIPELINES` asks for none).
pub fn requested_pipelines(configured: &[String]) -> Vec<String> {
    configured
        .iter()
        .map(|name| name.trim().to_string())
        .filter(|name| !name.is_empty())
        .collect()
}

/// The registration record: key and JSON value.
pub fn registration(
    client: &ClientId,
    cluster_name: Option<&str>,
    chart_version: Option<&str>,
    watches: &Watches,
    pipelines: &[String],
    now: DateTime<Utc>,
) -> (String, Vec<u8>) {
    let cluster_name = cluster_name
        .map(str::trim)
        .filter(|name| !name.is_empty())
        .unwrap_or(client.as_str());
    let value = Registration {
        client_id: client.as_str(),
        cluster_name,
        agent_version: AGENT_VERSION,
        chart_version: chart_version.filter(|version| !version.is_empty()),
        timestamp: timestamp(now),
        watches,
        pipelines,
    };
    (
        client.as_str().to_string(),
        serde_json::to_vec(&value).expect("a registration serializes"),
    )
}

/// A heartbeat record: key and JSON value.
pub fn heartbeat(
    client: &ClientId,
    status: AgentStatus,
    counters: HeartbeatCounters,
    now: DateTime<Utc>,
) -> (String, Vec<u8>) {
    let value = Heartbeat {
        client_id: client.as_str(),
        timestamp: timestamp(now),
        status,
        agent_version: AGENT_VERSION,
        metrics: counters,
    };
    (
        client.as_str().to_string(),
        serde_json::to_vec(&value).expect("a heartbeat serializes"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use kg_shared::heartbeat::decode_heartbeat;
    use kg_shared::registry::{decode_registry, RegistryMessage};

    fn client() -> ClientId {
        ClientId::parse("af-9").unwrap()
    }

    fn now() -> DateTime<Utc> {
        "2026-11-30T08:00:00Z".parse().unwrap()
    }

    #[test]
    fn pipelines_asked_for_go_in_the_registration_and_none_leaves_the_field_out() {
        let watches = Watches {
            events: true,
            resources: vec![],
            namespaces: vec![],
        };
        let asked = requested_pipelines(&[" traffic-flatten".into(), "".into()]);
        let (_, value) = registration(&client(), None, None, &watches, &asked, now());
        let json: serde_json::Value = serde_json::from_slice(&value).unwrap();
        assert_eq!(json["pipelines"], serde_json::json!(["traffic-flatten"]));
        let none = requested_pipelines(&["".into()]);
        let (_, value) = registration(&client(), None, None, &watches, &none, now());
        let json: serde_json::Value = serde_json::from_slice(&value).unwrap();
        assert!(json.get("pipelines").is_none(), "{json}");
    }

    #[test]
    fn the_registration_is_one_json_object_keyed_by_the_client_id() {
        let watches = Watches {
            events: true,
            resources: vec!["Pod", "Node"],
            namespaces: vec![],
        };
        let (key, value) = registration(
            &client(),
            Some("prod-eu"),
            Some("3.0.0"),
            &watches,
            &[],
            now(),
        );
        assert_eq!(key, "af-9");
        let json: serde_json::Value = serde_json::from_slice(&value).unwrap();
        assert_eq!(json["client_id"], "af-9");
        assert_eq!(json["cluster_name"], "prod-eu");
        assert_eq!(json["chart_version"], "3.0.0");
        assert_eq!(json["agent_version"], AGENT_VERSION);
        assert_eq!(json["timestamp"], "2026-11-30T08:00:00Z");
        assert_eq!(json["watches"]["resources"][1], "Node");
        // The control plane's own decoder takes it as a registration of af-9.
        match decode_registry(Some(key.as_bytes()), Some(&value)) {
            Ok(RegistryMessage::Register(registration)) => {
                assert_eq!(registration.client_id.as_str(), "af-9");
                assert!(!registration.recovered_from_split);
            }
            other => panic!("not a registration: {other:?}"),
        }
        // And the tombstone deregisters.
        assert_eq!(
            decode_registry(Some(key.as_bytes()), None).unwrap(),
            RegistryMessage::Deregister(client())
        );
    }

    #[test]
    fn the_cluster_name_defaults_to_the_client_id() {
        let watches = Watches {
            events: false,
            resources: vec![],
            namespaces: vec![],
        };
        for name in [None, Some(""), Some("  ")] {
            let (_, value) = registration(&client(), name, None, &watches, &[], now());
            let json: serde_json::Value = serde_json::from_slice(&value).unwrap();
            assert_eq!(json["cluster_name"], "af-9");
            assert!(json.get("chart_version").is_none());
        }
    }

    #[test]
    fn a_heartbeat_carries_status_and_counters() {
        let counters = HeartbeatCounters {
            events_sent: 3,
            resources_sent: 5,
            edges_sent: 2,
            uptime_seconds: 60,
        };
        let (key, value) = heartbeat(&client(), AgentStatus::Degraded, counters, now());
        assert_eq!(key, "af-9");
        let json: serde_json::Value = serde_json::from_slice(&value).unwrap();
        assert_eq!(json["client_id"], "af-9");
        assert_eq!(json["status"], "degraded");
        assert_eq!(json["metrics"]["resources_sent"], 5);
        let decoded = decode_heartbeat(Some(key.as_bytes()), Some(&value))
            .expect("the control plane decodes it");
        assert_eq!(decoded.client_id.as_str(), "af-9");
    }
}
