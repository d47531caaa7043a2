//! Compiled, validated conversation definitions. Built only by `config::compile`,
//! which has already checked every reference, so the engine indexes without checks.

use std::collections::HashMap;

pub type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;
use std::sync::Arc;

use super::time::{Duration, Timestamp};

/// Index of a conversation in [`Definitions::conversations`].
pub type ConvIdx = u16;
/// An event name's route; event names are few (each one a config entry).
pub type RouteIdx = u32;
/// Index of a thread in [`Conversation::threads`].
pub type ThreadIdx = u16;
/// Index of a step in [`Conversation::steps`] (steps of all threads, in definition order).
pub type StepIdx = u32;
/// Index of a pool in [`Definitions::pools`].
pub type PoolIdx = u32;

#[derive(Debug, Clone)]
pub struct Definitions {
    pub conversations: Vec<Conversation>,
    pub pools: Vec<PoolDef>,
    /// At most this many messages per contact over all conversations
    /// (`[frequency_cap]`); none when absent.
    pub frequency_cap: Option<FrequencyCap>,
    /// Union of every conversation's `purchase_events`: behaviour (last order date,
    /// order count, total spent) is kept per contact, not per conversation.
    pub purchase_events: Vec<String>,
    pub subscribe_events: Vec<String>,
    pub unsubscribe_events: Vec<String>,
    /// Derived from the fields above by [`Definitions::new`]: one look-up tells
    /// all an event name means.
    routes: Vec<Route>,
    /// Only for more than [`FEW_ROUTES`] names: below that a scan comparing
    /// lengths first costs less than hashing the name (callgrind, fold bench).
    route_index: Option<FastMap<Box<str>, usize>>,
    /// The fields Set Coupon Code steps write: no event attribute may.
    coupon_fields: Vec<Arc<str>>,
}

/// Up to this many event names are found by a scan.
const FEW_ROUTES: usize = 8;

/// What an event name means to the loaded definitions.
#[derive(Debug, Clone, Default)]
pub struct Route {
    pub name: Arc<str>,
    /// Its position in the definitions' routes: what a transition names an
    /// event by (see [`Definitions::route_name`]).
    pub idx: RouteIdx,
    pub purchase: bool,
    /// `Some(true)` subscribe, `Some(false)` unsubscribe.
    pub subscription: Option<bool>,
    /// The reserved event [`FORGET_EVENT`]: the contact is erased.
    pub forget: bool,
    /// The thread each conversation enters on this event (at most one each).
    pub triggers: Vec<(ConvIdx, ThreadIdx)>,
    /// The entries this event ends: a conversation's every entry
    /// (`exit_events` of the conversation, `None`) or those in one thread
    /// (the thread's, `Some`).
    pub exits: Vec<(ConvIdx, Option<ThreadIdx>)>,
}

/// The event that erases a contact (a privacy request): its state, waits and
/// history go, one `forgotten` transition per conversation it was in says so.
/// Reserved: no definition may use the name for anything else.
pub const FORGET_EVENT: &str = "forget";

impl Definitions {
    pub fn new(
        conversations: Vec<Conversation>,
        pools: Vec<PoolDef>,
        purchase_events: Vec<String>,
        subscribe_events: Vec<String>,
        unsubscribe_events: Vec<String>,
    ) -> Self {
        let mut routes: FastMap<Box<str>, Route> = FastMap::default();
        fn route<'a>(routes: &'a mut FastMap<Box<str>, Route>, name: &str) -> &'a mut Route {
            routes.entry(name.into()).or_insert_with(|| Route {
                name: name.into(),
                ..Route::default()
            })
        }
        route(&mut routes, FORGET_EVENT).forget = true;
        for n in &purchase_events {
            route(&mut routes, n).purchase = true;
        }
        for n in &subscribe_events {
            route(&mut routes, n).subscription = Some(true);
        }
        for n in &unsubscribe_events {
            route(&mut routes, n).subscription = Some(false);
        }
        for (ci, c) in conversations.iter().enumerate() {
            let mut names: Vec<(&String, &ThreadIdx)> = c.triggers.iter().collect();
            names.sort();
            for (name, &thread) in names {
                route(&mut routes, name)
                    .triggers
                    .push((ci as ConvIdx, thread));
            }
        }
        for c in &conversations {
            for name in &c.profile_events {
                route(&mut routes, name);
            }
        }
        let mut coupon_fields: Vec<Arc<str>> = conversations
            .iter()
            .flat_map(|c| c.steps.iter())
            .flat_map(|s| match &s.kind {
                StepKind::SetCouponCode {
                    field,
                    expiration_field,
                    ..
                } => vec![Some(Arc::clone(field)), expiration_field.clone()],
                _ => Vec::new(),
            })
            .flatten()
            .collect();
        coupon_fields.sort();
        coupon_fields.dedup();
        for (ci, c) in conversations.iter().enumerate() {
            for name in &c.exit_events {
                route(&mut routes, name).exits.push((ci as ConvIdx, None));
            }
            for (ti, t) in c.threads.iter().enumerate() {
                for name in &t.exit_events {
                    route(&mut routes, name)
                        .exits
                        .push((ci as ConvIdx, Some(ti as ThreadIdx)));
                }
            }
        }
        // In name order, so that nothing depends on the map's random order.
        let mut routes: Vec<Route> = routes.into_values().collect();
        routes.sort_by(|a, b| a.name.cmp(&b.name));
        for (i, r) in routes.iter_mut().enumerate() {
            r.idx = i as RouteIdx;
        }
        let route_index = (routes.len() > FEW_ROUTES).then(|| {
            routes
                .iter()
                .enumerate()
                .map(|(i, r)| (Box::from(&*r.name), i))
                .collect()
        });
        Definitions {
            conversations,
            pools,
            purchase_events,
            subscribe_events,
            unsubscribe_events,
            routes,
            route_index,
            coupon_fields,
            frequency_cap: None,
        }
    }

    /// Whether a Set Coupon Code step writes the field `name`.
    pub fn is_coupon_field(&self, name: &str) -> bool {
        self.coupon_fields.iter().any(|f| **f == *name)
    }

    /// The route at `idx` (a [`Route::idx`]).
    pub fn route_at(&self, idx: RouteIdx) -> &Route {
        &self.routes[idx as usize]
    }

    /// The event name of the route at `idx` (a [`Route::idx`]).
    pub fn route_name(&self, idx: RouteIdx) -> &str {
        &self.route_at(idx).name
    }

    pub fn route(&self, event_name: &str) -> Option<&Route> {
        match &self.route_index {
            Some(index) => index.get(event_name).map(|&i| &self.routes[i]),
            None => self.routes.iter().find(|r| *r.name == *event_name),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryPolicy {
    /// `allow_unlimited_entries = false`: at most one entry per contact, ever.
    Once,
    /// A new trigger pulls the contact out of its current entry and starts again.
    Restart,
    /// Entries run side by side; beyond `max` the oldest is exited.
    Parallel { max: u32 },
}

#[derive(Debug, Clone)]
pub struct Conversation {
    pub name: Arc<str>,
    /// [`crate::domain::transition::conversation_salt`] of the name.
    pub id_salt: u128,
    pub campaign: Option<String>,
    /// When set, a message goes only to contacts whose latest subscription event
    /// for this list says subscribed.
    pub list: Option<Box<str>>,
    pub entry: EntryPolicy,
    pub threads: Vec<Thread>,
    pub steps: Vec<Step>,
    /// Event name → the thread it enters: the lowest rank, ties by definition order.
    pub triggers: HashMap<String, ThreadIdx>,
    /// Events that end every entry of the conversation (`exit_events`).
    pub exit_events: Vec<String>,
    /// Events that only set profile attributes (`profile_events`).
    pub profile_events: Vec<String>,
    /// The zone of a contact whose profile names none (`time_zone`).
    pub time_zone: chrono_tz::Tz,
    /// The profile field that names a contact's zone (`time_zone_field`).
    pub time_zone_field: Arc<str>,
    /// The share (0 to 1) of contacts whose messages are held out.
    pub holdout: f64,
    /// Salts the holdout's and split steps' draws (`experiment_salt`).
    pub experiment_salt: Arc<str>,
    /// A purchase this long after a message (or a held-out one) converts it,
    /// in the `simulate` and `reprocess` reports.
    pub attribution_window: Duration,
}

#[derive(Debug, Clone)]
pub struct Thread {
    pub name: Arc<str>,
    pub rank: u32,
    /// Empty for "No Events Required": entered only through a GoTo.
    pub events: Vec<String>,
    /// The thread's steps are `first_step..end_step`.
    pub first_step: StepIdx,
    pub end_step: StepIdx,
    /// Events that end an entry while it is in this thread (`exit_events`).
    pub exit_events: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct Step {
    pub id: Arc<str>,
    pub thread: ThreadIdx,
    pub kind: StepKind,
    /// A wait step's `send_window`: the wait ends only inside it (in the
    /// contact's zone), else the entry is held at the wait until it opens.
    /// A message step's window is in [`StepKind::Message`].
    pub window: Option<super::window::SendWindow>,
}

#[derive(Debug, Clone)]
pub enum StepKind {
    Wait(Duration),
    /// A wait as long as the contact's own cadence (see [`Cadence`]).
    CadenceWait(Cadence),
    Goto {
        target: StepIdx,
        filter: Option<Filter>,
    },
    SetCouponCode {
        pool: PoolIdx,
        field: Arc<str>,
        expiration_field: Option<Arc<str>>,
        /// Expiration = assignment instant + this; else the pool's fixed `expires_at`.
        valid_for: Option<Duration>,
        when_exhausted: ExhaustedOutcome,
    },
    /// Goes on at one branch's target, drawn per contact by weight.
    Split {
        branches: Vec<Branch>,
    },
    Message {
        message: Arc<str>,
        /// The step's `send_window`, else the conversation's.
        window: Option<super::window::SendWindow>,
        /// What a message over the frequency cap does.
        when_capped: CapOutcome,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrequencyCap {
    /// At most this many (1 to [`MAX_CAPPED_MESSAGES`]) ...
    pub messages: u32,
    /// ... in any span this long.
    pub per: Duration,
}

/// The largest `messages` of a cap: the state keeps that many send instants.
pub const MAX_CAPPED_MESSAGES: u32 = 16;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CapOutcome {
    /// `suppressed`, reason `frequency_cap`: the entry goes on without it.
    Suppress,
    /// `held` until the cap allows it, then the step runs again.
    Wait,
}

/// A wait derived from the contact's order history: its mean gap between
/// orders times `factor`, within `[min, max]`; `fallback` for a contact with
/// fewer than two orders.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Cadence {
    pub factor: f64,
    pub min: Duration,
    pub max: Duration,
    pub fallback: Duration,
}

impl Cadence {
    pub fn duration(&self, orders: &super::state::OrderStats) -> Duration {
        match orders.mean_gap() {
            None => self.fallback,
            Some(gap) => {
                // Whole milliseconds of an exact product: the same on every machine.
                let d = (gap.0 as f64 * self.factor).round();
                let d = if d.is_finite() { d as i64 } else { self.max.0 };
                Duration(d.clamp(self.min.0, self.max.0))
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Branch {
    /// The variant's name, in transitions and reports.
    pub name: Arc<str>,
    pub weight: u32,
    pub target: StepIdx,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExhaustedOutcome {
    /// The entry goes on to the next step without a (new) code.
    Continue,
    /// The entry exits with reason `coupon_pool_exhausted`.
    Exit,
}

impl ExhaustedOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            ExhaustedOutcome::Continue => "continue",
            ExhaustedOutcome::Exit => "exit",
        }
    }
}

/// A segment filter: every condition that is set must hold.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Filter {
    /// Restricts the order conditions to this merchant's orders.
    pub merchant: Option<Box<str>>,
    /// Last order date is before `now - offset` (no order: false).
    pub last_order_before: Option<Duration>,
    /// Last order date is at or after `now - offset` (no order: false).
    pub last_order_after: Option<Duration>,
    pub min_orders: Option<u64>,
    pub max_orders: Option<u64>,
    pub min_total_cents: Option<i64>,
    pub max_total_cents: Option<i64>,
    /// The contact's latest subscription event for this list says subscribed.
    pub subscribed_to: Option<Box<str>>,
    /// Conditions on profile fields (attributes, coupon fields), by name.
    pub profile: Vec<(Box<str>, ProfileTest)>,
}

/// A condition on one profile field, read as text (an instant as RFC 3339).
#[derive(Debug, Clone, PartialEq)]
pub enum ProfileTest {
    /// The field is this text.
    Equals(Box<str>),
    /// The field is one of these texts.
    In(Vec<Box<str>>),
    /// `true`: the field is set and not empty; `false`: it is not.
    Exists(bool),
    /// The field is a number within these bounds (inclusive); a field that
    /// is missing or not a number never holds.
    Between { min: Option<f64>, max: Option<f64> },
}

impl ProfileTest {
    pub fn holds(&self, value: Option<&str>) -> bool {
        match self {
            ProfileTest::Equals(t) => value == Some(&**t),
            ProfileTest::In(ts) => value.is_some_and(|v| ts.iter().any(|t| **t == *v)),
            ProfileTest::Exists(want) => value.is_some_and(|v| !v.is_empty()) == *want,
            ProfileTest::Between { min, max } => value
                .and_then(|v| v.trim().parse::<f64>().ok())
                .filter(|n| n.is_finite())
                .is_some_and(|n| min.is_none_or(|m| n >= m) && max.is_none_or(|m| n <= m)),
        }
    }
}

#[derive(Debug, Clone)]
pub struct PoolDef {
    pub name: Arc<str>,
    pub codes: Arc<[Arc<str>]>,
    /// A `coupon_pool_low` transition is emitted once when the codes left fall to this.
    pub low_stock: u64,
    pub expires_at: Option<Timestamp>,
}

impl Conversation {
    pub fn next_in_thread(&self, step: StepIdx) -> Option<StepIdx> {
        let t = &self.threads[self.steps[step as usize].thread as usize];
        (step + 1 < t.end_step).then_some(step + 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("purchase-{i}")).collect()
    }

    #[test]
    fn every_name_routes_with_few_names_and_with_many() {
        for n in [1, FEW_ROUTES, FEW_ROUTES + 1, 40] {
            let defs = Definitions::new(
                Vec::new(),
                Vec::new(),
                names(n),
                vec!["sub".into()],
                vec!["unsub".into()],
            );
            assert_eq!(defs.route_index.is_some(), n + 2 > FEW_ROUTES, "{n} names");
            for name in names(n) {
                let r = defs.route(&name).expect("a declared name routes");
                assert!(r.purchase && r.subscription.is_none(), "{name}");
                assert_eq!(&*r.name, name);
            }
            assert_eq!(defs.route("sub").and_then(|r| r.subscription), Some(true));
            assert_eq!(
                defs.route("unsub").and_then(|r| r.subscription),
                Some(false)
            );
            assert!(defs.route("purchase").is_none());
            assert!(defs.route("").is_none());
        }
    }
}
