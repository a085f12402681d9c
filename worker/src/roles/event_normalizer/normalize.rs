//! Raw Kubernetes Events (`raw.k8s.events`) → [`NormalizedEvent`].
//!
//! The input is a core/v1 Event as the event exporter sends it: the Event plus
//! `involvedObject.labels` and `involvedObject.annotations`, sometimes with the exporter's
//! own `event_id` (and, from some producers, a `client_id`). The events.k8s.io/v1 spellings
//! (`regarding`, `note`, `deprecatedSource`, `deprecatedFirstTimestamp`,
//! `deprecatedLastTimestamp`, `deprecatedCount`) are read as their core/v1 equivalents.
//!
//! Decisions, all of which the tests pin:
//! - **`event_id`** is `evt-` and 16 lower-case hex digits of xxh3-64 (seed 0) over: the
//!   identity (the length as u64 little-endian, then the bytes, of `metadata.uid`, else of
//!   the input's `event_id`), then the creation time `metadata.creationTimestamp` hashed by
//!   its instant, not its spelling (see `normalize_common::hash_time`). Repeats of one
//!   Event (same uid, new `lastTimestamp`, higher `count`) therefore share one id. The
//!   recipe is part of the wire format: changing it splits every event already in a graph
//!   from its repeats.
//! - **`raw_event_id`** is the input's `event_id`, else `metadata.uid`.
//! - **time** (`timestamp` and `event_time`): the first usable of `lastTimestamp` (the
//!   latest occurrence, which moves as an Event repeats), `eventTime` (set instead by
//!   events.k8s.io/v1 writers), `firstTimestamp`, `metadata.creationTimestamp`. Null,
//!   empty, unparseable and Go-zero times are skipped. None usable → absent.
//! - **severity**: `type` `Normal` → INFO, `Warning` → WARNING, another level word
//!   (`Error`, `Critical`, …, see [`Severity::from_level`]) → that level, missing or
//!   unknown → INFO.
//! - **`event_type_abstract`**: the exact `reason` table of the protocol first, then the
//!   substring rules in their listed order (`OOM` case-sensitively, so that "Room" or
//!   "Zoom" do not read as out-of-memory; the other words ignoring ASCII case), else CUSTOM.
//! - **namespace**: the involved object's, else the Event's own `metadata.namespace`.
//! - **node**: `source.host`, else the involved object's name when it is a Node.
//! - **service**: the involved object's name when it is a Service, else its label
//!   `app.kubernetes.io/name`, `app` or `k8s-app`, first present.
//! - **errors**: not JSON, not an object, a field of the wrong type, neither `reason` nor
//!   `message`, neither `metadata.uid` nor `event_id`, or a body `client_id` naming
//!   another tenant.

use kg_shared::records::{EventTypeAbstract, NormalizedEvent, Severity, Subject};
use kg_shared::ClientId;
use serde::{Deserialize, Deserializer};
use xxhash_rust::xxh3::Xxh3;

use crate::roles::normalize_common::{
    check_tenant, format_id, hash_str, hash_time, non_empty, parse_object, parse_time,
    take_non_empty, JsonStr, NormalizeError,
};

/// The exact `reason` → abstract type table of the protocol.
pub const REASON_TABLE: [(&str, EventTypeAbstract); 21] = [
    ("Pulling", EventTypeAbstract::PodImagePull),
    ("Pulled", EventTypeAbstract::PodImagePulled),
    ("Created", EventTypeAbstract::PodCreated),
    ("Started", EventTypeAbstract::PodStarted),
    ("Killing", EventTypeAbstract::PodKilling),
    ("Failed", EventTypeAbstract::PodFailed),
    ("BackOff", EventTypeAbstract::PodBackoff),
    ("CrashLoopBackOff", EventTypeAbstract::PodCrashLoop),
    ("OOMKilled", EventTypeAbstract::MemoryOom),
    ("Evicted", EventTypeAbstract::PodEvicted),
    ("FailedScheduling", EventTypeAbstract::SchedulingFailed),
    ("FailedMount", EventTypeAbstract::VolumeMountFailed),
    (
        "FailedCreatePodSandBox",
        EventTypeAbstract::NetworkSetupFailed,
    ),
    ("NetworkNotReady", EventTypeAbstract::NetworkNotReady),
    ("Unhealthy", EventTypeAbstract::HealthCheckFailed),
    ("ProbeWarning", EventTypeAbstract::ProbeWarning),
    ("NodeNotReady", EventTypeAbstract::NodeNotReady),
    ("NodeReady", EventTypeAbstract::NodeReady),
    ("RegisteredNode", EventTypeAbstract::NodeRegistered),
    ("FailedDiscovery", EventTypeAbstract::ServiceDiscoveryFailed),
    ("UpdatedEndpoints", EventTypeAbstract::EndpointsUpdated),
];

/// The substring fallbacks, tried in this order. The flag says whether ASCII case is
/// ignored.
const SUBSTRING_RULES: [(&str, bool, EventTypeAbstract); 9] = [
    ("OOM", false, EventTypeAbstract::MemoryOom),
    ("OutOfMemory", true, EventTypeAbstract::MemoryOom),
    ("CPU", true, EventTypeAbstract::CpuHigh),
    ("Disk", true, EventTypeAbstract::DiskIssue),
    ("Volume", true, EventTypeAbstract::DiskIssue),
    ("Network", true, EventTypeAbstract::NetworkIssue),
    ("Connection", true, EventTypeAbstract::NetworkIssue),
    ("Timeout", true, EventTypeAbstract::Timeout),
    ("Crash", true, EventTypeAbstract::PodCrashLoop),
];

/// The abstract type of an Event `reason`: exact table, then substring rules, else CUSTOM.
pub fn event_type_abstract(reason: &str) -> EventTypeAbstract {
    if let Some(&(_, t)) = REASON_TABLE.iter().find(|(r, _)| *r == reason) {
        return t;
    }
    SUBSTRING_RULES
        .iter()
        .find(|(needle, ignore_case, _)| {
            if *ignore_case {
                contains_ignore_ascii_case(reason, needle)
            } else {
                reason.contains(needle)
            }
        })
        .map_or(EventTypeAbstract::Custom, |&(_, _, t)| t)
}

fn contains_ignore_ascii_case(haystack: &str, needle: &str) -> bool {
    let (h, n) = (haystack.as_bytes(), needle.as_bytes());
    n.is_empty() || h.windows(n.len()).any(|w| w.eq_ignore_ascii_case(n))
}

/// The severity of an Event `type`.
pub fn event_severity(event_type: Option<&str>) -> Severity {
    match event_type {
        Some("Normal") | None => Severity::Info,
        Some("Warning") => Severity::Warning,
        Some(other) => Severity::from_level(other).unwrap_or(Severity::Info),
    }
}

#[derive(Deserialize)]
struct RawEvent<'a> {
    #[serde(borrow)]
    event_id: Option<JsonStr<'a>>,
    #[serde(borrow)]
    client_id: Option<JsonStr<'a>>,
    #[serde(borrow)]
    reason: Option<JsonStr<'a>>,
    #[serde(borrow, alias = "note")]
    message: Option<JsonStr<'a>>,
    #[serde(borrow, rename = "type")]
    event_type: Option<JsonStr<'a>>,
    #[serde(borrow)]
    metadata: Option<RawMeta<'a>>,
    #[serde(borrow, rename = "involvedObject", alias = "regarding")]
    involved_object: Option<RawObject<'a>>,
    #[serde(borrow, alias = "deprecatedSource")]
    source: Option<RawSource<'a>>,
    #[serde(borrow, rename = "eventTime")]
    event_time: Option<JsonStr<'a>>,
    #[serde(borrow, rename = "firstTimestamp", alias = "deprecatedFirstTimestamp")]
    first_timestamp: Option<JsonStr<'a>>,
    #[serde(borrow, rename = "lastTimestamp", alias = "deprecatedLastTimestamp")]
    last_timestamp: Option<JsonStr<'a>>,
    #[serde(default, alias = "deprecatedCount", deserialize_with = "lenient_count")]
    count: Option<u64>,
}

#[derive(Deserialize)]
struct RawMeta<'a> {
    #[serde(borrow)]
    uid: Option<JsonStr<'a>>,
    #[serde(borrow)]
    namespace: Option<JsonStr<'a>>,
    #[serde(borrow, rename = "creationTimestamp")]
    creation_timestamp: Option<JsonStr<'a>>,
}

#[derive(Deserialize)]
struct RawObject<'a> {
    #[serde(borrow)]
    kind: Option<JsonStr<'a>>,
    #[serde(borrow)]
    name: Option<JsonStr<'a>>,
    #[serde(borrow)]
    namespace: Option<JsonStr<'a>>,
    #[serde(borrow)]
    uid: Option<JsonStr<'a>>,
    #[serde(borrow)]
    labels: Option<RawLabels<'a>>,
}

/// Only the labels that name a service are read; the rest are skipped.
#[derive(Deserialize)]
struct RawLabels<'a> {
    #[serde(borrow, rename = "app.kubernetes.io/name")]
    app_name: Option<JsonStr<'a>>,
    #[serde(borrow)]
    app: Option<JsonStr<'a>>,
    #[serde(borrow, rename = "k8s-app")]
    k8s_app: Option<JsonStr<'a>>,
}

#[derive(Deserialize)]
struct RawSource<'a> {
    #[serde(borrow)]
    host: Option<JsonStr<'a>>,
}

/// `count` as a non-negative integer; any other shape (a string, a float, an object) reads
/// as absent rather than failing the whole Event.
fn lenient_count<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    Ok(match Option::<serde_json::Value>::deserialize(d)? {
        Some(serde_json::Value::Number(n)) => n.as_u64(),
        Some(serde_json::Value::String(s)) => s.trim().parse().ok(),
        _ => None,
    })
}

/// Normalizes one raw Kubernetes Event for `client`. See the module documentation for
/// how each field is derived and what is rejected.
#[allow(clippy::too_many_lines)] // one linear sequence; to be split when it next changes
pub fn normalize_event(client: &ClientId, raw: &[u8]) -> Result<NormalizedEvent, NormalizeError> {
    let ev: RawEvent = parse_object(raw)?;
    check_tenant(client, non_empty(&ev.client_id))?;

    if non_empty(&ev.reason).is_none() && non_empty(&ev.message).is_none() {
        return Err(NormalizeError::MissingField("both reason and message"));
    }
    let RawEvent {
        event_id: input_event_id,
        reason,
        message,
        event_type,
        metadata,
        involved_object,
        source,
        event_time,
        first_timestamp,
        last_timestamp,
        count,
        client_id: _,
    } = ev;
    let RawMeta {
        uid: meta_uid,
        namespace: meta_namespace,
        creation_timestamp,
    } = metadata.unwrap_or(RawMeta {
        uid: None,
        namespace: None,
        creation_timestamp: None,
    });

    let meta_uid = non_empty(&meta_uid);
    let input_event_id = non_empty(&input_event_id);
    let Some(identity) = meta_uid.or(input_event_id) else {
        return Err(NormalizeError::MissingField(
            "both metadata.uid and event_id (nothing identifies the event)",
        ));
    };
    let creation = non_empty(&creation_timestamp);

    let mut hasher = Xxh3::new();
    hash_str(&mut hasher, identity);
    hash_time(&mut hasher, creation);
    let event_id = format_id("evt-", hasher.digest());
    let raw_event_id = input_event_id.or(meta_uid).unwrap_or(identity).to_owned();

    let timestamp = [
        non_empty(&last_timestamp),
        non_empty(&event_time),
        non_empty(&first_timestamp),
        creation,
    ]
    .into_iter()
    .flatten()
    .find_map(parse_time);

    let severity = event_severity(non_empty(&event_type));
    let reason = take_non_empty(reason);
    let event_type_abstract = reason
        .as_deref()
        .map_or(EventTypeAbstract::Custom, event_type_abstract);

    let (kind, name, obj_namespace, obj_uid, labels) = match involved_object {
        Some(o) => (
            take_non_empty(o.kind),
            take_non_empty(o.name),
            take_non_empty(o.namespace),
            take_non_empty(o.uid),
            o.labels,
        ),
        None => (None, None, None, None, None),
    };
    let kind_is = |k: &str| kind.as_deref() == Some(k);
    let namespace = obj_namespace.or_else(|| take_non_empty(meta_namespace));
    let pod_name = if kind_is("Pod") { name.clone() } else { None };
    let node = source.and_then(|s| take_non_empty(s.host)).or_else(|| {
        if kind_is("Node") {
            name.clone()
        } else {
            None
        }
    });
    let service = if kind_is("Service") {
        name.clone()
    } else {
        labels.and_then(|l| {
            take_non_empty(l.app_name)
                .or_else(|| take_non_empty(l.app))
                .or_else(|| take_non_empty(l.k8s_app))
        })
    };

    Ok(NormalizedEvent {
        client_id: client.clone(),
        event_id,
        raw_event_id,
        timestamp,
        event_time: timestamp,
        etype: kg_shared::records::Etype::K8sEvent,
        event_type_abstract,
        severity,
        reason,
        message: take_non_empty(message),
        subject: Subject {
            kind: kind.clone(),
            uid: obj_uid,
            ns: namespace.clone(),
            name: name.clone(),
        },
        namespace,
        pod_name,
        node,
        service,
        involved_object_kind: kind,
        involved_object_name: name,
        count,
    })
}
