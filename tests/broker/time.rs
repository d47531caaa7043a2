//! Live runs against `simulate` the way users feed them (docs/semantics.md,
//! "Time in `run`"): past-dated events published while `run` runs, in one
//! call or several, with a restart in the middle, history loaded first,
//! producers lagging behind their events, a subscriptions topic ahead of or
//! behind the checkouts, and timestamps no clock may follow. The wall clock
//! is injected and moves like a real one (sped up where the test says), so
//! the quiet period and the allowed lateness act as in production.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::common::kafka::{self, Running, Topics};
use crate::common::{SEEDS, definitions};
use winback::domain::Timestamp;
use winback::runtime::ManualClock;

const T: Duration = Duration::from_secs(90);

/// "Now" for these tests: every example wait ended months before.
fn base() -> Timestamp {
    Timestamp::parse_rfc3339("2026-12-04T12:00:00Z").unwrap()
}

fn example_lines() -> Vec<String> {
    std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/events.jsonl"
    ))
    .unwrap()
    .lines()
    .map(str::to_string)
    .collect()
}

/// Moves a clock like a wall clock, `speed` times as fast, from `from`.
struct Ticking {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
}

impl Ticking {
    fn start(clock: Arc<ManualClock>, from: Timestamp, speed: i64) -> Ticking {
        let stop = Arc::new(AtomicBool::new(false));
        let handle = {
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || {
                let t0 = Instant::now();
                while !stop.load(Ordering::Acquire) {
                    clock.set(Timestamp(from.0 + t0.elapsed().as_millis() as i64 * speed));
                    std::thread::sleep(Duration::from_millis(5));
                }
            })
        };
        Ticking {
            stop,
            handle: Some(handle),
        }
    }
}

impl Drop for Ticking {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// A run whose wall clock ticks in real time from [`base`].
fn start_ticking(topics: &Topics, dir: &std::path::Path) -> (Running, Ticking) {
    let run = Running::start(topics.config(dir, &SEEDS, ""), definitions(&SEEDS), base());
    let ticking = Ticking::start(Arc::clone(&run.clock), base(), 1);
    (run, ticking)
}

/// Waits until `run` has an assignment (a run that is still joining would
/// see the events as history, which is not what these tests are about).
fn wait_assigned(run: &Running) {
    let deadline = Instant::now() + T;
    while run.stats.batch_ends.load(Ordering::Acquire) < 3 {
        assert!(Instant::now() < deadline, "no batch ended");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The README's quick start, the way a new user does it: `run` first, then
/// the example file, in one `produce` call or in several a second apart,
/// with or without a restart in between. The committed transitions are
/// `simulate`'s over the same file (cyd's unsubscribe and ann's repeat
/// purchase are folded before any wait fires), every send at its expiry.
#[test]
fn the_example_published_while_run_runs_gives_simulates_transitions() {
    let defs = definitions(&SEEDS);
    let lines = example_lines();
    let expected = kafka::simulate(&defs, &lines, base());
    let sends: Vec<&String> = expected.iter().filter(|l| l.contains("\"send\"")).collect();
    assert!(!sends.is_empty());
    assert!(
        expected
            .iter()
            .any(|l| l.contains("\"cyd\"") && l.contains("unsubscribed"))
    );
    // (calls, restart after this many calls)
    for (calls, restart) in [(1usize, None), (4, None), (4, Some(2usize))] {
        let topics = Topics::fresh();
        topics.create(1);
        let dir = tempfile::tempdir().unwrap();
        let (mut run, mut ticking) = start_ticking(&topics, dir.path());
        wait_assigned(&run);
        let per = lines.len().div_ceil(calls);
        let mut produced = 0u64;
        for (i, chunk) in lines.chunks(per).enumerate() {
            if i > 0 {
                std::thread::sleep(Duration::from_secs(1));
            }
            if restart == Some(i) {
                // Stopped and started again within the quiet period.
                run.wait_events(produced, T);
                drop(ticking);
                run.stop();
                (run, ticking) = start_ticking(&topics, dir.path());
                produced = 0;
            }
            kafka::produce(&topics.input, &kafka::keyed(chunk));
            produced += chunk.len() as u64;
        }
        run.wait_events(produced, T);
        // The quiet period passes by the ticking clock: everything fires.
        kafka::stop_and_compare(&topics.transitions, &expected, T, || {
            drop(ticking);
            run.stop();
        });
    }
}

/// The quick start with a pause: `run` sits on empty topics for longer than
/// the quiet period before the example file is published. A partition that
/// folded nothing has no clock for the wall clock to move, so the file is
/// folded in event time, not late: `simulate`'s transitions again.
#[test]
fn history_published_after_an_idle_start_is_not_late() {
    let defs = definitions(&SEEDS);
    let lines = example_lines();
    let later = Timestamp(base().0 + 60_000);
    let expected = kafka::simulate_partitioned(&defs, &lines, later, 2);
    let topics = Topics::fresh();
    topics.create(2);
    let dir = tempfile::tempdir().unwrap();
    let run = Running::start(topics.config(dir.path(), &SEEDS, ""), defs, base());
    wait_assigned(&run);
    // A minute of empty topics by the wall clock, and batches to notice it.
    run.clock.set(later);
    let ended = run.stats.batch_ends.load(Ordering::Acquire);
    let deadline = Instant::now() + T;
    while run.stats.batch_ends.load(Ordering::Acquire) < ended + 3 {
        assert!(Instant::now() < deadline, "no batch ended");
        std::thread::sleep(Duration::from_millis(20));
    }
    let ticking = Ticking::start(Arc::clone(&run.clock), later, 1);
    kafka::produce_partitioned(&topics.input, &lines, 2);
    run.wait_events(lines.len() as u64, T);
    kafka::stop_and_compare(&topics.transitions, &expected, T, || {
        drop(ticking);
        run.stop();
    });
}

/// History published before `run` starts is a backlog, never quiet: the
/// same as `simulate` (a restart in the middle included).
#[test]
fn history_loaded_before_run_gives_simulates_transitions() {
    let defs = definitions(&SEEDS);
    let topics = Topics::fresh();
    topics.create(1);
    let dir = tempfile::tempdir().unwrap();
    let lines = kafka::purchase_stream(400, 200, 23);
    let expected = kafka::simulate(&defs, &lines, base());
    let (first, second) = lines.split_at(lines.len() / 2);
    kafka::produce(&topics.input, &kafka::keyed(first));
    let (run, ticking) = start_ticking(&topics, dir.path());
    run.wait_events(first.len() as u64, T);
    drop(ticking);
    run.stop();
    kafka::produce(&topics.input, &kafka::keyed(second));
    let (run, ticking) = start_ticking(&topics, dir.path());
    run.wait_events(second.len() as u64, T);
    kafka::stop_and_compare(&topics.transitions, &expected, T, || {
        drop(ticking);
        run.stop();
    });
}

/// One event stamped in the year 9999 is dead-lettered with its reason and
/// moves no clock: the other contact's wait fires at its expiry, not at once.
#[test]
fn a_far_future_event_is_dead_lettered_and_fires_nothing_early() {
    let topics = Topics::fresh();
    topics.create(1);
    let dir = tempfile::tempdir().unwrap();
    let bought = Timestamp(base().0 - 86_400_000);
    let lines = vec![
        kafka::subscribed("ann", bought),
        format!(
            r#"{{"event_id":"o1","name":"checkout","contact_id":"ann","occurred_at":"{bought}"}}"#
        ),
        r#"{"event_id":"o9","name":"checkout","contact_id":"bob","occurred_at":"9999-12-31T00:00:00Z"}"#
            .to_string(),
    ];
    let (run, ticking) = start_ticking(&topics, dir.path());
    wait_assigned(&run);
    kafka::produce(&topics.input, &kafka::keyed(&lines));
    let dead = kafka::read_exactly(&topics.dead_letters, 1, T);
    let reason = dead[0]
        .headers
        .get(winback::source::DLQ_REASON)
        .cloned()
        .unwrap_or_default();
    assert!(reason.contains("max_future_skew"), "{reason}");
    // Ann enters both conversations and waits (five transitions); nothing
    // else, however long.
    kafka::read(&topics.transitions, 5, T);
    run.wait_events(3, T);
    std::thread::sleep(Duration::from_secs(12));
    drop(ticking);
    run.stop();
    let got = kafka::as_json(&kafka::read_to_end(&topics.transitions, kafka::READ_BACK));
    assert_eq!(got.len(), 5, "{got:#?}");
    assert!(got.iter().all(|l| l.contains("\"ann\"")), "{got:#?}");
    assert!(
        got.iter()
            .all(|l| !l.contains("\"send\"") && !l.contains("suppressed")),
        "{got:#?}"
    );
}

/// A record keyed by something else than its contact is dead-lettered.
#[test]
fn a_record_keyed_by_another_contact_is_dead_lettered() {
    let topics = Topics::fresh();
    topics.create(1);
    let dir = tempfile::tempdir().unwrap();
    let line = r#"{"event_id":"o1","name":"checkout","contact_id":"ann","occurred_at":"2026-01-05T10:00:00Z"}"#;
    kafka::produce(
        &topics.input,
        &[("bob".to_string(), line.as_bytes().to_vec())],
    );
    let (run, ticking) = start_ticking(&topics, dir.path());
    let dead = kafka::read_exactly(&topics.dead_letters, 1, T);
    drop(ticking);
    run.stop();
    let reason = &dead[0].headers[winback::source::DLQ_REASON];
    assert!(reason.contains("is not its contact_id"), "{reason}");
    assert_eq!(dead[0].key.as_deref(), Some(&b"bob"[..]));
}

/// Purchases and unsubscribes published as they happen, each a few seconds
/// to a few minutes after its `occurred_at` (a lagging pipeline), repeat
/// purchases and unsubscribes behind a contact's first purchase: the
/// committed transitions are `simulate`'s over the events in the order they
/// were published. The clock runs 30 times as fast, so 20-minute waits end
/// during the test; the lags stay within the allowed lateness.
#[test]
fn a_lagging_live_producer_gives_simulates_transitions() {
    let files = ["tests/scenarios/defs/short-wait.toml"];
    let defs = definitions(&files);
    let topics = Topics::fresh();
    topics.create(2);
    let dir = tempfile::tempdir().unwrap();
    let speed = 30;
    let start = base();
    // Publish times (ms after start) and events, in publish order.
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let mut rnd = move |n: u64| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x % n
    };
    let mut plan: Vec<(i64, String)> = Vec::new();
    for c in 0..40 {
        let id = format!("l{c:02}");
        let first = 60_000 + rnd(20 * 60_000) as i64;
        let lag = |r: &mut dyn FnMut(u64) -> u64| 3_000 + r(180_000) as i64;
        let at = start.0 + first - lag(&mut rnd);
        plan.push((first - 1, kafka::subscribed(&id, Timestamp(at - 1_000))));
        plan.push((
            first,
            format!(
                r#"{{"event_id":"o-{id}-1","name":"checkout","contact_id":"{id}","occurred_at":"{}"}}"#,
                Timestamp(at)
            ),
        ));
        match rnd(3) {
            0 => {
                // A repeat purchase within the wait, published later.
                let p = first + 60_000 + rnd(10 * 60_000) as i64;
                let t = start.0 + p - lag(&mut rnd);
                plan.push((
                    p,
                    format!(
                        r#"{{"event_id":"o-{id}-2","name":"checkout","contact_id":"{id}","occurred_at":"{}"}}"#,
                        Timestamp(t.max(at + 1))
                    ),
                ));
            }
            1 => {
                let p = first + 30_000 + rnd(10 * 60_000) as i64;
                let t = start.0 + p - lag(&mut rnd);
                plan.push((
                    p,
                    format!(
                        r#"{{"event_id":"u-{id}","name":"unsubscribe","contact_id":"{id}","list_id":"master","occurred_at":"{}"}}"#,
                        Timestamp(t.max(at + 1))
                    ),
                ));
            }
            _ => {}
        }
    }
    plan.sort_by_key(|(p, _)| *p);
    let lines: Vec<String> = plan.iter().map(|(_, l)| l.clone()).collect();
    let last = plan.last().map_or(0, |(p, _)| *p);
    let until = Timestamp(start.0 + last + 60 * 60_000);
    let expected = kafka::simulate_partitioned(&defs, &lines, until, 2);
    assert!(expected.iter().any(|l| l.contains("\"send\"")));
    assert!(expected.iter().any(|l| l.contains("reentered")));
    assert!(expected.iter().any(|l| l.contains("unsubscribed")));

    let run = Running::start(topics.config(dir.path(), &files, ""), defs, start);
    let ticking = Ticking::start(Arc::clone(&run.clock), start, speed);
    wait_assigned(&run);
    let t0 = Instant::now();
    let producer_plan: Vec<(i64, String)> = plan.clone();
    let input = topics.input.clone();
    let feeder = std::thread::spawn(move || {
        for (p, line) in producer_plan {
            let due = Duration::from_millis((p / speed) as u64);
            if let Some(d) = due.checked_sub(t0.elapsed()) {
                std::thread::sleep(d);
            }
            kafka::produce_partitioned(&input, &[line], 2);
        }
    });
    feeder.join().expect("fed");
    run.wait_events(lines.len() as u64, T);
    drop(ticking);
    run.advance_wall(until);
    kafka::stop_and_compare(&topics.transitions, &expected, T, || run.stop());
}

/// Subscriptions on their own topic: all published before the purchases
/// (a list import), or live a couple of seconds behind or ahead of them.
/// The partition merges its topics by `occurred_at`, so the result is
/// `simulate`'s over the two streams merged by event time (ties to the
/// checkouts, the input listed first).
#[test]
fn a_subscriptions_topic_ahead_or_behind_gives_simulates_transitions() {
    let defs = definitions(&SEEDS);
    let lines = kafka::purchase_stream(300, 200, 29);
    let is_sub = |l: &String| l.contains("\"list_id\"");
    let (subs, checkouts): (Vec<String>, Vec<String>) = lines.iter().cloned().partition(is_sub);
    let mut merged: Vec<(Timestamp, usize, String)> = checkouts
        .iter()
        .map(|l| (0usize, l))
        .chain(subs.iter().map(|l| (1usize, l)))
        .map(|(topic, l)| {
            let ev = winback::wire::json::decode_event(l).unwrap();
            (ev.occurred_at, topic, l.clone())
        })
        .collect();
    merged.sort_by_key(|(at, topic, _)| (*at, *topic));
    let merged: Vec<String> = merged.into_iter().map(|(_, _, l)| l).collect();
    let expected = kafka::simulate(&defs, &merged, base());
    // Folded in arrival order instead, the outcome differs: the test can fail.
    let arrival: Vec<String> = subs.iter().chain(&checkouts).cloned().collect();
    assert_ne!(kafka::simulate(&defs, &arrival, base()), expected);

    // (subscriptions first as history; live with the subscriptions this
    // many ms after (+) or before (-) the checkouts of the same slice)
    for variant in [None, Some(2_000i64), Some(-2_000)] {
        let topics = Topics::fresh();
        let subs_topic = format!("{}.subs", topics.input);
        topics.create(1);
        kafka::create_topics(&[&subs_topic], 1);
        let dir = tempfile::tempdir().unwrap();
        let extra = format!("[[input]]\ntopic = {subs_topic:?}\nformat = \"json\"\n");
        let cfg = topics.config(dir.path(), &SEEDS, &extra);
        assert_eq!(cfg.inputs.len(), 2);
        let run;
        let ticking;
        match variant {
            None => {
                kafka::produce(&subs_topic, &kafka::keyed(&subs));
                kafka::produce(&topics.input, &kafka::keyed(&checkouts));
                run = Running::start(cfg, defs.clone(), base());
                ticking = Ticking::start(Arc::clone(&run.clock), base(), 1);
            }
            Some(offset) => {
                run = Running::start(cfg, defs.clone(), base());
                ticking = Ticking::start(Arc::clone(&run.clock), base(), 1);
                wait_assigned(&run);
                // Four slices of event time, each published as it happens.
                let slices = 4i64;
                let at = |l: &String| winback::wire::json::decode_event(l).unwrap().occurred_at.0;
                let (lo, hi) = (at(&merged[0]), at(&merged[merged.len() - 1]) + 1);
                let slice_of = |l: &String| (at(l) - lo) * slices / (hi - lo);
                for i in 0..slices {
                    let c: Vec<String> = checkouts
                        .iter()
                        .filter(|l| slice_of(l) == i)
                        .cloned()
                        .collect();
                    let s: Vec<String> =
                        subs.iter().filter(|l| slice_of(l) == i).cloned().collect();
                    let (first, first_topic, second, second_topic) = if offset > 0 {
                        (c, &topics.input, s, &subs_topic)
                    } else {
                        (s, &subs_topic, c, &topics.input)
                    };
                    kafka::produce(first_topic, &kafka::keyed(&first));
                    std::thread::sleep(Duration::from_millis(offset.unsigned_abs()));
                    kafka::produce(second_topic, &kafka::keyed(&second));
                }
            }
        }
        run.wait_events(lines.len() as u64, T);
        kafka::stop_and_compare(&topics.transitions, &expected, T, || {
            drop(ticking);
            run.stop();
        });
    }
}
