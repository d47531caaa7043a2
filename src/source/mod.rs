//! Kafka in: client settings shared by every winback client, the group
//! consumer's settings, decoding input records through the wire schemas, and
//! the dead-letter form of a record that cannot be folded; librdkafka's
//! statistics reports ([`stats`]).

pub mod stats;

use rdkafka::ClientConfig;

use crate::config::engine::{EngineConfig, InputFormat};
use crate::domain::Event;
use crate::domain::time::{Duration, Timestamp};
use crate::wire;

/// Headers of a dead-letter record (written by the runtime); its key and
/// value are the original's.
pub const DLQ_TOPIC: &str = "winback.dlq.topic";
pub const DLQ_PARTITION: &str = "winback.dlq.partition";
pub const DLQ_OFFSET: &str = "winback.dlq.offset";
pub const DLQ_REASON: &str = "winback.dlq.reason";
/// The rule the record broke, one word (`malformed`, `unroutable`,
/// `wrong_key`, `future_timestamp`, `refused`): the `reason` label of
/// `winback_dead_letters_total`.
pub const DLQ_KIND: &str = "winback.dlq.kind";
/// Set when the dead letter carries only a prefix of the original: the
/// original's key and value sizes, as `key=N value=M` (bytes).
pub const DLQ_TRUNCATED: &str = "winback.dlq.truncated";

/// A dead letter carries its original whole up to this size (key and value);
/// beyond it, [`DLQ_PREFIX_BYTES`] of each. Any broker accepts it then (the
/// default record limit is 1 MB), and the original stays at its coordinates.
pub const DLQ_WHOLE_BYTES: usize = 256 * 1024;
pub const DLQ_PREFIX_BYTES: usize = 16 * 1024;

/// The key and value a dead letter carries for an original `key` and
/// `value`, and the [`DLQ_TRUNCATED`] header's value when they were cut.
pub fn dead_letter_body(key: Vec<u8>, value: Vec<u8>) -> (Vec<u8>, Vec<u8>, Option<String>) {
    if key.len() + value.len() <= DLQ_WHOLE_BYTES {
        return (key, value, None);
    }
    let note = format!("key={} value={}", key.len(), value.len());
    let cut = |mut b: Vec<u8>| {
        b.truncate(DLQ_PREFIX_BYTES);
        b
    };
    (cut(key), cut(value), Some(note))
}

/// Settings every client gets: the brokers and the `[kafka]` table.
pub fn client_config(cfg: &EngineConfig, bootstrap: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", bootstrap);
    if cfg.embedded() {
        // The embedded broker ignores fetch size limits and answers a whole
        // partition's backlog in one fetch; librdkafka would drop the
        // connection over the 100 MB default.
        c.set("receive.message.max.bytes", "2147483647");
    }
    for (k, v) in &cfg.kafka {
        c.set(k, v);
    }
    c
}

/// The input consumer: a group member whose positions come from the store,
/// never from auto-commit.
pub fn consumer_config(cfg: &EngineConfig, bootstrap: &str) -> ClientConfig {
    let mut c = client_config(cfg, bootstrap);
    c.set("group.id", &cfg.group_id);
    c.set("enable.auto.commit", "false");
    c.set("enable.auto.offset.store", "false");
    // A partition with no stored position starts at the beginning (assigned
    // as such); a stored one that is not in the log any more is an error the
    // runtime reports or handles as `processing.offset_out_of_range` says,
    // never a silent jump.
    c.set("auto.offset.reset", "error");
    // Eager assignment: a revocation is total, which the runtime's batch
    // boundary handles simply (and cooperative-sticky stalls on noida-db).
    c.set("partition.assignment.strategy", "range");
    // Static membership: a restarted process takes its predecessor's place
    // (and partitions) at once instead of waiting out its session.
    c.set("group.instance.id", &cfg.instance_id);
    // Producers upstream may be transactional: never fold aborted records.
    c.set("isolation.level", "read_committed");
    if !cfg.kafka.contains_key("session.timeout.ms") {
        c.set("session.timeout.ms", "10000");
    }
    // Bounds what the consumer holds ahead of the engine (librdkafka's
    // default is 100,000 records a partition); the embedded broker, which
    // answers a fetch with a whole backlog at once, needs it most.
    if !cfg.kafka.contains_key("queued.min.messages") {
        c.set("queued.min.messages", "10000");
    }
    c
}

/// A consumer of committed records outside the group (restoring from the
/// changelog, reading topics for tools): assigned partitions only, its end
/// reported as a partition EOF at the last stable offset.
pub fn reader_config(cfg: &EngineConfig, bootstrap: &str) -> ClientConfig {
    let mut c = client_config(cfg, bootstrap);
    // Required by librdkafka for a consumer; never joined or committed to.
    c.set("group.id", format!("{}.reader", cfg.group_id));
    c.set("enable.auto.commit", "false");
    c.set("enable.auto.offset.store", "false");
    c.set("auto.offset.reset", "earliest");
    c.set("isolation.level", "read_committed");
    c.set("enable.partition.eof", "true");
    c
}

/// The context of a [`reader_config`] consumer: reaching a partition's end
/// is what it reads for, not an error to log.
pub struct Reader;

impl rdkafka::ClientContext for Reader {
    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        let eof = matches!(error, rdkafka::error::KafkaError::PartitionEOF(_))
            || error.rdkafka_error_code() == Some(rdkafka::error::RDKafkaErrorCode::PartitionEOF);
        if !eof {
            tracing::warn!(%error, reason, "Kafka reader");
        }
    }
}

impl rdkafka::consumer::ConsumerContext for Reader {}

/// Why an input record cannot be folded: `kind` names the rule (a metrics
/// label, one of the `REJECT_*` names), `reason` says what was wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    pub kind: &'static str,
    pub reason: String,
}

/// Not an event: no value, not UTF-8, not decodable, or the wrong shape.
pub const REJECT_MALFORMED: &str = "malformed";
/// An event no loaded definition can take (e.g. an unknown list).
pub const REJECT_UNROUTABLE: &str = "unroutable";
/// No key, or a key that is not the event's `contact_id`.
pub const REJECT_WRONG_KEY: &str = "wrong_key";
/// Stamped too far after its record's timestamp.
pub const REJECT_FUTURE: &str = "future_timestamp";
/// Refused by the engine when folded.
pub const REJECT_REFUSED: &str = "refused";

impl Rejected {
    pub fn new(kind: &'static str, reason: impl Into<String>) -> Rejected {
        Rejected {
            kind,
            reason: reason.into(),
        }
    }
}

/// Decodes one record value as `format` and checks the event's shape.
pub fn decode(format: InputFormat, payload: Option<&[u8]>) -> Result<Event, Rejected> {
    let malformed = |reason: String| Rejected::new(REJECT_MALFORMED, reason);
    let bytes = payload.ok_or_else(|| malformed("the record has no value".into()))?;
    let ev = match format {
        InputFormat::Json => {
            let text = std::str::from_utf8(bytes)
                .map_err(|e| malformed(format!("the value is not UTF-8: {e}")))?;
            wire::json::decode_event(text.trim_end()).map_err(|e| malformed(e.to_string()))?
        }
        InputFormat::Protobuf => {
            wire::proto::decode_event(bytes).map_err(|e| malformed(e.to_string()))?
        }
    };
    ev.check_shape().map_err(|e| malformed(e.to_string()))?;
    Ok(ev)
}

/// Checks what a record says about its event beyond the value: its key must
/// be the event's `contact_id` (another key may put the contact's events on
/// several partitions, splitting its state), and the event may be stamped at
/// most `max_future_skew` after the record's timestamp (`record_ms`; none
/// for a record without one): a clock moved far ahead would fire every
/// pending wait of its partition at once. Both depend only on the record, so
/// a replay refuses the same ones.
pub fn check_record(
    ev: &Event,
    key: Option<&[u8]>,
    record_ms: Option<i64>,
    max_future_skew: Duration,
) -> Result<(), Rejected> {
    match key {
        None => {
            return Err(Rejected::new(
                REJECT_WRONG_KEY,
                "the record has no key: input records must be keyed by their contact_id",
            ));
        }
        Some(k) if k != ev.contact_id.as_bytes() => {
            return Err(Rejected::new(
                REJECT_WRONG_KEY,
                format!(
                    "the record's key {:?} is not its contact_id {:?}: the contact's events must share one key, or its state splits across partitions",
                    String::from_utf8_lossy(&k[..k.len().min(64)]),
                    ev.contact_id
                ),
            ));
        }
        Some(_) => {}
    }
    if let Some(r) = record_ms
        && ev.occurred_at.0 > r.saturating_add(max_future_skew.0)
    {
        return Err(Rejected::new(
            REJECT_FUTURE,
            format!(
                "occurred_at {} is more than {} (processing.max_future_skew) after the record's timestamp {}",
                ev.occurred_at,
                max_future_skew,
                Timestamp(r)
            ),
        ));
    }
    Ok(())
}

/// The partition Kafka's Java producer (and librdkafka's `murmur2_random`
/// partitioner, which `winback produce` uses) chooses for a key: murmur2
/// with Kafka's seed, sign bit cleared, modulo the partition count.
/// Producers must partition input by it, so that each contact's events of
/// every input topic meet in one partition (README, "Input").
pub fn partition_for_key(key: &[u8], partitions: u32) -> u32 {
    (murmur2::murmur2(key, KAFKA_MURMUR2_SEED) & 0x7fff_ffff) % partitions.max(1)
}

const KAFKA_MURMUR2_SEED: u32 = 0x9747_b28c;

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    #[test]
    fn keys_hash_as_kafkas_java_producer_does() {
        // Kafka's own test vectors (`UtilsTest.testMurmur2`).
        let cases: [(&str, i32); 6] = [
            ("21", -973_932_308),
            ("foobar", -790_332_482),
            ("a-little-bit-long-string", -985_981_536),
            ("a-little-bit-longer-string", -1_486_304_829),
            (
                "lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8",
                -58_897_971,
            ),
            ("abc", 479_470_107),
        ];
        for (key, want) in cases {
            assert_eq!(
                murmur2::murmur2(key.as_bytes(), KAFKA_MURMUR2_SEED) as i32,
                want,
                "{key}"
            );
        }
        assert_eq!(partition_for_key(b"foobar", 1), 0);
    }

    #[test]
    fn a_record_is_keyed_by_its_contact_and_not_stamped_far_ahead() {
        let json = br#"{"event_id":"e1","name":"checkout","contact_id":"c1","occurred_at":"2026-01-05T10:00:00Z"}"#;
        let ev = decode(InputFormat::Json, Some(json)).unwrap();
        let at = ev.occurred_at.0;
        let hour = Duration(crate::domain::time::HOUR_MS);
        assert!(check_record(&ev, Some(b"c1"), Some(at), hour).is_ok());
        assert!(check_record(&ev, Some(b"c1"), None, hour).is_ok());
        // A record produced long after its event (history) is fine.
        assert!(check_record(&ev, Some(b"c1"), Some(at + 1_000_000_000), hour).is_ok());
        assert!(check_record(&ev, Some(b"c1"), Some(at - hour.0), hour).is_ok());
        let ahead = check_record(&ev, Some(b"c1"), Some(at - hour.0 - 1), hour).unwrap_err();
        assert!(ahead.reason.contains("max_future_skew"), "{}", ahead.reason);
        assert_eq!(ahead.kind, REJECT_FUTURE);
        let other = check_record(&ev, Some(b"c2"), Some(at), hour).unwrap_err();
        assert!(
            other.reason.contains("is not its contact_id"),
            "{}",
            other.reason
        );
        assert_eq!(other.kind, REJECT_WRONG_KEY);
        assert!(
            check_record(&ev, None, Some(at), hour)
                .unwrap_err()
                .reason
                .contains("no key")
        );
    }

    #[test]
    fn decodes_both_formats_and_names_the_problem() {
        let json = br#"{"event_id":"e1","name":"checkout","contact_id":"c1","occurred_at":"2026-01-05T10:00:00Z"}"#;
        let ev = decode(InputFormat::Json, Some(json)).unwrap();
        assert_eq!(ev.contact_id, "c1");
        let pb = wire::proto::event_to_pb(&ev).encode_to_vec();
        assert_eq!(decode(InputFormat::Protobuf, Some(&pb)).unwrap(), ev);

        assert_eq!(
            decode(InputFormat::Json, None).unwrap_err(),
            Rejected::new(REJECT_MALFORMED, "the record has no value")
        );
        assert!(
            decode(InputFormat::Json, Some(b"\xff"))
                .unwrap_err()
                .reason
                .contains("UTF-8")
        );
        assert!(decode(InputFormat::Json, Some(b"{\"name\":1}")).is_err());
        assert!(decode(InputFormat::Protobuf, Some(json)).is_err());
        let no_contact = br#"{"event_id":"e1","name":"checkout","contact_id":"","occurred_at":"2026-01-05T10:00:00Z"}"#;
        assert!(decode(InputFormat::Json, Some(no_contact)).is_err());
    }
}
