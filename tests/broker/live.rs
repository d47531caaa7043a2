//! `winback run` against Apache Kafka (the one `tests/run.sh` starts), each
//! test with fresh random topic and group names. The wall clock is injected:
//! no test sleeps for a wait.

use std::collections::BTreeSet;
use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::common::kafka::{self, Running, Topics, assert_same};
use crate::common::{SEEDS, definitions};
use winback::domain::Timestamp;

const T: Duration = Duration::from_secs(60);

fn until() -> Timestamp {
    Timestamp::parse_rfc3339("2026-12-31T00:00:00Z").unwrap()
}

/// The epoch: an idle clock that never moves a partition's clock forward.
const STILL: Timestamp = Timestamp(0);

#[test]
fn seeds_through_kafka_give_the_transitions_of_simulate() {
    let defs = definitions(&SEEDS);
    let topics = Topics::fresh();
    // One partition: the coupon pool is then not split, exactly as in `simulate`.
    topics.create(1);
    let dir = tempfile::tempdir().unwrap();
    let cfg = topics.config(dir.path(), &SEEDS, "");
    let mut lines = kafka::purchase_stream(150, 200, 7);
    lines.extend(
        std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/examples/events.jsonl"
        ))
        .unwrap()
        .lines()
        .map(str::to_string),
    );
    let expected = kafka::simulate(&defs, &lines, until());
    assert!(expected.iter().any(|l| l.contains("\"type\":\"send\"")));
    assert!(
        expected
            .iter()
            .any(|l| l.contains("\"type\":\"coupon_assigned\""))
    );

    kafka::produce(&topics.input, &kafka::keyed(&lines));
    let run = Running::start(cfg, defs.clone(), STILL);
    run.wait_events(lines.len() as u64, T);
    // Caught up and idle: the wall clock takes the partition to `until`.
    run.advance_wall(until());
    kafka::stop_and_compare(&topics.transitions, &expected, T, || run.stop());

    // The sends topic carries exactly the send transitions.
    let sends = kafka::as_json(&kafka::read(
        &topics.sends,
        usize::MAX,
        Duration::from_secs(3),
    ));
    let want: Vec<String> = expected
        .iter()
        .filter(|l| l.contains("\"type\":\"send\""))
        .cloned()
        .collect();
    assert_same(&sends, &want);
}

#[test]
fn several_partitions_give_the_transitions_of_simulate() {
    // Coupon pools are split across partitions (codes, exhaustion and low-stock
    // marks differ from `simulate`'s single pool), so this one runs seed 000.
    let files = ["config/winback-90d.toml"];
    let defs = definitions(&files);
    let topics = Topics::fresh();
    topics.create(3);
    let dir = tempfile::tempdir().unwrap();
    let cfg = topics.config(dir.path(), &files, "");
    let lines = kafka::purchase_stream(120, 150, 11);
    let expected = kafka::simulate(&defs, &lines, until());
    kafka::produce(&topics.input, &kafka::keyed(&lines));
    let run = Running::start(cfg, defs, STILL);
    run.wait_events(lines.len() as u64, T);
    run.advance_wall(until());
    kafka::stop_and_compare(&topics.transitions, &expected, T, || run.stop());
}

#[test]
fn a_restart_mid_stream_loses_nothing_and_resends_nothing() {
    let defs = definitions(&SEEDS);
    let topics = Topics::fresh();
    topics.create(1);
    let dir = tempfile::tempdir().unwrap();
    let lines = kafka::purchase_stream(100, 200, 3);
    let (first, second) = lines.split_at(lines.len() / 2);
    let expected = kafka::simulate(&defs, &lines, until());

    kafka::produce(&topics.input, &kafka::keyed(first));
    let run = Running::start(topics.config(dir.path(), &SEEDS, ""), defs.clone(), STILL);
    run.wait_events(first.len() as u64, T);
    run.stop();

    // The same state directory, the rest of the stream.
    kafka::produce(&topics.input, &kafka::keyed(second));
    let run = Running::start(topics.config(dir.path(), &SEEDS, ""), defs.clone(), STILL);
    run.wait_events(second.len() as u64, T);
    run.advance_wall(until());
    kafka::read(&topics.transitions, expected.len(), T);
    run.stop();
    // Everything is in; anything beyond the expected count would be a re-send.
    let got = kafka::read_to_end(&topics.transitions, kafka::READ_BACK);

    // Every transition exactly once (no id twice), coupon codes included.
    let got = kafka::as_json(&got);
    let mut ids = BTreeSet::new();
    for l in &got {
        let j: serde_json::Value = serde_json::from_str(l).unwrap();
        assert!(
            ids.insert(j["transition_id"].as_str().unwrap().to_string()),
            "produced twice: {l}"
        );
    }
    assert_same(&got, &expected);
}

#[test]
fn malformed_records_land_in_the_dead_letter_topic_with_their_reason() {
    let defs = definitions(&SEEDS);
    let topics = Topics::fresh();
    topics.create(1);
    let dir = tempfile::tempdir().unwrap();
    let good = kafka::purchase_stream(20, 60, 5);
    let mut records = kafka::keyed(&good);
    let bad: Vec<(String, Vec<u8>, &str)> = vec![
        ("c0001".into(), b"{not json".to_vec(), "invalid JSON"),
        ("c0002".into(), vec![0xff, 0xfe, 0x00], "not UTF-8"),
        (
            "c0003".into(),
            br#"{"event_id":"x1","name":"checkout","occurred_at":"2026-01-02T00:00:00Z"}"#.to_vec(),
            "missing field `contact_id`",
        ),
        (
            "c0004".into(),
            br#"{"event_id":"x2","name":"subscribe","contact_id":"c0004","occurred_at":"2026-01-02T00:00:00Z"}"#.to_vec(),
            "list_id",
        ),
    ];
    // Interleaved with the good ones.
    for (i, (k, v, _)) in bad.iter().enumerate() {
        records.insert(i * 5 + 1, (k.clone(), v.clone()));
    }
    let expected = kafka::simulate(&defs, &good, until());
    kafka::produce(&topics.input, &records);
    let run = Running::start(topics.config(dir.path(), &SEEDS, ""), defs, STILL);
    run.wait_events(records.len() as u64, T);
    // Each record counted once, folded or dead-lettered (by the decoder or
    // by the engine's check), none twice.
    assert_eq!(
        run.stats.events_written.load(Ordering::Acquire),
        records.len() as u64
    );
    run.advance_wall(until());
    kafka::stop_and_compare(&topics.transitions, &expected, T, || run.stop());

    let dlq = kafka::read_exactly(&topics.dead_letters, bad.len(), T);
    for (rec, (key, value, reason)) in dlq.iter().zip(&bad) {
        assert_eq!(rec.headers["winback.dlq.topic"], topics.input);
        assert_eq!(rec.headers["winback.dlq.partition"], "0");
        assert!(rec.headers["winback.dlq.offset"].parse::<i64>().is_ok());
        assert!(
            rec.headers["winback.dlq.reason"].contains(reason),
            "{:?} should say {reason:?}",
            rec.headers["winback.dlq.reason"]
        );
        assert_eq!(rec.key.as_deref(), Some(key.as_bytes()));
        // The original bytes, untouched.
        assert_eq!(&rec.value, value);
    }
}

#[test]
fn a_wait_fires_from_the_idle_wall_clock() {
    wait_fires_from_the_idle_wall_clock(false);
}

/// Input from a transactional producer ends in a commit marker the consumer
/// never hands out: the partition is caught up all the same (it used to
/// count as behind forever, and no wait fired from the wall clock).
#[test]
fn a_wait_fires_from_the_idle_wall_clock_behind_a_transactional_producer() {
    wait_fires_from_the_idle_wall_clock(true);
}

fn wait_fires_from_the_idle_wall_clock(transactional: bool) {
    let defs = definitions(&["config/winback-90d.toml"]);
    let topics = Topics::fresh();
    topics.create(1);
    let dir = tempfile::tempdir().unwrap();
    let bought = Timestamp::parse_rfc3339("2026-03-01T12:00:00Z").unwrap();
    let line = format!(
        r#"{{"event_id":"o1","name":"checkout","contact_id":"ann","occurred_at":"{bought}"}}"#
    );
    let lines = [kafka::subscribed("ann", bought), line];
    if transactional {
        kafka::produce_transactional(&topics.input, &kafka::keyed(&lines));
    } else {
        kafka::produce(&topics.input, &kafka::keyed(&lines));
    }
    let run = Running::start(
        topics.config(dir.path(), &["config/winback-90d.toml"], ""),
        defs,
        bought,
    );
    run.wait_events(2, T);
    // entered, goto, wait_started: and no send yet.
    let before = kafka::as_json(&kafka::read_exactly(&topics.transitions, 3, T));
    assert_eq!(before.len(), 3, "{before:?}");
    // 90 days later by the wall clock, with no event at all.
    run.advance_wall(Timestamp(bought.0 + 90 * 86_400_000 - 1));
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(
        kafka::read(&topics.sends, 1, Duration::from_secs(1)).len(),
        0
    );
    run.advance_wall(Timestamp(bought.0 + 90 * 86_400_000));
    kafka::read(&topics.sends, 1, T);
    run.stop();
    let sends = kafka::as_json(&kafka::read_exactly(&topics.sends, 1, T));
    assert!(
        sends[0].contains("\"at\":\"2026-05-30T12:00:00Z\""),
        "{}",
        sends[0]
    );
}

/// `winback produce` never creates an input topic: the broker would give it
/// its default partition count, which `winback run` then refuses. A missing
/// topic is waited for (here 1.5 s), then it is an error.
#[test]
fn produce_to_a_missing_topic_fails_and_creates_nothing() {
    use rdkafka::consumer::{BaseConsumer, Consumer};

    let topics = Topics::fresh();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("winback.toml");
    std::fs::write(
        &config,
        topics.config_text(
            &kafka::brokers(),
            &dir.path().join("state"),
            &SEEDS,
            "[kafka]\n\"topic.metadata.propagation.max.ms\" = \"1500\"",
        ),
    )
    .unwrap();
    let events = dir.path().join("events.jsonl");
    std::fs::write(
        &events,
        "{\"event_id\":\"o1\",\"name\":\"checkout\",\"contact_id\":\"ann\",\"occurred_at\":\"2026-01-05T10:00:00Z\"}\n",
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_winback"))
        .args(["produce", "--config", config.to_str().unwrap()])
        .args(["--events", events.to_str().unwrap()])
        .output()
        .expect("run winback produce");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains(&format!("topic {} does not exist", topics.input)),
        "{err}"
    );

    let probe: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", kafka::brokers())
        .set("allow.auto.create.topics", "false")
        .create()
        .expect("a metadata client");
    let meta = probe
        .fetch_metadata(Some(&topics.input), Duration::from_secs(10))
        .expect("metadata");
    let created = meta
        .topics()
        .iter()
        .any(|t| t.name() == topics.input && t.error().is_none() && !t.partitions().is_empty());
    assert!(!created, "produce created {}", topics.input);
}

/// Profile attributes through Kafka, published as JSON and as protobuf
/// (`winback.v1.InputEvent`'s `attributes` map): the VIP example's
/// transitions, its sends carrying the attributes in their fields and its
/// filters reading them, equal `simulate`'s. An attribute naming a coupon
/// field would be refused; one over its bounds is a dead letter here.
#[test]
fn profile_attributes_through_kafka_as_json_and_protobuf() {
    use prost::Message;
    let conv = ["config/examples/winback-vip.toml"];
    let defs = definitions(&conv);
    let ev = |id: &str, name: &str, contact: &str, at: &str, attrs: &str| {
        format!(
            r#"{{"event_id":"{id}","name":"{name}","contact_id":"{contact}","occurred_at":"{at}"{attrs}}}"#
        )
    };
    let mut lines = Vec::new();
    for c in ["ann", "bob", "cyd"] {
        lines.push(format!(
            r#"{{"event_id":"s-{c}","name":"subscribe","contact_id":"{c}","list_id":"master","occurred_at":"2026-01-01T00:00:00Z"}}"#
        ));
    }
    lines.extend([
        ev(
            "p1",
            "profile_updated",
            "ann",
            "2026-01-02T00:00:00Z",
            r#","attributes":{"first_name":"Ann","tier":"gold"}"#,
        ),
        ev("o1", "checkout", "ann", "2026-01-05T10:00:00Z", ""),
        ev(
            "o2",
            "checkout",
            "bob",
            "2026-01-05T10:00:00Z",
            r#","attributes":{"first_name":"Bob","lifetime_value":750}"#,
        ),
        ev(
            "o3",
            "checkout",
            "cyd",
            "2026-01-11T00:00:00Z",
            r#","attributes":{"tier":"gold","vip":true}"#,
        ),
        // Stamped before cyd's gold, arriving after it: ignored.
        ev(
            "p2",
            "profile_updated",
            "cyd",
            "2026-01-03T00:00:00Z",
            r#","attributes":{"tier":"bronze"}"#,
        ),
    ]);
    let bad = ev(
        "p3",
        "profile_updated",
        "ann",
        "2026-01-04T00:00:00Z",
        r#","attributes":{"bad name":"x"}"#,
    );
    let expected = kafka::simulate(&defs, &lines, until());
    assert!(
        expected.iter().any(|l| l
            .contains(r#""message":"VIP Winback","fields":{"first_name":"Ann","tier":"gold"}"#)),
        "{expected:#?}"
    );
    assert!(
        expected
            .iter()
            .any(|l| l.contains(r#""fields":{"first_name":"Bob","lifetime_value":"750"}"#)),
        "{expected:#?}"
    );
    assert!(
        expected
            .iter()
            .any(|l| l.contains(r#""fields":{"tier":"gold","vip":"true"}"#)),
        "{expected:#?}"
    );

    for protobuf in [false, true] {
        let topics = Topics::fresh();
        topics.create(1);
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = topics.config(dir.path(), &conv, "");
        let mut records = kafka::keyed(&lines);
        records.push(kafka::keyed(std::slice::from_ref(&bad)).remove(0));
        if protobuf {
            cfg.inputs[0].format = winback::config::engine::InputFormat::Protobuf;
            for (_, value) in &mut records {
                let line = std::str::from_utf8(value).unwrap();
                let ev = winback::wire::json::decode_event(line).unwrap();
                *value = winback::wire::proto::event_to_pb(&ev).encode_to_vec();
            }
        }
        kafka::produce(&topics.input, &records);
        let run = Running::start(cfg, defs.clone(), STILL);
        run.wait_events(records.len() as u64, T);
        run.advance_wall(until());
        kafka::stop_and_compare(&topics.transitions, &expected, T, || run.stop());
        let dead = kafka::read_to_end(&topics.dead_letters, T);
        assert_eq!(dead.len(), 1, "protobuf = {protobuf}");
        let reason = dead[0].headers.get(winback::source::DLQ_REASON);
        assert!(
            reason.is_some_and(|r| r.contains("attribute name \"bad name\"")),
            "{reason:?}"
        );
    }
}

/// Every example conversation and the frequency cap through Kafka, on two
/// partitions, against `simulate` per partition: exit events, profile
/// attributes and time zones, send windows and holds, the cap, holdouts and
/// splits, cadence waits, with late and repeat purchases. The same
/// transitions, byte for byte.
#[test]
fn the_examples_through_kafka_give_the_transitions_of_simulate() {
    let (files, lines) = crate::common::examples_stream();
    let conv: Vec<&str> = files.iter().map(String::as_str).collect();
    let defs = definitions(&conv);
    let end = until();
    let expected = kafka::simulate_partitioned(&defs, &lines, end, 2);
    for kind in ["held", "split", "exited", "send", "suppressed"] {
        assert!(
            expected
                .iter()
                .any(|l| l.contains(&format!("\"type\":\"{kind}\""))),
            "no {kind}"
        );
    }
    assert!(
        expected
            .iter()
            .any(|l| l.contains("\"reason\":\"frequency_cap\""))
    );
    assert!(
        expected
            .iter()
            .any(|l| l.contains("\"reason\":\"exit_event\""))
    );

    let topics = Topics::fresh();
    topics.create(2);
    let dir = tempfile::tempdir().unwrap();
    kafka::produce_partitioned(&topics.input, &lines, 2);
    let run = Running::start(topics.config(dir.path(), &conv, ""), defs.clone(), STILL);
    run.wait_events(lines.len() as u64, T);
    run.advance_wall(end);
    kafka::stop_and_compare(&topics.transitions, &expected, T, || run.stop());
}
