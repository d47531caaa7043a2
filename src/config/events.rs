//! Event name lists beyond the triggers: `exit_events` (of a conversation and
//! of its threads) and `profile_events`. Names checked, and exits refused
//! where an event would both start and end the same entries.

use std::collections::{BTreeSet, HashMap};

use toml::Spanned;

use super::diagnostic::{Diagnostic, Severity, Source};
use super::{FORGET_EVENT, RESERVED_FORGET};
use crate::domain::definition::{Thread, ThreadIdx};

/// The names of an event list at `field`, each reported when empty,
/// reserved or repeated.
pub(super) fn names(
    src: &Source<'_>,
    v: Option<&Spanned<Vec<String>>>,
    field: &str,
    diags: &mut Vec<Diagnostic>,
) -> Vec<String> {
    let Some(v) = v else { return Vec::new() };
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for name in v.get_ref() {
        let name = name.trim();
        let problem = if name.is_empty() {
            Some("event names must not be empty".to_string())
        } else if name == FORGET_EVENT {
            Some(RESERVED_FORGET.to_string())
        } else if !seen.insert(name) {
            Some(format!("{name:?} is named twice"))
        } else {
            None
        };
        match problem {
            Some(p) => diags.push(src.diag(Severity::Error, Some(v.span()), field, p)),
            None => out.push(name.to_string()),
        }
    }
    out
}

/// An event that starts the conversation's entries cannot also end all of
/// them, nor a thread's entries be ended by the event that starts them:
/// which would win is not something a marketer should have to look up.
pub(super) fn check_exits(
    src: &Source<'_>,
    conversation_exits: (&[String], Option<&Spanned<Vec<String>>>),
    threads: &[(&Thread, Option<&Spanned<Vec<String>>>)],
    triggers: &HashMap<String, ThreadIdx>,
    diags: &mut Vec<Diagnostic>,
) {
    let (exits, span) = conversation_exits;
    for name in exits {
        if let Some(&t) = triggers.get(name) {
            diags.push(src.diag(
                Severity::Error,
                span.map(Spanned::span),
                "conversation.exit_events",
                format!(
                    "{name:?} starts entries of this conversation (thread {:?}): it cannot also end them",
                    threads[t as usize].0.name
                ),
            ));
        }
    }
    for (ti, (t, span)) in threads.iter().enumerate() {
        for name in &t.exit_events {
            if t.events.contains(name) {
                diags.push(src.diag(
                    Severity::Error,
                    span.map(Spanned::span),
                    format!("thread[{ti}].exit_events"),
                    format!("{name:?} starts this thread's entries: it cannot also end them"),
                ));
            }
        }
    }
}
