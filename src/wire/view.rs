//! A transition with every name resolved against the definitions: the one
//! place that turns indices and step-derived facts (pool, message, target,
//! duration, ...) into what the JSON, protobuf and text forms print.

use serde::{Serialize, Serializer};

use crate::domain::Definitions;
use crate::domain::definition::{Conversation, ExhaustedOutcome, Step, StepIdx, StepKind};
use crate::domain::state::Field;
use crate::domain::time::{Duration, Timestamp};
use crate::domain::transition::{ExitReason, Transition, TransitionKind};

/// The step id shown for a thread's trigger step (reserved as a step id).
pub const TRIGGER_STEP: &str = "trigger";

/// Serializes as the documented JSON form of a transition (field names and
/// order are the wire contract; `tests/golden/` pins them).
#[derive(Serialize)]
pub struct View<'a> {
    #[serde(rename = "transition_id", serialize_with = "hex_id")]
    pub id: u128,
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub conversation: &'a str,
    #[serde(rename = "contact_id")]
    pub contact: &'a str,
    #[serde(serialize_with = "rfc3339")]
    pub at: Timestamp,
    pub entry: u32,
    pub thread: &'a str,
    pub step: &'a str,
    #[serde(flatten)]
    pub detail: Detail<'a>,
}

#[derive(Serialize)]
#[serde(untagged)]
pub enum Detail<'a> {
    Entered {
        event_id: &'a str,
        event_name: &'a str,
    },
    Reentered {
        event_id: &'a str,
        event_name: &'a str,
        previous_entry: u32,
        left_thread: &'a str,
        left_step: &'a str,
    },
    WaitStarted {
        #[serde(serialize_with = "rfc3339")]
        expires_at: Timestamp,
        #[serde(serialize_with = "display")]
        duration: Duration,
    },
    Goto {
        target_thread: &'a str,
        target_step: &'a str,
        taken: bool,
    },
    Exited {
        reason: &'static str,
        /// With reason `exit_event`: the event that ended the entry.
        #[serde(skip_serializing_if = "Option::is_none")]
        event: Option<&'a str>,
    },
    CouponAssigned {
        pool: &'a str,
        code: &'a str,
        field: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        expiration_field: Option<&'a str>,
        #[serde(
            skip_serializing_if = "Option::is_none",
            serialize_with = "opt_rfc3339"
        )]
        expires_at: Option<Timestamp>,
    },
    CouponPoolExhausted {
        pool: &'a str,
        outcome: &'static str,
    },
    CouponPoolLow {
        pool: &'a str,
        remaining: u64,
    },
    Send {
        message: &'a str,
        #[serde(serialize_with = "field_map")]
        fields: &'a [Field],
    },
    Suppressed {
        message: &'a str,
        reason: &'static str,
    },
    Forgotten {},
    Held {
        #[serde(serialize_with = "rfc3339")]
        until: Timestamp,
        reason: &'static str,
    },
    Split {
        variant: &'a str,
        target_thread: &'a str,
        target_step: &'a str,
    },
    HeldOut {
        message: &'a str,
    },
}

fn hex_id<S: Serializer>(id: &u128, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&format_args!("{id:032x}"))
}

fn rfc3339<S: Serializer>(t: &Timestamp, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(t)
}

fn opt_rfc3339<S: Serializer>(t: &Option<Timestamp>, s: S) -> Result<S::Ok, S::Error> {
    match t {
        Some(t) => s.collect_str(t),
        None => s.serialize_none(),
    }
}

fn display<S: Serializer, D: std::fmt::Display>(d: &D, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(d)
}

/// A field value as its text (instants in RFC 3339).
struct AsText<'a, T>(&'a T);

impl<T: std::fmt::Display> Serialize for AsText<'_, T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self.0)
    }
}

/// Fields are kept sorted by name, so the map's keys come out sorted.
fn field_map<S: Serializer>(fields: &&[Field], s: S) -> Result<S::Ok, S::Error> {
    s.collect_map(fields.iter().map(|(k, v)| (&**k, AsText(v))))
}

/// What a transition's step defines; the engine emits each kind only from its
/// own step type, so the fallbacks below are never printed for engine output.
struct StepFacts<'a> {
    wait: Duration,
    target: Option<StepIdx>,
    pool: &'a str,
    field: &'a str,
    expiration_field: Option<&'a str>,
    outcome: &'static str,
    message: &'a str,
}

fn facts<'a>(defs: &'a Definitions, step: Option<&'a Step>) -> StepFacts<'a> {
    let mut f = StepFacts {
        wait: Duration::ZERO,
        target: None,
        pool: "",
        field: "",
        expiration_field: None,
        outcome: ExhaustedOutcome::Continue.as_str(),
        message: "",
    };
    match step.map(|s| &s.kind) {
        Some(StepKind::Wait(d)) => f.wait = *d,
        Some(StepKind::Goto { target, .. }) => f.target = Some(*target),
        Some(StepKind::SetCouponCode {
            pool,
            field,
            expiration_field,
            when_exhausted,
            ..
        }) => {
            f.pool = &defs.pools[*pool as usize].name;
            f.field = field;
            f.expiration_field = expiration_field.as_deref();
            f.outcome = when_exhausted.as_str();
        }
        Some(StepKind::Message { message, .. }) => f.message = message,
        Some(StepKind::Split { .. } | StepKind::CadenceWait(_)) | None => {}
    }
    f
}

fn step_at(conv: &Conversation, s: StepIdx) -> (&str, &str) {
    let step = &conv.steps[s as usize];
    (&conv.threads[step.thread as usize].name, &step.id)
}

pub fn view<'a>(defs: &'a Definitions, t: &'a Transition) -> View<'a> {
    let conv = &defs.conversations[t.conversation as usize];
    let step = t.step.map(|s| &conv.steps[s as usize]);
    let f = facts(defs, step);
    let detail = match &t.kind {
        TransitionKind::Entered { event_id, event } => Detail::Entered {
            event_id,
            event_name: defs.route_name(*event),
        },
        TransitionKind::Reentered {
            event_id,
            event,
            previous_entry,
            left_step,
        } => {
            let (left_thread, left_step) = step_at(conv, *left_step);
            Detail::Reentered {
                event_id,
                event_name: defs.route_name(*event),
                previous_entry: *previous_entry,
                left_thread,
                left_step,
            }
        }
        TransitionKind::WaitStarted { expires_at } => Detail::WaitStarted {
            expires_at: *expires_at,
            // A cadence wait's length is the contact's: the span it set.
            duration: match step.map(|s| &s.kind) {
                Some(StepKind::CadenceWait(_)) => Duration(expires_at.0.saturating_sub(t.at.0)),
                _ => f.wait,
            },
        },
        TransitionKind::Goto { taken } => {
            let (target_thread, target_step) = f.target.map_or(("", ""), |s| step_at(conv, s));
            Detail::Goto {
                target_thread,
                target_step,
                taken: *taken,
            }
        }
        TransitionKind::Exited { reason } => Detail::Exited {
            reason: reason.as_str(),
            event: match reason {
                ExitReason::ExitEvent(r) => Some(defs.route_name(*r)),
                _ => None,
            },
        },
        TransitionKind::CouponAssigned { code, expires_at } => Detail::CouponAssigned {
            pool: f.pool,
            code,
            field: f.field,
            expiration_field: f.expiration_field,
            expires_at: *expires_at,
        },
        TransitionKind::CouponPoolExhausted => Detail::CouponPoolExhausted {
            pool: f.pool,
            outcome: f.outcome,
        },
        TransitionKind::CouponPoolLow { remaining } => Detail::CouponPoolLow {
            pool: f.pool,
            remaining: *remaining,
        },
        TransitionKind::Send { fields } => Detail::Send {
            message: f.message,
            fields: fields.as_slice(),
        },
        TransitionKind::Suppressed { reason } => Detail::Suppressed {
            message: f.message,
            reason: reason.as_str(),
        },
        TransitionKind::Forgotten => Detail::Forgotten {},
        TransitionKind::Held { until, reason } => Detail::Held {
            until: *until,
            reason: reason.as_str(),
        },
        TransitionKind::Split { branch } => {
            let b = match step.map(|s| &s.kind) {
                Some(StepKind::Split { branches }) => branches.get(*branch as usize),
                _ => None,
            };
            let (target_thread, target_step) = b.map_or(("", ""), |b| step_at(conv, b.target));
            Detail::Split {
                variant: b.map_or("", |b| &b.name),
                target_thread,
                target_step,
            }
        }
        TransitionKind::HeldOut => Detail::HeldOut { message: f.message },
    };
    View {
        id: t.id(defs),
        kind: t.kind.type_name(),
        conversation: &conv.name,
        contact: &t.contact,
        at: t.at,
        entry: t.entry,
        thread: &conv.threads[t.thread as usize].name,
        step: step.map_or(TRIGGER_STEP, |s| &s.id),
        detail,
    }
}
