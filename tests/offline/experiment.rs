//! Holdouts and split tests over many contacts (`config/examples/winback-experiment.toml`):
//! the shares come out within statistical bounds, a contact's group and
//! branch do not change with the arrival order or the partitioning, and the
//! report counts entries, messages and conversions per variant.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use winback::domain::time::{DAY_MS, MINUTE_MS};
use winback::domain::{Definitions, Event, Timestamp, Transition, TransitionKind};
use winback::sim::Simulator;
use winback::sim::report::Experiments;

const T0: i64 = 1_767_607_200_000; // 2026-01-05T10:00:00Z
const N: usize = 20_000;

fn defs() -> Arc<Definitions> {
    let path =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("config/examples/winback-experiment.toml");
    Arc::new(
        winback::config::load_files(&[path])
            .expect("valid")
            .definitions,
    )
}

fn ev(id: String, name: &str, contact: &str, at: i64) -> Event {
    Event {
        event_id: id,
        name: name.into(),
        contact_id: contact.into(),
        occurred_at: Timestamp(at),
        merchant_id: None,
        order_id: None,
        total_cents: Some(1000),
        list_id: (name == "subscribe").then(|| "master".to_string()),
        attributes: Vec::new(),
    }
}

/// Every contact subscribes and buys once, a minute apart; every fifth buys
/// again 3 days after its message (a conversion), every seventh 10 days
/// after (outside the 7-day window).
fn events() -> Vec<Event> {
    let mut out = Vec::new();
    for i in 0..N {
        let c = format!("c{i}");
        let at = T0 + i as i64 * MINUTE_MS;
        out.push(ev(format!("s{i}"), "subscribe", &c, T0 - DAY_MS));
        out.push(ev(format!("o{i}"), "checkout", &c, at));
        let message = at + 90 * DAY_MS;
        if i % 5 == 0 {
            out.push(ev(format!("r{i}"), "checkout", &c, message + 3 * DAY_MS));
        } else if i % 7 == 0 {
            out.push(ev(format!("r{i}"), "checkout", &c, message + 10 * DAY_MS));
        }
    }
    out.sort_by_key(|e| e.occurred_at);
    out
}

/// Folds `events` over `partitions` simulators; the transitions, and the
/// report as `simulate` keeps it.
fn run(
    defs: &Arc<Definitions>,
    events: &[Event],
    partitions: usize,
) -> (Vec<Transition>, Experiments) {
    let mut sims: Vec<Simulator> = (0..partitions)
        .map(|p| Simulator::for_partition(defs.clone(), p, partitions))
        .collect();
    let mut all = Vec::new();
    let mut report = Experiments::default();
    let mut out = Vec::new();
    for e in events {
        let p = winback::source::partition_for_key(e.contact_id.as_bytes(), partitions as u32);
        sims[p as usize].feed(e, &mut out).expect("valid");
        for t in out.drain(..) {
            report.transition(defs, &t, p);
            all.push(t);
        }
        report.event(defs, e, p);
    }
    for (p, sim) in sims.iter_mut().enumerate() {
        sim.advance_to(Timestamp(T0 + 250 * DAY_MS), &mut out);
        for t in out.drain(..) {
            report.transition(defs, &t, p as u32);
            all.push(t);
        }
    }
    (all, report)
}

/// Each contact's first message: `held_out`, or the branch it was sent.
fn groups(defs: &Definitions, ts: &[Transition]) -> BTreeMap<String, String> {
    let mut g = BTreeMap::new();
    for t in ts.iter().filter(|t| t.entry == 1) {
        let name = match &t.kind {
            TransitionKind::HeldOut => "held_out".to_string(),
            TransitionKind::Split { .. } => {
                let line = winback::wire::text::render(defs, t);
                line.split("variant=")
                    .nth(1)
                    .unwrap_or("?")
                    .split(' ')
                    .next()
                    .unwrap_or("?")
                    .to_string()
            }
            _ => continue,
        };
        // The split comes before the message: a held-out contact is both.
        let slot = g.entry(t.contact.to_string()).or_insert_with(String::new);
        if name == "held_out" || slot.is_empty() {
            *slot = name;
        }
    }
    g
}

#[test]
fn holdout_and_split_shares_are_within_bounds_and_stable() {
    let defs = defs();
    let evs = events();
    let (ts, report) = run(&defs, &evs, 1);
    let groups1 = groups(&defs, &ts);
    assert_eq!(groups1.len(), N);
    let count =
        |g: &BTreeMap<String, String>, name: &str| g.values().filter(|v| *v == name).count();
    // Binomial bounds at 5 standard deviations.
    let held = count(&groups1, "held_out");
    assert!(held.abs_diff(N / 10) <= 213, "held out {held} of {N}");
    let (a, b) = (count(&groups1, "A"), count(&groups1, "B"));
    let sent = N - held;
    assert!(a.abs_diff(sent / 2) <= 336 && a + b == sent, "A {a}, B {b}");

    // The same groups whatever the arrival order and partitioning.
    // Purchases in reverse (each one late), subscriptions first as before:
    // a contact not yet subscribed at its message would be suppressed.
    let (subs, mut buys): (Vec<Event>, Vec<Event>) =
        evs.iter().cloned().partition(|e| e.name == "subscribe");
    buys.reverse();
    let reversed: Vec<Event> = subs.into_iter().chain(buys).collect();
    let (ts2, _) = run(&defs, &reversed, 1);
    let g2 = groups(&defs, &ts2);
    let diff: Vec<_> = groups1
        .iter()
        .filter(|(k, v)| g2.get(*k) != Some(*v))
        .take(5)
        .map(|(k, v)| (k.clone(), v.clone(), g2.get(k).cloned()))
        .collect();
    assert!(
        diff.is_empty(),
        "arrival order changed a group: {diff:?} ({} vs {})",
        groups1.len(),
        g2.len()
    );
    let (ts4, _) = run(&defs, &evs, 4);
    assert!(
        groups(&defs, &ts4) == groups1,
        "partitioning changed a group"
    );
    // Replayed: byte-identical.
    let json = |ts: &[Transition]| {
        ts.iter()
            .map(|t| winback::wire::json::encode_transition(&defs, t))
            .collect::<Vec<_>>()
    };
    assert_eq!(json(&run(&defs, &evs, 1).0), json(&ts));

    // The report: every contact entered once more per second purchase; the
    // conversions are the fifth contacts' purchases 3 days after their
    // message, in the group each is in, and none of the seventh's.
    let rows: BTreeMap<String, (u64, u64, u64, u64)> = report
        .rows(&defs)
        .into_iter()
        .map(|(_, v, c)| (v, (c.entries, c.sent, c.held_out, c.conversions)))
        .collect();
    let converted = |g: &str| {
        groups1
            .iter()
            .filter(|(c, v)| *v == g && c[1..].parse::<usize>().unwrap() % 5 == 0)
            .count() as u64
    };
    // Held-out contacts took a branch too; their messages were not sent.
    let holdout_conversions: u64 = rows
        .iter()
        .filter(|(v, _)| v.starts_with("holdout /"))
        .map(|(_, r)| r.3)
        .sum();
    assert_eq!(holdout_conversions, converted("held_out"), "{rows:?}");
    assert!(
        rows.iter()
            .filter(|(v, _)| v.starts_with("holdout /"))
            .all(|(_, r)| r.1 == 0)
    );
    assert_eq!(rows["control / A"].3, converted("A"), "{rows:?}");
    assert_eq!(rows["control / B"].3, converted("B"), "{rows:?}");
    assert_eq!(
        rows["control / A"].0, rows["control / A"].1,
        "every A entry sent"
    );
    let held_msgs: u64 = rows.values().map(|r| r.2).sum();
    assert!(held_msgs >= held as u64, "{rows:?}");
}
