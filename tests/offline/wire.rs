//! The protobuf and JSON forms of a transition carry the same content.

use std::path::PathBuf;
use std::sync::Arc;

use prost::Message;
use winback::pb;
use winback::sim::Simulator;
use winback::wire;

fn ts(t: &Option<prost_types::Timestamp>) -> String {
    let t = t.as_ref().expect("timestamp");
    winback::domain::Timestamp(t.seconds * 1000 + i64::from(t.nanos / 1_000_000)).to_rfc3339()
}

#[test]
fn protobuf_and_json_transitions_agree() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let files = [
        root.join("config/winback-90d.toml"),
        root.join("config/winback-filter-coupon.toml"),
        root.join("config/examples/winback-exits.toml"),
        root.join("config/examples/winback-send-window.toml"),
        root.join("config/examples/winback-experiment.toml"),
    ];
    let defs = Arc::new(
        winback::config::load_files(&files)
            .expect("valid")
            .definitions,
    );
    let events = std::fs::read_to_string(root.join("examples/events.jsonl")).expect("events");
    let mut sim = Simulator::new(defs.clone());
    let mut out = Vec::new();
    for line in events.lines() {
        let ev = wire::json::decode_event(line).expect("example events decode");
        let _ = sim.feed(&ev, &mut out);
    }
    // A contact in the experiment example's holdout, mailed in September.
    let held = (0..)
        .map(|i| format!("h{i}"))
        .find(|c| {
            let d = winback::domain::experiment::draw(
                "2026-q1",
                "Winback Experiment",
                winback::domain::experiment::Scope::Holdout,
                c,
            );
            winback::domain::experiment::within(d, 0.1)
        })
        .expect("a held-out contact");
    for line in [
        format!(
            r#"{{"event_id":"hs","name":"subscribe","contact_id":"{held}","list_id":"master","occurred_at":"2026-06-01T00:00:00Z"}}"#
        ),
        format!(
            r#"{{"event_id":"ho","name":"checkout","contact_id":"{held}","occurred_at":"2026-06-02T00:00:00Z"}}"#
        ),
    ] {
        let _ = sim.feed(&wire::json::decode_event(&line).expect("event"), &mut out);
    }
    // An exit event for the exits example (bob waits from June 1).
    let refund = r#"{"event_id":"r1","name":"order_refunded","contact_id":"bob","occurred_at":"2026-06-02T00:00:00Z"}"#;
    let _ = sim.feed(&wire::json::decode_event(refund).expect("refund"), &mut out);
    sim.advance_to(
        winback::domain::Timestamp::parse_rfc3339("2027-01-01T00:00:00Z").expect("time"),
        &mut out,
    );
    // Every kind, `forgotten` included.
    let forget = r#"{"event_id":"f1","name":"forget","contact_id":"ann","occurred_at":"2027-01-02T00:00:00Z"}"#;
    let _ = sim.feed(&wire::json::decode_event(forget).expect("forget"), &mut out);
    assert!(out.len() > 40);
    let (mut forgotten, mut held, mut exit_events, mut splits, mut held_out) = (0, 0, 0, 0, 0);
    for t in &out {
        let j: serde_json::Value =
            serde_json::from_str(&wire::json::encode_transition(&defs, t)).expect("json");
        let bytes = wire::proto::transition_to_pb(&defs, t).encode_to_vec();
        let p = pb::Transition::decode(bytes.as_slice()).expect("protobuf round trip");
        assert_eq!(j["transition_id"], p.transition_id);
        assert_eq!(j["conversation"], p.conversation);
        assert_eq!(j["contact_id"], p.contact_id);
        assert_eq!(j["at"], ts(&p.at));
        assert_eq!(j["entry"], p.entry);
        assert_eq!(j["thread"], p.thread);
        assert_eq!(j["step"], p.step);
        use pb::transition::Detail;
        match p.detail.expect("detail") {
            Detail::Entered(d) => assert_eq!(
                (&j["type"], &j["event_id"]),
                (&"entered".into(), &d.event_id.into())
            ),
            Detail::Reentered(d) => {
                assert_eq!(j["type"], "reentered");
                assert_eq!(j["left_step"], d.left_step);
                assert_eq!(j["previous_entry"], d.previous_entry);
            }
            Detail::WaitStarted(d) => {
                assert_eq!(j["expires_at"], ts(&d.expires_at));
                assert_eq!(
                    j["duration"],
                    winback::domain::Duration(d.duration_ms).to_string()
                );
            }
            Detail::Goto(d) => assert_eq!(
                (&j["target_step"], &j["taken"]),
                (&d.target_step.into(), &d.taken.into())
            ),
            Detail::Exited(d) => {
                assert_eq!(j["reason"], d.reason);
                assert_eq!(j.get("event").and_then(|e| e.as_str()), d.event.as_deref());
                exit_events += usize::from(d.event.is_some());
            }
            Detail::Split(d) => {
                assert_eq!(
                    (&j["variant"], &j["target_step"]),
                    (&d.variant.into(), &d.target_step.into())
                );
                splits += 1;
            }
            Detail::HeldOut(d) => {
                assert_eq!(j["message"], d.message);
                held_out += 1;
            }
            Detail::Held(d) => {
                assert_eq!(j["until"], ts(&d.until));
                assert_eq!(j["reason"], d.reason);
                held += 1;
            }
            Detail::CouponAssigned(d) => {
                assert_eq!(
                    (&j["code"], &j["pool"], &j["field"]),
                    (&d.code.into(), &d.pool.into(), &d.field.into())
                );
                assert_eq!(j["expires_at"], ts(&d.expires_at));
            }
            Detail::CouponPoolExhausted(d) => assert_eq!(j["outcome"], d.outcome),
            Detail::CouponPoolLow(d) => assert_eq!(j["remaining"], d.remaining),
            Detail::Send(d) => {
                assert_eq!(j["message"], d.message);
                for (k, v) in &d.fields {
                    assert_eq!(j["fields"][k], *v);
                }
                assert_eq!(
                    j["fields"].as_object().map(|o| o.len()),
                    Some(d.fields.len())
                );
            }
            Detail::Suppressed(d) => assert_eq!(
                (&j["message"], &j["reason"]),
                (&d.message.into(), &d.reason.into())
            ),
            Detail::Forgotten(_) => {
                assert_eq!(j["type"], "forgotten");
                forgotten += 1;
            }
        }
    }
    assert_eq!(forgotten, 5, "one per conversation ann was in");
    assert!(
        held > 0 && exit_events > 0 && splits > 0 && held_out > 0,
        "held {held}, exit events {exit_events}, splits {splits}, held out {held_out}"
    );
}
