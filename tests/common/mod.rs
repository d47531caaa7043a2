//! Helpers shared by the integration tests (each test crate uses a part).
#![allow(dead_code)]

pub mod admin;
pub mod kafka;

use std::path::PathBuf;
use std::sync::Arc;

use winback::domain::Definitions;

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
