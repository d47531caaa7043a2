//! `winback run`: the loop that turns the pure engine into a stream processor.
//!
//! One batch: poll input records (up to `max_batch_events` or
//! `commit_interval_ms`), fold each into its partition as it arrives (firing
//! the waits due before it), produce the transitions as they come; then, for a
//! partition that is caught up and idle, move its clock to the wall clock and
//! fire what that made due; then wait until the broker acknowledged every
//! record of the batch and write one RocksDB `WriteBatch` with the contacts,
//! timers, clocks, coupon shares and input offsets. The store, not the
//! consumer group, is the authority on positions: on assignment a partition
//! starts where its stored offsets say.
//!
//! A crash between the acknowledgement and the write makes the next run
//! process the batch again: the same transitions, with the same ids
//! (at-least-once; exactly-once is the changelog/transactions work).

pub mod embedded;
pub mod partition;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientContext, Message, Offset, TopicPartitionList};

use crate::config::engine::EngineConfig;
use crate::domain::{Definitions, Event, Timestamp, Transition};
use crate::sink::{OutRecord, Sink, SinkError};
use crate::source;
use crate::store::rocks::{Store, StoreError};
use partition::{Fed, Partition, PartitionError, PartitionSettings};

/// Where the idle clock comes from: the system clock in production, a clock
/// the test moves in tests.
pub trait WallClock: Send + Sync {
    fn now(&self) -> Timestamp;
}

pub struct SystemClock;

impl WallClock for SystemClock {
    fn now(&self) -> Timestamp {
        Timestamp(chrono::Utc::now().timestamp_millis())
    }
}

/// A wall clock that moves only when told.
#[derive(Debug)]
pub struct ManualClock(AtomicI64);

impl ManualClock {
    pub fn new(t: Timestamp) -> Self {
        ManualClock(AtomicI64::new(t.0))
    }

    pub fn set(&self, t: Timestamp) {
        self.0.store(t.0, Ordering::Release);
    }
}

impl WallClock for ManualClock {
    fn now(&self) -> Timestamp {
        Timestamp(self.0.load(Ordering::Acquire))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Sink(#[from] SinkError),
    #[error("Kafka: {what}: {source}")]
    Kafka { what: String, source: KafkaError },
    #[error(
        "topic {0:?} does not exist on the brokers (create it, partitioned like the input topics)"
    )]
    MissingTopic(String),
    #[error(
        "the input topics differ in partition count ({0}): every contact's events must land in the same partition number"
    )]
    PartitionMismatch(String),
    #[error(
        "the input topics have {now} partitions but the state in {dir} was built with {stored}: coupon shares and contact placement depend on it"
    )]
    PartitionsChanged { now: u32, stored: u32, dir: PathBuf },
    #[error(
        "coupon pool {pool:?}: its codes file no longer starts with the {stored} codes loaded first (code {index} differs); codes may be appended, never reordered or removed"
    )]
    PoolChanged {
        pool: String,
        stored: usize,
        index: usize,
    },
}

/// A batch that has polled nothing for this long stops fetching until the next.
const IDLE_FETCH: Duration = Duration::from_millis(100);

fn kafka(what: impl Into<String>) -> impl FnOnce(KafkaError) -> RuntimeError {
    let what = what.into();
    move |source| RuntimeError::Kafka { what, source }
}

/// Counters of a run, readable while it runs.
#[derive(Debug, Default)]
pub struct RunStats {
    pub events: AtomicU64,
    pub transitions: AtomicU64,
    pub dead_letters: AtomicU64,
    pub batches: AtomicU64,
    pub timers_fired_idle: AtomicU64,
    /// Records produced again after a failed delivery.
    pub redelivered: Arc<AtomicU64>,
    /// Time spent waiting for the broker's acknowledgements, in µs.
    pub ack_wait_us: AtomicU64,
    /// Time spent writing batches to RocksDB, in µs.
    pub store_write_us: AtomicU64,
}

/// What the consumer's rebalance callback saw; handled by the loop between polls.
#[derive(Debug)]
enum Rebalanced {
    Assigned(Vec<(String, i32)>),
    Revoked(Vec<(String, i32)>),
}

struct Ctx {
    store: Arc<Store>,
    /// The next offset to read per (topic, partition), as processed in memory:
    /// ahead of the store during a batch.
    positions: Arc<Mutex<HashMap<(String, i32), i64>>>,
    events: Mutex<Vec<Rebalanced>>,
}

impl ClientContext for Ctx {}

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
                // not yet handled by the loop), else the store, else the start.
                let positions = self.positions.lock().map(|p| p.clone()).unwrap_or_default();
                for (topic, p) in &parts {
                    let next = match positions.get(&(topic.clone(), *p)) {
                        Some(&o) => Some(o),
                        None => match self.store.offset(*p as u32, topic) {
                            Ok(o) => o,
                            Err(e) => {
                                tracing::error!(error = %e, "cannot read a stored offset");
                                None
                            }
                        },
                    };
                    let offset = next.map_or(Offset::Beginning, Offset::Offset);
                    if let Err(e) = tpl.set_partition_offset(topic, *p, offset) {
                        tracing::error!(error = %e, topic, partition = p, "cannot set a start offset");
                    }
                }
                if let Err(e) = consumer.assign(tpl) {
                    tracing::error!(error = %e, "assign failed");
                }
                tracing::info!(partitions = ?parts, "assigned");
                if let Ok(mut ev) = self.events.lock() {
                    ev.push(Rebalanced::Assigned(parts));
                }
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                if let Err(e) = consumer.unassign() {
                    tracing::error!(error = %e, "unassign failed");
                }
                tracing::info!(partitions = ?parts, "revoked");
                if let Ok(mut ev) = self.events.lock() {
                    ev.push(Rebalanced::Revoked(parts));
                }
            }
            other => tracing::error!(error = ?other, "rebalance error"),
        }
    }
}

/// Everything one `winback run` needs, resolved.
pub struct RunParams {
    pub config: EngineConfig,
    pub definitions: Arc<Definitions>,
    pub bootstrap: String,
    pub clock: Arc<dyn WallClock>,
    pub stop: Arc<AtomicBool>,
    pub stats: Arc<RunStats>,
}

/// Checks the pool codes against those loaded first, and loads them the
/// first time. Codes may be appended to a file; anything else would hand out
/// a code twice.
pub fn load_pools(store: &Store, defs: &Definitions) -> Result<(), RuntimeError> {
    for p in &defs.pools {
        let stored = store.pool_codes(&p.name)?;
        if let Some(stored) = &stored
            && let Some(index) = stored
                .iter()
                .zip(p.codes.iter())
                .position(|(a, b)| a.as_str() != &**b)
                .or((p.codes.len() < stored.len()).then_some(p.codes.len()))
        {
            return Err(RuntimeError::PoolChanged {
                pool: p.name.to_string(),
                stored: stored.len(),
                index: index + 1,
            });
        }
        if stored.is_none_or(|s| s.len() < p.codes.len()) {
            store.put_pool_codes(&p.name, &p.codes)?;
        }
    }
    Ok(())
}

/// Runs until `stop` is set; then finishes the batch, waits for the broker's
/// acknowledgements and writes the state.
pub fn run(params: RunParams) -> Result<(), RuntimeError> {
    let RunParams {
        config: cfg,
        definitions: defs,
        bootstrap,
        clock,
        stop,
        stats,
    } = params;
    std::fs::create_dir_all(&cfg.state_dir).ok();
    let store = Arc::new(Store::open(&cfg.state_dir.join("rocksdb"))?);
    load_pools(&store, &defs)?;

    let positions = Arc::new(Mutex::new(HashMap::new()));
    let ctx = Ctx {
        store: Arc::clone(&store),
        positions: Arc::clone(&positions),
        events: Mutex::new(Vec::new()),
    };
    let consumer: BaseConsumer<Ctx> = source::consumer_config(&cfg, &bootstrap)
        .create_with_context(ctx)
        .map_err(kafka("create the consumer"))?;

    let partitions = input_partitions(&consumer, &cfg)?;
    match store.partitions()? {
        Some(stored) if stored != partitions => {
            return Err(RuntimeError::PartitionsChanged {
                now: partitions,
                stored,
                dir: cfg.state_dir.clone(),
            });
        }
        Some(_) => {}
        None => store.set_partitions(partitions)?,
    }
    let mut sink = Sink::new(&cfg, &bootstrap)?;
    sink.retried = Arc::clone(&stats.redelivered);
    let topics: Vec<&str> = cfg.inputs.iter().map(|i| i.topic.as_str()).collect();
    consumer
        .subscribe(&topics)
        .map_err(kafka("subscribe to the input topics"))?;
    tracing::info!(
        bootstrap = %bootstrap,
        group = %cfg.group_id,
        inputs = ?topics,
        partitions,
        state_dir = %cfg.state_dir.display(),
        "running"
    );

    let mut rt = Loop {
        settings: PartitionSettings {
            timer_horizon_ms: cfg.timer_horizon_ms,
            load_limit: cfg.max_batch_timers.max(1024),
        },
        cfg,
        defs,
        store,
        consumer,
        sink,
        positions,
        partitions,
        parts: BTreeMap::new(),
        paused: None,
        out: Vec::new(),
        clock,
        stop,
        stats,
    };
    let result = rt.run();
    // Leave the group cleanly either way, so a restart is assigned at once.
    rt.consumer.unsubscribe();
    result
}

struct PausedEvent {
    topic: String,
    partition: i32,
    offset: i64,
    event: Event,
}

struct Loop {
    cfg: EngineConfig,
    defs: Arc<Definitions>,
    settings: PartitionSettings,
    store: Arc<Store>,
    consumer: BaseConsumer<Ctx>,
    sink: Sink,
    positions: Arc<Mutex<HashMap<(String, i32), i64>>>,
    partitions: u32,
    parts: BTreeMap<u32, Partition>,
    /// An event whose due waits did not fit in the last batch's timer budget.
    paused: Option<PausedEvent>,
    out: Vec<Transition>,
    clock: Arc<dyn WallClock>,
    stop: Arc<AtomicBool>,
    stats: Arc<RunStats>,
}

impl Loop {
    fn run(&mut self) -> Result<(), RuntimeError> {
        let interval = Duration::from_millis(self.cfg.commit_interval_ms);
        let mut fetch_paused = false;
        while !self.stop.load(Ordering::Acquire) {
            let started = Instant::now();
            if fetch_paused {
                self.set_fetching(true);
                fetch_paused = false;
            }
            let mut budget = self.cfg.max_batch_timers;
            let mut events = 0usize;
            let mut busy: BTreeSet<u32> = BTreeSet::new();
            let mut full = false;
            if let Some(p) = self.paused.take() {
                busy.insert(p.partition as u32);
                full = !self.fold(p, &mut budget)?;
            }
            while !full && events < self.cfg.max_batch_events {
                let left = interval.saturating_sub(started.elapsed());
                if left.is_zero() || self.stop.load(Ordering::Acquire) {
                    break;
                }
                if events == 0 && !fetch_paused && started.elapsed() >= IDLE_FETCH {
                    // Nothing came: stop asking until the next batch. A broker
                    // that does not hold empty fetches (noida-db) would be
                    // asked in a busy loop; on Kafka this only saves requests.
                    // New input waits at most one commit interval.
                    self.set_fetching(false);
                    fetch_paused = true;
                }
                let polled = self.consumer.poll(left.min(Duration::from_millis(100)));
                // Decoded (and the message released) before the rebalance
                // callback's effects are handled: they need the whole loop.
                let item = match polled {
                    None => None,
                    Some(Err(e)) => {
                        // Broker and transport errors: librdkafka reconnects on its own.
                        tracing::warn!(error = %e, "consumer error");
                        None
                    }
                    Some(Ok(m)) => {
                        let format = self
                            .cfg
                            .input_format(m.topic())
                            .unwrap_or(crate::config::engine::InputFormat::Json);
                        // Refused here, while the original bytes are at hand,
                        // also when it decodes but cannot be folded.
                        let decoded = source::decode(format, m.payload())
                            .and_then(|ev| {
                                crate::domain::engine::route_event(&self.defs, &ev)
                                    .map(|_| ev)
                                    .map_err(|e| source::Rejected(e.to_string()))
                            })
                            .map_err(|r| {
                                (
                                    r.0,
                                    m.key().unwrap_or_default().to_vec(),
                                    m.payload().unwrap_or_default().to_vec(),
                                )
                            });
                        Some((m.topic().to_string(), m.partition(), m.offset(), decoded))
                    }
                };
                self.handle_rebalances()?;
                let Some((topic, partition, offset, decoded)) = item else {
                    continue;
                };
                if !self.parts.contains_key(&(partition as u32)) {
                    // Fetched before a revocation: not ours any more.
                    continue;
                }
                let next = self
                    .positions
                    .lock()
                    .ok()
                    .and_then(|p| p.get(&(topic.clone(), partition)).copied());
                if next.is_some_and(|n| offset < n) {
                    // Folded already (a fetch repeated around a seek): never twice.
                    continue;
                }
                events += 1;
                busy.insert(partition as u32);
                self.stats.events.fetch_add(1, Ordering::Relaxed);
                match decoded {
                    Ok(event) => {
                        let p = PausedEvent {
                            topic,
                            partition,
                            offset,
                            event,
                        };
                        full = !self.fold(p, &mut budget)?;
                    }
                    Err((reason, key, value)) => {
                        let rec = OutRecord {
                            topic: self.cfg.outputs.dead_letters.clone(),
                            key,
                            value,
                            headers: dead_letter_headers(&topic, partition, offset, &reason),
                        };
                        self.dead_letter(rec, &topic, partition, offset, &reason);
                    }
                }
            }
            if !full {
                self.advance_idle(&busy, &mut budget)?;
            }
            self.commit()?;
        }
        self.commit()?;
        Ok(())
    }

    /// Pauses or resumes fetching of every assigned partition.
    fn set_fetching(&self, on: bool) {
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

    /// Folds one event; false when it had to pause for the timer budget.
    fn fold(&mut self, p: PausedEvent, budget: &mut usize) -> Result<bool, RuntimeError> {
        let Some(part) = self.parts.get_mut(&(p.partition as u32)) else {
            return Ok(true);
        };
        self.out.clear();
        let fed = part.feed(&self.store, &p.event, &mut self.out, budget);
        for t in self.out.drain(..) {
            self.sink.send_transition(&self.defs, &self.cfg, &t);
            self.stats.transitions.fetch_add(1, Ordering::Relaxed);
        }
        match fed {
            Ok(Fed::Folded(_)) => {
                self.advance_position(&p.topic, p.partition, p.offset + 1);
                Ok(true)
            }
            Ok(Fed::Paused) => {
                self.paused = Some(p);
                Ok(false)
            }
            Err(PartitionError::Event(e)) => {
                let reason = e.to_string();
                let value = crate::wire::json::encode_event(&p.event).into_bytes();
                let rec = OutRecord {
                    topic: self.cfg.outputs.dead_letters.clone(),
                    key: p.event.contact_id.as_bytes().to_vec(),
                    value,
                    headers: dead_letter_headers(&p.topic, p.partition, p.offset, &reason),
                };
                self.dead_letter(rec, &p.topic, p.partition, p.offset, &reason);
                Ok(true)
            }
            Err(PartitionError::Store(e)) => Err(e.into()),
        }
    }

    fn dead_letter(
        &mut self,
        rec: OutRecord,
        topic: &str,
        partition: i32,
        offset: i64,
        reason: &str,
    ) {
        tracing::warn!(
            topic,
            partition,
            offset,
            reason,
            "input record sent to the dead-letter topic"
        );
        self.sink.send(rec);
        self.stats.dead_letters.fetch_add(1, Ordering::Relaxed);
        self.advance_position(topic, partition, offset + 1);
    }

    fn advance_position(&mut self, topic: &str, partition: i32, next: i64) {
        if let Some(part) = self.parts.get_mut(&(partition as u32)) {
            part.note_offset(topic, next);
        }
        if let Ok(mut pos) = self.positions.lock() {
            pos.insert((topic.to_string(), partition), next);
        }
    }

    /// Moves the clock of every caught-up partition that had no input in this
    /// batch to the wall clock.
    fn advance_idle(
        &mut self,
        busy: &BTreeSet<u32>,
        budget: &mut usize,
    ) -> Result<(), RuntimeError> {
        let now = self.clock.now();
        let ids: Vec<u32> = self
            .parts
            .keys()
            .copied()
            .filter(|p| !busy.contains(p))
            .collect();
        for id in ids {
            if self.parts[&id].clock().is_some_and(|c| c >= now) || !self.caught_up(id)? {
                continue;
            }
            let Some(part) = self.parts.get_mut(&id) else {
                continue;
            };
            self.out.clear();
            part.advance_to(&self.store, now, &mut self.out, budget)?;
            for t in self.out.drain(..) {
                self.sink.send_transition(&self.defs, &self.cfg, &t);
                self.stats.transitions.fetch_add(1, Ordering::Relaxed);
                self.stats.timers_fired_idle.fetch_add(1, Ordering::Relaxed);
            }
        }
        Ok(())
    }

    /// Whether every input topic's partition `id` has been read to its end.
    fn caught_up(&self, id: u32) -> Result<bool, RuntimeError> {
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
            let memory = self
                .positions
                .lock()
                .ok()
                .and_then(|p| p.get(&(input.topic.clone(), id as i32)).copied());
            let next = match memory {
                Some(n) => n,
                None => self.store.offset(id, &input.topic)?.unwrap_or(low),
            };
            if next < high {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Waits for the batch's acknowledgements, then writes its state in one
    /// atomic batch, then tells the group (for lag monitoring only).
    fn commit(&mut self) -> Result<(), RuntimeError> {
        let changed = self.parts.values().any(|p| p.has_changes());
        if !changed && self.sink.pending() == 0 {
            return Ok(());
        }
        let waited = Instant::now();
        self.sink.finish(&self.stop)?;
        self.stats
            .ack_wait_us
            .fetch_add(waited.elapsed().as_micros() as u64, Ordering::Relaxed);
        let writing = Instant::now();
        let mut batch = self.store.batch(&self.defs, 0);
        let mut tpl = TopicPartitionList::new();
        for part in self.parts.values_mut() {
            if part.has_changes() {
                part.write(&mut batch);
            }
        }
        batch.commit()?;
        self.stats
            .store_write_us
            .fetch_add(writing.elapsed().as_micros() as u64, Ordering::Relaxed);
        self.stats.batches.fetch_add(1, Ordering::Relaxed);
        if let Ok(pos) = self.positions.lock() {
            for ((topic, p), next) in pos.iter() {
                if self.parts.contains_key(&(*p as u32)) {
                    tpl.add_partition_offset(topic, *p, Offset::Offset(*next))
                        .ok();
                }
            }
        }
        if tpl.count() > 0
            && let Err(e) = self.consumer.commit(&tpl, CommitMode::Async)
        {
            tracing::debug!(error = %e, "group offset commit (informational) failed");
        }
        Ok(())
    }

    fn handle_rebalances(&mut self) -> Result<(), RuntimeError> {
        let events: Vec<Rebalanced> = match self.consumer.context().events.lock() {
            Ok(mut e) => std::mem::take(&mut *e),
            Err(_) => Vec::new(),
        };
        if events.is_empty() {
            return Ok(());
        }
        // Everything folded so far becomes durable before partitions move.
        self.commit()?;
        for ev in events {
            match ev {
                Rebalanced::Revoked(tps) => {
                    for (topic, p) in tps {
                        self.parts.remove(&(p as u32));
                        if let Ok(mut pos) = self.positions.lock() {
                            pos.remove(&(topic, p));
                        }
                        if self.paused.as_ref().is_some_and(|e| e.partition == p) {
                            self.paused = None;
                        }
                    }
                }
                Rebalanced::Assigned(tps) => {
                    for (_, p) in tps {
                        let id = p as u32;
                        if !self.parts.contains_key(&id) {
                            let part = Partition::open(
                                &self.store,
                                Arc::clone(&self.defs),
                                id,
                                self.partitions,
                                self.settings,
                            )?;
                            self.parts.insert(id, part);
                        }
                    }
                }
            }
        }
        Ok(())
    }
}

fn dead_letter_headers(
    topic: &str,
    partition: i32,
    offset: i64,
    reason: &str,
) -> Vec<(String, Vec<u8>)> {
    vec![
        (source::DLQ_TOPIC.into(), topic.as_bytes().to_vec()),
        (
            source::DLQ_PARTITION.into(),
            partition.to_string().into_bytes(),
        ),
        (source::DLQ_OFFSET.into(), offset.to_string().into_bytes()),
        (source::DLQ_REASON.into(), reason.as_bytes().to_vec()),
    ]
}

/// The input topics' common partition count.
fn input_partitions(consumer: &BaseConsumer<Ctx>, cfg: &EngineConfig) -> Result<u32, RuntimeError> {
    let mut counts = Vec::new();
    let outputs = [
        &cfg.outputs.transitions,
        &cfg.outputs.sends,
        &cfg.outputs.dead_letters,
    ];
    for topic in cfg.inputs.iter().map(|i| &i.topic).chain(outputs) {
        let md = consumer
            .fetch_metadata(Some(topic), Duration::from_secs(10))
            .map_err(kafka(format!("metadata of {topic:?}")))?;
        let n = md
            .topics()
            .iter()
            .find(|t| t.name() == topic.as_str() && t.error().is_none())
            .map_or(0, |t| t.partitions().len());
        if n == 0 {
            return Err(RuntimeError::MissingTopic(topic.clone()));
        }
        if cfg.inputs.iter().any(|i| &i.topic == topic) {
            counts.push((topic.clone(), n as u32));
        }
    }
    let first = counts[0].1;
    if counts.iter().any(|(_, n)| *n != first) {
        let list: Vec<String> = counts.iter().map(|(t, n)| format!("{t}: {n}")).collect();
        return Err(RuntimeError::PartitionMismatch(list.join(", ")));
    }
    Ok(first)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::definition::PoolDef;

    fn defs(codes: &[&str]) -> Definitions {
        Definitions::new(
            vec![],
            vec![PoolDef {
                name: "p".into(),
                codes: codes.iter().map(|c| Arc::from(*c)).collect(),
                low_stock: 1,
                expires_at: None,
            }],
            vec![],
            vec![],
            vec![],
        )
    }

    #[test]
    fn pool_codes_are_stored_once_and_may_only_grow() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        load_pools(&store, &defs(&["A", "B"])).unwrap();
        assert_eq!(store.pool_codes("p").unwrap().unwrap(), ["A", "B"]);
        // The same, and appended: fine; the stored list grows.
        load_pools(&store, &defs(&["A", "B"])).unwrap();
        load_pools(&store, &defs(&["A", "B", "C"])).unwrap();
        assert_eq!(store.pool_codes("p").unwrap().unwrap(), ["A", "B", "C"]);
        // Reordered, replaced or removed: refused, naming the first difference.
        for bad in [&["B", "A", "C"][..], &["A", "X", "C"], &["A", "B"]] {
            match load_pools(&store, &defs(bad)) {
                Err(RuntimeError::PoolChanged { pool, stored, .. }) => {
                    assert_eq!((pool.as_str(), stored), ("p", 3));
                }
                other => panic!("{bad:?}: {other:?}"),
            }
        }
        assert_eq!(store.pool_codes("p").unwrap().unwrap(), ["A", "B", "C"]);
    }
}
