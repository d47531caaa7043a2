//! A one-line, human-readable form of a transition, for `simulate --format text`
//! and the golden scenario files:
//! `AT CONTACT #ENTRY TYPE THREAD / STEP DETAILS`.

use std::fmt::Write;

use super::step_name;
use crate::domain::Definitions;
use crate::domain::transition::{Transition, TransitionKind};

pub fn render(defs: &Definitions, t: &Transition) -> String {
    let conv = &defs.conversations[t.conversation as usize];
    let thread = |i: u16| &*conv.threads[i as usize].name;
    let step_at = |s: u32| format!("{} / {}", thread(conv.steps[s as usize].thread), &*conv.steps[s as usize].id);
    let mut out = format!(
        "{} {} #{} {} {} / {}",
        t.at,
        t.contact,
        t.entry,
        t.kind.type_name(),
        thread(t.thread),
        step_name(defs, t)
    );
    let _ = match &t.kind {
        TransitionKind::Entered { event_id, event_name } => write!(out, " event={event_id} ({event_name})"),
        TransitionKind::Reentered { event_id, event_name, previous_entry, left_thread, left_step } => write!(
            out,
            " event={event_id} ({event_name}) left #{previous_entry} at {}",
            left_step.map_or_else(|| format!("{} / trigger", thread(*left_thread)), step_at)
        ),
        TransitionKind::WaitStarted { expires_at, duration } => write!(out, " until {expires_at} ({duration})"),
        TransitionKind::Goto { target, taken: true } => write!(out, " -> {}", step_at(*target)),
        TransitionKind::Goto { target, taken: false } => write!(out, " not taken: filter does not hold (target {})", step_at(*target)),
        TransitionKind::Exited { reason } => write!(out, " reason={}", reason.as_str()),
        TransitionKind::CouponAssigned { pool, code, field, expiration_field, expires_at } => {
            let _ = write!(out, " pool={} {field}={code}", defs.pools[*pool as usize].name);
            match (expiration_field, expires_at) {
                (Some(f), Some(x)) => write!(out, " {f}={x}"),
                (None, Some(x)) => write!(out, " expires={x}"),
                _ => Ok(()),
            }
        }
        TransitionKind::CouponPoolExhausted { pool, outcome } => {
            write!(out, " pool={} outcome={}", defs.pools[*pool as usize].name, outcome.as_str())
        }
        TransitionKind::CouponPoolLow { pool, remaining } => {
            write!(out, " pool={} remaining={remaining}", defs.pools[*pool as usize].name)
        }
        TransitionKind::Send { message, fields } => {
            let _ = write!(out, " message={message:?}");
            fields.iter().try_for_each(|(k, v)| write!(out, " {k}={v}"))
        }
        TransitionKind::Suppressed { message, reason } => write!(out, " message={message:?} reason={}", reason.as_str()),
    };
    out
}
