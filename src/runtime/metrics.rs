//! What `run` records for the admin server's `/metrics` (README, "Metrics"):
//! every name in one place. Recorded into the run's own Prometheus recorder
//! (installed for the loop's thread only, so two runs in one process keep
//! apart). Counts of what a batch made are recorded when the batch is
//! committed, so an aborted transaction is never counted twice.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering;
use std::time::Duration;

use metrics::{Unit, counter, describe_counter, describe_gauge, describe_histogram, gauge};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusRecorder};
use metrics_util::MetricKindMask;
use rdkafka::consumer::Consumer;

use super::stats::RunStats;
use crate::domain::definition::ConvIdx;
use crate::domain::{Definitions, Transition};

pub(super) const TRANSITIONS: &str = "winback_transitions_total";
pub(super) const DEAD_LETTERS: &str = "winback_dead_letters_total";
pub(super) const LATE_EVENTS: &str = "winback_late_events_total";
pub(super) const INPUT_RECORDS: &str = "winback_input_records_total";
pub(super) const BATCHES: &str = "winback_batches_total";
pub(super) const ABORTED: &str = "winback_transactions_aborted_total";
pub(super) const REDELIVERED: &str = "winback_redelivered_records_total";
pub(super) const MISROUTED: &str = "winback_misrouted_records_total";
pub(super) const REVOCATIONS: &str = "winback_revocations_total";
pub(super) const RESTORED: &str = "winback_restored_records_total";
pub(super) const CONSUMER_LAG: &str = "winback_consumer_lag_records";
pub(super) const CLOCK: &str = "winback_partition_clock_seconds";
pub(super) const CLOCK_BEHIND: &str = "winback_partition_clock_behind_wall_seconds";
pub(super) const RESTORE_REMAINING: &str = "winback_restore_remaining_records";
pub(super) const BATCH_SECONDS: &str = "winback_batch_duration_seconds";
pub(super) const COMMIT_SECONDS: &str = "winback_commit_duration_seconds";
pub(super) const KAFKA_BROKER_UP: &str = "winback_kafka_broker_up";
pub(super) const KAFKA_RTT: &str = "winback_kafka_broker_rtt_seconds";
pub(super) const KAFKA_ERRORS: &str = "winback_kafka_broker_errors_total";
pub(super) const KAFKA_QUEUED: &str = "winback_kafka_producer_queue_messages";
pub(super) const KAFKA_FETCH_QUEUE: &str = "winback_kafka_fetch_queue_messages";

/// The run's recorder: histograms with buckets from 1 ms to 1 min; a
/// partition's gauges disappear `gauge_idle` after the partition left.
pub(super) fn recorder(gauge_idle: crate::domain::Duration) -> PrometheusRecorder {
    const BUCKETS: [f64; 12] = [
        0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 60.0,
    ];
    let builder = PrometheusBuilder::new().idle_timeout(
        MetricKindMask::GAUGE,
        Some(Duration::from_millis(gauge_idle.0.max(0) as u64)),
    );
    match builder.set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &BUCKETS) {
        Ok(b) => b.build_recorder(),
        // Only an empty bucket list is refused.
        Err(e) => unreachable!("fixed buckets refused: {e}"),
    }
}

/// Descriptions, for the `# HELP` lines (call under the run's recorder).
pub(super) fn describe() {
    describe_gauge!(
        KAFKA_BROKER_UP,
        "librdkafka: whether the client's connection to the broker is up (1) or not (0)"
    );
    describe_gauge!(
        KAFKA_RTT,
        Unit::Seconds,
        "librdkafka: the broker's request round-trip time over the last statistics interval (stat: avg, p99)"
    );
    describe_counter!(
        KAFKA_ERRORS,
        "librdkafka: the client's errors with the broker (kind: tx, rx, timeout)"
    );
    describe_gauge!(
        KAFKA_QUEUED,
        "librdkafka: output records queued in the producer, not yet acknowledged"
    );
    describe_gauge!(
        KAFKA_FETCH_QUEUE,
        "librdkafka: input records fetched and waiting for the loop, per topic and partition"
    );
    describe_counter!(
        TRANSITIONS,
        "Transitions committed, by conversation and type (send, suppressed, entered, ...)"
    );
    describe_counter!(
        DEAD_LETTERS,
        "Input records sent to the dead-letter topic, by reason (malformed, unroutable, wrong_key, future_timestamp, refused)"
    );
    describe_counter!(
        LATE_EVENTS,
        "Events folded with an occurred_at before their partition's clock, by partition"
    );
    describe_counter!(
        INPUT_RECORDS,
        "Input records folded or dead-lettered and committed"
    );
    describe_counter!(BATCHES, "Batches committed");
    describe_counter!(
        ABORTED,
        "Transactions aborted (their batches processed again)"
    );
    describe_counter!(
        REDELIVERED,
        "Output records produced again after a failed delivery"
    );
    describe_counter!(
        MISROUTED,
        "Input records on another partition than their key hashes to"
    );
    describe_counter!(REVOCATIONS, "Partition revocations handled");
    describe_counter!(RESTORED, "Changelog records read by restores");
    describe_gauge!(
        CONSUMER_LAG,
        "Input records not yet folded, by topic and partition (the end librdkafka last fetched less the position)"
    );
    describe_gauge!(
        CLOCK,
        Unit::Seconds,
        "The partition's event-time clock, Unix seconds"
    );
    describe_gauge!(
        CLOCK_BEHIND,
        Unit::Seconds,
        "The wall clock less the partition's clock"
    );
    describe_gauge!(
        RESTORE_REMAINING,
        "Changelog records a running restore has still to read, by partition"
    );
    describe_histogram!(
        BATCH_SECONDS,
        Unit::Seconds,
        "A batch from its first poll to its commit"
    );
    describe_histogram!(
        COMMIT_SECONDS,
        Unit::Seconds,
        "A batch's commit: acknowledgements or the transaction, and the RocksDB write"
    );
}

/// The running batch's counts, recorded when it commits.
#[derive(Debug, Default)]
pub(super) struct Tally {
    transitions: HashMap<(ConvIdx, &'static str), u64>,
    dead_letters: HashMap<&'static str, u64>,
    late: BTreeMap<u32, u64>,
}

impl Tally {
    pub(super) fn transition(&mut self, t: &Transition) {
        *self
            .transitions
            .entry((t.conversation, t.kind.type_name()))
            .or_default() += 1;
    }

    pub(super) fn dead_letter(&mut self, kind: &'static str) {
        *self.dead_letters.entry(kind).or_default() += 1;
    }

    pub(super) fn late(&mut self, partition: u32, n: u64) {
        if n > 0 {
            *self.late.entry(partition).or_default() += n;
        }
    }

    /// The batch committed: its counts become the metrics'.
    pub(super) fn record(&mut self, defs: &Definitions) {
        for ((conv, kind), n) in self.transitions.drain() {
            let name = defs.conversations[conv as usize].name.to_string();
            counter!(TRANSITIONS, "conversation" => name, "type" => kind).increment(n);
        }
        for (kind, n) in self.dead_letters.drain() {
            counter!(DEAD_LETTERS, "reason" => kind).increment(n);
        }
        for (p, n) in std::mem::take(&mut self.late) {
            counter!(LATE_EVENTS, "partition" => p.to_string()).increment(n);
        }
    }

    /// The batch was undone: it is done again and counted then.
    pub(super) fn clear(&mut self) {
        self.transitions.clear();
        self.dead_letters.clear();
        self.late.clear();
    }
}

/// The run's counters, as [`RunStats`] holds them.
pub(super) fn record_stats(stats: &RunStats) {
    let load = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
    counter!(INPUT_RECORDS).absolute(load(&stats.events_written));
    counter!(BATCHES).absolute(load(&stats.batches));
    counter!(ABORTED).absolute(load(&stats.aborted));
    counter!(REDELIVERED).absolute(load(&stats.redelivered));
    counter!(MISROUTED).absolute(load(&stats.misrouted));
    counter!(REVOCATIONS).absolute(load(&stats.revocations));
    counter!(RESTORED).absolute(load(&stats.restored_records));
}

/// The parts of a librdkafka statistics report that help an operator:
/// per broker whether it is up, its round-trip times and its errors; the
/// producer's queue; the consumer's fetch queue per partition. `client` is
/// `consumer` or `producer`.
pub(super) fn kafka(client: &'static str, s: &rdkafka::statistics::Statistics) {
    for b in s.brokers.values() {
        // Bootstrap and logical (coordinator) entries repeat real brokers.
        if b.nodeid < 0 || !matches!(b.source.as_str(), "learned" | "configured") {
            continue;
        }
        let broker = b.nodeid.to_string();
        gauge!(KAFKA_BROKER_UP, "client" => client, "broker" => broker.clone())
            .set(if b.state == "UP" { 1.0 } else { 0.0 });
        if let Some(rtt) = &b.rtt {
            for (stat, us) in [("avg", rtt.avg), ("p99", rtt.p99)] {
                gauge!(KAFKA_RTT, "client" => client, "broker" => broker.clone(), "stat" => stat)
                    .set(us as f64 / 1e6);
            }
        }
        for (kind, n) in [
            ("tx", b.txerrs),
            ("rx", b.rxerrs),
            ("timeout", b.req_timeouts),
        ] {
            counter!(KAFKA_ERRORS, "client" => client, "broker" => broker.clone(), "kind" => kind)
                .absolute(n);
        }
    }
    if client == "producer" {
        gauge!(KAFKA_QUEUED).set(s.msg_cnt as f64);
    }
    for (topic, t) in &s.topics {
        for p in t.partitions.values() {
            if p.partition >= 0 && p.desired {
                gauge!(KAFKA_FETCH_QUEUE, "topic" => topic.clone(), "partition" => p.partition.to_string())
                    .set(p.fetchq_cnt as f64);
            }
        }
    }
}

pub(super) fn partition_clock(partition: u32, clock_ms: i64, wall_ms: i64) {
    let p = partition.to_string();
    gauge!(CLOCK, "partition" => p.clone()).set(clock_ms as f64 / 1000.0);
    gauge!(CLOCK_BEHIND, "partition" => p).set(wall_ms.saturating_sub(clock_ms) as f64 / 1000.0);
}

pub(super) fn consumer_lag(topic: &str, partition: u32, lag: i64) {
    gauge!(CONSUMER_LAG, "topic" => topic.to_string(), "partition" => partition.to_string())
        .set(lag.max(0) as f64);
}

pub(super) fn restore_remaining(partition: u32, remaining: i64) {
    gauge!(RESTORE_REMAINING, "partition" => partition.to_string()).set(remaining.max(0) as f64);
}

impl super::Loop {
    /// At each batch's end: the batch's duration, the run's counters, and each
    /// partition held's clock and lag.
    pub(super) fn publish(&self, started: std::time::Instant) {
        metrics::histogram!(BATCH_SECONDS).record(started.elapsed().as_secs_f64());
        record_stats(&self.stats);
        if let Some(s) = self.consumer.context().kafka_stats.take() {
            kafka("consumer", &s);
        }
        if let Some(s) = self.sink.kafka_stats() {
            kafka("producer", &s);
        }
        let wall = self.clock.now();
        let fetched = self.consumer.position().ok();
        for (&id, part) in &self.parts {
            if let Some(c) = part.clock() {
                partition_clock(id, c.0, wall.0);
            }
            for (t, input) in self.cfg.inputs.iter().enumerate() {
                let Some(end) = super::idle::cached_end(&self.consumer, &input.topic, id as i32)
                else {
                    continue;
                };
                let folded = self.position(id, &input.topic).ok().flatten();
                // With nothing waiting in the merge, the consumer's own
                // position counts: it steps over transaction markers.
                let pos = if self.merge.len(id, t) > 0 {
                    folded
                } else {
                    folded.max(super::idle::fetched_offset(
                        fetched.as_ref(),
                        &input.topic,
                        id as i32,
                    ))
                };
                if let Some(pos) = pos {
                    consumer_lag(&input.topic, id, end - pos);
                }
            }
        }
    }
}
