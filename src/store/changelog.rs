//! The changelog topic's records (exactly-once mode) and how they are applied
//! to the store when a partition is restored.
//!
//! The changelog is partitioned like the input: changelog partition `p` holds
//! the state of input partition `p`. Two kinds of records:
//!
//! | key | header `winback.record` | value |
//! | --- | --- | --- |
//! | contact id | (none) | `winback.v1.ContactStateRecord` (as in RocksDB); no value = the contact is gone |
//! | `\0partition` | `partition` | `winback.v1.PartitionRecord`: clock, input offsets, coupon shares |
//!
//! Every transaction that changes a partition writes its changed contacts and
//! then the partition record, so the changelog read up to any committed point
//! holds a partition state and the input offsets it belongs to. Pending waits
//! are not records of their own: they are the contacts' entries'
//! `waiting_until`, and a restore rebuilds the timer index from them.

use prost::Message;

use super::codec::{self, CodecError, SCHEMA_VERSION};
use super::rocks::{Batch, CouponShare, StoredTimer};
use crate::domain::definition::Definitions;
use crate::domain::{ContactState, Timestamp};
use crate::pb;

/// The key of a partition record; contact ids cannot contain NUL.
pub const PARTITION_KEY: &[u8] = b"\0partition";
/// Marks a partition record (so a reader never has to guess from the key).
pub const HEADER_RECORD: &str = "winback.record";
pub const RECORD_PARTITION: &str = "partition";

/// A partition's own state, as its changelog record carries it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PartitionState {
    pub clock: Option<Timestamp>,
    /// Next offset to read, by input topic.
    pub offsets: Vec<(String, i64)>,
    pub coupons: Vec<PoolProgress>,
    /// The input partition count the pools are split by; 0 if not recorded.
    pub partitions: u32,
}

/// One pool's progress in a partition.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PoolProgress {
    pub pool: String,
    pub share: CouponShare,
    /// [`crate::domain::coupon::handed_out_fingerprint`] of the codes handed
    /// out; None if not recorded.
    pub handed_out: Option<u64>,
}

/// Why restoring `st` into partition `partition` of `partitions` would hand
/// a coupon code out a second time, if it would: the pools were split by
/// another partition count, a pool that handed codes out is gone (renamed?),
/// or its codes at the places handed out differ now.
pub fn coupon_problem(
    defs: &Definitions,
    partition: u32,
    partitions: u32,
    st: &PartitionState,
) -> Option<String> {
    if st.partitions != 0 && st.partitions != partitions {
        return Some(format!(
            "the changelog's coupon progress was made with {} input partitions, the input has {partitions} now: \
             pools are split across partitions by that count, so codes would be handed out again. \
             Keep {} partitions, or start a new deployment (new topics, `winback reprocess`) with fresh codes",
            st.partitions, st.partitions
        ));
    }
    for p in &st.coupons {
        if p.share.taken == 0 {
            continue;
        }
        let Some(def) = defs.pools.iter().find(|d| *d.name == *p.pool) else {
            return Some(format!(
                "coupon pool {:?} handed out {} code(s) on partition {partition} and is no longer defined: \
                 under another name its codes would be handed out again. Keep its [[coupon_pool]] \
                 (it may go unused)",
                p.pool, p.share.taken
            ));
        };
        let Some(want) = p.handed_out else {
            continue;
        };
        let now = crate::domain::coupon::handed_out_fingerprint(
            &def.codes,
            partition as usize,
            partitions as usize,
            p.share.taken,
        );
        if now != Some(want) {
            return Some(format!(
                "coupon pool {:?}: the {} code(s) partition {partition} handed out are not the codes \
                 at those places of its codes file any more (it was reordered, shortened or edited): \
                 they would be handed out again. Put the file back as it was; codes may only be appended",
                p.pool, p.share.taken
            ));
        }
    }
    None
}

pub fn encode_partition(st: &PartitionState) -> Vec<u8> {
    pb::PartitionRecord {
        schema_version: SCHEMA_VERSION,
        clock_ms: st.clock.map(|c| c.0),
        offsets: st
            .offsets
            .iter()
            .map(|(topic, next)| pb::InputOffsetRecord {
                topic: topic.clone(),
                next: *next,
            })
            .collect(),
        coupons: st
            .coupons
            .iter()
            .map(|p| pb::CouponShareRecord {
                pool: p.pool.clone(),
                taken: p.share.taken,
                low_warned: p.share.low_warned,
                handed_out: p.handed_out,
            })
            .collect(),
        partitions: st.partitions,
    }
    .encode_to_vec()
}

pub fn decode_partition(bytes: &[u8]) -> Result<PartitionState, CodecError> {
    let r = pb::PartitionRecord::decode(bytes).map_err(|e| CodecError::Decode(e.to_string()))?;
    if r.schema_version != SCHEMA_VERSION {
        return Err(CodecError::Version {
            found: r.schema_version,
        });
    }
    Ok(PartitionState {
        clock: r.clock_ms.map(Timestamp),
        offsets: r.offsets.into_iter().map(|o| (o.topic, o.next)).collect(),
        coupons: r
            .coupons
            .into_iter()
            .map(|c| PoolProgress {
                pool: c.pool,
                share: CouponShare {
                    taken: c.taken,
                    low_warned: c.low_warned,
                },
                handed_out: c.handed_out,
            })
            .collect(),
        partitions: r.partitions,
    })
}

/// The pending waits a contact's state implies: one per waiting entry.
pub fn timers_of(contact: &str, st: &ContactState) -> Vec<StoredTimer> {
    let mut out = Vec::new();
    for cs in &st.conversations {
        for e in &cs.active {
            if let Some(at) = e.waiting_until.get() {
                out.push(StoredTimer {
                    expiry: at,
                    conversation: cs.conversation,
                    entry: e.seq,
                    contact: contact.to_string(),
                });
            }
        }
    }
    out
}

/// Applies one contact record to `batch`: the contact's new state (or its
/// removal) and its timers, replacing those of `old`, the state it had.
/// Returns the new state.
pub fn apply_contact(
    defs: &Definitions,
    batch: &mut Batch<'_>,
    contact: &str,
    value: Option<&[u8]>,
    old: Option<&ContactState>,
) -> Result<Option<ContactState>, CodecError> {
    let new = value.map(|v| codec::decode(defs, v)).transpose()?;
    if let Some(old) = old {
        for t in timers_of(contact, old) {
            batch.cancel_timer(&t);
        }
    }
    match &new {
        Some(st) => {
            batch.put_contact(contact, st);
            for t in timers_of(contact, st) {
                batch.set_timer(&t);
            }
        }
        None => {
            batch.delete_contact(contact);
            batch.delete_history(contact);
        }
    }
    Ok(new)
}

/// Applies a partition record to `batch`.
pub fn apply_partition(batch: &mut Batch<'_>, st: &PartitionState) {
    if let Some(c) = st.clock {
        batch.set_clock(c);
    }
    for (topic, next) in &st.offsets {
        batch.set_offset(topic, *next);
    }
    for p in &st.coupons {
        batch.set_coupon_share(&p.pool, p.share);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partition_records_round_trip() {
        let st = PartitionState {
            clock: Some(Timestamp(1_700_000_000_000)),
            offsets: vec![("checkouts".into(), 42), ("subscriptions".into(), 0)],
            coupons: vec![PoolProgress {
                pool: "spring".into(),
                share: CouponShare {
                    taken: 7,
                    low_warned: true,
                },
                handed_out: Some(42),
            }],
            partitions: 4,
        };
        assert_eq!(decode_partition(&encode_partition(&st)).unwrap(), st);
        assert_eq!(
            decode_partition(&encode_partition(&PartitionState::default())).unwrap(),
            PartitionState::default()
        );
    }

    #[test]
    fn other_schema_versions_and_garbage_are_refused() {
        let bytes = pb::PartitionRecord {
            schema_version: SCHEMA_VERSION + 1,
            ..Default::default()
        }
        .encode_to_vec();
        assert!(matches!(
            decode_partition(&bytes),
            Err(CodecError::Version { .. })
        ));
        assert!(decode_partition(&[0xff, 0xff, 0xff]).is_err());
    }
}
