//! The RocksDB store against a model of ordered maps: random batches of
//! changes, commits, reopens (a crash loses only the uncommitted batch) and
//! partition drops; plus the schema-version guard.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use proptest::prelude::*;

use winback::domain::{ContactState, Definitions, Event, Timestamp};
use winback::sim::Simulator;
use winback::store::rocks::conversation_key;
use winback::store::{CouponShare, Store, StoreError, StoredTimer};

fn defs() -> Arc<Definitions> {
    crate::common::definitions(&crate::common::SEEDS)
}

/// A few real states: mid-wait, after a re-entry, after a couponed send.
fn sample_states(defs: &Arc<Definitions>) -> Vec<ContactState> {
    let ev = |id: &str, name: &str, contact: &str, day: i64| Event {
        event_id: id.into(),
        name: name.into(),
        contact_id: contact.into(),
        occurred_at: Timestamp(1_767_607_200_000 + day * 86_400_000),
        merchant_id: Some("m1".into()),
        order_id: None,
        total_cents: Some(1000),
        list_id: (name == "subscribe").then(|| "master".into()),
        attributes: Vec::new(),
    };
    let mut sim = Simulator::new(defs.clone());
    let mut out = Vec::new();
    for e in [
        ev("s", "subscribe", "a", 0),
        ev("1", "checkout", "a", 0),
        ev("2", "checkout", "b", 1),
        ev("3", "checkout", "b", 30),
        ev("4", "checkout", "c", 2),
    ] {
        let _ = sim.feed(&e, &mut out);
    }
    sim.advance_to(Timestamp(1_767_607_200_000 + 93 * 86_400_000), &mut out);
    sim.states().map(|(_, s)| s.clone()).collect()
}

#[derive(Debug, Clone)]
enum Op {
    Contact(u32, u8, usize),
    SetTimer(u32, i64, u16, u32, u8),
    CancelExisting(usize),
    Offset(u32, u8, i64),
    Clock(u32, i64),
    Coupon(u32, u8, u64, bool),
    Commit,
    Reopen,
    Drop(u32),
}

fn op() -> impl Strategy<Value = Op> {
    let p = 0u32..3;
    prop_oneof![
        3 => (p.clone(), 0u8..4, 0usize..8).prop_map(|(p, c, s)| Op::Contact(p, c, s)),
        4 => (p.clone(), -5i64..5, 0u16..2, 1u32..4, 0u8..4).prop_map(|(p, t, cv, e, c)| Op::SetTimer(p, t, cv, e, c)),
        2 => (0usize..64).prop_map(Op::CancelExisting),
        2 => (p.clone(), 0u8..2, 0i64..1_000_000).prop_map(|(p, t, o)| Op::Offset(p, t, o)),
        1 => (p.clone(), -5i64..5).prop_map(|(p, t)| Op::Clock(p, t)),
        1 => (p.clone(), 0u8..2, 0u64..100, any::<bool>()).prop_map(|(p, q, t, w)| Op::Coupon(p, q, t, w)),
        3 => Just(Op::Commit),
        1 => Just(Op::Reopen),
        1 => p.prop_map(Op::Drop),
    ]
}

#[derive(Default, Clone)]
struct Model {
    contacts: BTreeMap<(u32, String), ContactState>,
    timers: BTreeSet<(u32, StoredTimer)>,
    offsets: BTreeMap<(u32, String), i64>,
    clocks: BTreeMap<u32, Timestamp>,
    coupons: BTreeMap<(u32, String), CouponShare>,
}

impl Model {
    fn drop_partition(&mut self, p: u32) {
        self.contacts.retain(|k, _| k.0 != p);
        self.timers.retain(|k| k.0 != p);
        self.offsets.retain(|k, _| k.0 != p);
        self.clocks.remove(&p);
        self.coupons.retain(|k, _| k.0 != p);
    }
}

fn check(store: &Store, defs: &Definitions, m: &Model) -> Result<(), TestCaseError> {
    for p in 0..3u32 {
        for c in 0..4u8 {
            let contact = format!("contact-{c}");
            let got = store
                .contact(defs, p, &contact)
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(
                got.as_ref(),
                m.contacts.get(&(p, contact.clone())),
                "contact {} p{}",
                contact,
                p
            );
        }
        for t in ["checkouts", "subscriptions"] {
            let got = store
                .offset(p, t)
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(got, m.offsets.get(&(p, t.to_string())).copied());
        }
        prop_assert_eq!(
            store
                .clock(p)
                .map_err(|e| TestCaseError::fail(e.to_string()))?,
            m.clocks.get(&p).copied()
        );
        for q in ["pool-a", "pool-b"] {
            let got = store
                .coupon_share(p, q)
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(got, m.coupons.get(&(p, q.to_string())).copied());
        }
        // The store orders timers by expiry, then conversation key, entry, contact.
        let mut want: Vec<StoredTimer> = m
            .timers
            .iter()
            .filter(|(tp, _)| *tp == p)
            .map(|(_, t)| t.clone())
            .collect();
        want.sort_by_key(|t| {
            (
                t.expiry,
                conversation_key(&defs.conversations[t.conversation as usize].name),
                t.entry,
                t.contact.clone(),
            )
        });
        let got = store
            .timers_before(defs, p, Timestamp(i64::MAX))
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(&got, &want);
        let counted = store
            .count_timers(p)
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(counted, want.len() as u64);
        // A horizon cuts the scan at the first later expiry.
        let cut = Timestamp(0);
        let got = store
            .timers_before(defs, p, cut)
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        let want_cut: Vec<StoredTimer> = want.into_iter().filter(|t| t.expiry < cut).collect();
        prop_assert_eq!(got, want_cut);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn store_matches_the_model_across_reopens(ops in prop::collection::vec(op(), 1..60)) {
        let defs = defs();
        let samples = sample_states(&defs);
        let dir = tempfile::tempdir().map_err(|e| TestCaseError::fail(e.to_string()))?;
        let mut store = Some(Store::open(dir.path()).map_err(|e| TestCaseError::fail(e.to_string()))?);
        let mut committed = Model::default();
        let mut pending = committed.clone();
        let mut ops_in_batch: Vec<Op> = Vec::new();
        let hour = 3_600_000i64;
        for op in ops {
            match op {
                Op::Commit => {
                    let s = store.as_ref().ok_or_else(|| TestCaseError::fail("closed"))?;
                    // Replay the batch's ops per partition: one batch per partition, as the runtime does.
                    for p in 0..3u32 {
                        let mut b = s.batch(&defs, p);
                        for o in ops_in_batch.iter() {
                            match o {
                                Op::Contact(q, c, i) if *q == p => b.put_contact(&format!("contact-{c}"), &samples[i % samples.len()]),
                                Op::SetTimer(q, t, cv, e, c) if *q == p => b.set_timer(&StoredTimer {
                                    expiry: Timestamp(t * hour), conversation: *cv, entry: *e, contact: format!("contact-{c}"),
                                }),
                                Op::Offset(q, t, o) if *q == p => b.set_offset(["checkouts", "subscriptions"][*t as usize], *o),
                                Op::Clock(q, t) if *q == p => b.set_clock(Timestamp(t * hour)),
                                Op::Coupon(q, pool, taken, w) if *q == p => {
                                    b.set_coupon_share(["pool-a", "pool-b"][*pool as usize], CouponShare { taken: *taken, low_warned: *w })
                                }
                                Op::CancelExisting(_) => {}
                                _ => {}
                            }
                        }
                        // Deletes come after the puts in the batch, as in the runtime: a wait
                        // set and cancelled in the same batch ends up absent.
                        let mut touched = committed.timers.clone();
                        for o in &ops_in_batch {
                            if let Op::SetTimer(q, t, cv, e, c) = o {
                                touched.insert((*q, StoredTimer { expiry: Timestamp(t * hour), conversation: *cv, entry: *e, contact: format!("contact-{c}") }));
                            }
                        }
                        for (q, t) in &touched {
                            if *q == p && !pending.timers.contains(&(*q, t.clone())) {
                                b.cancel_timer(t);
                            }
                        }
                        b.commit().map_err(|e| TestCaseError::fail(e.to_string()))?;
                    }
                    committed = pending.clone();
                    ops_in_batch.clear();
                    check(s, &defs, &committed)?;
                }
                Op::Reopen => {
                    drop(store.take());
                    let s = Store::open(dir.path()).map_err(|e| TestCaseError::fail(e.to_string()))?;
                    pending = committed.clone();
                    ops_in_batch.clear();
                    check(&s, &defs, &committed)?;
                    store = Some(s);
                }
                Op::Drop(p) => {
                    let s = store.as_ref().ok_or_else(|| TestCaseError::fail("closed"))?;
                    s.drop_partition(p).map_err(|e| TestCaseError::fail(e.to_string()))?;
                    committed.drop_partition(p);
                    pending = committed.clone();
                    ops_in_batch.clear();
                    check(s, &defs, &committed)?;
                }
                Op::CancelExisting(i) => {
                    let all: Vec<(u32, StoredTimer)> = pending.timers.iter().cloned().collect();
                    if !all.is_empty() {
                        pending.timers.remove(&all[i % all.len()]);
                    }
                }
                other => {
                    match &other {
                        Op::Contact(p, c, i) => { pending.contacts.insert((*p, format!("contact-{c}")), samples[i % samples.len()].clone()); }
                        Op::SetTimer(p, t, cv, e, c) => {
                            pending.timers.insert((*p, StoredTimer { expiry: Timestamp(t * hour), conversation: *cv, entry: *e, contact: format!("contact-{c}") }));
                        }
                        Op::Offset(p, t, o) => { pending.offsets.insert((*p, ["checkouts", "subscriptions"][*t as usize].to_string()), *o); }
                        Op::Clock(p, t) => { pending.clocks.insert(*p, Timestamp(t * hour)); }
                        Op::Coupon(p, q, taken, w) => {
                            pending.coupons.insert((*p, ["pool-a", "pool-b"][*q as usize].to_string()), CouponShare { taken: *taken, low_warned: *w });
                        }
                        _ => {}
                    }
                    ops_in_batch.push(other);
                }
            }
        }
    }
}

#[test]
fn a_store_of_another_schema_version_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    drop(Store::open(dir.path()).expect("create"));
    {
        let opts = rocksdb::Options::default();
        let db = rocksdb::DB::open_cf(
            &opts,
            dir.path(),
            [
                "contacts", "timers", "offsets", "coupons", "meta", "history", "activity",
            ],
        )
        .expect("raw open");
        let meta = db.cf_handle("meta").expect("meta");
        db.put_cf(meta, b"schema_version", 99u32.to_be_bytes())
            .expect("put");
    }
    match Store::open(dir.path()) {
        Err(StoreError::Version { found: 99, .. }) => {}
        Err(e) => panic!("wrong error: {e}"),
        Ok(_) => panic!("a store of schema version 99 was opened"),
    }
}

/// A contact's history keeps its last `HISTORY_LEN` transitions across
/// batches, is dropped with its partition and deleted on its own; a
/// read-only store reads it while another holds the store open.
#[test]
fn history_keeps_the_last_transitions_and_reads_while_the_store_is_held() {
    use winback::store::rocks::HISTORY_LEN;
    let dir = tempfile::tempdir().expect("tempdir");
    let defs = defs();
    let store = Store::open(dir.path()).expect("open");
    let t = |i: usize| format!("t{i}").into_bytes();
    let record = |ts: &[Vec<u8>]| {
        let mut r = Vec::new();
        for x in ts {
            winback::store::rocks::history_frame(&mut r, x);
        }
        r
    };
    let mut next = 0;
    for batch_len in [3, 1, HISTORY_LEN, 7] {
        let mut b = store.batch(&defs, 2);
        let fresh: Vec<Vec<u8>> = (next..next + batch_len).map(t).collect();
        b.append_history("ann", &record(&fresh), false);
        b.append_history("bob", &record(&fresh[..1]), false);
        b.commit().expect("commit");
        next += batch_len;
        let want: Vec<Vec<u8>> = (next.saturating_sub(HISTORY_LEN)..next).map(t).collect();
        assert_eq!(store.history(2, "ann").expect("read"), want);
    }
    assert_eq!(store.history(2, "bob").expect("read").len(), 4);
    assert!(store.history(1, "ann").expect("read").is_empty());

    // Read-only, while this store holds the lock.
    let reader = Store::open_read_only(dir.path()).expect("read-only open");
    assert_eq!(
        reader.history(2, "ann").expect("read"),
        store.history(2, "ann").expect("read")
    );
    assert!(
        Store::open(dir.path()).is_err(),
        "a second writer is refused"
    );

    let mut b = store.batch(&defs, 2);
    b.delete_history("bob");
    b.commit().expect("commit");
    assert!(store.history(2, "bob").expect("read").is_empty());
    store.drop_partition(2).expect("drop");
    assert!(store.history(2, "ann").expect("read").is_empty());
    // The digest leaves the history out: a rebuild does not reproduce it.
    let fresh = tempfile::tempdir().expect("tempdir");
    let other = Store::open(fresh.path()).expect("open");
    let mut b = store.batch(&defs, 3);
    b.append_history("cyd", &record(&[t(0)]), false);
    b.commit().expect("commit");
    assert_eq!(
        store.digest(3).expect("digest"),
        other.digest(3).expect("digest")
    );
}
