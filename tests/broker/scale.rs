//! Scale-out: two and three `winback run` processes (the binary, each with
//! its own state directory) in one consumer group share the input partitions,
//! moving them (revoke, commit, restore from the changelog) as members join;
//! one of them is killed with SIGKILL mid-run and replaced by a process with
//! an empty disk, which restores its partitions from the changelog. The committed output
//! must be exactly what one process gives on the same input (`simulate` per
//! partition, which the single-process tests hold the runtime to), and no
//! coupon code may be handed out twice across processes.

use std::collections::BTreeSet;
use std::time::Duration;

use crate::common::kafka::{self, Topics, assert_same};
use crate::common::{SEEDS, definitions};
use winback::domain::Timestamp;

const PARTITIONS: i32 = 6;

fn assigned(log: &std::path::Path) -> bool {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .any(|l| l.contains("assigned") && l.contains("partitions=[("))
}

/// Waits until the process logging to `log` has partitions of its own.
fn wait_assigned(log: &std::path::Path) {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !assigned(log) {
        assert!(
            std::time::Instant::now() < deadline,
            "never assigned:\n{}",
            kafka::log_tail(log, 30)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `WINBACK_SCALE_DEBUG` set: librdkafka's group protocol in the logs.
fn debug() -> bool {
    std::env::var("WINBACK_SCALE_DEBUG").is_ok()
}

fn spawn(config: &std::path::Path, log: &std::path::Path) -> kafka::Proc {
    if debug() {
        kafka::spawn_run_with(config, log, &[("RUST_LOG", "info,librdkafka=debug")])
    } else {
        kafka::spawn_run(config, log)
    }
}

fn group_of(processes: usize, seed: u64, kill: bool) {
    let _alone = crate::common::kafka::exclusive();
    let defs = definitions(&SEEDS);
    let topics = Topics::fresh();
    topics.create(PARTITIONS);
    let mut dir = tempfile::tempdir().unwrap();
    if debug() {
        // The processes' logs outlive a failure that does not repeat.
        dir.disable_cleanup(true);
        eprintln!("keeping {}", dir.path().display());
    }
    let lines = kafka::purchase_stream(2000, 200, seed);
    let until = Timestamp::parse_rfc3339("2027-06-01T00:00:00Z").unwrap();
    let expected = kafka::simulate_partitioned(&defs, &lines, until, PARTITIONS);
    kafka::produce_partitioned(&topics.input, &lines, PARTITIONS);

    let mut children = Vec::new();
    for i in 0..processes {
        let config = dir.path().join(format!("p{i}.toml"));
        let state = dir.path().join(format!("state-{i}"));
        std::fs::write(
            &config,
            topics.config_text(
                &kafka::brokers(),
                &state,
                &SEEDS,
                if debug() {
                    "[kafka]\n\"debug\" = \"cgrp\"\n"
                } else {
                    ""
                },
            ),
        )
        .unwrap();
        let log = dir.path().join(format!("p{i}.log"));
        children.push((spawn(&config, &log), log));
    }
    // Started together: their joins race each other through several
    // rebalance rounds, each a revoke-commit-assign-restore.
    for (_, log) in &children {
        wait_assigned(log);
    }
    let mut killed = Vec::new();
    if kill {
        // Once it has partitions and work is under way, one process dies.
        let (mut victim, log) = children.remove(processes - 1);
        std::thread::sleep(Duration::from_secs(1));
        victim.kill().expect("SIGKILL");
        victim.wait().expect("reaped");
        killed.push(log);
        // Its machine is replaced: same config, empty disk. The static member
        // id takes the dead one's place (and partitions) without a rebalance
        // if it comes within the session timeout; otherwise the survivors
        // took them, and its join moves some back. Either way partitions are
        // restored from the changelog into an empty store.
        let i = processes - 1;
        std::fs::remove_dir_all(dir.path().join(format!("state-{i}"))).unwrap();
        let log = dir.path().join(format!("p{i}-replacement.log"));
        children.push((spawn(&dir.path().join(format!("p{i}.toml")), &log), log));
    }

    let deadline = std::time::Instant::now() + Duration::from_secs(180);
    let mut got = Vec::new();
    while got.len() < expected.len() && std::time::Instant::now() < deadline {
        got = kafka::read(&topics.transitions, expected.len(), Duration::from_secs(5));
        for (child, log) in &mut children {
            if let Ok(Some(status)) = child.try_wait() {
                panic!("a process exited ({status}):\n{}", kafka::log_tail(log, 30));
            }
        }
    }
    let logs = || {
        children
            .iter()
            .map(|(_, l)| kafka::log_tail(l, 30))
            .collect::<Vec<_>>()
            .join("\n---\n")
    };
    assert!(
        got.len() >= expected.len(),
        "{} of {} transitions committed; logs:\n{}",
        got.len(),
        expected.len(),
        logs()
    );
    std::thread::sleep(Duration::from_secs(2));
    for (child, log) in &mut children {
        assert!(
            kafka::terminate(child),
            "graceful stop failed:\n{}",
            kafka::log_tail(log, 30)
        );
    }

    // Every process had partitions of its own at some point.
    for (_, log) in &children {
        assert!(
            assigned(log),
            "a process never got partitions:\n{}",
            kafka::log_tail(log, 30)
        );
    }

    let got = kafka::as_json(&kafka::read_to_end(&topics.transitions, kafka::READ_BACK));
    assert_same(&got, &expected);
    let mut codes = BTreeSet::new();
    for l in got
        .iter()
        .filter(|l| l.contains("\"type\":\"coupon_assigned\""))
    {
        let code = l
            .split("\"code\":\"")
            .nth(1)
            .and_then(|r| r.split('"').next());
        assert!(
            codes.insert(code.expect("a code")),
            "code handed out twice: {l}"
        );
    }
    assert!(!codes.is_empty());
}

#[test]
fn two_processes_one_killed_give_the_transitions_of_one() {
    group_of(2, 21, true);
}

#[test]
fn two_processes_give_the_transitions_of_one() {
    group_of(2, 23, false);
}

#[test]
fn three_processes_one_killed_give_the_transitions_of_one() {
    group_of(3, 22, true);
}
