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
