//! The live conversation page, driven in headless Chromium against a running
//! engine (tests/page/drive.cjs with playwright-core; tests/page/setup.sh
//! installs both): every count the page shows equals what `simulate` makes
//! of the same input, the contact search shows a contact's step, and a
//! full-page screenshot is kept as an artifact.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::admin;
use crate::common::kafka::{self, Running, Topics};
use crate::common::{SEEDS, definitions};
use winback::domain::definition::Definitions;
use winback::domain::{Timestamp, Transition, TransitionKind};

const T: Duration = Duration::from_secs(90);
const STILL: Timestamp = Timestamp(0);
const PARTITIONS: i32 = 2;
const HOUR: i64 = 3_600_000;

/// (conversation, thread, step id or "trigger") → the page's counter name
/// (`now`, `day.sent`, `week.exited`, ...) → value.
type PageCounts = BTreeMap<(String, String, String), BTreeMap<String, u64>>;

fn at(s: &str) -> Timestamp {
    Timestamp::parse_rfc3339(s).unwrap()
}

/// Where the page's transitions count, by the rules the page's footer and
/// docs/operations.md state: an entry (or re-entry) at its thread's trigger,
/// a send or suppression at its message step, an end (exit, forget, or the
/// entry a re-entry pulled out of its wait) at the step it ended in.
fn places(defs: &Definitions, t: &Transition) -> Vec<(String, String, String, &'static str)> {
    let conv = &defs.conversations[t.conversation as usize];
    let thread = |i: u16| conv.threads[i as usize].name.to_string();
    let step = |s: Option<u32>| {
        s.map_or("trigger".to_string(), |s| {
            conv.steps[s as usize].id.to_string()
        })
    };
    let here = |kind| (conv.name.to_string(), thread(t.thread), step(t.step), kind);
    match &t.kind {
        TransitionKind::Entered { .. } => vec![(
            conv.name.to_string(),
            thread(t.thread),
            step(None),
            "entered",
        )],
        TransitionKind::Reentered { left_step, .. } => vec![
            (
                conv.name.to_string(),
                thread(t.thread),
                step(None),
                "entered",
            ),
            (
                conv.name.to_string(),
                thread(conv.steps[*left_step as usize].thread),
                step(Some(*left_step)),
                "exited",
            ),
        ],
        TransitionKind::Send { .. } => vec![here("sent")],
        TransitionKind::Suppressed { .. } => vec![here("suppressed")],
        TransitionKind::Exited { .. } | TransitionKind::Forgotten => vec![here("exited")],
        _ => Vec::new(),
    }
}

/// What the page must show, from `simulate` per partition: the entries at
/// each step now, and each step's activity in the partition clock's last
/// day and week.
fn expected(defs: &Arc<Definitions>, lines: &[String], until: Timestamp) -> PageCounts {
    let mut want = PageCounts::new();
    let hour = until.0.div_euclid(HOUR) * HOUR;
    let (day_from, week_from) = (hour - 23 * HOUR, hour - 167 * HOUR);
    for (sim, made) in kafka::simulators_partitioned(defs, lines, Some(until), PARTITIONS) {
        for t in &made {
            for (c, th, s, kind) in places(defs, t) {
                let counts = want.entry((c, th, s)).or_default();
                if t.at.0 >= week_from {
                    *counts.entry(format!("week.{kind}")).or_default() += 1;
                }
                if t.at.0 >= day_from {
                    *counts.entry(format!("day.{kind}")).or_default() += 1;
                }
            }
        }
        for (_, st) in sim.states() {
            for c in &st.conversations {
                let conv = &defs.conversations[c.conversation as usize];
                for e in &c.active {
                    let step = &conv.steps[e.step as usize];
                    let key = (
                        conv.name.to_string(),
                        conv.threads[step.thread as usize].name.to_string(),
                        step.id.to_string(),
                    );
                    *want
                        .entry(key)
                        .or_default()
                        .entry("now".into())
                        .or_default() += 1;
                }
            }
        }
    }
    want
}

/// The page's counts with the zeros left out, as `expected` has them.
fn shown(page: &serde_json::Value) -> PageCounts {
    let mut got = PageCounts::new();
    for c in page["counts"].as_array().unwrap() {
        for t in c["threads"].as_array().unwrap() {
            for n in t["nodes"].as_array().unwrap() {
                let key = (
                    c["conversation"].as_str().unwrap().to_string(),
                    t["thread"].as_str().unwrap().to_string(),
                    n["step"].as_str().unwrap().to_string(),
                );
                for (name, v) in n["counts"].as_object().unwrap() {
                    let v = v.as_u64().unwrap_or_else(|| panic!("{key:?} {name}: {v}"));
                    if v > 0 {
                        got.entry(key.clone()).or_default().insert(name.clone(), v);
                    }
                }
            }
        }
    }
    got
}

/// The page's data: the sends of the last week summed over steps, and
/// whether every partition's clock is at `until`.
fn progress(addr: std::net::SocketAddr, until: Timestamp) -> (u64, bool) {
    let (status, body) = admin::get(addr, "/api/flow");
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let sent = v["conversations"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|c| c["threads"].as_array().unwrap().iter())
        .flat_map(|t| t["steps"].as_array().unwrap().iter())
        .map(|s| s["week"]["sent"].as_u64().unwrap())
        .sum();
    let at_until = v["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .all(|p| p["clock"] == serde_json::json!(until.to_string()));
    (
        sent,
        at_until && v["partitions"].as_array().unwrap().len() == PARTITIONS as usize,
    )
}

fn playwright() -> String {
    if let Ok(p) = std::env::var("WINBACK_PLAYWRIGHT") {
        return p;
    }
    let home = std::env::var("HOME").expect("HOME");
    let p = PathBuf::from(home).join(".cache/winback-tools/page/node_modules/playwright-core");
    assert!(
        p.exists(),
        "playwright-core is not installed: run tests/page/setup.sh (tests/run.sh does)"
    );
    p.display().to_string()
}

/// Where the screenshot is kept: `WINBACK_ARTIFACTS`, else `artifacts/` in
/// the checkout.
fn artifacts() -> PathBuf {
    let dir = std::env::var_os("WINBACK_ARTIFACTS").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("artifacts"),
        PathBuf::from,
    );
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Purchases of 2026-01-01..15 wait 90 days; the wall clock moves the
/// partitions to 2026-04-10 12:00, so some of the waits fired in the last
/// day, more in the last week and others before. Second purchases of
/// 2026-04-06..10 enter (and re-enter) inside the week; subscribe and
/// unsubscribe events make both sends and suppressions.
#[test]
fn the_page_shows_the_counts_simulate_makes() {
    let defs = definitions(&SEEDS);
    let topics = Topics::fresh();
    topics.create(PARTITIONS);
    let dir = tempfile::tempdir().unwrap();
    let mut lines = kafka::purchase_stream(300, 14, 21);
    let april = at("2026-04-06T00:00:00Z");
    lines.extend(
        kafka::purchase_stream_from(april.0, 80, 4, 22)
            .into_iter()
            // Ids of their own: the first stream's would be duplicates.
            .map(|l| l.replace(r#""event_id":""#, r#""event_id":"again-"#)),
    );
    lines.sort_by_key(|l| {
        winback::wire::json::decode_event(l)
            .expect("an event")
            .occurred_at
    });
    let until = at("2026-04-10T12:00:00Z");
    let want = expected(&defs, &lines, until);
    let sent: u64 = want
        .values()
        .map(|c| c.get("week.sent").copied().unwrap_or(0))
        .sum();
    // The input makes every kind of count, inside and outside the day.
    for name in [
        "now",
        "day.entered",
        "day.sent",
        "week.sent",
        "day.suppressed",
        "week.exited",
    ] {
        assert!(
            want.values().any(|c| c.contains_key(name)),
            "no {name} in {want:#?}"
        );
    }
    assert!(
        want.values()
            .any(|c| c.get("week.sent") > c.get("day.sent")),
        "every send in the last day: {want:#?}"
    );

    kafka::produce_partitioned(&topics.input, &lines, PARTITIONS);
    let run = Running::start(topics.config(dir.path(), &SEEDS, ""), defs.clone(), STILL);
    let addr = admin::addr(&run.stats);
    run.wait_events(lines.len() as u64, T);
    run.advance_wall(until);
    let deadline = Instant::now() + T;
    // The windows end at the partitions' clocks: wait until the wall clock
    // moved them to `until`, and the sends are counted.
    while progress(addr, until) != (sent, true) {
        assert!(
            Instant::now() < deadline,
            "the page never counted {sent} sends at {until}: {:?}",
            progress(addr, until)
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    let shot = artifacts().join("conversation-page.png");
    let contact = "c0001";
    let out = std::process::Command::new("node")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/page/drive.cjs"))
        .arg(format!("http://{addr}/"))
        .arg(&shot)
        .arg(contact)
        .env("WINBACK_PLAYWRIGHT", playwright())
        .output()
        .expect("node runs (tests/page/setup.sh)");
    assert!(
        out.status.success(),
        "the browser driver failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let page: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        page["errors"],
        serde_json::json!([]),
        "script errors on the page"
    );
    assert_eq!(shown(&page), want, "the page's counts against simulate's");
    // Both seeds jump: each GoTo is drawn.
    for c in page["counts"].as_array().unwrap() {
        assert_eq!(c["jumps"], 1, "{}", c["conversation"]);
    }

    // The contact search shows where the contact waits, and marks the step.
    let sims = kafka::simulators_partitioned(&defs, &lines, Some(until), PARTITIONS);
    let mut want_steps = Vec::new();
    for (id, st) in sims[kafka::partition_of(contact, PARTITIONS) as usize]
        .0
        .states()
    {
        if *id != *contact {
            continue;
        }
        for c in &st.conversations {
            let conv = &defs.conversations[c.conversation as usize];
            for e in &c.active {
                want_steps.push((
                    conv.name.to_string(),
                    conv.steps[e.step as usize].id.to_string(),
                ));
            }
        }
    }
    assert!(!want_steps.is_empty(), "{contact} waits nowhere");
    want_steps.sort();
    let pairs = |v: &serde_json::Value| -> Vec<(String, String)> {
        let mut p: Vec<(String, String)> = v
            .as_array()
            .unwrap()
            .iter()
            .map(|p| (p[0].as_str().unwrap().into(), p[1].as_str().unwrap().into()))
            .collect();
        p.sort();
        p
    };
    assert_eq!(pairs(&page["contact"]["shown"]), want_steps);
    assert_eq!(pairs(&page["contact"]["marked"]), want_steps);
    assert!(
        std::fs::metadata(&shot).unwrap().len() > 10_000,
        "{}",
        shot.display()
    );
    eprintln!("screenshot: {}", shot.display());
    run.stop();
}
