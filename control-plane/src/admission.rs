//! Admission: which new clients the control plane takes on, and when. A maximum number of
//! clients, a maximum rate of new clients (a token bucket), and an optional allowlist.
//!
//! Admission defers instead of dropping. A registration of a client not admitted yet waits
//! in arrival order (the registry record's timestamp, then partition and offset: durable,
//! so a restart's replay sees the same order), and each reconcile pass admits from the
//! front as the rate and the client cap allow: a registration held back by the rate is
//! admitted when the bucket refills, one held back by the cap when a slot frees. Only the
//! allowlist refuses for good.
//!
//! Clients whose workers are already running (a restarted control plane finds them) are
//! admitted first and cost no token: they need no spawn, and they keep the slots they had,
//! so a restart never swaps which clients are served. Everything else, the replay
//! included, spends tokens: a restart does not start thousands of clients at once.
//!
//! Memory is bounded: at most `max_waiting` registrations wait, each kept compact. Past
//! that a registration is not kept (counted as `waiting_full`), but the registry still
//! holds it: admission marks, per registry partition, the first offset it dropped, and once
//! the line has drained to half, the controller has the registry read again from those
//! marks (`crate::refill`). What that re-read brings back goes through the same line, in
//! arrival order; what does not fit is marked again. So a registration past the line is
//! admitted when its turn comes, without a restart, and memory stays bounded by the line.

use std::collections::{BTreeMap, HashMap, HashSet};

use chrono::{DateTime, Utc};
use kg_shared::registry::Registration;
use kg_shared::ClientId;
use serde_json::{Map, Value};

/// Admission limits.
#[derive(Debug, Clone, PartialEq)]
pub struct AdmissionSettings {
    pub max_clients: usize,
    /// New clients per minute; the bucket holds as many.
    pub max_new_per_minute: u32,
    /// When not empty, only these client ids are admitted.
    pub allowlist: HashSet<String>,
    /// The most registrations kept waiting.
    pub max_waiting: usize,
}

/// Why a registration was refused for good.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    NotAllowed,
}

impl Refusal {
    pub fn reason_code(self) -> &'static str {
        match self {
            Refusal::NotAllowed => "not_allowed",
        }
    }
}

/// What became of a registration of a client not admitted yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deferral {
    /// Waiting for its turn; `again` when it was already waiting (a repeat); `displaced`
    /// when the line was full and this one, arriving earlier, took the last one's place.
    Waiting { again: bool, displaced: bool },
    /// Not kept: the waiting room is full.
    WaitingFull,
}

impl Deferral {
    pub fn reason_code(self) -> &'static str {
        match self {
            Deferral::Waiting { .. } => "waiting",
            Deferral::WaitingFull => "waiting_full",
        }
    }
}

/// Where a registration stands in the registry: the order clients arrived in, the same on
/// every replay.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Arrival {
    /// The record's Kafka timestamp, ms.
    pub timestamp_ms: i64,
    pub partition: i32,
    pub offset: i64,
}

/// Per registry partition, the first offset of a registration dropped because the line was
/// full: where a re-read of the registry starts.
pub type RefillMarks = BTreeMap<i32, i64>;

/// Whether a re-read of the registry is under way. One at a time: its marks were taken
/// when it started, and what it drops again is marked anew.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refill {
    Idle,
    Reading,
}

/// A registration admitted from the waiting room, ready for the table.
#[derive(Debug, Clone)]
pub struct Admitted {
    pub registration: Registration,
    pub at: DateTime<Utc>,
    /// Admitted without a token because its workers were already running.
    pub had_workers: bool,
    /// The latest heartbeat received while it waited: a restarted control plane replays
    /// the registry before the heartbeats, so a live client's liveness arrives while it
    /// waits for the first pass.
    pub last_heartbeat: Option<DateTime<Utc>>,
}

/// A waiting registration, kept compact: the fields as one JSON string.
#[derive(Debug, Clone)]
struct Waiting {
    arrival: Arrival,
    at: DateTime<Utc>,
    cluster_name: Option<Box<str>>,
    fields: Box<str>,
    recovered_from_split: bool,
    last_heartbeat: Option<DateTime<Utc>>,
}

impl Waiting {
    fn new(registration: &Registration, at: DateTime<Utc>, arrival: Arrival) -> Self {
        Self {
            arrival,
            at,
            cluster_name: registration.cluster_name.as_deref().map(Box::from),
            fields: serde_json::to_string(&registration.fields)
                .unwrap_or_default()
                .into_boxed_str(),
            recovered_from_split: registration.recovered_from_split,
            last_heartbeat: None,
        }
    }

    fn into_registration(self, client_id: ClientId) -> Registration {
        Registration {
            client_id,
            cluster_name: self.cluster_name.map(String::from),
            fields: serde_json::from_str::<Map<String, Value>>(&self.fields).unwrap_or_default(),
            recovered_from_split: self.recovered_from_split,
        }
    }
}

/// The admission state: a token bucket refilled with injected time, and the waiting room.
#[derive(Debug, Clone)]
pub struct Admission {
    settings: AdmissionSettings,
    tokens: f64,
    refilled_at: Option<DateTime<Utc>>,
    waiting: HashMap<ClientId, Waiting>,
    order: BTreeMap<Arrival, ClientId>,
    /// Where registrations dropped since the last re-read began.
    overflow: RefillMarks,
    refill: Refill,
    /// The clients the current re-read put in the line. A re-read replays a stretch of the
    /// registry that ingest has already applied, so it may only touch these: a tombstone it
    /// reads withdraws one of them, never a client ingest put in the line or the table.
    refilled: HashSet<ClientId>,
}

impl Admission {
    pub fn new(settings: AdmissionSettings) -> Self {
        let tokens = settings.max_new_per_minute as f64;
        Self {
            settings,
            tokens,
            refilled_at: None,
            waiting: HashMap::new(),
            order: BTreeMap::new(),
            overflow: RefillMarks::new(),
            refill: Refill::Idle,
            refilled: HashSet::new(),
        }
    }

    /// Takes a registration of a client that is not admitted: refused for good when the
    /// allowlist does not name it, otherwise waiting for its turn. A repeat keeps the
    /// earlier arrival (its place in the line) and takes the newer metadata, unless it is
    /// older, or a split fragment while the one held is whole.
    pub fn defer(
        &mut self,
        registration: &Registration,
        at: DateTime<Utc>,
        arrival: Arrival,
    ) -> Result<Deferral, Refusal> {
        let client = &registration.client_id;
        if !self.settings.allowlist.is_empty() && !self.settings.allowlist.contains(client.as_str())
        {
            return Err(Refusal::NotAllowed);
        }
        if let Some(waiting) = self.waiting.get_mut(client) {
            let arrival = waiting.arrival.min(arrival);
            // The table's rule for admitted clients: an older registration, or a fragment
            // salvaged from a split 2.1.x record while the one held is whole, does not
            // replace its metadata (a replayed registry brings records of several
            // partitions in any order, and the metadata says which pipelines run).
            let keep_held = at < waiting.at
                || (registration.recovered_from_split && !waiting.recovered_from_split);
            if keep_held {
                waiting.arrival = arrival;
            } else {
                let at = waiting.at.max(at);
                let last_heartbeat = waiting.last_heartbeat;
                *waiting = Waiting::new(registration, at, arrival);
                waiting.last_heartbeat = last_heartbeat;
            }
            return Ok(Deferral::Waiting {
                again: true,
                displaced: false,
            });
        }
        let mut displaced = false;
        if self.waiting.len() >= self.settings.max_waiting {
            // The line keeps the earliest arrivals: records of several partitions come in
            // batches, not in arrival order, so one that arrived before the last in line
            // takes its place, and that one is dropped instead (and marked, to be read
            // again like any registration past the line).
            match self.order.last_key_value() {
                Some((last, _)) if arrival < *last => {
                    let last = *last;
                    if let Some(client) = self.order.remove(&last) {
                        self.waiting.remove(&client);
                        self.refilled.remove(&client);
                    }
                    self.mark(last.partition, last.offset);
                    displaced = true;
                }
                _ => {
                    self.mark(arrival.partition, arrival.offset);
                    return Ok(Deferral::WaitingFull);
                }
            }
        }
        self.order.insert(arrival, client.clone());
        self.waiting
            .insert(client.clone(), Waiting::new(registration, at, arrival));
        Ok(Deferral::Waiting {
            again: false,
            displaced,
        })
    }

    /// Marks an offset of a registration dropped from (or never let into) the line, or
    /// where a re-read stopped: the next re-read of that partition starts at or before it.
    fn mark(&mut self, partition: i32, offset: i64) {
        let mark = self.overflow.entry(partition).or_insert(offset);
        *mark = (*mark).min(offset);
    }

    /// A registration read again from the registry (`crate::refill`), of a client not in
    /// the table. `None` when the line already holds the client from ingest, which read
    /// this client's later records too; otherwise as [`Admission::defer`].
    pub fn defer_refilled(
        &mut self,
        registration: &Registration,
        at: DateTime<Utc>,
        arrival: Arrival,
    ) -> Option<Result<Deferral, Refusal>> {
        let client = &registration.client_id;
        if self.waiting.contains_key(client) && !self.refilled.contains(client) {
            return None;
        }
        let deferral = self.defer(registration, at, arrival);
        if let Ok(Deferral::Waiting { again: false, .. }) = deferral {
            self.refilled.insert(client.clone());
        }
        Some(deferral)
    }

    /// A tombstone read again from the registry: it withdraws only a client the re-read
    /// itself put in the line. Whether it did.
    pub fn withdraw_refilled(&mut self, client: &ClientId) -> bool {
        self.refilled.remove(client) && self.withdraw(client)
    }

    /// The marks to read the registry again from, when a re-read is due: something was
    /// dropped, none is under way, and the line has drained to half (so the re-read has
    /// room to fill and is not started again for every slot that frees).
    pub fn take_refill(&mut self) -> Option<RefillMarks> {
        let due = self.refill == Refill::Idle
            && self.settings.max_waiting > 0
            && !self.overflow.is_empty()
            && self.waiting.len() <= self.settings.max_waiting / 2;
        if !due {
            return None;
        }
        self.refill = Refill::Reading;
        self.refilled.clear();
        Some(std::mem::take(&mut self.overflow))
    }

    /// A re-read ended; `unfinished` holds where it stopped in the partitions it did not
    /// finish (the broker gone, a shutdown), or the marks of one that could not start.
    pub fn refill_done(&mut self, unfinished: RefillMarks) {
        self.refill = Refill::Idle;
        self.refilled.clear();
        for (partition, offset) in unfinished {
            self.mark(partition, offset);
        }
    }

    /// Whether registrations were dropped that the registry still holds (a re-read is due
    /// or under way).
    #[cfg(test)]
    fn has_overflow(&self) -> bool {
        !self.overflow.is_empty() || self.refill == Refill::Reading
    }

    /// A deregistration of a waiting client: it leaves the line. Whether it was waiting.
    pub fn withdraw(&mut self, client: &ClientId) -> bool {
        self.refilled.remove(client);
        match self.waiting.remove(client) {
            Some(waiting) => {
                self.order.remove(&waiting.arrival);
                true
            }
            None => false,
        }
    }

    /// A heartbeat of `client`: kept (the latest) when it waits. Whether it waits.
    pub fn heartbeat(&mut self, client: &ClientId, at: DateTime<Utc>) -> bool {
        match self.waiting.get_mut(client) {
            Some(waiting) => {
                waiting.last_heartbeat =
                    Some(waiting.last_heartbeat.map_or(at, |last| last.max(at)));
                true
            }
            None => false,
        }
    }

    /// How many registrations wait.
    pub fn waiting(&self) -> usize {
        self.waiting.len()
    }

    /// Whether `client` waits.
    pub fn is_waiting(&self, client: &ClientId) -> bool {
        self.waiting.contains_key(client)
    }

    /// The decide step of admission, once per reconcile pass: which waiting clients are
    /// admitted now, given `current_clients` admitted and which clients have workers
    /// running. First those with workers (no token, arrival order), then the others in
    /// arrival order while tokens last; never past the client cap.
    pub fn admit_waiting(
        &mut self,
        current_clients: usize,
        has_workers: impl Fn(&ClientId) -> bool,
        now: DateTime<Utc>,
    ) -> Vec<Admitted> {
        self.refill(now);
        let room = self.settings.max_clients.saturating_sub(current_clients);
        let mut chosen: Vec<(Arrival, bool)> = Vec::new();
        for (arrival, client) in &self.order {
            if chosen.len() >= room {
                break;
            }
            if has_workers(client) {
                chosen.push((*arrival, true));
            }
        }
        for arrival in self.order.keys() {
            if chosen.len() >= room || self.tokens < 1.0 {
                break;
            }
            if chosen.iter().any(|(taken, _)| taken == arrival) {
                continue;
            }
            self.tokens -= 1.0;
            chosen.push((*arrival, false));
        }
        chosen.sort();
        chosen
            .into_iter()
            .filter_map(|(arrival, had_workers)| {
                let client = self.order.remove(&arrival)?;
                let waiting = self.waiting.remove(&client)?;
                let (at, last_heartbeat) = (waiting.at, waiting.last_heartbeat);
                Some(Admitted {
                    registration: waiting.into_registration(client),
                    at,
                    had_workers,
                    last_heartbeat,
                })
            })
            .collect()
    }

    fn refill(&mut self, now: DateTime<Utc>) {
        let rate = self.settings.max_new_per_minute as f64;
        let last = *self.refilled_at.get_or_insert(now);
        let elapsed = (now - last).num_milliseconds().max(0) as f64 / 60_000.0;
        self.tokens = (self.tokens + elapsed * rate).min(rate);
        self.refilled_at = Some(now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kg_shared::registry::{decode_registry, RegistryMessage};

    fn t(seconds: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_760_000_000 + seconds, 0).unwrap()
    }

    fn settings() -> AdmissionSettings {
        AdmissionSettings {
            max_clients: 3,
            max_new_per_minute: 2,
            allowlist: HashSet::new(),
            max_waiting: 100,
        }
    }

    fn registration(id: &str) -> Registration {
        let value = format!(r#"{{"client_id":"{id}","cluster_name":"prod-eu","region":"x"}}"#);
        match decode_registry(Some(id.as_bytes()), Some(value.as_bytes())).unwrap() {
            RegistryMessage::Register(registration) => registration,
            RegistryMessage::Deregister(_) => unreachable!(),
        }
    }

    fn arrival(n: i64) -> Arrival {
        Arrival {
            timestamp_ms: 1_000 + n,
            partition: (n % 3) as i32,
            offset: n,
        }
    }

    fn ids(admitted: &[Admitted]) -> Vec<&str> {
        admitted
            .iter()
            .map(|a| a.registration.client_id.as_str())
            .collect()
    }

    fn none(_: &ClientId) -> bool {
        false
    }

    /// Defers `ids` in the order given, each arriving at the given position.
    fn line_up_at(admission: &mut Admission, ids: &[(&str, i64)]) {
        for (id, n) in ids {
            assert_eq!(
                admission.defer(&registration(id), t(0), arrival(*n)),
                Ok(Deferral::Waiting {
                    again: false,
                    displaced: false
                })
            );
        }
    }

    /// Defers `ids` in the order given, each arriving at its position.
    fn line_up(admission: &mut Admission, ids: &[&str]) {
        let positioned: Vec<(&str, i64)> = ids.iter().zip(0..).map(|(id, n)| (*id, n)).collect();
        line_up_at(admission, &positioned);
    }

    #[test]
    fn a_waiting_client_keeps_its_newer_whole_registration_over_an_older_or_split_one() {
        let mut admission = Admission::new(settings());
        let whole = r#"{"client_id":"a","cluster_name":"prod-eu","pipelines":["traffic"]}"#;
        let whole = match decode_registry(Some(b"a"), Some(whole.as_bytes())).unwrap() {
            RegistryMessage::Register(registration) => registration,
            RegistryMessage::Deregister(_) => unreachable!(),
        };
        admission.defer(&whole, t(10), arrival(5)).unwrap();
        // An older registration read later (another partition of a replayed registry).
        admission
            .defer(&registration("a"), t(5), arrival(1))
            .unwrap();
        // A 2.1.x colon-split fragment, newer but salvaged.
        let mut split = registration("a");
        split.recovered_from_split = true;
        split.fields.remove("region");
        admission.defer(&split, t(20), arrival(9)).unwrap();
        let admitted = admission.admit_waiting(0, none, t(30));
        assert_eq!(ids(&admitted), ["a"]);
        assert_eq!(
            admitted[0].registration.fields.get("pipelines"),
            Some(&serde_json::json!(["traffic"]))
        );
        // A newer whole registration still replaces it.
        admission.defer(&whole, t(10), arrival(5)).unwrap();
        admission
            .defer(&registration("a"), t(40), arrival(6))
            .unwrap();
        let admitted = admission.admit_waiting(0, none, t(100));
        assert_eq!(admitted[0].registration.fields.get("pipelines"), None);
        assert_eq!(admitted[0].registration.fields["region"], "x");
    }

    #[test]
    fn a_flood_is_admitted_at_the_rate_in_arrival_order_not_dropped() {
        let mut admission = Admission::new(AdmissionSettings {
            max_clients: 100,
            ..settings()
        });
        line_up(&mut admission, &["a", "b", "c", "d", "e"]);
        assert_eq!(ids(&admission.admit_waiting(0, none, t(0))), ["a", "b"]);
        assert_eq!(admission.admit_waiting(2, none, t(1)).len(), 0);
        // Half a minute refills one token.
        assert_eq!(ids(&admission.admit_waiting(2, none, t(30))), ["c"]);
        assert_eq!(ids(&admission.admit_waiting(3, none, t(90))), ["d", "e"]);
        assert_eq!(admission.waiting(), 0);
    }

    #[test]
    fn the_cap_defers_until_a_slot_frees() {
        let mut admission = Admission::new(AdmissionSettings {
            max_new_per_minute: 100,
            ..settings()
        });
        line_up(&mut admission, &["a", "b", "c", "d"]);
        assert_eq!(
            ids(&admission.admit_waiting(0, none, t(0))),
            ["a", "b", "c"]
        );
        assert_eq!(admission.admit_waiting(3, none, t(60)).len(), 0);
        assert!(admission.is_waiting(&ClientId::parse("d").unwrap()));
        // One of the three deregistered: d's turn.
        assert_eq!(ids(&admission.admit_waiting(2, none, t(61))), ["d"]);
    }

    #[test]
    fn arrival_order_decides_not_the_order_the_replay_reads_partitions_in() {
        let mut admission = Admission::new(AdmissionSettings {
            max_clients: 2,
            max_new_per_minute: 100,
            ..settings()
        });
        // Read c (arrived third) before a and b.
        admission
            .defer(&registration("c"), t(0), arrival(2))
            .unwrap();
        admission
            .defer(&registration("a"), t(0), arrival(0))
            .unwrap();
        admission
            .defer(&registration("b"), t(0), arrival(1))
            .unwrap();
        assert_eq!(ids(&admission.admit_waiting(0, none, t(0))), ["a", "b"]);
    }

    #[test]
    fn clients_with_running_workers_keep_their_slots_and_cost_no_token() {
        let mut admission = Admission::new(AdmissionSettings {
            max_clients: 2,
            max_new_per_minute: 1,
            ..settings()
        });
        // After a restart: b and c were served (their workers run); a arrived first but
        // waited (its record is older, b re-registered later, say).
        line_up(&mut admission, &["a", "b", "c"]);
        let running = |c: &ClientId| c.as_str() != "a";
        let admitted = admission.admit_waiting(0, running, t(0));
        assert_eq!(ids(&admitted), ["b", "c"]);
        assert!(admitted.iter().all(|a| a.had_workers));
        assert!(admission.is_waiting(&ClientId::parse("a").unwrap()));
        // The token was not spent: a is admitted as soon as a slot frees.
        assert_eq!(ids(&admission.admit_waiting(1, running, t(0))), ["a"]);
    }

    #[test]
    fn the_replay_spends_tokens_like_any_registration() {
        let mut admission = Admission::new(AdmissionSettings {
            max_clients: 1000,
            ..settings()
        });
        let many: Vec<String> = (0..100).map(|n| format!("c{n}")).collect();
        let refs: Vec<&str> = many.iter().map(String::as_str).collect();
        line_up(&mut admission, &refs);
        assert_eq!(admission.admit_waiting(0, none, t(0)).len(), 2);
        assert_eq!(admission.waiting(), 98);
    }

    #[test]
    fn a_repeat_keeps_its_place_and_takes_the_new_metadata() {
        let mut admission = Admission::new(AdmissionSettings {
            max_new_per_minute: 1,
            ..settings()
        });
        line_up(&mut admission, &["a", "b"]);
        let mut again = registration("b");
        again.cluster_name = Some("renamed".into());
        assert_eq!(
            admission.defer(&again, t(5), arrival(9)),
            Ok(Deferral::Waiting {
                again: true,
                displaced: false
            })
        );
        let first = admission.admit_waiting(0, none, t(0));
        assert_eq!(ids(&first), ["a"]);
        let second = admission.admit_waiting(1, none, t(60));
        assert_eq!(ids(&second), ["b"]);
        assert_eq!(
            second[0].registration.cluster_name.as_deref(),
            Some("renamed")
        );
        assert_eq!(second[0].at, t(5));
        assert_eq!(second[0].registration.fields["region"], "x");
    }

    #[test]
    fn the_latest_heartbeat_of_a_waiting_client_is_admitted_with_it() {
        let mut admission = Admission::new(settings());
        line_up(&mut admission, &["a"]);
        let a = ClientId::parse("a").unwrap();
        assert!(admission.heartbeat(&a, t(20)));
        assert!(admission.heartbeat(&a, t(10)));
        assert!(!admission.heartbeat(&ClientId::parse("b").unwrap(), t(20)));
        let admitted = admission.admit_waiting(0, none, t(30));
        assert_eq!(admitted[0].last_heartbeat, Some(t(20)));
    }

    #[test]
    fn a_withdrawn_client_leaves_the_line() {
        let mut admission = Admission::new(settings());
        line_up(&mut admission, &["a", "b"]);
        assert!(admission.withdraw(&ClientId::parse("a").unwrap()));
        assert!(!admission.withdraw(&ClientId::parse("a").unwrap()));
        assert_eq!(ids(&admission.admit_waiting(0, none, t(0))), ["b"]);
    }

    #[test]
    fn the_waiting_room_is_bounded_and_the_allowlist_refuses_for_good() {
        let mut admission = Admission::new(AdmissionSettings {
            max_waiting: 2,
            ..settings()
        });
        line_up(&mut admission, &["a", "b"]);
        assert_eq!(
            admission.defer(&registration("c"), t(0), arrival(5)),
            Ok(Deferral::WaitingFull)
        );
        let mut listed = Admission::new(AdmissionSettings {
            allowlist: ["af-9".to_string()].into(),
            ..settings()
        });
        assert!(listed
            .defer(&registration("af-9"), t(0), arrival(0))
            .is_ok());
        assert_eq!(
            listed.defer(&registration("af-10"), t(0), arrival(1)),
            Err(Refusal::NotAllowed)
        );
    }

    /// A line of four, one slot, the rate no limit: registrations past the line are
    /// marked, read again once the line has drained to half, and admitted in turn.
    #[test]
    fn registrations_past_the_line_are_marked_and_read_again_once_it_drains_to_half() {
        let mut admission = Admission::new(AdmissionSettings {
            max_clients: 1,
            max_new_per_minute: 100,
            max_waiting: 4,
            ..settings()
        });
        line_up(&mut admission, &["a", "b", "c", "d"]);
        for (n, id) in [(4, "e"), (5, "f"), (6, "g"), (7, "h")] {
            assert_eq!(
                admission.defer(&registration(id), t(0), arrival(n)),
                Ok(Deferral::WaitingFull)
            );
        }
        assert!(admission.has_overflow());
        // Four wait: no re-read yet.
        assert_eq!(admission.take_refill(), None);
        assert_eq!(ids(&admission.admit_waiting(0, none, t(0))), ["a"]);
        assert_eq!(admission.take_refill(), None);
        assert_eq!(ids(&admission.admit_waiting(0, none, t(1))), ["b"]);
        // Two wait, half the line: read again from the first dropped offset of each
        // partition (arrival(n) is on partition n % 3 at offset n).
        let marks = admission.take_refill().unwrap();
        assert_eq!(marks, RefillMarks::from([(0, 6), (1, 4), (2, 5)]));
        // One re-read at a time.
        assert_eq!(admission.take_refill(), None);
        assert!(admission.has_overflow());
        // The re-read brings back what it finds from the marks on, the clients already
        // waiting among them too; e and f fit, g and h are dropped and marked again.
        assert_eq!(
            admission.defer_refilled(&registration("c"), t(0), arrival(2)),
            None
        );
        for (n, id) in [(4, "e"), (5, "f")] {
            assert_eq!(
                admission.defer_refilled(&registration(id), t(0), arrival(n)),
                Some(Ok(Deferral::Waiting {
                    again: false,
                    displaced: false
                }))
            );
        }
        for (n, id) in [(6, "g"), (7, "h")] {
            assert_eq!(
                admission.defer_refilled(&registration(id), t(0), arrival(n)),
                Some(Ok(Deferral::WaitingFull))
            );
        }
        admission.refill_done(RefillMarks::new());
        assert_eq!(ids(&admission.admit_waiting(0, none, t(2))), ["c"]);
        assert_eq!(ids(&admission.admit_waiting(0, none, t(3))), ["d"]);
        assert_eq!(
            admission.take_refill(),
            Some(RefillMarks::from([(0, 6), (1, 7)]))
        );
        for (n, id) in [(6, "g"), (7, "h")] {
            assert!(admission
                .defer_refilled(&registration(id), t(0), arrival(n))
                .is_some());
        }
        admission.refill_done(RefillMarks::new());
        assert!(!admission.has_overflow());
        let mut order = Vec::new();
        for pass in 0..4 {
            order.extend(
                admission
                    .admit_waiting(0, none, t(4 + pass))
                    .into_iter()
                    .map(|a| a.registration.client_id.to_string()),
            );
        }
        assert_eq!(order, ["e", "f", "g", "h"]);
    }

    #[test]
    fn a_tombstone_read_again_withdraws_only_what_the_reread_put_in_line() {
        let mut admission = Admission::new(AdmissionSettings {
            max_waiting: 2,
            ..settings()
        });
        line_up(&mut admission, &["a", "b"]);
        assert_eq!(
            admission.defer(&registration("x"), t(0), arrival(2)),
            Ok(Deferral::WaitingFull)
        );
        assert!(admission.withdraw(&ClientId::parse("b").unwrap()));
        assert!(admission.take_refill().is_some());
        assert!(admission
            .defer_refilled(&registration("x"), t(0), arrival(2))
            .is_some());
        // The re-read passes a tombstone of a (older than a's registration ingest read
        // later, say): a stays. x's tombstone takes x out again.
        assert!(!admission.withdraw_refilled(&ClientId::parse("a").unwrap()));
        assert!(admission.is_waiting(&ClientId::parse("a").unwrap()));
        assert!(admission.withdraw_refilled(&ClientId::parse("x").unwrap()));
        assert!(!admission.is_waiting(&ClientId::parse("x").unwrap()));
    }

    #[test]
    fn a_reread_cut_short_leaves_its_marks_for_the_next() {
        let mut admission = Admission::new(AdmissionSettings {
            max_waiting: 2,
            ..settings()
        });
        assert!(admission
            .defer(&registration("a"), t(0), arrival(0))
            .is_ok());
        assert!(admission
            .defer(&registration("b"), t(0), arrival(1))
            .is_ok());
        assert_eq!(
            admission.defer(&registration("c"), t(0), arrival(5)),
            Ok(Deferral::WaitingFull)
        );
        admission.withdraw(&ClientId::parse("a").unwrap());
        let marks = admission.take_refill().unwrap();
        assert_eq!(marks, RefillMarks::from([(2, 5)]));
        // Stopped at offset 7 of partition 2 (the broker went away, say).
        admission.refill_done(RefillMarks::from([(2, 7)]));
        assert_eq!(admission.take_refill(), Some(RefillMarks::from([(2, 7)])));
    }

    #[test]
    fn a_full_line_keeps_the_earliest_arrivals_whatever_order_they_are_read_in() {
        let mut admission = Admission::new(AdmissionSettings {
            max_clients: 10,
            max_new_per_minute: 100,
            max_waiting: 2,
            ..settings()
        });
        // Read c and d (arrived third and fourth) first, then a and b.
        line_up_at(&mut admission, &[("c", 2), ("d", 3)]);
        assert_eq!(
            admission.defer(&registration("a"), t(0), arrival(0)),
            Ok(Deferral::Waiting {
                again: false,
                displaced: true
            })
        );
        assert_eq!(
            admission.defer(&registration("b"), t(0), arrival(1)),
            Ok(Deferral::Waiting {
                again: false,
                displaced: true
            })
        );
        // Later than everything in line: not kept.
        assert_eq!(
            admission.defer(&registration("e"), t(0), arrival(4)),
            Ok(Deferral::WaitingFull)
        );
        assert_eq!(ids(&admission.admit_waiting(0, none, t(0))), ["a", "b"]);
        // c, d and e are marked where they stand (arrival(n): partition n % 3, offset n).
        assert_eq!(
            admission.take_refill(),
            Some(RefillMarks::from([(0, 3), (1, 4), (2, 2)]))
        );
    }
}
