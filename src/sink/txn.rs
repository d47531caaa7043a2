//! Exactly-once delivery: a batch's records, its changelog records and its
//! input offsets commit as one Kafka transaction, or none of it does.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use rdkafka::TopicPartitionList;
use rdkafka::consumer::ConsumerGroupMetadata;
use rdkafka::error::KafkaError;
use rdkafka::producer::{Producer, ThreadedProducer};

use super::{CHANGELOG_BIT, Delivery, Sink, SinkError, Tracker, TxnOutcome, take};

/// How long one transactional call may block before it is retried.
pub(super) const TXN_TIMEOUT: Duration = Duration::from_secs(30);

/// The running transaction (exactly-once).
pub(super) enum Txn {
    /// None yet: the batch's first record begins one.
    Idle,
    Open,
    /// Beginning failed; reported (and the batch aborted) at its commit.
    BeginFailed(KafkaError),
}

impl Sink {
    /// Commits the running transaction with `offsets` as the group's consumed
    /// positions (fenced by the group generation in `group`). Reports the
    /// highest offset written to each partition of the changelog.
    /// An abortable failure aborts it; only a fatal one (this process was
    /// fenced by another with the same instance id) is an error.
    pub fn commit_transaction(
        &mut self,
        offsets: &TopicPartitionList,
        group: &ConsumerGroupMetadata,
    ) -> Result<TxnOutcome, SinkError> {
        match self.take_txn() {
            Txn::BeginFailed(e) => return self.abort(e, "begin"),
            Txn::Idle => {
                if offsets.count() == 0 {
                    return Ok(TxnOutcome::Committed(HashMap::new()));
                }
                if let Err(e) = self.producer.begin_transaction() {
                    return self.abort(e, "begin");
                }
            }
            Txn::Open => {}
        }
        self.set_txn(Txn::Open);
        // A record refused before it reached the transaction is not in it:
        // committing would drop it while the input offsets move past the
        // input that made it.
        if let Some(what) = self.refused() {
            self.abort_transaction()?;
            return Err(SinkError::Refused(what));
        }
        if offsets.count() > 0
            && let Err(e) =
                self.txn_call(|p| p.send_offsets_to_transaction(offsets, group, TXN_TIMEOUT))
        {
            return self.abort(e, "send offsets");
        }
        if let Err(e) = self.txn_call(|p| p.commit_transaction(TXN_TIMEOUT)) {
            // Refused by the broker: doing the batch again would fail again.
            if let Some(what) = self.refused() {
                self.abort_transaction()?;
                return Err(SinkError::Refused(what));
            }
            return self.abort(e, "commit");
        }
        self.set_txn(Txn::Idle);
        // Every delivery report is out once the commit returned; take them
        // as the producer's thread serves them.
        let mut ends = HashMap::new();
        let mut seen = 0;
        let deadline = Instant::now() + Duration::from_secs(10);
        while seen < self.sent && Instant::now() < deadline {
            for (o, partition, offset) in take(&self.producer.context().acked) {
                if self.index(o).is_none() {
                    continue;
                }
                seen += 1;
                if o & CHANGELOG_BIT != 0 {
                    let e = ends.entry(partition).or_insert(offset);
                    *e = (*e).max(offset);
                }
            }
            if seen < self.sent {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        take(&self.producer.context().failed);
        if seen < self.sent {
            // Committed, but some offsets are unknown: the restore position
            // stays where it was and the next restore reads a little more.
            tracing::warn!(
                missing = self.sent - seen,
                "delivery reports missing after a commit"
            );
            ends.clear();
        }
        self.clear_batch();
        Ok(TxnOutcome::Committed(ends))
    }

    /// Retries a transactional call while librdkafka calls its error retriable.
    fn txn_call(
        &self,
        f: impl Fn(&ThreadedProducer<Tracker>) -> Result<(), KafkaError>,
    ) -> Result<(), KafkaError> {
        let mut tries = 0;
        loop {
            match f(&self.producer) {
                Err(KafkaError::Transaction(e)) if e.is_retriable() && tries < 10 => {
                    tries += 1;
                    tracing::debug!(error = %e, "retriable transaction error; again");
                }
                other => return other,
            }
        }
    }

    /// Aborts the running transaction, if any: nothing of it becomes visible.
    pub fn abort_transaction(&mut self) -> Result<(), SinkError> {
        if let Txn::Open = self.take_txn()
            && let Err(source) = self.txn_call(|p| p.abort_transaction(TXN_TIMEOUT))
        {
            self.set_txn(Txn::Open);
            return Err(SinkError::Transaction {
                what: "abort",
                source,
            });
        }
        self.clear_batch();
        Ok(())
    }

    /// The running transaction's state, leaving `Idle` (also what an
    /// at-least-once sink answers: it has none).
    fn take_txn(&mut self) -> Txn {
        match &mut self.delivery {
            Delivery::ExactlyOnce(t) => std::mem::replace(t, Txn::Idle),
            Delivery::AtLeastOnce { .. } => Txn::Idle,
        }
    }

    fn set_txn(&mut self, state: Txn) {
        if let Delivery::ExactlyOnce(t) = &mut self.delivery {
            *t = state;
        }
    }

    fn abort(&mut self, e: KafkaError, what: &'static str) -> Result<TxnOutcome, SinkError> {
        let fatal = match &e {
            KafkaError::Transaction(t) => t.is_fatal(),
            _ => self.producer.client().fatal_error().is_some(),
        };
        if fatal {
            return Err(SinkError::Transaction { what, source: e });
        }
        self.abort_transaction()?;
        Ok(TxnOutcome::Aborted(format!("{what}: {e}")))
    }
}
