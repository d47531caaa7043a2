//! The conversation state machine. Pure: it reads the definitions, one contact's
//! state and the coupon pools, and reports what happened as [`Effects`].
//!
//! The caller's loop, implemented once in [`super::driver`]:
//! 1. keep a partition clock (the highest event time seen);
//! 2. before folding an event stamped `t`, fire every timer due at or before `t`
//!    through [`Engine::on_timer`], in (expiry, contact, conversation, entry) order;
//! 3. fold the event with [`Engine::on_event`];
//! 4. apply the returned [`TimerChange`]s to its timer store and publish the
//!    transitions; a timer already due (a late event) fires at once, at the clock.

use std::sync::Arc;

use super::coupon::{CouponPools, Take};
use super::definition::{
    CapOutcome, ConvIdx, Conversation, Definitions, EntryPolicy, ExhaustedOutcome, Filter, Route,
    RouteIdx, StepIdx, StepKind, ThreadIdx,
};
use super::event::{Event, EventError};
use super::experiment;
use super::state::{ContactState, Entry, FieldValue, OrderStats};
use super::time::{MaybeTimestamp, Timestamp};
use super::transition::{ExitReason, HoldReason, SuppressReason, Transition, TransitionKind};
use smallvec::SmallVec;
use triomphe::ThinArc;

/// Valid definitions never run this many steps without a wait (GoTo loops without
/// a wait are rejected); the guard turns a bug into an `exited` instead of a hang.
pub const MAX_STEPS_PER_RUN: u32 = 10_000;

/// A change to the contact's pending waits, for the caller's timer store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimerChange {
    /// Fire [`Engine::on_timer`] for this entry at `at`.
    Set {
        conversation: ConvIdx,
        entry: u32,
        at: Timestamp,
    },
    /// The wait set for this entry at `at` is void. A store may delete it or
    /// let it fire: `on_timer` ignores a timer that matches no waiting entry.
    Cancel {
        conversation: ConvIdx,
        entry: u32,
        at: Timestamp,
    },
}

/// What one call produced, appended in order.
#[derive(Debug, Default)]
pub struct Effects {
    pub transitions: Vec<Transition>,
    pub timers: Vec<TimerChange>,
}

impl Effects {
    pub fn clear(&mut self) {
        self.transitions.clear();
        self.timers.clear();
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Folded {
    Applied,
    /// Same `event_id` as a recent event of the contact: nothing changed.
    Duplicate,
    /// No purchase, subscription or trigger uses the event's name: nothing changed.
    Unrouted,
    /// A [`FORGET_EVENT`](super::definition::FORGET_EVENT): the contact's
    /// state is cleared; its holder deletes it.
    Forgotten,
}

#[derive(Debug, Clone)]
pub struct Engine {
    defs: Arc<Definitions>,
}

impl Engine {
    pub fn new(defs: Arc<Definitions>) -> Self {
        Engine { defs }
    }

    pub fn definitions(&self) -> &Arc<Definitions> {
        &self.defs
    }

    /// Refuses an event that cannot be folded, before it touches any state;
    /// `None` when its name means nothing to the definitions.
    pub fn check_event(&self, ev: &Event) -> Result<Option<&Route>, EventError> {
        route_event(&self.defs, ev)
    }

    /// Folds one event into the contact's state. Transitions it causes are
    /// stamped with the event's own time, even when it arrives late.
    pub fn on_event(
        &self,
        contact: &Arc<str>,
        st: &mut ContactState,
        ev: &Event,
        pools: &mut CouponPools,
        fx: &mut Effects,
    ) -> Result<Folded, EventError> {
        match self.check_event(ev)? {
            Some(route) => Ok(self.on_routed_event(contact, st, ev, route, pools, fx)),
            None => Ok(Folded::Unrouted),
        }
    }

    /// [`Engine::on_event`] for an event [`Engine::check_event`] already
    /// accepted and routed.
    pub fn on_routed_event(
        &self,
        contact: &Arc<str>,
        st: &mut ContactState,
        ev: &Event,
        route: &Route,
        pools: &mut CouponPools,
        fx: &mut Effects,
    ) -> Folded {
        if route.forget {
            return self.forget(contact, st, ev.occurred_at, fx);
        }
        if !st.remember_event(&ev.event_id) {
            return Folded::Duplicate;
        }
        let at = ev.occurred_at;
        if route.purchase {
            st.add_order(at, ev.merchant_id.as_deref(), ev.total_cents.unwrap_or(0));
        }
        if let (Some(subscribed), Some(list)) = (route.subscription, &ev.list_id) {
            st.set_subscription(list, subscribed, at);
        }
        // Before exits and triggers: the entry an event starts sees them.
        if !ev.attributes.is_empty() {
            st.set_attributes(&ev.attributes, at);
        }
        // Exits first: an event that ends one conversation's entries and
        // starts another's does both, in that order.
        for &(ci, thread) in &route.exits {
            let mut run = Run {
                engine: self,
                conv: &self.defs.conversations[ci as usize],
                ci,
                contact,
                st,
                pools,
                fx,
            };
            run.exit(thread, at, route.idx);
        }
        // Made once, when the first entry needs it, and shared by every conversation's.
        let mut event_id: Option<Arc<str>> = None;
        for &(ci, thread) in &route.triggers {
            let mut run = Run {
                engine: self,
                conv: &self.defs.conversations[ci as usize],
                ci,
                contact,
                st,
                pools,
                fx,
            };
            run.trigger(thread, ev, route.idx, &mut event_id);
        }
        Folded::Applied
    }

    /// Erases the contact: every wait cancelled, one `forgotten` transition
    /// per conversation it has state in (at `at`, numbered after its last
    /// entry), then the state cleared. Nothing of it stays to recognise a
    /// repeated forget event by: applied again, it finds an empty state and
    /// makes nothing.
    fn forget(
        &self,
        contact: &Arc<str>,
        st: &mut ContactState,
        at: Timestamp,
        fx: &mut Effects,
    ) -> Folded {
        for cs in &st.conversations {
            for e in &cs.active {
                if let Some(w) = e.waiting_until.get() {
                    fx.timers.push(TimerChange::Cancel {
                        conversation: cs.conversation,
                        entry: e.seq,
                        at: w,
                    });
                }
            }
            if cs.entries_started == 0 {
                continue;
            }
            let last = cs.active.iter().max_by_key(|e| e.seq);
            fx.transitions.push(Transition {
                // After every transition the entry can make (their ids stay unique).
                seq: u32::MAX,
                conversation: cs.conversation,
                contact: Arc::clone(contact),
                at,
                entry: cs.entries_started,
                thread: last.map_or(0, |e| e.thread),
                step: last.map(|e| e.step),
                kind: TransitionKind::Forgotten,
            });
        }
        *st = ContactState::default();
        Folded::Forgotten
    }

    /// Fires the wait of `entry` that expires at `expires_at`, at instant `now`
    /// (`now >= expires_at`; later only when the timer was set already overdue).
    /// Returns false, changing nothing, for a timer that no longer matches a
    /// waiting entry (it was cancelled by a re-entry).
    #[allow(clippy::too_many_arguments)]
    pub fn on_timer(
        &self,
        contact: &Arc<str>,
        st: &mut ContactState,
        conversation: ConvIdx,
        entry: u32,
        expires_at: Timestamp,
        now: Timestamp,
        pools: &mut CouponPools,
        fx: &mut Effects,
    ) -> bool {
        let Some(cs) = st
            .conversations
            .iter_mut()
            .find(|c| c.conversation == conversation)
        else {
            return false;
        };
        let Some(pos) = cs
            .active
            .iter()
            .position(|e| e.seq == entry && e.waiting_until.get() == Some(expires_at))
        else {
            return false;
        };
        let mut e = cs.active.remove(pos);
        e.waiting_until = MaybeTimestamp::NONE;
        let conv = &self.defs.conversations[conversation as usize];
        // A wait goes on to the next step (inside its window, if it has
        // one); a held message step runs again.
        let next = match conv.steps[e.step as usize].kind {
            StepKind::Message { .. } => Some(e.step),
            _ => conv.next_in_thread(e.step),
        };
        let pos = Some(e.step);
        let mut run = Run {
            engine: self,
            conv,
            ci: conversation,
            contact,
            st,
            pools,
            fx,
        };
        let kept = match run.wait_window_opens(e.step, now) {
            Some(open) => Some(run.hold(e, now, pos, open, HoldReason::SendWindow)),
            None => run.run(e, pos, next, now),
        };
        if let Some(e) = kept {
            st.insert_entry(conversation, self.defs.conversations.len(), e);
        }
        true
    }
}

/// Refuses an event whose folding would grow the contact's state past its
/// bounds (a subscription to one list more than
/// [`MAX_LISTS_PER_CONTACT`](super::event::MAX_LISTS_PER_CONTACT)).
pub fn check_state_limits(st: &ContactState, ev: &Event, route: &Route) -> Result<(), EventError> {
    if route.subscription.is_some()
        && let Some(list) = ev.list_id.as_deref()
        && st.subscriptions.len() >= super::event::MAX_LISTS_PER_CONTACT
        && st.subscription(list).is_none()
    {
        return Err(EventError::TooManyLists(st.subscriptions.len()));
    }
    // Only with attributes: the fields are a pointer away, and most events
    // carry none.
    if !ev.attributes.is_empty() {
        let fields = st.fields.as_slice().len();
        let added = ev
            .attributes
            .iter()
            .filter(|(k, _)| st.fields.get(k).is_none())
            .count();
        if added > 0 && fields + added > super::event::MAX_FIELDS_PER_CONTACT {
            return Err(EventError::TooManyFields(fields));
        }
    }
    Ok(())
}

/// [`Engine::check_event`] against definitions held by the caller.
pub fn route_event<'a>(defs: &'a Definitions, ev: &Event) -> Result<Option<&'a Route>, EventError> {
    ev.check_shape()?;
    if let Some((k, _)) = ev.attributes.iter().find(|(k, _)| defs.is_coupon_field(k)) {
        return Err(EventError::CouponFieldAttribute(k.clone()));
    }
    let route = defs.route(&ev.name);
    if route.is_some_and(|r| r.subscription.is_some())
        && ev.list_id.as_deref().is_none_or(str::is_empty)
    {
        return Err(EventError::MissingListId {
            name: ev.name.clone(),
        });
    }
    Ok(route)
}

/// Whether every condition of the filter holds for the contact at `now`.
pub fn filter_matches(f: &Filter, st: &ContactState, now: Timestamp) -> bool {
    let none = OrderStats::default();
    let orders = match &f.merchant {
        Some(m) => st.merchant_orders(m).unwrap_or(&none),
        None => &st.orders,
    };
    let last = orders.last_order_at.get();
    if let Some(off) = f.last_order_before
        && last.is_none_or(|l| l >= now.saturating_sub(off))
    {
        return false;
    }
    if let Some(off) = f.last_order_after
        && last.is_none_or(|l| l < now.saturating_sub(off))
    {
        return false;
    }
    if f.min_orders.is_some_and(|m| u64::from(orders.count) < m)
        || f.max_orders.is_some_and(|m| u64::from(orders.count) > m)
    {
        return false;
    }
    if f.min_total_cents.is_some_and(|m| orders.total_cents < m)
        || f.max_total_cents.is_some_and(|m| orders.total_cents > m)
    {
        return false;
    }
    if let Some(list) = &f.subscribed_to
        && !st.subscription(list).is_some_and(|s| s.subscribed)
    {
        return false;
    }
    f.profile.iter().all(|(name, test)| {
        let value = st.fields.get(name).map(ToString::to_string);
        test.holds(value.as_deref())
    })
}

/// One conversation's view of one contact while steps execute.
struct Run<'a> {
    engine: &'a Engine,
    conv: &'a Conversation,
    ci: ConvIdx,
    contact: &'a Arc<str>,
    st: &'a mut ContactState,
    pools: &'a mut CouponPools,
    fx: &'a mut Effects,
}

impl Run<'_> {
    fn emit(&mut self, e: &mut Entry, at: Timestamp, step: Option<StepIdx>, kind: TransitionKind) {
        let thread = match step {
            Some(s) => self.conv.steps[s as usize].thread,
            None => e.thread,
        };
        self.fx.transitions.push(Transition {
            seq: e.transitions,
            conversation: self.ci,
            contact: self.contact.clone(),
            at,
            entry: e.seq,
            thread,
            step,
            kind,
        });
        e.transitions += 1;
    }

    fn cancel_timer(&mut self, e: &Entry) {
        if let Some(at) = e.waiting_until.get() {
            self.fx.timers.push(TimerChange::Cancel {
                conversation: self.ci,
                entry: e.seq,
                at,
            });
        }
    }

    /// When step `s` is a wait with a send window that is shut at `at`: when
    /// it opens, in the contact's zone.
    fn wait_window_opens(&self, s: StepIdx, at: Timestamp) -> Option<Timestamp> {
        let step = &self.conv.steps[s as usize];
        if !matches!(step.kind, StepKind::Wait(_) | StepKind::CadenceWait(_)) {
            return None;
        }
        let open = step.window.as_ref()?.next_open(self.zone(), at)?;
        (open > at).then_some(open)
    }

    /// Holds the entry at its step until `until`: a message step then runs
    /// again, a wait then ends (see [`Engine::on_timer`]).
    fn hold(
        &mut self,
        mut e: Entry,
        at: Timestamp,
        pos: Option<StepIdx>,
        until: Timestamp,
        reason: HoldReason,
    ) -> Entry {
        e.waiting_until = until.into();
        self.emit(&mut e, at, pos, TransitionKind::Held { until, reason });
        self.fx.timers.push(TimerChange::Set {
            conversation: self.ci,
            entry: e.seq,
            at: until,
        });
        e
    }

    /// With a frequency cap that the contact reached: when it allows the
    /// next message (its oldest counted send plus the cap's span).
    fn capped_until(&self, at: Timestamp) -> Option<Timestamp> {
        let cap = self.engine.defs.frequency_cap?;
        let sends = self.st.fields.sends();
        let n = cap.messages as usize;
        // The n-th latest send: within the span, the cap is reached.
        let nth = sends.len().checked_sub(n).map(|i| sends[i])?;
        let until = nth.saturating_add(cap.per);
        (until > at).then_some(until)
    }

    /// Keeps a send's instant for the frequency cap (the last `messages`).
    fn log_send(&mut self, at: Timestamp) {
        let Some(cap) = self.engine.defs.frequency_cap else {
            return;
        };
        let mut log: Vec<Timestamp> = self.st.fields.sends().to_vec();
        log.push(at);
        log.sort();
        let keep = log.len().saturating_sub(cap.messages as usize);
        log.drain(..keep);
        self.st.fields = self
            .st
            .fields
            .with_sends(Some(ThinArc::from_header_and_iter((), log.into_iter())));
    }

    /// Whether the contact is in the conversation's holdout.
    fn held_out(&self) -> bool {
        self.conv.holdout > 0.0
            && experiment::within(
                experiment::draw(
                    &self.conv.experiment_salt,
                    &self.conv.name,
                    experiment::Scope::Holdout,
                    self.contact,
                ),
                self.conv.holdout,
            )
    }

    /// The contact's time zone: its profile field, else the conversation's.
    fn zone(&self) -> chrono_tz::Tz {
        self.st
            .fields
            .get(&self.conv.time_zone_field)
            .and_then(|v| v.to_string().trim().parse().ok())
            .unwrap_or(self.conv.time_zone)
    }

    /// Ends, at `at`, the conversation's entries (those in `thread` only,
    /// when given) that started at or before `at`: an exit event stamped
    /// before an entry began (arriving late) is not about that entry.
    fn exit(&mut self, thread: Option<ThreadIdx>, at: Timestamp, event: RouteIdx) {
        let Some(pos) = self
            .st
            .conversations
            .iter()
            .position(|c| c.conversation == self.ci)
        else {
            return;
        };
        let mut i = 0;
        while i < self.st.conversations[pos].active.len() {
            let e = &self.st.conversations[pos].active[i];
            let in_thread = self
                .conv
                .steps
                .get(e.step as usize)
                .map_or(e.thread, |s| s.thread);
            if e.started_at > at || thread.is_some_and(|t| t != in_thread) {
                i += 1;
                continue;
            }
            let mut e = self.st.conversations[pos].active.remove(i);
            self.cancel_timer(&e);
            let step = Some(e.step);
            self.emit(
                &mut e,
                at,
                step,
                TransitionKind::Exited {
                    reason: ExitReason::ExitEvent(event),
                },
            );
        }
    }

    fn trigger(
        &mut self,
        thread: ThreadIdx,
        ev: &Event,
        event: RouteIdx,
        event_id: &mut Option<Arc<str>>,
    ) {
        let at = ev.occurred_at;
        let policy = self.conv.entry;
        let at_conv = self
            .st
            .conversation_pos(self.ci, self.engine.defs.conversations.len());
        let cs = &mut self.st.conversations[at_conv];
        let seq = cs.entries_started + 1;
        let mut replaced: Option<Entry> = None;
        let mut evicted: Option<Entry> = None;
        match policy {
            EntryPolicy::Once => {
                if cs.entries_started > 0 {
                    return;
                }
            }
            EntryPolicy::Restart => {
                if let Some(cur) = cs.active.first() {
                    // An older trigger arriving late is not a repeat purchase: the
                    // running entry already started from a later one.
                    if at < cur.started_at {
                        return;
                    }
                    replaced = Some(cs.active.remove(0));
                }
            }
            EntryPolicy::Parallel { max } => {
                if cs.active.len() >= max as usize {
                    evicted = Some(cs.active.remove(0));
                }
            }
        }
        cs.entries_started = seq;
        if let Some(mut old) = evicted {
            self.cancel_timer(&old);
            let step = Some(old.step);
            self.emit(
                &mut old,
                at,
                step,
                TransitionKind::Exited {
                    reason: ExitReason::EntryLimit,
                },
            );
        }
        let mut e = Entry {
            seq,
            thread,
            step: 0,
            started_at: at,
            waiting_until: MaybeTimestamp::NONE,
            transitions: 0,
        };
        let event_id = event_id
            .get_or_insert_with(|| Arc::from(ev.event_id.as_str()))
            .clone();
        let kind = match replaced {
            Some(old) => {
                self.cancel_timer(&old);
                TransitionKind::Reentered {
                    event_id: event_id.clone(),
                    event,
                    previous_entry: old.seq,
                    left_step: old.step,
                }
            }
            None => TransitionKind::Entered {
                event_id: event_id.clone(),
                event,
            },
        };
        self.emit(&mut e, at, None, kind);
        let t = &self.conv.threads[thread as usize];
        let first = (t.first_step < t.end_step).then_some(t.first_step);
        if let Some(e) = self.run(e, None, first, at) {
            // The newest entry: last in `seq` order. Steps do not add
            // conversations, so the state is where it was.
            let active = &mut self.st.conversations[at_conv].active;
            debug_assert!(active.last().is_none_or(|x| x.seq < e.seq));
            active.push(e);
        }
    }

    /// Executes steps from `next` until the entry waits (returned, to be stored)
    /// or exits (`None`). `pos` is the step the entry is at (`None`: its trigger).
    fn run(
        &mut self,
        mut e: Entry,
        mut pos: Option<StepIdx>,
        mut next: Option<StepIdx>,
        at: Timestamp,
    ) -> Option<Entry> {
        let mut budget = MAX_STEPS_PER_RUN;
        loop {
            let Some(s) = next else {
                self.emit(
                    &mut e,
                    at,
                    pos,
                    TransitionKind::Exited {
                        reason: ExitReason::EndOfThread,
                    },
                );
                return None;
            };
            if budget == 0 {
                self.emit(
                    &mut e,
                    at,
                    Some(s),
                    TransitionKind::Exited {
                        reason: ExitReason::StepLimit,
                    },
                );
                return None;
            }
            budget -= 1;
            pos = Some(s);
            e.step = s;
            e.thread = self.conv.steps[s as usize].thread;
            next = self.conv.next_in_thread(s);
            match &self.conv.steps[s as usize].kind {
                StepKind::Wait(d) if d.0 == 0 => {
                    // No Wait, but only inside its window.
                    if let Some(open) = self.wait_window_opens(s, at) {
                        return Some(self.hold(e, at, pos, open, HoldReason::SendWindow));
                    }
                }
                StepKind::Wait(_) | StepKind::CadenceWait(_) => {
                    let d = match &self.conv.steps[s as usize].kind {
                        StepKind::CadenceWait(c) => c.duration(&self.st.orders),
                        StepKind::Wait(d) => *d,
                        _ => unreachable!("matched a wait"),
                    };
                    let expires_at = at.saturating_add(d);
                    e.waiting_until = expires_at.into();
                    self.emit(&mut e, at, pos, TransitionKind::WaitStarted { expires_at });
                    self.fx.timers.push(TimerChange::Set {
                        conversation: self.ci,
                        entry: e.seq,
                        at: expires_at,
                    });
                    return Some(e);
                }
                StepKind::Split { branches } => {
                    let weights: SmallVec<[u32; 4]> = branches.iter().map(|b| b.weight).collect();
                    let step_id = &self.conv.steps[s as usize].id;
                    let d = experiment::draw(
                        &self.conv.experiment_salt,
                        &self.conv.name,
                        experiment::Scope::Split(step_id),
                        self.contact,
                    );
                    let branch = experiment::pick(d, &weights);
                    self.emit(
                        &mut e,
                        at,
                        pos,
                        TransitionKind::Split {
                            branch: branch as u16,
                        },
                    );
                    next = Some(branches[branch].target);
                }
                StepKind::Goto { target, filter } => {
                    let taken = filter
                        .as_ref()
                        .is_none_or(|f| filter_matches(f, self.st, at));
                    self.emit(&mut e, at, pos, TransitionKind::Goto { taken });
                    if taken {
                        next = Some(*target);
                    }
                }
                StepKind::SetCouponCode {
                    pool,
                    field,
                    expiration_field,
                    valid_for,
                    when_exhausted,
                } => match self.pools.take(*pool) {
                    Take::Code { code, low } => {
                        let expires_at =
                            valid_for
                                .map(|d| at.saturating_add(d))
                                .or(self.engine.defs.pools[*pool as usize].expires_at);
                        let code_field = (field, FieldValue::Text(code.clone()));
                        match (expiration_field, expires_at) {
                            (Some(f), Some(x)) => {
                                self.st.fields.set([code_field, (f, FieldValue::Time(x))])
                            }
                            _ => self.st.fields.set([code_field]),
                        }
                        self.emit(
                            &mut e,
                            at,
                            pos,
                            TransitionKind::CouponAssigned { code, expires_at },
                        );
                        if let Some(remaining) = low {
                            self.emit(&mut e, at, pos, TransitionKind::CouponPoolLow { remaining });
                        }
                    }
                    Take::Exhausted => {
                        self.emit(&mut e, at, pos, TransitionKind::CouponPoolExhausted);
                        if *when_exhausted == ExhaustedOutcome::Exit {
                            self.emit(
                                &mut e,
                                at,
                                pos,
                                TransitionKind::Exited {
                                    reason: ExitReason::CouponPoolExhausted,
                                },
                            );
                            return None;
                        }
                    }
                },
                StepKind::Message {
                    window,
                    when_capped,
                    ..
                } => {
                    let gate =
                        self.conv
                            .list
                            .as_deref()
                            .map(|list| match self.st.subscription(list) {
                                Some(s) if s.subscribed => None,
                                Some(_) => Some(SuppressReason::Unsubscribed),
                                None => Some(SuppressReason::NotSubscribed),
                            });
                    let kind = match gate.flatten() {
                        None => {
                            // Outside the contact's sending hours: wait at this
                            // step, which runs again when the window opens.
                            if let Some(w) = window
                                && let Some(open) = w.next_open(self.zone(), at)
                                && open > at
                            {
                                return Some(self.hold(e, at, pos, open, HoldReason::SendWindow));
                            }
                            match self.capped_until(at) {
                                Some(until) if *when_capped == CapOutcome::Wait => {
                                    return Some(self.hold(
                                        e,
                                        at,
                                        pos,
                                        until,
                                        HoldReason::FrequencyCap,
                                    ));
                                }
                                Some(_) => TransitionKind::Suppressed {
                                    reason: SuppressReason::FrequencyCap,
                                },
                                None if self.held_out() => TransitionKind::HeldOut,
                                None => {
                                    self.log_send(at);
                                    TransitionKind::Send {
                                        fields: self.st.fields.clone(),
                                    }
                                }
                            }
                        }
                        Some(reason) => TransitionKind::Suppressed { reason },
                    };
                    self.emit(&mut e, at, pos, kind);
                }
            }
        }
    }
}
