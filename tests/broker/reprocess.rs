//! `winback reprocess` against the real broker: the input history re-derived
//! from nothing equals `simulate` per partition, twice byte for byte, without
//! touching the live output topics; a malformed record is reported by offset.

use std::process::Command;
use std::time::Duration;

use crate::common::kafka::{self, Topics, assert_same};
use crate::common::{SEEDS, definitions};
use winback::domain::Timestamp;

const PARTITIONS: i32 = 3;

fn winback(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_winback"))
        .args(args)
        .output()
        .expect("run winback");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn reprocessing_twice_gives_byte_identical_output_and_leaves_live_topics_alone() {
    let defs = definitions(&SEEDS);
    let topics = Topics::fresh();
    topics.create(PARTITIONS);
    let (out1, out2) = (
        format!("{}.what-if-1", topics.input),
        format!("{}.what-if-2", topics.input),
    );
    kafka::create_topics(&[&out1, &out2], PARTITIONS);
    let dir = tempfile::tempdir().unwrap();
    let config = topics.config_file(dir.path(), &dir.path().join("state"));
    let lines = kafka::purchase_stream(400, 200, 31);
    kafka::produce_partitioned(&topics.input, &lines, PARTITIONS);
    kafka::produce(&topics.input, &[("c0001".into(), b"{not json".to_vec())]);
    let until = "2027-06-01T00:00:00Z";
    let expected = kafka::simulate_partitioned(
        &defs,
        &lines,
        Timestamp::parse_rfc3339(until).unwrap(),
        PARTITIONS,
    );

    let cfg = config.to_str().unwrap();
    let mut files = Vec::new();
    for (i, topic) in [&out1, &out2].iter().enumerate() {
        let file = dir.path().join(format!("out-{i}.jsonl"));
        let (ok, err) = winback(&[
            "reprocess",
            "--config",
            cfg,
            "--from-beginning",
            "--until",
            until,
            "--output-topic",
            topic,
            "--out",
            file.to_str().unwrap(),
        ]);
        assert!(ok, "reprocess failed: {err}");
        assert!(err.contains("offset") && err.contains("skipped"), "{err}");
        assert!(
            err.contains("malformed") || err.contains("1 malformed"),
            "{err}"
        );
        files.push(std::fs::read(&file).unwrap());
    }
    assert_eq!(files[0], files[1], "two runs wrote different JSON");
    let text = String::from_utf8(files[0].clone()).unwrap();
    let got: Vec<String> = text.lines().map(str::to_string).collect();
    assert_same(&got, &expected);

    let a = kafka::read_exactly(&out1, expected.len(), Duration::from_secs(60));
    let b = kafka::read_exactly(&out2, expected.len(), Duration::from_secs(60));
    let bytes = |r: &[kafka::Read]| {
        let mut v: Vec<(Option<Vec<u8>>, Vec<u8>)> =
            r.iter().map(|r| (r.key.clone(), r.value.clone())).collect();
        v.sort();
        v
    };
    assert_eq!(a.len(), expected.len());
    assert_eq!(bytes(&a), bytes(&b), "two runs produced different records");
    assert!(a.iter().all(|r| {
        r.headers
            .get("winback.reprocess")
            .is_some_and(|v| v == "true")
    }));
    assert_same(&kafka::as_json(&a), &expected);

    // The live topics saw nothing; a live output topic is refused.
    assert!(kafka::read(&topics.transitions, 1, Duration::from_secs(2)).is_empty());
    let (ok, err) = winback(&[
        "reprocess",
        "--config",
        cfg,
        "--from-beginning",
        "--output-topic",
        &topics.sends,
    ]);
    assert!(!ok && err.contains("--allow-live-topic"), "{err}");

    // A dry run: the summary, nothing produced.
    let (ok, err) = winback(&["reprocess", "--config", cfg, "--from-beginning"]);
    assert!(
        ok && err.contains("dry run") && err.contains("transitions:"),
        "{err}"
    );
}

/// The report's lines: from the first `experiment` heading to its last row.
fn experiment_report(stderr: &str) -> Vec<&str> {
    stderr
        .lines()
        .skip_while(|l| !l.starts_with("experiment "))
        .take_while(|l| l.starts_with("experiment ") || l.starts_with("  "))
        .collect()
}

/// `lines` and, for every third message (sent or held out) of the
/// experiment, a purchase by its contact two days after it: conversions for
/// the report to count (and re-entries for the conversations).
fn with_conversions(
    defs: &std::sync::Arc<winback::domain::Definitions>,
    lines: Vec<String>,
    until: Timestamp,
    partitions: i32,
) -> Vec<String> {
    let mut more = lines.clone();
    let messages = kafka::simulate_partitioned(defs, &lines, until, partitions)
        .into_iter()
        .filter(|l| l.contains("\"conversation\":\"Winback Experiment\""))
        .filter(|l| l.contains("\"type\":\"send\"") || l.contains("\"type\":\"held_out\""));
    for (i, l) in messages.enumerate().filter(|(i, _)| i % 3 == 0) {
        let v: serde_json::Value = serde_json::from_str(&l).unwrap();
        let at = Timestamp::parse_rfc3339(v["at"].as_str().unwrap()).unwrap();
        more.push(format!(
            r#"{{"event_id":"conv-{i}","name":"checkout","contact_id":"{}","occurred_at":"{}"}}"#,
            v["contact_id"].as_str().unwrap(),
            Timestamp(at.0 + 2 * 86_400_000)
        ));
    }
    more.sort_by_key(|l| winback::wire::json::decode_event(l).unwrap().occurred_at);
    more
}

#[test]
fn reprocessing_the_examples_gives_the_transitions_and_experiment_report_of_simulate() {
    const N: i32 = 2;
    let (mut files, lines) = crate::common::examples_stream();
    // Without the frequency cap (the live test covers it): over every
    // conversation it would cap the experiment's messages, due at the same
    // instants as the others', leaving no sends to convert.
    files.retain(|f| !f.ends_with("frequency-cap.toml"));
    let conv: Vec<&str> = files.iter().map(String::as_str).collect();
    let defs = definitions(&conv);
    let until = "2026-12-31T00:00:00Z";
    let lines = with_conversions(&defs, lines, Timestamp::parse_rfc3339(until).unwrap(), N);
    let topics = Topics::fresh();
    topics.create(N);
    kafka::produce_partitioned(&topics.input, &lines, N);
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("winback.toml");
    let text = topics.config_text(&kafka::brokers(), &dir.path().join("state"), &conv, "");
    std::fs::write(&config, text).unwrap();
    let expected =
        kafka::simulate_partitioned(&defs, &lines, Timestamp::parse_rfc3339(until).unwrap(), N);
    for kind in ["held", "split", "held_out", "exited", "coupon_assigned"] {
        let tag = format!("\"type\":\"{kind}\"");
        assert!(expected.iter().any(|l| l.contains(&tag)), "no {kind}");
    }

    let out = dir.path().join("out.jsonl");
    let (ok, reprocessed) = winback(&[
        "reprocess",
        "--config",
        config.to_str().unwrap(),
        "--from-beginning",
        "--until",
        until,
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(ok, "reprocess failed: {reprocessed}");
    let text = std::fs::read_to_string(&out).unwrap();
    let got: Vec<String> = text.lines().map(str::to_string).collect();
    assert_same(&got, &expected);

    // `simulate` over the same events as a file, partitioned alike, prints
    // the same experiment report, with conversions in it.
    let events = dir.path().join("events.jsonl");
    std::fs::write(&events, lines.join("\n") + "\n").unwrap();
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut args: Vec<String> = vec!["simulate".into(), "--config".into()];
    args.extend(files.iter().map(|f| root.join(f).display().to_string()));
    let partitions = N.to_string();
    let tail = [
        "--events",
        events.to_str().unwrap(),
        "--until",
        until,
        "--partitions",
        &partitions,
        "--out",
        "/dev/null",
    ];
    args.extend(tail.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (ok, simulated) = winback(&args);
    assert!(ok, "simulate failed: {simulated}");
    let report = experiment_report(&reprocessed);
    assert!(
        report.iter().any(|l| l.contains("holdout / -")),
        "{reprocessed}"
    );
    let converted = report.iter().filter(|l| l.starts_with("  ")).any(|l| {
        l.split_whitespace()
            .nth_back(1)
            .and_then(|c| c.parse::<u64>().ok())
            .is_some_and(|c| c > 0)
    });
    assert!(converted, "no conversion in the report: {report:?}");
    assert_eq!(report, experiment_report(&simulated));
}
