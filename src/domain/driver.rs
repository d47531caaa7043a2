//! The engine's caller protocol, once: the one loop `simulate` and `run`
//! both use, generic over where contacts and pending waits live
//! ([`Holdings`]: memory for [`crate::sim::Simulator`], the store for
//! [`crate::runtime::partition::Partition`]). Pure like the engine: a holding
//! may read a disk, but the protocol reads no clock and orders nothing by
//! arrival, so live and offline cannot drift apart.
//!
//! The protocol (see [`crate::domain::engine`]):
//! 1. the clock is the highest instant seen, never moved back;
//! 2. before an event stamped `t` is folded, every wait due at or before `t`
//!    fires, in (expiry, contact id, conversation, entry) order, each at its
//!    own expiry;
//! 3. the event is folded, its timer changes are applied;
//! 4. a wait the fold made due already (a late event's) fires at once.

use std::cmp::Ordering;
use std::sync::Arc;

use super::coupon::CouponPools;
use super::definition::{ConvIdx, Definitions};
use super::engine::{Effects, Engine, Folded, TimerChange, check_state_limits, route_event};
use super::event::{Event, EventError};
use super::state::ContactState;
use super::time::Timestamp;
use super::transition::Transition;

/// A pending wait: (contact, conversation, entry).
pub type Wait<C> = (C, ConvIdx, u32);

/// What [`Holdings::next_due`] found.
pub enum Due<C> {
    /// The earliest wait due; waits due at the same instant follow through
    /// [`Holdings::pop_same`].
    At(Timestamp, Wait<C>),
    /// Nothing is due.
    Nothing,
    /// Whether anything is due is not known without loading more waits,
    /// which the caller did not allow (its budget is spent).
    Unknown,
}

/// Where a driver keeps contacts and pending waits.
pub trait Holdings {
    /// How a wait names its contact.
    type Contact: Clone;
    /// What the caller already knows of a contact id (the simulator's
    /// index hash, computed ahead to prefetch).
    type Hint: Copy;
    type Error: From<EventError>;

    /// The contact with this id, made known if new. May refuse it (a limit):
    /// the clock has not moved yet, nothing of the event happens.
    fn resolve(&mut self, id: &str, hint: Self::Hint) -> Result<Self::Contact, Self::Error>;

    /// Runs `f` on a contact's id and state; `f` says whether it changed the
    /// state.
    fn with_contact<R>(
        &mut self,
        c: &Self::Contact,
        f: impl FnOnce(&Arc<str>, &mut ContactState) -> (R, bool),
    ) -> Result<R, Self::Error>;

    /// Orders two contacts by id (ties at one instant fire in that order).
    fn cmp_contacts(&self, a: &Self::Contact, b: &Self::Contact) -> Ordering;

    /// Takes the earliest wait due at or before `t`; may load waits first
    /// only if `may_load`.
    fn next_due(&mut self, t: Timestamp, may_load: bool)
    -> Result<Due<Self::Contact>, Self::Error>;

    /// Takes the next wait due at exactly `at`, right after
    /// [`Holdings::next_due`] returned one at `at`.
    fn pop_same(&mut self, at: Timestamp) -> Option<Wait<Self::Contact>>;

    /// Puts back a wait taken but not fired (the budget ran out).
    fn put_back(&mut self, at: Timestamp, w: Wait<Self::Contact>);

    /// A wait taken is about to fire (it is no longer pending).
    fn firing(&mut self, _at: Timestamp, _w: &Wait<Self::Contact>) {}

    fn set_wait(&mut self, at: Timestamp, w: Wait<Self::Contact>);

    /// A wait set earlier is void. It may stay and fire: the engine ignores
    /// a wait that matches no waiting entry.
    fn cancel_wait(&mut self, at: Timestamp, w: Wait<Self::Contact>);

    /// The contact was forgotten: its state is empty now (its waits were
    /// cancelled first). A store deletes it rather than keep an empty state.
    fn forget(&mut self, _c: &Self::Contact) {}
}

/// What feeding one event did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fed {
    Folded(Folded),
    /// The waits due before the event used up the timer budget: the event is
    /// not folded yet; feed it again.
    Paused,
}

/// The protocol's own state: the engine, the coupon pools, the clock.
pub struct Driver<C> {
    engine: Engine,
    pools: CouponPools,
    clock: Option<Timestamp>,
    fx: Effects,
    /// Waits due at one instant, while they are ordered: kept for its buffer.
    ties: Vec<Wait<C>>,
    /// Events folded with an `occurred_at` before the clock.
    late: u64,
}

impl<C: Clone> Driver<C> {
    pub fn new(defs: Arc<Definitions>, pools: CouponPools, clock: Option<Timestamp>) -> Self {
        Driver {
            engine: Engine::new(defs),
            pools,
            clock,
            fx: Effects::default(),
            ties: Vec::new(),
            late: 0,
        }
    }

    pub fn definitions(&self) -> &Arc<Definitions> {
        self.engine.definitions()
    }

    pub fn pools(&self) -> &CouponPools {
        &self.pools
    }

    /// The clock: the highest instant seen so far.
    pub fn clock(&self) -> Option<Timestamp> {
        self.clock
    }

    /// Events folded so far whose `occurred_at` was before the clock: late
    /// (docs/semantics.md, "Late events").
    pub fn late_events(&self) -> u64 {
        self.late
    }

    /// Folds one event: fires the waits due by its time (while `budget`, the
    /// number of waits that may still fire, lasts), folds it, then fires
    /// whatever it made due already.
    pub fn feed<H: Holdings<Contact = C>>(
        &mut self,
        h: &mut H,
        ev: &Event,
        hint: H::Hint,
        out: &mut Vec<Transition>,
        budget: &mut usize,
    ) -> Result<Fed, H::Error> {
        // The route's index, not the route: `self` changes before the fold.
        // (Holding the route through a clone of the definitions' `Arc` would
        // cost two locked instructions an event.)
        let route = route_event(self.engine.definitions(), ev)?.map(|r| r.idx);
        let late = self.clock.is_some_and(|c| ev.occurred_at < c);
        let Some(route) = route else {
            // Nothing listens to this name: no state for it, but time moves.
            if !self.advance_to(h, ev.occurred_at, out, budget)? {
                return Ok(Fed::Paused);
            }
            self.late += u64::from(late);
            return Ok(Fed::Folded(Folded::Unrouted));
        };
        let contact = h.resolve(&ev.contact_id, hint)?;
        if !self.advance_to(h, ev.occurred_at, out, budget)? {
            return Ok(Fed::Paused);
        }
        let route = self.engine.definitions().route_at(route);
        let (engine, pools, fx) = (&self.engine, &mut self.pools, &mut self.fx);
        // The engine appends straight to `out`: no second copy of each transition.
        fx.clear();
        std::mem::swap(&mut fx.transitions, out);
        let folded = h.with_contact(&contact, |id, st| {
            if let Err(e) = check_state_limits(st, ev, route) {
                return (Err(e), false);
            }
            let folded = engine.on_routed_event(id, st, ev, route, pools, fx);
            (
                Ok(folded),
                matches!(folded, Folded::Applied | Folded::Forgotten),
            )
        });
        std::mem::swap(&mut fx.transitions, out);
        let folded = folded??;
        self.late += u64::from(late);
        self.apply_timers(h, &contact);
        if folded == Folded::Forgotten {
            h.forget(&contact);
        }
        // A late event's wait may be over already: it fires at the clock.
        if let Some(now) = self.clock {
            let mut unlimited = usize::MAX;
            self.fire_due(h, now, out, &mut unlimited)?;
        }
        Ok(Fed::Folded(folded))
    }

    /// Moves the clock to `t` (never back), firing every wait due by then in
    /// order, each at its own expiry. Returns false when `budget` ran out
    /// first: the clock then stands at the last wait fired.
    pub fn advance_to<H: Holdings<Contact = C>>(
        &mut self,
        h: &mut H,
        t: Timestamp,
        out: &mut Vec<Transition>,
        budget: &mut usize,
    ) -> Result<bool, H::Error> {
        if !self.fire_due(h, t, out, budget)? {
            return Ok(false);
        }
        self.clock = Some(self.clock.map_or(t, |c| c.max(t)));
        Ok(true)
    }

    fn fire_due<H: Holdings<Contact = C>>(
        &mut self,
        h: &mut H,
        t: Timestamp,
        out: &mut Vec<Transition>,
        budget: &mut usize,
    ) -> Result<bool, H::Error> {
        loop {
            let (at, first) = match h.next_due(t, *budget > 0)? {
                Due::At(at, w) => (at, w),
                Due::Nothing => return Ok(true),
                Due::Unknown => return Ok(false),
            };
            if *budget == 0 {
                h.put_back(at, first);
                return Ok(false);
            }
            let Some(second) = h.pop_same(at) else {
                *budget -= 1;
                self.fire(h, at, first, out)?;
                continue;
            };
            // Ties: mostly one contact's waits in several conversations,
            // which come in order already; otherwise the ids decide.
            let mut ties = std::mem::take(&mut self.ties);
            ties.push(first);
            ties.push(second);
            while let Some(w) = h.pop_same(at) {
                ties.push(w);
            }
            let one_contact = ties
                .iter()
                .all(|w| h.cmp_contacts(&w.0, &ties[0].0) == Ordering::Equal);
            if !one_contact {
                ties.sort_unstable_by(|a, b| {
                    h.cmp_contacts(&a.0, &b.0).then((a.1, a.2).cmp(&(b.1, b.2)))
                });
            }
            // Firing sets waits only after `at`: none of them joins these.
            let mut fired = Ok(true);
            let mut rest = ties.drain(..);
            for w in rest.by_ref() {
                if *budget == 0 {
                    h.put_back(at, w);
                    fired = Ok(false);
                    break;
                }
                *budget -= 1;
                if let Err(e) = self.fire(h, at, w, out) {
                    fired = Err(e);
                    break;
                }
            }
            for w in rest {
                h.put_back(at, w);
            }
            self.ties = ties;
            if !fired? {
                return Ok(false);
            }
        }
    }

    /// Fires one wait due at `at`.
    fn fire<H: Holdings<Contact = C>>(
        &mut self,
        h: &mut H,
        at: Timestamp,
        w: Wait<C>,
        out: &mut Vec<Transition>,
    ) -> Result<(), H::Error> {
        h.firing(at, &w);
        let now = self.clock.map_or(at, |c| c.max(at));
        self.clock = Some(now);
        let (contact, conv, entry) = w;
        let (engine, pools, fx) = (&self.engine, &mut self.pools, &mut self.fx);
        fx.clear();
        std::mem::swap(&mut fx.transitions, out);
        let fired = h.with_contact(&contact, |id, st| {
            let fired = engine.on_timer(id, st, conv, entry, at, now, pools, fx);
            (fired, fired)
        });
        std::mem::swap(&mut fx.transitions, out);
        fired?;
        self.apply_timers(h, &contact);
        Ok(())
    }

    fn apply_timers<H: Holdings<Contact = C>>(&mut self, h: &mut H, contact: &C) {
        for tc in self.fx.timers.drain(..) {
            match tc {
                TimerChange::Set {
                    conversation,
                    entry,
                    at,
                } => h.set_wait(at, (contact.clone(), conversation, entry)),
                TimerChange::Cancel {
                    conversation,
                    entry,
                    at,
                } => h.cancel_wait(at, (contact.clone(), conversation, entry)),
            }
        }
    }
}
