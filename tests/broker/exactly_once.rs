//! Exactly-once mode against the real broker: the changelog restores an
//! emptied state directory, `winback rebuild` reproduces the state digest, and
//! a fenced zombie leaves nothing behind. Every read is `read_committed`.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::common::kafka::{self, Running, Topics};
use crate::common::{SEEDS, definitions};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use winback::domain::Timestamp;

const T: Duration = Duration::from_secs(90);
const PARTITIONS: i32 = 3;

fn until() -> Timestamp {
    Timestamp::parse_rfc3339("2026-12-31T00:00:00Z").unwrap()
}

const STILL: Timestamp = Timestamp(0);

fn winback(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_winback"))
        .args(args)
        .output()
        .expect("run winback");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn digest(config: &Path) -> String {
    let (ok, out, err) = winback(&["state", "digest", "--config", config.to_str().unwrap()]);
    assert!(ok, "digest failed: {err}");
    out
}

#[test]
fn an_emptied_state_dir_is_restored_and_nothing_is_sent_twice() {
    let defs = definitions(&SEEDS);
    let topics = Topics::fresh();
    topics.create(PARTITIONS);
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let cfg = topics.config(&state, &SEEDS, "");
    let lines = kafka::purchase_stream(300, 200, 11);
    let (first, second) = lines.split_at(lines.len() / 2);

    kafka::produce_partitioned(&topics.input, first, PARTITIONS);
    let run = Running::start(cfg.clone(), defs.clone(), STILL);
    run.wait_events(first.len() as u64, T);
    run.stop();

    // The disk is lost: everything comes back from the changelog.
    std::fs::remove_dir_all(&state).unwrap();
    kafka::produce_partitioned(&topics.input, second, PARTITIONS);
    let run = Running::start(cfg, defs.clone(), STILL);
    run.wait_events(second.len() as u64, T);
    assert!(
        run.stats
            .restored_records
            .load(std::sync::atomic::Ordering::Relaxed)
            > 0,
        "nothing was restored"
    );
    run.advance_wall(until());
    let expected = kafka::simulate_partitioned(&defs, &lines, until(), PARTITIONS);
    assert!(expected.iter().any(|l| l.contains("\"type\":\"send\"")));
    kafka::stop_and_compare(&topics.transitions, &expected, T, || run.stop());
}

#[test]
fn rebuild_after_deleting_the_state_gives_the_same_digest() {
    let defs = definitions(&SEEDS);
    let topics = Topics::fresh();
    topics.create(PARTITIONS);
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let text = topics.config_text(&kafka::brokers(), &state, &SEEDS, "");
    let config = dir.path().join("winback.toml");
    std::fs::write(&config, &text).unwrap();
    let cfg = topics.config(&state, &SEEDS, "");
    let lines = kafka::purchase_stream(300, 200, 12);
    kafka::produce_partitioned(&topics.input, &lines, PARTITIONS);
    let run = Running::start(cfg, defs.clone(), STILL);
    run.wait_events(lines.len() as u64, T);
    // Fire some waits from the idle clock too: timers and coupons change.
    run.clock
        .set(Timestamp::parse_rfc3339("2026-06-01T00:00:00Z").unwrap());
    std::thread::sleep(Duration::from_millis(1500));
    run.stop();

    let before = digest(&config);
    assert!(
        before.lines().count() == PARTITIONS as usize + 1,
        "{before}"
    );
    assert!(!before.contains("(0 entries)"), "{before}");
    std::fs::remove_dir_all(&state).unwrap();
    let (ok, _, err) = winback(&["rebuild", "--config", config.to_str().unwrap(), "--quiet"]);
    assert!(ok, "rebuild failed: {err}");
    assert!(err.contains("rebuilt 3 partition(s)"), "{err}");
    assert_eq!(digest(&config), before);

    // A rebuild over a store that holds the state changes nothing either.
    let (ok, _, err) = winback(&["rebuild", "--config", config.to_str().unwrap(), "--quiet"]);
    assert!(ok, "rebuild failed: {err}");
    assert_eq!(digest(&config), before);
}

#[test]
fn a_fenced_zombie_leaves_nothing_behind() {
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter("info")
        .try_init();
    let defs = definitions(&SEEDS);
    let topics = Topics::fresh();
    topics.create(PARTITIONS);
    let dir = tempfile::tempdir().unwrap();
    // Two processes that claim to be the same instance: the second fences the
    // first, whose transactions can then never commit.
    let extra = "instance_id = \"zombie-test\"";
    let a_cfg = topics.config(&dir.path().join("a"), &SEEDS, extra);
    let b_cfg = topics.config(&dir.path().join("b"), &SEEDS, extra);
    let lines = kafka::purchase_stream(300, 200, 13);
    let (first, second) = lines.split_at(lines.len() / 2);
    kafka::produce_partitioned(&topics.input, first, PARTITIONS);
    let a = Running::start(a_cfg, defs.clone(), STILL);
    a.wait_events(first.len() as u64, T);
    let b = Running::start(b_cfg, defs.clone(), STILL);
    std::thread::sleep(Duration::from_secs(2));
    kafka::produce_partitioned(&topics.input, second, PARTITIONS);
    // The zombie fails at its next commit (or stops cleanly if it had none);
    // the other takes every partition over and finishes.
    let a_result = a.stop_result();
    if let Err(e) = &a_result {
        let e = e.to_string();
        assert!(
            e.contains("transactions") || e.contains("stopped for good"),
            "{e}"
        );
    }
    let expected = kafka::simulate_partitioned(&defs, &lines, until(), PARTITIONS);
    let deadline = std::time::Instant::now() + T;
    while b.stats.events.load(std::sync::atomic::Ordering::Acquire) < second.len() as u64 {
        assert!(
            std::time::Instant::now() < deadline,
            "b did not take over: {:?}",
            b.stats
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    b.advance_wall(until());
    kafka::stop_and_compare(&topics.transitions, &expected, T, || {
        let stats = Arc::clone(&b.stats);
        b.stop();
        // Shown with a failure.
        eprintln!("b: {stats:?}");
    });
}

/// A member that joins revokes the first one's partitions while it is in
/// the middle of a batch: that batch is committed before the partitions
/// move, not aborted and done again, and the members together give the
/// output of one.
#[test]
fn a_revocation_commits_the_batch_under_way() {
    let _alone = crate::common::kafka::exclusive();
    let defs = definitions(&SEEDS);
    let topics = Topics::fresh();
    topics.create(PARTITIONS);
    let dir = tempfile::tempdir().unwrap();
    let lines = kafka::purchase_stream(5000, 200, 19);
    let (backlog, live) = lines.split_at(lines.len() / 5);
    kafka::produce_partitioned(&topics.input, backlog, PARTITIONS);
    // Input arriving all the time and long batches: a batch is under way
    // from the first record after a commit to the next commit, so nearly
    // always (a backlog alone was not enough: on a loaded machine its
    // fetches took most of each interval, and once in 40 runs no revocation
    // of three found a batch). The interval is not a multiple of librdkafka's
    // 3 s heartbeat, at which a member learns of a rebalance: with both at
    // 3 s they can stay in step (a run had a revocation 25 ms after a commit).
    let done = Arc::new(AtomicBool::new(false));
    let feeder = {
        let (input, live, done) = (topics.input.clone(), live.to_vec(), Arc::clone(&done));
        std::thread::spawn(move || {
            let gap = Duration::from_millis(250);
            kafka::produce_partitioned_live(&input, &live, PARTITIONS, 120, gap, &done)
        })
    };
    let config = |name: &str| {
        let mut cfg = topics.config(&dir.path().join(name), &SEEDS, "");
        cfg.commit_interval_ms = 5000;
        cfg.max_batch_events = 1_000_000;
        cfg
    };
    let a = Running::start(config("a"), defs.clone(), STILL);
    a.wait_events(100, T);
    // Each new member revokes the first one's partitions again (three
    // partitions: up to three more members), until one found a batch under
    // way. Two that start close together may join in one round.
    let mut others = Vec::new();
    for name in ["b", "c", "d"] {
        let seen = a.stats.revocations.load(Ordering::Acquire);
        others.push(Running::start(config(name), defs.clone(), STILL));
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while a.stats.revocations.load(Ordering::Acquire) == seen
            && std::time::Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(20));
        }
        if a.stats.revocation_commits.load(Ordering::Acquire) > 0 {
            break;
        }
    }
    done.store(true, Ordering::Release);
    assert!(
        a.stats.revocation_commits.load(Ordering::Acquire) >= 1,
        "no batch was under way at a revocation: {:?}",
        a.stats
    );
    assert_eq!(a.stats.aborted.load(Ordering::Acquire), 0, "{:?}", a.stats);
    feeder.join().expect("the input is produced");
    let expected = kafka::simulate_partitioned(&defs, &lines, until(), PARTITIONS);
    a.advance_wall(until());
    for o in &others {
        o.advance_wall(until());
    }
    kafka::stop_and_compare(&topics.transitions, &expected, T, || {
        // Shown with a failure.
        eprintln!("a: {:?}", a.stats);
        for o in &others {
            eprintln!("other: {:?}", o.stats);
        }
        a.stop();
        for o in others {
            o.stop();
        }
    });
}

/// Offsets the group committed but the changelog does not hold (here: a
/// changelog with nothing in it) mean a restore has missed a committed
/// transaction: the partition must not start from what the store has, which
/// would process that input, and send its transitions, a second time.
#[test]
fn a_restore_behind_the_groups_committed_offsets_takes_no_input() {
    let defs = definitions(&SEEDS);
    let topics = Topics::fresh();
    topics.create(PARTITIONS);
    let dir = tempfile::tempdir().unwrap();
    let cfg = topics.config(&dir.path().join("s"), &SEEDS, "");
    kafka::produce_partitioned(
        &topics.input,
        &kafka::purchase_stream(30, 60, 17),
        PARTITIONS,
    );
    kafka::commit_group_offsets(&cfg.group_id, &topics.input, &[(0, 3)]);
    let run = Running::start(cfg, defs, STILL);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while run.stats.restore_retries.load(Ordering::Acquire) < 3 {
        assert!(
            std::time::Instant::now() < deadline,
            "the restore was not read again: {:?}",
            run.stats
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        run.stats.events.load(Ordering::Acquire),
        0,
        "input taken while a restore is behind"
    );
    assert!(run.stop_result().is_err(), "stopped behind, not cleanly");
}

/// The crash between a transaction's commit and the local write, after an
/// earlier transaction of the same producer was aborted: the store's position
/// is past that abort, and the restore must still apply every committed
/// transaction after it, reading from that position (`restore_from =
/// "position"`, the default with Kafka). (The embedded broker lists every
/// aborted transaction in each fetch, and a read from that position skips
/// them all there: hence `restore_from = "start"` on it.)
#[test]
fn a_restore_after_an_aborted_transaction_applies_the_commits_the_store_missed() {
    let defs = definitions(&SEEDS);
    let topics = Topics::fresh();
    topics.create(PARTITIONS);
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let cfg = topics.config(&state, &SEEDS, "");
    let lines = kafka::purchase_stream(300, 200, 21);
    let parts: Vec<&[String]> = lines.chunks(lines.len().div_ceil(4)).collect();
    let run_over = |part: &[String]| {
        kafka::produce_partitioned(&topics.input, part, PARTITIONS);
        let run = Running::start(cfg.clone(), defs.clone(), STILL);
        run.wait_events(part.len() as u64, T);
        run.stop();
    };

    run_over(parts[0]);
    // An aborted transaction of the engine's own producer (same transactional
    // id, so the same producer id) on every changelog partition.
    let producer: ThreadedProducer<DefaultProducerContext> = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", kafka::brokers())
        .set("transactional.id", &cfg.instance_id)
        .create()
        .expect("producer");
    producer.init_transactions(T).expect("init");
    producer.begin_transaction().expect("begin");
    for p in 0..PARTITIONS {
        producer
            .send(
                BaseRecord::to(&topics.changelog)
                    .partition(p)
                    .key("aborted")
                    .payload("never applied"),
            )
            .map_err(|(e, _)| e)
            .expect("queued");
    }
    // Written, then aborted (an abort would drop records still queued).
    producer.flush(T).expect("flushed");
    producer.abort_transaction(T).expect("abort");
    drop(producer);
    // The store's position moves past the abort.
    run_over(parts[1]);
    let kept = dir.path().join("kept");
    copy_dir(&state, &kept);
    run_over(parts[2]);

    // The disk goes back to before the last run's commits. The next part's
    // events are taken only once every partition is restored.
    std::fs::remove_dir_all(&state).unwrap();
    std::fs::rename(&kept, &state).unwrap();
    kafka::produce_partitioned(&topics.input, parts[3], PARTITIONS);
    let run = Running::start(cfg, defs.clone(), STILL);
    run.wait_events(parts[3].len() as u64, T);
    assert!(
        run.stats.restored_records.load(Ordering::Acquire) > 0,
        "nothing restored: {:?}",
        run.stats
    );
    assert_eq!(
        run.stats.restore_retries.load(Ordering::Acquire),
        0,
        "a restore missed committed transactions: {:?}",
        run.stats
    );
    // Nothing of the third part is sent again, nothing of the last is missed.
    let expected = kafka::simulate_partitioned(&defs, &lines, STILL, PARTITIONS);
    kafka::stop_and_compare(&topics.transitions, &expected, T, || run.stop());
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}
