//! Input: records taken from the consumer into each partition's event-time
//! merge, folded in merge order, dead-lettered when they cannot be; the
//! positions folded so far.

use std::sync::atomic::Ordering;
use std::time::Instant;

use rdkafka::consumer::Consumer;
use rdkafka::error::KafkaError;
use rdkafka::{Offset, TopicPartitionList};

use super::error::RuntimeError;
use super::idle::cached_end;
use super::merge::End;
use super::partition::{Fed, PartitionError};
use super::{Loop, MERGE_BUFFER, PausedEvent};
use crate::domain::Folded;
use crate::sink::OutRecord;
use crate::source;

/// The dead letter of the input record at `at` (topic, partition, offset):
/// its coordinates and `reason` as headers, the original bytes as key and
/// value, bounded so that the dead letter itself always fits.
pub(super) fn dead_letter_record(
    dead_letters: &str,
    key: Vec<u8>,
    value: Vec<u8>,
    at: (&str, i32, i64),
    rejected: &source::Rejected,
) -> OutRecord {
    let (topic, partition, offset) = at;
    let (key, value, truncated) = source::dead_letter_body(key, value);
    let mut reason = rejected.reason.as_bytes().to_vec();
    reason.truncate(4096);
    let mut headers = vec![
        (source::DLQ_TOPIC.into(), topic.as_bytes().to_vec()),
        (
            source::DLQ_PARTITION.into(),
            partition.to_string().into_bytes(),
        ),
        (source::DLQ_OFFSET.into(), offset.to_string().into_bytes()),
        (source::DLQ_REASON.into(), reason),
        (source::DLQ_KIND.into(), rejected.kind.as_bytes().to_vec()),
    ];
    if let Some(t) = truncated {
        headers.push((source::DLQ_TRUNCATED.into(), t.into_bytes()));
    }
    OutRecord {
        topic: dead_letters.to_string(),
        key,
        value: Some(value),
        headers,
        partition: None,
    }
}

impl Loop {
    /// Folds what partition `id`'s merge lets go now, in event-time order
    /// across its input topics. False when the batch's timer budget ran out.
    pub(super) fn drain(
        &mut self,
        id: u32,
        budget: &mut usize,
        events: &mut usize,
    ) -> Result<bool, RuntimeError> {
        let wait = std::time::Duration::from_millis(self.cfg.time.merge_wait.0.max(0) as u64);
        // The consumer's positions, read once and only if a topic's end is in doubt.
        let mut fetched: Option<Option<TopicPartitionList>> = None;
        while *events < self.cfg.max_batch_events {
            let (consumer, positions, store, inputs) = (
                &self.consumer,
                &self.positions,
                &self.store,
                &self.cfg.inputs,
            );
            let next = self.merge.next(id, Instant::now(), wait, |t, buffered| {
                let topic = &inputs[t].topic;
                let Some(high) = cached_end(consumer, topic, id as i32) else {
                    // No fetch answered yet: do not wait without limit.
                    return End::Reached;
                };
                let folded = positions.or_stored(store, topic, id as i32).ok().flatten();
                let mut at = buffered.max(folded).unwrap_or(0);
                if at < high {
                    // Past commit markers of transactional producers upstream.
                    let tpl = fetched.get_or_insert_with(|| consumer.position().ok());
                    if let Some(Offset::Offset(o)) = tpl
                        .as_ref()
                        .and_then(|f| f.find_partition(topic, id as i32))
                        .map(|e| e.offset())
                    {
                        at = at.max(o);
                    }
                }
                if at >= high {
                    End::Reached
                } else {
                    End::Behind
                }
            });
            let Some(t) = next else { break };
            let Some(b) = self.merge.pop(id, t) else {
                break;
            };
            *events += 1;
            self.stats.events.fetch_add(1, Ordering::Relaxed);
            let topic = self.cfg.inputs[t].topic.clone();
            let partition = id as i32;
            match b.record {
                Ok(event) => {
                    let p = PausedEvent {
                        topic,
                        partition,
                        offset: b.offset,
                        event,
                    };
                    if !self.fold(p, budget)? {
                        return Ok(false);
                    }
                }
                Err((rejected, key, value)) => {
                    let rec = dead_letter_record(
                        &self.cfg.outputs.dead_letters,
                        key,
                        value,
                        (&topic, partition, b.offset),
                        &rejected,
                    );
                    self.dead_letter(rec, &topic, partition, b.offset, &rejected);
                }
            }
        }
        for (input, p) in self.merge_paused.clone() {
            if p == id && self.merge.len(id, input) <= MERGE_BUFFER / 2 {
                self.merge_paused.remove(&(input, p));
                self.pause_input(input, id, false);
            }
        }
        Ok(true)
    }

    /// [`Loop::drain`] for every partition with records in the merge.
    pub(super) fn drain_all(
        &mut self,
        budget: &mut usize,
        events: &mut usize,
    ) -> Result<bool, RuntimeError> {
        for id in self.merge.holding() {
            if !self.drain(id, budget, events)? {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Pauses or resumes fetching one input topic partition.
    pub(super) fn pause_input(&self, input: usize, id: u32, pause: bool) {
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition(&self.cfg.inputs[input].topic, id as i32);
        let r = if pause {
            self.consumer.pause(&tpl)
        } else {
            self.consumer.resume(&tpl)
        };
        if let Err(e) = r {
            tracing::debug!(error = %e, pause, "merge buffer pause/resume");
        }
    }

    /// Forgets what partition `id` buffered (it is read again from its
    /// position) and lifts its merge pauses.
    pub(super) fn forget_buffered(&mut self, id: u32) {
        self.merge.forget(id);
        for (input, p) in self.merge_paused.clone() {
            if p == id {
                self.merge_paused.remove(&(input, p));
                self.pause_input(input, id, false);
            }
        }
    }

    /// Finds the held input partitions whose position left the log and deals
    /// with them as `processing.offset_out_of_range` says. The error does not
    /// name its partition, and the one it stopped fetches nothing until it is
    /// moved: every held partition is sought to where it goes on (the others
    /// to where they are).
    pub(super) fn reset_out_of_range(&mut self, error: &KafkaError) -> Result<(), RuntimeError> {
        tracing::warn!(error = %error, "an input position is outside its log");
        let ids: Vec<u32> = self.parts.keys().copied().collect();
        for id in ids {
            self.forget_buffered(id);
            for input in self.cfg.inputs.clone() {
                let Some(next) = self.position(id, &input.topic)? else {
                    continue;
                };
                let ctx = self.consumer.context();
                let to = ctx.start_in_log(&self.consumer, &input.topic, id as i32, next)?;
                self.seek(&input.topic, id as i32, Offset::Offset(to))?;
            }
        }
        Ok(())
    }

    /// The next offset to fold of `topic`'s partition `id`: in memory if this
    /// run moved it, else as stored; None if it was never read.
    pub(super) fn position(&self, id: u32, topic: &str) -> Result<Option<i64>, RuntimeError> {
        Ok(self.positions.or_stored(&self.store, topic, id as i32)?)
    }

    /// Counts a record whose key hashes to another partition than the one it
    /// is on: its contact's events from a producer that partitions by Kafka's
    /// rule land elsewhere, and the two halves of its state never meet.
    pub(super) fn note_partition(&self, contact: &str, partition: i32) {
        let want = source::partition_for_key(contact.as_bytes(), self.partitions);
        if want as i32 != partition {
            let n = self.stats.misrouted.fetch_add(1, Ordering::Relaxed);
            // The first, then every 10,000th: one producer does it to every record.
            if n.is_multiple_of(10_000) {
                tracing::warn!(
                    contact,
                    partition,
                    expected = want,
                    misrouted = n + 1,
                    "an input record is not on the partition its key hashes to (murmur2, as Kafka's Java producer): a producer partitions differently, so a contact's events may be split"
                );
            }
        }
    }

    /// Folds one event; false when it had to pause for the timer budget.
    pub(super) fn fold(
        &mut self,
        p: PausedEvent,
        budget: &mut usize,
    ) -> Result<bool, RuntimeError> {
        let Some(part) = self.parts.get_mut(&(p.partition as u32)) else {
            return Ok(true);
        };
        self.out.clear();
        let late_before = part.late_events();
        let fed = part.feed(&self.store, &p.event, &mut self.out, budget);
        let late = part.late_events() - late_before;
        for t in self.out.drain(..) {
            self.sink.send_transition(&self.defs, &self.cfg, &t);
            part.note(&t, self.sink.last_transition());
            self.stats.transitions.fetch_add(1, Ordering::Relaxed);
            self.tally.transition(&t);
        }
        if let Ok(Fed::Folded(Folded::Forgotten)) = fed {
            part.forget_history(&p.event.contact_id);
        }
        match fed {
            Ok(Fed::Folded(_)) => {
                self.stats.late_events.fetch_add(late, Ordering::Relaxed);
                self.tally.late(p.partition as u32, late);
                self.advance_position(&p.topic, p.partition, p.offset + 1);
                Ok(true)
            }
            Ok(Fed::Paused) => {
                self.paused = Some(p);
                Ok(false)
            }
            Err(PartitionError::Event(e)) => {
                let rejected = source::Rejected::new(source::REJECT_REFUSED, e.to_string());
                let value = crate::wire::json::encode_event(&p.event).into_bytes();
                let rec = dead_letter_record(
                    &self.cfg.outputs.dead_letters,
                    p.event.contact_id.as_bytes().to_vec(),
                    value,
                    (&p.topic, p.partition, p.offset),
                    &rejected,
                );
                self.dead_letter(rec, &p.topic, p.partition, p.offset, &rejected);
                Ok(true)
            }
            Err(PartitionError::Store(e)) => Err(e.into()),
        }
    }

    pub(super) fn dead_letter(
        &mut self,
        rec: OutRecord,
        topic: &str,
        partition: i32,
        offset: i64,
        rejected: &source::Rejected,
    ) {
        tracing::warn!(
            topic,
            partition,
            offset,
            kind = rejected.kind,
            reason = rejected.reason,
            "input record sent to the dead-letter topic"
        );
        self.sink.send(rec);
        self.stats.dead_letters.fetch_add(1, Ordering::Relaxed);
        self.tally.dead_letter(rejected.kind);
        self.advance_position(topic, partition, offset + 1);
    }

    /// Settles an input record (folded or dead-lettered) in the running batch.
    pub(super) fn advance_position(&mut self, topic: &str, partition: i32, next: i64) {
        self.batch_settled += 1;
        if let Some(part) = self.parts.get_mut(&(partition as u32)) {
            part.note_offset(topic, next);
        }
        self.positions.set(topic, partition, next);
    }
}
