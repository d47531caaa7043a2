//! Per-contact state: behaviour, subscriptions, profile fields and the contact's
//! entries in each conversation. Everything the engine needs to decide a step.

use std::fmt;
use std::sync::Arc;

use smallvec::SmallVec;
use triomphe::ThinArc;

use super::definition::{ConvIdx, StepIdx, ThreadIdx};
use super::time::{MaybeTimestamp, Timestamp};

/// How many recent event ids a contact remembers for de-duplication. Redelivered
/// events arrive close to the original (a producer retry, a replayed batch), and
/// a bounded window keeps a contact's state small.
pub const DEDUP_WINDOW: usize = 8;

/// A profile field's value. Instants stay instants until they are encoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FieldValue {
    Text(Arc<str>),
    Time(Timestamp),
    /// Set by an event's `attributes`, with the event's time: an update
    /// stamped earlier (arriving late) does not replace it. Behind one
    /// pointer, so a field stays as small as a coupon code's.
    Attribute(Arc<Attribute>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attribute {
    pub text: Box<str>,
    pub at: Timestamp,
}

impl fmt::Display for FieldValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FieldValue::Text(s) => f.write_str(s),
            FieldValue::Time(t) => write!(f, "{t}"),
            FieldValue::Attribute(a) => f.write_str(&a.text),
        }
    }
}

/// A contact's profile fields, sorted by name: an immutable snapshot, shared
/// by every `send` made while it is current. Fields change only when an
/// action sets them, while every send carries them, so a write copies the
/// (short) list and a send costs a reference count. A thin pointer (the
/// length lives in the allocation): one word in every contact's state
/// instead of two.
///
/// The allocation's header keeps the instants of the contact's last messages
/// (only with a frequency cap): in the state, one word more would cost a
/// cache line per contact.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Fields(Option<ThinArc<SendLog, Field>>);

/// The instants of a contact's last sends, oldest first; none without a
/// frequency cap. A thin pointer: every fields allocation carries it.
pub type SendLog = Option<ThinArc<(), Timestamp>>;

/// A profile field: name and value.
pub type Field = (Arc<str>, FieldValue);

impl From<Vec<Field>> for Fields {
    /// Sorts by name; of fields named twice the last one wins.
    fn from(mut v: Vec<Field>) -> Self {
        v.reverse();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v.dedup_by(|later, first| later.0 == first.0);
        Fields((!v.is_empty()).then(|| ThinArc::from_header_and_iter(None, v.into_iter())))
    }
}

impl Fields {
    pub fn as_slice(&self) -> &[Field] {
        self.0.as_ref().map_or(&[], |a| &a.slice)
    }

    /// The instants of the contact's last sends, oldest first.
    pub fn sends(&self) -> &[Timestamp] {
        self.0
            .as_ref()
            .and_then(|a| a.header.header.as_ref())
            .map_or(&[], |log| &log.slice)
    }

    /// The send log itself, shared.
    pub fn send_log(&self) -> SendLog {
        self.0.as_ref().and_then(|a| a.header.header.clone())
    }

    /// The same fields with `sends` as the send log.
    pub fn with_sends(&self, sends: SendLog) -> Fields {
        let sends = sends.filter(|s| !s.slice.is_empty());
        if sends.is_none() && self.as_slice().is_empty() {
            return Fields(None);
        }
        Fields(Some(ThinArc::from_header_and_iter(
            sends,
            self.as_slice().iter().cloned(),
        )))
    }

    pub fn get(&self, name: &str) -> Option<&FieldValue> {
        let s = self.as_slice();
        s.binary_search_by(|(k, _)| (**k).cmp(name))
            .ok()
            .map(|i| &s[i].1)
    }

    /// Sets several fields (of a name set twice the last value wins) with one
    /// copy of the list, made in one allocation: each coupon assigned costs a
    /// write, so the write is kept to the copy the shared snapshot needs.
    pub fn set<const N: usize>(&mut self, updates: [(&Arc<str>, FieldValue); N]) {
        if N == 0 {
            // An empty list stays `None`, as `From` makes it.
            return;
        }
        let old = self.as_slice();
        // Where each field of the new list comes from: `Ok(i)` old field i,
        // `Err(j)` update j. Inline for the usual handful of fields.
        let mut plan: SmallVec<[Result<usize, usize>; 8]> = (0..old.len()).map(Ok).collect();
        let name = |p: &Result<usize, usize>| -> &str {
            match *p {
                Ok(i) => &old[i].0,
                Err(j) => updates[j].0,
            }
        };
        for (j, (n, _)) in updates.iter().enumerate() {
            match plan.binary_search_by(|p| name(p).cmp(n)) {
                Ok(at) => plan[at] = Err(j),
                Err(at) => plan.insert(at, Err(j)),
            }
        }
        let mut values = updates.map(|(n, v)| (n, Some(v)));
        // A slice iterator has an exact length: the list is built in place.
        let fields = plan.iter().map(|p| match *p {
            Ok(i) => old[i].clone(),
            Err(j) => {
                let (n, v) = &mut values[j];
                let v = v
                    .take()
                    .unwrap_or_else(|| unreachable!("each update is used once"));
                (Arc::clone(n), v)
            }
        });
        let log = self.0.as_ref().and_then(|a| a.header.header.clone());
        self.0 = Some(ThinArc::from_header_and_iter(log, fields));
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OrderStats {
    pub count: u32,
    /// Seconds from the first order to the last (at most `u32::MAX`, 136
    /// years): with `count`, the contact's mean gap between orders, in the
    /// four bytes `count` left free.
    pub span_secs: u32,
    pub total_cents: i64,
    pub last_order_at: MaybeTimestamp,
}

/// `span_secs` of a contact whose first order is not known: stored before
/// winback kept it, or more than 136 years before the last.
pub const UNKNOWN_SPAN: u32 = u32::MAX;

impl OrderStats {
    fn add(&mut self, at: Timestamp, total_cents: i64) {
        self.count = self.count.saturating_add(1);
        self.total_cents = self.total_cents.saturating_add(total_cents);
        let last = self.last_order_at.get().map_or(at, |l| l.max(at));
        match (self.last_order_at.get(), self.first_order_at()) {
            (None, _) => self.span_secs = 0,
            (Some(_), Some(first)) => {
                let span = last.0.saturating_sub(first.min(at).0) / 1000;
                self.span_secs = u32::try_from(span).unwrap_or(UNKNOWN_SPAN);
            }
            // Not known (a state stored before it was kept): stays so.
            (Some(_), None) => {}
        }
        self.last_order_at = last.into();
    }

    /// The first order's instant (to the second), when there was an order
    /// and it is known.
    pub fn first_order_at(&self) -> Option<Timestamp> {
        if self.span_secs == UNKNOWN_SPAN {
            return None;
        }
        self.last_order_at
            .get()
            .map(|l| Timestamp(l.0.saturating_sub(i64::from(self.span_secs) * 1000)))
    }

    /// The mean time between the contact's orders: `None` before a second
    /// order, or when the first is not known.
    pub fn mean_gap(&self) -> Option<super::time::Duration> {
        (self.count >= 2 && self.span_secs != UNKNOWN_SPAN).then(|| {
            super::time::Duration(i64::from(self.span_secs) * 1000 / i64::from(self.count - 1))
        })
    }
}

/// Merchant and list names are short, and every event and every fired wait
/// compares them: inline (up to 24 bytes), such a compare reads no memory
/// beyond the contact's state.
pub type Name = compact_str::CompactString;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MerchantStats {
    pub merchant: Name,
    pub stats: OrderStats,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscription {
    pub list: Name,
    pub subscribed: bool,
    /// Event time of the latest subscription event for this list.
    pub at: Timestamp,
}

/// One run of a contact through a conversation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// 1 for the contact's first entry in the conversation, then 2, ...
    pub seq: u32,
    pub thread: ThreadIdx,
    /// The step the entry is at (the wait it sleeps in, or the next to run).
    pub step: StepIdx,
    /// Event time of the trigger that started the entry.
    pub started_at: Timestamp,
    pub waiting_until: MaybeTimestamp,
    /// Transitions emitted so far; part of each transition's id.
    pub transitions: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConversationState {
    pub conversation: ConvIdx,
    pub entries_started: u32,
    /// At most one with re-entry `restart` or a single entry, so it lives inline.
    pub active: SmallVec<[Entry; 1]>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ContactState {
    /// xxh3-64 of the last [`DEDUP_WINDOW`] event ids, oldest first (0 = empty
    /// slot; an id hashing to 0 is stored as 1). Inline: as small as a short
    /// `Vec` with its allocation, and no allocation per event. Shifted on
    /// each new id rather than kept as a ring with a cursor: the cursor's
    /// byte would round the state up by a word, and every byte of the state
    /// is paid for once per contact in memory the kernel must first zero.
    pub recent_events: [u64; DEDUP_WINDOW],
    pub orders: OrderStats,
    /// Inline for the usual single merchant and single list.
    pub merchants: SmallVec<[MerchantStats; 1]>,
    pub subscriptions: SmallVec<[Subscription; 1]>,
    /// Profile fields, sorted by name.
    pub fields: Fields,
    /// Inline for up to two conversations, the usual deployment.
    pub conversations: SmallVec<[ConversationState; 2]>,
}

impl ContactState {
    /// Records `event_id`; false if it is among the recent ones already.
    pub fn remember_event(&mut self, event_id: &str) -> bool {
        let h = xxhash_rust::xxh3::xxh3_64(event_id.as_bytes()).max(1);
        if self.recent_events.contains(&h) {
            return false;
        }
        self.recent_events.copy_within(1.., 0);
        self.recent_events[DEDUP_WINDOW - 1] = h;
        true
    }

    pub fn add_order(&mut self, at: Timestamp, merchant: Option<&str>, total_cents: i64) {
        self.orders.add(at, total_cents);
        if let Some(m) = merchant {
            match self.merchants.iter_mut().find(|s| &*s.merchant == m) {
                Some(s) => s.stats.add(at, total_cents),
                None => {
                    if self.merchants.len() >= super::event::MAX_MERCHANTS_PER_CONTACT {
                        // Bounded state: the merchant bought from longest ago
                        // goes (the first of equals, so that it is deterministic).
                        let oldest = self
                            .merchants
                            .iter()
                            .enumerate()
                            .min_by_key(|(_, s)| s.stats.last_order_at.get())
                            .map(|(i, _)| i);
                        if let Some(i) = oldest {
                            self.merchants.remove(i);
                        }
                    }
                    let mut stats = OrderStats::default();
                    stats.add(at, total_cents);
                    self.merchants.push(MerchantStats {
                        merchant: m.into(),
                        stats,
                    });
                }
            }
        }
    }

    pub fn merchant_orders(&self, merchant: &str) -> Option<&OrderStats> {
        self.merchants
            .iter()
            .find(|s| &*s.merchant == merchant)
            .map(|s| &s.stats)
    }

    /// Applies an event's attributes to the profile, each unless the field
    /// holds an attribute stamped later (event time decides; at equal times
    /// the later-arriving event wins). Whether anything changed.
    pub fn set_attributes(&mut self, attributes: &[(String, String)], at: Timestamp) -> bool {
        let updates: Vec<&(String, String)> = attributes
            .iter()
            .filter(|(k, v)| match self.fields.get(k) {
                Some(FieldValue::Attribute(a)) => a.at < at || (a.at == at && *a.text != **v),
                _ => true,
            })
            .collect();
        if updates.is_empty() {
            return false;
        }
        let mut all: Vec<Field> = self.fields.as_slice().to_vec();
        all.extend(updates.into_iter().map(|(k, v)| {
            (
                Arc::from(k.as_str()),
                FieldValue::Attribute(Arc::new(Attribute {
                    text: v.as_str().into(),
                    at,
                })),
            )
        }));
        let log = self.fields.send_log();
        self.fields = Fields::from(all).with_sends(log);
        true
    }

    /// Applies a subscription event unless a later one for the list is known
    /// (event time decides; at equal times the later-arriving event wins).
    pub fn set_subscription(&mut self, list: &str, subscribed: bool, at: Timestamp) {
        match self.subscriptions.iter_mut().find(|s| &*s.list == list) {
            Some(s) if s.at <= at => {
                s.subscribed = subscribed;
                s.at = at;
            }
            Some(_) => {}
            None => self.subscriptions.push(Subscription {
                list: list.into(),
                subscribed,
                at,
            }),
        }
    }

    pub fn subscription(&self, list: &str) -> Option<&Subscription> {
        self.subscriptions.iter().find(|s| &*s.list == list)
    }

    /// Whether entry `seq` of conversation `conv` is waiting. A fired wait
    /// changes nothing unless it is (it may also have been set for another
    /// expiry, which [`Engine::on_timer`](super::engine::Engine::on_timer)
    /// checks): a caller can tell from this alone which waits are worth
    /// loading the rest of the state for.
    pub fn waiting(&self, conv: ConvIdx, seq: u32) -> bool {
        self.conversations.iter().any(|c| {
            c.conversation == conv
                && c.active
                    .iter()
                    .any(|e| e.seq == seq && e.waiting_until.get().is_some())
        })
    }

    /// The contact's state in conversation `conv`, created on first use; the
    /// list is sized once for all `conversations` the definitions hold.
    pub fn conversation_mut(
        &mut self,
        conv: ConvIdx,
        conversations: usize,
    ) -> &mut ConversationState {
        let i = self.conversation_pos(conv, conversations);
        &mut self.conversations[i]
    }

    /// Where [`ContactState::conversation_mut`]'s state is in `conversations`;
    /// it stays there until a conversation is added.
    pub fn conversation_pos(&mut self, conv: ConvIdx, conversations: usize) -> usize {
        match self
            .conversations
            .iter()
            .position(|c| c.conversation == conv)
        {
            Some(i) => i,
            None => {
                if self.conversations.len() == self.conversations.inline_size() {
                    self.conversations
                        .reserve_exact(conversations - self.conversations.len());
                }
                self.conversations.push(ConversationState {
                    conversation: conv,
                    entries_started: 0,
                    active: SmallVec::new(),
                });
                self.conversations.len() - 1
            }
        }
    }

    /// Stores an entry that waits, keeping entries in `seq` (age) order.
    pub fn insert_entry(&mut self, conv: ConvIdx, conversations: usize, e: Entry) {
        let active = &mut self.conversation_mut(conv, conversations).active;
        let i = active.partition_point(|x| x.seq < e.seq);
        active.insert(i, e);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dedup_window_remembers_the_last_events() {
        let mut s = ContactState::default();
        assert!(s.remember_event("e0"));
        assert!(!s.remember_event("e0"));
        for i in 1..DEDUP_WINDOW {
            assert!(s.remember_event(&format!("e{i}")));
        }
        assert!(!s.remember_event("e0"), "still inside the window");
        assert!(s.remember_event("e-new"));
        assert!(s.remember_event("e0"), "pushed out of the window by e-new");
    }

    #[test]
    fn later_subscription_event_wins_by_event_time() {
        let mut s = ContactState::default();
        s.set_subscription("master", true, Timestamp(10));
        s.set_subscription("master", false, Timestamp(5));
        assert!(
            s.subscription("master").unwrap().subscribed,
            "an older unsubscribe must not win"
        );
        s.set_subscription("master", false, Timestamp(10));
        assert!(!s.subscription("master").unwrap().subscribed);
    }

    #[test]
    fn merchants_are_bounded_and_the_least_recent_goes_first() {
        use crate::domain::event::MAX_MERCHANTS_PER_CONTACT as MAX;
        let mut s = ContactState::default();
        for i in 0..MAX {
            // m0 is the least recent; m1 bought first but again later.
            s.add_order(Timestamp(100 + i as i64), Some(&format!("m{i}")), 1);
        }
        s.add_order(Timestamp(1_000), Some("m0"), 1);
        s.add_order(Timestamp(1_001), Some("new"), 1);
        assert_eq!(s.merchants.len(), MAX);
        assert!(s.merchant_orders("m1").is_none());
        assert!(s.merchant_orders("m0").is_some());
        assert!(s.merchant_orders("new").is_some());
        assert_eq!(s.orders.count, MAX as u32 + 2);
    }

    #[test]
    fn orders_keep_the_latest_date_per_merchant() {
        let mut s = ContactState::default();
        s.add_order(Timestamp(20), Some("m1"), 100);
        s.add_order(Timestamp(10), Some("m2"), 50);
        s.add_order(Timestamp(5), Some("m1"), 1);
        assert_eq!(s.orders.last_order_at.get(), Some(Timestamp(20)));
        assert_eq!(s.orders.count, 3);
        assert_eq!(s.orders.total_cents, 151);
        let m1 = s.merchant_orders("m1").unwrap();
        assert_eq!((m1.count, m1.last_order_at.get()), (2, Some(Timestamp(20))));
        assert_eq!(
            s.merchant_orders("m2").unwrap().last_order_at.get(),
            Some(Timestamp(10))
        );
    }

    #[test]
    fn waiting_names_only_a_waiting_entry() {
        let mut s = ContactState::default();
        let entry = |seq, waiting_until: Option<Timestamp>| Entry {
            seq,
            thread: 0,
            step: 0,
            started_at: Timestamp(0),
            waiting_until: waiting_until.into(),
            transitions: 0,
        };
        s.insert_entry(1, 2, entry(3, Some(Timestamp(10))));
        s.insert_entry(1, 2, entry(4, None));
        assert!(s.waiting(1, 3));
        assert!(!s.waiting(1, 4), "an entry not waiting");
        assert!(!s.waiting(1, 2), "an entry not there");
        assert!(!s.waiting(0, 3), "another conversation");
    }

    fn listed(f: &Fields) -> Vec<String> {
        f.as_slice()
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect()
    }

    #[test]
    fn fields_stay_sorted_and_snapshots_do_not_change() {
        let mut s = ContactState::default();
        let (a, z): (Arc<str>, Arc<str>) = ("a".into(), "z".into());
        s.fields.set([(&z, FieldValue::Text("1".into()))]);
        let before = s.fields.clone();
        s.fields.set([
            (&a, FieldValue::Text("2".into())),
            (&z, FieldValue::Text("3".into())),
        ]);
        assert_eq!(listed(&s.fields), ["a=2", "z=3"]);
        assert_eq!(
            before.get("z"),
            Some(&FieldValue::Text("1".into())),
            "a sent snapshot keeps its values"
        );
        assert_eq!(before.get("a"), None);
        let m: Arc<str> = "m".into();
        s.fields.set([
            (&m, FieldValue::Text("4".into())),
            (&a, FieldValue::Time(Timestamp(7))),
            (&m, FieldValue::Text("5".into())),
        ]);
        assert_eq!(
            listed(&s.fields),
            ["a=1970-01-01T00:00:00.007Z", "m=5", "z=3"],
            "of a name set twice the last value wins"
        );
    }

    #[test]
    fn orders_keep_their_span_for_the_mean_gap() {
        let mut o = OrderStats::default();
        assert_eq!(o.mean_gap(), None);
        o.add(Timestamp(10 * 86_400_000), 100);
        assert_eq!(
            (o.mean_gap(), o.first_order_at()),
            (None, Some(Timestamp(10 * 86_400_000)))
        );
        o.add(Timestamp(20 * 86_400_000), 100);
        // A late order before the first one widens the span.
        o.add(Timestamp(86_400_000), 100);
        assert_eq!(o.first_order_at(), Some(Timestamp(86_400_000)));
        assert_eq!(o.last_order_at.get(), Some(Timestamp(20 * 86_400_000)));
        assert_eq!(
            o.mean_gap(),
            Some(crate::domain::Duration(19 * 86_400_000 / 2))
        );
    }

    #[test]
    fn attributes_keep_the_latest_by_event_time() {
        let mut s = ContactState::default();
        let a = |k: &str, v: &str| (k.to_string(), v.to_string());
        assert!(s.set_attributes(&[a("tier", "gold"), a("name", "Ann")], Timestamp(10)));
        // Stamped earlier: ignored.
        assert!(!s.set_attributes(&[a("tier", "bronze")], Timestamp(5)));
        assert_eq!(listed(&s.fields), ["name=Ann", "tier=gold"]);
        // Same instant, another value: the later-arriving one wins; the same
        // value changes nothing.
        assert!(s.set_attributes(&[a("tier", "silver")], Timestamp(10)));
        assert!(!s.set_attributes(&[a("tier", "silver")], Timestamp(10)));
        assert!(s.set_attributes(&[a("tier", "platinum")], Timestamp(11)));
        assert_eq!(listed(&s.fields), ["name=Ann", "tier=platinum"]);
    }

    #[test]
    fn one_profile_field_too_many_is_refused() {
        use crate::domain::definition::Route;
        use crate::domain::engine::check_state_limits;
        use crate::domain::event::{EventError, MAX_FIELDS_PER_CONTACT as MAX};
        let mut s = ContactState::default();
        let attrs: Vec<(String, String)> =
            (0..MAX).map(|i| (format!("f{i}"), "x".into())).collect();
        s.set_attributes(&attrs, Timestamp(1));
        let ev = |k: &str| crate::domain::Event {
            event_id: "e".into(),
            name: "p".into(),
            contact_id: "c".into(),
            occurred_at: Timestamp(2),
            merchant_id: None,
            order_id: None,
            total_cents: None,
            list_id: None,
            attributes: vec![(k.to_string(), "y".into())],
        };
        let route = Route::default();
        assert_eq!(check_state_limits(&s, &ev("f0"), &route), Ok(()));
        assert_eq!(
            check_state_limits(&s, &ev("new"), &route),
            Err(EventError::TooManyFields(MAX))
        );
    }

    #[test]
    fn a_subscription_to_one_list_too_many_is_refused_not_another_dropped() {
        use crate::domain::definition::Route;
        use crate::domain::engine::check_state_limits;
        use crate::domain::event::{EventError, MAX_LISTS_PER_CONTACT as MAX};
        let mut s = ContactState::default();
        for i in 0..MAX {
            s.set_subscription(&format!("l{i}"), i % 2 == 0, Timestamp(i as i64));
        }
        let route = Route {
            subscription: Some(true),
            ..Route::default()
        };
        let ev = |list: &str| crate::domain::Event {
            event_id: "e".into(),
            name: "subscribe".into(),
            contact_id: "c".into(),
            occurred_at: Timestamp(0),
            merchant_id: None,
            order_id: None,
            total_cents: None,
            list_id: Some(list.into()),
            attributes: Vec::new(),
        };
        assert_eq!(
            check_state_limits(&s, &ev("another"), &route),
            Err(EventError::TooManyLists(MAX))
        );
        assert_eq!(check_state_limits(&s, &ev("l1"), &route), Ok(()));
        assert_eq!(
            check_state_limits(&s, &ev("another"), &Route::default()),
            Ok(())
        );
    }
}
