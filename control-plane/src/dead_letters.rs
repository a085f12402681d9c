//! `control-plane dead-letters list|replay`: an operator's view of the dead-letter topics
//! (`dlq.normalized`, `dlq.raw`) by client, reason and time, and the replay of chosen dead
//! letters to their source topics once what made them fail is fixed.
//!
//! A replay is at-least-once and not repeated: each dead letter's original is produced to
//! its source topic under its key and acknowledged, then a marker keyed
//! `<dead-letter topic>/<partition>/<offset>` is written to the compacted topic
//! `dlq.replayed` (created on first use). A later replay reads the markers first and leaves
//! what they name alone; a crash between the two writes replays that one letter again.
//! A replayed record that fails again is dead-lettered again, as a new letter.
//!
//! What to do is decided by pure functions (`Filter::matches`, `plan`) from what was read;
//! the Kafka reads and writes only carry it out.

use std::collections::HashSet;
use std::time::Duration;

use chrono::{DateTime, Utc};
use kg_shared::dlq::DeadLetter;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

use crate::config::{DeadLettersAction, DeadLettersArgs, DeadLettersFilterArgs};

/// The compacted topic of replay markers.
pub const REPLAYED_TOPIC: &str = "dlq.replayed";

/// How long one Kafka request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum DeadLettersError {
    #[error("kafka: {0}")]
    Kafka(#[from] KafkaError),
    #[error("cannot create {REPLAYED_TOPIC}: {0}")]
    MarkerTopic(String),
    #[error("{0} dead letter(s) could not be replayed (see above)")]
    Failed(usize),
}

/// Which dead letters an operator means.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Filter {
    pub client: Option<String>,
    pub reason: Option<String>,
    pub since: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
}

impl Filter {
    pub fn matches(&self, letter: &DeadLetter) -> bool {
        self.client
            .as_ref()
            .is_none_or(|client| letter.client_id.as_ref() == Some(client))
            && self
                .reason
                .as_ref()
                .is_none_or(|reason| &letter.reason_code == reason)
            && self.since.is_none_or(|since| letter.failed_at >= since)
            && self.until.is_none_or(|until| letter.failed_at < until)
    }
}

/// A dead letter as read: where it is, and what it says (None: not a dead letter, e.g. a
/// record of another shape).
#[derive(Debug, Clone, PartialEq)]
pub struct Stored {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub letter: Option<DeadLetter>,
}

impl Stored {
    /// The marker key of this dead letter.
    pub fn marker(&self) -> String {
        format!("{}/{}/{}", self.topic, self.partition, self.offset)
    }
}

/// What a replay does with one dead letter the filter chose.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// Produce `value` to `topic` under `key`, then mark it: `markers` are this letter's
    /// and those of the other letters of the same input record (a split record's rejected
    /// elements each have a letter of the whole record, which is replayed once).
    Replay {
        markers: Vec<String>,
        topic: String,
        key: Option<Vec<u8>>,
        value: Option<Vec<u8>>,
    },
    /// Leave it: `why`.
    Skip { marker: String, why: SkipReason },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SkipReason {
    /// A marker says it was replayed before.
    AlreadyReplayed,
    /// It keeps only the start of a record too large to keep whole.
    Truncated,
    /// It stands for records that could not be read at all: there is nothing to replay.
    Unreadable,
}

impl SkipReason {
    pub fn as_str(self) -> &'static str {
        match self {
            SkipReason::AlreadyReplayed => "already replayed",
            SkipReason::Truncated => "truncated: only the start of the original is kept",
            SkipReason::Unreadable => "a run of unreadable records: nothing to replay",
        }
    }
}

/// What to do with each dead letter `filter` chooses among `stored`, given the markers of
/// those `replayed` before: one replay per input record, however many letters it has.
pub fn plan(stored: &[Stored], filter: &Filter, replayed: &HashSet<String>) -> Vec<Step> {
    let mut steps: Vec<Step> = Vec::new();
    // Where each input record's replay is in `steps`.
    // Letters of one input record with the same original: a split payload's rejected
    // elements each carry the whole payload. (A letter written after a hold carries that
    // element alone: a different original, a replay of its own.)
    type Source = (String, i32, i64, Option<Vec<u8>>);
    let mut by_source: std::collections::HashMap<Source, usize> = Default::default();
    for (s, letter) in stored
        .iter()
        .filter_map(|s| Some((s, s.letter.as_ref().filter(|l| filter.matches(l))?)))
    {
        let marker = s.marker();
        let skip = |why| Step::Skip {
            marker: marker.clone(),
            why,
        };
        if replayed.contains(&marker) {
            steps.push(skip(SkipReason::AlreadyReplayed));
            continue;
        }
        if letter.truncated.is_some() {
            steps.push(skip(SkipReason::Truncated));
            continue;
        }
        if letter.source_last_offset.is_some() {
            steps.push(skip(SkipReason::Unreadable));
            continue;
        }
        let value = letter.original_bytes();
        let source = (
            letter.source_topic.clone(),
            letter.source_partition,
            letter.source_offset,
            value.clone(),
        );
        if let Some(Step::Replay { markers, .. }) =
            by_source.get(&source).and_then(|at| steps.get_mut(*at))
        {
            markers.push(marker);
            continue;
        }
        by_source.insert(source, steps.len());
        steps.push(Step::Replay {
            topic: letter.source_topic.clone(),
            key: letter.key.as_ref().map(|k| k.as_bytes().to_vec()),
            value,
            markers: vec![marker],
        });
    }
    steps
}

/// `control-plane dead-letters …`.
pub async fn run(args: DeadLettersArgs) -> Result<(), DeadLettersError> {
    let config = args.kafka.client_config();
    match args.action {
        DeadLettersAction::List(filter) => {
            let replayed = markers(&config)?;
            for stored in read_letters(&config, &filter.topics)? {
                let Some(letter) = stored
                    .letter
                    .as_ref()
                    .filter(|l| filter.filter().matches(l))
                else {
                    continue;
                };
                println!(
                    "{}",
                    line(&stored, letter, replayed.contains(&stored.marker()))
                );
            }
            Ok(())
        }
        DeadLettersAction::Replay(filter) => replay(&config, &filter).await,
    }
}

/// One dead letter for `list`: where it is, when, whose, why, from where, and whether it
/// was replayed.
fn line(stored: &Stored, letter: &DeadLetter, replayed: bool) -> String {
    format!(
        "{}\t{}\t{}\t{}\t{}/{}/{}\t{}\t{}",
        stored.marker(),
        letter
            .failed_at
            .to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        letter.client_id.as_deref().unwrap_or("-"),
        letter.reason_code,
        letter.source_topic,
        letter.source_partition,
        letter.source_offset,
        if replayed { "replayed" } else { "-" },
        letter.reason.replace(['\t', '\n'], " "),
    )
}

async fn replay(
    config: &ClientConfig,
    filter: &DeadLettersFilterArgs,
) -> Result<(), DeadLettersError> {
    create_marker_topic(config).await?;
    let replayed = markers(config)?;
    let stored = read_letters(config, &filter.topics)?;
    let producer: FutureProducer = config.clone().create()?;
    let (mut done, mut skipped, mut failed) = (0, 0, 0);
    for step in plan(&stored, &filter.filter(), &replayed) {
        match step {
            Step::Skip { marker, why } => {
                skipped += 1;
                println!("skipped\t{marker}\t{}", why.as_str());
            }
            Step::Replay {
                markers,
                topic,
                key,
                value,
            } => match replay_one(&producer, &markers, &topic, key, value).await {
                Ok(at) => {
                    for marker in &markers {
                        done += 1;
                        println!("replayed\t{marker}\t{at}");
                    }
                }
                Err(error) => {
                    for marker in &markers {
                        failed += 1;
                        eprintln!("failed\t{marker}\t{error}");
                    }
                }
            },
        }
    }
    eprintln!("{done} replayed, {skipped} skipped, {failed} failed");
    if failed > 0 {
        return Err(DeadLettersError::Failed(failed));
    }
    Ok(())
}

/// Produces the original, then (once acknowledged) its markers; where the original went.
async fn replay_one(
    producer: &FutureProducer,
    markers: &[String],
    topic: &str,
    key: Option<Vec<u8>>,
    value: Option<Vec<u8>>,
) -> Result<String, KafkaError> {
    let mut record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(topic);
    if let Some(key) = &key {
        record = record.key(key.as_slice());
    }
    if let Some(value) = &value {
        record = record.payload(value.as_slice());
    }
    let delivered = producer
        .send(record, REQUEST_TIMEOUT)
        .await
        .map_err(|(error, _)| error)?;
    let at = format!("{topic}/{}/{}", delivered.partition, delivered.offset);
    let mark = serde_json::json!({"replayed_at": Utc::now().to_rfc3339(), "to": at}).to_string();
    for marker in markers {
        producer
            .send(
                FutureRecord::to(REPLAYED_TOPIC).key(marker).payload(&mark),
                REQUEST_TIMEOUT,
            )
            .await
            .map_err(|(error, _)| error)?;
    }
    Ok(at)
}

/// The markers of every dead letter replayed so far.
fn markers(config: &ClientConfig) -> Result<HashSet<String>, DeadLettersError> {
    Ok(read_to_end(config, REPLAYED_TOPIC)?
        .into_iter()
        .filter(|record| record.value.is_some())
        .filter_map(|record| String::from_utf8(record.key?).ok())
        .collect())
}

/// Every record of the dead-letter `topics`, decoded where it is a dead letter.
fn read_letters(config: &ClientConfig, topics: &[String]) -> Result<Vec<Stored>, DeadLettersError> {
    let mut stored = Vec::new();
    for topic in topics {
        for record in read_to_end(config, topic)? {
            stored.push(Stored {
                topic: topic.clone(),
                partition: record.partition,
                offset: record.offset,
                letter: record
                    .value
                    .and_then(|value| serde_json::from_slice(&value).ok()),
            });
        }
    }
    Ok(stored)
}

/// A record as read.
struct Read {
    partition: i32,
    offset: i64,
    key: Option<Vec<u8>>,
    value: Option<Vec<u8>>,
}

/// Every record of `topic`, from each partition's beginning to the end it had when the
/// read began, with no consumer group. A topic that does not exist has none.
fn read_to_end(config: &ClientConfig, topic: &str) -> Result<Vec<Read>, KafkaError> {
    let consumer: BaseConsumer = config
        .clone()
        .set("group.id", "kg-dead-letters-reader")
        .set("enable.auto.commit", "false")
        // From the first record left, wherever retention has moved it meanwhile.
        .set("auto.offset.reset", "earliest")
        // The end is found by offset, or by the partition's EOF event when the offsets
        // before it are gone (a compacted topic, transaction markers).
        .set("enable.partition.eof", "true")
        .create()?;
    let metadata = consumer.fetch_metadata(Some(topic), REQUEST_TIMEOUT)?;
    let mut assignment = TopicPartitionList::new();
    let mut ends = std::collections::HashMap::new();
    for found in metadata.topics() {
        if found.error().is_some() {
            continue;
        }
        for partition in found.partitions() {
            let (low, high) = consumer.fetch_watermarks(topic, partition.id(), REQUEST_TIMEOUT)?;
            if high > low {
                assignment.add_partition_offset(topic, partition.id(), Offset::Beginning)?;
                ends.insert(partition.id(), high);
            }
        }
    }
    let mut records = Vec::new();
    if ends.is_empty() {
        return Ok(records);
    }
    consumer.assign(&assignment)?;
    // Given up only when nothing arrives for this long (a large topic takes its time).
    let idle = Duration::from_secs(60);
    let mut last_read = std::time::Instant::now();
    while !ends.is_empty() {
        if last_read.elapsed() > idle {
            return Err(KafkaError::MessageConsumption(
                RDKafkaErrorCode::OperationTimedOut,
            ));
        }
        let message = match consumer.poll(Duration::from_millis(500)) {
            None => continue,
            Some(Err(KafkaError::PartitionEOF(partition))) => {
                ends.remove(&partition);
                continue;
            }
            Some(other) => other?,
        };
        last_read = std::time::Instant::now();
        let partition = message.partition();
        if let Some(end) = ends.get(&partition).copied() {
            if message.offset() < end {
                records.push(Read {
                    partition,
                    offset: message.offset(),
                    key: message.key().map(<[u8]>::to_vec),
                    value: message.payload().map(<[u8]>::to_vec),
                });
            }
            if message.offset() + 1 >= end {
                ends.remove(&partition);
            }
        }
    }
    Ok(records)
}

/// Creates the compacted marker topic unless it exists. A broker that does not take the
/// request (the embedded one answers no topic creation) gets the markers all the same: it
/// creates the topic on the first one, with its defaults, which is said.
async fn create_marker_topic(config: &ClientConfig) -> Result<(), DeadLettersError> {
    let probe: BaseConsumer = config.clone().create()?;
    if marker_topic_exists(&probe)? {
        return Ok(());
    }
    let admin: AdminClient<_> = config.create()?;
    let topic = NewTopic::new(REPLAYED_TOPIC, 3, TopicReplication::Fixed(-1))
        .set("cleanup.policy", "compact");
    let options = AdminOptions::new()
        .request_timeout(Some(Duration::from_secs(5)))
        .operation_timeout(Some(Duration::from_secs(5)));
    match admin.create_topics([&topic], &options).await {
        Ok(results) => {
            for result in results {
                match result {
                    Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                    Err((_, code)) => return Err(DeadLettersError::MarkerTopic(code.to_string())),
                }
            }
        }
        Err(error) => {
            eprintln!(
                "could not create {REPLAYED_TOPIC} as a compacted topic ({error}); asking the broker to make it with its own defaults"
            );
            // A record makes it where the broker creates topics on use; a marker under a
            // key no dead letter has.
            let producer: FutureProducer = config.clone().create()?;
            producer
                .send(
                    FutureRecord::<str, str>::to(REPLAYED_TOPIC).key("-"),
                    REQUEST_TIMEOUT,
                )
                .await
                .map_err(|(error, _)| error)?;
        }
    }
    // Nothing is replayed without a place for its marker: it would be replayed again. A
    // new topic takes a moment to be known to every broker.
    for _ in 0..20 {
        if marker_topic_exists(&probe)? {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    Err(DeadLettersError::MarkerTopic(
        "it does not exist after asking for it".into(),
    ))
}

/// Whether the broker `probe` asks knows the marker topic, with partitions.
fn marker_topic_exists(probe: &BaseConsumer) -> Result<bool, KafkaError> {
    let metadata = probe.fetch_metadata(Some(REPLAYED_TOPIC), REQUEST_TIMEOUT)?;
    Ok(metadata
        .topics()
        .iter()
        .any(|t| t.error().is_none() && !t.partitions().is_empty()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn letter(client: &str, reason: &str, minute: i64, original: Option<&str>) -> DeadLetter {
        DeadLetter::new(
            reason,
            "why",
            "traffic-raw",
            1,
            40 + minute,
            Some(format!("{client}::s1").as_bytes()),
            original.map(str::as_bytes),
            Some(&kg_shared::ClientId::parse(client).unwrap()),
            at(minute),
        )
    }

    fn at(minute: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000, 0).unwrap() + chrono::Duration::minutes(minute)
    }

    fn stored(offset: i64, letter: Option<DeadLetter>) -> Stored {
        Stored {
            topic: "dlq.normalized".into(),
            partition: 2,
            offset,
            letter,
        }
    }

    #[test]
    fn the_filter_chooses_by_client_reason_and_time() {
        let letter = letter("metro-la", "validation_failed", 10, Some("{}"));
        let cases = [
            (Filter::default(), true),
            (
                Filter {
                    client: Some("metro-la".into()),
                    reason: Some("validation_failed".into()),
                    since: Some(at(10)),
                    until: Some(at(11)),
                },
                true,
            ),
            (
                Filter {
                    client: Some("metro-sf".into()),
                    ..Filter::default()
                },
                false,
            ),
            (
                Filter {
                    reason: Some("undecodable".into()),
                    ..Filter::default()
                },
                false,
            ),
            (
                Filter {
                    since: Some(at(11)),
                    ..Filter::default()
                },
                false,
            ),
            (
                Filter {
                    until: Some(at(10)),
                    ..Filter::default()
                },
                false,
            ),
        ];
        for (filter, expected) in cases {
            assert_eq!(filter.matches(&letter), expected, "{filter:?}");
        }
    }

    #[test]
    fn a_replay_sends_each_chosen_original_once_and_says_why_it_skips_the_rest() {
        let mut truncated = letter("metro-la", "output_too_large", 2, Some("{\"a\""));
        truncated.truncated = Some(kg_shared::dlq::Truncated {
            size: 2_000_000,
            sha256: "00".into(),
            kept: 4,
        });
        let run = DeadLetter::skipped_run("unreadable", "corrupt", "traffic-raw", 0, 5, 9, at(3));
        let stored = [
            stored(
                7,
                Some(letter(
                    "metro-la",
                    "validation_failed",
                    1,
                    Some("{\"speed\":300}"),
                )),
            ),
            stored(
                8,
                Some(letter("metro-sf", "validation_failed", 1, Some("{}"))),
            ),
            stored(9, Some(truncated)),
            stored(10, Some(run)),
            stored(11, None),
            stored(
                12,
                Some(letter(
                    "metro-la",
                    "validation_failed",
                    4,
                    Some("{\"speed\":301}"),
                )),
            ),
        ];
        let filter = Filter {
            client: Some("metro-la".into()),
            ..Filter::default()
        };
        let mut run_with_client = stored[3].clone();
        if let Some(letter) = &mut run_with_client.letter {
            letter.client_id = Some("metro-la".into());
        }
        let stored = [&stored[..3], &[run_with_client], &stored[4..]].concat();
        let replayed: HashSet<String> = ["dlq.normalized/2/12".to_string()].into();
        assert_eq!(
            plan(&stored, &filter, &replayed),
            vec![
                Step::Replay {
                    markers: vec!["dlq.normalized/2/7".into()],
                    topic: "traffic-raw".into(),
                    key: Some(b"metro-la::s1".to_vec()),
                    value: Some(b"{\"speed\":300}".to_vec()),
                },
                Step::Skip {
                    marker: "dlq.normalized/2/9".into(),
                    why: SkipReason::Truncated
                },
                Step::Skip {
                    marker: "dlq.normalized/2/10".into(),
                    why: SkipReason::Unreadable
                },
                Step::Skip {
                    marker: "dlq.normalized/2/12".into(),
                    why: SkipReason::AlreadyReplayed
                },
            ]
        );
    }

    #[test]
    fn letters_of_one_input_record_replay_it_once_and_are_all_marked() {
        // A split payload with two rejected alerts: two letters of the same record.
        let one = letter("shop-eu", "validation_failed", 1, Some("{\"alerts\":[]}"));
        let stored = [stored(3, Some(one.clone())), stored(4, Some(one))];
        let steps = plan(&stored, &Filter::default(), &HashSet::new());
        assert_eq!(steps.len(), 1, "{steps:?}");
        let Step::Replay { markers, .. } = &steps[0] else {
            panic!("{steps:?}")
        };
        assert_eq!(markers, &["dlq.normalized/2/3", "dlq.normalized/2/4"]);
    }

    #[test]
    fn letters_of_one_input_with_different_originals_are_replayed_each() {
        // Two alerts of one payload dead-lettered after their hold: each letter carries
        // its own alert.
        let first = letter(
            "shop-eu",
            "output_too_large",
            1,
            Some("{\"fingerprint\":\"a\"}"),
        );
        let second = letter(
            "shop-eu",
            "output_too_large",
            1,
            Some("{\"fingerprint\":\"b\"}"),
        );
        let stored = [stored(3, Some(first)), stored(4, Some(second))];
        let steps = plan(&stored, &Filter::default(), &HashSet::new());
        assert_eq!(steps.len(), 2, "{steps:?}");
    }
}
