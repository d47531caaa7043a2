//! The experiment report of `simulate` and `reprocess`: for each
//! conversation with a holdout or a split step, per variant, the entries,
//! the messages sent, those held out, and the conversions (a purchase by the
//! contact within the conversation's `attribution_window` after a sent or
//! held-out message), so a marketer reads the lift.
//!
//! A contact's variant is its holdout group (`holdout` or `control`) and the
//! branch its entry last took at a split step (`-` before any). Each message
//! converts at most once, on the first purchase strictly after it and within
//! the window; a purchase converts every such message of the contact (one
//! per conversation it was mailed by).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use crate::domain::definition::{ConvIdx, Definitions, StepKind};
use crate::domain::experiment;
use crate::domain::{Event, Timestamp, Transition, TransitionKind};

/// Counts of one variant.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    /// Entries started, or, behind a split, entries that took the branch.
    pub entries: u64,
    pub sent: u64,
    pub held_out: u64,
    pub conversions: u64,
}

/// (holdout group, split branch).
type Variant = (&'static str, Arc<str>);

#[derive(Debug, Default)]
pub struct Experiments {
    counts: BTreeMap<(ConvIdx, Variant), Counts>,
    /// The branch each running entry took last: (contact, conversation, entry).
    branch: HashMap<(Arc<str>, ConvIdx, u32), Arc<str>>,
    /// Messages not converted yet, per contact: (conversation, at, variant).
    open: HashMap<Arc<str>, Vec<(ConvIdx, Timestamp, Variant)>>,
}

/// Whether the conversation runs an experiment the report covers.
fn experimenting(defs: &Definitions, ci: ConvIdx) -> bool {
    let c = &defs.conversations[ci as usize];
    c.holdout > 0.0
        || c.steps
            .iter()
            .any(|s| matches!(s.kind, StepKind::Split { .. }))
}

fn group(defs: &Definitions, ci: ConvIdx, contact: &str) -> &'static str {
    let c = &defs.conversations[ci as usize];
    let d = experiment::draw(
        &c.experiment_salt,
        &c.name,
        experiment::Scope::Holdout,
        contact,
    );
    if c.holdout > 0.0 && experiment::within(d, c.holdout) {
        "holdout"
    } else {
        "control"
    }
}

impl Experiments {
    /// Counts a transition made (in output order).
    pub fn transition(&mut self, defs: &Definitions, t: &Transition) {
        let ci = t.conversation;
        if !experimenting(defs, ci) {
            return;
        }
        let key = (Arc::clone(&t.contact), ci, t.entry);
        let variant = |branch: Option<&Arc<str>>| -> Variant {
            (
                group(defs, ci, &t.contact),
                branch.map_or_else(|| Arc::from("-"), Arc::clone),
            )
        };
        match &t.kind {
            TransitionKind::Entered { .. } | TransitionKind::Reentered { .. } => {
                let v = variant(None);
                self.counts.entry((ci, v)).or_default().entries += 1;
            }
            TransitionKind::Split { branch } => {
                let conv = &defs.conversations[ci as usize];
                let name = t.step.and_then(|s| match &conv.steps[s as usize].kind {
                    StepKind::Split { branches } => {
                        branches.get(*branch as usize).map(|b| Arc::clone(&b.name))
                    }
                    _ => None,
                });
                if let Some(name) = name {
                    let v = variant(Some(&name));
                    self.counts.entry((ci, v)).or_default().entries += 1;
                    self.branch.insert(key, name);
                }
            }
            TransitionKind::Send { .. } | TransitionKind::HeldOut => {
                let v = variant(self.branch.get(&key));
                let c = self.counts.entry((ci, v.clone())).or_default();
                if matches!(t.kind, TransitionKind::Send { .. }) {
                    c.sent += 1;
                } else {
                    c.held_out += 1;
                }
                self.open
                    .entry(Arc::clone(&t.contact))
                    .or_default()
                    .push((ci, t.at, v));
            }
            TransitionKind::Exited { .. } | TransitionKind::Forgotten => {
                self.branch.remove(&key);
            }
            _ => {}
        }
    }

    /// A folded event: a purchase converts the contact's open messages.
    pub fn event(&mut self, defs: &Definitions, ev: &Event) {
        if !defs.route(&ev.name).is_some_and(|r| r.purchase) {
            return;
        }
        let Some(open) = self.open.get_mut(ev.contact_id.as_str()) else {
            return;
        };
        let p = ev.occurred_at;
        open.retain(|(ci, at, v)| {
            let window = defs.conversations[*ci as usize].attribution_window;
            if p <= *at {
                return true;
            }
            if p.0.saturating_sub(at.0) <= window.0 {
                self.counts.entry((*ci, v.clone())).or_default().conversions += 1;
            }
            false
        });
        if open.is_empty() {
            self.open.remove(ev.contact_id.as_str());
        }
    }

    /// The counts, per conversation name and variant (`group / branch`).
    pub fn rows(&self, defs: &Definitions) -> Vec<(String, String, Counts)> {
        self.counts
            .iter()
            .map(|((ci, (g, b)), c)| {
                (
                    defs.conversations[*ci as usize].name.to_string(),
                    format!("{g} / {b}"),
                    *c,
                )
            })
            .collect()
    }

    pub fn print(&self, defs: &Definitions) {
        let mut last = String::new();
        for (conv, variant, c) in self.rows(defs) {
            if conv != last {
                let window = defs
                    .conversations
                    .iter()
                    .find(|x| *x.name == *conv)
                    .map(|x| x.attribution_window);
                eprintln!(
                    "experiment {conv:?} (conversions: a purchase within {} after a message):",
                    window.map_or_else(String::new, |w| w.to_string())
                );
                eprintln!(
                    "  {:<28} {:>9} {:>9} {:>9} {:>11} {:>6}",
                    "variant", "entries", "sent", "held out", "conversions", "rate"
                );
                last = conv;
            }
            let messages = c.sent + c.held_out;
            let rate = if messages == 0 {
                "-".to_string()
            } else {
                format!("{:.1}%", c.conversions as f64 * 100.0 / messages as f64)
            };
            eprintln!(
                "  {variant:<28} {:>9} {:>9} {:>9} {:>11} {rate:>6}",
                c.entries, c.sent, c.held_out, c.conversions
            );
        }
    }
}
