//! The stored encoding of contact state: round trips, survives reordered
//! definitions, and refuses what it cannot read.

use std::sync::Arc;

use proptest::prelude::*;

use crate::common::definitions as load;
use prost::Message;
use winback::domain::time::{DAY_MS, HOUR_MS};
use winback::domain::{Definitions, Event, Timestamp};
use winback::pb;
use winback::sim::Simulator;
use winback::store::codec::{self, CodecError, SCHEMA_VERSION};

const T0: i64 = 1_767_607_200_000;

fn events(spec: &[(u8, i64, u8)]) -> Vec<Event> {
    spec.iter()
        .enumerate()
        .map(|(i, &(contact, hours, kind))| {
            let (name, list) = match kind {
                0 => ("subscribe", Some("master".to_string())),
                1 => ("unsubscribe", Some("master".to_string())),
                2 => ("vip_checkout", None),
                _ => ("checkout", None),
            };
            Event {
                event_id: format!("e{i}"),
                name: name.into(),
                contact_id: format!("c{contact}"),
                occurred_at: Timestamp(T0 + hours * HOUR_MS),
                merchant_id: (i % 3 > 0).then(|| format!("m{}", i % 2)),
                order_id: None,
                total_cents: Some(1234),
                list_id: list,
                // Profile attributes on some events: they round-trip too.
                attributes: if i % 4 == 0 {
                    vec![("tier".into(), format!("t{i}"))]
                } else {
                    Vec::new()
                },
            }
        })
        .collect()
}

fn states(
    defs: &Arc<Definitions>,
    evs: &[Event],
    until_days: i64,
) -> Vec<(String, Vec<u8>, winback::domain::ContactState)> {
    let mut sim = Simulator::new(defs.clone());
    let mut out = Vec::new();
    for ev in evs {
        let _ = sim.feed(ev, &mut out);
    }
    sim.advance_to(Timestamp(T0 + until_days * DAY_MS), &mut out);
    sim.states()
        .map(|(id, st)| (id.to_string(), codec::encode(defs, st), st.clone()))
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Any state the engine makes - mid-wait, after sends, with coupons,
    /// subscriptions, several merchants - decodes to itself, and re-encodes to
    /// the same bytes.
    #[test]
    fn states_round_trip(spec in prop::collection::vec((0u8..5, 0i64..(200 * 24), 0u8..6), 1..40), until in 0i64..300) {
        let defs = load(&["config/winback-90d.toml", "config/winback-filter-coupon.toml", "tests/scenarios/defs/small-pool.toml"]);
        for (id, bytes, st) in states(&defs, &events(&spec), until) {
            let back = codec::decode(&defs, &bytes);
            prop_assert_eq!(back.as_ref(), Ok(&st), "contact {}", id);
            if let Ok(back) = back {
                prop_assert_eq!(codec::encode(&defs, &back), bytes);
            }
        }
    }
}

#[test]
fn names_not_positions_survive_reordered_definitions() {
    let before = load(&[
        "config/winback-90d.toml",
        "config/winback-filter-coupon.toml",
    ]);
    // Another conversation loaded first shifts every conversation's index.
    let after = load(&[
        "tests/scenarios/defs/rank.toml",
        "config/winback-filter-coupon.toml",
        "config/winback-90d.toml",
    ]);
    let evs = events(&[(1, 0, 0), (1, 1, 3), (2, 5, 3), (1, 50 * 24, 3)]);
    let states = states(&before, &evs, 60);
    assert!(!states.is_empty());
    for (id, bytes, st) in states {
        let moved = codec::decode(&after, &bytes).expect("decodes under reordered definitions");
        assert_ne!(
            moved.conversations, st.conversations,
            "{id}: indices should differ"
        );
        assert_eq!(
            codec::encode(&after, &moved),
            bytes,
            "{id}: same record under the new order"
        );
    }
}

#[test]
fn refuses_what_it_cannot_read() {
    let defs = load(&[
        "config/winback-90d.toml",
        "config/winback-filter-coupon.toml",
    ]);
    let (_, bytes, _) = states(&defs, &events(&[(1, 0, 3)]), 10).remove(0);
    let record = pb::ContactStateRecord::decode(bytes.as_slice()).expect("record");

    let mut r = record.clone();
    r.schema_version = SCHEMA_VERSION + 1;
    assert_eq!(
        codec::decode(&defs, &r.encode_to_vec()),
        Err(CodecError::Version {
            found: SCHEMA_VERSION + 1
        })
    );

    let only_90d = load(&["config/winback-90d.toml"]);
    assert_eq!(
        codec::decode(&only_90d, &bytes),
        Err(CodecError::Unknown {
            what: "conversation",
            name: "Winback Coupon".into()
        })
    );

    let mut r = record.clone();
    r.conversations[0].active[0].step = "gone".into();
    let err = codec::decode(&defs, &r.encode_to_vec()).unwrap_err();
    assert!(
        matches!(err, CodecError::Unknown { what: "step", .. }),
        "{err}"
    );

    let mut r = record.clone();
    r.recent_events.pop();
    assert!(matches!(
        codec::decode(&defs, &r.encode_to_vec()),
        Err(CodecError::Invalid(_))
    ));

    // The instant a state uses for "none": no event or wait makes it.
    let mut r = record.clone();
    r.orders.get_or_insert_default().last_order_at_ms = Some(i64::MIN);
    let err = codec::decode(&defs, &r.encode_to_vec()).unwrap_err();
    assert!(
        matches!(&err, CodecError::Invalid(m) if m.contains("last_order_at_ms")),
        "{err}"
    );
    let mut r = record.clone();
    r.conversations[0].active[0].waiting_until_ms = Some(i64::MIN);
    let err = codec::decode(&defs, &r.encode_to_vec()).unwrap_err();
    assert!(
        matches!(&err, CodecError::Invalid(m) if m.contains("waiting_until_ms")),
        "{err}"
    );

    assert!(matches!(
        codec::decode(&defs, &[0xff, 0xff, 0xff]),
        Err(CodecError::Decode(_))
    ));
}

/// A stored ring may start anywhere (`recent_next`, as earlier versions
/// wrote it): its oldest id is the first one forgotten.
#[test]
fn a_dedup_ring_is_read_from_its_oldest_slot() {
    let defs = load(&["config/winback-90d.toml"]);
    let mut st = winback::domain::ContactState::default();
    for i in 0..8 {
        assert!(st.remember_event(&format!("e{i}")));
    }
    let mut r =
        pb::ContactStateRecord::decode(codec::encode(&defs, &st).as_slice()).expect("record");
    assert_eq!(r.recent_next, 0, "written oldest first");
    // The same ids as a ring whose oldest (e0) sits in slot 3.
    r.recent_events.rotate_right(3);
    r.recent_next = 3;
    let mut back = codec::decode(&defs, &r.encode_to_vec()).expect("decodes");
    assert_eq!(back, st, "the same state as the ring read in order");
    assert!(back.remember_event("e8"), "a new id");
    assert!(
        back.remember_event("e0"),
        "e0, the oldest, made room for e8"
    );
    for i in 2..9 {
        assert!(
            !back.remember_event(&format!("e{i}")),
            "e{i} is still recent"
        );
    }
    r.recent_next = 8;
    assert!(matches!(
        codec::decode(&defs, &r.encode_to_vec()),
        Err(CodecError::Invalid(_))
    ));
}

/// A state stored before the first order was kept (no `first_order_at_ms`)
/// reads with no known gap: its cadence waits use their fallback. One
/// stored with it gives the gap back.
#[test]
fn a_state_without_its_first_order_knows_no_gap() {
    let defs = load(&["config/winback-90d.toml"]);
    let (_, bytes, st) = states(&defs, &events(&[(1, 0, 3), (1, 48, 3), (1, 96, 3)]), 10).remove(0);
    assert_eq!(st.orders.count, 3);
    assert_eq!(
        st.orders.mean_gap(),
        Some(winback::domain::Duration(48 * HOUR_MS))
    );
    assert_eq!(
        codec::decode(&defs, &bytes).unwrap().orders.mean_gap(),
        st.orders.mean_gap()
    );
    let mut r = pb::ContactStateRecord::decode(bytes.as_slice()).expect("record");
    r.orders.as_mut().expect("orders").first_order_at_ms = None;
    let old = codec::decode(&defs, &r.encode_to_vec()).expect("an older state reads");
    assert_eq!((old.orders.count, old.orders.mean_gap()), (3, None));
}
