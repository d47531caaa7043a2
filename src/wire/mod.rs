//! Encodings at the edge: JSON lines and protobuf for events and transitions,
//! and a one-line text form of a transition for people and golden tests.

pub mod json;
pub mod proto;
pub mod text;

use crate::domain::Definitions;
use crate::domain::transition::Transition;

/// The name a transition's step shows: its id, or `trigger` for the trigger step
/// (so `trigger` is reserved as a step id).
pub fn step_name<'a>(defs: &'a Definitions, t: &Transition) -> &'a str {
    let conv = &defs.conversations[t.conversation as usize];
    t.step.map_or("trigger", |s| &conv.steps[s as usize].id)
}

pub const TRIGGER_STEP: &str = "trigger";
