//! Readiness as the run loop reports it, for `/readyz` and the pending-wait
//! gauge.

use std::collections::BTreeSet;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};

/// Written by the run loop (and its restores), read by the admin server.
#[derive(Debug, Default)]
pub struct Health {
    /// The group has given this member its partitions at least once.
    assigned: AtomicBool,
    /// Restores under way.
    restoring: AtomicUsize,
    /// Batches ended since the assignment last changed: one means every
    /// partition held was restored, positioned and fetched from.
    batches_since_assignment: AtomicU64,
    stopping: AtomicBool,
    partitions: Mutex<BTreeSet<u32>>,
    /// The input topics' partition count, once checked (0 before).
    input_partitions: AtomicU32,
}

impl Health {
    /// Why the process is not ready, or `None` when it is.
    pub fn not_ready(&self) -> Option<&'static str> {
        if self.stopping.load(Ordering::Acquire) {
            Some("stopping")
        } else if !self.assigned.load(Ordering::Acquire) {
            Some("waiting for the group's assignment")
        } else if self.restoring.load(Ordering::Acquire) > 0 {
            Some("restoring state from the changelog")
        } else if self.batches_since_assignment.load(Ordering::Acquire) == 0 {
            Some("starting to fetch")
        } else {
            None
        }
    }

    /// The loop took an assignment (or lost partitions): ready again once a
    /// batch has ended with it.
    pub fn assignment_changed(&self, held: impl IntoIterator<Item = u32>) {
        if let Ok(mut p) = self.partitions.lock() {
            *p = held.into_iter().collect();
        }
        self.batches_since_assignment.store(0, Ordering::Release);
        self.assigned.store(true, Ordering::Release);
    }

    pub fn batch_ended(&self) {
        self.batches_since_assignment.fetch_add(1, Ordering::AcqRel);
    }

    pub fn restore_started(&self) {
        self.restoring.fetch_add(1, Ordering::AcqRel);
    }

    pub fn restore_ended(&self) {
        self.restoring.fetch_sub(1, Ordering::AcqRel);
    }

    pub fn stopping(&self) {
        self.stopping.store(true, Ordering::Release);
    }

    pub fn set_input_partitions(&self, n: u32) {
        self.input_partitions.store(n, Ordering::Release);
    }

    /// The input topics' partition count, once `run` has checked it.
    pub fn input_partitions(&self) -> Option<u32> {
        Some(self.input_partitions.load(Ordering::Acquire)).filter(|n| *n > 0)
    }

    /// The partitions the run loop holds, as of the last assignment change
    /// (the rebalance callback restores only the others).
    pub fn partitions(&self) -> BTreeSet<u32> {
        self.partitions
            .lock()
            .map(|p| p.clone())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_only_after_an_assignment_its_restores_and_a_batch() {
        let h = Health::default();
        assert_eq!(h.not_ready(), Some("waiting for the group's assignment"));
        h.restore_started();
        h.assignment_changed([0, 2]);
        h.batch_ended();
        assert_eq!(h.not_ready(), Some("restoring state from the changelog"));
        h.restore_ended();
        h.assignment_changed([0, 2]);
        assert_eq!(h.not_ready(), Some("starting to fetch"));
        h.batch_ended();
        assert_eq!(h.not_ready(), None);
        assert_eq!(h.partitions(), BTreeSet::from([0, 2]));
        h.stopping();
        assert_eq!(h.not_ready(), Some("stopping"));
    }
}
