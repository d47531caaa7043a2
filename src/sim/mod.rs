//! The offline driver: the engine's caller loop ([`crate::domain::driver`])
//! over in-memory state. Used by
//! `winback simulate`, the golden scenarios, the property tests and the fold
//! benchmark. Pure like the domain: the clock moves only with events and
//! [`Simulator::advance_to`].

use std::ops::ControlFlow;
use std::sync::Arc;

mod index;
mod list;
pub mod report;

use index::ContactIndex;
use list::{Contact, ContactList};

use crate::domain::definition::ConvIdx;
use crate::domain::driver::{Driver, Due, Fed, Holdings, Wait};
use crate::domain::engine::Folded;
use crate::domain::{
    ContactState, CouponPools, Definitions, Event, EventError, Timestamp, Transition,
};
use crate::prefetch::{prefetch, prefetch_arc, prefetch_line};
use crate::timer::Wheel;

/// A pending wait of (contact position, conversation, entry). The wheel
/// orders waits of one instant by position; the driver fires them in order
/// of contact id, conversation and entry instead, as `winback run` does,
/// whose waits come back from disk in no first-seen order. A position, not
/// the id, so that a wait holds no reference count to change and its entry
/// in the wheel is 24 bytes instead of 40.
type TimerKey = (u32, ConvIdx, u32);

/// How many timers ahead of the one firing [`Memory::firing`] loads the rest
/// of a contact whose wait still stands, and its id (twice as many ahead, the
/// lines that tell whether it stands): far enough for a memory load to
/// finish, near enough that the lines are still cached when the timer fires.
const PREFETCH_AHEAD: usize = 4;

pub struct Simulator {
    driver: Driver<u32>,
    held: Memory,
}

/// Contacts and waits in memory.
struct Memory {
    index: ContactIndex,
    contacts: ContactList,
    /// Pending waits. A cancelled one stays until due and is then ignored by
    /// the engine (it fires only a timer matching a waiting entry).
    timers: Wheel<TimerKey>,
}

impl Simulator {
    pub fn new(defs: Arc<Definitions>) -> Self {
        Self::for_partition(defs, 0, 1)
    }

    /// One input partition of `partitions`, with its share of each coupon
    /// pool: what `winback run` does with the events of that partition.
    pub fn for_partition(defs: Arc<Definitions>, partition: usize, partitions: usize) -> Self {
        let pools = CouponPools::for_partition(&defs, partition, partitions);
        Simulator {
            driver: Driver::new(defs, pools, None),
            held: Memory {
                index: ContactIndex::default(),
                contacts: ContactList::default(),
                timers: Wheel::new(),
            },
        }
    }

    /// The partition clock: the highest instant seen so far.
    pub fn clock(&self) -> Option<Timestamp> {
        self.driver.clock()
    }

    /// Events folded so far whose `occurred_at` was before the clock: late
    /// (docs/semantics.md, "Late events").
    pub fn late_events(&self) -> u64 {
        self.driver.late_events()
    }

    pub fn contacts(&self) -> usize {
        self.held.contacts.len()
    }

    /// Every contact's id and state, in first-seen order.
    pub fn states(&self) -> impl Iterator<Item = (&str, &ContactState)> {
        self.held.contacts.iter().map(|c| (&*c.id, &c.state))
    }

    /// Pending waits, cancelled ones not yet due among them.
    pub fn timers_held(&self) -> usize {
        self.held.timers.len()
    }

    /// Folds one event: fires the timers due at or before its time, folds it,
    /// then fires whatever it made due already (a late event's expired wait).
    pub fn feed(&mut self, ev: &Event, out: &mut Vec<Transition>) -> Result<Folded, EventError> {
        let h = self.held.index.hash(&ev.contact_id);
        self.feed_hashed(ev, h, out)
    }

    /// Folds `events` in order, as [`Simulator::feed`] would one by one, and
    /// hands each one's position, result and transitions to `each` (which
    /// takes them from `out`; whatever it leaves there stays). `each` may
    /// stop the batch: returns how many events were folded. Faster with many
    /// contacts: while an event folds, the memory of the events a few places
    /// after it is already being fetched.
    pub fn feed_batch(
        &mut self,
        events: &[Event],
        out: &mut Vec<Transition>,
        mut each: impl FnMut(usize, Result<Folded, EventError>, &mut Vec<Transition>) -> ControlFlow<()>,
    ) -> usize {
        // Each event's memory arrives in four rounds, each needing the one
        // before: the text of its contact id (hashed for the slot), its index
        // slot, then the contact's list entry the slot names, then the id
        // that entry points to. One round per `STRIDE` events, each far
        // enough ahead for a load from memory to finish.
        const STRIDE: usize = 4;
        const RING: usize = 16;
        const _: () = assert!(3 * STRIDE < RING);
        let mut hashes = [0u64; RING];
        // The caller's events need not be in the cache (the benchmark's are
        // strings scattered over a gigabyte): hashing a coming event's
        // contact id would otherwise stall on it.
        let text_round = |ev: &Event| prefetch_line(ev.contact_id.as_ptr());
        let slot_round = |sim: &Self, hashes: &mut [u64; RING], j: usize| {
            let h = sim.held.index.hash(&events[j].contact_id);
            hashes[j % RING] = h;
            sim.held.index.prefetch(h);
        };
        let entry_round = |sim: &Self, h: u64| {
            if let Some(c) = sim
                .held
                .index
                .candidate(h)
                .and_then(|p| sim.held.contacts.get(p))
            {
                prefetch(c);
            }
        };
        let id_round = |sim: &Self, h: u64, ev: &Event| {
            if let Some(c) = sim
                .held
                .index
                .candidate(h)
                .and_then(|p| sim.held.contacts.get(p))
            {
                prefetch_arc(&c.id);
            }
            // The event's own text, read by the fold: the caller's input.
            for s in [&ev.event_id, &ev.name] {
                prefetch_line(s.as_ptr());
            }
            for s in [&ev.merchant_id, &ev.list_id].into_iter().flatten() {
                prefetch_line(s.as_ptr());
            }
        };
        for ev in events.iter().take(4 * STRIDE) {
            text_round(ev);
        }
        for j in 0..events.len().min(3 * STRIDE) {
            slot_round(self, &mut hashes, j);
        }
        for j in 0..events.len().min(2 * STRIDE) {
            entry_round(self, hashes[j % RING]);
        }
        for (j, ev) in events.iter().enumerate().take(STRIDE) {
            id_round(self, hashes[j % RING], ev);
        }
        for (i, ev) in events.iter().enumerate() {
            if let Some(ev) = events.get(i + 4 * STRIDE) {
                text_round(ev);
            }
            if let Some(j) = Some(i + 3 * STRIDE).filter(|&j| j < events.len()) {
                slot_round(self, &mut hashes, j);
            }
            if let Some(j) = Some(i + 2 * STRIDE).filter(|&j| j < events.len()) {
                entry_round(self, hashes[j % RING]);
            }
            if let Some(j) = Some(i + STRIDE).filter(|&j| j < events.len()) {
                id_round(self, hashes[j % RING], &events[j]);
            }
            let r = self.feed_hashed(ev, hashes[i % RING], out);
            if each(i, r, out).is_break() {
                return i + 1;
            }
        }
        events.len()
    }

    /// [`Simulator::feed`] with the contact id's index hash.
    fn feed_hashed(
        &mut self,
        ev: &Event,
        h: u64,
        out: &mut Vec<Transition>,
    ) -> Result<Folded, EventError> {
        let mut unlimited = usize::MAX;
        match self
            .driver
            .feed(&mut self.held, ev, h, out, &mut unlimited)?
        {
            Fed::Folded(f) => Ok(f),
            Fed::Paused => unreachable!("no budget runs out at usize::MAX waits"),
        }
    }

    /// Moves the clock to `t` (never back), firing every timer due by then in
    /// order, each at its own expiry.
    pub fn advance_to(&mut self, t: Timestamp, out: &mut Vec<Transition>) {
        let mut unlimited = usize::MAX;
        match self
            .driver
            .advance_to(&mut self.held, t, out, &mut unlimited)
        {
            Ok(true) => {}
            Ok(false) => unreachable!("no budget runs out at usize::MAX waits"),
            Err(e) => unreachable!("memory refuses nothing when a clock moves: {e}"),
        }
    }
}

impl Holdings for Memory {
    type Contact = u32;
    /// The id's index hash.
    type Hint = u64;
    type Error = EventError;

    #[inline]
    fn resolve(&mut self, id: &str, h: u64) -> Result<u32, EventError> {
        let contacts = &self.contacts;
        if let Some(i) = self
            .index
            .find(h, |p| contacts.get(p).is_some_and(|c| *c.id == *id))
        {
            return Ok(i);
        }
        let Some(i) = self.index.insert(h) else {
            return Err(EventError::TooManyContacts(self.contacts.len() as u32));
        };
        self.contacts.push(Contact {
            id: Arc::from(id),
            state: ContactState::default(),
        });
        Ok(i)
    }

    #[inline]
    fn with_contact<R>(
        &mut self,
        &c: &u32,
        f: impl FnOnce(&Arc<str>, &mut ContactState) -> (R, bool),
    ) -> Result<R, EventError> {
        let Some(Contact { id, state }) = self.contacts.get_mut(c) else {
            unreachable!("the index and the waits name only listed contacts")
        };
        Ok(f(id, state).0)
    }

    fn cmp_contacts(&self, &a: &u32, &b: &u32) -> std::cmp::Ordering {
        if a == b {
            return std::cmp::Ordering::Equal;
        }
        let id = |p: u32| self.contacts.get(p).map(|c| &*c.id);
        id(a).cmp(&id(b))
    }

    #[inline]
    fn next_due(&mut self, t: Timestamp, _may_load: bool) -> Result<Due<u32>, EventError> {
        Ok(match self.timers.pop_due(t) {
            Some((at, w)) => Due::At(at, w),
            None => Due::Nothing,
        })
    }

    #[inline]
    fn pop_same(&mut self, at: Timestamp) -> Option<TimerKey> {
        self.timers.pop_same(at)
    }

    fn put_back(&mut self, at: Timestamp, w: TimerKey) {
        self.timers.insert(at, w);
    }

    /// Waits due together belong to contacts last touched long ago: starts
    /// loading a coming one's state while this one fires, in two steps as
    /// the key names only the contact's position. First the lines that tell
    /// whether the wait still stands (about half the fired waits were
    /// cancelled by a re-entry and change nothing) and the one holding the
    /// id's pointer; then, for a wait that stands, the rest of the contact
    /// and the id (the transitions clone it).
    #[inline]
    fn firing(&mut self, _at: Timestamp, _w: &Wait<u32>) {
        if let Some((next, _, _)) = self.timers.ahead(2 * PREFETCH_AHEAD)
            && let Some(c) = self.contacts.get(*next)
        {
            prefetch(&c.state.conversations);
            prefetch_line((&c.id as *const Arc<str>).cast());
        }
        if let Some(&(next, conv, entry)) = self.timers.ahead(PREFETCH_AHEAD)
            && let Some(c) = self.contacts.get(next)
            && c.state.waiting(conv, entry)
        {
            prefetch(c);
            prefetch_arc(&c.id);
        }
    }

    #[inline]
    fn set_wait(&mut self, at: Timestamp, w: TimerKey) {
        self.timers.insert(at, w);
    }

    /// Lazy: the wait stays and fires into nothing.
    #[inline]
    fn cancel_wait(&mut self, _at: Timestamp, _w: TimerKey) {}
}
