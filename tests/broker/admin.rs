//! The admin server of a live `run`: `/metrics` against what the test
//! produced and what `simulate` makes of it, `/readyz` against a restore.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::common::admin;
use crate::common::kafka::{self, Running, Topics};
use crate::common::{SEEDS, definitions};
use winback::domain::{Definitions, Timestamp};

const T: Duration = Duration::from_secs(60);
const STILL: Timestamp = Timestamp(0);
const PARTITIONS: i32 = 2;

/// Waits until `/metrics` satisfies `ok`; returns that page.
fn metrics_until(addr: SocketAddr, what: &str, ok: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + T;
    loop {
        let (status, body) = admin::get(addr, "/metrics");
        assert_eq!(status, 200, "{body}");
        if ok(&body) {
            return body;
        }
        assert!(Instant::now() < deadline, "{what}; last page:\n{body}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Per partition, the waits `simulate` holds pending after folding `lines`
/// (and moving its clock to `until`).
fn pending_waits(
    defs: &Arc<Definitions>,
    lines: &[String],
    until: Option<Timestamp>,
) -> BTreeMap<i32, usize> {
    kafka::simulators_partitioned(defs, lines, until, PARTITIONS)
        .iter()
        .enumerate()
        .map(|(p, (sim, _))| {
            let waits = sim
                .states()
                .flat_map(|(_, st)| st.conversations.iter())
                .flat_map(|c| c.active.iter())
                .filter(|e| e.waiting_until.get().is_some())
                .count();
            (p as i32, waits)
        })
        .collect()
}

/// Transitions by (conversation, type), as `simulate` prints them.
fn by_type(lines: &[String]) -> BTreeMap<(String, String), u64> {
    let mut m = BTreeMap::new();
    for l in lines {
        let v: serde_json::Value = serde_json::from_str(l).expect("a transition");
        let key = (
            v["conversation"]
                .as_str()
                .expect("conversation")
                .to_string(),
            v["type"].as_str().expect("type").to_string(),
        );
        *m.entry(key).or_default() += 1;
    }
    m
}

/// The page counts what the engine committed: input records, transitions by
/// conversation and type (equal to `simulate`'s), dead letters by reason; the
/// lag of every input partition read to its end is zero; the pending waits
/// per partition are `simulate`'s, before and after the wall clock fires
/// them; `/healthz` answers.
#[test]
fn metrics_count_what_the_engine_committed() {
    let defs = definitions(&SEEDS);
    let topics = Topics::fresh();
    topics.create(PARTITIONS);
    let dir = tempfile::tempdir().unwrap();
    let lines = kafka::purchase_stream(120, 40, 11);
    kafka::produce_partitioned(&topics.input, &lines, PARTITIONS);
    // One record no definition can fold: a dead letter.
    kafka::produce(&topics.input, &[("bad".to_string(), b"{not json".to_vec())]);
    let records = lines.len() as u64 + 1;

    // librdkafka reports its statistics every half second here (5 s by default).
    let fast_stats = "[kafka]\n\"statistics.interval.ms\" = \"500\"";
    let run = Running::start(
        topics.config(dir.path(), &SEEDS, fast_stats),
        defs.clone(),
        STILL,
    );
    let addr = admin::addr(&run.stats);
    assert_eq!(admin::get(addr, "/healthz"), (200, "ok\n".to_string()));
    run.wait_events(records, T);

    let waits = pending_waits(&defs, &lines, None);
    assert!(waits.values().sum::<usize>() > 0, "{waits:?}");
    let page = metrics_until(addr, "input counted, lag zero, waits counted", |m| {
        admin::value(m, "winback_input_records_total", &[]) == Some(records as f64)
            && (0..PARTITIONS).all(|p| {
                let p = p.to_string();
                admin::value(
                    m,
                    "winback_consumer_lag_records",
                    &[("topic", &topics.input), ("partition", &p)],
                ) == Some(0.0)
                    && admin::value(m, "winback_pending_waits", &[("partition", &p)])
                        == waits.get(&p.parse::<i32>().unwrap()).map(|w| *w as f64)
            })
    });
    assert_eq!(
        admin::value(
            &page,
            "winback_dead_letters_total",
            &[("reason", "malformed")]
        ),
        Some(1.0),
        "{page}"
    );
    // librdkafka's statistics: the one broker up for both clients, its
    // round-trip times reported (the consumer's long fetches take time; an
    // idle producer may have sent nothing in the interval), and the
    // consumer's fetch queue of every input partition (empty: everything
    // was folded).
    let rtt = |m: &str, c: &str| {
        admin::value(
            m,
            "winback_kafka_broker_rtt_seconds",
            &[("client", c), ("stat", "avg")],
        )
    };
    let page = metrics_until(addr, "librdkafka's statistics", |m| {
        ["consumer", "producer"].iter().all(|c| {
            admin::sum(m, "winback_kafka_broker_up", &[("client", c)]) == 1.0 && rtt(m, c).is_some()
        }) && rtt(m, "consumer").is_some_and(|s| s > 0.0)
            && (0..PARTITIONS).all(|p| {
                admin::value(
                    m,
                    "winback_kafka_fetch_queue_messages",
                    &[("topic", &topics.input), ("partition", &p.to_string())],
                ) == Some(0.0)
            })
    });
    assert!(
        admin::value(&page, "winback_kafka_producer_queue_messages", &[]).is_some(),
        "{page}"
    );

    // The wall clock fires every wait: the counters reach simulate's.
    let until = Timestamp::parse_rfc3339("2026-12-31T00:00:00Z").unwrap();
    let expected = kafka::simulate_partitioned(&defs, &lines, until, PARTITIONS);
    run.advance_wall(until);
    let want = by_type(&expected);
    let total: u64 = want.values().sum();
    let page = metrics_until(addr, "every transition counted", |m| {
        admin::sum(m, "winback_transitions_total", &[]) >= total as f64
    });
    for ((conversation, kind), n) in &want {
        assert_eq!(
            admin::value(
                &page,
                "winback_transitions_total",
                &[("conversation", conversation), ("type", kind)]
            ),
            Some(*n as f64),
            "{conversation} {kind}\n{page}"
        );
    }
    assert_eq!(
        admin::sum(&page, "winback_transitions_total", &[]),
        total as f64
    );
    assert!(want.keys().any(|(_, kind)| kind == "send"), "{want:?}");
    let left = pending_waits(&defs, &lines, Some(until));
    let page = metrics_until(addr, "the waits left counted", |m| {
        (0..PARTITIONS).all(|p| {
            admin::value(m, "winback_pending_waits", &[("partition", &p.to_string())])
                == Some(left[&p] as f64)
        })
    });
    assert!(
        admin::value(&page, "winback_batch_duration_seconds_count", &[]).unwrap_or(0.0) > 0.0,
        "{page}"
    );
    run.stop();
}

/// A process that restores its partitions from the changelog is not ready
/// until the restore is done: `/readyz` answers 503 with the reason first,
/// and 200 only once every changelog record was read.
#[test]
fn readyz_turns_ready_only_after_the_restore() {
    let defs = definitions(&SEEDS);
    let topics = Topics::fresh();
    topics.create(PARTITIONS);
    let first = tempfile::tempdir().unwrap();
    let lines = kafka::purchase_stream(400, 40, 12);
    kafka::produce_partitioned(&topics.input, &lines, PARTITIONS);
    let run = Running::start(topics.config(first.path(), &SEEDS, ""), defs.clone(), STILL);
    run.wait_events(lines.len() as u64, T);
    run.stop();

    // The same group on an empty state directory: it restores both partitions.
    let second = tempfile::tempdir().unwrap();
    let run = Running::start(topics.config(second.path(), &SEEDS, ""), defs, STILL);
    let addr = admin::addr(&run.stats);
    let mut refusals = Vec::new();
    let deadline = Instant::now() + T;
    loop {
        let (status, body) = admin::get(addr, "/readyz");
        if status == 200 {
            assert_eq!(body, "ready\n");
            break;
        }
        assert_eq!(status, 503, "{body}");
        assert!(body.starts_with("not ready: "), "{body}");
        refusals.push(body);
        assert!(Instant::now() < deadline, "never ready: {refusals:?}");
        std::thread::sleep(Duration::from_millis(5));
    }
    let restored = run.stats.restored_records.load(Ordering::Acquire);
    assert!(
        refusals
            .iter()
            .any(|r| r.contains("waiting for the group's assignment")),
        "{refusals:?}"
    );
    // Ready means restored: the count read by then is the whole changelog's.
    assert!(restored > 0, "ready before anything was restored");
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(run.stats.restored_records.load(Ordering::Acquire), restored);
    let (_, page) = admin::get(addr, "/metrics");
    assert_eq!(
        admin::value(&page, "winback_restored_records_total", &[]),
        Some(restored as f64),
        "{page}"
    );
    for p in 0..PARTITIONS {
        assert_eq!(
            admin::value(
                &page,
                "winback_restore_remaining_records",
                &[("partition", &p.to_string())]
            ),
            Some(0.0),
            "{page}"
        );
    }
    run.stop();
}

/// The contacts of the README example explained, by `GET /contacts/{id}`
/// and by `winback inspect` reading the store while `run` holds it: each
/// conversation's entries at the step and with the expiry `simulate`'s state
/// has, and the last transitions equal to the golden file's for that contact
/// (one partition: the whole pool, the golden file's codes), before and after
/// the wall clock fires the waits.
#[test]
fn contacts_are_explained_as_the_golden_file_expects() {
    let defs = definitions(&SEEDS);
    let topics = Topics::fresh();
    topics.create(1);
    let dir = tempfile::tempdir().unwrap();
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let lines: Vec<String> = std::fs::read_to_string(root.join("examples/events.jsonl"))
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    let golden: Vec<serde_json::Value> =
        std::fs::read_to_string(root.join("tests/golden/examples.transitions.jsonl"))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
    kafka::produce_partitioned(&topics.input, &lines, 1);
    let cfg = topics.config(dir.path(), &SEEDS, "");
    let config_file = topics.config_file(dir.path(), dir.path());
    let run = Running::start(cfg, defs.clone(), STILL);
    let addr = admin::addr(&run.stats);
    run.wait_events(lines.len() as u64, T);

    let mut sim = winback::sim::Simulator::new(Arc::clone(&defs));
    let mut folded = Vec::new();
    for l in &lines {
        let _ = sim.feed(&winback::wire::json::decode_event(l).unwrap(), &mut folded);
    }
    let check = |sim: &winback::sim::Simulator, made: usize| {
        for (contact, st) in sim.states() {
            let (status, body) = admin::get(addr, &format!("/contacts/{contact}"));
            assert_eq!(status, 200, "{body}");
            let view: serde_json::Value = serde_json::from_str(&body).unwrap();
            // Every entry under way, at the simulator's step and expiry.
            for cs in &st.conversations {
                let conv = &defs.conversations[cs.conversation as usize];
                let shown = view["conversations"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .find(|c| c["conversation"] == *conv.name)
                    .unwrap_or_else(|| panic!("{contact}: no {} in {view:#}", conv.name));
                assert_eq!(shown["entries_started"], cs.entries_started, "{contact}");
                let active = shown["active"].as_array().unwrap();
                assert_eq!(active.len(), cs.active.len(), "{contact}: {view:#}");
                for (e, v) in cs.active.iter().zip(active) {
                    assert_eq!(v["entry"], e.seq);
                    assert_eq!(v["step"], *conv.steps[e.step as usize].id);
                    let until = e.waiting_until.get().map(|t| t.to_string());
                    assert_eq!(v["waiting_until"].as_str(), until.as_deref(), "{contact}");
                }
            }
            // The last transitions: the golden file's for this contact, so far.
            let mine: Vec<&serde_json::Value> = golden[..made]
                .iter()
                .filter(|t| t["contact_id"] == contact)
                .collect();
            let want = &mine[mine
                .len()
                .saturating_sub(winback::store::rocks::HISTORY_LEN)..];
            let got: Vec<&serde_json::Value> = view["recent_transitions"]
                .as_array()
                .unwrap()
                .iter()
                .collect();
            assert_eq!(got, want, "{contact}");
            // `inspect` reads the same from the store `run` holds.
            let out = std::process::Command::new(env!("CARGO_BIN_EXE_winback"))
                .args(["inspect", "--config"])
                .arg(&config_file)
                .args([contact, "--format", "json"])
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            let inspected: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
            assert_eq!(inspected, view, "{contact}");
        }
    };
    // The golden file lists the transitions in the order simulate made them:
    // those made while folding come first.
    assert_eq!(
        folded
            .iter()
            .map(|t| winback::wire::json::encode_transition(&defs, t))
            .map(|l| serde_json::from_str::<serde_json::Value>(&l).unwrap())
            .collect::<Vec<_>>(),
        golden[..folded.len()]
    );
    check(&sim, folded.len());

    let until = Timestamp::parse_rfc3339("2027-01-01T00:00:00Z").unwrap();
    sim.advance_to(until, &mut Vec::new());
    run.advance_wall(until);
    let sends = golden.iter().filter(|t| t["type"] == "send").count();
    assert_eq!(kafka::read(&topics.sends, sends, T).len(), sends);
    // The batch that produced the last send is committed once it is read.
    std::thread::sleep(Duration::from_secs(1));
    check(&sim, golden.len());

    assert_eq!(admin::get(addr, "/contacts/nobody").0, 404);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_winback"))
        .args(["inspect", "--config"])
        .arg(&config_file)
        .arg("nobody")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no contact \"nobody\""));
    run.stop();
}

/// Which partitions a member's `/metrics` reports a clock for.
fn clocked(addr: SocketAddr) -> Vec<u32> {
    let (_, page) = admin::get(addr, "/metrics");
    (0..PARTITIONS as u32)
        .filter(|p| {
            admin::value(
                &page,
                "winback_partition_clock_seconds",
                &[("partition", &p.to_string())],
            )
            .is_some()
        })
        .collect()
}

/// Members of one group on a two-partition topic, with
/// `admin.gauge_idle_timeout` at 2 s: alone, the first reports both
/// partitions; when a second joins and takes one, the first's gauges of the
/// partition it gave away leave its `/metrics` while those of the one it
/// kept stay. A third member gets no partition and is ready all the same.
#[test]
fn gauges_follow_the_partitions_and_a_member_with_none_is_ready() {
    let defs = definitions(&SEEDS);
    let topics = Topics::fresh();
    topics.create(PARTITIONS);
    let lines = kafka::purchase_stream(40, 10, 31);
    kafka::produce_partitioned(&topics.input, &lines, PARTITIONS);
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let start = |i: usize| {
        let mut cfg = topics.config(dirs[i].path(), &SEEDS, "");
        cfg.gauge_idle_timeout = winback::domain::Duration(2_000);
        Running::start(cfg, defs.clone(), STILL)
    };
    let until = |what: &str, ok: &dyn Fn() -> bool| {
        let deadline = Instant::now() + T;
        while !ok() {
            assert!(Instant::now() < deadline, "{what}");
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    let ready = |addr: SocketAddr| admin::get(addr, "/readyz").0 == 200;

    let first = start(0);
    let a = admin::addr(&first.stats);
    first.wait_events(lines.len() as u64, T);
    until("the first member reports both partitions", &|| {
        clocked(a) == [0, 1]
    });

    let second = start(1);
    let b = admin::addr(&second.stats);
    until(
        "each member reports the partition it holds, no other",
        &|| {
            let (ca, cb) = (clocked(a), clocked(b));
            ready(a) && ready(b) && ca.len() == 1 && cb.len() == 1 && ca != cb
        },
    );

    let third = start(2);
    let c = admin::addr(&third.stats);
    until(
        "three members ready, one of them with no partition",
        &|| {
            let mut held: Vec<Vec<u32>> = [a, b, c].iter().map(|m| clocked(*m)).collect();
            held.sort();
            [a, b, c].iter().all(|m| ready(*m)) && held == [vec![], vec![0], vec![1]]
        },
    );
    third.stop();
    second.stop();
    first.stop();
}
