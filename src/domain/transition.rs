//! What the engine emits. Names are kept as indices into the definitions; the
//! `wire` layer resolves them when it encodes a transition.

use std::sync::Arc;

use super::definition::Definitions;
use super::definition::{ConvIdx, RouteIdx, StepIdx, ThreadIdx};
use super::state::Fields;
use super::time::Timestamp;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    /// Position in its entry, from 0; with conversation, contact and entry it
    /// makes the transition's id (see [`Transition::id`]).
    pub seq: u32,
    pub conversation: ConvIdx,
    pub contact: Arc<str>,
    pub at: Timestamp,
    pub entry: u32,
    pub thread: ThreadIdx,
    /// `None` for the thread's trigger step.
    pub step: Option<StepIdx>,
    pub kind: TransitionKind,
}

/// What happened. Only what the definitions cannot tell is carried: the pool,
/// field names, message, GoTo target and wait duration are the step's (see
/// `crate::wire::view`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TransitionKind {
    Entered {
        event_id: Arc<str>,
        /// The trigger event's name, as [`Definitions::route_name`] tells.
        event: RouteIdx,
    },
    /// Started a new entry, ending `previous_entry` in the wait `left_step`.
    Reentered {
        event_id: Arc<str>,
        event: RouteIdx,
        previous_entry: u32,
        left_step: StepIdx,
    },
    WaitStarted {
        expires_at: Timestamp,
    },
    Goto {
        /// False when the segment filter did not hold and the entry fell through.
        taken: bool,
    },
    Exited {
        reason: ExitReason,
    },
    CouponAssigned {
        code: Arc<str>,
        expires_at: Option<Timestamp>,
    },
    CouponPoolExhausted,
    CouponPoolLow {
        remaining: u64,
    },
    Send {
        fields: Fields,
    },
    Suppressed {
        reason: SuppressReason,
    },
    /// The contact was erased by a forget event (a privacy request): its
    /// state, waits and history are gone; readers should delete theirs.
    Forgotten,
    /// A message step may not send now: the entry waits at it until `until`,
    /// when the step runs again.
    Held {
        until: Timestamp,
        reason: HoldReason,
    },
    /// A split step sent the entry down branch `branch` (its index).
    Split {
        branch: u16,
    },
    /// The contact is in the conversation's holdout: the message a `send`
    /// would have carried is not sent.
    HeldOut,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HoldReason {
    /// Outside the step's send window in the contact's time zone.
    SendWindow,
    /// The frequency cap allows the message only later (`when_capped = "wait"`).
    FrequencyCap,
}

impl HoldReason {
    pub fn as_str(self) -> &'static str {
        match self {
            HoldReason::SendWindow => "send_window",
            HoldReason::FrequencyCap => "frequency_cap",
        }
    }
}

impl Transition {
    /// The deterministic id ([`transition_id`]); computed when it is encoded.
    pub fn id(&self, defs: &Definitions) -> u128 {
        let salt = defs.conversations[self.conversation as usize].id_salt;
        transition_id(salt, &self.contact, self.entry, self.seq)
    }
}

impl TransitionKind {
    pub fn type_name(&self) -> &'static str {
        match self {
            TransitionKind::Entered { .. } => "entered",
            TransitionKind::Reentered { .. } => "reentered",
            TransitionKind::WaitStarted { .. } => "wait_started",
            TransitionKind::Goto { .. } => "goto",
            TransitionKind::Exited { .. } => "exited",
            TransitionKind::CouponAssigned { .. } => "coupon_assigned",
            TransitionKind::CouponPoolExhausted => "coupon_pool_exhausted",
            TransitionKind::CouponPoolLow { .. } => "coupon_pool_low",
            TransitionKind::Send { .. } => "send",
            TransitionKind::Suppressed { .. } => "suppressed",
            TransitionKind::Forgotten => "forgotten",
            TransitionKind::Held { .. } => "held",
            TransitionKind::Split { .. } => "split",
            TransitionKind::HeldOut => "held_out",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitReason {
    /// The entry ran past the last step of its thread.
    EndOfThread,
    /// A Set Coupon Code step found its pool empty with `when_exhausted = "exit"`.
    CouponPoolExhausted,
    /// Re-entry mode `parallel`: a new entry pushed out the oldest beyond the limit.
    EntryLimit,
    /// A single run executed more steps than any valid definition can; a guard
    /// against definitions that slipped past validation.
    StepLimit,
    /// An exit event of the conversation or of the entry's thread arrived
    /// (its name as [`Definitions::route_name`] tells).
    ExitEvent(RouteIdx),
}

impl ExitReason {
    pub fn as_str(self) -> &'static str {
        match self {
            ExitReason::EndOfThread => "end_of_thread",
            ExitReason::CouponPoolExhausted => "coupon_pool_exhausted",
            ExitReason::EntryLimit => "entry_limit",
            ExitReason::StepLimit => "step_limit",
            ExitReason::ExitEvent(_) => "exit_event",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SuppressReason {
    /// The contact's latest subscription event for the list is an unsubscribe.
    Unsubscribed,
    /// No subscription event for the list was ever seen for the contact.
    NotSubscribed,
    /// The contact got as many messages as the frequency cap allows lately.
    FrequencyCap,
}

impl SuppressReason {
    pub fn as_str(self) -> &'static str {
        match self {
            SuppressReason::Unsubscribed => "unsubscribed",
            SuppressReason::NotSubscribed => "not_subscribed",
            SuppressReason::FrequencyCap => "frequency_cap",
        }
    }
}

/// The per-conversation part of every transition id: a 128-bit xxh3 of the
/// conversation's name, computed once when definitions are compiled.
pub fn conversation_salt(conversation: &str) -> u128 {
    xxhash_rust::xxh3::xxh3_128(conversation.as_bytes())
}

/// The id of the `seq`-th transition (from 0) of entry `entry` of `contact` in
/// the conversation whose [`conversation_salt`] is `salt`: the 128-bit xxh3 of
/// the contact id seeded with `entry << 32 | seq`, XOR the salt. Within a
/// conversation the seed is injective in (entry, seq); the salt separates
/// conversations. Stable across runs, machines and versions of winback.
pub fn transition_id(salt: u128, contact: &str, entry: u32, seq: u32) -> u128 {
    let seed = (u64::from(entry) << 32) | u64::from(seq);
    xxhash_rust::xxh3::xxh3_128_with_seed(contact.as_bytes(), seed) ^ salt
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_stable_and_distinct() {
        let w = conversation_salt("Winback");
        let a = transition_id(w, "c1", 1, 0);
        assert_eq!(a, transition_id(w, "c1", 1, 0));
        assert_ne!(a, transition_id(w, "c1", 1, 1));
        assert_ne!(a, transition_id(w, "c1", 2, 0));
        assert_ne!(a, transition_id(w, "c2", 1, 0));
        assert_ne!(a, transition_id(conversation_salt("Winback 2"), "c1", 1, 0));
        assert_ne!(transition_id(w, "c1", 1, 0), transition_id(w, "c1", 0, 1));
        // Pinned: ids are part of the output contract and must not drift.
        assert_eq!(format!("{a:032x}"), "e2f6b19ba6bfe1c905bad688fc911133");
    }
}
