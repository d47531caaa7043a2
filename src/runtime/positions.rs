//! The input positions folded so far, one type for the loop and the
//! consumer's rebalance callback.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use crate::store::rocks::{Store, StoreError};

/// The next offset to read per input (topic, partition), as folded in
/// memory: ahead of the store during a batch. Shared with the rebalance
/// callback, which librdkafka calls inside the loop's poll, on the loop's
/// thread: the lock is never contended, it only makes the sharing safe.
#[derive(Debug, Clone, Default)]
pub(super) struct Positions(Arc<Mutex<HashMap<(String, i32), i64>>>);

impl Positions {
    fn map(&self) -> MutexGuard<'_, HashMap<(String, i32), i64>> {
        // Every change is one insert or remove: a panic elsewhere while the
        // lock was held cannot leave the map half-changed.
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The position folded in memory, if the partition was read since it was
    /// assigned or its batch rolled back.
    pub(super) fn get(&self, topic: &str, partition: i32) -> Option<i64> {
        self.map().get(&(topic.to_string(), partition)).copied()
    }

    pub(super) fn set(&self, topic: &str, partition: i32, next: i64) {
        self.map().insert((topic.to_string(), partition), next);
    }

    /// Forgets a position: the store's is the position again.
    pub(super) fn forget(&self, topic: &str, partition: i32) {
        self.map().remove(&(topic.to_string(), partition));
    }

    /// The position in memory, else the stored one.
    pub(super) fn or_stored(
        &self,
        store: &Store,
        topic: &str,
        partition: i32,
    ) -> Result<Option<i64>, StoreError> {
        match self.get(topic, partition) {
            Some(n) => Ok(Some(n)),
            None => store.offset(partition as u32, topic),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_comes_before_the_store_until_forgotten() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let pos = Positions::default();
        assert_eq!(pos.or_stored(&store, "in", 3).unwrap(), None);
        pos.set("in", 3, 42);
        let shared = pos.clone();
        assert_eq!(shared.get("in", 3), Some(42));
        assert_eq!(shared.get("in", 2), None);
        assert_eq!(shared.or_stored(&store, "in", 3).unwrap(), Some(42));
        shared.forget("in", 3);
        assert_eq!(pos.get("in", 3), None);
    }
}
