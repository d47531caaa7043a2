//! The crash harness: `winback run` (the binary, exactly-once mode) over a
//! stream of purchases whose waits expire during the run, produced part by
//! part while the engine runs, killed with SIGKILL at random moments and
//! restarted, every other time with an empty state
//! directory, with every 5th transaction aborted on top. Afterwards a `read_committed` reader must see exactly the
//! transitions of `simulate` on the same events - every send once - and no
//! coupon code twice.
//!
//! `WINBACK_CRASH_KILLS` (default 20) and `WINBACK_CRASH_CONTACTS` (default
//! 3000) scale it; `WINBACK_CRASH_SEED` picks another kill schedule.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::common::kafka::{self, Topics, assert_same};
use crate::common::{SEEDS, definitions};
use winback::domain::Timestamp;

const PARTITIONS: i32 = 2;

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The run's directory, kept for inspection when `WINBACK_CRASH_KEEP` is set.
fn scopeguard(dir: tempfile::TempDir) -> Kept {
    Kept(Some(dir))
}

struct Kept(Option<tempfile::TempDir>);

impl Kept {
    fn path(&self) -> &std::path::Path {
        self.0
            .as_ref()
            .map_or(std::path::Path::new("."), |d| d.path())
    }
}

impl Drop for Kept {
    fn drop(&mut self) {
        if std::env::var("WINBACK_CRASH_KEEP").is_ok()
            && let Some(d) = self.0.take()
        {
            let _ = d.keep();
        }
    }
}

fn field<'a>(line: &'a str, name: &str) -> Option<&'a str> {
    let key = format!("\"{name}\":\"");
    let start = line.find(&key)? + key.len();
    let len = line[start..].find('"')?;
    Some(&line[start..start + len])
}

#[test]
fn sigkill_at_random_moments_loses_no_send_and_duplicates_none() {
    let _alone = crate::common::kafka::exclusive();
    let kills = env_or("WINBACK_CRASH_KILLS", 20);
    let contacts = env_or("WINBACK_CRASH_CONTACTS", 3000) as usize;
    let mut x = env_or("WINBACK_CRASH_SEED", 0x5eed) | 1;
    let mut rnd = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };

    let defs = definitions(&SEEDS);
    let topics = Topics::fresh();
    topics.create(PARTITIONS);
    let dir = tempfile::tempdir().unwrap();
    if std::env::var("WINBACK_CRASH_KEEP").is_ok() {
        eprintln!("keeping {}", dir.path().display());
    }
    let dir = scopeguard(dir);
    let state = dir.path().join("state");
    let config = topics.config_file(dir.path(), &state);

    // Dated in the wall clock's past, as a live shop's events are: while
    // parts of the stream arrive, a partition's clock is the events' time;
    // only a partition quiet for the quiet period lets the wall clock (less
    // the allowed lateness) move it, which then fires every wait, as
    // `simulate` does to `until`. (Events stamped after the wall clock are
    // dead-lettered: `processing.max_future_skew`.)
    let start = Timestamp::parse_rfc3339("2025-01-01T00:00:00Z").unwrap();
    let until = Timestamp::parse_rfc3339("2026-06-01T00:00:00Z").unwrap();
    let now = Timestamp(chrono::Utc::now().timestamp_millis());
    assert!(
        kafka::wall_at(until) < now,
        "every wait must end before the wall clock"
    );
    let lines = kafka::purchase_stream_from(start.0, contacts, 200, 99);
    let expected = kafka::simulate_partitioned(&defs, &lines, until, PARTITIONS);
    let sends = expected
        .iter()
        .filter(|l| l.contains("\"type\":\"send\""))
        .count();
    assert!(sends > 100, "the stream sends too little to test: {sends}");

    // Each killed run gets its part of the stream while it runs, so that
    // every kill lands in a live stream, not in an engine with nothing to do.
    let parts: Vec<Vec<String>> = lines
        .chunks(lines.len().div_ceil(kills as usize))
        .map(<[String]>::to_vec)
        .collect();
    let mut seen = Vec::new();
    for i in 0..kills as usize {
        if i % 2 == 1 {
            // The disk is lost: the next start restores from the changelog.
            let _ = std::fs::remove_dir_all(&state);
        }
        // Every 5th transaction of the killed runs is aborted on top: the
        // rollback path runs too, between the kills.
        let mut child = kafka::spawn_run_with(
            &config,
            &dir.path().join(format!("run-{i}.log")),
            &[(winback::runtime::ENV_ABORT_EVERY, "5")],
        );
        let part = parts.get(i).cloned().unwrap_or_default();
        let input = topics.input.clone();
        let feeder = std::thread::spawn(move || {
            kafka::produce_partitioned_paced(
                &input,
                &part,
                PARTITIONS,
                25,
                Duration::from_millis(80),
            )
        });
        let after = Duration::from_millis(300 + rnd() % 2700);
        std::thread::sleep(after);
        child.kill().expect("SIGKILL");
        child.wait().expect("reaped");
        feeder.join().expect("the part produced");
        // At least this many (a short read): shows the kills land mid-stream.
        let committed = kafka::read(&topics.transitions, usize::MAX, Duration::from_secs(1)).len();
        seen.push((after.as_millis(), committed));
    }
    let logs: String = (0..kills)
        .map(|i| {
            std::fs::read_to_string(dir.path().join(format!("run-{i}.log"))).unwrap_or_default()
        })
        .collect();
    eprintln!(
        "{} transitions expected; kills (ms after start, transitions seen committed): {seen:?}; in the killed runs' logs: {} restores ({} read again: behind the group's committed offsets), {} revocations, {} aborted transactions",
        expected.len(),
        logs.matches("restored from the changelog").count(),
        logs.matches("reading the changelog again").count(),
        logs.matches(" revoked").count(),
        logs.matches("aborted").count(),
    );

    // The harness's premise: kills land while output is being committed,
    // not only before the first record or after the last.
    let mid = seen
        .iter()
        .filter(|&&(_, n)| n > 0 && n < expected.len())
        .count();
    assert!(
        mid >= kills as usize / 2,
        "only {mid} of {kills} kills landed mid-stream: {seen:?}"
    );

    // The last run is left to finish, then stopped gracefully.
    let mut child = kafka::spawn_run(&config, &dir.path().join("run-last.log"));
    let last_log = dir.path().join("run-last.log");
    let got = kafka::read_until(
        &topics.transitions,
        expected.len(),
        Duration::from_secs(env_or("WINBACK_CRASH_FINISH_S", 300)),
    );
    if got.len() < expected.len() {
        let _ = child.kill();
        panic!(
            "{} of {} transitions committed; the last run's log ends:\n{}",
            got.len(),
            expected.len(),
            kafka::log_tail(&last_log, 40)
        );
    }
    // Anything more (a duplicate) would be committed within a few intervals.
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        kafka::terminate(&mut child),
        "graceful stop failed:\n{}",
        kafka::log_tail(&last_log, 40)
    );

    let got = kafka::as_json(&kafka::read_to_end(&topics.transitions, kafka::READ_BACK));
    assert_same(&got, &expected);

    let sent = kafka::as_json(&kafka::read_to_end(&topics.sends, kafka::READ_BACK));
    assert_eq!(
        sent.len(),
        sends,
        "every send exactly once on the sends topic"
    );
    let mut codes: BTreeMap<&str, usize> = BTreeMap::new();
    for l in got
        .iter()
        .filter(|l| l.contains("\"type\":\"coupon_assigned\""))
    {
        *codes.entry(field(l, "code").expect("a code")).or_default() += 1;
    }
    assert!(!codes.is_empty(), "no coupon was handed out");
    let twice: Vec<_> = codes.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "codes handed out twice: {twice:?}");
}
