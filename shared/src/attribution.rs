//! Attributing the deployed agents' untagged Kubernetes events to the one client that owns
//! their involved object (protocol.md, "Keys" and "Raw Kubernetes events").
//!
//! The 2.1.x chart's event exporter keys a raw Event by its uid alone, with no tenant. Such
//! an event belongs to the client whose state watcher reported the event's involved object
//! on `state.k8s.resource` (keys `<client>::<kind>:<uid>`; object uids are unique across
//! clusters), and to no other. This module is the pure part of that decision, with no Kafka
//! in it: an index from object uid to the clients that reported it ([`OwnerIndex`]), what an
//! untagged record is ([`classify_event`]), the decision ([`attribute`]), and the bounded
//! wait for a resource that has not been reported yet ([`Parked`]). docs/architecture.md,
//! "Attributing untagged agent events", says where it runs and why there.
//!
//! Cost: the index is keyed by the uid parsed from the state record's *key*, so building it
//! reads no value except a deletion's `op`; a UUID uid (what Kubernetes issues) is held as
//! 16 bytes. An untagged event is parsed once, for the few fields the decision needs.

use std::borrow::Cow;
use std::collections::{HashMap, VecDeque};

use chrono::{DateTime, Utc};
use serde::Deserialize;

use crate::client_id::ClientId;
use crate::keys::{parse_key, KeyForm};

/// An object uid as the index holds it: a UUID in 16 bytes, anything else as text.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum UidKey {
    Uuid(u128),
    Text(Box<str>),
}

impl UidKey {
    fn of(uid: &str) -> Self {
        parse_uuid(uid).map_or_else(|| Self::Text(uid.into()), Self::Uuid)
    }
}

/// `8-4-4-4-12` hex digits, either case, as Kubernetes writes uids.
fn parse_uuid(text: &str) -> Option<u128> {
    let bytes = text.as_bytes();
    if bytes.len() != 36 {
        return None;
    }
    let mut value: u128 = 0;
    for (i, &b) in bytes.iter().enumerate() {
        if matches!(i, 8 | 13 | 18 | 23) {
            if b != b'-' {
                return None;
            }
            continue;
        }
        let digit = (b as char).to_digit(16)?;
        value = (value << 4) | u128::from(digit);
    }
    Some(value)
}

/// Who reported an object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Owner<'a> {
    /// Exactly one client: its events are that client's.
    One(&'a ClientId),
    /// Two or more clients reported the same uid: nothing is attributed through it.
    Contested { claimants: usize },
    /// Nobody (yet).
    Unknown,
}

/// What a `state.k8s.resource` record did to the index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResourceChange {
    /// The client now claims the uid; `contested` when another client claims it too.
    Claimed { first_claim: bool, contested: bool },
    /// A deletion (tombstone or `op: DELETE`) withdrew the client's claim.
    Withdrawn,
    /// Not a resource record the index can use, and why.
    Ignored(&'static str),
}

/// Object uid → the clients that reported it, built from `state.k8s.resource`.
#[derive(Debug, Default)]
pub struct OwnerIndex {
    clients: Vec<ClientId>,
    client_numbers: HashMap<ClientId, u32>,
    /// Almost always one claimant; a contested uid keeps them all, so that one client's
    /// deletion leaves the other as the owner.
    claims: HashMap<UidKey, Claimants>,
    /// How many of `claims` have two or more claimants, kept as they change (the gauge is
    /// read per record; counting would scan the index).
    contested: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Claimants {
    One(u32),
    Many(Vec<u32>),
}

#[derive(Deserialize)]
struct ResourceOp<'a> {
    #[serde(borrow, default)]
    op: Option<Cow<'a, str>>,
}

/// The tenant and object uid of a `state.k8s.resource` key, `<client>::<kind>:<uid>`.
pub fn resource_key_uid(key: &[u8]) -> Option<(&str, &str)> {
    let tenant_key = parse_key(key)?;
    if tenant_key.form != KeyForm::Pair {
        return None;
    }
    let (_kind, uid) = tenant_key.rest.split_once(':')?;
    (!uid.is_empty()).then_some((tenant_key.tenant, uid))
}

impl OwnerIndex {
    /// Applies one `state.k8s.resource` record: key `<client>::<kind>:<uid>`; a null value
    /// or `"op":"DELETE"` withdraws the claim.
    pub fn apply_resource(&mut self, key: Option<&[u8]>, value: Option<&[u8]>) -> ResourceChange {
        let Some((tenant, uid)) = key.and_then(resource_key_uid) else {
            return ResourceChange::Ignored("not a <client>::<kind>:<uid> key");
        };
        let Ok(client) = ClientId::parse(tenant) else {
            return ResourceChange::Ignored("invalid client id");
        };
        let deleted = match value {
            None => true,
            Some(bytes) => serde_json::from_slice::<ResourceOp<'_>>(bytes)
                .ok()
                .and_then(|record| record.op)
                .is_some_and(|op| op.eq_ignore_ascii_case("DELETE")),
        };
        let number = self.number_of(client);
        let uid = UidKey::of(uid);
        if deleted {
            return self.withdraw(uid, number);
        }
        match self.claims.get_mut(&uid) {
            None => {
                self.claims.insert(uid, Claimants::One(number));
                ResourceChange::Claimed {
                    first_claim: true,
                    contested: false,
                }
            }
            Some(Claimants::One(existing)) if *existing == number => ResourceChange::Claimed {
                first_claim: false,
                contested: false,
            },
            Some(claimants) => {
                let mut all = match claimants {
                    Claimants::One(existing) => {
                        self.contested += 1;
                        vec![*existing]
                    }
                    Claimants::Many(all) => std::mem::take(all),
                };
                let first_claim = !all.contains(&number);
                if first_claim {
                    all.push(number);
                }
                *claimants = Claimants::Many(all);
                ResourceChange::Claimed {
                    first_claim,
                    contested: true,
                }
            }
        }
    }

    fn withdraw(&mut self, uid: UidKey, number: u32) -> ResourceChange {
        let Some(claimants) = self.claims.get_mut(&uid) else {
            return ResourceChange::Ignored("deletion of an unknown uid");
        };
        match claimants {
            Claimants::One(existing) if *existing == number => {
                self.claims.remove(&uid);
                ResourceChange::Withdrawn
            }
            Claimants::One(_) => {
                ResourceChange::Ignored("deletion by a client that never claimed it")
            }
            Claimants::Many(all) => {
                let before = all.len();
                all.retain(|claimant| *claimant != number);
                if all.len() == before {
                    return ResourceChange::Ignored("deletion by a client that never claimed it");
                }
                if let [only] = all.as_slice() {
                    *claimants = Claimants::One(*only);
                    self.contested -= 1;
                }
                ResourceChange::Withdrawn
            }
        }
    }

    fn number_of(&mut self, client: ClientId) -> u32 {
        if let Some(number) = self.client_numbers.get(&client) {
            return *number;
        }
        let number = self.clients.len() as u32;
        self.clients.push(client.clone());
        self.client_numbers.insert(client, number);
        number
    }

    /// Who reported the object `uid`.
    pub fn owner(&self, uid: &str) -> Owner<'_> {
        match self.claims.get(&UidKey::of(uid)) {
            None => Owner::Unknown,
            Some(Claimants::One(number)) => Owner::One(&self.clients[*number as usize]),
            Some(Claimants::Many(all)) => Owner::Contested {
                claimants: all.len(),
            },
        }
    }

    /// Objects indexed.
    pub fn len(&self) -> usize {
        self.claims.len()
    }

    pub fn is_empty(&self) -> bool {
        self.claims.is_empty()
    }

    /// Objects two or more clients claim.
    pub fn contested(&self) -> usize {
        self.contested
    }
}

/// What an untagged record on an event topic is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventShape {
    /// A raw core/v1 Event: its own uid (from `metadata.uid`, else none) and its involved
    /// object's uid.
    Raw {
        event_uid: Option<String>,
        involved_uid: String,
        /// A `client_id` the record carries in its body, when it is a valid id: evidence
        /// that names a client (protocol.md, "Keys").
        named_client: Option<ClientId>,
    },
    /// A raw Event whose involved object carries no uid: nothing can attribute it.
    RawWithoutObjectUid,
    /// This project's normalized record (or the original normalizer's): never processed
    /// again.
    Normalized,
    /// Neither (not JSON, not an object, something else).
    NotAnEvent,
}

#[derive(Deserialize)]
struct EventProbe<'a> {
    #[serde(borrow, default)]
    metadata: Option<UidHolder<'a>>,
    #[serde(borrow, default, rename = "involvedObject")]
    involved_object: Option<UidHolder<'a>>,
    #[serde(borrow, default)]
    event_type_abstract: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    etype: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    client_id: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct UidHolder<'a> {
    #[serde(borrow, default)]
    uid: Option<Cow<'a, str>>,
}

/// Tells a raw Event from a normalized record by shape: a normalized record carries
/// `event_type_abstract` or `etype` (and no `involvedObject`); a raw Event carries
/// `involvedObject`.
pub fn classify_event(value: &[u8]) -> EventShape {
    let Ok(probe) = serde_json::from_slice::<EventProbe<'_>>(value) else {
        return EventShape::NotAnEvent;
    };
    match probe.involved_object {
        Some(object) => match object.uid.filter(|uid| !uid.is_empty()) {
            Some(uid) => EventShape::Raw {
                event_uid: probe
                    .metadata
                    .and_then(|metadata| metadata.uid)
                    .filter(|uid| !uid.is_empty())
                    .map(Cow::into_owned),
                involved_uid: uid.into_owned(),
                named_client: probe
                    .client_id
                    .and_then(|client| ClientId::parse(&client).ok()),
            },
            None => EventShape::RawWithoutObjectUid,
        },
        None if probe.event_type_abstract.is_some() || probe.etype.is_some() => {
            EventShape::Normalized
        }
        None => EventShape::NotAnEvent,
    }
}

/// The decision for one untagged record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attribution {
    /// Re-key it `<client>::event::<event uid>` onto `raw.k8s.events`.
    To { client: ClientId, key: String },
    /// Its object is not reported yet: wait (bounded) for it.
    Wait { involved_uid: String },
    /// Its object is claimed by several clients: unattributed, counted.
    Contested,
    /// A raw Event with nothing to attribute it by: unattributed, counted.
    NoObjectUid,
    /// Already normalized: not ours to process again.
    AlreadyNormalized,
    /// Not an Event at all: unattributed, counted.
    NotAnEvent,
}

/// Decides what happens to an untagged record (`key` has no tenant) with `value`.
pub fn attribute(index: &OwnerIndex, key: Option<&[u8]>, value: &[u8]) -> Attribution {
    match classify_event(value) {
        EventShape::Normalized => Attribution::AlreadyNormalized,
        EventShape::NotAnEvent => Attribution::NotAnEvent,
        EventShape::RawWithoutObjectUid => Attribution::NoObjectUid,
        EventShape::Raw {
            event_uid,
            involved_uid,
            named_client,
        } => {
            // Evidence that names one client: the object's one claimant, or a client id in
            // the body. Two pieces of evidence that disagree attribute nothing.
            let owner = match (index.owner(&involved_uid), named_client) {
                (Owner::One(owner), Some(named)) if *owner != named => {
                    return Attribution::Contested
                }
                (Owner::One(owner), _) => owner.clone(),
                (Owner::Contested { .. }, _) => return Attribution::Contested,
                (Owner::Unknown, Some(named)) => named,
                (Owner::Unknown, None) => return Attribution::Wait { involved_uid },
            };
            // The event's own uid names it; the chart's key is that same uid.
            let event_uid = event_uid
                .or_else(|| {
                    key.and_then(|k| std::str::from_utf8(k).ok())
                        .filter(|k| !k.is_empty())
                        .map(str::to_string)
                })
                .unwrap_or_else(|| involved_uid.clone());
            Attribution::To {
                key: format!("{owner}::event::{event_uid}"),
                client: owner,
            }
        }
    }
}

/// Records waiting for their involved object to be reported, for at most `window` and at
/// most `capacity` records; what leaves by expiry or overflow is unattributed.
#[derive(Debug)]
pub struct Parked<T> {
    window: chrono::Duration,
    capacity: usize,
    by_uid: HashMap<String, Vec<(u64, T)>>,
    /// Arrival order: (sequence, parked at, uid). Entries whose record was taken stay
    /// until they reach the front, where they are dropped.
    order: VecDeque<(u64, DateTime<Utc>, String)>,
    next: u64,
    len: usize,
}

impl<T> Parked<T> {
    pub fn new(window: chrono::Duration, capacity: usize) -> Self {
        Self {
            window,
            capacity,
            by_uid: HashMap::new(),
            order: VecDeque::new(),
            next: 0,
            len: 0,
        }
    }

    /// Parks `item` until `uid` is reported; when full, the oldest parked record leaves to
    /// make room and is returned (unattributed).
    pub fn park(&mut self, uid: &str, item: T, now: DateTime<Utc>) -> Option<T> {
        let evicted = if self.len >= self.capacity {
            self.pop_oldest()
        } else {
            None
        };
        let sequence = self.next;
        self.next += 1;
        self.by_uid
            .entry(uid.to_string())
            .or_default()
            .push((sequence, item));
        self.order.push_back((sequence, now, uid.to_string()));
        self.len += 1;
        evicted
    }

    /// Everything waiting for `uid`, in arrival order.
    pub fn take(&mut self, uid: &str) -> Vec<T> {
        let items: Vec<T> = self
            .by_uid
            .remove(uid)
            .unwrap_or_default()
            .into_iter()
            .map(|(_, item)| item)
            .collect();
        self.len -= items.len();
        items
    }

    /// What has waited longer than the window at `now`, oldest first.
    pub fn expire(&mut self, now: DateTime<Utc>) -> Vec<T> {
        let mut expired = Vec::new();
        while self.drop_taken_front() {
            let Some((_, parked_at, _)) = self.order.front() else {
                break;
            };
            if now - *parked_at <= self.window {
                break;
            }
            if let Some(item) = self.pop_oldest() {
                expired.push(item);
            }
        }
        expired
    }

    /// Drops entries at the front of the arrival order whose record was taken already;
    /// whether a live entry is at the front now.
    fn drop_taken_front(&mut self) -> bool {
        while let Some((sequence, _, uid)) = self.order.front() {
            let live = self
                .by_uid
                .get(uid)
                .is_some_and(|items| items.iter().any(|(s, _)| s == sequence));
            if live {
                return true;
            }
            self.order.pop_front();
        }
        false
    }

    fn pop_oldest(&mut self) -> Option<T> {
        if !self.drop_taken_front() {
            return None;
        }
        let (sequence, _, uid) = self.order.pop_front()?;
        let items = self.by_uid.get_mut(&uid)?;
        let position = items.iter().position(|(s, _)| *s == sequence)?;
        let (_, item) = items.remove(position);
        if items.is_empty() {
            self.by_uid.remove(&uid);
        }
        self.len -= 1;
        Some(item)
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POD_A: &str = "0b1e2c3d-0000-4000-8000-00000000000a";
    const POD_B: &str = "0b1e2c3d-0000-4000-8000-00000000000b";

    fn state(
        index: &mut OwnerIndex,
        client: &str,
        uid: &str,
        value: Option<&str>,
    ) -> ResourceChange {
        index.apply_resource(
            Some(format!("{client}::pod:{uid}").as_bytes()),
            value.map(str::as_bytes),
        )
    }

    fn upsert(client: &str, uid: &str) -> String {
        format!(
            r#"{{"op":"UPSERT","client_id":"{client}","kind":"Pod","uid":"{uid}","namespace":"default","name":"api-7d9f"}}"#
        )
    }

    fn raw_event(event_uid: &str, object_uid: &str) -> String {
        format!(
            r#"{{"reason":"OOMKilled","type":"Warning","metadata":{{"uid":"{event_uid}"}},"involvedObject":{{"kind":"Pod","name":"api-7d9f","namespace":"default","uid":"{object_uid}"}}}}"#
        )
    }

    fn id(text: &str) -> ClientId {
        ClientId::parse(text).unwrap()
    }

    #[test]
    fn uuids_are_held_in_sixteen_bytes_and_other_uids_as_text() {
        assert_eq!(
            parse_uuid("0B1E2C3D-0000-4000-8000-00000000000a"),
            Some(0x0b1e2c3d_0000_4000_8000_00000000000a)
        );
        assert_eq!(parse_uuid("not-a-uuid"), None);
        assert_eq!(parse_uuid("0b1e2c3d+0000-4000-8000-00000000000a"), None);
        assert_eq!(UidKey::of("b1e2-x"), UidKey::Text("b1e2-x".into()));
    }

    #[test]
    fn a_raw_event_goes_to_the_one_client_that_reported_its_object() {
        let mut index = OwnerIndex::default();
        let upsert_a = upsert("af-9", POD_A);
        assert_eq!(
            state(&mut index, "af-9", POD_A, Some(&upsert_a)),
            ResourceChange::Claimed {
                first_claim: true,
                contested: false
            }
        );
        // Look-alike resource in another cluster: same namespace and name, another uid.
        let upsert_b = upsert("bz-1", POD_B);
        state(&mut index, "bz-1", POD_B, Some(&upsert_b));
        let event = raw_event("ev-1", POD_A);
        assert_eq!(
            attribute(&index, Some(b"ev-1"), event.as_bytes()),
            Attribution::To {
                client: id("af-9"),
                key: "af-9::event::ev-1".into()
            }
        );
        let other = raw_event("ev-2", POD_B);
        assert_eq!(
            attribute(&index, Some(b"ev-2"), other.as_bytes()),
            Attribution::To {
                client: id("bz-1"),
                key: "bz-1::event::ev-2".into()
            }
        );
    }

    #[test]
    fn an_object_nobody_reported_waits_and_one_two_clients_claim_is_never_attributed() {
        let mut index = OwnerIndex::default();
        let event = raw_event("ev-1", POD_A);
        assert_eq!(
            attribute(&index, Some(b"ev-1"), event.as_bytes()),
            Attribution::Wait {
                involved_uid: POD_A.into()
            }
        );
        let a = upsert("af-9", POD_A);
        let b = upsert("bz-1", POD_A);
        state(&mut index, "af-9", POD_A, Some(&a));
        assert_eq!(
            state(&mut index, "bz-1", POD_A, Some(&b)),
            ResourceChange::Claimed {
                first_claim: true,
                contested: true
            }
        );
        assert_eq!(index.contested(), 1);
        assert_eq!(
            attribute(&index, Some(b"ev-1"), event.as_bytes()),
            Attribution::Contested
        );
        // One claimant deletes it: the other is the owner again.
        assert_eq!(
            state(&mut index, "bz-1", POD_A, Some(r#"{"op":"DELETE"}"#)),
            ResourceChange::Withdrawn
        );
        assert_eq!(index.owner(POD_A), Owner::One(&id("af-9")));
        assert_eq!(index.contested(), 0);
        // A tombstone withdraws the last claim.
        assert_eq!(
            state(&mut index, "af-9", POD_A, None),
            ResourceChange::Withdrawn
        );
        assert_eq!(index.owner(POD_A), Owner::Unknown);
        assert!(index.is_empty());
    }

    #[test]
    fn repeats_and_foreign_deletions_change_nothing() {
        let mut index = OwnerIndex::default();
        let a = upsert("af-9", POD_A);
        state(&mut index, "af-9", POD_A, Some(&a));
        assert_eq!(
            state(&mut index, "af-9", POD_A, Some(&a)),
            ResourceChange::Claimed {
                first_claim: false,
                contested: false
            }
        );
        assert!(matches!(
            state(&mut index, "bz-1", POD_A, None),
            ResourceChange::Ignored(_)
        ));
        assert_eq!(index.owner(POD_A), Owner::One(&id("af-9")));
        assert!(matches!(
            index.apply_resource(Some(b"no-tenant"), Some(b"{}")),
            ResourceChange::Ignored(_)
        ));
        assert!(matches!(
            index.apply_resource(Some(b"af-9::event::x"), Some(b"{}")),
            ResourceChange::Ignored(_)
        ));
    }

    #[test]
    fn normalized_records_are_told_apart_from_raw_events_by_shape() {
        let normalized = r#"{"event_id":"e1","event_type_abstract":"MEMORY_OOM","etype":"k8s.event","subject":{"kind":"Pod","uid":"x"}}"#;
        assert_eq!(
            classify_event(normalized.as_bytes()),
            EventShape::Normalized
        );
        assert_eq!(
            attribute(&OwnerIndex::default(), None, normalized.as_bytes()),
            Attribution::AlreadyNormalized
        );
        assert_eq!(
            classify_event(raw_event("e", POD_A).as_bytes()),
            EventShape::Raw {
                event_uid: Some("e".into()),
                involved_uid: POD_A.into(),
                named_client: None,
            }
        );
        assert_eq!(
            classify_event(br#"{"involvedObject":{"kind":"Node","name":"n1"}}"#),
            EventShape::RawWithoutObjectUid
        );
        assert_eq!(classify_event(b"not json"), EventShape::NotAnEvent);
        assert_eq!(classify_event(b"[1,2]"), EventShape::NotAnEvent);
        assert_eq!(
            classify_event(br#"{"hello":"world"}"#),
            EventShape::NotAnEvent
        );
    }

    #[test]
    fn a_client_id_in_the_body_names_the_client_unless_the_object_says_otherwise() {
        let mut index = OwnerIndex::default();
        let named = |client: &str, object: &str| {
            format!(
                r#"{{"client_id":"{client}","metadata":{{"uid":"ev"}},"involvedObject":{{"uid":"{object}"}}}}"#
            )
        };
        // Nobody reported the object: the body's id is the evidence.
        assert_eq!(
            attribute(&index, None, named("af-9", POD_A).as_bytes()),
            Attribution::To {
                client: id("af-9"),
                key: "af-9::event::ev".into()
            }
        );
        let b = upsert("bz-1", POD_A);
        state(&mut index, "bz-1", POD_A, Some(&b));
        // The object's owner and the body disagree: nothing is attributed.
        assert_eq!(
            attribute(&index, None, named("af-9", POD_A).as_bytes()),
            Attribution::Contested
        );
        assert_eq!(
            attribute(&index, None, named("bz-1", POD_A).as_bytes()),
            Attribution::To {
                client: id("bz-1"),
                key: "bz-1::event::ev".into()
            }
        );
        // An id that is not a valid client id is no evidence.
        assert_eq!(
            attribute(
                &OwnerIndex::default(),
                None,
                named("Not_Valid", POD_B).as_bytes()
            ),
            Attribution::Wait {
                involved_uid: POD_B.into()
            }
        );
    }

    #[test]
    fn without_metadata_uid_the_chart_key_names_the_event() {
        let mut index = OwnerIndex::default();
        let a = upsert("af-9", POD_A);
        state(&mut index, "af-9", POD_A, Some(&a));
        let event = format!(r#"{{"reason":"BackOff","involvedObject":{{"uid":"{POD_A}"}}}}"#);
        assert_eq!(
            attribute(&index, Some(b"chart-key-uid"), event.as_bytes()),
            Attribution::To {
                client: id("af-9"),
                key: "af-9::event::chart-key-uid".into()
            }
        );
    }

    fn at(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_700_000_000 + secs, 0).unwrap()
    }

    #[test]
    fn parked_records_are_released_by_their_object_expired_by_the_window_or_evicted_when_full() {
        let mut parked: Parked<&str> = Parked::new(chrono::Duration::seconds(60), 3);
        assert_eq!(parked.park(POD_A, "a1", at(0)), None);
        assert_eq!(parked.park(POD_B, "b1", at(10)), None);
        assert_eq!(parked.park(POD_A, "a2", at(20)), None);
        assert_eq!(parked.len(), 3);
        // Full: the oldest leaves to make room.
        assert_eq!(parked.park(POD_B, "b2", at(30)), Some("a1"));
        assert_eq!(parked.take(POD_A), vec!["a2"]);
        assert_eq!(parked.len(), 2);
        assert!(parked.take(POD_A).is_empty());
        // b1 parked at 10 is older than 60 s at 71; b2 (30) is not.
        assert_eq!(parked.expire(at(71)), vec!["b1"]);
        assert_eq!(parked.expire(at(90)), Vec::<&str>::new());
        assert_eq!(parked.expire(at(91)), vec!["b2"]);
        assert!(parked.is_empty());
    }
}
