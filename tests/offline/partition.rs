//! The runtime's partition processing (contact state read from RocksDB, waits
//! split between the in-memory wheel and the durable expiry index) against the
//! in-memory simulator as the model: over random event streams, with random
//! batch boundaries, restarts (a new process on the same store: empty wheel),
//! timer-budget pauses, tiny horizons and tiny load limits, it emits exactly
//! the simulator's transitions, in the same order.

use std::sync::Arc;

use proptest::prelude::*;
use winback::domain::{ContactState, Definitions, Event, Timestamp, Transition};
use winback::runtime::partition::{Fed, Partition, PartitionSettings};
use winback::sim::Simulator;
use winback::store::rocks::Store;
use winback::wire;

const T0: i64 = 1_767_607_200_000; // 2026-01-05T10:00:00Z
const DAY: i64 = 86_400_000;

#[derive(Debug, Clone)]
enum Op {
    /// An event: contact, delay since the previous arrival, lateness, kind.
    Event {
        contact: u8,
        gap_ms: i64,
        late_ms: i64,
        kind: u8,
    },
    /// Idle wall clock: advance by this much.
    Idle(i64),
    /// Write the batch.
    Commit,
    /// Write the batch, drop the process, open the store again.
    Restart,
}

fn arb_ops() -> impl Strategy<Value = Vec<Op>> {
    let op = prop_oneof![
        8 => (0u8..12, prop_oneof![Just(0i64), 0..3 * DAY, 0..100 * DAY], prop_oneof![3 => Just(0i64), 1 => 0..95 * DAY], 0u8..8)
            .prop_map(|(contact, gap_ms, late_ms, kind)| Op::Event { contact, gap_ms, late_ms, kind }),
        1 => prop_oneof![0..DAY, 0..120 * DAY].prop_map(Op::Idle),
        1 => Just(Op::Commit),
        1 => Just(Op::Restart),
    ];
    proptest::collection::vec(op, 1..80)
}

fn event(i: usize, contact: u8, at: i64, kind: u8) -> Event {
    let (name, list) = match kind {
        0 => ("subscribe", Some("master".to_string())),
        1 => ("unsubscribe", Some("master".to_string())),
        7 => ("forget", None),
        _ => ("checkout", None),
    };
    Event {
        event_id: format!("e{i}"),
        name: name.into(),
        contact_id: format!("c{contact}"),
        occurred_at: Timestamp(at),
        merchant_id: Some("m1".into()),
        order_id: None,
        total_cents: Some(1000),
        list_id: list,
        attributes: Vec::new(),
    }
}

fn json(defs: &Definitions, ts: &[Transition]) -> Vec<String> {
    ts.iter()
        .map(|t| wire::json::encode_transition(defs, t))
        .collect()
}

fn check(
    defs: Arc<Definitions>,
    ops: &[Op],
    settings: PartitionSettings,
    budget: usize,
) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open(dir.path()).unwrap();
    let mut part = Partition::open(&store, defs.clone(), 0, 1, settings).unwrap();
    let mut sim = Simulator::new(defs.clone());
    let (mut want, mut got) = (Vec::new(), Vec::new());
    let mut arrival = T0;
    let commit = |part: &mut Partition, store: &Store| {
        let mut b = store.batch(&defs, 0);
        part.write(&mut b);
        b.commit().unwrap();
    };
    for (i, op) in ops.iter().enumerate() {
        match op {
            Op::Event {
                contact,
                gap_ms,
                late_ms,
                kind,
            } => {
                arrival += gap_ms;
                let ev = event(i, *contact, arrival - late_ms, *kind);
                sim.feed(&ev, &mut want).unwrap();
                // A pause ends the batch; the event is fed again in the next.
                loop {
                    let mut b = budget;
                    match part.feed(&store, &ev, &mut got, &mut b).unwrap() {
                        Fed::Folded(_) => break,
                        Fed::Paused => commit(&mut part, &store),
                    }
                }
            }
            Op::Idle(d) => {
                let to = Timestamp(sim.clock().map_or(arrival, |c| c.0) + d);
                sim.advance_to(to, &mut want);
                loop {
                    let mut b = budget;
                    if part.advance_to(&store, to, &mut got, &mut b).unwrap() {
                        break;
                    }
                    commit(&mut part, &store);
                }
            }
            Op::Commit => commit(&mut part, &store),
            Op::Restart => {
                commit(&mut part, &store);
                drop(part);
                drop(store);
                store = Store::open(dir.path()).unwrap();
                part = Partition::open(&store, defs.clone(), 0, 1, settings).unwrap();
            }
        }
        prop_assert_eq!(part.clock(), sim.clock(), "clock after op {}", i);
    }
    // Everything still pending fires the same way.
    let end = Timestamp(arrival + 400 * DAY);
    sim.advance_to(end, &mut want);
    loop {
        let mut b = budget;
        if part.advance_to(&store, end, &mut got, &mut b).unwrap() {
            break;
        }
        commit(&mut part, &store);
    }
    prop_assert_eq!(json(&defs, &got), json(&defs, &want));
    // The states written are the simulator's; a forgotten contact nothing
    // came for since is not in the store at all.
    commit(&mut part, &store);
    for (id, st) in sim.states() {
        let stored = store.contact(&defs, 0, id).unwrap();
        if *st == ContactState::default() {
            prop_assert!(stored.is_none(), "{} forgotten but stored", id);
        } else {
            prop_assert_eq!(stored.as_ref(), Some(st), "{}", id);
        }
    }
    Ok(())
}

fn settings() -> impl Strategy<Value = (PartitionSettings, usize)> {
    (
        prop_oneof![Just(1i64), 1..DAY, Just(30 * DAY), Just(365 * DAY)],
        prop_oneof![Just(1usize), 1..8usize, Just(100_000)],
        prop_oneof![Just(1usize), 1..10usize, Just(usize::MAX)],
    )
        .prop_map(|(timer_horizon_ms, load_limit, budget)| {
            (
                PartitionSettings {
                    timer_horizon_ms,
                    load_limit,
                    keep_history: true,
                },
                budget,
            )
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn partition_over_the_store_equals_the_simulator(ops in arb_ops(), (s, budget) in settings()) {
        check(crate::common::definitions(&crate::common::SEEDS), &ops, s, budget)?;
    }
}

#[test]
fn a_far_wait_set_in_the_running_batch_fires_after_a_restart() {
    let defs = crate::common::definitions(&["config/winback-90d.toml"]);
    let dir = tempfile::tempdir().unwrap();
    let s = PartitionSettings {
        timer_horizon_ms: DAY,
        load_limit: 16,
        keep_history: true,
    };
    let ops = vec![
        Op::Event {
            contact: 1,
            gap_ms: 0,
            late_ms: 0,
            kind: 2,
        },
        Op::Restart,
        Op::Idle(91 * DAY),
    ];
    check(defs.clone(), &ops, s, usize::MAX).unwrap();
    // And nothing of it is held in memory before it is near.
    let store = Store::open(dir.path()).unwrap();
    let mut p = Partition::open(&store, defs.clone(), 0, 1, s).unwrap();
    let mut out = Vec::new();
    let mut b = usize::MAX;
    p.feed(&store, &event(0, 1, T0, 2), &mut out, &mut b)
        .unwrap();
    assert_eq!(p.timers_in_memory(), 1, "kept until the batch is written");
    let mut batch = store.batch(&defs, 0);
    p.write(&mut batch);
    batch.commit().unwrap();
    assert_eq!(p.timers_in_memory(), 0, "on disk only once written");
    assert_eq!(
        store
            .timers_before(&defs, 0, Timestamp(i64::MAX))
            .unwrap()
            .len(),
        1
    );
}

/// Instants at and past the ends of what inputs may carry, and ordinary ones.
fn arb_instant() -> impl Strategy<Value = i64> {
    let (min, max) = (Timestamp::MIN_ACCEPTED.0, Timestamp::MAX_ACCEPTED.0);
    prop_oneof![
        Just(i64::MIN),
        Just(i64::MIN + 1),
        Just(min - 1),
        Just(min),
        Just(min + 1),
        Just(-1i64),
        Just(0i64),
        Just(T0),
        T0 - 200 * DAY..T0 + 200 * DAY,
        Just(max - 90 * DAY),
        Just(max - 1),
        Just(max),
        Just(max + 1),
        Just(i64::MAX - 1),
        Just(i64::MAX),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// No instant hangs or overflows the simulator, the partition, the wheel
    /// or the store: events stamped outside the years 0000-9999 are refused
    /// by both alike (nothing changes), the others fold the same way, and a
    /// clock moved to any instant, `i64::MAX` included, returns.
    #[test]
    fn extreme_instants_are_refused_or_folded_alike(
        steps in proptest::collection::vec((arb_instant(), 0u8..12, 0u8..8, 0u8..10), 1..30),
        (s, budget) in settings(),
    ) {
        let defs = crate::common::definitions(&crate::common::SEEDS);
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(dir.path()).unwrap();
        let mut part = Partition::open(&store, defs.clone(), 0, 1, s).unwrap();
        let mut sim = Simulator::new(defs.clone());
        let (mut want, mut got) = (Vec::new(), Vec::new());
        let commit = |part: &mut Partition, store: &Store| {
            let mut b = store.batch(&defs, 0);
            part.write(&mut b);
            b.commit().unwrap();
        };
        for (i, (at, contact, kind, what)) in steps.iter().enumerate() {
            match what {
                // Moving the clock: to any instant at all.
                0 => {
                    sim.advance_to(Timestamp(*at), &mut want);
                    loop {
                        let mut b = budget;
                        if part.advance_to(&store, Timestamp(*at), &mut got, &mut b).unwrap() {
                            break;
                        }
                        commit(&mut part, &store);
                    }
                }
                1 => {
                    commit(&mut part, &store);
                    drop(part);
                    drop(store);
                    store = Store::open(dir.path()).unwrap();
                    part = Partition::open(&store, defs.clone(), 0, 1, s).unwrap();
                }
                _ => {
                    let ev = event(i, *contact, *at, *kind);
                    let accepted = Timestamp(*at).accepted();
                    let r = sim.feed(&ev, &mut want);
                    prop_assert_eq!(r.is_ok(), accepted, "simulator on {}", at);
                    loop {
                        let mut b = budget;
                        match part.feed(&store, &ev, &mut got, &mut b) {
                            Ok(Fed::Folded(_)) => { prop_assert!(accepted); break }
                            Ok(Fed::Paused) => commit(&mut part, &store),
                            Err(e) => { prop_assert!(!accepted, "refused {}: {}", at, e); break }
                        }
                    }
                }
            }
            prop_assert_eq!(part.clock(), sim.clock(), "clock after step {}", i);
        }
        commit(&mut part, &store);
        prop_assert_eq!(json(&defs, &got), json(&defs, &want));
    }
}

/// `processing.contact_history = false` keeps no transitions for `inspect`.
#[test]
fn contact_history_is_kept_only_when_asked() {
    let defs = crate::common::definitions(&crate::common::SEEDS);
    for keep in [true, false] {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let settings = PartitionSettings {
            keep_history: keep,
            ..PartitionSettings::default()
        };
        let mut part = Partition::open(&store, defs.clone(), 0, 1, settings).unwrap();
        let mut out = Vec::new();
        let ev = event(0, 1, T0, 5);
        let mut budget = usize::MAX;
        part.feed(&store, &ev, &mut out, &mut budget).unwrap();
        assert!(!out.is_empty());
        for t in &out {
            part.note(t, b"t");
        }
        let mut b = store.batch(&defs, 0);
        part.write(&mut b);
        b.commit().unwrap();
        let kept = store.history(0, "c1").unwrap().len();
        assert_eq!(kept, if keep { out.len() } else { 0 }, "keep = {keep}");
    }
}

/// The conversation page's hourly counters, as the store holds them after
/// several committed batches: per hour of event time, entries on the
/// trigger, sends and suppressions on the message step, ends where the entry
/// ended (a re-entry ends the entry it pulled out of its wait). Hours more
/// than 8 days (to the day) behind the clock are deleted.
#[test]
fn step_activity_counts_the_committed_transitions_by_hour() {
    use std::collections::BTreeMap;
    use winback::domain::TransitionKind;
    use winback::store::activity::{Activity, TRIGGER};
    use winback::store::rocks::conversation_key;

    const HOUR: i64 = 3_600_000;
    let defs = crate::common::definitions(&crate::common::SEEDS);
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let mut part =
        Partition::open(&store, defs.clone(), 0, 1, PartitionSettings::default()).unwrap();
    let mut made = Vec::new();
    let mut budget = usize::MAX;
    let batch = |part: &mut Partition, made: &mut Vec<Transition>, out: Vec<Transition>| {
        for t in &out {
            part.note(t, b"t");
        }
        made.extend(out);
        let mut b = store.batch(&defs, 0);
        part.write(&mut b);
        b.commit().unwrap();
    };
    // Three contacts, one subscribed; c1 buys again inside its wait.
    let evs = [
        (0, 1, T0, 0),
        (1, 1, T0 + HOUR / 2, 5),
        (2, 2, T0 + 3 * HOUR, 5),
        (3, 3, T0 + 30 * HOUR, 5),
        (4, 1, T0 + 50 * HOUR, 5),
    ];
    for (i, contact, at, kind) in evs {
        let mut out = Vec::new();
        part.feed(&store, &event(i, contact, at, kind), &mut out, &mut budget)
            .unwrap();
        batch(&mut part, &mut made, out);
    }
    // Past every 90-day wait: sends to c1, suppressions for c2 and c3.
    let mut out = Vec::new();
    part.advance_to(&store, Timestamp(T0 + 95 * DAY), &mut out, &mut budget)
        .unwrap();
    batch(&mut part, &mut made, out);

    let mut want: BTreeMap<(u64, u16, u32, Activity, i64), u64> = BTreeMap::new();
    for t in &made {
        let conv = &defs.conversations[t.conversation as usize];
        let key = conversation_key(&conv.name);
        let hour = t.at.0.div_euclid(HOUR) * HOUR;
        let mut add = |thread, step: Option<u32>, kind| {
            *want
                .entry((key, thread, step.unwrap_or(TRIGGER), kind, hour))
                .or_default() += 1;
        };
        match &t.kind {
            TransitionKind::Entered { .. } => add(t.thread, None, Activity::Entered),
            TransitionKind::Reentered { left_step, .. } => {
                add(t.thread, None, Activity::Entered);
                add(
                    conv.steps[*left_step as usize].thread,
                    Some(*left_step),
                    Activity::Exited,
                );
            }
            TransitionKind::Send { .. } => add(t.thread, t.step, Activity::Sent),
            TransitionKind::Suppressed { .. } => add(t.thread, t.step, Activity::Suppressed),
            TransitionKind::Exited { .. } => add(t.thread, t.step, Activity::Exited),
            _ => {}
        }
    }
    let kinds: std::collections::BTreeSet<Activity> = want.keys().map(|k| k.3).collect();
    assert_eq!(kinds.len(), 4, "every kind counted: {want:?}");
    // Only the hours kept: from the day 8 days before the clock.
    let clock = part.clock().unwrap().0;
    let kept_from = (clock - 8 * 24 * HOUR).div_euclid(DAY) * DAY;
    let got: BTreeMap<_, _> = store
        .activity(0, Timestamp(i64::MIN))
        .unwrap()
        .into_iter()
        .map(|(k, n)| ((k.conversation, k.thread, k.step, k.kind, k.hour), n))
        .collect();
    let kept: BTreeMap<_, _> = want
        .iter()
        .filter(|(k, _)| k.4 >= kept_from)
        .map(|(k, n)| (*k, *n))
        .collect();
    assert!(kept.len() < want.len(), "the January entries were pruned");
    assert!(kept.keys().any(|k| k.3 == Activity::Sent));
    assert_eq!(got, kept);
}
