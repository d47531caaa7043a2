//! The wall clock the idle partitions follow: the system's, or one a test moves.

use std::sync::atomic::{AtomicI64, Ordering};

use crate::domain::Timestamp;

/// Where the idle clock comes from: the system clock in production, a clock
/// the test moves in tests.
pub trait WallClock: Send + Sync {
    fn now(&self) -> Timestamp;
}

pub struct SystemClock;

impl WallClock for SystemClock {
    fn now(&self) -> Timestamp {
        Timestamp(chrono::Utc::now().timestamp_millis())
    }
}

/// A wall clock that moves only when told.
#[derive(Debug)]
pub struct ManualClock(AtomicI64);

impl ManualClock {
    pub fn new(t: Timestamp) -> Self {
        ManualClock(AtomicI64::new(t.0))
    }

    pub fn set(&self, t: Timestamp) {
        self.0.store(t.0, Ordering::Release);
    }
}

impl WallClock for ManualClock {
    fn now(&self) -> Timestamp {
        Timestamp(self.0.load(Ordering::Acquire))
    }
}
