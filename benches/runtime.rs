//! The runtime's benchmarks: `cargo bench --bench runtime -- NAME` with NAME
//! one of `catchup`, `waits`, `storm` (one per process, so that each
//! measures memory on its own). The broker is the Apache Kafka named by
//! `WINBACK_TEST_BROKERS`: `deploy/dev-kafka/with-kafka.sh cargo bench --bench
//! runtime -- NAME` starts a fresh one for the run (docs/benchmarks.md).
//!
//! - `catchup`: 1M contacts, 5M purchase events (`WINBACK_BENCH_CONTACTS`,
//!   `WINBACK_BENCH_EVENTS`; `WINBACK_BENCH_CONTACT_HISTORY=off` without the
//!   contacts' kept transitions) over a year in a 4-partition JSON topic; the raw
//!   consume rate of that topic with the same client and settings, then
//!   `winback run` catching up on it from an empty state (seed 000; its waits
//!   fire as event time moves), end to end: events/s and the ratio. Then
//!   (unless `WINBACK_BENCH_ALONE=off`) the output alone: the same
//!   transitions produced through the sink without the engine.
//! - `waits`: 10M contacts (`WINBACK_BENCH_WAITS`) each entering seed 000's
//!   90-day wait, through the partition processor and RocksDB (no broker):
//!   resident memory of the process, timers held in memory, and disk bytes
//!   per pending wait.
//! - `storm`: 1M contacts (`WINBACK_BENCH_STORM`) buy within the same minute;
//!   after catching up, the wall clock jumps 90 days: waits fired and sent
//!   (committed) per second; then the same fired waits' output alone.
//! - `eos`: catch-up on 300k events (100k contacts) with a 100 ms commit
//!   interval, at-least-once and exactly-once alternately, twice each: the
//!   throughput ratio.
//! - `restore`: 1M contact states (`WINBACK_BENCH_RESTORE`) written to a
//!   4-partition changelog, restored into an empty store: contacts/s.
//! - `latency`: purchases of new contacts at 10k/s (`WINBACK_BENCH_RATE`) for
//!   20 s (`WINBACK_BENCH_SECONDS`), exactly-once with 100 ms commits
//!   (`WINBACK_BENCH_COMMIT_MS`): time from sending a purchase to its `entered`
//!   transition being readable `read_committed`, p50/p99/max.
//!
//! Every benchmark but `waits` runs in the default exactly-once mode unless it
//! says otherwise.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};

#[path = "../tests/common/mod.rs"]
mod common;

use common::kafka::{Topics, brokers, create_topics, create_topics_with};
use winback::config::engine::{EngineConfig, parse_engine};
use winback::domain::{Definitions, Event, Timestamp};
use winback::runtime::partition::{Partition, PartitionSettings};
use winback::runtime::{ManualClock, RunParams, RunStats};
use winback::store::rocks::Store;

// The allocator `winback run` uses (src/main.rs).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const DAY: i64 = 86_400_000;
const T0: i64 = 1_767_225_600_000; // 2026-01-01

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn seed000() -> Arc<Definitions> {
    Arc::new(
        winback::config::load_files(&[root().join("config/winback-90d.toml")])
            .expect("valid seed")
            .definitions,
    )
}

/// splitmix64.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

fn rss() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kb = |key: &str| {
        status
            .lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    (kb("VmRSS:") / 1024, kb("VmHWM:") / 1024)
}

/// CPU time of this process so far (all threads), in seconds.
fn cpu_seconds() -> f64 {
    cpu_seconds_of("self")
}

/// CPU time of the broker process so far (`WINBACK_TEST_BROKER_PID`, set by
/// `deploy/dev-kafka/with-kafka.sh`), in seconds; 0 when unknown.
fn broker_cpu_seconds() -> f64 {
    std::env::var("WINBACK_TEST_BROKER_PID").map_or(0.0, |pid| cpu_seconds_of(&pid))
}

fn cpu_seconds_of(pid: &str) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which is in parentheses).
    let rest = stat.rsplit(')').next().unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

fn purchase(contact: u64, at: i64, n: u64) -> String {
    format!(
        r#"{{"event_id":"o{n}","name":"checkout","contact_id":"c{contact:07}","occurred_at":"{}","merchant_id":"m1","total":25.0}}"#,
        Timestamp(at)
    )
}

/// `events` purchases by random ones of `contacts` contacts, evenly over a
/// year, keyed by contact.
fn year_of_purchases(
    contacts: u64,
    events: u64,
    seed: u64,
) -> impl Iterator<Item = (String, String)> {
    let mut rng = Rng(seed);
    let span = 365 * DAY;
    (0..events).map(move |n| {
        let c = rng.next() % contacts;
        let at = T0 + (n as i64) * (span / events as i64);
        (format!("c{c:07}"), purchase(c, at, n))
    })
}

/// Fresh topics with `partitions` partitions, the changelog compacted.
fn topics(partitions: i32) -> Topics {
    let tp = Topics::fresh();
    tp.create(partitions);
    tp
}

/// The engine defaults; `WINBACK_BENCH_CONTACT_HISTORY=off` turns the
/// contacts' kept transitions off (`processing.contact_history`), to measure
/// what they cost.
fn config(bs: &str, tp: &Topics, state: &Path) -> EngineConfig {
    let history = std::env::var("WINBACK_BENCH_CONTACT_HISTORY").is_ok_and(|v| v == "off");
    config_with(
        bs,
        tp,
        state,
        if history {
            "contact_history = false"
        } else {
            ""
        },
    )
}

/// `processing` is the body of the `[processing]` table.
fn config_with(bs: &str, tp: &Topics, state: &Path, processing: &str) -> EngineConfig {
    let text = config_text(bs, tp, state, processing);
    // WINBACK_KAFKA_* variables reach librdkafka, as in `winback run`.
    parse_engine(Path::new("bench.toml"), &text, std::env::vars()).expect("bench config")
}

fn config_text(bs: &str, tp: &Topics, state: &Path, processing: &str) -> String {
    format!(
        r#"conversations = [{conv:?}]
state_dir = {state:?}
[broker]
bootstrap_servers = {bs:?}
group_id = {group:?}
[[input]]
topic = {input:?}
[output]
transitions = {tr:?}
sends = {sends:?}
dead_letters = {dlq:?}
changelog = {changelog:?}
[admin]
listen = "127.0.0.1:0"
[processing]
{processing}
"#,
        conv = root().join("config/winback-90d.toml").display().to_string(),
        state = state.display().to_string(),
        group = tp.group,
        input = tp.input,
        tr = tp.transitions,
        sends = tp.sends,
        dlq = tp.dead_letters,
        changelog = tp.changelog,
    )
}

/// The plain producer the benchmarks feed input topics with.
fn bench_producer(bs: &str) -> BaseProducer {
    ClientConfig::new()
        .set("bootstrap.servers", bs)
        .set("partitioner", "murmur2_random")
        .set("linger.ms", "20")
        .set("batch.num.messages", "10000")
        .set("queue.buffering.max.messages", "1000000")
        .create()
        .expect("producer")
}

/// A purchase line of [`purchase`], decoded as the engine decodes it.
fn json_event(line: &str) -> Event {
    winback::source::decode(
        winback::config::engine::InputFormat::Json,
        Some(line.as_bytes()),
    )
    .expect("event")
}

fn produce(bs: &str, topic: &str, lines: impl Iterator<Item = (String, String)>) -> (u64, f64) {
    let p = bench_producer(bs);
    let start = Instant::now();
    let mut n = 0u64;
    for (key, value) in lines {
        send_waiting(&p, topic, &key, &value);
        n += 1;
        if n.is_multiple_of(10_000) {
            p.poll(Duration::ZERO);
        }
    }
    p.flush(Duration::from_secs(600)).expect("produced");
    (n, n as f64 / start.elapsed().as_secs_f64())
}

/// Reads the whole topic with the engine's client settings; records/s.
fn raw_consume(cfg: &EngineConfig, bs: &str, topic: &str, total: u64) -> f64 {
    let c: BaseConsumer = winback::source::client_config(cfg, bs)
        .set("group.id", format!("{}-raw", cfg.group_id))
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    let md = c
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .expect("metadata");
    let mut tpl = TopicPartitionList::new();
    for p in 0..md.topics()[0].partitions().len() as i32 {
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .expect("tpl");
    }
    c.assign(&tpl).expect("assign");
    let start = Instant::now();
    let mut n = 0u64;
    let mut bytes = 0usize;
    while n < total {
        if let Some(Ok(m)) = c.poll(Duration::from_millis(500)) {
            use rdkafka::Message;
            bytes += m.payload().map_or(0, <[u8]>::len);
            n += 1;
        }
        assert!(
            start.elapsed() < Duration::from_secs(1200),
            "raw consume stalled at {n}"
        );
    }
    let _ = bytes;
    n as f64 / start.elapsed().as_secs_f64()
}

fn start_engine(
    cfg: EngineConfig,
    bs: &str,
    clock: Arc<ManualClock>,
) -> (Arc<RunStats>, Arc<AtomicBool>, std::thread::JoinHandle<()>) {
    let stats = Arc::new(RunStats::default());
    let stop = Arc::new(AtomicBool::new(false));
    let params = RunParams {
        config: cfg,
        definitions: seed000(),
        bootstrap: bs.to_string(),
        clock,
        stop: Arc::clone(&stop),
        stats: Arc::clone(&stats),
    };
    let h = std::thread::spawn(move || winback::runtime::run(params).expect("engine"));
    (stats, stop, h)
}

fn wait_until(what: &str, limit: Duration, mut done: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < limit, "{what}: not done after {limit:?}");
        std::thread::sleep(Duration::from_millis(5));
    }
    start.elapsed()
}

/// Waits until the engine has folded `n` events and written the batches that
/// hold them; returns how long that took.
fn caught_up(stats: &RunStats, n: u64, limit: Duration) -> Duration {
    wait_until("catch-up", limit, || {
        stats.events_written.load(Ordering::Acquire) >= n
    })
}

fn catchup(bs: &str) {
    let contacts = env_usize("WINBACK_BENCH_CONTACTS", 1_000_000) as u64;
    let events = env_usize("WINBACK_BENCH_EVENTS", 5_000_000) as u64;
    let tp = topics(4);
    let (n, rate) = produce(bs, &tp.input, year_of_purchases(contacts, events, 42));
    println!("catchup: produced {n} events at {rate:.0}/s");
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = config(bs, &tp, dir.path());
    let alone_cfg = cfg.clone();
    let raw = raw_consume(&cfg, bs, &tp.input, n);
    println!("catchup: raw consume (same client, same settings): {raw:.0} records/s");
    let clock = Arc::new(ManualClock::new(Timestamp(0)));
    let cpu0 = cpu_seconds();
    let broker0 = broker_cpu_seconds();
    let (stats, stop, h) = start_engine(cfg, bs, clock);
    let start = Instant::now();
    caught_up(&stats, n, Duration::from_secs(3600));
    let took = start.elapsed().as_secs_f64();
    let cpu = cpu_seconds() - cpu0;
    let broker = broker_cpu_seconds() - broker0;
    let rate = n as f64 / took;
    let (rss, hwm) = rss();
    println!(
        "catchup: CPU of the winback process (all threads): {cpu:.1} s, {:.1} µs per event; of the broker: {broker:.1} s ({:.0}% of the 2 cores' time together)",
        cpu * 1e6 / n as f64,
        (cpu + broker) * 100.0 / (2.0 * took)
    );
    println!(
        "catchup: of which waiting for acknowledgements {:.1} s, writing the store {:.1} s, {} batches",
        stats.ack_wait_us.load(Ordering::Acquire) as f64 / 1e6,
        stats.store_write_us.load(Ordering::Acquire) as f64 / 1e6,
        stats.batches.load(Ordering::Acquire)
    );
    println!(
        "catchup: winback run, {contacts} contacts, {n} events: {took:.1} s, {rate:.0} events/s end to end ({:.2} of the raw consume rate); {} transitions ({:.0}/s); RSS {rss} MiB, peak {hwm} MiB",
        rate / raw,
        stats.transitions.load(Ordering::Acquire),
        stats.transitions.load(Ordering::Acquire) as f64 / took
    );
    stop.store(true, Ordering::Release);
    h.join().expect("engine thread");
    if std::env::var("WINBACK_BENCH_ALONE").is_ok_and(|v| v == "off") {
        println!("catchup: the output alone: skipped (WINBACK_BENCH_ALONE=off)");
        return;
    }
    let (records, secs) = output_alone(
        &alone_cfg,
        bs,
        &tp,
        folded(year_of_purchases(contacts, events, 42)),
    );
    let ceiling = n as f64 / secs;
    println!(
        "catchup: the output alone (the same transitions, folded in memory and produced in 20k-event transactions through the engine's sink; no state, no changelog, no consuming): {records} records in {secs:.1} s, {:.0} records/s: a ceiling of {ceiling:.0} events/s end to end on this broker and machine ({:.2} of the raw consume rate)",
        records as f64 / secs,
        ceiling / raw
    );
    println!(
        "catchup: winback end to end: {:.2} of the output-alone ceiling",
        rate / ceiling
    );
}

/// What the broker takes to accept an output alone: the transitions (and
/// sends) `next` yields, one transaction per call, produced through the
/// engine's own sink to topics of their own (`WINBACK_BENCH_ALONE=alo`: its
/// at-least-once mode). No RocksDB, no changelog, no input consumed.
/// Records produced and seconds taken.
fn output_alone(
    cfg: &EngineConfig,
    bs: &str,
    tp: &Topics,
    mut next: impl FnMut(&mut Vec<winback::domain::Transition>) -> bool,
) -> (u64, f64) {
    let mut cfg = cfg.clone();
    cfg.outputs.transitions = format!("{}.alone", tp.transitions);
    cfg.outputs.sends = format!("{}.alone", tp.sends);
    create_topics(&[&cfg.outputs.transitions, &cfg.outputs.sends], 4);
    let defs = seed000();
    let alo = std::env::var("WINBACK_BENCH_ALONE").is_ok_and(|v| v == "alo");
    let txn = format!("{}-alone", tp.group);
    let mut sink =
        winback::sink::Sink::new(&cfg, bs, (!alo).then_some(txn.as_str())).expect("producer");
    let stop = AtomicBool::new(false);
    let group: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bs)
        .set("group.id", format!("{}-alone", tp.group))
        .create()
        .expect("consumer");
    let md = group.group_metadata().expect("group metadata");
    let none = TopicPartitionList::new();
    let mut out = Vec::new();
    let mut records = 0u64;
    let start = Instant::now();
    loop {
        let more = next(&mut out);
        for t in out.drain(..) {
            sink.send_transition(&defs, &cfg, &t);
        }
        records += sink.pending() as u64;
        if alo {
            sink.finish(&stop).expect("acknowledged");
        } else {
            let r = sink.commit_transaction(&none, &md).expect("commit");
            assert!(
                matches!(r, winback::sink::TxnOutcome::Committed(_)),
                "{r:?}"
            );
        }
        if !more {
            break;
        }
    }
    (records, start.elapsed().as_secs_f64())
}

/// The transitions of folding `lines` in memory, 20k events (one engine
/// batch) per call.
fn folded(
    mut lines: impl Iterator<Item = (String, String)>,
) -> impl FnMut(&mut Vec<winback::domain::Transition>) -> bool {
    let mut sim = winback::sim::Simulator::new(seed000());
    move |out| {
        for _ in 0..20_000 {
            let Some((_, line)) = lines.next() else {
                return false;
            };
            sim.feed(&json_event(&line), out).expect("fold");
        }
        true
    }
}

fn waits() {
    let n = env_usize("WINBACK_BENCH_WAITS", 10_000_000) as u64;
    let defs = seed000();
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path()).expect("store");
    let mut part = Partition::open(&store, defs.clone(), 0, 1, PartitionSettings::default())
        .expect("partition");
    let mut out = Vec::new();
    let start = Instant::now();
    let mut batch = store.batch(&defs, 0);
    let mut peak_mem_timers = 0;
    for i in 0..n {
        // All within one day: every wait stays pending.
        let ev = Event {
            event_id: format!("o{i}"),
            name: "checkout".into(),
            contact_id: format!("c{i:08}"),
            occurred_at: Timestamp(T0 + (i as i64 * DAY) / n as i64),
            merchant_id: Some("m1".into()),
            order_id: None,
            total_cents: Some(2500),
            list_id: None,
            attributes: Vec::new(),
        };
        let mut budget = usize::MAX;
        part.feed(&store, &ev, &mut out, &mut budget).expect("feed");
        out.clear();
        if (i + 1).is_multiple_of(20_000) {
            peak_mem_timers = peak_mem_timers.max(part.timers_in_memory());
            part.write(&mut batch);
            batch.commit().expect("commit");
            batch = store.batch(&defs, 0);
        }
    }
    part.write(&mut batch);
    batch.commit().expect("commit");
    let took = start.elapsed().as_secs_f64();
    let (rss, hwm) = rss();
    let pending = store
        .timers_before(&defs, 0, Timestamp(i64::MAX))
        .map(|t| t.len())
        .unwrap_or(0);
    store.flush().expect("flush");
    let sizes = store.sizes();
    let get = |name: &str| sizes.iter().find(|s| s.0 == name).map_or(0, |s| s.1);
    let on_disk: u64 = std::fs::read_dir(dir.path())
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0);
    println!(
        "waits: {n} contacts entered a 90-day wait in {took:.1} s ({:.0}/s); {pending} pending waits on disk; at most {peak_mem_timers} timers in memory at a batch end; RSS {rss} MiB, peak {hwm} MiB",
        n as f64 / took
    );
    println!(
        "waits: disk: timer index {} B/wait, contact state {} B/contact (SST, LZ4), store dir {} MiB in all",
        get("timers") / n.max(1),
        get("contacts") / n.max(1),
        on_disk >> 20
    );
}

fn storm(bs: &str) {
    let n = env_usize("WINBACK_BENCH_STORM", 1_000_000) as u64;
    let tp = topics(4);
    let minute = 60_000i64;
    let lines = (0..n).map(|i| {
        (
            format!("c{i:07}"),
            purchase(i, T0 + (i as i64 * minute) / n as i64, i),
        )
    });
    let (n, _) = produce(bs, &tp.input, lines.clone());
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = config(bs, &tp, dir.path());
    let alone_cfg = cfg.clone();
    let clock = Arc::new(ManualClock::new(Timestamp(0)));
    let (stats, stop, h) = start_engine(cfg, bs, Arc::clone(&clock));
    let t = caught_up(&stats, n, Duration::from_secs(1800));
    println!(
        "storm: {n} purchases in one minute caught up in {:.1} s",
        t.as_secs_f64()
    );
    let before = stats.transitions.load(Ordering::Acquire);
    // Each fired wait sends and exits: two transitions (and the send record).
    let want = before + 2 * n;
    common::kafka::advance_wall(&clock, &stats, Timestamp(T0 + 90 * DAY + minute));
    let cpu0 = cpu_seconds();
    let broker0 = broker_cpu_seconds();
    let start = Instant::now();
    wait_until("storm", Duration::from_secs(1800), || {
        stats.transitions.load(Ordering::Acquire) >= want
    });
    let b = stats.batches.load(Ordering::Acquire);
    wait_until("storm batch", Duration::from_secs(120), || {
        stats.batches.load(Ordering::Acquire) > b
    });
    let took = start.elapsed().as_secs_f64();
    let cpu = cpu_seconds() - cpu0;
    let broker = broker_cpu_seconds() - broker0;
    let (rss, hwm) = rss();
    println!(
        "storm: CPU of the winback process (all threads): {cpu:.1} s, {:.1} µs per wait; of the broker: {broker:.1} s; acknowledgement wait {:.1} s in all",
        cpu * 1e6 / n as f64,
        stats.ack_wait_us.load(Ordering::Acquire) as f64 / 1e6
    );
    println!(
        "storm: {n} waits expiring in the same minute fired, sent and acknowledged in {took:.1} s: {:.0} waits/s ({:.0} records/s produced); RSS {rss} MiB, peak {hwm} MiB",
        n as f64 / took,
        3.0 * n as f64 / took
    );
    stop.store(true, Ordering::Release);
    h.join().expect("engine thread");
    // The storm's output alone: the fired waits' transitions, in batches of
    // the engine's `max_batch_timers` (two transitions each).
    let mut sim = winback::sim::Simulator::new(seed000());
    let mut fired = Vec::new();
    for (_, line) in lines {
        sim.feed(&json_event(&line), &mut fired).expect("fold");
    }
    fired.clear();
    sim.advance_to(Timestamp(T0 + 90 * DAY + minute), &mut fired);
    let mut chunks = fired.chunks(2 * 100_000).map(<[_]>::to_vec);
    let (records, secs) = output_alone(&alone_cfg, bs, &tp, |out| match chunks.next() {
        Some(c) => {
            out.extend(c);
            true
        }
        None => false,
    });
    let ceiling = n as f64 / secs;
    println!(
        "storm: the output alone (the same {} fired waits' transitions, produced in transactions of 100k waits through the engine's sink; no state, no changelog): {records} records in {secs:.1} s: a ceiling of {ceiling:.0} waits/s on this broker and machine",
        fired.len() / 2
    );
    println!(
        "storm: winback: {:.2} of the output-alone ceiling",
        n as f64 / took / ceiling
    );
}

/// Catches up on `n` events of `tp.input` from an empty state with
/// `processing` settings and a group of its own; events/s end to end.
fn catch_up_rate(
    bs: &str,
    tp: &Topics,
    n: u64,
    processing: &str,
    group: &str,
) -> (f64, Arc<RunStats>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cfg = config_with(bs, tp, dir.path(), processing);
    cfg.group_id = group.to_string();
    cfg.instance_id = group.to_string();
    // A changelog of its own: another run's would be restored, and with it
    // that run's offsets (all input done).
    cfg.outputs.changelog = format!("{group}.changelog");
    create_topics_with(
        &[&cfg.outputs.changelog],
        4,
        &[("cleanup.policy", "compact")],
    );
    let clock = Arc::new(ManualClock::new(Timestamp(0)));
    let (stats, stop, h) = start_engine(cfg, bs, clock);
    let start = Instant::now();
    caught_up(&stats, n, Duration::from_secs(3600));
    let rate = n as f64 / start.elapsed().as_secs_f64();
    stop.store(true, Ordering::Release);
    h.join().expect("engine thread");
    (rate, stats)
}

/// Exactly-once against at-least-once on the same input, 100 ms commits.
fn eos(bs: &str) {
    let contacts = env_usize("WINBACK_BENCH_CONTACTS", 100_000) as u64;
    let events = env_usize("WINBACK_BENCH_EVENTS", 300_000) as u64;
    let tp = topics(4);
    let (n, _) = produce(bs, &tp.input, year_of_purchases(contacts, events, 7));
    let mut rows = Vec::new();
    // Alternated, twice each: the machine's noise shows in the spread.
    for round in 0..2 {
        for g in ["at_least_once", "exactly_once"] {
            let (rate, stats) = catch_up_rate(
                bs,
                &tp,
                n,
                &format!("guarantee = {g:?}\ncommit_interval_ms = 100"),
                &format!("{}-{g}-{round}", tp.group),
            );
            println!(
                "eos: {g}, {n} events, commit interval 100 ms: {rate:.0} events/s ({} batches, {} aborted)",
                stats.batches.load(Ordering::Acquire),
                stats.aborted.load(Ordering::Acquire)
            );
            rows.push((g, rate));
        }
    }
    let mean = |g: &str| {
        let v: Vec<f64> = rows.iter().filter(|r| r.0 == g).map(|r| r.1).collect();
        v.iter().sum::<f64>() / v.len() as f64
    };
    println!(
        "eos: exactly-once / at-least-once throughput: {:.2}",
        mean("exactly_once") / mean("at_least_once")
    );
}

/// Restoring contacts from the changelog into an empty store.
fn restore(bs: &str) {
    let n = env_usize("WINBACK_BENCH_RESTORE", 1_000_000) as u64;
    let partitions = 4u32;
    let tp = topics(partitions as i32);
    let defs = seed000();
    // One contact's state after its purchase: waiting 90 days.
    let mut sim = winback::sim::Simulator::new(Arc::clone(&defs));
    let ev = Event {
        event_id: "o".into(),
        name: "checkout".into(),
        contact_id: "c".into(),
        occurred_at: Timestamp(T0),
        merchant_id: Some("m1".into()),
        order_id: None,
        total_cents: Some(2500),
        list_id: None,
        attributes: Vec::new(),
    };
    sim.feed(&ev, &mut Vec::new()).expect("fed");
    let template = sim.states().next().expect("a contact").1.clone();
    let p = bench_producer(bs);
    let started = Instant::now();
    for i in 0..n {
        let mut st = template.clone();
        if let Some(e) = st
            .conversations
            .first_mut()
            .and_then(|c| c.active.first_mut())
        {
            e.waiting_until = Timestamp(T0 + 90 * DAY + i as i64).into();
        }
        let value = winback::store::codec::encode(&defs, &st);
        let key = format!("c{i:08}");
        let mut rec = BaseRecord::to(&tp.changelog)
            .key(&key)
            .payload(&value)
            .partition((i % partitions as u64) as i32);
        loop {
            match p.send(rec) {
                Ok(()) => break,
                Err((_, r)) => {
                    rec = r;
                    p.poll(Duration::from_millis(5));
                }
            }
        }
    }
    p.flush(Duration::from_secs(600)).expect("produced");
    println!(
        "restore: wrote {n} contact states to the changelog in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = config(bs, &tp, dir.path());
    let store = Store::open(dir.path()).expect("store");
    let stop = AtomicBool::new(false);
    let cpu0 = cpu_seconds();
    let start = Instant::now();
    let mut records = 0;
    for part in 0..partitions {
        let r = winback::runtime::restore::restore_partition(
            &store,
            &defs,
            &cfg,
            bs,
            part,
            &stop,
            &mut |_, _, _| {},
        )
        .expect("restored");
        records += r.records;
    }
    let took = start.elapsed().as_secs_f64();
    let timers = (0..partitions)
        .map(|p| {
            store
                .timers_before(&defs, p, Timestamp(i64::MAX))
                .map_or(0, |t| t.len())
        })
        .sum::<usize>();
    let (rss, hwm) = rss();
    println!(
        "restore: {records} contacts (and {timers} pending waits) restored into an empty store in {took:.1} s: {:.0} contacts/s; CPU {:.1} s; RSS {rss} MiB, peak {hwm} MiB",
        records as f64 / took,
        cpu_seconds() - cpu0
    );
}

/// Sends one record, waiting while the local queue is full.
fn send_waiting(p: &BaseProducer, topic: &str, key: &str, value: &str) {
    let mut rec = BaseRecord::to(topic).key(key).payload(value);
    loop {
        match p.send(rec) {
            Ok(()) => break,
            Err((_, r)) => {
                rec = r;
                p.poll(Duration::from_millis(1));
            }
        }
    }
}

/// Sends one record at once (delivery reports served as it goes).
fn send_paced(p: &BaseProducer, topic: &str, key: &str, value: &str) {
    send_waiting(p, topic, key, value);
    p.poll(Duration::ZERO);
}

/// Latency from a purchase's arrival to its `entered` transition being
/// committed (visible to a `read_committed` reader), at a steady input rate.
fn latency(bs: &str) {
    let rate = env_usize("WINBACK_BENCH_RATE", 10_000) as u64;
    let secs = env_usize("WINBACK_BENCH_SECONDS", 20) as u64;
    let interval = env_usize("WINBACK_BENCH_COMMIT_MS", 100);
    let n = rate * secs;
    let tp = topics(4);
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = config_with(
        bs,
        &tp,
        dir.path(),
        &format!("commit_interval_ms = {interval}"),
    );
    let clock = Arc::new(ManualClock::new(Timestamp(0)));
    let (stats, stop, h) = start_engine(cfg, bs, clock);
    // Joined and assigned before the clock starts.
    std::thread::sleep(Duration::from_secs(5));
    let p: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", bs)
        .set("linger.ms", "1")
        .create()
        .expect("producer");
    // The same load, unmeasured, first: a broker just started spends its
    // first seconds compiling its hot paths (measured: 1.2 cores of broker
    // CPU in a 20 s run from a cold start).
    let warmup = env_usize("WINBACK_BENCH_WARMUP", 10) as u64;
    let start = Instant::now();
    for i in 0..rate * warmup {
        let due = Duration::from_micros(i * 1_000_000 / rate);
        let now = start.elapsed();
        if due > now {
            std::thread::sleep(due - now);
        }
        let key = format!("w{i:08}");
        let value = purchase(i, T0 + i as i64 * 1000, i)
            .replace("\"contact_id\":\"c", "\"contact_id\":\"w");
        send_paced(&p, &tp.input, &key, &value);
    }
    p.flush(Duration::from_secs(60)).expect("produced");
    wait_until("warm-up", Duration::from_secs(120), || {
        stats.events_written.load(Ordering::Acquire) >= rate * warmup
    });
    let origin = Instant::now();
    let (cpu0, broker0) = (cpu_seconds(), broker_cpu_seconds());
    let sent: Arc<Vec<std::sync::atomic::AtomicU64>> = Arc::new(
        (0..n)
            .map(|_| std::sync::atomic::AtomicU64::new(0))
            .collect(),
    );
    let reader = {
        let (bs, topic, sent) = (bs.to_string(), tp.transitions.clone(), Arc::clone(&sent));
        std::thread::spawn(move || {
            use rdkafka::Message;
            let c: BaseConsumer = ClientConfig::new()
                .set("bootstrap.servers", &bs)
                .set("group.id", format!("{topic}-latency"))
                .set("enable.auto.commit", "false")
                .set("isolation.level", "read_committed")
                .set("receive.message.max.bytes", "2147483647")
                .set("fetch.wait.max.ms", "10")
                .create()
                .expect("reader");
            let mut tpl = TopicPartitionList::new();
            for p in 0..4 {
                tpl.add_partition_offset(&topic, p, Offset::Beginning)
                    .expect("tpl");
            }
            c.assign(&tpl).expect("assign");
            let mut lat = Vec::with_capacity(n as usize);
            let deadline = Instant::now() + Duration::from_secs(secs + 120);
            while (lat.len() as u64) < n && Instant::now() < deadline {
                if let Some(Ok(m)) = c.poll(Duration::from_millis(100)) {
                    let ty = winback::sink::header(&m, winback::sink::HEADER_TYPE);
                    if ty != Some("entered") || !m.key().is_some_and(|k| k.starts_with(b"c")) {
                        continue;
                    }
                    let seen = origin.elapsed().as_micros() as u64;
                    let i: usize = std::str::from_utf8(m.key().unwrap_or_default())
                        .ok()
                        .and_then(|k| k.trim_start_matches('c').parse().ok())
                        .unwrap_or(0);
                    let at = sent[i].load(Ordering::Acquire);
                    lat.push(seen.saturating_sub(at));
                }
            }
            lat
        })
    };
    for i in 0..n {
        // Paced: event i leaves at i / rate seconds.
        let due = Duration::from_micros(i * 1_000_000 / rate);
        let now = origin.elapsed();
        if due > now {
            std::thread::sleep(due - now);
        }
        let key = format!("c{i:08}");
        let value = purchase(i, T0 + i as i64 * 1000, i);
        sent[i as usize].store(origin.elapsed().as_micros() as u64, Ordering::Release);
        send_paced(&p, &tp.input, &key, &value);
    }
    p.flush(Duration::from_secs(60)).expect("produced");
    let mut lat = reader.join().expect("reader");
    let wall = origin.elapsed().as_secs_f64();
    let (cpu, broker) = (cpu_seconds() - cpu0, broker_cpu_seconds() - broker0);
    println!(
        "latency: CPU over the {wall:.1} s: this process (engine, load generator and reader) {cpu:.1} s, the broker {broker:.1} s: {:.0}% of the 2 cores",
        (cpu + broker) * 100.0 / (2.0 * wall)
    );
    stop.store(true, Ordering::Release);
    h.join().expect("engine thread");
    lat.sort_unstable();
    let pct = |q: f64| {
        lat.get(((lat.len() as f64 * q) as usize).min(lat.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0) as f64
            / 1000.0
    };
    println!(
        "latency: {} of {n} purchases at {rate}/s entered (exactly-once, commit interval {interval} ms): p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms ({} batches)",
        lat.len(),
        pct(0.5),
        pct(0.99),
        pct(1.0),
        stats.batches.load(Ordering::Acquire)
    );
}

/// `winback reprocess --from-beginning` (the release binary, dry run) over a
/// year of purchases by up to a million contacts: events/s and the process's
/// peak RSS, at a fifth of the history and at all of it
/// (`WINBACK_BENCH_REPROCESS`, default 5M events), so that any growth of
/// memory with the history shows.
fn reprocess(bs: &str) {
    let n = env_usize("WINBACK_BENCH_REPROCESS", 5_000_000) as u64;
    for events in [n / 5, n] {
        let tp = topics(4);
        let contacts = events.min(1_000_000);
        let (produced, _) = produce(bs, &tp.input, year_of_purchases(contacts, events, 7));
        let dir = tempfile::tempdir().expect("tempdir");
        let cfg = dir.path().join("bench.toml");
        std::fs::write(&cfg, config_text(bs, &tp, &dir.path().join("state"), "")).expect("config");
        let log = std::fs::File::create(dir.path().join("reprocess.log")).expect("log");
        let start = Instant::now();
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_winback"))
            .args(["reprocess", "--config"])
            .arg(&cfg)
            .arg("--from-beginning")
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .spawn()
            .expect("winback reprocess");
        let status = format!("/proc/{}/status", child.id());
        let mut peak_kib = 0u64;
        let code = loop {
            if let Ok(text) = std::fs::read_to_string(&status)
                && let Some(kib) = text
                    .lines()
                    .find(|l| l.starts_with("VmHWM:"))
                    .and_then(|l| l.split_whitespace().nth(1))
                    .and_then(|v| v.parse::<u64>().ok())
            {
                peak_kib = peak_kib.max(kib);
            }
            if let Some(code) = child.try_wait().expect("wait") {
                break code;
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let took = start.elapsed().as_secs_f64();
        let summary = std::fs::read_to_string(dir.path().join("reprocess.log")).unwrap_or_default();
        assert!(code.success(), "reprocess failed:\n{summary}");
        assert!(
            summary.contains(&format!("events: {produced} line(s)")),
            "not every record was read:\n{summary}"
        );
        println!(
            "reprocess: {produced} events ({contacts} contacts, 4 partitions) in {took:.1} s = {:.0} events/s, peak RSS {} MiB",
            produced as f64 / took,
            peak_kib / 1024
        );
    }
}

fn main() {
    let which: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let want = |n: &str| which.is_empty() || which.iter().any(|w| w == n);
    if want("waits") {
        waits();
    }
    if want("storm") {
        storm(&brokers());
    }
    if want("catchup") {
        catchup(&brokers());
    }
    if want("eos") {
        eos(&brokers());
    }
    if want("restore") {
        restore(&brokers());
    }
    if want("latency") {
        latency(&brokers());
    }
    if want("reprocess") {
        reprocess(&brokers());
    }
}
