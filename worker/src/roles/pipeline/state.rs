//! The delay stage's view of its state topic: the latest record of each of this client's
//! sessions, read from the topic's beginning and followed from then on. No consumer group
//! and no commits: every start reads the whole (compacted) topic again, and checks wait
//! until that read has reached the end it found, so a session is never emitted on a state
//! older than the topic's.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

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

/// Whether something the scheduler waits for has been read far enough (the state topic to
/// its end; the input to where it ended when the worker started), and since when it has
/// been waiting, for `/health`.
pub struct CatchUp {
    caught_up: AtomicBool,
    waiting_since: Mutex<Option<Instant>>,
}

impl CatchUp {
    /// Not caught up yet: waiting from now.
    pub fn waiting() -> Self {
        Self {
            caught_up: AtomicBool::new(false),
            waiting_since: Mutex::new(Some(Instant::now())),
        }
    }

    /// Nothing to wait for.
    pub fn done() -> Self {
        Self {
            caught_up: AtomicBool::new(true),
            waiting_since: Mutex::new(None),
        }
    }

    pub fn is_caught_up(&self) -> bool {
        self.caught_up.load(Ordering::Acquire)
    }

    /// How long the scheduler has been waiting; None when it is not.
    pub fn waiting_for(&self) -> Option<Duration> {
        self.waiting_since.lock().ok()?.map(|since| since.elapsed())
    }

    pub(super) fn set_caught_up(&self, caught_up: bool) {
        if self.caught_up.swap(caught_up, Ordering::AcqRel) == caught_up {
            return;
        }
        if let Ok(mut since) = self.waiting_since.lock() {
            *since = (!caught_up).then(Instant::now);
        }
    }
}

/// The checked field's value in the latest state record of each session, and whether
/// the topic has been read to its end.
pub struct StateView {
    latest: RwLock<HashMap<String, Value>>,
    read: CatchUp,
}

impl Default for StateView {
    fn default() -> Self {
        Self {
            latest: RwLock::default(),
            read: CatchUp::waiting(),
        }
    }
}

impl StateView {
    /// A view that needs no topic (a delay without a check): caught up from the start.
    pub fn without_topic() -> Self {
        Self {
            latest: RwLock::default(),
            read: CatchUp::done(),
        }
    }

    pub fn get(&self, session: &str) -> Option<Value> {
        self.latest.read().ok()?.get(session).cloned()
    }

    pub fn is_caught_up(&self) -> bool {
        self.read.is_caught_up()
    }

    /// How long checks have been waiting for the topic to be read to its end; None when
    /// they are not waiting.
    pub fn waiting_for(&self) -> Option<Duration> {
        self.read.waiting_for()
    }

    pub(super) fn set_caught_up(&self, caught_up: bool) {
        self.read.set_caught_up(caught_up);
    }

    pub fn sessions(&self) -> usize {
        self.latest.read().map(|l| l.len()).unwrap_or(0)
    }

    /// Takes one state record in: a JSON object names its session by the delay's key
    /// field, and only the checked field's value is kept (null when it has none); a
    /// tombstone (no value) forgets the session its key names after `<client>::`.
    pub fn apply(
        &self,
        delay: &Delay,
        client: &ClientId,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
    ) {
        let Some(check) = &delay.check else {
            return;
        };
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
                    let state = record.get(&check.field).cloned().unwrap_or(Value::Null);
                    latest.insert(session, state);
                }
            }
        }
    }
}

/// How often the topic's partitions are looked up again, so a partition added later is
/// read too (and a key that moved to it is not checked against its old partition's state).
const REFRESH: Duration = Duration::from_secs(30);
/// The longest wait between attempts to read the topic.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Why a reading of the topic ended.
enum Ended {
    Shutdown,
    Failed(String),
}

/// Follows `topic` into `view` until `shutdown` fires: reads it from its beginning, and
/// starts again (after a back-off) when it cannot, so a missing topic or an unreachable
/// broker delays the checks but never stops them for good.
pub async fn follow(
    config: rdkafka::ClientConfig,
    topic: String,
    delay: Delay,
    client: ClientId,
    view: Arc<StateView>,
    shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let mut backoff = Duration::from_secs(1);
    loop {
        let reader = Reader {
            config: &config,
            topic: &topic,
            delay: &delay,
            client: &client,
            view: &view,
        };
        match reader.read(shutdown.clone()).await {
            Ended::Shutdown => return,
            Ended::Failed(reason) => {
                warn!(%topic, %reason, retry_in = ?backoff, "cannot read the delay stage's state topic; checks wait");
            }
        }
        let mut shutdown = shutdown.clone();
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// One reading of the state topic, from its beginning.
struct Reader<'a> {
    config: &'a rdkafka::ClientConfig,
    topic: &'a str,
    delay: &'a Delay,
    client: &'a ClientId,
    view: &'a StateView,
}

impl Reader<'_> {
    async fn read(&self, mut shutdown: tokio::sync::watch::Receiver<bool>) -> Ended {
        // Read again from the beginning: older states pass by before the latest, so no
        // check may run until the end is reached again.
        self.view.set_caught_up(false);
        let consumer: StreamConsumer = match self
            .config
            .clone()
            .set("group.id", format!("kg-state-reader.{}", self.client))
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "true")
            .set("auto.offset.reset", "earliest")
            .create()
        {
            Ok(consumer) => consumer,
            Err(error) => return Ended::Failed(error.to_string()),
        };
        let consumer = Arc::new(consumer);
        let Some(mut known) = partitions(&consumer, self.topic).await else {
            return Ended::Failed("the topic is not there (or has no partitions)".into());
        };
        if let Err(error) = assign(&consumer, self.topic, &known, &[]) {
            return Ended::Failed(error.to_string());
        }
        let mut at_end: HashSet<i32> = HashSet::new();
        let mut refresh = tokio::time::interval(REFRESH);
        refresh.reset();
        loop {
            let received = tokio::select! {
                _ = shutdown.changed() => return Ended::Shutdown,
                _ = refresh.tick() => {
                    let Some(now) = partitions(&consumer, self.topic).await else { continue };
                    let added: Vec<i32> = now.iter().copied().filter(|p| !known.contains(p)).collect();
                    if added.is_empty() {
                        continue;
                    }
                    info!(topic = self.topic, ?added, "the state topic has new partitions; checks wait until they are read");
                    if let Err(error) = assign(&consumer, self.topic, &known, &added) {
                        return Ended::Failed(error.to_string());
                    }
                    known.extend(added);
                    self.view.set_caught_up(false);
                    continue;
                }
                received = consumer.recv() => received,
            };
            match received {
                Ok(message) => {
                    self.view
                        .apply(self.delay, self.client, message.key(), message.payload())
                }
                Err(KafkaError::PartitionEOF(partition)) => {
                    at_end.insert(partition);
                    if !self.view.is_caught_up() && known.iter().all(|p| at_end.contains(p)) {
                        info!(
                            topic = self.topic,
                            sessions = self.view.sessions(),
                            "state topic read to its end; checks run"
                        );
                        self.view.set_caught_up(true);
                    }
                }
                Err(error) => {
                    warn!(%error, topic = self.topic, "state topic read error");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    }
}

/// The topic's partitions, or None when it is not there.
async fn partitions(consumer: &Arc<StreamConsumer>, topic: &str) -> Option<Vec<i32>> {
    let reader = consumer.clone();
    let wanted = topic.to_string();
    tokio::task::spawn_blocking(move || {
        let metadata = reader
            .fetch_metadata(Some(&wanted), Duration::from_secs(5))
            .ok()?;
        let topic = metadata.topics().first()?;
        (topic.error().is_none() && !topic.partitions().is_empty())
            .then(|| topic.partitions().iter().map(|p| p.id()).collect())
    })
    .await
    .ok()
    .flatten()
}

/// Assigns `known` partitions where the consumer stands in them, and `added` ones from
/// their beginning.
fn assign(
    consumer: &StreamConsumer,
    topic: &str,
    known: &[i32],
    added: &[i32],
) -> Result<(), KafkaError> {
    let positions = if known.is_empty() || added.is_empty() {
        None
    } else {
        consumer.position().ok()
    };
    let mut assignment = TopicPartitionList::new();
    for partition in known {
        let offset = positions
            .as_ref()
            .and_then(|p| p.find_partition(topic, *partition))
            .map(|p| p.offset())
            .filter(|offset| matches!(offset, Offset::Offset(_)))
            .unwrap_or(Offset::Beginning);
        assignment.add_partition_offset(topic, *partition, offset)?;
    }
    for partition in added {
        assignment.add_partition_offset(topic, *partition, Offset::Beginning)?;
    }
    consumer.assign(&assignment)
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
            check: Some(kg_shared::pipeline_template::StateCheck {
                topic: "servers.power".into(),
                field: "power".into(),
                hold_while: vec![json!("off")],
                divert_violations_to: None,
            }),
            hold_from: None,
            end_when: None,
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
        put(b"c1::s5", json!({"server_id": "s5"}));
        view.apply(&delay, &client, Some(b"c1::s4"), Some(b"not json"));
        assert_eq!(view.get("s1"), Some(json!("on")));
        assert_eq!(view.get("s2"), None, "another client's state");
        assert_eq!(
            view.get("s5"),
            Some(Value::Null),
            "a state without the field"
        );
        assert_eq!(view.sessions(), 2);
        view.apply(&delay, &client, Some(b"c1::s1"), None);
        assert_eq!(view.get("s1"), None, "a tombstone forgets the session");
        assert!(!view.is_caught_up());
        assert!(view.waiting_for().is_some());
        view.set_caught_up(true);
        assert_eq!(view.waiting_for(), None);
        let without = StateView::without_topic();
        assert!(without.is_caught_up() && without.waiting_for().is_none());
    }
}
