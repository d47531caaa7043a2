//! What the engine emits. Names are kept as indices into the definitions; the
//! `wire` layer resolves them when it encodes a transition.

use std::sync::Arc;

use super::definition::{ConvIdx, ExhaustedOutcome, PoolIdx, StepIdx, ThreadIdx};
use super::time::{Duration, Timestamp};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    /// Deterministic id: see [`transition_id`].
    pub id: u128,
    pub conversation: ConvIdx,
    pub contact: Arc<str>,
    pub at: Timestamp,
    pub entry: u32,
    pub thread: ThreadIdx,
    /// `None` for the thread's trigger step.
    pub step: Option<StepIdx>,
    pub kind: TransitionKind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TransitionKind {
    Entered {
        event_id: Box<str>,
        event_name: Arc<str>,
    },
    Reentered {
        event_id: Box<str>,
        event_name: Arc<str>,
        previous_entry: u32,
        left_thread: ThreadIdx,
        left_step: Option<StepIdx>,
    },
    WaitStarted {
        expires_at: Timestamp,
        duration: Duration,
    },
    Goto {
        target: StepIdx,
        taken: bool,
    },
    Exited {
        reason: ExitReason,
    },
    CouponAssigned {
        pool: PoolIdx,
        code: Box<str>,
        field: Arc<str>,
        expiration_field: Option<Arc<str>>,
        expires_at: Option<Timestamp>,
    },
    CouponPoolExhausted {
        pool: PoolIdx,
        outcome: ExhaustedOutcome,
    },
    CouponPoolLow {
        pool: PoolIdx,
        remaining: u64,
    },
    Send {
        message: Arc<str>,
        fields: Vec<(Box<str>, Box<str>)>,
    },
    Suppressed {
        message: Arc<str>,
        reason: SuppressReason,
    },
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
            TransitionKind::CouponPoolExhausted { .. } => "coupon_pool_exhausted",
            TransitionKind::CouponPoolLow { .. } => "coupon_pool_low",
            TransitionKind::Send { .. } => "send",
            TransitionKind::Suppressed { .. } => "suppressed",
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
}

impl ExitReason {
    pub fn as_str(self) -> &'static str {
        match self {
            ExitReason::EndOfThread => "end_of_thread",
            ExitReason::CouponPoolExhausted => "coupon_pool_exhausted",
            ExitReason::EntryLimit => "entry_limit",
            ExitReason::StepLimit => "step_limit",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SuppressReason {
    /// The contact's latest subscription event for the list is an unsubscribe.
    Unsubscribed,
    /// No subscription event for the list was ever seen for the contact.
    NotSubscribed,
}

impl SuppressReason {
    pub fn as_str(self) -> &'static str {
        match self {
            SuppressReason::Unsubscribed => "unsubscribed",
            SuppressReason::NotSubscribed => "not_subscribed",
        }
    }
}

/// The id of the `seq`-th transition (from 0) of entry `entry` of `contact` in
/// `conversation`: a 128-bit xxh3 of a length-prefixed encoding, so that no two
/// distinct tuples collide by concatenation.
pub fn transition_id(conversation: &str, contact: &str, entry: u32, seq: u32) -> u128 {
    let parts: [&[u8]; 6] = [
        &(conversation.len() as u64).to_be_bytes(),
        conversation.as_bytes(),
        &(contact.len() as u64).to_be_bytes(),
        contact.as_bytes(),
        &entry.to_be_bytes(),
        &seq.to_be_bytes(),
    ];
    let len: usize = parts.iter().map(|p| p.len()).sum();
    // Ids are made for every transition: hash from the stack when the names are short.
    let mut stack = [0u8; 256];
    let mut heap = Vec::new();
    let buf: &mut [u8] = if len <= stack.len() {
        &mut stack[..len]
    } else {
        heap.resize(len, 0);
        &mut heap
    };
    let mut at = 0;
    for p in parts {
        buf[at..at + p.len()].copy_from_slice(p);
        at += p.len();
    }
    xxhash_rust::xxh3::xxh3_128(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_stable_and_distinct() {
        let a = transition_id("Winback", "c1", 1, 0);
        assert_eq!(a, transition_id("Winback", "c1", 1, 0));
        assert_ne!(a, transition_id("Winback", "c1", 1, 1));
        assert_ne!(a, transition_id("Winback", "c1", 2, 0));
        // Concatenation would make these equal; the length prefix must not.
        assert_ne!(
            transition_id("ab", "c", 1, 0),
            transition_id("a", "bc", 1, 0)
        );
    }
}
