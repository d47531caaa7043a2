//! Bad input gets an error, never a panic: arbitrary event lines through the
//! decoder and the engine, arbitrary edits of definition files through
//! validation.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use proptest::prelude::*;

use winback::sim::Simulator;
use winback::wire;

fn seeds() -> Arc<winback::domain::Definitions> {
    crate::common::definitions(&crate::common::SEEDS)
}

const EXAMPLE: &str = r#"{"event_id":"e1","name":"checkout","contact_id":"c1","occurred_at":"2026-01-05T10:00:00Z","merchant_id":"m1","order_id":"o1","total":49.9}"#;

/// Lines near the valid form: one character replaced, removed or inserted,
/// plus field values pushed to extremes.
fn mutated_line() -> impl Strategy<Value = String> {
    let edit = (0usize..EXAMPLE.len(), any::<char>(), 0u8..3).prop_map(|(i, c, op)| {
        let mut chars: Vec<char> = EXAMPLE.chars().collect();
        match op {
            0 => chars[i] = c,
            1 => {
                chars.remove(i);
            }
            _ => chars.insert(i, c),
        }
        chars.into_iter().collect::<String>()
    });
    let extremes = prop::sample::select(vec![
        EXAMPLE.replace("49.9", "1e308"),
        EXAMPLE.replace("49.9", "-0.0"),
        EXAMPLE.replace("49.9", "184467440737095516150"),
        EXAMPLE.replace("2026-01-05T10:00:00Z", "9999-12-31T23:59:59Z"),
        EXAMPLE.replace("2026-01-05T10:00:00Z", "0001-01-01T00:00:00Z"),
        EXAMPLE.replace(
            "2026-01-05T10:00:00Z",
            "2026-01-05T10:00:00.999999999+14:00",
        ),
        EXAMPLE.replace("\"c1\"", "\"\""),
        EXAMPLE.replace("checkout", "subscribe"),
        EXAMPLE.replace("\"c1\"", &format!("\"{}\"", "x".repeat(10_000))),
    ]);
    prop_oneof![edit, extremes, any::<String>()]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn event_lines_never_panic(lines in prop::collection::vec(mutated_line(), 1..20)) {
        let defs = seeds();
        let mut sim = Simulator::new(defs.clone());
        let mut out = Vec::new();
        for line in &lines {
            if let Ok(ev) = wire::json::decode_event(line) {
                let _ = sim.feed(&ev, &mut out);
            }
        }
        // Far past every wait, then encode everything that came out.
        sim.advance_to(winback::domain::Timestamp(i64::MAX), &mut out);
        for t in &out {
            let _ = wire::json::encode_transition(&defs, t);
            let _ = wire::text::render(&defs, t);
            let _ = wire::proto::transition_to_pb(&defs, t);
        }
    }

    #[test]
    fn protobuf_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
        let _ = wire::proto::decode_event(&bytes);
    }

    #[test]
    fn edited_definitions_never_panic(i in 0usize..4000, c in any::<char>(), op in 0u8..3, file in 0usize..2) {
        let name = ["winback-90d.toml", "winback-filter-coupon.toml"][file];
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("config").join(name);
        let text = std::fs::read_to_string(&path).expect("seed");
        let mut chars: Vec<char> = text.chars().collect();
        let i = i % chars.len();
        match op {
            0 => chars[i] = c,
            1 => { chars.remove(i); }
            _ => chars.insert(i, c),
        }
        let edited: String = chars.into_iter().collect();
        let codes = |_: &Path| Ok("A\nB\n".to_string());
        match winback::config::load_texts(&[(path.as_path(), edited.as_str())], &codes) {
            Ok(_) => {}
            Err(e) => {
                // Every rejection names at least one error, each with the file.
                prop_assert!(e.errors().count() > 0);
                for d in &e.diagnostics {
                    prop_assert!(d.to_string().starts_with(&path.display().to_string()) || d.to_string().contains("codes"));
                }
            }
        }
    }
}
