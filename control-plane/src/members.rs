//! Where the other control planes are (`CP_OWNERSHIP=group`): each one announces its API
//! address and the registry partitions it owns on the compacted topic
//! `cluster.control-planes` (created on first use; one record per control plane, keyed by
//! a name chosen at start, again every few seconds, a tombstone when it stops), and reads
//! everyone's. The API uses it to send a request that only a client's owner can carry out
//! (a restart) to that owner.
//!
//! An announcement is a claim as of when it was made: the newest fresh one claiming a
//! partition names its owner. A killed control plane's claim goes stale after
//! [`FRESH_FOR`]; until the group hands its partitions on, nobody owns them, and the API
//! says so.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use kg_shared::kafka::KafkaArgs;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::controller::Status;
use crate::ownership::{partition_of, Ownership};

/// The compacted topic of announcements.
pub const MEMBERS_TOPIC: &str = "cluster.control-planes";

/// How often a control plane announces itself when nothing changed.
const ANNOUNCE_EVERY: Duration = Duration::from_secs(5);

/// An announcement older than this is no longer believed.
pub const FRESH_FOR: chrono::Duration = chrono::Duration::seconds(20);

/// One control plane's claim.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Announcement {
    /// Where its API answers.
    pub api: String,
    /// The registry partitions it acts for, out of `count`.
    pub owned: Vec<i32>,
    pub count: i32,
    pub at: DateTime<Utc>,
}

/// Everyone's latest announcements, by member name; shared with the API.
#[derive(Debug, Clone, Default)]
pub struct Members {
    me: Arc<str>,
    known: Arc<Mutex<HashMap<String, Announcement>>>,
}

impl Members {
    pub fn new(me: &str) -> Self {
        Self {
            me: me.into(),
            known: Arc::default(),
        }
    }

    /// The API address of the control plane that acts on `client_id` now, by the newest
    /// fresh claim of its partition; None when no other one claims it.
    pub fn owner_of(&self, client_id: &str, now: DateTime<Utc>) -> Option<String> {
        let known = self.known.lock().ok()?;
        known
            .iter()
            .filter(|(member, _)| member.as_str() != &*self.me)
            .map(|(_, announcement)| announcement)
            .filter(|announcement| now - announcement.at <= FRESH_FOR && announcement.count > 0)
            .filter(|announcement| {
                announcement
                    .owned
                    .contains(&partition_of(client_id, announcement.count))
            })
            .max_by_key(|announcement| announcement.at)
            .map(|announcement| announcement.api.clone())
    }

    fn record(&self, member: &str, announcement: Option<Announcement>) {
        if let Ok(mut known) = self.known.lock() {
            match announcement {
                Some(announcement) => known.insert(member.to_string(), announcement),
                None => known.remove(member),
            };
        }
    }
}

/// Announces this control plane and reads the others' until `stop`; a tombstone on the
/// way out. Failures are logged and retried: without announcements the API only cannot
/// send a restart on to the owner.
pub async fn run(
    kafka: KafkaArgs,
    members: Members,
    api: String,
    status: Arc<Status>,
    mut stop: watch::Receiver<bool>,
) {
    create_topic(&kafka).await;
    let producer: FutureProducer = match kafka.client_config().create() {
        Ok(producer) => producer,
        Err(error) => return warn!(%error, "cannot announce this control plane"),
    };
    let me = members.me.to_string();
    let mut reader: Option<StreamConsumer> = None;
    let mut last: Option<Ownership> = None;
    let mut next = tokio::time::Instant::now();
    let mut check = tokio::time::interval(Duration::from_millis(250));
    loop {
        let ownership = status.ownership();
        let due = last.as_ref() != Some(&ownership) || tokio::time::Instant::now() >= next;
        if due && announce(&producer, &me, &api, &ownership).await {
            last = Some(ownership);
            next = tokio::time::Instant::now() + ANNOUNCE_EVERY;
        }
        if reader.is_none() {
            reader = subscribe(&kafka);
        }
        tokio::select! {
            _ = stop.wait_for(|stop| *stop) => break,
            _ = check.tick() => {}
            received = async { reader.as_ref()?.recv().await.ok().map(|m| m.detach()) }, if reader.is_some() => {
                if let Some(message) = received {
                    let member = message.key().map(|key| String::from_utf8_lossy(key).into_owned());
                    let announcement = message.payload().and_then(|value| serde_json::from_slice(value).ok());
                    if let Some(member) = member {
                        debug!(%member, ?announcement, "control plane announcement");
                        members.record(&member, announcement);
                    }
                }
            }
        }
    }
    let gone = FutureRecord::<str, str>::to(MEMBERS_TOPIC).key(&me);
    let _ = producer.send(gone, Duration::from_secs(2)).await;
}

async fn announce(producer: &FutureProducer, me: &str, api: &str, ownership: &Ownership) -> bool {
    let (owned, count) = match ownership {
        Ownership::Partitions { owned, count } => (owned.iter().copied().collect(), *count),
        Ownership::All => (Vec::new(), 0),
    };
    let announcement = Announcement {
        api: api.to_string(),
        owned,
        count,
        at: Utc::now(),
    };
    let value = serde_json::to_string(&announcement).unwrap_or_default();
    match producer
        .send(
            FutureRecord::to(MEMBERS_TOPIC).key(me).payload(&value),
            Duration::from_secs(5),
        )
        .await
    {
        Ok(_) => true,
        Err((error, _)) => {
            warn!(%error, "announcing this control plane failed; retried");
            false
        }
    }
}

/// A reader of every partition of the topic from its beginning, once it exists.
fn subscribe(kafka: &KafkaArgs) -> Option<StreamConsumer> {
    let consumer: StreamConsumer = kafka
        .client_config()
        .set("group.id", "kg-control-plane-members")
        .set("enable.auto.commit", "false")
        .create()
        .ok()?;
    let metadata = consumer
        .fetch_metadata(Some(MEMBERS_TOPIC), Duration::from_secs(5))
        .ok()?;
    let mut assignment = TopicPartitionList::new();
    for topic in metadata.topics().iter().filter(|t| t.error().is_none()) {
        for partition in topic.partitions() {
            assignment
                .add_partition_offset(MEMBERS_TOPIC, partition.id(), Offset::Beginning)
                .ok()?;
        }
    }
    if assignment.count() == 0 {
        return None;
    }
    consumer.assign(&assignment).ok()?;
    info!("reading the other control planes' announcements");
    Some(consumer)
}

/// Creates the compacted topic unless it exists; a broker that refuses (the embedded one
/// answers no topic creation) makes it on the first announcement with its defaults.
async fn create_topic(kafka: &KafkaArgs) {
    let Ok(admin) = kafka.client_config().create::<AdminClient<_>>() else {
        return;
    };
    let topic = NewTopic::new(MEMBERS_TOPIC, 1, TopicReplication::Fixed(-1))
        .set("cleanup.policy", "compact");
    let options = AdminOptions::new()
        .request_timeout(Some(Duration::from_secs(5)))
        .operation_timeout(Some(Duration::from_secs(5)));
    if let Err(error) = admin.create_topics([&topic], &options).await {
        info!(%error, "{MEMBERS_TOPIC} not created here; the broker makes it on first use");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seconds: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_760_000_000 + seconds, 0).unwrap()
    }

    #[test]
    fn the_newest_fresh_claim_of_a_clients_partition_names_its_owner() {
        let members = Members::new("me");
        let client = "af-9";
        let partition = partition_of(client, 3);
        let claim = |api: &str, owned: Vec<i32>, seconds| Announcement {
            api: api.into(),
            owned,
            count: 3,
            at: at(seconds),
        };
        assert_eq!(members.owner_of(client, at(0)), None);
        members.record("a", Some(claim("http://a", vec![partition], 0)));
        assert_eq!(members.owner_of(client, at(1)).as_deref(), Some("http://a"));
        members.record("b", Some(claim("http://b", vec![partition], 5)));
        assert_eq!(
            members.owner_of(client, at(6)).as_deref(),
            Some("http://b"),
            "the newer claim"
        );
        members.record("b", None);
        assert_eq!(
            members.owner_of(client, at(6)).as_deref(),
            Some("http://a"),
            "b left"
        );
        assert_eq!(members.owner_of(client, at(60)), None, "a's claim is stale");
        members.record("me", Some(claim("http://me", vec![partition], 60)));
        assert_eq!(members.owner_of(client, at(61)), None, "never to itself");
        members.record("c", Some(claim("http://c", vec![(partition + 1) % 3], 60)));
        assert_eq!(
            members.owner_of(client, at(61)),
            None,
            "c owns another partition"
        );
    }
}
