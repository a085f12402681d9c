//! The order a restart replays in: every registration before any heartbeat.
//!
//! Ingest reads `cluster.registry` and `cluster.heartbeat` with one consumer, and a real
//! broker interleaves the two topics' fetches as it likes. A heartbeat replayed before its
//! client's registration names a client the controller does not know yet, so it was
//! counted as "unknown" and dropped; the registration then arrived with only its own, older
//! time, and a live client registered longer ago than the heartbeat timeout was taken for
//! stale and reaped (seen on noida-db; the embedded broker happened to deliver the registry
//! first). So while any registry partition is still being replayed, heartbeats are held
//! here, the latest per client, and released, oldest first, as soon as the whole registry
//! has been applied and before the controller is told that the replay is over.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use kg_shared::ClientId;

use crate::input::Input;

/// Heartbeats held back until the registry has been replayed: one entry per client (its
/// latest), so memory is bounded by the number of distinct clients heartbeating within
/// the timeout, not by the number of heartbeats.
#[derive(Debug, Default)]
pub struct HeldHeartbeats {
    latest: HashMap<ClientId, DateTime<Utc>>,
}

impl HeldHeartbeats {
    pub fn hold(&mut self, client_id: ClientId, at: DateTime<Utc>) {
        self.latest
            .entry(client_id)
            .and_modify(|held| *held = (*held).max(at))
            .or_insert(at);
    }

    pub fn len(&self) -> usize {
        self.latest.len()
    }

    pub fn is_empty(&self) -> bool {
        self.latest.is_empty()
    }

    /// Everything held, as heartbeat inputs, oldest first; empties the hold.
    pub fn release(&mut self) -> Vec<Input> {
        let mut held: Vec<(ClientId, DateTime<Utc>)> = self.latest.drain().collect();
        held.sort_by(|a, b| a.1.cmp(&b.1).then_with(|| a.0.cmp(&b.0)));
        held.into_iter()
            .map(|(client_id, at)| Input::Heartbeat { client_id, at })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(text: &str) -> ClientId {
        ClientId::parse(text).unwrap()
    }

    fn at(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_700_000_000 + secs, 0).unwrap()
    }

    #[test]
    fn the_latest_heartbeat_of_each_client_is_released_oldest_first() {
        let mut held = HeldHeartbeats::default();
        held.hold(id("b-1"), at(5));
        held.hold(id("a-1"), at(9));
        held.hold(id("b-1"), at(7));
        // Replay order is per partition; an older one read later must not win.
        held.hold(id("a-1"), at(2));
        assert_eq!(held.len(), 2);
        let released: Vec<(String, DateTime<Utc>)> = held
            .release()
            .into_iter()
            .map(|input| match input {
                Input::Heartbeat { client_id, at } => (client_id.to_string(), at),
                other => panic!("not a heartbeat: {other:?}"),
            })
            .collect();
        assert_eq!(
            released,
            vec![("b-1".to_string(), at(7)), ("a-1".to_string(), at(9))]
        );
        assert!(held.is_empty());
        assert!(held.release().is_empty());
    }
}
