//! One partition's processing over the store: the engine's caller loop of
//! [`crate::sim::Simulator`], with contact state read from RocksDB on demand
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
use crate::domain::engine::{
    Effects, Engine, Folded, TimerChange, check_state_limits, route_event,
};
use crate::domain::{
    ContactState, CouponPools, Definitions, Event, EventError, Timestamp, Transition,
};
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
}

impl Default for PartitionSettings {
    fn default() -> Self {
        PartitionSettings {
            timer_horizon_ms: crate::config::engine::DEFAULT_TIMER_HORIZON_MS,
            load_limit: 100_000,
        }
    }
}

/// What feeding one event did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fed {
    Folded(Folded),
    /// The waits due before the event used up the batch's timer budget: the
    /// event is not folded yet; feed it again in the next batch.
    Paused,
}

pub struct Partition {
    pub id: u32,
    /// The input partition count, which splits the coupon pools.
    partitions: u32,
    engine: Engine,
    settings: PartitionSettings,
    pools: CouponPools,
    wheel: Wheel<TimerKey>,
    /// The wheel holds every pending wait expiring before this.
    horizon: Timestamp,
    clock: Option<Timestamp>,
    fx: Effects,
    // The running batch, written by `write`: contacts read, and whether the
    // batch changed them (only those are written).
    dirty: FastMap<Arc<str>, (ContactState, bool)>,
    /// Changed contacts already encoded for the changelog.
    encoded: FastMap<Arc<str>, Vec<u8>>,
    far: BTreeSet<(Timestamp, TimerKey)>,
    timer_ops: Vec<(bool, StoredTimer)>,
    offsets: BTreeMap<String, i64>,
    /// Every input topic's next offset, this batch included.
    positions: BTreeMap<String, i64>,
    clock_dirty: bool,
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
        Ok(Partition {
            id,
            partitions,
            clock: store.clock(id)?,
            engine: Engine::new(defs),
            settings,
            pools,
            wheel: Wheel::new(),
            horizon: Timestamp(i64::MIN),
            fx: Effects::default(),
            dirty: FastMap::default(),
            encoded: FastMap::default(),
            far: BTreeSet::new(),
            timer_ops: Vec::new(),
            offsets: BTreeMap::new(),
            positions: store.offsets_of(id)?.into_iter().collect(),
            clock_dirty: false,
        })
    }

    pub fn clock(&self) -> Option<Timestamp> {
        self.clock
    }

    pub fn definitions(&self) -> &Arc<Definitions> {
        self.engine.definitions()
    }

    /// Waits held in memory (cancelled ones not yet due among them).
    pub fn timers_in_memory(&self) -> usize {
        self.wheel.len() + self.far.len()
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
    pub fn changelog(&mut self, mut each: impl FnMut(&[u8], &[u8], bool)) {
        let defs = Arc::clone(self.engine.definitions());
        for (id, (st, changed)) in &self.dirty {
            if *changed {
                let bytes = crate::store::codec::encode(&defs, st);
                each(id.as_bytes(), &bytes, false);
                // Encoded once: `write` stores the same bytes.
                self.encoded.insert(Arc::clone(id), bytes);
            }
        }
        let st = PartitionState {
            clock: self.clock,
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
                    let st = self.pools.pool(i as PoolIdx);
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
            &encode_partition(&st),
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
        let defs = Arc::clone(self.engine.definitions());
        let route = route_event(&defs, ev).map_err(PartitionError::Event)?;
        if !self.advance_to(store, ev.occurred_at, out, budget)? {
            return Ok(Fed::Paused);
        }
        let Some(route) = route else {
            return Ok(Fed::Folded(Folded::Unrouted));
        };
        let id: Arc<str> = Arc::from(ev.contact_id.as_str());
        let (mut st, changed) = self.take_contact(store, &id)?;
        if let Err(e) = check_state_limits(&st, ev, route) {
            self.dirty.insert(id, (st, changed));
            return Err(PartitionError::Event(e));
        }
        self.fx.clear();
        std::mem::swap(&mut self.fx.transitions, out);
        let folded =
            self.engine
                .on_routed_event(&id, &mut st, ev, route, &mut self.pools, &mut self.fx);
        std::mem::swap(&mut self.fx.transitions, out);
        if folded == Folded::Applied {
            self.apply_timers(&id);
            self.dirty.insert(Arc::clone(&id), (st, true));
        } else {
            self.dirty.insert(id, (st, changed));
        }
        // A late event's wait may be over already: it fires at the clock.
        if let Some(now) = self.clock {
            let mut unlimited = usize::MAX;
            self.fire_due(store, now, out, &mut unlimited)?;
        }
        Ok(Fed::Folded(folded))
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
        if !self.fire_due(store, t, out, budget)? {
            return Ok(false);
        }
        if self.clock.is_none_or(|c| c < t) {
            self.clock = Some(t);
            self.clock_dirty = true;
        }
        Ok(true)
    }

    fn fire_due(
        &mut self,
        store: &Store,
        t: Timestamp,
        out: &mut Vec<Transition>,
        budget: &mut usize,
    ) -> Result<bool, StoreError> {
        loop {
            // Only what the wheel is known to hold completely may fire; it
            // loads more only once that is fired and budget is left, so a
            // partition out of budget never piles up loaded timers.
            let limit = Timestamp(t.0.min(self.horizon.0.saturating_sub(1)));
            while let Some((at, key)) = self.wheel.pop_due(limit) {
                if *budget == 0 {
                    // Put back: a due timer goes to the front again, in order.
                    self.wheel.insert(at, key);
                    return Ok(false);
                }
                let (contact, conv, entry) = key;
                *budget -= 1;
                let now = self.clock.map_or(at, |c| c.max(at));
                if self.clock != Some(now) {
                    self.clock = Some(now);
                    self.clock_dirty = true;
                }
                self.timer_ops.push((
                    false,
                    StoredTimer {
                        expiry: at,
                        conversation: conv,
                        entry,
                        contact: contact.to_string(),
                    },
                ));
                let (mut st, changed) = self.take_contact(store, &contact)?;
                self.fx.clear();
                std::mem::swap(&mut self.fx.transitions, out);
                let fired = self.engine.on_timer(
                    &contact,
                    &mut st,
                    conv,
                    entry,
                    at,
                    now,
                    &mut self.pools,
                    &mut self.fx,
                );
                std::mem::swap(&mut self.fx.transitions, out);
                if fired {
                    self.apply_timers(&contact);
                }
                self.dirty.insert(contact, (st, changed || fired));
            }
            // Loaded to the end of time: nothing further to load. (Inputs stay
            // far from it, Timestamp::MAX_ACCEPTED; this keeps the loop finite
            // whatever an instant is.)
            if self.horizon > t || self.horizon.0 == i64::MAX {
                return Ok(true);
            }
            if *budget == 0 {
                return Ok(false);
            }
            self.load_timers(store, t)?;
        }
    }

    /// Loads the next stretch of waits from the store (and this batch's own).
    fn load_timers(&mut self, store: &Store, t: Timestamp) -> Result<(), StoreError> {
        let from = self.horizon;
        let want = Timestamp(t.0.saturating_add(self.settings.timer_horizon_ms));
        let defs = Arc::clone(self.engine.definitions());
        let (stored, until) =
            store.timers_range(&defs, self.id, from, want, self.settings.load_limit)?;
        for s in stored {
            let key: TimerKey = (Arc::from(s.contact.as_str()), s.conversation, s.entry);
            self.far.remove(&(s.expiry, key.clone()));
            self.wheel.insert(s.expiry, key);
        }
        while let Some(first) = self.far.first() {
            if first.0 >= until {
                break;
            }
            if let Some((at, key)) = self.far.pop_first() {
                self.wheel.insert(at, key);
            }
        }
        self.horizon = until;
        Ok(())
    }

    /// A contact's state, and whether the running batch changed it already.
    fn take_contact(
        &mut self,
        store: &Store,
        id: &Arc<str>,
    ) -> Result<(ContactState, bool), StoreError> {
        if let Some(st) = self.dirty.remove(id) {
            return Ok(st);
        }
        let defs = Arc::clone(self.engine.definitions());
        Ok((
            store.contact(&defs, self.id, id)?.unwrap_or_default(),
            false,
        ))
    }

    fn apply_timers(&mut self, contact: &Arc<str>) {
        for tc in self.fx.timers.drain(..) {
            match tc {
                TimerChange::Set {
                    conversation,
                    entry,
                    at,
                } => {
                    let key = (Arc::clone(contact), conversation, entry);
                    if at < self.horizon {
                        self.wheel.insert(at, key);
                    } else {
                        self.far.insert((at, key));
                    }
                    self.timer_ops.push((
                        true,
                        StoredTimer {
                            expiry: at,
                            conversation,
                            entry,
                            contact: contact.to_string(),
                        },
                    ));
                }
                TimerChange::Cancel {
                    conversation,
                    entry,
                    at,
                } => {
                    self.far
                        .remove(&(at, (Arc::clone(contact), conversation, entry)));
                    self.timer_ops.push((
                        false,
                        StoredTimer {
                            expiry: at,
                            conversation,
                            entry,
                            contact: contact.to_string(),
                        },
                    ));
                }
            }
        }
    }

    /// Whether the running batch changed anything.
    pub fn has_changes(&self) -> bool {
        !self.dirty.is_empty()
            || !self.timer_ops.is_empty()
            || !self.offsets.is_empty()
            || self.clock_dirty
    }

    /// Adds the running batch's changes to `batch` and starts a new batch.
    /// Written changes are forgotten here: commit `batch` before feeding more.
    pub fn write(&mut self, batch: &mut Batch<'_>) {
        batch.switch_partition(self.id);
        for (id, (st, changed)) in self.dirty.drain() {
            if changed {
                match self.encoded.remove(&id) {
                    Some(bytes) => batch.put_contact_encoded(&id, &bytes),
                    None => batch.put_contact(&id, &st),
                }
            }
        }
        self.encoded.clear();
        for (set, t) in self.timer_ops.drain(..) {
            if set {
                batch.set_timer(&t);
            } else {
                batch.cancel_timer(&t);
            }
        }
        for (topic, off) in std::mem::take(&mut self.offsets) {
            batch.set_offset(&topic, off);
        }
        if self.clock_dirty
            && let Some(c) = self.clock
        {
            batch.set_clock(c);
        }
        self.clock_dirty = false;
        // Every share, every time: the store then holds what the changelog's
        // partition record says (equal digests after a rebuild).
        let defs = Arc::clone(self.engine.definitions());
        for (i, p) in defs.pools.iter().enumerate() {
            let st = self.pools.pool(i as PoolIdx);
            batch.set_coupon_share(
                &p.name,
                CouponShare {
                    taken: st.taken,
                    low_warned: st.low_warned,
                },
            );
        }
        // Written waits are on disk now; the next load finds them there.
        self.far.clear();
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PartitionError {
    #[error(transparent)]
    Event(EventError),
    #[error(transparent)]
    Store(#[from] StoreError),
}
