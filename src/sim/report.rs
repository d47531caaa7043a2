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
//!
//! Memory stays bounded over a long history: a message no purchase has
//! converted is dropped once its partition's newest folded event is more
//! than one attribution window past the message's own window (at the next
//! sweep, every shortest attribution window of event time). A purchase
//! folded later than that (dated inside the window, so late by more than a
//! whole window) is not counted; `simulate --partitions N` and `reprocess`
//! over N partitions drop the same messages.

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
    /// Per partition, messages not converted yet, per contact:
    /// (conversation, at, variant).
    open: Vec<HashMap<Arc<str>, Vec<Open>>>,
    /// Per partition, the newest event time folded and the last sweep's.
    clocks: Vec<(Timestamp, Timestamp)>,
    /// The shortest attribution window (ms) of a conversation the report
    /// covers: how often the open messages are swept; 0 until known.
    sweep_every: i64,
}

/// A message not converted yet: (conversation, at, variant).
type Open = (ConvIdx, Timestamp, Variant);

/// The slot of partition `p` in `v`, grown as partitions show up.
fn slot<T: Default>(v: &mut Vec<T>, p: u32) -> &mut T {
    let i = p as usize;
    if v.len() <= i {
        v.resize_with(i + 1, T::default);
    }
    &mut v[i]
}

/// Whether an open message sent at `at` by conversation `ci` can no longer
/// convert, for the report, when its partition's newest event is `newest`.
fn closed(defs: &Definitions, ci: ConvIdx, at: Timestamp, newest: Timestamp) -> bool {
    let w = defs.conversations[ci as usize].attribution_window.0;
    newest.0.saturating_sub(at.0) > w.saturating_mul(2)
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
    /// Counts a transition made (in output order) in partition `p`.
    pub fn transition(&mut self, defs: &Definitions, t: &Transition, p: u32) {
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
                // A restart ends the entry it pulled the contact out of
                // (without an `exited`): its branch is no longer needed.
                if let TransitionKind::Reentered { previous_entry, .. } = t.kind {
                    self.branch
                        .remove(&(Arc::clone(&t.contact), ci, previous_entry));
                }
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
                slot(&mut self.open, p)
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

    /// An event folded in partition `p`: a purchase converts the contact's
    /// open messages.
    pub fn event(&mut self, defs: &Definitions, ev: &Event, p: u32) {
        self.advance(defs, p, ev.occurred_at);
        if !defs.route(&ev.name).is_some_and(|r| r.purchase) {
            return;
        }
        let open = slot(&mut self.open, p);
        let Some(mine) = open.get_mut(ev.contact_id.as_str()) else {
            return;
        };
        let at_p = ev.occurred_at;
        let counts = &mut self.counts;
        mine.retain(|(ci, at, v)| {
            let window = defs.conversations[*ci as usize].attribution_window;
            if at_p <= *at {
                return true;
            }
            if at_p.0.saturating_sub(at.0) <= window.0 {
                counts.entry((*ci, v.clone())).or_default().conversions += 1;
            }
            false
        });
        if mine.is_empty() {
            open.remove(ev.contact_id.as_str());
        }
    }

    /// Partition `p` folded an event dated `t`: once its newest event has
    /// moved on by the shortest attribution window since the last sweep, the
    /// messages that can no longer convert are dropped.
    fn advance(&mut self, defs: &Definitions, p: u32, t: Timestamp) {
        if self.sweep_every == 0 {
            self.sweep_every = (0..defs.conversations.len() as ConvIdx)
                .filter(|&ci| experimenting(defs, ci))
                .map(|ci| defs.conversations[ci as usize].attribution_window.0)
                .min()
                .unwrap_or(i64::MAX)
                .max(1);
        }
        let (newest, swept) = slot(&mut self.clocks, p);
        if t <= *newest {
            return;
        }
        *newest = t;
        if t.0.saturating_sub(swept.0) < self.sweep_every {
            return;
        }
        *swept = t;
        if let Some(open) = self.open.get_mut(p as usize) {
            open.retain(|_, mine| {
                mine.retain(|(ci, at, _)| !closed(defs, *ci, *at, t));
                !mine.is_empty()
            });
        }
    }

    /// Running entries whose branch is kept.
    #[cfg(test)]
    fn branches_kept(&self) -> usize {
        self.branch.len()
    }

    /// Messages kept for a conversion still to come (all partitions).
    #[cfg(test)]
    fn open_messages(&self) -> usize {
        self.open
            .iter()
            .flat_map(HashMap::values)
            .map(Vec::len)
            .sum()
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

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: i64 = 86_400_000;

    fn defs() -> Definitions {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("config/examples/winback-experiment.toml");
        crate::config::load_files(&[path])
            .expect("the example loads")
            .definitions
    }

    fn sent(contact: &str, at: i64) -> Transition {
        Transition {
            seq: 3,
            conversation: 0,
            contact: contact.into(),
            at: Timestamp(at),
            entry: 1,
            thread: 0,
            step: None,
            kind: TransitionKind::HeldOut,
        }
    }

    fn event(name: &str, contact: &str, at: i64) -> Event {
        Event {
            event_id: format!("{name}-{contact}-{at}"),
            name: name.into(),
            contact_id: contact.into(),
            occurred_at: Timestamp(at),
            merchant_id: None,
            order_id: None,
            total_cents: None,
            list_id: None,
            attributes: Vec::new(),
        }
    }

    fn conversions(r: &Experiments, d: &Definitions) -> u64 {
        r.rows(d).iter().map(|(_, _, c)| c.conversions).sum()
    }

    #[test]
    fn unconverted_messages_are_dropped_a_window_after_theirs_closed() {
        let d = defs();
        assert_eq!(d.conversations[0].attribution_window.0, 7 * DAY);
        let mut r = Experiments::default();
        for i in 0..1_000 {
            r.transition(&d, &sent(&format!("c{i}"), 10 * DAY), 0);
        }
        r.transition(&d, &sent("late", 10 * DAY), 1);
        assert_eq!(r.open_messages(), 1_001);
        // Within the window and the grace after it: all still open.
        r.event(&d, &event("profile_updated", "x", 24 * DAY), 0);
        assert_eq!(r.open_messages(), 1_001);
        r.event(&d, &event("checkout", "c1", 12 * DAY), 0);
        assert_eq!((r.open_messages(), conversions(&r, &d)), (1_000, 1));
        // Past two windows, the next sweep (a window after the last) drops
        // partition 0's messages; partition 1's clock has not moved, so its
        // message stays and a late purchase converts it.
        r.event(&d, &event("profile_updated", "x", 25 * DAY), 0);
        assert_eq!(r.open_messages(), 1_000);
        r.event(&d, &event("profile_updated", "x", 31 * DAY), 0);
        assert_eq!(r.open_messages(), 1);
        r.event(&d, &event("checkout", "late", 16 * DAY), 1);
        assert_eq!((r.open_messages(), conversions(&r, &d)), (0, 2));
        // A purchase of a dropped contact, dated in its window, no longer counts.
        r.event(&d, &event("checkout", "c2", 12 * DAY), 0);
        assert_eq!(conversions(&r, &d), 2);
    }

    #[test]
    fn a_restart_forgets_the_branch_of_the_entry_it_ends() {
        let d = defs();
        let split = d.conversations[0]
            .steps
            .iter()
            .position(|s| matches!(s.kind, StepKind::Split { .. }))
            .expect("a split step") as crate::domain::definition::StepIdx;
        let mut r = Experiments::default();
        let mut t = sent("ann", DAY);
        t.step = Some(split);
        t.kind = TransitionKind::Split { branch: 0 };
        r.transition(&d, &t, 0);
        assert_eq!(r.branches_kept(), 1);
        t.entry = 2;
        t.step = None;
        t.kind = TransitionKind::Reentered {
            event_id: "o2".into(),
            event: 0,
            previous_entry: 1,
            left_step: split,
        };
        r.transition(&d, &t, 0);
        assert_eq!(r.branches_kept(), 0);
    }
}
