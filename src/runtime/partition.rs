//! One partition's processing over the store: the driver
//! ([`crate::domain::driver`]) the simulator runs too, with contact state read
//! from RocksDB on demand
//! and the pending waits split between an in-memory wheel (the near horizon)
//! and the durable expiry index (everything). No Kafka here: the runtime feeds
//! it events and persists what it returns, so it can be tested on its own.
//!
//! Timers: the wheel holds every pending wait expiring before `horizon`; the
//! store holds every pending wait. When the clock reaches the horizon, the next
//! stretch `[horizon, clock + timer_horizon)` is loaded from the store (capped
//! in count, so an expiry storm is loaded in slices). A wait set in the
//! running batch expiring at or after the horizon is on disk only once the
//! batch is written, so it is also kept in `far` until then and merged into
//! the next load. A cancelled wait is deleted from the store; a copy already in
//! the wheel fires and is ignored by the engine, so cancelling never searches
//! the wheel.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use crate::domain::coupon::handed_out_fingerprint;
use crate::domain::definition::{ConvIdx, FastMap, PoolIdx};
use crate::domain::driver::{Driver, Due, Holdings, Wait};
use crate::domain::{
    ContactState, CouponPools, Definitions, Event, EventError, Timestamp, Transition,
};
use crate::store::activity::{self, ActivityKey};
use crate::store::changelog::{PartitionState, PoolProgress, encode_partition};
use crate::store::rocks::{Batch, CouponShare, Store, StoreError, StoredTimer};
use crate::timer::Wheel;

/// At one instant, waits fire in order of contact id, conversation, entry (as
/// in `simulate`), whatever order they were loaded in.
pub type TimerKey = (Arc<str>, ConvIdx, u32);

#[derive(Debug, Clone, Copy)]
pub struct PartitionSettings {
    /// How far past the clock the wheel is loaded from the store, in ms.
    pub timer_horizon_ms: i64,
    /// At most about this many timers are loaded into the wheel at once.
    pub load_limit: usize,
    /// Keep each contact's last transitions (`processing.contact_history`).
    pub keep_history: bool,
}

impl Default for PartitionSettings {
    fn default() -> Self {
        PartitionSettings {
            timer_horizon_ms: crate::config::engine::DEFAULT_TIMER_HORIZON_MS,
            load_limit: 100_000,
            keep_history: crate::config::engine::DEFAULT_CONTACT_HISTORY,
        }
    }
}

pub use crate::domain::driver::Fed;

pub struct Partition {
    pub id: u32,
    /// The input partition count, which splits the coupon pools.
    partitions: u32,
    driver: Driver<Arc<str>>,
    held: Held,
    /// Encoded for the changelog: changed contacts of the running batch.
    encoded: FastMap<Arc<str>, Vec<u8>>,
    offsets: BTreeMap<String, i64>,
    /// Every input topic's next offset, this batch included.
    positions: BTreeMap<String, i64>,
    /// The clock as last written.
    written_clock: Option<Timestamp>,
    /// The running batch's transitions per contact, encoded, for the
    /// contacts' histories (`inspect`).
    history: FastMap<Arc<str>, Vec<u8>>,
    /// The running batch's step activity (the conversation page's counts).
    activity: FastMap<ActivityKey, u64>,
    /// Activity of hours before this is deleted (as of this process).
    activity_pruned: Option<Timestamp>,
}

/// The running batch's contacts and the near waits; the rest is in the store.
struct Held {
    id: u32,
    settings: PartitionSettings,
    wheel: Wheel<TimerKey>,
    /// The wheel holds every pending wait expiring before this.
    horizon: Timestamp,
    // The running batch, written by `write`: contacts read, and whether the
    // batch changed them (only those are written).
    dirty: FastMap<Arc<str>, (ContactState, bool)>,
    /// Contacts forgotten in the running batch: deleted, not written, unless
    /// an event after the forget made them anew.
    forgotten: BTreeSet<Arc<str>>,
    far: BTreeSet<(Timestamp, TimerKey)>,
    timer_ops: Vec<(bool, StoredTimer)>,
}

/// [`Held`] with the store behind it, for one call of the driver.
struct Stored<'a> {
    store: &'a Store,
    defs: &'a Arc<Definitions>,
    held: &'a mut Held,
}

impl Partition {
    /// Loads a partition's clock and coupon progress; contacts and timers are
    /// read when needed. `partitions` is the input topics' partition count,
    /// which splits the coupon pools.
    pub fn open(
        store: &Store,
        defs: Arc<Definitions>,
        id: u32,
        partitions: u32,
        settings: PartitionSettings,
    ) -> Result<Partition, StoreError> {
        let mut pools = CouponPools::for_partition(&defs, id as usize, partitions as usize);
        for (i, p) in defs.pools.iter().enumerate() {
            if let Some(share) = store.coupon_share(id, &p.name)? {
                let st = pools.pool_mut(i as PoolIdx);
                st.taken = share.taken;
                st.low_warned = share.low_warned;
            }
        }
        let clock = store.clock(id)?;
        Ok(Partition {
            id,
            partitions,
            driver: Driver::new(defs, pools, clock),
            held: Held {
                id,
                settings,
                wheel: Wheel::new(),
                horizon: Timestamp(i64::MIN),
                dirty: FastMap::default(),
                forgotten: BTreeSet::new(),
                far: BTreeSet::new(),
                timer_ops: Vec::new(),
            },
            encoded: FastMap::default(),
            offsets: BTreeMap::new(),
            positions: store.offsets_of(id)?.into_iter().collect(),
            written_clock: clock,
            history: FastMap::default(),
            activity: FastMap::default(),
            activity_pruned: None,
        })
    }

    pub fn clock(&self) -> Option<Timestamp> {
        self.driver.clock()
    }

    /// Events folded since the partition was opened whose `occurred_at` was
    /// before the clock.
    pub fn late_events(&self) -> u64 {
        self.driver.late_events()
    }

    pub fn definitions(&self) -> &Arc<Definitions> {
        self.driver.definitions()
    }

    /// Waits held in memory (cancelled ones not yet due among them).
    pub fn timers_in_memory(&self) -> usize {
        self.held.wheel.len() + self.held.far.len()
    }

    /// Records that `topic` is consumed up to `next_offset` (exclusive); stored
    /// with the batch.
    pub fn note_offset(&mut self, topic: &str, next_offset: i64) {
        self.offsets.insert(topic.to_string(), next_offset);
        self.positions.insert(topic.to_string(), next_offset);
    }

    /// The changelog records of the running batch: each changed contact's
    /// state, then the partition's own record (clock, every input offset,
    /// coupon shares), last. Call before [`Partition::write`].
    pub fn changelog(&mut self, mut each: impl FnMut(&[u8], Option<&[u8]>, bool)) {
        let defs = Arc::clone(self.driver.definitions());
        for (id, (st, changed)) in &self.held.dirty {
            if *changed {
                if self.held.erases(id, st) {
                    // A tombstone: compaction removes the contact's records.
                    each(id.as_bytes(), None, false);
                    continue;
                }
                let bytes = crate::store::codec::encode(&defs, st);
                each(id.as_bytes(), Some(&bytes), false);
                // Encoded once: `write` stores the same bytes.
                self.encoded.insert(Arc::clone(id), bytes);
            }
        }
        let st = PartitionState {
            clock: self.driver.clock(),
            offsets: self
                .positions
                .iter()
                .map(|(t, o)| (t.clone(), *o))
                .collect(),
            coupons: defs
                .pools
                .iter()
                .enumerate()
                .map(|(i, p)| {
                    let st = self.driver.pools().pool(i as PoolIdx);
                    PoolProgress {
                        pool: p.name.to_string(),
                        share: CouponShare {
                            taken: st.taken,
                            low_warned: st.low_warned,
                        },
                        handed_out: handed_out_fingerprint(
                            &p.codes,
                            self.id as usize,
                            self.partitions as usize,
                            st.taken,
                        ),
                    }
                })
                .collect(),
            partitions: self.partitions,
        };
        each(
            crate::store::changelog::PARTITION_KEY,
            Some(&encode_partition(&st)),
            true,
        );
    }

    /// Folds one event (its shape and route checked by the caller): fires the
    /// waits due by its time, folds it, then fires what it made due. `budget`
    /// counts the waits the batch may still fire.
    pub fn feed(
        &mut self,
        store: &Store,
        ev: &Event,
        out: &mut Vec<Transition>,
        budget: &mut usize,
    ) -> Result<Fed, PartitionError> {
        let defs = Arc::clone(self.driver.definitions());
        let mut h = Stored {
            store,
            defs: &defs,
            held: &mut self.held,
        };
        self.driver.feed(&mut h, ev, (), out, budget)
    }

    /// Moves the clock to `t` (never back), firing the waits due by then, each
    /// at its own expiry. Returns false when `budget` ran out first: the clock
    /// then stands at the last wait fired.
    pub fn advance_to(
        &mut self,
        store: &Store,
        t: Timestamp,
        out: &mut Vec<Transition>,
        budget: &mut usize,
    ) -> Result<bool, StoreError> {
        let defs = Arc::clone(self.driver.definitions());
        let mut h = Stored {
            store,
            defs: &defs,
            held: &mut self.held,
        };
        self.driver
            .advance_to(&mut h, t, out, budget)
            .map_err(|e| match e {
                PartitionError::Store(e) => e,
                PartitionError::Event(e) => {
                    unreachable!("moving the clock folds no event: {e}")
                }
            })
    }

    /// Counts a transition of the running batch in its step's activity and
    /// keeps it (`encoded` as the transitions topic carries it) for its
    /// contact's history.
    pub fn note(&mut self, t: &Transition, encoded: &[u8]) {
        for k in activity::counters(self.driver.definitions(), t) {
            *self.activity.entry(k).or_default() += 1;
        }
        if !self.held.settings.keep_history {
            return;
        }
        let record = match self.history.get_mut(&t.contact) {
            Some(r) => r,
            None => self.history.entry(Arc::clone(&t.contact)).or_default(),
        };
        crate::store::rocks::history_frame(record, encoded);
    }

    /// The contact was just forgotten: what the batch kept for its history
    /// goes too (the feed that forgot it made its `forgotten` transitions,
    /// which are not kept either).
    pub fn forget_history(&mut self, contact: &str) {
        self.history.remove(contact);
    }

    /// Whether the running batch changed anything.
    pub fn has_changes(&self) -> bool {
        !self.held.dirty.is_empty()
            || !self.held.forgotten.is_empty()
            || !self.held.timer_ops.is_empty()
            || !self.offsets.is_empty()
            || self.driver.clock() != self.written_clock
    }

    /// Adds the running batch's changes to `batch` and starts a new batch.
    /// Written changes are forgotten here: commit `batch` before feeding more.
    pub fn write(&mut self, batch: &mut Batch<'_>) {
        batch.switch_partition(self.id);
        for (id, (st, changed)) in std::mem::take(&mut self.held.dirty) {
            if changed {
                if self.held.erases(&id, &st) {
                    batch.delete_contact(&id);
                    continue;
                }
                match self.encoded.remove(&id) {
                    Some(bytes) => batch.put_contact_encoded(&id, &bytes),
                    None => batch.put_contact(&id, &st),
                }
            }
        }
        self.encoded.clear();
        // The histories: a forgotten contact's stored one is deleted, and
        // only what came after the forget is kept.
        let forgotten = std::mem::take(&mut self.held.forgotten);
        for contact in &forgotten {
            if !self.history.contains_key(contact) {
                batch.delete_history(contact);
            }
        }
        for (contact, record) in self.history.drain() {
            batch.append_history(&contact, &record, forgotten.contains(&contact));
        }
        for (k, n) in self.activity.drain() {
            batch.add_activity(&k, n);
        }
        // Counts older than the page shows go, a day at a time (a range
        // deletion per batch would pile up tombstones).
        if let Some(c) = self.driver.clock() {
            let day = 24 * activity::HOUR_MS;
            let edge = c.0.saturating_sub(activity::KEEP_HOURS * activity::HOUR_MS);
            let before = Timestamp(edge.div_euclid(day).saturating_mul(day));
            if self.activity_pruned != Some(before) {
                batch.prune_activity(before);
                self.activity_pruned = Some(before);
            }
        }
        for (set, t) in self.held.timer_ops.drain(..) {
            if set {
                batch.set_timer(&t);
            } else {
                batch.cancel_timer(&t);
            }
        }
        for (topic, off) in std::mem::take(&mut self.offsets) {
            batch.set_offset(&topic, off);
        }
        if self.driver.clock() != self.written_clock
            && let Some(c) = self.driver.clock()
        {
            batch.set_clock(c);
        }
        self.written_clock = self.driver.clock();
        // Every share, every time: the store then holds what the changelog's
        // partition record says (equal digests after a rebuild).
        let defs = Arc::clone(self.driver.definitions());
        for (i, p) in defs.pools.iter().enumerate() {
            let st = self.driver.pools().pool(i as PoolIdx);
            batch.set_coupon_share(
                &p.name,
                CouponShare {
                    taken: st.taken,
                    low_warned: st.low_warned,
                },
            );
        }
        // Written waits are on disk now; the next load finds them there.
        self.held.far.clear();
    }
}

impl Held {
    /// Whether writing `st` for `id` means deleting the contact: forgotten in
    /// this batch, and nothing came for it since.
    fn erases(&self, id: &Arc<str>, st: &ContactState) -> bool {
        self.forgotten.contains(id) && *st == ContactState::default()
    }
}

impl Holdings for Stored<'_> {
    type Contact = Arc<str>;
    type Hint = ();
    type Error = PartitionError;

    fn resolve(&mut self, id: &str, (): ()) -> Result<Arc<str>, PartitionError> {
        Ok(Arc::from(id))
    }

    fn with_contact<R>(
        &mut self,
        c: &Arc<str>,
        f: impl FnOnce(&Arc<str>, &mut ContactState) -> (R, bool),
    ) -> Result<R, PartitionError> {
        let (mut st, changed) = match self.held.dirty.remove(c) {
            Some(held) => held,
            None => (
                self.store
                    .contact(self.defs, self.held.id, c)?
                    .unwrap_or_default(),
                false,
            ),
        };
        let (r, now_changed) = f(c, &mut st);
        self.held
            .dirty
            .insert(Arc::clone(c), (st, changed || now_changed));
        Ok(r)
    }

    fn cmp_contacts(&self, a: &Arc<str>, b: &Arc<str>) -> std::cmp::Ordering {
        a.cmp(b)
    }

    fn next_due(&mut self, t: Timestamp, may_load: bool) -> Result<Due<Arc<str>>, PartitionError> {
        loop {
            // Only what the wheel is known to hold completely may fire; it
            // loads more only once that is fired and budget is left, so a
            // partition out of budget never piles up loaded timers.
            let limit = Timestamp(t.0.min(self.held.horizon.0.saturating_sub(1)));
            if let Some((at, w)) = self.held.wheel.pop_due(limit) {
                return Ok(Due::At(at, w));
            }
            // Loaded to the end of time: nothing further to load. (Inputs stay
            // far from it, Timestamp::MAX_ACCEPTED; this keeps the loop finite
            // whatever an instant is.)
            if self.held.horizon > t || self.held.horizon.0 == i64::MAX {
                return Ok(Due::Nothing);
            }
            if !may_load {
                return Ok(Due::Unknown);
            }
            self.load_timers(t)?;
        }
    }

    fn pop_same(&mut self, at: Timestamp) -> Option<TimerKey> {
        self.held.wheel.pop_same(at)
    }

    /// A due wait goes to the front again, in order.
    fn put_back(&mut self, at: Timestamp, w: TimerKey) {
        self.held.wheel.insert(at, w);
    }

    fn firing(&mut self, at: Timestamp, w: &Wait<Arc<str>>) {
        self.held.timer_ops.push((false, stored_timer(at, w)));
    }

    fn set_wait(&mut self, at: Timestamp, w: TimerKey) {
        self.held.timer_ops.push((true, stored_timer(at, &w)));
        if at < self.held.horizon {
            self.held.wheel.insert(at, w);
        } else {
            self.held.far.insert((at, w));
        }
    }

    /// Deleted from the store; a copy already in the wheel fires into nothing.
    fn cancel_wait(&mut self, at: Timestamp, w: TimerKey) {
        self.held.timer_ops.push((false, stored_timer(at, &w)));
        self.held.far.remove(&(at, w));
    }

    fn forget(&mut self, c: &Arc<str>) {
        self.held.forgotten.insert(Arc::clone(c));
    }
}

fn stored_timer(at: Timestamp, (contact, conversation, entry): &Wait<Arc<str>>) -> StoredTimer {
    StoredTimer {
        expiry: at,
        conversation: *conversation,
        entry: *entry,
        contact: contact.to_string(),
    }
}

impl Stored<'_> {
    /// Loads the next stretch of waits from the store (and this batch's own).
    fn load_timers(&mut self, t: Timestamp) -> Result<(), StoreError> {
        let held = &mut *self.held;
        let from = held.horizon;
        let want = Timestamp(t.0.saturating_add(held.settings.timer_horizon_ms));
        let (stored, until) =
            self.store
                .timers_range(self.defs, held.id, from, want, held.settings.load_limit)?;
        for s in stored {
            let key: TimerKey = (Arc::from(s.contact.as_str()), s.conversation, s.entry);
            held.far.remove(&(s.expiry, key.clone()));
            held.wheel.insert(s.expiry, key);
        }
        while let Some(first) = held.far.first() {
            if first.0 >= until {
                break;
            }
            if let Some((at, key)) = held.far.pop_first() {
                held.wheel.insert(at, key);
            }
        }
        held.horizon = until;
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PartitionError {
    #[error(transparent)]
    Event(#[from] EventError),
    #[error(transparent)]
    Store(#[from] StoreError),
}
