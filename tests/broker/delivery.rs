//! The delivery holes: what the broker, the network or the input can do to a
//! batch, and what `run` must then do instead of losing or repeating output.
//! Each test failed on the engine before its fix.

use std::sync::Arc;
use std::time::Duration;

use crate::common::kafka::{self, Running, Topics};
use crate::common::{SEEDS, definitions};
use winback::domain::{Definitions, Timestamp};

const T: Duration = Duration::from_secs(60);
const STILL: Timestamp = Timestamp(0);

fn checkout(id: &str, contact: &str, at: &str, merchant: &str) -> String {
    format!(
        r#"{{"event_id":"{id}","name":"checkout","contact_id":"{contact}","occurred_at":"{at}","merchant_id":"{merchant}"}}"#
    )
}

/// An input record larger than any record the producer may write goes to
/// the dead-letter topic all the same: its coordinates, its reason and the
/// first bytes of it. (It used to be refused by librdkafka on the way out,
/// silently, while its input offset committed.)
#[test]
fn an_oversized_input_record_is_dead_lettered_as_a_prefix() {
    let defs = definitions(&SEEDS);
    let topics = Topics::fresh();
    // An input topic that takes records of up to 4 MB; the rest as usual.
    kafka::create_topics_with(&[&topics.input], 1, &[("max.message.bytes", "4000000")]);
    kafka::create_topics(
        &[&topics.transitions, &topics.sends, &topics.dead_letters],
        1,
    );
    kafka::create_topics_with(&[&topics.changelog], 1, &[("cleanup.policy", "compact")]);
    let dir = tempfile::tempdir().unwrap();
    let huge = format!("{{not json {}", "z".repeat(2_000_000));
    let good = checkout("o1", "bob", "2026-01-03T00:00:00Z", "m1");
    kafka::produce_large(
        &topics.input,
        &[
            ("ann".into(), huge.clone().into_bytes()),
            ("bob".into(), good.into_bytes()),
        ],
    );
    let run = Running::start(topics.config(dir.path(), &SEEDS, ""), defs, STILL);
    run.wait_events(2, T);
    let dlq = kafka::read_exactly(&topics.dead_letters, 1, T);
    run.stop();
    let rec = &dlq[0];
    assert_eq!(rec.headers["winback.dlq.topic"], topics.input);
    assert_eq!(rec.headers["winback.dlq.offset"], "0");
    assert!(
        rec.headers["winback.dlq.reason"].contains("invalid JSON"),
        "{:?}",
        rec.headers["winback.dlq.reason"]
    );
    assert_eq!(
        rec.headers["winback.dlq.truncated"],
        format!("key=3 value={}", huge.len())
    );
    assert_eq!(rec.value.len(), winback::source::DLQ_PREFIX_BYTES);
    assert!(huge.as_bytes().starts_with(&rec.value));
}

/// An output record the producer refuses (here: a contact's state above a
/// small `message.max.bytes`) stops the engine with an error that names it,
/// and nothing of its batch commits: no transition, no input offset.
#[test]
fn an_oversized_output_record_stops_the_engine_and_commits_nothing() {
    let files = ["config/winback-90d.toml"];
    let defs = definitions(&files);
    let topics = Topics::fresh();
    topics.create(1);
    let dir = tempfile::tempdir().unwrap();
    // Ten merchants with long ids: the contact's changelog record outgrows 1,000 bytes.
    let lines: Vec<String> = (0..10)
        .map(|i| {
            checkout(
                &format!("o{i}"),
                "ann",
                &format!("2026-01-0{}T00:00:00Z", i % 9 + 1),
                &format!("{i}{}", "m".repeat(200)),
            )
        })
        .collect();
    kafka::produce(&topics.input, &kafka::keyed(&lines));
    let cfg = topics.config(
        dir.path(),
        &files,
        "[kafka]\n\"message.max.bytes\" = 1000\n",
    );
    let run = Running::start(cfg, defs, STILL);
    let err = run
        .stopped_on_its_own(T)
        .expect_err("must stop")
        .to_string();
    assert!(err.contains(&topics.changelog), "{err}");
    assert!(err.contains("key \"ann\""), "{err}");
    assert!(err.contains("message.max.bytes"), "{err}");
    assert_eq!(
        kafka::read(&topics.transitions, 1, Duration::from_secs(3)).len(),
        0,
        "a transition of the refused batch was committed"
    );
    assert_eq!(kafka::group_offset(&topics.group, &topics.input, 0), None);
}

/// A transaction that carries no input records (its batch only fired waits)
/// still carries the held partitions' offsets, so the group fences it: a
/// process stopped (SIGSTOP) long enough for its partitions to move to
/// another member, with another instance id, wakes and commits nothing; the
/// wait's message goes out once, from the new owner.
#[test]
fn a_zombie_with_another_instance_id_commits_nothing_after_its_partitions_moved() {
    let _alone = crate::common::kafka::exclusive();
    let topics = Topics::fresh();
    topics.create(1);
    let dir = tempfile::tempdir().unwrap();
    let config = |name: &str| {
        let path = dir.path().join(format!("{name}.toml"));
        let text = topics.config_text(
            &kafka::brokers(),
            &dir.path().join(name),
            &["config/winback-90d.toml"],
            &format!(
                "instance_id = \"{name}-{}\"\n[kafka]\n\"session.timeout.ms\" = 6000\n\"heartbeat.interval.ms\" = 1000\n",
                topics.group
            ),
        );
        std::fs::write(&path, text).unwrap();
        path
    };
    let a_log = dir.path().join("a.log");
    let mut a = kafka::spawn_run(&config("a"), &a_log);
    // A purchase whose 90-day wait the clock reaches 25 s from now: the
    // wall clock less the allowed lateness.
    let now = chrono::Utc::now().timestamp_millis();
    let lateness = winback::config::engine::DEFAULT_ALLOWED_LATENESS.0;
    let bought = Timestamp(now - 90 * 86_400_000 - lateness + 25_000);
    let line = format!(
        r#"{{"event_id":"o1","name":"checkout","contact_id":"ann","occurred_at":"{bought}"}}"#
    );
    kafka::produce(
        &topics.input,
        &kafka::keyed(&[kafka::subscribed("ann", bought), line]),
    );
    // entered, goto, wait_started: committed by a.
    let got = kafka::read(&topics.transitions, 3, T);
    assert_eq!(got.len(), 3, "{}", kafka::log_tail(&a_log, 20));
    kafka::signal(&a, "STOP");

    // b takes the partition once a's session has expired, and sends at expiry.
    let b_log = dir.path().join("b.log");
    let mut b = kafka::spawn_run(&config("b"), &b_log);
    let sends = kafka::read(&topics.sends, 1, Duration::from_secs(90));
    assert_eq!(sends.len(), 1, "{}", kafka::log_tail(&b_log, 30));

    // a wakes: its wait is due by its wall clock too, and it still believes
    // it holds the partition.
    kafka::signal(&a, "CONT");
    std::thread::sleep(Duration::from_secs(8));
    assert!(kafka::terminate(&mut b), "{}", kafka::log_tail(&b_log, 30));
    kafka::terminate(&mut a);
    let sends = kafka::read(&topics.sends, 2, Duration::from_secs(3));
    assert_eq!(
        sends.len(),
        1,
        "sent twice; a:\n{}\nb:\n{}",
        kafka::log_tail(&a_log, 30),
        kafka::log_tail(&b_log, 30)
    );
}

/// A stored input position that retention deleted before it was read stops
/// the engine with an error naming topic, partition and offsets (the
/// consumer's reset policy used to move it to the log's start in silence);
/// `processing.offset_out_of_range = "earliest"` goes on from there.
#[test]
fn a_stored_position_outside_the_log_stops_the_engine_unless_told() {
    let files = ["config/winback-90d.toml"];
    let defs = definitions(&files);
    let topics = Topics::fresh();
    topics.create(1);
    let dir = tempfile::tempdir().unwrap();
    let lines: Vec<String> = (0..15)
        .map(|i| {
            checkout(
                &format!("o{i}"),
                &format!("c{i}"),
                "2026-01-02T00:00:00Z",
                "m",
            )
        })
        .collect();
    kafka::produce(&topics.input, &kafka::keyed(&lines[..10]));
    let run = Running::start(topics.config(dir.path(), &files, ""), defs.clone(), STILL);
    run.wait_events(10, T);
    run.stop();
    // Five more arrive while winback is down, and retention takes the first
    // two of them before it comes back.
    kafka::produce(&topics.input, &kafka::keyed(&lines[10..]));
    kafka::delete_records(&topics.input, 0, 12);

    let run = Running::start(topics.config(dir.path(), &files, ""), defs.clone(), STILL);
    let err = run
        .stopped_on_its_own(T)
        .expect_err("must stop")
        .to_string();
    assert!(
        err.contains(&format!("{}[0]", topics.input))
            && err.contains("stored position 10")
            && err.contains("offsets 12 to 15"),
        "{err}"
    );

    let run = Running::start(
        topics.config(dir.path(), &files, "offset_out_of_range = \"earliest\"\n"),
        defs,
        STILL,
    );
    run.wait_events(3, T);
    run.stop();
    // entered, goto, wait_started for c12..c14 only after the first ten.
    let got = kafka::as_json(&kafka::read_exactly(&topics.transitions, 13 * 3, T));
    assert!(got.iter().any(|l| l.contains("\"contact_id\":\"c14\"")));
    assert!(!got.iter().any(|l| l.contains("\"contact_id\":\"c10\"")));
}

/// A changelog that deletes old records would lose every contact that did
/// not change within its retention: `run` refuses it and says how to fix it.
#[test]
fn a_changelog_without_compaction_is_refused() {
    let defs = definitions(&SEEDS);
    let topics = Topics::fresh();
    kafka::create_topics(
        &[
            &topics.input,
            &topics.transitions,
            &topics.sends,
            &topics.dead_letters,
            &topics.changelog,
        ],
        1,
    );
    let dir = tempfile::tempdir().unwrap();
    let run = Running::start(topics.config(dir.path(), &SEEDS, ""), defs, STILL);
    let err = run.stop_result().expect_err("refused").to_string();
    assert!(
        err.contains(&topics.changelog)
            && err.contains("cleanup.policy is \"delete\"")
            && err.contains("--add-config cleanup.policy=compact"),
        "{err}"
    );
}

fn with_pool(defs: &Definitions, name: &str, codes: Vec<String>) -> Arc<Definitions> {
    let mut d = defs.clone();
    d.pools[0].name = name.into();
    d.pools[0].codes = codes.into_iter().map(Arc::from).collect();
    Arc::new(d)
}

/// Coupon progress restored from the changelog into an empty state
/// directory is trusted only for the codes and the split it was made with:
/// a reordered codes file, a renamed pool and more input partitions are
/// refused (each would hand codes out again); appended codes are fine.
#[test]
fn restored_coupon_progress_refuses_changed_codes_pools_and_partition_counts() {
    let defs = definitions(&SEEDS);
    let codes: Vec<String> = defs.pools[0].codes.iter().map(|c| c.to_string()).collect();
    let topics = Topics::fresh();
    topics.create(1);
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let lines = kafka::purchase_stream(60, 100, 9);
    kafka::produce(&topics.input, &kafka::keyed(&lines));
    let run = Running::start(topics.config(&state, &SEEDS, ""), defs.clone(), STILL);
    run.wait_events(lines.len() as u64, T);
    // Waits fire and hand out codes.
    run.clock
        .set(Timestamp::parse_rfc3339("2026-12-01T00:00:00Z").unwrap());
    let coupons = kafka::read(&topics.transitions, usize::MAX, Duration::from_secs(4))
        .iter()
        .filter(|r| r.headers.get("winback.type").map(String::as_str) == Some("coupon_assigned"))
        .count();
    run.stop();
    assert!(coupons > 1, "{coupons} codes handed out");

    let restart = |defs: Arc<Definitions>| {
        std::fs::remove_dir_all(&state).ok();
        let run = Running::start(topics.config(&state, &SEEDS, ""), defs, STILL);
        // Until it stops on its own, or its restore (which checks the coupon
        // progress as it applies it) is through.
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        let restored = || {
            run.stats
                .restored_records
                .load(std::sync::atomic::Ordering::Acquire)
        };
        while !run.finished() && restored() == 0 && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        run.stop_result()
    };
    let mut reordered = codes.clone();
    reordered.swap(0, 1);
    let err = restart(with_pool(&defs, &defs.pools[0].name, reordered))
        .expect_err("reordered codes")
        .to_string();
    assert!(err.contains("reordered, shortened or edited"), "{err}");
    let err = restart(with_pool(&defs, "renamed", codes.clone()))
        .expect_err("renamed pool")
        .to_string();
    assert!(err.contains("is no longer defined"), "{err}");
    let mut appended = codes.clone();
    appended.push("APPENDED-1".into());
    restart(with_pool(&defs, &defs.pools[0].name, appended)).expect("appended codes are fine");

    kafka::add_partitions(&[&topics.input, &topics.changelog], 2);
    let err = restart(defs.clone())
        .expect_err("more partitions")
        .to_string();
    assert!(err.contains("made with 1 input partitions"), "{err}");
}

/// At-least-once mode keeps no changelog: a second member of its group
/// would take partitions whose state it does not have. It is refused.
#[test]
fn at_least_once_refuses_to_share_its_partitions() {
    let defs = definitions(&SEEDS);
    let topics = Topics::fresh();
    topics.create(2);
    let dir = tempfile::tempdir().unwrap();
    let extra = |name: &str| format!("instance_id = \"{name}\"\nguarantee = \"at_least_once\"\n");
    let a = Running::start(
        topics.config(&dir.path().join("a"), &SEEDS, &extra("a")),
        defs.clone(),
        STILL,
    );
    kafka::produce(
        &topics.input,
        &kafka::keyed(&[checkout("o1", "ann", "2026-01-02T00:00:00Z", "m")]),
    );
    a.wait_events(1, T);
    let b = Running::start(
        topics.config(&dir.path().join("b"), &SEEDS, &extra("b")),
        defs,
        STILL,
    );
    let deadline = std::time::Instant::now() + T;
    while !a.finished() && !b.finished() {
        assert!(std::time::Instant::now() < deadline, "both went on");
        std::thread::sleep(Duration::from_millis(50));
    }
    let errs: Vec<String> = [a.stop_result(), b.stop_result()]
        .into_iter()
        .filter_map(Result::err)
        .map(|e| e.to_string())
        .collect();
    assert!(!errs.is_empty());
    for e in &errs {
        assert!(e.contains("runs as the only member of its group"), "{e}");
    }
}

/// The mechanism behind the zombie test, made visible: a transaction whose
/// batch read no input (it only fired waits from the wall clock) commits the
/// held partitions' offsets to the group all the same. The second run here
/// uses a group that never saw an input record, so its offsets can only come
/// from such a transaction. (They never did: a zombie's idle batch went
/// unfenced, and whether the zombie test caught it depended on a race.)
#[test]
fn a_transaction_that_only_fired_waits_carries_the_input_offsets() {
    let files = ["config/winback-90d.toml"];
    let defs = definitions(&files);
    let topics = Topics::fresh();
    topics.create(1);
    let dir = tempfile::tempdir().unwrap();
    let bought = Timestamp::parse_rfc3339("2026-03-01T12:00:00Z").unwrap();
    let lines: Vec<String> = (0..3)
        .flat_map(|i| {
            let c = format!("c{i}");
            [
                kafka::subscribed(&c, bought),
                checkout(&format!("o{i}"), &c, &bought.to_string(), "m"),
            ]
        })
        .collect();
    kafka::produce(&topics.input, &kafka::keyed(&lines));
    let run = Running::start(topics.config(dir.path(), &files, ""), defs.clone(), bought);
    run.wait_events(6, T);
    run.stop();

    let mut other = Topics::fresh();
    other.input = topics.input.clone();
    other.transitions = topics.transitions.clone();
    other.sends = topics.sends.clone();
    other.dead_letters = topics.dead_letters.clone();
    other.changelog = topics.changelog.clone();
    assert_ne!(other.group, topics.group);
    let run = Running::start(other.config(dir.path(), &files, ""), defs, bought);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(kafka::group_offset(&other.group, &topics.input, 0), None);
    run.advance_wall(Timestamp(bought.0 + 90 * 86_400_000));
    kafka::read(&topics.sends, 3, T);
    run.stop();
    assert_eq!(
        kafka::group_offset(&other.group, &topics.input, 0),
        Some(6),
        "the idle batch's transaction carried no input offsets"
    );
    assert_eq!(kafka::read_exactly(&topics.sends, 3, T).len(), 3);
}
