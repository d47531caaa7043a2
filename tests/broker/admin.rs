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

fn admin_addr(run: &Running) -> SocketAddr {
    let deadline = Instant::now() + T;
    loop {
        if let Some(a) = run.stats.admin_addr.get() {
            return *a;
        }
        assert!(Instant::now() < deadline, "the admin server never started");
        std::thread::sleep(Duration::from_millis(5));
    }
}

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

    let run = Running::start(topics.config(dir.path(), &SEEDS, ""), defs.clone(), STILL);
    let addr = admin_addr(&run);
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
    let addr = admin_addr(&run);
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
