//! Restoring a partition's state from the changelog topic (exactly-once mode).
//!
//! The store keeps, per partition, the changelog position it has applied up
//! to. A restore reads the changelog partition from there (from its start
//! when the store has nothing, or always with [`RestoreFrom::Start`], then
//! skipping what the store has) to its last stable offset, `read_committed`,
//! and applies each record: a contact's state with the timers it implies
//! (replacing the timers of the state it had), and the partition record with
//! the clock, input offsets and coupon shares. After a normal restart the
//! position is at the end and nothing is applied; after a crash between a
//! transaction's commit and the local write, only that transaction is
//! applied; with an empty disk, everything.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Headers;
use rdkafka::{Message, Offset, TopicPartitionList};

use super::{RuntimeError, kafka};
use crate::config::engine::{EngineConfig, RestoreFrom};
use crate::domain::{ContactState, Definitions};
use crate::store::Store;
use crate::store::changelog::{
    self, HEADER_RECORD, PARTITION_KEY, RECORD_PARTITION, apply_contact, apply_partition,
};

/// Records applied per RocksDB write batch.
const BATCH_RECORDS: usize = 20_000;

/// What one restore did.
#[derive(Debug, Clone, Default)]
pub struct Restored {
    pub partition: u32,
    /// Changelog records applied.
    pub records: u64,
    /// The changelog position it started from (None: the start, with an empty store).
    pub from: Option<i64>,
    /// The position it ended at (the next offset to read).
    pub to: i64,
    pub elapsed: Duration,
}

/// Progress: records applied so far, the position reached, the changelog's end.
pub type Progress<'a> = &'a mut dyn FnMut(u64, i64, i64);

/// Brings `partition`'s state in `store` up to the changelog's end.
pub fn restore_partition(
    store: &Store,
    defs: &Definitions,
    cfg: &EngineConfig,
    bootstrap: &str,
    partition: u32,
    stop: &AtomicBool,
    progress: Progress<'_>,
) -> Result<Restored, RuntimeError> {
    let started = Instant::now();
    let topic = cfg.outputs.changelog.as_str();
    let from = store.changelog_position(partition)?;
    if from.is_none() {
        // Without a position nothing stored for the partition is known to
        // belong to the changelog: start clean.
        store.drop_partition(partition)?;
    }
    let consumer: BaseConsumer<crate::source::Reader> =
        crate::source::reader_config(cfg, bootstrap)
            .create_with_context(crate::source::Reader)
            .map_err(kafka("create the changelog reader"))?;
    let (_, high) = consumer
        .fetch_watermarks(topic, partition as i32, Duration::from_secs(10))
        .map_err(kafka(format!("watermarks of {topic}[{partition}]")))?;
    let start = match (from, cfg.restore_from) {
        (Some(p), RestoreFrom::Position) => Offset::Offset(p),
        _ => Offset::Beginning,
    };
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, partition as i32, start)
        .map_err(kafka("changelog position"))?;
    consumer
        .assign(&tpl)
        .map_err(kafka(format!("assign {topic}[{partition}]")))?;

    // The count the coupon pools are split by now, against each partition
    // record's (set by `run` and `rebuild` before any restore).
    let partitions = store.partitions()?;
    let mut pos = from.unwrap_or(0);
    let mut records = 0u64;
    // States written by the running batch, not yet readable from the store.
    let mut written: HashMap<Vec<u8>, Option<ContactState>> = HashMap::new();
    let mut batch = store.batch(defs, partition);
    let mut last_report = Instant::now();
    loop {
        if stop.load(Ordering::Acquire) {
            return Err(RuntimeError::Restore {
                partition,
                reason: "stopped".into(),
            });
        }
        let m = match consumer.poll(Duration::from_millis(500)) {
            None => continue,
            Some(Err(KafkaError::PartitionEOF(_))) => break,
            Some(Err(e)) => {
                // Transport trouble: librdkafka reconnects on its own.
                tracing::warn!(error = %e, partition, "changelog read error");
                continue;
            }
            Some(Ok(m)) => m,
        };
        if from.is_some_and(|f| m.offset() < f) {
            // Read from the start (`RestoreFrom::Start`): the store has it.
            continue;
        }
        let key = m.key().unwrap_or_default();
        let is_partition = m.headers().is_some_and(|h| {
            h.iter()
                .any(|h| h.key == HEADER_RECORD && h.value == Some(RECORD_PARTITION.as_bytes()))
        });
        let bad = |reason: String| RuntimeError::Restore {
            partition,
            reason: format!("changelog offset {}: {reason}", m.offset()),
        };
        if is_partition || key == PARTITION_KEY {
            let st = changelog::decode_partition(m.payload().unwrap_or_default())
                .map_err(|e| bad(e.to_string()))?;
            // The coupon progress is trusted only for the pools and the split
            // it was made with: with an empty store this is the only check
            // between a changed codes file and codes handed out twice.
            if let Some(n) = partitions
                && let Some(why) = changelog::coupon_problem(defs, partition, n, &st)
            {
                return Err(bad(why));
            }
            apply_partition(&mut batch, &st);
        } else {
            let contact =
                std::str::from_utf8(key).map_err(|_| bad("contact id is not UTF-8".into()))?;
            let old = match written.get(key) {
                Some(st) => st.clone(),
                None if from.is_some() => store.contact(defs, partition, contact)?,
                None => None,
            };
            let new = apply_contact(defs, &mut batch, contact, m.payload(), old.as_ref())
                .map_err(|e| bad(format!("contact {contact:?}: {e}")))?;
            written.insert(key.to_vec(), new);
        }
        records += 1;
        pos = m.offset() + 1;
        if written.len() >= BATCH_RECORDS || batch.len() >= 4 * BATCH_RECORDS {
            batch.set_changelog_position(pos);
            batch.commit()?;
            batch = store.batch(defs, partition);
            written.clear();
        }
        if last_report.elapsed() >= Duration::from_millis(200) {
            progress(records, pos, high);
            last_report = Instant::now();
        }
    }
    batch.set_changelog_position(pos);
    batch.commit()?;
    progress(records, pos, high.max(pos));
    Ok(Restored {
        partition,
        records,
        from,
        to: pos,
        elapsed: started.elapsed(),
    })
}
