//! A raw Kafka producer for what no well-behaved client sends: a record batch with valid
//! framing (header, CRC-32C, offsets) whose compressed payload is garbage. It speaks the
//! Produce API (v3, record batches v2) over TCP to the partition's leader, found with
//! librdkafka's metadata.
//!
//! A real Kafka broker decompresses batches to validate them and refuses such a batch
//! (CORRUPT_MESSAGE); the embedded broker stores it as sent, which is how a corrupt batch
//! reaches consumers (as it would from a broken disk or a broker that does not validate).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};

/// zstd, in the batch attributes' compression bits.
const ZSTD: i16 = 4;

/// Produces to `topic`/`partition` one batch claiming `records` zstd-compressed records
/// whose payload is not zstd. Returns the batch's base offset as the broker assigned it.
pub fn produce_corrupt_batch(
    bootstrap: &str,
    topic: &str,
    partition: i32,
    records: i32,
) -> Result<i64> {
    let leader = leader_address(bootstrap, topic, partition)?;
    let batch = corrupt_batch(records);
    let request = produce_request(topic, partition, &batch);
    let mut stream = TcpStream::connect(&leader).with_context(|| format!("connect {leader}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    stream.write_all(&request)?;
    let mut size = [0u8; 4];
    stream.read_exact(&mut size)?;
    let mut response = vec![0u8; i32::from_be_bytes(size) as usize];
    stream.read_exact(&mut response)?;
    parse_produce_response(&response)
}

fn leader_address(bootstrap: &str, topic: &str, partition: i32) -> Result<String> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()?;
    let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10))?;
    let leader = metadata
        .topics()
        .iter()
        .find(|t| t.name() == topic)
        .and_then(|t| t.partitions().iter().find(|p| p.id() == partition))
        .map(|p| p.leader())
        .with_context(|| format!("no metadata for {topic}/{partition}"))?;
    let broker = metadata
        .brokers()
        .iter()
        .find(|b| b.id() == leader)
        .with_context(|| format!("leader {leader} is not in the metadata"))?;
    Ok(format!("{}:{}", broker.host(), broker.port()))
}

/// A v2 record batch: the header as a producer writes it, a correct CRC-32C, and 64 bytes
/// that are not a zstd frame where the compressed records should be.
fn corrupt_batch(records: i32) -> Vec<u8> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0);
    // From the attributes to the end: what the CRC covers.
    let mut body = Vec::new();
    body.extend(ZSTD.to_be_bytes()); // attributes
    body.extend((records - 1).to_be_bytes()); // lastOffsetDelta
    body.extend(now.to_be_bytes()); // baseTimestamp
    body.extend(now.to_be_bytes()); // maxTimestamp
    body.extend((-1i64).to_be_bytes()); // producerId
    body.extend((-1i16).to_be_bytes()); // producerEpoch
    body.extend((-1i32).to_be_bytes()); // baseSequence
    body.extend(records.to_be_bytes()); // record count
    body.extend([0xA5u8; 64]); // the "compressed" records: not a zstd frame
    let crc = crc32c(&body);
    let mut batch = Vec::new();
    batch.extend(0i64.to_be_bytes()); // baseOffset (the broker assigns it)
                                      // batchLength: everything after this field.
    batch.extend((4 + 1 + 4 + body.len() as i32).to_be_bytes());
    batch.extend((-1i32).to_be_bytes()); // partitionLeaderEpoch
    batch.push(2); // magic
    batch.extend(crc.to_be_bytes());
    batch.extend(body);
    batch
}

fn produce_request(topic: &str, partition: i32, batch: &[u8]) -> Vec<u8> {
    let mut message = Vec::new();
    message.extend(0i16.to_be_bytes()); // api key: Produce
    message.extend(3i16.to_be_bytes()); // api version
    message.extend(1i32.to_be_bytes()); // correlation id
    put_string(&mut message, "kg-raw-producer"); // client id
    message.extend((-1i16).to_be_bytes()); // transactional id: null
    message.extend((-1i16).to_be_bytes()); // acks: all
    message.extend(10_000i32.to_be_bytes()); // timeout ms
    message.extend(1i32.to_be_bytes()); // one topic
    put_string(&mut message, topic);
    message.extend(1i32.to_be_bytes()); // one partition
    message.extend(partition.to_be_bytes());
    message.extend((batch.len() as i32).to_be_bytes());
    message.extend(batch);
    let mut request = (message.len() as i32).to_be_bytes().to_vec();
    request.extend(message);
    request
}

fn put_string(out: &mut Vec<u8>, text: &str) {
    out.extend((text.len() as i16).to_be_bytes());
    out.extend(text.as_bytes());
}

/// Produce v3 response: correlation id, [topic, [partition, error, base offset, log append
/// time]], throttle time.
fn parse_produce_response(response: &[u8]) -> Result<i64> {
    let mut at = 4; // correlation id
    let take = |at: &mut usize, n: usize| -> Result<&[u8]> {
        let slice = response
            .get(*at..*at + n)
            .context("produce response too short")?;
        *at += n;
        Ok(slice)
    };
    let topics = i32::from_be_bytes(take(&mut at, 4)?.try_into()?);
    ensure!(topics == 1, "{topics} topics in the produce response");
    let name_len = i16::from_be_bytes(take(&mut at, 2)?.try_into()?) as usize;
    take(&mut at, name_len)?;
    let partitions = i32::from_be_bytes(take(&mut at, 4)?.try_into()?);
    ensure!(
        partitions == 1,
        "{partitions} partitions in the produce response"
    );
    take(&mut at, 4)?; // partition
    let error = i16::from_be_bytes(take(&mut at, 2)?.try_into()?);
    let base_offset = i64::from_be_bytes(take(&mut at, 8)?.try_into()?);
    if error != 0 {
        bail!("the broker refused the batch: Kafka error code {error}");
    }
    Ok(base_offset)
}

/// CRC-32C (Castagnoli), as Kafka's record batches use.
fn crc32c(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for byte in data {
        crc ^= u32::from(*byte);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0x82F6_3B78
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_matches_the_standard_check_value() {
        // RFC 3720's check value for "123456789".
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
    }

    #[test]
    fn the_batch_length_covers_everything_after_it() {
        let batch = corrupt_batch(5);
        let length = i32::from_be_bytes(batch[8..12].try_into().unwrap()) as usize;
        assert_eq!(length, batch.len() - 12);
        assert_eq!(batch[16], 2, "magic");
    }
}
