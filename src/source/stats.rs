//! librdkafka's statistics for the admin server's `/metrics`. With
//! `statistics.interval.ms` set (by [`enable`] when `run` serves metrics),
//! librdkafka reports every interval to its client's context, which keeps
//! the latest report here; the loop takes it and records the parts that help
//! an operator (`crate::runtime::metrics`).

use std::sync::Mutex;

use rdkafka::ClientConfig;
use rdkafka::statistics::Statistics;

use crate::config::engine::EngineConfig;

/// How often librdkafka reports, unless `[kafka]` sets
/// `statistics.interval.ms`.
pub const DEFAULT_INTERVAL_MS: &str = "5000";

/// Turns the reports on for a client of `run` when its admin server serves
/// metrics.
pub fn enable(config: &mut ClientConfig, cfg: &EngineConfig) {
    if cfg.admin_listen.is_some() && !cfg.kafka.contains_key("statistics.interval.ms") {
        config.set("statistics.interval.ms", DEFAULT_INTERVAL_MS);
    }
}

/// A client's latest report, not yet recorded.
#[derive(Default)]
pub struct Latest(Mutex<Option<Box<Statistics>>>);

impl Latest {
    /// Called by librdkafka's thread: replaces an unrecorded report.
    pub fn keep(&self, s: Statistics) {
        if let Ok(mut l) = self.0.lock() {
            *l = Some(Box::new(s));
        }
    }

    /// The report librdkafka made since the last call, if any.
    pub fn take(&self) -> Option<Box<Statistics>> {
        self.0.lock().ok().and_then(|mut l| l.take())
    }
}
