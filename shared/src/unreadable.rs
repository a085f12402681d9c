//! Finding the way past records that librdkafka cannot read.
//!
//! A record batch with valid framing but a payload that does not decompress (garbage
//! zstd, say) makes librdkafka report `Bad compression` and fetch the same offset again,
//! forever: the partition stalls, and every record behind the batch with it. rdkafka's
//! error carries neither the partition nor the offset, so a consumer finds both itself,
//! by probing with a consumer of its own:
//!
//! - a fetch from an offset inside the unreadable run fails the same way;
//! - a fetch from past its last offset succeeds, because librdkafka skips whole batches
//!   that end before the fetch offset without decompressing them.
//!
//! The answer is monotone over the run, so a binary search between the stall and the
//! high watermark finds the first readable offset in O(log n) probes, and the consumer
//! skips exactly the run: the offsets it could not read, no more. Consecutive unreadable
//! batches are found as one run.

use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::{Offset, TopicPartitionList};

/// Whether a consumer error means "the records at the fetch position cannot be decoded",
/// which librdkafka retries forever, rather than a transient or connection error.
pub fn is_unreadable(error: &KafkaError) -> bool {
    matches!(
        error,
        KafkaError::MessageConsumption(code) | KafkaError::MessageConsumptionFatal(code)
            if matches!(
                code,
                RDKafkaErrorCode::BadCompression
                    | RDKafkaErrorCode::BadMessage
                    | RDKafkaErrorCode::InvalidMessage
                    | RDKafkaErrorCode::InvalidRecord
            )
    )
}

/// A run of offsets that could not be read, and where reading resumes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnreadableRun {
    pub topic: String,
    pub partition: i32,
    /// The first offset that could not be read.
    pub first: i64,
    /// The first readable offset after the run (the high watermark when nothing after
    /// it could be read yet).
    pub resume_at: i64,
}

impl UnreadableRun {
    /// The last offset skipped.
    pub fn last(&self) -> i64 {
        self.resume_at - 1
    }

    /// The dead letter that stands for this run: which offsets were skipped, and why.
    pub fn dead_letter(
        &self,
        error: &KafkaError,
        failed_at: chrono::DateTime<chrono::Utc>,
    ) -> crate::dlq::DeadLetter {
        crate::dlq::DeadLetter::skipped_run(
            "unreadable",
            format!(
                "offsets {}..={} of {}/{} cannot be read ({error}); skipped",
                self.first,
                self.last(),
                self.topic,
                self.partition
            ),
            &self.topic,
            self.partition,
            self.first,
            self.last(),
            failed_at,
        )
    }
}

/// The longest one broker call of a probe pass waits.
const PROBE_STEP_TIMEOUT: Duration = Duration::from_secs(5);

/// Where the next pass starts in the assignment (any pass, any consumer: it only needs to
/// move).
static PASS_START: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// What one probe found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProbeOutcome {
    /// A record (or the end of the partition) was read from the offset.
    Readable,
    /// Reading from the offset failed because the records there cannot be decoded.
    Unreadable,
}

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("failed to create the probe consumer: {0}")]
    Create(#[source] KafkaError),
    #[error("failed to assign {topic}/{partition} at {offset}: {source}")]
    Assign {
        topic: String,
        partition: i32,
        offset: i64,
        #[source]
        source: KafkaError,
    },
    #[error("the caller is shutting down")]
    Stopped,
    #[error("no answer for {topic}/{partition} at {offset} within {timeout:?}")]
    Timeout {
        topic: String,
        partition: i32,
        offset: i64,
        timeout: Duration,
    },
}

/// Reads single offsets of one partition with a consumer of its own (no group, nothing
/// committed), so the caller's consumer and its group are untouched.
pub struct PartitionProbe<'a> {
    config: ClientConfig,
    topic: String,
    partition: i32,
    timeout: Duration,
    /// No probe waits past this, whatever `timeout` says: the caller's whole pass is
    /// bounded (a shutdown waits for it).
    deadline: Option<Instant>,
    /// Asked between polls: a caller that is shutting down stops the probe at once.
    stopped: Option<&'a dyn Fn() -> bool>,
}

impl<'a> PartitionProbe<'a> {
    /// `config` carries the connection settings (bootstrap servers, security); `timeout`
    /// bounds each probe.
    pub fn new(config: &ClientConfig, topic: &str, partition: i32, timeout: Duration) -> Self {
        let mut config = config.clone();
        config
            .set("group.id", "kg-unreadable-probe")
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("enable.partition.eof", "true")
            .set("fetch.wait.max.ms", "50");
        Self {
            config,
            topic: topic.to_owned(),
            partition,
            timeout,
            deadline: None,
            stopped: None,
        }
    }

    /// No probe waits past `deadline`, and none goes on once `stopped` says so.
    pub fn within(mut self, deadline: Instant, stopped: &'a dyn Fn() -> bool) -> Self {
        self.deadline = Some(deadline);
        self.stopped = Some(stopped);
        self
    }

    /// Whether reading from `offset` yields a record (or the partition's end) or the
    /// decoding error. A fresh consumer per probe: no error of an earlier position can be
    /// mistaken for this one's.
    pub fn at(&self, offset: i64) -> Result<ProbeOutcome, ProbeError> {
        let consumer: BaseConsumer = self.config.create().map_err(ProbeError::Create)?;
        let mut list = TopicPartitionList::new();
        list.add_partition_offset(&self.topic, self.partition, Offset::Offset(offset))
            .and_then(|()| consumer.assign(&list))
            .map_err(|source| ProbeError::Assign {
                topic: self.topic.clone(),
                partition: self.partition,
                offset,
                source,
            })?;
        let own = Instant::now() + self.timeout;
        let deadline = self.deadline.map_or(own, |pass| pass.min(own));
        while Instant::now() < deadline {
            if self.stopped.is_some_and(|stopped| stopped()) {
                return Err(ProbeError::Stopped);
            }
            match consumer.poll(Duration::from_millis(100)) {
                Some(Ok(_)) | Some(Err(KafkaError::PartitionEOF(_))) => {
                    return Ok(ProbeOutcome::Readable)
                }
                Some(Err(error)) if is_unreadable(&error) => return Ok(ProbeOutcome::Unreadable),
                // Connection hiccups and the like: keep waiting until the deadline.
                Some(Err(_)) | None => {}
            }
        }
        Err(ProbeError::Timeout {
            topic: self.topic.clone(),
            partition: self.partition,
            offset,
            timeout: self.timeout,
        })
    }

    /// When reading from `from` fails, the run of unreadable offsets that starts there
    /// (up to `high`, the partition's high watermark); `None` when `from` reads fine.
    pub fn unreadable_run(
        &self,
        from: i64,
        high: i64,
    ) -> Result<Option<UnreadableRun>, ProbeError> {
        if from >= high || self.at(from)? == ProbeOutcome::Readable {
            return Ok(None);
        }
        let resume_at = first_readable(from, high, |offset| self.at(offset))?;
        Ok(Some(UnreadableRun {
            topic: self.topic.clone(),
            partition: self.partition,
            first: from,
            resume_at,
        }))
    }
}

/// For every partition assigned to `consumer` with records left to read, probes from where
/// the consumer stands (`known_next`, when the caller tracks it, else its position, else
/// its group's committed offset, else the start of the log) and, where those records
/// cannot be decoded, seeks past exactly that run. Returns the runs skipped; the caller
/// dead-letters and counts them. `config` carries the connection settings for the probes.
///
/// The whole pass takes at most `budget` (plus one librdkafka poll interval): every
/// broker call waits at most what is left of it, and partitions not reached in time are
/// left for the next pass, which the next decoding error starts. A caller's shutdown waits
/// for a pass, so with the broker gone this is what keeps shutdown prompt. Each pass
/// begins at a different partition, so a pass cut short does not always favour the same
/// ones. `stopped` is asked between broker calls and probe polls: once it says so, the
/// pass ends with what it has. Blocking: call it off the async threads.
#[allow(clippy::too_many_lines)] // one linear sequence; to be split when it next changes
pub fn skip_unreadable<C: ConsumerContext, K: Consumer<C>>(
    consumer: &K,
    config: &ClientConfig,
    budget: Duration,
    stopped: &dyn Fn() -> bool,
    known_next: impl Fn(&str, i32) -> Option<i64>,
) -> Vec<UnreadableRun> {
    // As before the budget, at least a second: a caller's grace of zero must not turn
    // every pass into no pass, and the partition into a stall.
    let budget = budget.max(Duration::from_secs(1));
    let deadline = Instant::now() + budget;
    // One broker call waits at most this long, and never past the deadline.
    let left = || {
        deadline
            .saturating_duration_since(Instant::now())
            .min(PROBE_STEP_TIMEOUT)
    };
    let Ok(assignment) = consumer.assignment() else {
        return Vec::new();
    };
    if stopped() {
        return Vec::new();
    }
    let positions = consumer.position().unwrap_or_default();
    let committed = consumer
        .committed_offsets(assignment.clone(), left())
        .unwrap_or_default();
    let offset_of = |list: &TopicPartitionList, topic: &str, partition: i32| {
        list.find_partition(topic, partition)
            .and_then(|element| match element.offset() {
                Offset::Offset(offset) => Some(offset),
                _ => None,
            })
    };
    let mut runs = Vec::new();
    let elements = assignment.elements();
    let start = PASS_START.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    for index in 0..elements.len() {
        let element = &elements[(start + index) % elements.len()];
        if stopped() {
            break;
        }
        if Instant::now() >= deadline {
            tracing::warn!(
                ?budget,
                partitions_left = elements.len() - index,
                "probe pass out of time; the rest waits for the next pass"
            );
            break;
        }
        let (topic, partition) = (element.topic(), element.partition());
        let Ok((low, high)) = consumer.fetch_watermarks(topic, partition, left()) else {
            continue;
        };
        let from = known_next(topic, partition)
            .or_else(|| offset_of(&positions, topic, partition))
            .or_else(|| offset_of(&committed, topic, partition))
            .unwrap_or(low)
            .max(low);
        let probe = PartitionProbe::new(config, topic, partition, PROBE_STEP_TIMEOUT)
            .within(deadline, stopped);
        match probe.unreadable_run(from, high) {
            Ok(Some(run)) => {
                // Never a zero timeout, which makes librdkafka's seek asynchronous: a seek
                // that failed unseen would leave the partition stalled while the run is
                // reported skipped. The seek is local and quick.
                let seek_timeout = left().max(Duration::from_secs(1));
                match consumer.seek(
                    topic,
                    partition,
                    Offset::Offset(run.resume_at),
                    seek_timeout,
                ) {
                    Ok(()) => {
                        tracing::warn!(
                            topic,
                            partition,
                            first = run.first,
                            last = run.last(),
                            "skipping records that cannot be decoded"
                        );
                        runs.push(run);
                    }
                    Err(error) => tracing::warn!(
                        %error,
                        topic,
                        partition,
                        "seek past undecodable records failed; will probe again"
                    ),
                }
            }
            Ok(None) => {}
            Err(ProbeError::Stopped) => break,
            Err(error) => tracing::warn!(%error, "probe for undecodable records"),
        }
    }
    runs
}

/// The smallest offset in `(unreadable, high]` that `probe` finds readable, given that
/// `unreadable` is not and `high` (the high watermark: nothing to read is nothing wrong)
/// is. Binary search: `probe` must be monotone over the range, which it is for one run of
/// consecutive unreadable batches followed by readable ones.
pub fn first_readable<E>(
    unreadable: i64,
    high: i64,
    mut probe: impl FnMut(i64) -> Result<ProbeOutcome, E>,
) -> Result<i64, E> {
    let (mut bad, mut good) = (unreadable, high);
    while good - bad > 1 {
        let middle = bad + (good - bad) / 2;
        match probe(middle)? {
            ProbeOutcome::Readable => good = middle,
            ProbeOutcome::Unreadable => bad = middle,
        }
    }
    Ok(good)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::convert::Infallible;

    /// A partition whose offsets `[start, end)` cannot be read.
    fn run(start: i64, end: i64) -> impl FnMut(i64) -> Result<ProbeOutcome, Infallible> {
        move |offset| {
            Ok(if (start..end).contains(&offset) {
                ProbeOutcome::Unreadable
            } else {
                ProbeOutcome::Readable
            })
        }
    }

    #[test]
    fn finds_the_first_offset_after_the_run() {
        for (start, end, high) in [
            (5, 6, 100),
            (5, 105, 1_000),
            (0, 1, 1),
            (7, 50, 50),
            (3, 4, 4),
        ] {
            assert_eq!(
                first_readable(start, high, run(start, end)).unwrap(),
                end.min(high),
                "run {start}..{end}, high {high}"
            );
        }
    }

    #[test]
    fn takes_logarithmically_many_probes() {
        let mut probes = 0;
        let mut inner = run(0, 7_000);
        let found = first_readable(0, 1_000_000, |offset| {
            probes += 1;
            inner(offset)
        })
        .unwrap();
        assert_eq!(found, 7_000);
        assert!(probes <= 20, "{probes} probes");
    }

    #[test]
    fn the_decoding_errors_are_unreadable_and_others_are_not() {
        for code in [
            RDKafkaErrorCode::BadCompression,
            RDKafkaErrorCode::BadMessage,
            RDKafkaErrorCode::InvalidMessage,
        ] {
            assert!(is_unreadable(&KafkaError::MessageConsumption(code)));
        }
        for code in [
            RDKafkaErrorCode::BrokerTransportFailure,
            RDKafkaErrorCode::AllBrokersDown,
            RDKafkaErrorCode::OffsetOutOfRange,
        ] {
            assert!(!is_unreadable(&KafkaError::MessageConsumption(code)));
        }
        assert!(!is_unreadable(&KafkaError::PartitionEOF(3)));
    }

    /// A consumer assigned `partitions` partitions of a broker nobody answers for: every
    /// broker call it makes waits for its whole timeout.
    fn stranded_consumer(partitions: i32) -> (BaseConsumer, ClientConfig) {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", "127.0.0.1:1")
            .set("group.id", "kg-unreadable-test")
            .set("log_level", "0");
        let consumer: BaseConsumer = config.create().unwrap();
        let mut list = TopicPartitionList::new();
        for partition in 0..partitions {
            list.add_partition_offset("stalled", partition, Offset::Offset(5))
                .unwrap();
        }
        consumer.assign(&list).unwrap();
        (consumer, config)
    }

    #[test]
    fn a_pass_against_a_broker_that_is_gone_ends_within_its_budget() {
        // Eight partitions at up to 5 s per broker call: without one budget for the whole
        // pass this took 5 s for the committed offsets and 5 s per partition, and a
        // shutdown waited for all of it.
        let (consumer, config) = stranded_consumer(8);
        let started = Instant::now();
        let runs = skip_unreadable(
            &consumer,
            &config,
            Duration::from_secs(1),
            &|| false,
            |_, _| None,
        );
        let took = started.elapsed();
        assert!(runs.is_empty());
        assert!(took < Duration::from_secs(3), "the pass took {took:?}");
    }

    #[test]
    fn a_pass_ends_at_once_when_its_caller_is_stopping() {
        let (consumer, config) = stranded_consumer(8);
        let started = Instant::now();
        let runs = skip_unreadable(
            &consumer,
            &config,
            Duration::from_secs(30),
            &|| true,
            |_, _| Some(5),
        );
        let took = started.elapsed();
        assert!(runs.is_empty());
        assert!(took < Duration::from_secs(1), "the pass took {took:?}");
    }

    #[test]
    fn a_probe_stops_polling_once_its_caller_is_stopping() {
        let (_, config) = stranded_consumer(1);
        let stopping = std::sync::atomic::AtomicBool::new(false);
        let stopped = || stopping.swap(true, std::sync::atomic::Ordering::Relaxed);
        let probe = PartitionProbe::new(&config, "stalled", 0, Duration::from_secs(30))
            .within(Instant::now() + Duration::from_secs(30), &stopped);
        let started = Instant::now();
        assert!(matches!(probe.at(5), Err(ProbeError::Stopped)));
        assert!(started.elapsed() < Duration::from_secs(2));
    }

    #[test]
    fn the_run_knows_its_last_offset() {
        let found = UnreadableRun {
            topic: "t".into(),
            partition: 0,
            first: 10,
            resume_at: 13,
        };
        assert_eq!(found.last(), 12);
    }
}
