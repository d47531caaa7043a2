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
//! Exactly-once mode (the default): the batch's transitions, its changelog
//! records (changed contacts, then the partition record) and its input
//! offsets commit as one Kafka transaction, and only then is the RocksDB batch
//! written. An aborted transaction rolls the in-memory state back to the
//! store and seeks the input back to the stored offsets. A crash between the
//! commit and the write leaves the store behind the changelog: the restore on
//! assignment reads what it lacks ([`restore`]).
//!
//! At-least-once mode: the batch's records are acknowledged, then the batch
//! is written. A crash between the two makes the next run process the batch
//! again: the same transitions, with the same ids.

mod checks;
pub mod embedded;
pub(crate) mod merge;
pub mod partition;
pub mod restore;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientContext, Message, Offset, TopicPartitionList};

use crate::config::engine::{EngineConfig, Guarantee, OffsetOutOfRange};
use crate::domain::{Definitions, Event, Timestamp, Transition};
use crate::sink::{OutRecord, Record, Sink, SinkError, TxnOutcome};
use crate::source;
use crate::store::rocks::{Store, StoreError};
use merge::{Buffered, End, Merge};
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
        "the input topics (and the changelog) differ in partition count ({0}): every contact's events and state must land in the same partition number"
    )]
    PartitionMismatch(String),
    #[error(
        "the input topics have {now} partitions but the state in {dir} was built with {stored}: coupon shares and contact placement depend on it"
    )]
    PartitionsChanged { now: u32, stored: u32, dir: PathBuf },
    #[error("changelog topic {topic:?}: {reason}")]
    Changelog { topic: String, reason: String },
    #[error(
        "input {topic}[{partition}]: the stored position {next} is outside the log (offsets {low} to {high}): records were deleted before winback read them (retention), or the topic was deleted and created again. Nothing was read from it. To go on from the log's first record (records missing in between are lost to winback) set processing.offset_out_of_range = \"earliest\"; to skip to its end, \"latest\""
    )]
    OffsetOutOfRange {
        topic: String,
        partition: i32,
        next: i64,
        low: i64,
        high: i64,
    },
    #[error(
        "at-least-once mode keeps no changelog, so its state cannot move between processes: it runs as the only member of its group, and this member was assigned {assigned} of {partitions} partitions (another process runs with group {group:?}). Stop the others, or use exactly_once"
    )]
    AtLeastOnceShared {
        assigned: usize,
        partitions: u32,
        group: String,
    },
    #[error(
        "coupon pool {new:?} holds codes of pool {old:?}, which this state directory loaded before and which is no longer defined: a renamed pool would hand out its codes again. Give it its old name back"
    )]
    PoolRenamed { old: String, new: String },
    #[error("restoring partition {partition} from the changelog: {reason}")]
    Restore { partition: u32, reason: String },
    #[error(
        "the state in {dir} was built in {stored} mode; this config runs {now} (use a new state directory)"
    )]
    GuaranteeChanged {
        stored: String,
        now: &'static str,
        dir: PathBuf,
    },
    #[error(
        "coupon pool {pool:?}: its codes file no longer starts with the {stored} codes loaded first (code {index} differs); codes may be appended, never reordered or removed"
    )]
    PoolChanged {
        pool: String,
        stored: usize,
        index: usize,
    },
}

/// Fault injection for tests: `WINBACK_TEST_ABORT_EVERY=N` aborts every Nth
/// transaction instead of committing it, as an abortable broker error would.
pub const ENV_ABORT_EVERY: &str = "WINBACK_TEST_ABORT_EVERY";

/// A batch that has polled nothing for this long stops fetching until the
/// next, if every partition held was read to its end.
const IDLE_FETCH: Duration = Duration::from_millis(100);

/// Records one input topic partition may hold in the merge before its
/// fetching pauses (a topic running ahead of the others); it resumes at half.
const MERGE_BUFFER: usize = 20_000;

fn kafka(what: impl Into<String>) -> impl FnOnce(KafkaError) -> RuntimeError {
    let what = what.into();
    move |source| RuntimeError::Kafka { what, source }
}

/// How long a restore may take to catch up with the group's committed input
/// offsets, and the pause between its attempts.
const RESTORE_CATCH_UP: Duration = Duration::from_secs(30);
const RESTORE_RETRY: Duration = Duration::from_millis(200);

/// Counters of a run, readable while it runs.
#[derive(Debug, Default)]
pub struct RunStats {
    /// Input records taken (a batch processed again after an abort takes
    /// its records again).
    pub events: AtomicU64,
    /// Input records folded or dead-lettered in batches since written: what
    /// a restart would not read again.
    pub events_written: AtomicU64,
    pub transitions: AtomicU64,
    pub dead_letters: AtomicU64,
    pub batches: AtomicU64,
    /// Batches ended, written or not: the idle wall clock is looked at at
    /// the end of each.
    pub batch_ends: AtomicU64,
    pub timers_fired_idle: AtomicU64,
    /// Events folded with an `occurred_at` before their partition's clock
    /// (docs/semantics.md, "Late events").
    pub late_events: AtomicU64,
    /// Records produced again after a failed delivery.
    pub redelivered: Arc<AtomicU64>,
    /// Time spent waiting for the broker's acknowledgements, in µs.
    pub ack_wait_us: AtomicU64,
    /// Time spent writing batches to RocksDB, in µs.
    pub store_write_us: AtomicU64,
    /// Transactions aborted (their batches processed again).
    pub aborted: AtomicU64,
    /// Changelog records read by restores.
    pub restored_records: AtomicU64,
    /// Restores read again because they ended behind the group's committed
    /// input offsets.
    pub restore_retries: AtomicU64,
    /// Records fetched again below the position already folded (around a
    /// seek or a rebalance), skipped.
    pub refetched: AtomicU64,
    /// Records of a partition no longer held when they were polled, skipped.
    pub unowned: AtomicU64,
    /// Records on another partition than their key hashes to (README,
    /// "Input"): folded, but a producer partitions differently from the rest.
    pub misrouted: AtomicU64,
    /// Revocations handled.
    pub revocations: AtomicU64,
    /// Batches under way at a revocation, committed before the partitions
    /// were let go.
    pub revocation_commits: AtomicU64,
}

/// What the consumer's rebalance callback saw; handled by the loop between polls.
#[derive(Debug)]
enum Rebalanced {
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
struct Restorer {
    cfg: EngineConfig,
    defs: Arc<Definitions>,
    bootstrap: String,
    stop: Arc<AtomicBool>,
    stats: Arc<RunStats>,
}

struct Ctx {
    store: Arc<Store>,
    /// The next offset to read per (topic, partition), as processed in memory:
    /// ahead of the store during a batch.
    positions: Arc<Mutex<HashMap<(String, i32), i64>>>,
    /// Partitions whose state the loop holds in memory.
    held: Mutex<BTreeSet<u32>>,
    events: Mutex<Vec<Rebalanced>>,
    restorer: Option<Restorer>,
    offset_out_of_range: OffsetOutOfRange,
    /// While the loop runs, a revocation keeps the partitions assigned until
    /// the loop has committed what it folded of them.
    defer_unassign: AtomicBool,
    /// A revocation that kept its partitions assigned waits for the loop's
    /// unassignment (the group's rebalance waits for it too).
    unassign_due: AtomicBool,
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
                },
            )?;
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
    fn start_in_log(
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
        if let Ok(mut pos) = self.positions.lock() {
            pos.insert((topic.to_string(), p), to);
        }
        Ok(to)
    }
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
                // not yet handled by the loop), else the store (restored from
                // the changelog first in exactly-once mode), else the start.
                let held = self.held.lock().map(|h| h.clone()).unwrap_or_default();
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
                let positions = self.positions.lock().map(|p| p.clone()).unwrap_or_default();
                let mut starts = Vec::with_capacity(parts.len());
                for (topic, p) in &parts {
                    let next = match positions.get(&(topic.clone(), *p)) {
                        Some(&o) => Some(o),
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
                    starts.push((*p, next, positions.contains_key(&(topic.clone(), *p))));
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
    // A pool renamed in the definitions would start over at its first code.
    for name in store.pool_names()? {
        if defs.pools.iter().any(|p| *p.name == *name) {
            continue;
        }
        let Some(codes) = store.pool_codes(&name)? else {
            continue;
        };
        let old: std::collections::HashSet<&str> = codes.iter().map(String::as_str).collect();
        if let Some(p) = defs
            .pools
            .iter()
            .find(|p| p.codes.iter().any(|c| old.contains(&**c)))
        {
            return Err(RuntimeError::PoolRenamed {
                old: name,
                new: p.name.to_string(),
            });
        }
    }
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
    match store.guarantee()? {
        Some(g) if g != cfg.guarantee.as_str() => {
            return Err(RuntimeError::GuaranteeChanged {
                stored: g,
                now: cfg.guarantee.as_str(),
                dir: cfg.state_dir.clone(),
            });
        }
        Some(_) => {}
        None => store.set_guarantee(cfg.guarantee.as_str())?,
    }

    let positions = Arc::new(Mutex::new(HashMap::new()));
    let restorer = (cfg.guarantee == Guarantee::ExactlyOnce).then(|| Restorer {
        cfg: cfg.clone(),
        defs: Arc::clone(&defs),
        bootstrap: bootstrap.clone(),
        stop: Arc::clone(&stop),
        stats: Arc::clone(&stats),
    });
    let ctx = Ctx {
        store: Arc::clone(&store),
        positions: Arc::clone(&positions),
        held: Mutex::new(BTreeSet::new()),
        events: Mutex::new(Vec::new()),
        restorer,
        offset_out_of_range: cfg.offset_out_of_range,
        defer_unassign: AtomicBool::new(true),
        unassign_due: AtomicBool::new(false),
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
    if cfg.guarantee == Guarantee::ExactlyOnce && !cfg.embedded() {
        checks::check_changelog_topic(&cfg, &bootstrap)?;
    }
    // Before anything is restored: a transactional producer fences its
    // predecessor, whose unfinished transaction would hold restores back.
    let txn_id = (cfg.guarantee == Guarantee::ExactlyOnce).then_some(cfg.instance_id.as_str());
    let mut sink = Sink::new(&cfg, &bootstrap, txn_id)?;
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
        guarantee = cfg.guarantee.as_str(),
        restore_from = cfg.restore_from.as_str(),
        instance = %cfg.instance_id,
        state_dir = %cfg.state_dir.display(),
        "running"
    );

    let inputs = cfg.inputs.len();
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
        batch_settled: 0,
        out: Vec::new(),
        clock,
        stop,
        stats,
        read_to_end: false,
        merge: Merge::new(inputs),
        merge_paused: BTreeSet::new(),
        quiet_since: HashMap::new(),
        transactions: 0,
        abort_every: std::env::var(ENV_ABORT_EVERY)
            .ok()
            .and_then(|v| v.parse().ok())
            .filter(|n| *n > 0),
    };
    let result = rt.run();
    // From here on a revocation lets go at once: nothing folds any more.
    rt.consumer
        .context()
        .defer_unassign
        .store(false, Ordering::Release);
    // An error may have left a revocation unanswered: the group waits for it.
    if let Err(e) = rt.unassign_if_due() {
        tracing::warn!(error = %e, "unassign after an error");
    }
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
    /// Input records the running batch folded or dead-lettered.
    batch_settled: u64,
    out: Vec<Transition>,
    clock: Arc<dyn WallClock>,
    stop: Arc<AtomicBool>,
    stats: Arc<RunStats>,
    /// Whether every partition held was read to its end at the last batch's
    /// end (and none came since): only then may fetching pause when idle
    /// (embedded broker only). A partition with a backlog never pauses: that
    /// broker answers a backlog in one fetch that can take seconds to build,
    /// and a pause drops the fetch in flight (measured: with 1.25M records per
    /// partition, a pause every 100 ms kept the engine from ever receiving one).
    read_to_end: bool,
    /// The event-time merge of each partition's input topics.
    merge: Merge,
    /// Topic partitions (input index, partition) paused because their merge
    /// buffer is full.
    merge_paused: BTreeSet<(usize, u32)>,
    /// Per partition held: the wall-clock instant of its last input (or of
    /// its assignment). The wall clock moves a partition's clock only after
    /// `processing.quiet_period` without input.
    quiet_since: HashMap<u32, Timestamp>,
    /// Transactions begun so far, and the fault injection's period.
    transactions: u64,
    abort_every: Option<u64>,
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
                // Resuming everything resumed the full merge buffers too.
                for (input, id) in self.merge_paused.clone() {
                    self.pause_input(input, id, true);
                }
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
                if events == 0
                    && self.cfg.embedded()
                    && !fetch_paused
                    && self.read_to_end
                    && started.elapsed() >= IDLE_FETCH
                {
                    // Nothing came: stop asking until the next batch. The
                    // embedded broker answers empty fetches at once instead of
                    // holding them (Kafka waits `fetch.wait.max.ms`), which
                    // would spin a core. New input waits at most one commit
                    // interval.
                    self.set_fetching(false);
                    fetch_paused = true;
                }
                let polled = self.consumer.poll(left.min(Duration::from_millis(100)));
                // Decoded (and the message released) before the rebalance
                // callback's effects are handled: they need the whole loop.
                let item = match polled {
                    None => None,
                    Some(Err(e)) => {
                        if let Some((_, reason)) = self.consumer.client().fatal_error() {
                            // Fenced (another member with this instance id):
                            // this process must not go on.
                            return Err(RuntimeError::Kafka {
                                what: format!("the consumer stopped for good ({reason})"),
                                source: e,
                            });
                        }
                        if e.rdkafka_error_code() == Some(RDKafkaErrorCode::AutoOffsetReset) {
                            // A position left the log while it was read
                            // (retention overtook the engine): that
                            // partition fetches nothing until it is moved.
                            self.reset_out_of_range(&e)?;
                            continue;
                        }
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
                            .and_then(|ev| {
                                source::check_record(
                                    &ev,
                                    m.key(),
                                    m.timestamp().to_millis(),
                                    self.cfg.time.max_future_skew,
                                )
                                .map(|()| ev)
                            })
                            .inspect(|ev| self.note_partition(&ev.contact_id, m.partition()))
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
                    // Nothing came: a merge wait may have run out.
                    full = !self.drain_all(&mut budget, &mut events)?;
                    continue;
                };
                if !self.parts.contains_key(&(partition as u32)) {
                    // Fetched before a revocation: not ours any more.
                    self.stats.unowned.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(topic, partition, offset, "skipped: partition not held");
                    continue;
                }
                let next = self
                    .positions
                    .lock()
                    .ok()
                    .and_then(|p| p.get(&(topic.clone(), partition)).copied());
                let input = self.cfg.inputs.iter().position(|i| i.topic == topic);
                let (Some(input), false) = (input, next.is_some_and(|n| offset < n)) else {
                    // Folded already (a fetch repeated around a seek): never twice.
                    self.stats.refetched.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(topic, partition, offset, ?next, "skipped: folded already");
                    continue;
                };
                busy.insert(partition as u32);
                let id = partition as u32;
                let buffered = Buffered {
                    offset,
                    record: decoded,
                };
                if !self.merge.push(id, input, buffered) {
                    // Fetched again while it waits in the merge.
                    self.stats.refetched.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                if self.merge.len(id, input) >= MERGE_BUFFER
                    && self.merge_paused.insert((input, id))
                {
                    self.pause_input(input, id, true);
                }
                full = !self.drain(id, &mut budget, &mut events)?;
            }
            if !full {
                full = !self.drain_all(&mut budget, &mut events)?;
            }
            self.read_to_end = false;
            if !full {
                self.read_to_end = self.advance_idle(&busy, &mut budget)?;
            }
            self.commit()?;
            self.stats.batch_ends.fetch_add(1, Ordering::Release);
        }
        self.commit()?;
        Ok(())
    }

    /// Folds what partition `id`'s merge lets go now, in event-time order
    /// across its input topics. False when the batch's timer budget ran out.
    fn drain(
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
                let folded = position_of(positions, store, id, topic).ok().flatten();
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
                Err((reason, key, value)) => {
                    let rec = dead_letter_record(
                        &self.cfg.outputs.dead_letters,
                        key,
                        value,
                        (&topic, partition, b.offset),
                        &reason,
                    );
                    self.dead_letter(rec, &topic, partition, b.offset, &reason);
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
    fn drain_all(&mut self, budget: &mut usize, events: &mut usize) -> Result<bool, RuntimeError> {
        for id in self.merge.holding() {
            if !self.drain(id, budget, events)? {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Pauses or resumes fetching one input topic partition.
    fn pause_input(&self, input: usize, id: u32, pause: bool) {
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
    fn forget_buffered(&mut self, id: u32) {
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
    fn reset_out_of_range(&mut self, error: &KafkaError) -> Result<(), RuntimeError> {
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
    fn position(&self, id: u32, topic: &str) -> Result<Option<i64>, RuntimeError> {
        Ok(position_of(&self.positions, &self.store, id, topic)?)
    }

    /// Counts a record whose key hashes to another partition than the one it
    /// is on: its contact's events from a producer that partitions by Kafka's
    /// rule land elsewhere, and the two halves of its state never meet.
    fn note_partition(&self, contact: &str, partition: i32) {
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
        let late_before = part.late_events();
        let fed = part.feed(&self.store, &p.event, &mut self.out, budget);
        let late = part.late_events() - late_before;
        for t in self.out.drain(..) {
            self.sink.send_transition(&self.defs, &self.cfg, &t);
            self.stats.transitions.fetch_add(1, Ordering::Relaxed);
        }
        match fed {
            Ok(Fed::Folded(_)) => {
                self.stats.late_events.fetch_add(late, Ordering::Relaxed);
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
                let rec = dead_letter_record(
                    &self.cfg.outputs.dead_letters,
                    p.event.contact_id.as_bytes().to_vec(),
                    value,
                    (&p.topic, p.partition, p.offset),
                    &reason,
                );
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

    /// Settles an input record (folded or dead-lettered) in the running batch.
    fn advance_position(&mut self, topic: &str, partition: i32, next: i64) {
        self.batch_settled += 1;
        if let Some(part) = self.parts.get_mut(&(partition as u32)) {
            part.note_offset(topic, next);
        }
        if let Ok(mut pos) = self.positions.lock() {
            pos.insert((topic.to_string(), partition), next);
        }
    }

    /// Moves the clock of every partition that is read to its end and had
    /// no input for the quiet period to the wall clock minus the allowed
    /// lateness (never back). Whether every partition held had no input in
    /// this batch and is read to its end.
    fn advance_idle(
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
            if self.parts[&id].clock().is_some_and(|c| c >= target) {
                continue;
            }
            let Some(part) = self.parts.get_mut(&id) else {
                continue;
            };
            self.out.clear();
            part.advance_to(&self.store, target, &mut self.out, budget)?;
            for t in self.out.drain(..) {
                self.sink.send_transition(&self.defs, &self.cfg, &t);
                self.stats.transitions.fetch_add(1, Ordering::Relaxed);
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
    fn caught_up(
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
            let stepped = fetched
                .and_then(|f| f.find_partition(&input.topic, id as i32))
                .and_then(|e| match e.offset() {
                    Offset::Offset(o) => Some(o),
                    _ => None,
                });
            if folded.max(stepped.unwrap_or(folded)) < high {
                return Ok(false);
            }
        }
        Ok(true)
    }

    fn commit(&mut self) -> Result<(), RuntimeError> {
        let changed = self.parts.values().any(|p| p.has_changes());
        if !changed && self.sink.pending() == 0 {
            return Ok(());
        }
        match self.cfg.guarantee {
            Guarantee::AtLeastOnce => self.commit_acknowledged(),
            Guarantee::ExactlyOnce => self.commit_transaction(),
        }
    }

    /// At-least-once: waits for the batch's acknowledgements, then writes its
    /// state in one atomic batch, then tells the group (for lag monitoring only).
    fn commit_acknowledged(&mut self) -> Result<(), RuntimeError> {
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
    fn commit_transaction(&mut self) -> Result<(), RuntimeError> {
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
    fn write_batch(&mut self, ends: &HashMap<i32, i64>) -> Result<(), RuntimeError> {
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
        Ok(())
    }

    /// The consumed positions of every input partition held, for the group:
    /// in memory if the batch moved them, else as stored. Each transaction
    /// carries them even when its batch read no input (it only fired waits):
    /// the group fences a transaction's offsets by its generation, and that is
    /// what keeps a member that lost its partitions (a zombie woken after a
    /// long pause) from committing anything.
    fn group_offsets(&self) -> Result<TopicPartitionList, RuntimeError> {
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
    fn seek(&self, topic: &str, partition: i32, to: Offset) -> Result<(), RuntimeError> {
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
    fn rollback(&mut self) -> Result<(), RuntimeError> {
        self.paused = None;
        // Read and settled again by the batches to come.
        self.batch_settled = 0;
        self.out.clear();
        let ids: Vec<u32> = self.parts.keys().copied().collect();
        for id in ids {
            self.forget_buffered(id);
            let part = self.open_partition(id)?;
            self.parts.insert(id, part);
            for input in &self.cfg.inputs {
                let stored = self.store.offset(id, &input.topic)?;
                if let Ok(mut pos) = self.positions.lock() {
                    pos.remove(&(input.topic.clone(), id as i32));
                }
                let to = stored.map_or(Offset::Beginning, Offset::Offset);
                self.seek(&input.topic, id as i32, to)?;
            }
        }
        Ok(())
    }

    /// A partition's processing as the store has it.
    fn open_partition(&self, id: u32) -> Result<Partition, StoreError> {
        Partition::open(
            &self.store,
            Arc::clone(&self.defs),
            id,
            self.partitions,
            self.settings,
        )
    }

    fn handle_rebalances(&mut self) -> Result<(), RuntimeError> {
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
                        if let Ok(mut pos) = self.positions.lock() {
                            pos.remove(&(topic, p));
                        }
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
        if let Ok(mut held) = self.consumer.context().held.lock() {
            *held = self.parts.keys().copied().collect();
        }
        self.unassign_if_due()
    }

    /// Answers a revocation that kept its partitions assigned.
    fn unassign_if_due(&self) -> Result<(), RuntimeError> {
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

/// The dead letter of the input record at `at` (topic, partition, offset):
/// its coordinates and `reason` as headers, the original bytes as key and
/// value, bounded so that the dead letter itself always fits.
/// [`Loop::position`] over the loop's parts, for callers that hold other
/// parts of the loop borrowed.
fn position_of(
    positions: &Mutex<HashMap<(String, i32), i64>>,
    store: &Store,
    id: u32,
    topic: &str,
) -> Result<Option<i64>, StoreError> {
    let memory = positions
        .lock()
        .ok()
        .and_then(|p| p.get(&(topic.to_string(), id as i32)).copied());
    match memory {
        Some(n) => Ok(Some(n)),
        None => store.offset(id, topic),
    }
}

/// The end of a topic partition as librdkafka last heard it from a fetch
/// (the last stable offset for a `read_committed` consumer); None before
/// any fetch answered. No request: the merge asks for every record.
fn cached_end(consumer: &BaseConsumer<Ctx>, topic: &str, partition: i32) -> Option<i64> {
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

fn dead_letter_record(
    dead_letters: &str,
    key: Vec<u8>,
    value: Vec<u8>,
    at: (&str, i32, i64),
    reason: &str,
) -> OutRecord {
    let (topic, partition, offset) = at;
    let (key, value, truncated) = source::dead_letter_body(key, value);
    let mut reason = reason.as_bytes().to_vec();
    reason.truncate(4096);
    let mut headers = vec![
        (source::DLQ_TOPIC.into(), topic.as_bytes().to_vec()),
        (
            source::DLQ_PARTITION.into(),
            partition.to_string().into_bytes(),
        ),
        (source::DLQ_OFFSET.into(), offset.to_string().into_bytes()),
        (source::DLQ_REASON.into(), reason),
    ];
    if let Some(t) = truncated {
        headers.push((source::DLQ_TRUNCATED.into(), t.into_bytes()));
    }
    OutRecord {
        topic: dead_letters.to_string(),
        key,
        value,
        headers,
        partition: None,
    }
}

/// The input topics' common partition count; every output topic must exist,
/// and the changelog (exactly-once mode) must be partitioned like the input.
fn input_partitions(consumer: &BaseConsumer<Ctx>, cfg: &EngineConfig) -> Result<u32, RuntimeError> {
    let mut counts = Vec::new();
    let mut outputs = vec![
        &cfg.outputs.transitions,
        &cfg.outputs.sends,
        &cfg.outputs.dead_letters,
    ];
    if cfg.guarantee == Guarantee::ExactlyOnce {
        outputs.push(&cfg.outputs.changelog);
    }
    let mut changelog = None;
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
        } else if topic == &cfg.outputs.changelog {
            changelog = Some(n as u32);
        }
    }
    let first = counts[0].1;
    if let Some(n) = changelog.filter(|n| *n != first) {
        counts.push((cfg.outputs.changelog.clone(), n));
    }
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
        named("p", codes)
    }

    fn named(name: &str, codes: &[&str]) -> Definitions {
        Definitions::new(
            vec![],
            vec![PoolDef {
                name: name.into(),
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

    #[test]
    fn a_renamed_pool_is_refused_and_a_new_one_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        load_pools(&store, &named("spring", &["A", "B"])).unwrap();
        match load_pools(&store, &named("autumn", &["X", "B"])) {
            Err(RuntimeError::PoolRenamed { old, new }) => {
                assert_eq!((old.as_str(), new.as_str()), ("spring", "autumn"));
            }
            other => panic!("{other:?}"),
        }
        load_pools(&store, &named("autumn", &["X", "Y"])).unwrap();
    }
}
