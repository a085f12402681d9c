//! The delay stage's view of its state topic: the latest record of each of this client's
//! sessions, read from the topic's beginning and followed from then on. No consumer group
//! and no commits: every start reads the whole (compacted) topic again, and checks wait
//! until that read has reached the end it found, so a session is never emitted on a state
//! older than the topic's.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use kg_shared::keys::{key_belongs_to, parse_key};
use kg_shared::pipeline_template::Delay;
use kg_shared::ClientId;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use serde_json::Value;
use tracing::{info, warn};

use super::delay::session_of;

/// The latest state of each session, and whether the topic has been read to its end.
#[derive(Default)]
pub struct StateView {
    latest: RwLock<HashMap<String, Value>>,
    caught_up: AtomicBool,
}

impl StateView {
    /// A view that needs no topic (a delay without a check): caught up from the start.
    pub fn without_topic() -> Self {
        let view = Self::default();
        view.caught_up.store(true, Ordering::Release);
        view
    }

    pub fn get(&self, session: &str) -> Option<Value> {
        self.latest.read().ok()?.get(session).cloned()
    }

    pub fn is_caught_up(&self) -> bool {
        self.caught_up.load(Ordering::Acquire)
    }

    pub fn sessions(&self) -> usize {
        self.latest.read().map(|l| l.len()).unwrap_or(0)
    }

    /// Takes one state record in: a JSON object names its session by the delay's key
    /// field; a tombstone (no value) forgets the session its key names after `<client>::`.
    pub fn apply(
        &self,
        delay: &Delay,
        client: &ClientId,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
    ) {
        let Some(key) = key.filter(|key| key_belongs_to(key, client)) else {
            return;
        };
        let Ok(mut latest) = self.latest.write() else {
            return;
        };
        match value {
            None => {
                if let Some(parsed) = parse_key(key) {
                    latest.remove(parsed.rest);
                }
            }
            Some(bytes) => {
                let Ok(Value::Object(record)) = serde_json::from_slice::<Value>(bytes) else {
                    return;
                };
                if let Some(session) = session_of(delay, &record) {
                    latest.insert(session, Value::Object(record));
                }
            }
        }
    }
}

/// Follows `topic` into `view` until `shutdown` fires.
pub async fn follow(
    config: rdkafka::ClientConfig,
    topic: String,
    delay: Delay,
    client: ClientId,
    view: Arc<StateView>,
    shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let consumer: StreamConsumer = match config
        .clone()
        .set("group.id", format!("kg-state-reader.{client}"))
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .set("auto.offset.reset", "earliest")
        .create()
    {
        Ok(consumer) => consumer,
        Err(error) => {
            warn!(%error, %topic, "cannot create the state topic's reader; checks wait");
            return;
        }
    };
    let consumer = Arc::new(consumer);
    let partitions = loop {
        if *shutdown.borrow() {
            return;
        }
        let reader = consumer.clone();
        let wanted = topic.clone();
        let found = tokio::task::spawn_blocking(move || {
            reader
                .fetch_metadata(Some(&wanted), Duration::from_secs(5))
                .ok()
                .and_then(|metadata| {
                    let topic = metadata.topics().first()?;
                    (topic.error().is_none() && !topic.partitions().is_empty()).then(|| {
                        topic
                            .partitions()
                            .iter()
                            .map(|p| p.id())
                            .collect::<Vec<_>>()
                    })
                })
        })
        .await
        .ok()
        .flatten();
        match found {
            Some(partitions) => break partitions,
            None => {
                warn!(%topic, "the state topic is not there yet; checks wait");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    };
    let mut assignment = TopicPartitionList::new();
    for partition in &partitions {
        let _ = assignment.add_partition_offset(&topic, *partition, Offset::Beginning);
    }
    if let Err(error) = consumer.assign(&assignment) {
        warn!(%error, %topic, "cannot read the state topic; checks wait");
        return;
    }
    let mut at_end: HashSet<i32> = HashSet::new();
    let mut shutdown = shutdown;
    loop {
        let received = tokio::select! {
            _ = shutdown.changed() => return,
            received = consumer.recv() => received,
        };
        match received {
            Ok(message) => view.apply(&delay, &client, message.key(), message.payload()),
            Err(KafkaError::PartitionEOF(partition)) => {
                if at_end.insert(partition) && at_end.len() == partitions.len() {
                    info!(%topic, sessions = view.sessions(), "state topic read to its end; checks start");
                    view.caught_up.store(true, Ordering::Release);
                }
            }
            Err(error) => {
                warn!(%error, %topic, "state topic read error");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn keeps_the_latest_state_of_this_clients_sessions_only() {
        let delay = Delay {
            key: "server_id".into(),
            hold: Duration::from_secs(10),
            check_every: Duration::from_secs(1),
            check: None,
        };
        let client = ClientId::parse("c1").unwrap();
        let view = StateView::default();
        let put = |key: &[u8], value: Value| {
            view.apply(
                &delay,
                &client,
                Some(key),
                Some(value.to_string().as_bytes()),
            )
        };
        put(b"c1::s1", json!({"server_id": "s1", "power": "off"}));
        put(b"c1::s1", json!({"server_id": "s1", "power": "on"}));
        put(b"c2::s2", json!({"server_id": "s2", "power": "on"}));
        put(b"c1::s3", json!({"power": "on"}));
        view.apply(&delay, &client, Some(b"c1::s4"), Some(b"not json"));
        assert_eq!(
            view.get("s1"),
            Some(json!({"server_id": "s1", "power": "on"}))
        );
        assert_eq!(view.get("s2"), None, "another client's state");
        assert_eq!(view.sessions(), 1);
        view.apply(&delay, &client, Some(b"c1::s1"), None);
        assert_eq!(view.get("s1"), None, "a tombstone forgets the session");
        assert!(!view.is_caught_up());
        assert!(StateView::without_topic().is_caught_up());
    }
}
