//! Rebalances: the consumer's callback (`Ctx`) restores a newly assigned
//! partition from the changelog and sets its start offsets; the loop then
//! opens or lets go of the partitions between polls, committing what it
//! folded of a revoked one first.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientContext, Offset, TopicPartitionList};

use super::error::{RuntimeError, kafka};
use super::partition::Partition;
use super::positions::Positions;
use super::stats::RunStats;
use super::{Loop, checks, restore};
use crate::admin::Health;
use crate::config::engine::{EngineConfig, Guarantee, OffsetOutOfRange};
use crate::domain::Definitions;
use crate::source;
use crate::store::rocks::{Store, StoreError};

/// How long a restore may take to catch up with the group's committed input
/// offsets, and the pause between its attempts.
const RESTORE_CATCH_UP: Duration = Duration::from_secs(30);
const RESTORE_RETRY: Duration = Duration::from_millis(200);

/// What the consumer's rebalance callback saw; handled by the loop between polls.
#[derive(Debug)]
pub(super) enum Rebalanced {
    Assigned(Vec<(String, i32)>),
    /// `held`: the partitions are still assigned (the loop commits, then
    /// unassigns); otherwise they are gone already (lost, or at shutdown).
    Revoked {
        parts: Vec<(String, i32)>,
        held: bool,
    },
    Failed(RuntimeError),
}

/// What restoring from the changelog needs (exactly-once mode).
pub(super) struct Restorer {
    pub(super) cfg: EngineConfig,
    pub(super) defs: Arc<Definitions>,
    pub(super) bootstrap: String,
    pub(super) stop: Arc<AtomicBool>,
    pub(super) stats: Arc<RunStats>,
}

pub(super) struct Ctx {
    pub(super) store: Arc<Store>,
    /// The next offset to read per (topic, partition), as processed in memory:
    /// ahead of the store during a batch.
    pub(super) positions: Positions,
    pub(super) events: Mutex<Vec<Rebalanced>>,
    pub(super) restorer: Option<Restorer>,
    pub(super) health: Arc<Health>,
    pub(super) offset_out_of_range: OffsetOutOfRange,
    /// While the loop runs, a revocation keeps the partitions assigned until
    /// the loop has committed what it folded of them.
    pub(super) defer_unassign: AtomicBool,
    /// A revocation that kept its partitions assigned waits for the loop's
    /// unassignment (the group's rebalance waits for it too).
    pub(super) unassign_due: AtomicBool,
    /// librdkafka's latest statistics report (admin server on).
    pub(super) kafka_stats: crate::source::stats::Latest,
}

impl Ctx {
    /// Brings the store's state of a newly assigned partition up to the
    /// changelog (exactly-once mode), before its start offsets are read, and
    /// at least up to the input offsets the group committed: each transaction
    /// commits them together with its changelog records, so a restore that
    /// ends before them has missed a committed transaction (one still being
    /// completed when the restore read the changelog's end) and would
    /// process its input, and send its transitions, a second time. It reads
    /// again until it has caught up, and fails rather than go on behind.
    fn restore(&self, partition: u32) -> Result<(), RuntimeError> {
        let Some(r) = &self.restorer else {
            return Ok(());
        };
        self.health.restore_started();
        let done = self.restore_with(r, partition);
        self.health.restore_ended();
        done
    }

    fn restore_with(&self, r: &Restorer, partition: u32) -> Result<(), RuntimeError> {
        let deadline = Instant::now() + RESTORE_CATCH_UP;
        loop {
            let done = restore::restore_partition(
                &self.store,
                &r.defs,
                &r.cfg,
                &r.bootstrap,
                partition,
                &r.stop,
                &mut |records, at, end| {
                    tracing::info!(partition, records, at, end, "restoring from the changelog");
                    super::metrics::restore_remaining(partition, end - at);
                },
            );
            super::metrics::restore_remaining(partition, 0);
            let done = done?;
            r.stats
                .restored_records
                .fetch_add(done.records, Ordering::Relaxed);
            tracing::info!(
                partition,
                records = done.records,
                from = ?done.from,
                to = done.to,
                ms = done.elapsed.as_millis() as u64,
                "restored from the changelog"
            );
            let behind = self.behind_committed(r, partition)?;
            if behind.is_empty() {
                return Ok(());
            }
            if Instant::now() >= deadline || r.stop.load(Ordering::Acquire) {
                return Err(RuntimeError::Restore {
                    partition,
                    reason: format!(
                        "the changelog stays behind the input offsets the group committed with it \
                         ({behind}) after {} s: a committed transaction is missing from it, or the \
                         group's offsets were committed by another run (at-least-once mode, \
                         another state): use a new group id; or the broker lists every aborted \
                         transaction in each fetch and the restore read from the stored position \
                         (restore_from = {:?}): set broker.restore_from = \"start\"",
                        RESTORE_CATCH_UP.as_secs(),
                        r.cfg.restore_from.as_str()
                    ),
                });
            }
            r.stats.restore_retries.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                partition,
                %behind,
                "the restored state is behind the group's committed input offsets; reading the changelog again"
            );
            std::thread::sleep(RESTORE_RETRY);
        }
    }

    /// The inputs of `partition` whose stored offset is behind the group's
    /// committed one, as "topic: stored < committed" (empty: none).
    fn behind_committed(&self, r: &Restorer, partition: u32) -> Result<String, RuntimeError> {
        let mut tpl = TopicPartitionList::new();
        for input in &r.cfg.inputs {
            tpl.add_partition(&input.topic, partition as i32);
        }
        // Asked through a client of its own that never joins the group: the
        // group's consumer is in the middle of its rebalance here.
        let mut c = source::client_config(&r.cfg, &r.bootstrap);
        c.set("group.id", &r.cfg.group_id);
        c.set("enable.auto.commit", "false");
        c.set("isolation.level", "read_committed");
        let asker: BaseConsumer = c
            .create()
            .map_err(kafka("create the committed-offsets client"))?;
        let committed = asker
            .committed_offsets(tpl, Duration::from_secs(10))
            .map_err(kafka(format!(
                "committed input offsets of partition {partition}"
            )))?;
        let mut behind = Vec::new();
        for e in committed.elements() {
            let Offset::Offset(c) = e.offset() else {
                continue;
            };
            let stored = self.store.offset(partition, e.topic())?;
            if stored.is_none_or(|s| s < c) {
                behind.push(format!(
                    "{}: {} < {c}",
                    e.topic(),
                    stored.map_or("none".to_string(), |s| s.to_string())
                ));
            }
        }
        Ok(behind.join(", "))
    }
}

impl Ctx {
    /// Where partition `p` of `topic` starts, stored at `next`: there if the
    /// log still holds it, else as `processing.offset_out_of_range` says.
    pub(super) fn start_in_log(
        &self,
        consumer: &BaseConsumer<Self>,
        topic: &str,
        p: i32,
        next: i64,
    ) -> Result<i64, RuntimeError> {
        let Some((low, high)) = checks::out_of_range(consumer, topic, p, next)? else {
            return Ok(next);
        };
        let to = match self.offset_out_of_range {
            OffsetOutOfRange::Stop => {
                return Err(RuntimeError::OffsetOutOfRange {
                    topic: topic.to_string(),
                    partition: p,
                    next,
                    low,
                    high,
                });
            }
            OffsetOutOfRange::Earliest => low,
            OffsetOutOfRange::Latest => high,
        };
        tracing::warn!(
            topic,
            partition = p,
            stored = next,
            low,
            high,
            to,
            policy = self.offset_out_of_range.as_str(),
            "the stored input position is outside the log; going on as processing.offset_out_of_range says"
        );
        self.positions.set(topic, p, to);
        Ok(to)
    }
}

impl ClientContext for Ctx {
    fn stats(&self, statistics: rdkafka::statistics::Statistics) {
        self.kafka_stats.keep(statistics);
    }
}

impl ConsumerContext for Ctx {
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        let parts: Vec<(String, i32)> = tpl
            .elements()
            .iter()
            .map(|e| (e.topic().to_string(), e.partition()))
            .collect();
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                // Start where the state is: in-memory progress (a revocation
                // not yet handled by the loop), else the store (restored from
                // the changelog first in exactly-once mode), else the start.
                let held = self.health.partitions();
                let ids: BTreeSet<u32> = parts.iter().map(|(_, p)| *p as u32).collect();
                for id in ids.difference(&held) {
                    if let Err(e) = self.restore(*id) {
                        tracing::error!(error = %e, partition = id, "restore failed");
                        if let Ok(mut ev) = self.events.lock() {
                            ev.push(Rebalanced::Failed(e));
                        }
                        return;
                    }
                }
                let mut starts = Vec::with_capacity(parts.len());
                for (topic, p) in &parts {
                    let in_memory = self.positions.get(topic, *p);
                    let next = match in_memory {
                        Some(o) => Some(o),
                        None => match self.store.offset(*p as u32, topic) {
                            Ok(None) => None,
                            // A stored position may have left the log while
                            // nobody read it: never let the consumer's reset
                            // policy move it silently.
                            Ok(Some(o)) => match self.start_in_log(consumer, topic, *p, o) {
                                Ok(o) => Some(o),
                                Err(e) => {
                                    tracing::error!(error = %e, "cannot start a partition");
                                    if let Ok(mut ev) = self.events.lock() {
                                        ev.push(Rebalanced::Failed(e));
                                    }
                                    return;
                                }
                            },
                            Err(e) => {
                                tracing::error!(error = %e, "cannot read a stored offset");
                                None
                            }
                        },
                    };
                    let offset = next.map_or(Offset::Beginning, Offset::Offset);
                    starts.push((*p, next, in_memory.is_some()));
                    if let Err(e) = tpl.set_partition_offset(topic, *p, offset) {
                        tracing::error!(error = %e, topic, partition = p, "cannot set a start offset");
                    }
                }
                if let Err(e) = consumer.assign(tpl) {
                    tracing::error!(error = %e, "assign failed");
                }
                // A partition paused by the idle rule before a revocation
                // must not come back paused.
                if let Err(e) = consumer.resume(tpl) {
                    tracing::debug!(error = %e, "resume after assign");
                }
                // (partition, next offset or none: the beginning, whether
                // from memory rather than the store)
                tracing::info!(partitions = ?parts, ?starts, "assigned");
                if let Ok(mut ev) = self.events.lock() {
                    ev.push(Rebalanced::Assigned(parts));
                }
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                // An eager rebalance waits for this member's unassignment
                // before anyone gets the partitions: the loop commits the
                // batch under way first (as Kafka Streams commits in
                // onPartitionsRevoked), instead of aborting it, which would
                // repeat its work and leave an aborted transaction behind.
                // Lost partitions (this member was expired or fenced) may be
                // someone else's already: let go at once; the loop aborts.
                let lost = consumer.assignment_lost();
                let held = !lost && self.defer_unassign.load(Ordering::Acquire);
                if held {
                    self.unassign_due.store(true, Ordering::Release);
                } else if let Err(e) = consumer.unassign() {
                    tracing::error!(error = %e, "unassign failed");
                }
                tracing::info!(partitions = ?parts, lost, "revoked");
                if let Ok(mut ev) = self.events.lock() {
                    ev.push(Rebalanced::Revoked { parts, held });
                }
            }
            other => tracing::error!(error = ?other, "rebalance error"),
        }
    }
}

impl Loop {
    /// A partition's processing as the store has it.
    pub(super) fn open_partition(&self, id: u32) -> Result<Partition, StoreError> {
        Partition::open(
            &self.store,
            Arc::clone(&self.defs),
            id,
            self.partitions,
            self.settings,
        )
    }

    pub(super) fn handle_rebalances(&mut self) -> Result<(), RuntimeError> {
        let events: Vec<Rebalanced> = match self.consumer.context().events.lock() {
            Ok(mut e) => std::mem::take(&mut *e),
            Err(_) => Vec::new(),
        };
        if events.is_empty() {
            return Ok(());
        }
        let let_go = events
            .iter()
            .any(|e| matches!(e, Rebalanced::Revoked { held: false, .. }));
        let busy = self.sink.pending() > 0 || self.parts.values().any(|p| p.has_changes());
        if let_go && busy && self.cfg.guarantee == Guarantee::ExactlyOnce {
            // Partitions let go of before this commit (lost): a new owner
            // may already restore and process them, so a commit now could
            // duplicate its work. The batch is undone instead (nothing of it
            // is visible) and done again by whoever owns each partition next.
            self.sink.abort_transaction()?;
            self.stats.aborted.fetch_add(1, Ordering::Relaxed);
            self.rollback()?;
        } else {
            // Everything folded so far becomes durable before partitions
            // move: they are still this member's until it unassigns below.
            if busy
                && events
                    .iter()
                    .any(|e| matches!(e, Rebalanced::Revoked { held: true, .. }))
            {
                self.stats
                    .revocation_commits
                    .fetch_add(1, Ordering::Relaxed);
            }
            self.commit()?;
        }
        for ev in events {
            match ev {
                Rebalanced::Failed(e) => return Err(e),
                Rebalanced::Revoked { parts: tps, .. } => {
                    self.stats.revocations.fetch_add(1, Ordering::Relaxed);
                    for (topic, p) in tps {
                        self.parts.remove(&(p as u32));
                        self.merge.forget(p as u32);
                        self.merge_paused.retain(|(_, id)| *id != p as u32);
                        self.positions.forget(&topic, p);
                        if self.paused.as_ref().is_some_and(|e| e.partition == p) {
                            self.paused = None;
                        }
                    }
                }
                Rebalanced::Assigned(tps) => {
                    self.read_to_end = false;
                    let assigned: BTreeSet<u32> = tps.iter().map(|(_, p)| *p as u32).collect();
                    if self.cfg.guarantee == Guarantee::AtLeastOnce
                        && (assigned.len() as u32) < self.partitions
                    {
                        return Err(RuntimeError::AtLeastOnceShared {
                            assigned: assigned.len(),
                            partitions: self.partitions,
                            group: self.cfg.group_id.clone(),
                        });
                    }
                    for &id in &assigned {
                        if !self.parts.contains_key(&id) {
                            let part = self.open_partition(id)?;
                            self.parts.insert(id, part);
                        }
                    }
                    if self.cfg.guarantee == Guarantee::ExactlyOnce {
                        // Partitions this process no longer owns: their state
                        // lives on in the changelog; a later assignment
                        // restores it. (Kept until now, not dropped at the
                        // revocation: an eager rebalance revokes everything and
                        // mostly gives it back, which then restores nothing.)
                        for id in self.store.stored_partitions()? {
                            if !assigned.contains(&id) && !self.parts.contains_key(&id) {
                                tracing::info!(
                                    partition = id,
                                    "dropping the state of a partition owned elsewhere"
                                );
                                self.store.drop_partition(id)?;
                            }
                        }
                    }
                }
            }
        }
        self.health.assignment_changed(self.parts.keys().copied());
        self.unassign_if_due()
    }

    /// Answers a revocation that kept its partitions assigned.
    pub(super) fn unassign_if_due(&self) -> Result<(), RuntimeError> {
        if self
            .consumer
            .context()
            .unassign_due
            .swap(false, Ordering::AcqRel)
        {
            self.consumer
                .unassign()
                .map_err(kafka("unassign after a revocation"))?;
        }
        Ok(())
    }
}
