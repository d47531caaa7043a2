//! Kafka helpers for the integration tests: the broker (the Apache Kafka that
//! `tests/run.sh` starts, named by `WINBACK_TEST_BROKERS`), fresh
//! random topic and group names, producing, reading topics, and running the
//! engine in a thread with a clock the test moves.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::Message;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Headers;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};

use winback::config::engine::{EngineConfig, parse_engine};
use winback::domain::{Definitions, Timestamp};
use winback::runtime::{self, ManualClock, RunParams, RunStats, RuntimeError};

/// The test broker: Apache Kafka, started by `tests/run.sh` (or by hand with
/// `deploy/dev-kafka/kafka.sh start DIR`) and named by `WINBACK_TEST_BROKERS`.
/// The tests hold the engine to what users run, so there is no fallback.
pub fn brokers() -> String {
    static BROKERS: OnceLock<String> = OnceLock::new();
    BROKERS
        .get_or_init(|| match std::env::var("WINBACK_TEST_BROKERS") {
            Ok(b) if !b.is_empty() => b,
            _ => panic!(
                "WINBACK_TEST_BROKERS is not set: run the tests with tests/run.sh, which starts \
                 Apache Kafka, or start one with deploy/dev-kafka/kafka.sh start DIR and set \
                 WINBACK_TEST_BROKERS to the address it prints"
            ),
        })
        .clone()
}

/// Held by the tests that run `winback` processes against the group's
/// timeouts (sessions of seconds): one at a time, so that none of them is
/// starved of CPU by another on a 2-core machine. The others run alongside.
pub fn exclusive() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    // A failed test poisons it; the next one still runs alone.
    LOCK.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A name no other test (or earlier run) uses.
pub fn unique(prefix: &str) -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!(
        "{prefix}-{}-{nanos}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

pub struct Topics {
    pub input: String,
    pub transitions: String,
    pub sends: String,
    pub dead_letters: String,
    pub changelog: String,
    pub group: String,
}

impl Topics {
    pub fn fresh() -> Topics {
        let t = unique("wb");
        Topics {
            input: format!("{t}.checkouts"),
            transitions: format!("{t}.transitions"),
            sends: format!("{t}.sends"),
            dead_letters: format!("{t}.dlq"),
            changelog: format!("{t}.changelog"),
            group: format!("{t}.group"),
        }
    }

    /// Creates every topic with `partitions` partitions, the changelog
    /// compacted (as `run` requires).
    pub fn create(&self, partitions: i32) {
        create_topics(
            &[
                &self.input,
                &self.transitions,
                &self.sends,
                &self.dead_letters,
            ],
            partitions,
        );
        create_topics_with(
            &[&self.changelog],
            partitions,
            &[("cleanup.policy", "compact")],
        );
    }

    /// An engine config over these topics, state in `state_dir`.
    pub fn config(&self, state_dir: &Path, conversations: &[&str], extra: &str) -> EngineConfig {
        self.config_on(&brokers(), state_dir, conversations, extra)
    }

    pub fn config_on(
        &self,
        bootstrap: &str,
        state_dir: &Path,
        conversations: &[&str],
        extra: &str,
    ) -> EngineConfig {
        let text = self.config_text(bootstrap, state_dir, conversations, extra);
        parse_engine(Path::new("test.toml"), &text, std::iter::empty())
            .unwrap_or_else(|e| panic!("test config: {:?}", e.diagnostics))
    }

    /// The engine config written to `dir/winback.toml` for the `winback`
    /// binary (state in `state_dir`, the seed conversations): its path.
    pub fn config_file(&self, dir: &Path, state_dir: &Path) -> std::path::PathBuf {
        let path = dir.join("winback.toml");
        std::fs::write(
            &path,
            self.config_text(&brokers(), state_dir, &crate::common::SEEDS, ""),
        )
        .expect("write the engine config");
        path
    }

    /// The engine config's text (for a file given to the `winback` binary).
    pub fn config_text(
        &self,
        bootstrap: &str,
        state_dir: &Path,
        conversations: &[&str],
        extra: &str,
    ) -> String {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let convs: Vec<String> = conversations
            .iter()
            .map(|c| format!("{:?}", root.join(c).display().to_string()))
            .collect();
        format!(
            r#"conversations = [{convs}]
state_dir = {state:?}
[broker]
bootstrap_servers = {brokers:?}
group_id = {group:?}
[[input]]
topic = {input:?}
format = "json"
[output]
transitions = {transitions:?}
sends = {sends:?}
dead_letters = {dlq:?}
changelog = {changelog:?}
[admin]
listen = "127.0.0.1:0"
[processing]
commit_interval_ms = 200
{extra}
"#,
            convs = convs.join(", "),
            state = state_dir.display().to_string(),
            brokers = bootstrap,
            group = self.group,
            input = self.input,
            transitions = self.transitions,
            sends = self.sends,
            dlq = self.dead_letters,
            changelog = self.changelog,
        )
    }
}

/// Creates topics on the test broker.
pub fn create_topics(names: &[&str], partitions: i32) {
    create_topics_with(names, partitions, &[]);
}

fn admin() -> rdkafka::admin::AdminClient<rdkafka::client::DefaultClientContext> {
    ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .create()
        .expect("admin client")
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(f)
}

/// Creates topics with topic-level settings.
pub fn create_topics_with(names: &[&str], partitions: i32, settings: &[(&str, &str)]) {
    let topics: Vec<_> = names
        .iter()
        .map(|n| {
            let mut t = rdkafka::admin::NewTopic::new(
                n,
                partitions,
                rdkafka::admin::TopicReplication::Fixed(1),
            );
            for (k, v) in settings {
                t = t.set(k, v);
            }
            t
        })
        .collect();
    let res = block_on(admin().create_topics(&topics, &rdkafka::admin::AdminOptions::new()))
        .expect("create topics");
    for r in res {
        r.expect("topic created");
    }
}

/// Sends `signal` (e.g. "STOP", "CONT") to a child process.
pub fn signal(child: &std::process::Child, signal: &str) {
    let ok = std::process::Command::new("kill")
        .args([&format!("-{signal}"), &child.id().to_string()])
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "kill -{signal} failed");
}

/// Produces records of up to 4 MB (the producer's limit raised to match).
pub fn produce_large(topic: &str, records: &[(String, Vec<u8>)]) {
    let p: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("partitioner", "murmur2_random")
        .set("message.max.bytes", "4000000")
        .create()
        .expect("producer");
    send_all(&p, topic, records, |_| None);
}

/// The offset `group` committed for `topic`'s `partition`, if any.
pub fn group_offset(group: &str, topic: &str, partition: i32) -> Option<i64> {
    let c = group_client(group);
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition(topic, partition);
    let got = c
        .committed_offsets(tpl, Duration::from_secs(10))
        .expect("committed offsets");
    match got.find_partition(topic, partition).map(|e| e.offset()) {
        Some(Offset::Offset(o)) => Some(o),
        _ => None,
    }
}

/// A client of `group`'s offsets that never joins it.
fn group_client(group: &str) -> BaseConsumer {
    ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer")
}

/// Grows topics to `partitions` partitions.
pub fn add_partitions(names: &[&str], partitions: usize) {
    let parts: Vec<_> = names
        .iter()
        .map(|n| rdkafka::admin::NewPartitions::new(n, partitions))
        .collect();
    let res = block_on(admin().create_partitions(&parts, &rdkafka::admin::AdminOptions::new()))
        .expect("create partitions");
    for r in res {
        r.expect("partitions added");
    }
}

/// Deletes the records of `topic`'s partition `partition` before `offset`,
/// as retention would.
pub fn delete_records(topic: &str, partition: i32, offset: i64) {
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, partition, Offset::Offset(offset))
        .expect("offset");
    let res = block_on(admin().delete_records(&tpl, &rdkafka::admin::AdminOptions::new()))
        .expect("delete records");
    for e in res.elements() {
        assert!(e.error().is_ok(), "delete records: {:?}", e.error());
    }
}

/// Produces records in one transaction of a transactional producer (its
/// commit marker ends the partition), as an exactly-once pipeline upstream does.
pub fn produce_transactional(topic: &str, records: &[(String, Vec<u8>)]) {
    let p: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("partitioner", "murmur2_random")
        .set("transactional.id", unique("upstream"))
        .create()
        .expect("transactional producer");
    p.init_transactions(Duration::from_secs(30))
        .expect("init transactions");
    p.begin_transaction().expect("begin");
    send_all(&p, topic, records, |_| None);
    p.commit_transaction(Duration::from_secs(30))
        .expect("commit");
}

/// Produces records (key, value) to `topic`, waiting for every acknowledgement.
pub fn produce(topic: &str, records: &[(String, Vec<u8>)]) {
    produce_on(&brokers(), topic, records)
}

pub fn produce_on(bootstrap: &str, topic: &str, records: &[(String, Vec<u8>)]) {
    produce_to(bootstrap, topic, records, |_| None)
}

/// Produces records to the partition `partition` picks (None: by key hash).
fn produce_to(
    bootstrap: &str,
    topic: &str,
    records: &[(String, Vec<u8>)],
    partition: impl Fn(&str) -> Option<i32>,
) {
    send_all(&producer(bootstrap), topic, records, partition);
}

fn producer(bootstrap: &str) -> BaseProducer {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("enable.idempotence", "true")
        .set("partitioner", "murmur2_random")
        .create()
        .expect("producer")
}

/// Sends and flushes: everything is acknowledged on return.
fn send_all(
    p: &BaseProducer,
    topic: &str,
    records: &[(String, Vec<u8>)],
    partition: impl Fn(&str) -> Option<i32>,
) {
    for (k, v) in records {
        let mut rec = BaseRecord::to(topic).key(k.as_bytes()).payload(v);
        if let Some(p) = partition(k) {
            rec = rec.partition(p);
        }
        loop {
            match p.send(rec) {
                Ok(()) => break,
                Err((_, r)) => {
                    rec = r;
                    p.poll(Duration::from_millis(20));
                }
            }
        }
    }
    p.flush(Duration::from_secs(30)).expect("all produced");
}

/// The wall clock at which an idle partition's clock reaches `t`: the
/// allowed lateness later (the engines here run with the default).
pub fn wall_at(t: Timestamp) -> Timestamp {
    t.saturating_add(winback::config::engine::DEFAULT_ALLOWED_LATENESS)
}

/// Moves a live engine's wall clock so that its idle partitions' clocks
/// reach `t`. In two steps: first to the quiet period before, then, once the
/// engine ended two batches, to `t` plus the allowed lateness. A partition's
/// quiet period is measured by this clock, which does not move by itself: a
/// partition that had input in the batch under way at the first step is
/// quiet at the second.
pub fn advance_wall(clock: &ManualClock, stats: &RunStats, t: Timestamp) {
    use winback::runtime::WallClock;
    let quiet = winback::config::engine::DEFAULT_QUIET_PERIOD;
    let first = wall_at(t).saturating_sub(quiet);
    if clock.now() < first {
        clock.set(first);
    }
    let ended = stats.batch_ends.load(Ordering::Acquire);
    let deadline = Instant::now() + Duration::from_secs(60);
    while stats.batch_ends.load(Ordering::Acquire) < ended + 2 {
        assert!(
            Instant::now() < deadline,
            "the engine ended no batch: {stats:?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    clock.set(wall_at(t));
}

/// One record read back.
#[derive(Debug, Clone)]
pub struct Read {
    pub key: Option<Vec<u8>>,
    pub value: Vec<u8>,
    /// No value at all (a compaction tombstone).
    pub tombstone: bool,
    pub headers: BTreeMap<String, String>,
}

/// Reads `topic` from the beginning until `want` records arrived or
/// `timeout` passed; returns what arrived.
pub fn read(topic: &str, want: usize, timeout: Duration) -> Vec<Read> {
    read_on(&brokers(), topic, want, timeout)
}

pub fn read_on(bootstrap: &str, topic: &str, want: usize, timeout: Duration) -> Vec<Read> {
    let (c, _) = reader(bootstrap, topic);
    let deadline = Instant::now() + timeout;
    let mut out = Vec::new();
    while out.len() < want && Instant::now() < deadline {
        if let Some(Ok(m)) = c.poll(Duration::from_millis(100)) {
            out.push(Read::of(&m));
        }
    }
    out
}

/// Every committed record of `topic` up to its end as it is now: for the
/// output once the engines stopped. A read for "one more than expected, or a
/// few seconds" cut 99,500 records short on a loaded machine (it could not
/// read them in the time), which looked like lost output.
pub fn read_to_end(topic: &str, timeout: Duration) -> Vec<Read> {
    let (c, parts) = reader(&brokers(), topic);
    let mut ends = Vec::new();
    for p in 0..parts {
        let (_, high) = c
            .fetch_watermarks(topic, p, Duration::from_secs(10))
            .expect("watermarks");
        ends.push(high);
    }
    let deadline = Instant::now() + timeout;
    let mut out = Vec::new();
    let mut since_check = 0usize;
    loop {
        let polled = c.poll(Duration::from_millis(100));
        if let Some(Ok(m)) = &polled {
            out.push(Read::of(m));
            since_check += 1;
        }
        // The position, not a count: with read_committed it steps over
        // transaction markers and aborted records, which are never read.
        if polled.is_none() || since_check >= 1000 {
            since_check = 0;
            let pos = c.position().expect("position");
            let at_end = (0..parts).all(|p| {
                let end = ends[p as usize];
                end == 0
                    || matches!(
                        pos.find_partition(topic, p).map(|e| e.offset()),
                        Some(Offset::Offset(o)) if o >= end
                    )
            });
            if at_end {
                return out;
            }
        }
        assert!(
            Instant::now() < deadline,
            "{topic}: not read to its end {ends:?} in {timeout:?} ({} records read)",
            out.len()
        );
    }
}

fn reader(bootstrap: &str, topic: &str) -> (BaseConsumer, i32) {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", unique("reader"))
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .set("receive.message.max.bytes", "2147483647")
        .create()
        .expect("consumer");
    let md = c
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .expect("metadata");
    let parts = md.topics()[0].partitions().len() as i32;
    let mut tpl = TopicPartitionList::new();
    for p in 0..parts {
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .expect("tpl");
    }
    c.assign(&tpl).expect("assign");
    (c, parts)
}

impl Read {
    fn of(m: &rdkafka::message::BorrowedMessage<'_>) -> Self {
        let mut headers = BTreeMap::new();
        if let Some(h) = m.headers() {
            for h in h.iter() {
                headers.insert(
                    h.key.to_string(),
                    String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned(),
                );
            }
        }
        Read {
            key: m.key().map(<[u8]>::to_vec),
            value: m.payload().unwrap_or_default().to_vec(),
            tombstone: m.payload().is_none(),
            headers,
        }
    }
}

/// Exactly `n` records in `topic`: waits up to `timeout` for them, then
/// for anything more that a little longer would bring.
pub fn read_exactly(topic: &str, n: usize, timeout: Duration) -> Vec<Read> {
    let got = read(topic, n, timeout);
    assert_eq!(
        got.len(),
        n,
        "{topic}: {} of {n} records arrived",
        got.len()
    );
    std::thread::sleep(Duration::from_secs(2));
    let all = read_to_end(topic, READ_BACK);
    assert_eq!(
        all.len(),
        n,
        "{topic}: {} records where exactly {n} were expected",
        all.len()
    );
    all
}

/// How long reading a stopped topic back may take: generous, since only a
/// hang reaches it.
pub const READ_BACK: Duration = Duration::from_secs(120);

/// Transition records as the JSON lines `simulate` prints.
pub fn as_json(records: &[Read]) -> Vec<String> {
    records
        .iter()
        .map(|r| {
            let t = winback::sink::decode_transition(&r.value).expect("a transition");
            winback::wire::proto::transition_json(&t).expect("complete")
        })
        .collect()
}

/// `winback run` in a thread.
pub struct Running {
    pub stats: Arc<RunStats>,
    pub clock: Arc<ManualClock>,
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<Result<(), RuntimeError>>>,
}

impl Running {
    /// [`advance_wall`] for this engine.
    pub fn advance_wall(&self, t: Timestamp) {
        advance_wall(&self.clock, &self.stats, t);
    }

    pub fn start(mut cfg: EngineConfig, defs: Arc<Definitions>, clock: Timestamp) -> Running {
        if let Ok(contexts) = std::env::var("WINBACK_TEST_KAFKA_DEBUG") {
            // Diagnosis of a failure that does not repeat: librdkafka's
            // debug contexts (e.g. "cgrp,eos") and winback's debug log, shown
            // with the failing test's output.
            cfg.kafka.insert("debug".into(), contexts);
            let _ = tracing_subscriber::fmt()
                .with_test_writer()
                .with_env_filter("info,winback=debug,librdkafka=debug")
                .try_init();
        }
        let stop = Arc::new(AtomicBool::new(false));
        let stats = Arc::new(RunStats::default());
        let clock = Arc::new(ManualClock::new(clock));
        let params = RunParams {
            bootstrap: cfg.bootstrap_servers.clone(),
            config: cfg,
            definitions: defs,
            clock: clock.clone(),
            stop: Arc::clone(&stop),
            stats: Arc::clone(&stats),
        };
        let handle = std::thread::spawn(move || runtime::run(params));
        Running {
            stats,
            clock,
            stop,
            handle: Some(handle),
        }
    }

    /// Waits until the engine has folded (or dead-lettered) `n` input records
    /// and written the batches that hold them.
    pub fn wait_events(&self, n: u64, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while self.stats.events_written.load(Ordering::Acquire) < n {
            assert!(
                Instant::now() < deadline,
                "only {} of {n} events written ({} taken)",
                self.stats.events_written.load(Ordering::Acquire),
                self.stats.events.load(Ordering::Acquire)
            );
            if self.handle.as_ref().is_some_and(|h| h.is_finished()) {
                panic!("the engine stopped early");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Whether the engine has returned (stopped on an error, or as told).
    pub fn finished(&self) -> bool {
        self.handle.as_ref().is_none_or(|h| h.is_finished())
    }

    /// Waits for an engine that must stop on its own (on an error) within
    /// `timeout`, and returns what it returned.
    pub fn stopped_on_its_own(self, timeout: Duration) -> Result<(), RuntimeError> {
        let deadline = Instant::now() + timeout;
        while !self.finished() {
            assert!(Instant::now() < deadline, "the engine went on");
            std::thread::sleep(Duration::from_millis(50));
        }
        self.stop_result()
    }

    /// Graceful stop: finishes the batch and writes it.
    pub fn stop(self) {
        self.stop_result().expect("clean stop");
    }

    /// Stops and returns what the engine returned.
    pub fn stop_result(mut self) -> Result<(), RuntimeError> {
        self.stop.store(true, Ordering::Release);
        match self.handle.take() {
            Some(h) => h.join().expect("engine thread"),
            None => Ok(()),
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// A deterministic stream of purchases (and list events) for `contacts`
/// contacts over about `days` days, as JSON lines in time order.
pub fn purchase_stream(contacts: usize, days: i64, seed: u64) -> Vec<String> {
    purchase_stream_from(1_767_225_600_000, contacts, days, seed) // 2026-01-01
}

/// [`purchase_stream`] starting at `start` (epoch milliseconds).
pub fn purchase_stream_from(start: i64, contacts: usize, days: i64, seed: u64) -> Vec<String> {
    let mut x = seed | 1;
    let mut rnd = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut evs: Vec<(i64, String)> = Vec::new();
    for c in 0..contacts {
        let id = format!("c{c:04}");
        if rnd() % 4 != 0 {
            evs.push((
                start,
                format!(r#"{{"event_id":"s-{id}","name":"subscribe","contact_id":"{id}","list_id":"master","occurred_at":"{}"}}"#, ts(start)),
            ));
        }
        let purchases = 1 + rnd() % 4;
        for k in 0..purchases {
            let at = start + 3_600_000 + (rnd() % (days as u64 * 86_400)) as i64 * 1000;
            evs.push((
                at,
                format!(r#"{{"event_id":"o-{id}-{k}","name":"checkout","contact_id":"{id}","occurred_at":"{}","merchant_id":"m{}","order_id":"o-{id}-{k}","total":{}.5}}"#, ts(at), rnd() % 3, 10 + rnd() % 90),
            ));
        }
        if rnd() % 8 == 0 {
            let at = start + (rnd() % (days as u64 * 86_400)) as i64 * 1000;
            evs.push((
                at,
                format!(r#"{{"event_id":"u-{id}","name":"unsubscribe","contact_id":"{id}","list_id":"master","occurred_at":"{}"}}"#, ts(at)),
            ));
        }
    }
    evs.sort_by_key(|(t, _)| *t);
    evs.into_iter().map(|(_, l)| l).collect()
}

fn ts(ms: i64) -> String {
    Timestamp(ms).to_string()
}

/// A subscribe event to the master list, which the seed conversations mail.
pub fn subscribed(contact: &str, at: Timestamp) -> String {
    format!(
        r#"{{"event_id":"s-{contact}","name":"subscribe","contact_id":"{contact}","list_id":"master","occurred_at":"{at}"}}"#
    )
}

/// Lines as keyed records (the contact id is the key).
pub fn keyed(lines: &[String]) -> Vec<(String, Vec<u8>)> {
    lines
        .iter()
        .map(|l| {
            let ev = winback::wire::json::decode_event(l).expect("valid test event");
            (ev.contact_id, l.as_bytes().to_vec())
        })
        .collect()
}

/// The partition a contact's events go to: the rule producers must follow
/// (Kafka's murmur2), so that the oracle and the engine agree.
pub fn partition_of(contact: &str, partitions: i32) -> i32 {
    winback::source::partition_for_key(contact.as_bytes(), partitions as u32) as i32
}

/// Produces keyed lines, each to `partition_of` its contact.
pub fn produce_partitioned(topic: &str, lines: &[String], partitions: i32) {
    produce_to(&brokers(), topic, &keyed(lines), |k| {
        Some(partition_of(k, partitions))
    });
}

/// [`produce_partitioned`] spread over time: `slices` parts, one every `gap`,
/// each flushed before the pause, so that a consumer sees a live stream.
pub fn produce_partitioned_paced(
    topic: &str,
    lines: &[String],
    partitions: i32,
    slices: usize,
    gap: Duration,
) {
    produce_partitioned_live(
        topic,
        lines,
        partitions,
        slices,
        gap,
        &AtomicBool::new(false),
    );
}

/// [`produce_partitioned_paced`] that sends the slices left without pauses
/// once `hurry` is set.
pub fn produce_partitioned_live(
    topic: &str,
    lines: &[String],
    partitions: i32,
    slices: usize,
    gap: Duration,
    hurry: &AtomicBool,
) {
    let records = keyed(lines);
    let per = records.len().div_ceil(slices.max(1)).max(1);
    let p = producer(&brokers());
    for (i, slice) in records.chunks(per).enumerate() {
        if i > 0 && !hurry.load(Ordering::Acquire) {
            std::thread::sleep(gap);
        }
        send_all(&p, topic, slice, |k| Some(partition_of(k, partitions)));
    }
}

/// `simulate` per partition over `produce_partitioned` input: each
/// partition's simulator, with its share of the coupon pools, after folding
/// its events (and moving its clock to `until`), and the transitions it made.
pub fn simulators_partitioned(
    defs: &Arc<Definitions>,
    lines: &[String],
    until: Option<Timestamp>,
    partitions: i32,
) -> Vec<(winback::sim::Simulator, Vec<winback::domain::Transition>)> {
    (0..partitions)
        .map(|p| {
            let mut sim = winback::sim::Simulator::for_partition(
                Arc::clone(defs),
                p as usize,
                partitions as usize,
            );
            let mut got = Vec::new();
            for l in lines {
                if let Ok(ev) = winback::wire::json::decode_event(l)
                    && partition_of(&ev.contact_id, partitions) == p
                {
                    let _ = sim.feed(&ev, &mut got);
                }
            }
            if let Some(t) = until {
                sim.advance_to(t, &mut got);
            }
            (sim, got)
        })
        .collect()
}

/// The oracle for `produce_partitioned` input: `simulate` per partition,
/// each with its share of the coupon pools.
pub fn simulate_partitioned(
    defs: &Arc<Definitions>,
    lines: &[String],
    until: Timestamp,
    partitions: i32,
) -> Vec<String> {
    simulators_partitioned(defs, lines, Some(until), partitions)
        .iter()
        .flat_map(|(_, got)| got.iter())
        .map(|t| winback::wire::json::encode_transition(defs, t))
        .collect()
}

/// `simulate` over the same lines, to `until`: the oracle.
pub fn simulate(defs: &Arc<Definitions>, lines: &[String], until: Timestamp) -> Vec<String> {
    let mut sim = winback::sim::Simulator::new(Arc::clone(defs));
    let mut out = Vec::new();
    for l in lines {
        if let Ok(ev) = winback::wire::json::decode_event(l) {
            let _ = sim.feed(&ev, &mut out);
        }
    }
    sim.advance_to(until, &mut out);
    out.iter()
        .map(|t| winback::wire::json::encode_transition(defs, t))
        .collect()
}

/// The engines' committed output against `expected`: reads `topic` until it
/// holds as many records (or `timeout` passed), lets `stop` end the engines,
/// then reads everything committed once more and compares.
pub fn stop_and_compare(topic: &str, expected: &[String], timeout: Duration, stop: impl FnOnce()) {
    read(topic, expected.len(), timeout);
    // Anything more would show up within a few commit intervals.
    std::thread::sleep(Duration::from_secs(1));
    stop();
    let got = read_to_end(topic, READ_BACK);
    assert_same(&as_json(&got), expected);
}

/// Equal as multisets; on failure shows the first differences, not everything.
pub fn assert_same(got: &[String], want: &[String]) {
    let mut g = got.to_vec();
    let mut w = want.to_vec();
    g.sort();
    w.sort();
    if g != w {
        // Both sorted: a search each (tens of thousands of lines in a debug build).
        let only_got: Vec<&String> = g
            .iter()
            .filter(|l| w.binary_search(l).is_err())
            .take(5)
            .collect();
        let only_want: Vec<&String> = w
            .iter()
            .filter(|l| g.binary_search(l).is_err())
            .take(5)
            .collect();
        let mut counts: BTreeMap<&String, (usize, usize)> = BTreeMap::new();
        for l in &g {
            counts.entry(l).or_default().0 += 1;
        }
        for l in &w {
            counts.entry(l).or_default().1 += 1;
        }
        let extra: Vec<_> = counts
            .iter()
            .filter(|(_, (g, w))| g > w && *w > 0)
            .take(5)
            .collect();
        panic!(
            "{} transitions, expected {}\nonly in the output: {only_got:#?}\nonly expected: {only_want:#?}\nmore often than expected (got, expected): {extra:#?}",
            g.len(),
            w.len()
        );
    }
}

/// A `winback run` child process, killed when dropped (a failing test
/// leaves no engine running behind it).
pub struct Proc(pub std::process::Child);

impl std::ops::Deref for Proc {
    type Target = std::process::Child;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl std::ops::DerefMut for Proc {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// `winback run --config config` as a child process, its log in `log`.
pub fn spawn_run(config: &Path, log: &Path) -> Proc {
    spawn_run_with(config, log, &[])
}

/// As [`spawn_run`], with extra environment variables.
pub fn spawn_run_with(config: &Path, log: &Path, env: &[(&str, &str)]) -> Proc {
    let log = std::fs::File::create(log).expect("log file");
    Proc(
        std::process::Command::new(env!("CARGO_BIN_EXE_winback"))
            .args(["run", "--config", config.to_str().expect("UTF-8 path")])
            .env("RUST_LOG", "info")
            .envs(env.iter().copied())
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start winback run"),
    )
}

/// Stops a `winback run` child with SIGTERM; true if it exited with success.
pub fn terminate(child: &mut std::process::Child) -> bool {
    let sent = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .is_ok_and(|s| s.success());
    sent && child.wait().is_ok_and(|s| s.success())
}

/// Reads `topic` until it holds `want` records or `timeout` passed (each
/// read from the start; a short read is retried).
pub fn read_until(topic: &str, want: usize, timeout: Duration) -> Vec<Read> {
    let deadline = Instant::now() + timeout;
    let mut got = Vec::new();
    while got.len() < want && Instant::now() < deadline {
        got = read(topic, want, Duration::from_secs(5));
    }
    got
}

/// The last `n` lines of a log file.
pub fn log_tail(path: &Path, n: usize) -> String {
    let log = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Commits offsets for `group` from outside it (no member joins), as
/// `(partition, next offset)` of `topic`.
pub fn commit_group_offsets(group: &str, topic: &str, offsets: &[(i32, i64)]) {
    let c = group_client(group);
    let mut tpl = TopicPartitionList::new();
    for &(p, o) in offsets {
        tpl.add_partition_offset(topic, p, Offset::Offset(o))
            .expect("offset");
    }
    c.commit(&tpl, rdkafka::consumer::CommitMode::Sync)
        .expect("group offsets committed");
}
