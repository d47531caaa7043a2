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

pub(crate) mod checks;
mod clock;
mod commit;
pub mod embedded;
mod error;
mod idle;
mod input;
pub(crate) mod merge;
mod metrics;
pub mod partition;
mod positions;
mod rebalance;
pub mod restore;
mod stats;

pub use checks::load_pools;
pub use clock::{ManualClock, SystemClock, WallClock};
pub use error::RuntimeError;
use error::kafka;
use positions::Positions;
use rebalance::{Ctx, Restorer};
pub use stats::RunStats;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::Message;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::RDKafkaErrorCode;

use crate::admin::{AdminServer, Health};
use crate::config::engine::{EngineConfig, Guarantee};
use crate::domain::{Definitions, Event, Timestamp, Transition};
use crate::sink::Sink;
use crate::source;
use crate::store::rocks::Store;
use merge::{Buffered, Merge};
use partition::{Partition, PartitionSettings};

/// Fault injection for tests: `WINBACK_TEST_ABORT_EVERY=N` aborts every Nth
/// transaction instead of committing it, as an abortable broker error would.
pub const ENV_ABORT_EVERY: &str = "WINBACK_TEST_ABORT_EVERY";

/// A batch that has polled nothing for this long stops fetching until the
/// next, if every partition held was read to its end.
const IDLE_FETCH: Duration = Duration::from_millis(100);

/// Records one input topic partition may hold in the merge before its
/// fetching pauses (a topic running ahead of the others); it resumes at half.
const MERGE_BUFFER: usize = 20_000;

/// Everything one `winback run` needs, resolved.
pub struct RunParams {
    pub config: EngineConfig,
    pub definitions: Arc<Definitions>,
    pub bootstrap: String,
    pub clock: Arc<dyn WallClock>,
    pub stop: Arc<AtomicBool>,
    pub stats: Arc<RunStats>,
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

    // The run's own recorder, only with a server to read it: metrics stay
    // apart from any other run in the process (tests run several).
    let health = Arc::new(Health::default());
    let (recorder, _admin) = match cfg.admin_listen {
        Some(addr) => {
            let recorder = metrics::recorder(cfg.gauge_idle_timeout);
            let server = AdminServer::start(
                addr,
                recorder.handle(),
                Arc::clone(&health),
                Arc::clone(&store),
                Arc::clone(&defs),
            )?;
            stats.admin_addr.set(server.addr).ok();
            (Some(recorder), Some(server))
        }
        None => (None, None),
    };

    let positions = Positions::default();
    let restorer = (cfg.guarantee == Guarantee::ExactlyOnce).then(|| Restorer {
        cfg: cfg.clone(),
        defs: Arc::clone(&defs),
        bootstrap: bootstrap.clone(),
        stop: Arc::clone(&stop),
        stats: Arc::clone(&stats),
    });
    let ctx = Ctx {
        store: Arc::clone(&store),
        positions: positions.clone(),
        events: Mutex::new(Vec::new()),
        restorer,
        health: Arc::clone(&health),
        offset_out_of_range: cfg.offset_out_of_range,
        defer_unassign: AtomicBool::new(true),
        unassign_due: AtomicBool::new(false),
        kafka_stats: Default::default(),
    };
    let mut consumer_config = source::consumer_config(&cfg, &bootstrap);
    source::stats::enable(&mut consumer_config, &cfg);
    let consumer: BaseConsumer<Ctx> = consumer_config
        .create_with_context(ctx)
        .map_err(kafka("create the consumer"))?;

    let partitions = checks::input_partitions(&consumer, &cfg, &checks::run_outputs(&cfg))?;
    health.set_input_partitions(partitions);
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
            keep_history: cfg.contact_history,
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
        tally: metrics::Tally::default(),
        health,
        abort_every: std::env::var(ENV_ABORT_EVERY)
            .ok()
            .and_then(|v| v.parse().ok())
            .filter(|n| *n > 0),
    };
    let result = match &recorder {
        Some(r) => ::metrics::with_local_recorder(r, || {
            metrics::describe();
            rt.run()
        }),
        None => rt.run(),
    };
    rt.health.stopping();
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
    positions: Positions,
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
    /// The running batch's counts for the metrics, recorded at its commit.
    tally: metrics::Tally,
    health: Arc<Health>,
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
                                    .map_err(|e| {
                                        source::Rejected::new(
                                            source::REJECT_UNROUTABLE,
                                            e.to_string(),
                                        )
                                    })
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
                                    r,
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
                let next = self.positions.get(&topic, partition);
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
            self.health.batch_ended();
            self.publish(started);
        }
        self.commit()?;
        Ok(())
    }
}
