//! The crash harness: `winback run` (the binary, exactly-once mode) over a
//! stream of purchases whose waits expire during the run, killed with SIGKILL
//! at random moments and restarted, every other time with an empty state
//! directory, with every 5th transaction aborted on top. Afterwards a `read_committed` reader must see exactly the
//! transitions of `simulate` on the same events - every send once - and no
//! coupon code twice.
//!
//! `WINBACK_CRASH_KILLS` (default 20) and `WINBACK_CRASH_CONTACTS` (default
//! 3000) scale it; `WINBACK_CRASH_SEED` picks another kill schedule.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::kafka::{self, Topics, assert_same};
use common::{SEEDS, definitions};
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
    let config = dir.path().join("winback.toml");
    std::fs::write(
        &config,
        topics.config_text(&kafka::brokers(), &state, &SEEDS, ""),
    )
    .unwrap();

    // Dated January to July 2026: by the wall clock every wait is over, so
    // the caught-up engine fires all of them, as `simulate` does to `until`.
    let lines = kafka::purchase_stream(contacts, 200, 99);
    let until = Timestamp::parse_rfc3339("2027-06-01T00:00:00Z").unwrap();
    let now = Timestamp(chrono::Utc::now().timestamp_millis());
    assert!(
        now > Timestamp::parse_rfc3339("2026-11-01T00:00:00Z").unwrap() && now < until,
        "the wall clock must be past every wait of the stream and before `until`"
    );
    let expected = kafka::simulate_partitioned(&defs, &lines, until, PARTITIONS);
    let sends = expected
        .iter()
        .filter(|l| l.contains("\"type\":\"send\""))
        .count();
    assert!(sends > 100, "the stream sends too little to test: {sends}");
    kafka::produce_partitioned(&topics.input, &lines, PARTITIONS);

    let mut seen = Vec::new();
    for i in 0..kills {
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
        let after = Duration::from_millis(300 + rnd() % 2700);
        std::thread::sleep(after);
        child.kill().expect("SIGKILL");
        child.wait().expect("reaped");
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
        "{} transitions expected; kills (ms after start, transitions seen committed): {seen:?}; in the killed runs' logs: {} restores, {} revocations, {} aborted transactions",
        expected.len(),
        logs.matches("restored from the changelog").count(),
        logs.matches(" revoked").count(),
        logs.matches("aborted").count(),
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

    let got = kafka::as_json(&kafka::read(
        &topics.transitions,
        usize::MAX,
        Duration::from_secs(5),
    ));
    assert_same(&got, &expected);

    let sent = kafka::as_json(&kafka::read(
        &topics.sends,
        usize::MAX,
        Duration::from_secs(5),
    ));
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
