//! The offline driver: the engine's caller loop over in-memory state. Used by
//! `winback simulate`, the golden scenarios, the property tests and the fold
//! benchmark. Pure like the domain: the clock moves only with events and
//! [`Simulator::advance_to`].

use std::ops::ControlFlow;
use std::sync::Arc;

mod index;
mod list;

use index::ContactIndex;
use list::{Contact, ContactList};

use crate::domain::definition::ConvIdx;
use crate::domain::engine::{Effects, Engine, Folded, TimerChange, route_event};
use crate::domain::{
    ContactState, CouponPools, Definitions, Event, EventError, Timestamp, Transition,
};
use crate::prefetch::{prefetch, prefetch_arc, prefetch_line};
use crate::timer::Wheel;

/// A pending wait of (contact position, conversation, entry). The wheel
/// orders waits of one instant by position; [`Simulator::fire_due`] fires
/// them in order of contact id, conversation and entry instead, as `winback
/// run` does, whose waits come back from disk in no first-seen order. A
/// position, not the id, so that a wait holds no reference count to change
/// and its entry in the wheel is 24 bytes instead of 40.
type TimerKey = (u32, ConvIdx, u32);

/// How many timers ahead of the one firing [`Simulator::fire`] loads the rest
/// of a contact whose wait still stands, and its id (twice as many ahead, the
/// lines that tell whether it stands): far enough for a memory load to
/// finish, near enough that the lines are still cached when the timer fires.
const PREFETCH_AHEAD: usize = 4;

pub struct Simulator {
    engine: Engine,
    index: ContactIndex,
    contacts: ContactList,
    /// Pending waits. A cancelled one stays until due and is then ignored by
    /// the engine (it fires only a timer matching a waiting entry).
    timers: Wheel<TimerKey>,
    pools: CouponPools,
    clock: Option<Timestamp>,
    fx: Effects,
    /// Waits due at one instant, while `fire_due` orders them: kept for its buffer.
    ties: Vec<TimerKey>,
    /// Events folded with an `occurred_at` before the clock.
    late: u64,
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
            engine: Engine::new(defs),
            index: ContactIndex::default(),
            contacts: ContactList::default(),
            timers: Wheel::new(),
            pools,
            clock: None,
            fx: Effects::default(),
            ties: Vec::new(),
            late: 0,
        }
    }

    /// The partition clock: the highest instant seen so far.
    pub fn clock(&self) -> Option<Timestamp> {
        self.clock
    }

    /// Events folded so far whose `occurred_at` was before the clock: late
    /// (docs/semantics.md, "Late events").
    pub fn late_events(&self) -> u64 {
        self.late
    }

    pub fn contacts(&self) -> usize {
        self.contacts.len()
    }

    /// Every contact's id and state, in first-seen order.
    pub fn states(&self) -> impl Iterator<Item = (&str, &ContactState)> {
        self.contacts.iter().map(|c| (&*c.id, &c.state))
    }

    /// Pending waits, cancelled ones not yet due among them.
    pub fn timers_held(&self) -> usize {
        self.timers.len()
    }

    /// Folds one event: fires the timers due at or before its time, folds it,
    /// then fires whatever it made due already (a late event's expired wait).
    pub fn feed(&mut self, ev: &Event, out: &mut Vec<Transition>) -> Result<Folded, EventError> {
        let h = self.index.hash(&ev.contact_id);
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
            let h = sim.index.hash(&events[j].contact_id);
            hashes[j % RING] = h;
            sim.index.prefetch(h);
        };
        let entry_round = |sim: &Self, h: u64| {
            if let Some(c) = sim.index.candidate(h).and_then(|p| sim.contacts.get(p)) {
                prefetch(c);
            }
        };
        let id_round = |sim: &Self, h: u64, ev: &Event| {
            if let Some(c) = sim.index.candidate(h).and_then(|p| sim.contacts.get(p)) {
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
        // The route's index, not the route: `self` changes before the fold.
        // (Holding the route through a clone of the definitions' `Arc` would
        // cost two locked instructions an event.)
        let Some(route) = route_event(self.engine.definitions(), ev)?.map(|r| r.idx) else {
            // Nothing listens to this name: no state for it, but time still moves.
            self.count_late(ev);
            self.advance_to(ev.occurred_at, out);
            return Ok(Folded::Unrouted);
        };
        let contacts = &self.contacts;
        let idx = match self.index.find(h, |p| {
            contacts.get(p).is_some_and(|c| *c.id == *ev.contact_id)
        }) {
            Some(i) => i,
            None => {
                // Refused before the clock moves: nothing of the event happens.
                let Some(i) = self.index.insert(h) else {
                    return Err(EventError::TooManyContacts(self.contacts.len() as u32));
                };
                self.contacts.push(Contact {
                    id: Arc::from(ev.contact_id.as_str()),
                    state: ContactState::default(),
                });
                i
            }
        };
        let late = self.clock.is_some_and(|c| ev.occurred_at < c);
        self.advance_to(ev.occurred_at, out);
        let route = self.engine.definitions().route_at(route);
        if let Some(c) = self.contacts.get(idx) {
            crate::domain::engine::check_state_limits(&c.state, ev, route)?;
        }
        self.late += u64::from(late);
        // The engine appends straight to `out`: no second copy of each transition.
        self.fx.clear();
        std::mem::swap(&mut self.fx.transitions, out);
        let Some(Contact { id, state: st }) = self.contacts.get_mut(idx) else {
            unreachable!("the index names only listed contacts")
        };
        let folded = self
            .engine
            .on_routed_event(id, st, ev, route, &mut self.pools, &mut self.fx);
        std::mem::swap(&mut self.fx.transitions, out);
        self.apply_timers(idx);
        if let Some(now) = self.clock {
            self.fire_due(now, out);
        }
        Ok(folded)
    }

    fn count_late(&mut self, ev: &Event) {
        self.late += u64::from(self.clock.is_some_and(|c| ev.occurred_at < c));
    }

    /// Moves the clock to `t` (never back), firing every timer due by then in
    /// order, each at its own expiry.
    pub fn advance_to(&mut self, t: Timestamp, out: &mut Vec<Transition>) {
        self.fire_due(t, out);
        self.clock = Some(self.clock.map_or(t, |c| c.max(t)));
    }

    fn fire_due(&mut self, t: Timestamp, out: &mut Vec<Transition>) {
        while let Some((at, first)) = self.timers.pop_due(t) {
            let Some(second) = self.timers.pop_same(at) else {
                self.fire(at, first, out);
                continue;
            };
            // Ties: mostly one contact's waits in several conversations,
            // which the wheel already has in order; otherwise the ids decide.
            let mut ties = std::mem::take(&mut self.ties);
            ties.push(first);
            ties.push(second);
            while let Some(k) = self.timers.pop_same(at) {
                ties.push(k);
            }
            if ties.iter().any(|k| k.0 != first.0) {
                let contacts = &self.contacts;
                ties.sort_unstable_by(|a, b| {
                    let id = |k: &TimerKey| contacts.get(k.0).map(|c| &*c.id);
                    let by_id = if a.0 == b.0 {
                        std::cmp::Ordering::Equal
                    } else {
                        id(a).cmp(&id(b))
                    };
                    by_id.then((a.1, a.2).cmp(&(b.1, b.2)))
                });
            }
            // Firing sets waits only after `at`: none of them joins these.
            for k in ties.drain(..) {
                self.fire(at, k, out);
            }
            self.ties = ties;
        }
    }

    /// Fires one wait due at `at`.
    fn fire(&mut self, at: Timestamp, (contact, conv, entry): TimerKey, out: &mut Vec<Transition>) {
        // Waits due together belong to contacts last touched long ago: start
        // loading a coming one's state while this one fires, in two steps as
        // the key names only the contact's position. First the lines that
        // tell whether the wait still stands (about half the fired waits
        // were cancelled by a re-entry and change nothing) and the one holding
        // the id's pointer; then, for a wait that stands, the rest of the
        // contact and the id (the transitions clone it).
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
        let now = self.clock.map_or(at, |c| c.max(at));
        self.clock = Some(now);
        self.fx.clear();
        std::mem::swap(&mut self.fx.transitions, out);
        let Some(Contact { id, state: st }) = self.contacts.get_mut(contact) else {
            unreachable!("waits name only listed contacts")
        };
        self.engine
            .on_timer(id, st, conv, entry, at, now, &mut self.pools, &mut self.fx);
        std::mem::swap(&mut self.fx.transitions, out);
        self.apply_timers(contact);
    }

    fn apply_timers(&mut self, contact: u32) {
        for tc in self.fx.timers.drain(..) {
            if let TimerChange::Set {
                conversation,
                entry,
                at,
            } = tc
            {
                self.timers.insert(at, (contact, conversation, entry));
            }
        }
    }
}
