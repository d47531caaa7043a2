//! The RocksDB store: everything a partition's processing needs to resume
//! exactly where it stopped. One [`Batch`] per processed batch of input holds
//! the contact states, timer changes, coupon shares, clock and input offsets it
//! produced, and is written atomically.
//!
//! Column families and keys (all integers big-endian; every key starts with the
//! partition, so a partition's state can be dropped or moved by range):
//!
//! | family | key | value |
//! | --- | --- | --- |
//! | `contacts` | partition u32 ‖ contact id | `winback.v1.ContactStateRecord` |
//! | `timers` | partition u32 ‖ expiry ‖ conversation key u64 ‖ entry u32 ‖ contact id | empty |
//! | `offsets` | partition u32 ‖ topic | next offset to read, i64 |
//! | `coupons` | partition u32 ‖ pool name | codes taken u64 ‖ low-stock warned u8 |
//! | `meta` | partition u32 ‖ `clock` | the partition clock, ms i64 |
//! | `meta` | partition u32 ‖ `changelog` | the next changelog offset to restore from, i64 (exactly-once) |
//! | `meta` | `schema_version` (no partition) | u32 |
//! | `meta` | `partitions` (no partition) | the input topics' partition count, u32 |
//! | `meta` | `pool/` ‖ pool name (no partition) | the pool's codes as first loaded, one per line |
//! | `meta` | `guarantee` (no partition) | `exactly_once` or `at_least_once`, as first run |
//! | `history` | partition u32 ‖ contact id | `winback.v1.TransitionHistoryRecord`: the contact's last [`HISTORY_LEN`] transitions, for `inspect` |
//! | `activity` | partition u32 ‖ hour ‖ conversation key u64 ‖ thread u16 ‖ step u32 ‖ kind u8 | a count, u64 LE (see [`super::activity`]) |
//!
//! The history and the activity are this store's own: not in the changelog,
//! so a restored or rebuilt partition starts its contacts' histories and its
//! counts afresh, and not in the digest, which compares what a rebuild
//! reproduces.
//!
//! Expiries are milliseconds with the sign bit flipped, so byte order is time
//! order and a prefix scan walks a partition's timers from the earliest. The
//! conversation key is xxh3-64 of the conversation's name: fixed width, and
//! stable when definitions are reordered.

use std::path::{Path, PathBuf};

use rocksdb::{
    ColumnFamilyDescriptor, DB, Direction, IteratorMode, Options, ReadOptions, WriteBatch,
};

use super::codec::{self, CodecError, SCHEMA_VERSION};
use crate::domain::definition::{ConvIdx, Definitions};
use crate::domain::{ContactState, Timestamp};

pub const CF_CONTACTS: &str = "contacts";
pub const CF_TIMERS: &str = "timers";
pub const CF_OFFSETS: &str = "offsets";
pub const CF_COUPONS: &str = "coupons";
pub const CF_META: &str = "meta";
pub const CF_HISTORY: &str = "history";
pub const CF_ACTIVITY: &str = "activity";
/// The state a changelog restore or a rebuild reproduces (the digest's).
const FAMILIES: [&str; 5] = [CF_CONTACTS, CF_TIMERS, CF_OFFSETS, CF_COUPONS, CF_META];
const ALL_FAMILIES: [&str; 7] = [
    CF_CONTACTS,
    CF_TIMERS,
    CF_OFFSETS,
    CF_COUPONS,
    CF_META,
    CF_HISTORY,
    CF_ACTIVITY,
];
/// Transitions kept per contact for `inspect`.
pub const HISTORY_LEN: usize = 20;

/// Appends one encoded `winback.v1.Transition` to `record`, a
/// `TransitionHistoryRecord` encoding: its field 1, length-delimited.
/// Encodings of the record concatenate to the record of all their entries.
pub fn history_frame(record: &mut Vec<u8>, transition: &[u8]) {
    use prost::encoding::{WireType, encode_key, encode_varint};
    encode_key(1, WireType::LengthDelimited, record);
    encode_varint(transition.len() as u64, record);
    record.extend_from_slice(transition);
}

/// The history family's merge: the stored record and the appended ones,
/// joined (their encodings concatenate), cut to the last [`HISTORY_LEN`].
/// Associative, so RocksDB may also join operands among themselves. It runs
/// in compactions and reads: it walks the entries' length prefixes and cuts
/// the bytes, decoding and allocating nothing per transition.
fn merge_history(
    _key: &[u8],
    existing: Option<&[u8]>,
    operands: &rocksdb::MergeOperands,
) -> Option<Vec<u8>> {
    let mut joined = existing.map(<[u8]>::to_vec).unwrap_or_default();
    for op in operands {
        joined.extend_from_slice(op);
    }
    // The starts of the last HISTORY_LEN entries, in a ring.
    let mut starts = [0usize; HISTORY_LEN];
    let (mut pos, mut count) = (0usize, 0usize);
    while pos < joined.len() {
        starts[count % HISTORY_LEN] = pos;
        let mut rest = &joined[pos..];
        // A record that does not parse fails the merge: RocksDB reports the
        // key as corrupt instead of serving a cut history.
        let tag = prost::encoding::decode_varint(&mut rest).ok()?;
        let len = prost::encoding::decode_varint(&mut rest).ok()?;
        if tag != 0x0a || len > rest.len() as u64 {
            return None;
        }
        pos = joined.len() - rest.len() + len as usize;
        count += 1;
    }
    if count > HISTORY_LEN {
        joined.drain(..starts[count % HISTORY_LEN]);
    }
    Some(joined)
}
const SCHEMA_KEY: &[u8] = b"schema_version";
const CLOCK_SUFFIX: &[u8] = b"clock";
const CHANGELOG_SUFFIX: &[u8] = b"changelog";
const GUARANTEE_KEY: &[u8] = b"guarantee";
const POOL_PREFIX: &[u8] = b"pool/";
const PARTITIONS_KEY: &[u8] = b"partitions";
/// All memtables together (RocksDB flushes the largest when it is reached).
const MEMTABLE_BUDGET: usize = 64 << 20;
/// Shared by all families; holds data, index and filter blocks.
const BLOCK_CACHE: usize = 64 << 20;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("RocksDB at {path}: {op}: {source}")]
    Rocks {
        path: PathBuf,
        op: &'static str,
        source: rocksdb::Error,
    },
    #[error("state of contact {contact:?} in partition {partition}: {source}")]
    Codec {
        partition: u32,
        contact: String,
        source: CodecError,
    },
    #[error("store at {path} has schema version {found}; this build uses version {SCHEMA_VERSION}")]
    Version { path: PathBuf, found: u32 },
    #[error("store at {path}: {reason}")]
    Unreadable { path: PathBuf, reason: String },
    #[error("store at {path}: malformed {what} record")]
    Corrupt { path: PathBuf, what: &'static str },
}

/// A pending wait as the store keeps it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct StoredTimer {
    pub expiry: Timestamp,
    pub conversation: ConvIdx,
    pub entry: u32,
    pub contact: String,
}

/// What a partition holds of one coupon pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CouponShare {
    pub taken: u64,
    pub low_warned: bool,
}

pub(super) fn time_key(t: Timestamp) -> [u8; 8] {
    ((t.0 as u64) ^ (1 << 63)).to_be_bytes()
}

fn time_from_key(b: [u8; 8]) -> Timestamp {
    Timestamp((u64::from_be_bytes(b) ^ (1 << 63)) as i64)
}

/// xxh3-64 of a conversation's name: its fixed-width key in timer keys.
pub fn conversation_key(name: &str) -> u64 {
    xxhash_rust::xxh3::xxh3_64(name.as_bytes())
}

fn prefixed(partition: u32, rest: &[&[u8]]) -> Vec<u8> {
    let mut k = Vec::with_capacity(4 + rest.iter().map(|r| r.len()).sum::<usize>());
    k.extend_from_slice(&partition.to_be_bytes());
    for r in rest {
        k.extend_from_slice(r);
    }
    k
}

fn timer_key(partition: u32, defs: &Definitions, t: &StoredTimer) -> Vec<u8> {
    let conv = conversation_key(&defs.conversations[t.conversation as usize].name);
    prefixed(
        partition,
        &[
            &time_key(t.expiry),
            &conv.to_be_bytes(),
            &t.entry.to_be_bytes(),
            t.contact.as_bytes(),
        ],
    )
}

/// Changes to write together, atomically.
pub struct Batch<'a> {
    store: &'a Store,
    defs: &'a Definitions,
    partition: u32,
    wb: WriteBatch,
}

impl<'a> Batch<'a> {
    pub(super) fn store(&self) -> &'a Store {
        self.store
    }

    pub(super) fn partition(&self) -> u32 {
        self.partition
    }

    pub(super) fn write_batch(&mut self) -> &mut WriteBatch {
        &mut self.wb
    }

    /// Later changes of this batch belong to `partition`.
    pub fn switch_partition(&mut self, partition: u32) {
        self.partition = partition;
    }

    pub fn put_contact(&mut self, contact: &str, st: &ContactState) {
        let cf = self.store.cf(CF_CONTACTS);
        self.wb.put_cf(
            cf,
            prefixed(self.partition, &[contact.as_bytes()]),
            codec::encode(self.defs, st),
        );
    }

    /// A contact's state already encoded with [`codec::encode`].
    pub fn put_contact_encoded(&mut self, contact: &str, bytes: &[u8]) {
        let cf = self.store.cf(CF_CONTACTS);
        self.wb
            .put_cf(cf, prefixed(self.partition, &[contact.as_bytes()]), bytes);
    }

    pub fn set_timer(&mut self, t: &StoredTimer) {
        let cf = self.store.cf(CF_TIMERS);
        self.wb
            .put_cf(cf, timer_key(self.partition, self.defs, t), []);
    }

    pub fn cancel_timer(&mut self, t: &StoredTimer) {
        let cf = self.store.cf(CF_TIMERS);
        self.wb
            .delete_cf(cf, timer_key(self.partition, self.defs, t));
    }

    pub fn set_offset(&mut self, topic: &str, next_offset: i64) {
        let cf = self.store.cf(CF_OFFSETS);
        self.wb.put_cf(
            cf,
            prefixed(self.partition, &[topic.as_bytes()]),
            next_offset.to_be_bytes(),
        );
    }

    /// Removes a contact (a tombstone in the changelog).
    pub fn delete_contact(&mut self, contact: &str) {
        let cf = self.store.cf(CF_CONTACTS);
        self.wb
            .delete_cf(cf, prefixed(self.partition, &[contact.as_bytes()]));
    }

    /// The changelog is applied up to `next` (exclusive).
    pub fn set_changelog_position(&mut self, next: i64) {
        let cf = self.store.cf(CF_META);
        self.wb.put_cf(
            cf,
            prefixed(self.partition, &[CHANGELOG_SUFFIX]),
            next.to_be_bytes(),
        );
    }

    pub fn set_clock(&mut self, clock: Timestamp) {
        let cf = self.store.cf(CF_META);
        self.wb.put_cf(
            cf,
            prefixed(self.partition, &[CLOCK_SUFFIX]),
            clock.0.to_be_bytes(),
        );
    }

    pub fn set_coupon_share(&mut self, pool: &str, share: CouponShare) {
        let cf = self.store.cf(CF_COUPONS);
        let mut v = share.taken.to_be_bytes().to_vec();
        v.push(u8::from(share.low_warned));
        self.wb
            .put_cf(cf, prefixed(self.partition, &[pool.as_bytes()]), v);
    }

    /// Appends the batch's transitions of `contact` to its history:
    /// `record` is a `TransitionHistoryRecord` encoding (see
    /// [`history_frame`]). A merge, not a read and a write: RocksDB joins
    /// the records and keeps the last [`HISTORY_LEN`] ([`merge_history`])
    /// when it compacts or reads. `fresh`: start a new history (the contact
    /// was forgotten) instead of continuing the stored one.
    pub fn append_history(&mut self, contact: &str, record: &[u8], fresh: bool) {
        let cf = self.store.cf(CF_HISTORY);
        let key = prefixed(self.partition, &[contact.as_bytes()]);
        if fresh {
            self.wb.delete_cf(cf, &key);
        }
        self.wb.merge_cf(cf, key, record);
    }

    /// Removes a contact's history.
    pub fn delete_history(&mut self, contact: &str) {
        let cf = self.store.cf(CF_HISTORY);
        self.wb
            .delete_cf(cf, prefixed(self.partition, &[contact.as_bytes()]));
    }

    pub fn len(&self) -> usize {
        self.wb.len()
    }

    pub fn is_empty(&self) -> bool {
        self.wb.is_empty()
    }

    pub fn commit(self) -> Result<(), StoreError> {
        self.store
            .db
            .write(self.wb)
            .map_err(|e| self.store.err("write batch", e))
    }
}

pub struct Store {
    db: DB,
    path: PathBuf,
}

/// Every family's options, for opening read-write or read-only.
fn family_descriptors() -> Vec<ColumnFamilyDescriptor> {
    let cache = rocksdb::Cache::new_lru_cache(BLOCK_CACHE);
    ALL_FAMILIES
        .iter()
        .map(|n| {
            let mut o = Options::default();
            o.set_write_buffer_size(MEMTABLE_BUDGET / 4);
            o.set_compression_type(rocksdb::DBCompressionType::Lz4);
            let mut t = rocksdb::BlockBasedOptions::default();
            t.set_block_cache(&cache);
            if *n == CF_CONTACTS {
                // A first purchase looks up a contact that is not there yet:
                // the filter answers without reading data blocks. Filters and
                // indexes stay with their tables, out of the LRU cache: evicted
                // by data blocks, a whole-table filter was read back from disk
                // and checksummed on every look-up (measured: 4x the CPU per
                // fired wait in an expiry storm).
                t.set_bloom_filter(10.0, false);
            }
            if *n == CF_HISTORY {
                o.set_merge_operator_associative("winback.history", merge_history);
            }
            if *n == CF_ACTIVITY {
                o.set_merge_operator_associative("winback.add", super::activity::merge_add);
            }
            // The other families are scanned by range or tiny: no filter.
            o.set_block_based_table_factory(&t);
            ColumnFamilyDescriptor::new(*n, o)
        })
        .collect()
}

impl Store {
    /// Opens (creating if needed) the store at `path`; refuses a store written
    /// with another schema version.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        // Memory is bounded for the whole store, not per family: RocksDB's
        // default of 64 MB memtables (x2) in each of five families alone would
        // be 640 MB. Millions of pending waits must cost disk, not RAM.
        opts.set_db_write_buffer_size(MEMTABLE_BUDGET);
        let db = DB::open_cf_descriptors(&opts, path, family_descriptors()).map_err(|source| {
            StoreError::Rocks {
                path: path.to_path_buf(),
                op: "open",
                source,
            }
        })?;
        let store = Store {
            db,
            path: path.to_path_buf(),
        };
        let meta = store.cf(CF_META);
        match store
            .db
            .get_cf(meta, SCHEMA_KEY)
            .map_err(|e| store.err("read schema version", e))?
        {
            None => store
                .db
                .put_cf(meta, SCHEMA_KEY, SCHEMA_VERSION.to_be_bytes())
                .map_err(|e| store.err("write schema version", e))?,
            Some(v) => {
                let found = u32::from_be_bytes(
                    v.as_slice()
                        .try_into()
                        .map_err(|_| store.corrupt("schema version"))?,
                );
                if found != SCHEMA_VERSION {
                    return Err(StoreError::Version {
                        path: path.to_path_buf(),
                        found,
                    });
                }
            }
        }
        Ok(store)
    }

    /// Opens the store for reading only, also while `winback run` holds it
    /// (RocksDB's read-only mode takes no lock): what was written when it
    /// opened, nothing later.
    pub fn open_read_only(path: &Path) -> Result<Store, StoreError> {
        let opts = Options::default();
        let unreadable = |reason: String| StoreError::Unreadable {
            path: path.to_path_buf(),
            reason,
        };
        let names =
            DB::list_cf(&opts, path).map_err(|e| unreadable(format!("no store here ({e})")))?;
        if let Some(missing) = ALL_FAMILIES.iter().find(|f| !names.iter().any(|n| n == *f)) {
            return Err(unreadable(format!(
                "no {missing:?} column family: written by an older winback (run it once with this version)"
            )));
        }
        let db = DB::open_cf_descriptors_read_only(&opts, path, family_descriptors(), false)
            .map_err(|source| StoreError::Rocks {
                path: path.to_path_buf(),
                op: "open read-only",
                source,
            })?;
        let store = Store {
            db,
            path: path.to_path_buf(),
        };
        let found = store
            .db
            .get_cf(store.cf(CF_META), SCHEMA_KEY)
            .map_err(|e| store.err("read schema version", e))?
            .map(|v| {
                v.as_slice()
                    .try_into()
                    .map(u32::from_be_bytes)
                    .map_err(|_| store.corrupt("schema version"))
            })
            .transpose()?;
        match found {
            Some(v) if v != SCHEMA_VERSION => Err(StoreError::Version {
                path: path.to_path_buf(),
                found: v,
            }),
            _ => Ok(store),
        }
    }

    pub(super) fn db(&self) -> &DB {
        &self.db
    }

    pub(super) fn cf(&self, name: &str) -> &rocksdb::ColumnFamily {
        // Every family is created by `open`, so it is always there.
        self.db
            .cf_handle(name)
            .unwrap_or_else(|| unreachable!("column family {name} opened with the store"))
    }

    pub(super) fn err(&self, op: &'static str, source: rocksdb::Error) -> StoreError {
        StoreError::Rocks {
            path: self.path.clone(),
            op,
            source,
        }
    }

    pub(super) fn corrupt(&self, what: &'static str) -> StoreError {
        StoreError::Corrupt {
            path: self.path.clone(),
            what,
        }
    }

    pub fn batch<'a>(&'a self, defs: &'a Definitions, partition: u32) -> Batch<'a> {
        Batch {
            store: self,
            defs,
            partition,
            wb: WriteBatch::default(),
        }
    }

    pub fn contact(
        &self,
        defs: &Definitions,
        partition: u32,
        contact: &str,
    ) -> Result<Option<ContactState>, StoreError> {
        let key = prefixed(partition, &[contact.as_bytes()]);
        match self
            .db
            .get_pinned_cf(self.cf(CF_CONTACTS), key)
            .map_err(|e| self.err("read contact", e))?
        {
            None => Ok(None),
            Some(bytes) => {
                codec::decode(defs, &bytes)
                    .map(Some)
                    .map_err(|source| StoreError::Codec {
                        partition,
                        contact: contact.to_string(),
                        source,
                    })
            }
        }
    }

    pub fn offset(&self, partition: u32, topic: &str) -> Result<Option<i64>, StoreError> {
        let key = prefixed(partition, &[topic.as_bytes()]);
        let v = self
            .db
            .get_pinned_cf(self.cf(CF_OFFSETS), key)
            .map_err(|e| self.err("read offset", e))?;
        v.map(|v| {
            v.as_ref()
                .try_into()
                .map(i64::from_be_bytes)
                .map_err(|_| self.corrupt("offset"))
        })
        .transpose()
    }

    /// Every input offset stored for `partition`, by topic.
    pub fn offsets_of(&self, partition: u32) -> Result<Vec<(String, i64)>, StoreError> {
        let prefix = partition.to_be_bytes();
        let mut out = Vec::new();
        for item in self.db.iterator_cf(
            self.cf(CF_OFFSETS),
            IteratorMode::From(&prefix, Direction::Forward),
        ) {
            let (k, v) = item.map_err(|e| self.err("scan offsets", e))?;
            if k.len() < 4 || k[..4] != prefix {
                break;
            }
            let topic = String::from_utf8(k[4..].to_vec()).map_err(|_| self.corrupt("offset"))?;
            let next = v
                .as_ref()
                .try_into()
                .map(i64::from_be_bytes)
                .map_err(|_| self.corrupt("offset"))?;
            out.push((topic, next));
        }
        Ok(out)
    }

    /// Where restoring `partition` from the changelog goes on from (exactly-once mode).
    pub fn changelog_position(&self, partition: u32) -> Result<Option<i64>, StoreError> {
        let key = prefixed(partition, &[CHANGELOG_SUFFIX]);
        let v = self
            .db
            .get_pinned_cf(self.cf(CF_META), key)
            .map_err(|e| self.err("read changelog position", e))?;
        v.map(|v| {
            v.as_ref()
                .try_into()
                .map(i64::from_be_bytes)
                .map_err(|_| self.corrupt("changelog position"))
        })
        .transpose()
    }

    /// Partitions the store holds anything for (offsets or a changelog position).
    pub fn stored_partitions(&self) -> Result<Vec<u32>, StoreError> {
        let mut out = std::collections::BTreeSet::new();
        for item in self
            .db
            .iterator_cf(self.cf(CF_OFFSETS), IteratorMode::Start)
        {
            let (k, _) = item.map_err(|e| self.err("scan offsets", e))?;
            if let Some(p) = k.get(..4) {
                out.insert(u32::from_be_bytes(p.try_into().unwrap_or_default()));
            }
        }
        for item in self.db.iterator_cf(self.cf(CF_META), IteratorMode::Start) {
            let (k, _) = item.map_err(|e| self.err("scan meta", e))?;
            if k.len() == 4 + CHANGELOG_SUFFIX.len() && k.ends_with(CHANGELOG_SUFFIX) {
                out.insert(u32::from_be_bytes(k[..4].try_into().unwrap_or_default()));
            }
        }
        Ok(out.into_iter().collect())
    }

    /// The delivery guarantee the store was first run with.
    pub fn guarantee(&self) -> Result<Option<String>, StoreError> {
        let v = self
            .db
            .get_pinned_cf(self.cf(CF_META), GUARANTEE_KEY)
            .map_err(|e| self.err("read guarantee", e))?;
        v.map(|v| {
            std::str::from_utf8(&v)
                .map(str::to_string)
                .map_err(|_| self.corrupt("guarantee"))
        })
        .transpose()
    }

    pub fn set_guarantee(&self, g: &str) -> Result<(), StoreError> {
        self.db
            .put_cf(self.cf(CF_META), GUARANTEE_KEY, g)
            .map_err(|e| self.err("write guarantee", e))
    }

    /// A digest of everything the store holds for `partition` (contacts,
    /// timers, input offsets, coupon shares, clock), in key order; the
    /// changelog position, which is bookkeeping of the restore, is left out.
    /// Two stores with the same digest hold the same state.
    pub fn digest(&self, partition: u32) -> Result<(u64, u64), StoreError> {
        let prefix = partition.to_be_bytes();
        let mut h = xxhash_rust::xxh3::Xxh3::new();
        let mut entries = 0u64;
        for name in FAMILIES {
            h.update(name.as_bytes());
            h.update(&[0]);
            for item in self.db.iterator_cf(
                self.cf(name),
                IteratorMode::From(&prefix, Direction::Forward),
            ) {
                let (k, v) = item.map_err(|e| self.err("scan for digest", e))?;
                if k.len() < 4 || k[..4] != prefix {
                    break;
                }
                if name == CF_META && &k[4..] == CHANGELOG_SUFFIX {
                    continue;
                }
                h.update(&(k.len() as u64).to_be_bytes());
                h.update(&k);
                h.update(&(v.len() as u64).to_be_bytes());
                h.update(&v);
                entries += 1;
            }
        }
        Ok((h.digest(), entries))
    }

    pub fn clock(&self, partition: u32) -> Result<Option<Timestamp>, StoreError> {
        let key = prefixed(partition, &[CLOCK_SUFFIX]);
        let v = self
            .db
            .get_pinned_cf(self.cf(CF_META), key)
            .map_err(|e| self.err("read clock", e))?;
        v.map(|v| {
            v.as_ref()
                .try_into()
                .map(|b| Timestamp(i64::from_be_bytes(b)))
                .map_err(|_| self.corrupt("clock"))
        })
        .transpose()
    }

    pub fn coupon_share(
        &self,
        partition: u32,
        pool: &str,
    ) -> Result<Option<CouponShare>, StoreError> {
        let key = prefixed(partition, &[pool.as_bytes()]);
        let v = self
            .db
            .get_pinned_cf(self.cf(CF_COUPONS), key)
            .map_err(|e| self.err("read coupon share", e))?;
        v.map(|v| match v.as_ref() {
            [t @ .., flag] if t.len() == 8 => Ok(CouponShare {
                taken: u64::from_be_bytes(t.try_into().unwrap_or_default()),
                low_warned: *flag != 0,
            }),
            _ => Err(self.corrupt("coupon share")),
        })
        .transpose()
    }

    /// The partition's pending waits expiring before `until`, earliest first
    /// (ties by conversation key, entry, contact). A timer whose conversation
    /// the definitions no longer have is reported as an error, not skipped.
    pub fn timers_before(
        &self,
        defs: &Definitions,
        partition: u32,
        until: Timestamp,
    ) -> Result<Vec<StoredTimer>, StoreError> {
        Ok(self
            .timers_range(defs, partition, Timestamp(i64::MIN), until, usize::MAX)?
            .0)
    }

    /// The near horizon to load into the in-memory wheel: the partition's
    /// pending waits expiring in `[from, until)`, earliest first, but no more
    /// than about `limit` of them. Returns them with the end of the range they
    /// cover: `until`, or, when the limit cut the scan short, the expiry of the
    /// first timer left out (timers sharing an expiry are never split).
    pub fn timers_range(
        &self,
        defs: &Definitions,
        partition: u32,
        from: Timestamp,
        until: Timestamp,
        limit: usize,
    ) -> Result<(Vec<StoredTimer>, Timestamp), StoreError> {
        let start = partition.to_be_bytes();
        let seek = prefixed(partition, &[&time_key(from)]);
        let mut out: Vec<StoredTimer> = Vec::new();
        // The bound keeps the seek from walking the deleted (fired or
        // cancelled) timers past `until` in search of a live one: without it,
        // an empty stretch costs as much as all the tombstones after it.
        let mut ro = ReadOptions::default();
        ro.set_iterate_upper_bound(prefixed(partition, &[&time_key(until)]));
        let iter = self.db.iterator_cf_opt(
            self.cf(CF_TIMERS),
            ro,
            IteratorMode::From(&seek, Direction::Forward),
        );
        for item in iter {
            let (k, _) = item.map_err(|e| self.err("scan timers", e))?;
            if k.len() < 24 || k[..4] != start {
                break;
            }
            let expiry = time_from_key(k[4..12].try_into().map_err(|_| self.corrupt("timer"))?);
            if expiry >= until {
                break;
            }
            if out.len() >= limit && out.last().is_some_and(|l| l.expiry < expiry) {
                return Ok((out, expiry));
            }
            let conv_key =
                u64::from_be_bytes(k[12..20].try_into().map_err(|_| self.corrupt("timer"))?);
            let entry =
                u32::from_be_bytes(k[20..24].try_into().map_err(|_| self.corrupt("timer"))?);
            let contact = String::from_utf8(k[24..].to_vec()).map_err(|_| self.corrupt("timer"))?;
            let Some(conversation) = defs
                .conversations
                .iter()
                .position(|c| conversation_key(&c.name) == conv_key)
            else {
                return Err(StoreError::Codec {
                    partition,
                    contact,
                    source: CodecError::Unknown {
                        what: "conversation key",
                        name: format!("{conv_key:016x}"),
                    },
                });
            };
            out.push(StoredTimer {
                expiry,
                conversation: conversation as ConvIdx,
                entry,
                contact,
            });
        }
        Ok((out, until))
    }

    /// A contact's last transitions as written (encoded
    /// `winback.v1.Transition`s, oldest first); empty when none.
    pub fn history(&self, partition: u32, contact: &str) -> Result<Vec<Vec<u8>>, StoreError> {
        let v = self
            .db
            .get_pinned_cf(
                self.cf(CF_HISTORY),
                prefixed(partition, &[contact.as_bytes()]),
            )
            .map_err(|e| self.err("read history", e))?;
        match v {
            None => Ok(Vec::new()),
            Some(v) => <crate::pb::TransitionHistoryRecord as prost::Message>::decode(v.as_ref())
                .map(|r| r.transitions)
                .map_err(|_| self.corrupt("history")),
        }
    }

    /// How many waits the partition has pending (as written): a key-only
    /// scan, for the admin server's gauge, not for the hot path.
    pub fn count_timers(&self, partition: u32) -> Result<u64, StoreError> {
        let mut ro = ReadOptions::default();
        if let Some(next) = partition.checked_add(1) {
            ro.set_iterate_upper_bound(next.to_be_bytes().to_vec());
        }
        let start = partition.to_be_bytes();
        let mut iter = self.db.raw_iterator_cf_opt(self.cf(CF_TIMERS), ro);
        iter.seek(start);
        let mut n = 0;
        while iter.valid() {
            match iter.key() {
                Some(k) if k.starts_with(&start) => n += 1,
                _ => break,
            }
            iter.next();
        }
        iter.status().map_err(|e| self.err("count timers", e))?;
        Ok(n)
    }

    /// Writes the memtables out (for measuring the on-disk size).
    pub fn flush(&self) -> Result<(), StoreError> {
        for name in FAMILIES {
            self.db
                .flush_cf(self.cf(name))
                .map_err(|e| self.err("flush", e))?;
        }
        Ok(())
    }

    /// Bytes on disk (SST files) and in memtables, per column family.
    pub fn sizes(&self) -> Vec<(&'static str, u64, u64)> {
        FAMILIES
            .iter()
            .map(|&name| {
                let cf = self.cf(name);
                let get = |p: &str| {
                    self.db
                        .property_int_value_cf(cf, p)
                        .ok()
                        .flatten()
                        .unwrap_or(0)
                };
                (
                    name,
                    get("rocksdb.total-sst-files-size"),
                    get("rocksdb.cur-size-all-mem-tables"),
                )
            })
            .collect()
    }

    /// The input topics' partition count the state was built with.
    pub fn partitions(&self) -> Result<Option<u32>, StoreError> {
        let v = self
            .db
            .get_pinned_cf(self.cf(CF_META), PARTITIONS_KEY)
            .map_err(|e| self.err("read partitions", e))?;
        v.map(|v| {
            v.as_ref()
                .try_into()
                .map(u32::from_be_bytes)
                .map_err(|_| self.corrupt("partitions"))
        })
        .transpose()
    }

    pub fn set_partitions(&self, n: u32) -> Result<(), StoreError> {
        self.db
            .put_cf(self.cf(CF_META), PARTITIONS_KEY, n.to_be_bytes())
            .map_err(|e| self.err("write partitions", e))
    }

    /// The names of every pool whose codes the store keeps.
    pub fn pool_names(&self) -> Result<Vec<String>, StoreError> {
        let mut out = Vec::new();
        let mode = IteratorMode::From(POOL_PREFIX, rocksdb::Direction::Forward);
        for item in self.db.iterator_cf(self.cf(CF_META), mode) {
            let (k, _) = item.map_err(|e| self.err("scan pool names", e))?;
            let Some(name) = k.strip_prefix(POOL_PREFIX) else {
                break;
            };
            out.push(String::from_utf8_lossy(name).into_owned());
        }
        Ok(out)
    }

    /// A pool's codes as they were first loaded, if they were.
    pub fn pool_codes(&self, pool: &str) -> Result<Option<Vec<String>>, StoreError> {
        let key = [POOL_PREFIX, pool.as_bytes()].concat();
        let v = self
            .db
            .get_pinned_cf(self.cf(CF_META), key)
            .map_err(|e| self.err("read pool codes", e))?;
        v.map(|v| {
            std::str::from_utf8(&v)
                .map(|t| t.lines().map(str::to_string).collect())
                .map_err(|_| self.corrupt("pool codes"))
        })
        .transpose()
    }

    pub fn put_pool_codes<S: AsRef<str>>(&self, pool: &str, codes: &[S]) -> Result<(), StoreError> {
        let key = [POOL_PREFIX, pool.as_bytes()].concat();
        let mut text = String::new();
        for c in codes {
            text.push_str(c.as_ref());
            text.push('\n');
        }
        self.db
            .put_cf(self.cf(CF_META), key, text)
            .map_err(|e| self.err("write pool codes", e))
    }

    /// Deletes everything the store holds for `partition` (on revocation).
    pub fn drop_partition(&self, partition: u32) -> Result<(), StoreError> {
        let from = partition.to_be_bytes();
        let mut wb = WriteBatch::default();
        for name in ALL_FAMILIES {
            let cf = self.cf(name);
            if let Some(next) = partition.checked_add(1) {
                wb.delete_range_cf(cf, from, next.to_be_bytes());
            } else {
                // The last partition number has no 4-byte end key: delete one by one.
                for item in self
                    .db
                    .iterator_cf(cf, IteratorMode::From(&from, Direction::Forward))
                {
                    let (k, _) = item.map_err(|e| self.err("scan partition", e))?;
                    wb.delete_cf(cf, k);
                }
            }
        }
        self.db.write(wb).map_err(|e| self.err("drop partition", e))
    }
}
