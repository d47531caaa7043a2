//! Forgetting a contact (a privacy request) against the real broker: the
//! `winback forget` command, the contact gone from the store, the changelog
//! (a tombstone), a rebuild and a restore, and no coupon code handed out
//! twice when the contact comes back.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::common::admin;
use crate::common::kafka::{self, Running, Topics};
use crate::common::{SEEDS, definitions};
use winback::domain::Timestamp;
use winback::store::Store;

const T: Duration = Duration::from_secs(90);
const STILL: Timestamp = Timestamp(0);
const PARTITIONS: i32 = 2;

fn at(s: &str) -> Timestamp {
    Timestamp::parse_rfc3339(s).unwrap()
}

fn checkout(id: &str, contact: &str, when: &str) -> String {
    format!(
        r#"{{"event_id":"{id}","name":"checkout","contact_id":"{contact}","occurred_at":"{when}"}}"#
    )
}

fn winback(args: &[&str]) {
    let out = Command::new(env!("CARGO_BIN_EXE_winback"))
        .args(args)
        .output()
        .expect("run winback");
    assert!(
        out.status.success(),
        "winback {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Every trace of `contact` in the store at `dir`: its state, its history,
/// its pending waits.
fn traces(dir: &Path, contact: &str) -> (bool, usize, usize) {
    let store = Store::open(&dir.join("rocksdb")).expect("store");
    let defs = definitions(&SEEDS);
    let p = kafka::partition_of(contact, PARTITIONS) as u32;
    let state = store.contact(&defs, p, contact).expect("read").is_some();
    let history = store.history(p, contact).expect("read").len();
    let waits = store
        .timers_before(&defs, p, Timestamp(i64::MAX))
        .expect("read")
        .iter()
        .filter(|t| t.contact == contact)
        .count();
    (state, history, waits)
}

fn codes(sends: &[kafka::Read]) -> Vec<(String, String)> {
    sends
        .iter()
        .filter_map(|r| {
            let line = winback::wire::proto::transition_json(
                &winback::sink::decode_transition(&r.value).ok()?,
            )
            .ok()?;
            let v: serde_json::Value = serde_json::from_str(&line).ok()?;
            let code = v["fields"]["coupon_code"].as_str()?.to_string();
            Some((v["contact_id"].as_str()?.to_string(), code))
        })
        .collect()
}

/// bob is forgotten while his coupon is held and a wait is pending: the
/// `forgotten` transitions come out, the store holds nothing of him, the
/// changelog's last record for him is a tombstone, and neither a rebuild nor
/// a restore brings him back. When he buys again he is a new contact and
/// gets a new code: no code is handed out twice.
#[test]
fn a_forgotten_contact_leaves_no_trace_and_no_code_is_handed_out_twice() {
    let defs = definitions(&SEEDS);
    let topics = Topics::fresh();
    topics.create(PARTITIONS);
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let config = topics.config_file(dir.path(), &state);
    let config_arg = config.to_str().unwrap();
    let contacts = ["ann", "bob", "cyd"];
    let mut lines: Vec<String> = contacts
        .iter()
        .map(|c| kafka::subscribed(c, at("2026-01-01T00:00:00Z")))
        .collect();
    for c in contacts {
        lines.push(checkout(&format!("o1-{c}"), c, "2026-01-05T10:00:00Z"));
    }
    // bob buys again: a wait of 90 days from 2026-04-20 is pending when he is forgotten.
    lines.push(checkout("o2-bob", "bob", "2026-04-20T10:00:00Z"));
    kafka::produce_partitioned(&topics.input, &lines, PARTITIONS);
    let run = Running::start(topics.config(&state, &SEEDS, ""), defs.clone(), STILL);
    let addr = admin::addr(&run.stats);
    run.wait_events(lines.len() as u64, T);
    run.advance_wall(at("2026-04-10T00:00:00Z"));
    // Three coupon emails (and three plain ones) at the first 90 days.
    let first = kafka::read(&topics.sends, 6, T);
    assert_eq!(first.len(), 6);
    assert_eq!(admin::get(addr, "/contacts/bob").0, 200);

    winback(&[
        "forget",
        "--config",
        config_arg,
        "bob",
        "--at",
        "2026-05-01T00:00:00Z",
    ]);
    let forgotten = wait_for(&topics.transitions, T, |l| {
        l.iter()
            .filter(|v| v["type"] == "forgotten" && v["contact_id"] == "bob")
            .count()
            == 2
    });
    assert!(
        forgotten
            .iter()
            .all(|v| v["type"] != "forgotten" || v["at"] == "2026-05-01T00:00:00Z")
    );
    run.wait_events(lines.len() as u64 + 1, T);
    assert_eq!(admin::get(addr, "/contacts/bob").0, 404);
    assert_eq!(admin::get(addr, "/contacts/ann").0, 200);
    run.stop();
    assert_eq!(
        traces(&state, "bob"),
        (false, 0, 0),
        "bob's state, history, waits"
    );
    assert!(traces(&state, "ann").0);

    // The changelog: bob's last record is a tombstone.
    let changelog = kafka::read_to_end(&topics.changelog, T);
    let last_bob = changelog
        .iter()
        .rev()
        .find(|r| r.key.as_deref() == Some(b"bob".as_slice()))
        .expect("bob in the changelog");
    assert!(
        last_bob.tombstone,
        "bob's last changelog record is not a tombstone"
    );

    // A rebuild from the changelog, and a restore by a process on an empty
    // state directory, bring nothing of bob back.
    std::fs::remove_dir_all(&state).unwrap();
    winback(&["rebuild", "--config", config_arg, "--quiet"]);
    assert_eq!(traces(&state, "bob"), (false, 0, 0));
    assert!(traces(&state, "ann").0);
    std::fs::remove_dir_all(&state).unwrap();

    // bob comes back: a new contact, on the list again, and a new code.
    let again = vec![
        kafka::subscribed("bob", at("2026-06-01T00:00:00Z")).replace("s-bob", "s2-bob"),
        checkout("o3-bob", "bob", "2026-06-02T10:00:00Z"),
    ];
    kafka::produce_partitioned(&topics.input, &again, PARTITIONS);
    let run = Running::start(topics.config(&state, &SEEDS, ""), defs, STILL);
    let addr = admin::addr(&run.stats);
    run.wait_events(again.len() as u64, T);
    assert!(
        run.stats
            .restored_records
            .load(std::sync::atomic::Ordering::Acquire)
            > 0
    );
    run.advance_wall(at("2026-12-31T00:00:00Z"));
    let sends = kafka::read(&topics.sends, 8, T);
    assert_eq!(sends.len(), 8, "bob's two new emails");
    let codes = codes(&sends);
    let distinct: BTreeSet<&String> = codes.iter().map(|(_, c)| c).collect();
    let coupon_sends = codes.iter().filter(|(_, c)| !c.is_empty()).count();
    // Each coupon email carries its own code (the plain email repeats the
    // contact's field): four coupon emails, four codes, bob's two different.
    let bobs: BTreeSet<&String> = codes
        .iter()
        .filter(|(c, _)| c == "bob")
        .map(|(_, code)| code)
        .collect();
    assert_eq!(bobs.len(), 2, "bob got his old code again: {codes:?}");
    assert_eq!(distinct.len(), 4, "{codes:?} ({coupon_sends} with a code)");
    let (status, body) = admin::get(addr, "/contacts/bob");
    assert_eq!(status, 200);
    let view: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(
        view["recent_transitions"]
            .as_array()
            .unwrap()
            .iter()
            .all(|t| t["at"].as_str() > Some("2026-05-01T00:00:00Z")),
        "history from before the forget: {view:#}"
    );
    run.stop();
}

/// Reads `topic` as JSON transitions until `done` holds for them.
fn wait_for(
    topic: &str,
    timeout: Duration,
    done: impl Fn(&[serde_json::Value]) -> bool,
) -> Vec<serde_json::Value> {
    let deadline = Instant::now() + timeout;
    loop {
        let lines: Vec<serde_json::Value> = kafka::as_json(&kafka::read_to_end(topic, timeout))
            .iter()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        if done(&lines) {
            return lines;
        }
        assert!(Instant::now() < deadline, "not yet: {lines:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}
