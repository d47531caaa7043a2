//! The counters of a run, readable while it runs (the exit line, tests, benchmarks).

use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, OnceLock};

/// Counters of a run, readable while it runs.
#[derive(Debug, Default)]
pub struct RunStats {
    /// Input records taken (a batch processed again after an abort takes
    /// its records again).
    pub events: AtomicU64,
    /// Input records folded or dead-lettered in batches since written: what
    /// a restart would not read again.
    pub events_written: AtomicU64,
    pub transitions: AtomicU64,
    pub dead_letters: AtomicU64,
    pub batches: AtomicU64,
    /// Batches ended, written or not: the idle wall clock is looked at at
    /// the end of each.
    pub batch_ends: AtomicU64,
    pub timers_fired_idle: AtomicU64,
    /// Events folded with an `occurred_at` before their partition's clock
    /// (docs/semantics.md, "Late events").
    pub late_events: AtomicU64,
    /// Records produced again after a failed delivery.
    pub redelivered: Arc<AtomicU64>,
    /// Time spent waiting for the broker's acknowledgements, in µs.
    pub ack_wait_us: AtomicU64,
    /// Time spent writing batches to RocksDB, in µs.
    pub store_write_us: AtomicU64,
    /// Transactions aborted (their batches processed again).
    pub aborted: AtomicU64,
    /// Changelog records read by restores.
    pub restored_records: AtomicU64,
    /// Restores read again because they ended behind the group's committed
    /// input offsets.
    pub restore_retries: AtomicU64,
    /// Records fetched again below the position already folded (around a
    /// seek or a rebalance), skipped.
    pub refetched: AtomicU64,
    /// Records of a partition no longer held when they were polled, skipped.
    pub unowned: AtomicU64,
    /// Records on another partition than their key hashes to (README,
    /// "Input"): folded, but a producer partitions differently from the rest.
    pub misrouted: AtomicU64,
    /// Revocations handled.
    pub revocations: AtomicU64,
    /// Batches under way at a revocation, committed before the partitions
    /// were let go.
    pub revocation_commits: AtomicU64,
    /// Where the admin server listens (`admin.listen`, a port 0 resolved).
    pub admin_addr: OnceLock<SocketAddr>,
}
