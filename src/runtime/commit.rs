//! The end of a batch: its output acknowledged (at-least-once) or its
//! transaction committed with the input offsets (exactly-once), then the
//! RocksDB batch written; an aborted transaction rolled back.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::{Offset, TopicPartitionList};

use super::error::{RuntimeError, kafka};
use super::{ENV_ABORT_EVERY, Loop};
use crate::config::engine::Guarantee;
use crate::sink::{Record, TxnOutcome};

impl Loop {
    pub(super) fn commit(&mut self) -> Result<(), RuntimeError> {
        let changed = self.parts.values().any(|p| p.has_changes());
        if !changed && self.sink.pending() == 0 {
            return Ok(());
        }
        let started = Instant::now();
        let done = match self.cfg.guarantee {
            Guarantee::AtLeastOnce => self.commit_acknowledged(),
            Guarantee::ExactlyOnce => self.commit_transaction(),
        };
        ::metrics::histogram!(super::metrics::COMMIT_SECONDS)
            .record(started.elapsed().as_secs_f64());
        done
    }

    /// At-least-once: waits for the batch's acknowledgements, then writes its
    /// state in one atomic batch, then tells the group (for lag monitoring only).
    pub(super) fn commit_acknowledged(&mut self) -> Result<(), RuntimeError> {
        let waited = Instant::now();
        self.sink.finish(&self.stop)?;
        self.stats
            .ack_wait_us
            .fetch_add(waited.elapsed().as_micros() as u64, Ordering::Relaxed);
        self.write_batch(&HashMap::new())?;
        let tpl = self.group_offsets()?;
        if tpl.count() > 0
            && let Err(e) = self.consumer.commit(&tpl, CommitMode::Async)
        {
            tracing::debug!(error = %e, "group offset commit (informational) failed");
        }
        Ok(())
    }

    /// Exactly-once: the batch's changelog records join its transaction with
    /// the input offsets; once committed, the store is written. Aborted: the
    /// batch is undone and read again.
    pub(super) fn commit_transaction(&mut self) -> Result<(), RuntimeError> {
        let changelog = &self.cfg.outputs.changelog;
        let marker: [(&str, &[u8]); 1] = [(
            crate::store::changelog::HEADER_RECORD,
            crate::store::changelog::RECORD_PARTITION.as_bytes(),
        )];
        for part in self.parts.values_mut() {
            if !part.has_changes() {
                continue;
            }
            let id = part.id as i32;
            let sink = &mut self.sink;
            part.changelog(|key, value, is_partition| {
                sink.send_record(Record {
                    topic: changelog,
                    key,
                    value,
                    headers: if is_partition { &marker } else { &[] },
                    partition: Some(id),
                });
            });
        }
        let tpl = self.group_offsets()?;
        let group = self
            .consumer
            .group_metadata()
            .ok_or_else(|| RuntimeError::Kafka {
                what: "group metadata for the transaction".into(),
                source: KafkaError::NoMessageReceived,
            })?;
        let waited = Instant::now();
        self.transactions += 1;
        let outcome = if self
            .abort_every
            .is_some_and(|n| self.transactions.is_multiple_of(n))
        {
            self.sink.abort_transaction()?;
            TxnOutcome::Aborted(format!("{ENV_ABORT_EVERY} injected an abort"))
        } else {
            self.sink.commit_transaction(&tpl, &group)?
        };
        self.stats
            .ack_wait_us
            .fetch_add(waited.elapsed().as_micros() as u64, Ordering::Relaxed);
        match outcome {
            TxnOutcome::Committed(ends) => self.write_batch(&ends),
            TxnOutcome::Aborted(reason) => {
                tracing::warn!(%reason, "transaction aborted; processing the batch again");
                self.stats.aborted.fetch_add(1, Ordering::Relaxed);
                self.rollback()
            }
        }
    }

    /// Writes every partition's changes in one RocksDB batch, with the
    /// changelog position each reached (`ends`: the last changelog offset
    /// written per partition).
    pub(super) fn write_batch(&mut self, ends: &HashMap<i32, i64>) -> Result<(), RuntimeError> {
        let writing = Instant::now();
        let mut batch = self.store.batch(&self.defs, 0);
        for part in self.parts.values_mut() {
            if part.has_changes() {
                part.write(&mut batch);
                if let Some(end) = ends.get(&(part.id as i32)) {
                    batch.set_changelog_position(end + 1);
                }
            }
        }
        batch.commit()?;
        self.stats
            .store_write_us
            .fetch_add(writing.elapsed().as_micros() as u64, Ordering::Relaxed);
        self.stats
            .events_written
            .fetch_add(std::mem::take(&mut self.batch_settled), Ordering::Relaxed);
        self.stats.batches.fetch_add(1, Ordering::Relaxed);
        self.tally.record(&self.defs);
        Ok(())
    }

    /// The consumed positions of every input partition held, for the group:
    /// in memory if the batch moved them, else as stored. Each transaction
    /// carries them even when its batch read no input (it only fired waits):
    /// the group fences a transaction's offsets by its generation, and that is
    /// what keeps a member that lost its partitions (a zombie woken after a
    /// long pause) from committing anything.
    pub(super) fn group_offsets(&self) -> Result<TopicPartitionList, RuntimeError> {
        let mut tpl = TopicPartitionList::new();
        for &id in self.parts.keys() {
            for input in &self.cfg.inputs {
                if let Some(next) = self.position(id, &input.topic)? {
                    tpl.add_partition_offset(&input.topic, id as i32, Offset::Offset(next))
                        .map_err(kafka("input offsets for the transaction"))?;
                }
            }
        }
        Ok(tpl)
    }

    /// Moves an assigned partition's fetch position (never past unfolded
    /// input: failing that is an error). A partition revoked meanwhile needs
    /// nothing.
    pub(super) fn seek(&self, topic: &str, partition: i32, to: Offset) -> Result<(), RuntimeError> {
        let mut tries = 0;
        loop {
            match self
                .consumer
                .seek(topic, partition, to, Duration::from_secs(10))
            {
                Ok(()) => return Ok(()),
                Err(e) => {
                    let assigned = self.consumer.assignment().is_ok_and(|a| {
                        a.elements_for_topic(topic)
                            .iter()
                            .any(|e| e.partition() == partition)
                    });
                    if !assigned {
                        return Ok(());
                    }
                    tries += 1;
                    if tries >= 20 {
                        return Err(RuntimeError::Kafka {
                            what: format!("seek {topic}[{partition}] back to the stored offset"),
                            source: e,
                        });
                    }
                    // Just assigned: its fetcher may not be running yet.
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        }
    }

    /// Forgets everything since the last write: every partition's state from
    /// the store, the input read again from the stored offsets.
    pub(super) fn rollback(&mut self) -> Result<(), RuntimeError> {
        self.paused = None;
        // Read and settled again by the batches to come.
        self.batch_settled = 0;
        self.out.clear();
        self.tally.clear();
        let ids: Vec<u32> = self.parts.keys().copied().collect();
        for id in ids {
            self.forget_buffered(id);
            let part = self.open_partition(id)?;
            self.parts.insert(id, part);
            for input in &self.cfg.inputs {
                let stored = self.store.offset(id, &input.topic)?;
                self.positions.forget(&input.topic, id as i32);
                let to = stored.map_or(Offset::Beginning, Offset::Offset);
                self.seek(&input.topic, id as i32, to)?;
            }
        }
        Ok(())
    }
}
