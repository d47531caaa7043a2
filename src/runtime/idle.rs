//! The idle wall clock: when a partition is read to its end and quiet, its
//! clock follows the wall clock minus the allowed lateness; fetching pauses
//! while every partition is idle (embedded broker).

use std::collections::BTreeSet;
use std::sync::atomic::Ordering;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{Offset, TopicPartitionList};

use super::Loop;
use super::error::RuntimeError;
use super::rebalance::Ctx;
use crate::domain::Timestamp;

/// The end of a topic partition as librdkafka last heard it from a fetch
/// (the last stable offset for a `read_committed` consumer); None before
/// any fetch answered. No request: the merge asks for every record.
pub(super) fn cached_end(consumer: &BaseConsumer<Ctx>, topic: &str, partition: i32) -> Option<i64> {
    let name = std::ffi::CString::new(topic).ok()?;
    let (mut low, mut high) = (-1i64, -1i64);
    // SAFETY: the handle is the live consumer's; librdkafka only reads the
    // NUL-terminated name and writes the two integers, none kept.
    let err = unsafe {
        rdkafka::bindings::rd_kafka_get_watermark_offsets(
            consumer.client().native_ptr(),
            name.as_ptr(),
            partition,
            &mut low,
            &mut high,
        )
    };
    (err == RDKafkaRespErr::RD_KAFKA_RESP_ERR_NO_ERROR && high >= 0).then_some(high)
}

/// The consumer's own position in a topic partition (from
/// `Consumer::position`), if it has one: past the transaction markers of
/// transactional producers upstream, which no folded offset ever passes.
pub(super) fn fetched_offset(
    fetched: Option<&TopicPartitionList>,
    topic: &str,
    partition: i32,
) -> Option<i64> {
    match fetched?.find_partition(topic, partition)?.offset() {
        Offset::Offset(o) => Some(o),
        _ => None,
    }
}

impl Loop {
    /// Pauses or resumes fetching of every assigned partition.
    pub(super) fn set_fetching(&self, on: bool) {
        let Ok(assigned) = self.consumer.assignment() else {
            return;
        };
        if assigned.count() == 0 {
            return;
        }
        let r = if on {
            self.consumer.resume(&assigned)
        } else {
            self.consumer.pause(&assigned)
        };
        if let Err(e) = r {
            tracing::debug!(error = %e, on, "pause/resume");
        }
    }

    /// Moves the clock of every partition that is read to its end and had
    /// no input for the quiet period to the wall clock minus the allowed
    /// lateness (never back). Whether every partition held had no input in
    /// this batch and is read to its end.
    pub(super) fn advance_idle(
        &mut self,
        busy: &BTreeSet<u32>,
        budget: &mut usize,
    ) -> Result<bool, RuntimeError> {
        let now = self.clock.now();
        let rules = self.cfg.time;
        for id in busy {
            self.quiet_since.insert(*id, now);
        }
        self.quiet_since.retain(|id, _| self.parts.contains_key(id));
        let ids: Vec<u32> = self
            .parts
            .keys()
            .copied()
            .filter(|p| !busy.contains(p))
            .collect();
        let mut all = busy.is_empty();
        for id in self.merge.holding() {
            // Input waiting in the merge: not quiet.
            self.quiet_since.insert(id, now);
            all = false;
        }
        // One local call for every partition's fetch position.
        let fetched = self.consumer.position().ok();
        // The wall clock is an input like any other: it stays inside the
        // instants events may carry.
        let target = Timestamp(
            now.saturating_sub(rules.allowed_lateness)
                .0
                .clamp(Timestamp::MIN_ACCEPTED.0, Timestamp::MAX_ACCEPTED.0),
        );
        for id in ids {
            // Assigned just now: the quiet period starts here, so that a
            // restart in the middle of a burst does not take the burst's
            // pause for quiet.
            let since = *self.quiet_since.entry(id).or_insert(now);
            if self.merge.holds(id) || !self.caught_up(id, fetched.as_ref())? {
                all = false;
                continue;
            }
            if now.0.saturating_sub(since.0) < rules.quiet_period.0 {
                continue;
            }
            // A partition that never folded anything has no clock and nothing
            // to fire: left without one, its first events, however old, are
            // folded in event time as `simulate` folds them, not late.
            if self.parts[&id].clock().is_none_or(|c| c >= target) {
                continue;
            }
            let Some(part) = self.parts.get_mut(&id) else {
                continue;
            };
            self.out.clear();
            part.advance_to(&self.store, target, &mut self.out, budget)?;
            for t in self.out.drain(..) {
                self.sink.send_transition(&self.defs, &self.cfg, &t);
                part.note(&t, self.sink.last_transition());
                self.stats.transitions.fetch_add(1, Ordering::Relaxed);
                self.tally.transition(&t);
                self.stats.timers_fired_idle.fetch_add(1, Ordering::Relaxed);
            }
        }
        Ok(all)
    }

    /// Whether every input topic's partition `id` has been read to its end:
    /// the end a `read_committed` reader sees (the last stable offset), and
    /// the consumer's own position, which steps over the commit and abort
    /// markers of transactional producers upstream. The last folded offset
    /// alone stays one short of the end behind each marker, forever.
    pub(super) fn caught_up(
        &self,
        id: u32,
        fetched: Option<&TopicPartitionList>,
    ) -> Result<bool, RuntimeError> {
        for input in &self.cfg.inputs {
            let (low, high) = match self.consumer.fetch_watermarks(
                &input.topic,
                id as i32,
                Duration::from_secs(2),
            ) {
                Ok(w) => w,
                Err(e) => {
                    tracing::debug!(error = %e, topic = %input.topic, "watermarks unavailable");
                    return Ok(false);
                }
            };
            let folded = self.position(id, &input.topic)?.unwrap_or(low);
            let stepped = fetched_offset(fetched, &input.topic, id as i32);
            if folded.max(stepped.unwrap_or(folded)) < high {
                return Ok(false);
            }
        }
        Ok(true)
    }
}
