//! Helpers shared by the integration tests (each test crate uses a part).
#![allow(dead_code)]

pub mod admin;
pub mod kafka;

use std::path::PathBuf;
use std::sync::Arc;

use winback::domain::{Definitions, Timestamp};

/// Loads definition files named relative to the repository root; they must be valid.
pub fn definitions(files: &[&str]) -> Arc<Definitions> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let paths: Vec<PathBuf> = files.iter().map(|f| root.join(f)).collect();
    Arc::new(
        winback::config::load_files(&paths)
            .expect("valid definitions")
            .definitions,
    )
}

/// Both shipped seed conversations.
pub const SEEDS: [&str; 2] = [
    "config/winback-90d.toml",
    "config/winback-filter-coupon.toml",
];

/// The seeds and every example under `config/examples/` (file names from the
/// repository root), with a stream that exercises them: purchases,
/// subscriptions, profile updates with time zones and tiers, refunds; in
/// time order, as a producer would publish them.
pub fn examples_stream() -> (Vec<String>, Vec<String>) {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files: Vec<String> = SEEDS.iter().map(|s| s.to_string()).collect();
    let mut examples: Vec<String> = std::fs::read_dir(root.join("config/examples"))
        .unwrap()
        .map(|e| {
            format!(
                "config/examples/{}",
                e.unwrap().file_name().to_string_lossy()
            )
        })
        .filter(|f| f.ends_with(".toml"))
        .collect();
    examples.sort();
    files.extend(examples);
    let mut lines = kafka::purchase_stream(200, 120, 41);
    let zones = ["Europe/Paris", "America/Los_Angeles", "Asia/Tokyo"];
    for i in 0..200usize {
        let c = format!("c{i:04}");
        let at = 1_767_225_600_000 + (i as i64 % 90) * 86_400_000; // from 2026-01-01
        let ts = |ms: i64| Timestamp(ms).to_string();
        if i % 3 == 0 {
            lines.push(format!(
                r#"{{"event_id":"p-{c}","name":"profile_updated","contact_id":"{c}","occurred_at":"{}","attributes":{{"time_zone":"{}","tier":"{}","first_name":"N{i}"}}}}"#,
                ts(at),
                zones[i % zones.len()],
                ["gold", "silver"][i % 2]
            ));
        }
        if i % 7 == 0 {
            lines.push(format!(
                r#"{{"event_id":"r-{c}","name":"order_refunded","contact_id":"{c}","occurred_at":"{}"}}"#,
                ts(at + 20 * 86_400_000)
            ));
        }
    }
    // In time order, as a producer would publish them (some days apart).
    lines.sort_by_key(|l| winback::wire::json::decode_event(l).unwrap().occurred_at);
    (files, lines)
}
