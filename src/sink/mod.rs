//! Kafka out: the transitions topic (every transition), the sends topic (send
//! transitions, for mail senders), the dead-letter topic and the changelog,
//! through one producer.
//!
//! Exactly-once mode: the producer is transactional. A batch's records, its
//! changelog records and its input offsets commit as one transaction
//! ([`Sink::commit_transaction`]); a failure aborts it and the runtime
//! processes the batch again from its stored state.
//!
//! At-least-once mode: an idempotent producer. Every record of the running
//! batch is kept until the broker acknowledged it; [`Sink::finish`] waits for
//! all of them, producing again whatever failed, so the runtime stores input
//! offsets only once everything they produced is acknowledged (consumers
//! de-duplicate by `transition_id`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prost::Message;
use rdkafka::ClientConfig;
use rdkafka::ClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};

use crate::config::engine::EngineConfig;
use crate::domain::{Definitions, Transition, TransitionKind};
use crate::wire;
use txn::{TXN_TIMEOUT, Txn};

mod txn;

/// Headers of transition records.
pub const HEADER_TYPE: &str = "winback.type";
pub const HEADER_CONVERSATION: &str = "winback.conversation";
pub const HEADER_TRANSITION_ID: &str = "winback.transition_id";

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("cannot create the Kafka producer: {0}")]
    Create(KafkaError),
    #[error("stopped with {0} record(s) not acknowledged by the broker")]
    Interrupted(usize),
    #[error(
        "the broker or librdkafka refuses a record for good, so its batch cannot be written (nothing of it was committed): {0}. Raise the producer's message.max.bytes ([kafka]) and the topic's max.message.bytes, or find the input that made the record this large"
    )]
    Refused(String),
    #[error("transactions: {what}: {source}")]
    Transaction {
        what: &'static str,
        source: KafkaError,
    },
}

/// How a transaction ended.
#[derive(Debug)]
pub enum TxnOutcome {
    /// Committed; the highest offset written per partition of the topic asked about.
    Committed(HashMap<i32, i64>),
    /// Aborted (nothing of it is visible to `read_committed` readers); why.
    Aborted(String),
}

/// A delivery opaque: the batch generation in the bits from 32 up, a
/// changelog flag in bit 31, the record's index in the batch below.
const GENERATION_SHIFT: u32 = 32;
const GENERATION_MASK: usize = (1 << 24) - 1;
const CHANGELOG_BIT: usize = 1 << 31;
const INDEX_MASK: usize = CHANGELOG_BIT - 1;

/// One record to produce, borrowed: librdkafka copies it.
#[derive(Debug, Clone, Copy)]
pub struct Record<'a> {
    pub topic: &'a str,
    pub key: &'a [u8],
    /// `None`: a tombstone (compaction then removes the key).
    pub value: Option<&'a [u8]>,
    pub headers: &'a [(&'a str, &'a [u8])],
    /// None: by the key's hash (librdkafka's default partitioner).
    pub partition: Option<i32>,
}

/// One record to produce, owned: kept until acknowledged in at-least-once
/// mode, where a failed delivery is produced again.
#[derive(Debug, Clone)]
pub struct OutRecord {
    pub topic: String,
    pub key: Vec<u8>,
    /// `None`: a tombstone.
    pub value: Option<Vec<u8>>,
    pub headers: Vec<(String, Vec<u8>)>,
    /// None: by the key's hash (librdkafka's default partitioner).
    pub partition: Option<i32>,
}

/// Delivery reports: opaque (batch generation and record index), partition,
/// offset. Reports of an earlier batch (served after it was aborted or
/// given up on) carry an old generation and are ignored.
#[derive(Default)]
pub struct Tracker {
    acked: Mutex<Vec<(usize, i32, i64)>>,
    failed: Mutex<Vec<(usize, String)>>,
    /// Records the broker refused in a way no retry changes (too large):
    /// opaque and a description naming the record.
    refused: Mutex<Vec<(usize, String)>>,
    /// librdkafka's latest statistics report (admin server on).
    stats: crate::source::stats::Latest,
}

/// Errors that producing the same record again cannot fix.
fn permanent(e: &KafkaError) -> bool {
    matches!(
        e.rdkafka_error_code(),
        Some(RDKafkaErrorCode::MessageSizeTooLarge | RDKafkaErrorCode::InvalidRecord)
    )
}

/// A record named for an error: topic, partition, key and size.
fn describe(topic: &str, partition: Option<i32>, key: &[u8], len: usize, e: &KafkaError) -> String {
    let key = String::from_utf8_lossy(&key[..key.len().min(200)]).into_owned();
    match partition {
        Some(p) => format!("{topic}[{p}] key {key:?}, {len} bytes: {e}"),
        None => format!("{topic} key {key:?}, {len} bytes: {e}"),
    }
}

impl ClientContext for Tracker {
    fn stats(&self, statistics: rdkafka::statistics::Statistics) {
        self.stats.keep(statistics);
    }
}

impl ProducerContext for Tracker {
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, index: usize) {
        match result {
            Ok(m) => {
                if let Ok(mut a) = self.acked.lock() {
                    a.push((
                        index,
                        rdkafka::Message::partition(m),
                        rdkafka::Message::offset(m),
                    ));
                }
            }
            Err((e, m)) => {
                if permanent(e) {
                    use rdkafka::Message as _;
                    let key = m.key().unwrap_or_default();
                    let size = m.payload().map_or(0, <[u8]>::len) + key.len();
                    let what = describe(m.topic(), Some(m.partition()), key, size, e);
                    if let Ok(mut r) = self.refused.lock() {
                        r.push((index, what));
                    }
                }
                if let Ok(mut f) = self.failed.lock() {
                    f.push((index, e.to_string()));
                }
            }
        }
    }
}

fn take<T>(m: &Mutex<Vec<T>>) -> Vec<T> {
    match m.lock() {
        Ok(mut v) => std::mem::take(&mut *v),
        // A panicking delivery callback cannot leave a half-pushed Vec.
        Err(poisoned) => std::mem::take(&mut *poisoned.into_inner()),
    }
}

impl OutRecord {
    /// Calls `f` with this record borrowed.
    fn with_borrowed<R>(&self, f: impl FnOnce(Record<'_>) -> R) -> R {
        let headers: Vec<(&str, &[u8])> = self
            .headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_slice()))
            .collect();
        f(Record {
            topic: &self.topic,
            key: &self.key,
            value: self.value.as_deref(),
            headers: &headers,
            partition: self.partition,
        })
    }
}

pub struct Sink {
    config: ClientConfig,
    producer: ThreadedProducer<Tracker>,
    /// Records produced in the running batch (delivery indexes below this).
    sent: usize,
    delivery: Delivery,
    /// Deliveries to this topic report where the changelog ends.
    changelog: String,
    /// Encoding buffer, reused.
    buf: Vec<u8>,
    /// Deliveries that failed and were produced again (shared with the run's stats).
    pub retried: Arc<AtomicU64>,
    /// Tags the running batch's delivery reports (the high bits of the opaque).
    generation: usize,
}

/// How a batch's records are made safe, and what that keeps.
enum Delivery {
    /// The running batch's records, by delivery index, produced again if
    /// their delivery fails, until every one is acknowledged.
    AtLeastOnce { kept: Vec<OutRecord> },
    /// Nothing kept: a failed delivery aborts the transaction and the batch
    /// is redone from the store.
    ExactlyOnce(Txn),
}

impl Sink {
    /// An idempotent producer, transactional with `transactional_id`; a
    /// transactional one fences every earlier producer with the same id (its
    /// unfinished transaction is aborted) before this returns.
    pub fn new(
        cfg: &EngineConfig,
        bootstrap: &str,
        transactional_id: Option<&str>,
    ) -> Result<Sink, SinkError> {
        let mut config = crate::source::client_config(cfg, bootstrap);
        crate::source::stats::enable(&mut config, cfg);
        config.set("enable.idempotence", "true");
        if let Some(id) = transactional_id {
            config.set("transactional.id", id);
        }
        // A batch is flushed as a whole at its end anyway: large produce
        // requests cost the broker far less than many small ones.
        if !cfg.kafka.contains_key("linger.ms") {
            config.set("linger.ms", "20");
        }
        if !cfg.kafka.contains_key("batch.num.messages") {
            config.set("batch.num.messages", "10000");
        }
        // A batch (up to `max_batch_timers` fired waits, three records each)
        // is queued whole before it is awaited.
        if !cfg.kafka.contains_key("queue.buffering.max.messages") {
            config.set("queue.buffering.max.messages", "2000000");
        }
        if !cfg.kafka.contains_key("message.timeout.ms") {
            // Fail a delivery within a bounded time, so `finish` produces it again.
            config.set("message.timeout.ms", "30000");
        }
        let producer = Self::producer(&config, transactional_id.is_some())?;
        Ok(Sink {
            producer,
            config,
            sent: 0,
            delivery: match transactional_id {
                Some(_) => Delivery::ExactlyOnce(Txn::Idle),
                None => Delivery::AtLeastOnce { kept: Vec::new() },
            },
            changelog: cfg.outputs.changelog.clone(),
            buf: Vec::new(),
            retried: Arc::default(),
            generation: 0,
        })
    }

    fn producer(
        config: &ClientConfig,
        transactional: bool,
    ) -> Result<ThreadedProducer<Tracker>, SinkError> {
        let p: ThreadedProducer<Tracker> = config
            .create_with_context(Tracker::default())
            .map_err(SinkError::Create)?;
        if transactional {
            retry_txn("init", || p.init_transactions(TXN_TIMEOUT))?;
        }
        Ok(p)
    }

    /// The producer's statistics report since the last call, if any.
    pub fn kafka_stats(&self) -> Option<Box<rdkafka::statistics::Statistics>> {
        self.producer.context().stats.take()
    }

    /// Records of the running batch not yet acknowledged (all of them until
    /// [`Sink::finish`] or the transaction's commit).
    pub fn pending(&self) -> usize {
        self.sent
    }

    pub fn send(&mut self, rec: OutRecord) {
        rec.with_borrowed(|r| self.produce_next(r));
        if let Delivery::AtLeastOnce { kept } = &mut self.delivery {
            kept.push(rec);
        }
    }

    /// Produces `rec` as the running batch's next record.
    pub fn send_record(&mut self, rec: Record<'_>) {
        self.produce_next(rec);
        if let Delivery::AtLeastOnce { kept } = &mut self.delivery {
            kept.push(owned(rec));
        }
    }

    fn produce_next(&mut self, rec: Record<'_>) {
        if let Delivery::ExactlyOnce(txn @ Txn::Idle) = &mut self.delivery {
            *txn = match self.producer.begin_transaction() {
                Ok(()) => Txn::Open,
                Err(e) => Txn::BeginFailed(e),
            };
        }
        let index = self.sent;
        self.sent += 1;
        self.produce(index, rec);
    }

    /// Adds a transition: to the transitions topic, and a send also to the
    /// sends topic. Keyed by contact id.
    pub fn send_transition(&mut self, defs: &Definitions, cfg: &EngineConfig, t: &Transition) {
        let pb = wire::proto::transition_to_pb(defs, t);
        let mut buf = std::mem::take(&mut self.buf);
        buf.clear();
        pb.encode_raw(&mut buf);
        let headers = transition_headers(t, &pb);
        let mut rec = Record {
            topic: &cfg.outputs.transitions,
            key: t.contact.as_bytes(),
            value: Some(&buf),
            headers: &headers,
            partition: None,
        };
        let mut topics = [Some(cfg.outputs.transitions.as_str()), None];
        if matches!(t.kind, TransitionKind::Send { .. }) {
            topics = [Some(&cfg.outputs.sends), Some(&cfg.outputs.transitions)];
        }
        for topic in topics.into_iter().flatten() {
            rec.topic = topic;
            self.send_record(rec);
        }
        self.buf = buf;
    }

    /// The last transition [`Sink::send_transition`] produced, as encoded.
    pub fn last_transition(&self) -> &[u8] {
        &self.buf
    }

    fn produce(&mut self, index: usize, rec: Record<'_>) {
        let mut headers = OwnedHeaders::new_with_capacity(rec.headers.len());
        for (k, v) in rec.headers {
            headers = headers.insert(Header {
                key: k,
                value: Some(*v),
            });
        }
        let flag = if rec.topic == self.changelog {
            CHANGELOG_BIT
        } else {
            0
        };
        let opaque = (self.generation << GENERATION_SHIFT) | flag | index;
        let mut record = BaseRecord::<[u8], [u8], usize>::with_opaque_to(rec.topic, opaque)
            .key(rec.key)
            .headers(headers);
        if let Some(value) = rec.value {
            record = record.payload(value);
        }
        if let Some(p) = rec.partition {
            record = record.partition(p);
        }
        loop {
            match self.producer.send(record) {
                Ok(()) => return,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    // The local queue drains as the broker acknowledges
                    // (the producer's own thread serves the reports).
                    record = r;
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err((e, r)) => {
                    tracing::warn!(topic = %r.topic, error = %e, "produce refused");
                    let ctx = self.producer.context();
                    if permanent(&e) {
                        // Never in the transaction (nor acknowledged): the
                        // batch must not be committed or acknowledged without it.
                        let size = rec.key.len() + rec.value.map_or(0, <[u8]>::len);
                        let what = describe(rec.topic, rec.partition, rec.key, size, &e);
                        if let Ok(mut f) = ctx.refused.lock() {
                            f.push((opaque, what));
                        }
                    }
                    // Not queued at all: count it failed, `finish` retries it.
                    if let Ok(mut f) = ctx.failed.lock() {
                        f.push((opaque, e.to_string()));
                    }
                    return;
                }
            }
        }
    }

    /// Produces the running batch's record `index` again (at-least-once).
    fn produce_kept(&mut self, index: usize) {
        let Delivery::AtLeastOnce { kept } = &self.delivery else {
            return;
        };
        let Some(rec) = kept.get(index).cloned() else {
            return;
        };
        rec.with_borrowed(|r| self.produce(index, r));
    }

    /// Waits until every record of the running batch is acknowledged,
    /// producing failed ones again (after a fatal producer error, all
    /// unacknowledged ones through a new producer). Gives up only when `stop`
    /// is set, leaving the batch unacknowledged: the caller must then not store
    /// its offsets.
    pub fn finish(&mut self, stop: &AtomicBool) -> Result<(), SinkError> {
        let n = self.sent;
        let mut acked = vec![false; n];
        let mut left = n;
        let mut backoff = Duration::from_millis(100);
        let mut waited = Duration::ZERO;
        loop {
            let _ = self.producer.flush(Duration::from_millis(500));
            if let Some(what) = self.refused() {
                return Err(SinkError::Refused(what));
            }
            let ctx = self.producer.context();
            for (o, _, _) in take(&ctx.acked) {
                if let Some(a) = self.index(o).and_then(|i| acked.get_mut(i))
                    && !*a
                {
                    *a = true;
                    left -= 1;
                }
            }
            let failed: Vec<(usize, String)> = take(&ctx.failed)
                .into_iter()
                .filter_map(|(o, e)| self.index(o).map(|i| (i, e)))
                .collect();
            if left == 0 {
                self.clear_batch();
                return Ok(());
            }
            let fatal = self.producer.client().fatal_error();
            if failed.is_empty() && fatal.is_none() {
                // Still in flight: librdkafka retries on its own until
                // `message.timeout.ms`.
                waited += Duration::from_millis(500);
                if stop.load(Ordering::Acquire) && waited > Duration::from_secs(10) {
                    return Err(SinkError::Interrupted(left));
                }
                continue;
            }
            if let Some((_, e)) = failed.first() {
                tracing::warn!(failed = failed.len(), first_error = %e, "deliveries failed; producing them again");
            }
            if stop.load(Ordering::Acquire) {
                return Err(SinkError::Interrupted(left));
            }
            std::thread::sleep(backoff);
            backoff = (backoff * 2).min(Duration::from_secs(5));
            if let Some((code, reason)) = fatal {
                tracing::warn!(?code, %reason, "fatal producer error; producing the batch through a new producer");
                self.producer = Self::producer(&self.config, false)?;
                for i in (0..n).filter(|&i| !acked[i]) {
                    self.retried.fetch_add(1, Ordering::Relaxed);
                    self.produce_kept(i);
                }
            } else {
                for (i, _) in failed {
                    self.retried.fetch_add(1, Ordering::Relaxed);
                    self.produce_kept(i);
                }
            }
        }
    }

    /// The first record of the running batch refused for good, described.
    fn refused(&self) -> Option<String> {
        take(&self.producer.context().refused)
            .into_iter()
            .find(|(o, _)| self.index(*o).is_some())
            .map(|(_, what)| what)
    }

    /// The record index of a delivery report's opaque, if it is of the
    /// running batch.
    fn index(&self, opaque: usize) -> Option<usize> {
        (opaque >> GENERATION_SHIFT == self.generation & GENERATION_MASK)
            .then_some(opaque & INDEX_MASK)
            .filter(|i| *i < self.sent)
    }

    /// Forgets the running batch; its late delivery reports are ignored.
    fn clear_batch(&mut self) {
        let ctx = self.producer.context();
        take(&ctx.acked);
        take(&ctx.failed);
        take(&ctx.refused);
        self.sent = 0;
        if let Delivery::AtLeastOnce { kept } = &mut self.delivery {
            kept.clear();
        }
        self.generation = (self.generation + 1) & GENERATION_MASK;
    }
}

fn retry_txn(what: &'static str, f: impl Fn() -> Result<(), KafkaError>) -> Result<(), SinkError> {
    let mut tries = 0;
    loop {
        match f() {
            Err(KafkaError::Transaction(e)) if e.is_retriable() && tries < 10 => tries += 1,
            Err(e) => return Err(SinkError::Transaction { what, source: e }),
            Ok(()) => return Ok(()),
        }
    }
}

/// A transition record's headers: its type, conversation and id.
fn transition_headers<'a>(
    t: &'a Transition,
    pb: &'a crate::pb::Transition,
) -> [(&'a str, &'a [u8]); 3] {
    [
        (HEADER_TYPE, t.kind.type_name().as_bytes()),
        (HEADER_CONVERSATION, pb.conversation.as_bytes()),
        (HEADER_TRANSITION_ID, pb.transition_id.as_bytes()),
    ]
}

fn owned(rec: Record<'_>) -> OutRecord {
    OutRecord {
        topic: rec.topic.to_string(),
        key: rec.key.to_vec(),
        value: rec.value.map(<[u8]>::to_vec),
        headers: rec
            .headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_vec()))
            .collect(),
        partition: rec.partition,
    }
}

/// A transition as a record of `topic`: `winback.v1.Transition`, keyed by
/// contact id, with the type, conversation and transition id as headers.
pub fn transition_record(defs: &Definitions, t: &Transition, topic: &str) -> OutRecord {
    let pb = wire::proto::transition_to_pb(defs, t);
    let value = pb.encode_to_vec();
    let headers = transition_headers(t, &pb);
    owned(Record {
        topic,
        key: t.contact.as_bytes(),
        value: Some(&value),
        headers: &headers,
        partition: None,
    })
}

/// Reads a transition record as produced by the sink.
pub fn decode_transition(payload: &[u8]) -> Result<crate::pb::Transition, prost::DecodeError> {
    crate::pb::Transition::decode(payload)
}

/// The header `name` of a record, as text.
pub fn header<'a, M: rdkafka::Message>(m: &'a M, name: &str) -> Option<&'a str> {
    use rdkafka::message::Headers;
    let h = m.headers()?;
    h.iter()
        .find(|h| h.key == name)
        .and_then(|h| h.value)
        .and_then(|v| std::str::from_utf8(v).ok())
}
