//! Step activity, for the admin server's conversation page: per partition,
//! hour of event time and step, how many entries started, messages were sent
//! or suppressed, and entries ended. Written by a RocksDB merge (an add) in
//! the batch that makes the transitions, so the counts are exactly those of
//! the committed transitions: an aborted batch counts nothing, a replayed one
//! once.
//!
//! Like the contacts' histories, the counts are this store's own: not in the
//! changelog nor the digest. A partition restored or rebuilt elsewhere counts
//! from then on.
//!
//! Key: partition u32 ‖ hour start (ms, sign bit flipped) ‖ conversation key
//! u64 ‖ thread u16 ‖ step u32 (`u32::MAX` for the thread's trigger) ‖ kind
//! u8; value: the count, u64 little-endian (RocksDB's add operands).

use rocksdb::{Direction, IteratorMode, ReadOptions};

use super::codec;
use super::rocks::{
    Batch, CF_ACTIVITY, CF_CONTACTS, Store, StoreError, conversation_key, time_key,
};
use crate::domain::Timestamp;
use crate::domain::definition::{ConvIdx, Definitions, StepIdx, ThreadIdx};
use crate::domain::transition::{Transition, TransitionKind};

pub use crate::domain::time::HOUR_MS;
/// Hours kept behind the partition clock: the week the page shows and a day.
pub const KEEP_HOURS: i64 = 8 * 24;
/// The step number of a thread's trigger.
pub const TRIGGER: StepIdx = StepIdx::MAX;
const KEY_LEN: usize = 4 + 8 + 8 + 2 + 4 + 1;

/// What the page counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Activity {
    /// An entry started (a first entry or a re-entry), at the thread's trigger.
    Entered = 0,
    /// A message step sent.
    Sent = 1,
    /// A message step did not send (unsubscribed, not subscribed, ...).
    Suppressed = 2,
    /// An entry ended at this step: the end of its thread, an empty pool with
    /// `when_exhausted = "exit"`, the entry limit, a re-entry that pulled it
    /// out of its wait, or a forget.
    Exited = 3,
}

impl Activity {
    pub const ALL: [Activity; 4] = [
        Activity::Entered,
        Activity::Sent,
        Activity::Suppressed,
        Activity::Exited,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Activity::Entered => "entered",
            Activity::Sent => "sent",
            Activity::Suppressed => "suppressed",
            Activity::Exited => "exited",
        }
    }

    fn from_u8(b: u8) -> Option<Activity> {
        Activity::ALL.get(b as usize).copied()
    }
}

/// One counter: an hour of one step's activity of one kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ActivityKey {
    /// Start of the hour, ms.
    pub hour: i64,
    pub conversation: u64,
    pub thread: ThreadIdx,
    /// [`TRIGGER`] for the thread's trigger.
    pub step: StepIdx,
    pub kind: Activity,
}

/// The counters a transition adds to (a re-entry both starts an entry and
/// ends one), by the transition's event time.
pub fn counters(defs: &Definitions, t: &Transition) -> impl Iterator<Item = ActivityKey> {
    let hour = t.at.0.div_euclid(HOUR_MS) * HOUR_MS;
    let conv = &defs.conversations[t.conversation as usize];
    let conversation = conversation_key(&conv.name);
    let key = |thread: ThreadIdx, step: Option<StepIdx>, kind| ActivityKey {
        hour,
        conversation,
        thread,
        step: step.unwrap_or(TRIGGER),
        kind,
    };
    let (first, second) = match &t.kind {
        TransitionKind::Entered { .. } => (Some(key(t.thread, None, Activity::Entered)), None),
        TransitionKind::Reentered { left_step, .. } => {
            // The previous entry may have waited in another thread.
            let left_thread = conv
                .steps
                .get(*left_step as usize)
                .map_or(t.thread, |s| s.thread);
            (
                Some(key(t.thread, None, Activity::Entered)),
                Some(key(left_thread, Some(*left_step), Activity::Exited)),
            )
        }
        TransitionKind::Send { .. } => (Some(key(t.thread, t.step, Activity::Sent)), None),
        TransitionKind::Suppressed { .. } => {
            (Some(key(t.thread, t.step, Activity::Suppressed)), None)
        }
        TransitionKind::Exited { .. } | TransitionKind::Forgotten => {
            (Some(key(t.thread, t.step, Activity::Exited)), None)
        }
        _ => (None, None),
    };
    first.into_iter().chain(second)
}

fn encode_key(partition: u32, k: &ActivityKey) -> [u8; KEY_LEN] {
    let mut b = [0u8; KEY_LEN];
    b[..4].copy_from_slice(&partition.to_be_bytes());
    b[4..12].copy_from_slice(&time_key(Timestamp(k.hour)));
    b[12..20].copy_from_slice(&k.conversation.to_be_bytes());
    b[20..22].copy_from_slice(&k.thread.to_be_bytes());
    b[22..26].copy_from_slice(&k.step.to_be_bytes());
    b[26] = k.kind as u8;
    b
}

fn decode_key(b: &[u8]) -> Option<ActivityKey> {
    if b.len() != KEY_LEN {
        return None;
    }
    let flipped = u64::from_be_bytes(b[4..12].try_into().ok()?) ^ (1 << 63);
    Some(ActivityKey {
        hour: flipped as i64,
        conversation: u64::from_be_bytes(b[12..20].try_into().ok()?),
        thread: ThreadIdx::from_be_bytes(b[20..22].try_into().ok()?),
        step: StepIdx::from_be_bytes(b[22..26].try_into().ok()?),
        kind: Activity::from_u8(b[26])?,
    })
}

fn decode_count(v: &[u8]) -> Option<u64> {
    v.try_into().ok().map(u64::from_le_bytes)
}

/// The activity family's merge: the sum of the stored count and the added
/// ones. A malformed operand fails the merge (RocksDB reports corruption)
/// rather than count wrong.
pub(super) fn merge_add(
    _key: &[u8],
    existing: Option<&[u8]>,
    operands: &rocksdb::MergeOperands,
) -> Option<Vec<u8>> {
    let mut sum = match existing {
        Some(v) => decode_count(v)?,
        None => 0,
    };
    for op in operands {
        sum = sum.wrapping_add(decode_count(op)?);
    }
    Some(sum.to_le_bytes().to_vec())
}

impl Batch<'_> {
    /// Adds `n` to a counter of the current partition.
    pub fn add_activity(&mut self, k: &ActivityKey, n: u64) {
        let (store, partition) = (self.store(), self.partition());
        let cf = store.cf(CF_ACTIVITY);
        self.write_batch()
            .merge_cf(cf, encode_key(partition, k), n.to_le_bytes());
    }

    /// Deletes the current partition's counters of hours before `before`.
    pub fn prune_activity(&mut self, before: Timestamp) {
        let (store, partition) = (self.store(), self.partition());
        let cf = store.cf(CF_ACTIVITY);
        let mut from = partition.to_be_bytes().to_vec();
        from.extend_from_slice(&time_key(Timestamp(i64::MIN)));
        let mut to = partition.to_be_bytes().to_vec();
        to.extend_from_slice(&time_key(before));
        self.write_batch().delete_range_cf(cf, from, to);
    }
}

impl Store {
    /// The partition's counters of the hours from `since` on, as written.
    pub fn activity(
        &self,
        partition: u32,
        since: Timestamp,
    ) -> Result<Vec<(ActivityKey, u64)>, StoreError> {
        let mut seek = partition.to_be_bytes().to_vec();
        seek.extend_from_slice(&time_key(since));
        let mut ro = ReadOptions::default();
        if let Some(next) = partition.checked_add(1) {
            ro.set_iterate_upper_bound(next.to_be_bytes().to_vec());
        }
        let mut out = Vec::new();
        for item in self.db().iterator_cf_opt(
            self.cf(CF_ACTIVITY),
            ro,
            IteratorMode::From(&seek, Direction::Forward),
        ) {
            let (k, v) = item.map_err(|e| self.err("scan activity", e))?;
            if k[..4.min(k.len())] != partition.to_be_bytes() {
                break;
            }
            let key = decode_key(&k).ok_or_else(|| self.corrupt("activity key"))?;
            let n = decode_count(&v).ok_or_else(|| self.corrupt("activity count"))?;
            out.push((key, n));
        }
        Ok(out)
    }

    /// How many entries wait (or are about to run) at each step of each
    /// conversation, by conversation and step index: a scan of the
    /// partition's contacts, for the page, not for the hot path.
    pub fn entries_at_steps(
        &self,
        defs: &Definitions,
        partition: u32,
    ) -> Result<std::collections::BTreeMap<(ConvIdx, StepIdx), u64>, StoreError> {
        let prefix = partition.to_be_bytes();
        let mut ro = ReadOptions::default();
        if let Some(next) = partition.checked_add(1) {
            ro.set_iterate_upper_bound(next.to_be_bytes().to_vec());
        }
        let mut out = std::collections::BTreeMap::new();
        for item in self.db().iterator_cf_opt(
            self.cf(CF_CONTACTS),
            ro,
            IteratorMode::From(&prefix, Direction::Forward),
        ) {
            let (k, v) = item.map_err(|e| self.err("scan contacts", e))?;
            if !k.starts_with(&prefix) {
                break;
            }
            let st = codec::decode(defs, &v).map_err(|source| StoreError::Codec {
                partition,
                contact: String::from_utf8_lossy(&k[4..]).into_owned(),
                source,
            })?;
            for c in &st.conversations {
                for e in &c.active {
                    *out.entry((c.conversation, e.step)).or_default() += 1;
                }
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_and_sort_by_hour() {
        let k = |hour: i64| ActivityKey {
            hour,
            conversation: 7,
            thread: 1,
            step: TRIGGER,
            kind: Activity::Exited,
        };
        for h in [-HOUR_MS, 0, HOUR_MS * 500_000] {
            assert_eq!(decode_key(&encode_key(3, &k(h))), Some(k(h)));
        }
        assert!(encode_key(3, &k(-HOUR_MS)) < encode_key(3, &k(0)));
        assert!(encode_key(3, &k(HOUR_MS * 500_000)) < encode_key(4, &k(-HOUR_MS)));
        assert_eq!(decode_key(&[0; 5]), None);
    }
}
